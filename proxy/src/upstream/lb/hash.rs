//! Consistent hashing: RING_HASH and MAGLEV tables and the route `hash_policy`, as Envoy's
//! `RingHashLoadBalancer`, `MaglevTable` and `Http::HashPolicyImpl`.
//!
//! Tables are built once per host-set change from `(key, weight)` pairs, where the key is the
//! host's address string (`1.2.3.4:80`, `[::1]:80`) or, with `use_hostname_for_hashing`, its
//! hostname; picks return an index into those pairs. Hashes are XXH64 with seed 0, so a
//! request hashes to the same host as under Envoy given the same hosts and weights.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{MaglevLbConfig, RingHashLbConfig};
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy as XdsHashPolicy;
use http::HeaderMap;
use xxhash_rust::xxh64::xxh64;

use crate::config::ConfigError;

/// `minimum_ring_size` default.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// `maximum_ring_size` default and upper bound.
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// `table_size` default (a prime).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
/// `table_size` upper bound (Envoy's proto validation).
pub const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

/// `ring_hash_lb_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingHashConfig {
    /// `minimum_ring_size` (1024).
    pub min_ring_size: u64,
    /// `maximum_ring_size` (8M).
    pub max_ring_size: u64,
}

/// A ketama ring: sorted `(hash, host index)`.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    entries: Vec<(u64, u32)>,
    /// `(ring size, fewest, most points of a host)`: Envoy's `ring_hash_lb.size`,
    /// `min_hashes_per_host` and `max_hashes_per_host` (the size is `ceil(scale)`, which the
    /// points may fall one short of).
    stats: (u64, u64, u64),
}

/// A Maglev lookup table of host indices.
#[derive(Debug, Clone, Default)]
pub struct Maglev {
    table: Vec<u32>,
}

/// One `hash_policy` entry.
#[derive(Debug, Clone)]
pub struct HashPolicy {
    /// What to hash.
    pub kind: HashKind,
    /// `terminal`: stop at this policy if it produced a hash.
    pub terminal: bool,
}

/// The hash policy kinds.
#[derive(Debug, Clone)]
pub enum HashKind {
    /// `header` (values sorted, then hashed in sequence), with optional `regex_rewrite`.
    Header {
        /// Header name.
        name: http::HeaderName,
        /// `regex_rewrite` pattern and substitution.
        rewrite: Option<(regex::Regex, String)>,
    },
    /// `header` naming a pseudo-header (`:authority`, `:path`, `:method`, `:scheme`), which
    /// Envoy's header map holds like any other header.
    PseudoHeader {
        /// Which one.
        name: Pseudo,
        /// `regex_rewrite` pattern and substitution.
        rewrite: Option<(regex::Regex, String)>,
    },
    /// `cookie`: the cookie's value. Only with `ttl` set is a missing cookie generated
    /// (`Set-Cookie` on the response, as Envoy); otherwise the policy yields no hash.
    Cookie {
        /// Cookie name.
        name: String,
        /// `ttl` (`Some(0)` makes a session cookie).
        ttl: Option<Duration>,
        /// `path`.
        path: String,
        /// `attributes` (`name`, `value`).
        attributes: Vec<(String, String)>,
    },
    /// `connection_properties.source_ip`.
    SourceIp,
    /// `query_parameter`: the first value of the parameter (raw, not decoded).
    QueryParameter(String),
}

/// A pseudo-header a hash policy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pseudo {
    /// `:authority` (the `Host`).
    Authority,
    /// `:path` (with query).
    Path,
    /// `:method`.
    Method,
    /// `:scheme`.
    Scheme,
}

/// The request parts hash policies look at.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// `:path` with query.
    pub path: &'a str,
    /// `:authority` as received.
    pub authority: &'a str,
    /// `:method`.
    pub method: &'a str,
    /// `:scheme`.
    pub scheme: &'a str,
    /// Downstream peer address.
    pub remote: Option<SocketAddr>,
    /// Downstream local address (for generated cookies).
    pub local: Option<SocketAddr>,
}

/// The result of evaluating the hash policies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HashResult {
    /// The hash, if any policy produced one (otherwise Envoy picks at random).
    pub hash: Option<u64>,
    /// A `Set-Cookie` value to add to the response (generated cookie).
    pub set_cookie: Option<http::HeaderValue>,
}

/// A route's compiled `hash_policy` list, evaluated per request by [`HashPolicies::compute`]
/// (only for clusters whose balancer hashes, as Envoy computes the hash on demand).
#[derive(Debug, Clone, Default)]
pub struct HashPolicies(Vec<HashPolicy>);

// === impl HashInput ===

impl<'a> HashInput<'a> {
    /// The hash inputs of a request as the router sees it: `:authority` from the URI or the
    /// `Host` header, `:path` with query, and the downstream connection's addresses.
    pub fn new(
        headers: &'a HeaderMap,
        uri: &'a http::Uri,
        method: &'a http::Method,
        remote: SocketAddr,
        local: SocketAddr,
    ) -> Self {
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| headers.get(http::header::HOST)?.to_str().ok())
            .unwrap_or("");
        HashInput {
            headers,
            path: uri.path_and_query().map_or("/", |p| p.as_str()),
            authority,
            method: method.as_str(),
            scheme: uri.scheme_str().unwrap_or("http"),
            remote: Some(remote),
            local: Some(local),
        }
    }
}

// === impl RingHashConfig ===

impl Default for RingHashConfig {
    fn default() -> Self {
        RingHashConfig {
            min_ring_size: DEFAULT_MIN_RING_SIZE,
            max_ring_size: MAX_RING_SIZE,
        }
    }
}

impl RingHashConfig {
    /// Compiles `ring_hash_lb_config`; `MURMUR_HASH_2` is not supported.
    pub fn from_proto(c: &RingHashLbConfig, path: &str) -> Result<Self, ConfigError> {
        if c.hash_function != 0 {
            return Err(ConfigError::new(
                format!("{path}.hash_function"),
                "only XX_HASH is supported",
            ));
        }
        let min_ring_size = c
            .minimum_ring_size
            .map_or(DEFAULT_MIN_RING_SIZE, |v| v.value);
        let max_ring_size = c.maximum_ring_size.map_or(MAX_RING_SIZE, |v| v.value);
        if min_ring_size > MAX_RING_SIZE || min_ring_size == 0 {
            return Err(ConfigError::new(
                format!("{path}.minimum_ring_size"),
                "must be between 1 and 8388608",
            ));
        }
        if max_ring_size > MAX_RING_SIZE {
            return Err(ConfigError::new(
                format!("{path}.maximum_ring_size"),
                "must be at most 8388608",
            ));
        }
        if min_ring_size > max_ring_size {
            return Err(ConfigError::new(
                format!("{path}.minimum_ring_size"),
                format!("({min_ring_size}) > maximum_ring_size ({max_ring_size})"),
            ));
        }
        Ok(RingHashConfig {
            min_ring_size,
            max_ring_size,
        })
    }
}

/// Compiles `maglev_lb_config.table_size` (a prime ≤ 5000011, default 65537).
pub fn maglev_table_size(c: Option<&MaglevLbConfig>, path: &str) -> Result<u64, ConfigError> {
    let size = c
        .and_then(|c| c.table_size)
        .map_or(DEFAULT_MAGLEV_TABLE_SIZE, |v| v.value);
    if size > MAX_MAGLEV_TABLE_SIZE || !is_prime(size) {
        return Err(ConfigError::new(
            format!("{path}.table_size"),
            "must be a prime number no larger than 5000011",
        ));
    }
    Ok(size)
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2;
    while i * i <= n {
        if n.is_multiple_of(i) {
            return false;
        }
        i += 1;
    }
    true
}

/// Weights normalised to sum 1, with the min and max (Envoy's `NormalizedHostWeightVector`).
fn normalize(hosts: &[(&str, u32)]) -> (Vec<f64>, f64, f64) {
    let sum: f64 = hosts.iter().map(|(_, w)| *w as f64).sum();
    let norm: Vec<f64> = hosts.iter().map(|(_, w)| *w as f64 / sum).collect();
    let min = norm.iter().copied().fold(f64::INFINITY, f64::min);
    let max = norm.iter().copied().fold(0.0, f64::max);
    (norm, min, max)
}

// === impl Ring ===

impl Ring {
    /// Builds the ring from integer weights (normalised to sum 1 first).
    pub fn build(hosts: &[(&str, u32)], cfg: &RingHashConfig) -> Ring {
        let hosts: Vec<(&str, u32)> = hosts.iter().copied().filter(|(_, w)| *w > 0).collect();
        if hosts.is_empty() {
            return Ring::default();
        }
        let (norm, _, _) = normalize(&hosts);
        let pairs: Vec<(&str, f64)> = hosts.iter().zip(norm).map(|((k, _), w)| (*k, w)).collect();
        Self::build_normalized(&pairs, cfg)
    }

    /// Builds the ring (Envoy's `RingHashLoadBalancer::Ring`): host `i` gets about
    /// `scale × weight_i` points hashed from `"<key>_<n>"`, where `scale` gives the lightest
    /// host `ceil(min_weight × minimum_ring_size)` points, capped so the ring stays within
    /// `maximum_ring_size`. `hosts` carry normalised weights (summing to 1) in Envoy's host
    /// order; running sums make fractional shares land on the same hosts as Envoy's.
    pub fn build_normalized(hosts: &[(&str, f64)], cfg: &RingHashConfig) -> Ring {
        if hosts.is_empty() {
            return Ring::default();
        }
        let min_w = hosts.iter().map(|(_, w)| *w).fold(1.0f64, f64::min);
        let scale =
            ((min_w * cfg.min_ring_size as f64).ceil() / min_w).min(cfg.max_ring_size as f64);
        let ring_size = scale.ceil() as u64;
        let mut entries = Vec::with_capacity(ring_size as usize);
        let mut current = 0.0f64;
        let mut target = 0.0f64;
        let mut key = String::new();
        let (mut min_per_host, mut max_per_host) = (ring_size, 0u64);
        for (i, (name, w)) in hosts.iter().enumerate() {
            target += scale * w;
            let mut n = 0u64;
            while current < target {
                key.clear();
                key.push_str(name);
                key.push('_');
                key.push_str(&n.to_string());
                entries.push((xxh64(key.as_bytes(), 0), i as u32));
                n += 1;
                current += 1.0;
            }
            min_per_host = min_per_host.min(n);
            max_per_host = max_per_host.max(n);
        }
        entries.sort_by_key(|e| e.0);
        Ring {
            entries,
            stats: (ring_size, min_per_host, max_per_host),
        }
    }

    /// `(ring size, min hashes per host, max hashes per host)`, as Envoy's gauges.
    pub fn stats(&self) -> (u64, u64, u64) {
        self.stats
    }

    /// Number of points on the ring.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the ring has no points.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The host index for `hash` (ketama search: the first point ≥ hash, wrapping); on
    /// retries (`attempt > 0`) the point `attempt` further on, as Envoy.
    pub fn pick(&self, hash: u64, attempt: u32) -> Option<usize> {
        let n = self.entries.len();
        if n == 0 {
            return None;
        }
        // Ported from ketama_get_server as Envoy does (signed indices on purpose).
        let (mut low, mut high) = (0i64, n as i64);
        let mut mid;
        loop {
            mid = (low + high) / 2;
            if mid == n as i64 {
                mid = 0;
                break;
            }
            let midval = self.entries[mid as usize].0;
            let midval1 = if mid == 0 {
                0
            } else {
                self.entries[mid as usize - 1].0
            };
            if hash <= midval && hash > midval1 {
                break;
            }
            if midval < hash {
                low = mid + 1;
            } else {
                high = mid - 1;
            }
            if low > high {
                mid = 0;
                break;
            }
        }
        let mut idx = mid as usize;
        if attempt > 0 {
            idx = (idx + attempt as usize) % n;
        }
        Some(self.entries[idx].1 as usize)
    }
}

// === impl Maglev ===

impl Maglev {
    /// Builds the table from integer weights (normalised to sum 1 first).
    pub fn build(hosts: &[(&str, u32)], table_size: u64) -> Maglev {
        let live: Vec<(usize, (&str, u32))> = hosts
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, (_, w))| *w > 0)
            .collect();
        if live.is_empty() {
            return Maglev::default();
        }
        let pairs: Vec<(&str, u32)> = live.iter().map(|(_, p)| *p).collect();
        let (norm, _, _) = normalize(&pairs);
        let mut weights = vec![0.0; hosts.len()];
        for ((i, _), w) in live.iter().zip(norm) {
            weights[*i] = w;
        }
        let keyed: Vec<(&str, f64)> = hosts
            .iter()
            .zip(weights)
            .map(|((k, _), w)| (*k, w))
            .collect();
        Self::build_normalized(&keyed, table_size)
    }

    /// Builds the table (Envoy's `OriginalMaglevTable`): hosts sorted by key; host `h` has
    /// offset `xxh64(key, 0) % M` and skip `xxh64(key, 1) % (M - 1) + 1`, and fills its
    /// preferred free slots in turns proportional to its normalised weight. Hosts with weight
    /// 0 get no slot; picks return indices into `hosts`.
    pub fn build_normalized(hosts: &[(&str, f64)], table_size: u64) -> Maglev {
        let live: Vec<(usize, &str, f64)> = hosts
            .iter()
            .enumerate()
            .filter(|(_, (_, w))| *w > 0.0)
            .map(|(i, (k, w))| (i, *k, *w))
            .collect();
        if live.is_empty() || table_size < 2 {
            return Maglev::default();
        }
        let max_w = live.iter().map(|(_, _, w)| *w).fold(0.0, f64::max);
        struct Entry {
            host: u32,
            offset: u64,
            skip: u64,
            weight: f64,
            target: f64,
            next: u64,
        }
        let mut entries: Vec<(&str, Entry)> = live
            .iter()
            .map(|(i, key, w)| {
                (
                    *key,
                    Entry {
                        host: *i as u32,
                        offset: xxh64(key.as_bytes(), 0) % table_size,
                        skip: xxh64(key.as_bytes(), 1) % (table_size - 1) + 1,
                        weight: *w,
                        target: 0.0,
                        next: 0,
                    },
                )
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(b.0).then(a.1.host.cmp(&b.1.host)));
        let size = table_size as usize;
        let mut table = vec![u32::MAX; size];
        let mut filled = 0usize;
        let mut iteration = 1u64;
        while filled < size {
            for (_, e) in entries.iter_mut() {
                if filled >= size {
                    break;
                }
                if (iteration as f64) * e.weight < e.target {
                    continue;
                }
                e.target += max_w;
                let mut c = (e.offset + e.skip * e.next) % table_size;
                while table[c as usize] != u32::MAX {
                    e.next += 1;
                    c = (e.offset + e.skip * e.next) % table_size;
                }
                table[c as usize] = e.host;
                e.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Maglev { table }
    }

    /// The host index for `hash`; on retries the hash is perturbed as Envoy does.
    pub fn pick(&self, mut hash: u64, attempt: u32) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        if attempt > 0 {
            hash ^= u64::MAX.wrapping_sub(attempt as u64).wrapping_add(1);
        }
        Some(self.table[(hash % self.table.len() as u64) as usize] as usize)
    }

    /// Slots per host index (for tests and `maglev_lb.*_entries_per_host`).
    pub fn counts(&self, hosts: usize) -> Vec<usize> {
        let mut c = vec![0; hosts];
        for &h in &self.table {
            if let Some(n) = c.get_mut(h as usize) {
                *n += 1;
            }
        }
        c
    }
}

// === impl HashPolicy ===

impl HashPolicy {
    /// Compiles one route `hash_policy` entry; `filter_state` is not supported.
    pub fn from_proto(p: &XdsHashPolicy, path: &str) -> Result<Option<Self>, ConfigError> {
        let kind = match &p.policy_specifier {
            Some(PolicySpecifier::Header(h)) => {
                let lower = h.header_name.to_ascii_lowercase();
                let pseudo = match lower.as_str() {
                    ":authority" => Some(Pseudo::Authority),
                    ":path" => Some(Pseudo::Path),
                    ":method" => Some(Pseudo::Method),
                    ":scheme" => Some(Pseudo::Scheme),
                    _ => None,
                };
                let rewrite = match &h.regex_rewrite {
                    Some(r) => {
                        let pattern = r.pattern.as_ref().ok_or_else(|| {
                            ConfigError::new(
                                format!("{path}.header.regex_rewrite.pattern"),
                                "missing",
                            )
                        })?;
                        let re = regex::Regex::new(&pattern.regex).map_err(|e| {
                            ConfigError::new(
                                format!("{path}.header.regex_rewrite.pattern.regex"),
                                e.to_string(),
                            )
                        })?;
                        Some((re, envoy_substitution(&r.substitution)))
                    }
                    None => None,
                };
                match pseudo {
                    Some(name) => HashKind::PseudoHeader { name, rewrite },
                    None => HashKind::Header {
                        name: http::HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
                            ConfigError::new(
                                format!("{path}.header.header_name"),
                                "invalid header name",
                            )
                        })?,
                        rewrite,
                    },
                }
            }
            Some(PolicySpecifier::Cookie(c)) => {
                if c.name.is_empty() {
                    return Err(ConfigError::new(
                        format!("{path}.cookie.name"),
                        "must not be empty",
                    ));
                }
                HashKind::Cookie {
                    name: c.name.clone(),
                    ttl: c.ttl.map(|t| Duration::from_secs(t.seconds.max(0) as u64)),
                    path: c.path.clone(),
                    attributes: c
                        .attributes
                        .iter()
                        .map(|a| (a.name.clone(), a.value.clone()))
                        .collect(),
                }
            }
            // Envoy adds no policy when source_ip is false.
            Some(PolicySpecifier::ConnectionProperties(cp)) if !cp.source_ip => return Ok(None),
            Some(PolicySpecifier::ConnectionProperties(_)) => HashKind::SourceIp,
            Some(PolicySpecifier::QueryParameter(q)) => {
                if q.name.is_empty() {
                    return Err(ConfigError::new(
                        format!("{path}.query_parameter.name"),
                        "must not be empty",
                    ));
                }
                HashKind::QueryParameter(q.name.clone())
            }
            Some(PolicySpecifier::FilterState(_)) => {
                return Err(ConfigError::new(
                    format!("{path}.filter_state"),
                    "not supported",
                ))
            }
            None => return Err(ConfigError::new(path, "policy_specifier is required")),
        };
        Ok(Some(HashPolicy {
            kind,
            terminal: p.terminal,
        }))
    }

    fn evaluate(
        &self,
        req: &HashInput<'_>,
        set_cookie: &mut Option<http::HeaderValue>,
    ) -> Option<u64> {
        match &self.kind {
            HashKind::Header { name, rewrite } => {
                let mut values = req.headers.get_all(name).iter().map(|v| v.as_bytes());
                let first = values.next()?;
                let second = values.next();
                match (second, rewrite) {
                    // The common case hashes the value in place.
                    (None, None) => Some(xxh64(first, 0)),
                    _ => {
                        let all = std::iter::once(first)
                            .chain(second)
                            .chain(values)
                            .map(|v| String::from_utf8_lossy(v).into_owned());
                        Some(hash_values(all, rewrite.as_ref()))
                    }
                }
            }
            HashKind::PseudoHeader { name, rewrite } => {
                let v = match name {
                    Pseudo::Authority => req.authority,
                    Pseudo::Path => req.path,
                    Pseudo::Method => req.method,
                    Pseudo::Scheme => req.scheme,
                };
                if v.is_empty() {
                    return None;
                }
                match rewrite {
                    None => Some(xxh64(v.as_bytes(), 0)),
                    Some(_) => Some(hash_values(
                        std::iter::once(v.to_string()),
                        rewrite.as_ref(),
                    )),
                }
            }
            HashKind::Cookie {
                name,
                ttl,
                path,
                attributes,
            } => match cookie_value(req.headers, name) {
                Some(v) if !v.is_empty() => Some(xxh64(v.as_bytes(), 0)),
                _ => {
                    let ttl = (*ttl)?;
                    let (remote, local) = (req.remote?, req.local?);
                    let seed = format!("{remote}{local}");
                    let value = format!("{:016x}", xxh64(seed.as_bytes(), 0));
                    *set_cookie = http::HeaderValue::from_str(&set_cookie_value(
                        name, &value, path, ttl, attributes,
                    ))
                    .ok();
                    Some(xxh64(value.as_bytes(), 0))
                }
            },
            HashKind::SourceIp => {
                // Envoy hashes `addressAsString()` (no port); format it without allocating.
                let ip: IpAddr = req.remote?.ip();
                let mut buf = [0u8; 64];
                let mut w = std::io::Cursor::new(&mut buf[..]);
                std::io::Write::write_fmt(&mut w, format_args!("{ip}")).ok()?;
                let n = w.position() as usize;
                Some(xxh64(&buf[..n], 0))
            }
            HashKind::QueryParameter(name) => {
                let query = req.path.split_once('?')?.1;
                let query = query.split_once('#').map_or(query, |(q, _)| q);
                query.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then(|| xxh64(v.as_bytes(), 0))
                })
            }
        }
    }
}

/// Envoy's header hash over several values or rewritten ones: values rewritten, sorted (the
/// same hash whatever the order of repeated headers), then hashed in sequence.
fn hash_values(
    values: impl Iterator<Item = String>,
    rewrite: Option<&(regex::Regex, String)>,
) -> u64 {
    let mut values: Vec<String> = match rewrite {
        Some((re, sub)) => values
            .map(|v| re.replace_all(&v, sub.as_str()).into_owned())
            .collect(),
        None => values.collect(),
    };
    values.sort();
    values.iter().fold(0, |seed, v| xxh64(v.as_bytes(), seed))
}

// === impl HashPolicies ===

impl HashPolicies {
    /// Compiles a route's `hash_policy` list; errors name the entry's path.
    pub fn compile(policies: &[XdsHashPolicy], path: &str) -> Result<Self, ConfigError> {
        compile_hash_policies(policies, path).map(HashPolicies)
    }

    /// Whether the route hashes nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The request's hash (and a cookie to set), as Envoy's `generateHash`.
    pub fn compute(&self, req: &HashInput<'_>) -> HashResult {
        compute_hash(&self.0, req)
    }
}

/// Compiles a route's `hash_policy` list (entries that hash nothing are dropped, as Envoy).
pub fn compile_hash_policies(
    policies: &[XdsHashPolicy],
    path: &str,
) -> Result<Vec<HashPolicy>, ConfigError> {
    let mut out = Vec::with_capacity(policies.len());
    for (i, p) in policies.iter().enumerate() {
        if let Some(p) = HashPolicy::from_proto(p, &format!("{path}[{i}]"))? {
            out.push(p);
        }
    }
    Ok(out)
}

/// Envoy's `HashPolicyImpl::generateHash`: each hash is combined as
/// `rotl(previous, 1) ^ new`; a terminal policy that produced a hash ends the walk.
pub fn compute_hash(policies: &[HashPolicy], req: &HashInput<'_>) -> HashResult {
    let mut out = HashResult::default();
    for p in policies {
        if let Some(h) = p.evaluate(req, &mut out.set_cookie) {
            let old = out.hash.map_or(0, |v| v.rotate_left(1));
            out.hash = Some(old ^ h);
        }
        if p.terminal && out.hash.is_some() {
            break;
        }
    }
    out
}

/// The first value of cookie `name` in the `cookie` headers, without surrounding quotes.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    for h in headers.get_all(http::header::COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for part in s.split(';') {
            let part = part.trim();
            if let Some((k, v)) = part.split_once('=') {
                if k == name {
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(v);
                    return Some(v);
                }
            }
        }
    }
    None
}

/// Envoy's `makeSetCookieValue` (always `HttpOnly`).
fn set_cookie_value(
    name: &str,
    value: &str,
    path: &str,
    ttl: Duration,
    attributes: &[(String, String)],
) -> String {
    let mut s = format!("{name}=\"{value}\"");
    if !ttl.is_zero() {
        s.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !path.is_empty() {
        s.push_str(&format!("; Path={path}"));
    }
    for (k, v) in attributes {
        if v.is_empty() {
            s.push_str(&format!("; {k}"));
        } else {
            s.push_str(&format!("; {k}={v}"));
        }
    }
    s.push_str("; HttpOnly");
    s
}

/// RE2-style `\1` substitutions become the regex crate's `${1}`.
fn envoy_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
