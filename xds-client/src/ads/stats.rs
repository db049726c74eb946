//! Counters the proxy reports under Envoy's names.
//!
//! Envoy scopes each subscription's stats by its owner: CDS under `cluster_manager.cds.`,
//! LDS under `listener_manager.lds.`, RDS under `http.<prefix>.rds.<route>.`; the connection
//! gauge is `control_plane.connected_state`. The client only counts; naming is the proxy's.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// All counters of one ADS client. Cheap to read from any thread.
#[derive(Debug, Default)]
pub struct AdsStats {
    /// `control_plane.connected_state`: 1 while the stream is up, else 0.
    pub connected_state: AtomicU64,
    /// Streams that ended (closed, failed, or never opened), each followed by a backoff.
    pub stream_failures: AtomicU64,
    types: BTreeMap<String, Arc<TypeStats>>,
}

/// The subscription counters of one type URL (Envoy's `SubscriptionStats`).
#[derive(Debug, Default)]
pub struct TypeStats {
    /// `update_attempt`: responses received for this type.
    pub update_attempt: AtomicU64,
    /// `update_success`: responses ACKed.
    pub update_success: AtomicU64,
    /// `update_rejected`: responses NACKed.
    pub update_rejected: AtomicU64,
    /// `update_failure`: the stream failed while this type was subscribed.
    pub update_failure: AtomicU64,
    /// `init_fetch_timeout`: the initial fetch timed out.
    pub init_fetch_timeout: AtomicU64,
}

// === impl AdsStats ===

impl AdsStats {
    pub(crate) fn new<'a>(type_urls: impl IntoIterator<Item = &'a str>) -> Self {
        AdsStats {
            types: type_urls
                .into_iter()
                .map(|t| (t.to_string(), Arc::default()))
                .collect(),
            ..Default::default()
        }
    }

    /// The counters of `type_url`, if the client was configured with that type.
    pub fn for_type(&self, type_url: &str) -> Option<&TypeStats> {
        self.types.get(type_url).map(|s| &**s)
    }

    /// Every configured type with its counters.
    pub fn types(&self) -> impl Iterator<Item = (&str, &TypeStats)> {
        self.types.iter().map(|(k, v)| (k.as_str(), &**v))
    }

    /// Whether the stream is up.
    pub fn is_connected(&self) -> bool {
        self.connected_state.load(Ordering::Relaxed) == 1
    }

    pub(crate) fn handle(&self, type_url: &str) -> Option<Arc<TypeStats>> {
        self.types.get(type_url).cloned()
    }
}

// === impl TypeStats ===

impl TypeStats {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
