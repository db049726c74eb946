//! Differential: the Envoy command line — `--mode validate`, `--config-yaml` merged over the
//! file, `--version`, and rejection of unknown flags.

use petrel_e2e::client::{HttpClient, Proto};
use petrel_e2e::proxy::{run_cli, validate};
use petrel_e2e::yaml::{cluster, http_bootstrap};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind, Upstream};
use std::net::SocketAddr;
use tracing::info;

const TO_B: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes: [{match: {prefix: "/"}, route: {cluster: b}}]
"#;

fn some_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9))
}

async fn validate_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let mut obs = Observations::new(kind);
    let good = http_bootstrap(TO_B, &[cluster("b", &[some_addr()])]);
    let cases = [
        ("valid", good.clone(), true),
        (
            "yaml syntax error",
            format!("{good}\n  : : [unclosed\n"),
            false,
        ),
        (
            "unknown field",
            good.replace("stat_prefix:", "no_such_field: 1\n          stat_prefix:"),
            false,
        ),
        (
            "route to unknown cluster",
            http_bootstrap(TO_B, &[cluster("other", &[some_addr()])]),
            false,
        ),
        (
            "bad enum value",
            good.replace("type: STATIC", "type: NOT_A_TYPE"),
            false,
        ),
    ];
    for (what, yaml, ok) in cases {
        let out = validate(kind, &yaml).await?;
        info!(%kind, what, status = %out.status, stderr = %String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        anyhow::ensure!(
            out.status.success() == ok,
            "{kind}: validate {what}: {} (want success={ok})\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            !stderr.contains("panicked at"),
            "{kind}: validate {what} panicked:\n{stderr}"
        );
        obs.record(format!("validate {what}"), out.status.success());
    }
    Ok(obs)
}

#[tokio::test]
async fn mode_validate_accepts_and_rejects_like_envoy() {
    differential(validate_scenario).await;
}

async fn config_yaml_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let b = Upstream::start("b").await?;
    // The file has no cluster `b`; --config-yaml adds it (repeated fields append on merge).
    let file = http_bootstrap(TO_B, &[]);
    let extra = format!(
        "static_resources: {{clusters: [{}]}}",
        cluster("b", &[b.addr()])
    );
    let proxy = Proxy::start(kind, &file, &["--config-yaml", &extra]).await?;
    let mut obs = Observations::new(kind);
    let r = HttpClient::connect(proxy.addr("http"), Proto::Http1)
        .await?
        .get("x.test", "/")
        .await?;
    anyhow::ensure!(
        r.status == 200 && r.upstream() == Some("b"),
        "{kind}: {} from {:?}",
        r.status,
        r.upstream()
    );
    obs.record("served by", r.upstream().map(str::to_owned));
    Ok(obs)
}

#[tokio::test]
async fn config_yaml_merges_over_file() {
    differential(config_yaml_scenario).await;
}

async fn flags_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let mut obs = Observations::new(kind);
    let out = run_cli(kind, &["--version"]).await?;
    anyhow::ensure!(
        out.status.success(),
        "{kind}: --version exited {}",
        out.status
    );
    anyhow::ensure!(
        !out.stdout.is_empty(),
        "{kind}: --version printed nothing on stdout"
    );
    obs.record("--version success", true);
    let out = run_cli(kind, &["--no-such-flag"]).await?;
    anyhow::ensure!(!out.status.success(), "{kind}: unknown flag accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        stderr.contains("no-such-flag"),
        "{kind}: error does not name the flag: {stderr}"
    );
    obs.record("unknown flag rejected", true);
    Ok(obs)
}

#[tokio::test]
async fn version_and_unknown_flags() {
    differential(flags_scenario).await;
}

async fn node_flags_scenario(kind: ProxyKind) -> anyhow::Result<Observations> {
    let b = Upstream::start("b").await?;
    let yaml = http_bootstrap(TO_B, &[cluster("b", &[b.addr()])]);
    let args = [
        "--service-node",
        "node-1",
        "--service-cluster",
        "cluster-1",
        "--drain-time-s",
        "7",
    ];
    let proxy = Proxy::start(kind, &yaml, &args).await?;
    let mut obs = Observations::new(kind);
    let info: serde_json::Value =
        serde_json::from_slice(&proxy.admin().get("/server_info").await?.body)?;
    let node = &info["node"];
    anyhow::ensure!(
        node["id"] == "node-1" && node["cluster"] == "cluster-1",
        "{kind}: node {node}"
    );
    let opts = &info["command_line_options"];
    obs.record("node.id", node["id"].clone());
    obs.record("node.cluster", node["cluster"].clone());
    obs.record("options.service_node", opts["service_node"].clone());
    obs.record("options.service_cluster", opts["service_cluster"].clone());
    obs.record("options.drain_time", opts["drain_time"].clone());
    obs.record("options.mode", opts["mode"].clone());
    Ok(obs)
}

#[tokio::test]
async fn service_node_and_cluster_flags_reach_server_info() {
    differential(node_flags_scenario).await;
}
