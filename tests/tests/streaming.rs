//! Differential: bodies stream through without being buffered whole. A response whose upstream
//! holds back its second half must deliver the first half to the client anyway; a request body
//! must reach the upstream (and come back) frame by frame while the client is still sending.
//! A buffering proxy hangs here and fails at the deadline.

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use petrel_e2e::client::{self, empty, HttpClient, Proto};
use petrel_e2e::yaml::{cluster, h2_cluster, http_bootstrap};
use petrel_e2e::{differential, wait, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;

const ONE_ROUTE: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes: [{match: {prefix: "/"}, route: {cluster: up, timeout: 0s}}]
"#;

/// The next data frame of `body` (skipping trailers), or `None` at the end.
async fn next_data(body: &mut Incoming) -> anyhow::Result<Option<Bytes>> {
    loop {
        let frame = tokio::time::timeout(wait::DEADLINE, body.frame())
            .await
            .map_err(|_| anyhow::anyhow!("no body frame within {:?}: buffered?", wait::DEADLINE))?;
        match frame {
            None => return Ok(None),
            Some(f) => {
                if let Ok(data) = f?.into_data() {
                    if !data.is_empty() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// Reads data frames until `want` bytes have arrived (frames may be split or merged).
async fn read_exactly(body: &mut Incoming, want: &[u8]) -> anyhow::Result<()> {
    let mut got = Vec::new();
    while got.len() < want.len() {
        match next_data(body).await? {
            Some(d) => got.extend_from_slice(&d),
            None => anyhow::bail!("body ended after {:?}, wanted {:?}", got, want),
        }
    }
    anyhow::ensure!(
        got == want,
        "got {:?}, wanted {:?}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(want)
    );
    Ok(())
}

async fn streaming_scenario(
    kind: ProxyKind,
    proto: Proto,
    h2_upstream: bool,
) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let cl = if h2_upstream {
        h2_cluster("up", &[up.addr()])
    } else {
        cluster("up", &[up.addr()])
    };
    let yaml = http_bootstrap(ONE_ROUTE, &[cl]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut c = HttpClient::connect(proxy.addr("http"), proto).await?;

    info!("response: the first half arrives while the upstream holds the rest");
    let req = c
        .request(Method::GET, "s.test", "/hold")
        .header("x-echo-hold", "1")
        .body(empty())?;
    let resp = c.send_streaming(req).await?;
    anyhow::ensure!(resp.status() == 200, "{kind}: hold → {}", resp.status());
    let mut body = resp.into_body();
    read_exactly(&mut body, b"first\n")
        .await
        .map_err(|e| anyhow::anyhow!("{kind}: {e:#}"))?;
    up.release();
    read_exactly(&mut body, b"rest\n")
        .await
        .map_err(|e| anyhow::anyhow!("{kind}: {e:#}"))?;
    anyhow::ensure!(
        next_data(&mut body).await?.is_none(),
        "{kind}: extra data after rest"
    );
    obs.record("response streams", true);

    info!("request: each frame is echoed back before the next is sent");
    let (tx, req_body) = client::channel();
    let req = c
        .request(Method::POST, "s.test", "/duplex")
        .header("x-echo-duplex", "1")
        .body(req_body)?;
    tx.send(Bytes::from_static(b"ping-1")).await?;
    let resp = c.send_streaming(req).await?;
    anyhow::ensure!(resp.status() == 200, "{kind}: duplex → {}", resp.status());
    let mut body = resp.into_body();
    read_exactly(&mut body, b"ping-1")
        .await
        .map_err(|e| anyhow::anyhow!("{kind}: {e:#}"))?;
    tx.send(Bytes::from_static(b"ping-2")).await?;
    read_exactly(&mut body, b"ping-2")
        .await
        .map_err(|e| anyhow::anyhow!("{kind}: {e:#}"))?;
    drop(tx);
    anyhow::ensure!(
        next_data(&mut body).await?.is_none(),
        "{kind}: duplex did not end"
    );
    obs.record("request streams", true);
    Ok(obs)
}

#[tokio::test]
async fn bodies_stream_http1() {
    differential(|kind| streaming_scenario(kind, Proto::Http1, false)).await;
}

#[tokio::test]
async fn bodies_stream_h2c_to_h2() {
    differential(|kind| streaming_scenario(kind, Proto::H2c, true)).await;
}
