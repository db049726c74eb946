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
