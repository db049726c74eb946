//! Differential: deterministic load-balancing properties — equal-weight ROUND_ROBIN alternates,
//! weighted endpoints split exactly per cycle, and a refusing endpoint in a round-robin pair
//! fails exactly its share of requests (no retries configured).

use std::collections::BTreeMap;

use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::ports::ClosedPort;
use petrel_e2e::yaml::{cluster, cluster_with, http_bootstrap};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;

const ROUTES: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/rr"}
    route: {cluster: rr}
  - match: {prefix: "/weighted"}
    route: {cluster: weighted}
  - match: {prefix: "/half-down"}
    route: {cluster: half_down}
"#;

/// A cluster whose endpoints carry `load_balancing_weight`s.
fn weighted_cluster(name: &str, endpoints: &[(std::net::SocketAddr, u32)]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, w)| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: '{}', port_value: {}}}}}}}, load_balancing_weight: {w}}}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!(
        "{{name: {name}, connect_timeout: 1s, type: STATIC, lb_policy: ROUND_ROBIN, \
         load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{}]}}]}}}}",
        eps.join(", ")
    )
}

async fn lb_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let (u1, u2) = (Upstream::start("u1").await?, Upstream::start("u2").await?);
    let (w1, w3) = (Upstream::start("w1").await?, Upstream::start("w3").await?);
    let ok = Upstream::start("ok").await?;
    let down = ClosedPort::new()?;
    let yaml = http_bootstrap(
        ROUTES,
        &[
            cluster_with("rr", &[u1.addr(), u2.addr()], ""),
            weighted_cluster("weighted", &[(w1.addr(), 1), (w3.addr(), 3)]),
            cluster("half_down", &[ok.addr(), down.addr()]),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut c = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;

    let mut order = Vec::new();
    for _ in 0..10 {
        let r = c.get("lb.test", "/rr").await?;
        order.push(r.upstream().unwrap_or("?").to_owned());
    }
    info!(%kind, ?order, "round robin");
    anyhow::ensure!(
        order.windows(2).all(|w| w[0] != w[1]),
        "{kind}: RR did not alternate: {order:?}"
    );
    anyhow::ensure!(
        u1.requests() == 5 && u2.requests() == 5,
        "{kind}: RR split {order:?}"
    );
    obs.record("rr split", (u1.requests(), u2.requests()));

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..8 {
        let r = c.get("lb.test", "/weighted").await?;
        *counts
            .entry(r.upstream().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    info!(%kind, ?counts, "weighted");
    anyhow::ensure!(
        counts.get("w1") == Some(&2) && counts.get("w3") == Some(&6),
        "{kind}: weights 1:3 over 8 picks gave {counts:?}"
    );
    obs.record("weighted split", &counts);

    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for _ in 0..4 {
        let r = c.get("lb.test", "/half-down").await?;
        *statuses.entry(r.status.as_u16()).or_default() += 1;
    }
    info!(%kind, ?statuses, "half down");
    anyhow::ensure!(
        statuses.get(&200) == Some(&2) && statuses.get(&503) == Some(&2),
        "{kind}: half-down statuses {statuses:?}"
    );
    obs.record("half-down statuses", &statuses);
    obs.stat_eq(
        &proxy,
        "cluster.half_down.upstream_cx_connect_fail",
        "cluster.half_down.upstream_cx_connect_fail",
        2,
    )
    .await?;
    Ok(obs)
}

#[tokio::test]
async fn load_balancing_is_deterministic_where_envoy_is() {
    differential(lb_scenario).await;
}
