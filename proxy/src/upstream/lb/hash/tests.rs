use super::*;
use quickcheck::{quickcheck, TestResult};

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.0.0.{}:8080", i + 1)).collect()
}

fn pairs(keys: &[String], w: u32) -> Vec<(&str, u32)> {
    keys.iter().map(|k| (k.as_str(), w)).collect()
}

#[test]
fn xxh64_is_the_reference_function() {
    assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
}

#[test]
fn ring_size_follows_min_ring_size_and_weights() {
    let k = keys(3);
    let r = Ring::build(&pairs(&k, 1), &RingHashConfig::default());
    // ceil(1024 / 3) = 342 points per host.
    assert_eq!(r.len(), 342 * 3);
    let weighted: Vec<(&str, u32)> = vec![(k[0].as_str(), 1), (k[1].as_str(), 3)];
    let r = Ring::build(&weighted, &RingHashConfig::default());
    // The lighter host gets ceil(0.25 × 1024) = 256 points, the other 3× that.
    assert_eq!(r.len(), 1024);
    let capped = RingHashConfig {
        min_ring_size: 1024,
        max_ring_size: 100,
    };
    assert_eq!(Ring::build(&pairs(&k, 1), &capped).len(), 100);
}

#[test]
fn ring_pick_wraps_and_retries_move_on() {
    let k = keys(4);
    let r = Ring::build(&pairs(&k, 1), &RingHashConfig::default());
    let last = r.entries.last().unwrap();
    assert_eq!(r.pick(u64::MAX, 0), Some(r.entries[0].1 as usize));
    assert_eq!(r.pick(last.0, 0), Some(last.1 as usize));
    assert_eq!(r.pick(0, 0), Some(r.entries[0].1 as usize));
    let first_point = r.entries[0].0;
    assert_eq!(r.pick(first_point, 1), Some(r.entries[1].1 as usize));
    assert!(Ring::default().pick(1, 0).is_none());
}

#[test]
fn ring_pick_is_the_first_point_at_or_after_the_hash() {
    let k = keys(5);
    let r = Ring::build(&pairs(&k, 1), &RingHashConfig::default());
    for h in (0..1000u64).map(|i| xxh64(&i.to_le_bytes(), 7)) {
        let idx = r.entries.partition_point(|e| e.0 < h) % r.len();
        assert_eq!(r.pick(h, 0), Some(r.entries[idx].1 as usize));
    }
}

quickcheck! {
    /// Removing one of N hosts remaps its ~1/N of the keys; the remaining hosts keep all their
    /// points (`"<addr>_0"`, ...), and Envoy gives each a few more to keep the ring at
    /// `minimum_ring_size`, so other keys move only if they land on one of those new points.
    fn ring_is_stable_when_a_host_leaves(n: u8, victim: u8) -> TestResult {
        let n = (n % 14) as usize + 3;
        let victim = victim as usize % n;
        let all = keys(n);
        let cfg = RingHashConfig::default();
        let before = Ring::build(&pairs(&all, 1), &cfg);
        let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, k)| k.clone()).collect();
        let after = Ring::build(&pairs(&rest, 1), &cfg);
        let samples = 4000u64;
        let mut moved = 0;
        for i in 0..samples {
            let h = xxh64(&i.to_le_bytes(), 99);
            let b = &all[before.pick(h, 0).unwrap()];
            let a = &rest[after.pick(h, 0).unwrap()];
            if a != b {
                moved += 1;
            }
        }
        let share = moved as f64 / samples as f64;
        let new_points = 1.0 - (before.len() as f64 * (n - 1) as f64 / n as f64) / after.len() as f64;
        TestResult::from_bool(share <= 1.0 / n as f64 + new_points.max(0.0) + 0.03)
    }
}

#[test]
fn ring_shares_follow_weights() {
    let k = keys(2);
    let r = Ring::build(
        &[(k[0].as_str(), 1), (k[1].as_str(), 3)],
        &RingHashConfig::default(),
    );
    let n = 20_000u64;
    let heavy = (0..n)
        .filter(|i| r.pick(xxh64(&i.to_le_bytes(), 1), 0) == Some(1))
        .count() as f64
        / n as f64;
    assert!((heavy - 0.75).abs() < 0.05, "{heavy}");
}

#[test]
fn maglev_fills_the_table_in_weight_proportion() {
    let k = keys(3);
    let m = Maglev::build(
        &[(k[0].as_str(), 1), (k[1].as_str(), 1), (k[2].as_str(), 2)],
        65537,
    );
    let c = m.counts(3);
    assert_eq!(c.iter().sum::<usize>(), 65537);
    assert!((c[2] as f64 / c[0] as f64 - 2.0).abs() < 0.01, "{c:?}");
    assert!(Maglev::build(&[], 65537).pick(1, 0).is_none());
}

#[test]
fn maglev_is_independent_of_host_order_and_mostly_stable() {
    let k = keys(6);
    let fwd = Maglev::build(&pairs(&k, 1), 65537);
    let rev_keys: Vec<String> = k.iter().rev().cloned().collect();
    let rev = Maglev::build(&pairs(&rev_keys, 1), 65537);
    for i in 0..2000u64 {
        let h = xxh64(&i.to_le_bytes(), 3);
        assert_eq!(
            k[fwd.pick(h, 0).unwrap()],
            rev_keys[rev.pick(h, 0).unwrap()]
        );
    }
    let rest = &k[..5];
    let after = Maglev::build(&pairs(rest, 1), 65537);
    let moved = (0..4000u64)
        .filter(|i| {
            let h = xxh64(&i.to_le_bytes(), 5);
            k[fwd.pick(h, 0).unwrap()] != rest[after.pick(h, 0).unwrap()]
        })
        .count() as f64
        / 4000.0;
    assert!(moved < 1.0 / 6.0 + 0.1, "{moved}");
    // Retries perturb the hash.
    let h = 12345;
    assert_eq!(
        fwd.pick(h, 1),
        Some(fwd.table[((h ^ u64::MAX) % 65537) as usize] as usize)
    );
}

#[test]
fn table_size_must_be_prime() {
    use envoy_types::pb::google::protobuf::UInt64Value;
    assert_eq!(maglev_table_size(None, "m").unwrap(), 65537);
    let bad = MaglevLbConfig {
        table_size: Some(UInt64Value { value: 65536 }),
    };
    assert_eq!(
        maglev_table_size(Some(&bad), "c.maglev_lb_config")
            .unwrap_err()
            .path,
        "c.maglev_lb_config.table_size"
    );
    let err = RingHashConfig::from_proto(
        &RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: 4096 }),
            maximum_ring_size: Some(UInt64Value { value: 1024 }),
            ..Default::default()
        },
        "c.ring_hash_lb_config",
    )
    .unwrap_err();
    assert_eq!(err.path, "c.ring_hash_lb_config.minimum_ring_size");
    let err = RingHashConfig::from_proto(
        &RingHashLbConfig {
            hash_function: 1,
            ..Default::default()
        },
        "r",
    )
    .unwrap_err();
    assert_eq!(err.path, "r.hash_function");
}

mod policies {
    use super::*;

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

    fn input<'a>(h: &'a HeaderMap, path: &'a str) -> HashInput<'a> {
        HashInput {
            headers: h,
            path,
            authority: "example.com",
            method: "GET",
            scheme: "http",
            remote: Some("10.1.2.3:5555".parse().unwrap()),
            local: Some("10.0.0.1:80".parse().unwrap()),
        }
    }

    fn header(name: &str, terminal: bool) -> HashPolicy {
        HashPolicy {
            kind: HashKind::Header {
                name: http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                rewrite: None,
            },
            terminal,
        }
    }

    #[test]
    fn header_hash_is_xxh64_of_sorted_values() {
        let h = hdrs(&[("x-user", "bob")]);
        let r = compute_hash(&[header("x-user", false)], &input(&h, "/"));
        assert_eq!(r.hash, Some(xxh64(b"bob", 0)));
        let ab = hdrs(&[("x-user", "b"), ("x-user", "a")]);
        let ba = hdrs(&[("x-user", "a"), ("x-user", "b")]);
        let p = [header("x-user", false)];
        assert_eq!(
            compute_hash(&p, &input(&ab, "/")).hash,
            compute_hash(&p, &input(&ba, "/")).hash
        );
        assert_eq!(
            compute_hash(&p, &input(&ab, "/")).hash,
            Some(xxh64(b"b", xxh64(b"a", 0)))
        );
        assert_eq!(compute_hash(&p, &input(&HeaderMap::new(), "/")).hash, None);
    }

    #[test]
    fn policies_combine_by_rotation_and_terminal_stops() {
        let h = hdrs(&[("a", "1"), ("b", "2")]);
        let both = compute_hash(&[header("a", false), header("b", false)], &input(&h, "/"));
        let (ha, hb) = (xxh64(b"1", 0), xxh64(b"2", 0));
        assert_eq!(both.hash, Some(ha.rotate_left(1) ^ hb));
        let first = compute_hash(&[header("a", true), header("b", false)], &input(&h, "/"));
        assert_eq!(first.hash, Some(ha));
        // A terminal policy without a hash does not stop the walk.
        let skip = compute_hash(&[header("zzz", true), header("b", false)], &input(&h, "/"));
        assert_eq!(skip.hash, Some(hb));
    }

    #[test]
    fn cookie_source_ip_and_query_parameter() {
        let cookie = |ttl: Option<Duration>| HashPolicy {
            kind: HashKind::Cookie {
                name: "sess".into(),
                ttl,
                path: "/".into(),
                attributes: vec![],
            },
            terminal: false,
        };
        let h = hdrs(&[("cookie", "a=1; sess=\"xyz\"")]);
        assert_eq!(
            compute_hash(&[cookie(None)], &input(&h, "/")).hash,
            Some(xxh64(b"xyz", 0))
        );
        // Missing cookie without ttl: no hash, no cookie.
        let none = compute_hash(&[cookie(None)], &input(&HeaderMap::new(), "/"));
        assert_eq!(none, HashResult::default());
        // With ttl: a cookie derived from the connection's addresses is set.
        let gen = compute_hash(
            &[cookie(Some(Duration::from_secs(60)))],
            &input(&HeaderMap::new(), "/"),
        );
        let value = format!("{:016x}", xxh64(b"10.1.2.3:555510.0.0.1:80", 0));
        assert_eq!(gen.hash, Some(xxh64(value.as_bytes(), 0)));
        assert_eq!(
            gen.set_cookie.unwrap(),
            format!("sess=\"{value}\"; Max-Age=60; Path=/; HttpOnly")
        );
        let ip = HashPolicy {
            kind: HashKind::SourceIp,
            terminal: false,
        };
        assert_eq!(
            compute_hash(&[ip], &input(&HeaderMap::new(), "/")).hash,
            Some(xxh64(b"10.1.2.3", 0))
        );
        let q = HashPolicy {
            kind: HashKind::QueryParameter("id".into()),
            terminal: false,
        };
        let e = HeaderMap::new();
        assert_eq!(
            compute_hash(std::slice::from_ref(&q), &input(&e, "/p?x=1&id=42&id=7")).hash,
            Some(xxh64(b"42", 0))
        );
        assert_eq!(
            compute_hash(std::slice::from_ref(&q), &input(&e, "/p?x=1")).hash,
            None
        );
    }

    #[test]
    fn from_proto_covers_the_kinds() {
        use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
            ConnectionProperties, FilterState, Header,
        };
        let p = |s| XdsHashPolicy {
            terminal: true,
            policy_specifier: Some(s),
        };
        let h = HashPolicy::from_proto(
            &p(PolicySpecifier::Header(Header {
                header_name: "X-User".into(),
                regex_rewrite: None,
            })),
            "h",
        )
        .unwrap()
        .unwrap();
        assert!(h.terminal);
        assert!(matches!(h.kind, HashKind::Header { ref name, .. } if name == "x-user"));
        assert!(HashPolicy::from_proto(
            &p(PolicySpecifier::ConnectionProperties(
                ConnectionProperties { source_ip: false }
            )),
            "h"
        )
        .unwrap()
        .is_none());
        let err = HashPolicy::from_proto(
            &p(PolicySpecifier::FilterState(FilterState {
                key: "k".into(),
            })),
            "route.hash_policy[0]",
        )
        .unwrap_err();
        assert_eq!(err.path, "route.hash_policy[0].filter_state");
        assert!(envoy_substitution("\\1-x$") == "${1}-x$$");
    }
}
