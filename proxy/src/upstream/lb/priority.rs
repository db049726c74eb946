//! Priority levels, overprovisioning, panic mode and locality weights, as Envoy's
//! `LoadBalancerBase` (`recalculatePerPriorityState`, `recalculatePerPriorityPanic`,
//! `choosePriority`) and `HostSetImpl::effectiveLocalityWeight`.
//!
//! Computed when a host set changes (pure functions over host counts), then one draw per
//! request picks the priority.
use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;

use crate::config::ConfigError;

/// `overprovisioning_factor` default (1.4, as a percentage).
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;
/// `healthy_panic_threshold` default (%).
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;

/// Host counts of one priority level (or locality).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LevelHealth {
    /// All hosts.
    pub total: u32,
    /// Healthy hosts.
    pub healthy: u32,
    /// Degraded hosts.
    pub degraded: u32,
}

/// Load per priority, in percent (healthy and degraded together sum to 100), and which
/// levels are in panic (balance over all their hosts).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PriorityLoad {
    /// Load sent to each level's healthy hosts.
    pub healthy: Vec<u32>,
    /// Load sent to each level's degraded hosts.
    pub degraded: Vec<u32>,
    /// Whether each level is in panic.
    pub panic: Vec<bool>,
}

/// Which hosts of the chosen priority to balance over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Healthy hosts (all hosts if the level is in panic).
    Healthy,
    /// Degraded hosts.
    Degraded,
}

/// Compiles `common_lb_config.healthy_panic_threshold` (0–100, default 50; 0 disables).
pub fn panic_threshold(c: Option<&CommonLbConfig>, path: &str) -> Result<f64, ConfigError> {
    let v = c
        .and_then(|c| c.healthy_panic_threshold)
        .map_or(DEFAULT_PANIC_THRESHOLD, |p| p.value);
    if !(0.0..=100.0).contains(&v) {
        return Err(ConfigError::new(
            format!("{path}.healthy_panic_threshold"),
            "must be between 0 and 100",
        ));
    }
    Ok(v)
}

/// Envoy's priority load: each level's availability is `min(100, factor × healthy /
/// total)` (same for degraded); levels take load in order until 100 is given out, scaled up
/// when total availability is below 100; rounding leftovers go to the first available level.
/// A level is in panic when its healthy + degraded share is below `panic_threshold` (unless
/// total availability is 100); if every level is, load follows host counts.
pub fn priority_load(
    levels: &[LevelHealth],
    overprovisioning: u32,
    panic_threshold: f64,
) -> PriorityLoad {
    let n = levels.len();
    let mut load = PriorityLoad {
        healthy: vec![0; n],
        degraded: vec![0; n],
        panic: vec![false; n],
    };
    if n == 0 {
        return load;
    }
    let avail = |x: u32, total: u32| {
        if total == 0 {
            0
        } else {
            (100u64.min(overprovisioning as u64 * x as u64 / total as u64)) as u32
        }
    };
    let health: Vec<u32> = levels.iter().map(|l| avail(l.healthy, l.total)).collect();
    let degraded: Vec<u32> = levels.iter().map(|l| avail(l.degraded, l.total)).collect();
    let normalized_total = 100u32.min(health.iter().sum::<u32>() + degraded.iter().sum::<u32>());
    if normalized_total > 0 {
        let (first_h, rest) = distribute(&mut load.healthy, &health, 100, normalized_total);
        let (first_d, rest) = distribute(&mut load.degraded, &degraded, rest, normalized_total);
        if rest != 0 {
            if let Some(i) = first_h {
                load.healthy[i] += rest;
            } else if let Some(i) = first_d {
                load.degraded[i] += rest;
            }
        }
    }
    // recalculatePerPriorityPanic.
    if normalized_total == 0 && panic_threshold == 0.0 {
        load.healthy[0] = 100;
        return load;
    }
    for (i, l) in levels.iter().enumerate() {
        load.panic[i] = normalized_total != 100 && in_panic(l, panic_threshold);
    }
    if load.panic.iter().all(|p| *p) {
        let total_hosts: u64 = levels.iter().map(|l| l.total as u64).sum();
        if total_hosts == 0 {
            return load;
        }
        let mut rest = 100u32;
        let mut first = None;
        for (i, l) in levels.iter().enumerate() {
            if first.is_none() && l.total != 0 {
                first = Some(i);
            }
            let share = (100 * l.total as u64 / total_hosts) as u32;
            load.healthy[i] = share;
            load.degraded[i] = 0;
            rest -= share;
        }
        if let Some(i) = first {
            load.healthy[i] += rest;
        }
    }
    load
}

fn distribute(
    out: &mut [u32],
    avail: &[u32],
    mut total: u32,
    normalized_total: u32,
) -> (Option<usize>, u32) {
    let mut first = None;
    for (i, a) in avail.iter().enumerate() {
        if first.is_none() && *a > 0 {
            first = Some(i);
        }
        out[i] = total.min(a * 100 / normalized_total);
        total -= out[i];
    }
    (first, total)
}

/// Envoy's `isHostSetInPanic`.
pub fn in_panic(l: &LevelHealth, panic_threshold: f64) -> bool {
    let (h, d) = if l.total == 0 {
        (0.0, 0.0)
    } else {
        (
            100.0 * l.healthy as f64 / l.total as f64,
            100.0 * l.degraded as f64 / l.total as f64,
        )
    };
    h + d < panic_threshold
}

/// Envoy's `choosePriority`: `random % 100` walks the healthy loads, then the degraded ones.
pub fn choose_priority(load: &PriorityLoad, random: u64) -> (usize, Availability) {
    let r = (random % 100) as u32;
    let mut acc = 0;
    for (i, l) in load.healthy.iter().enumerate() {
        acc += l;
        if r < acc {
            return (i, Availability::Healthy);
        }
    }
    for (i, l) in load.degraded.iter().enumerate() {
        acc += l;
        if r < acc {
            return (i, Availability::Degraded);
        }
    }
    // Loads always sum to 100; unreachable in practice.
    (0, Availability::Healthy)
}

/// Envoy's effective locality weight: `weight × min(1, factor/100 × healthy / total)`.
pub fn locality_effective_weight(weight: u32, l: &LevelHealth, overprovisioning: u32) -> f64 {
    if l.total == 0 {
        return 0.0;
    }
    let ratio = l.healthy as f64 / l.total as f64;
    weight as f64 * (overprovisioning as f64 / 100.0 * ratio).min(1.0)
}
