//! Loopback port allocation.
//!
//! Proxies need their ports written into the bootstrap before they start, so we cannot let them
//! bind `:0`. We hand out ports from 20000..32000, below Linux's ephemeral range (32768..60999),
//! so a port we probed and released is not picked again by the kernel for some other test's
//! `bind(:0)` or outgoing connection. A process-wide cursor means no two tests in one binary get
//! the same port; the bind probe skips ports that other processes hold.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

use socket2::{Domain, Socket, Type};

const FIRST: u32 = 20_000;
const SPAN: u32 = 12_000;

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    // Spread processes (test binaries, other developers' runs) across the range.
    let _ = CURSOR.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + CURSOR.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

/// A loopback address that refuses connections for as long as this value lives: the socket is
/// bound (so nobody else can listen there) but never listens, so a SYN gets a RST.
pub struct ClosedPort {
    _socket: Socket,
    addr: SocketAddr,
}

// === impl ClosedPort ===

impl ClosedPort {
    /// Binds a fresh loopback port without listening on it.
    pub fn new() -> std::io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).into())?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("not an inet socket"))?;
        Ok(Self {
            _socket: socket,
            addr,
        })
    }

    /// The refusing address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}
