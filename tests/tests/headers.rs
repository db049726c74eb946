//! Differential: header manipulation as seen by the upstream and the client — add/remove at
//! route-config, virtual-host and route level, append vs overwrite, host rewrite, the headers the
//! proxy itself adds (`x-forwarded-proto`, `x-request-id`, `x-envoy-expected-rq-timeout-ms`,
//! `server`, `x-envoy-upstream-service-time`), and HTTP/1.1 header case on the wire.

use petrel_e2e::client::raw::RawConn;
use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::upstream::RawHttpUpstream;
use petrel_e2e::yaml::{cluster, http_bootstrap, http_bootstrap_with};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;

const ROUTES: &str = r#"
request_headers_to_add: [{header: {key: x-rc-added, value: rc}}]
request_headers_to_remove: [x-rc-remove]
response_headers_to_add: [{header: {key: x-rc-resp, value: rc}}]
response_headers_to_remove: [x-upstream-secret]
virtual_hosts:
- name: all
  domains: ["*"]
  request_headers_to_add: [{header: {key: x-vh-added, value: vh}}]
  routes:
  - match: {prefix: "/rewrite"}
    route: {cluster: up, host_rewrite_literal: rewritten.test}
    request_headers_to_add:
    - header: {key: x-route-added, value: route}
    - header: {key: x-append, value: appended}
      append_action: APPEND_IF_EXISTS_OR_ADD
    - header: {key: x-overwrite, value: overwritten}
      append_action: OVERWRITE_IF_EXISTS_OR_ADD
    - header: {key: x-add-if-absent, value: added}
      append_action: ADD_IF_ABSENT
    request_headers_to_remove: [x-remove-me]
    response_headers_to_add: [{header: {key: x-route-resp, value: r}}]
    response_headers_to_remove: [x-drop-resp]
  - match: {prefix: "/"}
    route: {cluster: up}
"#;

async fn header_scenario(kind: ProxyKind, proto: Proto) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let yaml = http_bootstrap(ROUTES, &[cluster("up", &[up.addr()])]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut c = HttpClient::connect(proxy.addr("http"), proto).await?;

    let r = c
        .get_with(
            "orig.test",
            "/rewrite/x",
            &[
                ("x-rc-remove", "1"),
                ("x-remove-me", "1"),
                ("x-append", "original"),
                ("x-overwrite", "original"),
                ("x-add-if-absent", "present"),
                ("x-kept", "k"),
                ("x-echo-response-header", "x-drop-resp=1"),
                ("x-echo-response-header", "x-upstream-secret=s"),
                ("x-echo-response-header", "x-kept-resp=k"),
            ],
        )
        .await?;
    anyhow::ensure!(r.status == 200, "{kind}: status {}", r.status);
    let e = r.echo()?;
    info!(%kind, ?e.headers, "upstream saw");
    let expect = |cond: bool, what: &str| -> anyhow::Result<()> {
        anyhow::ensure!(
            cond,
            "{kind} {proto:?}: {what}; upstream saw {:?}",
            e.headers
        );
        Ok(())
    };
    expect(
        e.host.as_deref() == Some("rewritten.test"),
        "host rewritten",
    )?;
    expect(
        e.header("x-rc-added") == Some("rc"),
        "route-config header added",
    )?;
    expect(e.header("x-vh-added") == Some("vh"), "vhost header added")?;
    expect(
        e.header("x-route-added") == Some("route"),
        "route header added",
    )?;
    expect(e.header("x-rc-remove").is_none(), "route-config removal")?;
    expect(e.header("x-remove-me").is_none(), "route removal")?;
    expect(
        e.header_all("x-append") == ["original", "appended"],
        "append",
    )?;
    expect(e.header_all("x-overwrite") == ["overwritten"], "overwrite")?;
    expect(
        e.header_all("x-add-if-absent") == ["present"],
        "add-if-absent",
    )?;
    expect(e.header("x-kept") == Some("k"), "other headers kept")?;
    expect(
        e.header("x-forwarded-proto") == Some("http"),
        "x-forwarded-proto",
    )?;
    expect(
        e.header("x-request-id").is_some_and(|v| v.len() == 36),
        "x-request-id uuid",
    )?;
    expect(
        e.header("x-envoy-expected-rq-timeout-ms") == Some("15000"),
        "default 15s timeout",
    )?;

    let mut upstream_saw = e.header_names();
    upstream_saw.retain(|h| h != "host"); // h2 upstream may carry it as :authority
    obs.record("upstream header names", upstream_saw);
    for h in [
        "x-append",
        "x-overwrite",
        "x-add-if-absent",
        "x-forwarded-proto",
        "x-envoy-expected-rq-timeout-ms",
    ] {
        obs.record(format!("upstream {h}"), e.header_all(h));
    }
    obs.record("upstream host", e.host.clone());
    obs.record("upstream version", e.version.clone());

    let resp_expect = |cond: bool, what: &str| -> anyhow::Result<()> {
        anyhow::ensure!(cond, "{kind} {proto:?}: {what}; client saw {:?}", r.headers);
        Ok(())
    };
    resp_expect(
        r.header("x-route-resp") == Some("r"),
        "route response header",
    )?;
    resp_expect(
        r.header("x-rc-resp") == Some("rc"),
        "route-config response header",
    )?;
    resp_expect(r.header("x-drop-resp").is_none(), "route response removal")?;
    resp_expect(
        r.header("x-upstream-secret").is_none(),
        "route-config response removal",
    )?;
    resp_expect(
        r.header("x-kept-resp") == Some("k"),
        "upstream response header kept",
    )?;
    resp_expect(r.header("server") == Some("envoy"), "default server header")?;
    resp_expect(
        r.header("x-envoy-upstream-service-time")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "x-envoy-upstream-service-time",
    )?;
    resp_expect(r.header("date").is_some(), "date")?;
    obs.record("client header names", r.header_names());
    obs.record("client server", r.header("server").map(str::to_owned));

    // Without a route-level rewrite the Host passes through unchanged.
    let r = c.get("orig.test:1234", "/plain").await?;
    let e = r.echo()?;
    anyhow::ensure!(
        e.host.as_deref() == Some("orig.test:1234"),
        "{kind}: host {:?}",
        e.host
    );
    anyhow::ensure!(
        e.header("x-route-added").is_none(),
        "{kind}: route header leaked"
    );
    obs.record("plain host", e.host.clone());
    Ok(obs)
}

#[tokio::test]
async fn header_rules_apply_like_envoy_http1() {
    differential(|kind| header_scenario(kind, Proto::Http1)).await;
}

#[tokio::test]
async fn header_rules_apply_like_envoy_h2c() {
    differential(|kind| header_scenario(kind, Proto::H2c)).await;
}

async fn server_name_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let yaml = http_bootstrap_with(
        "server_name: petrel-test",
        "virtual_hosts: [{name: all, domains: [\"*\"], routes: [{match: {prefix: \"/up\"}, route: {cluster: up}}]}]",
        &[cluster("up", &[up.addr()])],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut c = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;
    let ok = c.get("a.test", "/up").await?;
    anyhow::ensure!(
        ok.header("server") == Some("petrel-test"),
        "{kind}: server {:?}",
        ok.header("server")
    );
    obs.record("server (proxied)", ok.header("server").map(str::to_owned));
    // Locally generated responses carry it too.
    let local = c.get("a.test", "/no-route").await?;
    anyhow::ensure!(local.status == 404, "{kind}: /no-route {}", local.status);
    anyhow::ensure!(
        local.header("server") == Some("petrel-test"),
        "{kind}: local server {:?}",
        local.header("server")
    );
    obs.record(
        "server (no route)",
        local.header("server").map(str::to_owned),
    );
    Ok(obs)
}

#[tokio::test]
async fn server_name_sets_server_header() {
    differential(server_name_scenario).await;
}

async fn header_case_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let raw_up = RawHttpUpstream::start().await?;
    let yaml = http_bootstrap(
        "virtual_hosts: [{name: all, domains: [\"*\"], routes: [{match: {prefix: \"/\"}, route: {cluster: raw}}]}]",
        &[cluster("raw", &[raw_up.addr()])],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut conn = RawConn::connect(proxy.addr("http")).await?;
    conn.write(b"GET /case HTTP/1.1\r\nHost: case.test\r\nX-Mixed-Case: Value\r\n\r\n")
        .await?;
    let resp = conn.read_response().await?;
    anyhow::ensure!(resp.status == 200, "{kind}: status {}", resp.status);
    let heads = raw_up.heads();
    anyhow::ensure!(heads.len() == 1, "{kind}: upstream saw {heads:?}");
    let head = &heads[0];
    info!(%kind, %head, resp = %resp.head, "wire");
    // Envoy's default HTTP/1 codec lower-cases header names in both directions (unless
    // header_key_format is configured).
    anyhow::ensure!(
        head.contains("\r\nx-mixed-case: Value"),
        "{kind}: upstream head {head:?}"
    );
    anyhow::ensure!(
        resp.headers
            .iter()
            .any(|(k, v)| k == "x-mixed-case-response" && v == "Yes"),
        "{kind}: response head {:?}",
        resp.head
    );
    anyhow::ensure!(
        head.starts_with("GET /case HTTP/1.1\r\n"),
        "{kind}: request line {head:?}"
    );
    // Order is not compared (Envoy's is an implementation detail); names and case are.
    let mut names: Vec<String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.to_owned()))
        .collect();
    names.sort();
    obs.record("upstream wire header names", names);
    let mut names: Vec<String> = resp.headers.iter().map(|(k, _)| k.clone()).collect();
    names.sort();
    obs.record("client wire header names", names);
    Ok(obs)
}

#[tokio::test]
async fn http1_header_case_on_the_wire() {
    differential(header_case_scenario).await;
}
