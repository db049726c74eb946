//! A TCP echo server and a one-shot TCP client.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::client::EXCHANGE_TIMEOUT;

/// A running echo server: writes back every byte it reads, then closes when the peer does.
/// Stops when dropped.
pub struct TcpEcho {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

// === impl TcpEcho ===

impl TcpEcho {
    /// Starts an echo server on a fresh loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(listener, connections.clone()));
        Ok(Self {
            addr,
            connections,
            task,
        })
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, connections: Arc<AtomicUsize>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                conns.spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Connects to `addr`, sends `payload` while concurrently reading the same number of bytes back
/// (so large payloads cannot deadlock on full buffers), then half-closes and reads until the peer
/// closes. Returns everything read.
///
/// The half-close comes only after the echo: Envoy's tcp_proxy may reset a connection whose FIN
/// arrives before its upstream connection is established, which is not what these tests probe.
pub async fn roundtrip(addr: SocketAddr, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut r, mut w) = s.split();
        let mut out = vec![0u8; payload.len()];
        let (wrote, read) = tokio::join!(w.write_all(payload), r.read_exact(&mut out));
        wrote.context("writing")?;
        read.context("reading the echo")?;
        w.shutdown().await?;
        r.read_to_end(&mut out).await.context("reading to close")?;
        Ok(out)
    })
    .await
    .context("TCP roundtrip timed out")?
}

/// Connects to `addr`, sends `payload`, and waits for the peer to close; returns how many bytes
/// came back. A reset counts as a close (a proxy that closes with our bytes unread sends RST).
pub async fn until_closed(addr: SocketAddr, payload: &[u8]) -> anyhow::Result<usize> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let _ = s.write_all(payload).await;
        let mut n = 0;
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => return Ok(n),
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(n),
                Err(e) => return Err(e.into()),
            }
        }
    })
    .await
    .context("connection not closed in time")?
}

/// From a chosen local (source) IP such as `127.0.0.2`: connects to `addr`, sends `payload` and
/// reads back exactly as many bytes, without half-closing first (a listener filter such as
/// `tls_inspector` treats an early FIN as a reason to drop the connection).
pub async fn echo_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    payload: &[u8],
) -> anyhow::Result<Vec<u8>> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let mut s = socket
            .connect(addr)
            .await
            .with_context(|| format!("connecting to {addr} from {source}"))?;
        s.write_all(payload).await?;
        let mut out = vec![0u8; payload.len()];
        s.read_exact(&mut out).await.context("reading the echo")?;
        Ok(out)
    })
    .await
    .context("TCP echo timed out")?
}
