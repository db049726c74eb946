use super::*;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, RuntimeFeatureFlag};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, LocalRateLimitDescriptor,
};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration, UInt32Value};
use quickcheck::quickcheck;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn tb(max: u32, per_fill: u32, ms: i32) -> XdsTokenBucket {
    XdsTokenBucket {
        max_tokens: max,
        tokens_per_fill: Some(UInt32Value { value: per_fill }),
        fill_interval: Some(PbDuration {
            seconds: (ms / 1000) as i64,
            nanos: (ms % 1000) * 1_000_000,
        }),
    }
}

fn all() -> Option<RuntimeFractionalPercent> {
    Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: 0,
        }),
        runtime_key: String::new(),
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

fn http(c: XdsHttpLocalRateLimit, stats: &Stats, now: Instant) -> HttpLocalRateLimiter {
    let cfg = HttpLocalRateLimitConfig::from_proto(&c, "lrl").unwrap();
    HttpLocalRateLimiter::new(Arc::new(cfg), stats, now)
}

fn base() -> XdsHttpLocalRateLimit {
    XdsHttpLocalRateLimit {
        stat_prefix: "lrl".into(),
        token_bucket: Some(tb(2, 1, 1000)),
        filter_enabled: all(),
        filter_enforced: all(),
        ..Default::default()
    }
}

#[test]
fn bucket_starts_full_and_refills_continuously() {
    let t0 = Instant::now();
    let cfg = BucketConfig::from_proto(&tb(3, 1, 1000), "tb").unwrap();
    let b = TokenBucket::new(cfg, t0);
    assert!(b.try_consume(t0));
    assert!(b.try_consume(t0));
    assert!(b.try_consume(t0));
    assert!(!b.try_consume(t0));
    assert!(!b.try_consume(t0 + Duration::from_millis(999)));
    assert!(b.try_consume(t0 + Duration::from_millis(1000)));
    // Refill never exceeds max_tokens.
    let later = t0 + Duration::from_secs(100);
    assert_eq!(b.remaining(later), 3.0);
}

#[test]
fn bucket_config_is_validated() {
    let err = BucketConfig::from_proto(&tb(1, 1, 10), "f.token_bucket").unwrap_err();
    assert_eq!(err.path, "f.token_bucket.fill_interval");
    let err = BucketConfig::from_proto(&tb(1, 0, 1000), "f.token_bucket").unwrap_err();
    assert_eq!(err.path, "f.token_bucket.tokens_per_fill");
    let mut b = tb(1, 1, 1000);
    b.fill_interval = None;
    assert!(BucketConfig::from_proto(&b, "tb").is_err());
}

quickcheck! {
    /// Over any span, admitted ≤ max_tokens + elapsed × rate: the bucket never over-admits.
    fn bucket_never_over_admits(max: u8, per_fill: u8, steps: Vec<u16>) -> bool {
        let max = (max % 20) as u32 + 1;
        let per_fill = (per_fill % 5) as u32 + 1;
        let t0 = Instant::now();
        let cfg = BucketConfig { max_tokens: max, tokens_per_fill: per_fill, fill_interval: Duration::from_millis(100) };
        let b = TokenBucket::new(cfg, t0);
        let mut now = t0;
        let mut admitted = 0u64;
        for s in steps.iter().take(200) {
            now += Duration::from_millis(*s as u64 % 300);
            while b.try_consume(now) {
                admitted += 1;
            }
        }
        let elapsed = now.duration_since(t0).as_secs_f64();
        let bound = max as f64 + elapsed * per_fill as f64 / 0.1;
        admitted as f64 <= bound + 1e-6
    }
}

#[test]
fn bucket_is_exact_under_contention() {
    let t0 = Instant::now();
    let b = Arc::new(TokenBucket::new(
        BucketConfig {
            max_tokens: 1000,
            tokens_per_fill: 1,
            fill_interval: Duration::from_secs(3600),
        },
        t0,
    ));
    let granted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (b, g) = (b.clone(), granted.clone());
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    if b.try_consume(t0) {
                        g.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(granted.load(Ordering::Relaxed), 1000);
}

#[test]
fn http_filter_counts_like_envoy() {
    let stats = Stats::default();
    let t0 = Instant::now();
    let l = http(base(), &stats, t0);
    let mut rng = StdRng::seed_from_u64(1);
    assert_eq!(l.check(&[], t0, &mut rng), Verdict::Allowed(None));
    assert_eq!(l.check(&[], t0, &mut rng), Verdict::Allowed(None));
    assert_eq!(l.check(&[], t0, &mut rng), Verdict::Limited(None));
    let p = "lrl.http_local_rate_limit.";
    assert_eq!(counter(&stats, &format!("{p}enabled")), 3);
    assert_eq!(counter(&stats, &format!("{p}ok")), 2);
    assert_eq!(counter(&stats, &format!("{p}rate_limited")), 1);
    assert_eq!(counter(&stats, &format!("{p}enforced")), 1);
    assert_eq!(l.config().status, 429);
}

#[test]
fn absent_filter_enabled_disables_and_absent_enforced_only_counts() {
    let stats = Stats::default();
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(1);
    let l = http(
        XdsHttpLocalRateLimit {
            filter_enabled: None,
            ..base()
        },
        &stats,
        t0,
    );
    assert_eq!(l.check(&[], t0, &mut rng), Verdict::Disabled);
    assert_eq!(counter(&stats, "lrl.http_local_rate_limit.enabled"), 0);
    let l = http(
        XdsHttpLocalRateLimit {
            filter_enforced: None,
            token_bucket: Some(tb(1, 1, 1000)),
            ..base()
        },
        &stats,
        t0,
    );
    l.check(&[], t0, &mut rng);
    assert_eq!(
        l.check(&[], t0, &mut rng),
        Verdict::LimitedNotEnforced(None)
    );
    assert_eq!(counter(&stats, "lrl.http_local_rate_limit.enforced"), 0);
}

#[test]
fn x_ratelimit_headers_report_limit_remaining_reset() {
    let stats = Stats::default();
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(1);
    let l = http(
        XdsHttpLocalRateLimit {
            enable_x_ratelimit_headers: 1,
            token_bucket: Some(tb(2, 2, 10_000)),
            ..base()
        },
        &stats,
        t0,
    );
    let h = |v: Verdict| match v {
        Verdict::Allowed(h) | Verdict::Limited(h) | Verdict::LimitedNotEnforced(h) => h.unwrap(),
        Verdict::Disabled => panic!("disabled"),
    };
    let first = h(l.check(&[], t0, &mut rng));
    assert_eq!((first.limit, first.remaining, first.reset), (2, 1, 0));
    let second = h(l.check(&[], t0, &mut rng));
    // Empty: one token takes 5 s at 2 tokens / 10 s.
    assert_eq!((second.remaining, second.reset), (0, 5));
}

#[test]
fn descriptors_use_their_own_bucket_and_the_default() {
    let stats = Stats::default();
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(1);
    let desc = |k: &str, v: &str, max: u32| LocalRateLimitDescriptor {
        entries: vec![Entry {
            key: k.into(),
            value: v.into(),
        }],
        token_bucket: Some(tb(max, 1, 60_000)),
        shadow_mode: false,
    };
    let l = http(
        XdsHttpLocalRateLimit {
            token_bucket: Some(tb(100, 1, 60_000)),
            descriptors: vec![desc("client", "a", 1), desc("path", "", 2)],
            always_consume_default_token_bucket: Some(BoolValue { value: false }),
            ..base()
        },
        &stats,
        t0,
    );
    let a: Descriptor = vec![("client".into(), "a".into())];
    assert!(matches!(
        l.check(std::slice::from_ref(&a), t0, &mut rng),
        Verdict::Allowed(_)
    ));
    assert!(matches!(
        l.check(std::slice::from_ref(&a), t0, &mut rng),
        Verdict::Limited(_)
    ));
    // Wildcard: each distinct value gets its own bucket of 2.
    for v in ["/x", "/y"] {
        let d: Descriptor = vec![("path".into(), v.into())];
        assert!(matches!(
            l.check(std::slice::from_ref(&d), t0, &mut rng),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            l.check(std::slice::from_ref(&d), t0, &mut rng),
            Verdict::Allowed(_)
        ));
        assert!(matches!(l.check(&[d], t0, &mut rng), Verdict::Limited(_)));
    }
    // No descriptor matched: the default bucket decides.
    let other: Descriptor = vec![("client".into(), "b".into())];
    assert!(matches!(
        l.check(&[other], t0, &mut rng),
        Verdict::Allowed(_)
    ));
}

#[test]
fn duplicate_descriptors_and_bad_status_are_rejected() {
    let d = LocalRateLimitDescriptor {
        entries: vec![Entry {
            key: "k".into(),
            value: "v".into(),
        }],
        token_bucket: Some(tb(1, 1, 1000)),
        shadow_mode: false,
    };
    let err = HttpLocalRateLimitConfig::from_proto(
        &XdsHttpLocalRateLimit {
            descriptors: vec![d.clone(), d],
            ..base()
        },
        "f",
    )
    .unwrap_err();
    assert_eq!(err.path, "f.descriptors[1]");
    let err = HttpLocalRateLimitConfig::from_proto(
        &XdsHttpLocalRateLimit {
            stat_prefix: String::new(),
            ..base()
        },
        "f",
    )
    .unwrap_err();
    assert_eq!(err.path, "f.stat_prefix");
}

#[test]
fn per_connection_limiters_have_their_own_buckets() {
    let stats = Stats::default();
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(1);
    let l = http(
        XdsHttpLocalRateLimit {
            token_bucket: Some(tb(1, 1, 1000)),
            local_rate_limit_per_downstream_connection: true,
            ..base()
        },
        &stats,
        t0,
    );
    assert!(l.config().per_connection);
    let c1 = l.for_connection(t0);
    let c2 = l.for_connection(t0);
    assert!(matches!(c1.check(&[], t0, &mut rng), Verdict::Allowed(_)));
    assert!(matches!(c1.check(&[], t0, &mut rng), Verdict::Limited(_)));
    assert!(matches!(c2.check(&[], t0, &mut rng), Verdict::Allowed(_)));
    assert_eq!(counter(&stats, "lrl.http_local_rate_limit.ok"), 2);
}

#[test]
fn response_headers_to_add_compile() {
    let c = HttpLocalRateLimitConfig::from_proto(
        &XdsHttpLocalRateLimit {
            response_headers_to_add: vec![HeaderValueOption {
                header: Some(HeaderValue {
                    key: "X-Local-Rate-Limit".into(),
                    value: "true".into(),
                    raw_value: vec![],
                }),
                append_action: 2,
                ..Default::default()
            }],
            ..base()
        },
        "f",
    )
    .unwrap();
    assert_eq!(c.response_headers_to_add[0].name, "x-local-rate-limit");
    assert_eq!(c.response_headers_to_add[0].action, AppendAction::Overwrite);
}

#[test]
fn network_filter_closes_connections_without_tokens() {
    let stats = Stats::default();
    let t0 = Instant::now();
    let n = NetworkLocalRateLimiter::from_proto(
        &XdsNetworkLocalRateLimit {
            stat_prefix: "tcp".into(),
            token_bucket: Some(tb(2, 1, 1000)),
            ..Default::default()
        },
        "f",
        &stats,
        t0,
    )
    .unwrap();
    assert!(n.allow_connection(t0));
    assert!(n.allow_connection(t0));
    assert!(!n.allow_connection(t0));
    assert!(n.allow_connection(t0 + Duration::from_secs(1)));
    assert_eq!(counter(&stats, "local_ratelimit.tcp.rate_limited"), 1);
    let off = NetworkLocalRateLimiter::from_proto(
        &XdsNetworkLocalRateLimit {
            stat_prefix: "tcp".into(),
            token_bucket: Some(tb(1, 1, 1000)),
            runtime_enabled: Some(RuntimeFeatureFlag {
                default_value: Some(BoolValue { value: false }),
                runtime_key: "k".into(),
            }),
            ..Default::default()
        },
        "f",
        &stats,
        t0,
    )
    .unwrap();
    assert!((0..5).all(|_| off.allow_connection(t0)));
}
