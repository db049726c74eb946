//! Differential: DNS-resolved clusters — STRICT_DNS and LOGICAL_DNS pointing at `localhost`
//! (resolved through /etc/hosts, V4_ONLY) route to the loopback upstream, and `/clusters`
//! reports the resolved host with its hostname.

use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::yaml::http_bootstrap;
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};

const ROUTES: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/strict"}
    route: {cluster: strict}
  - match: {prefix: "/logical"}
    route: {cluster: logical}
"#;

fn dns_cluster(name: &str, ty: &str, port: u16) -> String {
    format!(
        "{{name: {name}, type: {ty}, connect_timeout: 1s, dns_lookup_family: V4_ONLY, \
         load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: \
         {{address: {{socket_address: {{address: localhost, port_value: {port}}}}}}}}}]}}]}}}}"
    )
}

async fn dns_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let strict = Upstream::start("strict").await?;
    let logical = Upstream::start("logical").await?;
    let yaml = http_bootstrap(
        ROUTES,
        &[
            dns_cluster("strict", "STRICT_DNS", strict.port()),
            dns_cluster("logical", "LOGICAL_DNS", logical.port()),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut c = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;
    for (path, want) in [("/strict", "strict"), ("/logical", "logical")] {
        // DNS resolution finishes before /ready (cluster init is part of server init), so the
        // first request must already succeed.
        let r = c.get("dns.test", path).await?;
        anyhow::ensure!(
            r.status == 200 && r.upstream() == Some(want),
            "{kind}: {path} → {} from {:?}: {}",
            r.status,
            r.upstream(),
            r.text()
        );
        obs.record(path, (r.status.as_u16(), want));
    }
    let text = proxy.admin().get("/clusters").await?.text();
    let line = format!("strict::127.0.0.1:{}::hostname::localhost", strict.port());
    anyhow::ensure!(
        text.lines().any(|l| l == line),
        "{kind}: /clusters lacks {line:?}:\n{text}"
    );
    obs.record("/clusters strict hostname line", true);
    obs.stat_eq(
        &proxy,
        "cluster.strict.membership_total",
        "cluster.strict.membership_total",
        1,
    )
    .await?;
    Ok(obs)
}

#[tokio::test]
async fn dns_clusters_resolve_localhost() {
    differential(dns_scenario).await;
}
