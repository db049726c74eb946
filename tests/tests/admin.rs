//! Differential: admin endpoints — `/ready`, `/server_info`, `/stats` (text, `?filter=`,
//! `?usedonly`, `?format=json`), `/stats/prometheus`, `/config_dump`, `/clusters`, `/listeners`,
//! `POST /healthcheck/fail|ok`, `POST /quitquitquit`.

use std::time::Duration;

use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::yaml::{cluster, http_bootstrap};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use serde_json::Value;
use tracing::info;

const ONE_ROUTE: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes: [{match: {prefix: "/"}, route: {cluster: up}}]
"#;

/// Replaces the run-specific ports in admin text with placeholders.
fn normalize(text: &str, ports: &[(u16, &str)]) -> String {
    ports.iter().fold(text.to_owned(), |t, (p, name)| {
        t.replace(&format!(":{p}"), &format!(":<{name}>"))
            .replace(&format!("_{p}"), &format!("_<{name}>"))
    })
}

async fn admin_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let yaml = http_bootstrap(ONE_ROUTE, &[cluster("up", &[up.addr()])]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let admin = proxy.admin();
    let mut obs = Observations::new(kind);
    let ports = [(up.port(), "up"), (proxy.port("http"), "http")];

    let r = HttpClient::connect(proxy.addr("http"), Proto::Http1)
        .await?
        .get("a.test", "/")
        .await?;
    anyhow::ensure!(r.status == 200, "{kind}: proxied {}", r.status);
    admin
        .wait_for_stat_eq("cluster.up.upstream_rq_total", 1)
        .await?;

    info!("/ready");
    let r = admin.get("/ready").await?;
    anyhow::ensure!(
        r.status == 200 && r.text() == "LIVE\n",
        "{kind}: /ready {} {:?}",
        r.status,
        r.text()
    );
    obs.record(
        "/ready",
        (
            r.status.as_u16(),
            r.text(),
            r.header("content-type").map(str::to_owned),
        ),
    );

    info!("/server_info");
    let r = admin.get("/server_info").await?;
    anyhow::ensure!(r.status == 200, "{kind}: /server_info {}", r.status);
    let info: Value = serde_json::from_slice(&r.body)?;
    anyhow::ensure!(
        info["state"] == "LIVE",
        "{kind}: server_info state {}",
        info["state"]
    );
    anyhow::ensure!(
        info["command_line_options"]["concurrency"] == 1,
        "{kind}: concurrency {}",
        info["command_line_options"]["concurrency"]
    );
    let mut keys: Vec<&String> = info
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    keys.sort();
    obs.record("/server_info keys", keys);
    obs.record("/server_info state", info["state"].clone());
    obs.record(
        "/server_info concurrency",
        info["command_line_options"]["concurrency"].clone(),
    );
    obs.record(
        "/server_info content-type",
        r.header("content-type").map(str::to_owned),
    );

    info!("/stats text, filter, usedonly");
    let stats = admin.stats().await?;
    for (name, want) in [
        ("cluster.up.upstream_rq_total", 1),
        ("server.state", 0),
        ("listener_manager.workers_started", 1),
        ("http.ingress.downstream_rq_total", 1),
    ] {
        anyhow::ensure!(
            stats.value(name) == Some(want),
            "{kind}: {name} = {:?}",
            stats.value(name)
        );
        obs.record(format!("/stats {name}"), stats.value(name));
    }
    let r = admin.get("/stats?filter=upstream_rq_total").await?;
    let lines: Vec<&str> = r
        .body
        .split(|b| *b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok())
        .filter(|l| !l.is_empty())
        .collect();
    anyhow::ensure!(
        lines.iter().all(|l| l.contains("upstream_rq_total")),
        "{kind}: filter leaked {lines:?}"
    );
    anyhow::ensure!(
        lines.contains(&"cluster.up.upstream_rq_total: 1"),
        "{kind}: filter lines {lines:?}"
    );
    obs.record("/stats?filter=upstream_rq_total has cluster.up", true);
    let used = admin.get("/stats?usedonly").await?.text();
    anyhow::ensure!(
        used.contains("cluster.up.upstream_rq_total: 1"),
        "{kind}: usedonly lacks rq_total"
    );
    anyhow::ensure!(
        !used.contains("cluster.up.upstream_rq_timeout:"),
        "{kind}: usedonly shows unused stats"
    );
    obs.record("/stats?usedonly", "used only");

    info!("/stats?format=json");
    let r = admin.get("/stats?format=json").await?;
    anyhow::ensure!(r.status == 200, "{kind}: json stats {}", r.status);
    let json: Value = serde_json::from_slice(&r.body)?;
    let rq_total = json["stats"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s["name"] == "cluster.up.upstream_rq_total")
        })
        .map(|s| s["value"].clone());
    anyhow::ensure!(
        rq_total == Some(Value::from(1)),
        "{kind}: json rq_total {rq_total:?}"
    );
    obs.record("/stats?format=json cluster.up.upstream_rq_total", rq_total);
    obs.record(
        "/stats?format=json content-type",
        r.header("content-type").map(str::to_owned),
    );

    info!("/stats/prometheus");
    let r = admin.get("/stats/prometheus").await?;
    let prom = r.text();
    for line in [
        "# TYPE envoy_cluster_upstream_rq_total counter",
        "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"up\"} 1",
        "envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress\"} 1",
        // Envoy prints empty braces for label-less metrics.
        "envoy_server_state{} 0",
    ] {
        anyhow::ensure!(
            prom.lines().any(|l| l == line),
            "{kind}: prometheus lacks {line:?}"
        );
        obs.record(format!("/stats/prometheus has {line}"), true);
    }
    let listener_line = prom
        .lines()
        .find(|l| l.starts_with("envoy_listener_downstream_cx_total{"))
        .map(|l| normalize(l, &ports));
    anyhow::ensure!(
        listener_line.as_deref()
            == Some(
                "envoy_listener_downstream_cx_total{envoy_listener_address=\"127.0.0.1_<http>\"} 1"
            ),
        "{kind}: listener line {listener_line:?}"
    );
    obs.record("/stats/prometheus listener line", listener_line);

    info!("/config_dump");
    let r = admin.get("/config_dump").await?;
    let dump: Value = serde_json::from_slice(&r.body)?;
    let types: Vec<String> = dump["configs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["@type"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default();
    for t in [
        "BootstrapConfigDump",
        "ClustersConfigDump",
        "ListenersConfigDump",
        "RoutesConfigDump",
    ] {
        anyhow::ensure!(
            types.contains(&format!("type.googleapis.com/envoy.admin.v3.{t}")),
            "{kind}: config_dump types {types:?}"
        );
    }
    let clusters = dump["configs"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
        })
        .map(|c| {
            c["static_clusters"].as_array().map(|s| {
                s.iter()
                    .map(|c| c["cluster"]["name"].clone())
                    .collect::<Vec<_>>()
            })
        })
        .unwrap_or_default();
    anyhow::ensure!(
        clusters == Some(vec![Value::from("up")]),
        "{kind}: static clusters {clusters:?}"
    );
    obs.record("/config_dump types", types);
    obs.record("/config_dump static clusters", clusters);

    info!("/clusters and /listeners");
    let text = normalize(&admin.get("/clusters").await?.text(), &ports);
    for line in [
        "up::127.0.0.1:<up>::health_flags::healthy",
        "up::127.0.0.1:<up>::rq_total::1",
        "up::127.0.0.1:<up>::cx_total::1",
    ] {
        anyhow::ensure!(
            text.lines().any(|l| l == line),
            "{kind}: /clusters lacks {line:?}:\n{text}"
        );
        obs.record(format!("/clusters has {line}"), true);
    }
    let text = normalize(&admin.get("/listeners").await?.text(), &ports);
    anyhow::ensure!(
        text.trim() == "http::127.0.0.1:<http>",
        "{kind}: /listeners {text:?}"
    );
    obs.record("/listeners", text);
    let listeners: Value =
        serde_json::from_slice(&admin.get("/listeners?format=json").await?.body)?;
    obs.record(
        "/listeners?format=json names",
        listeners["listener_statuses"]
            .as_array()
            .map(|a| a.iter().map(|l| l["name"].clone()).collect::<Vec<_>>()),
    );

    info!("unknown path and wrong method");
    let r = admin.get("/no-such-endpoint").await?;
    anyhow::ensure!(r.status == 404, "{kind}: unknown admin path {}", r.status);
    obs.record("unknown path status", r.status.as_u16());
    let r = admin.get("/healthcheck/fail").await?;
    anyhow::ensure!(
        r.status == 405,
        "{kind}: GET /healthcheck/fail {}",
        r.status
    );
    obs.record("GET /healthcheck/fail status", r.status.as_u16());
    anyhow::ensure!(
        admin.ready().await? == 200,
        "{kind}: GET must not fail health checks"
    );

    info!("POST /healthcheck/fail → DRAINING, /healthcheck/ok → LIVE");
    let r = admin.post("/healthcheck/fail").await?;
    anyhow::ensure!(
        r.status == 200,
        "{kind}: POST /healthcheck/fail {}",
        r.status
    );
    let r = admin.get("/ready").await?;
    anyhow::ensure!(
        r.status == 503 && r.text() == "DRAINING\n",
        "{kind}: /ready after fail {} {:?}",
        r.status,
        r.text()
    );
    obs.record(
        "/ready after healthcheck/fail",
        (r.status.as_u16(), r.text()),
    );
    let info: Value = serde_json::from_slice(&admin.get("/server_info").await?.body)?;
    obs.record("/server_info state after fail", info["state"].clone());
    obs.stat_eq(&proxy, "server.state", "server.state", 1)
        .await?;
    // Traffic still flows while health checks fail.
    let r = HttpClient::connect(proxy.addr("http"), Proto::Http1)
        .await?
        .get("a.test", "/")
        .await?;
    anyhow::ensure!(
        r.status == 200,
        "{kind}: proxied while failing {}",
        r.status
    );
    admin.post("/healthcheck/ok").await?;
    anyhow::ensure!(admin.ready().await? == 200, "{kind}: /ready after ok");
    obs.stat_eq(&proxy, "server.state after ok", "server.state", 0)
        .await?;
    Ok(obs)
}

async fn admin_mutations_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let yaml = http_bootstrap(ONE_ROUTE, &[cluster("up", &[up.addr()])]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let admin = proxy.admin();
    let mut obs = Observations::new(kind);
    let mut c = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;
    for _ in 0..3 {
        anyhow::ensure!(c.get("a.test", "/").await?.status == 200, "{kind}: proxied");
    }
    admin
        .wait_for_stat_eq("cluster.up.upstream_rq_total", 3)
        .await?;

    info!("/stats?filter= takes a regex");
    let r = admin
        .get("/stats?filter=%5Ecluster%5C.up%5C.upstream_rq_(total|2xx)%24")
        .await?;
    let mut lines: Vec<String> = r.text().lines().map(str::to_owned).collect();
    lines.sort();
    anyhow::ensure!(
        lines
            == [
                "cluster.up.upstream_rq_2xx: 3",
                "cluster.up.upstream_rq_total: 3"
            ],
        "{kind}: regex filter gave {lines:?}"
    );
    obs.record("/stats?filter=regex", &lines);

    info!("POST /reset_counters zeroes counters, not gauges");
    let r = admin.post("/reset_counters").await?;
    anyhow::ensure!(r.status == 200, "{kind}: reset_counters {}", r.status);
    obs.record("/reset_counters", (r.status.as_u16(), r.text()));
    obs.stat_eq(
        &proxy,
        "cluster.up.upstream_rq_total after reset",
        "cluster.up.upstream_rq_total",
        0,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_rq_total after reset",
        "http.ingress.downstream_rq_total",
        0,
    )
    .await?;
    // The downstream connection is still open: a gauge keeps its value.
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_cx_active after reset",
        "http.ingress.downstream_cx_active",
        1,
    )
    .await?;
    anyhow::ensure!(
        c.get("a.test", "/").await?.status == 200,
        "{kind}: proxied after reset"
    );
    obs.stat_eq(
        &proxy,
        "cluster.up.upstream_rq_total after one more",
        "cluster.up.upstream_rq_total",
        1,
    )
    .await?;

    info!("POST /logging changes levels");
    let r = admin.post("/logging?level=debug").await?;
    anyhow::ensure!(r.status == 200, "{kind}: /logging {}", r.status);
    obs.record("/logging?level=debug status", r.status.as_u16());
    let r = admin.post("/logging?level=info").await?;
    obs.record("/logging?level=info status", r.status.as_u16());

    info!("POST /drain_listeners (not graceful) closes the listener at once");
    drop(c);
    let r = admin.post("/drain_listeners").await?;
    anyhow::ensure!(r.status == 200, "{kind}: drain_listeners {}", r.status);
    let addr = proxy.addr("http");
    petrel_e2e::assert_eventually!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "{kind}: listener still open after /drain_listeners"
    );
    obs.record("after /drain_listeners", "listener closed");
    anyhow::ensure!(admin.ready().await.is_ok(), "{kind}: admin must stay up");
    Ok(obs)
}

#[tokio::test]
async fn admin_mutating_endpoints_match_envoy() {
    differential(admin_mutations_scenario).await;
}

#[tokio::test]
async fn admin_endpoints_match_envoy() {
    differential(admin_scenario).await;
}

async fn quit_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let yaml = http_bootstrap(ONE_ROUTE, &[cluster("up", &[up.addr()])]);
    let mut proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let r = proxy.admin().post("/quitquitquit").await?;
    anyhow::ensure!(r.status == 200, "{kind}: /quitquitquit {}", r.status);
    obs.record("/quitquitquit", (r.status.as_u16(), r.text()));
    let status = proxy.wait_exit(Duration::from_secs(60)).await?;
    anyhow::ensure!(status.success(), "{kind}: exited with {status}");
    obs.record("exit", status.code());
    Ok(obs)
}

#[tokio::test]
async fn quitquitquit_exits_zero() {
    differential(quit_scenario).await;
}
