//! VM mode: connections to capture addresses are routed by the mesh name they stand for.
//!
//! The mesh DNS answers a mesh service name `N` with an address `A` from the capture range
//! (`240.240.0.0/16`) that Petrel allocated itself: the control plane never saw `A`, so its
//! configuration has no listener for it. A connection to `A:P` is captured to the outbound
//! catch-all (`use_original_dst`), and this module makes it behave as a connection to the
//! service `N` on port `P`, the way it would in Istio where istiod allocated the address and
//! wrote listeners for it. In order:
//!
//! 1. A listener for exactly `A:P`: the control plane does know the address (it allocated the
//!    same one, or the operator wrote it): nothing special, the ordinary hand-off.
//! 2. A listener at a specific address on port `P`, reached only by hand-off
//!    (`bind_to_port: false`), whose `tcp_proxy` targets a cluster
//!    of `N` (`outbound|P|SUBSET|N`, or a cluster named `N`): Istio's per-VIP listener of a
//!    TCP service (`10.96.0.20_5432`, or the `240.240.x.y_P` listener of istiod's own
//!    auto-allocation). The connection is handed to it **as if addressed to that listener's
//!    address**: the capture address means nothing beyond this host, the VIP does (an
//!    `ORIGINAL_DST` cluster behind it connects to the VIP, not to `A`).
//! 3. The wildcard listener `0.0.0.0:P` (`[::]:P`): the ordinary hand-off, exactly as for any
//!    other destination on that port. Istio's HTTP services live there and route by `Host`,
//!    which carries `N`. One exception, see 4.
//! 4. `tcp_proxy` to the cluster `outbound|P||N`, else to a cluster named exactly `N` (a
//!    bootstrap or non-Istio control plane naming clusters after services; such a cluster has
//!    no port, so every port of `N` goes to it). This also wins over step 3 when the wildcard
//!    listener is HTTP only and no route names `N` (`N` is known only from a cluster name): an
//!    HTTP listener could only answer that connection with a 404, while the cluster is the
//!    service. That is a TCP service sharing its port with HTTP services, which Istio serves
//!    from a per-address listener of its own.
//! 5. Nothing: the catch-all's own filter chains, as for any destination without a listener
//!    (Istio's `PassthroughCluster`, or `BlackHoleCluster` under `REGISTRY_ONLY`).
//!
//! Only *allocated* addresses are mapped. Fixed addresses (NDS, static entries) are real and
//! are routed like any other destination. The listener index of step 2 is built once per
//! listener set (a pointer comparison per connection finds out whether it is still current),
//! and the synthetic `tcp_proxy`s of step 4 are built once per cluster; on the connection path
//! there is a hash lookup of the destination address and nothing else, and nothing at all for
//! destinations outside the capture range.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpStream;
use tracing::debug;

use super::{Accepted, Listener, ListenerTable, NetworkFilter};
use crate::config::address::ListenAddr;
use crate::dns::{MeshName, MeshNames, NameContext, NameSource};
use crate::server::Shared;
use crate::stats::{GaugeGuard, Stats};
use crate::tcp_proxy::{TcpProxy, TcpStats, DEFAULT_IDLE_TIMEOUT};

/// What a connection to a capture address does instead of the ordinary hand-off.
#[derive(Debug)]
pub(crate) enum CaptureRoute {
    /// Hand the connection to this listener as if it were addressed to `dst` (step 2).
    Listener(Arc<Listener>, SocketAddr),
    /// Proxy it to this cluster (step 4).
    Cluster(Arc<str>),
}

/// The capture-address router of a process running the mesh DNS (`Shared::capture`).
#[derive(Debug)]
pub struct CaptureRoutes {
    /// The mesh DNS's name table (shared with it; swapped whole on config changes).
    names: Arc<ArcSwap<MeshNames>>,
    /// Step 2's index, for the listener set it was built from.
    index: ArcSwapOption<ServiceListeners>,
    /// Step 4's `tcp_proxy` per cluster name (built once: stats are registered by name).
    proxies: Mutex<HashMap<Arc<str>, Arc<TcpProxy>>>,
    /// Where the synthetic `tcp_proxy`s register their stats.
    stats: Stats,
}

/// Listeners at a specific address, by the service their `tcp_proxy` serves and their port.
#[derive(Debug)]
struct ServiceListeners {
    /// The listener list this index describes (`Shared::listener_list`); a `Weak` keeps its
    /// allocation, so the pointer cannot be reused by a later list while we compare.
    built_from: Weak<Vec<Arc<Listener>>>,
    /// Service name → `(port, listener)`; most services have one or two.
    by_service: HashMap<Arc<str>, Vec<(u16, Arc<Listener>)>>,
}

// === impl CaptureRoutes ===

impl CaptureRoutes {
    /// A router over the mesh DNS's name table.
    pub fn new(names: Arc<ArcSwap<MeshNames>>, stats: Stats) -> Self {
        CaptureRoutes {
            names,
            index: ArcSwapOption::empty(),
            proxies: Mutex::new(HashMap::new()),
            stats,
        }
    }

    /// Where a connection whose original destination is `dst` goes, when `dst` is a capture
    /// address the mesh DNS allocated; `None`: the ordinary hand-off (see the module docs).
    pub(crate) fn route(&self, shared: &Shared, dst: SocketAddr) -> Option<CaptureRoute> {
        let names = self.names.load();
        if !names.cidr().contains(dst.ip()) {
            return None;
        }
        let (service, source) = names.allocated_service(dst.ip())?;
        let listeners = shared.listeners.load();
        // 1. The control plane knows this address.
        if listeners.by_addr.contains_key(&dst) {
            return None;
        }
        // 2. The service's own (VIP) listener on this port.
        let index = self.index_for(shared);
        let on_port = index
            .by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter(|(port, _)| *port == dst.port())
            .map(|(_, l)| l);
        // Same family first (a dual-stack service has a listener per VIP).
        let mut first = None;
        for l in on_port {
            let Some(to) = tcp_addr(l) else { continue };
            if to.is_ipv4() == dst.is_ipv4() {
                first = Some((l, to));
                break;
            }
            first.get_or_insert((l, to));
        }
        if let Some((l, to)) = first {
            debug!(%dst, service, listener = %l.name, "capture address → the service's listener");
            return Some(CaptureRoute::Listener(l.clone(), to));
        }
        // 3. The wildcard listener, unless it is HTTP only and no route names the service
        // (then it could only refuse the connection; step 4 decides).
        if let Some(w) = wildcard(&listeners, dst) {
            if !(http_only(&w) && source == NameSource::Cluster) {
                return None;
            }
        }
        // 4. The service's cluster; without one, the ordinary hand-off (wildcard or step 5).
        let cluster = service_cluster(shared, service, dst.port())?;
        debug!(%dst, service, %cluster, "capture address → the service's cluster");
        Some(CaptureRoute::Cluster(cluster))
    }

    /// Step 2's index for the current listener set, rebuilt when the set changed.
    fn index_for(&self, shared: &Shared) -> Arc<ServiceListeners> {
        let list = shared.listener_list.load_full();
        if let Some(index) = self.index.load_full() {
            if std::ptr::eq(index.built_from.as_ptr(), Arc::as_ptr(&list)) {
                return index;
            }
        }
        // Two connections racing here build the same index; either store is right.
        let index = Arc::new(ServiceListeners::build(&list));
        self.index.store(Some(index.clone()));
        index
    }

    /// The synthetic `tcp_proxy` to `cluster` (Istio's convention: the stat prefix is the
    /// cluster name; Envoy's default idle timeout).
    fn proxy(&self, cluster: &Arc<str>) -> Arc<TcpProxy> {
        // Every insertion completes before the lock is released.
        let mut proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        proxies
            .entry(cluster.clone())
            .or_insert_with(|| {
                Arc::new(TcpProxy {
                    stat_prefix: cluster.clone(),
                    clusters: vec![(cluster.clone(), 1)],
                    total_weight: 1,
                    idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
                    stats: TcpStats::new(&self.stats, cluster),
                })
            })
            .clone()
    }
}

// === impl ServiceListeners ===

impl ServiceListeners {
    fn build(list: &Arc<Vec<Arc<Listener>>>) -> Self {
        let mut by_service: HashMap<Arc<str>, Vec<(u16, Arc<Listener>)>> = HashMap::new();
        for l in list.iter() {
            // Istio's per-address outbound listeners are reached only by hand-off.
            let Some(addr) = tcp_addr(l).filter(|a| !a.ip().is_unspecified() && !l.bind_to_port)
            else {
                continue;
            };
            let mut services: Vec<Arc<str>> = l
                .chains
                .iter()
                .chain(l.default_chain.iter())
                .filter_map(|c| match &c.filter {
                    NetworkFilter::Tcp(tp) => Some(tp),
                    NetworkFilter::Http(_) => None,
                })
                .flat_map(|tp| tp.clusters.iter())
                .filter_map(|(c, _)| MeshName::from_cluster(c, &NameContext::default()))
                .map(|m| m.service)
                .collect();
            services.sort();
            services.dedup();
            for s in services {
                by_service
                    .entry(s)
                    .or_default()
                    .push((addr.port(), l.clone()));
            }
        }
        ServiceListeners {
            built_from: Arc::downgrade(list),
            by_service,
        }
    }
}

// === impl Listener ===

impl Listener {
    /// Step 4: the catch-all accepted a connection to a capture address and proxies it to the
    /// service's cluster (no filter chain of its own applies: none was written for it).
    pub(super) async fn serve_capture_cluster(
        self: Arc<Self>,
        shared: Arc<Shared>,
        stream: TcpStream,
        remote: SocketAddr,
        dst: SocketAddr,
        cluster: Arc<str>,
    ) {
        let Some(router) = shared.capture.get() else {
            return;
        };
        let tp = router.proxy(&cluster);
        self.stats.downstream_cx_total.inc();
        let _active = GaugeGuard::new(&self.stats.downstream_cx_active);
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            listener_drain: self.drain.subscribe(),
            remote,
            local: dst,
            orig_dst: Some(dst),
            sni: None,
        };
        tp.serve(shared, stream, accepted).await;
        self.stats.downstream_cx_destroy.inc();
    }
}

fn tcp_addr(l: &Listener) -> Option<SocketAddr> {
    match &l.addr {
        ListenAddr::Tcp(a) => Some(*a),
        ListenAddr::Pipe(..) => None,
    }
}

/// The wildcard listener of `dst`'s family and port.
fn wildcard(listeners: &ListenerTable, dst: SocketAddr) -> Option<Arc<Listener>> {
    let any = match dst {
        SocketAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    listeners
        .by_addr
        .get(&SocketAddr::new(any, dst.port()))
        .cloned()
}

/// Whether every filter chain of `l` is an HTTP connection manager.
fn http_only(l: &Listener) -> bool {
    l.chains
        .iter()
        .chain(l.default_chain.iter())
        .all(|c| matches!(c.filter, NetworkFilter::Http(_)))
}

/// Step 4's cluster for `service` on `port`, if the configuration has it.
fn service_cluster(shared: &Shared, service: &str, port: u16) -> Option<Arc<str>> {
    let clusters = shared.clusters.load();
    let istio = format!("outbound|{port}||{service}");
    clusters
        .get_key_value(istio.as_str())
        .or_else(|| clusters.get_key_value(service))
        .map(|(k, _)| k.clone())
}

#[cfg(test)]
#[path = "capture_tests.rs"]
mod tests;
