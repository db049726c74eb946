use super::*;
use crate::upstream::HostAddr;

fn set(weights: &[u32]) -> HostSet {
    HostSet::new(
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr: std::net::SocketAddr = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                Arc::new(Host::new(HostAddr::Tcp(addr), Arc::from("h"), *w))
            })
            .collect(),
    )
}

fn lr(choice_count: u32, bias: f64, explicit: bool, full_scan: bool) -> LbPolicy {
    LbPolicy::LeastRequest {
        choice_count,
        active_request_bias: bias,
        bias_explicit: explicit,
        full_scan,
    }
}

#[test]
fn least_request_prefers_idle_host() {
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    let s = set(&[1, 1]);
    s.hosts[0].active_rq.store(100, Ordering::Relaxed);
    let mut rng = StdRng::seed_from_u64(1);
    // With 2 choices out of 2 hosts, the idle host wins unless both samples hit the busy
    // one (probability 1/4 per pick): 750 expected of 1000, σ ≈ 13.7.
    let idle = (0..1000)
        .filter(|_| {
            pick_least_request(&s.hosts, &lr(2, 1.0, false, false), &mut rng)
                .unwrap()
                .addr
                == s.hosts[1].addr
        })
        .count();
    assert!((650..=850).contains(&idle), "idle host picked {idle}/1000");
    // A full scan always finds it.
    for _ in 0..100 {
        let h = pick_least_request(&s.hosts, &lr(2, 1.0, false, true), &mut rng).unwrap();
        assert_eq!(h.addr, s.hosts[1].addr);
    }
}

#[test]
fn full_scan_breaks_ties_uniformly() {
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    let s = set(&[1, 1, 1, 1]);
    s.hosts[3].active_rq.store(5, Ordering::Relaxed);
    let mut rng = StdRng::seed_from_u64(2);
    let mut counts = [0usize; 4];
    for _ in 0..3000 {
        let h = pick_least_request(&s.hosts, &lr(2, 1.0, false, true), &mut rng).unwrap();
        let i = s.hosts.iter().position(|x| Arc::ptr_eq(x, h)).unwrap();
        counts[i] += 1;
    }
    // 1000 expected each of the three idle hosts (σ ≈ 26); never the busy one.
    assert_eq!(counts[3], 0);
    assert!(
        counts[..3].iter().all(|c| (850..=1150).contains(c)),
        "{counts:?}"
    );
}

#[test]
fn empty_list_has_no_pick() {
    let s = set(&[]);
    let mut rng = rand::rng();
    assert!(pick_least_request(&s.hosts, &lr(2, 1.0, false, false), &mut rng).is_none());
}

mod smooth {
    use super::*;
    use quickcheck::quickcheck;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn edf_order_matches_envoy() {
        // Deadlines: host 0 at 1/3, 2/3, 1; host 1 at 1. At the tie host 1 was added first.
        assert_eq!(SmoothWrr::build(&[3, 1]).cycle(), &[0, 0, 1, 0]);
        // Equal weights are plain round robin.
        assert_eq!(SmoothWrr::build(&[2, 2, 2]).cycle(), &[0, 1, 2]);
        // Smooth: 5:1:1 spreads the light hosts instead of bunching them.
        let c = SmoothWrr::build(&[5, 1, 1]);
        assert_eq!(c.cycle().len(), 7);
        assert_ne!(&c.cycle()[..5], &[0, 0, 0, 0, 0]);
    }

    quickcheck! {
        fn smooth_wrr_gives_each_host_its_weight_per_cycle(ws: Vec<u8>) -> bool {
            let ws: Vec<u32> = ws.iter().take(12).map(|w| *w as u32 % 50 + 1).collect();
            if ws.is_empty() {
                return SmoothWrr::build(&ws).cycle().is_empty();
            }
            let g = ws.iter().copied().fold(0, gcd);
            let c = SmoothWrr::build(&ws);
            (0..ws.len()).all(|i| {
                c.cycle().iter().filter(|x| **x as usize == i).count() as u32 == ws[i] / g
            })
        }
    }

    #[test]
    fn smooth_wrr_picks_through_a_shared_cursor() {
        let wrr = SmoothWrr::build(&[1, 3]);
        let rr = AtomicUsize::new(0);
        let heavy = (0..400).filter(|_| wrr.pick(&rr) == Some(1)).count();
        assert_eq!(heavy, 300);
        assert!(SmoothWrr::build(&[]).pick(&rr).is_none());
    }

    #[test]
    fn least_request_bias_shifts_load_from_busy_weighted_hosts() {
        let s = set(&[2, 1]);
        let mut rng = StdRng::seed_from_u64(9);
        let n = 20_000;
        let heavy = |rng: &mut StdRng| {
            (0..n)
                .filter(|_| {
                    pick_least_request(&s.hosts, &lr(2, 1.0, false, false), rng)
                        .unwrap()
                        .addr
                        == s.hosts[0].addr
                })
                .count() as f64
                / n as f64
        };
        // Idle: shares follow weights (2/3).
        assert!((heavy(&mut rng) - 2.0 / 3.0).abs() < 0.02);
        // Host 0 has 3 requests in flight: 2/4 vs 1/1 → share 1/3.
        s.hosts[0].active_rq.store(3, Ordering::Relaxed);
        assert!((heavy(&mut rng) - 1.0 / 3.0).abs() < 0.02);
        // Bias 0 ignores the load.
        let zero = (0..n)
            .filter(|_| {
                pick_least_request(&s.hosts, &lr(2, 0.0, true, false), &mut rng)
                    .unwrap()
                    .addr
                    == s.hosts[0].addr
            })
            .count() as f64
            / n as f64;
        assert!((zero - 2.0 / 3.0).abs() < 0.02);
    }

    #[test]
    fn explicit_bias_weighs_equal_hosts_by_load() {
        // Envoy uses weighted selection when active_request_bias is set, even for equal
        // weights: 1/(3+1) vs 1/1 → the busy host gets 1/5.
        let s = set(&[1, 1]);
        s.hosts[0].active_rq.store(3, Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(3);
        let n = 20_000;
        let busy = (0..n)
            .filter(|_| {
                pick_least_request(&s.hosts, &lr(2, 1.0, true, false), &mut rng)
                    .unwrap()
                    .addr
                    == s.hosts[0].addr
            })
            .count() as f64
            / n as f64;
        assert!((busy - 0.2).abs() < 0.02, "{busy}");
    }

    #[test]
    fn real_valued_weights_keep_their_ratio() {
        let c = SmoothWrr::build_f64(&[0.7, 1.0, 0.0]);
        assert_eq!(c.cycle().len(), 17);
        assert_eq!(c.cycle().iter().filter(|i| **i == 0).count(), 7);
        assert!(SmoothWrr::build_f64(&[0.0, 0.0]).cycle().is_empty());
    }
}

mod priorities {
    use super::*;
    use crate::upstream::lb::priority::*;

    fn lvl(total: u64, healthy: u64) -> LevelHealth {
        LevelHealth {
            total,
            healthy,
            degraded: 0,
        }
    }

    #[test]
    fn overprovisioning_spills_load_as_envoys_table() {
        // Envoy's docs: P0 healthy share → load to P0/P1 with a healthy P1.
        for (p0_healthy, p0_load) in [(100, 100), (72, 100), (50, 70), (25, 35), (0, 0)] {
            let l = priority_load(&[lvl(100, p0_healthy), lvl(100, 100)], 140, 50.0);
            assert_eq!(
                l.healthy,
                vec![p0_load, 100 - p0_load],
                "P0 healthy {p0_healthy}%"
            );
        }
    }

    #[test]
    fn load_scales_up_when_total_availability_is_low() {
        // 10% / 20% healthy with factor 1.4: health 14 / 28 → normalized to 100.
        let l = priority_load(&[lvl(10, 1), lvl(10, 2), lvl(10, 0)], 140, 0.0);
        assert_eq!(l.healthy.iter().sum::<u32>(), 100);
        assert_eq!(l.healthy, vec![34, 66, 0]);
    }

    #[test]
    fn panic_mode_per_level_and_total() {
        // One level at 40% healthy: below the 50% threshold.
        let l = priority_load(&[lvl(10, 4)], 140, 50.0);
        assert_eq!(l.panic, vec![true]);
        assert_eq!(l.healthy, vec![100]);
        // Not in panic when total availability is 100 even if a level is weak.
        let l = priority_load(&[lvl(10, 4), lvl(10, 10)], 140, 50.0);
        assert_eq!(l.panic, vec![false, false]);
        // Every level in panic: load follows host counts (remainder to the first).
        let l = priority_load(&[lvl(10, 1), lvl(20, 0)], 140, 50.0);
        assert_eq!(l.panic, vec![true, true]);
        assert_eq!(l.healthy, vec![34, 66]);
        // Panic disabled and nothing healthy: all load to P0 (and the pick fails there).
        let l = priority_load(&[lvl(10, 0), lvl(10, 0)], 140, 0.0);
        assert_eq!(l.healthy, vec![100, 0]);
        assert_eq!(l.panic, vec![false, false]);
    }

    #[test]
    fn degraded_hosts_take_the_leftover_load() {
        let l = priority_load(
            &[LevelHealth {
                total: 10,
                healthy: 5,
                degraded: 5,
            }],
            140,
            50.0,
        );
        assert_eq!((l.healthy[0], l.degraded[0]), (70, 30));
        assert_eq!(choose_priority(&l, 69), (0, Availability::Healthy));
        assert_eq!(choose_priority(&l, 70), (0, Availability::Degraded));
    }

    #[test]
    fn choose_priority_walks_cumulative_load() {
        let l = priority_load(&[lvl(100, 50), lvl(100, 100)], 140, 50.0);
        assert_eq!(choose_priority(&l, 0), (0, Availability::Healthy));
        assert_eq!(choose_priority(&l, 69), (0, Availability::Healthy));
        assert_eq!(choose_priority(&l, 70), (1, Availability::Healthy));
        assert_eq!(choose_priority(&l, 199), (1, Availability::Healthy));
    }

    #[test]
    fn locality_weight_tracks_availability() {
        assert_eq!(locality_effective_weight(10, &lvl(10, 10), 140), 10.0);
        assert_eq!(locality_effective_weight(10, &lvl(10, 8), 140), 10.0);
        assert!((locality_effective_weight(10, &lvl(10, 5), 140) - 7.0).abs() < 1e-9);
        assert_eq!(locality_effective_weight(10, &lvl(0, 0), 140), 0.0);
        // EDF over the effective weights gives each locality its share.
        let mut edf = EdfScheduler::new(&[7.0, 10.0]);
        let first = (0..170).filter(|_| edf.pick() == Some(0)).count();
        assert_eq!(first, 70);
    }
}

mod tables {
    use super::*;

    #[test]
    fn hash_table_picks_hosts_of_the_list() {
        let keys = [
            ("127.0.0.1:1000", 1.0 / 3.0),
            ("127.0.0.1:1001", 1.0 / 3.0),
            ("127.0.0.1:1002", 1.0 / 3.0),
        ];
        for policy in [
            LbPolicy::RingHash(hash::RingHashConfig::default()),
            LbPolicy::Maglev(hash::DEFAULT_MAGLEV_TABLE_SIZE),
        ] {
            let t = HashTable::build(&policy, &keys).unwrap();
            let a = t.pick(42, 0).unwrap();
            assert!(a < 3);
            // Same hash, same host.
            assert_eq!(t.pick(42, 0), Some(a));
            assert!(HashTable::build(&policy, &[])
                .unwrap()
                .pick(42, 0)
                .is_none());
        }
        assert!(HashTable::build(&LbPolicy::Random, &keys).is_none());
    }

    #[test]
    fn host_retries_skip_rejected_hosts_and_fall_back_to_the_last() {
        let s = set(&[1, 1, 1]);
        let first = s.hosts[0].addr.clone();
        let picked = pick_with_host_retries(1, |a| s.hosts.get(a as usize), |h| h.addr == first);
        assert_eq!(picked.unwrap().addr, s.hosts[1].addr);
        // Default max attempts (1) means two picks; if both are rejected the last is used.
        let mut calls = 0;
        let picked = pick_with_host_retries(
            1,
            |_| {
                calls += 1;
                s.hosts.first()
            },
            |_| true,
        );
        assert_eq!(calls, 2);
        assert_eq!(picked.unwrap().addr, first);
    }
}
