//! Load generators for the scenarios that wrk, h2load and oha do not cover.
//!
//! Each one runs on a current-thread runtime (the harness pins it, with the upstream, to the core
//! the proxy does not use), prints one JSON [`LoadResult`] on stdout, and stops by itself after
//! its duration. Latencies are kept as raw microsecond samples: a run yields at most a few
//! million, and sorting them gives exact percentiles without another dependency.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::upstream::CHUNK;

/// What one measured load run produced.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadResult {
    /// Successful requests (or echoed messages, or 64 KiB bulk writes).
    pub requests: u64,
    /// Failed requests, connection errors and unexpected statuses.
    pub errors: u64,
    /// Measured wall time.
    pub seconds: f64,
    /// `requests / seconds`.
    pub rps: f64,
    /// Bulk scenarios only: payload throughput.
    pub gbps: Option<f64>,
    /// Latency percentiles in microseconds (0 when the tool does not measure latency).
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
}

/// The request the churn scenario sends on each new connection.
pub const CHURN_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

/// Size of one TCP echo message: a small RPC.
pub const ECHO_SIZE: usize = 64;

// === impl LoadResult ===

impl LoadResult {
    /// Builds a result from latency samples (µs) of successful requests.
    pub fn from_samples(mut samples: Vec<u32>, errors: u64, seconds: f64) -> Self {
        samples.sort_unstable();
        let requests = samples.len() as u64;
        Self {
            requests,
            errors,
            seconds,
            rps: requests as f64 / seconds.max(1e-9),
            gbps: None,
            p50_us: percentile(&samples, 50.0),
            p90_us: percentile(&samples, 90.0),
            p99_us: percentile(&samples, 99.0),
            p999_us: percentile(&samples, 99.9),
        }
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // The epsilon keeps 99.9% of 1000 at rank 999 despite 0.999 * 1000 = 999.0000000000001.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Closed-loop ping-pong of [`ECHO_SIZE`]-byte messages over `conns` persistent connections.
pub fn echo(addr: SocketAddr, conns: u32, duration: Duration) -> anyhow::Result<LoadResult> {
    runtime()?.block_on(async move {
        let end = Instant::now() + duration;
        let start = Instant::now();
        let tasks: Vec<_> = (0..conns)
            .map(|_| tokio::spawn(echo_conn(addr, end)))
            .collect();
        let mut samples = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (s, e) = t.await?;
            samples.extend(s);
            errors += e;
        }
        Ok(LoadResult::from_samples(
            samples,
            errors,
            start.elapsed().as_secs_f64(),
        ))
    })
}

async fn echo_conn(addr: SocketAddr, end: Instant) -> (Vec<u32>, u64) {
    let mut samples = Vec::with_capacity(1 << 16);
    let mut stream = match connect(addr).await {
        Ok(s) => s,
        Err(_) => return (samples, 1),
    };
    let msg = [0x5au8; ECHO_SIZE];
    let mut buf = [0u8; ECHO_SIZE];
    while Instant::now() < end {
        let t0 = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(2), async {
            stream.write_all(&msg).await?;
            stream.read_exact(&mut buf).await
        })
        .await;
        match r {
            Ok(Ok(_)) => samples.push(t0.elapsed().as_micros() as u32),
            _ => return (samples, 1),
        }
    }
    (samples, 0)
}

/// Closed loop of one HTTP/1.1 request per new connection, on `conns` concurrent workers.
///
/// The request says `Connection: close`, the response is read to EOF, and the socket is then
/// closed with `SO_LINGER` 0: the server has already closed its side, so the reset only spares
/// both sides a TIME_WAIT entry, which at tens of thousands of connections per second would
/// exhaust loopback ports.
pub fn churn(addr: SocketAddr, conns: u32, duration: Duration) -> anyhow::Result<LoadResult> {
    runtime()?.block_on(async move {
        let end = Instant::now() + duration;
        let start = Instant::now();
        let tasks: Vec<_> = (0..conns)
            .map(|_| tokio::spawn(churn_worker(addr, end)))
            .collect();
        let mut samples = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (s, e) = t.await?;
            samples.extend(s);
            errors += e;
        }
        Ok(LoadResult::from_samples(
            samples,
            errors,
            start.elapsed().as_secs_f64(),
        ))
    })
}

async fn churn_worker(addr: SocketAddr, end: Instant) -> (Vec<u32>, u64) {
    let mut samples = Vec::with_capacity(1 << 14);
    let mut errors = 0u64;
    let mut buf = Vec::with_capacity(1024);
    while Instant::now() < end {
        let t0 = Instant::now();
        buf.clear();
        let r = tokio::time::timeout(Duration::from_secs(2), async {
            let mut s = connect(addr).await?;
            s.write_all(CHURN_REQUEST).await?;
            s.read_to_end(&mut buf).await?;
            let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
            Ok::<_, std::io::Error>(())
        })
        .await;
        match r {
            Ok(Ok(())) if buf.starts_with(b"HTTP/1.1 200") => {
                samples.push(t0.elapsed().as_micros() as u32)
            }
            _ => {
                errors += 1;
                // Do not spin on a refusing listener; the run fails on its error ratio anyway.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    (samples, errors)
}

/// One connection moving [`CHUNK`]-byte writes for `duration`: to the sink (`upload`), or from
/// the source. A "request" is one chunk.
pub fn bulk(addr: SocketAddr, upload: bool, duration: Duration) -> anyhow::Result<LoadResult> {
    runtime()?.block_on(async move {
        let mut stream = connect(addr).await?;
        let mut buf = vec![0u8; CHUNK];
        let start = Instant::now();
        let end = start + duration;
        let mut bytes = 0u64;
        while Instant::now() < end {
            let n = tokio::time::timeout(Duration::from_secs(2), async {
                if upload {
                    stream.write_all(&buf).await.map(|_| CHUNK)
                } else {
                    stream.read(&mut buf).await
                }
            })
            .await??;
            if n == 0 {
                anyhow::bail!("bulk peer closed after {bytes} bytes");
            }
            bytes += n as u64;
        }
        let seconds = start.elapsed().as_secs_f64();
        let requests = bytes / CHUNK as u64;
        Ok(LoadResult {
            requests,
            errors: 0,
            seconds,
            rps: requests as f64 / seconds,
            gbps: Some(bytes as f64 * 8.0 / seconds / 1e9),
            ..LoadResult::default()
        })
    })
}

/// Opens `count` idle connections, prints `{"opened":N,"failed":M}`, and holds them until killed
/// or until `hold` elapses (so it can never outlive a harness that died).
pub fn hold(addr: SocketAddr, count: u32, hold: Duration) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let mut conns = Vec::with_capacity(count as usize);
        let mut failed = 0u32;
        for _ in 0..count {
            match connect(addr).await {
                Ok(s) => conns.push(s),
                Err(_) => failed += 1,
            }
        }
        println!(
            "{}",
            serde_json::json!({ "opened": conns.len(), "failed": failed })
        );
        tokio::time::sleep(hold).await;
        drop(conns);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), 500.0);
        assert_eq!(percentile(&v, 99.0), 990.0);
        assert_eq!(percentile(&v, 99.9), 999.0);
        assert_eq!(percentile(&v, 100.0), 1000.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn echo_and_bulk_against_the_upstream_on_ephemeral_ports() {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let addrs = crate::upstream::UpstreamAddrs {
            http: free(),
            echo: free(),
            sink: free(),
            source: free(),
        };
        std::thread::spawn(move || crate::upstream::run(addrs, false));
        let ready = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            crate::scenario::echo_once(addrs.echo).is_ok()
        });
        assert!(ready, "upstream did not come up");
        crate::scenario::http1_get(addrs.http, "/").unwrap();
        let r = echo(addrs.echo, 2, Duration::from_millis(200)).unwrap();
        assert!(r.requests > 0 && r.errors == 0, "{r:?}");
        let r = churn(addrs.http, 2, Duration::from_millis(200)).unwrap();
        assert!(r.requests > 0 && r.errors == 0, "{r:?}");
        let r = bulk(addrs.sink, true, Duration::from_millis(200)).unwrap();
        assert!(r.gbps.unwrap() > 0.0, "{r:?}");
        let r = bulk(addrs.source, false, Duration::from_millis(200)).unwrap();
        assert!(r.gbps.unwrap() > 0.0, "{r:?}");
    }
}
