//! The load-balancing runtime of one cluster: the current [`HostSet`] snapshot, the
//! membership it was built from, and the outlier detector whose ejections rebuild it.
//!
//! Writers (EDS/DNS updates, ejections, the outlier interval) serialise on one mutex, build a
//! new snapshot off the request path and publish it with one pointer swap; readers (picks)
//! only load the `ArcSwap`. The outlier interval task holds a weak reference and ends when the
//! cluster is dropped or replaced.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::snapshot::{HostSet, Membership};
use super::{LbConfig, LbPolicy, PickCtx};
use crate::policy::outlier::{Outcome, OutlierConfig, OutlierDetector};
use crate::stats::{Counter, Gauge, Stats};
use crate::upstream::{Host, HostAddr};

/// The load-balancing state of one cluster.
#[derive(Debug)]
pub struct Balancer {
    /// The compiled LB configuration.
    pub cfg: LbConfig,
    /// The published snapshot (shared with `Cluster::hosts`).
    hosts: Arc<ArcSwap<HostSet>>,
    /// The membership behind the snapshot; its lock serialises rebuilds.
    membership: Mutex<Arc<Membership>>,
    /// `outlier_detection`, when configured.
    outlier: Option<OutlierDetector<HostAddr>>,
    /// Whether the outlier interval task runs.
    ticker: AtomicBool,
    /// Initial round-robin position (Envoy's per-balancer random seed).
    seed: usize,
    /// EDS/DNS clusters report `max_host_weight`; static ones leave it at 0, as Envoy.
    dynamic: bool,
    /// Stats.
    pub stats: LbStats,
}

/// LB and membership stats under `cluster.<name>.` (Envoy's names).
#[derive(Debug, Clone)]
pub struct LbStats {
    /// `lb_healthy_panic`: picks made in panic mode.
    pub lb_healthy_panic: Counter,
    membership_total: Gauge,
    membership_healthy: Gauge,
    membership_degraded: Gauge,
    membership_excluded: Gauge,
    membership_change: Counter,
    max_host_weight: Gauge,
    /// `ring_hash_lb.size`, `min_hashes_per_host`, `max_hashes_per_host`.
    ring: Option<[Gauge; 3]>,
    /// `maglev_lb.min_entries_per_host`, `max_entries_per_host`.
    maglev: Option<[Gauge; 2]>,
}

/// Envoy LB counters for features Petrel does not run (zone-aware routing, subsets): they are
/// registered so `/stats` lists what Envoy lists, and stay 0 as in Envoy without them.
const UNUSED_LB_COUNTERS: &[&str] = &[
    "lb_local_cluster_not_ok",
    "lb_recalculate_zone_structures",
    "lb_subsets_created",
    "lb_subsets_fallback",
    "lb_subsets_fallback_panic",
    "lb_subsets_removed",
    "lb_subsets_selected",
    "lb_zone_cluster_too_small",
    "lb_zone_no_capacity_left",
    "lb_zone_routing_all_directly",
    "lb_zone_routing_cross_zone",
    "lb_zone_routing_sampled",
];

// === impl LbStats ===

impl LbStats {
    /// Registers the stats under `prefix` (`cluster.<name>.`).
    pub fn new(stats: &Stats, prefix: &str, policy: &LbPolicy) -> Self {
        let c = |s: &str| stats.counter(&format!("{prefix}{s}"));
        let g = |s: &str| stats.gauge(&format!("{prefix}{s}"));
        for name in UNUSED_LB_COUNTERS {
            c(name);
        }
        g("lb_subsets_active");
        LbStats {
            lb_healthy_panic: c("lb_healthy_panic"),
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
            membership_degraded: g("membership_degraded"),
            membership_excluded: g("membership_excluded"),
            membership_change: c("membership_change"),
            max_host_weight: g("max_host_weight"),
            ring: matches!(policy, LbPolicy::RingHash(_)).then(|| {
                [
                    g("ring_hash_lb.size"),
                    g("ring_hash_lb.min_hashes_per_host"),
                    g("ring_hash_lb.max_hashes_per_host"),
                ]
            }),
            maglev: matches!(policy, LbPolicy::Maglev(_)).then(|| {
                [
                    g("maglev_lb.min_entries_per_host"),
                    g("maglev_lb.max_entries_per_host"),
                ]
            }),
        }
    }
}

// === impl Balancer ===

impl Balancer {
    /// A balancer with no hosts yet. `hosts` is the cell the cluster exposes.
    pub fn new(
        cfg: LbConfig,
        outlier: Option<OutlierConfig>,
        stats: &Stats,
        prefix: &str,
        hosts: Arc<ArcSwap<HostSet>>,
        dynamic: bool,
    ) -> Self {
        Balancer {
            cfg,
            hosts,
            membership: Mutex::new(Arc::new(Membership::default())),
            outlier: outlier.map(|o| OutlierDetector::new(o, stats, prefix)),
            ticker: AtomicBool::new(false),
            seed: rand::random::<u32>() as usize,
            dynamic,
            stats: LbStats::new(stats, prefix, &cfg.policy),
        }
    }

    /// The outlier detector, if configured.
    pub fn outlier(&self) -> Option<&OutlierDetector<HostAddr>> {
        self.outlier.as_ref()
    }

    /// Replaces the membership (EDS update, DNS resolution, static config) and publishes the
    /// new snapshot. Hosts keep their outlier state when their address stays.
    pub fn set_membership(self: &Arc<Self>, m: Membership) {
        {
            let mut cur = lock(&self.membership);
            let changed = m.changed_levels(&cur);
            if changed > 0 {
                self.stats.membership_change.add(changed);
            }
            if self.dynamic {
                self.stats.max_host_weight.set(m.max_host_weight() as i64);
            }
            if let Some(od) = &self.outlier {
                od.set_hosts(m.members.iter().map(|x| x.host.addr.clone()));
            }
            *cur = Arc::new(m);
            self.rebuild(&cur);
        }
        self.ensure_ticker();
    }

    /// Rebuilds the snapshot from `m` (the caller holds the membership lock).
    fn rebuild(&self, m: &Membership) {
        let prev = self.hosts.load_full();
        let (set, tables) = HostSet::build(m, &self.cfg, |h| self.is_ejected(h), &prev, self.seed);
        let s = &self.stats;
        s.membership_total.set(set.counts.total as i64);
        s.membership_healthy.set(set.counts.healthy as i64);
        s.membership_degraded.set(set.counts.degraded as i64);
        s.membership_excluded.set(set.counts.excluded as i64);
        if let (Some(g), Some((size, min, max))) = (&s.ring, tables.ring) {
            g[0].set(size as i64);
            g[1].set(min as i64);
            g[2].set(max as i64);
        }
        if let (Some(g), Some((min, max))) = (&s.maglev, tables.maglev) {
            g[0].set(min as i64);
            g[1].set(max as i64);
        }
        self.hosts.store(Arc::new(set));
    }

    fn is_ejected(&self, host: &Host) -> bool {
        self.outlier
            .as_ref()
            .is_some_and(|od| od.is_ejected(&host.addr))
    }

    /// Picks a host from the current snapshot.
    pub fn pick(&self, ctx: &PickCtx<'_>) -> Option<Arc<Host>> {
        let set = self.hosts.load();
        set.pick(&self.cfg, ctx, &self.stats.lb_healthy_panic)
            .cloned()
    }

    /// Reports one result for `host`; an ejection publishes a snapshot without it.
    pub fn record(self: &Arc<Self>, host: &Arc<Host>, outcome: Outcome) {
        let Some(od) = &self.outlier else { return };
        self.ensure_ticker();
        if od.record(&host.addr, outcome, Instant::now()) {
            let m = lock(&self.membership);
            self.rebuild(&m);
        }
    }

    /// One outlier interval: un-ejects hosts whose time is up and runs the success-rate and
    /// failure-percentage detectors; republishes the snapshot if any host changed state.
    pub fn tick(&self, now: Instant) {
        let Some(od) = &self.outlier else { return };
        if od.tick(now) {
            let m = lock(&self.membership);
            self.rebuild(&m);
        }
    }

    /// Starts the outlier interval task on the current runtime (once). Static clusters are
    /// compiled before the runtime exists, so the task starts with the first reported result
    /// or membership update; until then no host has results to evaluate.
    fn ensure_ticker(self: &Arc<Self>) {
        let Some(od) = &self.outlier else { return };
        if self.ticker.load(Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.ticker.swap(true, Ordering::AcqRel) {
            return;
        }
        let interval = od.config().interval;
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                // Ends when the cluster (the only strong owner) is dropped or replaced.
                let Some(b) = weak.upgrade() else { return };
                b.tick(Instant::now());
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded membership is replaced whole; a panicking holder leaves it consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::lb::snapshot::{EdsHealth, Locality, Member};

    fn host(port: u16) -> Arc<Host> {
        Arc::new(Host::new(
            HostAddr::Tcp(([127, 0, 0, 1], port).into()),
            Arc::from(""),
            1,
        ))
    }

    fn members(hosts: &[Arc<Host>]) -> Membership {
        Membership {
            members: hosts
                .iter()
                .map(|h| Member {
                    host: h.clone(),
                    weight: 1,
                    priority: 0,
                    locality: Arc::new(Locality::default()),
                    health: EdsHealth::Healthy,
                    hash_key: None,
                })
                .collect(),
            ..Membership::default()
        }
    }

    fn balancer(od: Option<OutlierConfig>, stats: &Stats) -> Arc<Balancer> {
        Arc::new(Balancer::new(
            LbConfig::default(),
            od,
            stats,
            "cluster.c.",
            Arc::new(ArcSwap::from_pointee(HostSet::default())),
            true,
        ))
    }

    fn gauge(stats: &Stats, name: &str) -> i64 {
        stats
            .snapshot()
            .into_iter()
            .find(|s| s.name == name)
            .map_or(-1, |s| s.value)
    }

    #[test]
    fn an_ejection_republishes_the_snapshot_and_an_update_keeps_the_state() {
        let stats = Stats::default();
        let od = OutlierConfig {
            consecutive_5xx: 2,
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        };
        let b = balancer(Some(od), &stats);
        let hosts = [host(1), host(2)];
        b.set_membership(members(&hosts));
        assert_eq!(gauge(&stats, "cluster.c.membership_healthy"), 2);
        assert_eq!(gauge(&stats, "cluster.c.membership_change"), 1);
        for _ in 0..2 {
            b.record(&hosts[0], Outcome::Status(503));
        }
        assert_eq!(gauge(&stats, "cluster.c.membership_healthy"), 1);
        for _ in 0..10 {
            let h = b.pick(&PickCtx::default()).unwrap();
            assert!(Arc::ptr_eq(&h, &hosts[1]));
        }
        // An EDS update with the same hosts keeps the ejection (and counts no change).
        b.set_membership(members(&hosts));
        assert_eq!(gauge(&stats, "cluster.c.membership_healthy"), 1);
        assert_eq!(gauge(&stats, "cluster.c.membership_change"), 1);
        assert_eq!(gauge(&stats, "cluster.c.max_host_weight"), 1);
        // A host that left and came back starts clean.
        b.set_membership(members(&hosts[1..]));
        b.set_membership(members(&hosts));
        assert_eq!(gauge(&stats, "cluster.c.membership_healthy"), 2);
    }

    #[test]
    fn without_outlier_detection_outcomes_are_ignored() {
        let stats = Stats::default();
        let b = balancer(None, &stats);
        let hosts = [host(1)];
        b.set_membership(members(&hosts));
        for _ in 0..10 {
            b.record(&hosts[0], Outcome::Status(503));
        }
        assert!(b.pick(&PickCtx::default()).is_some());
        assert!(b.outlier().is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_interval_returns_hosts_and_stops_with_the_cluster() {
        use std::time::Duration;
        let stats = Stats::default();
        let od = OutlierConfig {
            consecutive_5xx: 1,
            max_ejection_percent: 100,
            interval: Duration::from_millis(20),
            base_ejection_time: Duration::from_millis(100),
            ..OutlierConfig::default()
        };
        let b = balancer(Some(od), &stats);
        let hosts = [host(1), host(2)];
        b.set_membership(members(&hosts));
        b.record(&hosts[0], Outcome::Status(500));
        assert_eq!(gauge(&stats, "cluster.c.membership_healthy"), 1);
        // Wait (generously) for a tick past the ejection time.
        let deadline = Instant::now() + Duration::from_secs(30);
        while gauge(&stats, "cluster.c.membership_healthy") != 2 {
            assert!(Instant::now() < deadline, "the host never returned");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The task holds only a weak reference: dropping the cluster frees the balancer.
        let weak = Arc::downgrade(&b);
        drop(b);
        assert!(
            weak.upgrade().is_none(),
            "the interval task keeps the balancer alive"
        );
    }
}
