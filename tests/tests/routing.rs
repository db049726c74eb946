//! Differential: route selection. The same route table through Envoy and Petrel must pick the
//! same upstream (or synthetic response) for every deterministic request.

use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::yaml::{cluster, http_bootstrap};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;

/// One request and what it must produce.
struct Case {
    /// Host header / :authority.
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    /// The upstream instance that must answer, or `None` for a synthetic response.
    upstream: Option<&'static str>,
}

const ROUTES: &str = r#"
virtual_hosts:
- name: exact
  domains: ["exact.test"]
  routes: [{match: {prefix: "/"}, route: {cluster: a}}]
- name: suffix
  domains: ["*.suffix.test"]
  routes: [{match: {prefix: "/"}, route: {cluster: b}}]
- name: longer-suffix
  domains: ["*.deep.suffix.test"]
  routes: [{match: {prefix: "/"}, route: {cluster: c}}]
- name: prefix-wildcard
  domains: ["prefix.*"]
  routes: [{match: {prefix: "/"}, route: {cluster: c}}]
- name: with-port
  domains: ["port.test:8080"]
  routes: [{match: {prefix: "/"}, route: {cluster: b}}]
- name: matches
  domains: ["match.test"]
  routes:
  - match: {path: "/exact"}
    route: {cluster: a}
  - match: {safe_regex: {regex: "/re/[0-9]+"}}
    route: {cluster: b}
  - match:
      prefix: "/hdr"
      headers: [{name: x-pick, string_match: {exact: c}}]
    route: {cluster: c}
  - match:
      prefix: "/hdr"
      headers: [{name: x-present, present_match: true}]
    route: {cluster: b}
  - match:
      prefix: "/query"
      query_parameters: [{name: pick, string_match: {exact: b}}]
    route: {cluster: b}
  - match: {prefix: "/prefix/"}
    route: {cluster: a}
  - match: {prefix: "/fallthrough"}
    route: {cluster: c}
- name: catch-all
  domains: ["*"]
  routes:
  - match: {prefix: "/only-in-catch-all"}
    route: {cluster: a}
"#;

#[rustfmt::skip]
const CASES: &[Case] = &[
    // Domains: exact, case-insensitive exact, suffix, longest suffix, prefix, host:port, *.
    Case { host: "exact.test", path: "/", headers: &[], status: 200, upstream: Some("a") },
    Case { host: "EXACT.Test", path: "/", headers: &[], status: 200, upstream: Some("a") },
    Case { host: "x.suffix.test", path: "/", headers: &[], status: 200, upstream: Some("b") },
    Case { host: "x.deep.suffix.test", path: "/", headers: &[], status: 200, upstream: Some("c") },
    Case { host: "prefix.anything", path: "/", headers: &[], status: 200, upstream: Some("c") },
    Case { host: "port.test:8080", path: "/", headers: &[], status: 200, upstream: Some("b") },
    // No port stripping by default: `port.test` alone falls to `*`, which has no `/` route.
    Case { host: "port.test", path: "/", headers: &[], status: 404, upstream: None },
    Case { host: "unknown.test", path: "/only-in-catch-all", headers: &[], status: 200, upstream: Some("a") },
    // Path matchers.
    Case { host: "match.test", path: "/exact", headers: &[], status: 200, upstream: Some("a") },
    Case { host: "match.test", path: "/exact?q=1", headers: &[], status: 200, upstream: Some("a") },
    Case { host: "match.test", path: "/exact/more", headers: &[], status: 404, upstream: None },
    Case { host: "match.test", path: "/re/123", headers: &[], status: 200, upstream: Some("b") },
    // safe_regex must match the whole path.
    Case { host: "match.test", path: "/re/123x", headers: &[], status: 404, upstream: None },
    Case { host: "match.test", path: "/prefix/deeper", headers: &[], status: 200, upstream: Some("a") },
    Case { host: "match.test", path: "/prefix", headers: &[], status: 404, upstream: None },
    Case { host: "match.test", path: "/fallthrough-and-more", headers: &[], status: 200, upstream: Some("c") },
    // Header matchers, first match wins.
    Case { host: "match.test", path: "/hdr", headers: &[("x-pick", "c")], status: 200, upstream: Some("c") },
    Case { host: "match.test", path: "/hdr", headers: &[("x-pick", "C")], status: 404, upstream: None },
    Case { host: "match.test", path: "/hdr", headers: &[("x-present", "")], status: 200, upstream: Some("b") },
    Case { host: "match.test", path: "/hdr", headers: &[("x-pick", "c"), ("x-present", "1")], status: 200, upstream: Some("c") },
    Case { host: "match.test", path: "/hdr", headers: &[], status: 404, upstream: None },
    // Query parameter matchers.
    Case { host: "match.test", path: "/query?pick=b", headers: &[], status: 200, upstream: Some("b") },
    Case { host: "match.test", path: "/query?x=1&pick=b", headers: &[], status: 200, upstream: Some("b") },
    Case { host: "match.test", path: "/query?pick=a", headers: &[], status: 404, upstream: None },
    Case { host: "match.test", path: "/query", headers: &[], status: 404, upstream: None },
    // No route at all.
    Case { host: "match.test", path: "/nothing-here", headers: &[], status: 404, upstream: None },
    Case { host: "unknown.test", path: "/", headers: &[], status: 404, upstream: None },
];

async fn route_table_scenario(kind: ProxyKind, proto: Proto) -> anyhow::Result<Observations> {
    let (a, b, c) = (
        Upstream::start("a").await?,
        Upstream::start("b").await?,
        Upstream::start("c").await?,
    );
    let yaml = http_bootstrap(
        ROUTES,
        &[
            cluster("a", &[a.addr()]),
            cluster("b", &[b.addr()]),
            cluster("c", &[c.addr()]),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut client = HttpClient::connect(proxy.addr("http"), proto).await?;
    for case in CASES {
        let reply = client.get_with(case.host, case.path, case.headers).await?;
        let what = format!("{proto:?} {} {} {:?}", case.host, case.path, case.headers);
        info!(%kind, %what, status = %reply.status, upstream = ?reply.upstream());
        anyhow::ensure!(
            reply.status.as_u16() == case.status,
            "{kind}: {what}: status {} (want {}), body {:?}",
            reply.status,
            case.status,
            reply.text()
        );
        anyhow::ensure!(
            reply.upstream() == case.upstream,
            "{kind}: {what}: served by {:?} (want {:?})",
            reply.upstream(),
            case.upstream
        );
        if let Some(name) = case.upstream {
            let echo = reply.echo()?;
            anyhow::ensure!(
                echo.upstream == name,
                "{kind}: {what}: echo from {}",
                echo.upstream
            );
            anyhow::ensure!(
                echo.path == case.path,
                "{kind}: {what}: upstream saw path {}",
                echo.path
            );
        }
        obs.record(
            what,
            (reply.status.as_u16(), reply.upstream().map(str::to_owned)),
        );
    }
    // Every request went over one downstream connection.
    let ok = CASES.iter().filter(|c| c.status == 200).count() as u64;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_rq_total",
        "http.ingress.downstream_rq_total",
        CASES.len() as u64,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_rq_2xx",
        "http.ingress.downstream_rq_2xx",
        ok,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_rq_4xx",
        "http.ingress.downstream_rq_4xx",
        CASES.len() as u64 - ok,
    )
    .await?;
    obs.stat_eq(
        &proxy,
        "http.ingress.downstream_cx_total",
        "http.ingress.downstream_cx_total",
        1,
    )
    .await?;
    Ok(obs)
}

#[tokio::test]
async fn route_table_picks_same_upstream_http1() {
    differential(|kind| route_table_scenario(kind, Proto::Http1)).await;
}

#[tokio::test]
async fn route_table_picks_same_upstream_h2c() {
    differential(|kind| route_table_scenario(kind, Proto::H2c)).await;
}

const ACTIONS: &str = r#"
virtual_hosts:
- name: actions
  domains: ["*"]
  routes:
  - match: {prefix: "/direct"}
    direct_response: {status: 418, body: {inline_string: "short and stout"}}
  - match: {prefix: "/direct-empty"}
    direct_response: {status: 204}
  - match: {prefix: "/redirect"}
    redirect: {host_redirect: elsewhere.test, path_redirect: /moved, response_code: PERMANENT_REDIRECT}
  - match: {prefix: "/old/"}
    redirect: {scheme_redirect: https, prefix_rewrite: "/new/"}
  - match: {prefix: "/by-header"}
    route: {cluster_header: x-cluster}
  - match: {prefix: "/split"}
    route:
      weighted_clusters:
        header_name: x-split
        clusters: [{name: a, weight: 30}, {name: b, weight: 70}]
  - match: {prefix: "/zero"}
    route:
      weighted_clusters:
        clusters: [{name: a, weight: 0}, {name: c, weight: 5}]
"#;

#[rustfmt::skip]
const ACTION_CASES: &[Case] = &[
    Case { host: "act.test", path: "/direct", headers: &[], status: 418, upstream: None },
    Case { host: "act.test", path: "/redirect/x?y=1", headers: &[], status: 308, upstream: None },
    Case { host: "act.test", path: "/old/page?q=1", headers: &[], status: 301, upstream: None },
    Case { host: "act.test", path: "/by-header", headers: &[("x-cluster", "b")], status: 200, upstream: Some("b") },
    Case { host: "act.test", path: "/by-header", headers: &[("x-cluster", "c")], status: 200, upstream: Some("c") },
    // Unknown or missing cluster: 503 (NC).
    Case { host: "act.test", path: "/by-header", headers: &[("x-cluster", "nope")], status: 503, upstream: None },
    Case { host: "act.test", path: "/by-header", headers: &[], status: 503, upstream: None },
    // header_name: value % total_weight (100) picks by cumulative weight: [0,30) → a, [30,100) → b.
    Case { host: "act.test", path: "/split", headers: &[("x-split", "0")], status: 200, upstream: Some("a") },
    Case { host: "act.test", path: "/split", headers: &[("x-split", "29")], status: 200, upstream: Some("a") },
    Case { host: "act.test", path: "/split", headers: &[("x-split", "30")], status: 200, upstream: Some("b") },
    Case { host: "act.test", path: "/split", headers: &[("x-split", "99")], status: 200, upstream: Some("b") },
    Case { host: "act.test", path: "/split", headers: &[("x-split", "129")], status: 200, upstream: Some("a") },
    Case { host: "act.test", path: "/split", headers: &[("x-split", "130")], status: 200, upstream: Some("b") },
    // Zero weight is never picked.
    Case { host: "act.test", path: "/zero", headers: &[], status: 200, upstream: Some("c") },
    Case { host: "act.test", path: "/zero", headers: &[], status: 200, upstream: Some("c") },
    Case { host: "act.test", path: "/zero", headers: &[], status: 200, upstream: Some("c") },
    Case { host: "act.test", path: "/zero", headers: &[], status: 200, upstream: Some("c") },
];

async fn route_actions_scenario(kind: ProxyKind, proto: Proto) -> anyhow::Result<Observations> {
    let (a, b, c) = (
        Upstream::start("a").await?,
        Upstream::start("b").await?,
        Upstream::start("c").await?,
    );
    let yaml = http_bootstrap(
        ACTIONS,
        &[
            cluster("a", &[a.addr()]),
            cluster("b", &[b.addr()]),
            cluster("c", &[c.addr()]),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut client = HttpClient::connect(proxy.addr("http"), proto).await?;
    for (i, case) in ACTION_CASES.iter().enumerate() {
        let reply = client.get_with(case.host, case.path, case.headers).await?;
        let what = format!(
            "#{i:02} {proto:?} {} {} {:?}",
            case.host, case.path, case.headers
        );
        info!(%kind, %what, status = %reply.status, upstream = ?reply.upstream(), location = ?reply.header("location"));
        anyhow::ensure!(
            reply.status.as_u16() == case.status,
            "{kind}: {what}: status {} (want {}), body {:?}",
            reply.status,
            case.status,
            reply.text()
        );
        anyhow::ensure!(
            reply.upstream() == case.upstream,
            "{kind}: {what}: served by {:?} (want {:?})",
            reply.upstream(),
            case.upstream
        );
        let synthetic = case.upstream.is_none().then(|| {
            (
                reply.text(),
                reply.header("location").map(str::to_owned),
                reply.header("content-type").map(str::to_owned),
            )
        });
        obs.record(
            what,
            (
                reply.status.as_u16(),
                reply.upstream().map(str::to_owned),
                synthetic,
            ),
        );
    }
    let direct = client.get("act.test", "/direct").await?;
    anyhow::ensure!(
        direct.text() == "short and stout",
        "{kind}: body {:?}",
        direct.text()
    );
    let moved = client.get("act.test", "/redirect/x?y=1").await?;
    // path_redirect keeps the query unless strip_query is set.
    anyhow::ensure!(
        moved.header("location") == Some("http://elsewhere.test/moved?y=1"),
        "{kind}: location {:?}",
        moved.header("location")
    );
    let old = client.get("act.test", "/old/page?q=1").await?;
    anyhow::ensure!(
        old.header("location") == Some("https://act.test/new/page?q=1"),
        "{kind}: location {:?}",
        old.header("location")
    );
    Ok(obs)
}

#[tokio::test]
async fn route_actions_match_envoy_http1() {
    differential(|kind| route_actions_scenario(kind, Proto::Http1)).await;
}

#[tokio::test]
async fn route_actions_match_envoy_h2c() {
    differential(|kind| route_actions_scenario(kind, Proto::H2c)).await;
}
