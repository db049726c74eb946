//! Differential: circuit breakers. A fixed burst against a held (slow) upstream overflows the
//! same way in Envoy and Petrel: the same requests get 503 `UO` with `x-envoy-overloaded`,
//! the same ones queue and are served later, and the overflow counters and breaker gauges read
//! from both admins agree. HTTP/1 (connections and pending requests) and HTTP/2 (requests).
//!
//! Each request is sent only once the previous one has reached its state (in flight at the
//! upstream, or queued in the proxy's pool, seen through the proxy's own gauges), so the
//! outcome does not depend on timing.

use petrel_e2e::client::{HttpClient, Proto, Reply};
use petrel_e2e::yaml::{cluster_with, http_bootstrap};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;

const ROUTES: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/"}
    route: {cluster: slow}
"#;

const H1_BREAKERS: &str =
    "circuit_breakers: {thresholds: [{priority: DEFAULT, max_connections: 1, \
     max_pending_requests: 1, track_remaining: true}]}";

const H2_BREAKERS: &str =
    "circuit_breakers: {thresholds: [{priority: DEFAULT, max_requests: 2}]}, \
     typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: \
     {'@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, \
     explicit_http_config: {http2_protocol_options: {}}}}";

/// Sends a held request on its own connection; resolves with its reply once released.
fn held(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<anyhow::Result<Reply>> {
    tokio::spawn(async move {
        let mut c = HttpClient::connect(addr, Proto::Http1).await?;
        c.get_with("cb.test", "/", &[("x-echo-hold", "1")]).await
    })
}

fn record_overflow(obs: &mut Observations, label: &str, r: &Reply) {
    obs.record(format!("{label} status"), r.status.as_u16());
    obs.record(format!("{label} body"), r.text());
    obs.record(
        format!("{label} x-envoy-overloaded"),
        r.header("x-envoy-overloaded").map(str::to_owned),
    );
}

async fn http1_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("slow").await?;
    let yaml = http_bootstrap(ROUTES, &[cluster_with("slow", &[up.addr()], H1_BREAKERS)]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let admin = proxy.admin();
    let addr = proxy.addr("http");
    let mut obs = Observations::new(kind);

    info!(%kind, "request 1 takes the only connection and is held by the upstream");
    let first = held(addr);
    petrel_e2e::assert_eventually!(up.requests() == 1, "upstream saw {}", up.requests());
    admin
        .wait_for_stat_eq("cluster.slow.upstream_rq_active", 1)
        .await?;

    info!(%kind, "request 2 queues: the connection limit is reached");
    let second = held(addr);
    admin
        .wait_for_stat_eq("cluster.slow.upstream_rq_pending_active", 1)
        .await?;

    info!(%kind, "requests 3-5 overflow the pending queue");
    for i in 3..=5 {
        let mut c = HttpClient::connect(addr, Proto::Http1).await?;
        let r = c.get("cb.test", "/").await?;
        anyhow::ensure!(r.status == 503, "{kind}: request {i} → {}", r.status);
        record_overflow(&mut obs, &format!("request {i}"), &r);
    }
    obs.stat_eq(
        &proxy,
        "cluster.slow.circuit_breakers.default.rq_pending_open (queue full)",
        "cluster.slow.circuit_breakers.default.rq_pending_open",
        1,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.slow.circuit_breakers.default.cx_open",
        "cluster.slow.circuit_breakers.default.cx_open",
        1,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.slow.circuit_breakers.default.remaining_pending (queue full)",
        "cluster.slow.circuit_breakers.default.remaining_pending",
        0,
    )
    .await?;

    info!(%kind, "the held response completes; the queued request takes the connection");
    up.release();
    let r1 = first.await??;
    anyhow::ensure!(r1.status == 200, "{kind}: request 1 → {}", r1.status);
    petrel_e2e::assert_eventually!(up.requests() == 2, "upstream saw {}", up.requests());
    up.release();
    let r2 = second.await??;
    anyhow::ensure!(r2.status == 200, "{kind}: request 2 → {}", r2.status);
    obs.record("request 1 status", r1.status.as_u16());
    obs.record("request 2 status", r2.status.as_u16());
    anyhow::ensure!(
        up.connections() == 1,
        "{kind}: {} upstream connections",
        up.connections()
    );
    obs.record("upstream connections", up.connections());

    log_stats(&proxy).await;
    for (stat, v) in [
        ("upstream_rq_pending_overflow", 3),
        ("upstream_cx_overflow", 1),
        ("upstream_rq_pending_total", 2),
        ("upstream_rq_total", 2),
        ("upstream_cx_total", 1),
        ("upstream_rq_503", 3),
        ("upstream_rq_200", 2),
        ("circuit_breakers.default.rq_pending_open", 0),
        ("circuit_breakers.default.remaining_pending", 1),
        ("circuit_breakers.default.remaining_rq", 1024),
        ("upstream_rq_pending_active", 0),
    ] {
        let name = format!("cluster.slow.{stat}");
        obs.stat_eq(&proxy, &name, &name, v).await?;
    }
    Ok(obs)
}

async fn http2_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("slow").await?;
    let yaml = http_bootstrap(ROUTES, &[cluster_with("slow", &[up.addr()], H2_BREAKERS)]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let admin = proxy.admin();
    let addr = proxy.addr("http");
    let mut obs = Observations::new(kind);

    info!(%kind, "two held streams fill max_requests on the one HTTP/2 connection");
    let a = held(addr);
    petrel_e2e::assert_eventually!(up.requests() == 1, "upstream saw {}", up.requests());
    let b = held(addr);
    petrel_e2e::assert_eventually!(up.requests() == 2, "upstream saw {}", up.requests());
    admin
        .wait_for_stat_eq("cluster.slow.upstream_rq_active", 2)
        .await?;

    info!(%kind, "the third request overflows max_requests");
    let mut c = HttpClient::connect(addr, Proto::Http1).await?;
    let r = c.get("cb.test", "/").await?;
    anyhow::ensure!(r.status == 503, "{kind}: third → {}", r.status);
    record_overflow(&mut obs, "third", &r);
    obs.stat_eq(
        &proxy,
        "cluster.slow.circuit_breakers.default.rq_open (full)",
        "cluster.slow.circuit_breakers.default.rq_open",
        1,
    )
    .await?;

    up.release();
    up.release();
    for (label, h) in [("a", a), ("b", b)] {
        let r = h.await??;
        anyhow::ensure!(r.status == 200, "{kind}: {label} → {}", r.status);
        obs.record(format!("{label} status"), r.status.as_u16());
    }
    info!(%kind, "with the streams done, requests flow again");
    let r = c.get("cb.test", "/").await?;
    anyhow::ensure!(r.status == 200, "{kind}: after release → {}", r.status);
    log_stats(&proxy).await;
    for (stat, v) in [
        ("upstream_rq_active_overflow", 1),
        ("upstream_rq_pending_total", 1),
        ("upstream_rq_total", 3),
        ("upstream_cx_total", 1),
        ("upstream_cx_http2_total", 1),
        ("upstream_rq_503", 1),
        ("circuit_breakers.default.rq_open", 0),
    ] {
        let name = format!("cluster.slow.{stat}");
        obs.stat_eq(&proxy, &name, &name, v).await?;
    }
    Ok(obs)
}

#[tokio::test]
async fn http1_burst_overflows_connections_and_pending_like_envoy() {
    differential(http1_scenario).await;
}

#[tokio::test]
async fn http2_burst_overflows_max_requests_like_envoy() {
    differential(http2_scenario).await;
}

/// Logs the cluster's stats (what a failed comparison is read against).
async fn log_stats(proxy: &Proxy) {
    if let Ok(s) = proxy.admin().stats().await {
        for n in s.names_with_prefix("cluster.slow.") {
            info!(kind = %proxy.kind(), "{n} = {:?}", s.value(n));
        }
    }
}
