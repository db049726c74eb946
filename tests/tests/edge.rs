//! Differential: HTTP/1.1 wire edge cases — HTTP/1.0, absolute-form targets, `Expect:
//! 100-continue`, oversized headers, hop-by-hop headers, HEAD, 204, a client that dies mid-body,
//! and an upstream that fails mid-body. The proxy must keep serving afterwards.

use petrel_e2e::client::raw::RawConn;
use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::yaml::{cluster, http_bootstrap};
use petrel_e2e::{differential, Echo, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;

const ONE_ROUTE: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes: [{match: {prefix: "/"}, route: {cluster: up}}]
"#;

fn echo_of(body: &[u8]) -> anyhow::Result<Echo> {
    Ok(serde_json::from_slice(body)?)
}

async fn edge_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let yaml = http_bootstrap(ONE_ROUTE, &[cluster("up", &[up.addr()])]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let addr = proxy.addr("http");
    let mut obs = Observations::new(kind);

    info!("HTTP/1.0 is refused by default (accept_http_10: false)");
    let mut c = RawConn::connect(addr).await?;
    c.write(b"GET /old HTTP/1.0\r\nHost: e.test\r\n\r\n")
        .await?;
    let r = c.read_response().await?;
    anyhow::ensure!(r.status == 426, "{kind}: HTTP/1.0 → {}", r.status);
    obs.record(
        "HTTP/1.0",
        (r.status, String::from_utf8_lossy(&r.body).into_owned()),
    );

    info!("absolute-form target");
    let mut c = RawConn::connect(addr).await?;
    c.write(b"GET http://abs.test/abs?x=1 HTTP/1.1\r\nHost: abs.test\r\n\r\n")
        .await?;
    let r = c.read_response().await?;
    anyhow::ensure!(r.status == 200, "{kind}: absolute-form → {}", r.status);
    let e = echo_of(&r.body)?;
    anyhow::ensure!(e.path == "/abs?x=1", "{kind}: upstream path {}", e.path);
    obs.record("absolute-form upstream", (e.path.clone(), e.host.clone()));

    info!("Expect: 100-continue is answered by the proxy, then the body flows");
    let mut c = RawConn::connect(addr).await?;
    c.write(b"POST /expect HTTP/1.1\r\nHost: e.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await?;
    let interim = c.read_response().await?;
    anyhow::ensure!(interim.status == 100, "{kind}: interim {}", interim.status);
    c.write(b"hello").await?;
    let r = c.read_response().await?;
    anyhow::ensure!(r.status == 200, "{kind}: after 100 → {}", r.status);
    let e = echo_of(&r.body)?;
    anyhow::ensure!(e.body == "hello", "{kind}: body {:?}", e.body);
    obs.record(
        "expect: upstream saw expect header",
        e.header("expect").map(str::to_owned),
    );

    info!("headers over the 60 KiB default limit → 431");
    let mut c = RawConn::connect(addr).await?;
    let big = "x".repeat(70 * 1024);
    c.write(format!("GET /big HTTP/1.1\r\nHost: e.test\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await?;
    let r = c.read_response().await?;
    anyhow::ensure!(r.status == 431, "{kind}: huge header → {}", r.status);
    obs.record("huge header", r.status);

    info!("hop-by-hop headers are not forwarded");
    let mut c = RawConn::connect(addr).await?;
    c.write(
        b"GET /hop HTTP/1.1\r\nHost: e.test\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\nTE: trailers\r\nX-Regular: yes\r\n\r\n",
    )
    .await?;
    let r = c.read_response().await?;
    let e = echo_of(&r.body)?;
    for h in ["connection", "keep-alive", "proxy-connection"] {
        anyhow::ensure!(
            e.header(h).is_none(),
            "{kind}: forwarded hop-by-hop {h}: {:?}",
            e.headers
        );
    }
    anyhow::ensure!(
        e.header("x-regular") == Some("yes"),
        "{kind}: dropped x-regular"
    );
    let mut names = e.header_names();
    names.retain(|n| !n.starts_with("x-echo"));
    obs.record("hop-by-hop: upstream header names", names);
    obs.record("hop-by-hop: te", e.header("te").map(str::to_owned));

    info!("HEAD: headers only");
    c.write(b"HEAD /head HTTP/1.1\r\nHost: e.test\r\n\r\n")
        .await?;
    let r = c.read_head_response().await?;
    anyhow::ensure!(r.status == 200, "{kind}: HEAD → {}", r.status);
    obs.record(
        "HEAD content-length present",
        r.header("content-length").is_some(),
    );
    info!("204 from upstream: no body, connection reusable");
    c.write(b"GET /nothing HTTP/1.1\r\nHost: e.test\r\nx-echo-status: 204\r\n\r\n")
        .await?;
    let r = c.read_response().await?;
    anyhow::ensure!(
        r.status == 204 && r.body.is_empty(),
        "{kind}: 204 → {} {:?}",
        r.status,
        r.body
    );
    obs.record(
        "204 has content-length",
        r.header("content-length").map(str::to_owned),
    );
    obs.record(
        "204 has transfer-encoding",
        r.header("transfer-encoding").map(str::to_owned),
    );
    c.write(b"GET /after-204 HTTP/1.1\r\nHost: e.test\r\n\r\n")
        .await?;
    anyhow::ensure!(
        c.read_response().await?.status == 200,
        "{kind}: reuse after 204"
    );

    // Whether the upstream sees the start of the request depends on timing (the proxy streams),
    // so only "the proxy survives" is asserted below.
    info!("client dies mid-body");
    let mut c = RawConn::connect(addr).await?;
    c.write(b"POST /truncated HTTP/1.1\r\nHost: e.test\r\nContent-Length: 100\r\n\r\nonly-some")
        .await?;
    drop(c);

    info!("upstream fails mid-body: the client sees an incomplete response, not a clean one");
    let mut hc = HttpClient::connect(addr, Proto::Http1).await?;
    let res = hc
        .get_with("e.test", "/body-error", &[("x-echo-body-error", "1")])
        .await;
    info!(%kind, ?res, "mid-body failure");
    anyhow::ensure!(
        res.is_err(),
        "{kind}: mid-body upstream failure looked complete: {res:?}"
    );
    obs.record("mid-body upstream failure seen by client", res.is_err());

    info!("still serving");
    let r = HttpClient::connect(addr, Proto::Http1)
        .await?
        .get("e.test", "/still-here")
        .await?;
    anyhow::ensure!(r.status == 200, "{kind}: after edge cases → {}", r.status);
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_rq_4xx",
        "http.ingress.downstream_rq_4xx",
        2,
    )
    .await?;
    Ok(obs)
}

#[tokio::test]
async fn http1_edge_cases_match_envoy() {
    differential(edge_scenario).await;
}
