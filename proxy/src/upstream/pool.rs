//! Per-host connection pools, as Envoy's `ConnPoolImplBase` with its circuit breakers.
//!
//! HTTP/1.1: one request per connection at a time. A request takes an idle connection if one
//! is ready; otherwise it waits in the host's pending queue (bounded by the cluster's
//! `max_pending_requests`) and a connection is opened for it if the connections already
//! connecting cannot cover the queue (bounded by `max_connections`; a host with no connection
//! at all always gets one, counting `upstream_cx_overflow`, so its queue can drain). A
//! connection whose exchange completes serves the oldest waiter before it goes idle. A failed
//! connect fails every waiter of the host (Envoy's `purgePendingStreams`), so callers can retry
//! elsewhere.
//!
//! HTTP/2: one multiplexed connection per host; while it connects, requests wait in the same
//! kind of bounded queue. `max_requests` bounds the streams in flight in both protocols and is
//! checked when a request is attached to a connection; its overflow is counted in
//! `upstream_rq_active_overflow`, as Envoy 1.40 does.
//!
//! The pool's lock is a std mutex held only to move connections and waiters between lists,
//! never across an await. A [`Lease`] is what a request holds while it uses a connection: its
//! circuit-breaker request slot, the active-request gauges, and (HTTP/1) the connection, which
//! goes back to the pool only if the response was read to its end.
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpSocket, TcpStream, UnixStream};
use tokio::sync::oneshot;

use super::req_body::UpstreamBody;
use super::{Cluster, Host, HostAddr};
use crate::policy::breaker::{Overflow, Permit, Priority, PriorityBreakers};
use crate::stats::GaugeGuard;

/// Idle HTTP/1 connections kept per host; beyond this a finished connection is closed. Envoy
/// keeps no such cap (its circuit breakers bound total connections); 256 keeps a burst of
/// keep-alive traffic warm without holding sockets indefinitely after it passes.
const MAX_IDLE_H1: usize = 256;

/// The request body type sent upstream.
pub type ReqBody = UpstreamBody;

/// A connection (or stream slot) ready to take one request.
#[derive(Debug)]
pub enum Sender {
    /// An exclusive HTTP/1.1 connection.
    H1(http1::SendRequest<ReqBody>),
    /// A handle on a shared HTTP/2 connection.
    H2(http2::SendRequest<ReqBody>),
}

/// A host's pooled connections and the requests waiting for one.
#[derive(Debug, Default)]
pub struct HostPool {
    inner: Mutex<PoolInner>,
}

#[derive(Debug, Default)]
struct PoolInner {
    /// Ready HTTP/1 connections, most recently used last (Envoy reuses the warmest).
    h1_idle: Vec<H1Conn>,
    /// HTTP/1 connections being established.
    h1_connecting: usize,
    /// HTTP/1 connections carrying a request.
    h1_busy: usize,
    /// Requests waiting for an HTTP/1 connection, oldest first.
    h1_waiters: VecDeque<oneshot::Sender<Result<H1Conn, ConnectError>>>,
    /// The HTTP/2 connection.
    h2: H2State,
    /// Requests waiting for the HTTP/2 connection to be established.
    h2_waiters: VecDeque<oneshot::Sender<Result<H2Conn, ConnectError>>>,
    /// Tells HTTP/2 connections apart (a closed connection only clears its own state).
    h2_generation: u64,
}

#[derive(Debug, Default)]
enum H2State {
    #[default]
    None,
    Connecting,
    Ready(H2Conn),
}

/// An HTTP/1 connection between uses.
#[derive(Debug)]
struct H1Conn {
    sender: http1::SendRequest<ReqBody>,
    /// Requests this connection has carried (`max_requests_per_connection`).
    uses: u32,
    idle_since: Instant,
}

#[derive(Debug, Clone)]
struct H2Conn {
    sender: http2::SendRequest<ReqBody>,
    generation: u64,
}

/// Why no upstream connection could be used. Cheap to clone: one failed connect fails every
/// request that was waiting for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The connect attempt failed (refused, unreachable, ...).
    #[error("{0}")]
    Io(Arc<io::Error>),
    /// `connect_timeout` elapsed.
    #[error("connection timeout")]
    Timeout,
    /// The HTTP handshake failed.
    #[error("handshake: {0}")]
    Handshake(Arc<hyper::Error>),
    /// A circuit breaker refused the request (`max_pending_requests`, `max_requests`).
    #[error("{0}")]
    Overflow(Overflow),
}

/// A request's hold on an upstream connection: released (and an HTTP/1 connection returned
/// to its pool, if the exchange completed) when dropped.
#[derive(Debug)]
pub struct Lease {
    /// The connection to send on.
    pub sender: Option<Sender>,
    host: Arc<Host>,
    cluster: Arc<Cluster>,
    /// The routing priority whose breakers the request counts against.
    priority: Priority,
    /// Requests carried by the HTTP/1 connection, this one included.
    uses: u32,
    /// The exchange completed cleanly: the HTTP/1 connection may be reused.
    reusable: bool,
    _rq: Permit,
    _active: ActiveRq,
}

/// `upstream_rq_active` and the host's active-request count for one request.
#[derive(Debug)]
struct ActiveRq {
    _cluster: GaugeGuard,
    host: Arc<Host>,
}

// === impl HostPool ===

impl HostPool {
    /// Returns a lease on a connection to `host`: a pooled one, or one made for this request
    /// after waiting in the host's pending queue. The request counts against the cluster's
    /// circuit breakers of its routing `priority`.
    pub async fn checkout(
        &self,
        host: &Arc<Host>,
        cluster: &Arc<Cluster>,
        priority: Priority,
        h2: bool,
    ) -> Result<Lease, ConnectError> {
        let breakers = cluster.breakers.priority(priority);
        if h2 {
            let conn = self.checkout_h2(host, cluster, breakers).await?;
            let mut sender = conn.sender.clone();
            // Stream capacity: hyper waits here while the peer's concurrency limit is reached.
            if sender.ready().await.is_err() {
                self.forget_h2(conn.generation);
                return Err(ConnectError::Io(Arc::new(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "HTTP/2 connection closed",
                ))));
            }
            return attach(host, cluster, priority, Sender::H2(sender), 0);
        }
        loop {
            let mut conn = self.checkout_h1(host, cluster, breakers).await?;
            // A returned connection becomes ready once hyper has finished the previous
            // exchange; that is immediate in the common case.
            if conn.sender.ready().await.is_err() {
                self.lost_h1(host, cluster, breakers);
                continue;
            }
            return attach(
                host,
                cluster,
                priority,
                Sender::H1(conn.sender),
                conn.uses + 1,
            );
        }
    }

    async fn checkout_h1(
        &self,
        host: &Arc<Host>,
        cluster: &Arc<Cluster>,
        breakers: &PriorityBreakers,
    ) -> Result<H1Conn, ConnectError> {
        let rx = {
            let mut p = self.lock();
            while let Some(c) = p.h1_idle.pop() {
                if c.sender.is_closed() || expired(&c, cluster) {
                    continue;
                }
                p.h1_busy += 1;
                return Ok(c);
            }
            let pending = breakers
                .try_acquire_pending()
                .map_err(ConnectError::Overflow)?;
            let (tx, rx) = oneshot::channel();
            p.h1_waiters.push_back(tx);
            cluster.stats.upstream_rq_pending_total.inc();
            self.maybe_connect_h1(&mut p, host, cluster, breakers);
            (rx, pending)
        };
        let (rx, _pending) = rx;
        let _waiting = GaugeGuard::new(&cluster.stats.upstream_rq_pending_active);
        match rx.await {
            Ok(r) => r,
            // The pool was dropped with this request still queued (host removed).
            Err(_) => Err(ConnectError::Io(Arc::new(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "upstream host removed",
            )))),
        }
    }

    /// Opens a connection if the queue is longer than what is already connecting (Envoy's
    /// `shouldCreateNewConnection` with a preconnect ratio of 1).
    fn maybe_connect_h1(
        &self,
        p: &mut PoolInner,
        host: &Arc<Host>,
        cluster: &Arc<Cluster>,
        breakers: &PriorityBreakers,
    ) {
        p.h1_waiters.retain(|w| !w.is_closed());
        if p.h1_waiters.len() <= p.h1_connecting {
            return;
        }
        let cx = match breakers.try_acquire_cx() {
            Ok(permit) => permit,
            // At the connection limit: a host with no connection at all still gets one, so its
            // waiters are not stranded (the overflow is counted either way).
            Err(_) if p.h1_idle.is_empty() && p.h1_busy == 0 && p.h1_connecting == 0 => {
                breakers.acquire_cx_uncounted()
            }
            Err(_) => return,
        };
        let host2 = host.clone();
        let cluster = cluster.clone();
        if spawn(async move {
            let res = connect_h1(&host2, &cluster, cx).await;
            host2.pool.on_h1_connected(res);
        }) {
            p.h1_connecting += 1;
        }
    }

    /// Hands a new connection to the oldest waiter (or makes it idle); a failure fails every
    /// waiter.
    fn on_h1_connected(&self, res: Result<H1Conn, ConnectError>) {
        let mut p = self.lock();
        p.h1_connecting = p.h1_connecting.saturating_sub(1);
        match res {
            Ok(conn) => self.dispatch_h1(&mut p, conn),
            Err(e) => {
                while let Some(w) = p.h1_waiters.pop_front() {
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
    }

    /// Gives `conn` to the oldest live waiter, else keeps it idle.
    fn dispatch_h1(&self, p: &mut PoolInner, mut conn: H1Conn) {
        while let Some(w) = p.h1_waiters.pop_front() {
            p.h1_busy += 1;
            match w.send(Ok(conn)) {
                Ok(()) => return,
                Err(Ok(c)) => {
                    p.h1_busy -= 1;
                    conn = c;
                }
                Err(Err(_)) => return,
            }
        }
        if p.h1_idle.len() < MAX_IDLE_H1 {
            conn.idle_since = Instant::now();
            p.h1_idle.push(conn);
        }
    }

    /// A leased HTTP/1 connection ended (returned or closed).
    fn release_h1(
        &self,
        host: &Arc<Host>,
        cluster: &Arc<Cluster>,
        conn: Option<H1Conn>,
        breakers: &PriorityBreakers,
    ) {
        let mut p = self.lock();
        p.h1_busy = p.h1_busy.saturating_sub(1);
        match conn {
            Some(c) if !c.sender.is_closed() => self.dispatch_h1(&mut p, c),
            // A lost connection: if requests are waiting, replace it.
            _ => self.maybe_connect_h1(&mut p, host, cluster, breakers),
        }
    }

    fn lost_h1(&self, host: &Arc<Host>, cluster: &Arc<Cluster>, breakers: &PriorityBreakers) {
        self.release_h1(host, cluster, None, breakers);
    }

    async fn checkout_h2(
        &self,
        host: &Arc<Host>,
        cluster: &Arc<Cluster>,
        breakers: &PriorityBreakers,
    ) -> Result<H2Conn, ConnectError> {
        let waiting = {
            let mut p = self.lock();
            if let H2State::Ready(c) = &p.h2 {
                if !c.sender.is_closed() {
                    return Ok(c.clone());
                }
                p.h2 = H2State::None;
            }
            let pending = breakers
                .try_acquire_pending()
                .map_err(ConnectError::Overflow)?;
            let (tx, rx) = oneshot::channel();
            p.h2_waiters.push_back(tx);
            cluster.stats.upstream_rq_pending_total.inc();
            if matches!(p.h2, H2State::None) {
                // The only connection of this host: made even at the connection limit.
                let cx = breakers
                    .try_acquire_cx()
                    .unwrap_or_else(|_| breakers.acquire_cx_uncounted());
                p.h2 = H2State::Connecting;
                p.h2_generation += 1;
                let generation = p.h2_generation;
                let host = host.clone();
                let cluster = cluster.clone();
                spawn(async move {
                    let res = connect_h2(&host, &cluster, cx, generation).await;
                    host.pool.on_h2_connected(res, generation);
                });
            }
            (rx, pending)
        };
        let (rx, _pending) = waiting;
        let _waiting = GaugeGuard::new(&cluster.stats.upstream_rq_pending_active);
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Io(Arc::new(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "upstream host removed",
            )))),
        }
    }

    fn on_h2_connected(&self, res: Result<H2Conn, ConnectError>, generation: u64) {
        let mut p = self.lock();
        if p.h2_generation != generation {
            return;
        }
        match res {
            Ok(conn) => {
                for w in p.h2_waiters.drain(..) {
                    let _ = w.send(Ok(conn.clone()));
                }
                p.h2 = H2State::Ready(conn);
            }
            Err(e) => {
                p.h2 = H2State::None;
                for w in p.h2_waiters.drain(..) {
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
    }

    /// Forgets the HTTP/2 connection of `generation` (it closed).
    fn forget_h2(&self, generation: u64) {
        let mut p = self.lock();
        if let H2State::Ready(c) = &p.h2 {
            if c.generation == generation {
                p.h2 = H2State::None;
            }
        }
    }

    /// Closes idle connections (drain, host removal).
    pub fn clear(&self) {
        let mut p = self.lock();
        p.h1_idle.clear();
        if let H2State::Ready(_) = p.h2 {
            p.h2 = H2State::None;
        }
    }

    /// Idle HTTP/1 connections (for `/clusters`).
    pub fn idle_len(&self) -> usize {
        self.lock().h1_idle.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolInner> {
        // Pool operations move single entries between lists; a panic elsewhere cannot leave
        // them half-done.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Spawns `f` on the current runtime; false when there is none (a lease dropped while the
/// runtime shuts down), in which case nothing is started.
fn spawn<F>(f: F) -> bool
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(f);
            true
        }
        Err(_) => false,
    }
}

/// Whether an idle connection outlived the cluster's idle timeout.
fn expired(c: &H1Conn, cluster: &Cluster) -> bool {
    cluster
        .idle_timeout
        .is_some_and(|t| c.idle_since.elapsed() >= t)
}

/// Attaches a request to a connection: takes the `max_requests` slot and counts the request,
/// as Envoy's `attachStreamToClient`.
fn attach(
    host: &Arc<Host>,
    cluster: &Arc<Cluster>,
    priority: Priority,
    sender: Sender,
    uses: u32,
) -> Result<Lease, ConnectError> {
    let breakers = cluster.breakers.priority(priority);
    let rq = match breakers.try_acquire_rq() {
        Ok(p) => p,
        Err(o) => {
            // The connection is not used: an HTTP/1 one goes back to serve someone else.
            if let Sender::H1(s) = sender {
                host.pool.release_h1(
                    host,
                    cluster,
                    Some(H1Conn {
                        sender: s,
                        uses: uses.saturating_sub(1),
                        idle_since: Instant::now(),
                    }),
                    breakers,
                );
            }
            return Err(ConnectError::Overflow(o));
        }
    };
    cluster.stats.upstream_rq_total.inc();
    host.stats
        .rq_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    host.active_rq
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Lease {
        sender: Some(sender),
        host: host.clone(),
        cluster: cluster.clone(),
        priority,
        uses,
        reusable: false,
        _rq: rq,
        _active: ActiveRq {
            _cluster: GaugeGuard::new(&cluster.stats.upstream_rq_active),
            host: host.clone(),
        },
    })
}

// === impl Lease ===

impl Lease {
    /// The host this lease is on.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Marks the exchange complete (response read to its end): an HTTP/1 connection may serve
    /// the next request when the lease is dropped.
    pub fn set_reusable(&mut self) {
        self.reusable = true;
    }

    /// Whether this lease is on an HTTP/1 connection.
    pub fn is_h1(&self) -> bool {
        matches!(self.sender, Some(Sender::H1(_)))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(Sender::H1(sender)) = self.sender.take() else {
            return;
        };
        let keep = self.reusable
            && self
                .cluster
                .max_requests_per_connection
                .is_none_or(|max| self.uses < max);
        if self.reusable && !keep {
            self.cluster.stats.upstream_cx_max_requests.inc();
        }
        let conn = keep.then(|| H1Conn {
            sender,
            uses: self.uses,
            idle_since: Instant::now(),
        });
        let breakers = self.cluster.breakers.priority(self.priority);
        self.host
            .pool
            .release_h1(&self.host, &self.cluster, conn, breakers);
    }
}

// === impl ActiveRq ===

impl Drop for ActiveRq {
    fn drop(&mut self) {
        self.host
            .active_rq
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
}

async fn connect_io(host: &Host, cluster: &Cluster) -> Result<Io, ConnectError> {
    let fail = || {
        host.stats
            .cx_connect_fail
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
    let stats = &cluster.stats;
    stats.upstream_cx_total.inc();
    let attempt = async {
        match &host.addr {
            HostAddr::Tcp(addr) => connect_tcp(*addr, cluster.bind).await.map(Io::Tcp),
            HostAddr::Unix(path) => UnixStream::connect(path).await.map(Io::Unix),
        }
    };
    match tokio::time::timeout(cluster.connect_timeout, attempt).await {
        Ok(Ok(io)) => Ok(io),
        Ok(Err(e)) => {
            fail();
            stats.upstream_cx_connect_fail.inc();
            Err(ConnectError::Io(Arc::new(e)))
        }
        Err(_) => {
            fail();
            stats.upstream_cx_connect_fail.inc();
            stats.upstream_cx_connect_timeout.inc();
            Err(ConnectError::Timeout)
        }
    }
}

/// Connects a TCP socket from `bind` (if set) with `TCP_NODELAY`.
pub async fn connect_tcp(addr: SocketAddr, bind: Option<SocketAddr>) -> io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = bind {
        sock.bind(src)?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect_h1(
    host: &Arc<Host>,
    cluster: &Arc<Cluster>,
    cx: Permit,
) -> Result<H1Conn, ConnectError> {
    let io = connect_io(host, cluster).await?;
    let mut builder = http1::Builder::new();
    builder
        .preserve_header_case(cluster.header_case == crate::config::HeaderCase::Preserve)
        .title_case_headers(cluster.header_case == crate::config::HeaderCase::Title);
    macro_rules! handshake {
        ($io:expr) => {{
            let (sender, conn) = builder
                .handshake(TokioIo::new($io))
                .await
                .map_err(|e| ConnectError::Handshake(Arc::new(e)))?;
            let stats = cluster.stats.clone();
            let host_cx = super::HostCx::new(host);
            tokio::spawn(async move {
                // The connection holds its circuit-breaker slot for as long as it is open.
                let _cx = cx;
                let _host_cx = host_cx;
                let _active = GaugeGuard::new(&stats.upstream_cx_active);
                let _ = conn.with_upgrades().await;
                stats.upstream_cx_destroy.inc();
            });
            sender
        }};
    }
    let sender = match io {
        Io::Tcp(s) => handshake!(s),
        Io::Unix(s) => handshake!(s),
    };
    cluster.stats.upstream_cx_http1_total.inc();
    Ok(H1Conn {
        sender,
        uses: 0,
        idle_since: Instant::now(),
    })
}

async fn connect_h2(
    host: &Arc<Host>,
    cluster: &Arc<Cluster>,
    cx: Permit,
    generation: u64,
) -> Result<H2Conn, ConnectError> {
    let io = connect_io(host, cluster).await?;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    // Envoy's defaults: 256 MiB connection window, 256 MiB stream window are far larger than
    // h2's 64 KiB; a small window throttles bulk streams, so match Envoy's scale.
    builder
        .initial_stream_window_size(16 * 1024 * 1024)
        .initial_connection_window_size(64 * 1024 * 1024)
        .keep_alive_interval(None::<Duration>);
    macro_rules! handshake {
        ($io:expr) => {{
            let (sender, conn) = builder
                .handshake(TokioIo::new($io))
                .await
                .map_err(|e| ConnectError::Handshake(Arc::new(e)))?;
            let stats = cluster.stats.clone();
            let host_cx = super::HostCx::new(host);
            let owner = host.clone();
            tokio::spawn(async move {
                let _cx = cx;
                let _host_cx = host_cx;
                let _active = GaugeGuard::new(&stats.upstream_cx_active);
                let _ = conn.await;
                owner.pool.forget_h2(generation);
                stats.upstream_cx_destroy.inc();
            });
            sender
        }};
    }
    let sender = match io {
        Io::Tcp(s) => handshake!(s),
        Io::Unix(s) => handshake!(s),
    };
    cluster.stats.upstream_cx_http2_total.inc();
    Ok(H2Conn { sender, generation })
}
