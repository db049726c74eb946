//! Differential: the same ADS control plane script drives Envoy and Petrel. Both must reach
//! LIVE on the first snapshot, route by it, follow RDS/CDS/EDS/LDS updates, and ACK or NACK
//! the same versions (a bad cluster beside a good one: the good one applies, the response is
//! NACKed, traffic keeps flowing on the last good config).

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::ports::free_port;
use petrel_e2e::wait::wait_until;
use petrel_e2e::xds::{
    bootstrap, decode, eds_cluster, endpoints, listener, routes, static_cluster, tcp_address,
};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;
use xds_client::ads::test_util::{any, TestControlPlane};
use xds_client::ads::type_url;

const DEADLINE: Duration = Duration::from_secs(30);

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
    let yaml = bootstrap(api_type, &tcp_address(cp_addr));
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
