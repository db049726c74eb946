//! Differential: load balancing as Envoy does it.
//!
//! - Deterministic properties: equal-weight ROUND_ROBIN alternates, weighted endpoints split
//!   exactly per cycle, a refusing endpoint in a round-robin pair fails exactly its share.
//! - RING_HASH and MAGLEV with route `hash_policy` (header, cookie with and without `ttl`,
//!   query parameter, source IP, `terminal`): every key lands on the same upstream under
//!   Envoy and Petrel, and removing an unrelated host moves few keys.
//! - Priorities and health from `load_assignment`: failover, overprovisioning split, panic
//!   mode, degraded and draining hosts, membership gauges; locality-weighted split.
//! - LEAST_REQUEST prefers the idle host while another holds a request.
//! - EDS-delivered health and priority changes apply to the next request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::ports::{free_port, ClosedPort};
use petrel_e2e::wait::{poll, wait_until, DEADLINE};
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

/// One `LocalityLbEndpoints` of a test cluster.
struct Group {
    priority: u32,
    zone: &'static str,
    weight: Option<u32>,
    /// (address, health_status, `envoy.lb` `hash_key` metadata or "").
    eps: Vec<(SocketAddr, &'static str, &'static str)>,
}

fn group(priority: u32, eps: &[(SocketAddr, &'static str)]) -> Group {
    Group {
        priority,
        zone: "",
        weight: None,
        eps: eps.iter().map(|(a, h)| (*a, *h, "")).collect(),
    }
}

/// A STATIC cluster with `extra` flow-map fields and the given endpoint groups.
fn lb_cluster(name: &str, extra: &str, groups: &[Group]) -> String {
    let groups: Vec<String> = groups
        .iter()
        .map(|g| {
            let eps: Vec<String> = g
                .eps
                .iter()
                .map(|(a, health, key)| {
                    let metadata = if key.is_empty() {
                        String::new()
                    } else {
                        format!(", metadata: {{filter_metadata: {{envoy.lb: {{hash_key: {key}}}}}}}")
                    };
                    format!(
                        "{{endpoint: {{address: {{socket_address: {{address: '{}', port_value: {}}}}}}}, health_status: {health}{metadata}}}",
                        a.ip(),
                        a.port()
                    )
                })
                .collect();
            let weight = g
                .weight
                .map_or(String::new(), |w| format!(", load_balancing_weight: {w}"));
            format!(
                "{{priority: {}, locality: {{zone: '{}'}}{weight}, lb_endpoints: [{}]}}",
                g.priority,
                g.zone,
                eps.join(", ")
            )
        })
        .collect();
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "{{name: {name}, connect_timeout: 1s, type: STATIC{extra}, \
         load_assignment: {{cluster_name: {name}, endpoints: [{}]}}}}",
        groups.join(", ")
    )
}

/// Sends `n` requests and counts which upstream answered each (non-200 answers count under
/// their status).
async fn spread(
    c: &mut HttpClient,
    path: &str,
    n: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let r = c.get("lb.test", path).await?;
        let who = if r.status == 200 {
            r.upstream().unwrap_or("?").to_owned()
        } else {
            format!("status {}", r.status.as_u16())
        };
        *counts.entry(who).or_default() += 1;
    }
    Ok(counts)
}

// --- consistent hashing ---------------------------------------------------------------------

const HASH_ROUTES: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/ring-addr"}
    route: {cluster: ring_addr, hash_policy: [{header: {header_name: x-key}}]}
  - match: {prefix: "/maglev-addr"}
    route: {cluster: maglev_addr, hash_policy: [{header: {header_name: x-key}}]}
  - match: {prefix: "/ring-name3"}
    route: {cluster: ring_name3, hash_policy: [{header: {header_name: x-key}}]}
  - match: {prefix: "/ring-name"}
    route: {cluster: ring_name, hash_policy: [{header: {header_name: x-key}}]}
  - match: {prefix: "/maglev-name3"}
    route: {cluster: maglev_name3, hash_policy: [{header: {header_name: x-key}}]}
  - match: {prefix: "/maglev-name"}
    route: {cluster: maglev_name, hash_policy: [{header: {header_name: x-key}}]}
  - match: {prefix: "/cookie-ttl"}
    route: {cluster: ring_name, hash_policy: [{cookie: {name: sticky, ttl: 60s, path: /}}]}
  - match: {prefix: "/cookie"}
    route: {cluster: ring_name, hash_policy: [{cookie: {name: sess}}]}
  - match: {prefix: "/query"}
    route: {cluster: maglev_name, hash_policy: [{query_parameter: {name: id}}]}
  - match: {prefix: "/ip"}
    route: {cluster: ring_addr, hash_policy: [{connection_properties: {source_ip: true}}]}
  - match: {prefix: "/terminal"}
    route:
      cluster: ring_name
      hash_policy:
      - {header: {header_name: x-a}, terminal: true}
      - {header: {header_name: x-b}}
"#;

const KEYS: usize = 32;

/// The upstream each of `KEYS` keys lands on, sent as `header` (or as the query parameter
/// when `header` is `?id`).
async fn key_map(
    c: &mut HttpClient,
    path: &str,
    header: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for i in 0..KEYS {
        let key = format!("key-{i}");
        let r = match header {
            "?id" => c.get("lb.test", &format!("{path}?x=1&id={key}")).await?,
            "cookie" => {
                let v = format!("sess={key}");
                c.get_with("lb.test", path, &[("cookie", &v)]).await?
            }
            h => c.get_with("lb.test", path, &[(h, &key)]).await?,
        };
        anyhow::ensure!(r.status == 200, "{path} {key}: {}", r.status);
        out.insert(key, r.upstream().unwrap_or("?").to_owned());
    }
    Ok(out)
}

/// Keys of `after` still on the host they had in `before`, among those whose host is still
/// there.
fn kept(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    gone: &str,
) -> (usize, usize) {
    let eligible: Vec<&String> = before
        .iter()
        .filter(|(_, h)| h.as_str() != gone)
        .map(|(k, _)| k)
        .collect();
    let same = eligible
        .iter()
        .filter(|k| before[**k] == after[**k])
        .count();
    (same, eligible.len())
}

async fn hash_scenario(kind: ProxyKind, ups: Arc<Vec<Upstream>>) -> anyhow::Result<Observations> {
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr()).collect();
    let named = |n: usize| Group {
        priority: 0,
        zone: "",
        weight: None,
        eps: addrs[..n]
            .iter()
            .zip(["u0", "u1", "u2", "u3"])
            .map(|(a, h)| (*a, "HEALTHY", h))
            .collect(),
    };
    let plain = || {
        group(
            0,
            &addrs.iter().map(|a| (*a, "HEALTHY")).collect::<Vec<_>>(),
        )
    };
    let yaml = http_bootstrap(
        HASH_ROUTES,
        &[
            lb_cluster("ring_addr", "lb_policy: RING_HASH", &[plain()]),
            lb_cluster("maglev_addr", "lb_policy: MAGLEV", &[plain()]),
            lb_cluster("ring_name", "lb_policy: RING_HASH", &[named(4)]),
            lb_cluster("ring_name3", "lb_policy: RING_HASH", &[named(3)]),
            lb_cluster(
                "maglev_name",
                "lb_policy: MAGLEV, maglev_lb_config: {table_size: 1021}",
                &[named(4)],
            ),
            lb_cluster(
                "maglev_name3",
                "lb_policy: MAGLEV, maglev_lb_config: {table_size: 1021}",
                &[named(3)],
            ),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut c = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;

    info!(%kind, "header hash over address keys (ports shared by both runs)");
    for path in ["/ring-addr", "/maglev-addr"] {
        let m = key_map(&mut c, path, "x-key").await?;
        let distinct: std::collections::BTreeSet<&String> = m.values().collect();
        anyhow::ensure!(distinct.len() >= 3, "{kind}: {path} used only {distinct:?}");
        // The same key goes to the same host every time.
        for (k, h) in m.iter().take(4) {
            let again = c.get_with("lb.test", path, &[("x-key", k)]).await?;
            anyhow::ensure!(
                again.upstream() == Some(h.as_str()),
                "{kind}: {path} {k} moved"
            );
        }
        obs.record(format!("{path} keys"), &m);
    }

    info!(%kind, "header hash over envoy.lb hash_key metadata; removing u3 keeps the other keys in place");
    for (path, path3) in [
        ("/ring-name", "/ring-name3"),
        ("/maglev-name", "/maglev-name3"),
    ] {
        let before = key_map(&mut c, path, "x-key").await?;
        let after = key_map(&mut c, path3, "x-key").await?;
        anyhow::ensure!(
            after.values().all(|h| h != "u3"),
            "{kind}: {path3} used the removed host"
        );
        let (same, of) = kept(&before, &after, "u3");
        info!(%kind, path, same, of, "keys kept after removing u3");
        // Metadata keys make this deterministic; both algorithms keep most keys (the ring
        // re-spreads its points when the host count changes, so not all of them).
        anyhow::ensure!(
            same * 10 >= of * 7,
            "{kind}: {path}: only {same}/{of} keys kept"
        );
        obs.record(format!("{path} keys"), &before);
        obs.record(format!("{path3} keys"), &after);
    }

    info!(%kind, "cookie, query parameter, source IP and terminal policies");
    obs.record("/cookie keys", key_map(&mut c, "/cookie", "cookie").await?);
    obs.record("/query keys", key_map(&mut c, "/query", "?id").await?);
    let ip = c.get("lb.test", "/ip").await?;
    let ip2 = c.get("lb.test", "/ip").await?;
    anyhow::ensure!(
        ip.upstream() == ip2.upstream(),
        "{kind}: source-ip hash moved"
    );
    obs.record("/ip host", ip.upstream());
    let both = c
        .get_with("lb.test", "/terminal", &[("x-a", "one"), ("x-b", "two")])
        .await?;
    let only_a = c
        .get_with("lb.test", "/terminal", &[("x-a", "one")])
        .await?;
    anyhow::ensure!(
        both.upstream() == only_a.upstream(),
        "{kind}: a terminal policy did not end the walk"
    );
    let only_b = c
        .get_with("lb.test", "/terminal", &[("x-b", "two")])
        .await?;
    obs.record(
        "/terminal hosts",
        (
            both.upstream().map(str::to_owned),
            only_b.upstream().map(str::to_owned),
        ),
    );

    info!(%kind, "a cookie policy with ttl generates the cookie and sticks to it");
    let first = c.get("lb.test", "/cookie-ttl").await?;
    let set_cookie = first.header("set-cookie").unwrap_or("").to_owned();
    let value = set_cookie
        .strip_prefix("sticky=\"")
        .and_then(|s| s.split_once('"'))
        .map(|(v, rest)| (v.to_owned(), rest.to_owned()));
    let Some((value, attrs)) = value else {
        anyhow::bail!("{kind}: no generated cookie: {set_cookie:?}");
    };
    anyhow::ensure!(
        value.len() == 16 && value.chars().all(|c| c.is_ascii_hexdigit()),
        "{kind}: cookie value {value:?}"
    );
    obs.record("generated cookie attributes", &attrs);
    let cookie = format!("sticky={value}");
    for _ in 0..3 {
        let r = c
            .get_with("lb.test", "/cookie-ttl", &[("cookie", &cookie)])
            .await?;
        anyhow::ensure!(
            r.upstream() == first.upstream(),
            "{kind}: the generated cookie does not stick"
        );
        anyhow::ensure!(r.header("set-cookie").is_none(), "{kind}: cookie set again");
    }

    for name in [
        "cluster.ring_addr.ring_hash_lb.size",
        "cluster.ring_addr.ring_hash_lb.min_hashes_per_host",
        "cluster.ring_addr.ring_hash_lb.max_hashes_per_host",
        "cluster.maglev_addr.maglev_lb.min_entries_per_host",
        "cluster.maglev_addr.maglev_lb.max_entries_per_host",
        "cluster.maglev_name.maglev_lb.min_entries_per_host",
    ] {
        obs.record(format!("stat {name}"), proxy.admin().stat(name).await?);
    }
    anyhow::ensure!(
        proxy
            .admin()
            .stat("cluster.ring_addr.ring_hash_lb.size")
            .await?
            == Some(1024),
        "{kind}: ring size"
    );
    Ok(obs)
}

#[tokio::test]
async fn hash_policies_pick_the_hosts_envoy_picks() {
    // The upstreams outlive both runs so address-keyed tables are identical.
    let mut ups = Vec::new();
    for i in 0..4 {
        ups.push(Upstream::start(&format!("u{i}")).await.expect("upstream"));
    }
    let ups = Arc::new(ups);
    differential(|kind| hash_scenario(kind, ups.clone())).await;
}

// --- priorities, health, panic, localities ---------------------------------------------------

const HEALTH_ROUTES: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/failover"}
    route: {cluster: failover}
  - match: {prefix: "/overprovisioned"}
    route: {cluster: overprovisioned}
  - match: {prefix: "/panic"}
    route: {cluster: panic}
  - match: {prefix: "/degraded-only"}
    route: {cluster: degraded_only}
  - match: {prefix: "/degraded"}
    route: {cluster: degraded}
  - match: {prefix: "/draining"}
    route: {cluster: draining}
  - match: {prefix: "/locality"}
    route: {cluster: locality}
"#;

async fn health_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let mut u = BTreeMap::new();
    for n in ["a", "b", "c", "d"] {
        u.insert(n, Upstream::start(n).await?);
    }
    let a = |n: &str| u[n].addr();
    let closed = ClosedPort::new()?;
    let yaml = http_bootstrap(
        HEALTH_ROUTES,
        &[
            // P0 all unhealthy → P1.
            lb_cluster(
                "failover",
                "",
                &[
                    group(0, &[(closed.addr(), "UNHEALTHY"), (a("a"), "UNHEALTHY")]),
                    group(1, &[(a("b"), "HEALTHY")]),
                ],
            ),
            // P0 half healthy → 70% there (1.4 overprovisioning), 30% to P1.
            lb_cluster(
                "overprovisioned",
                "",
                &[
                    group(0, &[(a("a"), "HEALTHY"), (closed.addr(), "UNHEALTHY")]),
                    group(1, &[(a("b"), "HEALTHY")]),
                ],
            ),
            // 1 of 4 healthy is below the 50% panic threshold: all four take traffic.
            lb_cluster(
                "panic",
                "",
                &[group(
                    0,
                    &[
                        (a("a"), "HEALTHY"),
                        (a("b"), "UNHEALTHY"),
                        (a("c"), "TIMEOUT"),
                        (a("d"), "UNHEALTHY"),
                    ],
                )],
            ),
            // 2 healthy + 1 degraded: 93% / 7%.
            lb_cluster(
                "degraded",
                "",
                &[group(
                    0,
                    &[
                        (a("a"), "HEALTHY"),
                        (a("b"), "HEALTHY"),
                        (a("c"), "DEGRADED"),
                    ],
                )],
            ),
            lb_cluster(
                "degraded_only",
                "",
                &[group(0, &[(a("c"), "DEGRADED"), (a("d"), "DEGRADED")])],
            ),
            // A draining host is excluded and does not count against availability.
            lb_cluster(
                "draining",
                "",
                &[group(0, &[(a("a"), "HEALTHY"), (a("b"), "DRAINING")])],
            ),
            lb_cluster(
                "locality",
                "common_lb_config: {locality_weighted_lb_config: {}}",
                &[
                    Group {
                        priority: 0,
                        zone: "z1",
                        weight: Some(1),
                        eps: vec![(a("a"), "HEALTHY", "")],
                    },
                    Group {
                        priority: 0,
                        zone: "z2",
                        weight: Some(4),
                        eps: vec![(a("b"), "HEALTHY", ""), (a("c"), "HEALTHY", "")],
                    },
                ],
            ),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut c = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;

    let s = spread(&mut c, "/failover", 20).await?;
    anyhow::ensure!(
        s == BTreeMap::from([("b".to_owned(), 20)]),
        "{kind}: failover {s:?}"
    );
    obs.record("failover", &s);

    // Binomial(600, 0.7): mean 420, σ ≈ 11.2; ±70 is over 6σ.
    let s = spread(&mut c, "/overprovisioned", 600).await?;
    let on_p0 = *s.get("a").unwrap_or(&0) as i64;
    info!(%kind, ?s, "overprovisioning split");
    anyhow::ensure!(
        (on_p0 - 420).abs() <= 70 && s.get("a").unwrap_or(&0) + s.get("b").unwrap_or(&0) == 600,
        "{kind}: overprovisioned split {s:?}"
    );
    obs.record("overprovisioned split within 6σ of 70/30", true);

    // Round robin over all four hosts in panic.
    let s = spread(&mut c, "/panic", 40).await?;
    anyhow::ensure!(
        s.values().all(|n| *n == 10) && s.len() == 4,
        "{kind}: panic spread {s:?}"
    );
    obs.record("panic spread", &s);
    obs.stat_eq(
        &proxy,
        "cluster.panic.lb_healthy_panic",
        "cluster.panic.lb_healthy_panic",
        40,
    )
    .await?;

    // Binomial(600, 0.07): mean 42, σ ≈ 6.2; ±38 is over 6σ.
    let s = spread(&mut c, "/degraded", 600).await?;
    let on_degraded = *s.get("c").unwrap_or(&0) as i64;
    info!(%kind, ?s, "degraded split");
    anyhow::ensure!(
        (on_degraded - 42).abs() <= 38,
        "{kind}: degraded split {s:?}"
    );
    obs.record("degraded split within 6σ of 93/7", true);
    let s = spread(&mut c, "/degraded-only", 10).await?;
    anyhow::ensure!(
        s == BTreeMap::from([("c".to_owned(), 5), ("d".to_owned(), 5)]),
        "{kind}: degraded-only {s:?}"
    );
    obs.record("degraded-only", &s);

    let s = spread(&mut c, "/draining", 10).await?;
    anyhow::ensure!(
        s == BTreeMap::from([("a".to_owned(), 10)]),
        "{kind}: draining {s:?}"
    );
    obs.record("draining", &s);

    // Localities 1:4 (EDF over effective weights; Envoy's floating-point schedule may break
    // a tie either way, so allow one pick of slack), round robin within z2.
    let s = spread(&mut c, "/locality", 50).await?;
    info!(%kind, ?s, "locality split");
    let (na, nb, nc) = (
        *s.get("a").unwrap_or(&0) as i64,
        *s.get("b").unwrap_or(&0) as i64,
        *s.get("c").unwrap_or(&0) as i64,
    );
    anyhow::ensure!(
        (na - 10).abs() <= 1 && (nb - nc).abs() <= 1 && na + nb + nc == 50,
        "{kind}: locality split {s:?}"
    );
    obs.record("locality split 1:4", true);

    for (cluster, gauges) in [
        ("failover", [3, 1, 0, 0]),
        ("panic", [4, 1, 0, 0]),
        ("degraded", [3, 2, 1, 0]),
        ("draining", [2, 1, 0, 1]),
    ] {
        for (g, v) in [
            "membership_total",
            "membership_healthy",
            "membership_degraded",
            "membership_excluded",
        ]
        .iter()
        .zip(gauges)
        {
            let name = format!("cluster.{cluster}.{g}");
            obs.stat_eq(&proxy, &name, &name, v).await?;
        }
    }
    let text = proxy.admin().get("/clusters").await?.text();
    for (cluster, host, flags) in [
        ("failover", a("a"), "/failed_eds_health"),
        ("degraded", a("c"), "/degraded_eds_health"),
        ("draining", a("b"), "/eds_status_draining"),
        ("draining", a("a"), "healthy"),
    ] {
        let line = format!("{cluster}::{host}::health_flags::{flags}");
        anyhow::ensure!(
            text.lines().any(|l| l == line),
            "{kind}: /clusters lacks {line}"
        );
    }
    let p1 = format!("failover::{}::priority::1", a("b"));
    let zone = format!("locality::{}::zone::z2", a("b"));
    anyhow::ensure!(
        text.lines().any(|l| l == p1) && text.lines().any(|l| l == zone),
        "{kind}: /clusters priority or zone missing:\n{text}"
    );
    obs.record("/clusters health flags, priority and zone", true);
    Ok(obs)
}

#[tokio::test]
async fn priorities_health_panic_and_localities_match_envoy() {
    differential(health_scenario).await;
}

// --- least request -----------------------------------------------------------------------------

/// An HTTP/1.1 server that reads requests and answers none until released.
struct HoldServer {
    addr: SocketAddr,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldServer {
    async fn start() -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let (req2, rel2) = (requests.clone(), release.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (requests, release) = (req2.clone(), rel2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 2048];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    release.notified().await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nx-upstream-name: hold\r\ncontent-length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        Ok(HoldServer {
            addr,
            requests,
            release,
            task,
        })
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HoldServer {
    fn drop(&mut self) {
        self.release.notify_waiters();
        self.task.abort();
    }
}

const LR_ROUTES: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/p2c"}
    route: {cluster: p2c}
  - match: {prefix: "/scan"}
    route: {cluster: scan}
"#;

async fn least_request_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let hold = HoldServer::start().await?;
    let idle = Upstream::start("idle").await?;
    let hosts = [(hold.addr, "HEALTHY"), (idle.addr(), "HEALTHY")];
    let yaml = http_bootstrap(
        LR_ROUTES,
        &[
            // 50 samples of 2 hosts: the busy host wins only if all 50 hit it (2^-50).
            lb_cluster(
                "p2c",
                "lb_policy: LEAST_REQUEST, least_request_lb_config: {choice_count: 50}",
                &[group(0, &hosts)],
            ),
            lb_cluster(
                "scan",
                "load_balancing_policy: {policies: [{typed_extension_config: {name: lr, typed_config: \
                 {'@type': type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest, \
                 selection_method: FULL_SCAN}}}]}",
                &[group(0, &hosts)],
            ),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let addr = proxy.addr("http");
    for path in ["/p2c", "/scan"] {
        info!(%kind, path, "park one request on the hold server");
        let held_before = hold.requests();
        let mut parked = Vec::new();
        // Both hosts are idle at first, so a request may go to either; repeat until one is
        // held (requests to the echo host just complete).
        poll(&format!("{path}: a request held"), DEADLINE, || {
            let path = path.to_owned();
            let held = hold.requests() > held_before;
            if !held {
                parked.push(tokio::spawn(async move {
                    let mut c = HttpClient::connect(addr, Proto::Http1).await.ok()?;
                    c.get("lb.test", &path).await.ok()
                }));
            }
            async move { held.then_some(()) }
        })
        .await?;
        let mut c = HttpClient::connect(addr, Proto::Http1).await?;
        let s = spread(&mut c, path, 10).await?;
        anyhow::ensure!(
            s == BTreeMap::from([("idle".to_owned(), 10)]),
            "{kind}: {path} with a busy host: {s:?}"
        );
        obs.record(format!("{path} while one host is busy"), &s);
        hold.release.notify_waiters();
        for p in parked {
            let _ = tokio::time::timeout(Duration::from_secs(30), p).await;
        }
    }
    Ok(obs)
}

#[tokio::test]
async fn least_request_prefers_the_idle_host() {
    differential(least_request_scenario).await;
}

// --- EDS health and priority updates ------------------------------------------------------------

mod eds {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::google::protobuf::Any;
    use petrel_e2e::xds::{bootstrap, decode, eds_cluster, listener, routes, tcp_address};
    use xds_client::ads::test_util::{any, TestControlPlane};
    use xds_client::ads::type_url;

    /// `a`'s endpoints: (address, priority, health_status).
    fn endpoints(eps: &[(SocketAddr, u32, &str)]) -> Any {
        let groups: Vec<String> = eps
            .iter()
            .map(|(a, p, h)| {
                format!(
                    "- priority: {p}\n  lb_endpoints:\n  - endpoint: {{ address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }} }}\n    health_status: {h}\n",
                    a.ip(),
                    a.port()
                )
            })
            .collect();
        any(&decode::<ClusterLoadAssignment>(
            &format!("cluster_name: a\nendpoints:\n{}", groups.concat()),
            "envoy.config.endpoint.v3.ClusterLoadAssignment",
        ))
    }

    async fn eds_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
        let p0 = Upstream::start("p0").await?;
        let p1 = Upstream::start("p1").await?;
        let cp = TestControlPlane::tcp().await?;
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        cp.set_resources(type_url::CLUSTER, "c1", vec![eds_cluster("a")]);
        cp.set_resources(
            type_url::ENDPOINT,
            "e1",
            vec![endpoints(&[
                (p0.addr(), 0, "HEALTHY"),
                (p1.addr(), 1, "HEALTHY"),
            ])],
        );
        cp.set_resources(type_url::LISTENER, "l1", vec![listener(port)]);
        cp.set_resources(type_url::ROUTE, "r1", vec![routes("a")]);
        let proxy = Proxy::start(
            kind,
            &bootstrap("GRPC", &tcp_address(cp.local_addr().expect("tcp"))),
            &[],
        )
        .await?;
        let mut obs = Observations::new(kind);
        let who = |addr| async move {
            let mut c = HttpClient::connect(addr, Proto::Http1).await.ok()?;
            let r = c.get("xds.test", "/").await.ok()?;
            Some(if r.status == 200 {
                r.upstream().unwrap_or("?").to_owned()
            } else {
                format!("status {}", r.status.as_u16())
            })
        };
        let settle = |want: &'static str| {
            let who = &who;
            async move {
                wait_until(&format!("traffic to {want}"), DEADLINE, || async move {
                    who(addr).await.as_deref() == Some(want)
                })
                .await
            }
        };
        settle("p0").await?;
        let mut c = HttpClient::connect(addr, Proto::Http1).await?;
        obs.record("healthy P0", spread_xds(&mut c, 10).await?);

        info!(%kind, "EDS marks P0 unhealthy: the next requests fail over to P1");
        cp.set_resources(
            type_url::ENDPOINT,
            "e2",
            vec![endpoints(&[
                (p0.addr(), 0, "UNHEALTHY"),
                (p1.addr(), 1, "HEALTHY"),
            ])],
        );
        settle("p1").await?;
        obs.record("unhealthy P0", spread_xds(&mut c, 10).await?);
        obs.stat_eq(
            &proxy,
            "cluster.a.membership_healthy",
            "cluster.a.membership_healthy",
            1,
        )
        .await?;

        info!(%kind, "EDS moves p1 to P0 and p0 to P1 (healthy): P0 serves");
        cp.set_resources(
            type_url::ENDPOINT,
            "e3",
            vec![endpoints(&[
                (p1.addr(), 0, "HEALTHY"),
                (p0.addr(), 1, "HEALTHY"),
            ])],
        );
        wait_until("p0 promoted out of P0", DEADLINE, || async {
            let t = proxy
                .admin()
                .get("/clusters")
                .await
                .map(|r| r.text())
                .unwrap_or_default();
            t.lines()
                .any(|l| l == format!("a::{}::priority::1", p0.addr()))
        })
        .await?;
        let s = spread_xds(&mut c, 10).await?;
        anyhow::ensure!(
            s == BTreeMap::from([("p1".to_owned(), 10)]),
            "{kind}: swapped {s:?}"
        );
        obs.record("swapped priorities", s);

        info!(%kind, "every host degraded: degraded hosts serve");
        cp.set_resources(
            type_url::ENDPOINT,
            "e4",
            vec![endpoints(&[
                (p1.addr(), 0, "DEGRADED"),
                (p0.addr(), 0, "DEGRADED"),
            ])],
        );
        obs.stat_eq(
            &proxy,
            "cluster.a.membership_degraded",
            "cluster.a.membership_degraded",
            2,
        )
        .await?;
        let s = spread_xds(&mut c, 10).await?;
        anyhow::ensure!(
            s == BTreeMap::from([("p0".to_owned(), 5), ("p1".to_owned(), 5)]),
            "{kind}: degraded {s:?}"
        );
        obs.record("all degraded", s);
        Ok(obs)
    }

    async fn spread_xds(c: &mut HttpClient, n: usize) -> anyhow::Result<BTreeMap<String, usize>> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let r = c.get("xds.test", "/").await?;
            *counts
                .entry(r.upstream().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
        Ok(counts)
    }

    #[tokio::test]
    async fn eds_health_and_priority_changes_apply_to_the_next_request() {
        differential(eds_scenario).await;
    }
}
