//! Route `retry_policy` and request timeouts, as Envoy's `RetryPolicyImpl`,
//! `RetryStateImpl` and `FilterUtility::finalTimeout`.
//!
//! Flow for the router: compile [`RetryPolicy`] with the route; per request build a
//! [`RetryState`] with [`RetryState::new`] (merges `x-envoy-retry-on`,
//! `x-envoy-retry-grpc-on`, `x-envoy-max-retries`, `x-envoy-retriable-status-codes`,
//! `x-envoy-retriable-header-names`; `None` means no retries, as Envoy creates no retry
//! state when `retry_on` ends up empty); after each failed try ask
//! [`RetryState::should_retry`], take a retry slot from the circuit breaker
//! (`try_acquire_retry`, overflow → `upstream_rq_retry_overflow`, no retry), then wait
//! [`RetryState::backoff`]. [`Timeouts::compute`] gives the global and per-try timeouts from
//! the route and the `x-envoy-upstream-rq-timeout-ms`,
//! `x-envoy-upstream-rq-per-try-timeout-ms` and `grpc-timeout` headers; the caller removes
//! the two `x-envoy-*` headers before forwarding, as Envoy does.
//!
//! Envoy's bookkeeping around a decision (`RetryStateImpl::shouldRetry`), which the caller
//! mirrors with [`RetryStats`]: on [`RetryDecision::LimitExceeded`] count
//! `upstream_rq_retry_limit_exceeded`; on [`RetryDecision::Retry`] take the breaker retry
//! slot (overflow: `upstream_rq_retry_overflow`, no retry), then count `upstream_rq_retry`
//! and `upstream_rq_retry_backoff_exponential`. The slot is held through the back-off *and*
//! the retried try, until the next decision or the end of the request. If a retry was
//! in flight and the next outcome is [`RetryDecision::NotRetriable`], count
//! `upstream_rq_retry_success`.
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::RetryPolicy as XdsRetryPolicy;
use http::HeaderMap;
use rand::Rng;

use super::headers::HeaderMatch;
use crate::config::{duration, ConfigError};

const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_HOSTS_TYPE: &str =
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

/// Envoy's default retry back-off base interval.
pub const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// The set of `retry_on` / `x-envoy-retry-grpc-on` conditions (a bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn(u32);

/// A compiled route `retry_policy`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// `retry_on` (HTTP and gRPC conditions; unknown names are ignored, as Envoy).
    pub retry_on: RetryOn,
    /// `num_retries` (default 1).
    pub num_retries: u32,
    /// `per_try_timeout` (`None`: the global timeout applies).
    pub per_try_timeout: Option<Duration>,
    /// `per_try_idle_timeout`.
    pub per_try_idle_timeout: Option<Duration>,
    /// `retry_back_off`.
    pub back_off: BackOff,
    /// `retry_host_predicate` contains `previous_hosts`: retries avoid hosts already tried.
    pub previous_hosts: bool,
    /// `host_selection_retry_max_attempts` (default 1): picks per try to satisfy predicates.
    pub host_selection_retry_max_attempts: u32,
    /// `retriable_status_codes`.
    pub retriable_status_codes: Vec<u16>,
    /// `retriable_headers` (response headers that make a response retriable).
    pub retriable_headers: Vec<HeaderMatch>,
    /// `retriable_request_headers` (requests must match one for any retry).
    pub retriable_request_headers: Vec<HeaderMatch>,
}

/// Envoy's fully jittered exponential back-off: try `n` (0-based) waits a uniform random
/// time in `[0, min(base × 2ⁿ, max))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackOff {
    /// `base_interval` (25 ms).
    pub base: Duration,
    /// `max_interval` (10 × base).
    pub max: Duration,
}

/// The retry decisions for one request, with header overrides applied.
#[derive(Debug, Clone)]
pub struct RetryState {
    retry_on: RetryOn,
    max_retries: u32,
    status_codes: Vec<u16>,
    headers: Vec<HeaderMatch>,
    back_off: BackOff,
    /// Whether retries should avoid previously attempted hosts.
    pub previous_hosts: bool,
    /// Host picks per try to satisfy the host predicate.
    pub host_selection_retry_max_attempts: u32,
}

/// How a try ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Response headers arrived (trailers-only gRPC responses carry `grpc-status` here).
    Response {
        /// Status code.
        status: u16,
        /// Response headers.
        headers: &'a HeaderMap,
    },
    /// The stream was reset or never started.
    Reset(ResetReason),
    /// The per-try timeout fired (Envoy treats it as a local reset).
    PerTryTimeout,
}

/// Why a stream ended without a response (Envoy's `StreamResetReason`, folded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// Connecting failed or timed out.
    ConnectFailure,
    /// HTTP/2 `REFUSED_STREAM`.
    RefusedStream,
    /// The pool refused for a circuit breaker: never retried.
    Overflow,
    /// Any other reset: remote reset, connection termination, local reset.
    Other,
}

/// What to do after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Retry (after [`RetryState::backoff`] and a breaker retry slot).
    Retry,
    /// The outcome is not retriable under the policy.
    NotRetriable,
    /// Retriable, but the retries are used up (`upstream_rq_retry_limit_exceeded`).
    LimitExceeded,
}

/// Retry counters under `cluster.<name>.`.
#[derive(Debug, Clone)]
pub struct RetryStats {
    /// `upstream_rq_retry`.
    pub retry: crate::stats::Counter,
    /// `upstream_rq_retry_success`.
    pub retry_success: crate::stats::Counter,
    /// `upstream_rq_retry_limit_exceeded`.
    pub retry_limit_exceeded: crate::stats::Counter,
    /// `upstream_rq_retry_backoff_exponential`.
    pub retry_backoff_exponential: crate::stats::Counter,
    /// `upstream_rq_retry_backoff_ratelimited` (never bumped: rate-limited back-off is
    /// refused at config time).
    pub retry_backoff_ratelimited: crate::stats::Counter,
    /// `upstream_rq_per_try_timeout`.
    pub per_try_timeout: crate::stats::Counter,
    /// `upstream_rq_per_try_idle_timeout`.
    pub per_try_idle_timeout: crate::stats::Counter,
}

/// The timeouts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Whole-request timeout; `None` is infinite.
    pub global: Option<Duration>,
    /// Per-try timeout; `None` means none (the global one applies).
    pub per_try: Option<Duration>,
}

/// A route's timeout settings (inputs to [`Timeouts::compute`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteTimeouts {
    /// `timeout` (Envoy's default 15 s; zero disables).
    pub timeout: Duration,
    /// `max_grpc_timeout`: when set, gRPC requests use `grpc-timeout` capped by it (zero:
    /// no cap).
    pub max_grpc_timeout: Option<Duration>,
    /// `grpc_timeout_offset`.
    pub grpc_timeout_offset: Option<Duration>,
    /// `retry_policy.per_try_timeout`.
    pub per_try_timeout: Option<Duration>,
}

// === impl RetryOn ===

impl RetryOn {
    /// `5xx`.
    pub const FIVE_XX: RetryOn = RetryOn(1);
    /// `gateway-error` (502, 503, 504).
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    /// `connect-failure`.
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 2);
    /// `retriable-4xx` (409 only).
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 3);
    /// `refused-stream`.
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 4);
    /// `retriable-status-codes`.
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 5);
    /// `reset`.
    pub const RESET: RetryOn = RetryOn(1 << 6);
    /// `retriable-headers`.
    pub const RETRIABLE_HEADERS: RetryOn = RetryOn(1 << 7);
    /// `envoy-ratelimited`.
    pub const ENVOY_RATE_LIMITED: RetryOn = RetryOn(1 << 8);
    /// `reset-before-request`.
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 9);
    /// `http3-post-connect-failure` (parsed; HTTP/3 is not supported).
    pub const HTTP3_POST_CONNECT_FAILURE: RetryOn = RetryOn(1 << 10);
    /// gRPC `cancelled`.
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 16);
    /// gRPC `deadline-exceeded`.
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 17);
    /// gRPC `resource-exhausted`.
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 18);
    /// gRPC `unavailable`.
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 19);
    /// gRPC `internal`.
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 20);

    /// The empty set.
    pub const NONE: RetryOn = RetryOn(0);

    /// Whether any condition in `other` is set.
    pub fn any(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether no condition is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses the HTTP conditions of a comma list (Envoy's `parseRetryOn`); the flag is
    /// false if some name was not an HTTP condition.
    pub fn parse_http(s: &str) -> (RetryOn, bool) {
        Self::parse(s, |t| match t {
            "5xx" => Some(Self::FIVE_XX),
            "gateway-error" => Some(Self::GATEWAY_ERROR),
            "connect-failure" => Some(Self::CONNECT_FAILURE),
            "retriable-4xx" => Some(Self::RETRIABLE_4XX),
            "refused-stream" => Some(Self::REFUSED_STREAM),
            "retriable-status-codes" => Some(Self::RETRIABLE_STATUS_CODES),
            "reset" => Some(Self::RESET),
            "retriable-headers" => Some(Self::RETRIABLE_HEADERS),
            "envoy-ratelimited" => Some(Self::ENVOY_RATE_LIMITED),
            "reset-before-request" => Some(Self::RESET_BEFORE_REQUEST),
            "http3-post-connect-failure" => Some(Self::HTTP3_POST_CONNECT_FAILURE),
            _ => None,
        })
    }

    /// Parses the gRPC conditions of a comma list (Envoy's `parseRetryGrpcOn`).
    pub fn parse_grpc(s: &str) -> (RetryOn, bool) {
        Self::parse(s, |t| match t {
            "cancelled" => Some(Self::GRPC_CANCELLED),
            "deadline-exceeded" => Some(Self::GRPC_DEADLINE_EXCEEDED),
            "resource-exhausted" => Some(Self::GRPC_RESOURCE_EXHAUSTED),
            "unavailable" => Some(Self::GRPC_UNAVAILABLE),
            "internal" => Some(Self::GRPC_INTERNAL),
            _ => None,
        })
    }

    fn parse(s: &str, f: impl Fn(&str) -> Option<RetryOn>) -> (RetryOn, bool) {
        let mut out = RetryOn::NONE;
        let mut all_valid = true;
        for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match f(t) {
                Some(r) => out = out | r,
                None => all_valid = false,
            }
        }
        (out, all_valid)
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, rhs: RetryOn) -> RetryOn {
        RetryOn(self.0 | rhs.0)
    }
}

// === impl RetryPolicy ===

impl Default for RetryPolicy {
    /// The policy of a route without `retry_policy`: nothing is retried unless a request
    /// header asks, and then once (Envoy's `num_retries` default).
    fn default() -> Self {
        RetryPolicy {
            retry_on: RetryOn::NONE,
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            back_off: BackOff::default(),
            previous_hosts: false,
            host_selection_retry_max_attempts: 1,
            retriable_status_codes: Vec::new(),
            retriable_headers: Vec::new(),
            retriable_request_headers: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Compiles a route `retry_policy`.
    pub fn from_proto(p: &XdsRetryPolicy, path: &str) -> Result<Self, ConfigError> {
        let retry_on = RetryOn::parse_http(&p.retry_on).0 | RetryOn::parse_grpc(&p.retry_on).0;
        let opt_dur = |d: &Option<envoy_types::pb::google::protobuf::Duration>, name: &str| {
            d.as_ref()
                .map(|d| duration(d, &format!("{path}.{name}")))
                .transpose()
                .map(|d| d.filter(|d| !d.is_zero()))
        };
        let back_off = match &p.retry_back_off {
            None => BackOff::default(),
            Some(b) => {
                let base = match &b.base_interval {
                    Some(d) => duration(d, &format!("{path}.retry_back_off.base_interval"))?,
                    None => Duration::ZERO,
                };
                if base < Duration::from_millis(1) {
                    return Err(ConfigError::new(
                        format!("{path}.retry_back_off.base_interval"),
                        "must be at least 1ms",
                    ));
                }
                let max = match &b.max_interval {
                    Some(d) => duration(d, &format!("{path}.retry_back_off.max_interval"))?,
                    None => base * 10,
                };
                if max < base {
                    return Err(ConfigError::new(
                        format!("{path}.retry_back_off.max_interval"),
                        "must be greater than or equal to the base_interval",
                    ));
                }
                BackOff { base, max }
            }
        };
        let mut previous_hosts = false;
        for (i, pred) in p.retry_host_predicate.iter().enumerate() {
            use envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType;
            let ty = pred
                .config_type
                .as_ref()
                .map(|ConfigType::TypedConfig(any)| xds_client::decode::type_name(&any.type_url));
            if pred.name == PREVIOUS_HOSTS || ty == Some(PREVIOUS_HOSTS_TYPE) {
                previous_hosts = true;
            } else {
                return Err(ConfigError::new(
                    format!("{path}.retry_host_predicate[{i}]"),
                    format!("{} is not supported", ty.unwrap_or(pred.name.as_str())),
                ));
            }
        }
        // These change retry decisions and are not implemented: refuse rather than differ.
        if p.retry_priority
            .as_ref()
            .is_some_and(|r| !r.name.is_empty())
        {
            return Err(ConfigError::new(
                format!("{path}.retry_priority"),
                "not supported",
            ));
        }
        if !p.retry_options_predicates.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.retry_options_predicates"),
                "not supported",
            ));
        }
        if p.rate_limited_retry_back_off.is_some() {
            return Err(ConfigError::new(
                format!("{path}.rate_limited_retry_back_off"),
                "not supported",
            ));
        }
        let mut retriable_status_codes = Vec::new();
        for (i, c) in p.retriable_status_codes.iter().enumerate() {
            let code = u16::try_from(*c).ok().filter(|c| (100..=999).contains(c));
            retriable_status_codes.push(code.ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.retriable_status_codes[{i}]"),
                    "not an HTTP status code",
                )
            })?);
        }
        let matchers = |v: &[envoy_types::pb::envoy::config::route::v3::HeaderMatcher],
                        name: &str| {
            v.iter()
                .enumerate()
                .map(|(i, h)| HeaderMatch::from_proto(h, &format!("{path}.{name}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(RetryPolicy {
            retry_on,
            num_retries: p.num_retries.map_or(1, |v| v.value),
            per_try_timeout: opt_dur(&p.per_try_timeout, "per_try_timeout")?,
            per_try_idle_timeout: opt_dur(&p.per_try_idle_timeout, "per_try_idle_timeout")?,
            back_off,
            previous_hosts,
            host_selection_retry_max_attempts: if p.host_selection_retry_max_attempts <= 0 {
                1
            } else {
                p.host_selection_retry_max_attempts.min(u32::MAX as i64) as u32
            },
            retriable_status_codes,
            retriable_headers: matchers(&p.retriable_headers, "retriable_headers")?,
            retriable_request_headers: matchers(
                &p.retriable_request_headers,
                "retriable_request_headers",
            )?,
        })
    }
}

// === impl RetryStats ===

impl RetryStats {
    /// Registers the counters under `prefix` (`cluster.<name>.`).
    pub fn new(stats: &crate::stats::Stats, prefix: &str) -> Self {
        let c = |n: &str| stats.counter(&format!("{prefix}{n}"));
        RetryStats {
            retry: c("upstream_rq_retry"),
            retry_success: c("upstream_rq_retry_success"),
            retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            retry_backoff_exponential: c("upstream_rq_retry_backoff_exponential"),
            retry_backoff_ratelimited: c("upstream_rq_retry_backoff_ratelimited"),
            per_try_timeout: c("upstream_rq_per_try_timeout"),
            per_try_idle_timeout: c("upstream_rq_per_try_idle_timeout"),
        }
    }
}

// === impl BackOff ===

impl Default for BackOff {
    fn default() -> Self {
        BackOff {
            base: DEFAULT_BASE_INTERVAL,
            max: DEFAULT_BASE_INTERVAL * 10,
        }
    }
}

impl BackOff {
    /// The upper bound (exclusive) of the wait before retry `n` (0-based), per Envoy's
    /// `JitteredExponentialBackOffStrategy`: the interval doubles while below `max / 2`,
    /// then is `max`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let max = self.max.as_millis() as u64;
        let mut next = self.base.as_millis().max(1) as u64;
        for _ in 0..n {
            next = if next < max / 2 { next * 2 } else { max };
        }
        Duration::from_millis(next.max(1))
    }

    /// The wait before retry `n` (0-based): `random % ceiling`, capped at `max`.
    pub fn delay(&self, n: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(n).as_millis() as u64;
        let ms = rng.random::<u64>() % ceiling;
        Duration::from_millis(ms).min(self.max)
    }
}

// === impl RetryState ===

impl RetryState {
    /// The request's retry state, or `None` when nothing may be retried.
    pub fn new(policy: &RetryPolicy, req: &HeaderMap) -> Option<Self> {
        let mut retry_on = policy.retry_on;
        if let Some(v) = header_str(req, "x-envoy-retry-on") {
            retry_on = retry_on | RetryOn::parse_http(v).0;
        }
        if let Some(v) = header_str(req, "x-envoy-retry-grpc-on") {
            retry_on = retry_on | RetryOn::parse_grpc(v).0;
        }
        if !policy.retriable_request_headers.is_empty()
            && !policy
                .retriable_request_headers
                .iter()
                .any(|m| m.matches(req))
        {
            retry_on = RetryOn::NONE;
        }
        if retry_on.is_empty() {
            return None;
        }
        let mut max_retries = policy.num_retries;
        if let Some(n) = header_str(req, "x-envoy-max-retries").and_then(|v| v.parse().ok()) {
            max_retries = n;
        }
        let mut status_codes = policy.retriable_status_codes.clone();
        if let Some(v) = header_str(req, "x-envoy-retriable-status-codes") {
            status_codes.extend(v.split(',').filter_map(|c| c.trim().parse::<u16>().ok()));
        }
        let mut headers = policy.retriable_headers.clone();
        if let Some(v) = header_str(req, "x-envoy-retriable-header-names") {
            headers.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .filter_map(|n| {
                        http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok()
                    })
                    .map(HeaderMatch::present),
            );
        }
        Some(RetryState {
            retry_on,
            max_retries,
            status_codes,
            headers,
            back_off: policy.back_off,
            previous_hosts: policy.previous_hosts,
            host_selection_retry_max_attempts: policy.host_selection_retry_max_attempts,
        })
    }

    /// The effective conditions.
    pub fn retry_on(&self) -> RetryOn {
        self.retry_on
    }

    /// The effective retry limit (`num_retries` or `x-envoy-max-retries`).
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Whether to retry after a try ended with `outcome`, given `retries_done` retries so
    /// far. Pure: the caller still takes a breaker retry slot before retrying.
    pub fn should_retry(&self, retries_done: u32, outcome: &Outcome<'_>) -> RetryDecision {
        if !self.would_retry(outcome) {
            return RetryDecision::NotRetriable;
        }
        if retries_done >= self.max_retries {
            return RetryDecision::LimitExceeded;
        }
        RetryDecision::Retry
    }

    /// The wait before retry `n` (0-based).
    pub fn backoff(&self, n: u32, rng: &mut impl Rng) -> Duration {
        self.back_off.delay(n, rng)
    }

    fn would_retry(&self, outcome: &Outcome<'_>) -> bool {
        let r = self.retry_on;
        match *outcome {
            Outcome::Reset(ResetReason::Overflow) => false,
            Outcome::Reset(reason) => {
                if r.any(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET) {
                    return true;
                }
                match reason {
                    ResetReason::ConnectFailure => {
                        r.any(RetryOn::CONNECT_FAILURE | RetryOn::RESET_BEFORE_REQUEST)
                    }
                    ResetReason::RefusedStream => r.any(RetryOn::REFUSED_STREAM),
                    _ => false,
                }
            }
            Outcome::PerTryTimeout => {
                r.any(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET)
            }
            Outcome::Response { status, headers } => {
                // Envoy never retries a response an upstream Envoy marked as overloaded.
                if headers.contains_key("x-envoy-overloaded") {
                    return false;
                }
                // A rate-limited answer from an upstream Envoy is retried only under
                // `envoy-ratelimited`, whatever its status.
                if headers.contains_key("x-envoy-ratelimited") {
                    return r.any(RetryOn::ENVOY_RATE_LIMITED);
                }
                if r.any(RetryOn::FIVE_XX) && (500..600).contains(&status) {
                    return true;
                }
                if r.any(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504) {
                    return true;
                }
                if r.any(RetryOn::RETRIABLE_4XX) && status == 409 {
                    return true;
                }
                if r.any(RetryOn::RETRIABLE_STATUS_CODES) && self.status_codes.contains(&status) {
                    return true;
                }
                if r.any(RetryOn::RETRIABLE_HEADERS)
                    && self.headers.iter().any(|m| m.matches(headers))
                {
                    return true;
                }
                if let Some(g) =
                    header_str(headers, "grpc-status").and_then(|v| v.parse::<u32>().ok())
                {
                    let hit = match g {
                        1 => r.any(RetryOn::GRPC_CANCELLED),
                        4 => r.any(RetryOn::GRPC_DEADLINE_EXCEEDED),
                        8 => r.any(RetryOn::GRPC_RESOURCE_EXHAUSTED),
                        13 => r.any(RetryOn::GRPC_INTERNAL),
                        14 => r.any(RetryOn::GRPC_UNAVAILABLE),
                        _ => false,
                    };
                    if hit {
                        return true;
                    }
                }
                false
            }
        }
    }
}

// === impl Timeouts ===

impl Timeouts {
    /// Envoy's `finalTimeout` without the header rewriting: the route timeout, or for gRPC
    /// with `max_grpc_timeout` the `grpc-timeout` header (minus `grpc_timeout_offset`,
    /// capped); then `x-envoy-upstream-rq-timeout-ms` replaces the global timeout and
    /// `x-envoy-upstream-rq-per-try-timeout-ms` the per-try one; a per-try timeout not below
    /// a finite global timeout is dropped.
    pub fn compute(route: &RouteTimeouts, req: &HeaderMap, grpc: bool) -> Timeouts {
        let mut global = route.timeout;
        if let (true, Some(max)) = (grpc, route.max_grpc_timeout) {
            let mut t = header_str(req, "grpc-timeout")
                .and_then(parse_grpc_timeout)
                .unwrap_or(Duration::ZERO);
            if let Some(off) = route.grpc_timeout_offset {
                if off < t {
                    t -= off;
                }
            }
            if !max.is_zero() && (t.is_zero() || t > max) {
                t = max;
            }
            global = t;
        }
        if let Some(ms) =
            header_str(req, "x-envoy-upstream-rq-timeout-ms").and_then(|v| v.parse::<u64>().ok())
        {
            global = Duration::from_millis(ms);
        }
        let mut per_try = route.per_try_timeout.unwrap_or(Duration::ZERO);
        if let Some(ms) = header_str(req, "x-envoy-upstream-rq-per-try-timeout-ms")
            .and_then(|v| v.parse::<u64>().ok())
        {
            per_try = Duration::from_millis(ms);
        }
        if per_try >= global && !global.is_zero() {
            per_try = Duration::ZERO;
        }
        Timeouts {
            global: (!global.is_zero()).then_some(global),
            per_try: (!per_try.is_zero()).then_some(per_try),
        }
    }
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (`H M S m u n`); sub-millisecond
/// units round up to whole milliseconds.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_millis(n.div_ceil(1000)),
        "n" => Duration::from_millis(n.div_ceil(1_000_000)),
        _ => return None,
    })
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests;
