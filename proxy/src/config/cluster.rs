//! `Cluster` → `upstream::Cluster`.
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster as XdsCluster};
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};

use super::address::{host_addr, HostAddr as CfgAddr};
use super::{duration, unpack, ConfigError};
use crate::upstream::dns::{DnsTargets, Family};
use crate::upstream::{
    Cluster, ClusterStats, Discovery, Host, HostAddr, HostSet, LbPolicy, UpstreamProtocol,
};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Envoy's default idle timeout for upstream HTTP connections.
const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Compiles a cluster. DNS clusters start empty; `upstream::dns::resolve` fills them.
pub(crate) fn build(
    c: &XdsCluster,
    path: &str,
    ctx: &super::BuildCtx<'_>,
) -> Result<Cluster, ConfigError> {
    let stats = ctx.stats;
    if c.name.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "must not be empty",
        ));
    }
    let discovery_type = match &c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(*t)
            .map_err(|_| ConfigError::new(format!("{path}.type"), format!("unknown value {t}")))?,
        Some(cluster::ClusterDiscoveryType::ClusterType(_)) => {
            return Err(ConfigError::new(
                format!("{path}.cluster_type"),
                "not supported",
            ))
        }
        None => cluster::DiscoveryType::Static,
    };
    let connect_timeout = match &c.connect_timeout {
        Some(d) => duration(d, &format!("{path}.connect_timeout"))?,
        None => Duration::from_secs(5),
    };
    if connect_timeout.is_zero() {
        return Err(ConfigError::new(
            format!("{path}.connect_timeout"),
            "must be greater than 0",
        ));
    }
    let lb = match cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest {
            choice_count: c
                .lb_config
                .as_ref()
                .and_then(|cfg| match cfg {
                    cluster::LbConfig::LeastRequestLbConfig(l) => {
                        l.choice_count.as_ref().map(|v| v.value)
                    }
                    _ => None,
                })
                .unwrap_or(2),
        },
        Ok(cluster::LbPolicy::Random) => LbPolicy::Random,
        Ok(cluster::LbPolicy::ClusterProvided)
            if discovery_type == cluster::DiscoveryType::OriginalDst =>
        {
            LbPolicy::RoundRobin
        }
        Ok(other) => {
            return Err(ConfigError::new(
                format!("{path}.lb_policy"),
                format!("{} is not supported", other.as_str_name()),
            ))
        }
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.lb_policy"),
                format!("unknown value {}", c.lb_policy),
            ))
        }
    };
    if let Some(cluster::LbConfig::LeastRequestLbConfig(l)) = &c.lb_config {
        if l.choice_count.as_ref().is_some_and(|v| v.value < 2) {
            return Err(ConfigError::new(
                format!("{path}.least_request_lb_config.choice_count"),
                "must be at least 2",
            ));
        }
    }
    let (protocol, header_case, common) = protocol(c, path)?;
    let breaker_cfg = match &c.circuit_breakers {
        Some(cb) => crate::policy::breaker::BreakerConfig::from_proto(
            cb,
            &format!("{path}.circuit_breakers"),
        )?,
        None => crate::policy::breaker::BreakerConfig::default(),
    };
    // `common_http_protocol_options` on the cluster (deprecated) or in the typed protocol
    // options; the typed one wins, as in Envoy.
    let common = common.or(c.common_http_protocol_options);
    let idle_timeout = match common.as_ref().and_then(|o| o.idle_timeout.as_ref()) {
        Some(d) => {
            let d = duration(
                d,
                &format!("{path}.common_http_protocol_options.idle_timeout"),
            )?;
            (!d.is_zero()).then_some(d)
        }
        None => Some(DEFAULT_UPSTREAM_IDLE_TIMEOUT),
    };
    let max_requests_per_connection = common
        .as_ref()
        .and_then(|o| o.max_requests_per_connection.as_ref())
        .or(c.max_requests_per_connection.as_ref())
        .map(|v| v.value)
        .filter(|v| *v > 0);
    let bind = match &c.upstream_bind_config {
        Some(b) => {
            match &b.source_address {
                Some(sa) => {
                    let addr = envoy_types::pb::envoy::config::core::v3::Address {
                    address: Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                        sa.clone(),
                    )),
                };
                    match host_addr(
                        &addr,
                        &format!("{path}.upstream_bind_config.source_address"),
                    )? {
                        CfgAddr::Ip(a) => Some(a),
                        _ => {
                            return Err(ConfigError::new(
                                format!("{path}.upstream_bind_config.source_address"),
                                "must be an IP address",
                            ))
                        }
                    }
                }
                None => None,
            }
        }
        None => None,
    };

    // Endpoints.
    let dns = matches!(
        discovery_type,
        cluster::DiscoveryType::StrictDns | cluster::DiscoveryType::LogicalDns
    );
    let (static_hosts, dns_names) = match &c.load_assignment {
        Some(la) => assignment_hosts(
            la,
            &format!("{path}.load_assignment"),
            dns,
            &HostSet::default(),
        )?,
        None => (Vec::new(), Vec::new()),
    };

    let family = match cluster::DnsLookupFamily::try_from(c.dns_lookup_family) {
        Ok(cluster::DnsLookupFamily::Auto) => Family::Auto,
        Ok(cluster::DnsLookupFamily::V4Only) => Family::V4Only,
        Ok(cluster::DnsLookupFamily::V6Only) => Family::V6Only,
        Ok(cluster::DnsLookupFamily::V4Preferred) => Family::V4Preferred,
        Ok(cluster::DnsLookupFamily::All) => Family::All,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.dns_lookup_family"),
                format!("unknown value {}", c.dns_lookup_family),
            ))
        }
    };
    let refresh = match &c.dns_refresh_rate {
        Some(d) => duration(d, &format!("{path}.dns_refresh_rate"))?.max(Duration::from_millis(1)),
        None => Duration::from_secs(5),
    };
    let discovery = match discovery_type {
        cluster::DiscoveryType::Static => Discovery::Static,
        cluster::DiscoveryType::StrictDns => Discovery::StrictDns(DnsTargets {
            names: dns_names,
            family,
            refresh,
        }),
        cluster::DiscoveryType::LogicalDns => {
            if dns_names.len() != 1 {
                return Err(ConfigError::new(
                    format!("{path}.load_assignment"),
                    "LOGICAL_DNS clusters must have exactly one endpoint",
                ));
            }
            Discovery::LogicalDns(DnsTargets {
                names: dns_names,
                family,
                refresh,
            })
        }
        cluster::DiscoveryType::OriginalDst => {
            if c.load_assignment
                .as_ref()
                .is_some_and(|la| !la.endpoints.is_empty())
            {
                return Err(ConfigError::new(
                    format!("{path}.load_assignment"),
                    "ORIGINAL_DST clusters cannot have endpoints",
                ));
            }
            let header = match &c.lb_config {
                Some(cluster::LbConfig::OriginalDstLbConfig(o)) if o.use_http_header => {
                    let name = if o.http_header_name.is_empty() {
                        "x-envoy-original-dst-host"
                    } else {
                        o.http_header_name.as_str()
                    };
                    Some(
                        http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                            .map_err(|_| {
                                ConfigError::new(
                                    format!("{path}.original_dst_lb_config.http_header_name"),
                                    "invalid header name",
                                )
                            })?,
                    )
                }
                _ => None,
            };
            Discovery::OriginalDst { header }
        }
        cluster::DiscoveryType::Eds => {
            if !ctx.xds {
                return Err(ConfigError::new(
                    format!("{path}.type"),
                    "EDS needs dynamic_resources (an ADS control plane)",
                ));
            }
            let eds = c.eds_cluster_config.as_ref();
            let ads = eds.and_then(|e| e.eds_config.as_ref()).is_none_or(|cs| {
                matches!(
                    cs.config_source_specifier,
                    Some(envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(_))
                )
            });
            if !ads {
                return Err(ConfigError::new(
                    format!("{path}.eds_cluster_config.eds_config"),
                    "only `ads: {}` is supported as an EDS config source",
                ));
            }
            let service = eds
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            Discovery::Eds {
                service_name: Arc::from(service),
            }
        }
    };

    let stat_name: Arc<str> = if c.alt_stat_name.is_empty() {
        Arc::from(c.name.as_str())
    } else {
        Arc::from(c.alt_stat_name.as_str())
    };
    let cstats = ClusterStats::new(stats, &stat_name);
    let prefix = format!("cluster.{stat_name}.");
    let cluster = Cluster {
        name: Arc::from(c.name.as_str()),
        stat_name,
        discovery,
        connect_timeout,
        protocol,
        header_case,
        lb,
        hosts: ArcSwap::from_pointee(HostSet::default()),
        rr: AtomicUsize::new(rand::random::<u16>() as usize),
        bind,
        orig_dst_hosts: DashMap::new(),
        stats: cstats,
        breakers: crate::policy::breaker::CircuitBreakers::new(&breaker_cfg, stats, &prefix),
        retry_stats: crate::policy::retry::RetryStats::new(stats, &prefix),
        retry_codes: crate::upstream::CodeStats::new(stats, &format!("{prefix}retry.")),
        idle_timeout,
        max_requests_per_connection,
    };
    cluster.set_hosts(static_hosts);
    Ok(cluster)
}

/// The upstream protocol, HTTP/1 header case and the typed options'
/// `common_http_protocol_options`, if any.
#[allow(clippy::type_complexity)]
fn protocol(
    c: &XdsCluster,
    path: &str,
) -> Result<
    (
        UpstreamProtocol,
        super::HeaderCase,
        Option<envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions>,
    ),
    ConfigError,
> {
    use http_protocol_options::explicit_http_config::ProtocolConfig;
    use http_protocol_options::UpstreamProtocolOptions as U;
    let mut case = super::header_case(
        c.http_protocol_options.as_ref(),
        &format!("{path}.http_protocol_options"),
    )?;
    let mut common = None;
    let mut proto = if c.http2_protocol_options.is_some() {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    for (name, any) in &c.typed_extension_protocol_options {
        let opath = format!("{path}.typed_extension_protocol_options[{name:?}]");
        if xds_client::decode::type_name(&any.type_url) != HTTP_PROTOCOL_OPTIONS {
            return Err(ConfigError::new(
                opath,
                format!("{} is not supported", any.type_url),
            ));
        }
        let opts: HttpProtocolOptions = unpack(any, HTTP_PROTOCOL_OPTIONS, &opath)?;
        if opts.common_http_protocol_options.is_some() {
            common = opts.common_http_protocol_options;
        }
        proto = match opts.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                Some(ProtocolConfig::HttpProtocolOptions(h1)) => {
                    case = super::header_case(
                        Some(&h1),
                        &format!("{opath}.explicit_http_config.http_protocol_options"),
                    )?;
                    UpstreamProtocol::Http1
                }
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(ConfigError::new(
                        format!("{opath}.explicit_http_config"),
                        "HTTP/3 is not supported",
                    ))
                }
                None => {
                    return Err(ConfigError::new(
                        format!("{opath}.explicit_http_config"),
                        "missing protocol",
                    ))
                }
            },
            Some(U::UseDownstreamProtocolConfig(d)) => {
                case = super::header_case(
                    d.http_protocol_options.as_ref(),
                    &format!("{opath}.use_downstream_protocol_config.http_protocol_options"),
                )?;
                UpstreamProtocol::UseDownstream
            }
            Some(U::AutoConfig(_)) => {
                return Err(ConfigError::new(
                    format!("{opath}.auto_config"),
                    "not supported (needs upstream TLS ALPN)",
                ))
            }
            None => proto,
        };
    }
    if c.protocol_selection == cluster::ClusterProtocolSelection::UseDownstreamProtocol as i32 {
        proto = UpstreamProtocol::UseDownstream;
    }
    Ok((proto, case, common))
}

/// Hosts of a `ClusterLoadAssignment` (static `load_assignment` or EDS).
///
/// Priorities: the lowest priority level with a healthy host serves (failover without
/// Envoy's overprovisioning factor, which the policy work adds). Hosts unchanged from
/// `previous` (same address and weight) are reused, so their pools and counters survive an
/// EDS update. For DNS clusters the names are returned instead.
#[allow(clippy::type_complexity)]
pub(crate) fn assignment_hosts(
    la: &envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
    path: &str,
    dns: bool,
    previous: &HostSet,
) -> Result<(Vec<Arc<Host>>, Vec<(String, u16, u32)>), ConfigError> {
    use std::collections::BTreeMap;
    let mut by_priority: BTreeMap<u32, Vec<Arc<Host>>> = BTreeMap::new();
    let mut dns_names = Vec::new();
    for (li, loc) in la.endpoints.iter().enumerate() {
        let lpath = format!("{path}.endpoints[{li}]");
        if dns && loc.priority != 0 {
            return Err(ConfigError::new(
                format!("{lpath}.priority"),
                "DNS clusters support only priority 0",
            ));
        }
        for (ei, lbe) in loc.lb_endpoints.iter().enumerate() {
            let epath = format!("{lpath}.lb_endpoints[{ei}]");
            let weight = lbe.load_balancing_weight.as_ref().map_or(1, |w| w.value);
            if weight == 0 {
                return Err(ConfigError::new(
                    format!("{epath}.load_balancing_weight"),
                    "must be at least 1",
                ));
            }
            // Hosts the control plane marks unhealthy or draining take no new requests.
            let healthy = !matches!(
                HealthStatus::try_from(lbe.health_status),
                Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout)
            );
            let endpoint = match &lbe.host_identifier {
                Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e)) => e,
                _ => return Err(ConfigError::new(format!("{epath}.endpoint"), "missing")),
            };
            let apath = format!("{epath}.endpoint.address");
            let addr = endpoint
                .address
                .as_ref()
                .ok_or_else(|| ConfigError::new(apath.clone(), "missing"))?;
            let host_addr = match (host_addr(addr, &apath)?, dns) {
                (CfgAddr::Name(name, port), true) => {
                    dns_names.push((name, port, weight));
                    continue;
                }
                (CfgAddr::Ip(ip), true) => {
                    dns_names.push((ip.ip().to_string(), ip.port(), weight));
                    continue;
                }
                (CfgAddr::Name(name, _), false) => {
                    return Err(ConfigError::new(
                        format!("{apath}.socket_address.address"),
                        format!(
                        "{name:?} is not an IP address (use STRICT_DNS or LOGICAL_DNS for names)"
                    ),
                    ))
                }
                (CfgAddr::Ip(ip), false) => HostAddr::Tcp(ip),
                (CfgAddr::Pipe(p), _) => HostAddr::Unix(p),
            };
            if !healthy {
                continue;
            }
            let host = previous
                .hosts
                .iter()
                .find(|h| h.addr == host_addr && h.weight == weight)
                .cloned()
                .unwrap_or_else(|| {
                    let name: Arc<str> = Arc::from(host_addr.to_string().as_str());
                    Arc::new(Host::new(host_addr, name, weight))
                });
            by_priority.entry(loc.priority).or_default().push(host);
        }
    }
    let hosts = by_priority
        .into_values()
        .find(|h| !h.is_empty())
        .unwrap_or_default();
    Ok((hosts, dns_names))
}
