//! Compiles a cluster's load-balancing settings and its endpoints.
//!
//! - [`lb_config`]: `lb_policy` with `least_request_lb_config` / `ring_hash_lb_config` /
//!   `maglev_lb_config` and `common_lb_config`, or the `load_balancing_policy` extension form
//!   (round_robin, least_request, random, ring_hash, maglev), into an [`LbConfig`].
//! - [`membership`]: a `ClusterLoadAssignment` (static `load_assignment` or EDS) into a
//!   [`Membership`] of hosts with priority, locality, health, weight and hash key.
//!
//! Anything that would change balancing and is not implemented (slow start, zone-aware
//! routing, bounded-load hashing, MURMUR_HASH_2, drop overloads) is refused naming its path.
use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    self, CommonLbConfig, LbConfig as XdsLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster as XdsCluster, LoadBalancingPolicy};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
use envoy_types::pb::google::protobuf::value::Kind;

use super::hash::{maglev_table_size, RingHashConfig};
use super::snapshot::{EdsHealth, Locality, Member, Membership};
use super::{priority, LbConfig, LbPolicy};
use crate::config::address::{host_addr, HostAddr as CfgAddr};
use crate::config::{unpack, ConfigError};
use crate::upstream::{Host, HostAddr, HostSet};

const ROUND_ROBIN: &str = "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin";
const LEAST_REQUEST: &str =
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest";
const RANDOM: &str = "envoy.extensions.load_balancing_policies.random.v3.Random";
const RING_HASH: &str = "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash";
const MAGLEV: &str = "envoy.extensions.load_balancing_policies.maglev.v3.Maglev";

/// A DNS target of a STRICT_DNS / LOGICAL_DNS cluster: name, port, weight.
pub type DnsName = (String, u16, u32);

/// Compiles the cluster's balancing configuration for a cluster of type `ty`. ORIGINAL_DST
/// clusters accept `CLUSTER_PROVIDED` (their own balancer picks the destination).
pub fn lb_config(
    c: &XdsCluster,
    path: &str,
    ty: cluster::DiscoveryType,
) -> Result<LbConfig, ConfigError> {
    let original_dst = ty == cluster::DiscoveryType::OriginalDst;
    let common = c.common_lb_config.as_ref();
    let cpath = format!("{path}.common_lb_config");
    let mut cfg = LbConfig {
        panic_threshold: priority::panic_threshold(common, &cpath)?,
        ..LbConfig::default()
    };
    if let Some(cm) = common {
        cfg.locality_weighted = common_locality(cm, &cpath)?;
        if let Some(ch) = &cm.consistent_hashing_lb_config {
            if ch.hash_balance_factor.is_some() {
                return Err(ConfigError::new(
                    format!("{cpath}.consistent_hashing_lb_config.hash_balance_factor"),
                    "bounded-load hashing is not supported",
                ));
            }
            // Envoy allows hostname hashing here only for STRICT_DNS clusters.
            if ch.use_hostname_for_hashing && ty != cluster::DiscoveryType::StrictDns {
                return Err(ConfigError::new(
                    format!("{cpath}.consistent_hashing_lb_config.use_hostname_for_hashing"),
                    format!("cannot be used for a cluster of type {}", ty.as_str_name()),
                ));
            }
            cfg.use_hostname_for_hashing = ch.use_hostname_for_hashing;
        }
        if cm.close_connections_on_host_set_change {
            return Err(ConfigError::new(
                format!("{cpath}.close_connections_on_host_set_change"),
                "not supported",
            ));
        }
        if cm.override_host_status.is_some() {
            return Err(ConfigError::new(
                format!("{cpath}.override_host_status"),
                "not supported",
            ));
        }
    }
    if let Some(lbp) = &c.load_balancing_policy {
        return extension_policy(lbp, &format!("{path}.load_balancing_policy"), cfg);
    }
    cfg.policy = match cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(cluster::LbPolicy::LeastRequest) => {
            let l = match &c.lb_config {
                Some(XdsLbConfig::LeastRequestLbConfig(l)) => Some(l),
                _ => None,
            };
            let lpath = format!("{path}.least_request_lb_config");
            if l.is_some_and(|l| l.slow_start_config.is_some()) {
                return Err(ConfigError::new(
                    format!("{lpath}.slow_start_config"),
                    "slow start is not supported",
                ));
            }
            least_request(
                l.and_then(|l| l.choice_count).map(|v| v.value),
                l.and_then(|l| l.active_request_bias.as_ref())
                    .map(|b| b.default_value),
                false,
                &lpath,
            )?
        }
        Ok(cluster::LbPolicy::Random) => LbPolicy::Random,
        Ok(cluster::LbPolicy::RingHash) => {
            let rpath = format!("{path}.ring_hash_lb_config");
            match &c.lb_config {
                Some(XdsLbConfig::RingHashLbConfig(r)) => {
                    LbPolicy::RingHash(RingHashConfig::from_proto(r, &rpath)?)
                }
                _ => LbPolicy::RingHash(RingHashConfig::default()),
            }
        }
        Ok(cluster::LbPolicy::Maglev) => {
            let m = match &c.lb_config {
                Some(XdsLbConfig::MaglevLbConfig(m)) => Some(m),
                _ => None,
            };
            LbPolicy::Maglev(maglev_table_size(m, &format!("{path}.maglev_lb_config"))?)
        }
        Ok(cluster::LbPolicy::ClusterProvided) if original_dst => LbPolicy::RoundRobin,
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
    // A policy-specific config for another policy is ignored, as Envoy ignores it; the round
    // robin one is still checked for settings we would otherwise drop.
    if let Some(XdsLbConfig::RoundRobinLbConfig(r)) = &c.lb_config {
        if r.slow_start_config.is_some() {
            return Err(ConfigError::new(
                format!("{path}.round_robin_lb_config.slow_start_config"),
                "slow start is not supported",
            ));
        }
    }
    Ok(cfg)
}

/// `common_lb_config.locality_weighted_lb_config` (zone-aware routing needs a local cluster
/// Petrel does not model, so it is refused).
fn common_locality(cm: &CommonLbConfig, path: &str) -> Result<bool, ConfigError> {
    use cluster::common_lb_config::LocalityConfigSpecifier as L;
    match &cm.locality_config_specifier {
        Some(L::LocalityWeightedLbConfig(_)) => Ok(true),
        Some(L::ZoneAwareLbConfig(_)) => Err(ConfigError::new(
            format!("{path}.zone_aware_lb_config"),
            "zone-aware routing is not supported",
        )),
        None => Ok(false),
    }
}

/// `LocalityLbConfig` of the extension policies.
fn extension_locality(
    l: Option<&lbp::common::v3::LocalityLbConfig>,
    path: &str,
) -> Result<bool, ConfigError> {
    use lbp::common::v3::locality_lb_config::LocalityConfigSpecifier as L;
    match l.and_then(|l| l.locality_config_specifier.as_ref()) {
        Some(L::LocalityWeightedLbConfig(_)) => Ok(true),
        Some(L::ZoneAwareLbConfig(_)) => Err(ConfigError::new(
            format!("{path}.locality_lb_config.zone_aware_lb_config"),
            "zone-aware routing is not supported",
        )),
        None => Ok(false),
    }
}

fn least_request(
    choice_count: Option<u32>,
    bias: Option<f64>,
    full_scan: bool,
    path: &str,
) -> Result<LbPolicy, ConfigError> {
    let choice_count = choice_count.unwrap_or(2);
    if choice_count < 2 {
        return Err(ConfigError::new(
            format!("{path}.choice_count"),
            "must be at least 2",
        ));
    }
    if let Some(b) = bias {
        if !(b >= 0.0 && b.is_finite()) {
            return Err(ConfigError::new(
                format!("{path}.active_request_bias"),
                "must be a non-negative number",
            ));
        }
    }
    Ok(LbPolicy::LeastRequest {
        choice_count,
        active_request_bias: bias.unwrap_or(1.0),
        bias_explicit: bias.is_some(),
        full_scan,
    })
}

/// The `load_balancing_policy` extension form: the first policy Petrel implements wins, as
/// Envoy takes the first one it has a factory for.
#[allow(deprecated)] // enable_full_scan, use_hostname_for_hashing, hash_balance_factor
fn extension_policy(
    p: &LoadBalancingPolicy,
    path: &str,
    mut cfg: LbConfig,
) -> Result<LbConfig, ConfigError> {
    for (i, pol) in p.policies.iter().enumerate() {
        let ppath = format!("{path}.policies[{i}].typed_extension_config");
        let Some(tc) = pol.typed_extension_config.as_ref() else {
            return Err(ConfigError::new(ppath, "missing"));
        };
        let Some(any) = tc.typed_config.as_ref() else {
            return Err(ConfigError::new(format!("{ppath}.typed_config"), "missing"));
        };
        let tpath = format!("{ppath}.typed_config");
        match xds_client::decode::type_name(&any.type_url) {
            ROUND_ROBIN => {
                let r: lbp::round_robin::v3::RoundRobin = unpack(any, ROUND_ROBIN, &tpath)?;
                if r.slow_start_config.is_some() {
                    return Err(ConfigError::new(
                        format!("{tpath}.slow_start_config"),
                        "slow start is not supported",
                    ));
                }
                cfg.locality_weighted = extension_locality(r.locality_lb_config.as_ref(), &tpath)?;
                cfg.policy = LbPolicy::RoundRobin;
            }
            LEAST_REQUEST => {
                use lbp::least_request::v3::least_request::SelectionMethod;
                let l: lbp::least_request::v3::LeastRequest = unpack(any, LEAST_REQUEST, &tpath)?;
                if l.slow_start_config.is_some() {
                    return Err(ConfigError::new(
                        format!("{tpath}.slow_start_config"),
                        "slow start is not supported",
                    ));
                }
                let full_scan = l.selection_method == SelectionMethod::FullScan as i32
                    || l.enable_full_scan.is_some_and(|b| b.value);
                cfg.locality_weighted = extension_locality(l.locality_lb_config.as_ref(), &tpath)?;
                cfg.policy = least_request(
                    l.choice_count.map(|v| v.value),
                    l.active_request_bias.as_ref().map(|b| b.default_value),
                    full_scan,
                    &tpath,
                )?;
            }
            RANDOM => {
                let r: lbp::random::v3::Random = unpack(any, RANDOM, &tpath)?;
                cfg.locality_weighted = extension_locality(r.locality_lb_config.as_ref(), &tpath)?;
                cfg.policy = LbPolicy::Random;
            }
            RING_HASH => {
                let r: lbp::ring_hash::v3::RingHash = unpack(any, RING_HASH, &tpath)?;
                if r.hash_function != 0 {
                    return Err(ConfigError::new(
                        format!("{tpath}.hash_function"),
                        "only XX_HASH is supported",
                    ));
                }
                if r.hash_balance_factor.is_some() {
                    return Err(ConfigError::new(
                        format!("{tpath}.hash_balance_factor"),
                        "bounded-load hashing is not supported",
                    ));
                }
                let legacy = cluster::RingHashLbConfig {
                    minimum_ring_size: r.minimum_ring_size,
                    maximum_ring_size: r.maximum_ring_size,
                    hash_function: 0,
                };
                cfg.policy = LbPolicy::RingHash(RingHashConfig::from_proto(&legacy, &tpath)?);
                cfg.use_hostname_for_hashing = r.use_hostname_for_hashing;
                consistent_hashing(r.consistent_hashing_lb_config.as_ref(), &tpath, &mut cfg)?;
                cfg.locality_weighted = r.locality_weighted_lb_config.is_some();
            }
            MAGLEV => {
                let m: lbp::maglev::v3::Maglev = unpack(any, MAGLEV, &tpath)?;
                let legacy = cluster::MaglevLbConfig {
                    table_size: m.table_size,
                };
                cfg.policy = LbPolicy::Maglev(maglev_table_size(Some(&legacy), &tpath)?);
                cfg.use_hostname_for_hashing = false;
                consistent_hashing(m.consistent_hashing_lb_config.as_ref(), &tpath, &mut cfg)?;
                cfg.locality_weighted = m.locality_weighted_lb_config.is_some();
            }
            _ => continue,
        }
        return Ok(cfg);
    }
    Err(ConfigError::new(
        format!("{path}.policies"),
        "no supported policy (Petrel implements round_robin, least_request, random, ring_hash and maglev)",
    ))
}

fn consistent_hashing(
    c: Option<&lbp::common::v3::ConsistentHashingLbConfig>,
    path: &str,
    cfg: &mut LbConfig,
) -> Result<(), ConfigError> {
    let Some(c) = c else { return Ok(()) };
    let cpath = format!("{path}.consistent_hashing_lb_config");
    if c.hash_balance_factor.is_some() {
        return Err(ConfigError::new(
            format!("{cpath}.hash_balance_factor"),
            "bounded-load hashing is not supported",
        ));
    }
    if !c.hash_policy.is_empty() {
        return Err(ConfigError::new(
            format!("{cpath}.hash_policy"),
            "not supported (use the route's hash_policy)",
        ));
    }
    cfg.use_hostname_for_hashing = c.use_hostname_for_hashing;
    Ok(())
}

/// Compiles a `ClusterLoadAssignment`. For DNS clusters the names are returned (priority 0
/// only) and the membership is empty; otherwise every endpoint becomes a [`Member`] (all
/// health states are kept, for panic mode and `/clusters`). Hosts at an address `previous`
/// already has keep their identity.
pub fn membership(
    la: &ClusterLoadAssignment,
    path: &str,
    dns: bool,
    previous: &HostSet,
) -> Result<(Membership, Vec<DnsName>), ConfigError> {
    let mut m = Membership::default();
    if let Some(policy) = &la.policy {
        let ppath = format!("{path}.policy");
        if !policy.drop_overloads.is_empty() {
            return Err(ConfigError::new(
                format!("{ppath}.drop_overloads"),
                "not supported",
            ));
        }
        if let Some(f) = policy.overprovisioning_factor {
            if f.value == 0 {
                return Err(ConfigError::new(
                    format!("{ppath}.overprovisioning_factor"),
                    "must be greater than 0",
                ));
            }
            m.overprovisioning = f.value;
        }
        m.weighted_priority_health = policy.weighted_priority_health;
    }
    let mut dns_names = Vec::new();
    // Hosts created by this update, so a repeated address shares one host.
    let mut created: Vec<Arc<Host>> = Vec::new();
    let mut localities: BTreeMap<Locality, Arc<Locality>> = BTreeMap::new();
    for (li, loc) in la.endpoints.iter().enumerate() {
        let lpath = format!("{path}.endpoints[{li}]");
        if dns && loc.priority != 0 {
            return Err(ConfigError::new(
                format!("{lpath}.priority"),
                "DNS clusters support only priority 0",
            ));
        }
        if loc.load_balancing_weight.is_some_and(|w| w.value == 0) {
            return Err(ConfigError::new(
                format!("{lpath}.load_balancing_weight"),
                "must be at least 1",
            ));
        }
        let key = loc
            .locality
            .as_ref()
            .map(|l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            })
            .unwrap_or_default();
        let locality = localities
            .entry(key.clone())
            .or_insert_with(|| Arc::new(key))
            .clone();
        m.locality_weights.insert(
            (loc.priority, locality.clone()),
            loc.load_balancing_weight.map_or(0, |w| w.value),
        );
        for (ei, lbe) in loc.lb_endpoints.iter().enumerate() {
            let epath = format!("{lpath}.lb_endpoints[{ei}]");
            let weight = lbe.load_balancing_weight.as_ref().map_or(1, |w| w.value);
            if weight == 0 {
                return Err(ConfigError::new(
                    format!("{epath}.load_balancing_weight"),
                    "must be at least 1",
                ));
            }
            let health = match HealthStatus::try_from(lbe.health_status) {
                Ok(HealthStatus::Unknown | HealthStatus::Healthy) => EdsHealth::Healthy,
                Ok(HealthStatus::Degraded) => EdsHealth::Degraded,
                Ok(HealthStatus::Unhealthy | HealthStatus::Timeout) => EdsHealth::Unhealthy,
                Ok(HealthStatus::Draining) => EdsHealth::Draining,
                Err(_) => {
                    return Err(ConfigError::new(
                        format!("{epath}.health_status"),
                        format!("unknown value {}", lbe.health_status),
                    ))
                }
            };
            let endpoint = match &lbe.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(e)) => e,
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
            let hostname: &str = &endpoint.hostname;
            let host = created
                .iter()
                .chain(previous.hosts.iter())
                .find(|h| h.addr == host_addr && &*h.hostname == hostname)
                .cloned()
                .unwrap_or_else(|| {
                    let h = Arc::new(Host::new(host_addr, Arc::from(hostname), weight));
                    created.push(h.clone());
                    h
                });
            m.members.push(Member {
                host,
                weight,
                priority: loc.priority,
                locality: locality.clone(),
                health,
                hash_key: hash_key(lbe.metadata.as_ref()),
            });
        }
    }
    Ok((m, dns_names))
}

/// `filter_metadata["envoy.lb"]["hash_key"]` when it is a string.
fn hash_key(md: Option<&Metadata>) -> Option<Arc<str>> {
    let v = md?
        .filter_metadata
        .get("envoy.lb")?
        .fields
        .get("hash_key")?;
    match &v.kind {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(Arc::from(s.as_str())),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
