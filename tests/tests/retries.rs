//! Differential: retries and timeouts against a flaky upstream. For each policy the same
//! scripted failures go to Envoy and Petrel; both must make the same number of upstream
//! attempts, return the same final status and body, and count the same retry stats
//! (`upstream_rq_retry*`, `retry.upstream_rq_<code>`, per-try timeouts, breaker overflow).
//!
//! The upstream's behaviour is scripted per request (first N answers fail), so outcomes never
//! depend on timing; timeouts use margins of seconds.

use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::ports::ClosedPort;
use petrel_e2e::yaml::{cluster, cluster_with, http_bootstrap, http_bootstrap_with};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use tracing::info;

const ROUTES: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  retry_policy: {retry_on: "5xx", num_retries: 1}
  routes:
  - match: {prefix: "/two"}
    route:
      cluster: flaky
      retry_policy: {retry_on: "5xx", num_retries: 2}
  - match: {prefix: "/vhost-policy"}
    route: {cluster: flaky}
  - match: {prefix: "/connect"}
    route:
      cluster: dead
      retry_policy: {retry_on: "connect-failure", num_retries: 2}
  - match: {prefix: "/reset"}
    route:
      cluster: flaky
      retry_policy: {retry_on: "reset", num_retries: 1}
  - match: {prefix: "/codes"}
    route:
      cluster: flaky
      retry_policy: {retry_on: "retriable-status-codes", retriable_status_codes: [409, 418], num_retries: 3}
  - match: {prefix: "/grpc"}
    route:
      cluster: flaky
      retry_policy: {retry_on: "unavailable", num_retries: 1}
  - match: {prefix: "/per-try"}
    route:
      cluster: flaky
      timeout: 20s
      retry_policy: {retry_on: "5xx", num_retries: 1, per_try_timeout: 0.5s}
  - match: {prefix: "/overflow"}
    route:
      cluster: tight
      retry_policy: {retry_on: "5xx", num_retries: 3}
  - match: {prefix: "/none"}
    route:
      cluster: flaky
      retry_policy: {retry_on: "connect-failure"}
"#;

/// An access log of each request's path, status and response flags.
const FLAG_LOG: &str = r#"
access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: "{{dir}}/flags.log"
    log_format: {text_format_source: {inline_string: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n"}}
"#;

/// Runs `GET path` and records status, body and how many requests the upstream saw.
async fn step(
    obs: &mut Observations,
    c: &mut HttpClient,
    up: &Upstream,
    label: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<petrel_e2e::Reply> {
    let before = up.requests();
    let r = c.get_with("retry.test", path, headers).await?;
    let attempts = up.requests() - before;
    info!(label, status = r.status.as_u16(), attempts, "step");
    obs.record(format!("{label}: status"), r.status.as_u16());
    obs.record(format!("{label}: attempts"), attempts);
    // Upstream-generated bodies name the instance; local replies are compared verbatim.
    if r.upstream().is_none() {
        obs.record(format!("{label}: body"), r.text());
    }
    Ok(r)
}

async fn scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let flaky = Upstream::start("flaky").await?;
    let tight = Upstream::start("tight").await?;
    let dead = ClosedPort::new()?;
    let yaml = http_bootstrap_with(
        FLAG_LOG,
        ROUTES,
        &[
            cluster("flaky", &[flaky.addr()]),
            cluster("dead", &[dead.addr()]),
            cluster_with(
                "tight",
                &[tight.addr()],
                "circuit_breakers: {thresholds: [{max_retries: 0}]}",
            ),
        ],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut c = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;
    let s503: &[(&str, &str)] = &[("x-echo-status", "503")];

    info!(%kind, "two 503s, then success: two retries succeed");
    flaky.script(&[s503, s503]);
    let r = step(&mut obs, &mut c, &flaky, "two", "/two", &[]).await?;
    anyhow::ensure!(r.status == 200, "{kind}: /two → {}", r.status);

    info!(%kind, "the virtual host's policy: one retry, then the limit");
    flaky.script(&[s503, s503]);
    let r = step(&mut obs, &mut c, &flaky, "vhost", "/vhost-policy", &[]).await?;
    anyhow::ensure!(r.status == 503, "{kind}: /vhost-policy → {}", r.status);

    info!(%kind, "connect failures are retried, then reported");
    let r = step(&mut obs, &mut c, &flaky, "connect", "/connect", &[]).await?;
    anyhow::ensure!(r.status == 503, "{kind}: /connect → {}", r.status);

    info!(%kind, "a reset before headers is retried");
    flaky.script(&[&[("x-echo-reset", "1")]]);
    let r = step(&mut obs, &mut c, &flaky, "reset", "/reset", &[]).await?;
    anyhow::ensure!(r.status == 200, "{kind}: /reset → {}", r.status);

    info!(%kind, "retriable status codes");
    flaky.script(&[
        &[("x-echo-status", "409")],
        &[("x-echo-status", "418")],
        &[("x-echo-status", "404")],
    ]);
    let r = step(&mut obs, &mut c, &flaky, "codes", "/codes", &[]).await?;
    anyhow::ensure!(r.status == 404, "{kind}: /codes → {}", r.status);

    info!(%kind, "gRPC unavailable in a trailers-only response");
    flaky.script(&[&[("x-echo-response-header", "grpc-status=14")]]);
    let r = step(
        &mut obs,
        &mut c,
        &flaky,
        "grpc",
        "/grpc",
        &[("content-type", "application/grpc")],
    )
    .await?;
    anyhow::ensure!(r.status == 200, "{kind}: /grpc → {}", r.status);
    obs.record(
        "grpc: grpc-status",
        r.header("grpc-status").map(str::to_owned),
    );

    info!(%kind, "a per-try timeout is retried");
    flaky.script(&[&[("x-echo-delay-ms", "5000")]]);
    let r = step(&mut obs, &mut c, &flaky, "per-try", "/per-try", &[]).await?;
    anyhow::ensure!(r.status == 200, "{kind}: /per-try → {}", r.status);

    info!(%kind, "max_retries 0: the retry overflows the breaker");
    tight.script(&[s503]);
    let r = step(&mut obs, &mut c, &tight, "overflow", "/overflow", &[]).await?;
    anyhow::ensure!(r.status == 503, "{kind}: /overflow → {}", r.status);

    info!(%kind, "a 5xx is not retried under connect-failure only");
    flaky.script(&[s503]);
    let r = step(&mut obs, &mut c, &flaky, "none", "/none", &[]).await?;
    anyhow::ensure!(r.status == 503, "{kind}: /none → {}", r.status);

    info!(%kind, "an external client cannot ask for retries: x-envoy-retry-on is dropped");
    flaky.script(&[s503]);
    let r = step(
        &mut obs,
        &mut c,
        &flaky,
        "header ignored",
        "/none",
        &[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "3")],
    )
    .await?;
    anyhow::ensure!(r.status == 503, "{kind}: header-driven → {}", r.status);
    let saw = r.echo().ok().map(|e| {
        e.headers
            .iter()
            .any(|(k, _)| k.starts_with("x-envoy-retry") || k == "x-envoy-max-retries")
    });
    obs.record("header ignored: upstream saw retry headers", saw);

    // Response flags: URX after the retry limit, UO when the breaker refuses the retry, UF
    // for the final connect failure.
    let log = proxy.dir().join("flags.log");
    petrel_e2e::assert_eventually!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            >= 10,
        "access log lines: {:?}",
        std::fs::read_to_string(&log)
    );
    let flags = std::fs::read_to_string(&log)?;
    info!(%kind, "access log:\n{flags}");
    obs.record("access log", flags.lines().collect::<Vec<_>>());
    for (stat, v) in [
        ("flaky.upstream_rq_retry", 8),
        ("flaky.upstream_rq_retry_success", 5),
        ("flaky.upstream_rq_retry_limit_exceeded", 1),
        ("flaky.upstream_rq_retry_backoff_exponential", 8),
        ("flaky.retry.upstream_rq_503", 3),
        ("flaky.retry.upstream_rq_409", 1),
        ("flaky.retry.upstream_rq_418", 1),
        ("flaky.retry.upstream_rq_5xx", 3),
        ("flaky.upstream_rq_per_try_timeout", 1),
        ("flaky.upstream_rq_200", 4),
        ("flaky.upstream_rq_503", 3),
        ("flaky.upstream_rq_404", 1),
        ("dead.upstream_cx_connect_fail", 3),
        ("dead.upstream_rq_retry", 2),
        ("dead.upstream_rq_retry_limit_exceeded", 1),
        ("dead.upstream_rq_503", 1),
        ("tight.upstream_rq_retry_overflow", 1),
        ("tight.upstream_rq_retry", 0),
        ("tight.upstream_rq_503", 1),
    ] {
        let name = format!("cluster.{stat}");
        let got = proxy.admin().stat(&name).await?.unwrap_or(0);
        info!(%kind, "{name} = {got}");
        anyhow::ensure!(got == v, "{kind}: {name} = {got}, expected {v}");
        obs.record(format!("stat {name}"), got);
    }
    Ok(obs)
}

#[tokio::test]
async fn retries_and_per_try_timeouts_match_envoy() {
    differential(scenario).await;
}

/// An internal client (its single XFF address is in `internal_address_config`) may ask for
/// retries and timeouts with `x-envoy-*` headers; both proxies honour them and mark the
/// request `x-envoy-internal`.
async fn internal_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let flaky = Upstream::start("flaky").await?;
    let routes = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/"}
    route: {cluster: flaky}
"#;
    let yaml = http_bootstrap_with(
        "internal_address_config: {cidr_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}",
        routes,
        &[cluster("flaky", &[flaky.addr()])],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut c = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;
    let s503: &[(&str, &str)] = &[("x-echo-status", "503")];
    flaky.script(&[s503, s503]);
    let internal = [
        ("x-forwarded-for", "10.1.2.3"),
        ("x-envoy-retry-on", "5xx"),
        ("x-envoy-max-retries", "2"),
        ("x-envoy-upstream-rq-timeout-ms", "4000"),
    ];
    let r = step(&mut obs, &mut c, &flaky, "internal", "/", &internal).await?;
    anyhow::ensure!(r.status == 200, "{kind}: internal → {}", r.status);
    let e = r.echo()?;
    let h = |n: &str| {
        e.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    obs.record("x-envoy-internal", h("x-envoy-internal"));
    // The last attempt's expected timeout is what is left of the 4 s after two back-offs.
    let expected = h("x-envoy-expected-rq-timeout-ms").and_then(|v| v.parse::<u64>().ok());
    anyhow::ensure!(
        expected.is_some_and(|ms| (1..=4000).contains(&ms)),
        "{kind}: expected timeout {expected:?}"
    );
    obs.record("expected timeout from the header", expected.is_some());
    obs.record(
        "retry headers forwarded",
        e.headers
            .iter()
            .any(|(k, _)| k.starts_with("x-envoy-retry")),
    );
    flaky.script(&[s503]);
    let external = [
        ("x-forwarded-for", "1.1.1.1,10.1.2.3"),
        ("x-envoy-retry-on", "5xx"),
    ];
    let r = step(&mut obs, &mut c, &flaky, "two hops", "/", &external).await?;
    anyhow::ensure!(r.status == 503, "{kind}: two hops → {}", r.status);
    obs.stat_eq(
        &proxy,
        "cluster.flaky.upstream_rq_retry",
        "cluster.flaky.upstream_rq_retry",
        2,
    )
    .await?;
    Ok(obs)
}

#[tokio::test]
async fn internal_requests_may_steer_retries_like_envoy() {
    differential(internal_scenario).await;
}

/// `previous_hosts`: a retry goes to a host the request has not tried. Two always-failing
/// hosts under RANDOM balancing: with the predicate (and up to 100 re-picks, so a repeat has
/// probability 2^-100) each request tries each host exactly once.
async fn previous_hosts_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let (a, b) = (Upstream::start("a").await?, Upstream::start("b").await?);
    a.always(&[("x-echo-status", "503")]);
    b.always(&[("x-echo-status", "503")]);
    let routes = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/"}
    route:
      cluster: pair
      retry_policy:
        retry_on: "5xx"
        num_retries: 1
        host_selection_retry_max_attempts: 100
        retry_host_predicate:
        - name: envoy.retry_host_predicates.previous_hosts
          typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}
"#;
    let yaml = http_bootstrap(
        routes,
        &[cluster_with(
            "pair",
            &[a.addr(), b.addr()],
            "lb_policy: RANDOM",
        )],
    );
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut c = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;
    for i in 0..10 {
        let r = c.get("retry.test", "/").await?;
        anyhow::ensure!(r.status == 503, "{kind}: #{i} → {}", r.status);
        anyhow::ensure!(
            a.requests() == i + 1 && b.requests() == i + 1,
            "{kind}: after {} requests a saw {}, b saw {}",
            i + 1,
            a.requests(),
            b.requests()
        );
    }
    obs.record("requests per host", (a.requests(), b.requests()));
    obs.stat_eq(
        &proxy,
        "cluster.pair.upstream_rq_retry",
        "cluster.pair.upstream_rq_retry",
        10,
    )
    .await?;
    Ok(obs)
}

#[tokio::test]
async fn previous_hosts_retries_go_to_another_host_like_envoy() {
    differential(previous_hosts_scenario).await;
}
