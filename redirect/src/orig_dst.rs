//! Reading the original destination of a redirected connection.
//!
//! iptables `REDIRECT` (and nftables `redirect`) rewrite the destination of a connection to the
//! proxy's port; conntrack keeps the address the client asked for. `SO_ORIGINAL_DST`
//! (`IP6T_SO_ORIGINAL_DST` for IPv6) reads it back. socket2 wraps both getsockopts, so no
//! `unsafe` is needed here (the same approach as linkerd2-proxy).
use std::io;
use std::net::SocketAddr;

use socket2::SockRef;

/// The destination a captured client originally connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

/// Returns the original destination of `sock`, a connection accepted on a capture port.
///
/// The family of the local address decides which option is asked: an IPv4-mapped IPv6
/// socket still carries IPv4 conntrack state, so it is asked with the IPv4 option first.
pub fn original_dst<S: std::os::fd::AsFd>(sock: &S) -> io::Result<OrigDstAddr> {
    let sock = SockRef::from(sock);
    let local = sock.local_addr()?;
    let addr = match local.as_socket() {
        Some(SocketAddr::V6(v6)) if v6.ip().to_ipv4_mapped().is_none() => sock.original_dst_v6()?,
        Some(SocketAddr::V6(_)) => sock.original_dst_v4().or_else(|_| sock.original_dst_v6())?,
        _ => sock.original_dst_v4()?,
    };
    addr.as_socket().map(OrigDstAddr).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_ORIGINAL_DST returned a non-IP address",
        )
    })
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// Without a redirect, the kernel reports either the real destination (conntrack saw the
    /// connection) or an error (no conntrack entry); never a different address, never a panic.
    #[test]
    fn unredirected_connection_reports_its_own_destination_or_an_error() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = TcpListener::bind(bind) else {
                continue; // no IPv6 on this host
            };
            let addr = listener.local_addr().expect("local addr");
            let _client = TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            if let Ok(orig) = original_dst(&server) {
                assert_eq!(orig.0, addr);
            }
        }
    }

    #[test]
    fn listener_socket_is_an_error_not_a_panic() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        assert!(original_dst(&listener).is_err());
    }
}
