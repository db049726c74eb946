//! Differential: synthetic error responses. Connect failure → 503 (UF), route timeout → 504
//! (UT), upstream reset → 503 (UC), malformed request → 400, an upstream's own 503 passes
//! through; each counted the same way in stats.

use petrel_e2e::client::raw::RawConn;
use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::ports::ClosedPort;
use petrel_e2e::yaml::{cluster, http_bootstrap};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use std::time::Duration;
use tracing::info;

const ROUTES: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/closed"}
    route: {cluster: closed}
  - match: {prefix: "/slow"}
    route: {cluster: slow, timeout: 1s}
  - match: {prefix: "/"}
    route: {cluster: up}
"#;

async fn error_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let slow = Upstream::start("slow").await?;
    let closed = ClosedPort::new()?;
    let yaml = http_bootstrap(
        ROUTES,
        &[
            cluster("up", &[up.addr()]),
            cluster("slow", &[slow.addr()]),
            cluster("closed", &[closed.addr()]),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let addr = proxy.addr("http");

    info!("connect failure: 503 with Envoy's body");
    let mut c = HttpClient::connect(addr, Proto::Http1).await?;
    let r = c.get("svc.test", "/closed").await?;
    anyhow::ensure!(r.status == 503, "{kind}: /closed → {}", r.status);
    anyhow::ensure!(
        r.text()
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{kind}: /closed body {:?}",
        r.text()
    );
    obs.record("connect-fail status", r.status.as_u16());
    obs.record("connect-fail body", r.text());
    obs.record(
        "connect-fail content-type",
        r.header("content-type").map(str::to_owned),
    );
    obs.stat_eq(
        &proxy,
        "cluster.closed.upstream_cx_connect_fail",
        "cluster.closed.upstream_cx_connect_fail",
        1,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.closed.upstream_cx_total",
        "cluster.closed.upstream_cx_total",
        1,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.closed.upstream_rq_503",
        "cluster.closed.upstream_rq_503",
        1,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.closed.upstream_rq_5xx",
        "cluster.closed.upstream_rq_5xx",
        1,
    )
    .await?;

    info!("route timeout: 504 after the route's 1s, not the upstream's 5s");
    let r = c
        .get_with("svc.test", "/slow", &[("x-echo-delay-ms", "5000")])
        .await?;
    anyhow::ensure!(r.status == 504, "{kind}: /slow → {}", r.status);
    obs.record("timeout status", r.status.as_u16());
    obs.record("timeout body", r.text());
    obs.stat_eq(
        &proxy,
        "cluster.slow.upstream_rq_timeout",
        "cluster.slow.upstream_rq_timeout",
        1,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.slow.upstream_rq_504",
        "cluster.slow.upstream_rq_504",
        1,
    )
    .await?;

    info!("upstream resets the connection before responding: 503");
    let r = c
        .get_with("svc.test", "/reset", &[("x-echo-reset", "1")])
        .await?;
    anyhow::ensure!(r.status == 503, "{kind}: reset → {}", r.status);
    anyhow::ensure!(
        up.requests() == 1,
        "{kind}: reset request not retried, saw {}",
        up.requests()
    );
    obs.record("reset status", r.status.as_u16());
    obs.record("reset body", r.text());

    info!("the upstream's own 503 passes through with its body");
    let r = c
        .get_with("svc.test", "/own-503", &[("x-echo-status", "503")])
        .await?;
    anyhow::ensure!(r.status == 503, "{kind}: own 503 → {}", r.status);
    anyhow::ensure!(
        r.upstream() == Some("up"),
        "{kind}: own 503 not from upstream"
    );
    obs.record("upstream 503 status", r.status.as_u16());
    obs.stat_eq(
        &proxy,
        "cluster.up.upstream_rq_503",
        "cluster.up.upstream_rq_503",
        2,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.up.upstream_rq_total",
        "cluster.up.upstream_rq_total",
        2,
    )
    .await?;

    // The downstream connection survived all of the above.
    let r = c.get("svc.test", "/fine").await?;
    anyhow::ensure!(r.status == 200, "{kind}: /fine → {}", r.status);
    drop(c);
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_rq_5xx",
        "http.ingress.downstream_rq_5xx",
        4,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_rq_2xx",
        "http.ingress.downstream_rq_2xx",
        1,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_cx_total",
        "http.ingress.downstream_cx_total",
        1,
    )
    .await?;
    Ok(obs)
}

#[tokio::test]
async fn upstream_failures_map_to_envoy_status_codes() {
    differential(error_scenario).await;
}

/// Requests that cannot be parsed.
const MALFORMED: &[(&str, &str)] = &[
    (
        "bad content-length",
        "GET / HTTP/1.1\r\nHost: svc.test\r\nContent-Length: abc\r\n\r\n",
    ),
    ("garbage request line", "THIS IS NOT HTTP\r\n\r\n"),
    (
        "space in header name",
        "GET / HTTP/1.1\r\nHost: svc.test\r\nBad Header: x\r\n\r\n",
    ),
];

/// Envoy refuses a request with both framings; Petrel's HTTP/1 codec (hyper) follows RFC 9112
/// instead (chunked wins, the connection closes afterwards). Kept as its own, ignored test
/// until Petrel matches Envoy here (listed in the README).
const BOTH_FRAMINGS: &[(&str, &str)] = &[(
    "both content-length and chunked",
    "POST / HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
)];

async fn malformed_scenario(
    kind: ProxyKind,
    cases: &'static [(&'static str, &'static str)],
) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let yaml = http_bootstrap(
        ROUTES,
        &[
            cluster("up", &[up.addr()]),
            cluster("slow", &[up.addr()]),
            cluster("closed", &[up.addr()]),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    for (what, bytes) in cases {
        let mut conn = RawConn::connect(proxy.addr("http")).await?;
        conn.write(bytes.as_bytes()).await?;
        let resp = conn.read_response().await?;
        info!(%kind, what, status = resp.status, head = %resp.head);
        anyhow::ensure!(resp.status == 400, "{kind}: {what} → {}", resp.status);
        // The proxy closes the connection after a protocol error.
        conn.read_to_close(Duration::from_secs(30)).await?;
        obs.record(format!("{what}: status"), resp.status);
        obs.record(
            format!("{what}: connection"),
            resp.header("connection").map(str::to_owned),
        );
        // Not compared: Envoy's codec-level 400 carries the body "Bad Request", hyper's is
        // empty (a known difference, listed in the README).
    }
    anyhow::ensure!(
        up.requests() == 0,
        "{kind}: a malformed request reached the upstream"
    );
    // It keeps serving everyone else.
    let mut c = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;
    let r = c.get("svc.test", "/").await?;
    anyhow::ensure!(r.status == 200, "{kind}: after malformed: {}", r.status);
    let n = cases.len() as u64;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_cx_protocol_error",
        "http.ingress.downstream_cx_protocol_error",
        n,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_rq_4xx",
        "http.ingress.downstream_rq_4xx",
        n,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_cx_total",
        "http.ingress.downstream_cx_total",
        n + 1,
    )
    .await?;
    Ok(obs)
}

#[tokio::test]
async fn malformed_requests_get_400_and_close() {
    differential(|k| malformed_scenario(k, MALFORMED)).await;
}

#[tokio::test]
#[ignore = "petrel difference: hyper accepts Content-Length + Transfer-Encoding (RFC 9112), Envoy answers 400"]
async fn both_framings_get_400_like_envoy() {
    differential(|k| malformed_scenario(k, BOTH_FRAMINGS)).await;
}
