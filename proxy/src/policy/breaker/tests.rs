use super::*;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::{
    thresholds::RetryBudget as XdsRetryBudget, Thresholds as XdsThresholds,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt32Value;

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

fn cfg(t: XdsThresholds) -> BreakerConfig {
    BreakerConfig::from_proto(
        &XdsCircuitBreakers {
            thresholds: vec![t],
            ..Default::default()
        },
        "clusters[0].circuit_breakers",
    )
    .unwrap()
}

fn gauge(stats: &Stats, name: &str) -> i64 {
    stats
        .snapshot()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} not registered"))
        .value
}

fn has(stats: &Stats, name: &str) -> bool {
    stats.snapshot().iter().any(|s| s.name == name)
}

#[test]
fn defaults_are_envoys() {
    let c = BreakerConfig::from_proto(&XdsCircuitBreakers::default(), "cb").unwrap();
    for t in [c.default, c.high] {
        assert_eq!(t.max_connections, 1024);
        assert_eq!(t.max_pending_requests, 1024);
        assert_eq!(t.max_requests, 1024);
        assert_eq!(t.max_retries, 3);
        assert_eq!(t.max_connection_pools, None);
        assert!(!t.track_remaining);
    }
}

#[test]
fn first_threshold_of_a_priority_wins() {
    let c = BreakerConfig::from_proto(
        &XdsCircuitBreakers {
            thresholds: vec![
                XdsThresholds {
                    priority: 1,
                    max_requests: u32v(5),
                    ..Default::default()
                },
                XdsThresholds {
                    priority: 1,
                    max_requests: u32v(7),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
        "cb",
    )
    .unwrap();
    assert_eq!(c.high.max_requests, 5);
    assert_eq!(c.default.max_requests, 1024);
}

#[test]
fn bad_priority_and_budget_name_the_field() {
    let err = BreakerConfig::from_proto(
        &XdsCircuitBreakers {
            thresholds: vec![XdsThresholds {
                priority: 9,
                ..Default::default()
            }],
            ..Default::default()
        },
        "c.circuit_breakers",
    )
    .unwrap_err();
    assert_eq!(err.path, "c.circuit_breakers.thresholds[0].priority");
    let err = BreakerConfig::from_proto(
        &XdsCircuitBreakers {
            thresholds: vec![XdsThresholds {
                retry_budget: Some(XdsRetryBudget {
                    budget_percent: Some(Percent { value: 120.0 }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
        "c.circuit_breakers",
    )
    .unwrap_err();
    assert_eq!(
        err.path,
        "c.circuit_breakers.thresholds[0].retry_budget.budget_percent"
    );
}

#[test]
fn requests_overflow_at_max_and_permits_release_on_drop() {
    let stats = Stats::default();
    let b = CircuitBreakers::new(
        &cfg(XdsThresholds {
            max_requests: u32v(2),
            track_remaining: true,
            ..Default::default()
        }),
        &stats,
        "cluster.c.",
    );
    let p = b.priority(Priority::Default);
    let a = p.try_acquire_rq().unwrap();
    assert_eq!(
        gauge(&stats, "cluster.c.circuit_breakers.default.remaining_rq"),
        1
    );
    assert_eq!(
        gauge(&stats, "cluster.c.circuit_breakers.default.rq_open"),
        0
    );
    let b2 = p.try_acquire_rq().unwrap();
    assert_eq!(
        gauge(&stats, "cluster.c.circuit_breakers.default.rq_open"),
        1
    );
    assert_eq!(
        gauge(&stats, "cluster.c.circuit_breakers.default.remaining_rq"),
        0
    );
    assert_eq!(
        p.try_acquire_rq().unwrap_err(),
        Overflow(Resource::Requests)
    );
    // Envoy 1.40 counts max_requests overflow in its own counter.
    assert_eq!(gauge(&stats, "cluster.c.upstream_rq_active_overflow"), 1);
    assert_eq!(gauge(&stats, "cluster.c.upstream_rq_pending_overflow"), 0);
    drop(a);
    assert_eq!(
        gauge(&stats, "cluster.c.circuit_breakers.default.rq_open"),
        0
    );
    let _c = p.try_acquire_rq().unwrap();
    drop(b2);
    assert_eq!(p.in_use(Resource::Requests), 1);
}

#[test]
fn priorities_are_independent() {
    let b = CircuitBreakers::detached(
        &BreakerConfig::from_proto(
            &XdsCircuitBreakers {
                thresholds: vec![XdsThresholds {
                    priority: 0,
                    max_connections: u32v(0),
                    ..Default::default()
                }],
                ..Default::default()
            },
            "cb",
        )
        .unwrap(),
    );
    assert!(b.priority(Priority::Default).try_acquire_cx().is_err());
    assert!(b.priority(Priority::High).try_acquire_cx().is_ok());
}

#[test]
fn forced_connection_counts_overflow_but_succeeds() {
    let stats = Stats::default();
    let b = CircuitBreakers::new(
        &cfg(XdsThresholds {
            max_connections: u32v(1),
            ..Default::default()
        }),
        &stats,
        "cluster.c.",
    );
    let p = b.priority(Priority::Default);
    let _a = p.try_acquire_cx().unwrap();
    assert!(p.try_acquire_cx().is_err());
    let _f = p.acquire_cx_forced();
    assert_eq!(p.in_use(Resource::Connections), 2);
    assert_eq!(gauge(&stats, "cluster.c.upstream_cx_overflow"), 2);
    assert_eq!(
        gauge(&stats, "cluster.c.circuit_breakers.default.cx_open"),
        1
    );
}

#[test]
fn remaining_gauges_only_with_track_remaining() {
    let stats = Stats::default();
    let _b = CircuitBreakers::new(&BreakerConfig::default(), &stats, "cluster.c.");
    assert!(has(&stats, "cluster.c.circuit_breakers.default.cx_open"));
    assert!(has(&stats, "cluster.c.circuit_breakers.high.rq_retry_open"));
    assert!(!has(
        &stats,
        "cluster.c.circuit_breakers.default.remaining_rq"
    ));
    let stats = Stats::default();
    let _b = CircuitBreakers::new(
        &cfg(XdsThresholds {
            track_remaining: true,
            ..Default::default()
        }),
        &stats,
        "cluster.c.",
    );
    assert_eq!(
        gauge(&stats, "cluster.c.circuit_breakers.default.remaining_cx"),
        1024
    );
    assert_eq!(
        gauge(
            &stats,
            "cluster.c.circuit_breakers.default.remaining_retries"
        ),
        3
    );
}

#[test]
fn retry_budget_scales_with_active_requests() {
    let stats = Stats::default();
    let b = CircuitBreakers::new(
        &cfg(XdsThresholds {
            max_retries: u32v(0),
            retry_budget: Some(XdsRetryBudget {
                budget_percent: Some(Percent { value: 50.0 }),
                min_retry_concurrency: u32v(1),
                ..Default::default()
            }),
            ..Default::default()
        }),
        &stats,
        "cluster.c.",
    );
    let p = b.priority(Priority::Default);
    // No active requests: min_retry_concurrency (1) applies, max_retries (0) is ignored.
    let r1 = p.try_acquire_retry().unwrap();
    assert!(p.try_acquire_retry().is_err());
    assert_eq!(gauge(&stats, "cluster.c.upstream_rq_retry_overflow"), 1);
    // 6 active requests → 50% = 3 retries.
    let rqs: Vec<_> = (0..6).map(|_| p.try_acquire_rq().unwrap()).collect();
    assert_eq!(p.retry_limit(), 3);
    let r2 = p.try_acquire_retry().unwrap();
    let r3 = p.try_acquire_retry().unwrap();
    assert!(p.try_acquire_retry().is_err());
    drop((r1, r2, r3, rqs));
    assert_eq!(p.in_use(Resource::Retries), 0);
}

#[test]
fn concurrent_acquires_never_exceed_the_limit() {
    let b = Arc::new(CircuitBreakers::detached(&cfg(XdsThresholds {
        max_requests: u32v(8),
        ..Default::default()
    })));
    let peak = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let b = b.clone();
            let peak = peak.clone();
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    let p = b.priority(Priority::Default);
                    if let Ok(permit) = p.try_acquire_rq() {
                        peak.fetch_max(p.in_use(Resource::Requests), Ordering::Relaxed);
                        drop(permit);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(peak.load(Ordering::Relaxed) <= 8);
    assert_eq!(b.priority(Priority::Default).in_use(Resource::Requests), 0);
}

#[test]
fn per_host_thresholds_take_max_connections_only() {
    let c = BreakerConfig::from_proto(
        &XdsCircuitBreakers {
            per_host_thresholds: vec![XdsThresholds {
                priority: 0,
                max_connections: u32v(2),
                ..Default::default()
            }],
            ..Default::default()
        },
        "cb",
    )
    .unwrap();
    assert_eq!(c.per_host_max_connections, [Some(2), None]);
    let overflow = Counter::detached();
    let h = HostConnections::new(2, overflow.clone());
    let _a = h.try_acquire().unwrap();
    let _b = h.try_acquire().unwrap();
    assert!(h.try_acquire().is_err());
    assert_eq!(overflow.get(), 1);
}
