//! Differential: IPv6 on both sides — a listener on `[::1]`, a STATIC cluster endpoint on
//! `[::1]`, and the stat names Envoy derives from a v6 listener address.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::proxy::render;
use petrel_e2e::yaml::cluster;
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};

const BOOTSTRAP: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {{admin_port}}}}
static_resources:
  listeners:
  - name: v6
    address: {socket_address: {address: "::1", port_value: {{port:v6}}, ipv4_compat: false}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: v6
          route_config:
            virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: up6}}]}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters: [{{clusters}}]
"#;

async fn ipv6_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let up = match Upstream::start_on("up6", loopback6).await {
        Ok(up) => up,
        Err(e) => {
            eprintln!("SKIPPED: no IPv6 loopback here ({e:#})");
            let mut obs = Observations::new(kind);
            obs.record("skipped", "no ::1");
            return Ok(obs);
        }
    };
    let clusters = cluster("up6", &[up.addr()]);
    let yaml = render(BOOTSTRAP, &[("clusters", &clusters)]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let addr = SocketAddr::new(loopback6, proxy.port("v6"));
    let r = HttpClient::connect(addr, Proto::Http1)
        .await?
        .get("v6.test", "/six")
        .await?;
    anyhow::ensure!(
        r.status == 200 && r.upstream() == Some("up6"),
        "{kind}: {} from {:?}",
        r.status,
        r.upstream()
    );
    obs.record("status", r.status.as_u16());
    let port = proxy.port("v6");
    let name = format!("listener.[__1]_{port}.downstream_cx_total");
    obs.stat_eq(&proxy, "listener.[__1]_<v6>.downstream_cx_total", &name, 1)
        .await?;
    let text = proxy.admin().get("/listeners").await?.text();
    anyhow::ensure!(
        text.trim() == format!("v6::[::1]:{port}"),
        "{kind}: /listeners {text:?}"
    );
    obs.record("/listeners", text.replace(&port.to_string(), "<v6>"));
    let clusters = proxy.admin().get("/clusters").await?.text();
    let health = format!("up6::[::1]:{}::health_flags::healthy", up.port());
    anyhow::ensure!(
        clusters.lines().any(|l| l == health),
        "{kind}: /clusters lacks {health:?}"
    );
    obs.record("/clusters v6 host line", true);
    Ok(obs)
}

#[tokio::test]
async fn ipv6_listener_and_endpoint() {
    differential(ipv6_scenario).await;
}
