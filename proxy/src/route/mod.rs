//! Route tables: virtual host selection and route matching, compiled from
//! `RouteConfiguration` (see `config::route`). Nothing here allocates per request except
//! query-string parsing, done only for routes that match on query parameters.
pub mod headers;
mod matching;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::StatusCode;
use regex::Regex;

pub use headers::{AppendAction, HeaderAdd, HeaderMutations};
pub use matching::RequestView;

/// A named route table that connection managers share: RDS updates swap the table and
/// every listener using that name sees the new routes on its next request.
#[derive(Debug, Default)]
pub struct RouteSlot {
    /// The route configuration name (RDS resource name).
    pub name: Arc<str>,
    /// The current table.
    pub table: arc_swap::ArcSwap<RouteTable>,
    /// Whether a table has arrived (listeners warm until it has).
    pub loaded: std::sync::atomic::AtomicBool,
    /// `stat_prefix`es of the connection managers using this slot: RDS stats are kept per
    /// connection manager (`http.<prefix>.rds.<name>.update_*`), as Envoy does.
    pub stat_prefixes: std::sync::Mutex<Vec<String>>,
}

impl RouteSlot {
    /// A slot already holding `table` (inline `route_config`).
    pub fn loaded(table: RouteTable) -> Self {
        RouteSlot {
            name: table.name.clone(),
            table: arc_swap::ArcSwap::from_pointee(table),
            loaded: std::sync::atomic::AtomicBool::new(true),
            stat_prefixes: Default::default(),
        }
    }

    /// An empty slot waiting for RDS.
    pub fn pending(name: &str) -> Self {
        RouteSlot {
            name: Arc::from(name),
            ..Default::default()
        }
    }

    /// Records that a connection manager with `prefix` uses this slot.
    pub fn add_stat_prefix(&self, prefix: &str) {
        let mut p = self.stat_prefixes.lock().unwrap_or_else(|e| e.into_inner());
        if !p.iter().any(|x| x == prefix) {
            p.push(prefix.to_string());
        }
    }

    /// The connection managers' stat prefixes.
    pub fn stat_prefixes(&self) -> Vec<String> {
        self.stat_prefixes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the routes have arrived.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Publishes a new table.
    pub fn store(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Route slots by RDS name, shared by every connection manager that names them.
#[derive(Debug, Default)]
pub struct RouteStore {
    slots: std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<RouteSlot>>>,
}

impl RouteStore {
    /// The slot for `name`, created empty on first use. Slots live as long as a connection
    /// manager holds them.
    pub fn slot(&self, name: &str) -> Arc<RouteSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(name).and_then(std::sync::Weak::upgrade) {
            return s;
        }
        let s = Arc::new(RouteSlot::pending(name));
        slots.insert(name.to_string(), Arc::downgrade(&s));
        s
    }

    /// Names with a live slot (the RDS subscription set).
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, w| w.strong_count() > 0);
        slots.keys().cloned().collect()
    }

    /// The live slot for `name`, if any connection manager uses it.
    pub fn get(&self, name: &str) -> Option<Arc<RouteSlot>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.get(name).and_then(std::sync::Weak::upgrade)
    }
}

/// A compiled `RouteConfiguration`.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// The route config name (for stats and config dumps).
    pub name: Arc<str>,
    /// Virtual hosts in config order.
    pub vhosts: Vec<VirtualHost>,
    /// Exact domains (lower-cased) → vhost index.
    pub(crate) exact: std::collections::HashMap<String, usize>,
    /// `*.suffix` domains: (suffix incl. the dot, vhost), longest first.
    pub(crate) suffixes: Vec<(String, usize)>,
    /// `prefix.*` domains: (prefix incl. the dot, vhost), longest first.
    pub(crate) prefixes: Vec<(String, usize)>,
    /// The `*` vhost.
    pub(crate) wildcard: Option<usize>,
    /// Route-config-level header changes.
    pub request_headers: HeaderMutations,
    /// Route-config-level response header changes.
    pub response_headers: HeaderMutations,
}

/// A compiled `VirtualHost`.
#[derive(Debug)]
pub struct VirtualHost {
    /// Name (for stats).
    pub name: Arc<str>,
    /// `include_request_attempt_count`: send `x-envoy-attempt-count` upstream.
    pub attempt_count_in_request: bool,
    /// `include_attempt_count_in_response`: send `x-envoy-attempt-count` downstream.
    pub attempt_count_in_response: bool,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
    /// Request header changes.
    pub request_headers: HeaderMutations,
    /// Response header changes.
    pub response_headers: HeaderMutations,
}

/// A compiled `Route`.
#[derive(Debug)]
pub struct Route {
    /// Name (may be empty).
    pub name: Arc<str>,
    /// When the route applies.
    pub matcher: RouteMatcher,
    /// What to do.
    pub action: Action,
    /// Request header changes.
    pub request_headers: HeaderMutations,
    /// Response header changes.
    pub response_headers: HeaderMutations,
}

/// `RouteMatch`.
#[derive(Debug)]
pub struct RouteMatcher {
    /// Path condition.
    pub path: PathMatch,
    /// Path comparisons are case-sensitive (default true).
    pub case_sensitive: bool,
    /// All must match.
    pub headers: Vec<HeaderMatcher>,
    /// All must match.
    pub query: Vec<QueryMatcher>,
    /// Only gRPC requests (content-type application/grpc*).
    pub grpc: bool,
    /// `runtime_fraction`: the route matches only this share of requests (by the request's
    /// random value, so one request sees one decision for every route).
    pub fraction: Option<crate::policy::Fraction>,
}

/// The path condition of a route.
#[derive(Debug)]
pub enum PathMatch {
    /// `prefix`: the `:path` (with query) starts with it.
    Prefix(String),
    /// `path`: the path without query equals it.
    Exact(String),
    /// `safe_regex`: the whole path without query matches.
    Regex(Regex),
    /// `path_separated_prefix`: equal, or followed by `/`.
    SeparatedPrefix(String),
}

/// `HeaderMatcher`.
#[derive(Debug)]
pub struct HeaderMatcher {
    /// Header (or pseudo-header `:path`, `:method`, `:authority`, `:scheme`).
    pub name: String,
    /// Condition on the (comma-joined) value.
    pub condition: HeaderCondition,
    /// Negate the result.
    pub invert: bool,
    /// Match a missing header as if it had an empty value.
    pub missing_as_empty: bool,
}

/// The condition of a header matcher.
#[derive(Debug)]
pub enum HeaderCondition {
    /// Present (true) or absent (false).
    Present(bool),
    /// A string condition on the value.
    String(StringMatcher),
}

/// `StringMatcher`.
#[derive(Debug)]
pub enum StringMatcher {
    /// Equal.
    Exact(String, bool),
    /// Starts with.
    Prefix(String, bool),
    /// Ends with.
    Suffix(String, bool),
    /// Contains.
    Contains(String, bool),
    /// The whole value matches.
    Regex(Regex),
}

/// `QueryParameterMatcher`.
#[derive(Debug)]
pub struct QueryMatcher {
    /// Parameter name.
    pub name: String,
    /// Condition on its value; `None` means "present".
    pub value: Option<StringMatcher>,
}

/// A route's action.
#[derive(Debug)]
pub enum Action {
    /// Forward to a cluster.
    Forward(Box<ForwardAction>),
    /// Answer with a redirect.
    Redirect(Box<Redirect>),
    /// Answer directly.
    Direct {
        /// Status code.
        status: StatusCode,
        /// Body (may be empty).
        body: Bytes,
    },
}

/// `RouteAction`.
#[derive(Debug)]
pub struct ForwardAction {
    /// Which cluster.
    pub target: ClusterTarget,
    /// Route timeout; `None` means disabled (Envoy's `0s`). Envoy's default is 15 s.
    pub timeout: Option<Duration>,
    /// `prefix_rewrite` (replaces the matched prefix).
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite` (pattern, substitution in `$1` syntax).
    pub regex_rewrite: Option<(Regex, String)>,
    /// Host rewriting.
    pub host_rewrite: HostRewrite,
    /// Upgrade types allowed (e.g. `websocket`), lower-cased.
    pub upgrades: Vec<String>,
    /// Status when the named cluster does not exist.
    pub cluster_not_found: StatusCode,
    /// `retry_policy` of the route, else of its virtual host, else the empty policy (only
    /// `x-envoy-retry-on` request headers can then ask for retries).
    pub retry: Arc<crate::policy::retry::RetryPolicy>,
    /// Inputs of the request's timeouts (route timeout, gRPC timeout caps, per-try timeout).
    pub timeouts: crate::policy::retry::RouteTimeouts,
    /// `idle_timeout`: the stream goes idle (nothing sent or received) for this long → 504.
    pub idle_timeout: Option<Duration>,
    /// `max_stream_duration.max_stream_duration`: the downstream stream's maximum duration.
    pub max_stream_duration: Option<Duration>,
    /// `priority`: which circuit breakers the request counts against.
    pub priority: crate::policy::breaker::Priority,
    /// `request_mirror_policies`.
    pub mirrors: Vec<MirrorPolicy>,
    /// `hash_policy`, evaluated for clusters with a consistent-hash balancer.
    pub hash_policy: crate::upstream::lb::hash::HashPolicies,
}

/// One `request_mirror_policies` entry: a copy of the request sent to another cluster,
/// fire and forget.
#[derive(Debug)]
pub struct MirrorPolicy {
    /// The cluster (a fixed name or a request header's value).
    pub target: MirrorTarget,
    /// Share of requests mirrored (`runtime_fraction.default_value`, 100% when unset).
    pub fraction: crate::policy::Fraction,
    /// `disable_shadow_host_suffix_append`: keep the host as is (else `-shadow` is appended).
    pub keep_host: bool,
}

/// Where a mirror goes.
#[derive(Debug)]
pub enum MirrorTarget {
    /// `cluster`.
    Named(Arc<str>),
    /// `cluster_header`.
    Header(HeaderName),
}

/// How the cluster of a forward action is chosen.
#[derive(Debug)]
pub enum ClusterTarget {
    /// A fixed cluster.
    Named(Arc<str>),
    /// The value of a request header.
    Header(HeaderName),
    /// Weighted split.
    Weighted(WeightedClusters),
}

/// `weighted_clusters`.
#[derive(Debug)]
pub struct WeightedClusters {
    /// Clusters with cumulative upper bounds of their weight ranges.
    pub clusters: Vec<WeightedCluster>,
    /// Sum of weights.
    pub total: u64,
    /// `header_name`: a request header whose numeric value picks the cluster deterministically.
    pub header: Option<HeaderName>,
}

/// One entry of a weighted split.
#[derive(Debug)]
pub struct WeightedCluster {
    /// Cluster name.
    pub name: Arc<str>,
    /// Weight.
    pub weight: u64,
    /// Exclusive upper bound of this cluster's range in `[0, total)`.
    pub upper: u64,
    /// Request header changes.
    pub request_headers: HeaderMutations,
    /// Response header changes.
    pub response_headers: HeaderMutations,
    /// `host_rewrite_literal`.
    pub host_rewrite: Option<http::HeaderValue>,
}

/// Host rewriting of a forward action.
#[derive(Debug, Default)]
pub enum HostRewrite {
    /// Keep the host.
    #[default]
    None,
    /// Set this literal.
    Literal(http::HeaderValue),
    /// Set the upstream host's address (or hostname).
    Auto,
    /// Copy from a request header.
    Header(HeaderName),
}

/// `RedirectAction`.
#[derive(Debug)]
pub struct Redirect {
    /// New scheme.
    pub scheme: Option<String>,
    /// New host.
    pub host: Option<String>,
    /// New port (0 = keep).
    pub port: u16,
    /// Path replacement.
    pub path: RedirectPath,
    /// 301/302/303/307/308.
    pub status: StatusCode,
    /// Drop the query string.
    pub strip_query: bool,
}

/// How a redirect changes the path.
#[derive(Debug)]
pub enum RedirectPath {
    /// Keep it.
    Keep,
    /// Replace the whole path.
    Replace(String),
    /// Replace the matched prefix.
    PrefixRewrite(String),
}

// === impl RouteTable ===

impl RouteTable {
    /// Finds the virtual host for `host` (lower-cased, with port if the request had one).
    ///
    /// Envoy's order: exact domain, then the longest `*.suffix`, then the longest `prefix.*`,
    /// then `*`.
    pub fn vhost(&self, host: &str) -> Option<&VirtualHost> {
        if let Some(&i) = self.exact.get(host) {
            return Some(&self.vhosts[i]);
        }
        for (suffix, i) in &self.suffixes {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(&self.vhosts[*i]);
            }
        }
        for (prefix, i) in &self.prefixes {
            if host.len() > prefix.len() && host.starts_with(prefix.as_str()) {
                return Some(&self.vhosts[*i]);
            }
        }
        self.wildcard.map(|i| &self.vhosts[i])
    }

    /// Selects the virtual host and the first matching route.
    pub fn select<'a>(&'a self, req: &RequestView<'_>) -> Option<(&'a VirtualHost, &'a Route)> {
        let vhost = self.vhost(req.host)?;
        let route = vhost.routes.iter().find(|r| r.matcher.matches(req))?;
        Some((vhost, route))
    }
}

// === impl WeightedClusters ===

impl WeightedClusters {
    /// Picks a cluster for the value `v` in `[0, total)`.
    pub fn pick(&self, v: u64) -> &WeightedCluster {
        let v = v % self.total.max(1);
        // Few clusters in practice: a linear scan over cumulative bounds beats a binary search.
        self.clusters
            .iter()
            .find(|c| v < c.upper)
            .unwrap_or_else(|| &self.clusters[self.clusters.len() - 1])
    }
}

#[cfg(test)]
mod tests;
