//! `envoy.filters.network.tcp_proxy`: pick a cluster (fixed or weighted), connect to a host,
//! and copy bytes both ways with half-close and an idle timeout.
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tracing::debug;

use crate::listener::Accepted;
use crate::policy::outlier::Outcome;
use crate::server::Shared;
use crate::stats::{Counter, Stats};
use crate::upstream::{Discovery, HostAddr, PickCtx};

/// Envoy's default tcp_proxy idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A compiled tcp_proxy filter.
#[derive(Debug)]
pub struct TcpProxy {
    /// `stat_prefix`.
    pub stat_prefix: Arc<str>,
    /// Cluster(s) with cumulative weights (one entry for a plain `cluster`).
    pub clusters: Vec<(Arc<str>, u64)>,
    /// Sum of weights.
    pub total_weight: u64,
    /// Idle timeout; `None` disables it.
    pub idle_timeout: Option<Duration>,
    /// Stats.
    pub stats: TcpStats,
}

/// `tcp.<stat_prefix>.` stats.
#[derive(Debug, Clone)]
pub struct TcpStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_no_route: Counter,
    pub downstream_cx_rx_bytes_total: Counter,
    pub downstream_cx_tx_bytes_total: Counter,
    pub idle_timeout: Counter,
    pub upstream_flush_total: Counter,
}

impl TcpStats {
    /// Registers `tcp.<prefix>.` stats.
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        let c = |s: &str| stats.counter(&format!("tcp.{prefix}.{s}"));
        TcpStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_no_route: c("downstream_cx_no_route"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            idle_timeout: c("idle_timeout"),
            upstream_flush_total: c("upstream_flush_total"),
        }
    }
}

// === impl TcpProxy ===

impl TcpProxy {
    fn pick_cluster(&self) -> &Arc<str> {
        if self.clusters.len() == 1 {
            return &self.clusters[0].0;
        }
        let v = rand::rng().random_range(0..self.total_weight.max(1));
        self.clusters
            .iter()
            .find(|(_, upper)| v < *upper)
            .map(|(c, _)| c)
            .unwrap_or(&self.clusters[self.clusters.len() - 1].0)
    }

    /// Proxies one downstream connection.
    pub async fn serve<S>(self: Arc<Self>, shared: Arc<Shared>, mut downstream: S, conn: Accepted)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.stats.downstream_cx_total.inc();
        let cluster_name = self.pick_cluster();
        let Some(cluster) = shared.cluster(cluster_name) else {
            debug!(cluster = %cluster_name, "tcp_proxy: unknown cluster");
            self.stats.downstream_cx_no_route.inc();
            return;
        };
        let host = match &cluster.discovery {
            Discovery::OriginalDst { .. } => conn.orig_dst.map(|d| cluster.orig_dst_host(d)),
            _ => cluster.pick(&PickCtx::default()),
        };
        let Some(host) = host else {
            cluster.stats.upstream_cx_none_healthy.inc();
            return;
        };
        cluster.stats.upstream_cx_total.inc();
        let connect = async {
            match &host.addr {
                HostAddr::Tcp(addr) => {
                    let sock = if addr.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    if let Some(src) = cluster.bind {
                        sock.bind(src)?;
                    }
                    let s = sock.connect(*addr).await?;
                    s.set_nodelay(true)?;
                    Ok::<_, std::io::Error>(Upstream::Tcp(s))
                }
                HostAddr::Unix(p) => tokio::net::UnixStream::connect(p).await.map(Upstream::Unix),
            }
        };
        let upstream = match tokio::time::timeout(cluster.connect_timeout, connect).await {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => {
                debug!(host = %host.addr, "tcp_proxy connect failed: {e}");
                host.stats
                    .cx_connect_fail
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                cluster.stats.upstream_cx_connect_fail.inc();
                cluster.record_outcome(&host, Outcome::ConnectFailed);
                return;
            }
            Err(_) => {
                cluster.stats.upstream_cx_connect_fail.inc();
                cluster.stats.upstream_cx_connect_timeout.inc();
                cluster.record_outcome(&host, Outcome::Timeout);
                return;
            }
        };
        cluster.record_outcome(&host, Outcome::ConnectSuccessFinal);
        let _active = crate::stats::GaugeGuard::new(&cluster.stats.upstream_cx_active);
        let _host_cx = crate::upstream::HostCx::new(&host);
        let result = match upstream {
            Upstream::Tcp(mut u) => pump(&mut downstream, &mut u, self.idle_timeout).await,
            Upstream::Unix(mut u) => pump(&mut downstream, &mut u, self.idle_timeout).await,
        };
        self.stats.downstream_cx_rx_bytes_total.add(result.rx);
        self.stats.downstream_cx_tx_bytes_total.add(result.tx);
        if result.idle {
            self.stats.idle_timeout.inc();
        }
        cluster.stats.upstream_cx_destroy.inc();
    }
}

enum Upstream {
    Tcp(TcpStream),
    Unix(tokio::net::UnixStream),
}

struct Pumped {
    rx: u64,
    tx: u64,
    idle: bool,
}

/// Copies both ways until both sides have closed, an error occurs, or nothing moved for
/// `idle`. A read EOF on one side is passed on as a write shutdown (half-close).
async fn pump<D, U>(down: &mut D, up: &mut U, idle: Option<Duration>) -> Pumped
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut dbuf = vec![0u8; 16 * 1024];
    let mut ubuf = vec![0u8; 16 * 1024];
    let (mut down_open, mut up_open) = (true, true);
    let mut out = Pumped {
        rx: 0,
        tx: 0,
        idle: false,
    };
    let far = Duration::from_secs(365 * 24 * 3600);
    let idle = idle.unwrap_or(far);
    let mut deadline = tokio::time::Instant::now() + idle;
    while down_open || up_open {
        tokio::select! {
            r = down.read(&mut dbuf), if down_open => match r {
                Ok(0) => { down_open = false; let _ = up.shutdown().await; }
                Ok(n) => {
                    if up.write_all(&dbuf[..n]).await.is_err() { break; }
                    out.rx += n as u64;
                    deadline = tokio::time::Instant::now() + idle;
                }
                Err(_) => break,
            },
            r = up.read(&mut ubuf), if up_open => match r {
                Ok(0) => { up_open = false; let _ = down.shutdown().await; }
                Ok(n) => {
                    if down.write_all(&ubuf[..n]).await.is_err() { break; }
                    out.tx += n as u64;
                    deadline = tokio::time::Instant::now() + idle;
                }
                Err(_) => break,
            },
            _ = tokio::time::sleep_until(deadline) => { out.idle = true; break; }
        }
    }
    out
}
