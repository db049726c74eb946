use http::HeaderMap;

use super::*;
use crate::config::route::build;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

fn table(yaml: &str) -> RouteTable {
    let rc: RouteConfiguration = xds_client::decode::decode_text_as(
        yaml,
        "envoy.config.route.v3.RouteConfiguration",
        "test",
        Default::default(),
    )
    .expect("route config decodes");
    build(&rc, "route_config").expect("route config compiles")
}

fn pick<'a>(t: &'a RouteTable, host: &str, path: &str, headers: &HeaderMap) -> Option<&'a str> {
    let view = RequestView {
        host,
        path,
        method: "GET",
        scheme: "http",
        headers,
        random: 0,
    };
    t.select(&view).map(|(_, r)| &*r.name)
}

const DOMAINS: &str = r#"
virtual_hosts:
- name: exact
  domains: ["api.example.com", "api.example.com:8080"]
  routes: [{ name: exact, match: { prefix: "/" }, direct_response: { status: 200 } }]
- name: suffix
  domains: ["*.example.com"]
  routes: [{ name: suffix, match: { prefix: "/" }, direct_response: { status: 200 } }]
- name: longer_suffix
  domains: ["*.v2.example.com"]
  routes: [{ name: longer_suffix, match: { prefix: "/" }, direct_response: { status: 200 } }]
- name: prefix
  domains: ["api.*"]
  routes: [{ name: prefix, match: { prefix: "/" }, direct_response: { status: 200 } }]
- name: any
  domains: ["*"]
  routes: [{ name: any, match: { prefix: "/" }, direct_response: { status: 200 } }]
"#;

#[test]
fn domain_precedence_follows_envoy() {
    let t = table(DOMAINS);
    let h = HeaderMap::new();
    assert_eq!(pick(&t, "api.example.com", "/", &h), Some("exact"));
    assert_eq!(pick(&t, "api.example.com:8080", "/", &h), Some("exact"));
    assert_eq!(pick(&t, "www.example.com", "/", &h), Some("suffix"));
    assert_eq!(pick(&t, "a.v2.example.com", "/", &h), Some("longer_suffix"));
    assert_eq!(pick(&t, "api.other.org", "/", &h), Some("prefix"));
    assert_eq!(pick(&t, "unrelated", "/", &h), Some("any"));
    // A port not listed does not match the exact domain.
    assert_eq!(pick(&t, "api.example.com:9090", "/", &h), Some("prefix"));
}

const PATHS: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - name: exact
    match: { path: "/exact" }
    direct_response: { status: 200 }
  - name: regex
    match: { safe_regex: { regex: "/items/[0-9]+" } }
    direct_response: { status: 200 }
  - name: header
    match:
      prefix: "/h"
      headers: [{ name: x-canary, string_match: { exact: "yes" } }]
    direct_response: { status: 200 }
  - name: inverted
    match:
      prefix: "/h"
      headers: [{ name: x-canary, present_match: true, invert_match: true }]
    direct_response: { status: 200 }
  - name: query
    match:
      prefix: "/q"
      query_parameters: [{ name: v, string_match: { exact: "2" } }]
    direct_response: { status: 200 }
  - name: separated
    match: { path_separated_prefix: "/sep" }
    direct_response: { status: 200 }
  - name: nocase
    match: { prefix: "/CaSe", case_sensitive: false }
    direct_response: { status: 200 }
"#;

#[test]
fn path_header_and_query_matchers() {
    let t = table(PATHS);
    let mut h = HeaderMap::new();
    assert_eq!(pick(&t, "x", "/exact", &h), Some("exact"));
    assert_eq!(pick(&t, "x", "/exact?a=1", &h), Some("exact"));
    assert_eq!(pick(&t, "x", "/exactly", &h), None);
    assert_eq!(pick(&t, "x", "/items/42", &h), Some("regex"));
    assert_eq!(pick(&t, "x", "/items/42x", &h), None);
    assert_eq!(pick(&t, "x", "/h", &h), Some("inverted"));
    h.insert("x-canary", "yes".parse().unwrap());
    assert_eq!(pick(&t, "x", "/h", &h), Some("header"));
    h.insert("x-canary", "no".parse().unwrap());
    assert_eq!(pick(&t, "x", "/h", &h), None);
    assert_eq!(pick(&t, "x", "/q?a=1&v=2", &h), Some("query"));
    assert_eq!(pick(&t, "x", "/q?v=3", &h), None);
    assert_eq!(pick(&t, "x", "/sep", &h), Some("separated"));
    assert_eq!(pick(&t, "x", "/sep/x", &h), Some("separated"));
    assert_eq!(pick(&t, "x", "/seps", &h), None);
    assert_eq!(pick(&t, "x", "/case/x", &h), Some("nocase"));
}

#[test]
fn weighted_pick_respects_ranges() {
    let t = table(
        r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    route:
      weighted_clusters:
        clusters: [{ name: a, weight: 10 }, { name: zero, weight: 0 }, { name: b, weight: 90 }]
"#,
    );
    let Action::Forward(f) = &t.vhosts[0].routes[0].action else {
        panic!("forward expected")
    };
    let ClusterTarget::Weighted(w) = &f.target else {
        panic!("weighted expected")
    };
    assert_eq!(w.total, 100);
    let counts = (0..100u64).fold([0; 2], |mut acc, v| {
        match &*w.pick(v).name {
            "a" => acc[0] += 1,
            "b" => acc[1] += 1,
            other => panic!("zero-weight cluster {other} picked"),
        }
        acc
    });
    assert_eq!(counts, [10, 90]);
    assert_eq!(f.timeout, Some(std::time::Duration::from_secs(15)));
}

#[test]
fn invalid_route_configs_name_the_field() {
    let bad = [
        (
            r#"virtual_hosts: [{ name: a, domains: ["*"] }, { name: b, domains: ["*"] }]"#,
            "route_config.virtual_hosts[1].domains",
        ),
        (
            r#"virtual_hosts: [{ name: a, domains: ["*"], routes: [{ match: { safe_regex: { regex: "(" } }, direct_response: { status: 200 } }] }]"#,
            "route_config.virtual_hosts[0].routes[0].match.safe_regex.regex",
        ),
        (
            r#"virtual_hosts: [{ name: a, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { weighted_clusters: { clusters: [{ name: a, weight: 0 }] } } }] }]"#,
            "route_config.virtual_hosts[0].routes[0].route.weighted_clusters.clusters",
        ),
    ];
    for (yaml, path) in bad {
        let rc: RouteConfiguration = xds_client::decode::decode_text_as(
            yaml,
            "envoy.config.route.v3.RouteConfiguration",
            "t",
            Default::default(),
        )
        .unwrap();
        let err = build(&rc, "route_config").expect_err(yaml);
        assert_eq!(err.path, path, "{err}");
    }
}
