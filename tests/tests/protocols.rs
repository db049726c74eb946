//! Differential: protocol handling — HTTP/1.1 keep-alive and connection reuse, chunked bodies in
//! both directions, h2c prior knowledge on both sides (multiplexed), HTTP/1.1 → h2 upstream, and
//! gRPC with trailers, including gRPC-shaped local replies.

use bytes::Bytes;
use http::Method;
use petrel_e2e::client::raw::RawConn;
use petrel_e2e::client::{chunked, HttpClient, Proto};
use petrel_e2e::grpc::{self, GrpcServer};
use petrel_e2e::ports::ClosedPort;
use petrel_e2e::yaml::{cluster, h2_cluster, http_bootstrap};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;

const ONE_ROUTE: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes: [{match: {prefix: "/"}, route: {cluster: up}}]
"#;

async fn keepalive_chunked_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let yaml = http_bootstrap(ONE_ROUTE, &[cluster("up", &[up.addr()])]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);

    info!("five requests on one keep-alive connection reuse one upstream connection");
    let mut c = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;
    for i in 0..5 {
        let r = c.get("ka.test", &format!("/ka/{i}")).await?;
        anyhow::ensure!(r.status == 200, "{kind}: /ka/{i} → {}", r.status);
    }
    anyhow::ensure!(
        up.connections() == 1,
        "{kind}: upstream saw {} connections",
        up.connections()
    );

    info!("chunked request body arrives whole and still chunked");
    let req = c
        .request(Method::POST, "ka.test", "/upload")
        .body(chunked(vec![
            Bytes::from_static(b"hello "),
            Bytes::from_static(b"chunked "),
            Bytes::from_static(b"world"),
        ]))?;
    let r = c.send(req).await?;
    anyhow::ensure!(r.status == 200, "{kind}: upload → {}", r.status);
    let e = r.echo()?;
    anyhow::ensure!(
        e.body == "hello chunked world",
        "{kind}: upstream body {:?}",
        e.body
    );
    anyhow::ensure!(e.method == "POST", "{kind}: method {}", e.method);
    obs.record(
        "upload transfer-encoding",
        e.header("transfer-encoding").map(str::to_owned),
    );
    obs.record(
        "upload content-length",
        e.header("content-length").map(str::to_owned),
    );
    drop(c);

    info!("chunked response body stays chunked; raw keep-alive handles two exchanges");
    let mut raw = RawConn::connect(proxy.addr("http")).await?;
    for i in 0..2 {
        raw.write(
            format!("GET /chunks/{i} HTTP/1.1\r\nHost: ka.test\r\nx-echo-chunks: 4\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let resp = raw.read_response().await?;
        anyhow::ensure!(resp.status == 200, "{kind}: /chunks → {}", resp.status);
        anyhow::ensure!(resp.chunked, "{kind}: response not chunked: {}", resp.head);
        let e: petrel_e2e::Echo = serde_json::from_slice(&resp.body)?;
        anyhow::ensure!(
            e.path == format!("/chunks/{i}"),
            "{kind}: echo path {}",
            e.path
        );
        obs.record(format!("chunked response {i}"), resp.chunked);
    }
    raw.write(b"GET /len HTTP/1.1\r\nHost: ka.test\r\n\r\n")
        .await?;
    let resp = raw.read_response().await?;
    anyhow::ensure!(
        !resp.chunked && resp.header("content-length").is_some(),
        "{kind}: fixed-length response became {}",
        resp.head
    );
    drop(raw);

    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_cx_total",
        "http.ingress.downstream_cx_total",
        2,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_rq_total",
        "http.ingress.downstream_rq_total",
        9,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_rq_2xx",
        "http.ingress.downstream_rq_2xx",
        9,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.up.upstream_rq_total",
        "cluster.up.upstream_rq_total",
        9,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.up.upstream_rq_2xx",
        "cluster.up.upstream_rq_2xx",
        9,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.up.upstream_rq_200",
        "cluster.up.upstream_rq_200",
        9,
    )
    .await?;
    // Requests were sequential, so one pooled upstream connection served them all.
    obs.stat_eq(
        &proxy,
        "cluster.up.upstream_cx_total",
        "cluster.up.upstream_cx_total",
        1,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.up.upstream_cx_http1_total",
        "cluster.up.upstream_cx_http1_total",
        1,
    )
    .await?;
    anyhow::ensure!(
        up.connections() == 1,
        "{kind}: upstream saw {} connections",
        up.connections()
    );
    Ok(obs)
}

#[tokio::test]
async fn http1_keepalive_and_chunked_bodies() {
    differential(keepalive_chunked_scenario).await;
}

async fn h2c_scenario(kind: ProxyKind, downstream: Proto) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let yaml = http_bootstrap(ONE_ROUTE, &[h2_cluster("up", &[up.addr()])]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let c = HttpClient::connect(proxy.addr("http"), downstream).await?;

    // Ten slow requests at once: over h2c downstream they share one connection; upstream they
    // are multiplexed on one h2 connection either way.
    let n = if downstream == Proto::H2c { 10 } else { 1 };
    let mut calls = Vec::new();
    for i in 0..n {
        let mut c = match c.fork() {
            Some(c) => c,
            None => HttpClient::connect(proxy.addr("http"), downstream).await?,
        };
        calls.push(tokio::spawn(async move {
            c.get_with(
                "h2.test",
                &format!("/h2/{i}"),
                &[("x-echo-delay-ms", "300")],
            )
            .await
        }));
    }
    for call in calls {
        let r = call.await??;
        anyhow::ensure!(r.status == 200, "{kind}: status {}", r.status);
        let e = r.echo()?;
        anyhow::ensure!(
            e.version == "HTTP/2.0",
            "{kind}: upstream got {}",
            e.version
        );
        anyhow::ensure!(
            e.host.as_deref() == Some("h2.test"),
            "{kind}: authority {:?}",
            e.host
        );
        anyhow::ensure!(
            format!("{:?}", r.version)
                == if downstream == Proto::H2c {
                    "HTTP/2.0"
                } else {
                    "HTTP/1.1"
                },
            "{kind}: downstream version {:?}",
            r.version
        );
    }
    let mut second = match c.fork() {
        Some(c) => c,
        None => HttpClient::connect(proxy.addr("http"), downstream).await?,
    };
    let post = second
        .send(
            c.request(Method::POST, "h2.test", "/post")
                .body(chunked(vec![
                    Bytes::from_static(b"a"),
                    Bytes::from_static(b"b"),
                ]))?,
        )
        .await?;
    anyhow::ensure!(
        post.echo()?.body == "ab",
        "{kind}: h2 body {:?}",
        post.echo()?.body
    );
    anyhow::ensure!(
        up.connections() == 1,
        "{kind}: upstream saw {} connections",
        up.connections()
    );
    obs.record("upstream version", "HTTP/2.0");
    obs.stat_eq(
        &proxy,
        "cluster.up.upstream_cx_http2_total",
        "cluster.up.upstream_cx_http2_total",
        1,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.up.upstream_cx_total",
        "cluster.up.upstream_cx_total",
        1,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.up.upstream_rq_total",
        "cluster.up.upstream_rq_total",
        n + 1,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_rq_2xx",
        "http.ingress.downstream_rq_2xx",
        n + 1,
    )
    .await?;
    if downstream == Proto::H2c {
        obs.stat_eq(
            &proxy,
            "http.ingress.downstream_cx_http2_total",
            "http.ingress.downstream_cx_http2_total",
            1,
        )
        .await?;
        obs.stat_eq(
            &proxy,
            "http.ingress.downstream_rq_http2_total",
            "http.ingress.downstream_rq_http2_total",
            n + 1,
        )
        .await?;
    }
    Ok(obs)
}

#[tokio::test]
async fn h2c_prior_knowledge_both_sides() {
    differential(|kind| h2c_scenario(kind, Proto::H2c)).await;
}

#[tokio::test]
async fn http1_downstream_to_h2_upstream() {
    differential(|kind| h2c_scenario(kind, Proto::Http1)).await;
}

const GRPC_ROUTES: &str = r#"
virtual_hosts:
- name: grpc
  domains: ["*"]
  routes:
  - match: {prefix: "/petrel.test.Echo/"}
    route: {cluster: grpc}
  - match: {prefix: "/petrel.test.Down/"}
    route: {cluster: down}
"#;

async fn grpc_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let server = GrpcServer::start("g").await?;
    let closed = ClosedPort::new()?;
    let yaml = http_bootstrap(
        GRPC_ROUTES,
        &[
            h2_cluster("grpc", &[server.addr()]),
            h2_cluster("down", &[closed.addr()]),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let addr = proxy.addr("http");

    let ok = grpc::unary(addr, "grpc.test", "/petrel.test.Echo/Unary", b"hello", &[]).await?;
    info!(%kind, ?ok, "grpc ok");
    anyhow::ensure!(
        ok.http.status == 200,
        "{kind}: http status {}",
        ok.http.status
    );
    anyhow::ensure!(
        ok.message.as_deref() == Some(&b"g:hello"[..]),
        "{kind}: message {:?}",
        ok.message
    );
    anyhow::ensure!(
        ok.trailer("grpc-status") == Some("0"),
        "{kind}: trailers {:?}",
        ok.http.trailers
    );
    anyhow::ensure!(
        ok.trailer("grpc-message") == Some("served-by-g"),
        "{kind}: trailers {:?}",
        ok.http.trailers
    );
    anyhow::ensure!(
        ok.trailer("x-upstream-name") == Some("g"),
        "{kind}: trailers {:?}",
        ok.http.trailers
    );
    obs.record("ok grpc-status", ok.grpc_status().map(str::to_owned));
    obs.record(
        "ok content-type",
        ok.http.header("content-type").map(str::to_owned),
    );

    let err = grpc::unary(
        addr,
        "grpc.test",
        "/petrel.test.Echo/Unary",
        b"x",
        &[("x-grpc-status", "5")],
    )
    .await?;
    anyhow::ensure!(
        err.http.status == 200,
        "{kind}: http status {}",
        err.http.status
    );
    anyhow::ensure!(
        err.trailer("grpc-status") == Some("5"),
        "{kind}: trailers {:?}",
        err.http.trailers
    );
    obs.record("error grpc-status", err.grpc_status().map(str::to_owned));

    info!("local replies to gRPC requests are gRPC-shaped: HTTP 200 + grpc-status");
    let down = grpc::unary(addr, "grpc.test", "/petrel.test.Down/Unary", b"x", &[]).await?;
    info!(%kind, ?down, "grpc upstream down");
    anyhow::ensure!(
        down.http.status == 200,
        "{kind}: http status {}",
        down.http.status
    );
    anyhow::ensure!(
        down.grpc_status() == Some("14"),
        "{kind}: grpc-status {:?}",
        down.grpc_status()
    );
    obs.record("down http status", down.http.status.as_u16());
    obs.record("down grpc-status", down.grpc_status().map(str::to_owned));
    obs.record(
        "down grpc-message",
        down.http.header("grpc-message").map(str::to_owned),
    );
    obs.record(
        "down content-type",
        down.http.header("content-type").map(str::to_owned),
    );

    let nr = grpc::unary(addr, "grpc.test", "/petrel.test.Missing/Unary", b"x", &[]).await?;
    info!(%kind, ?nr, "grpc no route");
    anyhow::ensure!(
        nr.http.status == 200,
        "{kind}: http status {}",
        nr.http.status
    );
    anyhow::ensure!(
        nr.grpc_status() == Some("12"),
        "{kind}: grpc-status {:?}",
        nr.grpc_status()
    );
    obs.record("no-route grpc-status", nr.grpc_status().map(str::to_owned));

    anyhow::ensure!(
        server.calls() == 2,
        "{kind}: server saw {} calls",
        server.calls()
    );
    obs.stat_eq(
        &proxy,
        "cluster.grpc.upstream_rq_total",
        "cluster.grpc.upstream_rq_total",
        2,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.grpc.upstream_rq_200",
        "cluster.grpc.upstream_rq_200",
        2,
    )
    .await?;
    Ok(obs)
}

#[tokio::test]
async fn grpc_unary_with_trailers() {
    differential(grpc_scenario).await;
}

async fn h2_to_h1_bodies_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let yaml = http_bootstrap(ONE_ROUTE, &[cluster("up", &[up.addr()])]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut c = HttpClient::connect(proxy.addr("http"), Proto::H2c).await?;

    info!("h2 request body without content-length becomes chunked HTTP/1.1 upstream");
    let req = c
        .request(Method::POST, "x.test", "/stream")
        .body(chunked(vec![
            Bytes::from_static(b"one "),
            Bytes::from_static(b"two"),
        ]))?;
    let r = c.send(req).await?;
    let e = r.echo()?;
    anyhow::ensure!(
        e.version == "HTTP/1.1" && e.body == "one two",
        "{kind}: upstream saw {e:?}"
    );
    obs.record(
        "no-length: transfer-encoding",
        e.header("transfer-encoding").map(str::to_owned),
    );
    obs.record(
        "no-length: content-length",
        e.header("content-length").map(str::to_owned),
    );

    info!("with content-length it is kept");
    let req = c
        .request(Method::PUT, "x.test", "/fixed")
        .header("content-length", "5")
        .body(petrel_e2e::client::full("fixed"))?;
    let e = c.send(req).await?.echo()?;
    anyhow::ensure!(e.body == "fixed", "{kind}: body {:?}", e.body);
    obs.record(
        "fixed: content-length",
        e.header("content-length").map(str::to_owned),
    );
    obs.record(
        "fixed: transfer-encoding",
        e.header("transfer-encoding").map(str::to_owned),
    );

    info!("a chunked HTTP/1.1 response arrives over h2 whole, without transfer-encoding");
    let r = c
        .get_with("x.test", "/chunks", &[("x-echo-chunks", "3")])
        .await?;
    anyhow::ensure!(r.echo()?.path == "/chunks", "{kind}: chunked response body");
    anyhow::ensure!(
        r.header("transfer-encoding").is_none(),
        "{kind}: TE over h2"
    );
    obs.record("chunked response over h2: headers", r.header_names());
    Ok(obs)
}

#[tokio::test]
async fn h2c_downstream_to_http1_upstream_bodies() {
    differential(h2_to_h1_bodies_scenario).await;
}
