//! Differential: file access logs — a custom format with the common operators (including
//! `%RESPONSE_FLAGS%`: NR, UF, UT, UC) and Envoy's default format, after the same requests.

use std::path::Path;

use http::Method;
use petrel_e2e::client::{full, HttpClient, Proto};
use petrel_e2e::ports::ClosedPort;
use petrel_e2e::yaml::{cluster, http_bootstrap_with};
use petrel_e2e::{assert_eventually, differential, Observations, Proxy, ProxyKind, Upstream};
use regex::Regex;
use tracing::info;

const HCM: &str = r#"
access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: "{{dir}}/custom.log"
    log_format:
      text_format_source:
        inline_string: "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %REQ(X-CUSTOM)% %RESP(X-UPSTREAM-NAME)%\n"
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: "{{dir}}/default.log"
"#;

const ROUTES: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: "/closed"}
    route: {cluster: closed}
  - match: {prefix: "/slow"}
    route: {cluster: a, timeout: 1s}
  - match: {prefix: "/direct"}
    direct_response: {status: 200, body: {inline_string: "direct"}}
  - match: {prefix: "/by-header"}
    route: {cluster_header: x-cluster}
  - match: {prefix: "/empty"}
    route: {cluster: empty}
  - match: {prefix: "/a/"}
    route: {cluster: a}
"#;

/// The custom-format lines the requests below must produce, in order.
const CUSTOM: &[&str] = &[
    "GET /a/ok HTTP/1.1 200 - a 0 - a",
    "GET /nowhere HTTP/1.1 404 NR - 0 - -",
    "GET /closed HTTP/1.1 503 UF closed 0 - -",
    "GET /slow HTTP/1.1 504 UT a 0 - -",
    "GET /a/reset HTTP/1.1 503 UC a 0 - -",
    "POST /a/post HTTP/1.1 200 - a 11 custom-value a",
    "GET /direct HTTP/1.1 200 - - 0 - -",
    "GET /by-header HTTP/1.1 503 NC - 0 - -",
    "GET /empty HTTP/1.1 503 UH empty 0 - -",
    "GET /a/h2 HTTP/2 200 - a 0 - a",
];

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn access_log_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let a = Upstream::start("a").await?;
    let closed = ClosedPort::new()?;
    let yaml = http_bootstrap_with(
        HCM,
        ROUTES,
        &[
            cluster("a", &[a.addr()]),
            cluster("closed", &[closed.addr()]),
            cluster("empty", &[]),
        ],
    );
    // Envoy flushes access logs every 10 s by default; flush fast so the test need not wait.
    let proxy = Proxy::start(kind, &yaml, &["--file-flush-interval-msec", "100"]).await?;
    let mut obs = Observations::new(kind);

    let mut c = HttpClient::connect(proxy.addr("http"), Proto::Http1).await?;
    c.get("log.test", "/a/ok").await?;
    c.get("log.test", "/nowhere").await?;
    c.get("log.test", "/closed").await?;
    c.get_with("log.test", "/slow", &[("x-echo-delay-ms", "5000")])
        .await?;
    c.get_with("log.test", "/a/reset", &[("x-echo-reset", "1")])
        .await?;
    let req = c
        .request(Method::POST, "log.test", "/a/post")
        .header("x-custom", "custom-value")
        .body(full("hello world"))?;
    c.send(req).await?;
    c.get("log.test", "/direct").await?;
    let nc = c.get("log.test", "/by-header").await?;
    anyhow::ensure!(
        nc.status == 503,
        "{kind}: missing cluster_header → {}",
        nc.status
    );
    obs.record("NC body", nc.text());
    let uh = c.get("log.test", "/empty").await?;
    anyhow::ensure!(
        uh.status == 503 && uh.text() == "no healthy upstream",
        "{kind}: empty cluster → {} {:?}",
        uh.status,
        uh.text()
    );
    obs.record("UH body", uh.text());
    HttpClient::connect(proxy.addr("http"), Proto::H2c)
        .await?
        .get("log.test", "/a/h2")
        .await?;

    let custom = proxy.dir().join("custom.log");
    assert_eventually!(
        lines(&custom).len() >= CUSTOM.len(),
        "{kind}: custom log has {:?}",
        lines(&custom)
    );
    let got = lines(&custom);
    info!(%kind, ?got, "custom access log");
    anyhow::ensure!(
        got == CUSTOM,
        "{kind}: custom access log\n got: {got:#?}\nwant: {CUSTOM:#?}"
    );
    obs.record("custom log", &got);

    // [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
    // %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    // %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    // "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"
    let re = Regex::new(
        r#"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "([A-Z]+) (\S+) (\S+)" (\d{3}) (\S+) (\d+) (\d+) (\d+) (\d+|-) "(.*?)" "(.*?)" "(.*?)" "(.*?)" "(.*?)"$"#,
    )?;
    let default = proxy.dir().join("default.log");
    assert_eventually!(
        lines(&default).len() >= CUSTOM.len(),
        "{kind}: default log has {:?}",
        lines(&default)
    );
    let mut normalized = Vec::new();
    for line in lines(&default) {
        let caps = re.captures(&line).ok_or_else(|| {
            anyhow::anyhow!("{kind}: default-format line does not parse: {line:?}")
        })?;
        let (request_id, upstream_host) = (&caps[13], &caps[15]);
        anyhow::ensure!(
            request_id.len() == 36,
            "{kind}: request id {request_id:?} in {line:?}"
        );
        let upstream = if upstream_host == a.addr().to_string() {
            "<a>".to_owned()
        } else if upstream_host == closed.addr().to_string() {
            "<closed>".to_owned()
        } else {
            upstream_host.to_owned()
        };
        // Time, byte counts of echo bodies, durations and ids vary; the rest must not.
        normalized.push(format!(
            "\"{} {} {}\" {} {} {} \"{}\" \"{}\" \"{}\" \"{}\"",
            &caps[2],
            &caps[3],
            &caps[4],
            &caps[5],
            &caps[6],
            &caps[7],
            &caps[11],
            &caps[12],
            &caps[14],
            upstream
        ));
    }
    info!(%kind, ?normalized, "default access log");
    anyhow::ensure!(
        normalized.first().map(String::as_str)
            == Some(r#""GET /a/ok HTTP/1.1" 200 - 0 "-" "-" "log.test" "<a>""#),
        "{kind}: first default line {:?}",
        normalized.first()
    );
    obs.record("default log (normalized)", &normalized);
    Ok(obs)
}

#[tokio::test]
async fn access_logs_match_envoy_formats_and_flags() {
    differential(access_log_scenario).await;
}
