//! Differential: HTTP/1.1 Upgrade (WebSocket) passthrough. With `upgrade_configs` the 101 and the
//! raw bytes after it pass through; without it the upgrade is refused (Envoy: 403).

use petrel_e2e::client::raw::RawConn;
use petrel_e2e::upstream::RawHttpUpstream;
use petrel_e2e::yaml::{cluster, http_bootstrap_with};
use petrel_e2e::{differential, Observations, Proxy, ProxyKind};
use tracing::info;

const ROUTES: &str = r#"
virtual_hosts:
- name: all
  domains: ["*"]
  routes: [{match: {prefix: "/"}, route: {cluster: ws}}]
"#;

const UPGRADE_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

async fn upgrade_scenario(kind: ProxyKind, enabled: bool) -> anyhow::Result<Observations> {
    let ws = RawHttpUpstream::start().await?;
    let hcm = if enabled {
        "upgrade_configs: [{upgrade_type: websocket}]"
    } else {
        ""
    };
    let yaml = http_bootstrap_with(hcm, ROUTES, &[cluster("ws", &[ws.addr()])]);
    let proxy = Proxy::start(kind, &yaml, &[]).await?;
    let mut obs = Observations::new(kind);

    let mut conn = RawConn::connect(proxy.addr("http")).await?;
    conn.write(UPGRADE_REQUEST).await?;
    let resp = conn.read_response().await?;
    info!(%kind, enabled, head = %resp.head, "upgrade response");
    obs.record("status", resp.status);
    if enabled {
        anyhow::ensure!(
            resp.status == 101,
            "{kind}: upgrade answered {}",
            resp.status
        );
        anyhow::ensure!(
            resp.header("upgrade")
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
            "{kind}: 101 lacks upgrade header: {}",
            resp.head
        );
        let heads = ws.heads();
        anyhow::ensure!(
            heads.len() == 1
                && heads[0]
                    .to_ascii_lowercase()
                    .contains("\r\nupgrade: websocket"),
            "{kind}: upstream saw {heads:?}"
        );
        for msg in [&b"\x81\x05hello"[..], &b"binary \x00\x01\x02 frames"[..]] {
            conn.write(msg).await?;
            let back = conn.read_exact(msg.len()).await?;
            anyhow::ensure!(back == msg, "{kind}: tunnel echoed {back:?}");
        }
        obs.record("tunnel", "echoes raw bytes both ways");
    } else {
        anyhow::ensure!(
            resp.status == 403,
            "{kind}: unconfigured upgrade answered {}",
            resp.status
        );
        anyhow::ensure!(
            ws.heads().is_empty(),
            "{kind}: refused upgrade reached the upstream"
        );
    }
    Ok(obs)
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    differential(|kind| upgrade_scenario(kind, true)).await;
}

#[tokio::test]
async fn websocket_upgrade_refused_without_upgrade_configs() {
    differential(|kind| upgrade_scenario(kind, false)).await;
}
