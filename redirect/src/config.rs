//! The typed, validated capture configuration.
//!
//! Flags arrive as istio-iptables-style strings (comma separated lists, `*` wildcards). They are
//! parsed once, here, into [`CaptureConfig`]; the rule generators never see a string they would
//! have to re-check. Unlike istio-iptables, which skips unparsable CIDRs "for bug compatibility",
//! every bad element is an error naming the flag and the value: a capture setup that silently
//! drops an exclusion can black-hole traffic.
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::error::RedirectError;

/// Default outbound capture port (istio-iptables `-p`, Envoy's virtual outbound listener).
pub const DEFAULT_PROXY_PORT: u16 = 15001;
/// Default inbound capture port (istio-iptables `-z`).
pub const DEFAULT_INBOUND_CAPTURE_PORT: u16 = 15006;
/// Default HBONE tunnel port that istio never captures inbound (istio-iptables `-e`).
pub const DEFAULT_INBOUND_TUNNEL_PORT: u16 = 15008;
/// Default proxy UID: istio's `istio-proxy` user.
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// Default TPROXY packet mark (istio-iptables `-t`).
pub const DEFAULT_TPROXY_MARK: u32 = 1337;
/// Mark the proxy's own packets to the app carry in TPROXY mode (istio `OutboundMark`).
pub const OUTBOUND_MARK: u32 = 1338;
/// Default policy routing table for TPROXY (istio-iptables `-r`).
pub const DEFAULT_TPROXY_ROUTE_TABLE: u32 = 133;
/// Default port of the mesh DNS server (istio-agent's DNS proxy port).
pub const DEFAULT_DNS_PORT: u16 = 15053;
/// Default VM capture range: addresses the mesh DNS hands out for mesh services. 240/4 is
/// reserved ("future use"), so no real destination is ever shadowed by it.
pub const DEFAULT_VM_CAPTURE_CIDR: &str = "240.240.0.0/16";

/// The source address the proxy binds when it forwards inbound traffic to the app over
/// loopback, so that the connection is recognisable and not captured again (istio's
/// inbound passthrough).
pub const INBOUND_PASSTHROUGH_V4: &str = "127.0.0.6/32";
/// The IPv6 inbound passthrough source; `apply` adds it to `lo` (IPv6 `lo` has only `::1`).
pub const INBOUND_PASSTHROUGH_V6: &str = "::6/128";

/// How inbound connections reach the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterceptMode {
    /// nat-table `REDIRECT`: the destination is rewritten; `SO_ORIGINAL_DST` recovers it.
    Redirect,
    /// mangle-table `TPROXY`: the destination is kept (and the source can be preserved); needs a
    /// policy route and an `IP_TRANSPARENT` listener.
    Tproxy,
}

/// One IP network, normalised to its network address (`10.1.2.3/16` becomes `10.1.0.0/16`,
/// the way istio prints it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A TCP/UDP destination port or inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec {
    /// First port.
    pub first: u16,
    /// Last port (equal to `first` for a single port).
    pub last: u16,
}

/// An interface name as iptables accepts it (`+` suffix is a prefix wildcard).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Interface(String);

/// Which inbound ports are captured (istio-iptables `-b`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum InboundPorts {
    /// Empty `-b`: inbound capture disabled.
    #[default]
    None,
    /// `-b '*'`: every port except the excluded ones (`-d`).
    All,
    /// Only these ports.
    Only(Vec<PortSpec>),
}

/// Which outbound destinations are captured (istio-iptables `-i`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum OutboundCidrs {
    /// Empty `-i`: only ports from `-q` are captured.
    #[default]
    None,
    /// `-i '*'`: everything not excluded.
    All,
    /// Only these networks.
    Only(Vec<Cidr>),
}

/// DNS capture: queries on port 53 (UDP and TCP) redirected to the mesh DNS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsCapture {
    /// Local port of the mesh DNS server.
    pub port: u16,
    /// Capture only queries to these resolvers; empty means every destination. Listing the
    /// resolvers avoids a loop with a local caching resolver (its upstream queries would
    /// otherwise be captured too).
    pub servers: Vec<IpAddr>,
}

/// Everything the rule generators need, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Outbound capture port (`-p`).
    pub proxy_port: u16,
    /// Inbound capture port (`-z`).
    pub inbound_capture_port: u16,
    /// Inbound port never captured (`-e`): istio's HBONE tunnel port.
    pub inbound_tunnel_port: u16,
    /// UIDs whose traffic is never captured (`-u`); the proxy's.
    pub proxy_uids: Vec<u32>,
    /// GIDs whose traffic is never captured (`-g`); defaults to the UIDs like istio.
    pub proxy_gids: Vec<u32>,
    /// Inbound interception mode (`-m`).
    pub mode: InterceptMode,
    /// TPROXY mark (`-t`).
    pub tproxy_mark: u32,
    /// TPROXY policy routing table (`-r`).
    pub tproxy_route_table: u32,
    /// Captured inbound ports (`-b`).
    pub inbound_ports: InboundPorts,
    /// Inbound ports never captured when `-b '*'` (`-d`).
    pub inbound_ports_exclude: Vec<PortSpec>,
    /// Captured outbound networks (`-i`).
    pub outbound_cidrs: OutboundCidrs,
    /// Outbound networks never captured (`-x`).
    pub outbound_cidrs_exclude: Vec<Cidr>,
    /// Outbound ports captured whatever the destination (`-q`).
    pub outbound_ports_include: Vec<PortSpec>,
    /// Outbound ports never captured (`-o`).
    pub outbound_ports_exclude: Vec<PortSpec>,
    /// Interfaces whose traffic is never captured (`-c`).
    pub exclude_interfaces: Vec<Interface>,
    /// Interfaces whose inbound traffic is treated as outbound (`-k`, e.g. KubeVirt VMs).
    pub kube_virt_interfaces: Vec<Interface>,
    /// DNS capture (`--redirect-dns`, always on in VM mode).
    pub dns: Option<DnsCapture>,
    /// Drop conntrack-INVALID packets instead of letting them reset connections.
    pub drop_invalid: bool,
    /// Generate the IPv6 rule set too.
    pub ipv6: bool,
}

// === impl CaptureConfig ===

impl Default for CaptureConfig {
    /// istio-iptables' defaults: nothing captured until `-b`/`-i`/`-q` say so.
    fn default() -> Self {
        Self {
            proxy_port: DEFAULT_PROXY_PORT,
            inbound_capture_port: DEFAULT_INBOUND_CAPTURE_PORT,
            inbound_tunnel_port: DEFAULT_INBOUND_TUNNEL_PORT,
            proxy_uids: vec![DEFAULT_PROXY_UID],
            proxy_gids: vec![DEFAULT_PROXY_UID],
            mode: InterceptMode::Redirect,
            tproxy_mark: DEFAULT_TPROXY_MARK,
            tproxy_route_table: DEFAULT_TPROXY_ROUTE_TABLE,
            inbound_ports: InboundPorts::None,
            inbound_ports_exclude: Vec::new(),
            outbound_cidrs: OutboundCidrs::None,
            outbound_cidrs_exclude: Vec::new(),
            outbound_ports_include: Vec::new(),
            outbound_ports_exclude: Vec::new(),
            exclude_interfaces: Vec::new(),
            kube_virt_interfaces: Vec::new(),
            dns: None,
            drop_invalid: false,
            ipv6: false,
        }
    }
}

impl CaptureConfig {
    /// Whether loopback was explicitly included in `-i`: then app → app traffic over `lo` is
    /// captured too (istio drops its `-o lo ... RETURN` rules in that case).
    pub fn includes_loopback(&self) -> bool {
        match &self.outbound_cidrs {
            OutboundCidrs::Only(cidrs) => cidrs.iter().any(|c| c.addr().is_loopback()),
            _ => false,
        }
    }
}

impl fmt::Display for InterceptMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Redirect => "REDIRECT",
            Self::Tproxy => "TPROXY",
        })
    }
}

// === impl Cidr ===

impl Cidr {
    /// Builds a network from an address and prefix length, normalising host bits away.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let addr = match addr {
            IpAddr::V4(v4) if prefix <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) if prefix <= 128 => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
            _ => return None,
        };
        Some(Self { addr, prefix })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this is an IPv4 network.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Self::new(ip, self.prefix).is_some_and(|c| c.addr == self.addr)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// Accepts `addr/len`; a bare address is a host route (`/32` or `/128`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix length must be 0..={max}"))?,
        };
        Self::new(addr, prefix).ok_or_else(|| "bad prefix length".to_string())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

// === impl PortSpec ===

impl PortSpec {
    /// A single port.
    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    /// iptables syntax: `80` or `8000:8080`.
    pub fn iptables(&self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}:{}", self.first, self.last)
        }
    }

    /// nftables syntax: `80` or `8000-8080`.
    pub fn nft(&self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortSpec {
    type Err = String;

    /// Accepts `80`, `8000:8080` (iptables) or `8000-8080` (nftables); port 0 is rejected.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let one = |p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err("ports are 1..=65535".to_string()),
                Ok(p) => Ok(p),
            }
        };
        match s.split_once([':', '-']) {
            None => one(s).map(Self::single),
            Some((a, b)) => {
                let (first, last) = (one(a)?, one(b)?);
                if first > last {
                    return Err("range start is after its end".to_string());
                }
                Ok(Self { first, last })
            }
        }
    }
}

// === impl Interface ===

impl Interface {
    /// The name as given (iptables syntax: a trailing `+` matches any suffix).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// nftables syntax: the wildcard suffix is `*` instead of iptables' `+`.
    pub fn nft(&self) -> String {
        match self.0.strip_suffix('+') {
            Some(prefix) => format!("{prefix}*"),
            None => self.0.clone(),
        }
    }
}

impl FromStr for Interface {
    type Err = String;

    /// Linux names are 1..=15 bytes without `/`, whitespace or quotes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 15
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'"' | b'\'' | b'\\'));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err("interface names are 1 to 15 printable characters without / or quotes".to_string())
        }
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === parsing helpers ===

/// Splits an istio-style comma separated list, ignoring blanks.
pub(crate) fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|e| !e.is_empty())
}

/// Parses every element of a comma separated list, naming `flag` and the element on error.
pub(crate) fn parse_list<T: FromStr<Err = String>>(
    flag: &'static str,
    s: &str,
) -> Result<Vec<T>, RedirectError> {
    split_list(s)
        .map(|e| {
            e.parse()
                .map_err(|reason| RedirectError::invalid(flag, e, reason))
        })
        .collect()
}

/// Parses one element, naming `flag` and the value on error.
pub(crate) fn parse_one<T: FromStr<Err = String>>(
    flag: &'static str,
    s: &str,
) -> Result<T, RedirectError> {
    s.trim()
        .parse()
        .map_err(|reason| RedirectError::invalid(flag, s, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_normalises_and_rejects() {
        let ok = [
            ("10.1.2.3/16", "10.1.0.0/16"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("fd00::1/8", "fd00::/8"),
            ("::1", "::1/128"),
        ];
        for (input, shown) in ok {
            assert_eq!(
                input.parse::<Cidr>().map(|c| c.to_string()).as_deref(),
                Ok(shown)
            );
        }
        for bad in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/-1",
            "x/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} accepted");
        }
        let net: Cidr = "240.240.0.0/16".parse().expect("cidr");
        assert!(net.contains("240.240.3.4".parse().expect("ip")));
        assert!(!net.contains("240.241.0.1".parse().expect("ip")));
        assert!(!net.contains("::1".parse().expect("ip")));
    }

    #[test]
    fn port_parsing_accepts_single_ports_and_ranges() {
        assert_eq!("80".parse(), Ok(PortSpec::single(80)));
        let range: PortSpec = "9000:9100".parse().expect("range");
        assert_eq!(
            (range.iptables(), range.nft()),
            ("9000:9100".into(), "9000-9100".into())
        );
        assert_eq!("9000-9100".parse(), Ok(range));
        for bad in [
            "", "0", "65536", "-1", "80:", ":80", "90:80", "http", "1:2:3",
        ] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn interface_names_are_checked() {
        for ok in ["eth0", "veth+", "tap0123456789ab"] {
            assert!(ok.parse::<Interface>().is_ok(), "{ok:?}");
        }
        for bad in ["", "tap0123456789abc", "a/b", "a b", "\"x"] {
            assert!(bad.parse::<Interface>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn list_errors_name_flag_and_element() {
        let err = parse_list::<PortSpec>("-q/--istio-outbound-ports", "80, 443,,x")
            .expect_err("x is bad");
        assert_eq!(
            err.to_string(),
            "invalid value \"x\" for -q/--istio-outbound-ports: ports are 1..=65535"
        );
        assert_eq!(
            parse_list::<PortSpec>("-q", " 80, ,443 ")
                .map(|v| v.len())
                .ok(),
            Some(2)
        );
    }
}
