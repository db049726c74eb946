//! State shared by every listener, connection and the admin server.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::listener::{Listener, ListenerTable};
use crate::stats::Stats;
use crate::upstream::Cluster;

/// Clusters by name; swapped whole when the cluster set changes.
pub type ClusterTable = HashMap<Arc<str>, Arc<Cluster>>;

/// The process-wide state.
#[derive(Debug)]
pub struct Shared {
    /// All stats.
    pub stats: Stats,
    /// Current clusters.
    pub clusters: ArcSwap<ClusterTable>,
    /// Current listeners (for original-destination handoff and `/listeners`).
    pub listeners: ArcSwap<ListenerTable>,
    /// Listener names and addresses in config order (for `/listeners`).
    pub listener_list: ArcSwap<Vec<Arc<Listener>>>,
    /// Set by `POST /healthcheck/fail`.
    pub health_failed: AtomicBool,
    /// Draining: connection managers close keep-alive connections when this turns true.
    drain: watch::Sender<bool>,
    /// When the server started.
    pub started: Instant,
    /// The bootstrap as JSON, for `/config_dump`.
    pub bootstrap_json: serde_json::Value,
    /// Node id and cluster.
    pub node: (String, String),
    /// VM mode (`--mesh-dns`): routes connections to capture addresses by mesh name.
    pub capture: std::sync::OnceLock<crate::listener::CaptureRoutes>,
}

impl Shared {
    /// New shared state.
    pub fn new(stats: Stats, bootstrap_json: serde_json::Value, node: (String, String)) -> Self {
        Shared {
            stats,
            clusters: ArcSwap::from_pointee(HashMap::new()),
            listeners: ArcSwap::from_pointee(ListenerTable::default()),
            listener_list: ArcSwap::from_pointee(Vec::new()),
            health_failed: AtomicBool::new(false),
            drain: watch::channel(false).0,
            started: Instant::now(),
            bootstrap_json,
            node,
            capture: std::sync::OnceLock::new(),
        }
    }

    /// The cluster named `name`.
    #[inline]
    pub fn cluster(&self, name: &str) -> Option<Arc<Cluster>> {
        self.clusters.load().get(name).cloned()
    }

    /// The listener that owns original destination `dst`.
    pub fn listener_for(&self, dst: SocketAddr) -> Option<Arc<Listener>> {
        self.listeners.load().lookup(dst)
    }

    /// A receiver that turns true when draining starts.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// Starts draining.
    pub fn start_drain(&self) {
        self.drain.send_replace(true);
    }

    /// Whether draining has started.
    pub fn draining(&self) -> bool {
        *self.drain.borrow()
    }
}
