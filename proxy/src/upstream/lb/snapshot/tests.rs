use std::collections::HashMap;

use super::*;
use crate::upstream::lb::hash::RingHashConfig;

/// One endpoint: (port, priority, locality zone, health, weight).
type Ep = (u16, u32, &'static str, EdsHealth, u32);

fn membership(eps: &[Ep], locality_weights: &[(u32, &'static str, u32)]) -> Membership {
    let mut m = Membership::default();
    let mut locs: HashMap<&str, Arc<Locality>> = HashMap::new();
    let mut loc = |z: &'static str| {
        locs.entry(z)
            .or_insert_with(|| {
                Arc::new(Locality {
                    zone: z.to_string(),
                    ..Locality::default()
                })
            })
            .clone()
    };
    for &(port, priority, zone, health, weight) in eps {
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        m.members.push(Member {
            host: Arc::new(Host::new(HostAddr::Tcp(addr), Arc::from(""), weight)),
            weight,
            priority,
            locality: loc(zone),
            health,
            hash_key: None,
        });
    }
    for &(p, zone, w) in locality_weights {
        m.locality_weights.insert((p, loc(zone)), w);
    }
    m
}

fn cfg(policy: LbPolicy) -> LbConfig {
    LbConfig {
        policy,
        ..LbConfig::default()
    }
}

fn build(m: &Membership, c: &LbConfig) -> HostSet {
    HostSet::build(m, c, |_| false, &HostSet::default(), 0).0
}

/// Picks `n` times and counts picks per port.
fn spread(set: &HostSet, c: &LbConfig, n: usize, panic: &Counter) -> HashMap<u16, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        if let Some(h) = set.pick(c, &PickCtx::default(), panic) {
            let HostAddr::Tcp(a) = &h.addr else {
                panic!("tcp")
            };
            *out.entry(a.port()).or_default() += 1;
        }
    }
    out
}

use EdsHealth::{Degraded, Draining, Healthy, Unhealthy};

#[test]
fn unhealthy_priority_zero_fails_over_to_priority_one() {
    let m = membership(
        &[
            (1, 0, "", Unhealthy, 1),
            (2, 0, "", Unhealthy, 1),
            (3, 1, "", Healthy, 1),
        ],
        &[],
    );
    let c = cfg(LbPolicy::RoundRobin);
    let set = build(&m, &c);
    assert_eq!(set.load().healthy, vec![0, 100]);
    assert_eq!(set.load().panic, vec![false, false]);
    let panic = Counter::detached();
    assert_eq!(spread(&set, &c, 50, &panic), HashMap::from([(3, 50)]));
    assert_eq!(panic.get(), 0);
    assert_eq!(
        set.counts,
        Counts {
            total: 3,
            healthy: 1,
            degraded: 0,
            excluded: 0
        }
    );
}

#[test]
fn overprovisioning_splits_load_between_priorities() {
    // P0: 1 of 2 healthy → 50% × 1.4 = 70% of the load; P1 takes the other 30%.
    let m = membership(
        &[
            (1, 0, "", Healthy, 1),
            (2, 0, "", Unhealthy, 1),
            (3, 1, "", Healthy, 1),
        ],
        &[],
    );
    let c = cfg(LbPolicy::Random);
    let set = build(&m, &c);
    assert_eq!(set.load().healthy, vec![70, 30]);
    let n = 10_000;
    let s = spread(&set, &c, n, &Counter::detached());
    // Binomial(10 000, 0.7): σ ≈ 46; ±300 is more than 6σ.
    let p0 = *s.get(&1).unwrap_or(&0) as i64;
    assert!((p0 - 7000).abs() < 300, "{s:?}");
    assert_eq!(
        s.get(&2),
        None,
        "an unhealthy host was picked outside panic"
    );
    // A custom factor moves the split: 1.0 → 50/50.
    let mut m2 = m.clone();
    m2.overprovisioning = 100;
    assert_eq!(build(&m2, &c).load().healthy, vec![50, 50]);
}

#[test]
fn panic_mode_balances_over_every_host() {
    // 1 of 4 healthy is below the 50% threshold: every host takes traffic.
    let m = membership(
        &[
            (1, 0, "", Healthy, 1),
            (2, 0, "", Unhealthy, 1),
            (3, 0, "", Unhealthy, 1),
            (4, 0, "", Draining, 1),
        ],
        &[],
    );
    let c = cfg(LbPolicy::RoundRobin);
    let set = build(&m, &c);
    assert_eq!(set.load().panic, vec![true]);
    let panic = Counter::detached();
    let s = spread(&set, &c, 40, &panic);
    // Round robin over all four (draining hosts included, as Envoy's `hosts()`).
    assert_eq!(s, HashMap::from([(1, 10), (2, 10), (3, 10), (4, 10)]));
    assert_eq!(panic.get(), 40);
    // Threshold 0 disables panic: only the healthy host.
    let c0 = LbConfig {
        panic_threshold: 0,
        ..c
    };
    let set = build(&m, &c0);
    assert_eq!(spread(&set, &c0, 10, &panic), HashMap::from([(1, 10)]));
}

#[test]
fn draining_hosts_are_excluded_from_availability() {
    // 1 healthy + 1 draining: the draining host does not count, so P0 is 100% available.
    let m = membership(&[(1, 0, "", Healthy, 1), (2, 0, "", Draining, 1)], &[]);
    let c = cfg(LbPolicy::RoundRobin);
    let set = build(&m, &c);
    assert_eq!(set.load().healthy, vec![100]);
    assert_eq!(set.load().panic, vec![false]);
    assert_eq!(set.counts.excluded, 1);
    assert_eq!(
        spread(&set, &c, 10, &Counter::detached()),
        HashMap::from([(1, 10)])
    );
    assert_eq!(set.info[1].health_flags(), "/eds_status_draining");
}

#[test]
fn degraded_hosts_take_load_only_when_healthy_ones_run_short() {
    let c = cfg(LbPolicy::RoundRobin);
    // All degraded: 100% to the degraded hosts (healthy + degraded share is not below the
    // panic threshold).
    let m = membership(&[(1, 0, "", Degraded, 1), (2, 0, "", Degraded, 1)], &[]);
    let set = build(&m, &c);
    assert_eq!(set.load().degraded, vec![100]);
    assert_eq!(
        spread(&set, &c, 10, &Counter::detached()),
        HashMap::from([(1, 5), (2, 5)])
    );
    // 2 healthy of 3 → 93% healthy, 7% degraded.
    let m = membership(
        &[
            (1, 0, "", Healthy, 1),
            (2, 0, "", Healthy, 1),
            (3, 0, "", Degraded, 1),
        ],
        &[],
    );
    let set = build(&m, &c);
    assert_eq!((set.load().healthy[0], set.load().degraded[0]), (93, 7));
    assert_eq!(set.counts.degraded, 1);
    assert_eq!(set.info[2].health_flags(), "/degraded_eds_health");
}

#[test]
fn weighted_priority_health_uses_weights() {
    // By count P0 is 50% healthy (70% load); by weight 9 of 10 (100%).
    let mut m = membership(
        &[
            (1, 0, "", Healthy, 9),
            (2, 0, "", Unhealthy, 1),
            (3, 1, "", Healthy, 1),
        ],
        &[],
    );
    let c = cfg(LbPolicy::RoundRobin);
    assert_eq!(build(&m, &c).load().healthy, vec![70, 30]);
    m.weighted_priority_health = true;
    assert_eq!(build(&m, &c).load().healthy, vec![100, 0]);
}

#[test]
fn weighted_round_robin_follows_envoys_edf_cycle() {
    let m = membership(&[(1, 0, "", Healthy, 1), (2, 0, "", Healthy, 3)], &[]);
    let c = cfg(LbPolicy::RoundRobin);
    let set = build(&m, &c);
    let order: Vec<u16> = (0..8)
        .map(|_| {
            match &set
                .pick(&c, &PickCtx::default(), &Counter::detached())
                .unwrap()
                .addr
            {
                HostAddr::Tcp(a) => a.port(),
                _ => 0,
            }
        })
        .collect();
    // EDF over 1:3 (ties to the first added): 2 2 1 2 (+ repeat), not 2 2 2 1.
    assert_eq!(order, vec![2, 2, 1, 2, 2, 2, 1, 2]);
}

#[test]
fn unweighted_round_robin_position_survives_a_rebuild() {
    let m = membership(
        &[
            (1, 0, "", Healthy, 1),
            (2, 0, "", Healthy, 1),
            (3, 0, "", Healthy, 1),
        ],
        &[],
    );
    let c = cfg(LbPolicy::RoundRobin);
    let set = build(&m, &c);
    let p = Counter::detached();
    let first = set.pick(&c, &PickCtx::default(), &p).unwrap().clone();
    let (next, _) = HostSet::build(&m, &c, |_| false, &set, 0);
    let second = next.pick(&c, &PickCtx::default(), &p).unwrap();
    assert!(!Arc::ptr_eq(&first, second), "the cursor restarted");
}

#[test]
fn ejected_hosts_leave_the_healthy_set() {
    let m = membership(
        &[
            (1, 0, "", Healthy, 1),
            (2, 0, "", Healthy, 1),
            (3, 0, "", Healthy, 1),
        ],
        &[],
    );
    let c = cfg(LbPolicy::RoundRobin);
    let ejected = m.members[0].host.clone();
    let (set, _) = HostSet::build(
        &m,
        &c,
        |h| std::ptr::eq(h, &*ejected),
        &HostSet::default(),
        0,
    );
    assert_eq!(set.counts.healthy, 2);
    assert_eq!(set.info[0].health_flags(), "/failed_outlier_check");
    assert_eq!(
        spread(&set, &c, 10, &Counter::detached()),
        HashMap::from([(2, 5), (3, 5)])
    );
}

#[test]
fn locality_weights_split_traffic_by_effective_weight() {
    let m = membership(
        &[
            (1, 0, "a", Healthy, 1),
            (2, 0, "b", Healthy, 1),
            (3, 0, "b", Healthy, 1),
        ],
        &[(0, "a", 1), (0, "b", 4)],
    );
    let c = LbConfig {
        locality_weighted: true,
        ..cfg(LbPolicy::RoundRobin)
    };
    let set = build(&m, &c);
    let s = spread(&set, &c, 50, &Counter::detached());
    // Localities 1:4 per 5-pick cycle; round robin inside b.
    assert_eq!(s, HashMap::from([(1, 10), (2, 20), (3, 20)]));
    // Without locality weighting: plain round robin over the three.
    let plain = cfg(LbPolicy::RoundRobin);
    let s = spread(&build(&m, &plain), &plain, 30, &Counter::detached());
    assert_eq!(s, HashMap::from([(1, 10), (2, 10), (3, 10)]));
}

#[test]
fn locality_weight_shrinks_with_its_unhealthy_hosts() {
    // b: 1 of 2 healthy → 4 × min(1, 1.4 × 0.5) = 2.8 against a's 1.
    let m = membership(
        &[
            (1, 0, "a", Healthy, 1),
            (2, 0, "b", Healthy, 1),
            (3, 0, "b", Unhealthy, 1),
        ],
        &[(0, "a", 1), (0, "b", 4)],
    );
    let c = LbConfig {
        locality_weighted: true,
        ..cfg(LbPolicy::RoundRobin)
    };
    let s = spread(&build(&m, &c), &c, 38, &Counter::detached());
    assert_eq!(s, HashMap::from([(1, 10), (2, 28)]));
}

#[test]
fn hash_picks_are_stable_and_follow_the_priority_of_the_hash() {
    let m = membership(
        &[
            (1, 0, "", Healthy, 1),
            (2, 0, "", Healthy, 1),
            (3, 0, "", Healthy, 1),
        ],
        &[],
    );
    for policy in [
        LbPolicy::RingHash(RingHashConfig::default()),
        LbPolicy::Maglev(65537),
    ] {
        let c = cfg(policy);
        let set = build(&m, &c);
        let p = Counter::detached();
        for key in 0..50u64 {
            let ctx = PickCtx {
                hash: Some(key.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                ..PickCtx::default()
            };
            let a = set.pick(&c, &ctx, &p).unwrap();
            let b = set.pick(&c, &ctx, &p).unwrap();
            assert!(Arc::ptr_eq(a, b));
            // Avoiding the host moves to another one within a few attempts (a ring retry takes
            // the next point, which may belong to the same host, as in Envoy).
            let avoid = [a.clone()];
            let again = set
                .pick(
                    &c,
                    &PickCtx {
                        avoid: &avoid,
                        max_host_attempts: 64,
                        ..ctx
                    },
                    &p,
                )
                .unwrap();
            assert!(!Arc::ptr_eq(a, again));
        }
    }
}

#[test]
fn hash_tables_hold_healthy_hosts_only_and_all_in_panic() {
    let c = cfg(LbPolicy::RingHash(RingHashConfig::default()));
    let m = membership(
        &[
            (1, 0, "", Healthy, 1),
            (2, 0, "", Healthy, 1),
            (3, 0, "", Unhealthy, 1),
        ],
        &[],
    );
    let set = build(&m, &c);
    let s = spread(&set, &c, 300, &Counter::detached());
    assert!(!s.contains_key(&3), "{s:?}");
    // 1 of 3 healthy is panic: the unhealthy hosts are on the ring.
    let m = membership(
        &[
            (1, 0, "", Healthy, 1),
            (2, 0, "", Unhealthy, 1),
            (3, 0, "", Unhealthy, 1),
        ],
        &[],
    );
    let set = build(&m, &c);
    let panic = Counter::detached();
    let s = spread(&set, &c, 300, &panic);
    assert_eq!(s.len(), 3, "{s:?}");
    assert_eq!(panic.get(), 300);
    // All degraded: the degraded share is served from a ring with no host (Envoy's rings
    // hold healthy hosts only).
    let m = membership(&[(1, 0, "", Degraded, 1)], &[]);
    let set = build(&m, &c);
    assert!(set
        .pick(&c, &PickCtx::default(), &Counter::detached())
        .is_none());
}

#[test]
fn ring_stats_and_locality_weighted_hashing() {
    let m = membership(
        &[
            (1, 0, "a", Healthy, 1),
            (2, 0, "b", Healthy, 1),
            (3, 0, "b", Healthy, 1),
        ],
        &[(0, "a", 1), (0, "b", 1)],
    );
    let c = LbConfig {
        locality_weighted: true,
        ..cfg(LbPolicy::RingHash(RingHashConfig::default()))
    };
    let (set, stats) = HostSet::build(&m, &c, |_| false, &HostSet::default(), 0);
    // Normalised weights 1/2, 1/4, 1/4: the lightest host gets ceil(1024 / 4) points and
    // the ring scales to 1024.
    assert_eq!(stats.ring, Some((1024, 256, 512)));
    assert!(set
        .pick(&c, &PickCtx::default(), &Counter::detached())
        .is_some());
    // Locality weighting without any locality weight: Envoy's rings are empty.
    let m = membership(&[(1, 0, "a", Healthy, 1)], &[]);
    let (set, stats) = HostSet::build(&m, &c, |_| false, &HostSet::default(), 0);
    assert_eq!(stats.ring, None);
    assert!(set
        .pick(&c, &PickCtx::default(), &Counter::detached())
        .is_none());
}

#[test]
fn membership_changes_count_per_level_and_max_weight_is_the_top_levels() {
    let a = membership(&[(1, 0, "", Healthy, 2), (2, 1, "", Healthy, 7)], &[]);
    assert_eq!(a.changed_levels(&Membership::default()), 2);
    assert_eq!(a.changed_levels(&a.clone()), 0);
    assert_eq!(a.max_host_weight(), 7);
    let mut b = a.clone();
    b.members.pop();
    assert_eq!(b.changed_levels(&a), 1);
    assert_eq!(Membership::default().max_host_weight(), 0);
}

#[test]
fn health_flags_match_envoys_strings() {
    let info = |health, ejected| HostInfo {
        priority: 0,
        locality: Arc::new(Locality::default()),
        health,
        ejected,
    };
    assert_eq!(info(Healthy, false).health_flags(), "healthy");
    assert_eq!(info(Unhealthy, false).health_flags(), "/failed_eds_health");
    assert_eq!(
        info(Degraded, true).health_flags(),
        "/failed_outlier_check/degraded_eds_health"
    );
    assert_eq!(info(Draining, false).eds_health_status(), "DRAINING");
}

mod properties {
    use super::*;
    use quickcheck::quickcheck;

    fn health(v: u8) -> EdsHealth {
        match v % 4 {
            0 => Healthy,
            1 => Degraded,
            2 => Unhealthy,
            _ => Draining,
        }
    }

    quickcheck! {
        /// Whatever the health mix: the load sums to 100 when there are hosts, and a pick
        /// outside panic mode never returns an unhealthy or draining host.
        fn picks_respect_health_outside_panic(eps: Vec<(u8, u8, u8)>, policy: u8) -> bool {
            let eps: Vec<Ep> = eps
                .iter()
                .take(12)
                .enumerate()
                .map(|(i, (p, h, w))| (1000 + i as u16, (*p % 3) as u32, "", health(*h), *w as u32 % 4 + 1))
                .collect();
            let m = membership(&eps, &[]);
            let c = cfg(match policy % 3 {
                0 => LbPolicy::RoundRobin,
                1 => LbPolicy::Random,
                _ => LbPolicy::RingHash(RingHashConfig::default()),
            });
            let set = build(&m, &c);
            if eps.is_empty() {
                return set.pick(&c, &PickCtx::default(), &Counter::detached()).is_none();
            }
            let l = set.load();
            let total: u32 = l.healthy.iter().sum::<u32>() + l.degraded.iter().sum::<u32>();
            if total != 100 {
                return false;
            }
            let any_panic = l.panic.iter().any(|p| *p);
            (0..50).all(|i| {
                let ctx = PickCtx { hash: Some(i * 7919), ..PickCtx::default() };
                match set.pick(&c, &ctx, &Counter::detached()) {
                    None => true,
                    Some(h) => {
                        let idx = set.hosts.iter().position(|x| Arc::ptr_eq(x, h)).unwrap();
                        let info = &set.info[idx];
                        any_panic || info.is_healthy() || info.is_degraded()
                    }
                }
            })
        }
    }
}
