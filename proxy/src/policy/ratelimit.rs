//! Local rate limits: `envoy.filters.http.local_ratelimit` and
//! `envoy.filters.network.local_ratelimit`, as Envoy's `LocalRateLimiterImpl`.
//!
//! The token bucket is Envoy's `AtomicTokenBucketImpl`: one atomic holding the time at which
//! the bucket was (virtually) empty; the tokens available at `now` are
//! `min(max_tokens, (now - empty_at) × fill_rate)` with `fill_rate = tokens_per_fill /
//! fill_interval`, so refill is continuous and computed on access. Consuming moves
//! `empty_at` forward with one CAS. The bucket starts full and is shared by every worker; no
//! lock on the hot path. Time is passed in for deterministic tests.
//!
//! HTTP filter order (Envoy's `decodeHeaders`): not `filter_enabled` → pass, no stats;
//! else `enabled`++; matched descriptor buckets (tightest fill rate first) and then, if no
//! descriptor matched or `always_consume_default_token_bucket`, the default bucket; allowed
//! → `ok`++; else `rate_limited`++, and only if `filter_enforced` → `enforced`++ and a local
//! reply with `status` (429), body and details `local_rate_limited`, `response_headers_to_add`
//! and response flag `RL` (gRPC: `grpc-status` 14, or 8 with
//! `rate_limited_as_resource_exhausted`). Stats live
//! at `<stat_prefix>.http_local_rate_limit.*`; the network filter's at
//! `local_ratelimit.<stat_prefix>.rate_limited`.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, RuntimeFractionalPercent};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as XdsHttpLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as XdsNetworkLocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::TokenBucket as XdsTokenBucket;
use rand::Rng;

use super::Fraction;
use crate::config::{duration, ConfigError};
use crate::stats::{Counter, Stats};

/// Envoy rejects fill intervals below this.
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);
/// `max_dynamic_descriptors` default (wildcard descriptor LRU size).
pub const DEFAULT_MAX_DYNAMIC_DESCRIPTORS: usize = 20;

/// `token_bucket`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    /// `max_tokens` (0 denies everything, as Envoy).
    pub max_tokens: u32,
    /// `tokens_per_fill` (default 1).
    pub tokens_per_fill: u32,
    /// `fill_interval` (≥ 50 ms).
    pub fill_interval: Duration,
}

/// A lock-free token bucket with continuous refill.
#[derive(Debug)]
pub struct TokenBucket {
    cfg: BucketConfig,
    fill_rate: f64,
    epoch: Instant,
    /// f64 bits: seconds since `epoch` at which the bucket was empty (may be negative).
    empty_at: AtomicU64,
}

/// One request descriptor: ordered `(key, value)` entries (from the route's `rate_limits`).
pub type Descriptor = Vec<(String, String)>;

/// `envoy.filters.http.local_ratelimit`, compiled.
#[derive(Debug, Clone)]
pub struct HttpLocalRateLimitConfig {
    /// `stat_prefix`.
    pub stat_prefix: String,
    /// `token_bucket` (`None`: requests that match no descriptor are not limited).
    pub token_bucket: Option<BucketConfig>,
    /// `filter_enabled` (absent: disabled).
    pub filter_enabled: Fraction,
    /// `filter_enforced` (absent: not enforced).
    pub filter_enforced: Fraction,
    /// `status` (default 429).
    pub status: u16,
    /// `response_headers_to_add` on rate-limited replies.
    pub response_headers_to_add: Vec<HeaderAdd>,
    /// `request_headers_to_add_when_not_enforced`.
    pub request_headers_to_add_when_not_enforced: Vec<HeaderAdd>,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`.
    pub x_ratelimit_headers: bool,
    /// `descriptors`: entries (an empty value is a wildcard) and their buckets.
    pub descriptors: Vec<(Descriptor, BucketConfig)>,
    /// `local_rate_limit_per_downstream_connection`: one limiter per connection.
    pub per_connection: bool,
    /// `always_consume_default_token_bucket` (default true).
    pub always_consume_default_token_bucket: bool,
    /// `max_dynamic_descriptors` (default 20).
    pub max_dynamic_descriptors: usize,
    /// `rate_limited_as_resource_exhausted`: gRPC replies carry `RESOURCE_EXHAUSTED` (8)
    /// instead of `UNAVAILABLE` (14).
    pub rate_limited_as_resource_exhausted: bool,
}

/// A header to add (`HeaderValueOption`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderAdd {
    /// Name.
    pub name: http::HeaderName,
    /// Value.
    pub value: http::HeaderValue,
    /// Append to an existing value (`APPEND_IF_EXISTS_OR_ADD`) rather than only add if
    /// absent (`ADD_IF_ABSENT`) or overwrite (`OVERWRITE_IF_EXISTS_OR_ADD`).
    pub action: AppendAction,
}

/// `append_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    /// `APPEND_IF_EXISTS_OR_ADD`.
    Append,
    /// `ADD_IF_ABSENT`.
    AddIfAbsent,
    /// `OVERWRITE_IF_EXISTS_OR_ADD` (and `OVERWRITE_IF_EXISTS`).
    Overwrite,
}

/// The runtime of one HTTP local rate limit config (or, per connection, of one connection).
#[derive(Debug)]
pub struct HttpLocalRateLimiter {
    cfg: Arc<HttpLocalRateLimitConfig>,
    limiter: Limiter,
    stats: HttpStats,
}

/// `<stat_prefix>.http_local_rate_limit.*`.
#[derive(Debug, Clone)]
struct HttpStats {
    enabled: Counter,
    enforced: Counter,
    rate_limited: Counter,
    ok: Counter,
}

/// What the HTTP filter does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Filter disabled for this request.
    Disabled,
    /// Allowed.
    Allowed(Option<RateLimitHeaders>),
    /// Over the limit but not enforced: forward, adding
    /// `request_headers_to_add_when_not_enforced`.
    LimitedNotEnforced(Option<RateLimitHeaders>),
    /// Over the limit: reply with `status` and `response_headers_to_add`, flag `RL`.
    Limited(Option<RateLimitHeaders>),
}

/// `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` (draft 03).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `x-ratelimit-limit`: the bucket's `max_tokens`.
    pub limit: u64,
    /// `x-ratelimit-remaining`: whole tokens left.
    pub remaining: u64,
    /// `x-ratelimit-reset`: seconds until the next token.
    pub reset: u64,
}

/// Buckets: the default one, exact descriptors and wildcard descriptors.
#[derive(Debug)]
struct Limiter {
    default: Option<Arc<TokenBucket>>,
    deny_default: bool,
    exact: HashMap<Descriptor, Arc<TokenBucket>>,
    wildcard: Vec<(Descriptor, BucketConfig, Mutex<Lru>)>,
    always_consume_default: bool,
    max_dynamic: usize,
}

/// Least-recently-used buckets of a wildcard descriptor (Envoy keeps these under a mutex
/// too; only wildcard descriptors pay for it).
#[derive(Debug, Default)]
struct Lru {
    tick: u64,
    buckets: HashMap<Descriptor, (u64, Arc<TokenBucket>)>,
}

/// `envoy.filters.network.local_ratelimit`: one token per new connection; a connection that
/// finds no token is closed.
#[derive(Debug)]
pub struct NetworkLocalRateLimiter {
    bucket: TokenBucket,
    enabled: bool,
    rate_limited: Counter,
}

// === impl BucketConfig ===

impl BucketConfig {
    /// Validates a `token_bucket`.
    pub fn from_proto(b: &XdsTokenBucket, path: &str) -> Result<Self, ConfigError> {
        let tokens_per_fill = b.tokens_per_fill.map_or(1, |v| v.value);
        if tokens_per_fill == 0 {
            return Err(ConfigError::new(
                format!("{path}.tokens_per_fill"),
                "must be greater than 0",
            ));
        }
        let fill_interval = match &b.fill_interval {
            Some(d) => duration(d, &format!("{path}.fill_interval"))?,
            None => return Err(ConfigError::new(format!("{path}.fill_interval"), "missing")),
        };
        if b.max_tokens != 0 && fill_interval < MIN_FILL_INTERVAL {
            return Err(ConfigError::new(
                format!("{path}.fill_interval"),
                "must be at least 50ms",
            ));
        }
        Ok(BucketConfig {
            max_tokens: b.max_tokens,
            tokens_per_fill,
            fill_interval,
        })
    }
}

// === impl TokenBucket ===

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(cfg: BucketConfig, now: Instant) -> Self {
        let fill_rate = cfg.tokens_per_fill as f64 / cfg.fill_interval.as_secs_f64().max(1e-9);
        let empty_at = -(cfg.max_tokens as f64) / fill_rate;
        TokenBucket {
            cfg,
            fill_rate,
            epoch: now,
            empty_at: AtomicU64::new(empty_at.to_bits()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BucketConfig {
        &self.cfg
    }

    /// Tokens per second.
    pub fn fill_rate(&self) -> f64 {
        self.fill_rate
    }

    /// Takes one token if available.
    pub fn try_consume(&self, now: Instant) -> bool {
        self.try_consume_n(1.0, now)
    }

    /// Takes `n` tokens if that many are available (Envoy's share factor divides here).
    pub fn try_consume_n(&self, n: f64, now: Instant) -> bool {
        let t = self.secs(now);
        let max = self.cfg.max_tokens as f64;
        let mut old = self.empty_at.load(Ordering::Relaxed);
        loop {
            let total = ((t - f64::from_bits(old)) * self.fill_rate).min(max);
            if total < n {
                return false;
            }
            let new = t - (total - n) / self.fill_rate;
            match self.empty_at.compare_exchange_weak(
                old,
                new.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(cur) => old = cur,
            }
        }
    }

    /// Tokens available at `now` (fractional).
    pub fn remaining(&self, now: Instant) -> f64 {
        let old = f64::from_bits(self.empty_at.load(Ordering::Relaxed));
        ((self.secs(now) - old) * self.fill_rate).min(self.cfg.max_tokens as f64)
    }

    /// Time until one whole token is available (zero if one is).
    pub fn next_token_in(&self, now: Instant) -> Duration {
        let r = self.remaining(now);
        if r >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - r) / self.fill_rate)
        }
    }

    /// The draft-03 headers for this bucket: `reset` is whole seconds, truncated, as Envoy.
    pub fn headers(&self, now: Instant) -> RateLimitHeaders {
        RateLimitHeaders {
            limit: self.cfg.max_tokens as u64,
            remaining: self.remaining(now).max(0.0) as u64,
            reset: self.next_token_in(now).as_millis() as u64 / 1000,
        }
    }

    fn secs(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.epoch).as_secs_f64()
    }
}

// === impl HttpLocalRateLimitConfig ===

impl HttpLocalRateLimitConfig {
    /// Compiles the filter config (also used for `typed_per_filter_config` overrides).
    pub fn from_proto(c: &XdsHttpLocalRateLimit, path: &str) -> Result<Self, ConfigError> {
        if c.stat_prefix.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.stat_prefix"),
                "must not be empty",
            ));
        }
        let token_bucket = c
            .token_bucket
            .as_ref()
            .map(|b| BucketConfig::from_proto(b, &format!("{path}.token_bucket")))
            .transpose()?;
        let status = match &c.status {
            None => 429,
            Some(s) => match u16::try_from(s.code)
                .ok()
                .filter(|c| (400..600).contains(c))
            {
                Some(c) => c,
                None => {
                    return Err(ConfigError::new(
                        format!("{path}.status.code"),
                        "must be a 4xx or 5xx status",
                    ))
                }
            },
        };
        let mut descriptors: Vec<(Descriptor, BucketConfig)> = Vec::new();
        for (i, d) in c.descriptors.iter().enumerate() {
            let dpath = format!("{path}.descriptors[{i}]");
            let entries: Descriptor = d
                .entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            if entries.is_empty() {
                return Err(ConfigError::new(
                    format!("{dpath}.entries"),
                    "must not be empty",
                ));
            }
            let b = d
                .token_bucket
                .as_ref()
                .ok_or_else(|| ConfigError::new(format!("{dpath}.token_bucket"), "missing"))?;
            let bucket = BucketConfig::from_proto(b, &format!("{dpath}.token_bucket"))?;
            if descriptors.iter().any(|(e, _)| *e == entries) {
                return Err(ConfigError::new(dpath, "duplicate descriptor"));
            }
            descriptors.push((entries, bucket));
        }
        Ok(HttpLocalRateLimitConfig {
            stat_prefix: c.stat_prefix.clone(),
            token_bucket,
            filter_enabled: fraction(c.filter_enabled.as_ref(), &format!("{path}.filter_enabled"))?,
            filter_enforced: fraction(
                c.filter_enforced.as_ref(),
                &format!("{path}.filter_enforced"),
            )?,
            status,
            response_headers_to_add: header_adds(
                &c.response_headers_to_add,
                &format!("{path}.response_headers_to_add"),
            )?,
            request_headers_to_add_when_not_enforced: header_adds(
                &c.request_headers_to_add_when_not_enforced,
                &format!("{path}.request_headers_to_add_when_not_enforced"),
            )?,
            x_ratelimit_headers: c.enable_x_ratelimit_headers == 1,
            descriptors,
            per_connection: c.local_rate_limit_per_downstream_connection,
            always_consume_default_token_bucket: c
                .always_consume_default_token_bucket
                .is_none_or(|b| b.value),
            max_dynamic_descriptors: c
                .max_dynamic_descriptors
                .map_or(DEFAULT_MAX_DYNAMIC_DESCRIPTORS, |v| v.value as usize),
            rate_limited_as_resource_exhausted: c.rate_limited_as_resource_exhausted,
        })
    }
}

// === impl HttpLocalRateLimiter ===

impl HttpLocalRateLimiter {
    /// Builds the limiter with full buckets and registers the stats.
    pub fn new(cfg: Arc<HttpLocalRateLimitConfig>, stats: &Stats, now: Instant) -> Self {
        let p = format!("{}.http_local_rate_limit.", cfg.stat_prefix);
        let stats = HttpStats {
            enabled: stats.counter(&format!("{p}enabled")),
            enforced: stats.counter(&format!("{p}enforced")),
            rate_limited: stats.counter(&format!("{p}rate_limited")),
            ok: stats.counter(&format!("{p}ok")),
        };
        HttpLocalRateLimiter {
            limiter: Limiter::new(&cfg, now),
            cfg,
            stats,
        }
    }

    /// A fresh limiter with the same config and stats, for
    /// `local_rate_limit_per_downstream_connection` (one per connection).
    pub fn for_connection(&self, now: Instant) -> Self {
        HttpLocalRateLimiter {
            limiter: Limiter::new(&self.cfg, now),
            cfg: self.cfg.clone(),
            stats: self.stats.clone(),
        }
    }

    /// The config.
    pub fn config(&self) -> &HttpLocalRateLimitConfig {
        &self.cfg
    }

    /// Decides for one request with its descriptors.
    pub fn check(&self, descriptors: &[Descriptor], now: Instant, rng: &mut impl Rng) -> Verdict {
        if !self.cfg.filter_enabled.roll(rng) {
            return Verdict::Disabled;
        }
        self.stats.enabled.inc();
        let (allowed, bucket) = self.limiter.allow(descriptors, now);
        let headers = bucket
            .filter(|_| self.cfg.x_ratelimit_headers)
            .map(|b| b.headers(now));
        if allowed {
            self.stats.ok.inc();
            return Verdict::Allowed(headers);
        }
        self.stats.rate_limited.inc();
        if !self.cfg.filter_enforced.roll(rng) {
            return Verdict::LimitedNotEnforced(headers);
        }
        self.stats.enforced.inc();
        Verdict::Limited(headers)
    }
}

// === impl Limiter ===

impl Limiter {
    fn new(cfg: &HttpLocalRateLimitConfig, now: Instant) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        for (entries, b) in &cfg.descriptors {
            if entries.iter().any(|(_, v)| v.is_empty()) {
                wildcard.push((entries.clone(), *b, Mutex::new(Lru::default())));
            } else {
                exact.insert(entries.clone(), Arc::new(TokenBucket::new(*b, now)));
            }
        }
        let default = cfg
            .token_bucket
            .filter(|b| b.max_tokens != 0)
            .map(|b| Arc::new(TokenBucket::new(b, now)));
        Limiter {
            deny_default: cfg.token_bucket.is_some_and(|b| b.max_tokens == 0),
            default,
            exact,
            wildcard,
            always_consume_default: cfg.always_consume_default_token_bucket,
            max_dynamic: cfg.max_dynamic_descriptors.max(1),
        }
    }

    /// Envoy's `requestAllowed`: the result and the bucket that decided (for headers).
    fn allow(&self, descriptors: &[Descriptor], now: Instant) -> (bool, Option<Arc<TokenBucket>>) {
        let mut matched: Vec<Arc<TokenBucket>> = Vec::new();
        for d in descriptors {
            if let Some(b) = self.exact.get(d) {
                matched.push(b.clone());
            } else if let Some(b) = self.wildcard_bucket(d, now) {
                matched.push(b);
            }
        }
        // The tightest bucket first, so a request limited by it does not drain the others.
        matched.sort_by(|a, b| a.fill_rate.total_cmp(&b.fill_rate));
        for b in &matched {
            if b.cfg.max_tokens == 0 || !b.try_consume(now) {
                return (false, Some(b.clone()));
            }
        }
        if matched.is_empty() || self.always_consume_default {
            match &self.default {
                None if self.deny_default => return (false, None),
                None => return (true, matched.first().cloned()),
                Some(d) => {
                    if !d.try_consume(now) {
                        return (false, Some(d.clone()));
                    }
                    return (true, matched.first().cloned().or_else(|| Some(d.clone())));
                }
            }
        }
        (true, matched.first().cloned())
    }

    fn wildcard_bucket(&self, d: &Descriptor, now: Instant) -> Option<Arc<TokenBucket>> {
        let (_, cfg, lru) = self.wildcard.iter().find(|(entries, _, _)| {
            entries.len() == d.len()
                && entries
                    .iter()
                    .zip(d)
                    .all(|((ck, cv), (rk, rv))| ck == rk && (cv.is_empty() || cv == rv))
        })?;
        let mut lru = lru.lock().unwrap_or_else(|p| p.into_inner());
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((t, b)) = lru.buckets.get_mut(d) {
            *t = tick;
            return Some(b.clone());
        }
        let b = Arc::new(TokenBucket::new(*cfg, now));
        lru.buckets.insert(d.clone(), (tick, b.clone()));
        if lru.buckets.len() > self.max_dynamic {
            if let Some(oldest) = lru
                .buckets
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
            {
                lru.buckets.remove(&oldest);
            }
        }
        Some(b)
    }
}

// === impl NetworkLocalRateLimiter ===

impl NetworkLocalRateLimiter {
    /// Compiles the network filter and registers `local_ratelimit.<stat_prefix>.rate_limited`.
    pub fn from_proto(
        c: &XdsNetworkLocalRateLimit,
        path: &str,
        stats: &Stats,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        if c.stat_prefix.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.stat_prefix"),
                "must not be empty",
            ));
        }
        let b = c
            .token_bucket
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{path}.token_bucket"), "missing"))?;
        let cfg = BucketConfig::from_proto(b, &format!("{path}.token_bucket"))?;
        Ok(NetworkLocalRateLimiter {
            bucket: TokenBucket::new(cfg, now),
            enabled: c
                .runtime_enabled
                .as_ref()
                .is_none_or(|f| f.default_value.is_none_or(|v| v.value)),
            rate_limited: stats.counter(&format!("local_ratelimit.{}.rate_limited", c.stat_prefix)),
        })
    }

    /// Whether a new connection may proceed; `false` means close it now.
    pub fn allow_connection(&self, now: Instant) -> bool {
        if !self.enabled || self.bucket.try_consume(now) {
            return true;
        }
        self.rate_limited.inc();
        false
    }
}

/// `RuntimeFractionalPercent` default value; absent means 0%.
fn fraction(f: Option<&RuntimeFractionalPercent>, path: &str) -> Result<Fraction, ConfigError> {
    match f.and_then(|f| f.default_value.as_ref()) {
        None => Ok(Fraction::ZERO),
        Some(p) => Fraction::from_proto(p, &format!("{path}.default_value")),
    }
}

/// Compiles `HeaderValueOption`s.
pub fn header_adds(v: &[HeaderValueOption], path: &str) -> Result<Vec<HeaderAdd>, ConfigError> {
    v.iter()
        .enumerate()
        .map(|(i, o)| {
            let hpath = format!("{path}[{i}].header");
            let h = o
                .header
                .as_ref()
                .ok_or_else(|| ConfigError::new(hpath.clone(), "missing"))?;
            let name = http::HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes())
                .map_err(|_| ConfigError::new(format!("{hpath}.key"), "invalid header name"))?;
            let raw = if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                &h.raw_value[..]
            };
            let value = http::HeaderValue::from_bytes(raw)
                .map_err(|_| ConfigError::new(format!("{hpath}.value"), "invalid header value"))?;
            #[allow(deprecated)]
            let action = match (o.append.map(|a| a.value), o.append_action) {
                (Some(true), _) => AppendAction::Append,
                (Some(false), _) => AppendAction::Overwrite,
                (None, 1) => AppendAction::AddIfAbsent,
                (None, 2 | 3) => AppendAction::Overwrite,
                (None, _) => AppendAction::Append,
            };
            Ok(HeaderAdd {
                name,
                value,
                action,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
