//! The host's `/etc/resolv.conf`: where forwarded queries go, and the search list the short
//! forms of mesh names are built with.
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;

/// The system resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// glibc uses the first three `nameserver` lines (`MAXNS`); so do we.
const MAX_NAMESERVERS: usize = 3;

/// The parts of resolv.conf the mesh DNS uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvConf {
    /// Upstream resolvers (port 53), in file order; `127.0.0.1:53` when none is given (glibc).
    pub nameservers: Vec<SocketAddr>,
    /// Search domains (lower case, no trailing dot); the last `search` or `domain` line wins.
    pub search: Vec<String>,
    /// `options ndots:N` (1 by default, at most 15 as in glibc).
    pub ndots: u8,
}

// === impl ResolvConf ===

impl ResolvConf {
    /// Parses resolv.conf text. Unknown lines and bad addresses are skipped, as libc does.
    pub fn parse(text: &str) -> Self {
        let mut nameservers = Vec::new();
        let mut search = Vec::new();
        let mut ndots = 1u8;
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(addr) = words.next().and_then(parse_nameserver) {
                        if nameservers.len() < MAX_NAMESERVERS {
                            nameservers.push(addr);
                        }
                    }
                }
                Some("search") => {
                    search = words.filter_map(super::names::normalize).collect();
                }
                Some("domain") => {
                    search = words
                        .next()
                        .and_then(super::names::normalize)
                        .into_iter()
                        .collect();
                }
                Some("options") => {
                    for opt in words {
                        if let Some(n) = opt
                            .strip_prefix("ndots:")
                            .and_then(|n| n.parse::<u32>().ok())
                        {
                            ndots = n.min(15) as u8;
                        }
                    }
                }
                _ => {}
            }
        }
        if nameservers.is_empty() {
            nameservers.push(SocketAddr::from(([127, 0, 0, 1], 53)));
        }
        ResolvConf {
            nameservers,
            search,
            ndots,
        }
    }

    /// Reads and parses a resolv.conf file.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// Reads `/etc/resolv.conf`.
    pub fn system() -> std::io::Result<Self> {
        Self::load(Path::new(RESOLV_CONF))
    }

    /// The name context for the short forms of mesh names.
    pub fn name_context(&self, namespace: Option<String>) -> super::NameContext {
        super::NameContext {
            namespace,
            search: self.search.clone(),
            ndots: self.ndots,
        }
    }
}

/// `1.2.3.4`, `::1`, `fe80::1%2` (numeric scope id); interface names are not resolved.
fn parse_nameserver(s: &str) -> Option<SocketAddr> {
    if let Some((addr, scope)) = s.split_once('%') {
        let v6: Ipv6Addr = addr.parse().ok()?;
        let scope: u32 = scope.parse().ok()?;
        return Some(SocketAddr::V6(SocketAddrV6::new(v6, 53, 0, scope)));
    }
    let ip: IpAddr = s.parse().ok()?;
    Some(SocketAddr::new(ip, 53))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameservers_search_and_ndots() {
        let rc = ResolvConf::parse(
            "# generated\n\
             domain corp.example\n\
             search Default.svc.cluster.local svc.cluster.local. cluster.local\n\
             nameserver 10.0.0.2\n\
             nameserver 2001:db8::53 ; comment\n\
             nameserver fe80::1%3\n\
             nameserver 10.0.0.9\n\
             nameserver bogus\n\
             options edns0 ndots:5 timeout:2\n",
        );
        assert_eq!(
            rc.nameservers,
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 3)),
            ]
        );
        assert_eq!(
            rc.search,
            vec![
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(rc.ndots, 5);
    }

    #[test]
    fn defaults_to_localhost_and_ndots_one() {
        let rc = ResolvConf::parse("");
        assert_eq!(
            rc.nameservers,
            vec!["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
        assert!(rc.search.is_empty());
        assert_eq!(rc.ndots, 1);
    }

    #[test]
    fn last_search_or_domain_line_wins_and_ndots_is_capped() {
        let rc =
            ResolvConf::parse("search a.example b.example\ndomain c.example\noptions ndots:99\n");
        assert_eq!(rc.search, vec!["c.example"]);
        assert_eq!(rc.ndots, 15);
        let rc = ResolvConf::parse("domain c.example\nsearch a.example\n");
        assert_eq!(rc.search, vec!["a.example"]);
    }
}
