//! Load balancer picks. Issue 4 extends these (smooth weighted RR, ring hash, maglev,
//! priorities); the forwarding core needs ROUND_ROBIN, LEAST_REQUEST and RANDOM.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use super::{Host, HostSet};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::HostAddr;

    fn set(weights: &[u32]) -> HostSet {
        HostSet::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let addr: std::net::SocketAddr =
                        format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                    Arc::new(Host::new(HostAddr::Tcp(addr), Arc::from("h"), *w))
                })
                .collect(),
        )
    }

    #[test]
    fn round_robin_visits_hosts_in_turn() {
        let s = set(&[1, 1, 1]);
        let rr = AtomicUsize::new(0);
        let picks: Vec<_> = (0..6)
            .map(|_| {
                pick(&LbPolicy::RoundRobin, &s, &rr)
                    .unwrap()
                    .addr
                    .to_string()
            })
            .collect();
        assert_eq!(picks[0..3], picks[3..6]);
        assert_ne!(picks[0], picks[1]);
    }

    #[test]
    fn weighted_round_robin_respects_weights() {
        let s = set(&[3, 1]);
        let rr = AtomicUsize::new(0);
        let first = s.hosts[0].addr.clone();
        let n = (0..400)
            .filter(|_| pick(&LbPolicy::RoundRobin, &s, &rr).unwrap().addr == first)
            .count();
        assert_eq!(n, 300);
    }

    #[test]
    fn least_request_prefers_idle_host() {
        let s = set(&[1, 1]);
        s.hosts[0].active_rq.store(100, Ordering::Relaxed);
        let rr = AtomicUsize::new(0);
        // With 2 choices out of 2 hosts, the idle host wins unless both samples hit the busy
        // one (probability 1/4 per pick); over many picks it must dominate.
        let idle = (0..1000)
            .filter(|_| {
                pick(&LbPolicy::LeastRequest { choice_count: 2 }, &s, &rr)
                    .unwrap()
                    .addr
                    == s.hosts[1].addr
            })
            .count();
        assert!(idle > 650, "idle host picked {idle}/1000");
    }

    #[test]
    fn empty_set_has_no_pick() {
        let s = set(&[]);
        assert!(pick(&LbPolicy::RoundRobin, &s, &AtomicUsize::new(0)).is_none());
    }
}
