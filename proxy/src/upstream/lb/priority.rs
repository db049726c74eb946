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

/// Host counts (or, with `weighted_priority_health`, weight sums) of one priority level or
/// locality. `total` leaves out excluded (draining) hosts, as Envoy's `hosts - excluded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LevelHealth {
    /// All hosts but excluded ones.
    pub total: u64,
    /// Healthy hosts.
    pub healthy: u64,
    /// Degraded hosts.
    pub degraded: u64,
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

/// Compiles `common_lb_config.healthy_panic_threshold` (0–100, default 50; 0 disables),
/// rounded to an integer percentage as Envoy's `PROTOBUF_PERCENT_TO_ROUNDED_INTEGER_OR_DEFAULT`.
pub fn panic_threshold(c: Option<&CommonLbConfig>, path: &str) -> Result<u32, ConfigError> {
    let v = c
        .and_then(|c| c.healthy_panic_threshold)
        .map_or(DEFAULT_PANIC_THRESHOLD, |p| p.value);
    if !(0.0..=100.0).contains(&v) {
        return Err(ConfigError::new(
            format!("{path}.healthy_panic_threshold.value"),
            "must be between 0 and 100",
        ));
    }
    Ok(v.round() as u32)
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
    let all: Vec<u64> = levels.iter().map(|l| l.total).collect();
    priority_load_full(levels, levels, &all, overprovisioning, panic_threshold)
}

/// [`priority_load`] with Envoy's three separate inputs: `avail` feeds the availability
/// (host counts, or weight sums with `weighted_priority_health`), `counts` the per-level
/// panic check (always host counts without excluded hosts), and `all_hosts` the total-panic
/// split (every host of the level, excluded ones included, as `hosts().size()`).
pub fn priority_load_full(
    avail_levels: &[LevelHealth],
    counts: &[LevelHealth],
    all_hosts: &[u64],
    overprovisioning: u32,
    panic_threshold: f64,
) -> PriorityLoad {
    let levels = avail_levels;
    let n = levels.len();
    let mut load = PriorityLoad {
        healthy: vec![0; n],
        degraded: vec![0; n],
        panic: vec![false; n],
    };
    if n == 0 {
        return load;
    }
    let avail = |x: u64, total: u64| {
        if total == 0 {
            0
        } else {
            (100u128.min(overprovisioning as u128 * x as u128 / total as u128)) as u32
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
    for (i, l) in counts.iter().enumerate().take(n) {
        load.panic[i] = normalized_total != 100 && in_panic(l, panic_threshold);
    }
    if load.panic.iter().all(|p| *p) {
        let total_hosts: u64 = all_hosts.iter().sum();
        if total_hosts == 0 {
            // Envoy: the backend is empty, but load must go somewhere.
            load.healthy = vec![0; n];
            load.degraded = vec![0; n];
            load.healthy[0] = 100;
            return load;
        }
        let mut rest = 100u32;
        let mut first = None;
        for (i, &hosts) in all_hosts.iter().enumerate().take(n) {
            if first.is_none() && hosts != 0 {
                first = Some(i);
            }
            let share = (100 * hosts / total_hosts) as u32;
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

/// Envoy's effective locality weight: `weight × min(1, factor/100 × eligible / total)`
/// (`healthy` holds the eligible hosts: healthy ones, or degraded ones for the degraded
/// schedule).
pub fn locality_effective_weight(weight: u32, l: &LevelHealth, overprovisioning: u32) -> f64 {
    if l.total == 0 {
        return 0.0;
    }
    let ratio = l.healthy as f64 / l.total as f64;
    weight as f64 * (overprovisioning as f64 / 100.0 * ratio).min(1.0)
}
