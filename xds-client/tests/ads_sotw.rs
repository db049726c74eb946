//! State-of-the-world ADS against a real tonic control plane.
mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::google::protobuf::Any;
use support::*;
use tracing::info;
use xds_client::ads::test_util::{sotw_response, TestControlPlane};
use xds_client::ads::{type_url, AdsMode, Interest, TypeConfig};

#[tokio::test]
async fn initial_wildcard_cds_then_lds_then_ack() {
    init_tracing();
    let cp = TestControlPlane::tcp().await.unwrap();
    let c = start(&cp, config(AdsMode::StateOfTheWorld));

    info!("the opening requests are wildcard CDS then LDS; named types with no names wait");
    let (i_cds, cds) = cp.wait_sotw(0, |r| r.type_url == type_url::CLUSTER).await;
    let (i_lds, lds) = cp.wait_sotw(0, |r| r.type_url == type_url::LISTENER).await;
    assert!(i_cds < i_lds, "CDS is requested before LDS");
    for r in [&cds, &lds] {
        assert!(r.resource_names.is_empty(), "wildcard: {r:?}");
        assert_eq!(r.version_info, "");
        assert_eq!(r.response_nonce, "");
        assert_eq!(r.node.as_ref().unwrap().id, node().id);
    }
    assert!(!cp
        .requests()
        .iter()
        .any(|r| r.type_url() == type_url::ENDPOINT || r.type_url() == type_url::ROUTE));

    info!("a response is applied and ACKed with its version and nonce");
    let nonce = cp.push_sotw(sotw_response(
        type_url::CLUSTER,
        "v1",
        vec![cluster("a"), cluster("b")],
    ));
    let (_, u) = c
        .sink
        .wait_update(0, |u| u.type_url == type_url::CLUSTER)
        .await;
    assert_eq!(u.version_info, "v1");
    assert!(u.state_of_the_world);
    assert_eq!(
        u.resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(u.resources[0].decode::<Cluster>().unwrap().name, "a");
    let (_, ack) = cp.wait_sotw(i_lds + 1, |r| r.response_nonce == nonce).await;
    assert_eq!(ack.type_url, type_url::CLUSTER);
    assert_eq!(ack.version_info, "v1");
    assert!(ack.error_detail.is_none());
    assert!(ack.resource_names.is_empty());

    let stats = c.handle.stats().clone();
    assert_eq!(stats.connected_state.load(Ordering::Relaxed), 1);
    let cds_stats = stats.for_type(type_url::CLUSTER).unwrap();
    assert_eq!(cds_stats.update_attempt.load(Ordering::Relaxed), 1);
    assert_eq!(cds_stats.update_success.load(Ordering::Relaxed), 1);
    assert_eq!(c.sink.connection_changes(), [true]);
    c.stop().await;
}

#[tokio::test]
async fn nack_names_bad_resource_while_good_ones_are_applied() {
    init_tracing();
    let cp = TestControlPlane::tcp().await.unwrap();
    let c = start(&cp, config(AdsMode::StateOfTheWorld));
    cp.wait_sotw(0, |r| r.type_url == type_url::CLUSTER).await;
    let n1 = cp.push_sotw(sotw_response(type_url::CLUSTER, "v1", vec![cluster("a")]));
    let (from, _) = cp.wait_sotw(0, |r| r.response_nonce == n1).await;

    info!("v2 has one bad cluster between two good ones");
    let n2 = cp.push_sotw(sotw_response(
        type_url::CLUSTER,
        "v2",
        vec![cluster("a"), cluster("bad-1"), cluster("b")],
    ));
    let (_, u) = c.sink.wait_update(1, |u| u.version_info == "v2").await;
    assert_eq!(
        u.resources.len(),
        3,
        "every resource reaches the sink: {u:?}"
    );
    let (from, nack) = cp.wait_sotw(from + 1, |r| r.response_nonce == n2).await;
    assert_eq!(
        nack.version_info, "v1",
        "a NACK carries the last accepted version"
    );
    let detail = nack.error_detail.expect("NACK has error_detail");
    assert_eq!(
        detail.code,
        tonic::Code::Internal as i32,
        "Envoy's NACK code"
    );
    assert_eq!(
        detail.message,
        "Error adding/updating cluster(s) bad-1: lb_policy: RING_HASH without ring_hash_lb_config"
    );

    info!("bad-1 was never applied, so omitting it later does not remove it");
    let n3 = cp.push_sotw(sotw_response(
        type_url::CLUSTER,
        "v3",
        vec![cluster("a"), cluster("b")],
    ));
    let (_, u) = c.sink.wait_update(2, |u| u.version_info == "v3").await;
    assert!(u.removed.is_empty(), "{u:?}");
    let (_, ack) = cp.wait_sotw(from + 1, |r| r.response_nonce == n3).await;
    assert_eq!(ack.version_info, "v3");
    assert!(ack.error_detail.is_none());

    let s = c.handle.stats().for_type(type_url::CLUSTER).unwrap();
    assert_eq!(s.update_attempt.load(Ordering::Relaxed), 3);
    assert_eq!(s.update_success.load(Ordering::Relaxed), 2);
    assert_eq!(s.update_rejected.load(Ordering::Relaxed), 1);
    c.stop().await;
}

#[tokio::test]
async fn wildcard_omission_removes_and_listener_nack_uses_envoy_wording() {
    init_tracing();
    let cp = TestControlPlane::tcp().await.unwrap();
    let c = start(&cp, config(AdsMode::StateOfTheWorld));
    cp.wait_sotw(0, |r| r.type_url == type_url::LISTENER).await;
    cp.push_sotw(sotw_response(
        type_url::LISTENER,
        "1",
        vec![listener("l1"), listener("l2")],
    ));
    c.sink.wait_update(0, |u| u.version_info == "1").await;
    let n = cp.push_sotw(sotw_response(
        type_url::LISTENER,
        "2",
        vec![listener("l1"), listener("bad")],
    ));
    let (_, u) = c.sink.wait_update(1, |u| u.version_info == "2").await;
    assert_eq!(u.removed, ["l2"]);
    let (_, nack) = cp.wait_sotw(0, |r| r.response_nonce == n).await;
    assert_eq!(nack.version_info, "1");
    assert_eq!(
        nack.error_detail.unwrap().message,
        "Error adding/updating listener(s) bad: lb_policy: RING_HASH without ring_hash_lb_config\n"
    );
    c.stop().await;
}

#[tokio::test]
async fn eds_and_rds_subscriptions_follow_the_handle() {
    init_tracing();
    let cp = TestControlPlane::tcp().await.unwrap();
    let c = start(&cp, config(AdsMode::StateOfTheWorld));
    info!("the sink subscribes EDS to the clusters it receives, from inside apply");
    let handle = c.handle.clone();
    c.sink.on_apply(move |u| {
        if u.type_url == type_url::CLUSTER {
            let names = u.resources.iter().map(|r| r.name.clone()).collect();
            handle.set_subscriptions(type_url::ENDPOINT, names).unwrap();
        }
    });
    cp.wait_sotw(0, |r| r.type_url == type_url::LISTENER).await;
    let n1 = cp.push_sotw(sotw_response(
        type_url::CLUSTER,
        "c1",
        vec![cluster("a"), cluster("b")],
    ));
    let (i_eds, eds) = cp.wait_sotw(0, |r| r.type_url == type_url::ENDPOINT).await;
    assert_eq!(eds.resource_names, ["a", "b"]);
    assert_eq!(eds.version_info, "");
    let (i_ack, _) = cp.wait_sotw(0, |r| r.response_nonce == n1).await;
    assert!(
        i_eds < i_ack,
        "as in Envoy, EDS interest goes out before the CDS ACK"
    );

    info!("EDS responses are applied without SotW removal semantics");
    let n2 = cp.push_sotw(sotw_response(
        type_url::ENDPOINT,
        "e1",
        vec![cla("a"), cla("zzz")],
    ));
    let (_, u) = c
        .sink
        .wait_update(0, |u| u.type_url == type_url::ENDPOINT)
        .await;
    assert_eq!(u.resources.len(), 1, "unrequested names are ignored: {u:?}");
    assert!(!u.state_of_the_world);
    assert!(u.removed.is_empty());
    let (mut from, ack) = cp.wait_sotw(0, |r| r.response_nonce == n2).await;
    assert_eq!(ack.version_info, "e1");
    assert_eq!(ack.resource_names, ["a", "b"]);

    info!("RDS: a new set sends a request; the same set again sends nothing");
    c.handle
        .set_subscriptions(type_url::ROUTE, names(&["r1"]))
        .unwrap();
    let (i, rds) = cp
        .wait_sotw(from + 1, |r| r.type_url == type_url::ROUTE)
        .await;
    assert_eq!(rds.resource_names, ["r1"]);
    from = i;
    c.handle
        .set_subscriptions(type_url::ROUTE, names(&["r1"]))
        .unwrap();
    c.handle
        .set_subscriptions(type_url::ROUTE, names(&["r1", "r2"]))
        .unwrap();
    let (i, rds) = cp
        .wait_sotw(from + 1, |r| r.type_url == type_url::ROUTE)
        .await;
    assert_eq!(
        rds.resource_names,
        ["r1", "r2"],
        "the unchanged set sent nothing"
    );
    from = i;
    let n3 = cp.push_sotw(sotw_response(
        type_url::ROUTE,
        "r-1",
        vec![route("r1"), route("r2")],
    ));
    cp.wait_sotw(from + 1, |r| r.response_nonce == n3).await;

    info!("shrinking the set re-requests with the current version and nonce");
    c.handle
        .set_subscriptions(type_url::ROUTE, names(&["r2"]))
        .unwrap();
    let (_, rds) = cp
        .wait_sotw(from + 1, |r| {
            r.type_url == type_url::ROUTE && r.resource_names == ["r2"]
        })
        .await;
    assert_eq!(rds.version_info, "r-1");
    assert_eq!(rds.response_nonce, n3);

    assert!(c
        .handle
        .set_subscriptions("type.googleapis.com/not.Declared", names(&["x"]))
        .is_err());
    c.stop().await;
}

#[tokio::test]
async fn unknown_type_url_is_nacked_and_stream_continues() {
    init_tracing();
    let cp = TestControlPlane::tcp().await.unwrap();
    let c = start(&cp, config(AdsMode::StateOfTheWorld));
    cp.wait_sotw(0, |r| r.type_url == type_url::LISTENER).await;
    let odd = "type.googleapis.com/example.Unknown";
    let n = cp.push_sotw(sotw_response(
        odd,
        "1",
        vec![Any {
            type_url: odd.into(),
            value: vec![0x0a, 0x01, b'x'],
        }],
    ));
    let (_, nack) = cp.wait_sotw(0, |r| r.response_nonce == n).await;
    assert_eq!(nack.type_url, odd);
    assert_eq!(nack.version_info, "");
    assert!(nack.error_detail.unwrap().message.contains(odd));

    let n = cp.push_sotw(sotw_response(type_url::CLUSTER, "v1", vec![cluster("a")]));
    let (_, ack) = cp.wait_sotw(0, |r| r.response_nonce == n).await;
    assert_eq!(ack.version_info, "v1");
    assert_eq!(cp.streams_opened(), 1, "no reconnect was needed");
    c.stop().await;
}

#[tokio::test]
async fn undecodable_resource_is_rejected_by_name_and_wrong_type_rejects_response() {
    init_tracing();
    let cp = TestControlPlane::tcp().await.unwrap();
    let c = start(&cp, config(AdsMode::StateOfTheWorld));
    cp.wait_sotw(0, |r| r.type_url == type_url::LISTENER).await;

    info!("garbage bytes inside an Any: that entry is refused, the rest applies");
    let garbage = Any {
        type_url: type_url::CLUSTER.into(),
        value: vec![0x0a, 0xff, 0xff, 0xff],
    };
    let n = cp.push_sotw(sotw_response(
        type_url::CLUSTER,
        "v1",
        vec![garbage, cluster("ok")],
    ));
    let (_, u) = c.sink.wait_update(0, |u| u.version_info == "v1").await;
    assert_eq!(u.resources.len(), 1);
    let (_, nack) = cp.wait_sotw(0, |r| r.response_nonce == n).await;
    let msg = nack.error_detail.unwrap().message;
    assert!(msg.contains("resources[0]"), "{msg}");

    info!("a Listener inside a CDS response: nothing is applied");
    let n = cp.push_sotw(sotw_response(
        type_url::CLUSTER,
        "v2",
        vec![cluster("ok"), listener("l")],
    ));
    let (_, nack) = cp.wait_sotw(0, |r| r.response_nonce == n).await;
    assert_eq!(nack.version_info, "", "v1 was NACKed, nothing accepted yet");
    assert!(nack
        .error_detail
        .unwrap()
        .message
        .contains("does not match the message-wide type URL"));
    assert!(c.sink.updates().iter().all(|u| u.version_info != "v2"));
    c.stop().await;
}

#[tokio::test]
async fn initial_fetch_timeout_notifies_sink_once() {
    init_tracing();
    let cp = TestControlPlane::tcp().await.unwrap();
    let mut cfg = config(AdsMode::StateOfTheWorld);
    for t in &mut cfg.types {
        t.initial_fetch_timeout = Some(Duration::from_millis(200));
    }
    cfg.types.push(TypeConfig {
        type_url: type_url::SECRET.into(),
        interest: Interest::Names(names(&["cert"])),
        initial_fetch_timeout: None,
    });
    let c = start(&cp, cfg);
    cp.wait_sotw(0, |r| r.type_url == type_url::LISTENER).await;
    cp.push_sotw(sotw_response(type_url::CLUSTER, "v1", vec![]));
    c.sink
        .wait_for("LDS fetch timeout", |s| {
            s.fetch_timeouts().contains(&type_url::LISTENER.to_string())
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.sink.fetch_timeouts(),
        [type_url::LISTENER],
        "CDS answered; SDS has no timeout"
    );
    let s = c.handle.stats();
    assert_eq!(
        s.for_type(type_url::LISTENER)
            .unwrap()
            .init_fetch_timeout
            .load(Ordering::Relaxed),
        1
    );
    c.stop().await;
}

#[tokio::test]
async fn unix_socket_control_plane() {
    init_tracing();
    let dir = std::env::temp_dir().join(format!("petrel-ads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("XDS");
    let cp = TestControlPlane::unix(&path).await.unwrap();
    let c = start(&cp, config(AdsMode::StateOfTheWorld));
    cp.wait_sotw(0, |r| r.type_url == type_url::CLUSTER).await;
    let n = cp.push_sotw(sotw_response(type_url::CLUSTER, "v1", vec![cluster("a")]));
    let (_, ack) = cp.wait_sotw(0, |r| r.response_nonce == n).await;
    assert_eq!(ack.version_info, "v1");
    c.stop().await;
    cp.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
