use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::dns::{CaptureCidr, NameContext};

/// Istio-shaped outbound config: the catch-all, a TCP service with a VIP listener (`cache`),
/// an HTTP listener on 9080 routing `reviews` by name, and clusters of TCP services known only
/// by name (`db` on 5432, `mq` sharing 9080 with HTTP, `ledger` named plainly).
const BOOTSTRAP: &str = r#"
static_resources:
  listeners:
  - name: virtualOutbound
    address: {socket_address: {address: 0.0.0.0, port_value: 15001}}
    use_original_dst: true
    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: PassthroughCluster
          cluster: PassthroughCluster
  - name: 10.96.0.20_7000
    address: {socket_address: {address: 10.96.0.20, port_value: 7000}}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: "outbound|7000||cache.default.svc.cluster.local"
          cluster: "outbound|7000||cache.default.svc.cluster.local"
  - name: 0.0.0.0_9080
    address: {socket_address: {address: 0.0.0.0, port_value: 9080}}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound_0.0.0.0_9080
          route_config:
            virtual_hosts:
            - name: reviews
              domains: ["reviews.default.svc.cluster.local:9080"]
              routes: [{match: {prefix: "/"}, route: {cluster: "outbound|9080||reviews.default.svc.cluster.local"}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - {name: PassthroughCluster, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, connect_timeout: 1s}
  - {name: "outbound|7000||cache.default.svc.cluster.local", type: STATIC, connect_timeout: 1s}
  - {name: "outbound|9080||reviews.default.svc.cluster.local", type: STATIC, connect_timeout: 1s}
  - {name: "outbound|5432||db.default.svc.cluster.local", type: STATIC, connect_timeout: 1s}
  - {name: "outbound|9080||mq.default.svc.cluster.local", type: STATIC, connect_timeout: 1s}
  - {name: ledger.example.com, type: STATIC, connect_timeout: 1s}
"#;

struct World {
    shared: Shared,
    routes: CaptureRoutes,
    names: Arc<ArcSwap<MeshNames>>,
}

impl World {
    fn new() -> Self {
        let bootstrap = xds_client::bootstrap::load(None, Some(BOOTSTRAP), Default::default())
            .expect("bootstrap")
            .bootstrap;
        let stats = Stats::default();
        let ctx = crate::config::BuildCtx {
            stats: &stats,
            routes: None,
            xds: false,
        };
        let cfg = crate::config::build_static(&bootstrap, &ctx).expect("compiles");
        let shared = Shared::new(stats.clone(), serde_json::Value::Null, Default::default());
        shared.clusters.store(Arc::new(cfg.clusters));
        let names =
            crate::mesh::Mesh::new(CaptureCidr::default(), NameContext::default(), &bootstrap)
                .names;
        let world = World {
            routes: CaptureRoutes::new(names.clone(), stats),
            names,
            shared,
        };
        world.set_listeners(cfg.listeners);
        world
    }

    fn set_listeners(&self, list: Vec<Arc<Listener>>) {
        let mut table = ListenerTable::default();
        for l in &list {
            if let ListenAddr::Tcp(a) = &l.addr {
                table.by_addr.insert(*a, l.clone());
            }
        }
        self.shared.listeners.store(Arc::new(table));
        self.shared.listener_list.store(Arc::new(list));
    }

    fn addr(&self, name: &str, port: u16) -> SocketAddr {
        let ip = self.names.load().resolve(name).expect("a mesh name");
        assert!(CaptureCidr::default().contains(ip), "{name} → {ip}");
        SocketAddr::new(ip, port)
    }

    /// The decision as text: `listener NAME @ DST`, `cluster NAME` or `ordinary`.
    fn route(&self, dst: SocketAddr) -> String {
        match self.routes.route(&self.shared, dst) {
            Some(CaptureRoute::Listener(l, to)) => format!("listener {} @ {to}", l.name),
            Some(CaptureRoute::Cluster(c)) => format!("cluster {c}"),
            None => "ordinary".into(),
        }
    }
}

#[test]
fn tcp_service_with_a_vip_listener_is_handed_to_it_as_if_addressed_to_the_vip() {
    let w = World::new();
    assert_eq!(
        w.route(w.addr("cache.default.svc.cluster.local", 7000)),
        "listener 10.96.0.20_7000 @ 10.96.0.20:7000"
    );
}

#[test]
fn tcp_service_without_a_listener_is_proxied_to_its_istio_cluster() {
    let w = World::new();
    assert_eq!(
        w.route(w.addr("db.default.svc.cluster.local", 5432)),
        "cluster outbound|5432||db.default.svc.cluster.local"
    );
    // Another port of the same service has no cluster: the catch-all decides.
    assert_eq!(
        w.route(w.addr("db.default.svc.cluster.local", 6000)),
        "ordinary"
    );
}

#[test]
fn http_service_goes_to_the_wildcard_listener_that_routes_it_by_host() {
    let w = World::new();
    assert_eq!(
        w.route(w.addr("reviews.default.svc.cluster.local", 9080)),
        "ordinary"
    );
}

#[test]
fn tcp_service_sharing_a_port_with_http_is_proxied_to_its_cluster() {
    let w = World::new();
    // No route names mq: the HTTP listener on 9080 could only answer 404.
    assert_eq!(
        w.route(w.addr("mq.default.svc.cluster.local", 9080)),
        "cluster outbound|9080||mq.default.svc.cluster.local"
    );
}

#[test]
fn plainly_named_cluster_serves_every_port_of_its_service() {
    let w = World::new();
    assert_eq!(
        w.route(w.addr("ledger.example.com", 1234)),
        "cluster ledger.example.com"
    );
}

#[test]
fn other_destinations_are_left_alone() {
    let w = World::new();
    for dst in [
        "10.96.0.20:7000",
        "10.1.2.3:5432",
        // The network address of the range is never allocated.
        "240.240.0.0:5432",
        "[fd00::1]:5432",
    ] {
        assert_eq!(w.route(dst.parse().unwrap()), "ordinary", "{dst}");
    }
}

#[test]
fn a_listener_for_the_capture_address_itself_wins() {
    let w = World::new();
    let db = w.addr("db.default.svc.cluster.local", 5432);
    let mut list: Vec<Arc<Listener>> = (**w.shared.listener_list.load()).clone();
    let mut table = ListenerTable {
        by_addr: w.shared.listeners.load().by_addr.clone(),
    };
    table.by_addr.insert(db, list[0].clone());
    w.shared.listeners.store(Arc::new(table));
    list.push(list[0].clone());
    w.shared.listener_list.store(Arc::new(list));
    assert_eq!(w.route(db), "ordinary");
}

#[test]
fn listener_index_follows_listener_changes() {
    let w = World::new();
    let cache = w.addr("cache.default.svc.cluster.local", 7000);
    assert!(w.route(cache).starts_with("listener "));
    remove_vip_listener(&w);
    // Without its VIP listener the service is still reachable through its cluster.
    assert_eq!(
        w.route(cache),
        "cluster outbound|7000||cache.default.svc.cluster.local"
    );
}

fn remove_vip_listener(w: &World) {
    let list: Vec<Arc<Listener>> = w
        .shared
        .listener_list
        .load()
        .iter()
        .filter(|l| &*l.name != "10.96.0.20_7000")
        .cloned()
        .collect();
    w.set_listeners(list);
}

#[test]
fn fixed_addresses_are_not_capture_addresses() {
    let w = World::new();
    // A static entry gives ledger a real address inside the range: the control plane routes
    // it, so the capture mapping (which would pick the ledger cluster) stays out of the way.
    let fixed: IpAddr = "240.240.7.7".parse().unwrap();
    let entries = vec![
        crate::dns::MeshName::new("ledger.example.com", NameSource::Static)
            .unwrap()
            .with_addrs([fixed]),
    ];
    w.names.store(Arc::new(w.names.load().rebuild(entries)));
    assert_eq!(w.route(SocketAddr::new(fixed, 1234)), "ordinary");
}
