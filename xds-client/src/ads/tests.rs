//! Protocol decisions checked on the engine alone, without a network.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryResponse};
use tokio::sync::mpsc;

use super::delta::Delta;
use super::engine::{Command, Engine, Protocol};
use super::sotw::Sotw;
use super::test_util::any;
use super::*;

/// (version_info, resource names, removed names) of one apply.
type Applied = (String, Vec<String>, Vec<String>);

#[derive(Default)]
struct Sink(Mutex<Vec<Applied>>);

impl ResourceSink for Sink {
    fn apply(&self, u: ResourceUpdate<'_>) -> Vec<Rejection> {
        let names = u.resources.iter().map(|r| r.name.clone()).collect();
        self.0
            .lock()
            .unwrap()
            .push((u.version_info.to_string(), names, u.removed.to_vec()));
        Vec::new()
    }
}

fn engine(
    mode: AdsMode,
    f: impl FnOnce(&mut AdsConfig),
) -> (Engine, mpsc::UnboundedSender<Command>, Arc<Sink>) {
    let mut config = AdsConfig::new(
        Node {
            id: "n".into(),
            ..Default::default()
        },
        mode,
    );
    f(&mut config);
    let sink = Arc::new(Sink::default());
    let stats = Arc::new(AdsStats::new(
        config.types.iter().map(|t| t.type_url.as_str()),
    ));
    let (tx, rx) = mpsc::unbounded_channel();
    (Engine::new(&config, sink.clone(), stats, rx), tx, sink)
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn cds(version: &str, nonce: &str, clusters: &[&str]) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        nonce: nonce.into(),
        type_url: type_url::CLUSTER.into(),
        resources: clusters
            .iter()
            .map(|n| {
                any(&Cluster {
                    name: n.to_string(),
                    ..Default::default()
                })
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn node_only_on_first_request_when_configured() {
    let (mut e, _, _) = engine(AdsMode::StateOfTheWorld, |c| {
        c.set_node_on_first_message_only = true
    });
    let reqs = e.begin_stream::<Sotw>();
    assert_eq!(reqs.len(), 2);
    assert!(reqs[0].node.is_some());
    assert!(reqs[1].node.is_none());
    let acks = Sotw::response(&mut e, cds("1", "a", &["x"]));
    assert!(acks[0].node.is_none());
    e.end_stream();
    assert!(
        e.begin_stream::<Sotw>()[0].node.is_some(),
        "again on a new stream"
    );
}

#[test]
fn interest_changed_offline_goes_out_with_the_next_stream() {
    let (mut e, _, _) = engine(AdsMode::StateOfTheWorld, |_| {});
    e.begin_stream::<Sotw>();
    e.end_stream();
    let cmd = Command::SetInterest {
        type_url: type_url::ENDPOINT.into(),
        interest: Interest::Names(names(&["a"])),
    };
    assert!(
        e.command::<Sotw>(cmd).is_empty(),
        "nothing is sent while down"
    );
    let reqs = e.begin_stream::<Sotw>();
    let urls: Vec<_> = reqs.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(
        urls,
        [type_url::CLUSTER, type_url::ENDPOINT, type_url::LISTENER]
    );
    assert_eq!(reqs[1].resource_names, ["a"]);
}

#[test]
fn sotw_keeps_refused_known_resources_and_removes_omitted_ones() {
    let (mut e, _, sink) = engine(AdsMode::StateOfTheWorld, |_| {});
    e.begin_stream::<Sotw>();
    Sotw::response(&mut e, cds("1", "a", &["x", "y"]));
    Sotw::response(&mut e, cds("2", "b", &["x"]));
    let got = sink.0.lock().unwrap().clone();
    assert_eq!(got[1], ("2".into(), vec!["x".into()], vec!["y".into()]));
    let t = &e.types[e.index(type_url::CLUSTER).unwrap()];
    assert_eq!(t.version_info, "2");
    assert_eq!(t.known, names(&["x"]));
}

#[test]
fn delta_wildcard_switch_to_names_unsubscribes_star() {
    let (mut e, _, _) = engine(AdsMode::Delta, |_| {});
    let opening: Vec<DeltaDiscoveryRequest> = e.begin_stream::<Delta>();
    assert!(opening[0].resource_names_subscribe.is_empty());
    let cmd = Command::SetInterest {
        type_url: type_url::CLUSTER.into(),
        interest: Interest::Names(names(&["a"])),
    };
    let reqs = e.command::<Delta>(cmd);
    assert_eq!(reqs[0].resource_names_subscribe, ["a"]);
    assert_eq!(reqs[0].resource_names_unsubscribe, ["*"]);
}
