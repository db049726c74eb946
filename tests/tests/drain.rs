//! Lifecycle: SIGTERM with slow requests in flight. They complete, new connections are refused,
//! and the process exits 0.

use std::time::Duration;

use petrel_e2e::client::raw::RawConn;
use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::diff::single;
use petrel_e2e::yaml::{cluster, http_bootstrap};
use petrel_e2e::{assert_eventually, differential, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;

const ONE_ROUTE: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes: [{match: {prefix: "/"}, route: {cluster: up}}]
"#;

async fn sigterm_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let yaml = http_bootstrap(ONE_ROUTE, &[cluster("up", &[up.addr()])]);
    let mut proxy = Proxy::start(kind, &yaml, &["--drain-time-s", "10"]).await?;
    let mut obs = Observations::new(kind);
    let addr = proxy.addr("http");

    // An idle keep-alive connection that has already served a request.
    let mut idle = RawConn::connect(addr).await?;
    idle.write(b"GET /idle HTTP/1.1\r\nHost: d.test\r\n\r\n")
        .await?;
    anyhow::ensure!(
        idle.read_response().await?.status == 200,
        "{kind}: idle request"
    );

    let mut inflight = Vec::new();
    for i in 0..3 {
        let mut c = HttpClient::connect(addr, Proto::Http1).await?;
        inflight.push(tokio::spawn(async move {
            c.get_with(
                "d.test",
                &format!("/slow/{i}"),
                &[("x-echo-delay-ms", "2000")],
            )
            .await
        }));
    }
    assert_eventually!(
        up.requests() == 4,
        "{kind}: upstream saw {} requests",
        up.requests()
    );
    info!(%kind, "sending SIGTERM with 3 requests in flight");
    proxy.signal("TERM")?;

    info!("stops accepting");
    assert_eventually!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "{kind}: still accepting after SIGTERM"
    );
    info!("closes the idle keep-alive connection");
    idle.read_to_close(Duration::from_secs(30)).await?;

    info!("in-flight requests complete");
    for (i, call) in inflight.into_iter().enumerate() {
        let r = call.await?;
        anyhow::ensure!(
            r.as_ref().is_ok_and(|r| r.status == 200),
            "{kind}: in-flight #{i}: {:?}",
            r.map(|r| r.status)
        );
    }
    let status = proxy.wait_exit(Duration::from_secs(60)).await?;
    info!(%kind, %status, "exited");
    anyhow::ensure!(status.success(), "{kind}: exit {status}");
    obs.record("exit code", status.code());
    Ok(obs)
}

/// Petrel only: Envoy 1.40 answers SIGTERM by exiting at once, resetting in-flight requests
/// (verified against the pinned binary); Petrel drains instead (issue 2, "Lifecycle").
#[tokio::test]
async fn sigterm_lets_inflight_requests_finish() {
    single(ProxyKind::Petrel, sigterm_scenario).await;
}

async fn graceful_drain_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let yaml = http_bootstrap(ONE_ROUTE, &[cluster("up", &[up.addr()])]);
    // `immediate` makes every response during the drain window carry `connection: close`
    // (the default `gradual` strategy decides by a probability that grows over the window).
    let args = ["--drain-time-s", "5", "--drain-strategy", "immediate"];
    let mut proxy = Proxy::start(kind, &yaml, &args).await?;
    let mut obs = Observations::new(kind);
    let addr = proxy.addr("http");

    let mut inflight = Vec::new();
    for i in 0..3 {
        let mut c = HttpClient::connect(addr, Proto::Http1).await?;
        inflight.push(tokio::spawn(async move {
            c.get_with(
                "d.test",
                &format!("/slow/{i}"),
                &[("x-echo-delay-ms", "1000")],
            )
            .await
        }));
    }
    assert_eventually!(
        up.requests() == 3,
        "{kind}: upstream saw {} requests",
        up.requests()
    );
    let r = proxy.admin().post("/drain_listeners?graceful").await?;
    anyhow::ensure!(r.status == 200, "{kind}: drain_listeners {}", r.status);
    obs.record("drain_listeners", (r.status.as_u16(), r.text()));

    info!("in-flight requests finish, told to close their connections");
    for (i, call) in inflight.into_iter().enumerate() {
        let r = call.await??;
        anyhow::ensure!(
            r.status == 200 && r.header("connection") == Some("close"),
            "{kind}: in-flight #{i}: {} connection={:?}",
            r.status,
            r.header("connection")
        );
    }
    obs.record("in-flight", "200 + connection: close");

    info!("during the drain window new connections are served, then closed");
    let r = HttpClient::connect(addr, Proto::Http1)
        .await?
        .get("d.test", "/during")
        .await?;
    anyhow::ensure!(
        r.status == 200 && r.header("connection") == Some("close"),
        "{kind}: during drain: {} connection={:?}",
        r.status,
        r.header("connection")
    );
    obs.record("during drain", "200 + connection: close");

    info!("after the drain window the listener is closed");
    assert_eventually!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "{kind}: listener still accepting after the drain window"
    );
    obs.record("after drain window", "connection refused");
    anyhow::ensure!(
        proxy.admin().ready().await.is_ok(),
        "{kind}: admin must outlive the drain"
    );

    let r = proxy.admin().post("/quitquitquit").await?;
    anyhow::ensure!(r.status == 200, "{kind}: quit {}", r.status);
    let status = proxy.wait_exit(Duration::from_secs(60)).await?;
    anyhow::ensure!(status.success(), "{kind}: exit {status}");
    obs.record("exit code", status.code());
    Ok(obs)
}

/// Istio's shutdown sequence: `POST /drain_listeners?graceful`, wait, `POST /quitquitquit`.
#[tokio::test]
async fn graceful_drain_then_quit() {
    differential(graceful_drain_scenario).await;
}
