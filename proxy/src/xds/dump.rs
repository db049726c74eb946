//! `/config_dump` sections for dynamic resources, in Envoy's shape.
use serde_json::{json, Value};

use super::State;
use crate::http::access_log::rfc3339_millis;

/// Dynamic resources rendered for `/config_dump`.
#[derive(Debug, Default, Clone)]
pub struct DynamicDump {
    /// `ClustersConfigDump.dynamic_active_clusters`.
    pub active_clusters: Vec<Value>,
    /// `ClustersConfigDump.dynamic_warming_clusters`.
    pub warming_clusters: Vec<Value>,
    /// `ListenersConfigDump.dynamic_listeners`.
    pub listeners: Vec<Value>,
    /// `RoutesConfigDump.dynamic_route_configs`.
    pub routes: Vec<Value>,
    /// `EndpointsConfigDump.dynamic_endpoint_configs` (`?include_eds`).
    pub endpoints: Vec<Value>,
}

fn typed<M: prost::Message>(msg: &M, full_name: &str) -> Value {
    let mut v = xds_client::decode::to_json(msg, full_name);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "@type".into(),
            json!(format!("type.googleapis.com/{full_name}")),
        );
    }
    v
}

pub(super) fn build(st: &State) -> DynamicDump {
    let cluster = |c: &super::DynCluster| {
        json!({
            "version_info": c.accepted.version,
            "cluster": typed(&c.accepted.proto, "envoy.config.cluster.v3.Cluster"),
            "last_updated": rfc3339_millis(c.accepted.updated),
        })
    };
    let listener = |l: &super::DynListener, state: &str| {
        json!({
            "name": l.accepted.proto.name,
            state: {
                "version_info": l.accepted.version,
                "listener": typed(&l.accepted.proto, "envoy.config.listener.v3.Listener"),
                "last_updated": rfc3339_millis(l.accepted.updated),
            }
        })
    };
    DynamicDump {
        active_clusters: st.clusters.values().map(cluster).collect(),
        warming_clusters: st.warming_clusters.values().map(cluster).collect(),
        listeners: st
            .listeners
            .values()
            .map(|l| listener(l, "active_state"))
            .chain(st.warming_listeners.values().map(|l| listener(l, "warming_state")))
            .collect(),
        routes: st
            .routes
            .values()
            .map(|r| {
                json!({
                    "version_info": r.version,
                    "route_config": typed(&r.proto, "envoy.config.route.v3.RouteConfiguration"),
                    "last_updated": rfc3339_millis(r.updated),
                })
            })
            .collect(),
        endpoints: st
            .endpoints
            .values()
            .map(|e| {
                json!({
                    "version_info": e.version,
                    "endpoint_config": typed(&e.proto, "envoy.config.endpoint.v3.ClusterLoadAssignment"),
                    "last_updated": rfc3339_millis(e.updated),
                })
            })
            .collect(),
    }
}
