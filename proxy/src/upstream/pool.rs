//! Per-host connection pools: HTTP/1.1 keep-alive connections (one request at a time each)
//! and one multiplexed HTTP/2 connection.
//!
//! The pool's locks are std mutexes held only to push or pop a sender, never across an
//! await. An HTTP/1 sender comes back to the pool when the response body has been read to
//! its end (see `body::ProxyBody`); a sender whose body was abandoned is dropped, which
//! closes that connection, as Envoy does with a half-read response.
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpSocket, TcpStream, UnixStream};

use super::{Cluster, Host, HostAddr};
use crate::stats::GaugeGuard;

/// Idle HTTP/1 connections kept per host; beyond this a finished connection is closed.
/// Envoy keeps no such cap (its circuit breakers bound total connections); 256 keeps a burst
/// of keep-alive traffic warm without holding sockets indefinitely after it passes.
const MAX_IDLE_H1: usize = 256;

/// The request body type sent upstream: the downstream body, streamed as it arrives.
pub type ReqBody = Incoming;

/// A connection (or stream slot) ready to take one request.
#[derive(Debug)]
pub enum Sender {
    /// An exclusive HTTP/1.1 connection.
    H1(http1::SendRequest<ReqBody>),
    /// A handle on a shared HTTP/2 connection.
    H2(http2::SendRequest<ReqBody>),
}

/// A host's pooled connections.
#[derive(Debug, Default)]
pub struct HostPool {
    h1_idle: Mutex<Vec<http1::SendRequest<ReqBody>>>,
    /// The shared HTTP/2 connection, or the one attempt to make it that every request
    /// arriving meanwhile waits on (Envoy queues such requests as pending streams rather
    /// than opening one connection each).
    h2: Mutex<Option<Arc<H2Slot>>>,
}

type H2Slot = tokio::sync::OnceCell<Result<http2::SendRequest<ReqBody>, ConnectError>>;

/// Why no upstream connection could be used. Cheap to clone: one failed HTTP/2 connect
/// fails every request that was waiting for it.
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
}

// === impl HostPool ===

impl HostPool {
    /// Returns a sender for `host`, reusing a pooled connection or connecting a new one.
    pub async fn checkout(
        &self,
        host: &Arc<Host>,
        cluster: &Cluster,
        h2: bool,
    ) -> Result<Sender, ConnectError> {
        if h2 {
            // Two rounds: a cached connection may turn out closed, then one fresh attempt.
            for _ in 0..2 {
                let slot = lock(&self.h2).get_or_insert_with(Default::default).clone();
                let res = slot.get_or_init(|| connect_h2(host, cluster)).await;
                match res {
                    Ok(s) if !s.is_closed() => {
                        let mut s = s.clone();
                        if s.ready().await.is_ok() {
                            return Ok(Sender::H2(s));
                        }
                        self.reset_h2(&slot);
                    }
                    Ok(_) => self.reset_h2(&slot),
                    Err(e) => {
                        let e = e.clone();
                        self.reset_h2(&slot);
                        return Err(e);
                    }
                }
            }
            return connect_h2(host, cluster).await.map(Sender::H2);
        }
        loop {
            let idle = lock(&self.h1_idle).pop();
            let Some(mut s) = idle else { break };
            if s.is_closed() {
                continue;
            }
            // A returned connection becomes ready once hyper has finished the previous
            // exchange; that is immediate in the common case.
            if s.ready().await.is_ok() {
                return Ok(Sender::H1(s));
            }
        }
        connect_h1(host, cluster).await.map(Sender::H1)
    }

    /// Forgets `slot` if it is still the current HTTP/2 connection.
    fn reset_h2(&self, slot: &Arc<H2Slot>) {
        let mut g = lock(&self.h2);
        if g.as_ref().is_some_and(|s| Arc::ptr_eq(s, slot)) {
            *g = None;
        }
    }

    /// Returns an HTTP/1 connection whose exchange completed.
    pub fn put_h1(&self, s: http1::SendRequest<ReqBody>) {
        if s.is_closed() {
            return;
        }
        let mut idle = lock(&self.h1_idle);
        if idle.len() < MAX_IDLE_H1 {
            idle.push(s);
        }
    }

    /// Closes idle connections (drain, host removal).
    pub fn clear(&self) {
        lock(&self.h1_idle).clear();
        lock(&self.h2).take();
    }

    /// Idle HTTP/1 connections (for `/clusters`).
    pub fn idle_len(&self) -> usize {
        lock(&self.h1_idle).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Pool operations are single pushes/pops; a panic elsewhere cannot leave them half-done.
    m.lock().unwrap_or_else(|p| p.into_inner())
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

async fn connect_tcp(addr: SocketAddr, bind: Option<SocketAddr>) -> io::Result<TcpStream> {
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
    cluster: &Cluster,
) -> Result<http1::SendRequest<ReqBody>, ConnectError> {
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
    Ok(sender)
}

async fn connect_h2(
    host: &Arc<Host>,
    cluster: &Cluster,
) -> Result<http2::SendRequest<ReqBody>, ConnectError> {
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
            tokio::spawn(async move {
                let _host_cx = host_cx;
                let _active = GaugeGuard::new(&stats.upstream_cx_active);
                let _ = conn.await;
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
    Ok(sender)
}
