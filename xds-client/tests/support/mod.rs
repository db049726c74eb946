//! Shared helpers for the ADS integration tests.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use tokio::task::JoinHandle;
use xds_client::ads::test_util::{any, RecordingSink, TestControlPlane};
use xds_client::ads::{connect_channel, AdsClient, AdsConfig, AdsHandle, AdsMode, Backoff};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "xds_client=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn node() -> Node {
    Node {
        id: "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local".into(),
        cluster: "pod.ns".into(),
        ..Default::default()
    }
}

/// Envoy's defaults but with a fast backoff so reconnect tests finish quickly.
pub fn config(mode: AdsMode) -> AdsConfig {
    let mut c = AdsConfig::new(node(), mode);
    c.backoff = Backoff {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    c
}

/// Rejects resources whose name starts with `bad`, like a validating sink would.
pub fn sink() -> Arc<RecordingSink> {
    RecordingSink::rejecting(|r| {
        r.name
            .starts_with("bad")
            .then(|| "lb_policy: RING_HASH without ring_hash_lb_config".to_string())
    })
}

pub struct Running {
    pub handle: AdsHandle,
    pub sink: Arc<RecordingSink>,
    pub task: JoinHandle<()>,
}

pub fn start(cp: &TestControlPlane, config: AdsConfig) -> Running {
    start_with_sink(cp, config, sink())
}

pub fn start_with_sink(
    cp: &TestControlPlane,
    config: AdsConfig,
    sink: Arc<RecordingSink>,
) -> Running {
    let channel = connect_channel(cp.target()).expect("valid target");
    let (client, handle) = AdsClient::new(channel, config, sink.clone());
    let task = tokio::spawn(client.run());
    Running { handle, sink, task }
}

impl Running {
    /// Shuts the client down and checks that it stopped cleanly (no panic).
    pub async fn stop(self) {
        self.handle.shutdown();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("client stops promptly after shutdown")
            .expect("client task did not panic");
    }
}

pub fn cluster(name: &str) -> Any {
    any(&Cluster {
        name: name.into(),
        ..Default::default()
    })
}

pub fn listener(name: &str) -> Any {
    any(&Listener {
        name: name.into(),
        ..Default::default()
    })
}

pub fn route(name: &str) -> Any {
    any(&RouteConfiguration {
        name: name.into(),
        ..Default::default()
    })
}

pub fn cla(name: &str) -> Any {
    any(&ClusterLoadAssignment {
        cluster_name: name.into(),
        ..Default::default()
    })
}

pub fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}
