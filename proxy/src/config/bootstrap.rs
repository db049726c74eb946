//! The static part of a bootstrap → listeners, clusters and the admin address.
use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;

use super::address::{listen_addr, ListenAddr};
use super::{cluster, listener, ConfigError};
use crate::listener::Listener;
use crate::server::ClusterTable;

/// Everything a static bootstrap defines.
#[derive(Debug)]
pub struct StaticConfig {
    /// Listeners in config order.
    pub listeners: Vec<Arc<Listener>>,
    /// Clusters by name.
    pub clusters: ClusterTable,
    /// Admin listener address.
    pub admin: Option<ListenAddr>,
}

/// Compiles the static resources of `b`; errors name the field path.
pub fn build_static(b: &Bootstrap, ctx: &super::BuildCtx<'_>) -> Result<StaticConfig, ConfigError> {
    let admin = match b.admin.as_ref().and_then(|a| a.address.as_ref()) {
        Some(addr) => Some(listen_addr(addr, "admin.address")?),
        None => None,
    };
    let mut clusters: ClusterTable = HashMap::new();
    let mut listeners = Vec::new();
    if let Some(sr) = &b.static_resources {
        for (i, c) in sr.clusters.iter().enumerate() {
            let path = format!("static_resources.clusters[{i}]");
            let built = cluster::build(c, &path, ctx)?;
            if clusters
                .insert(built.name.clone(), Arc::new(built))
                .is_some()
            {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!("duplicate cluster {:?}", c.name),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut addrs = std::collections::HashSet::new();
        for (i, l) in sr.listeners.iter().enumerate() {
            let path = format!("static_resources.listeners[{i}]");
            let built = listener::build(l, &path, ctx)?;
            if !names.insert(built.name.clone()) {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!("duplicate listener {:?}", built.name),
                ));
            }
            if !addrs.insert(built.addr.clone()) {
                return Err(ConfigError::new(
                    format!("{path}.address"),
                    format!("{} is used by another listener", built.addr),
                ));
            }
            check_route_clusters(&built, &clusters, &path)?;
            listeners.push(Arc::new(built));
        }
    }
    Ok(StaticConfig {
        listeners,
        clusters,
        admin,
    })
}

/// Envoy refuses a static route config that names a cluster which does not exist
/// (`validate_clusters` defaults to true for static routes); so do we.
fn check_route_clusters(
    l: &Listener,
    clusters: &ClusterTable,
    path: &str,
) -> Result<(), ConfigError> {
    use crate::listener::NetworkFilter;
    use crate::route::{Action, ClusterTarget};
    for (ci, chain) in l.chains.iter().chain(l.default_chain.iter()).enumerate() {
        let NetworkFilter::Http(hcm) = &chain.filter else {
            continue;
        };
        // Only inline routes are checked; RDS routes arrive later and are validated then.
        if !hcm.inline_routes {
            continue;
        }
        let table = hcm.routes.table.load();
        for vh in &table.vhosts {
            for r in &vh.routes {
                let Action::Forward(f) = &r.action else {
                    continue;
                };
                let names: Vec<&Arc<str>> = match &f.target {
                    ClusterTarget::Named(n) => vec![n],
                    ClusterTarget::Weighted(w) => w.clusters.iter().map(|c| &c.name).collect(),
                    ClusterTarget::Header(_) => vec![],
                };
                for n in names {
                    if !clusters.contains_key(n) {
                        return Err(ConfigError::new(
                            format!("{path}.filter_chains[{ci}]"),
                            format!(
                                "route config {:?}, virtual host {:?}: unknown cluster '{n}'",
                                &*table.name, &*vh.name
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}
