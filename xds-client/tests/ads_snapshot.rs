//! The test control plane's snapshot mode, which the end-to-end tests build on.
mod support;

use support::*;
use tracing::info;
use xds_client::ads::test_util::TestControlPlane;
use xds_client::ads::{type_url, AdsMode};

#[tokio::test]
async fn sotw_snapshot_serves_subscriptions_and_survives_restart() {
    init_tracing();
    let cp = TestControlPlane::tcp().await.unwrap();
    cp.set_resources(type_url::CLUSTER, "c1", vec![cluster("a"), cluster("b")]);
    cp.set_resources(type_url::ENDPOINT, "e1", vec![cla("a"), cla("b")]);
    let c = start(&cp, config(AdsMode::StateOfTheWorld));
    let handle = c.handle.clone();
    c.sink.on_apply(move |u| {
        if u.type_url == type_url::CLUSTER {
            let names = u.resources.iter().map(|r| r.name.clone()).collect();
            handle.set_subscriptions(type_url::ENDPOINT, names).unwrap();
        }
    });
    let (_, u) = c
        .sink
        .wait_update(0, |u| u.type_url == type_url::ENDPOINT)
        .await;
    assert_eq!(u.resources.len(), 2);
    cp.wait_sotw(0, |r| {
        r.type_url == type_url::ENDPOINT && r.version_info == "e1"
    })
    .await;

    info!("an update to the snapshot is pushed; omission removes");
    cp.set_resources(type_url::CLUSTER, "c2", vec![cluster("a")]);
    let (_, u) = c.sink.wait_update(0, |u| u.version_info == "c2").await;
    assert_eq!(u.removed, ["b"]);
    cp.wait_sotw(0, |r| {
        r.type_url == type_url::ENDPOINT && r.resource_names == ["a"]
    })
    .await;

    info!("restart: the client re-requests at c2, which the new server already has");
    let addr = cp.local_addr().unwrap();
    cp.shutdown().await;
    let cp = TestControlPlane::tcp_at(addr).await.unwrap();
    cp.set_resources(type_url::CLUSTER, "c2", vec![cluster("a")]);
    cp.wait_sotw(0, |r| r.type_url == type_url::LISTENER).await;
    cp.set_resources(type_url::CLUSTER, "c3", vec![cluster("a"), cluster("z")]);
    let (_, u) = c.sink.wait_update(0, |u| u.version_info == "c3").await;
    assert!(u.removed.is_empty());
    assert_eq!(
        c.sink
            .updates()
            .iter()
            .filter(|u| u.version_info == "c2")
            .count(),
        1,
        "c2 was not resent after the restart"
    );
    c.stop().await;
}

#[tokio::test]
async fn delta_snapshot_sends_only_what_the_client_lacks_after_restart() {
    init_tracing();
    let cp = TestControlPlane::tcp().await.unwrap();
    cp.set_resources(type_url::CLUSTER, "1", vec![cluster("a"), cluster("b")]);
    let c = start(&cp, config(AdsMode::Delta));
    let (_, u) = c
        .sink
        .wait_update(0, |u| u.type_url == type_url::CLUSTER)
        .await;
    assert_eq!(u.resources.len(), 2);

    let addr = cp.local_addr().unwrap();
    cp.shutdown().await;
    let cp = TestControlPlane::tcp_at(addr).await.unwrap();
    info!("the new server has a changed and b removed, c added");
    cp.set_resources(type_url::CLUSTER, "2", vec![cluster("c")]);
    cp.set_resources(type_url::CLUSTER, "3", vec![cluster("a"), cluster("c")]);
    let (_, r) = cp.wait_delta(0, |r| r.type_url == type_url::CLUSTER).await;
    assert_eq!(r.initial_resource_versions.len(), 2);
    let (_, u) = c
        .sink
        .wait_update(1, |u| u.type_url == type_url::CLUSTER)
        .await;
    assert_eq!(sorted(&u.removed), ["b"]);
    let mut got: Vec<_> = u
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("a".to_string(), "3".to_string()),
            ("c".to_string(), "2".to_string())
        ]
    );
    c.stop().await;
}
