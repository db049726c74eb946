//! Differential: `tcp_proxy` — bytes echo through intact (including half-close), weighted
//! clusters, a refused upstream closes the downstream connection, and the listener / tcp /
//! cluster connection stats agree.

use anyhow::Context as _;
use petrel_e2e::ports::ClosedPort;
use petrel_e2e::proxy::render;
use petrel_e2e::tcp::{self, TcpEcho};
use petrel_e2e::yaml::cluster;
use petrel_e2e::{differential, Observations, Proxy, ProxyKind};
use tracing::info;

const BOOTSTRAP: &str = r#"
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
          stat_prefix: tcp_echo
          cluster: echo
  - name: weighted
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:weighted}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_weighted
          weighted_clusters:
            clusters: [{name: echo2, weight: 1}]
  - name: idle
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:idle}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_idle
          cluster: echo2
          idle_timeout: 1s
  - name: refused
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:refused}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_refused
          cluster: closed
  clusters: [{{clusters}}]
"#;

async fn tcp_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let echo = TcpEcho::start().await?;
    let echo2 = TcpEcho::start().await?;
    let closed = ClosedPort::new()?;
    let clusters = [
        cluster("echo", &[echo.addr()]),
        cluster("echo2", &[echo2.addr()]),
        cluster("closed", &[closed.addr()]),
    ]
    .join(", ");
    let yaml = render(BOOTSTRAP, &[("clusters", &clusters)]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);

    for i in 0..3 {
        let msg = format!("hello tcp {i}");
        let got = tcp::roundtrip(proxy.addr("tcp"), msg.as_bytes())
            .await
            .with_context(|| format!("{kind}: echo #{i}"))?;
        anyhow::ensure!(
            got == msg.as_bytes(),
            "{kind}: echoed {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    info!("a 1 MiB payload survives intact");
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let got = tcp::roundtrip(proxy.addr("tcp"), &big)
        .await
        .with_context(|| format!("{kind}: 1 MiB echo"))?;
    anyhow::ensure!(
        got == big,
        "{kind}: 1 MiB echo came back as {} bytes",
        got.len()
    );
    anyhow::ensure!(
        echo.connections() == 4,
        "{kind}: echo saw {} connections",
        echo.connections()
    );

    let got = tcp::roundtrip(proxy.addr("weighted"), b"weighted")
        .await
        .with_context(|| format!("{kind}: weighted echo"))?;
    anyhow::ensure!(got == b"weighted", "{kind}: weighted echo {:?}", got);
    anyhow::ensure!(
        echo2.connections() == 1,
        "{kind}: echo2 saw {}",
        echo2.connections()
    );

    info!("refused upstream: downstream is closed without data");
    let got = tcp::until_closed(proxy.addr("refused"), b"nobody home").await?;
    anyhow::ensure!(got == 0, "{kind}: refused upstream returned {got} bytes");
    obs.record("refused bytes", got);

    info!("idle_timeout closes a silent connection (both directions idle)");
    let mut idle = tokio::net::TcpStream::connect(proxy.addr("idle")).await?;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        idle.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        idle.read_exact(&mut buf).await?;
        anyhow::ensure!(&buf == b"ping", "{kind}: idle listener echo {buf:?}");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            idle.read_to_end(&mut rest),
        )
        .await
        .with_context(|| format!("{kind}: idle connection still open after 30s"))??;
        obs.record("idle close: bytes after ping", n);
    }
    obs.stat_eq(
        &proxy,
        "tcp.tcp_idle.idle_timeout",
        "tcp.tcp_idle.idle_timeout",
        1,
    )
    .await?;

    let listener = proxy.listener_stat_prefix("tcp");
    obs.stat_eq(
        &proxy,
        "listener.<tcp>.downstream_cx_total",
        &format!("{listener}.downstream_cx_total"),
        4,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "tcp.tcp_echo.downstream_cx_total",
        "tcp.tcp_echo.downstream_cx_total",
        4,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.echo.upstream_cx_total",
        "cluster.echo.upstream_cx_total",
        4,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.echo.upstream_cx_active",
        "cluster.echo.upstream_cx_active",
        0,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.echo2.upstream_cx_total",
        "cluster.echo2.upstream_cx_total",
        2,
    )
    .await?;
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
    Ok(obs)
}

#[tokio::test]
async fn tcp_proxy_echoes_and_counts() {
    differential(tcp_scenario).await;
}
