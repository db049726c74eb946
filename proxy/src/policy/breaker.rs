//! Circuit breakers (`cluster.circuit_breakers.thresholds`), as Envoy's `ResourceManagerImpl`.
//!
//! One set of counters per cluster and routing priority (`DEFAULT`, `HIGH`). Each resource is
//! an atomic count with a limit; acquiring returns an RAII [`Permit`] that gives the slot back
//! when dropped, so a request that is cancelled or fails still releases it.
//!
//! What each limit counts (Envoy's semantics, identical for HTTP/1 and HTTP/2 clusters unless
//! stated):
//! - `max_connections`: upstream connections open across all hosts of the cluster. HTTP/1 uses
//!   one connection per in-flight request, so this also caps HTTP/1 concurrency; HTTP/2
//!   multiplexes, so it caps connections only. Draining connections count too. When a host's
//!   pool has *no* connection at all Envoy still creates one even if the breaker is open (and
//!   counts `upstream_cx_overflow`), so a selected host always gets at least one connection;
//!   use [`PriorityBreakers::acquire_cx_forced`] for that case.
//! - `max_pending_requests`: requests queued in a pool waiting for a connection to become
//!   ready (HTTP/1: for a free connection; HTTP/2: only while the connection is established).
//! - `max_requests`: requests in flight to the cluster, both protocols. Envoy counts an
//!   overflow of this limit in `upstream_rq_active_overflow` (1.40; older releases used
//!   `upstream_rq_pending_overflow`), checked against the pinned Envoy.
//! - `max_retries`: retries in flight; replaced by `retry_budget` when one is set, as
//!   `max(budget_percent% × (active + pending requests), min_retry_concurrency)`.
//! - `max_connection_pools`: pools (one per host × protocol × options) across the cluster.
//!
//! Stats (under `cluster.<name>.`): gauges `circuit_breakers.<default|high>.cx_open`,
//! `cx_pool_open`, `rq_pending_open`, `rq_open`, `rq_retry_open` (1 while the limit is reached),
//! `remaining_cx`, `remaining_pending`, `remaining_rq`, `remaining_retries`,
//! `remaining_cx_pools` (only with `track_remaining`), and the counters
//! `upstream_cx_overflow`, `upstream_rq_pending_overflow`, `upstream_rq_active_overflow`,
//! `upstream_rq_retry_overflow`,
//! `upstream_cx_pool_overflow`.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers as XdsCircuitBreakers;
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;

use crate::config::ConfigError;
use crate::stats::{Counter, Gauge, Stats};

/// Envoy's default for `max_connections`, `max_pending_requests` and `max_requests`.
pub const DEFAULT_MAX: u32 = 1024;
/// Envoy's default for `max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// `retry_budget.budget_percent` when the budget is present but the field is not.
pub const DEFAULT_BUDGET_PERCENT: f64 = 20.0;
/// `retry_budget.min_retry_concurrency` when the budget is present but the field is not.
pub const DEFAULT_MIN_RETRY_CONCURRENCY: u32 = 3;

/// Routing priority (`RoutingPriority`); each has its own thresholds and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// `DEFAULT`.
    #[default]
    Default,
    /// `HIGH`.
    High,
}

/// The thresholds of one priority.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// `max_connections` (default 1024).
    pub max_connections: u32,
    /// `max_pending_requests` (default 1024).
    pub max_pending_requests: u32,
    /// `max_requests` (default 1024).
    pub max_requests: u32,
    /// `max_retries` (default 3); ignored when `retry_budget` is set.
    pub max_retries: u32,
    /// `max_connection_pools` (default unlimited).
    pub max_connection_pools: Option<u32>,
    /// `retry_budget`.
    pub retry_budget: Option<RetryBudget>,
    /// `track_remaining`: publish the `remaining_*` gauges.
    pub track_remaining: bool,
}

/// `retry_budget`: retries limited to a share of the active requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// `budget_percent` (0–100, default 20).
    pub budget_percent: f64,
    /// `min_retry_concurrency` (default 3).
    pub min_retry_concurrency: u32,
}

/// `circuit_breakers` of a cluster, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BreakerConfig {
    /// `DEFAULT` priority thresholds.
    pub default: Thresholds,
    /// `HIGH` priority thresholds.
    pub high: Thresholds,
    /// `per_host_thresholds[].max_connections` per priority (`[DEFAULT, HIGH]`); Envoy
    /// supports only this field per host. Enforce with a [`HostConnections`] per host.
    pub per_host_max_connections: [Option<u32>; 2],
}

/// A per-host connection limit (`per_host_thresholds`); overflow counts
/// `upstream_cx_overflow` like the cluster limit.
#[derive(Debug)]
pub struct HostConnections {
    slot: Arc<Slot>,
    overflow: Counter,
}

/// A limit was reached; the request gets 503 with response flag `UO` and
/// `x-envoy-overloaded: true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} circuit breaker overflow")]
pub struct Overflow(pub Resource);

/// Which resource overflowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `max_connections`.
    Connections,
    /// `max_pending_requests`.
    PendingRequests,
    /// `max_requests`.
    Requests,
    /// `max_retries` / `retry_budget`.
    Retries,
    /// `max_connection_pools`.
    ConnectionPools,
}

/// The breakers of a cluster: one [`PriorityBreakers`] per routing priority.
#[derive(Debug)]
pub struct CircuitBreakers {
    default: PriorityBreakers,
    high: PriorityBreakers,
}

/// The counters of one priority.
#[derive(Debug)]
pub struct PriorityBreakers {
    cx: Arc<Slot>,
    pending: Arc<Slot>,
    rq: Arc<Slot>,
    retries: Arc<Slot>,
    pools: Arc<Slot>,
    budget: Option<RetryBudget>,
    overflow: OverflowCounters,
}

/// A held slot of one resource; released on drop.
#[derive(Debug)]
#[must_use = "the slot is released when the permit is dropped"]
pub struct Permit(Arc<Slot>);

#[derive(Debug, Clone)]
struct OverflowCounters {
    cx: Counter,
    pending: Counter,
    active: Counter,
    retry: Counter,
    pool: Counter,
}

/// One limited resource: count, limit and its gauges.
#[derive(Debug)]
struct Slot {
    current: AtomicU64,
    /// `u64::MAX` for "unlimited".
    max: AtomicU64,
    open: Gauge,
    remaining: Option<Gauge>,
}

// === impl Thresholds ===

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_connections: DEFAULT_MAX,
            max_pending_requests: DEFAULT_MAX,
            max_requests: DEFAULT_MAX,
            max_retries: DEFAULT_MAX_RETRIES,
            max_connection_pools: None,
            retry_budget: None,
            track_remaining: false,
        }
    }
}

// === impl BreakerConfig ===

impl BreakerConfig {
    /// Compiles `circuit_breakers`. As Envoy, the first `thresholds` entry of a priority wins
    /// and zero limits are allowed (every request of that kind overflows).
    pub fn from_proto(cb: &XdsCircuitBreakers, path: &str) -> Result<Self, ConfigError> {
        let mut default = None;
        let mut high = None;
        for (i, t) in cb.thresholds.iter().enumerate() {
            let tpath = format!("{path}.thresholds[{i}]");
            let slot = match RoutingPriority::try_from(t.priority) {
                Ok(RoutingPriority::Default) => &mut default,
                Ok(RoutingPriority::High) => &mut high,
                Err(_) => {
                    return Err(ConfigError::new(
                        format!("{tpath}.priority"),
                        format!("unknown value {}", t.priority),
                    ))
                }
            };
            let retry_budget = match &t.retry_budget {
                Some(b) => {
                    let budget_percent =
                        b.budget_percent.map_or(DEFAULT_BUDGET_PERCENT, |p| p.value);
                    if !(0.0..=100.0).contains(&budget_percent) {
                        return Err(ConfigError::new(
                            format!("{tpath}.retry_budget.budget_percent"),
                            "must be between 0 and 100",
                        ));
                    }
                    Some(RetryBudget {
                        budget_percent,
                        min_retry_concurrency: b
                            .min_retry_concurrency
                            .map_or(DEFAULT_MIN_RETRY_CONCURRENCY, |v| v.value),
                    })
                }
                None => None,
            };
            let parsed = Thresholds {
                max_connections: t.max_connections.map_or(DEFAULT_MAX, |v| v.value),
                max_pending_requests: t.max_pending_requests.map_or(DEFAULT_MAX, |v| v.value),
                max_requests: t.max_requests.map_or(DEFAULT_MAX, |v| v.value),
                max_retries: t.max_retries.map_or(DEFAULT_MAX_RETRIES, |v| v.value),
                max_connection_pools: t.max_connection_pools.map(|v| v.value),
                retry_budget,
                track_remaining: t.track_remaining,
            };
            if slot.is_none() {
                *slot = Some(parsed);
            }
        }
        let mut per_host_max_connections = [None, None];
        let mut seen = [false, false];
        for (i, t) in cb.per_host_thresholds.iter().enumerate() {
            let tpath = format!("{path}.per_host_thresholds[{i}]");
            let idx = match RoutingPriority::try_from(t.priority) {
                Ok(RoutingPriority::Default) => 0,
                Ok(RoutingPriority::High) => 1,
                Err(_) => {
                    return Err(ConfigError::new(
                        format!("{tpath}.priority"),
                        format!("unknown value {}", t.priority),
                    ))
                }
            };
            // Envoy reads only max_connections per host and ignores the other fields.
            if !seen[idx] {
                seen[idx] = true;
                per_host_max_connections[idx] = t.max_connections.map(|v| v.value);
            }
        }
        Ok(BreakerConfig {
            default: default.unwrap_or_default(),
            high: high.unwrap_or_default(),
            per_host_max_connections,
        })
    }

    /// The thresholds of `priority`.
    pub fn thresholds(&self, priority: Priority) -> &Thresholds {
        match priority {
            Priority::Default => &self.default,
            Priority::High => &self.high,
        }
    }
}

// === impl HostConnections ===

impl HostConnections {
    /// A limit of `max` connections to one host, counting overflow in `overflow`
    /// (`cluster.<name>.upstream_cx_overflow`).
    pub fn new(max: u32, overflow: Counter) -> Self {
        HostConnections {
            slot: Arc::new(Slot {
                current: AtomicU64::new(0),
                max: AtomicU64::new(max as u64),
                open: Gauge::detached(),
                remaining: None,
            }),
            overflow,
        }
    }

    /// Takes a connection slot of this host.
    pub fn try_acquire(&self) -> Result<Permit, Overflow> {
        PriorityBreakers::acquire(&self.slot, Resource::Connections, &self.overflow)
    }
}

// === impl CircuitBreakers ===

impl CircuitBreakers {
    /// Builds the breakers and registers their stats under `prefix` (`cluster.<name>.`).
    pub fn new(cfg: &BreakerConfig, stats: &Stats, prefix: &str) -> Self {
        let overflow = OverflowCounters {
            cx: stats.counter(&format!("{prefix}upstream_cx_overflow")),
            pending: stats.counter(&format!("{prefix}upstream_rq_pending_overflow")),
            active: stats.counter(&format!("{prefix}upstream_rq_active_overflow")),
            retry: stats.counter(&format!("{prefix}upstream_rq_retry_overflow")),
            pool: stats.counter(&format!("{prefix}upstream_cx_pool_overflow")),
        };
        CircuitBreakers {
            default: PriorityBreakers::new(&cfg.default, stats, prefix, "default", &overflow),
            high: PriorityBreakers::new(&cfg.high, stats, prefix, "high", &overflow),
        }
    }

    /// Breakers that are never registered (tests, clusters built before stats exist).
    pub fn detached(cfg: &BreakerConfig) -> Self {
        Self::new(cfg, &Stats::default(), "")
    }

    /// The breakers of `priority`.
    pub fn priority(&self, priority: Priority) -> &PriorityBreakers {
        match priority {
            Priority::Default => &self.default,
            Priority::High => &self.high,
        }
    }
}

// === impl PriorityBreakers ===

impl PriorityBreakers {
    fn new(
        t: &Thresholds,
        stats: &Stats,
        prefix: &str,
        prio: &str,
        overflow: &OverflowCounters,
    ) -> Self {
        let base = format!("{prefix}circuit_breakers.{prio}.");
        // Envoy's open gauges start at 0 and change on the first acquire/release; remaining
        // gauges start at the limit.
        let slot = |open: &str, remaining: &str, max: u64, track: bool| {
            let remaining = t
                .track_remaining
                .then(|| stats.gauge(&format!("{base}{remaining}")));
            if let Some(g) = &remaining {
                g.set(if track {
                    max.min(i64::MAX as u64) as i64
                } else {
                    0
                });
            }
            Arc::new(Slot {
                current: AtomicU64::new(0),
                max: AtomicU64::new(max),
                open: stats.gauge(&format!("{base}{open}")),
                remaining: remaining.filter(|_| track),
            })
        };
        // Under a retry budget the limit is dynamic (computed per acquire from the active
        // and pending requests) and Envoy leaves `remaining_retries` at 0.
        let retries = match t.retry_budget {
            Some(_) => slot("rq_retry_open", "remaining_retries", u64::MAX, false),
            None => slot(
                "rq_retry_open",
                "remaining_retries",
                t.max_retries as u64,
                true,
            ),
        };
        PriorityBreakers {
            cx: slot("cx_open", "remaining_cx", t.max_connections as u64, true),
            pending: slot(
                "rq_pending_open",
                "remaining_pending",
                t.max_pending_requests as u64,
                true,
            ),
            rq: slot("rq_open", "remaining_rq", t.max_requests as u64, true),
            retries,
            pools: slot(
                "cx_pool_open",
                "remaining_cx_pools",
                t.max_connection_pools.map_or(u64::MAX, u64::from),
                t.max_connection_pools.is_some(),
            ),
            budget: t.retry_budget,
            overflow: overflow.clone(),
        }
    }

    /// Takes a connection slot; `Overflow` (and `upstream_cx_overflow`) at `max_connections`.
    pub fn try_acquire_cx(&self) -> Result<Permit, Overflow> {
        Self::acquire(&self.cx, Resource::Connections, &self.overflow.cx)
    }

    /// Takes a connection slot even past the limit, counting `upstream_cx_overflow` if it is
    /// reached: Envoy's rule for a host pool that has no connection at all.
    pub fn acquire_cx_forced(&self) -> Permit {
        if !self.cx.can_create() {
            self.overflow.cx.inc();
        }
        let n = self.cx.current.fetch_add(1, Ordering::AcqRel) + 1;
        self.cx.publish(n);
        Permit(self.cx.clone())
    }

    /// Takes a connection slot past the limit without counting an overflow: for the caller
    /// that already counted it (a failed [`Self::try_acquire_cx`]) and must still connect.
    pub fn acquire_cx_uncounted(&self) -> Permit {
        let n = self.cx.current.fetch_add(1, Ordering::AcqRel) + 1;
        self.cx.publish(n);
        Permit(self.cx.clone())
    }

    /// Takes a pending-request slot; `Overflow` (and `upstream_rq_pending_overflow`) at
    /// `max_pending_requests`.
    pub fn try_acquire_pending(&self) -> Result<Permit, Overflow> {
        Self::acquire(
            &self.pending,
            Resource::PendingRequests,
            &self.overflow.pending,
        )
    }

    /// Takes an active-request slot; `Overflow` at `max_requests`, counted (as Envoy) in
    /// `upstream_rq_active_overflow`.
    pub fn try_acquire_rq(&self) -> Result<Permit, Overflow> {
        Self::acquire(&self.rq, Resource::Requests, &self.overflow.active)
    }

    /// Takes a retry slot; `Overflow` (and `upstream_rq_retry_overflow`) at `max_retries`
    /// or the retry budget.
    pub fn try_acquire_retry(&self) -> Result<Permit, Overflow> {
        if self.budget.is_some() {
            self.retries
                .max
                .store(self.retry_limit(), Ordering::Relaxed);
        }
        Self::acquire(&self.retries, Resource::Retries, &self.overflow.retry)
    }

    /// Takes a connection-pool slot; `Overflow` (and `upstream_cx_pool_overflow`) at
    /// `max_connection_pools`.
    pub fn try_acquire_cx_pool(&self) -> Result<Permit, Overflow> {
        Self::acquire(&self.pools, Resource::ConnectionPools, &self.overflow.pool)
    }

    /// Whether a slot of `resource` is free now (no counting; for pool decisions).
    pub fn can_create(&self, resource: Resource) -> bool {
        match resource {
            Resource::Connections => self.cx.can_create(),
            Resource::PendingRequests => self.pending.can_create(),
            Resource::Requests => self.rq.can_create(),
            Resource::Retries => self.retries.current.load(Ordering::Relaxed) < self.retry_limit(),
            Resource::ConnectionPools => self.pools.can_create(),
        }
    }

    /// Slots of `resource` in use.
    pub fn in_use(&self, resource: Resource) -> u64 {
        let s = match resource {
            Resource::Connections => &self.cx,
            Resource::PendingRequests => &self.pending,
            Resource::Requests => &self.rq,
            Resource::Retries => &self.retries,
            Resource::ConnectionPools => &self.pools,
        };
        s.current.load(Ordering::Relaxed)
    }

    /// The current retry limit: `max_retries`, or the budget over active + pending requests.
    pub fn retry_limit(&self) -> u64 {
        match &self.budget {
            None => self.retries.max.load(Ordering::Relaxed),
            Some(b) => {
                let active = self.rq.current.load(Ordering::Relaxed)
                    + self.pending.current.load(Ordering::Relaxed);
                ((b.budget_percent / 100.0 * active as f64) as u64)
                    .max(b.min_retry_concurrency as u64)
            }
        }
    }

    fn acquire(slot: &Arc<Slot>, kind: Resource, overflow: &Counter) -> Result<Permit, Overflow> {
        let max = slot.max.load(Ordering::Relaxed);
        match slot
            .current
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |c| {
                (c < max).then_some(c + 1)
            }) {
            Ok(prev) => {
                slot.publish(prev + 1);
                Ok(Permit(slot.clone()))
            }
            Err(_) => {
                overflow.inc();
                Err(Overflow(kind))
            }
        }
    }
}

// === impl Permit ===

impl Drop for Permit {
    fn drop(&mut self) {
        let n = self.0.current.fetch_sub(1, Ordering::AcqRel) - 1;
        self.0.publish(n);
    }
}

// === impl Slot ===

impl Slot {
    fn can_create(&self) -> bool {
        self.current.load(Ordering::Relaxed) < self.max.load(Ordering::Relaxed)
    }

    /// Envoy's `ManagedResourceImpl::inc/dec`: `open` is 1 while no slot is free and
    /// `remaining` is `max - current` (saturating).
    fn publish(&self, current: u64) {
        let max = self.max.load(Ordering::Relaxed);
        self.open.set(i64::from(current >= max));
        if let Some(r) = &self.remaining {
            r.set(max.saturating_sub(current).min(i64::MAX as u64) as i64);
        }
    }
}

impl From<RoutingPriority> for Priority {
    fn from(p: RoutingPriority) -> Self {
        match p {
            RoutingPriority::Default => Priority::Default,
            RoutingPriority::High => Priority::High,
        }
    }
}

#[cfg(test)]
mod tests;
