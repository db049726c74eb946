//! What is measured: scenarios, the load applied, and the targets (direct, Envoy, Petrel).
//!
//! Ports are fixed because the bootstraps in `benches/configs/` name them; they sit below the
//! kernel's ephemeral range (32768+) so client sockets never take them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::upstream::UpstreamAddrs;

/// Upstream HTTP/1.1 + h2c + gRPC port.
pub const UPSTREAM_HTTP: u16 = 31080;
/// Upstream TCP echo port.
pub const UPSTREAM_ECHO: u16 = 31090;
/// Upstream bulk sink port.
pub const UPSTREAM_SINK: u16 = 31091;
/// Upstream bulk source port.
pub const UPSTREAM_SOURCE: u16 = 31092;

/// The upstream's addresses.
pub fn upstream_addrs() -> UpstreamAddrs {
    UpstreamAddrs {
        http: local(UPSTREAM_HTTP),
        echo: local(UPSTREAM_ECHO),
        sink: local(UPSTREAM_SINK),
        source: local(UPSTREAM_SOURCE),
    }
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A traffic shape, with the bootstrap that proxies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// HTTP/1.1 through the HTTP router (wrk).
    Http1,
    /// h2c downstream and upstream through the HTTP router (h2load).
    H2c,
    /// gRPC unary over h2c through the HTTP router (h2load).
    Grpc,
    /// HTTP/1.1 through tcp_proxy (wrk).
    TcpHttp,
    /// 64-byte ping-pong through tcp_proxy (own load generator).
    TcpEcho,
    /// One connection writing 64 KiB chunks through tcp_proxy (own load generator).
    BulkUp,
    /// One connection reading 64 KiB chunks through tcp_proxy (own load generator).
    BulkDown,
    /// A new HTTP/1.1 connection per request through the HTTP router (own load generator).
    Churn,
}

/// How load is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Load {
    /// Closed loop with this many connections, one request in flight on each.
    Closed(u32),
    /// This many requests per second over [`FIXED_RATE_CONNS`] connections.
    Rate(u32),
}

/// Connections of the fixed-rate runs.
pub const FIXED_RATE_CONNS: u32 = 16;

/// What the load is sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The upstream itself: the floor.
    Direct,
    /// Envoy 1.40.0.
    Envoy,
    /// Petrel.
    Petrel,
}

// === impl Scenario ===

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 8] = [
        Scenario::Http1,
        Scenario::H2c,
        Scenario::Grpc,
        Scenario::TcpHttp,
        Scenario::TcpEcho,
        Scenario::BulkUp,
        Scenario::BulkDown,
        Scenario::Churn,
    ];

    /// Short name, used in file names and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Http1 => "http1",
            Scenario::H2c => "h2c",
            Scenario::Grpc => "grpc",
            Scenario::TcpHttp => "tcp-http",
            Scenario::TcpEcho => "tcp-echo",
            Scenario::BulkUp => "bulk-up",
            Scenario::BulkDown => "bulk-down",
            Scenario::Churn => "churn",
        }
    }

    /// Human title for the report.
    pub fn title(self) -> &'static str {
        match self {
            Scenario::Http1 => "HTTP/1.1 router",
            Scenario::H2c => "h2c router",
            Scenario::Grpc => "gRPC unary (h2c router)",
            Scenario::TcpHttp => "TCP proxy carrying HTTP/1.1",
            Scenario::TcpEcho => "TCP echo, 64 B messages",
            Scenario::BulkUp => "bulk TCP upload, 64 KiB writes",
            Scenario::BulkDown => "bulk TCP download, 64 KiB reads",
            Scenario::Churn => "connection churn (HTTP/1.1, new connection per request)",
        }
    }

    /// The bootstrap (in `benches/configs/`) both proxies run for this scenario.
    pub fn config(self) -> &'static str {
        match self {
            Scenario::Http1 | Scenario::Churn => "http1.yaml",
            Scenario::H2c | Scenario::Grpc => "h2c.yaml",
            Scenario::TcpHttp => "tcp_http.yaml",
            Scenario::TcpEcho => "tcp_echo.yaml",
            Scenario::BulkUp | Scenario::BulkDown => "tcp_bulk.yaml",
        }
    }

    /// Where the load goes for a target.
    pub fn addr(self, target: Target) -> SocketAddr {
        let direct = matches!(target, Target::Direct);
        local(match self {
            Scenario::Http1 | Scenario::Churn if !direct => 31000,
            Scenario::H2c | Scenario::Grpc if !direct => 31001,
            Scenario::TcpHttp if !direct => 31002,
            Scenario::TcpEcho if !direct => 31003,
            Scenario::BulkUp if !direct => 31004,
            Scenario::BulkDown if !direct => 31005,
            Scenario::Http1 | Scenario::Churn | Scenario::H2c | Scenario::Grpc => UPSTREAM_HTTP,
            Scenario::TcpHttp => UPSTREAM_HTTP,
            Scenario::TcpEcho => UPSTREAM_ECHO,
            Scenario::BulkUp => UPSTREAM_SINK,
            Scenario::BulkDown => UPSTREAM_SOURCE,
        })
    }

    /// The closed-loop levels that make sense: bulk is one connection by definition.
    pub fn closed_levels(self, levels: &[u32]) -> Vec<u32> {
        match self {
            Scenario::BulkUp | Scenario::BulkDown => vec![1],
            _ => levels.to_vec(),
        }
    }

    /// Whether fixed-rate latency runs apply (request/response scenarios oha can drive).
    pub fn fixed_rate(self) -> bool {
        matches!(self, Scenario::Http1 | Scenario::H2c | Scenario::TcpHttp)
    }

    /// Whether throughput is reported in Gbit/s rather than req/s.
    pub fn is_bulk(self) -> bool {
        matches!(self, Scenario::BulkUp | Scenario::BulkDown)
    }

    /// Parses [`Scenario::name`].
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .with_context(|| format!("unknown scenario {s:?}"))
    }
}

// === impl Load ===

impl Load {
    /// `c16` or `r1000`.
    pub fn label(self) -> String {
        match self {
            Load::Closed(c) => format!("c{c}"),
            Load::Rate(r) => format!("r{r}"),
        }
    }
}

// === impl Target ===

impl Target {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Envoy => "envoy",
            Target::Petrel => "petrel",
        }
    }

    /// Report title.
    pub fn title(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Envoy => "Envoy",
            Target::Petrel => "Petrel",
        }
    }
}

/// One HTTP/1.1 GET on a new connection; fails unless the answer is `200`.
pub fn http1_get(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        let head = String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned();
        bail!("GET {path} via {addr}: {head:?}");
    }
    Ok(())
}

/// One echo round trip on a new connection.
pub fn echo_once(addr: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    if &buf != b"ping" {
        bail!("echo via {addr} answered {buf:?}");
    }
    Ok(())
}

/// One read of at least one byte from the bulk source.
pub fn read_some(addr: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 1024];
    if s.read(&mut buf)? == 0 {
        bail!("bulk source via {addr} closed at once");
    }
    Ok(())
}
