use super::*;
use envoy_types::pb::google::protobuf::BoolValue;

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

fn secs(s: i64) -> Option<PbDuration> {
    Some(PbDuration {
        seconds: s,
        nanos: 0,
    })
}

fn counter(stats: &Stats, name: &str) -> i64 {
    stats
        .snapshot()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} not registered"))
        .value
}

fn detector(cfg: OutlierConfig, hosts: u32) -> (OutlierDetector<u32>, Stats) {
    let stats = Stats::default();
    let d = OutlierDetector::new(cfg, &stats, "cluster.c.");
    d.set_hosts(0..hosts);
    (d, stats)
}

fn permissive() -> OutlierConfig {
    OutlierConfig {
        max_ejection_percent: 100,
        ..OutlierConfig::default()
    }
}

#[test]
fn defaults_are_envoys() {
    let c = OutlierConfig::from_proto(&XdsOutlierDetection::default(), "od").unwrap();
    assert_eq!(c, OutlierConfig::default());
    assert_eq!(c.consecutive_5xx, 5);
    assert_eq!(c.interval, Duration::from_secs(10));
    assert_eq!(c.base_ejection_time, Duration::from_secs(30));
    assert_eq!(c.max_ejection_percent, 10);
    assert_eq!(c.enforcing_consecutive_gateway_failure, 0);
    // max_ejection_time defaults to max(300s, base_ejection_time).
    let c = OutlierConfig::from_proto(
        &XdsOutlierDetection {
            base_ejection_time: secs(400),
            ..Default::default()
        },
        "od",
    )
    .unwrap();
    assert_eq!(c.max_ejection_time, Duration::from_secs(400));
}

#[test]
fn bad_values_name_the_field() {
    let bad = |o: XdsOutlierDetection| {
        OutlierConfig::from_proto(&o, "c.outlier_detection")
            .unwrap_err()
            .path
    };
    assert_eq!(
        bad(XdsOutlierDetection {
            max_ejection_percent: u32v(101),
            ..Default::default()
        }),
        "c.outlier_detection.max_ejection_percent"
    );
    assert_eq!(
        bad(XdsOutlierDetection {
            interval: secs(0),
            ..Default::default()
        }),
        "c.outlier_detection.interval"
    );
    assert_eq!(
        bad(XdsOutlierDetection {
            base_ejection_time: secs(60),
            max_ejection_time: secs(10),
            ..Default::default()
        }),
        "c.outlier_detection.max_ejection_time"
    );
    assert_eq!(
        bad(XdsOutlierDetection {
            enforcing_success_rate: u32v(200),
            ..Default::default()
        }),
        "c.outlier_detection.enforcing_success_rate"
    );
}

#[test]
fn consecutive_5xx_ejects_on_the_fifth_and_success_resets() {
    let (d, stats) = detector(permissive(), 2);
    let now = Instant::now();
    for _ in 0..4 {
        d.record(&0, Outcome::Status(500), now);
    }
    d.record(&0, Outcome::Status(200), now);
    for _ in 0..4 {
        d.record(&0, Outcome::Status(500), now);
    }
    assert!(!d.is_ejected(&0));
    d.record(&0, Outcome::Status(500), now);
    assert!(d.is_ejected(&0));
    assert!(!d.is_ejected(&1));
    let p = "cluster.c.outlier_detection.";
    assert_eq!(counter(&stats, &format!("{p}ejections_enforced_total")), 1);
    assert_eq!(
        counter(&stats, &format!("{p}ejections_enforced_consecutive_5xx")),
        1
    );
    assert_eq!(
        counter(&stats, &format!("{p}ejections_detected_consecutive_5xx")),
        1
    );
    assert_eq!(counter(&stats, &format!("{p}ejections_active")), 1);
}

#[test]
fn gateway_failures_are_detected_but_not_enforced_by_default() {
    let (d, stats) = detector(permissive(), 2);
    let now = Instant::now();
    for code in [502, 503, 504, 502, 503] {
        d.record(&0, Outcome::Status(code), now);
    }
    // Five gateway errors are also five 5xx: the 5xx detector ejects.
    let p = "cluster.c.outlier_detection.";
    assert_eq!(
        counter(
            &stats,
            &format!("{p}ejections_detected_consecutive_gateway_failure")
        ),
        1
    );
    assert_eq!(
        counter(
            &stats,
            &format!("{p}ejections_enforced_consecutive_gateway_failure")
        ),
        0
    );
    assert!(d.is_ejected(&0));
}

#[test]
fn local_origin_errors_count_as_5xx_unless_split() {
    let (d, _) = detector(permissive(), 2);
    let now = Instant::now();
    for _ in 0..3 {
        d.record(&0, Outcome::ConnectFailed, now);
    }
    d.record(&0, Outcome::Timeout, now);
    d.record(&0, Outcome::Reset, now);
    assert!(d.is_ejected(&0));

    let cfg = OutlierConfig {
        split_external_local_origin_errors: true,
        consecutive_local_origin_failure: 2,
        ..permissive()
    };
    let (d, stats) = detector(cfg, 2);
    d.record(&0, Outcome::ConnectFailed, now);
    d.record(&0, Outcome::ConnectSuccess, now);
    d.record(&0, Outcome::Timeout, now);
    for _ in 0..4 {
        d.record(&0, Outcome::Status(500), now);
    }
    assert!(!d.is_ejected(&0), "split: 4×5xx and 1 local failure");
    d.record(&0, Outcome::Reset, now);
    assert!(d.is_ejected(&0));
    assert_eq!(
        counter(
            &stats,
            "cluster.c.outlier_detection.ejections_enforced_consecutive_local_origin_failure"
        ),
        1
    );
}

#[test]
fn max_ejection_percent_overflows() {
    // 10% of 4 hosts: even one ejection would be 25%.
    let (d, stats) = detector(OutlierConfig::default(), 4);
    let now = Instant::now();
    for _ in 0..5 {
        d.record(&0, Outcome::Status(500), now);
    }
    assert!(!d.is_ejected(&0));
    assert_eq!(
        counter(&stats, "cluster.c.outlier_detection.ejections_overflow"),
        1
    );
    // always_eject_one_host lets the first one through.
    let (d, _) = detector(
        OutlierConfig {
            always_eject_one_host: true,
            ..OutlierConfig::default()
        },
        4,
    );
    for h in 0..2 {
        for _ in 0..5 {
            d.record(&h, Outcome::Status(500), now);
        }
    }
    assert!(d.is_ejected(&0));
    assert!(!d.is_ejected(&1));
}

#[test]
fn ejection_time_grows_with_backoff_and_unejects_on_tick() {
    let cfg = OutlierConfig {
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(50),
        ..permissive()
    };
    let (d, stats) = detector(cfg, 2);
    let t0 = Instant::now();
    let eject = |at: Instant| {
        for _ in 0..5 {
            d.record(&0, Outcome::Status(503), at);
        }
    };
    eject(t0);
    d.tick(t0 + Duration::from_secs(29));
    assert!(d.is_ejected(&0));
    d.tick(t0 + Duration::from_secs(30));
    assert!(!d.is_ejected(&0));
    assert_eq!(
        counter(&stats, "cluster.c.outlier_detection.ejections_active"),
        0
    );
    // Second ejection right away: 2 × 30 s capped at 50 s.
    let t1 = t0 + Duration::from_secs(31);
    eject(t1);
    assert!(d.is_ejected(&0));
    d.tick(t1 + Duration::from_secs(49));
    assert!(d.is_ejected(&0));
    d.tick(t1 + Duration::from_secs(50));
    assert!(!d.is_ejected(&0));
    assert_eq!(d.monitor(&0).unwrap().num_ejections(), 2);
}

#[test]
fn backoff_decays_while_healthy() {
    let cfg = OutlierConfig {
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        ..permissive()
    };
    let (d, _) = detector(cfg, 2);
    let t0 = Instant::now();
    for _ in 0..5 {
        d.record(&0, Outcome::Status(500), t0);
    }
    d.tick(t0 + Duration::from_secs(30)); // unejected, backoff 1
                                          // Two healthy intervals decay the backoff to 0 (floors at 0).
    d.tick(t0 + Duration::from_secs(40));
    d.tick(t0 + Duration::from_secs(50));
    let t1 = t0 + Duration::from_secs(51);
    for _ in 0..5 {
        d.record(&0, Outcome::Status(500), t1);
    }
    // backoff was 0, so the new ejection lasts 1 × base.
    d.tick(t1 + Duration::from_secs(30));
    assert!(!d.is_ejected(&0));
}

#[test]
fn success_rate_ejects_the_outlier_after_an_interval() {
    let cfg = OutlierConfig {
        success_rate_minimum_hosts: 5,
        success_rate_request_volume: 100,
        consecutive_5xx: 1000,
        ..permissive()
    };
    let (d, stats) = detector(cfg, 5);
    let t0 = Instant::now();
    for h in 0..5u32 {
        for i in 0..100 {
            // Host 0 fails half its requests; the others all succeed.
            let code = if h == 0 && i % 2 == 0 { 500 } else { 200 };
            d.record(&h, Outcome::Status(code), t0);
        }
    }
    // Data counts only after the interval it was collected in.
    d.tick(t0 + Duration::from_secs(10));
    assert!(d.is_ejected(&0));
    for h in 1..5 {
        assert!(!d.is_ejected(&h));
    }
    assert_eq!(
        counter(
            &stats,
            "cluster.c.outlier_detection.ejections_enforced_success_rate"
        ),
        1
    );
}

#[test]
fn success_rate_threshold_matches_envoys_example() {
    let hosts: Vec<((), f64)> = [50.0, 100.0, 100.0, 100.0, 100.0]
        .into_iter()
        .map(|r| ((), r))
        .collect();
    let (mean, threshold) = success_rate_threshold(450.0, &hosts, 1.9);
    assert_eq!(mean, 90.0);
    assert!((threshold - 52.0).abs() < 1e-9);
}

#[test]
fn failure_percentage_needs_enforcing_to_eject() {
    let base = OutlierConfig {
        failure_percentage_minimum_hosts: 2,
        failure_percentage_request_volume: 10,
        failure_percentage_threshold: 50,
        consecutive_5xx: 1000,
        ..permissive()
    };
    for (enforcing, ejected) in [(0, false), (100, true)] {
        let (d, stats) = detector(
            OutlierConfig {
                enforcing_failure_percentage: enforcing,
                ..base.clone()
            },
            2,
        );
        let t0 = Instant::now();
        for i in 0..10 {
            d.record(&0, Outcome::Status(if i < 6 { 503 } else { 200 }), t0);
            d.record(&1, Outcome::Status(200), t0);
        }
        d.tick(t0 + Duration::from_secs(10));
        assert_eq!(d.is_ejected(&0), ejected);
        assert_eq!(
            counter(
                &stats,
                "cluster.c.outlier_detection.ejections_detected_failure_percentage"
            ),
            1
        );
    }
}

#[test]
fn removed_ejected_host_leaves_ejections_active() {
    let (d, stats) = detector(permissive(), 3);
    let now = Instant::now();
    for _ in 0..5 {
        d.record(&2, Outcome::Status(500), now);
    }
    assert_eq!(d.ejections_active(), 1);
    d.set_hosts([0, 1]);
    assert_eq!(d.ejections_active(), 0);
    assert_eq!(
        counter(&stats, "cluster.c.outlier_detection.ejections_active"),
        0
    );
    assert!(!d.is_ejected(&2));
}

#[test]
fn always_eject_one_host_proto_flag() {
    let c = OutlierConfig::from_proto(
        &XdsOutlierDetection {
            always_eject_one_host: Some(BoolValue { value: true }),
            ..Default::default()
        },
        "od",
    )
    .unwrap();
    assert!(c.always_eject_one_host);
}

#[test]
fn grpc_statuses_map_as_envoy() {
    assert_eq!(grpc_to_http_status(0), 200);
    assert_eq!(grpc_to_http_status(14), 503);
    assert_eq!(grpc_to_http_status(4), 504);
    assert_eq!(grpc_to_http_status(99), 500);
}

#[test]
fn router_outcomes_map_grpc_status_and_final_connect_success() {
    let mut h = http::HeaderMap::new();
    assert_eq!(
        response_outcome(http::StatusCode::OK, &h, true),
        Outcome::Status(200)
    );
    h.insert("grpc-status", "14".parse().unwrap());
    assert_eq!(
        response_outcome(http::StatusCode::OK, &h, true),
        Outcome::Status(503)
    );
    // Only gRPC requests look at grpc-status.
    assert_eq!(
        response_outcome(http::StatusCode::OK, &h, false),
        Outcome::Status(200)
    );
    // tcp_proxy's final connect success counts as a 200 and resets the 5xx streak.
    let (d, _) = detector(
        OutlierConfig {
            consecutive_5xx: 2,
            ..permissive()
        },
        2,
    );
    let now = Instant::now();
    assert!(!d.record(&0, Outcome::ConnectFailed, now));
    assert!(!d.record(&0, Outcome::ConnectSuccessFinal, now));
    assert!(!d.record(&0, Outcome::ConnectFailed, now));
    // An HTTP connect success is not a result of its own.
    assert!(!d.record(&0, Outcome::ConnectSuccess, now));
    assert!(d.record(&0, Outcome::ConnectFailed, now));
    assert!(d.is_ejected(&0));
}
