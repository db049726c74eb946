//! Bootstrap building blocks.
//!
//! Tests write the interesting part (usually `route_config`) as ordinary block YAML starting at
//! column 0; these helpers indent it into a complete bootstrap. Clusters are single-line flow
//! maps, so they can be dropped into a flow list at any indentation. The resulting bootstrap has
//! the admin listener on `{{admin_port}}` and one HTTP listener named `http` on
//! `{{port:http}}` (127.0.0.1) whose connection manager has `stat_prefix: ingress`.

use std::net::SocketAddr;

/// The HTTP connection manager's stat prefix in [`http_bootstrap`].
pub const HTTP_STAT_PREFIX: &str = "ingress";

/// A STATIC HTTP/1.1 cluster with `connect_timeout: 1s` and equal-weight endpoints.
pub fn cluster(name: &str, endpoints: &[SocketAddr]) -> String {
    cluster_with(name, endpoints, "")
}

/// A STATIC cluster speaking HTTP/2 (prior knowledge) upstream.
pub fn h2_cluster(name: &str, endpoints: &[SocketAddr]) -> String {
    cluster_with(
        name,
        endpoints,
        "typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: \
         {'@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, \
         explicit_http_config: {http2_protocol_options: {}}}}",
    )
}

/// A STATIC cluster with extra flow-map fields (e.g. `"lb_policy: ROUND_ROBIN"`).
pub fn cluster_with(name: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: '{}', port_value: {}}}}}}}}}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "{{name: {name}, connect_timeout: 1s, type: STATIC, lb_policy: ROUND_ROBIN, \
         load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{}]}}]}}{extra}}}",
        eps.join(", ")
    )
}

/// Indents every line of `block` by `n` spaces.
pub fn indent(block: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    block
        .trim_matches('\n')
        .lines()
        .map(|l| {
            if l.trim().is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A bootstrap with one HTTP listener routing with `route_config` (block YAML at column 0).
pub fn http_bootstrap(route_config: &str, clusters: &[String]) -> String {
    http_bootstrap_with("", route_config, clusters)
}

/// Like [`http_bootstrap`], with extra `HttpConnectionManager` fields (block YAML at column 0,
/// e.g. `"codec_type: HTTP2\nserver_name: petrel-test"`).
pub fn http_bootstrap_with(hcm_extra: &str, route_config: &str, clusters: &[String]) -> String {
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {{{{admin_port}}}}}}}}
static_resources:
  listeners:
  - name: http
    address: {{socket_address: {{address: 127.0.0.1, port_value: {{{{port:http}}}}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {HTTP_STAT_PREFIX}
{hcm_extra}
          route_config:
            name: local
{route_config}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters: [{clusters}]
"#,
        hcm_extra = indent(hcm_extra, 10),
        route_config = indent(route_config, 12),
        clusters = clusters.join(", "),
    )
}
