//! Differential: the router's other timers and per-request policies — stream idle timeout
//! (route `idle_timeout`) before and after the response starts, `max_stream_duration`,
//! gRPC `grpc-timeout` under `max_grpc_timeout`, request mirroring, `runtime_fraction`
//! route matches and attempt-count headers. Timers are a second or more against upstream
//! delays of several seconds, and assertions never bound how long anything took.

use http_body_util::BodyExt;
use petrel_e2e::client::{full, HttpClient, Proto};
use petrel_e2e::yaml::{cluster, http_bootstrap};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;

const ROUTES: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  include_request_attempt_count: true
  include_attempt_count_in_response: true
  routes:
  - match: {prefix: "/idle"}
    route: {cluster: up, timeout: 30s, idle_timeout: 1s}
  - match: {prefix: "/duration"}
    route: {cluster: up, timeout: 30s, max_stream_duration: {max_stream_duration: 1s}}
  - match: {prefix: "/grpc"}
    route: {cluster: up, max_grpc_timeout: 0s}
  - match: {prefix: "/mirror"}
    route:
      cluster: up
      request_mirror_policies:
      - {cluster: shadow}
      - {cluster: never, runtime_fraction: {default_value: {numerator: 0}}}
  - match: {prefix: "/maybe", runtime_fraction: {default_value: {numerator: 0, denominator: HUNDRED}}}
    direct_response: {status: 418}
  - match: {prefix: "/maybe", runtime_fraction: {default_value: {numerator: 100}}}
    direct_response: {status: 200, body: {inline_string: "always"}}
"#;

async fn scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let shadow = Upstream::start("shadow").await?;
    let never = Upstream::start("never").await?;
    let yaml = http_bootstrap(
        ROUTES,
        &[
            cluster("up", &[up.addr()]),
            cluster("shadow", &[shadow.addr()]),
            cluster("never", &[never.addr()]),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let addr = proxy.addr("http");

    info!(%kind, "stream idle before the response: 504 stream timeout");
    let mut c = HttpClient::connect(addr, Proto::Http1).await?;
    let r = c
        .get_with("t.test", "/idle", &[("x-echo-delay-ms", "6000")])
        .await?;
    anyhow::ensure!(r.status == 504, "{kind}: idle → {}", r.status);
    obs.record("idle: status", r.status.as_u16());
    obs.record("idle: body", r.text());
    obs.record(
        "idle: attempt count",
        r.header("x-envoy-attempt-count").map(str::to_owned),
    );

    info!(%kind, "stream idle after the response started: the body is cut");
    let mut c = HttpClient::connect(addr, Proto::Http1).await?;
    let req = c
        .request(http::Method::GET, "t.test", "/idle")
        .header("x-echo-hold", "1")
        .body(petrel_e2e::client::empty())?;
    let resp = c.send_streaming(req).await?;
    anyhow::ensure!(resp.status() == 200, "{kind}: held → {}", resp.status());
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let ended_with_error = loop {
        match body.frame().await {
            Some(Ok(f)) => got.extend_from_slice(f.data_ref().map_or(&[][..], |d| d)),
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    anyhow::ensure!(ended_with_error, "{kind}: the held body ended cleanly");
    obs.record(
        "idle mid-body: data before the cut",
        String::from_utf8_lossy(&got).into_owned(),
    );
    up.release();
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_rq_idle_timeout",
        "http.ingress.downstream_rq_idle_timeout",
        2,
    )
    .await?;

    info!(%kind, "max_stream_duration before the response");
    let mut c = HttpClient::connect(addr, Proto::Http1).await?;
    let r = c
        .get_with("t.test", "/duration", &[("x-echo-delay-ms", "6000")])
        .await?;
    anyhow::ensure!(
        r.status.is_client_error() || r.status.is_server_error(),
        "{kind}: duration → {}",
        r.status
    );
    obs.record("duration: status", r.status.as_u16());
    obs.record("duration: body", r.text());

    info!(%kind, "gRPC: grpc-timeout sets the route timeout and is passed on");
    let req = c
        .request(http::Method::POST, "t.test", "/grpc")
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "1500m")
        .body(full("x"))?;
    let r = c.send(req).await?;
    anyhow::ensure!(r.status == 200, "{kind}: grpc → {}", r.status);
    let e = r.echo()?;
    let h = |n: &str| {
        e.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    obs.record("grpc: grpc-timeout upstream", h("grpc-timeout"));
    obs.record(
        "grpc: expected timeout upstream",
        h("x-envoy-expected-rq-timeout-ms"),
    );
    obs.record("grpc: attempt count upstream", h("x-envoy-attempt-count"));
    let req = c
        .request(http::Method::POST, "t.test", "/grpc")
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "1S")
        .header("x-echo-delay-ms", "6000")
        .body(full("x"))?;
    let r = c.send(req).await?;
    obs.record("grpc timeout: status", r.status.as_u16());
    obs.record(
        "grpc timeout: grpc-status",
        r.header("grpc-status").map(str::to_owned),
    );
    obs.record(
        "grpc timeout: grpc-message",
        r.header("grpc-message").map(str::to_owned),
    );

    info!(%kind, "mirrors: a copy with its body goes to the shadow cluster, -shadow host");
    let mut c = HttpClient::connect(addr, Proto::Http1).await?;
    let req = c
        .request(http::Method::POST, "mirror.test:8080", "/mirror/x")
        .body(full("mirrored body"))?;
    let r = c.send(req).await?;
    anyhow::ensure!(r.status == 200, "{kind}: mirror → {}", r.status);
    petrel_e2e::assert_eventually!(shadow.requests() == 1, "shadow saw {}", shadow.requests());
    let m = shadow
        .last()
        .ok_or_else(|| anyhow::anyhow!("no shadow request"))?;
    obs.record("mirror: host", m.host.clone());
    obs.record(
        "mirror: method and path",
        (m.method.clone(), m.path.clone()),
    );
    obs.record("mirror: body", m.body.clone());
    obs.record("mirror: at 0%", never.requests());
    obs.stat_eq(
        &proxy,
        "cluster.shadow.upstream_rq_200",
        "cluster.shadow.upstream_rq_200",
        1,
    )
    .await?;

    info!(%kind, "runtime_fraction: 0% never matches, 100% always does");
    for i in 0..5 {
        let r = c.get("t.test", "/maybe").await?;
        anyhow::ensure!(r.status == 200, "{kind}: /maybe #{i} → {}", r.status);
    }
    obs.record("runtime fraction: all 200", true);
    Ok(obs)
}

#[tokio::test]
async fn idle_duration_grpc_timeouts_and_mirrors_match_envoy() {
    differential(scenario).await;
}

/// The connection manager's idle timeout closes a keep-alive connection with nothing in
/// flight, in both proxies, and counts it.
async fn connection_idle_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let yaml = petrel_e2e::yaml::http_bootstrap_with(
        "common_http_protocol_options: {idle_timeout: 1s}",
        ROUTES,
        &[
            cluster("up", &[up.addr()]),
            cluster("shadow", &[up.addr()]),
            cluster("never", &[up.addr()]),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut conn = petrel_e2e::client::raw::RawConn::connect(proxy.addr("http")).await?;
    conn.write(b"GET /maybe HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await?;
    let resp = conn.read_response().await?;
    anyhow::ensure!(resp.status == 200, "{kind}: → {}", resp.status);
    // Nothing more is sent: the proxy closes the connection once it has been idle.
    let rest = conn
        .read_to_close(std::time::Duration::from_secs(30))
        .await?;
    obs.record("bytes after the response", rest.len());
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_cx_idle_timeout",
        "http.ingress.downstream_cx_idle_timeout",
        1,
    )
    .await?;
    Ok(obs)
}

#[tokio::test]
async fn idle_connections_close_like_envoy() {
    differential(connection_idle_scenario).await;
}
