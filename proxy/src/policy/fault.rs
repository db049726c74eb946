//! Fault injection (`envoy.filters.http.fault`), as Envoy's `FaultFilter`.
//!
//! Per request, in Envoy's order: the fault applies only if the route's cluster is
//! `upstream_cluster` (when set), `x-envoy-downstream-service-node` is one of
//! `downstream_nodes` (when set) and every `headers` matcher matches. Then a delay is
//! injected with the delay percentage; then an abort with the abort percentage (Envoy checks
//! the abort after the delay has elapsed; the decision is the same). Each request holds at
//! most one "active fault"; when `active_faults` has reached `max_active_faults` no fault is
//! injected and `faults_overflow` counts it.
//!
//! Header-controlled faults (`header_delay`, `header_abort`): the delay comes from
//! `x-envoy-fault-delay-request` (ms), the abort from `x-envoy-fault-abort-request` (HTTP
//! status 200–599) or `x-envoy-fault-abort-grpc-request` (gRPC status, sent with HTTP 200;
//! the HTTP header wins); the percentages from `x-envoy-fault-delay-request-percentage` and
//! `x-envoy-fault-abort-request-percentage`, capped by the configured numerator with its
//! denominator. Without a valid header there is no fault.
//!
//! An abort is a local reply with body `fault filter abort`, details `fault_filter_abort`
//! and response flag `FI`; a delay sets `DI`.
//!
//! Stats under `<prefix>fault.` where `<prefix>` is the HTTP connection manager's
//! (`http.<stat_prefix>.`): `delays_injected`, `aborts_injected`, `faults_overflow`,
//! `active_faults` (gauge), `response_rl_injected`.
use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault as XdsHttpFault;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use http::HeaderMap;
use rand::Rng;

use super::headers::HeaderMatch;
use super::Fraction;
use crate::config::{duration, ConfigError};
use crate::stats::{Counter, Gauge, GaugeGuard, Stats};

/// `x-envoy-fault-delay-request`.
pub const DELAY_HEADER: &str = "x-envoy-fault-delay-request";
/// `x-envoy-fault-delay-request-percentage`.
pub const DELAY_PERCENT_HEADER: &str = "x-envoy-fault-delay-request-percentage";
/// `x-envoy-fault-abort-request`.
pub const ABORT_HEADER: &str = "x-envoy-fault-abort-request";
/// `x-envoy-fault-abort-grpc-request`.
pub const ABORT_GRPC_HEADER: &str = "x-envoy-fault-abort-grpc-request";
/// `x-envoy-fault-abort-request-percentage`.
pub const ABORT_PERCENT_HEADER: &str = "x-envoy-fault-abort-request-percentage";

/// `HTTPFault`, compiled.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// `delay`.
    pub delay: Option<DelaySpec>,
    /// `abort`.
    pub abort: Option<AbortSpec>,
    /// `upstream_cluster` (empty: any).
    pub upstream_cluster: String,
    /// `headers`: all must match.
    pub headers: Vec<HeaderMatch>,
    /// `downstream_nodes` (empty: any).
    pub downstream_nodes: Vec<String>,
    /// `max_active_faults` (`None`: unlimited).
    pub max_active_faults: Option<u32>,
}

/// `delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelaySpec {
    /// `fixed_delay`, or `None` for `header_delay`.
    pub fixed: Option<Duration>,
    /// `percentage` (absent: 0%).
    pub percentage: Fraction,
}

/// `abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortSpec {
    /// What to reply.
    pub kind: AbortKind,
    /// `percentage` (absent: 0%).
    pub percentage: Fraction,
}

/// `abort.error_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortKind {
    /// `http_status`.
    Http(u16),
    /// `grpc_status` (sent with HTTP 200).
    Grpc(u32),
    /// `header_abort`.
    Header,
}

/// The fault filter of one HTTP connection manager (or one route override).
#[derive(Debug)]
pub struct FaultFilter {
    cfg: FaultConfig,
    stats: FaultStats,
}

#[derive(Debug, Clone)]
struct FaultStats {
    delays_injected: Counter,
    aborts_injected: Counter,
    faults_overflow: Counter,
    active_faults: Gauge,
}

/// What to do with one request.
#[derive(Debug, Default)]
pub struct FaultDecision {
    /// Wait this long before continuing (response flag `DI`).
    pub delay: Option<Duration>,
    /// Then reply locally (response flag `FI`).
    pub abort: Option<Abort>,
    /// Holds the `active_faults` slot until the request ends; keep it with the request.
    pub active: Option<GaugeGuard>,
}

/// A local reply: the HTTP status and, for gRPC aborts, the `grpc-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    /// HTTP status (200 for gRPC aborts).
    pub status: u16,
    /// `grpc-status` for gRPC aborts.
    pub grpc_status: Option<u32>,
}

// === impl FaultConfig ===

impl FaultConfig {
    /// Compiles `HTTPFault`.
    pub fn from_proto(c: &XdsHttpFault, path: &str) -> Result<Self, ConfigError> {
        let delay = match &c.delay {
            None => None,
            Some(d) => {
                let fixed = match &d.fault_delay_secifier {
                    Some(FaultDelaySecifier::FixedDelay(v)) => {
                        Some(duration(v, &format!("{path}.delay.fixed_delay"))?)
                    }
                    Some(FaultDelaySecifier::HeaderDelay(_)) => None,
                    None => {
                        return Err(ConfigError::new(
                            format!("{path}.delay"),
                            "fixed_delay or header_delay is required",
                        ))
                    }
                };
                Some(DelaySpec {
                    fixed,
                    percentage: percentage(d.percentage.as_ref(), &format!("{path}.delay"))?,
                })
            }
        };
        let abort = match &c.abort {
            None => None,
            Some(a) => {
                let kind = match &a.error_type {
                    Some(ErrorType::HttpStatus(s)) => {
                        if !(200..600).contains(s) {
                            return Err(ConfigError::new(
                                format!("{path}.abort.http_status"),
                                "must be in [200, 600)",
                            ));
                        }
                        AbortKind::Http(*s as u16)
                    }
                    Some(ErrorType::GrpcStatus(s)) => AbortKind::Grpc(*s),
                    Some(ErrorType::HeaderAbort(_)) => AbortKind::Header,
                    None => {
                        return Err(ConfigError::new(
                            format!("{path}.abort"),
                            "http_status, grpc_status or header_abort is required",
                        ))
                    }
                };
                Some(AbortSpec {
                    kind,
                    percentage: percentage(a.percentage.as_ref(), &format!("{path}.abort"))?,
                })
            }
        };
        if c.response_rate_limit.is_some() {
            return Err(ConfigError::new(
                format!("{path}.response_rate_limit"),
                "not supported",
            ));
        }
        let headers = c
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderMatch::from_proto(h, &format!("{path}.headers[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(FaultConfig {
            delay,
            abort,
            upstream_cluster: c.upstream_cluster.clone(),
            headers,
            downstream_nodes: c.downstream_nodes.clone(),
            max_active_faults: c.max_active_faults.map(|v| v.value),
        })
    }
}

// === impl FaultFilter ===

impl FaultFilter {
    /// Builds the filter; stats under `<prefix>fault.` (`prefix` is `http.<stat_prefix>.`).
    pub fn new(cfg: FaultConfig, stats: &Stats, prefix: &str) -> Self {
        let p = format!("{prefix}fault.");
        let stats_h = FaultStats {
            delays_injected: stats.counter(&format!("{p}delays_injected")),
            aborts_injected: stats.counter(&format!("{p}aborts_injected")),
            faults_overflow: stats.counter(&format!("{p}faults_overflow")),
            active_faults: stats.gauge(&format!("{p}active_faults")),
        };
        stats.counter(&format!("{p}response_rl_injected"));
        FaultFilter {
            cfg,
            stats: stats_h,
        }
    }

    /// The config.
    pub fn config(&self) -> &FaultConfig {
        &self.cfg
    }

    /// Decides the faults for a request routed to `cluster`.
    pub fn decide(&self, headers: &HeaderMap, cluster: &str, rng: &mut impl Rng) -> FaultDecision {
        let mut out = FaultDecision::default();
        if !self.applies(headers, cluster) {
            return out;
        }
        if let Some(d) = self.delay(headers, rng) {
            if self.try_activate(&mut out) {
                self.stats.delays_injected.inc();
                out.delay = Some(d);
            }
        }
        if let Some(a) = self.abort(headers, rng) {
            if self.try_activate(&mut out) {
                self.stats.aborts_injected.inc();
                out.abort = Some(a);
            }
        }
        out
    }

    fn applies(&self, headers: &HeaderMap, cluster: &str) -> bool {
        if !self.cfg.upstream_cluster.is_empty() && self.cfg.upstream_cluster != cluster {
            return false;
        }
        if !self.cfg.downstream_nodes.is_empty() {
            let node = headers
                .get("x-envoy-downstream-service-node")
                .and_then(|v| v.to_str().ok());
            if !node.is_some_and(|n| self.cfg.downstream_nodes.iter().any(|d| d == n)) {
                return false;
            }
        }
        self.cfg.headers.iter().all(|m| m.matches(headers))
    }

    /// Envoy's `tryIncActiveFaults`: one slot per request, whatever it injects.
    fn try_activate(&self, out: &mut FaultDecision) -> bool {
        if out.active.is_some() {
            return true;
        }
        if let Some(max) = self.cfg.max_active_faults {
            if self.stats.active_faults.get() >= max as i64 {
                self.stats.faults_overflow.inc();
                return false;
            }
        }
        out.active = Some(GaugeGuard::new(&self.stats.active_faults));
        true
    }

    fn delay(&self, headers: &HeaderMap, rng: &mut impl Rng) -> Option<Duration> {
        let d = self.cfg.delay.as_ref()?;
        let pct = match d.fixed {
            Some(_) => d.percentage,
            None => header_percentage(headers, DELAY_PERCENT_HEADER, d.percentage),
        };
        if !pct.roll(rng) {
            return None;
        }
        let dur = match d.fixed {
            Some(f) => f,
            None => Duration::from_millis(header(headers, DELAY_HEADER)?.parse().ok()?),
        };
        (!dur.is_zero()).then_some(dur)
    }

    fn abort(&self, headers: &HeaderMap, rng: &mut impl Rng) -> Option<Abort> {
        let a = self.cfg.abort.as_ref()?;
        let pct = match a.kind {
            AbortKind::Header => header_percentage(headers, ABORT_PERCENT_HEADER, a.percentage),
            _ => a.percentage,
        };
        if !pct.roll(rng) {
            return None;
        }
        match a.kind {
            AbortKind::Http(status) => Some(Abort {
                status,
                grpc_status: None,
            }),
            AbortKind::Grpc(g) => Some(Abort {
                status: 200,
                grpc_status: Some(g),
            }),
            AbortKind::Header => {
                let http = header(headers, ABORT_HEADER)
                    .and_then(|v| v.parse::<u16>().ok())
                    .filter(|s| (200..600).contains(s));
                if let Some(status) = http {
                    return Some(Abort {
                        status,
                        grpc_status: None,
                    });
                }
                let g = header(headers, ABORT_GRPC_HEADER)?.parse::<u32>().ok()?;
                Some(Abort {
                    status: 200,
                    grpc_status: Some(g),
                })
            }
        }
    }
}

/// `percentage` (absent: 0%).
fn percentage(p: Option<&FractionalPercent>, path: &str) -> Result<Fraction, ConfigError> {
    match p {
        None => Ok(Fraction::ZERO),
        Some(p) => Fraction::from_proto(p, &format!("{path}.percentage")),
    }
}

/// Envoy's `HeaderPercentageProvider`: the header's numerator, capped by the configured one,
/// over the configured denominator; the configured percentage if the header is absent or bad.
fn header_percentage(headers: &HeaderMap, name: &str, configured: Fraction) -> Fraction {
    match header(headers, name).and_then(|v| v.parse::<u32>().ok()) {
        Some(n) => Fraction {
            numerator: n.min(configured.numerator),
            denominator: configured.denominator,
        },
        None => configured,
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests;
