//! The mesh DNS server: UDP and TCP on one address, local answers for mesh names, everything
//! else forwarded to the host's resolvers.
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn, Instrument};

use super::names::MeshNames;
use super::wire;
use crate::stats::{Counter, Stats};

/// Where the mesh DNS listens by default (the port `petrel redirect --vm` sends DNS to).
pub const DEFAULT_DNS_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    15053,
));

/// How long one upstream gets to answer before the next is tried. Two seconds leaves room
/// for a second upstream inside glibc's default 5 s client timeout.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// TTL of local answers (Istio's DNS proxy uses 30 s): short enough that a removed service
/// stops resolving soon, long enough to spare the proxy a query per connection.
pub const DEFAULT_LOCAL_TTL: u32 = 30;

/// Queries forwarded at once (UDP and TCP together); past it UDP queries are dropped (the
/// client retries) and TCP connections wait. Bounds memory under a query flood.
const MAX_IN_FLIGHT: usize = 1024;

/// TCP connections open at once.
const MAX_TCP_CONNECTIONS: usize = 256;

/// A TCP client that sends nothing for this long is closed (RFC 7766 suggests seconds).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the mesh DNS runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// UDP and TCP listen address (port 0 picks one, the same for both).
    pub listen: SocketAddr,
    /// Resolvers for names we do not own, tried in order (`ResolvConf::nameservers`).
    pub upstreams: Vec<SocketAddr>,
    /// Time each upstream gets.
    pub upstream_timeout: Duration,
    /// TTL of local answers.
    pub ttl: u32,
}

/// A bound mesh DNS server; [`DnsServer::run`] serves it.
#[derive(Debug)]
pub struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    names: Arc<ArcSwap<MeshNames>>,
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    ttl: u32,
    in_flight: Arc<Semaphore>,
    metrics: DnsMetrics,
}

/// `dns.*` counters.
#[derive(Clone, Debug)]
struct DnsMetrics {
    /// Every parsed or unparsable query received.
    requests: Counter,
    /// Queries answered from the mesh name table.
    local_answers: Counter,
    /// Queries sent to an upstream.
    forwarded: Counter,
    /// Forwarded queries no upstream answered (SERVFAIL sent).
    upstream_failures: Counter,
    /// Packets dropped because they are not DNS queries.
    malformed: Counter,
    /// UDP answers cut to the client's buffer size (TC set).
    truncated: Counter,
    /// Truncated upstream UDP answers fetched again over TCP.
    tcp_fallback: Counter,
    /// UDP queries dropped because too many were in flight.
    overflow: Counter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("no upstream resolver configured")]
    NoUpstream,
    #[error("upstream {0} timed out")]
    Timeout(SocketAddr),
    #[error("upstream {0}: {1}")]
    Io(SocketAddr, io::Error),
    #[error("upstream {0} answered with a message that is not an answer to our query")]
    Mismatch(SocketAddr),
}

// === impl DnsConfig ===

impl DnsConfig {
    /// The defaults (127.0.0.1:15053) with these upstreams.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        DnsConfig {
            listen: DEFAULT_DNS_ADDR,
            upstreams,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            ttl: DEFAULT_LOCAL_TTL,
        }
    }
}

// === impl DnsServer ===

impl DnsServer {
    /// Binds UDP and TCP on `cfg.listen`. Upstreams equal to the listen address are dropped
    /// (they would loop).
    pub async fn bind(
        cfg: DnsConfig,
        names: Arc<ArcSwap<MeshNames>>,
        stats: &Stats,
    ) -> io::Result<Self> {
        let (udp, tcp) = bind_pair(cfg.listen).await?;
        let local = udp.local_addr()?;
        let upstreams: Vec<SocketAddr> = cfg
            .upstreams
            .into_iter()
            .filter(|u| {
                let own = *u == local;
                if own {
                    warn!(upstream = %u, "ignoring the mesh DNS's own address as an upstream");
                }
                !own
            })
            .collect();
        let metrics = DnsMetrics::new(stats);
        info!(addr = %local, ?upstreams, "mesh DNS listening");
        Ok(DnsServer {
            udp: Arc::new(udp),
            tcp,
            inner: Arc::new(Inner {
                names,
                upstreams,
                timeout: cfg.upstream_timeout,
                ttl: cfg.ttl,
                in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                metrics,
            }),
        })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Serves until `shutdown` completes. Queries in flight finish on their own tasks.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let DnsServer { udp, tcp, inner } = self;
        let udp_loop = serve_udp(udp, inner.clone()).instrument(tracing::info_span!("dns_udp"));
        let tcp_loop = serve_tcp(tcp, inner).instrument(tracing::info_span!("dns_tcp"));
        tokio::select! {
            _ = shutdown => debug!("mesh DNS stopped"),
            _ = udp_loop => {},
            _ = tcp_loop => {},
        }
    }
}

/// UDP and TCP on the same address. With port 0 the kernel picks the UDP port, which TCP may
/// already use elsewhere: try a few ports.
async fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut attempts = if addr.port() == 0 { 16 } else { 1 };
    loop {
        let udp = UdpSocket::bind(addr).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempts > 1 => attempts -= 1,
            Err(e) => return Err(e),
        }
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, inner: Arc<Inner>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier replies surface here on some systems; keep serving.
                debug!(error = %e, "mesh DNS UDP receive failed");
                continue;
            }
        };
        let Ok(permit) = inner.in_flight.clone().try_acquire_owned() else {
            inner.metrics.requests.inc();
            inner.metrics.overflow.inc();
            continue;
        };
        let packet = buf[..n].to_vec();
        let (sock, inner) = (sock.clone(), inner.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(resp) = inner.handle(&packet, Transport::Udp).await {
                if let Err(e) = sock.send_to(&resp, peer).await {
                    debug!(%peer, error = %e, "mesh DNS UDP send failed");
                }
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, inner: Arc<Inner>) {
    let conns = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let Ok(permit) = conns.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "mesh DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                if let Err(e) = serve_tcp_conn(stream, &inner).await {
                    debug!(error = %e, "mesh DNS TCP connection closed");
                }
            }
            .instrument(tracing::debug_span!("dns_tcp_conn", %peer)),
        );
    }
}

/// One TCP client: length-prefixed queries answered in order (RFC 7766 allows it).
async fn serve_tcp_conn(mut stream: TcpStream, inner: &Inner) -> io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut msg)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        let resp = {
            let _permit = inner.in_flight.acquire().await;
            inner.handle(&msg, Transport::Tcp).await
        };
        match resp {
            Some(resp) => write_framed(&mut stream, &resp).await?,
            // A malformed message on a stream: the framing cannot be trusted any more.
            None => return Ok(()),
        }
    }
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message over 64 KiB"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

// === impl Inner ===

impl Inner {
    /// The reply to one query; `None` drops it (malformed).
    async fn handle(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let m = &self.metrics;
        m.requests.inc();
        let query = match Message::from_vec(packet) {
            Ok(q) if q.message_type() == MessageType::Query => q,
            _ => {
                m.malformed.inc();
                return None;
            }
        };
        let local = {
            let names = self.names.load();
            wire::local_answer(&query, &names, self.ttl)
        };
        let answer = match local {
            Some(resp) => {
                m.local_answers.inc();
                resp.to_vec().ok()?
            }
            None => {
                m.forwarded.inc();
                match self.forward(packet, &query, transport).await {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "forwarding failed; SERVFAIL");
                        m.upstream_failures.inc();
                        wire::servfail(&query)?
                    }
                }
            }
        };
        match transport {
            Transport::Tcp => Some(answer),
            Transport::Udp => {
                let limit = wire::client_udp_limit(&query);
                if answer.len() > limit {
                    m.truncated.inc();
                }
                wire::fit_udp(answer, &query, limit)
            }
        }
    }

    /// Sends the client's bytes unchanged (id, flags, EDNS and all) to each upstream in
    /// turn. SERVFAIL and REFUSED move on to the next upstream, like a stub resolver; if all
    /// fail that way the last such answer is returned.
    async fn forward(
        &self,
        packet: &[u8],
        query: &Message,
        transport: Transport,
    ) -> Result<Vec<u8>, UpstreamError> {
        let mut last_err = UpstreamError::NoUpstream;
        let mut last_answer = None;
        for &up in &self.upstreams {
            let r = match transport {
                Transport::Udp => self.forward_udp(up, packet, query).await,
                Transport::Tcp => forward_tcp(up, packet, query, self.timeout).await,
            };
            match r {
                Ok(a) => {
                    let rcode = a.get(3).map(|b| b & 0x0f);
                    let retry = matches!(rcode, Some(2 | 5)); // SERVFAIL, REFUSED
                    if !retry {
                        return Ok(a);
                    }
                    debug!(upstream = %up, rcode = ?rcode, "upstream refused or failed; trying the next");
                    last_answer = Some(a);
                }
                Err(e) => {
                    debug!(error = %e, "upstream failed");
                    last_err = e;
                }
            }
        }
        last_answer.ok_or(last_err)
    }

    async fn forward_udp(
        &self,
        up: SocketAddr,
        packet: &[u8],
        query: &Message,
    ) -> Result<Vec<u8>, UpstreamError> {
        let io = |e| UpstreamError::Io(up, e);
        // A fresh socket per query: a random source port is the only entropy left when the
        // client's query id is kept, and replies to other queries cannot arrive on it.
        let bind: SocketAddr = if up.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(bind).await.map_err(io)?;
        sock.connect(up).await.map_err(io)?;
        sock.send(packet).await.map_err(io)?;
        let mut buf = vec![0u8; 65535];
        let answer = tokio::time::timeout(self.timeout, async {
            loop {
                let n = sock.recv(&mut buf).await.map_err(io)?;
                if answers(&buf[..n], query) {
                    return Ok::<_, UpstreamError>(buf[..n].to_vec());
                }
                debug!(upstream = %up, "ignoring a UDP message that does not answer our query");
            }
        })
        .await
        .map_err(|_| UpstreamError::Timeout(up))??;
        // TC: the upstream could not fit the answer; get it whole over TCP (then cut it to
        // the client's size ourselves if needed).
        if answer.get(2).is_some_and(|b| b & 0x02 != 0) {
            self.metrics.tcp_fallback.inc();
            return forward_tcp(up, packet, query, self.timeout).await;
        }
        Ok(answer)
    }
}

async fn forward_tcp(
    up: SocketAddr,
    packet: &[u8],
    query: &Message,
    timeout: Duration,
) -> Result<Vec<u8>, UpstreamError> {
    let io = |e| UpstreamError::Io(up, e);
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(up).await.map_err(io)?;
        write_framed(&mut stream, packet).await.map_err(io)?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.map_err(io)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await.map_err(io)?;
        if answers(&buf, query) {
            Ok(buf)
        } else {
            Err(UpstreamError::Mismatch(up))
        }
    })
    .await
    .map_err(|_| UpstreamError::Timeout(up))?
}

/// Whether `bytes` is a response with the query's id and question.
fn answers(bytes: &[u8], query: &Message) -> bool {
    match wire::header_and_question(bytes) {
        Some((h, qs)) => {
            h.message_type() == MessageType::Response
                && h.id() == query.id()
                && (qs.as_slice() == query.queries()
                    // Some servers omit the question in errors (e.g. FORMERR).
                    || (qs.is_empty() && h.response_code() != ResponseCode::NoError))
        }
        None => false,
    }
}

// === impl DnsMetrics ===

impl DnsMetrics {
    fn new(stats: &Stats) -> Self {
        DnsMetrics {
            requests: stats.counter("dns.requests"),
            local_answers: stats.counter("dns.local_answers"),
            forwarded: stats.counter("dns.forwarded"),
            upstream_failures: stats.counter("dns.upstream_failures"),
            malformed: stats.counter("dns.malformed"),
            truncated: stats.counter("dns.truncated"),
            tcp_fallback: stats.counter("dns.tcp_fallback"),
            overflow: stats.counter("dns.overflow"),
        }
    }
}
