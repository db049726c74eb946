//! Differential: the stats the forwarding core promises, read from both admins after the same
//! request sequence over two downstream connections (HTTP/1.1 and h2c).

use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::ports::ClosedPort;
use petrel_e2e::yaml::{cluster, http_bootstrap};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;

const ROUTES: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/closed"}
    route: {cluster: closed}
  - match: {prefix: "/a"}
    route: {cluster: a}
"#;

async fn stats_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let a = Upstream::start("a").await?;
    let closed = ClosedPort::new()?;
    let yaml = http_bootstrap(
        ROUTES,
        &[
            cluster("a", &[a.addr()]),
            cluster("closed", &[closed.addr()]),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let listener = proxy.listener_stat_prefix("http");

    info!("before any traffic");
    obs.stat_eq(
        &proxy,
        "cluster.a.upstream_rq_total (idle)",
        "cluster.a.upstream_rq_total",
        0,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "cluster.a.upstream_cx_total (idle)",
        "cluster.a.upstream_cx_total",
        0,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_cx_total (idle)",
        "http.ingress.downstream_cx_total",
        0,
    )
    .await?;
    obs.stat_eq(&proxy, "server.state", "server.state", 0)
        .await?;
    obs.stat_eq(
        &proxy,
        "listener_manager.workers_started",
        "listener_manager.workers_started",
        1,
    )
    .await?;

    let mut h1 = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;
    let mut h2 = HttpClient::connect(proxy.addr("http"), Proto::H2c).await?;
    let mut statuses = Vec::new();
    statuses.push(h1.get("s.test", "/a/ok").await?.status.as_u16());
    statuses.push(
        h1.get_with("s.test", "/a/503", &[("x-echo-status", "503")])
            .await?
            .status
            .as_u16(),
    );
    statuses.push(
        h1.get_with("s.test", "/a/201", &[("x-echo-status", "201")])
            .await?
            .status
            .as_u16(),
    );
    statuses.push(h1.get("s.test", "/nowhere").await?.status.as_u16());
    statuses.push(h1.get("s.test", "/closed").await?.status.as_u16());
    statuses.push(h2.get("s.test", "/a/h2").await?.status.as_u16());
    statuses.push(
        h2.get_with("s.test", "/a/h2-404", &[("x-echo-status", "404")])
            .await?
            .status
            .as_u16(),
    );
    anyhow::ensure!(
        statuses == [200, 503, 201, 404, 503, 200, 404],
        "{kind}: statuses {statuses:?}"
    );
    obs.record("statuses", &statuses);

    info!("while both downstream connections are open");
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_cx_active (open)",
        "http.ingress.downstream_cx_active",
        2,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "listener.<http>.downstream_cx_active (open)",
        &format!("{listener}.downstream_cx_active"),
        2,
    )
    .await?;
    // Sequential requests: the pool keeps exactly one upstream connection open to `a`.
    obs.stat_eq(
        &proxy,
        "cluster.a.upstream_cx_active",
        "cluster.a.upstream_cx_active",
        1,
    )
    .await?;

    let expected: &[(&str, u64)] = &[
        ("cluster.a.upstream_rq_total", 5),
        ("cluster.a.upstream_rq_completed", 5),
        ("cluster.a.upstream_rq_2xx", 3),
        ("cluster.a.upstream_rq_200", 2),
        ("cluster.a.upstream_rq_201", 1),
        ("cluster.a.upstream_rq_4xx", 1),
        ("cluster.a.upstream_rq_404", 1),
        ("cluster.a.upstream_rq_5xx", 1),
        ("cluster.a.upstream_rq_503", 1),
        ("cluster.a.upstream_cx_total", 1),
        ("cluster.a.upstream_cx_http1_total", 1),
        ("cluster.a.upstream_cx_connect_fail", 0),
        // A request that never got a connection is not in upstream_rq_total (Envoy counts it
        // when a stream is created on a connection), but is completed and 503.
        ("cluster.closed.upstream_rq_total", 0),
        ("cluster.closed.upstream_rq_completed", 1),
        ("cluster.closed.upstream_cx_total", 1),
        ("cluster.closed.upstream_cx_connect_fail", 1),
        ("cluster.closed.upstream_cx_active", 0),
        ("cluster.closed.upstream_rq_503", 1),
        ("cluster.closed.upstream_rq_5xx", 1),
        ("http.ingress.downstream_rq_total", 7),
        ("http.ingress.downstream_rq_2xx", 3),
        ("http.ingress.downstream_rq_4xx", 2),
        ("http.ingress.downstream_rq_5xx", 2),
        ("http.ingress.downstream_rq_http1_total", 5),
        ("http.ingress.downstream_rq_http2_total", 2),
        ("http.ingress.downstream_cx_total", 2),
        ("http.ingress.downstream_cx_http1_total", 1),
        ("http.ingress.downstream_cx_http2_total", 1),
    ];
    for (name, want) in expected {
        obs.stat_eq(&proxy, name, name, *want).await?;
    }
    obs.stat_eq(
        &proxy,
        "listener.<http>.downstream_cx_total",
        &format!("{listener}.downstream_cx_total"),
        2,
    )
    .await?;

    info!("the JSON format carries the same values");
    let json: serde_json::Value =
        serde_json::from_slice(&proxy.admin().get("/stats?format=json").await?.body)?;
    let by_name = |n: &str| {
        json["stats"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == n))
            .and_then(|s| s["value"].as_u64())
    };
    for (name, want) in expected {
        anyhow::ensure!(
            by_name(name) == Some(*want),
            "{kind}: json {name} = {:?}",
            by_name(name)
        );
    }

    info!("after both downstream connections close");
    drop(h1);
    drop(h2);
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_cx_active (closed)",
        "http.ingress.downstream_cx_active",
        0,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "listener.<http>.downstream_cx_active (closed)",
        &format!("{listener}.downstream_cx_active"),
        0,
    )
    .await?;
    anyhow::ensure!(
        a.connections() == 1,
        "{kind}: upstream saw {} connections",
        a.connections()
    );
    Ok(obs)
}

#[tokio::test]
async fn core_stats_agree_after_same_traffic() {
    differential(stats_scenario).await;
}
