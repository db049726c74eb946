//! Differential: outlier detection as Envoy runs it.
//!
//! - consecutive 5xx: a host that keeps answering 503 is ejected after exactly N of them, takes
//!   no more traffic, shows `/failed_outlier_check` in `/clusters`, and the
//!   `outlier_detection.ejections_*` counters agree with Envoy's.
//! - `max_ejection_percent` caps ejections (the next one overflows).
//! - `base_ejection_time` elapses at an interval tick and the host returns.
//! - `failure_percentage` ejects at an interval tick.
//! - tcp_proxy connect failures count as 5xx and eject the refusing host.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::ports::ClosedPort;
use petrel_e2e::proxy::render;
use petrel_e2e::tcp::{self, TcpEcho};
use petrel_e2e::wait::{wait_until, DEADLINE};
use petrel_e2e::yaml::http_bootstrap;
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;

/// An HTTP/1.1 server that answers every request with one fixed status (keep-alive).
struct StatusServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusServer {
    async fn start(status: u16) -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let response = format!(
                        "HTTP/1.1 {status} Failing\r\nx-upstream-name: bad\r\ncontent-length: 0\r\n\r\n"
                    );
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 2048];
                    loop {
                        // Requests through the proxy here have no body.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            counter.fetch_add(1, Ordering::SeqCst);
                            if s.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Ok(StatusServer {
            addr,
            requests,
            task,
        })
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A STATIC round-robin cluster over `hosts` with `outlier_detection: {od}`.
fn od_cluster(name: &str, od: &str, hosts: &[SocketAddr]) -> String {
    let eps: Vec<String> = hosts
        .iter()
        .map(|a| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: '{}', port_value: {}}}}}}}}}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!(
        "{{name: {name}, connect_timeout: 1s, type: STATIC, lb_policy: ROUND_ROBIN, \
         outlier_detection: {{{od}}}, \
         load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{}]}}]}}}}",
        eps.join(", ")
    )
}

const ROUTES: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/c5xx"}
    route: {cluster: c5xx}
  - match: {prefix: "/cap"}
    route: {cluster: cap}
  - match: {prefix: "/quick"}
    route: {cluster: quick}
  - match: {prefix: "/percent"}
    route: {cluster: percent}
"#;

/// `cluster.<c>.outlier_detection.<name>`.
fn od_stat(cluster: &str, name: &str) -> String {
    format!("cluster.{cluster}.outlier_detection.{name}")
}

async fn http_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let bad = StatusServer::start(503).await?;
    let bad2 = StatusServer::start(503).await?;
    let bad3 = StatusServer::start(503).await?;
    let bad4 = StatusServer::start(500).await?;
    let g1 = Upstream::start("g1").await?;
    let g2 = Upstream::start("g2").await?;
    // Ejections last long enough that no interval returns the hosts during the test.
    let long = "base_ejection_time: 300s, interval: 30s";
    let yaml = http_bootstrap(
        ROUTES,
        &[
            od_cluster(
                "c5xx",
                &format!("consecutive_5xx: 3, max_ejection_percent: 100, {long}"),
                &[bad.addr, g1.addr(), g2.addr()],
            ),
            od_cluster(
                "cap",
                &format!("consecutive_5xx: 2, max_ejection_percent: 25, {long}"),
                &[bad2.addr, bad.addr, g1.addr(), g2.addr()],
            ),
            od_cluster(
                "quick",
                "consecutive_5xx: 2, max_ejection_percent: 100, interval: 0.5s, base_ejection_time: 1s",
                &[bad3.addr, g1.addr()],
            ),
            od_cluster(
                "percent",
                "consecutive_5xx: 0, consecutive_gateway_failure: 0, interval: 1s, \
                 base_ejection_time: 300s, max_ejection_percent: 50, \
                 enforcing_failure_percentage: 100, failure_percentage_threshold: 60, \
                 failure_percentage_minimum_hosts: 2, failure_percentage_request_volume: 5",
                &[bad4.addr, g2.addr()],
            ),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let admin = proxy.admin();
    let mut obs = Observations::new(kind);
    let mut c = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;

    info!(%kind, "consecutive 5xx: one host answers 503 until it is ejected");
    let mut statuses = Vec::new();
    while bad.requests() < 3 {
        anyhow::ensure!(
            statuses.len() < 30,
            "{kind}: the failing host got no traffic"
        );
        statuses.push(c.get("lb.test", "/c5xx").await?.status.as_u16());
    }
    obs.stat_eq(
        &proxy,
        &od_stat("c5xx", "ejections_enforced_consecutive_5xx"),
        &od_stat("c5xx", "ejections_enforced_consecutive_5xx"),
        1,
    )
    .await?;
    anyhow::ensure!(
        statuses.iter().filter(|s| **s == 503).count() == 3,
        "{kind}: statuses {statuses:?}"
    );
    let served_by_bad = bad.requests();
    for _ in 0..20 {
        let r = c.get("lb.test", "/c5xx").await?;
        anyhow::ensure!(
            r.status == 200,
            "{kind}: ejected host answered {}",
            r.status
        );
    }
    anyhow::ensure!(
        bad.requests() == served_by_bad,
        "{kind}: the ejected host kept receiving requests"
    );
    obs.record("requests to the ejected host after ejection", 0);
    for (name, v) in [
        ("ejections_active", 1),
        ("ejections_enforced_total", 1),
        ("ejections_detected_consecutive_5xx", 1),
        ("ejections_consecutive_5xx", 1),
        ("ejections_total", 1),
        ("ejections_overflow", 0),
        ("ejections_detected_consecutive_gateway_failure", 0),
    ] {
        let s = od_stat("c5xx", name);
        obs.stat_eq(&proxy, &s, &s, v).await?;
    }
    obs.stat_eq(
        &proxy,
        "cluster.c5xx.membership_healthy",
        "cluster.c5xx.membership_healthy",
        2,
    )
    .await?;
    let text = admin.get("/clusters").await?.text();
    for line in [
        format!("c5xx::{}::health_flags::/failed_outlier_check", bad.addr),
        format!("c5xx::{}::health_flags::healthy", g1.addr()),
        "c5xx::outlier::success_rate_average::-1".to_owned(),
        format!("c5xx::{}::success_rate::-1", bad.addr),
    ] {
        anyhow::ensure!(
            text.lines().any(|l| l == line),
            "{kind}: /clusters lacks {line}:\n{text}"
        );
    }
    obs.record("/clusters shows the ejection", true);

    info!(%kind, "max_ejection_percent 25 of 4 hosts: the second failing host overflows");
    let mut sent = 0;
    loop {
        anyhow::ensure!(sent < 60, "{kind}: no overflow after {sent} requests");
        c.get("lb.test", "/cap").await?;
        sent += 1;
        if admin.stat(&od_stat("cap", "ejections_overflow")).await? >= Some(1) {
            break;
        }
    }
    for (name, v) in [
        ("ejections_active", 1),
        ("ejections_enforced_total", 1),
        ("ejections_overflow", 1),
        ("ejections_detected_consecutive_5xx", 2),
    ] {
        let s = od_stat("cap", name);
        obs.stat_eq(&proxy, &s, &s, v).await?;
    }
    obs.stat_eq(
        &proxy,
        "cluster.cap.membership_healthy",
        "cluster.cap.membership_healthy",
        3,
    )
    .await?;

    info!(%kind, "base_ejection_time passes: the host returns at an interval tick");
    while bad3.requests() < 2 {
        c.get("lb.test", "/quick").await?;
    }
    let s = od_stat("quick", "ejections_enforced_consecutive_5xx");
    obs.stat_eq(&proxy, &s, &s, 1).await?;
    let active = od_stat("quick", "ejections_active");
    admin.wait_for_stat_eq(&active, 0).await?;
    let healthy_line = format!("quick::{}::health_flags::healthy", bad3.addr);
    wait_until(
        "the returned host is healthy in /clusters",
        DEADLINE,
        || async {
            let t = admin
                .get("/clusters")
                .await
                .map(|r| r.text())
                .unwrap_or_default();
            t.lines().any(|l| l == healthy_line)
        },
    )
    .await?;
    let before = bad3.requests();
    while bad3.requests() == before {
        c.get("lb.test", "/quick").await?;
    }
    obs.record("unejected host receives traffic again", true);

    info!(%kind, "failure percentage: the host failing every request is ejected at a tick");
    let percent = od_stat("percent", "ejections_enforced_failure_percentage");
    let mut sent = 0;
    loop {
        anyhow::ensure!(sent < 5000, "{kind}: no failure-percentage ejection");
        c.get("lb.test", "/percent").await?;
        sent += 1;
        if sent % 10 == 0 && admin.stat(&percent).await? >= Some(1) {
            break;
        }
    }
    for (name, v) in [
        ("ejections_enforced_failure_percentage", 1),
        ("ejections_detected_failure_percentage", 1),
        ("ejections_active", 1),
        ("ejections_enforced_consecutive_5xx", 0),
    ] {
        let s = od_stat("percent", name);
        obs.stat_eq(&proxy, &s, &s, v).await?;
    }
    let text = admin.get("/clusters").await?.text();
    let line = format!(
        "percent::{}::health_flags::/failed_outlier_check",
        bad4.addr
    );
    anyhow::ensure!(
        text.lines().any(|l| l == line),
        "{kind}: /clusters lacks {line}"
    );
    Ok(obs)
}

#[tokio::test]
async fn outlier_detection_ejects_as_envoy() {
    differential(http_scenario).await;
}

const TCP_BOOTSTRAP: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {{admin_port}}}}
static_resources:
  listeners:
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:tcp}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_od
          cluster: pair
  clusters: [{{clusters}}]
"#;

async fn tcp_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let echo = TcpEcho::start().await?;
    let closed = ClosedPort::new()?;
    let clusters = od_cluster(
        "pair",
        "consecutive_5xx: 2, max_ejection_percent: 100, base_ejection_time: 300s",
        &[closed.addr(), echo.addr()],
    );
    let proxy = Proxy::start(
        kind,
        &render(TCP_BOOTSTRAP, &[("clusters", &clusters)]),
        &[],
    )
    .await?;
    let mut obs = Observations::new(kind);
    let enforced = "cluster.pair.outlier_detection.ejections_enforced_consecutive_5xx";
    let (mut ok, mut failed) = (0, 0);
    while proxy.admin().stat(enforced).await? < Some(1) {
        anyhow::ensure!(
            ok + failed < 20,
            "{kind}: no ejection ({ok} ok, {failed} failed)"
        );
        match tcp::roundtrip(proxy.addr("tcp"), b"ping").await {
            Ok(b) if b == b"ping" => ok += 1,
            _ => failed += 1,
        }
    }
    // Connect failures count as 503s; successes to the other host do not reset them.
    anyhow::ensure!(failed == 2, "{kind}: ejected after {failed} failures");
    obs.record("failed connections before the ejection", failed);
    for i in 0..5 {
        let got = tcp::roundtrip(proxy.addr("tcp"), b"after").await?;
        anyhow::ensure!(
            got == b"after",
            "{kind}: connection {i} after ejection: {got:?}"
        );
    }
    obs.record("connections after the ejection all echo", true);
    obs.stat_eq(&proxy, enforced, enforced, 1).await?;
    let active = "cluster.pair.outlier_detection.ejections_active";
    obs.stat_eq(&proxy, active, active, 1).await?;
    Ok(obs)
}

#[tokio::test]
async fn tcp_proxy_connect_failures_eject_the_host() {
    differential(tcp_scenario).await;
}
