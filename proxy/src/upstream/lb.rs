//! Load balancing, as Envoy's load balancers.
//!
//! - [`pick`]: the forwarding core's ROUND_ROBIN (cumulative-weight cursor), LEAST_REQUEST
//!   and RANDOM over a [`HostSet`].
//! - [`SmoothWrr`]: Envoy's weighted round robin (EDF scheduler order), precomputed per host
//!   set so a pick is one atomic increment.
//! - [`EdfScheduler`]: Envoy's earliest-deadline-first scheduler, for per-worker use and for
//!   locality picks.
//! - [`pick_least_request`]: P2C over active requests for equal weights; for unequal weights
//!   `weight / (active + 1)^active_request_bias`.
//! - [`hash`]: RING_HASH and MAGLEV tables and route `hash_policy` evaluation.
//! - [`priority`]: priority load with overprovisioning, panic threshold, locality weights.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use super::{Host, HostSet};

pub mod hash;
pub mod priority;

/// `lb_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Round robin; weighted by endpoint weight.
    RoundRobin,
    /// Power-of-N choices on active requests.
    LeastRequest {
        /// Hosts sampled per pick (Envoy's default 2).
        choice_count: u32,
    },
    /// Uniform (or weighted) random.
    Random,
}

/// Picks a host from `set`.
pub fn pick<'a>(policy: &LbPolicy, set: &'a HostSet, rr: &AtomicUsize) -> Option<&'a Arc<Host>> {
    let n = set.hosts.len();
    if n <= 1 {
        return set.hosts.first();
    }
    match policy {
        LbPolicy::RoundRobin if set.uniform => {
            let i = rr.fetch_add(1, Ordering::Relaxed);
            Some(&set.hosts[i % n])
        }
        LbPolicy::RoundRobin => {
            // Weighted: walk the cumulative weights with a rotating cursor, which gives each
            // host its share in every `total_weight` picks.
            let i = (rr.fetch_add(1, Ordering::Relaxed) as u64) % set.total_weight.max(1);
            weighted_at(set, i)
        }
        LbPolicy::Random => {
            let v = rand::rng().random_range(0..set.total_weight.max(1));
            weighted_at(set, v)
        }
        LbPolicy::LeastRequest { choice_count } => {
            let mut rng = rand::rng();
            let mut best: Option<&Arc<Host>> = None;
            for _ in 0..(*choice_count).max(1) {
                let h = &set.hosts[rng.random_range(0..n)];
                let load = h.active_rq.load(Ordering::Relaxed);
                if best.is_none_or(|b| load < b.active_rq.load(Ordering::Relaxed)) {
                    best = Some(h);
                }
            }
            best
        }
    }
}

fn weighted_at(set: &HostSet, mut v: u64) -> Option<&Arc<Host>> {
    for h in &set.hosts {
        let w = h.weight as u64;
        if v < w {
            return Some(h);
        }
        v -= w;
    }
    set.hosts.last()
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

/// Weighted round robin in Envoy's EDF order, precomputed for one host set: a pick is one
/// atomic increment, shared by all workers. Equal weights degenerate to plain round robin.
#[derive(Debug, Clone, Default)]
pub struct SmoothWrr {
    seq: Arc<[u32]>,
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

    /// Builds the schedule for a host set's weights.
    pub fn for_set(set: &HostSet) -> Self {
        Self::build(&set.hosts.iter().map(|h| h.weight).collect::<Vec<_>>())
    }

    /// The next index for `cursor` (start it at a random value, as Envoy does).
    pub fn pick(&self, cursor: &AtomicUsize) -> Option<usize> {
        if self.seq.is_empty() {
            return None;
        }
        let i = cursor.fetch_add(1, Ordering::Relaxed) % self.seq.len();
        Some(self.seq[i] as usize)
    }

    /// The cycle (for tests and `/clusters` debugging).
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

/// Envoy's LEAST_REQUEST. Equal weights: sample `choice_count` hosts (with replacement) and
/// keep the one with the fewest active requests (first on ties). Unequal weights: each
/// host's weight becomes `weight / (active + 1)^active_request_bias` and one host is drawn in
/// proportion (Envoy runs its EDF scheduler over these weights; the long-run shares are the
/// same, without a shared mutable scheduler).
pub fn pick_least_request<'a>(
    hosts: &'a [Arc<Host>],
    choice_count: u32,
    active_request_bias: f64,
    rng: &mut impl Rng,
) -> Option<&'a Arc<Host>> {
    let n = hosts.len();
    if n <= 1 {
        return hosts.first();
    }
    let equal = hosts.windows(2).all(|w| w[0].weight == w[1].weight);
    let active = |h: &Host| h.active_rq.load(Ordering::Relaxed);
    if equal {
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
        let w = h.weight as f64;
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

/// `(hash key, weight)` of each host: the address string (`1.2.3.4:80`), or the hostname
/// with `use_hostname_for_hashing`.
pub fn hash_keys(set: &HostSet, use_hostname: bool) -> Vec<(String, u32)> {
    set.hosts
        .iter()
        .map(|h| {
            // Envoy's `address()->asString()`: `ip:port` (`[v6]:port`) or the pipe path.
            let key = match &h.addr {
                _ if use_hostname => h.hostname.to_string(),
                super::HostAddr::Tcp(a) => a.to_string(),
                super::HostAddr::Unix(p) => p.display().to_string(),
            };
            (key, h.weight)
        })
        .collect()
}

/// A consistent-hashing table over one host set (RING_HASH or MAGLEV), rebuilt when the
/// host set changes.
#[derive(Debug, Clone)]
pub enum HashTable {
    /// `RING_HASH`.
    Ring(hash::Ring),
    /// `MAGLEV`.
    Maglev(hash::Maglev),
}

/// Which consistent-hashing balancer, with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashLb {
    /// `RING_HASH` with `ring_hash_lb_config`.
    Ring(hash::RingHashConfig),
    /// `MAGLEV` with `table_size`.
    Maglev(u64),
}

// === impl HashTable ===

impl HashTable {
    /// Builds the table for `set` (keys per [`hash_keys`]).
    pub fn build(lb: &HashLb, set: &HostSet, use_hostname: bool) -> Self {
        let keys = hash_keys(set, use_hostname);
        let pairs: Vec<(&str, u32)> = keys.iter().map(|(k, w)| (k.as_str(), *w)).collect();
        match lb {
            HashLb::Ring(cfg) => HashTable::Ring(hash::Ring::build(&pairs, cfg)),
            HashLb::Maglev(size) => HashTable::Maglev(hash::Maglev::build(&pairs, *size)),
        }
    }

    /// The host for `hash` on host-selection attempt `attempt` (0 first). `set` must be the
    /// set the table was built from. With no hash (no policy matched) Envoy uses a random one.
    pub fn pick<'a>(&self, set: &'a HostSet, hash: u64, attempt: u32) -> Option<&'a Arc<Host>> {
        let i = match self {
            HashTable::Ring(r) => r.pick(hash, attempt),
            HashTable::Maglev(m) => m.pick(hash, attempt),
        }?;
        set.hosts.get(i)
    }
}

/// Envoy's host-selection retry loop (`retry_host_predicate` with
/// `host_selection_retry_max_attempts`): picks up to `max_attempts + 1` times, passing the
/// attempt number (hash balancers perturb the hash with it), and stops at the first host the
/// predicate accepts; if none is accepted the last pick is used.
pub fn pick_with_host_retries<'a>(
    max_attempts: u32,
    mut pick: impl FnMut(u32) -> Option<&'a Arc<Host>>,
    reject: impl Fn(&Host) -> bool,
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
