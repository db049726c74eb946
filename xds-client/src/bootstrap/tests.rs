use super::*;

fn load_yaml(text: &str) -> Result<LoadedBootstrap, BootstrapError> {
    load(None, Some(text), DecodeOptions::default())
}

const MINIMAL: &str = r#"
static_resources:
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: 8080 }
  listeners:
  - name: http
    address:
      socket_address: { address: 127.0.0.1, port_value: 10000 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: backend }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;

#[test]
fn decodes_typed_config_any_into_prost_types() {
    let loaded = load_yaml(MINIMAL).expect("valid bootstrap");
    let sr = loaded.bootstrap.static_resources.expect("static_resources");
    assert_eq!(sr.clusters[0].name, "backend");
    let filter = &sr.listeners[0].filter_chains[0].filters[0];
    let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) =
        &filter.config_type
    else {
        panic!("typed_config expected");
    };
    assert!(any.type_url.ends_with("HttpConnectionManager"));
    assert!(!any.value.is_empty());
}

#[test]
fn unsupported_field_names_its_path() {
    let text = MINIMAL.replace(
        "    connect_timeout: 0.25s\n",
        "    connect_timeout: 0.25s\n    lb_subset_config: { fallback_policy: ANY_ENDPOINT }\n",
    );
    let err = load_yaml(&text).expect_err("lb_subset_config is refused");
    let msg = err.to_string();
    assert!(
        msg.contains("static_resources.clusters[0].lb_subset_config: not supported"),
        "{msg}"
    );
}

#[test]
fn ignored_field_warns() {
    let text = format!("{MINIMAL}\nlayered_runtime: {{ layers: [] }}\n");
    let loaded = load_yaml(&text).expect("layered_runtime is harmless");
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.starts_with("layered_runtime")),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn unknown_field_is_refused_unless_allowed() {
    let text = MINIMAL.replace(
        "stat_prefix: ingress",
        "stat_prefix: ingress\n          bogus_field: 1",
    );
    let err = load_yaml(&text).expect_err("unknown field refused");
    assert!(err.to_string().contains("bogus_field"), "{err}");
    let ok = load(
        None,
        Some(&text),
        DecodeOptions {
            allow_unknown_fields: true,
        },
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn bad_value_names_field_and_line() {
    let text = MINIMAL.replace("port_value: 8080", "port_value: eighty");
    let err = load_yaml(&text).expect_err("bad port");
    let BootstrapError::Decode(d) = &err else {
        panic!("decode error expected: {err}");
    };
    assert!(d.location.is_some(), "{err}");
    assert!(
        d.path.as_deref().unwrap_or("").contains("clusters[0]"),
        "{err}"
    );
}

#[test]
fn yaml_syntax_error_names_line() {
    let err = load_yaml("static_resources:\n  clusters: [\n").expect_err("syntax");
    let BootstrapError::Decode(d) = &err else {
        panic!("decode error expected: {err}");
    };
    assert!(d.location.is_some(), "{err}");
}

#[test]
fn config_yaml_merges_over_file() {
    let dir = std::env::temp_dir().join(format!("petrel-bootstrap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("b.yaml");
    std::fs::write(&path, MINIMAL).unwrap();
    let overlay = "node: { id: sidecar~1, cluster: c1 }\nstatic_resources:\n  clusters:\n  - name: extra\n    type: STATIC\n";
    let loaded = load(Some(&path), Some(overlay), DecodeOptions::default()).unwrap();
    let node = loaded.bootstrap.node.unwrap();
    assert_eq!(node.id, "sidecar~1");
    let clusters = loaded.bootstrap.static_resources.unwrap().clusters;
    assert_eq!(
        clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["backend", "extra"]
    );
    std::fs::remove_dir_all(&dir).ok();
}
