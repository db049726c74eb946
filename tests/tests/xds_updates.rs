//! Differential xDS resilience: route weight changes under steady load lose no request, a
//! control plane restart is survived (delta reconnects with `initial_resource_versions`),
//! warming clusters serve only once their endpoints arrive, and ADS over a Unix socket works.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::ports::free_port;
use petrel_e2e::wait::wait_until;
use petrel_e2e::xds::{bootstrap, eds_cluster, endpoints, listener, tcp_address, weighted_routes};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;
use xds_client::ads::test_util::TestControlPlane;
use xds_client::ads::type_url;

const DEADLINE: Duration = Duration::from_secs(30);

/// Serves the whole configuration at versions `<type>{v}` (a restarted control plane uses
/// new versions, or a SotW client that reports the same version gets no response).
fn seed(
    cp: &TestControlPlane,
    a: &Upstream,
    b: &Upstream,
    port: u16,
    (wa, wb): (u32, u32),
    v: u32,
) {
    cp.set_resources(
        type_url::CLUSTER,
        &format!("c{v}"),
        vec![eds_cluster("a"), eds_cluster("b")],
    );
    cp.set_resources(
        type_url::ENDPOINT,
        &format!("e{v}"),
        vec![endpoints("a", a.addr()), endpoints("b", b.addr())],
    );
    cp.set_resources(type_url::LISTENER, &format!("l{v}"), vec![listener(port)]);
    cp.set_resources(
        type_url::ROUTE,
        &format!("r{v}"),
        vec![weighted_routes(wa, wb)],
    );
}

async fn get(c: &mut HttpClient) -> Option<String> {
    let r = c.get("xds.test", "/").await.ok()?;
    (r.status == 200).then(|| r.upstream().unwrap_or("?").to_string())
}

/// Sends requests on one keep-alive connection (reconnecting if the proxy closes it) until
/// stopped; counts failures and which upstreams answered.
fn steady_load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize, Vec<String>)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        let mut seen = Vec::new();
        let mut client = None;
        while !stop.load(Ordering::Relaxed) {
            if client.is_none() {
                client = HttpClient::connect(addr, Proto::Http1).await.ok();
            }
            let Some(c) = client.as_mut() else {
                failed += 1;
                continue;
            };
            match c.get("xds.test", "/").await {
                Ok(r) if r.status == 200 => {
                    ok += 1;
                    let u = r.upstream().unwrap_or("?").to_string();
                    if !seen.contains(&u) {
                        seen.push(u);
                    }
                    if r.header("connection") == Some("close") {
                        client = None;
                    }
                }
                _ => {
                    failed += 1;
                    client = None;
                }
            }
        }
        seen.sort();
        (ok, failed, seen)
    })
}

async fn weights_under_load(kind: ProxyKind) -> anyhow::Result<Observations> {
    let a = Upstream::start("a").await?;
    let b = Upstream::start("b").await?;
    let cp = TestControlPlane::tcp().await?;
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    seed(&cp, &a, &b, port, (100, 0), 1);
    let proxy = Proxy::start(
        kind,
        &bootstrap("GRPC", &tcp_address(cp.local_addr().expect("tcp"))),
        &[],
    )
    .await?;
    let mut obs = Observations::new(kind);
    wait_until("listener serves", DEADLINE, || async {
        match HttpClient::connect(addr, Proto::Http1).await {
            Ok(mut c) => get(&mut c).await.is_some(),
            Err(_) => false,
        }
    })
    .await?;

    info!("shift weights 100/0 → 0/100 in steps while a client keeps sending");
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(addr, stop.clone());
    let served_before = a.requests() + b.requests();
    for (i, wa) in [90u32, 70, 50, 30, 10, 0].into_iter().enumerate() {
        cp.set_resources(
            type_url::ROUTE,
            &format!("r{}", i + 2),
            vec![weighted_routes(wa, 100 - wa)],
        );
        let target = a.requests() + b.requests() + 20;
        wait_until("requests flow after the update", DEADLINE, || async {
            a.requests() + b.requests() >= target
        })
        .await?;
    }
    let b_before = b.requests();
    wait_until("only b serves at weight 0/100", DEADLINE, || async {
        b.requests() >= b_before + 20
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, seen) = load.await?;
    anyhow::ensure!(
        failed == 0,
        "{kind}: {failed} failed requests of {} during weight changes",
        ok + failed
    );
    anyhow::ensure!(
        ok > 100 && a.requests() + b.requests() > served_before,
        "{kind}: only {ok} requests"
    );
    obs.record("failed requests during weight shifts", failed);
    obs.record("upstreams seen", seen);
    let rds = proxy
        .stat("http.dyn.rds.local.update_success")
        .await?
        .unwrap_or(0);
    obs.record("rds update_success counted", rds > 0);
    Ok(obs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_weight_changes_under_load_lose_nothing() {
    differential(weights_under_load).await;
}

async fn restart(kind: ProxyKind, delta: bool) -> anyhow::Result<Observations> {
    let a = Upstream::start("a").await?;
    let b = Upstream::start("b").await?;
    let cp = TestControlPlane::tcp().await?;
    let cp_addr = cp.local_addr().expect("tcp");
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    seed(&cp, &a, &b, port, (100, 0), 1);
    let api = if delta { "DELTA_GRPC" } else { "GRPC" };
    let proxy = Proxy::start(kind, &bootstrap(api, &tcp_address(cp_addr)), &[]).await?;
    let mut obs = Observations::new(kind);
    wait_until("serves a", DEADLINE, || async {
        match HttpClient::connect(addr, Proto::Http1).await {
            Ok(mut c) => get(&mut c).await.as_deref() == Some("a"),
            Err(_) => false,
        }
    })
    .await?;

    info!("control plane goes away: the last good config keeps serving");
    cp.close_streams(None);
    cp.shutdown().await;
    wait_until("disconnected", DEADLINE, || async {
        proxy
            .stat("control_plane.connected_state")
            .await
            .ok()
            .flatten()
            == Some(0)
    })
    .await?;
    let mut c = HttpClient::connect(addr, Proto::Http1).await?;
    anyhow::ensure!(
        get(&mut c).await.as_deref() == Some("a"),
        "{kind}: not serving while disconnected"
    );
    obs.record("serves while disconnected", true);

    info!("control plane returns on the same port with a new route");
    let cp = TestControlPlane::tcp_at(cp_addr).await?;
    seed(&cp, &a, &b, port, (0, 100), 2);
    wait_until("reconnected and switched to b", DEADLINE, || async {
        match HttpClient::connect(addr, Proto::Http1).await {
            Ok(mut c) => get(&mut c).await.as_deref() == Some("b"),
            Err(_) => false,
        }
    })
    .await?;
    obs.record("after restart", "b");
    if delta {
        let (_, first) = cp.wait_delta(0, |r| r.type_url == type_url::CLUSTER).await;
        let versions: Vec<&String> = first.initial_resource_versions.keys().collect();
        anyhow::ensure!(
            versions.iter().any(|k| *k == "a") && versions.iter().any(|k| *k == "b"),
            "{kind}: delta reconnect initial_resource_versions {versions:?}"
        );
        obs.record(
            "delta reconnect sends initial_resource_versions for a, b",
            true,
        );
    } else {
        let (_, first) = cp.wait_sotw(0, |r| r.type_url == type_url::CLUSTER).await;
        obs.record("sotw reconnect CDS version", first.version_info);
    }
    Ok(obs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_sotw() {
    differential(|k| restart(k, false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_delta() {
    differential(|k| restart(k, true)).await;
}

async fn warming_and_unix_socket(kind: ProxyKind) -> anyhow::Result<Observations> {
    let a = Upstream::start("a").await?;
    let b = Upstream::start("b").await?;
    let dir = std::env::temp_dir().join(format!("petrel-xds-uds-{}-{}", kind, std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("XDS");
    let cp = TestControlPlane::unix(&sock).await?;
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    seed(&cp, &a, &b, port, (100, 0), 1);
    let xds_address = format!("{{ pipe: {{ path: \"{}\" }} }}", sock.display());
    let proxy = Proxy::start(kind, &bootstrap("GRPC", &xds_address), &[]).await?;
    let mut obs = Observations::new(kind);
    wait_until(
        "serves a over a Unix-socket control plane",
        DEADLINE,
        || async {
            match HttpClient::connect(addr, Proto::Http1).await {
                Ok(mut c) => get(&mut c).await.as_deref() == Some("a"),
                Err(_) => false,
            }
        },
    )
    .await?;
    obs.record("unix socket ADS", "a");

    info!("a new EDS cluster warms until its endpoints arrive");
    cp.set_resources(
        type_url::CLUSTER,
        "c2",
        vec![eds_cluster("a"), eds_cluster("b"), eds_cluster("c")],
    );
    let warming = wait_until("c warming", DEADLINE, || async {
        let Ok(r) = proxy.admin().get("/config_dump").await else {
            return false;
        };
        let text = String::from_utf8_lossy(&r.body).to_string();
        let dump: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        dump["configs"].as_array().into_iter().flatten().any(|c| {
            c["dynamic_warming_clusters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|w| w["cluster"]["name"] == "c")
        })
    })
    .await;
    obs.record("c listed in dynamic_warming_clusters", warming.is_ok());
    cp.set_resources(
        type_url::ENDPOINT,
        "e2",
        vec![
            endpoints("a", a.addr()),
            endpoints("b", b.addr()),
            endpoints("c", b.addr()),
        ],
    );
    let active = wait_until("c active", DEADLINE, || async {
        let Ok(r) = proxy.admin().get("/config_dump").await else {
            return false;
        };
        let dump: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        dump["configs"].as_array().into_iter().flatten().any(|c| {
            c["dynamic_active_clusters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|w| w["cluster"]["name"] == "c")
        })
    })
    .await;
    obs.record("c active after its endpoints", active.is_ok());
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(obs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_warming_and_unix_socket_ads() {
    differential(warming_and_unix_socket).await;
}
