//! Envoy-compatible stats: named counters and gauges with lock-free handles.
//!
//! Handles are resolved when the runtime is built and bumped with one atomic add on the
//! request path; the registry's lock is taken only to create a stat and to render the admin
//! endpoints. Names and semantics follow Envoy's (`cluster.<c>.upstream_rq_total`, ...), so
//! dashboards and scripts written for Envoy keep working. We keep our own store rather than
//! the `metrics` facade because Envoy's admin output needs the full name set, "used" flags
//! (`?usedonly`) and counter resets, which a global recorder hides behind its key type.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing counter.
#[derive(Clone, Debug)]
pub struct Counter(Arc<CounterInner>);

#[derive(Debug, Default)]
struct CounterInner {
    value: AtomicU64,
    used: AtomicBool,
}

/// A value that goes up and down.
#[derive(Clone, Debug)]
pub struct Gauge(Arc<GaugeInner>);

#[derive(Debug, Default)]
struct GaugeInner {
    value: AtomicI64,
    used: AtomicBool,
}

/// The registry of all stats of this process.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    counters: BTreeMap<String, Counter>,
    gauges: BTreeMap<String, Gauge>,
}

/// One stat as rendered by the admin endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatValue {
    /// Full Envoy name.
    pub name: String,
    /// Current value.
    pub value: i64,
    /// Counter (true) or gauge (false).
    pub is_counter: bool,
    /// Whether it was ever written (Envoy's `?usedonly`).
    pub used: bool,
}

// === impl Counter ===

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.value.fetch_add(n, Ordering::Relaxed);
        if !self.0.used.load(Ordering::Relaxed) {
            self.0.used.store(true, Ordering::Relaxed);
        }
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.value.load(Ordering::Relaxed)
    }

    /// A counter not registered anywhere (for tests and defaults).
    pub fn detached() -> Self {
        Counter(Arc::default())
    }
}

// === impl Gauge ===

impl Gauge {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.add(-1);
    }

    /// Adds `n` (may be negative).
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.value.fetch_add(n, Ordering::Relaxed);
        self.mark_used();
    }

    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.value.store(v, Ordering::Relaxed);
        self.mark_used();
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.value.load(Ordering::Relaxed)
    }

    /// A gauge not registered anywhere.
    pub fn detached() -> Self {
        Gauge(Arc::default())
    }

    fn mark_used(&self) {
        if !self.0.used.load(Ordering::Relaxed) {
            self.0.used.store(true, Ordering::Relaxed);
        }
    }
}

/// A guard that decrements a gauge when dropped (active connections and requests).
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Increments `gauge` now and decrements it on drop.
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === impl Stats ===

impl Stats {
    /// Returns the counter named `name`, creating it at zero.
    pub fn counter(&self, name: &str) -> Counter {
        let mut reg = self.lock();
        if let Some(c) = reg.counters.get(name) {
            return c.clone();
        }
        let c = Counter(Arc::default());
        reg.counters.insert(name.to_string(), c.clone());
        c
    }

    /// Returns the gauge named `name`, creating it at zero.
    pub fn gauge(&self, name: &str) -> Gauge {
        let mut reg = self.lock();
        if let Some(g) = reg.gauges.get(name) {
            return g.clone();
        }
        let g = Gauge(Arc::default());
        reg.gauges.insert(name.to_string(), g.clone());
        g
    }

    /// A snapshot of every stat, sorted by name.
    pub fn snapshot(&self) -> Vec<StatValue> {
        let reg = self.lock();
        let mut out: Vec<StatValue> = reg
            .counters
            .iter()
            .map(|(name, c)| StatValue {
                name: name.clone(),
                value: c.get() as i64,
                is_counter: true,
                used: c.0.used.load(Ordering::Relaxed),
            })
            .chain(reg.gauges.iter().map(|(name, g)| StatValue {
                name: name.clone(),
                value: g.get(),
                is_counter: false,
                used: g.0.used.load(Ordering::Relaxed),
            }))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Sets every counter back to zero (`POST /reset_counters`); gauges keep their values.
    pub fn reset_counters(&self) {
        let reg = self.lock();
        for c in reg.counters.values() {
            c.0.value.store(0, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the maps inconsistent (each insert is
        // a single operation), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shared_by_name_and_reset() {
        let stats = Stats::default();
        let a = stats.counter("cluster.x.upstream_rq_total");
        let b = stats.counter("cluster.x.upstream_rq_total");
        a.inc();
        b.add(2);
        assert_eq!(a.get(), 3);
        let g = stats.gauge("cluster.x.upstream_cx_active");
        {
            let _guard = GaugeGuard::new(&g);
            assert_eq!(g.get(), 1);
        }
        assert_eq!(g.get(), 0);
        stats.reset_counters();
        assert_eq!(a.get(), 0);
        let snap = stats.snapshot();
        assert!(snap.iter().all(|s| s.used));
        assert_eq!(snap.len(), 2);
    }
}
