//! `Listener` → `listener::Listener`, including the network filters.
use std::sync::Arc;

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog as XdsAccessLog};
use envoy_types::pb::envoy::config::core::v3::{
    substitution_format_string, CidrRange, SubstitutionFormatString,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, FilterChain as XdsFilterChain, Listener as XdsListener,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    file_access_log, FileAccessLog,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy, TcpProxy as XdsTcpProxy,
};
use http::HeaderValue;

use super::address::{listen_addr, ListenAddr};
use super::{duration, route, unpack, BuildCtx, ConfigError};
use crate::http::access_log::{AccessLog, Sink, DEFAULT_FORMAT};
use crate::http::{Codec, HttpConnMgr, HttpStats, ServerHeader};
use crate::listener::{
    stat_prefix_for, ChainMatch, Cidr, FilterChain, Listener, ListenerStats, NetworkFilter,
    SourceType,
};
use crate::stats::Stats;
use crate::tcp_proxy::{TcpProxy, TcpStats, DEFAULT_IDLE_TIMEOUT};

/// Envoy's default downstream connection idle timeout.
const DEFAULT_CONNECTION_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Envoy's default `stream_idle_timeout`.
const DEFAULT_STREAM_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER: &str = "envoy.extensions.filters.http.router.v3.Router";
const ORIGINAL_DST: &str = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
const TLS_INSPECTOR: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_INSPECTOR: &str = "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
const FILE_LOG: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

/// Compiles a listener.
pub(crate) fn build(
    l: &XdsListener,
    path: &str,
    ctx: &BuildCtx<'_>,
) -> Result<Listener, ConfigError> {
    let stats = ctx.stats;
    let addr = listen_addr(
        l.address
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{path}.address"), "missing"))?,
        &format!("{path}.address"),
    )?;
    let name: Arc<str> = if l.name.is_empty() {
        Arc::from(addr.to_string().as_str())
    } else {
        Arc::from(l.name.as_str())
    };
    let (mut original_dst_filter, mut tls_inspector, mut http_inspector) = (false, false, false);
    for (i, lf) in l.listener_filters.iter().enumerate() {
        let fpath = format!("{path}.listener_filters[{i}]");
        let kind = match &lf.config_type {
            Some(listener_filter::ConfigType::TypedConfig(any)) => {
                xds_client::decode::type_name(&any.type_url).to_string()
            }
            Some(listener_filter::ConfigType::ConfigDiscovery(_)) => {
                return Err(ConfigError::new(
                    format!("{fpath}.config_discovery"),
                    "not supported",
                ))
            }
            None => lf.name.clone(),
        };
        match kind.as_str() {
            ORIGINAL_DST | "envoy.filters.listener.original_dst" => original_dst_filter = true,
            TLS_INSPECTOR | "envoy.filters.listener.tls_inspector" => tls_inspector = true,
            HTTP_INSPECTOR | "envoy.filters.listener.http_inspector" => http_inspector = true,
            other => {
                return Err(ConfigError::new(
                    fpath,
                    format!("listener filter {other} is not supported"),
                ))
            }
        }
    }
    let stat_prefix = if l.stat_prefix.is_empty() {
        stat_prefix_for(&addr)
    } else {
        l.stat_prefix.clone()
    };
    let chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, fc)| filter_chain(fc, &format!("{path}.filter_chains[{i}]"), ctx))
        .collect::<Result<Vec<_>, _>>()?;
    check_unique_matches(&chains, path)?;
    let default_chain = match &l.default_filter_chain {
        Some(fc) => Some(filter_chain(
            fc,
            &format!("{path}.default_filter_chain"),
            ctx,
        )?),
        None => None,
    };
    if chains.is_empty() && default_chain.is_none() {
        return Err(ConfigError::new(
            format!("{path}.filter_chains"),
            "no filter chains",
        ));
    }
    if matches!(addr, ListenAddr::Pipe(..))
        && (original_dst_filter || l.use_original_dst.as_ref().is_some_and(|b| b.value))
    {
        return Err(ConfigError::new(
            path,
            "original destination needs a TCP listener",
        ));
    }
    Ok(Listener {
        name,
        addr,
        bind_to_port: l.bind_to_port.as_ref().is_none_or(|b| b.value),
        use_original_dst: l.use_original_dst.as_ref().is_some_and(|b| b.value),
        original_dst_filter,
        tls_inspector,
        http_inspector,
        chains,
        default_chain,
        inbound: l.traffic_direction == 1,
        drain: tokio::sync::watch::channel(false).0,
        stats: ListenerStats::new(stats, &stat_prefix),
    })
}

/// Envoy refuses listeners with two chains of identical match criteria.
fn check_unique_matches(chains: &[FilterChain], path: &str) -> Result<(), ConfigError> {
    for (i, a) in chains.iter().enumerate() {
        for (j, b) in chains.iter().enumerate().skip(i + 1) {
            if format!("{:?}", a.matcher) == format!("{:?}", b.matcher) {
                return Err(ConfigError::new(
                    format!("{path}.filter_chains[{j}].filter_chain_match"),
                    format!("same match criteria as filter_chains[{i}]"),
                ));
            }
        }
    }
    Ok(())
}

fn cidrs(ranges: &[CidrRange], path: &str) -> Result<Vec<Cidr>, ConfigError> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let addr = r.address_prefix.parse().map_err(|_| {
                ConfigError::new(
                    format!("{path}[{i}].address_prefix"),
                    format!("{:?} is not an IP", r.address_prefix),
                )
            })?;
            let len = r.prefix_len.as_ref().map_or(
                if matches!(addr, std::net::IpAddr::V4(_)) {
                    32
                } else {
                    128
                },
                |v| v.value,
            );
            let max = if matches!(addr, std::net::IpAddr::V4(_)) {
                32
            } else {
                128
            };
            if len > max {
                return Err(ConfigError::new(
                    format!("{path}[{i}].prefix_len"),
                    format!("{len} is longer than {max}"),
                ));
            }
            Ok(Cidr {
                addr,
                prefix_len: len as u8,
            })
        })
        .collect()
}

fn filter_chain(
    fc: &XdsFilterChain,
    path: &str,
    ctx: &BuildCtx<'_>,
) -> Result<FilterChain, ConfigError> {
    let stats = ctx.stats;
    let matcher = match &fc.filter_chain_match {
        Some(m) => {
            let mpath = format!("{path}.filter_chain_match");
            if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
                return Err(ConfigError::new(
                    format!("{mpath}.address_suffix"),
                    "not supported",
                ));
            }
            let port = match &m.destination_port {
                Some(p) if p.value > 0 && p.value <= u16::MAX as u32 => Some(p.value as u16),
                Some(p) => {
                    return Err(ConfigError::new(
                        format!("{mpath}.destination_port"),
                        format!("{} is not a port", p.value),
                    ))
                }
                None => None,
            };
            let source_ports = m
                .source_ports
                .iter()
                .map(|p| {
                    u16::try_from(*p).map_err(|_| {
                        ConfigError::new(
                            format!("{mpath}.source_ports"),
                            format!("{p} is not a port"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            ChainMatch {
                destination_port: port,
                prefix_ranges: cidrs(&m.prefix_ranges, &format!("{mpath}.prefix_ranges"))?,
                server_names: m
                    .server_names
                    .iter()
                    .map(|s| s.to_ascii_lowercase())
                    .collect(),
                transport_protocol: (!m.transport_protocol.is_empty())
                    .then(|| m.transport_protocol.clone()),
                application_protocols: m.application_protocols.clone(),
                direct_source_prefix_ranges: cidrs(
                    &m.direct_source_prefix_ranges,
                    &format!("{mpath}.direct_source_prefix_ranges"),
                )?,
                source_type: match m.source_type {
                    0 => SourceType::Any,
                    1 => SourceType::SameIpOrLoopback,
                    2 => SourceType::External,
                    other => {
                        return Err(ConfigError::new(
                            format!("{mpath}.source_type"),
                            format!("unknown value {other}"),
                        ))
                    }
                },
                source_prefix_ranges: cidrs(
                    &m.source_prefix_ranges,
                    &format!("{mpath}.source_prefix_ranges"),
                )?,
                source_ports,
            }
        }
        None => ChainMatch::default(),
    };
    if fc.filters.is_empty() {
        return Err(ConfigError::new(format!("{path}.filters"), "no filters"));
    }
    if fc.filters.len() > 1 {
        return Err(ConfigError::new(
            format!("{path}.filters[1]"),
            "only one (terminal) network filter per chain is supported",
        ));
    }
    let f = &fc.filters[0];
    let fpath = format!("{path}.filters[0]");
    let any = match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        _ => return Err(ConfigError::new(format!("{fpath}.typed_config"), "missing")),
    };
    let filter = match xds_client::decode::type_name(&any.type_url) {
        HCM => {
            let cfg: HttpConnectionManager = unpack(any, HCM, &format!("{fpath}.typed_config"))?;
            NetworkFilter::Http(Arc::new(hcm(&cfg, &format!("{fpath}.typed_config"), ctx)?))
        }
        TCP_PROXY => {
            let cfg: XdsTcpProxy = unpack(any, TCP_PROXY, &format!("{fpath}.typed_config"))?;
            NetworkFilter::Tcp(Arc::new(tcp(
                &cfg,
                &format!("{fpath}.typed_config"),
                stats,
            )?))
        }
        other => {
            return Err(ConfigError::new(
                format!("{fpath}.typed_config"),
                format!("network filter {other} is not supported"),
            ))
        }
    };
    Ok(FilterChain {
        name: Arc::from(fc.name.as_str()),
        matcher,
        filter,
    })
}

fn hcm(
    c: &HttpConnectionManager,
    path: &str,
    ctx: &BuildCtx<'_>,
) -> Result<HttpConnMgr, ConfigError> {
    let stats = ctx.stats;
    if c.stat_prefix.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.stat_prefix"),
            "must not be empty",
        ));
    }
    let codec = match c.codec_type {
        0 => Codec::Auto,
        1 => Codec::Http1,
        2 => Codec::Http2,
        3 => {
            return Err(ConfigError::new(
                format!("{path}.codec_type"),
                "HTTP3 is not supported",
            ))
        }
        other => {
            return Err(ConfigError::new(
                format!("{path}.codec_type"),
                format!("unknown value {other}"),
            ))
        }
    };
    let (routes, inline_routes) = match &c.route_specifier {
        Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => (
            Arc::new(crate::route::RouteSlot::loaded(route::build(
                rc,
                &format!("{path}.route_config"),
            )?)),
            true,
        ),
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
            let Some(store) = ctx.routes else {
                return Err(ConfigError::new(
                    format!("{path}.rds"),
                    "RDS needs dynamic_resources (an ADS control plane)",
                ));
            };
            // Only ADS is supported as the RDS config source.
            let ads = rds
                .config_source
                .as_ref()
                .is_some_and(|cs| matches!(cs.config_source_specifier, Some(envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(_))));
            if !ads {
                return Err(ConfigError::new(
                    format!("{path}.rds.config_source"),
                    "only `ads: {}` is supported as an RDS config source",
                ));
            }
            if rds.route_config_name.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.rds.route_config_name"),
                    "must not be empty",
                ));
            }
            let slot = store.slot(&rds.route_config_name);
            slot.add_stat_prefix(&c.stat_prefix);
            (slot, false)
        }
        Some(_) => return Err(ConfigError::new(path, "route specifier not supported")),
        None => return Err(ConfigError::new(path, "missing route_config")),
    };
    // HTTP filters: the router, last. Other filters are refused unless marked optional.
    let mut router: Option<Router> = None;
    for (i, hf) in c.http_filters.iter().enumerate() {
        let fpath = format!("{path}.http_filters[{i}]");
        let kind = match &hf.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => {
                xds_client::decode::type_name(&any.type_url).to_string()
            }
            Some(_) => {
                return Err(ConfigError::new(
                    format!("{fpath}.config_discovery"),
                    "not supported",
                ))
            }
            None => hf.name.clone(),
        };
        match (kind.as_str(), &hf.config_type) {
            (ROUTER, Some(http_filter::ConfigType::TypedConfig(any))) => {
                router = Some(unpack(any, ROUTER, &format!("{fpath}.typed_config"))?);
                if i + 1 != c.http_filters.len() {
                    return Err(ConfigError::new(
                        fpath,
                        "the router must be the last HTTP filter",
                    ));
                }
            }
            ("envoy.filters.http.router", None) => router = Some(Router::default()),
            (other, _) if hf.is_optional => {
                tracing::warn!("{fpath}: optional HTTP filter {other} is not supported; skipped");
            }
            (other, _) => {
                return Err(ConfigError::new(
                    fpath,
                    format!("HTTP filter {other} is not supported"),
                ))
            }
        }
    }
    let router = router.ok_or_else(|| {
        ConfigError::new(
            format!("{path}.http_filters"),
            "the router filter is required",
        )
    })?;
    let server_name = if c.server_name.is_empty() {
        "envoy"
    } else {
        c.server_name.as_str()
    };
    let server_name = HeaderValue::from_str(server_name)
        .map_err(|_| ConfigError::new(format!("{path}.server_name"), "invalid header value"))?;
    let server_header = match c.server_header_transformation {
        0 => ServerHeader::Overwrite,
        1 => ServerHeader::AppendIfAbsent,
        2 => ServerHeader::PassThrough,
        other => {
            return Err(ConfigError::new(
                format!("{path}.server_header_transformation"),
                format!("unknown value {other}"),
            ))
        }
    };
    let access_logs = access_logs(&c.access_log, &format!("{path}.access_log"))?;
    let upgrades = c
        .upgrade_configs
        .iter()
        .enumerate()
        .map(|(i, u)| {
            if !u.filters.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.upgrade_configs[{i}].filters"),
                    "not supported",
                ));
            }
            Ok((u.enabled.as_ref().is_none_or(|b| b.value))
                .then(|| u.upgrade_type.to_ascii_lowercase()))
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    Ok(HttpConnMgr {
        stat_prefix: Arc::from(c.stat_prefix.as_str()),
        codec,
        routes,
        inline_routes,
        server_name,
        server_header,
        access_logs,
        generate_request_id: c.generate_request_id.as_ref().is_none_or(|b| b.value),
        use_remote_address: c.use_remote_address.as_ref().is_some_and(|b| b.value),
        upgrades,
        header_case: super::header_case(
            c.http_protocol_options.as_ref(),
            &format!("{path}.http_protocol_options"),
        )?,
        accept_http_10: c
            .http_protocol_options
            .as_ref()
            .is_some_and(|o| o.accept_http_10),
        suppress_envoy_headers: router.suppress_envoy_headers,
        dynamic_stats: router.dynamic_stats.as_ref().is_none_or(|b| b.value),
        idle_timeout: {
            let o = c.common_http_protocol_options.as_ref();
            if o.is_some_and(|o| o.max_requests_per_connection.is_some()) {
                return Err(ConfigError::new(
                    format!("{path}.common_http_protocol_options.max_requests_per_connection"),
                    "not supported on the connection manager",
                ));
            }
            match o.and_then(|o| o.idle_timeout.as_ref()) {
                Some(d) => {
                    let d = duration(
                        d,
                        &format!("{path}.common_http_protocol_options.idle_timeout"),
                    )?;
                    (!d.is_zero()).then_some(d)
                }
                None => Some(DEFAULT_CONNECTION_IDLE_TIMEOUT),
            }
        },
        stream_idle_timeout: match &c.stream_idle_timeout {
            Some(d) => {
                let d = duration(d, &format!("{path}.stream_idle_timeout"))?;
                (!d.is_zero()).then_some(d)
            }
            None => Some(DEFAULT_STREAM_IDLE_TIMEOUT),
        },
        internal_cidrs: match &c.internal_address_config {
            Some(i) => {
                if i.unix_sockets {
                    return Err(ConfigError::new(
                        format!("{path}.internal_address_config.unix_sockets"),
                        "not supported",
                    ));
                }
                cidrs(
                    &i.cidr_ranges,
                    &format!("{path}.internal_address_config.cidr_ranges"),
                )?
            }
            None => Vec::new(),
        },
        stats: HttpStats::new(stats, &c.stat_prefix),
    })
}

fn tcp(c: &XdsTcpProxy, path: &str, stats: &Stats) -> Result<TcpProxy, ConfigError> {
    if c.stat_prefix.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.stat_prefix"),
            "must not be empty",
        ));
    }
    if !c.access_log.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.access_log"),
            "tcp_proxy access logs are not supported yet",
        ));
    }
    let (clusters, total_weight) = match &c.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(name)) if !name.is_empty() => {
            (vec![(Arc::from(name.as_str()), 1)], 1)
        }
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            let mut total = 0u64;
            let mut out = Vec::new();
            for (i, cw) in w.clusters.iter().enumerate() {
                if cw.name.is_empty() {
                    return Err(ConfigError::new(
                        format!("{path}.weighted_clusters.clusters[{i}].name"),
                        "must not be empty",
                    ));
                }
                total += cw.weight as u64;
                out.push((Arc::from(cw.name.as_str()), total));
            }
            if total == 0 {
                return Err(ConfigError::new(
                    format!("{path}.weighted_clusters"),
                    "weights sum to zero",
                ));
            }
            (out, total)
        }
        _ => {
            return Err(ConfigError::new(
                format!("{path}.cluster"),
                "missing cluster or weighted_clusters",
            ))
        }
    };
    let idle_timeout = match &c.idle_timeout {
        Some(d) => {
            let d = duration(d, &format!("{path}.idle_timeout"))?;
            (!d.is_zero()).then_some(d)
        }
        None => Some(DEFAULT_IDLE_TIMEOUT),
    };
    Ok(TcpProxy {
        stat_prefix: Arc::from(c.stat_prefix.as_str()),
        clusters,
        total_weight,
        idle_timeout,
        stats: TcpStats::new(stats, &c.stat_prefix),
    })
}

fn access_logs(logs: &[XdsAccessLog], path: &str) -> Result<Vec<Arc<AccessLog>>, ConfigError> {
    let mut out = Vec::new();
    for (i, l) in logs.iter().enumerate() {
        let lpath = format!("{path}[{i}]");
        if l.filter.is_some() {
            return Err(ConfigError::new(format!("{lpath}.filter"), "not supported"));
        }
        let Some(access_log::ConfigType::TypedConfig(any)) = &l.config_type else {
            return Err(ConfigError::new(format!("{lpath}.typed_config"), "missing"));
        };
        let tpath = format!("{lpath}.typed_config");
        let (format, sink) = match xds_client::decode::type_name(&any.type_url) {
            FILE_LOG => {
                let f: FileAccessLog = unpack(any, FILE_LOG, &tpath)?;
                let format = match &f.access_log_format {
                    Some(file_access_log::AccessLogFormat::Format(s)) => s.clone(),
                    Some(file_access_log::AccessLogFormat::LogFormat(sfs)) => {
                        text_format(sfs, &format!("{tpath}.log_format"))?
                    }
                    Some(_) => {
                        return Err(ConfigError::new(
                            tpath,
                            "JSON access log formats are not supported yet",
                        ))
                    }
                    None => DEFAULT_FORMAT.to_string(),
                };
                if f.path.is_empty() {
                    return Err(ConfigError::new(
                        format!("{tpath}.path"),
                        "must not be empty",
                    ));
                }
                (format, Sink::File(f.path))
            }
            STDOUT_LOG => {
                let f: StdoutAccessLog = unpack(any, STDOUT_LOG, &tpath)?;
                let format = match &f.access_log_format {
                    Some(envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat::LogFormat(sfs)) => {
                        text_format(sfs, &format!("{tpath}.log_format"))?
                    }
                    None => DEFAULT_FORMAT.to_string(),
                };
                (format, Sink::Stdout)
            }
            STDERR_LOG => {
                let f: StderrAccessLog = unpack(any, STDERR_LOG, &tpath)?;
                let format = match &f.access_log_format {
                    Some(envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stderr_access_log::AccessLogFormat::LogFormat(sfs)) => {
                        text_format(sfs, &format!("{tpath}.log_format"))?
                    }
                    None => DEFAULT_FORMAT.to_string(),
                };
                (format, Sink::Stderr)
            }
            other => {
                return Err(ConfigError::new(
                    tpath,
                    format!("access logger {other} is not supported"),
                ))
            }
        };
        let log = AccessLog::new(&format, sink)
            .map_err(|e| ConfigError::new(lpath.clone(), e.to_string()))?;
        out.push(Arc::new(log));
    }
    Ok(out)
}

fn text_format(sfs: &SubstitutionFormatString, path: &str) -> Result<String, ConfigError> {
    if !sfs.formatters.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.formatters"),
            "not supported",
        ));
    }
    match &sfs.format {
        Some(substitution_format_string::Format::TextFormat(s)) => Ok(s.clone()),
        Some(substitution_format_string::Format::TextFormatSource(ds)) => {
            let b = route::data_source(ds, &format!("{path}.text_format_source"))?;
            String::from_utf8(b.to_vec())
                .map_err(|_| ConfigError::new(format!("{path}.text_format_source"), "not UTF-8"))
        }
        Some(_) => Err(ConfigError::new(
            path,
            "JSON access log formats are not supported yet",
        )),
        None => Ok(DEFAULT_FORMAT.to_string()),
    }
}
