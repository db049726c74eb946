//! One immutable snapshot of a cluster's priority set, as Envoy's `PrioritySet` with the
//! load-balancer state derived from it.
//!
//! [`HostSet::build`] runs when membership (EDS, DNS, static config) or health (outlier
//! ejection) changes: it partitions every priority level into all / healthy / degraded hosts,
//! overall and per locality (localities sorted as Envoy's `LocalityLess`), computes the
//! priority load and panic flags, and precomputes what each balancer needs: round-robin
//! cycles for unequal weights, locality schedules over effective locality weights, and the
//! ring or Maglev table of each level. [`HostSet::pick`] then only reads: a random draw picks
//! the priority, a cursor increment or table lookup picks the host.
//!
//! Envoy's semantics kept here: EDS `HEALTHY`/`UNKNOWN` hosts are healthy, `DEGRADED` ones
//! degraded, `UNHEALTHY`/`TIMEOUT` unhealthy, and `DRAINING` ones excluded (not counted in a
//! level's availability, but still among the level's hosts, so panic mode sends them
//! traffic); an ejected host is unhealthy; consistent-hash tables hold the healthy hosts of a
//! level (all of them in panic), never degraded ones.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use super::priority::{self, Availability, LevelHealth, PriorityLoad};
use super::{
    pick_least_request, pick_with_host_retries, HashTable, LbConfig, LbPolicy, PickCtx, SmoothWrr,
};
use crate::stats::Counter;
use crate::upstream::{Host, HostAddr};

/// An endpoint's locality (`region`, `zone`, `sub_zone`); ordered as Envoy's `LocalityLess`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Locality {
    /// `region`.
    pub region: String,
    /// `zone`.
    pub zone: String,
    /// `sub_zone`.
    pub sub_zone: String,
}

/// An endpoint's `health_status` from EDS (or `load_assignment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EdsHealth {
    /// `HEALTHY` or `UNKNOWN`.
    #[default]
    Healthy,
    /// `DEGRADED`.
    Degraded,
    /// `UNHEALTHY` or `TIMEOUT` (Envoy's `FAILED_EDS_HEALTH`).
    Unhealthy,
    /// `DRAINING` (Envoy's `EDS_STATUS_DRAINING`: excluded from load balancing).
    Draining,
}

/// One endpoint of a membership.
#[derive(Debug, Clone)]
pub struct Member {
    /// The host (its identity, pool and counters survive updates that keep its address).
    pub host: Arc<Host>,
    /// `load_balancing_weight` (≥ 1).
    pub weight: u32,
    /// `priority` of its `LocalityLbEndpoints`.
    pub priority: u32,
    /// Its locality.
    pub locality: Arc<Locality>,
    /// EDS health.
    pub health: EdsHealth,
    /// `metadata.filter_metadata["envoy.lb"].hash_key`, which consistent hashing uses
    /// instead of the address when set.
    pub hash_key: Option<Arc<str>>,
}

/// Everything a `ClusterLoadAssignment` (or a DNS resolution) says about a cluster's hosts.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Endpoints in config order.
    pub members: Vec<Member>,
    /// `LocalityLbEndpoints.load_balancing_weight` per (priority, locality); 0 when unset.
    pub locality_weights: BTreeMap<(u32, Arc<Locality>), u32>,
    /// `policy.overprovisioning_factor` in percent (140).
    pub overprovisioning: u32,
    /// `policy.weighted_priority_health`: level availability from weights, not counts.
    pub weighted_priority_health: bool,
}

/// What `/clusters` shows about one host of a snapshot.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// Priority level.
    pub priority: u32,
    /// Locality.
    pub locality: Arc<Locality>,
    /// EDS health.
    pub health: EdsHealth,
    /// Ejected by outlier detection.
    pub ejected: bool,
}

/// Host counts behind the `membership_*` gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Every host.
    pub total: u64,
    /// Healthy hosts.
    pub healthy: u64,
    /// Degraded hosts.
    pub degraded: u64,
    /// Excluded (draining) hosts.
    pub excluded: u64,
}

/// Gauge values a build produces (`ring_hash_lb.*`, `maglev_lb.*`), from the last level that
/// had hosts, as Envoy sets them once per level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStats {
    /// `(size, min_hashes_per_host, max_hashes_per_host)`.
    pub ring: Option<(u64, u64, u64)>,
    /// `(min_entries_per_host, max_entries_per_host)`.
    pub maglev: Option<(u64, u64)>,
}

/// A cluster's hosts and the precomputed balancer state; replaced as a whole.
#[derive(Debug, Default)]
pub struct HostSet {
    /// Every host, by priority, then in config order (what `/clusters` lists).
    pub hosts: Vec<Arc<Host>>,
    /// Per host (same index as `hosts`).
    pub info: Vec<HostInfo>,
    /// Membership gauges.
    pub counts: Counts,
    levels: Vec<Level>,
    load: PriorityLoad,
}

/// One list of hosts a pick can draw from (Envoy's `HostsSource`).
#[derive(Debug, Default)]
struct Source {
    hosts: Vec<Arc<Host>>,
    /// Round robin over unequal weights; `None` for plain round robin.
    wrr: Option<SmoothWrr>,
    /// Round-robin position.
    cursor: AtomicUsize,
}

/// A locality schedule (Envoy's locality EDF scheduler, precomputed).
#[derive(Debug, Default)]
struct LocalityPick {
    wrr: SmoothWrr,
    cursor: AtomicUsize,
}

/// One priority level.
#[derive(Debug, Default)]
struct Level {
    all: Source,
    healthy: Source,
    degraded: Source,
    healthy_by_locality: Vec<Source>,
    degraded_by_locality: Vec<Source>,
    healthy_localities: Option<LocalityPick>,
    degraded_localities: Option<LocalityPick>,
    /// The level's consistent-hash table and the hosts its indices refer to.
    hash: Option<(HashTable, Vec<Arc<Host>>)>,
}

/// Which source of a level (for carrying round-robin positions across rebuilds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    All,
    Healthy,
    Degraded,
    HealthyLocality(usize),
    DegradedLocality(usize),
}

// === impl Membership ===

impl Default for Membership {
    fn default() -> Self {
        Membership {
            members: Vec::new(),
            locality_weights: BTreeMap::new(),
            overprovisioning: priority::DEFAULT_OVERPROVISIONING_FACTOR,
            weighted_priority_health: false,
        }
    }
}

impl Membership {
    /// Every host in priority 0, healthy, weights as the hosts carry them (DNS clusters).
    pub fn flat(hosts: Vec<Arc<Host>>) -> Self {
        let locality = Arc::new(Locality::default());
        Membership {
            members: hosts
                .into_iter()
                .map(|host| Member {
                    weight: host.weight(),
                    host,
                    priority: 0,
                    locality: locality.clone(),
                    health: EdsHealth::Healthy,
                    hash_key: None,
                })
                .collect(),
            ..Membership::default()
        }
    }

    /// The hosts of `priority`, in order (identity only, for change detection).
    fn level_hosts(&self, priority: u32) -> impl Iterator<Item = &Arc<Host>> {
        self.members
            .iter()
            .filter(move |m| m.priority == priority)
            .map(|m| &m.host)
    }

    /// Number of priority levels whose host list differs from `prev`'s (Envoy bumps
    /// `membership_change` once per level update that added or removed hosts).
    pub fn changed_levels(&self, prev: &Membership) -> u64 {
        let levels = |m: &Membership| m.members.iter().map(|x| x.priority + 1).max().unwrap_or(0);
        (0..levels(self).max(levels(prev)))
            .filter(|p| {
                let mut a: Vec<*const Host> = self.level_hosts(*p).map(Arc::as_ptr).collect();
                let mut b: Vec<*const Host> = prev.level_hosts(*p).map(Arc::as_ptr).collect();
                a.sort();
                b.sort();
                a != b
            })
            .count() as u64
    }

    /// The largest weight of the highest priority level (Envoy sets `max_host_weight` per
    /// level update, the last one winning).
    pub fn max_host_weight(&self) -> u32 {
        let top = self.members.iter().map(|m| m.priority).max();
        self.members
            .iter()
            .filter(|m| Some(m.priority) == top)
            .map(|m| m.weight)
            .max()
            .unwrap_or(0)
    }
}

// === impl HostInfo ===

impl HostInfo {
    /// Neither ejected nor marked unhealthy, degraded or draining.
    pub fn is_healthy(&self) -> bool {
        !self.ejected && self.health == EdsHealth::Healthy
    }

    /// Degraded by EDS and not ejected.
    pub fn is_degraded(&self) -> bool {
        !self.ejected && self.health == EdsHealth::Degraded
    }

    /// Excluded from load balancing (draining).
    pub fn is_excluded(&self) -> bool {
        self.health == EdsHealth::Draining
    }

    /// Envoy's `HostUtility::healthFlagsToString`: `healthy`, or the set flags in Envoy's
    /// order (`/failed_outlier_check`, `/failed_eds_health`, `/degraded_eds_health`,
    /// `/eds_status_draining`).
    pub fn health_flags(&self) -> String {
        let mut s = String::new();
        if self.ejected {
            s.push_str("/failed_outlier_check");
        }
        match self.health {
            EdsHealth::Healthy => {}
            EdsHealth::Unhealthy => s.push_str("/failed_eds_health"),
            EdsHealth::Degraded => s.push_str("/degraded_eds_health"),
            EdsHealth::Draining => s.push_str("/eds_status_draining"),
        }
        if s.is_empty() {
            s.push_str("healthy");
        }
        s
    }

    /// `health_status.eds_health_status` of `/clusters?format=json`.
    pub fn eds_health_status(&self) -> &'static str {
        match self.health {
            EdsHealth::Healthy => "HEALTHY",
            EdsHealth::Unhealthy => "UNHEALTHY",
            EdsHealth::Degraded => "DEGRADED",
            EdsHealth::Draining => "DRAINING",
        }
    }
}

// === impl Source ===

impl Source {
    fn new(hosts: Vec<Arc<Host>>, weighted_rr: bool, cursor: usize) -> Self {
        let equal = hosts.windows(2).all(|w| w[0].weight() == w[1].weight());
        let wrr = (weighted_rr && !equal)
            .then(|| SmoothWrr::build(&hosts.iter().map(|h| h.weight()).collect::<Vec<_>>()));
        Source {
            hosts,
            wrr,
            cursor: AtomicUsize::new(cursor),
        }
    }
}

// === impl Level ===

impl Level {
    fn source(&self, kind: SourceKind) -> Option<&Source> {
        match kind {
            SourceKind::All => Some(&self.all),
            SourceKind::Healthy => Some(&self.healthy),
            SourceKind::Degraded => Some(&self.degraded),
            SourceKind::HealthyLocality(i) => self.healthy_by_locality.get(i),
            SourceKind::DegradedLocality(i) => self.degraded_by_locality.get(i),
        }
    }
}

// === impl HostSet ===

impl HostSet {
    /// A priority-0 set of healthy hosts (tests, ORIGINAL_DST-free callers).
    pub fn new(hosts: Vec<Arc<Host>>) -> Self {
        HostSet::build(
            &Membership::flat(hosts),
            &LbConfig::default(),
            |_| false,
            &HostSet::default(),
            0,
        )
        .0
    }

    /// Builds the snapshot of `m` under `cfg`; `ejected` says which hosts outlier detection
    /// holds out. Round-robin positions of unweighted sources carry over from `prev` (Envoy
    /// keeps its round-robin indexes across updates); new and weighted ones start at `seed`
    /// (Envoy rebuilds its EDF schedules with the same seeded number of initial picks).
    pub fn build(
        m: &Membership,
        cfg: &LbConfig,
        ejected: impl Fn(&Host) -> bool,
        prev: &HostSet,
        seed: usize,
    ) -> (HostSet, TableStats) {
        for mem in &m.members {
            mem.host.set_weight(mem.weight);
        }
        let n_levels = m
            .members
            .iter()
            .map(|x| x.priority as usize + 1)
            .max()
            .unwrap_or(0);
        let mut set = HostSet::default();
        // Members of each level, in config order.
        let mut by_level: Vec<Vec<(&Member, HostInfo)>> =
            (0..n_levels).map(|_| Vec::new()).collect();
        for mem in &m.members {
            let info = HostInfo {
                priority: mem.priority,
                locality: mem.locality.clone(),
                health: mem.health,
                ejected: ejected(&mem.host),
            };
            by_level[mem.priority as usize].push((mem, info));
        }
        // Availability, panic counts and host counts per level.
        let mut avail = Vec::with_capacity(n_levels);
        let mut counts = Vec::with_capacity(n_levels);
        let mut all_hosts = Vec::with_capacity(n_levels);
        for members in &by_level {
            let count =
                |f: &dyn Fn(&HostInfo) -> bool| members.iter().filter(|(_, i)| f(i)).count() as u64;
            let weight = |f: &dyn Fn(&HostInfo) -> bool| {
                members
                    .iter()
                    .filter(|(_, i)| f(i))
                    .map(|(m, _)| m.weight as u64)
                    .sum::<u64>()
            };
            let c = LevelHealth {
                total: count(&|i| !i.is_excluded()),
                healthy: count(&HostInfo::is_healthy),
                degraded: count(&HostInfo::is_degraded),
            };
            avail.push(if m.weighted_priority_health {
                LevelHealth {
                    total: weight(&|i| !i.is_excluded()),
                    healthy: weight(&HostInfo::is_healthy),
                    degraded: weight(&HostInfo::is_degraded),
                }
            } else {
                c
            });
            counts.push(c);
            all_hosts.push(members.len() as u64);
            set.counts.total += members.len() as u64;
            set.counts.healthy += c.healthy;
            set.counts.degraded += c.degraded;
            set.counts.excluded += count(&HostInfo::is_excluded);
        }
        set.load = priority::priority_load_full(
            &avail,
            &counts,
            &all_hosts,
            m.overprovisioning,
            cfg.panic_threshold as f64,
        );

        let weighted_rr = cfg.policy == LbPolicy::RoundRobin;
        let mut table_stats = TableStats::default();
        for (p, members) in by_level.iter().enumerate() {
            let cursor = |kind: SourceKind| {
                prev.levels
                    .get(p)
                    .and_then(|l| l.source(kind))
                    .filter(|s| s.wrr.is_none())
                    .map_or(seed, |s| s.cursor.load(Ordering::Relaxed))
            };
            let pick = |f: &dyn Fn(&HostInfo) -> bool| -> Vec<Arc<Host>> {
                members
                    .iter()
                    .filter(|(_, i)| f(i))
                    .map(|(m, _)| m.host.clone())
                    .collect()
            };
            let localities: Vec<Arc<Locality>> = {
                let mut l: Vec<Arc<Locality>> =
                    members.iter().map(|(m, _)| m.locality.clone()).collect();
                l.sort();
                l.dedup();
                l
            };
            let mut level = Level {
                all: Source::new(pick(&|_| true), weighted_rr, cursor(SourceKind::All)),
                healthy: Source::new(
                    pick(&HostInfo::is_healthy),
                    weighted_rr,
                    cursor(SourceKind::Healthy),
                ),
                degraded: Source::new(
                    pick(&HostInfo::is_degraded),
                    weighted_rr,
                    cursor(SourceKind::Degraded),
                ),
                ..Level::default()
            };
            let in_locality = |loc: &Arc<Locality>, f: &dyn Fn(&HostInfo) -> bool| {
                members
                    .iter()
                    .filter(|(m, i)| m.locality == *loc && f(i))
                    .map(|(m, _)| m.host.clone())
                    .collect::<Vec<_>>()
            };
            let locality_weight = |loc: &Arc<Locality>| {
                *m.locality_weights
                    .get(&(p as u32, loc.clone()))
                    .unwrap_or(&0)
            };
            if cfg.locality_weighted && !localities.is_empty() {
                for (li, loc) in localities.iter().enumerate() {
                    level.healthy_by_locality.push(Source::new(
                        in_locality(loc, &HostInfo::is_healthy),
                        weighted_rr,
                        cursor(SourceKind::HealthyLocality(li)),
                    ));
                    level.degraded_by_locality.push(Source::new(
                        in_locality(loc, &HostInfo::is_degraded),
                        weighted_rr,
                        cursor(SourceKind::DegradedLocality(li)),
                    ));
                }
                // Envoy's effective locality weights: weight × min(1, factor × eligible /
                // (hosts - excluded)); no schedule when the level has no eligible host.
                let schedule = |eligible: &dyn Fn(&HostInfo) -> bool, any: bool| {
                    if !any {
                        return None;
                    }
                    let weights: Vec<f64> = localities
                        .iter()
                        .map(|loc| {
                            let of_loc = members.iter().filter(|(m, _)| m.locality == *loc);
                            let lh = LevelHealth {
                                total: of_loc.clone().filter(|(_, i)| !i.is_excluded()).count()
                                    as u64,
                                healthy: of_loc.filter(|(_, i)| eligible(i)).count() as u64,
                                degraded: 0,
                            };
                            priority::locality_effective_weight(
                                locality_weight(loc),
                                &lh,
                                m.overprovisioning,
                            )
                        })
                        .collect();
                    let wrr = SmoothWrr::build_f64(&weights);
                    (!wrr.cycle().is_empty()).then(|| LocalityPick {
                        wrr,
                        cursor: AtomicUsize::new(seed),
                    })
                };
                level.healthy_localities =
                    schedule(&HostInfo::is_healthy, !level.healthy.hosts.is_empty());
                level.degraded_localities =
                    schedule(&HostInfo::is_degraded, !level.degraded.hosts.is_empty());
            }
            if cfg.policy.is_hash() {
                // Envoy's `normalizeWeights`: the healthy hosts (all of them in panic), each
                // weight over the level's sum, or with locality weighting over its locality's
                // sum times the locality's share of all locality weights.
                let panic = set.load.panic.get(p).copied().unwrap_or(false);
                let eligible = |i: &HostInfo| panic || i.is_healthy();
                let mut entries: Vec<(&Member, f64)> = Vec::new();
                if cfg.locality_weighted && !localities.is_empty() {
                    let lsum: u64 = localities.iter().map(|l| locality_weight(l) as u64).sum();
                    if lsum > 0 {
                        for loc in &localities {
                            let lw = locality_weight(loc);
                            if lw == 0 {
                                continue;
                            }
                            let hosts: Vec<&Member> = members
                                .iter()
                                .filter(|(m, i)| m.locality == *loc && eligible(i))
                                .map(|(m, _)| *m)
                                .collect();
                            let hsum: u64 = hosts.iter().map(|m| m.weight as u64).sum();
                            for h in hosts {
                                entries.push((
                                    h,
                                    h.weight as f64 * (lw as f64 / lsum as f64) / hsum as f64,
                                ));
                            }
                        }
                    }
                } else {
                    let hosts: Vec<&Member> = members
                        .iter()
                        .filter(|(_, i)| eligible(i))
                        .map(|(m, _)| *m)
                        .collect();
                    let hsum: u64 = hosts.iter().map(|m| m.weight as u64).sum();
                    for h in hosts {
                        entries.push((h, h.weight as f64 / hsum as f64));
                    }
                }
                let keys: Vec<String> = entries
                    .iter()
                    .map(|(m, _)| hash_key(m, cfg.use_hostname_for_hashing))
                    .collect();
                let pairs: Vec<(&str, f64)> = keys
                    .iter()
                    .zip(&entries)
                    .map(|(k, (_, w))| (k.as_str(), *w))
                    .collect();
                if let Some(table) = HashTable::build(&cfg.policy, &pairs) {
                    if !pairs.is_empty() {
                        match &table {
                            HashTable::Ring(r) => table_stats.ring = Some(r.stats()),
                            HashTable::Maglev(mg) => {
                                let c = mg.counts(pairs.len());
                                let min = c.iter().copied().min().unwrap_or(0) as u64;
                                let max = c.iter().copied().max().unwrap_or(0) as u64;
                                table_stats.maglev = Some((min, max));
                            }
                        }
                    }
                    let hosts = entries.iter().map(|(m, _)| m.host.clone()).collect();
                    level.hash = Some((table, hosts));
                }
            }
            for (mem, info) in members {
                set.hosts.push(mem.host.clone());
                set.info.push(info.clone());
            }
            set.levels.push(level);
        }
        (set, table_stats)
    }

    /// The priority load (healthy and degraded percentages per level) and panic flags.
    pub fn load(&self) -> &PriorityLoad {
        &self.load
    }

    /// Picks a host as Envoy's load balancer for `cfg` would: the priority from a random
    /// value (the request hash for consistent-hash policies), then the host list (all hosts
    /// of a level in panic, counted in `panic`; a locality by its schedule with locality
    /// weighting; else the healthy or degraded hosts), then the host. Hosts in `ctx.avoid`
    /// are re-picked up to `ctx.max_host_attempts` times.
    pub fn pick(&self, cfg: &LbConfig, ctx: &PickCtx<'_>, panic: &Counter) -> Option<&Arc<Host>> {
        if self.levels.is_empty() {
            return None;
        }
        let mut rng = rand::rng();
        if cfg.policy.is_hash() {
            let h = ctx.hash.unwrap_or_else(|| rng.random());
            let (p, _) = priority::choose_priority(&self.load, h);
            if self.load.panic.get(p).copied().unwrap_or(false) {
                panic.inc();
            }
            let (table, hosts) = self.levels.get(p)?.hash.as_ref()?;
            return pick_with_host_retries(
                ctx.max_host_attempts,
                |attempt| table.pick(h, attempt).and_then(|i| hosts.get(i)),
                |host| ctx.avoids(host),
            );
        }
        pick_with_host_retries(
            ctx.max_host_attempts,
            |_| self.choose_once(cfg, &mut rng, panic),
            |host| ctx.avoids(host),
        )
    }

    /// Envoy's `chooseHostOnce` for the EDF-based balancers (round robin, least request,
    /// random).
    fn choose_once(
        &self,
        cfg: &LbConfig,
        rng: &mut impl Rng,
        panic: &Counter,
    ) -> Option<&Arc<Host>> {
        let r: u64 = rng.random();
        let (p, avail) = priority::choose_priority(&self.load, r);
        let level = self.levels.get(p)?;
        let src = if self.load.panic.get(p).copied().unwrap_or(false) {
            panic.inc();
            &level.all
        } else {
            let localities = match avail {
                Availability::Healthy => level
                    .healthy_localities
                    .as_ref()
                    .map(|l| (l, &level.healthy_by_locality)),
                Availability::Degraded => level
                    .degraded_localities
                    .as_ref()
                    .map(|l| (l, &level.degraded_by_locality)),
            };
            match (localities, avail) {
                (Some((sched, sources)), _) => sources.get(sched.wrr.pick(&sched.cursor)?)?,
                (None, Availability::Healthy) => &level.healthy,
                (None, Availability::Degraded) => &level.degraded,
            }
        };
        let n = src.hosts.len();
        if n == 0 {
            return None;
        }
        match cfg.policy {
            LbPolicy::RoundRobin => match &src.wrr {
                Some(w) => w.pick(&src.cursor).and_then(|i| src.hosts.get(i)),
                None => src
                    .hosts
                    .get(src.cursor.fetch_add(1, Ordering::Relaxed) % n),
            },
            LbPolicy::LeastRequest { .. } => pick_least_request(&src.hosts, &cfg.policy, rng),
            LbPolicy::Random => src.hosts.get((r % n as u64) as usize),
            LbPolicy::RingHash(_) | LbPolicy::Maglev(_) => None,
        }
    }
}

/// The key a host is hashed by: `envoy.lb` `hash_key` metadata, else the hostname with
/// `use_hostname_for_hashing`, else Envoy's `address()->asString()` (`ip:port`, `[v6]:port`
/// or the pipe path).
fn hash_key(m: &Member, use_hostname: bool) -> String {
    if let Some(k) = m.hash_key.as_deref().filter(|k| !k.is_empty()) {
        return k.to_string();
    }
    match &m.host.addr {
        _ if use_hostname => m.host.hostname.to_string(),
        HostAddr::Tcp(a) => a.to_string(),
        HostAddr::Unix(p) => p.display().to_string(),
    }
}

#[cfg(test)]
mod tests;
