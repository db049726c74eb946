//! Differential: listener features — filter-chain matching on SNI (exact and wildcard),
//! transport protocol and ALPN via `tls_inspector`, source prefix ranges, the default filter
//! chain; and an HTTP listener on a unix socket (`pipe`).

use std::net::{IpAddr, Ipv4Addr};

use petrel_e2e::proxy::render;
use petrel_e2e::tcp::{self, TcpEcho};
use petrel_e2e::tls::client_hello;
use petrel_e2e::yaml::cluster;
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

const ECHOES: [&str; 6] = [
    "sni_a",
    "sni_wild",
    "alpn_h2",
    "tls_other",
    "src_two",
    "plain",
];

fn tcp_proxy(cluster: &str) -> String {
    format!(
        "[{{name: envoy.filters.network.tcp_proxy, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {cluster}, cluster: {cluster}}}}}]"
    )
}

const MATCHING: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {{admin_port}}}}
static_resources:
  listeners:
  - name: matcher
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:matcher}}}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}
    filter_chains:
    - name: sni-a
      filter_chain_match: {server_names: ["a.test"]}
      filters: {{sni_a}}
    - name: sni-wild
      filter_chain_match: {server_names: ["*.wild.test"]}
      filters: {{sni_wild}}
    - name: alpn-h2
      filter_chain_match: {transport_protocol: tls, application_protocols: ["h2"]}
      filters: {{alpn_h2}}
    - name: any-tls
      filter_chain_match: {transport_protocol: tls}
      filters: {{tls_other}}
    - name: from-two
      filter_chain_match: {source_prefix_ranges: [{address_prefix: 127.0.0.2, prefix_len: 32}]}
      filters: {{src_two}}
    default_filter_chain:
      filters: {{plain}}
  clusters: [{{clusters}}]
"#;

struct Case {
    what: &'static str,
    source: Ipv4Addr,
    sni: Option<&'static str>,
    alpn: &'static [&'static str],
    /// `None`: plaintext payload.
    tls: bool,
    want: &'static str,
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    Case { what: "exact SNI wins over ALPN", source: Ipv4Addr::LOCALHOST, sni: Some("a.test"), alpn: &["h2"], tls: true, want: "sni_a" },
    Case { what: "wildcard SNI", source: Ipv4Addr::LOCALHOST, sni: Some("x.wild.test"), alpn: &[], tls: true, want: "sni_wild" },
    Case { what: "unmatched SNI, ALPN h2", source: Ipv4Addr::LOCALHOST, sni: Some("other.test"), alpn: &["h2", "http/1.1"], tls: true, want: "alpn_h2" },
    Case { what: "unmatched SNI, no ALPN", source: Ipv4Addr::LOCALHOST, sni: Some("other.test"), alpn: &[], tls: true, want: "tls_other" },
    Case { what: "TLS without SNI", source: Ipv4Addr::LOCALHOST, sni: None, alpn: &[], tls: true, want: "tls_other" },
    Case { what: "TLS from 127.0.0.2: transport beats source", source: Ipv4Addr::new(127, 0, 0, 2), sni: Some("other.test"), alpn: &[], tls: true, want: "tls_other" },
    Case { what: "plaintext from 127.0.0.2", source: Ipv4Addr::new(127, 0, 0, 2), sni: None, alpn: &[], tls: false, want: "src_two" },
    Case { what: "plaintext from 127.0.0.1: default chain", source: Ipv4Addr::LOCALHOST, sni: None, alpn: &[], tls: false, want: "plain" },
];

async fn filter_chain_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let mut echoes = Vec::new();
    for name in ECHOES {
        echoes.push((name, TcpEcho::start().await?));
    }
    let clusters: Vec<String> = echoes
        .iter()
        .map(|(n, e)| cluster(n, &[e.addr()]))
        .collect();
    let chains: Vec<(&str, String)> = ECHOES.iter().map(|n| (*n, tcp_proxy(n))).collect();
    let clusters = clusters.join(", ");
    let mut vars: Vec<(&str, &dyn std::fmt::Display)> = chains
        .iter()
        .map(|(n, c)| (*n, c as &dyn std::fmt::Display))
        .collect();
    vars.push(("clusters", &clusters));
    let yaml = render(MATCHING, &vars);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);

    for case in CASES {
        let before: Vec<usize> = echoes.iter().map(|(_, e)| e.connections()).collect();
        let payload = if case.tls {
            client_hello(case.sni, case.alpn)
        } else {
            b"plain text, no TLS here\r\n".to_vec()
        };
        let got = tcp::echo_from(IpAddr::V4(case.source), proxy.addr("matcher"), &payload).await?;
        anyhow::ensure!(
            got == payload,
            "{kind}: {}: echo returned {} bytes",
            case.what,
            got.len()
        );
        let chosen: Vec<&str> = echoes
            .iter()
            .zip(&before)
            .filter(|((_, e), b)| e.connections() > **b)
            .map(|((n, _), _)| *n)
            .collect();
        info!(%kind, case = case.what, ?chosen);
        anyhow::ensure!(
            chosen == [case.want],
            "{kind}: {}: went to {chosen:?}, want {}",
            case.what,
            case.want
        );
        obs.record(case.what, chosen);
    }
    Ok(obs)
}

#[tokio::test]
async fn filter_chain_match_picks_like_envoy() {
    differential(filter_chain_scenario).await;
}

const PIPE: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {{admin_port}}}}
static_resources:
  listeners:
  - name: uds
    address: {pipe: {path: "{{dir}}/http.sock"}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: uds
          route_config:
            virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: up}}]}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters: [{{clusters}}]
"#;

async fn pipe_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let up = Upstream::start("up").await?;
    let clusters = cluster("up", &[up.addr()]);
    let yaml = render(PIPE, &[("clusters", &clusters)]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);
    let mut s = tokio::net::UnixStream::connect(proxy.dir().join("http.sock")).await?;
    s.write_all(b"GET /over-uds HTTP/1.1\r\nHost: uds.test\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    anyhow::ensure!(
        text.starts_with("HTTP/1.1 200 OK\r\n"),
        "{kind}: uds response {text:?}"
    );
    anyhow::ensure!(
        text.contains("\"path\":\"/over-uds\""),
        "{kind}: uds body {text:?}"
    );
    obs.record("uds status line", text.lines().next().map(str::to_owned));
    obs.stat_eq(
        &proxy,
        "http.uds.downstream_rq_2xx",
        "http.uds.downstream_rq_2xx",
        1,
    )
    .await?;
    Ok(obs)
}

#[tokio::test]
async fn http_listener_on_unix_socket() {
    differential(pipe_scenario).await;
}
