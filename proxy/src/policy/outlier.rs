//! Outlier detection (`cluster.outlier_detection`), as Envoy's `Outlier::DetectorImpl`.
//!
//! Requests report an [`Outcome`] per upstream host. Consecutive-error detectors
//! (`consecutive_5xx`, `consecutive_gateway_failure`, `consecutive_local_origin_failure`) fire
//! inline when a host's counter *reaches* the threshold; the success-rate and
//! failure-percentage detectors run every `interval` in [`OutlierDetector::tick`], over the
//! previous interval's counts. An ejected host is kept out of load balancing (unless the
//! balancer is in panic) until a tick finds that `min(base_ejection_time × backoff,
//! max_ejection_time) + jitter` has passed since its ejection. `backoff` grows by one per
//! ejection and shrinks by one per interval the host stays healthy, as in Envoy.
//!
//! Hot path: [`OutlierDetector::record`] and [`OutlierDetector::is_ejected`] touch only
//! atomics; a per-host mutex is taken only when a detector fires and in `tick`.
//!
//! Mapping from request results (Envoy's router): an HTTP response reports its status
//! (`Outcome::Status`; for a gRPC response with `grpc-status`, [`grpc_to_http_status`] of
//! it); a reset or a connect failure reports `LOCAL_ORIGIN_CONNECT_FAILED` (503 when errors
//! are not split); an upstream timeout reports `LOCAL_ORIGIN_TIMEOUT` (504); with
//! `split_external_local_origin_errors` a successful connect reports
//! `LOCAL_ORIGIN_CONNECT_SUCCESS`, which resets the local-origin counter.
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection as XdsOutlierDetection;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

use crate::config::{duration, ConfigError};
use crate::stats::{Counter, Gauge, Stats};

/// The result of one request (or connection attempt) to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP response with this status (from the upstream).
    Status(u16),
    /// The connection could not be established.
    ConnectFailed,
    /// The connection was established and the exchange continues over it (HTTP: Envoy's
    /// `LOCAL_ORIGIN_CONNECT_SUCCESS`; matters only with split errors).
    ConnectSuccess,
    /// The connection was established and that is the whole result (tcp_proxy: Envoy's
    /// `LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL`, counted as a 200 without split errors).
    ConnectSuccessFinal,
    /// The request timed out (route or per-try timeout).
    Timeout,
    /// The stream or connection was reset.
    Reset,
}

/// Why a host was ejected (Envoy's `OutlierEjectionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionType {
    /// `CONSECUTIVE_5XX`.
    Consecutive5xx,
    /// `CONSECUTIVE_GATEWAY_FAILURE`.
    ConsecutiveGatewayFailure,
    /// `CONSECUTIVE_LOCAL_ORIGIN_FAILURE`.
    ConsecutiveLocalOriginFailure,
    /// `SUCCESS_RATE`.
    SuccessRate,
    /// `SUCCESS_RATE_LOCAL_ORIGIN`.
    SuccessRateLocalOrigin,
    /// `FAILURE_PERCENTAGE`.
    FailurePercentage,
    /// `FAILURE_PERCENTAGE_LOCAL_ORIGIN`.
    FailurePercentageLocalOrigin,
}

/// `outlier_detection`, compiled with Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// `interval` (10 s).
    pub interval: Duration,
    /// `base_ejection_time` (30 s).
    pub base_ejection_time: Duration,
    /// `max_ejection_time` (max(300 s, base_ejection_time)).
    pub max_ejection_time: Duration,
    /// `max_ejection_time_jitter` (0).
    pub max_ejection_time_jitter: Duration,
    /// `max_ejection_percent` (10).
    pub max_ejection_percent: u32,
    /// `always_eject_one_host` (false).
    pub always_eject_one_host: bool,
    /// `consecutive_5xx` (5).
    pub consecutive_5xx: u32,
    /// `consecutive_gateway_failure` (5).
    pub consecutive_gateway_failure: u32,
    /// `consecutive_local_origin_failure` (5).
    pub consecutive_local_origin_failure: u32,
    /// `split_external_local_origin_errors` (false).
    pub split_external_local_origin_errors: bool,
    /// `enforcing_consecutive_5xx` (100).
    pub enforcing_consecutive_5xx: u32,
    /// `enforcing_consecutive_gateway_failure` (0).
    pub enforcing_consecutive_gateway_failure: u32,
    /// `enforcing_consecutive_local_origin_failure` (100).
    pub enforcing_consecutive_local_origin_failure: u32,
    /// `enforcing_success_rate` (100).
    pub enforcing_success_rate: u32,
    /// `enforcing_local_origin_success_rate` (100).
    pub enforcing_local_origin_success_rate: u32,
    /// `enforcing_failure_percentage` (0).
    pub enforcing_failure_percentage: u32,
    /// `enforcing_failure_percentage_local_origin` (0).
    pub enforcing_failure_percentage_local_origin: u32,
    /// `success_rate_minimum_hosts` (5).
    pub success_rate_minimum_hosts: u32,
    /// `success_rate_request_volume` (100).
    pub success_rate_request_volume: u32,
    /// `success_rate_stdev_factor` (1900, i.e. 1.9 standard deviations).
    pub success_rate_stdev_factor: u32,
    /// `failure_percentage_threshold` (85).
    pub failure_percentage_threshold: u32,
    /// `failure_percentage_minimum_hosts` (5).
    pub failure_percentage_minimum_hosts: u32,
    /// `failure_percentage_request_volume` (50).
    pub failure_percentage_request_volume: u32,
}

/// The detector of one cluster, keyed by a host identity `K` (e.g. the host address).
#[derive(Debug)]
pub struct OutlierDetector<K> {
    cfg: OutlierConfig,
    hosts: ArcSwap<HostTable<K>>,
    /// Serialises ejection decisions (rare: a detector fired, or `tick`).
    decide: Mutex<()>,
    ejections_active: AtomicU64,
    /// Last interval's (mean, ejection threshold) of the success-rate detector, external and
    /// local origin; `(-1, -1)` when it did not run (`/clusters`).
    sr_nums: Mutex<[(f64, f64); 2]>,
    stats: OutlierStats,
}

/// The monitored hosts, in a stable order (ejection decisions walk it in this order).
#[derive(Debug)]
struct HostTable<K> {
    order: Vec<(K, Arc<HostMonitor>)>,
    index: HashMap<K, usize>,
}

/// Per-host state. Counters are atomics; ejection bookkeeping sits behind a mutex used only
/// when ejecting or in `tick`.
#[derive(Debug)]
pub struct HostMonitor {
    ejected: AtomicBool,
    consecutive_5xx: AtomicU32,
    consecutive_gateway_failure: AtomicU32,
    consecutive_local_origin_failure: AtomicU32,
    /// Current interval's external-origin counts: success << 32 | total.
    external: AtomicU64,
    /// Current interval's local-origin counts: success << 32 | total.
    local: AtomicU64,
    /// Last interval's success rates (f64 bits; -1 when not computed), external and local.
    success_rate: [AtomicU64; 2],
    state: Mutex<EjectState>,
}

#[derive(Debug, Default)]
struct EjectState {
    num_ejections: u32,
    backoff: u32,
    jitter: Duration,
    last_ejection: Option<Instant>,
    last_unejection: Option<Instant>,
    /// Previous interval's (success, total), external and local origin.
    external_prev: (u64, u64),
    local_prev: (u64, u64),
}

/// `cluster.<name>.outlier_detection.*`.
#[derive(Debug, Clone)]
struct OutlierStats {
    ejections_active: Gauge,
    ejections_overflow: Counter,
    ejections_enforced_total: Counter,
    ejections_total: Counter,
    ejections_consecutive_5xx: Counter,
    ejections_success_rate: Counter,
    enforced: [Counter; 7],
    detected: [Counter; 7],
    /// `ejections_detected_degradation` (`detect_degraded_hosts`, refused at config load, so
    /// it stays 0; registered because Envoy always lists it).
    _detected_degradation: Counter,
}

const SUCCESS: u64 = (1 << 32) | 1;
const FAILURE: u64 = 1;

// === impl OutlierConfig ===

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            always_eject_one_host: false,
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            split_external_local_origin_errors: false,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 100,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
        }
    }
}

impl OutlierConfig {
    /// Compiles `outlier_detection`; percentages above 100, zero intervals and a
    /// `max_ejection_time` below `base_ejection_time` are rejected as Envoy does.
    pub fn from_proto(o: &XdsOutlierDetection, path: &str) -> Result<Self, ConfigError> {
        let d = OutlierConfig::default();
        let dur = |v: &Option<PbDuration>, name: &str, def: Duration, nonzero: bool| {
            let Some(v) = v else { return Ok(def) };
            let fpath = format!("{path}.{name}");
            let v = duration(v, &fpath)?;
            if nonzero && v.is_zero() {
                return Err(ConfigError::new(fpath, "must be greater than 0"));
            }
            Ok(v)
        };
        let pct = |v: &Option<UInt32Value>, name: &str, def: u32| {
            let v = v.map_or(def, |v| v.value);
            if v > 100 {
                return Err(ConfigError::new(
                    format!("{path}.{name}"),
                    "must be at most 100",
                ));
            }
            Ok(v)
        };
        let int = |v: &Option<UInt32Value>, def: u32| v.map_or(def, |v| v.value);
        if o.detect_degraded_hosts.is_some_and(|b| b.value) {
            return Err(ConfigError::new(
                format!("{path}.detect_degraded_hosts"),
                "not supported",
            ));
        }
        if !o.monitors.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.monitors"),
                "outlier detection extensions are not supported",
            ));
        }
        let base_ejection_time = dur(
            &o.base_ejection_time,
            "base_ejection_time",
            d.base_ejection_time,
            true,
        )?;
        let max_ejection_time = dur(
            &o.max_ejection_time,
            "max_ejection_time",
            d.max_ejection_time.max(base_ejection_time),
            true,
        )?;
        if max_ejection_time < base_ejection_time {
            return Err(ConfigError::new(
                format!("{path}.max_ejection_time"),
                "cannot be smaller than base_ejection_time",
            ));
        }
        Ok(OutlierConfig {
            interval: dur(&o.interval, "interval", d.interval, true)?,
            base_ejection_time,
            max_ejection_time,
            max_ejection_time_jitter: dur(
                &o.max_ejection_time_jitter,
                "max_ejection_time_jitter",
                Duration::ZERO,
                false,
            )?,
            max_ejection_percent: pct(&o.max_ejection_percent, "max_ejection_percent", 10)?,
            always_eject_one_host: o.always_eject_one_host.is_some_and(|b| b.value),
            consecutive_5xx: int(&o.consecutive_5xx, d.consecutive_5xx),
            consecutive_gateway_failure: int(
                &o.consecutive_gateway_failure,
                d.consecutive_gateway_failure,
            ),
            consecutive_local_origin_failure: int(
                &o.consecutive_local_origin_failure,
                d.consecutive_local_origin_failure,
            ),
            split_external_local_origin_errors: o.split_external_local_origin_errors,
            enforcing_consecutive_5xx: pct(
                &o.enforcing_consecutive_5xx,
                "enforcing_consecutive_5xx",
                d.enforcing_consecutive_5xx,
            )?,
            enforcing_consecutive_gateway_failure: pct(
                &o.enforcing_consecutive_gateway_failure,
                "enforcing_consecutive_gateway_failure",
                d.enforcing_consecutive_gateway_failure,
            )?,
            enforcing_consecutive_local_origin_failure: pct(
                &o.enforcing_consecutive_local_origin_failure,
                "enforcing_consecutive_local_origin_failure",
                d.enforcing_consecutive_local_origin_failure,
            )?,
            enforcing_success_rate: pct(
                &o.enforcing_success_rate,
                "enforcing_success_rate",
                d.enforcing_success_rate,
            )?,
            enforcing_local_origin_success_rate: pct(
                &o.enforcing_local_origin_success_rate,
                "enforcing_local_origin_success_rate",
                d.enforcing_local_origin_success_rate,
            )?,
            enforcing_failure_percentage: pct(
                &o.enforcing_failure_percentage,
                "enforcing_failure_percentage",
                d.enforcing_failure_percentage,
            )?,
            enforcing_failure_percentage_local_origin: pct(
                &o.enforcing_failure_percentage_local_origin,
                "enforcing_failure_percentage_local_origin",
                d.enforcing_failure_percentage_local_origin,
            )?,
            success_rate_minimum_hosts: int(
                &o.success_rate_minimum_hosts,
                d.success_rate_minimum_hosts,
            ),
            success_rate_request_volume: int(
                &o.success_rate_request_volume,
                d.success_rate_request_volume,
            ),
            success_rate_stdev_factor: int(
                &o.success_rate_stdev_factor,
                d.success_rate_stdev_factor,
            ),
            failure_percentage_threshold: pct(
                &o.failure_percentage_threshold,
                "failure_percentage_threshold",
                d.failure_percentage_threshold,
            )?,
            failure_percentage_minimum_hosts: int(
                &o.failure_percentage_minimum_hosts,
                d.failure_percentage_minimum_hosts,
            ),
            failure_percentage_request_volume: int(
                &o.failure_percentage_request_volume,
                d.failure_percentage_request_volume,
            ),
        })
    }

    fn enforcing(&self, t: EjectionType) -> u32 {
        match t {
            EjectionType::Consecutive5xx => self.enforcing_consecutive_5xx,
            EjectionType::ConsecutiveGatewayFailure => self.enforcing_consecutive_gateway_failure,
            EjectionType::ConsecutiveLocalOriginFailure => {
                self.enforcing_consecutive_local_origin_failure
            }
            EjectionType::SuccessRate => self.enforcing_success_rate,
            EjectionType::SuccessRateLocalOrigin => self.enforcing_local_origin_success_rate,
            EjectionType::FailurePercentage => self.enforcing_failure_percentage,
            EjectionType::FailurePercentageLocalOrigin => {
                self.enforcing_failure_percentage_local_origin
            }
        }
    }
}

// === impl EjectionType ===

impl EjectionType {
    const ALL: [EjectionType; 7] = [
        EjectionType::Consecutive5xx,
        EjectionType::ConsecutiveGatewayFailure,
        EjectionType::ConsecutiveLocalOriginFailure,
        EjectionType::SuccessRate,
        EjectionType::SuccessRateLocalOrigin,
        EjectionType::FailurePercentage,
        EjectionType::FailurePercentageLocalOrigin,
    ];

    /// The stat-name suffix (`ejections_enforced_<suffix>`).
    pub fn stat_suffix(self) -> &'static str {
        match self {
            EjectionType::Consecutive5xx => "consecutive_5xx",
            EjectionType::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            EjectionType::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            EjectionType::SuccessRate => "success_rate",
            EjectionType::SuccessRateLocalOrigin => "local_origin_success_rate",
            EjectionType::FailurePercentage => "failure_percentage",
            EjectionType::FailurePercentageLocalOrigin => "local_origin_failure_percentage",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

// === impl OutlierDetector ===

impl<K: Eq + Hash + Clone> OutlierDetector<K> {
    /// A detector with its stats under `prefix` (`cluster.<name>.`).
    pub fn new(cfg: OutlierConfig, stats: &Stats, prefix: &str) -> Self {
        OutlierDetector {
            cfg,
            hosts: ArcSwap::from_pointee(HostTable {
                order: Vec::new(),
                index: HashMap::new(),
            }),
            decide: Mutex::new(()),
            ejections_active: AtomicU64::new(0),
            sr_nums: Mutex::new([(-1.0, -1.0); 2]),
            stats: OutlierStats::new(stats, &format!("{prefix}outlier_detection.")),
        }
    }

    /// The compiled config.
    pub fn config(&self) -> &OutlierConfig {
        &self.cfg
    }

    /// Replaces the monitored host set. Hosts that stay keep their state; removed ejected
    /// hosts no longer count in `ejections_active`.
    pub fn set_hosts(&self, hosts: impl IntoIterator<Item = K>) {
        let _g = lock(&self.decide);
        let prev = self.hosts.load();
        let mut order = Vec::new();
        let mut index = HashMap::new();
        for k in hosts {
            if index.contains_key(&k) {
                continue;
            }
            let m = prev
                .index
                .get(&k)
                .map(|&i| prev.order[i].1.clone())
                .unwrap_or_default();
            index.insert(k.clone(), order.len());
            order.push((k, m));
        }
        for (k, m) in &prev.order {
            if !index.contains_key(k) && m.ejected.load(Ordering::Acquire) {
                self.ejections_active.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.stats
            .ejections_active
            .set(self.ejections_active.load(Ordering::Relaxed) as i64);
        self.hosts.store(Arc::new(HostTable { order, index }));
    }

    /// The monitor of `host`, to cache beside the host and report with [`Self::record_on`].
    pub fn monitor(&self, host: &K) -> Option<Arc<HostMonitor>> {
        let t = self.hosts.load();
        t.index.get(host).map(|&i| t.order[i].1.clone())
    }

    /// Whether `host` is ejected. Envoy returns hosts to service only at interval ticks, so
    /// no clock is needed here.
    pub fn is_ejected(&self, host: &K) -> bool {
        let t = self.hosts.load();
        t.index
            .get(host)
            .is_some_and(|&i| t.order[i].1.ejected.load(Ordering::Acquire))
    }

    /// Hosts ejected now (`ejections_active`).
    pub fn ejections_active(&self) -> u64 {
        self.ejections_active.load(Ordering::Relaxed)
    }

    /// Reports a request outcome for `host` (ignored for unknown hosts). Returns whether a
    /// host was ejected (the balancer then republishes its healthy set).
    pub fn record(&self, host: &K, outcome: Outcome, now: Instant) -> bool {
        match self.monitor(host) {
            Some(m) => self.record_on(&m, outcome, now),
            None => false,
        }
    }

    /// Reports a request outcome on a cached monitor; returns whether a host was ejected.
    /// Without split errors local-origin results count as HTTP codes, as Envoy's
    /// `putResultNoLocalExternalSplit`: connect failures and resets as 503, timeouts as 504,
    /// a final connect success as 200, and a connect success followed by an HTTP exchange not
    /// at all (the exchange reports its own status).
    pub fn record_on(&self, m: &Arc<HostMonitor>, outcome: Outcome, now: Instant) -> bool {
        let split = self.cfg.split_external_local_origin_errors;
        match (outcome, split) {
            (Outcome::Status(code), _) => self.put_http(m, code, now),
            (Outcome::ConnectSuccess, false) => false,
            (Outcome::ConnectSuccessFinal, false) => self.put_http(m, 200, now),
            (Outcome::ConnectSuccess | Outcome::ConnectSuccessFinal, true) => {
                m.local.fetch_add(SUCCESS, Ordering::Relaxed);
                m.consecutive_local_origin_failure
                    .store(0, Ordering::Relaxed);
                false
            }
            (Outcome::Timeout, false) => self.put_http(m, 504, now),
            (Outcome::ConnectFailed | Outcome::Reset, false) => self.put_http(m, 503, now),
            (Outcome::Timeout | Outcome::ConnectFailed | Outcome::Reset, true) => {
                m.local.fetch_add(FAILURE, Ordering::Relaxed);
                let n = m
                    .consecutive_local_origin_failure
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                n == self.cfg.consecutive_local_origin_failure
                    && self.on_consecutive(m, EjectionType::ConsecutiveLocalOriginFailure, now)
            }
        }
    }

    /// Envoy's `putHttpResponseCode`; returns whether the host was ejected.
    fn put_http(&self, m: &Arc<HostMonitor>, code: u16, now: Instant) -> bool {
        let mut ejected = false;
        if (500..600).contains(&code) {
            m.external.fetch_add(FAILURE, Ordering::Relaxed);
            if matches!(code, 502..=504) {
                let n = m
                    .consecutive_gateway_failure
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                if n == self.cfg.consecutive_gateway_failure {
                    ejected |= self.on_consecutive(m, EjectionType::ConsecutiveGatewayFailure, now);
                }
            } else {
                m.consecutive_gateway_failure.store(0, Ordering::Relaxed);
            }
            let n = m.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
            if n == self.cfg.consecutive_5xx {
                ejected |= self.on_consecutive(m, EjectionType::Consecutive5xx, now);
            }
        } else {
            m.external.fetch_add(SUCCESS, Ordering::Relaxed);
            m.consecutive_5xx.store(0, Ordering::Relaxed);
            m.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        }
        ejected
    }

    /// Envoy's `onConsecutiveErrorWorker`; returns whether the host was ejected.
    fn on_consecutive(&self, m: &Arc<HostMonitor>, t: EjectionType, now: Instant) -> bool {
        let _g = lock(&self.decide);
        if m.ejected.load(Ordering::Acquire) {
            return false;
        }
        self.stats.detected[t.index()].inc();
        let n_hosts = self.hosts.load().order.len();
        let ejected = self.eject(m, t, n_hosts, now);
        match t {
            EjectionType::Consecutive5xx => {
                self.stats.ejections_consecutive_5xx.inc();
                m.consecutive_5xx.store(0, Ordering::Relaxed);
            }
            EjectionType::ConsecutiveGatewayFailure => {
                m.consecutive_gateway_failure.store(0, Ordering::Relaxed)
            }
            EjectionType::ConsecutiveLocalOriginFailure => m
                .consecutive_local_origin_failure
                .store(0, Ordering::Relaxed),
            _ => {}
        }
        ejected
    }

    /// Envoy's `ejectHost`; the caller holds `decide`. Returns whether the host was ejected.
    fn eject(&self, m: &Arc<HostMonitor>, t: EjectionType, n_hosts: usize, now: Instant) -> bool {
        let active = self.ejections_active.load(Ordering::Relaxed);
        let ejected_percent = 100.0 * (active + 1) as f64 / n_hosts.max(1) as f64;
        let mut should = ejected_percent <= self.cfg.max_ejection_percent.min(100) as f64;
        if self.cfg.always_eject_one_host {
            should |= active == 0;
        }
        if !should {
            self.stats.ejections_overflow.inc();
            return false;
        }
        if matches!(t, EjectionType::Consecutive5xx | EjectionType::SuccessRate) {
            self.stats.ejections_total.inc();
        }
        if !roll(self.cfg.enforcing(t)) {
            return false;
        }
        self.ejections_active.fetch_add(1, Ordering::Relaxed);
        self.stats.ejections_active.inc();
        self.stats.ejections_enforced_total.inc();
        self.stats.enforced[t.index()].inc();
        let mut st = lock(&m.state);
        m.ejected.store(true, Ordering::Release);
        st.num_ejections += 1;
        st.last_ejection = Some(now);
        let jitter_ms = self.cfg.max_ejection_time_jitter.as_millis() as u64;
        st.jitter = Duration::from_millis(if jitter_ms == 0 {
            0
        } else {
            rand::random::<u64>() % (jitter_ms + 1)
        });
        if self.cfg.base_ejection_time * st.backoff
            < self.cfg.max_ejection_time + self.cfg.base_ejection_time
        {
            st.backoff += 1;
        }
        true
    }

    /// The interval timer (Envoy's `onIntervalTimer`): returns hosts whose ejection time
    /// has passed, rolls the success-rate buckets, runs the success-rate and
    /// failure-percentage detectors, and decays the ejection backoff of healthy hosts.
    /// Returns whether any host was ejected or returned to service.
    pub fn tick(&self, now: Instant) -> bool {
        let _g = lock(&self.decide);
        let table = self.hosts.load();
        let mut changed = false;
        for (_, m) in &table.order {
            let mut st = lock(&m.state);
            for r in &m.success_rate {
                r.store((-1.0f64).to_bits(), Ordering::Relaxed);
            }
            if m.ejected.load(Ordering::Acquire) {
                let eject_for = (self.cfg.base_ejection_time * st.backoff)
                    .min(self.cfg.max_ejection_time)
                    + st.jitter;
                let since = st
                    .last_ejection
                    .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
                if eject_for <= since {
                    m.ejected.store(false, Ordering::Release);
                    self.ejections_active.fetch_sub(1, Ordering::Relaxed);
                    self.stats.ejections_active.dec();
                    m.consecutive_5xx.store(0, Ordering::Relaxed);
                    m.consecutive_gateway_failure.store(0, Ordering::Relaxed);
                    m.consecutive_local_origin_failure
                        .store(0, Ordering::Relaxed);
                    st.last_unejection = Some(now);
                    changed = true;
                }
            }
            st.external_prev = unpack(m.external.swap(0, Ordering::Relaxed));
            st.local_prev = unpack(m.local.swap(0, Ordering::Relaxed));
        }
        changed |= self.success_rate_ejections(&table, false, now);
        changed |= self.success_rate_ejections(&table, true, now);
        for (_, m) in &table.order {
            if m.ejected.load(Ordering::Acquire) {
                continue;
            }
            let mut st = lock(&m.state);
            if st
                .last_unejection
                .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.interval)
                && st.backoff != 0
            {
                st.backoff -= 1;
            }
        }
        changed
    }

    /// Last interval's success-rate average and ejection threshold (`-1` when the detector
    /// did not run), for `/clusters`.
    pub fn success_rate_numbers(&self, local: bool) -> (f64, f64) {
        lock(&self.sr_nums)[local as usize]
    }

    /// Envoy's `processSuccessRateEjections`; returns whether a host was ejected.
    fn success_rate_ejections(&self, table: &HostTable<K>, local: bool, now: Instant) -> bool {
        let c = &self.cfg;
        let n = table.order.len() as u64;
        lock(&self.sr_nums)[local as usize] = (-1.0, -1.0);
        if n < c.success_rate_minimum_hosts as u64 && n < c.failure_percentage_minimum_hosts as u64
        {
            return false;
        }
        let mut ejected = false;
        let mut sr_hosts = Vec::new();
        let mut fp_hosts = Vec::new();
        let mut sum = 0.0;
        for (_, m) in &table.order {
            if m.ejected.load(Ordering::Acquire) {
                continue;
            }
            let (success, total) = {
                let st = lock(&m.state);
                if local {
                    st.local_prev
                } else {
                    st.external_prev
                }
            };
            if total == 0 {
                continue;
            }
            let rate = success as f64 * 100.0 / total as f64;
            if total
                >= (c.success_rate_request_volume as u64)
                    .min(c.failure_percentage_request_volume as u64)
            {
                m.success_rate[local as usize].store(rate.to_bits(), Ordering::Relaxed);
            }
            if total >= c.success_rate_request_volume as u64 {
                sr_hosts.push((m.clone(), rate));
                sum += rate;
            }
            if total >= c.failure_percentage_request_volume as u64 {
                fp_hosts.push((m.clone(), rate));
            }
        }
        if !sr_hosts.is_empty() && sr_hosts.len() as u64 >= c.success_rate_minimum_hosts as u64 {
            let (mean, threshold) =
                success_rate_threshold(sum, &sr_hosts, c.success_rate_stdev_factor as f64 / 1000.0);
            lock(&self.sr_nums)[local as usize] = (mean, threshold);
            let t = if local {
                EjectionType::SuccessRateLocalOrigin
            } else {
                EjectionType::SuccessRate
            };
            for (m, rate) in &sr_hosts {
                if *rate < threshold {
                    self.stats.ejections_success_rate.inc();
                    self.stats.detected[t.index()].inc();
                    ejected |= self.eject(m, t, table.order.len(), now);
                }
            }
        }
        if !fp_hosts.is_empty()
            && fp_hosts.len() as u64 >= c.failure_percentage_minimum_hosts as u64
        {
            let t = if local {
                EjectionType::FailurePercentageLocalOrigin
            } else {
                EjectionType::FailurePercentage
            };
            for (m, rate) in &fp_hosts {
                if 100.0 - rate >= c.failure_percentage_threshold as f64 {
                    self.stats.detected[t.index()].inc();
                    ejected |= self.eject(m, t, table.order.len(), now);
                }
            }
        }
        ejected
    }
}

/// The outcome the router reports for an upstream response (Envoy's `onUpstreamHeaders`):
/// the HTTP status, or for a gRPC request whose response headers carry `grpc-status`
/// (trailers-only), [`grpc_to_http_status`] of it.
pub fn response_outcome(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    grpc: bool,
) -> Outcome {
    let grpc_status = grpc
        .then(|| headers.get("grpc-status"))
        .flatten()
        .and_then(|v| v.to_str().ok()?.trim().parse::<u32>().ok());
    Outcome::Status(grpc_status.map_or(status.as_u16(), grpc_to_http_status))
}

/// Envoy's `Grpc::Utility::grpcToHttpStatus`: for a gRPC response with `grpc-status`, the
/// router reports this HTTP status to outlier detection instead of the `:status` (200).
pub fn grpc_to_http_status(grpc_status: u32) -> u16 {
    match grpc_status {
        0 => 200,
        1 => 499,
        2 => 500,
        3 => 400,
        4 => 504,
        5 => 404,
        6 => 409,
        7 => 403,
        8 => 429,
        9 => 400,
        10 => 409,
        11 => 400,
        12 => 501,
        13 => 500,
        14 => 503,
        15 => 500,
        16 => 401,
        _ => 500,
    }
}

/// Mean and ejection threshold (`mean - factor × stdev`) of the hosts' success rates.
pub fn success_rate_threshold<T>(sum: f64, hosts: &[(T, f64)], factor: f64) -> (f64, f64) {
    let n = hosts.len() as f64;
    let mean = sum / n;
    let variance = hosts.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    (mean, mean - factor * variance.sqrt())
}

// === impl HostMonitor ===

impl HostMonitor {
    /// Whether the host is ejected.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Times the host has been ejected (`/clusters`).
    pub fn num_ejections(&self) -> u32 {
        lock(&self.state).num_ejections
    }

    /// Last interval's success rate (`-1` when not computed), as `/clusters` shows it.
    pub fn success_rate(&self, local: bool) -> f64 {
        f64::from_bits(self.success_rate[local as usize].load(Ordering::Relaxed))
    }
}

impl Default for HostMonitor {
    fn default() -> Self {
        let minus_one = || AtomicU64::new((-1.0f64).to_bits());
        HostMonitor {
            ejected: AtomicBool::new(false),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway_failure: AtomicU32::new(0),
            consecutive_local_origin_failure: AtomicU32::new(0),
            external: AtomicU64::new(0),
            local: AtomicU64::new(0),
            success_rate: [minus_one(), minus_one()],
            state: Mutex::new(EjectState::default()),
        }
    }
}

// === impl OutlierStats ===

impl OutlierStats {
    fn new(stats: &Stats, p: &str) -> Self {
        let c = |s: &str| stats.counter(&format!("{p}{s}"));
        let by_type = |kind: &str| {
            EjectionType::ALL.map(|t| c(&format!("ejections_{kind}_{}", t.stat_suffix())))
        };
        OutlierStats {
            ejections_active: stats.gauge(&format!("{p}ejections_active")),
            ejections_overflow: c("ejections_overflow"),
            ejections_enforced_total: c("ejections_enforced_total"),
            ejections_total: c("ejections_total"),
            ejections_consecutive_5xx: c("ejections_consecutive_5xx"),
            ejections_success_rate: c("ejections_success_rate"),
            enforced: by_type("enforced"),
            detected: by_type("detected"),
            _detected_degradation: c("ejections_detected_degradation"),
        }
    }
}

/// Envoy's `featureEnabled(key, pct)`: true with probability `pct`%.
fn roll(pct: u32) -> bool {
    match pct {
        0 => false,
        100.. => true,
        p => rand::random::<u64>() % 100 < p as u64,
    }
}

fn unpack(v: u64) -> (u64, u64) {
    (v >> 32, v & 0xffff_ffff)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked (plain counters).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
