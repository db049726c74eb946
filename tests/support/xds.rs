//! xDS resources and bootstraps for the end-to-end tests: the same YAML shapes feed the
//! test control plane for Envoy and for Petrel.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use xds_client::ads::test_util::any;

use crate::render;

/// Decodes an Envoy resource from YAML (panics: test input is fixed).
pub fn decode<M: prost::Message + Default>(yaml: &str, name: &str) -> M {
    xds_client::decode::decode_text_as(yaml, name, "test resource", Default::default())
        .unwrap_or_else(|e| panic!("test resource does not decode: {e}"))
}

pub fn eds_cluster(name: &str) -> Any {
    any(&decode::<Cluster>(
        &format!("name: {name}\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\n"),
        "envoy.config.cluster.v3.Cluster",
    ))
}

pub fn endpoints(name: &str, addr: SocketAddr) -> Any {
    any(&decode::<ClusterLoadAssignment>(
        &format!(
            "cluster_name: {name}\nendpoints:\n- lb_endpoints:\n  - endpoint: {{ address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }} }}\n",
            addr.ip(),
            addr.port()
        ),
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
    ))
}

pub fn listener(port: u16) -> Any {
    any(&decode::<Listener>(
        &format!(
            r#"
name: dyn_http
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: dyn
      rds: {{ route_config_name: local, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
        ),
        "envoy.config.listener.v3.Listener",
    ))
}

pub fn weighted_routes(wa: u32, wb: u32) -> Any {
    let mut clusters = Vec::new();
    if wa > 0 {
        clusters.push(format!("{{ name: a, weight: {wa} }}"));
    }
    if wb > 0 {
        clusters.push(format!("{{ name: b, weight: {wb} }}"));
    }
    any(&decode::<RouteConfiguration>(
        &format!(
            "name: local\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes:\n  - match: {{ prefix: \"/\" }}\n    route: {{ weighted_clusters: {{ clusters: [{}] }} }}\n",
            clusters.join(", ")
        ),
        "envoy.config.route.v3.RouteConfiguration",
    ))
}

pub fn bootstrap(api_type: &str, xds_address: &str) -> String {
    render(
        r#"
node: { id: sidecar~127.0.0.1~test~default.svc.cluster.local, cluster: test }
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: {{admin_port}} } }
dynamic_resources:
  ads_config:
    api_type: {{api_type}}
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: { cluster_name: xds }
  cds_config: { ads: {}, resource_api_version: V3 }
  lds_config: { ads: {}, resource_api_version: V3 }
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: { address: {{xds_address}} }
"#,
        &[("api_type", &api_type), ("xds_address", &xds_address)],
    )
}

pub fn tcp_address(addr: SocketAddr) -> String {
    format!(
        "{{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}",
        addr.port()
    )
}

pub fn static_cluster(name: &str, addr: &str) -> Any {
    let (ip, port) = addr.rsplit_once(':').expect("ip:port");
    any(&decode::<Cluster>(
        &format!(
            "name: {name}\ntype: STATIC\nconnect_timeout: 1s\nload_assignment:\n  cluster_name: {name}\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {{ address: {{ socket_address: {{ address: \"{ip}\", port_value: {port} }} }} }}\n"
        ),
        "envoy.config.cluster.v3.Cluster",
    ))
}

pub fn routes(cluster: &str) -> Any {
    any(&decode::<RouteConfiguration>(
        &format!(
            "name: local\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes:\n  - match: {{ prefix: \"/\" }}\n    route: {{ cluster: {cluster} }}\n"
        ),
        "envoy.config.route.v3.RouteConfiguration",
    ))
}
