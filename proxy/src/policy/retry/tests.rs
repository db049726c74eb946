use super::*;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{RetryBackOff, RetryHostPredicate};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn policy(retry_on: &str) -> RetryPolicy {
    RetryPolicy::from_proto(
        &XdsRetryPolicy {
            retry_on: retry_on.into(),
            ..Default::default()
        },
        "route.retry_policy",
    )
    .unwrap()
}

fn resp(status: u16, h: &HeaderMap) -> Outcome<'_> {
    Outcome::Response { status, headers: h }
}

#[test]
fn parses_retry_on_and_ignores_unknown_names() {
    let p = policy("5xx, reset,unavailable,bogus");
    assert!(p.retry_on.any(RetryOn::FIVE_XX));
    assert!(p.retry_on.any(RetryOn::RESET));
    assert!(p.retry_on.any(RetryOn::GRPC_UNAVAILABLE));
    assert_eq!(p.num_retries, 1);
    assert!(!RetryOn::parse_http("5xx,bogus").1);
}

#[test]
fn five_xx_retries_responses_resets_and_timeouts() {
    let s = RetryState::new(&policy("5xx"), &HeaderMap::new()).unwrap();
    let empty = HeaderMap::new();
    assert_eq!(s.should_retry(0, &resp(503, &empty)), RetryDecision::Retry);
    assert_eq!(
        s.should_retry(0, &resp(404, &empty)),
        RetryDecision::NotRetriable
    );
    assert_eq!(
        s.should_retry(0, &Outcome::Reset(ResetReason::ConnectFailure)),
        RetryDecision::Retry
    );
    assert_eq!(
        s.should_retry(0, &Outcome::PerTryTimeout),
        RetryDecision::Retry
    );
    assert_eq!(
        s.should_retry(0, &Outcome::Reset(ResetReason::Overflow)),
        RetryDecision::NotRetriable
    );
    assert_eq!(
        s.should_retry(1, &resp(500, &empty)),
        RetryDecision::LimitExceeded
    );
}

#[test]
fn gateway_error_and_connect_failure_are_narrow() {
    let empty = HeaderMap::new();
    let s = RetryState::new(&policy("gateway-error"), &empty).unwrap();
    assert_eq!(
        s.should_retry(0, &resp(500, &empty)),
        RetryDecision::NotRetriable
    );
    assert_eq!(s.should_retry(0, &resp(504, &empty)), RetryDecision::Retry);
    let s = RetryState::new(&policy("connect-failure"), &empty).unwrap();
    assert_eq!(
        s.should_retry(0, &resp(503, &empty)),
        RetryDecision::NotRetriable
    );
    assert_eq!(
        s.should_retry(0, &Outcome::Reset(ResetReason::Other)),
        RetryDecision::NotRetriable
    );
    assert_eq!(
        s.should_retry(0, &Outcome::Reset(ResetReason::ConnectFailure)),
        RetryDecision::Retry
    );
    let s = RetryState::new(&policy("refused-stream"), &empty).unwrap();
    assert_eq!(
        s.should_retry(0, &Outcome::Reset(ResetReason::RefusedStream)),
        RetryDecision::Retry
    );
    let s = RetryState::new(&policy("retriable-4xx"), &empty).unwrap();
    assert_eq!(s.should_retry(0, &resp(409, &empty)), RetryDecision::Retry);
    assert_eq!(
        s.should_retry(0, &resp(429, &empty)),
        RetryDecision::NotRetriable
    );
}

#[test]
fn overloaded_responses_are_never_retried() {
    let s = RetryState::new(&policy("5xx"), &HeaderMap::new()).unwrap();
    let h = hdrs(&[("x-envoy-overloaded", "true")]);
    assert_eq!(
        s.should_retry(0, &resp(503, &h)),
        RetryDecision::NotRetriable
    );
}

#[test]
fn headers_add_conditions_and_override_max_retries() {
    let none = RetryPolicy::default();
    assert!(RetryState::new(&none, &HeaderMap::new()).is_none());
    // x-envoy-max-retries alone does not enable retries.
    assert!(RetryState::new(&none, &hdrs(&[("x-envoy-max-retries", "3")])).is_none());
    let s = RetryState::new(
        &none,
        &hdrs(&[
            (
                "x-envoy-retry-on",
                "retriable-status-codes,retriable-headers",
            ),
            ("x-envoy-retry-grpc-on", "unavailable"),
            ("x-envoy-max-retries", "3"),
            ("x-envoy-retriable-status-codes", "418, 451"),
            ("x-envoy-retriable-header-names", "x-try-again"),
        ]),
    )
    .unwrap();
    assert_eq!(s.max_retries(), 3);
    let empty = HeaderMap::new();
    assert_eq!(s.should_retry(2, &resp(418, &empty)), RetryDecision::Retry);
    assert_eq!(
        s.should_retry(3, &resp(451, &empty)),
        RetryDecision::LimitExceeded
    );
    assert_eq!(
        s.should_retry(0, &resp(200, &hdrs(&[("x-try-again", "1")]))),
        RetryDecision::Retry
    );
    assert_eq!(
        s.should_retry(0, &resp(200, &hdrs(&[("grpc-status", "14")]))),
        RetryDecision::Retry
    );
    assert_eq!(
        s.should_retry(0, &resp(200, &hdrs(&[("grpc-status", "2")]))),
        RetryDecision::NotRetriable
    );
    // Default num_retries is 1 when only a header enables retries.
    let s = RetryState::new(&none, &hdrs(&[("x-envoy-retry-on", "5xx")])).unwrap();
    assert_eq!(s.max_retries(), 1);
}

#[test]
fn retriable_request_headers_gate_all_retries() {
    use envoy_types::pb::envoy::config::route::v3::HeaderMatcher as Xds;
    let p = RetryPolicy::from_proto(
        &XdsRetryPolicy {
            retry_on: "5xx".into(),
            retriable_request_headers: vec![Xds {
                name: "x-allow-retry".into(),
                header_match_specifier: Some(
                    envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier::PresentMatch(true),
                ),
                ..Default::default()
            }],
            ..Default::default()
        },
        "r",
    )
    .unwrap();
    assert!(RetryState::new(&p, &hdrs(&[("x-envoy-retry-on", "reset")])).is_none());
}

#[test]
fn back_off_is_fully_jittered_exponential() {
    let b = BackOff::default();
    assert_eq!(b.max, Duration::from_millis(250));
    let ceilings: Vec<_> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
    assert_eq!(ceilings, [25, 50, 100, 200, 250, 250]);
    let mut rng = StdRng::seed_from_u64(7);
    for n in 0..6 {
        for _ in 0..100 {
            assert!(b.delay(n, &mut rng) < b.ceiling(n));
        }
    }
}

#[test]
fn bad_back_off_and_predicates_name_the_field() {
    let err = RetryPolicy::from_proto(
        &XdsRetryPolicy {
            retry_back_off: Some(RetryBackOff {
                base_interval: Some(PbDuration {
                    seconds: 1,
                    nanos: 0,
                }),
                max_interval: Some(PbDuration {
                    seconds: 0,
                    nanos: 1_000_000,
                }),
            }),
            ..Default::default()
        },
        "r",
    )
    .unwrap_err();
    assert_eq!(err.path, "r.retry_back_off.max_interval");
    let err = RetryPolicy::from_proto(
        &XdsRetryPolicy {
            retry_back_off: Some(RetryBackOff::default()),
            ..Default::default()
        },
        "r",
    )
    .unwrap_err();
    assert_eq!(err.path, "r.retry_back_off.base_interval");
    let err = RetryPolicy::from_proto(
        &XdsRetryPolicy {
            retry_host_predicate: vec![RetryHostPredicate {
                name: "envoy.retry_host_predicates.omit_canary_hosts".into(),
                config_type: None,
            }],
            ..Default::default()
        },
        "r",
    )
    .unwrap_err();
    assert_eq!(err.path, "r.retry_host_predicate[0]");
    let ok = RetryPolicy::from_proto(
        &XdsRetryPolicy {
            retry_host_predicate: vec![RetryHostPredicate {
                name: PREVIOUS_HOSTS.into(),
                config_type: None,
            }],
            num_retries: Some(UInt32Value { value: 4 }),
            host_selection_retry_max_attempts: 5,
            ..Default::default()
        },
        "r",
    )
    .unwrap();
    assert!(ok.previous_hosts);
    assert_eq!(ok.num_retries, 4);
    assert_eq!(ok.host_selection_retry_max_attempts, 5);
}

#[test]
fn timeouts_follow_envoys_header_rules() {
    let route = RouteTimeouts {
        timeout: Duration::from_secs(15),
        per_try_timeout: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let t = Timeouts::compute(&route, &HeaderMap::new(), false);
    assert_eq!(t.global, Some(Duration::from_secs(15)));
    assert_eq!(t.per_try, Some(Duration::from_secs(1)));
    let t = Timeouts::compute(
        &route,
        &hdrs(&[
            ("x-envoy-upstream-rq-timeout-ms", "500"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "200"),
        ]),
        false,
    );
    assert_eq!(t.global, Some(Duration::from_millis(500)));
    assert_eq!(t.per_try, Some(Duration::from_millis(200)));
    // A per-try timeout not below the global one is ignored; 0 disables the global one.
    let t = Timeouts::compute(
        &route,
        &hdrs(&[("x-envoy-upstream-rq-timeout-ms", "800")]),
        false,
    );
    assert_eq!(t.per_try, None);
    let t = Timeouts::compute(
        &route,
        &hdrs(&[("x-envoy-upstream-rq-timeout-ms", "0")]),
        false,
    );
    assert_eq!(t.global, None);
    assert_eq!(t.per_try, Some(Duration::from_secs(1)));
    // Garbage is ignored.
    let t = Timeouts::compute(
        &route,
        &hdrs(&[("x-envoy-upstream-rq-timeout-ms", "x")]),
        false,
    );
    assert_eq!(t.global, Some(Duration::from_secs(15)));
}

#[test]
fn grpc_timeout_applies_only_with_max_grpc_timeout() {
    let h = hdrs(&[("grpc-timeout", "2S")]);
    let route = RouteTimeouts {
        timeout: Duration::from_secs(15),
        ..Default::default()
    };
    assert_eq!(
        Timeouts::compute(&route, &h, true).global,
        Some(Duration::from_secs(15))
    );
    let capped = RouteTimeouts {
        max_grpc_timeout: Some(Duration::from_secs(1)),
        ..route
    };
    assert_eq!(
        Timeouts::compute(&capped, &h, true).global,
        Some(Duration::from_secs(1))
    );
    let uncapped = RouteTimeouts {
        max_grpc_timeout: Some(Duration::ZERO),
        grpc_timeout_offset: Some(Duration::from_millis(500)),
        ..route
    };
    assert_eq!(
        Timeouts::compute(&uncapped, &h, true).global,
        Some(Duration::from_millis(1500))
    );
    // No grpc-timeout header and no cap: infinite.
    assert_eq!(
        Timeouts::compute(&uncapped, &HeaderMap::new(), true).global,
        None
    );
}

#[test]
fn grpc_timeout_values_parse_as_the_spec() {
    assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
    assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
    assert_eq!(parse_grpc_timeout("1500u"), Some(Duration::from_millis(2)));
    assert_eq!(parse_grpc_timeout("123456789S"), None);
    assert_eq!(parse_grpc_timeout("5x"), None);
    assert_eq!(parse_grpc_timeout("S"), None);
    assert_eq!(parse_grpc_timeout(""), None);
}
