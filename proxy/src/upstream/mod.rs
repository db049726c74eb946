//! Upstream clusters: endpoints, load balancing, connection pools and DNS refresh.
//!
//! A `Cluster` is built once per config version and shared by `Arc`; its host set (an
//! immutable [`HostSet`] snapshot with every priority, locality and health state and the
//! balancer tables derived from them) is swapped atomically when EDS, DNS or outlier
//! detection changes it, so requests never wait on a lock.
pub mod body;
pub mod dns;
pub mod lb;
pub mod pool;
pub mod req_body;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::stats::{Counter, Gauge, Stats};

pub use lb::{HostSet, LbConfig, LbPolicy, Membership, PickCtx};

/// How a cluster finds its hosts (Envoy's `type`).
#[derive(Debug, Clone)]
pub enum Discovery {
    /// Fixed addresses.
    Static,
    /// Every address of every name, refreshed.
    StrictDns(dns::DnsTargets),
    /// The first address of the one name, refreshed.
    LogicalDns(dns::DnsTargets),
    /// Endpoints from EDS, under this service name.
    Eds {
        /// `eds_cluster_config.service_name` (or the cluster name).
        service_name: Arc<str>,
    },
    /// The downstream connection's original destination (or a header).
    OriginalDst {
        /// Header naming the destination, when `use_http_header` is set.
        header: Option<http::HeaderName>,
    },
}

/// Which HTTP protocol to speak upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (Envoy's default).
    Http1,
    /// HTTP/2 with prior knowledge (cleartext).
    Http2,
    /// Whatever the downstream request used.
    UseDownstream,
}

/// Where an upstream host is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostAddr {
    /// TCP.
    Tcp(SocketAddr),
    /// Unix domain socket.
    Unix(PathBuf),
}

impl std::fmt::Display for HostAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostAddr::Tcp(a) => write!(f, "{a}"),
            HostAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// One upstream endpoint with its connection pool.
#[derive(Debug)]
pub struct Host {
    /// Address.
    pub addr: HostAddr,
    /// `hostname`: the endpoint's `hostname` (may be empty), or the DNS name of a DNS
    /// cluster's host; auto host rewrite and `use_hostname_for_hashing` use it.
    pub hostname: Arc<str>,
    /// Load-balancing weight (≥ 1); EDS updates change it in place, as Envoy.
    weight: AtomicU32,
    /// Requests in flight (least-request LB, `/clusters`).
    pub active_rq: AtomicU64,
    /// Per-host counters shown by `/clusters`.
    pub stats: HostStats,
    /// Connection pool.
    pub pool: pool::HostPool,
}

/// Per-host counters, as Envoy's `/clusters` lists them.
#[derive(Debug, Default)]
pub struct HostStats {
    pub cx_total: AtomicU64,
    pub cx_active: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub rq_total: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_timeout: AtomicU64,
}

impl HostStats {
    /// `(name, value)` pairs in Envoy's `/clusters` order (rq_active is the host's gauge).
    pub fn render(&self, rq_active: u64) -> [(&'static str, u64); 8] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("cx_active", g(&self.cx_active)),
            ("cx_connect_fail", g(&self.cx_connect_fail)),
            ("cx_total", g(&self.cx_total)),
            ("rq_active", rq_active),
            ("rq_error", g(&self.rq_error)),
            ("rq_success", g(&self.rq_success)),
            ("rq_timeout", g(&self.rq_timeout)),
            ("rq_total", g(&self.rq_total)),
        ]
    }
}

/// Counts an open connection to a host until dropped.
#[derive(Debug)]
pub struct HostCx(Arc<Host>);

impl HostCx {
    /// Counts a new connection to `host`.
    pub fn new(host: &Arc<Host>) -> Self {
        host.stats.cx_total.fetch_add(1, Ordering::Relaxed);
        host.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        HostCx(host.clone())
    }
}

impl Drop for HostCx {
    fn drop(&mut self) {
        self.0.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-cluster stats handles (Envoy's names under `cluster.<name>.`).
#[derive(Debug, Clone)]
pub struct ClusterStats {
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_http1_total: Counter,
    pub upstream_cx_http2_total: Counter,
    pub upstream_cx_destroy: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_rx_reset: Counter,
    pub upstream_rq_tx_reset: Counter,
    pub upstream_rq_pending_total: Counter,
    pub upstream_rq_pending_failure_eject: Counter,
    pub upstream_rq_pending_active: Gauge,
    pub upstream_cx_max_requests: Counter,
    pub retry_or_shadow_abandoned: Counter,
    pub membership_total: Gauge,
    pub membership_healthy: Gauge,
    pub update_success: Counter,
    pub update_attempt: Counter,
    /// `upstream_rq_<class>`, `upstream_rq_<code>` and `upstream_rq_completed`.
    pub codes: CodeStats,
}

/// A compiled cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Name.
    pub name: Arc<str>,
    /// Stat name (`alt_stat_name` or name).
    pub stat_name: Arc<str>,
    /// Discovery type.
    pub discovery: Discovery,
    /// `connect_timeout` (Envoy's default 5 s).
    pub connect_timeout: Duration,
    /// Upstream HTTP protocol.
    pub protocol: UpstreamProtocol,
    /// How HTTP/1 header names are written upstream.
    pub header_case: crate::config::HeaderCase,
    /// Load balancing, health and outlier detection.
    pub lb: Arc<lb::Balancer>,
    /// Current hosts (every priority and health state) with the balancer's tables.
    pub hosts: Arc<ArcSwap<HostSet>>,
    /// `upstream_bind_config.source_address`.
    pub bind: Option<SocketAddr>,
    /// ORIGINAL_DST hosts, created on demand.
    pub orig_dst_hosts: DashMap<SocketAddr, Arc<Host>>,
    /// Stats.
    pub stats: ClusterStats,
    /// Circuit breakers (`circuit_breakers`), per routing priority.
    pub breakers: crate::policy::breaker::CircuitBreakers,
    /// Retry counters (`upstream_rq_retry*`).
    pub retry_stats: crate::policy::retry::RetryStats,
    /// `retry.upstream_rq_<code>` counters: responses that were retried.
    pub retry_codes: CodeStats,
    /// Idle upstream connections are closed after this (`common_http_protocol_options.idle_timeout`,
    /// Envoy's default 1 h).
    pub idle_timeout: Option<Duration>,
    /// `max_requests_per_connection`: an HTTP/1 connection is closed after this many requests.
    pub max_requests_per_connection: Option<u32>,
}

/// Response-code counters under a prefix (`upstream_rq_2xx`, `upstream_rq_503`,
/// `upstream_rq_completed`), as Envoy's `CodeStats::chargeBasicResponseStat`. Like Envoy's,
/// they are created on first use, so an idle cluster lists none of them.
#[derive(Debug, Clone)]
pub struct CodeStats {
    /// Per status: its class counter (none outside 1xx–5xx) and its code counter.
    counters: Arc<DashMap<u16, (Option<Counter>, Counter)>>,
    completed: Arc<std::sync::OnceLock<Counter>>,
    prefix: Arc<str>,
    stats: Stats,
}

// === impl CodeStats ===

impl CodeStats {
    /// Counters named `<prefix>upstream_rq_*`.
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        CodeStats {
            counters: Arc::new(DashMap::new()),
            completed: Arc::default(),
            prefix: Arc::from(prefix),
            stats: stats.clone(),
        }
    }

    /// Counts one response with `status`: its class, its code and completion.
    pub fn charge(&self, status: u16) {
        let bump = |(class, code): &(Option<Counter>, Counter)| {
            if let Some(c) = class {
                c.inc();
            }
            code.inc();
        };
        if let Some(c) = self.counters.get(&status) {
            bump(&c);
        } else {
            let class = match status / 100 {
                1 => Some("1xx"),
                2 => Some("2xx"),
                3 => Some("3xx"),
                4 => Some("4xx"),
                5 => Some("5xx"),
                _ => None,
            };
            let pair = (
                class.map(|k| {
                    self.stats
                        .counter(&format!("{}upstream_rq_{k}", self.prefix))
                }),
                self.stats
                    .counter(&format!("{}upstream_rq_{status}", self.prefix)),
            );
            bump(&pair);
            self.counters.insert(status, pair);
        }
        self.completed
            .get_or_init(|| {
                self.stats
                    .counter(&format!("{}upstream_rq_completed", self.prefix))
            })
            .inc();
    }
}

// === impl Host ===

impl Host {
    /// A host at `addr`.
    pub fn new(addr: HostAddr, hostname: Arc<str>, weight: u32) -> Self {
        Host {
            addr,
            hostname,
            weight: AtomicU32::new(weight.max(1)),
            active_rq: AtomicU64::new(0),
            stats: HostStats::default(),
            pool: pool::HostPool::default(),
        }
    }

    /// Load-balancing weight (≥ 1).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Sets the weight (EDS updates keep the host and change its weight, as Envoy).
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }
}

// === impl ClusterStats ===

impl ClusterStats {
    /// Registers the cluster's stats under `cluster.<name>.`.
    pub fn new(stats: &Stats, name: &str) -> Self {
        let p = format!("cluster.{name}.");
        let c = |s: &str| stats.counter(&format!("{p}{s}"));
        let g = |s: &str| stats.gauge(&format!("{p}{s}"));
        ClusterStats {
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_http1_total: c("upstream_cx_http1_total"),
            upstream_cx_http2_total: c("upstream_cx_http2_total"),
            upstream_cx_destroy: c("upstream_cx_destroy"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_rx_reset: c("upstream_rq_rx_reset"),
            upstream_rq_tx_reset: c("upstream_rq_tx_reset"),
            upstream_rq_pending_total: c("upstream_rq_pending_total"),
            upstream_rq_pending_failure_eject: c("upstream_rq_pending_failure_eject"),
            upstream_rq_pending_active: g("upstream_rq_pending_active"),
            upstream_cx_max_requests: c("upstream_cx_max_requests"),
            retry_or_shadow_abandoned: c("retry_or_shadow_abandoned"),
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
            update_success: c("update_success"),
            update_attempt: c("update_attempt"),
            codes: CodeStats::new(stats, &p),
        }
    }

    /// Counts a response status from (or on behalf of) the upstream, as Envoy's
    /// `chargeUpstreamCode`: the class counter, the exact-code counter and completion.
    pub fn charge_code(&self, status: u16) {
        self.codes.charge(status);
    }
}

// === impl Cluster ===

impl Cluster {
    /// Replaces the hosts with `hosts`, all healthy in priority 0 (DNS resolution).
    pub fn set_hosts(&self, hosts: Vec<Arc<Host>>) {
        self.lb.set_membership(Membership::flat(hosts));
    }

    /// Replaces the membership (static `load_assignment`, EDS): priorities, localities,
    /// health and weights. Hosts whose address stays keep their pools, stats and outlier
    /// state; the next pick sees the new snapshot.
    pub fn set_membership(&self, m: Membership) {
        self.lb.set_membership(m);
    }

    /// The host for an ORIGINAL_DST request to `dst`, created on first use.
    pub fn orig_dst_host(&self, dst: SocketAddr) -> Arc<Host> {
        if let Some(h) = self.orig_dst_hosts.get(&dst) {
            return h.clone();
        }
        self.orig_dst_hosts
            .entry(dst)
            .or_insert_with(|| {
                Arc::new(Host::new(
                    HostAddr::Tcp(dst),
                    Arc::from(dst.to_string().as_str()),
                    1,
                ))
            })
            .clone()
    }

    /// Picks a host with the cluster's load balancer; `None` when no host is available
    /// (the caller counts `upstream_cx_none_healthy`). Lock-free: one snapshot load.
    pub fn pick(&self, ctx: &PickCtx<'_>) -> Option<Arc<Host>> {
        self.lb.pick(ctx)
    }

    /// Whether the balancer uses a request hash (RING_HASH, MAGLEV): only then does the
    /// router evaluate the route's `hash_policy`, as Envoy computes the hash on demand.
    pub fn wants_hash(&self) -> bool {
        self.lb.cfg.policy.is_hash()
    }

    /// Reports one result for `host` to outlier detection (no-op without it).
    pub fn record_outcome(&self, host: &Arc<Host>, outcome: crate::policy::outlier::Outcome) {
        self.lb.record(host, outcome);
    }

    /// Number of ORIGINAL_DST hosts currently cached (bounded by cleanup).
    pub fn orig_dst_len(&self) -> usize {
        self.orig_dst_hosts.len()
    }

    /// Drops ORIGINAL_DST hosts with no request in flight and no pooled connection in use;
    /// Envoy does the same every `cleanup_interval` (5 s).
    pub fn cleanup_orig_dst(&self) {
        self.orig_dst_hosts
            .retain(|_, h| h.active_rq.load(Ordering::Relaxed) > 0 || Arc::strong_count(h) > 1);
    }
}
