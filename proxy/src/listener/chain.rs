//! Filter chain selection, by Envoy's rules: criteria are tried in a fixed order
//! (destination port, destination IP, server name, transport protocol, application
//! protocols, direct source IP, source type, source IP, source port); at each step the
//! chains with the most specific match survive, and chains that leave the criterion empty
//! survive only if no chain matched it specifically.
use std::net::IpAddr;

use super::{Cidr, ConnInfo, FilterChain, SourceType};

/// Picks the filter chain for a connection, or `None` (then the default chain, if any).
pub fn select<'a>(chains: &'a [FilterChain], conn: &ConnInfo<'_>) -> Option<&'a FilterChain> {
    let mut cands: Vec<&FilterChain> = chains.iter().collect();
    let dst = conn.dst;
    let src = conn.src;

    // Destination port.
    narrow(&mut cands, |c| match c.matcher.destination_port {
        Some(p) if p == dst.port() => Some(1),
        Some(_) => None,
        None => Some(0),
    });
    // Destination IP: longest matching prefix.
    narrow(&mut cands, |c| {
        cidr_rank(&c.matcher.prefix_ranges, dst.ip())
    });
    // Server name: exact beats the longest wildcard.
    narrow(&mut cands, |c| {
        if c.matcher.server_names.is_empty() {
            return Some(0);
        }
        let sni = conn.sni?;
        c.matcher
            .server_names
            .iter()
            .filter_map(|n| {
                if n.eq_ignore_ascii_case(sni) {
                    Some(usize::MAX)
                } else if let Some(suffix) = n.strip_prefix('*') {
                    (sni.len() > suffix.len()
                        && sni
                            .to_ascii_lowercase()
                            .ends_with(&suffix.to_ascii_lowercase()))
                    .then_some(suffix.len() + 1)
                } else {
                    None
                }
            })
            .max()
    });
    // Transport protocol.
    narrow(&mut cands, |c| match &c.matcher.transport_protocol {
        Some(tp) if tp == conn.transport_protocol => Some(1),
        Some(_) => None,
        None => Some(0),
    });
    // Application protocols.
    narrow(&mut cands, |c| {
        if c.matcher.application_protocols.is_empty() {
            Some(0)
        } else if c
            .matcher
            .application_protocols
            .iter()
            .any(|p| conn.alpn.contains(&p.as_str()))
        {
            Some(1)
        } else {
            None
        }
    });
    // Direct source IP (the peer of the socket; same as source without PROXY protocol).
    narrow(&mut cands, |c| {
        cidr_rank(&c.matcher.direct_source_prefix_ranges, src.ip())
    });
    // Source type.
    narrow(&mut cands, |c| match c.matcher.source_type {
        SourceType::Any => Some(0),
        SourceType::SameIpOrLoopback if src.ip().is_loopback() || src.ip() == dst.ip() => Some(1),
        SourceType::External if !(src.ip().is_loopback() || src.ip() == dst.ip()) => Some(1),
        _ => None,
    });
    // Source IP.
    narrow(&mut cands, |c| {
        cidr_rank(&c.matcher.source_prefix_ranges, src.ip())
    });
    // Source port.
    narrow(&mut cands, |c| {
        if c.matcher.source_ports.is_empty() {
            Some(0)
        } else if c.matcher.source_ports.contains(&src.port()) {
            Some(1)
        } else {
            None
        }
    });
    cands.first().copied()
}

/// Keeps the candidates with the highest rank; `None` ranks drop out.
fn narrow(cands: &mut Vec<&FilterChain>, rank: impl Fn(&FilterChain) -> Option<usize>) {
    let ranked: Vec<(Option<usize>, &FilterChain)> = cands.iter().map(|c| (rank(c), *c)).collect();
    let best = ranked.iter().filter_map(|(r, _)| *r).max();
    cands.clear();
    if let Some(best) = best {
        cands.extend(
            ranked
                .into_iter()
                .filter(|(r, _)| *r == Some(best))
                .map(|(_, c)| c),
        );
    }
}

/// Rank of the longest range containing `ip` (+1), 0 for "no ranges", `None` for no match.
fn cidr_rank(ranges: &[Cidr], ip: IpAddr) -> Option<usize> {
    if ranges.is_empty() {
        return Some(0);
    }
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| r.prefix_len as usize + 1)
        .max()
}
