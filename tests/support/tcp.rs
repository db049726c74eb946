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

/// Connects to `addr`, sends `payload`, half-closes, and reads until the peer closes.
pub async fn roundtrip(addr: SocketAddr, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        s.write_all(payload).await?;
        s.shutdown().await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    })
    .await
    .context("TCP roundtrip timed out")?
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
