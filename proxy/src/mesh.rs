//! Mesh names for the VM mode's DNS: which names the mesh DNS answers with capture
//! addresses, derived from the configuration Petrel has (bootstrap and xDS) and kept in step
//! with it.
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};

use crate::dns::{CaptureCidr, MeshName, MeshNames, NameContext, NameSource};

const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The mesh name table and what it is built from.
#[derive(Debug)]
pub struct Mesh {
    /// Read by the DNS server and the outbound listener (lock-free).
    pub names: Arc<ArcSwap<MeshNames>>,
    ctx: NameContext,
    static_entries: Vec<MeshName>,
}

impl Mesh {
    /// Builds the table from the bootstrap's static clusters and inline route domains.
    pub fn new(cidr: CaptureCidr, ctx: NameContext, bootstrap: &Bootstrap) -> Self {
        let mut entries = Vec::new();
        if let Some(sr) = &bootstrap.static_resources {
            entries.extend(
                sr.clusters
                    .iter()
                    .filter_map(|c| MeshName::from_cluster(&c.name, &ctx)),
            );
            for l in &sr.listeners {
                for f in l
                    .filter_chains
                    .iter()
                    .chain(l.default_filter_chain.iter())
                    .flat_map(|fc| fc.filters.iter())
                {
                    let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
                        continue;
                    };
                    if xds_client::decode::type_name(&any.type_url) != HCM {
                        continue;
                    }
                    let Ok(hcm) = xds_client::decode::unpack_any::<HttpConnectionManager>(any, HCM)
                    else {
                        continue;
                    };
                    if let Some(RouteSpecifier::RouteConfig(rc)) = &hcm.route_specifier {
                        entries.extend(vhost_names(rc, &ctx));
                    }
                }
            }
        }
        Mesh {
            names: Arc::new(ArcSwap::from_pointee(MeshNames::build(
                entries.clone(),
                cidr,
            ))),
            ctx,
            static_entries: entries,
        }
    }

    /// Rebuilds the table with the dynamic clusters and route configurations (addresses of
    /// names that stay are kept).
    pub fn update<'a>(
        &self,
        clusters: impl Iterator<Item = &'a str>,
        routes: impl Iterator<Item = &'a RouteConfiguration>,
    ) {
        let mut entries = self.static_entries.clone();
        entries.extend(clusters.filter_map(|c| MeshName::from_cluster(c, &self.ctx)));
        for rc in routes {
            entries.extend(vhost_names(rc, &self.ctx));
        }
        let next = self.names.load().rebuild(entries);
        self.names.store(Arc::new(next));
    }
}

fn vhost_names(rc: &RouteConfiguration, ctx: &NameContext) -> Vec<MeshName> {
    rc.virtual_hosts
        .iter()
        .filter_map(|vh| MeshName::from_virtual_host(&vh.domains, ctx))
        .map(|n| MeshName {
            source: NameSource::VirtualHost,
            ..n
        })
        .collect()
}
