//! Differential, privileged: Istio's capture model through a real iptables REDIRECT in a network
//! namespace. A catch-all listener with `use_original_dst` reads `SO_ORIGINAL_DST` and hands the
//! connection to the `bind_to_port: false` listener for the original port (0.0.0.0:8080), or
//! keeps it and forwards through an ORIGINAL_DST passthrough cluster to the original destination.
//!
//! Skipped with a printed reason where namespaces cannot be created (not root).

use std::net::SocketAddr;

use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::netns::{KillOnDrop, NetNs};
use petrel_e2e::proxy::{render, Placement};
use petrel_e2e::tcp;
use petrel_e2e::wait;
use petrel_e2e::{differential, Observations, Proxy, ProxyKind};
use tracing::info;

const BOOTSTRAP: &str = r#"
admin:
  address: {socket_address: {address: "{{ns_ip}}", port_value: {{admin_port}}}}
static_resources:
  listeners:
  - name: virtualOutbound
    address: {socket_address: {address: 0.0.0.0, port_value: 15001}}
    use_original_dst: true
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: PassthroughCluster
          cluster: PassthroughCluster
  - name: 0.0.0.0_8080
    address: {socket_address: {address: 0.0.0.0, port_value: 8080}}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound_0.0.0.0_8080
          route_config:
            response_headers_to_add: [{header: {key: x-via, value: listener-8080}}]
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: svc8080}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
  - name: svc8080
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: svc8080
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: "{{ns_ip}}", port_value: 8080}}}}]}]
"#;

/// A `python3 -m http.server` inside the namespace and the directory it serves.
struct PythonUpstream {
    _child: KillOnDrop,
    dir: std::path::PathBuf,
}

impl Drop for PythonUpstream {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `python3 -m http.server` inside the namespace, serving a file `id` that names it.
async fn start_python_upstream(ns: &NetNs, port: u16) -> anyhow::Result<PythonUpstream> {
    let dir = std::env::temp_dir()
        .join("petrel-e2e")
        .join(format!("{}-www-{port}", ns.name()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("id"), format!("upstream-{port}"))?;
    let child = ns.spawn(&[
        "python3",
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        &ns.ns_ip().to_string(),
        "--directory",
        &dir.display().to_string(),
    ])?;
    let upstream = PythonUpstream {
        _child: KillOnDrop(child),
        dir,
    };
    let addr = SocketAddr::from((ns.ns_ip(), port));
    wait::wait_until(
        &format!("python upstream on {addr}"),
        wait::DEADLINE,
        || async move { tokio::net::TcpStream::connect(addr).await.is_ok() },
    )
    .await?;
    Ok(upstream)
}

async fn original_dst_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let ns = match NetNs::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            let mut obs = Observations::new(kind);
            obs.record("skipped", why);
            return Ok(obs);
        }
    };
    let _up8080 = start_python_upstream(&ns, 8080).await?;
    let _up9090 = start_python_upstream(&ns, 9090).await?;
    // Capture only after the upstreams answered (the readiness probe crosses the veth too).
    for port in ["8080", "9090"] {
        ns.exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-i",
            ns.ns_if(),
            "-p",
            "tcp",
            "--dport",
            port,
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ])?;
    }
    let yaml = render(BOOTSTRAP, &[("ns_ip", &ns.ns_ip())]);
    let placement = Placement {
        netns: Some(ns.name().to_owned()),
        admin_ip: ns.ns_ip(),
    };
    let proxy = Proxy::start_with(kind, &yaml, &[], &placement).await?;
    let mut obs = Observations::new(kind);

    info!("port 8080: handed off to the 0.0.0.0:8080 HTTP listener");
    let r = HttpClient::connect(SocketAddr::from((ns.ns_ip(), 8080)), Proto::Http1)
        .await?
        .get("svc.test", "/id")
        .await?;
    info!(%kind, status = %r.status, via = ?r.header("x-via"), body = %r.text());
    anyhow::ensure!(r.status == 200, "{kind}: 8080 → {}", r.status);
    anyhow::ensure!(
        r.header("x-via") == Some("listener-8080"),
        "{kind}: not handed off: {:?}",
        r.headers
    );
    anyhow::ensure!(
        r.text() == "upstream-8080",
        "{kind}: 8080 body {:?}",
        r.text()
    );
    obs.record(
        "8080",
        (
            r.status.as_u16(),
            r.header("x-via").map(str::to_owned),
            r.text(),
        ),
    );

    info!("port 9090: no listener, kept by the catch-all and passed through to the original dst");
    let raw = tcp::roundtrip(
        SocketAddr::from((ns.ns_ip(), 9090)),
        b"GET /id HTTP/1.0\r\n\r\n",
    )
    .await?;
    let text = String::from_utf8_lossy(&raw);
    info!(%kind, %text, "9090");
    anyhow::ensure!(text.starts_with("HTTP/1.0 200"), "{kind}: 9090 → {text:?}");
    anyhow::ensure!(
        text.ends_with("upstream-9090"),
        "{kind}: 9090 body {text:?}"
    );
    anyhow::ensure!(
        !text.to_ascii_lowercase().contains("x-via"),
        "{kind}: 9090 went through HTTP"
    );
    obs.record("9090", "passthrough to upstream-9090");

    obs.stat_eq(
        &proxy,
        "cluster.PassthroughCluster.upstream_cx_total",
        "cluster.PassthroughCluster.upstream_cx_total",
        1,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.svc8080.upstream_rq_total",
        "cluster.svc8080.upstream_rq_total",
        1,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "http.outbound_0.0.0.0_8080.downstream_rq_total",
        "http.outbound_0.0.0.0_8080.downstream_rq_total",
        1,
    )
    .await?;
    let stats = proxy.stats().await?;
    for name in [
        "listener.0.0.0.0_15001.downstream_cx_total",
        "listener.0.0.0.0_8080.downstream_cx_total",
    ] {
        info!(%kind, name, value = ?stats.value(name));
        obs.record(format!("stat {name}"), stats.value(name));
    }
    Ok(obs)
}

#[tokio::test]
async fn original_dst_handoff_and_passthrough() {
    differential(original_dst_scenario).await;
}
