//! Load balancing, as Envoy's load balancers.
//!
//! - [`LbConfig`]: the compiled `lb_policy` / `load_balancing_policy` with the common LB
//!   settings (panic threshold, locality weighting, hostname hashing); see [`config`].
//! - [`HostSet`]: one immutable snapshot of a cluster's priority set (every host with its
//!   priority, locality and health; per-level healthy/degraded/locality host lists, priority
//!   load, panic flags, precomputed round-robin cycles and hash tables). Rebuilt only when
//!   membership or health changes; a pick reads it without locks (see [`snapshot`]).
//! - [`Balancer`]: owns the snapshot, the membership it was built from and the outlier
//!   detector, and rebuilds on EDS/DNS updates and ejections (see [`balancer`]).
//! - [`SmoothWrr`]: Envoy's weighted round robin (EDF scheduler order), precomputed per host
//!   list so a pick is one atomic increment.
//! - [`EdfScheduler`]: Envoy's earliest-deadline-first scheduler (builds those cycles).
//! - [`pick_least_request`]: P2C / full scan over active requests for equal weights;
//!   `weight / (active + 1)^active_request_bias` otherwise.
//! - [`hash`]: RING_HASH and MAGLEV tables and route `hash_policy` evaluation.
//! - [`priority`]: priority load with overprovisioning, panic threshold, locality weights.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use super::Host;

pub mod balancer;
pub mod config;
pub mod hash;
pub mod priority;
pub mod snapshot;

pub use balancer::{Balancer, LbStats};
pub use snapshot::{EdsHealth, HostInfo, HostSet, Locality, Member, Membership};

/// The balancing algorithm (`lb_policy` or the `load_balancing_policy` extension).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LbPolicy {
    /// Round robin; Envoy's EDF order when weights differ.
    RoundRobin,
    /// Least request.
    LeastRequest {
        /// Hosts sampled per pick (Envoy's default 2).
        choice_count: u32,
        /// `active_request_bias` (1.0).
        active_request_bias: f64,
        /// `active_request_bias` was set explicitly: Envoy then uses weighted selection even
        /// when all weights are equal.
        bias_explicit: bool,
        /// `selection_method: FULL_SCAN` (or `enable_full_scan`).
        full_scan: bool,
    },
    /// Uniform random over the chosen host list (Envoy ignores weights here).
    Random,
    /// `RING_HASH` with `ring_hash_lb_config`.
    RingHash(hash::RingHashConfig),
    /// `MAGLEV` with `table_size`.
    Maglev(u64),
}

/// A cluster's compiled load-balancing configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LbConfig {
    /// The algorithm.
    pub policy: LbPolicy,
    /// `common_lb_config.healthy_panic_threshold`, rounded to an integer percentage as Envoy
    /// does (`PROTOBUF_PERCENT_TO_ROUNDED_INTEGER_OR_DEFAULT`, default 50, 0 disables).
    pub panic_threshold: u32,
    /// `locality_weighted_lb_config` is set.
    pub locality_weighted: bool,
    /// `consistent_hashing_lb_config.use_hostname_for_hashing`.
    pub use_hostname_for_hashing: bool,
}

/// Inputs of one host pick.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickCtx<'a> {
    /// Request hash from the route's hash_policy (consistent-hash balancers); `None` → Envoy's
    /// behaviour without a hash (a random value).
    pub hash: Option<u64>,
    /// Hosts this request already tried (retry_host_predicate previous_hosts); empty otherwise.
    pub avoid: &'a [Arc<Host>],
    /// host_selection_retry_max_attempts (0 without a predicate).
    pub max_host_attempts: u32,
}

/// Longest precomputed weighted round-robin cycle; larger weight sums are scaled down.
pub const MAX_WRR_CYCLE: u64 = 1 << 16;

/// Envoy's earliest-deadline-first scheduler (`EdfScheduler`): each entry's next deadline
/// is `now + 1/weight`; the earliest deadline is picked, ties by insertion order. Not
/// shared: Envoy keeps one per worker.
#[derive(Debug, Clone, Default)]
pub struct EdfScheduler {
    now: f64,
    order: u64,
    /// (deadline, insertion order, entry, weight).
    queue: Vec<(f64, u64, usize, f64)>,
}

/// Weighted round robin in Envoy's EDF order, precomputed for one host list: a pick is one
/// atomic increment, shared by all workers. Equal weights degenerate to plain round robin.
#[derive(Debug, Clone, Default)]
pub struct SmoothWrr {
    seq: Arc<[u32]>,
}

// === impl LbPolicy ===

impl LbPolicy {
    /// Whether the policy consumes a request hash (RING_HASH, MAGLEV).
    pub fn is_hash(&self) -> bool {
        matches!(self, LbPolicy::RingHash(_) | LbPolicy::Maglev(_))
    }
}

// === impl LbConfig ===

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            policy: LbPolicy::RoundRobin,
            panic_threshold: priority::DEFAULT_PANIC_THRESHOLD as u32,
            locality_weighted: false,
            use_hostname_for_hashing: false,
        }
    }
}

// === impl PickCtx ===

impl PickCtx<'_> {
    /// Whether `host` was already tried by this request.
    pub fn avoids(&self, host: &Arc<Host>) -> bool {
        self.avoid.iter().any(|h| Arc::ptr_eq(h, host))
    }
}

// === impl EdfScheduler ===

impl EdfScheduler {
    /// A scheduler over `weights` (entry `i` has weight `weights[i]`; zero weights never run).
    pub fn new(weights: &[f64]) -> Self {
        let mut s = EdfScheduler::default();
        for (i, w) in weights.iter().enumerate() {
            s.add(i, *w);
        }
        s
    }

    /// Adds entry `i` with `weight`.
    pub fn add(&mut self, i: usize, weight: f64) {
        if weight > 0.0 && weight.is_finite() {
            self.queue
                .push((self.now + 1.0 / weight, self.order, i, weight));
            self.order += 1;
        }
    }

    /// Picks the entry with the earliest deadline and re-adds it with its weight.
    pub fn pick(&mut self) -> Option<usize> {
        self.pick_and_add(|_, w| w)
    }

    /// Picks and re-adds with a new weight (Envoy's `pickAndAdd`; least-request uses it).
    pub fn pick_and_add(&mut self, weight: impl FnOnce(usize, f64) -> f64) -> Option<usize> {
        let (pos, _) = self
            .queue
            .iter()
            .enumerate()
            .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0).then(a.1 .1.cmp(&b.1 .1)))?;
        let (deadline, _, i, w) = self.queue.swap_remove(pos);
        self.now = deadline;
        self.add(i, weight(i, w));
        Some(i)
    }
}

// === impl SmoothWrr ===

impl SmoothWrr {
    /// Precomputes one EDF cycle over `weights` (divided by their gcd; scaled down if the
    /// cycle would exceed [`MAX_WRR_CYCLE`]).
    pub fn build(weights: &[u32]) -> Self {
        let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
        if g == 0 {
            return SmoothWrr::default();
        }
        let mut w: Vec<u64> = weights.iter().map(|w| (*w / g) as u64).collect();
        let sum: u64 = w.iter().sum();
        if sum > MAX_WRR_CYCLE {
            for x in w.iter_mut().filter(|x| **x > 0) {
                *x = (*x * MAX_WRR_CYCLE / sum).max(1);
            }
        }
        let cycle: u64 = w.iter().sum();
        let mut edf = EdfScheduler::new(&w.iter().map(|x| *x as f64).collect::<Vec<_>>());
        let seq: Vec<u32> = (0..cycle)
            .filter_map(|_| edf.pick().map(|i| i as u32))
            .collect();
        SmoothWrr { seq: seq.into() }
    }

    /// The cycle for real-valued weights (Envoy's effective locality weights): weights are
    /// scaled so the largest is 10 000 and rounded (at least 1 for a positive weight), which
    /// keeps four significant digits of every ratio; non-positive weights never run.
    pub fn build_f64(weights: &[f64]) -> Self {
        let max = weights
            .iter()
            .copied()
            .filter(|w| w.is_finite())
            .fold(0.0, f64::max);
        if max <= 0.0 {
            return SmoothWrr::default();
        }
        let ints: Vec<u32> = weights
            .iter()
            .map(|w| {
                if *w > 0.0 && w.is_finite() {
                    ((w / max * 10_000.0).round() as u32).max(1)
                } else {
                    0
                }
            })
            .collect();
        Self::build(&ints)
    }

    /// The next index for `cursor` (start it at a random value, as Envoy does).
    pub fn pick(&self, cursor: &AtomicUsize) -> Option<usize> {
        if self.seq.is_empty() {
            return None;
        }
        let i = cursor.fetch_add(1, Ordering::Relaxed) % self.seq.len();
        Some(self.seq[i] as usize)
    }

    /// The cycle (for tests and debugging).
    pub fn cycle(&self) -> &[u32] {
        &self.seq
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Envoy's LEAST_REQUEST over `hosts`.
///
/// Equal weights (and no explicit `active_request_bias`): sample `choice_count` hosts (with
/// replacement) and keep the one with the fewest active requests (the first on ties), or with
/// `full_scan` the least loaded of all hosts (ties broken uniformly, as Envoy's reservoir
/// sampling). Otherwise each host's weight becomes `weight / (active + 1)^active_request_bias`
/// and one host is drawn in proportion (Envoy runs its EDF scheduler over these weights; the
/// long-run shares are the same, without a shared mutable scheduler).
pub fn pick_least_request<'a>(
    hosts: &'a [Arc<Host>],
    policy: &LbPolicy,
    rng: &mut impl Rng,
) -> Option<&'a Arc<Host>> {
    let LbPolicy::LeastRequest {
        choice_count,
        active_request_bias,
        bias_explicit,
        full_scan,
    } = *policy
    else {
        return hosts.first();
    };
    let n = hosts.len();
    if n <= 1 {
        return hosts.first();
    }
    let equal = hosts.windows(2).all(|w| w[0].weight() == w[1].weight());
    let active = |h: &Host| h.active_rq.load(Ordering::Relaxed);
    if equal && !bias_explicit {
        if full_scan {
            let mut best: Option<&Arc<Host>> = None;
            let mut ties = 0u64;
            for h in hosts {
                match best {
                    Some(b) if active(h) > active(b) => {}
                    Some(b) if active(h) == active(b) => {
                        ties += 1;
                        if rng.random_range(0..ties) == 0 {
                            best = Some(h);
                        }
                    }
                    _ => {
                        best = Some(h);
                        ties = 1;
                    }
                }
            }
            return best;
        }
        let mut best: Option<&Arc<Host>> = None;
        for _ in 0..choice_count.max(1) {
            let h = &hosts[rng.random_range(0..n)];
            if best.is_none_or(|b| active(h) < active(b)) {
                best = Some(h);
            }
        }
        return best;
    }
    let eff = |h: &Host| {
        let w = h.weight() as f64;
        if active_request_bias == 0.0 {
            w
        } else if active_request_bias == 1.0 {
            w / (active(h) + 1) as f64
        } else {
            w / ((active(h) + 1) as f64).powf(active_request_bias)
        }
    };
    let total: f64 = hosts.iter().map(|h| eff(h)).sum();
    let mut x = rng.random::<f64>() * total;
    for h in hosts {
        x -= eff(h);
        if x < 0.0 {
            return Some(h);
        }
    }
    hosts.last()
}

/// A consistent-hashing table over one host list (RING_HASH or MAGLEV), rebuilt with the
/// snapshot.
#[derive(Debug, Clone)]
pub enum HashTable {
    /// `RING_HASH`.
    Ring(hash::Ring),
    /// `MAGLEV`.
    Maglev(hash::Maglev),
}

// === impl HashTable ===

impl HashTable {
    /// Builds the table for `(hash key, normalized weight)` pairs (weights sum to 1, as
    /// Envoy's `normalizeWeights`); `None` for policies that do not hash.
    pub fn build(policy: &LbPolicy, keys: &[(&str, f64)]) -> Option<Self> {
        match policy {
            LbPolicy::RingHash(cfg) => {
                Some(HashTable::Ring(hash::Ring::build_normalized(keys, cfg)))
            }
            LbPolicy::Maglev(size) => Some(HashTable::Maglev(hash::Maglev::build_normalized(
                keys, *size,
            ))),
            _ => None,
        }
    }

    /// The index (into the pairs the table was built from) for `hash` on host-selection
    /// attempt `attempt` (0 first).
    pub fn pick(&self, hash: u64, attempt: u32) -> Option<usize> {
        match self {
            HashTable::Ring(r) => r.pick(hash, attempt),
            HashTable::Maglev(m) => m.pick(hash, attempt),
        }
    }
}

/// Envoy's host-selection retry loop (`retry_host_predicate` with
/// `host_selection_retry_max_attempts`): picks up to `max_attempts + 1` times, passing the
/// attempt number (hash balancers perturb the hash with it), and stops at the first host the
/// predicate accepts; if none is accepted the last pick is used.
pub fn pick_with_host_retries<'a>(
    max_attempts: u32,
    mut pick: impl FnMut(u32) -> Option<&'a Arc<Host>>,
    reject: impl Fn(&Arc<Host>) -> bool,
) -> Option<&'a Arc<Host>> {
    let mut host = None;
    for attempt in 0..=max_attempts {
        host = pick(attempt);
        match host {
            Some(h) if reject(h) => continue,
            _ => return host,
        }
    }
    host
}

#[cfg(test)]
mod tests;
