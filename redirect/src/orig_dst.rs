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
