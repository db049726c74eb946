//! Differential: the same ADS control plane script drives Envoy and Petrel. Both must reach
//! LIVE on the first snapshot, route by it, follow RDS/CDS/EDS/LDS updates, and ACK or NACK
//! the same versions (a bad cluster beside a good one: the good one applies, the response is
//! NACKed, traffic keeps flowing on the last good config).

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::ports::free_port;
use petrel_e2e::wait::wait_until;
use petrel_e2e::{differential, render, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;
use xds_client::ads::test_util::{any, TestControlPlane};
use xds_client::ads::type_url;

const DEADLINE: Duration = Duration::from_secs(30);

fn decode<M: prost::Message + Default>(yaml: &str, name: &str) -> M {
    xds_client::decode::decode_text_as(yaml, name, "test resource", Default::default())
        .unwrap_or_else(|e| panic!("test resource does not decode: {e}"))
}

fn eds_cluster(name: &str) -> Any {
    any(&decode::<Cluster>(
        &format!(
            "name: {name}\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\n"
        ),
        "envoy.config.cluster.v3.Cluster",
    ))
}

fn static_cluster(name: &str, addr: &str) -> Any {
    let (ip, port) = addr.rsplit_once(':').expect("ip:port");
    any(&decode::<Cluster>(
        &format!(
            "name: {name}\ntype: STATIC\nconnect_timeout: 1s\nload_assignment:\n  cluster_name: {name}\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {{ address: {{ socket_address: {{ address: \"{ip}\", port_value: {port} }} }} }}\n"
        ),
        "envoy.config.cluster.v3.Cluster",
    ))
}

fn endpoints(name: &str, addr: SocketAddr) -> Any {
    any(&decode::<ClusterLoadAssignment>(
        &format!(
            "cluster_name: {name}\nendpoints:\n- lb_endpoints:\n  - endpoint: {{ address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }} }}\n",
            addr.ip(),
            addr.port()
        ),
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
    ))
}

fn listener(port: u16) -> Any {
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

fn routes(cluster: &str) -> Any {
    any(&decode::<RouteConfiguration>(
        &format!(
            "name: local\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes:\n  - match: {{ prefix: \"/\" }}\n    route: {{ cluster: {cluster} }}\n"
        ),
        "envoy.config.route.v3.RouteConfiguration",
    ))
}

const BOOTSTRAP: &str = r#"
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
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{xds_port}} } } }
"#;

async fn served_by(addr: SocketAddr) -> Option<String> {
    let mut c = HttpClient::connect(addr, Proto::Http1).await.ok()?;
    let r = c.get("xds.test", "/").await.ok()?;
    (r.status == 200).then(|| r.upstream().unwrap_or("?").to_string())
}

async fn xds_scenario(kind: ProxyKind, delta: bool) -> anyhow::Result<Observations> {
    let a = Upstream::start("a").await?;
    let b = Upstream::start("b").await?;
    let cp = TestControlPlane::tcp().await?;
    let cp_addr = cp.local_addr().expect("tcp control plane");
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    cp.set_resources(
        type_url::CLUSTER,
        "c1",
        vec![eds_cluster("a"), eds_cluster("b")],
    );
    cp.set_resources(
        type_url::ENDPOINT,
        "e1",
        vec![endpoints("a", a.addr()), endpoints("b", b.addr())],
    );
    cp.set_resources(type_url::LISTENER, "l1", vec![listener(port)]);
    cp.set_resources(type_url::ROUTE, "r1", vec![routes("a")]);

    let api_type = if delta { "DELTA_GRPC" } else { "GRPC" };
    let yaml = render(
        BOOTSTRAP,
        &[("api_type", &api_type), ("xds_port", &cp_addr.port())],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);

    info!("initial snapshot routes to a");
    wait_until("first route to a", DEADLINE, || async {
        served_by(addr).await.as_deref() == Some("a")
    })
    .await?;
    obs.record("initial upstream", "a");

    info!("RDS update moves traffic to b");
    cp.set_resources(type_url::ROUTE, "r2", vec![routes("b")]);
    wait_until("route to b", DEADLINE, || async {
        served_by(addr).await.as_deref() == Some("b")
    })
    .await?;
    obs.record("after RDS r2", "b");

    info!("CDS with one bad cluster beside a good one: NACK, good one applied");
    let from = cp.requests().len();
    let bad = decode::<Cluster>(
        "name: bad\ntype: STATIC\nconnect_timeout: 1s\nload_assignment:\n  cluster_name: bad\n  endpoints:\n  - lb_endpoints:\n    - endpoint: { address: { socket_address: { address: not-an-ip, port_value: 80 } } }\n",
        "envoy.config.cluster.v3.Cluster",
    );
    cp.set_resources(
        type_url::CLUSTER,
        "c2",
        vec![
            eds_cluster("a"),
            eds_cluster("b"),
            static_cluster("good", &a.addr().to_string()),
            any(&bad),
        ],
    );
    let detail = if delta {
        let (_, nack) = cp
            .wait_delta(from, |r| {
                r.type_url == type_url::CLUSTER && r.error_detail.is_some()
            })
            .await;
        nack.error_detail.unwrap_or_default()
    } else {
        let (_, nack) = cp
            .wait_sotw(from, |r| {
                r.type_url == type_url::CLUSTER && r.error_detail.is_some()
            })
            .await;
        obs.record("CDS c2 NACK keeps version", nack.version_info.clone());
        nack.error_detail.unwrap_or_default()
    };
    anyhow::ensure!(
        detail.message.contains("bad"),
        "{kind}: NACK does not name the bad cluster: {:?}",
        detail.message
    );
    obs.record("CDS c2 NACK names 'bad'", true);
    let dump: serde_json::Value =
        serde_json::from_slice(&proxy.admin().get("/config_dump").await?.body)?;
    let active: Vec<String> = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
        .flat_map(|c| {
            c["dynamic_active_clusters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_string))
        .collect();
    anyhow::ensure!(
        active.contains(&"good".to_string()) && !active.contains(&"bad".to_string()),
        "{kind}: dynamic_active_clusters {active:?}"
    );
    obs.record("good cluster active, bad absent", true);
    anyhow::ensure!(
        served_by(addr).await.as_deref() == Some("b"),
        "{kind}: traffic broken after NACK"
    );
    obs.record("traffic after NACK", "b");

    info!("EDS update: b's endpoints now point at a's server");
    cp.set_resources(
        type_url::ENDPOINT,
        "e2",
        vec![endpoints("a", a.addr()), endpoints("b", a.addr())],
    );
    wait_until("b served by a's server", DEADLINE, || async {
        served_by(addr).await.as_deref() == Some("a")
    })
    .await?;
    obs.record("after EDS e2", "a");

    info!("LDS removal closes the listener");
    cp.set_resources(type_url::LISTENER, "l2", vec![]);
    wait_until("listener gone", DEADLINE, || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await?;
    obs.record("after LDS l2", "listener closed");
    for (stat, name) in [
        ("cluster_manager.cds.update_rejected", "cds rejected"),
        ("listener_manager.lds.update_success", "lds success"),
    ] {
        let v = proxy.stat(stat).await?.unwrap_or(0);
        obs.record(format!("{name} > 0"), v > 0);
    }
    Ok(obs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_sotw_updates_and_nack_match_envoy() {
    petrel_e2e::trace_init();
    differential(|kind| xds_scenario(kind, false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_delta_updates_and_nack_match_envoy() {
    petrel_e2e::trace_init();
    differential(|kind| xds_scenario(kind, true)).await;
}
