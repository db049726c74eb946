//! Misbehaving control planes: restarts, closed streams, garbage, hangs, floods.
mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tracing::info;
use xds_client::ads::test_util::{sotw_response, TestControlPlane};
use xds_client::ads::{connect_channel, type_url, AdsClient, AdsMode, XdsTarget};

#[tokio::test]
async fn sotw_restart_rerequests_with_last_versions_in_order() {
    init_tracing();
    let cp = TestControlPlane::tcp().await.unwrap();
    let c = start(&cp, config(AdsMode::StateOfTheWorld));
    c.handle
        .set_subscriptions(type_url::ENDPOINT, names(&["a"]))
        .unwrap();
    c.handle
        .set_subscriptions(type_url::ROUTE, names(&["r"]))
        .unwrap();
    cp.wait_sotw(0, |r| r.type_url == type_url::ROUTE).await;
    for (t, v, res) in [
        (type_url::CLUSTER, "c1", cluster("a")),
        (type_url::ENDPOINT, "e1", cla("a")),
        (type_url::LISTENER, "l1", listener("l")),
        (type_url::ROUTE, "r1", route("r")),
    ] {
        let n = cp.push_sotw(sotw_response(t, v, vec![res]));
        cp.wait_sotw(0, |r| r.response_nonce == n).await;
    }

    info!("restart the control plane on the same port");
    let addr = cp.local_addr().unwrap();
    cp.shutdown().await;
    let cp = TestControlPlane::tcp_at(addr).await.unwrap();
    let (i0, cds) = cp.wait_sotw(0, |r| r.type_url == type_url::CLUSTER).await;
    let (i1, eds) = cp.wait_sotw(0, |r| r.type_url == type_url::ENDPOINT).await;
    let (i2, lds) = cp.wait_sotw(0, |r| r.type_url == type_url::LISTENER).await;
    let (i3, rds) = cp.wait_sotw(0, |r| r.type_url == type_url::ROUTE).await;
    assert!(i0 < i1 && i1 < i2 && i2 < i3, "CDS, EDS, LDS, RDS");
    for (r, v) in [(&cds, "c1"), (&eds, "e1"), (&lds, "l1"), (&rds, "r1")] {
        assert_eq!(r.version_info, v, "{r:?}");
        assert_eq!(r.response_nonce, "", "nonces do not survive a stream");
    }
    assert_eq!(eds.resource_names, ["a"]);
    assert_eq!(rds.resource_names, ["r"]);
    c.sink
        .wait_for("reconnect", |s| {
            s.connection_changes() == [true, false, true]
        })
        .await;
    assert!(
        c.handle
            .stats()
            .for_type(type_url::CLUSTER)
            .unwrap()
            .update_failure
            .load(Ordering::Relaxed)
            >= 1
    );
    c.stop().await;
}

#[tokio::test]
async fn closed_or_failed_streams_reconnect_without_losing_state() {
    init_tracing();
    let cp = TestControlPlane::tcp().await.unwrap();
    let c = start(&cp, config(AdsMode::StateOfTheWorld));
    cp.wait_sotw(0, |r| r.type_url == type_url::LISTENER).await;
    let n = cp.push_sotw(sotw_response(type_url::CLUSTER, "v1", vec![cluster("a")]));
    cp.wait_sotw(0, |r| r.response_nonce == n).await;

    info!("clean end of stream");
    cp.close_streams(None);
    cp.wait_streams(2).await;
    let (_, r) = cp
        .wait_request(0, |r| r.stream() == 1 && r.type_url() == type_url::CLUSTER)
        .await;
    let xds_client::ads::test_util::Recorded::Sotw { request, .. } = r else {
        panic!()
    };
    assert_eq!(request.version_info, "v1");

    info!("stream ended with an error status");
    cp.close_streams(Some(tonic::Status::internal("boom")));
    cp.wait_streams(3).await;
    info!("nothing was removed by the disconnects");
    assert!(c.sink.updates().iter().all(|u| u.removed.is_empty()));
    c.stop().await;
}

#[tokio::test]
async fn flood_of_versions_is_processed_in_order() {
    init_tracing();
    let cp = TestControlPlane::tcp().await.unwrap();
    let c = start(&cp, config(AdsMode::StateOfTheWorld));
    cp.wait_sotw(0, |r| r.type_url == type_url::LISTENER).await;
    let mut last = String::new();
    for v in 0..500 {
        last = cp.push_sotw(sotw_response(
            type_url::CLUSTER,
            &format!("v{v}"),
            vec![cluster("a"), cluster(&format!("c{v}"))],
        ));
    }
    let (_, ack) = cp.wait_sotw(0, |r| r.response_nonce == last).await;
    assert_eq!(ack.version_info, "v499");
    let s = c.handle.stats().for_type(type_url::CLUSTER).unwrap();
    assert_eq!(s.update_success.load(Ordering::Relaxed), 500);
    let (_, u) = c.sink.wait_update(0, |u| u.version_info == "v499").await;
    assert_eq!(u.removed, ["c498"]);
    c.stop().await;
}

#[tokio::test]
async fn garbage_speaking_server_never_panics_the_client() {
    init_tracing();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\n\r\n\x00\xff\xfe garbage \x07\x07")
                .await;
            let _ = s.shutdown().await;
        }
    });
    let sink = sink();
    let channel = connect_channel(&XdsTarget::parse(&format!("http://{addr}")).unwrap()).unwrap();
    let (client, handle) = AdsClient::new(channel, config(AdsMode::StateOfTheWorld), sink.clone());
    let task = tokio::spawn(client.run());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!task.is_finished(), "the client keeps retrying");
    assert!(handle.stats().stream_failures.load(Ordering::Relaxed) >= 2);
    assert!(sink.connection_changes().is_empty(), "never connected");
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    server.abort();
}

#[tokio::test]
async fn hung_server_keeps_the_handle_responsive() {
    init_tracing();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // accept, then say nothing
        }
    });
    let sink = sink();
    let channel = connect_channel(&XdsTarget::parse(&format!("http://{addr}")).unwrap()).unwrap();
    let (client, handle) = AdsClient::new(channel, config(AdsMode::Delta), sink.clone());
    let task = tokio::spawn(client.run());
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle
        .set_subscriptions(type_url::ENDPOINT, names(&["a"]))
        .unwrap();
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.stats().connected_state.load(Ordering::Relaxed), 0);
    server.abort();
}

#[tokio::test]
async fn control_plane_down_at_startup_is_retried() {
    init_tracing();
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let sink = sink();
    let channel = connect_channel(&XdsTarget::parse(&format!("http://{addr}")).unwrap()).unwrap();
    let (client, handle) = AdsClient::new(channel, config(AdsMode::StateOfTheWorld), sink.clone());
    let task = tokio::spawn(client.run());
    tokio::time::sleep(Duration::from_millis(300)).await;
    info!("the control plane comes up late");
    let cp = TestControlPlane::tcp_at(addr).await.unwrap();
    let (_, r) = cp.wait_sotw(0, |r| r.type_url == type_url::CLUSTER).await;
    assert_eq!(r.version_info, "");
    sink.wait_for("connected", |s| s.connection_changes() == [true])
        .await;
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn undecodable_grpc_frames_end_the_stream_not_the_client() {
    init_tracing();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    info!("a valid HTTP/2 + gRPC server whose messages are not protobuf");
    let server = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                let mut open = Vec::new();
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let head = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let Ok(mut body) = respond.send_response(head, false) else {
                        continue;
                    };
                    let frame = [0u8, 0, 0, 0, 6, 0x0a, 0xff, 0xff, 0xff, 0xff, 0xff];
                    let _ = body.send_data(bytes::Bytes::copy_from_slice(&frame), false);
                    open.push(body);
                }
            });
        }
    });
    let sink = sink();
    let channel = connect_channel(&XdsTarget::parse(&format!("http://{addr}")).unwrap()).unwrap();
    let (client, handle) = AdsClient::new(channel, config(AdsMode::StateOfTheWorld), sink.clone());
    let task = tokio::spawn(client.run());
    sink.wait_for("several streams", |s| s.connection_changes().len() >= 4)
        .await;
    assert!(!task.is_finished());
    assert!(sink.updates().is_empty());
    assert!(handle.stats().stream_failures.load(Ordering::Relaxed) >= 2);
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    server.abort();
}
