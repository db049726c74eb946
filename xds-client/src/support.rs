//! The one table of what Petrel does with each Envoy config field.
//!
//! Every set field of a bootstrap (and, later, of xDS resources) is checked against this
//! table before the config is compiled:
//! - **supported**: Petrel implements it; the walk descends into it.
//! - **ignored**: it does not change how traffic is handled (stats sinks, tracing, runtime,
//!   tuning knobs); Petrel accepts it and warns once.
//! - anything else set is **rejected**: startup fails (or the resource is NACKed) naming the
//!   field path, because silently dropping it would change behaviour.
//!
//! The README's status table is generated from the same entries (`petrel --print-support`).
use prost_reflect::{DynamicMessage, ReflectMessage, Value};

use crate::decode::any_to_dynamic;

/// What Petrel does with the fields of one message type.
#[derive(Debug)]
pub struct Rule {
    /// Full proto name, e.g. `envoy.config.cluster.v3.Cluster`.
    pub message: &'static str,
    /// Implemented fields.
    pub supported: &'static [&'static str],
    /// Accepted with a warning: they do not change traffic handling.
    pub ignored: &'static [&'static str],
}

/// The outcome of checking a config tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// `path: field ignored` lines, one per distinct path.
    pub warnings: Vec<String>,
    /// `path: not supported` lines; non-empty means the config must be refused.
    pub rejections: Vec<String>,
}

/// Messages accepted whole, without looking inside: plain data with no behaviour of its own,
/// or protocol tuning whose defaults Petrel's codecs already follow.
const OPAQUE: &[&str] = &[
    "envoy.config.core.v3.Node",
    "envoy.config.core.v3.Locality",
    "envoy.config.core.v3.Metadata",
    "envoy.config.core.v3.Http2ProtocolOptions",
    "envoy.config.core.v3.RuntimeFractionalPercent",
    "envoy.type.v3.FractionalPercent",
    "envoy.type.v3.Percent",
];

macro_rules! rules {
    ($( $msg:literal => { supported: [$($s:literal),* $(,)?], ignored: [$($i:literal),* $(,)?] $(,)? } ),* $(,)?) => {
        &[ $( Rule { message: $msg, supported: &[$($s),*], ignored: &[$($i),*] } ),* ]
    };
}

/// The table. Keep the README's "Envoy config support" section in step with it.
pub static RULES: &[Rule] = rules! {
    "envoy.config.bootstrap.v3.Bootstrap" => {
        supported: ["node", "static_resources", "admin", "dynamic_resources"],
        ignored: ["stats_sinks", "stats_config", "stats_flush_interval", "stats_flush_on_admin",
            "tracing", "layered_runtime", "overload_manager", "watchdog", "watchdogs",
            "enable_dispatcher_stats", "stats_server_version_override", "use_tcp_for_dns_lookups",
            "dns_resolution_config", "typed_dns_resolver_config", "fatal_actions",
            "application_log_config", "node_context_params", "inline_headers",
            "perf_tracing_file_path", "default_regex_engine", "flags_path", "cluster_manager",
            "default_socket_interface", "certificate_provider_instances"],
    },
    "envoy.config.bootstrap.v3.Admin" => {
        supported: ["address"],
        ignored: ["access_log", "access_log_path", "profile_path", "socket_options",
            "ignore_global_conn_limit"],
    },
    "envoy.config.bootstrap.v3.Bootstrap.StaticResources" => {
        supported: ["listeners", "clusters"],
        ignored: [],
    },
    "envoy.config.bootstrap.v3.Bootstrap.DynamicResources" => {
        supported: ["lds_config", "cds_config", "ads_config"],
        ignored: [],
    },
    "envoy.config.core.v3.ConfigSource" => {
        supported: ["ads", "resource_api_version", "initial_fetch_timeout"],
        ignored: ["authorities"],
    },
    "envoy.config.core.v3.AggregatedConfigSource" => { supported: [], ignored: [] },
    "envoy.config.core.v3.ApiConfigSource" => {
        supported: ["api_type", "transport_api_version", "grpc_services", "set_node_on_first_message_only"],
        ignored: ["refresh_delay", "request_timeout", "rate_limit_settings"],
    },
    "envoy.config.core.v3.GrpcService" => {
        supported: ["envoy_grpc", "google_grpc"],
        ignored: ["timeout", "initial_metadata", "retry_policy"],
    },
    "envoy.config.core.v3.GrpcService.EnvoyGrpc" => {
        supported: ["cluster_name"],
        ignored: ["authority", "retry_policy", "max_receive_message_length", "skip_envoy_headers"],
    },
    "envoy.config.core.v3.GrpcService.GoogleGrpc" => {
        supported: ["target_uri"],
        ignored: ["stat_prefix", "channel_args", "per_stream_buffer_limit_bytes"],
    },
    "envoy.extensions.filters.network.http_connection_manager.v3.Rds" => {
        supported: ["config_source", "route_config_name"],
        ignored: [],
    },
    "envoy.config.cluster.v3.Cluster.EdsClusterConfig" => {
        supported: ["eds_config", "service_name"],
        ignored: [],
    },
    "envoy.config.core.v3.Address" => { supported: ["socket_address", "pipe"], ignored: [] },
    "envoy.config.core.v3.SocketAddress" => {
        supported: ["address", "port_value", "protocol", "ipv4_compat"],
        ignored: [],
    },
    "envoy.config.core.v3.Pipe" => { supported: ["path", "mode"], ignored: [] },
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.InternalAddressConfig" => {
        supported: ["cidr_ranges", "unix_sockets"],
        ignored: [],
    },
    "envoy.config.core.v3.CidrRange" => { supported: ["address_prefix", "prefix_len"], ignored: [] },
    "envoy.config.core.v3.BindConfig" => { supported: ["source_address", "freebind"], ignored: ["socket_options"] },
    "envoy.config.core.v3.TypedExtensionConfig" => { supported: ["name", "typed_config"], ignored: [] },
    "envoy.config.core.v3.HeaderValueOption" => {
        supported: ["header", "append", "append_action", "keep_empty_value"],
        ignored: [],
    },
    "envoy.config.core.v3.HeaderValue" => { supported: ["key", "value", "raw_value"], ignored: [] },
    "envoy.config.core.v3.Http1ProtocolOptions" => {
        supported: ["header_key_format", "accept_http_10"],
        ignored: ["allow_absolute_url", "default_host_for_http_10", "enable_trailers",
            "allow_chunked_length", "override_stream_error_on_invalid_http_message",
            "send_fully_qualified_url", "use_balsa_parser", "allow_custom_methods",
            "ignore_http_11_upgrade"],
    },
    "envoy.config.core.v3.Http1ProtocolOptions.HeaderKeyFormat" => {
        supported: ["proper_case_words", "stateful_formatter"],
        ignored: [],
    },
    "envoy.config.core.v3.Http1ProtocolOptions.HeaderKeyFormat.ProperCaseWords" => { supported: [], ignored: [] },
    "envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig" => {
        supported: [],
        ignored: ["forward_reason_phrase", "formatter_type_on_envoy_headers"],
    },
    "envoy.config.core.v3.DataSource" => {
        supported: ["inline_string", "inline_bytes", "filename"],
        ignored: [],
    },
    "envoy.config.listener.v3.Listener" => {
        supported: ["name", "address", "filter_chains", "default_filter_chain", "listener_filters",
            "use_original_dst", "bind_to_port", "stat_prefix", "traffic_direction"],
        ignored: ["per_connection_buffer_limit_bytes", "metadata",
            "continue_on_listener_filters_timeout", "listener_filters_timeout", "drain_type",
            "connection_balance_config", "reuse_port", "enable_reuse_port", "socket_options",
            "tcp_backlog_size", "freebind", "tcp_fast_open_queue_length", "enable_mptcp",
            "ignore_global_conn_limit", "max_connections_to_accept_per_socket_event"],
    },
    "envoy.config.listener.v3.FilterChain" => {
        supported: ["filter_chain_match", "filters", "name"],
        ignored: ["metadata", "transport_socket_connect_timeout"],
    },
    "envoy.config.listener.v3.FilterChainMatch" => {
        supported: ["destination_port", "prefix_ranges", "server_names", "transport_protocol",
            "application_protocols", "source_prefix_ranges", "source_ports", "source_type",
            "direct_source_prefix_ranges"],
        ignored: [],
    },
    "envoy.config.listener.v3.Filter" => { supported: ["name", "typed_config"], ignored: [] },
    "envoy.config.listener.v3.ListenerFilter" => { supported: ["name", "typed_config"], ignored: [] },
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst" => {
        supported: [],
        ignored: ["traffic_direction"],
    },
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" => {
        supported: [],
        ignored: ["enable_ja3_fingerprinting", "enable_ja4_fingerprinting", "initial_read_buffer_size"],
    },
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector" => { supported: [], ignored: [] },
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => {
        supported: ["codec_type", "stat_prefix", "route_config", "rds", "http_filters", "server_name",
            "server_header_transformation", "access_log", "upgrade_configs", "generate_request_id",
            "use_remote_address", "http_protocol_options", "stream_idle_timeout",
            "internal_address_config", "common_http_protocol_options"],
        ignored: ["http2_protocol_options",
            "xff_num_trusted_hops", "request_timeout", "drain_timeout",
            "delayed_close_timeout", "normalize_path", "merge_slashes",
            "path_with_escaped_slashes_action", "forward_client_cert_details",
            "set_current_client_cert_details", "tracing",
            "preserve_external_request_id", "add_user_agent", "max_request_headers_kb",
            "stream_error_on_invalid_http_message", "request_headers_timeout",
            "always_set_request_id_in_response", "local_reply_config", "access_log_options",
            "skip_xff_append", "via", "strip_any_host_port", "strip_matching_host_port"],
    },
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig" => {
        supported: ["upgrade_type", "enabled"],
        ignored: [],
    },
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter" => {
        supported: ["name", "typed_config", "is_optional"],
        ignored: ["disabled"],
    },
    "envoy.extensions.filters.http.router.v3.Router" => {
        supported: ["suppress_envoy_headers", "dynamic_stats"],
        ignored: ["start_child_span", "upstream_log", "upstream_log_options",
            "respect_expected_rq_timeout", "strict_check_headers", "suppress_grpc_request_failure_code_stats"],
    },
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => {
        supported: ["stat_prefix", "cluster", "weighted_clusters", "idle_timeout"],
        ignored: ["max_connect_attempts", "hash_policy", "access_log_options", "max_downstream_connection_duration"],
    },
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster" => {
        supported: ["clusters"],
        ignored: [],
    },
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight" => {
        supported: ["name", "weight"],
        ignored: [],
    },
    "envoy.config.route.v3.RouteConfiguration" => {
        supported: ["name", "virtual_hosts", "request_headers_to_add", "request_headers_to_remove",
            "response_headers_to_add", "response_headers_to_remove"],
        ignored: ["validate_clusters", "internal_only_headers", "most_specific_header_mutations_wins",
            "max_direct_response_body_size_bytes", "ignore_port_in_host_matching"],
    },
    "envoy.config.route.v3.VirtualHost" => {
        supported: ["name", "domains", "routes", "request_headers_to_add", "request_headers_to_remove",
            "response_headers_to_add", "response_headers_to_remove", "retry_policy",
            "include_request_attempt_count", "include_attempt_count_in_response"],
        ignored: ["metadata"],
    },
    "envoy.config.route.v3.Route" => {
        supported: ["name", "match", "route", "redirect", "direct_response", "request_headers_to_add",
            "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove"],
        ignored: ["metadata", "decorator", "tracing", "stat_prefix"],
    },
    "envoy.config.route.v3.RouteMatch" => {
        supported: ["prefix", "path", "safe_regex", "path_separated_prefix", "headers",
            "query_parameters", "case_sensitive", "grpc", "runtime_fraction"],
        ignored: [],
    },
    "envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions" => { supported: [], ignored: [] },
    "envoy.config.route.v3.HeaderMatcher" => {
        supported: ["name", "exact_match", "safe_regex_match", "present_match", "prefix_match",
            "suffix_match", "contains_match", "string_match", "invert_match",
            "treat_missing_header_as_empty"],
        ignored: [],
    },
    "envoy.config.route.v3.QueryParameterMatcher" => {
        supported: ["name", "string_match", "present_match"],
        ignored: [],
    },
    "envoy.type.matcher.v3.StringMatcher" => {
        supported: ["exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"],
        ignored: [],
    },
    "envoy.type.matcher.v3.RegexMatcher" => { supported: ["regex"], ignored: ["google_re2"] },
    "envoy.type.matcher.v3.RegexMatchAndSubstitute" => { supported: ["pattern", "substitution"], ignored: [] },
    "envoy.config.route.v3.RouteAction" => {
        supported: ["cluster", "cluster_header", "weighted_clusters", "timeout", "prefix_rewrite",
            "regex_rewrite", "host_rewrite_literal", "auto_host_rewrite", "host_rewrite_header",
            "upgrade_configs", "cluster_not_found_response_code", "retry_policy", "idle_timeout",
            "max_stream_duration", "priority", "max_grpc_timeout", "grpc_timeout_offset",
            "request_mirror_policies", "hash_policy"],
        ignored: ["include_vh_rate_limits", "append_x_forwarded_host"],
    },
    "envoy.config.route.v3.RouteAction.MaxStreamDuration" => {
        supported: ["max_stream_duration"],
        ignored: [],
    },
    "envoy.config.route.v3.RouteAction.RequestMirrorPolicy" => {
        supported: ["cluster", "cluster_header", "runtime_fraction",
            "disable_shadow_host_suffix_append"],
        ignored: ["trace_sampled"],
    },
    "envoy.config.route.v3.RetryPolicy" => {
        supported: ["retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout",
            "retry_host_predicate", "host_selection_retry_max_attempts", "retriable_status_codes",
            "retry_back_off", "retriable_headers", "retriable_request_headers"],
        ignored: [],
    },
    "envoy.config.route.v3.RetryPolicy.RetryBackOff" => {
        supported: ["base_interval", "max_interval"],
        ignored: [],
    },
    "envoy.config.route.v3.RetryPolicy.RetryHostPredicate" => {
        supported: ["name", "typed_config"],
        ignored: [],
    },
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate" => {
        supported: [],
        ignored: [],
    },
    "envoy.config.route.v3.RouteAction.UpgradeConfig" => { supported: ["upgrade_type", "enabled"], ignored: [] },
    "envoy.config.route.v3.WeightedCluster" => {
        supported: ["clusters", "total_weight", "header_name"],
        ignored: ["runtime_key_prefix"],
    },
    "envoy.config.route.v3.WeightedCluster.ClusterWeight" => {
        supported: ["name", "weight", "request_headers_to_add", "request_headers_to_remove",
            "response_headers_to_add", "response_headers_to_remove", "host_rewrite_literal"],
        ignored: ["metadata_match", "typed_per_filter_config"],
    },
    "envoy.config.route.v3.DirectResponseAction" => { supported: ["status", "body"], ignored: [] },
    "envoy.config.route.v3.RedirectAction" => {
        supported: ["https_redirect", "scheme_redirect", "host_redirect", "port_redirect",
            "path_redirect", "prefix_rewrite", "response_code", "strip_query"],
        ignored: [],
    },
    "envoy.config.cluster.v3.Cluster" => {
        supported: ["name", "type", "connect_timeout", "load_assignment", "lb_policy",
            "dns_lookup_family", "dns_refresh_rate", "typed_extension_protocol_options",
            "http2_protocol_options", "upstream_bind_config", "original_dst_lb_config",
            "alt_stat_name", "protocol_selection", "least_request_lb_config", "http_protocol_options",
            "eds_cluster_config", "circuit_breakers", "common_http_protocol_options",
            "max_requests_per_connection", "ring_hash_lb_config", "maglev_lb_config",
            "round_robin_lb_config", "common_lb_config", "load_balancing_policy",
            "outlier_detection"],
        ignored: ["respect_dns_ttl", "per_connection_buffer_limit_bytes", "cleanup_interval",
            "metadata", "upstream_connection_options", "close_connections_on_host_health_failure",
            "ignore_health_on_host_removal", "dns_resolvers", "use_tcp_for_dns_lookups",
            "typed_dns_resolver_config", "track_cluster_stats", "wait_for_warm_on_init",
            "dns_failure_refresh_rate", "dns_jitter", "track_timeout_budgets"],
    },
    "envoy.config.cluster.v3.Cluster.OriginalDstLbConfig" => {
        supported: ["use_http_header", "http_header_name"],
        ignored: ["upstream_port_override", "metadata_key"],
    },
    "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig" => {
        supported: ["choice_count", "active_request_bias"],
        ignored: [],
    },
    // --- load balancing, host health, outlier detection (upstream::lb, policy::outlier) ---
    "envoy.config.core.v3.RuntimeDouble" => {
        supported: ["default_value"],
        // Petrel has no runtime layer, so the default is the value.
        ignored: ["runtime_key"],
    },
    "envoy.config.cluster.v3.Cluster.RoundRobinLbConfig" => { supported: [], ignored: [] },
    "envoy.config.cluster.v3.Cluster.RingHashLbConfig" => {
        supported: ["minimum_ring_size", "maximum_ring_size", "hash_function"],
        ignored: [],
    },
    "envoy.config.cluster.v3.Cluster.MaglevLbConfig" => { supported: ["table_size"], ignored: [] },
    "envoy.config.cluster.v3.Cluster.CommonLbConfig" => {
        supported: ["healthy_panic_threshold", "locality_weighted_lb_config",
            "consistent_hashing_lb_config"],
        // Update batching and waiting for active health checks (Petrel has none) do not
        // change which host a request goes to.
        ignored: ["update_merge_window", "ignore_new_hosts_until_first_hc"],
    },
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig" => {
        supported: [],
        ignored: [],
    },
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.ConsistentHashingLbConfig" => {
        supported: ["use_hostname_for_hashing"],
        ignored: [],
    },
    "envoy.config.cluster.v3.LoadBalancingPolicy" => { supported: ["policies"], ignored: [] },
    "envoy.config.cluster.v3.LoadBalancingPolicy.Policy" => {
        supported: ["typed_extension_config"],
        ignored: [],
    },
    "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin" => {
        supported: ["locality_lb_config"],
        ignored: [],
    },
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest" => {
        supported: ["choice_count", "active_request_bias", "locality_lb_config",
            "enable_full_scan", "selection_method"],
        ignored: [],
    },
    "envoy.extensions.load_balancing_policies.random.v3.Random" => {
        supported: ["locality_lb_config"],
        ignored: [],
    },
    "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash" => {
        supported: ["hash_function", "minimum_ring_size", "maximum_ring_size",
            "use_hostname_for_hashing", "consistent_hashing_lb_config",
            "locality_weighted_lb_config"],
        ignored: [],
    },
    "envoy.extensions.load_balancing_policies.maglev.v3.Maglev" => {
        supported: ["table_size", "consistent_hashing_lb_config", "locality_weighted_lb_config"],
        ignored: [],
    },
    "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig" => {
        supported: ["locality_weighted_lb_config"],
        ignored: [],
    },
    "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig.LocalityWeightedLbConfig" => {
        supported: [],
        ignored: [],
    },
    "envoy.extensions.load_balancing_policies.common.v3.ConsistentHashingLbConfig" => {
        supported: ["use_hostname_for_hashing"],
        ignored: [],
    },
    "envoy.config.cluster.v3.OutlierDetection" => {
        supported: ["consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent",
            "enforcing_consecutive_5xx", "enforcing_success_rate", "success_rate_minimum_hosts",
            "success_rate_request_volume", "success_rate_stdev_factor",
            "consecutive_gateway_failure", "enforcing_consecutive_gateway_failure",
            "split_external_local_origin_errors", "consecutive_local_origin_failure",
            "enforcing_consecutive_local_origin_failure", "enforcing_local_origin_success_rate",
            "failure_percentage_threshold", "enforcing_failure_percentage",
            "enforcing_failure_percentage_local_origin", "failure_percentage_minimum_hosts",
            "failure_percentage_request_volume", "max_ejection_time", "max_ejection_time_jitter",
            "always_eject_one_host"],
        // Only acts together with active health checking, which Petrel does not run.
        ignored: ["successful_active_health_check_uneject_host"],
    },
    "envoy.config.route.v3.RouteAction.HashPolicy" => {
        supported: ["header", "cookie", "connection_properties", "query_parameter", "terminal"],
        ignored: [],
    },
    "envoy.config.route.v3.RouteAction.HashPolicy.Header" => {
        supported: ["header_name", "regex_rewrite"],
        ignored: [],
    },
    "envoy.config.route.v3.RouteAction.HashPolicy.Cookie" => {
        supported: ["name", "ttl", "path", "attributes"],
        ignored: [],
    },
    "envoy.config.route.v3.RouteAction.HashPolicy.CookieAttribute" => {
        supported: ["name", "value"],
        ignored: [],
    },
    "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties" => {
        supported: ["source_ip"],
        ignored: [],
    },
    "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter" => {
        supported: ["name"],
        ignored: [],
    },
    "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy" => {
        supported: ["overprovisioning_factor", "weighted_priority_health"],
        ignored: [],
    },
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" => {
        supported: ["explicit_http_config", "use_downstream_protocol_config",
            "common_http_protocol_options"],
        ignored: ["upstream_http_protocol_options"],
    },
    "envoy.config.core.v3.HttpProtocolOptions" => {
        supported: ["idle_timeout", "max_requests_per_connection"],
        // Header count/size limits: hyper enforces its own (Envoy's defaults are similar).
        ignored: ["max_headers_count", "max_response_headers_kb"],
    },
    "envoy.config.cluster.v3.CircuitBreakers" => {
        supported: ["thresholds"],
        ignored: [],
    },
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds" => {
        supported: ["priority", "max_connections", "max_pending_requests", "max_requests",
            "max_retries", "retry_budget", "track_remaining"],
        ignored: [],
    },
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget" => {
        supported: ["budget_percent", "min_retry_concurrency"],
        ignored: [],
    },
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig" => {
        supported: ["http_protocol_options", "http2_protocol_options"],
        ignored: [],
    },
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig" => {
        supported: ["http_protocol_options", "http2_protocol_options"],
        ignored: [],
    },
    "envoy.config.endpoint.v3.ClusterLoadAssignment" => {
        supported: ["cluster_name", "endpoints", "policy"],
        ignored: [],
    },
    "envoy.config.endpoint.v3.LocalityLbEndpoints" => {
        supported: ["locality", "lb_endpoints", "priority", "load_balancing_weight"],
        // Locality metadata only feeds subset load balancing, which is refused.
        ignored: ["metadata"],
    },
    "envoy.config.endpoint.v3.LbEndpoint" => {
        // metadata: `envoy.lb` `hash_key` for consistent hashing; the rest only feeds
        // subset load balancing and transport socket matching, both refused.
        supported: ["endpoint", "health_status", "load_balancing_weight", "metadata"],
        ignored: [],
    },
    "envoy.config.endpoint.v3.Endpoint" => {
        supported: ["address", "hostname"],
        ignored: ["health_check_config", "additional_addresses"],
    },
    "envoy.config.accesslog.v3.AccessLog" => { supported: ["name", "typed_config"], ignored: [] },
    "envoy.extensions.access_loggers.file.v3.FileAccessLog" => {
        supported: ["path", "format", "log_format"],
        ignored: [],
    },
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" => { supported: ["log_format"], ignored: [] },
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => { supported: ["log_format"], ignored: [] },
    "envoy.config.core.v3.SubstitutionFormatString" => {
        supported: ["text_format", "text_format_source"],
        ignored: ["omit_empty_values", "content_type"],
    },
};

/// Returns the rule for a message type, if Petrel knows the type.
pub fn rule(message: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.message == message)
}

/// Checks every set field of `msg` (and of the messages inside it, including `Any`s) against
/// the table. `path` is the prefix for messages, e.g. `static_resources.clusters[0]`.
pub fn check(msg: &DynamicMessage, path: &str) -> Report {
    let mut report = Report::default();
    walk(msg, path, &mut report);
    report.warnings.dedup();
    report
}

fn walk(msg: &DynamicMessage, path: &str, report: &mut Report) {
    let desc = msg.descriptor();
    let name = desc.full_name();
    if name.starts_with("google.protobuf.") || OPAQUE.contains(&name) {
        if name == "google.protobuf.Any" {
            walk_any(msg, path, report);
        }
        return;
    }
    let Some(rule) = rule(name) else {
        report
            .rejections
            .push(format!("{}: {name} is not supported", display(path)));
        return;
    };
    for (field, value) in msg.fields() {
        let field_path = join(path, field.name());
        if rule.supported.contains(&field.name()) {
            walk_value(value, &field_path, report);
        } else if rule.ignored.contains(&field.name()) {
            report
                .warnings
                .push(format!("{field_path}: ignored (has no effect in Petrel)"));
        } else {
            report
                .rejections
                .push(format!("{field_path}: not supported"));
        }
    }
}

fn walk_any(any: &DynamicMessage, path: &str, report: &mut Report) {
    let type_url = any
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let value = any
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let packed = envoy_types::pb::google::protobuf::Any {
        type_url,
        value: value.to_vec(),
    };
    match any_to_dynamic(&packed) {
        Ok(inner) => walk(&inner, path, report),
        Err(e) => report.rejections.push(format!("{}: {e}", display(path))),
    }
}

fn walk_value(value: &Value, path: &str, report: &mut Report) {
    match value {
        Value::Message(m) => walk(m, path, report),
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_value(item, &format!("{path}[{i}]"), report);
            }
        }
        Value::Map(entries) => {
            for (key, item) in entries {
                let key = match key {
                    prost_reflect::MapKey::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                walk_value(item, &format!("{path}[{key:?}]"), report);
            }
        }
        _ => {}
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn display(path: &str) -> &str {
    if path.is_empty() {
        "(root)"
    } else {
        path
    }
}

/// Checks an xDS resource (an `Any` from a discovery response) against the table; paths
/// are relative to the resource.
pub fn check_resource(any: &envoy_types::pb::google::protobuf::Any) -> Report {
    match any_to_dynamic(any) {
        Ok(msg) => check(&msg, ""),
        Err(e) => Report {
            warnings: Vec::new(),
            rejections: vec![e],
        },
    }
}
