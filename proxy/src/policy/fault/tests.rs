use super::*;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    fault_delay::HeaderDelay, FaultDelay,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort::HeaderAbort, FaultAbort,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn pct(n: u32) -> Option<FractionalPercent> {
    Some(FractionalPercent {
        numerator: n,
        denominator: 0,
    })
}

fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn filter(c: XdsHttpFault, stats: &Stats) -> FaultFilter {
    FaultFilter::new(
        FaultConfig::from_proto(&c, "fault").unwrap(),
        stats,
        "http.ingress.",
    )
}

fn value(stats: &Stats, name: &str) -> i64 {
    stats
        .snapshot()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} not registered"))
        .value
}

fn fixed_delay(ms: i32, p: u32) -> Option<FaultDelay> {
    Some(FaultDelay {
        percentage: pct(p),
        fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(PbDuration {
            seconds: 0,
            nanos: ms * 1_000_000,
        })),
    })
}

fn http_abort(status: u32, p: u32) -> Option<FaultAbort> {
    Some(FaultAbort {
        percentage: pct(p),
        error_type: Some(ErrorType::HttpStatus(status)),
        ..Default::default()
    })
}

#[test]
fn full_percentages_delay_then_abort_and_count() {
    let stats = Stats::default();
    let f = filter(
        XdsHttpFault {
            delay: fixed_delay(100, 100),
            abort: http_abort(503, 100),
            ..Default::default()
        },
        &stats,
    );
    let mut rng = StdRng::seed_from_u64(3);
    let d = f.decide(&HeaderMap::new(), "c", &mut rng);
    assert_eq!(d.delay, Some(Duration::from_millis(100)));
    assert_eq!(
        d.abort,
        Some(Abort {
            status: 503,
            grpc_status: None
        })
    );
    assert_eq!(value(&stats, "http.ingress.fault.active_faults"), 1);
    drop(d);
    assert_eq!(value(&stats, "http.ingress.fault.active_faults"), 0);
    assert_eq!(value(&stats, "http.ingress.fault.delays_injected"), 1);
    assert_eq!(value(&stats, "http.ingress.fault.aborts_injected"), 1);
}

#[test]
fn percentage_is_respected_within_binomial_tolerance() {
    let stats = Stats::default();
    let f = filter(
        XdsHttpFault {
            abort: http_abort(500, 30),
            ..Default::default()
        },
        &stats,
    );
    let mut rng = StdRng::seed_from_u64(42);
    let n = 20_000;
    let hits = (0..n)
        .filter(|_| f.decide(&HeaderMap::new(), "c", &mut rng).abort.is_some())
        .count();
    // 30% ± 5σ (σ ≈ 0.32%).
    let share = hits as f64 / n as f64;
    assert!((share - 0.30).abs() < 0.017, "abort share {share}");
    // Absent percentage is 0%.
    let f = filter(
        XdsHttpFault {
            abort: Some(FaultAbort {
                error_type: Some(ErrorType::HttpStatus(500)),
                ..Default::default()
            }),
            ..Default::default()
        },
        &stats,
    );
    assert!((0..100).all(|_| f.decide(&HeaderMap::new(), "c", &mut rng).abort.is_none()));
}

#[test]
fn header_faults_need_valid_headers_and_cap_percentages() {
    let stats = Stats::default();
    let f = filter(
        XdsHttpFault {
            delay: Some(FaultDelay {
                percentage: pct(100),
                fault_delay_secifier: Some(FaultDelaySecifier::HeaderDelay(HeaderDelay {})),
            }),
            abort: Some(FaultAbort {
                percentage: pct(50),
                error_type: Some(ErrorType::HeaderAbort(HeaderAbort {})),
                ..Default::default()
            }),
            ..Default::default()
        },
        &stats,
    );
    let mut rng = StdRng::seed_from_u64(5);
    let none = f.decide(&HeaderMap::new(), "c", &mut rng);
    assert!(none.delay.is_none() && none.abort.is_none() && none.active.is_none());
    let d = f.decide(&hdrs(&[(DELAY_HEADER, "250")]), "c", &mut rng);
    assert_eq!(d.delay, Some(Duration::from_millis(250)));
    assert!(f
        .decide(&hdrs(&[(DELAY_HEADER, "soon")]), "c", &mut rng)
        .delay
        .is_none());
    // Header percentage 0 disables; 100 is capped at the configured 50.
    let h = hdrs(&[(ABORT_HEADER, "418"), (ABORT_PERCENT_HEADER, "0")]);
    assert!((0..50).all(|_| f.decide(&h, "c", &mut rng).abort.is_none()));
    let h = hdrs(&[(ABORT_HEADER, "418"), (ABORT_PERCENT_HEADER, "100")]);
    let hits = (0..4000)
        .filter(|_| f.decide(&h, "c", &mut rng).abort.is_some())
        .count();
    assert!((1700..2300).contains(&hits), "{hits}");
    // gRPC abort via header; an HTTP status header wins over it; bad status is no fault.
    let h = hdrs(&[(ABORT_GRPC_HEADER, "14"), (ABORT_PERCENT_HEADER, "50")]);
    let grpc = (0..100)
        .find_map(|_| f.decide(&h, "c", &mut rng).abort)
        .unwrap();
    assert_eq!(
        grpc,
        Abort {
            status: 200,
            grpc_status: Some(14)
        }
    );
    let h = hdrs(&[(ABORT_HEADER, "700")]);
    assert!((0..50).all(|_| f.decide(&h, "c", &mut rng).abort.is_none()));
}

#[test]
fn max_active_faults_overflows() {
    let stats = Stats::default();
    let f = filter(
        XdsHttpFault {
            abort: http_abort(503, 100),
            max_active_faults: Some(UInt32Value { value: 1 }),
            ..Default::default()
        },
        &stats,
    );
    let mut rng = StdRng::seed_from_u64(1);
    let first = f.decide(&HeaderMap::new(), "c", &mut rng);
    assert!(first.abort.is_some());
    let second = f.decide(&HeaderMap::new(), "c", &mut rng);
    assert!(second.abort.is_none());
    assert_eq!(value(&stats, "http.ingress.fault.faults_overflow"), 1);
    drop(first);
    assert!(f.decide(&HeaderMap::new(), "c", &mut rng).abort.is_some());
}

#[test]
fn targeting_by_cluster_nodes_and_headers() {
    use envoy_types::pb::envoy::config::route::v3::{header_matcher, HeaderMatcher};
    let stats = Stats::default();
    let f = filter(
        XdsHttpFault {
            abort: http_abort(503, 100),
            upstream_cluster: "backend".into(),
            downstream_nodes: vec!["node-a".into()],
            headers: vec![HeaderMatcher {
                name: "x-canary".into(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(
                    true,
                )),
                ..Default::default()
            }],
            ..Default::default()
        },
        &stats,
    );
    let mut rng = StdRng::seed_from_u64(1);
    let good = hdrs(&[
        ("x-envoy-downstream-service-node", "node-a"),
        ("x-canary", "1"),
    ]);
    assert!(f.decide(&good, "backend", &mut rng).abort.is_some());
    assert!(f.decide(&good, "other", &mut rng).abort.is_none());
    let wrong_node = hdrs(&[
        ("x-envoy-downstream-service-node", "node-b"),
        ("x-canary", "1"),
    ]);
    assert!(f.decide(&wrong_node, "backend", &mut rng).abort.is_none());
    let no_header = hdrs(&[("x-envoy-downstream-service-node", "node-a")]);
    assert!(f.decide(&no_header, "backend", &mut rng).abort.is_none());
}

#[test]
fn bad_config_names_the_field() {
    let err = FaultConfig::from_proto(
        &XdsHttpFault {
            abort: http_abort(100, 100),
            ..Default::default()
        },
        "f",
    )
    .unwrap_err();
    assert_eq!(err.path, "f.abort.http_status");
    let err = FaultConfig::from_proto(
        &XdsHttpFault {
            delay: Some(FaultDelay::default()),
            ..Default::default()
        },
        "f",
    )
    .unwrap_err();
    assert_eq!(err.path, "f.delay");
    let err = FaultConfig::from_proto(
        &XdsHttpFault {
            abort: Some(FaultAbort {
                percentage: Some(FractionalPercent {
                    numerator: 1,
                    denominator: 7,
                }),
                error_type: Some(ErrorType::HttpStatus(503)),
                ..Default::default()
            }),
            ..Default::default()
        },
        "f",
    )
    .unwrap_err();
    assert_eq!(err.path, "f.abort.percentage.denominator");
}
