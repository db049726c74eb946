//! `Cluster` → `upstream::Cluster`.
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster as XdsCluster};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};

use super::address::{host_addr, HostAddr as CfgAddr};
use super::{duration, unpack, ConfigError};
use crate::policy::outlier::OutlierConfig;
use crate::upstream::dns::{DnsTargets, Family};
use crate::upstream::lb::{self, Balancer};
use crate::upstream::{Cluster, ClusterStats, Discovery, HostSet, Membership, UpstreamProtocol};

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
    let lb = lb::config::lb_config(c, path, discovery_type)?;
    let outlier = c
        .outlier_detection
        .as_ref()
        .map(|o| OutlierConfig::from_proto(o, &format!("{path}.outlier_detection")))
        .transpose()?;
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
        None => (Membership::default(), Vec::new()),
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
    let hosts = Arc::new(ArcSwap::from_pointee(HostSet::default()));
    let dynamic = matches!(
        discovery,
        Discovery::Eds { .. } | Discovery::StrictDns(_) | Discovery::LogicalDns(_)
    );
    let balancer = Arc::new(Balancer::new(
        lb,
        outlier,
        stats,
        &format!("cluster.{stat_name}."),
        hosts.clone(),
        dynamic,
    ));
    let cluster = Cluster {
        name: Arc::from(c.name.as_str()),
        stat_name,
        discovery,
        connect_timeout,
        protocol,
        header_case,
        lb: balancer,
        hosts,
        bind,
        orig_dst_hosts: DashMap::new(),
        stats: cstats,
        breakers: crate::policy::breaker::CircuitBreakers::new(&breaker_cfg, stats, &prefix),
        retry_stats: crate::policy::retry::RetryStats::new(stats, &prefix),
        retry_codes: crate::upstream::CodeStats::new(stats, &format!("{prefix}retry.")),
        idle_timeout,
        max_requests_per_connection,
    };
    cluster.set_membership(static_hosts);
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

/// Hosts of a `ClusterLoadAssignment` (static `load_assignment` or EDS): every endpoint
/// with its priority, locality, health and weight, plus `policy.overprovisioning_factor`
/// (see `upstream::lb::config::membership`). Hosts at an address `previous` has keep their
/// identity, so their pools, counters and outlier state survive an EDS update. For DNS
/// clusters the names are returned instead.
pub(crate) fn assignment_hosts(
    la: &envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
    path: &str,
    dns: bool,
    previous: &HostSet,
) -> Result<(Membership, Vec<lb::config::DnsName>), ConfigError> {
    lb::config::membership(la, path, dns, previous)
}
