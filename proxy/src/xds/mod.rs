//! Dynamic configuration from an ADS control plane: the `ResourceSink` that turns CDS, EDS,
//! LDS and RDS resources into runtime objects, with Envoy's ordering and warming.
//!
//! - Each resource is checked against the support table and compiled on its own; a bad one
//!   is rejected (NACKed with its name and reason) while the good ones of the same response
//!   apply, and the previous version of the bad one keeps serving (gRFC A46 / Envoy).
//! - An unchanged resource (same proto) keeps its runtime object: pools, breaker state and
//!   stats survive, and the work of an update is proportional to what changed.
//! - A new or changed EDS cluster warms until its endpoints arrive (or EDS's initial fetch
//!   times out); the previous version serves meanwhile. A listener warms until every route
//!   configuration it names has arrived.
//! - Publishing is one pointer swap per table (clusters, a listener slot, a route slot).
pub mod bootstrap;
mod dump;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as XdsListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Message;
use tracing::{info, warn};
use xds_client::ads::{type_url, AdsHandle, Rejection, ResourceSink, ResourceUpdate};

use crate::config::{self, BuildCtx};
use crate::listener::{Listener, NetworkFilter};
use crate::route::RouteStore;
use crate::runtime::ListenerManager;
use crate::server::{ClusterTable, Shared};
use crate::stats::{Counter, Gauge, Stats};
use crate::upstream::{dns, Cluster, Discovery, HostSet};

pub use dump::DynamicDump;

/// A resource as accepted, for `/config_dump`.
#[derive(Debug, Clone)]
struct Accepted<T> {
    proto: T,
    /// The resource's encoded bytes: an identical resource in a later response (SotW sends
    /// every resource every time) is recognised by a byte comparison, without decoding,
    /// checking or compiling it, so an update costs in proportion to what changed.
    raw: Vec<u8>,
    version: String,
    updated: SystemTime,
}

#[derive(Debug)]
struct DynCluster {
    accepted: Accepted<XdsCluster>,
    cluster: Arc<Cluster>,
}

#[derive(Debug)]
struct DynListener {
    accepted: Accepted<XdsListener>,
    listener: Arc<Listener>,
}

#[derive(Debug, Default)]
struct State {
    /// Serving dynamic clusters.
    clusters: BTreeMap<String, DynCluster>,
    /// New or changed EDS clusters waiting for endpoints.
    warming_clusters: BTreeMap<String, DynCluster>,
    /// Last accepted endpoints by EDS service name.
    endpoints: HashMap<String, Accepted<ClusterLoadAssignment>>,
    /// Serving dynamic listeners.
    listeners: BTreeMap<String, DynListener>,
    /// Listeners waiting for their routes.
    warming_listeners: BTreeMap<String, DynListener>,
    /// Last accepted route configurations.
    routes: BTreeMap<String, Accepted<RouteConfiguration>>,
    /// EDS gave up waiting (initial fetch timeout): warm clusters serve without endpoints.
    eds_timed_out: bool,
    /// RDS gave up waiting: warm listeners serve with empty routes (404s).
    rds_timed_out: bool,
    cds_seen: bool,
    lds_seen: bool,
}

#[derive(Debug, Clone)]
struct UpdateStats {
    attempt: Counter,
    success: Counter,
    rejected: Counter,
}

impl UpdateStats {
    fn new(stats: &Stats, prefix: &str) -> Self {
        UpdateStats {
            attempt: stats.counter(&format!("{prefix}.update_attempt")),
            success: stats.counter(&format!("{prefix}.update_success")),
            rejected: stats.counter(&format!("{prefix}.update_rejected")),
        }
    }
}

/// `http.<prefix>.rds.<route_config>.update_*` for every connection manager using a route
/// configuration.
struct RdsStats(Vec<UpdateStats>);

impl RdsStats {
    fn new(stats: &Stats, prefixes: Option<Vec<String>>, name: &str) -> Self {
        RdsStats(
            prefixes
                .unwrap_or_default()
                .iter()
                .map(|p| UpdateStats::new(stats, &format!("http.{p}.rds.{name}")))
                .collect(),
        )
    }
}

/// Bumps one counter of every connection manager's RDS stats.
macro_rules! rds_inc {
    ($s:expr, $field:ident) => {
        for u in &$s.0 {
            u.$field.inc();
        }
    };
}

/// The dynamic half of the configuration.
pub struct XdsManager {
    shared: Arc<Shared>,
    listeners: Arc<ListenerManager>,
    routes: Arc<RouteStore>,
    stats: Stats,
    /// Bootstrap clusters: never removed by CDS.
    static_clusters: ClusterTable,
    handle: OnceLock<AdsHandle>,
    mesh: OnceLock<Arc<crate::mesh::Mesh>>,
    state: Mutex<State>,
    /// Turns true once CDS/EDS/LDS/RDS have all delivered (or timed out): the server is LIVE.
    initialized: tokio::sync::watch::Sender<bool>,
    cds: UpdateStats,
    lds: UpdateStats,
    connected: Gauge,
    warming_clusters: Gauge,
    warming_listeners: Gauge,
}

impl std::fmt::Debug for XdsManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsManager").finish_non_exhaustive()
    }
}

impl XdsManager {
    /// A manager publishing into `shared` (clusters) and `listeners`.
    pub fn new(
        shared: Arc<Shared>,
        listeners: Arc<ListenerManager>,
        routes: Arc<RouteStore>,
        static_clusters: ClusterTable,
    ) -> Arc<Self> {
        let stats = shared.stats.clone();
        Arc::new(XdsManager {
            cds: UpdateStats::new(&stats, "cluster_manager.cds"),
            lds: UpdateStats::new(&stats, "listener_manager.lds"),
            connected: stats.gauge("control_plane.connected_state"),
            warming_clusters: stats.gauge("cluster_manager.warming_clusters"),
            warming_listeners: stats.gauge("listener_manager.total_listeners_warming"),
            shared,
            listeners,
            routes,
            stats,
            static_clusters,
            handle: OnceLock::new(),
            mesh: OnceLock::new(),
            state: Mutex::new(State::default()),
            initialized: tokio::sync::watch::channel(false).0,
        })
    }

    /// Gives the manager the client handle it uses to change EDS/RDS subscriptions.
    pub fn set_handle(&self, handle: AdsHandle) {
        let _ = self.handle.set(handle);
    }

    /// Keeps the mesh DNS names in step with dynamic clusters and routes.
    pub fn set_mesh(&self, mesh: Arc<crate::mesh::Mesh>) {
        let _ = self.mesh.set(mesh);
    }

    fn update_mesh(&self, st: &State) {
        if let Some(m) = self.mesh.get() {
            m.update(
                st.clusters.keys().map(String::as_str),
                st.routes.values().map(|a| &a.proto),
            );
        }
    }

    /// Resolves when the first configuration has been applied (or timed out).
    pub fn initialized(&self) -> tokio::sync::watch::Receiver<bool> {
        self.initialized.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update completes its changes to the state before releasing the lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ctx(&self) -> BuildCtx<'_> {
        BuildCtx {
            stats: &self.stats,
            routes: Some(&self.routes),
            xds: true,
        }
    }

    // --- CDS ---

    fn apply_clusters(&self, st: &mut State, u: &ResourceUpdate<'_>) -> Vec<Rejection> {
        self.cds.attempt.inc();
        let mut rejected = Vec::new();
        for r in u.resources {
            if self.static_clusters.contains_key(r.name.as_str()) {
                rejected.push(Rejection::new(
                    &r.name,
                    "a static cluster of that name exists",
                ));
                continue;
            }
            if st
                .clusters
                .get(&r.name)
                .is_some_and(|c| c.accepted.raw == r.body.value)
                && !st.warming_clusters.contains_key(&r.name)
            {
                continue; // byte-identical to the serving version
            }
            let proto: XdsCluster = match checked(r) {
                Ok(p) => p,
                Err(e) => {
                    rejected.push(Rejection::new(&r.name, e));
                    continue;
                }
            };
            if st
                .clusters
                .get(&r.name)
                .is_some_and(|c| c.accepted.proto == proto)
                && !st.warming_clusters.contains_key(&r.name)
            {
                continue; // unchanged: keep pools, breakers and stats
            }
            let cluster = match config::cluster::build(&proto, "", &self.ctx()) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    rejected.push(Rejection::new(&r.name, e.to_string()));
                    continue;
                }
            };
            let dc = DynCluster {
                accepted: Accepted {
                    proto,
                    raw: r.body.value.clone(),
                    version: r.version.clone(),
                    updated: SystemTime::now(),
                },
                cluster: cluster.clone(),
            };
            match &cluster.discovery {
                Discovery::Eds { service_name } => {
                    if let Some(cla) = st.endpoints.get(&**service_name) {
                        let prev = st
                            .clusters
                            .get(&r.name)
                            .map(|c| c.cluster.hosts.load_full());
                        set_eds_hosts(&cluster, &cla.proto, prev.as_deref());
                        st.warming_clusters.remove(&r.name);
                        st.clusters.insert(r.name.clone(), dc);
                    } else if st.eds_timed_out {
                        st.clusters.insert(r.name.clone(), dc);
                    } else {
                        st.warming_clusters.insert(r.name.clone(), dc);
                    }
                }
                _ => {
                    spawn_cluster_tasks(&cluster);
                    st.warming_clusters.remove(&r.name);
                    st.clusters.insert(r.name.clone(), dc);
                }
            }
        }
        for name in u.removed {
            st.clusters.remove(name);
            st.warming_clusters.remove(name);
        }
        st.cds_seen = true;
        if rejected.is_empty() {
            self.cds.success.inc();
        } else {
            self.cds.rejected.inc();
        }
        self.publish_clusters(st);
        self.update_eds_interest(st);
        rejected
    }

    fn publish_clusters(&self, st: &State) {
        let mut table = self.static_clusters.clone();
        for (name, c) in &st.clusters {
            table.insert(Arc::from(name.as_str()), c.cluster.clone());
        }
        self.stats
            .gauge("cluster_manager.active_clusters")
            .set(table.len() as i64);
        self.warming_clusters.set(st.warming_clusters.len() as i64);
        self.shared.clusters.store(Arc::new(table));
    }

    fn update_eds_interest(&self, st: &State) {
        let names: BTreeSet<String> = st
            .clusters
            .values()
            .chain(st.warming_clusters.values())
            .filter_map(|c| match &c.cluster.discovery {
                Discovery::Eds { service_name } => Some(service_name.to_string()),
                _ => None,
            })
            .collect();
        if let Some(h) = self.handle.get() {
            let _ = h.set_subscriptions(type_url::ENDPOINT, names);
        }
    }

    // --- EDS ---

    fn apply_endpoints(&self, st: &mut State, u: &ResourceUpdate<'_>) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        for r in u.resources {
            if st
                .endpoints
                .get(&r.name)
                .is_some_and(|e| e.raw == r.body.value)
            {
                continue;
            }
            let cla: ClusterLoadAssignment = match checked(r) {
                Ok(p) => p,
                Err(e) => {
                    rejected.push(Rejection::new(&r.name, e));
                    continue;
                }
            };
            // Validate before touching any cluster.
            if let Err(e) = config::cluster::assignment_hosts(&cla, "", false, &HostSet::default())
            {
                rejected.push(Rejection::new(&r.name, e.to_string()));
                continue;
            }
            for dc in st.clusters.values().chain(st.warming_clusters.values()) {
                if matches!(&dc.cluster.discovery, Discovery::Eds { service_name } if **service_name == r.name)
                {
                    let prev = dc.cluster.hosts.load_full();
                    set_eds_hosts(&dc.cluster, &cla, Some(&prev));
                }
            }
            st.endpoints.insert(
                r.name.clone(),
                Accepted {
                    proto: cla,
                    raw: r.body.value.clone(),
                    version: r.version.clone(),
                    updated: SystemTime::now(),
                },
            );
            // Warmed: a changed cluster replaces its previous version now.
            let warmed: Vec<String> = st
                .warming_clusters
                .iter()
                .filter(|(_, dc)| matches!(&dc.cluster.discovery, Discovery::Eds { service_name } if **service_name == r.name))
                .map(|(n, _)| n.clone())
                .collect();
            for n in warmed {
                if let Some(dc) = st.warming_clusters.remove(&n) {
                    st.clusters.insert(n, dc);
                }
            }
        }
        for name in u.removed {
            st.endpoints.remove(name);
        }
        self.publish_clusters(st);
        rejected
    }

    // --- LDS ---

    fn apply_listeners(&self, st: &mut State, u: &ResourceUpdate<'_>) -> Vec<Rejection> {
        self.lds.attempt.inc();
        let mut rejected = Vec::new();
        for r in u.resources {
            if st
                .listeners
                .get(&r.name)
                .is_some_and(|l| l.accepted.raw == r.body.value)
                || st
                    .warming_listeners
                    .get(&r.name)
                    .is_some_and(|l| l.accepted.raw == r.body.value)
            {
                continue;
            }
            let proto: XdsListener = match checked(r) {
                Ok(p) => p,
                Err(e) => {
                    rejected.push(Rejection::new(&r.name, e));
                    continue;
                }
            };
            let unchanged = st
                .listeners
                .get(&r.name)
                .is_some_and(|l| l.accepted.proto == proto)
                || st
                    .warming_listeners
                    .get(&r.name)
                    .is_some_and(|l| l.accepted.proto == proto);
            if unchanged {
                continue;
            }
            let listener = match config::listener::build(&proto, "", &self.ctx()) {
                Ok(l) => Arc::new(l),
                Err(e) => {
                    rejected.push(Rejection::new(&r.name, e.to_string()));
                    continue;
                }
            };
            let dl = DynListener {
                accepted: Accepted {
                    proto,
                    raw: r.body.value.clone(),
                    version: r.version.clone(),
                    updated: SystemTime::now(),
                },
                listener: listener.clone(),
            };
            if routes_ready(&listener) || st.rds_timed_out {
                if let Err(e) = self.listeners.upsert(listener, true) {
                    rejected.push(Rejection::new(&r.name, e));
                    continue;
                }
                st.warming_listeners.remove(&r.name);
                st.listeners.insert(r.name.clone(), dl);
            } else {
                st.warming_listeners.insert(r.name.clone(), dl);
            }
        }
        for name in u.removed {
            st.warming_listeners.remove(name);
            if st.listeners.remove(name).is_some() {
                self.listeners.remove(name);
            }
        }
        st.lds_seen = true;
        if rejected.is_empty() {
            self.lds.success.inc();
        } else {
            self.lds.rejected.inc();
        }
        self.warming_listeners
            .set(st.warming_listeners.len() as i64);
        self.update_rds_interest();
        rejected
    }

    fn update_rds_interest(&self) {
        if let Some(h) = self.handle.get() {
            let _ = h.set_subscriptions(type_url::ROUTE, self.routes.names());
        }
    }

    /// Starts warming listeners whose routes have all arrived.
    fn activate_warm_listeners(&self, st: &mut State, force: bool) -> Vec<Rejection> {
        let ready: Vec<String> = st
            .warming_listeners
            .iter()
            .filter(|(_, l)| force || routes_ready(&l.listener))
            .map(|(n, _)| n.clone())
            .collect();
        let mut rejected = Vec::new();
        for n in ready {
            if let Some(dl) = st.warming_listeners.remove(&n) {
                match self.listeners.upsert(dl.listener.clone(), true) {
                    Ok(()) => {
                        st.listeners.insert(n, dl);
                    }
                    Err(e) => {
                        warn!(listener = %n, "cannot start warmed listener: {e}");
                        rejected.push(Rejection::new(&n, e));
                    }
                }
            }
        }
        self.warming_listeners
            .set(st.warming_listeners.len() as i64);
        rejected
    }

    // --- RDS ---

    fn apply_routes(&self, st: &mut State, u: &ResourceUpdate<'_>) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        for r in u.resources {
            let stats = RdsStats::new(
                &self.stats,
                self.routes.get(&r.name).map(|s| s.stat_prefixes()),
                &r.name,
            );
            rds_inc!(stats, attempt);
            if st
                .routes
                .get(&r.name)
                .is_some_and(|a| a.raw == r.body.value)
            {
                rds_inc!(stats, success);
                continue;
            }
            let proto: RouteConfiguration = match checked(r) {
                Ok(p) => p,
                Err(e) => {
                    rds_inc!(stats, rejected);
                    rejected.push(Rejection::new(&r.name, e));
                    continue;
                }
            };
            if st.routes.get(&r.name).is_some_and(|a| a.proto == proto) {
                rds_inc!(stats, success);
                continue;
            }
            match config::route::build(&proto, "") {
                Ok(table) => {
                    if let Some(slot) = self.routes.get(&r.name) {
                        slot.store(table);
                    }
                    st.routes.insert(
                        r.name.clone(),
                        Accepted {
                            proto,
                            raw: r.body.value.clone(),
                            version: r.version.clone(),
                            updated: SystemTime::now(),
                        },
                    );
                    rds_inc!(stats, success);
                }
                Err(e) => {
                    rds_inc!(stats, rejected);
                    rejected.push(Rejection::new(&r.name, e.to_string()));
                }
            }
        }
        rejected.extend(self.activate_warm_listeners(st, false));
        rejected
    }

    fn check_initialized(&self, st: &State) {
        let clusters_done = st.cds_seen && (st.warming_clusters.is_empty() || st.eds_timed_out);
        let listeners_done = st.lds_seen && (st.warming_listeners.is_empty() || st.rds_timed_out);
        if clusters_done && listeners_done && !*self.initialized.borrow() {
            info!("initial xDS configuration applied");
            self.initialized.send_replace(true);
        }
    }

    /// Marks the first configuration done whatever arrived (the init timeout fired).
    pub fn force_initialized(&self) {
        let mut st = self.lock();
        st.cds_seen = true;
        st.lds_seen = true;
        st.eds_timed_out = true;
        st.rds_timed_out = true;
        let warm: Vec<String> = st.warming_clusters.keys().cloned().collect();
        for n in warm {
            if let Some(dc) = st.warming_clusters.remove(&n) {
                st.clusters.insert(n, dc);
            }
        }
        self.publish_clusters(&st);
        self.activate_warm_listeners(&mut st, true);
        self.initialized.send_replace(true);
    }

    /// Init targets still waiting (`/init_dump`): warming clusters and listeners, and the
    /// resource types not yet received.
    pub fn unready(&self) -> Vec<String> {
        let st = self.lock();
        if *self.initialized.borrow() {
            return Vec::new();
        }
        let mut out = Vec::new();
        if !st.cds_seen {
            out.push("CdsApi".to_string());
        }
        if !st.lds_seen {
            out.push("LdsApi".to_string());
        }
        out.extend(st.warming_clusters.keys().map(|c| format!("Cluster {c}")));
        out.extend(st.warming_listeners.keys().map(|l| format!("Listener {l}")));
        out
    }

    /// The dynamic resources for `/config_dump`.
    pub fn dump(&self) -> DynamicDump {
        dump::build(&self.lock())
    }
}

impl ResourceSink for XdsManager {
    fn apply(&self, u: ResourceUpdate<'_>) -> Vec<Rejection> {
        let mut st = self.lock();
        let rejected = match u.type_url {
            type_url::CLUSTER => {
                let r = self.apply_clusters(&mut st, &u);
                self.update_mesh(&st);
                r
            }
            type_url::ENDPOINT => self.apply_endpoints(&mut st, &u),
            type_url::LISTENER => self.apply_listeners(&mut st, &u),
            type_url::ROUTE => {
                let r = self.apply_routes(&mut st, &u);
                self.update_mesh(&st);
                r
            }
            other => u
                .resources
                .iter()
                .map(|r| Rejection::new(&r.name, format!("resource type {other} is not supported")))
                .collect(),
        };
        self.check_initialized(&st);
        rejected
    }

    fn on_connection_state(&self, connected: bool) {
        self.connected.set(connected as i64);
    }

    fn on_initial_fetch_timeout(&self, type_url: &str) {
        let mut st = self.lock();
        match type_url {
            type_url::CLUSTER => st.cds_seen = true,
            type_url::LISTENER => st.lds_seen = true,
            type_url::ENDPOINT => {
                st.eds_timed_out = true;
                let warm: Vec<String> = st.warming_clusters.keys().cloned().collect();
                for n in warm {
                    if let Some(dc) = st.warming_clusters.remove(&n) {
                        st.clusters.insert(n, dc);
                    }
                }
                self.publish_clusters(&st);
            }
            type_url::ROUTE => {
                st.rds_timed_out = true;
                self.activate_warm_listeners(&mut st, true);
            }
            _ => {}
        }
        warn!("initial fetch of {type_url} timed out");
        self.check_initialized(&st);
    }
}

/// Decodes a resource after checking it against the support table.
fn checked<M: Message + prost::Name + Default>(r: &xds_client::ads::Resource) -> Result<M, String> {
    let report = xds_client::support::check_resource(&r.body);
    if !report.rejections.is_empty() {
        return Err(report.rejections.join("; "));
    }
    for w in report.warnings {
        warn!(resource = %r.name, "{w}");
    }
    r.decode::<M>().map_err(|e| e.to_string())
}

fn set_eds_hosts(cluster: &Cluster, cla: &ClusterLoadAssignment, prev: Option<&HostSet>) {
    let empty = HostSet::default();
    match config::cluster::assignment_hosts(cla, "", false, prev.unwrap_or(&empty)) {
        Ok((membership, _)) => {
            cluster.set_membership(membership);
            cluster.stats.update_success.inc();
        }
        Err(e) => warn!(cluster = %cluster.name, "endpoints rejected: {e}"),
    }
}

/// DNS refresh and ORIGINAL_DST cleanup for a new cluster, on the current runtime.
pub fn spawn_cluster_tasks(cluster: &Arc<Cluster>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if matches!(
        cluster.discovery,
        Discovery::StrictDns(_) | Discovery::LogicalDns(_)
    ) {
        let c = cluster.clone();
        rt.spawn(async move {
            if let Err(e) = dns::resolve(&c).await {
                warn!(cluster = %c.name, "DNS resolution failed: {e}");
            }
            // Refresh until the cluster is replaced (the task holds only a weak interest:
            // it stops when it is the last owner).
            loop {
                let refresh = match &c.discovery {
                    Discovery::StrictDns(t) | Discovery::LogicalDns(t) => t.refresh,
                    _ => return,
                };
                tokio::time::sleep(refresh).await;
                if Arc::strong_count(&c) == 1 {
                    return;
                }
                if let Err(e) = dns::resolve(&c).await {
                    warn!(cluster = %c.name, "DNS refresh failed: {e}");
                }
            }
        });
    }
    if matches!(cluster.discovery, Discovery::OriginalDst { .. }) {
        let c = cluster.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                if Arc::strong_count(&c) == 1 {
                    return;
                }
                c.cleanup_orig_dst();
            }
        });
    }
}

/// Whether every route configuration the listener's connection managers name has arrived.
fn routes_ready(l: &Listener) -> bool {
    l.chains
        .iter()
        .chain(l.default_chain.iter())
        .all(|c| match &c.filter {
            NetworkFilter::Http(h) => h.routes.is_loaded(),
            NetworkFilter::Tcp(_) => true,
        })
}
