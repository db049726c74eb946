//! Listeners: accept, original-destination handoff, listener filters, filter chain
//! selection, then the network filter (`tcp_proxy` or `http_connection_manager`).
mod capture;
mod chain;
mod cidr;
pub mod inspect;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener};
use tracing::{debug, warn};

pub use capture::CaptureRoutes;
pub use cidr::Cidr;

use crate::config::address::ListenAddr;
use crate::http::HttpConnMgr;
use crate::server::Shared;
use crate::stats::{Counter, Gauge, GaugeGuard, Stats};
use crate::tcp_proxy::TcpProxy;

/// How long listener filters may wait for the first bytes (Envoy's `listener_filters_timeout`).
const INSPECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A compiled listener.
#[derive(Debug)]
pub struct Listener {
    /// Name.
    pub name: Arc<str>,
    /// Address.
    pub addr: ListenAddr,
    /// Whether it binds its own socket (false: reachable only by original-destination handoff).
    pub bind_to_port: bool,
    /// Hand connections to the listener of their original destination.
    pub use_original_dst: bool,
    /// `envoy.filters.listener.original_dst` configured.
    pub original_dst_filter: bool,
    /// `envoy.filters.listener.tls_inspector` configured.
    pub tls_inspector: bool,
    /// `envoy.filters.listener.http_inspector` configured.
    pub http_inspector: bool,
    /// Filter chains.
    pub chains: Vec<FilterChain>,
    /// Used when no chain matches.
    pub default_chain: Option<FilterChain>,
    /// `traffic_direction: INBOUND` (for `/drain_listeners?inboundonly`).
    pub inbound: bool,
    /// Turns true when this listener is replaced or removed: its connections drain.
    pub drain: tokio::sync::watch::Sender<bool>,
    /// Stats.
    pub stats: ListenerStats,
}

/// A filter chain.
#[derive(Debug)]
pub struct FilterChain {
    /// Name.
    pub name: Arc<str>,
    /// When it applies.
    pub matcher: ChainMatch,
    /// What it does.
    pub filter: NetworkFilter,
}

/// `FilterChainMatch`.
#[derive(Debug, Default)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<Cidr>,
    pub server_names: Vec<String>,
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
    pub direct_source_prefix_ranges: Vec<Cidr>,
    pub source_type: SourceType,
    pub source_prefix_ranges: Vec<Cidr>,
    pub source_ports: Vec<u16>,
}

/// `FilterChainMatch.source_type`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum SourceType {
    #[default]
    Any,
    SameIpOrLoopback,
    External,
}

/// The terminal network filter of a chain.
#[derive(Debug, Clone)]
pub enum NetworkFilter {
    /// `envoy.filters.network.tcp_proxy`.
    Tcp(Arc<TcpProxy>),
    /// `envoy.filters.network.http_connection_manager`.
    Http(Arc<HttpConnMgr>),
}

/// What chain selection looks at.
#[derive(Debug)]
pub struct ConnInfo<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub sni: Option<&'a str>,
    pub transport_protocol: &'a str,
    pub alpn: &'a [&'a str],
}

/// Per-listener stats (`listener.<addr>.`).
#[derive(Debug, Clone)]
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_destroy: Counter,
    pub no_filter_chain_match: Counter,
}

/// A downstream connection handed to a network filter.
#[derive(Debug)]
pub struct Accepted {
    /// Turns true when the listener that accepted this connection is replaced or removed.
    pub listener_drain: tokio::sync::watch::Receiver<bool>,
    /// The peer.
    pub remote: SocketAddr,
    /// The address the client connected to (the original destination when captured).
    pub local: SocketAddr,
    /// The original destination, when the `original_dst` listener filter found one.
    pub orig_dst: Option<SocketAddr>,
    /// SNI seen by the TLS inspector.
    pub sni: Option<String>,
}

// === impl ListenerStats ===

impl ListenerStats {
    /// Registers the stats of a listener whose stat prefix is `prefix` (`listener.<prefix>.`).
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        let p = format!("listener.{prefix}.");
        ListenerStats {
            downstream_cx_total: stats.counter(&format!("{p}downstream_cx_total")),
            downstream_cx_active: stats.gauge(&format!("{p}downstream_cx_active")),
            downstream_cx_destroy: stats.counter(&format!("{p}downstream_cx_destroy")),
            no_filter_chain_match: stats.counter(&format!("{p}no_filter_chain_match")),
        }
    }
}

/// Envoy's stat prefix for a listener address: `127.0.0.1_10000`, `[::1]_10000` → `::1_10000`.
pub fn stat_prefix_for(addr: &ListenAddr) -> String {
    match addr {
        // Envoy renders the address as `ip:port` (`[v6]:port`) and replaces `:` with `_`.
        ListenAddr::Tcp(a) => a.to_string().replace(':', "_"),
        ListenAddr::Pipe(p, _) => p.display().to_string(),
    }
}

// === impl Listener ===

impl Listener {
    /// Asks this listener's connections to drain (it was replaced or removed).
    pub fn start_drain(&self) {
        self.drain.send_replace(true);
    }

    /// Runs the filter chain for an accepted TCP connection.
    pub async fn handle_tcp(
        self: Arc<Self>,
        shared: Arc<Shared>,
        stream: TcpStream,
        remote: SocketAddr,
        handoff: bool,
    ) {
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        // Original destination: read it, and if this is the catch-all listener, hand the
        // connection to the listener bound (or not bound) at that address.
        let mut orig_dst = None;
        // Envoy adds the original_dst listener filter itself when use_original_dst is set.
        if (self.original_dst_filter || self.use_original_dst) && !handoff {
            if let Ok(dst) = redirect::original_dst(&stream) {
                if dst.0 != local {
                    orig_dst = Some(dst.0);
                }
            }
        }
        if let (true, Some(dst), false) = (self.use_original_dst, orig_dst, handoff) {
            // VM mode: a capture address stands for the mesh service it was allocated for.
            let routed = shared.capture.get().and_then(|c| c.route(&shared, dst));
            match routed {
                Some(capture::CaptureRoute::Listener(target, to))
                    if !Arc::ptr_eq(&target, &self) =>
                {
                    return Box::pin(target.handle_tcp_with_dst(shared, stream, remote, to)).await;
                }
                Some(capture::CaptureRoute::Cluster(c)) => {
                    return self
                        .serve_capture_cluster(shared, stream, remote, dst, c)
                        .await;
                }
                _ => {}
            }
            if let Some(target) = shared.listener_for(dst) {
                if !Arc::ptr_eq(&target, &self) {
                    debug!(listener = %target.name, %dst, "original destination handoff");
                    return Box::pin(target.handle_tcp_with_dst(shared, stream, remote, dst)).await;
                }
            }
        }
        self.handle_tcp_with_dst(shared, stream, remote, orig_dst.unwrap_or(local))
            .await
    }

    async fn handle_tcp_with_dst(
        self: Arc<Self>,
        shared: Arc<Shared>,
        stream: TcpStream,
        remote: SocketAddr,
        dst: SocketAddr,
    ) {
        self.stats.downstream_cx_total.inc();
        let _active = GaugeGuard::new(&self.stats.downstream_cx_active);
        let _ = stream.set_nodelay(true);
        let inspected = if self.tls_inspector || self.http_inspector {
            inspect::inspect(
                &stream,
                self.tls_inspector,
                self.http_inspector,
                INSPECT_TIMEOUT,
            )
            .await
        } else {
            inspect::Inspected {
                transport_protocol: "raw_buffer",
                ..Default::default()
            }
        };
        let alpn: Vec<&str> = inspected.alpn.iter().map(String::as_str).collect();
        let info = ConnInfo {
            src: remote,
            dst,
            sni: inspected.sni.as_deref(),
            transport_protocol: inspected.transport_protocol,
            alpn: &alpn,
        };
        let Some(chain) = chain::select(&self.chains, &info).or(self.default_chain.as_ref()) else {
            self.stats.no_filter_chain_match.inc();
            debug!(listener = %self.name, %remote, %dst, "no filter chain matched; closing");
            self.stats.downstream_cx_destroy.inc();
            return;
        };
        let accepted = Accepted {
            listener_drain: self.drain.subscribe(),
            remote,
            local: dst,
            orig_dst: (dst != stream.local_addr().unwrap_or(dst)).then_some(dst),
            sni: inspected.sni.clone(),
        };
        match &chain.filter {
            NetworkFilter::Tcp(tp) => tp.clone().serve(shared, stream, accepted).await,
            NetworkFilter::Http(hcm) => hcm.clone().serve(shared, stream, accepted).await,
        }
        self.stats.downstream_cx_destroy.inc();
    }

    /// Runs the filter chain for a Unix socket connection (no IP matching criteria apply).
    pub async fn handle_unix(self: Arc<Self>, shared: Arc<Shared>, stream: tokio::net::UnixStream) {
        self.stats.downstream_cx_total.inc();
        let _active = GaugeGuard::new(&self.stats.downstream_cx_active);
        let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let info = ConnInfo {
            src: unspecified,
            dst: unspecified,
            sni: None,
            transport_protocol: "raw_buffer",
            alpn: &[],
        };
        let Some(chain) = chain::select(&self.chains, &info).or(self.default_chain.as_ref()) else {
            self.stats.no_filter_chain_match.inc();
            return;
        };
        let accepted = Accepted {
            listener_drain: self.drain.subscribe(),
            remote: unspecified,
            local: unspecified,
            orig_dst: None,
            sni: None,
        };
        match &chain.filter {
            NetworkFilter::Tcp(tp) => tp.clone().serve(shared, stream, accepted).await,
            NetworkFilter::Http(hcm) => hcm.clone().serve(shared, stream, accepted).await,
        }
        self.stats.downstream_cx_destroy.inc();
    }
}

/// A bound listener socket.
pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Binds a listener's socket (SO_REUSEADDR, as Envoy).
pub fn bind(addr: &ListenAddr) -> std::io::Result<Bound> {
    match addr {
        ListenAddr::Tcp(a) => {
            let domain = if a.is_ipv4() {
                socket2::Domain::IPV4
            } else {
                socket2::Domain::IPV6
            };
            let sock =
                socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
            sock.set_reuse_address(true)?;
            if a.is_ipv6() {
                // Envoy binds [::] dual-stack only when ipv4_compat is set; plain v6 otherwise.
                sock.set_only_v6(a.ip() != IpAddr::V6(Ipv6Addr::UNSPECIFIED))?;
            }
            sock.set_nonblocking(true)?;
            sock.bind(&(*a).into())?;
            sock.listen(1024)?;
            Ok(Bound::Tcp(TcpListener::from_std(sock.into())?))
        }
        ListenAddr::Pipe(path, mode) => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)?;
            if *mode != 0 {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))?;
            }
            Ok(Bound::Unix(l))
        }
    }
}

/// Accepts connections until `stop` fires, handing each to the slot's current listener.
pub async fn accept_loop(
    slot: Arc<crate::runtime::ListenerSlot>,
    bound: Bound,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = crate::http::drained(&mut stop) => break,
            res = accept(&bound) => match res {
                Ok(Conn::Tcp(stream, remote)) => {
                    let l = slot.current.load_full();
                    let s = shared.clone();
                    tokio::spawn(async move { l.handle_tcp(s, stream, remote, false).await });
                }
                Ok(Conn::Unix(stream)) => {
                    let l = slot.current.load_full();
                    let s = shared.clone();
                    tokio::spawn(async move { l.handle_unix(s, stream).await });
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(listener = %slot.current.load().name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

enum Conn {
    Tcp(TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(bound: &Bound) -> std::io::Result<Conn> {
    match bound {
        Bound::Tcp(l) => l.accept().await.map(|(s, a)| Conn::Tcp(s, a)),
        Bound::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
    }
}

/// Listeners by address, for original-destination handoff.
#[derive(Debug, Default)]
pub struct ListenerTable {
    /// All listeners (bound or not) by TCP address.
    pub by_addr: HashMap<SocketAddr, Arc<Listener>>,
}

impl ListenerTable {
    /// The listener for original destination `dst`: exact address, then the wildcard
    /// address of the same family and port (Istio's virtualOutbound model).
    pub fn lookup(&self, dst: SocketAddr) -> Option<Arc<Listener>> {
        if let Some(l) = self.by_addr.get(&dst) {
            return Some(l.clone());
        }
        let any = match dst.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        self.by_addr.get(&SocketAddr::new(any, dst.port())).cloned()
    }
}

#[cfg(test)]
mod tests;
