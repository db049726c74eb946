//! The mesh name table: names of mesh services → capture addresses, and back.
//!
//! Addresses are allocated from the capture range the way Istio's DNS auto-allocation does it:
//! FNV-1a of the service's name picks a slot, collisions probe linearly, and names are
//! allocated in sorted order, so the same set of names gets the same addresses in every
//! process. A rebuild keeps the addresses the previous table gave, so adding a service never
//! moves another one (applications cache DNS answers, some forever).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use super::nds::NameTable;

/// The default capture range (reserved class E space, which shadows nothing; Istio's choice).
pub const DEFAULT_CAPTURE_CIDR: CaptureCidr = CaptureCidr {
    network: IpAddr::V4(Ipv4Addr::new(240, 240, 0, 0)),
    prefix_len: 16,
};

/// The range capture addresses are allocated from (`--vm-capture-cidr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CaptureCidr {
    /// The network address (host bits zero).
    network: IpAddr,
    /// The prefix length.
    prefix_len: u8,
}

/// A capture range that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid capture CIDR {0:?}: expected ADDRESS/PREFIX, e.g. 240.240.0.0/16")]
pub struct InvalidCidr(pub String);

/// Where a mesh name came from. When two sources name the same service, the higher one's
/// fixed addresses win (this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NameSource {
    /// An xDS/bootstrap cluster name (`outbound|9080||reviews.default.svc.cluster.local`).
    Cluster,
    /// A route virtual host's domains.
    VirtualHost,
    /// Istio's NDS `NameTable`.
    Nds,
    /// Static entries in the bootstrap.
    Static,
}

/// One mesh service and the names that resolve to it: the input of [`MeshNames::build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshName {
    /// Canonical name (lower case, no trailing dot): the allocation key, and what the reverse
    /// lookup returns.
    pub service: Arc<str>,
    /// Other names that resolve to the same addresses (short forms, search-domain forms).
    pub aliases: Vec<Arc<str>>,
    /// Fixed addresses (NDS, static entries). Empty: one address is allocated from the
    /// capture range.
    pub addrs: Vec<IpAddr>,
    /// Where the name came from.
    pub source: NameSource,
}

/// What alias generation needs to know about this proxy and its host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameContext {
    /// The proxy's namespace: the bare short name (`reviews`) is an alias only for services in
    /// this namespace, as in Istio (`reviews.default` is always one).
    pub namespace: Option<String>,
    /// `search` domains of the host's resolv.conf.
    pub search: Vec<String>,
    /// `options ndots` of the host's resolv.conf (1 when absent).
    pub ndots: u8,
}

/// An immutable snapshot of mesh names. Publish it whole (e.g. in an `ArcSwap`); readers
/// never lock.
#[derive(Clone, Debug, Default)]
pub struct MeshNames {
    cidr: Option<CaptureCidr>,
    services: Vec<Entry>,
    /// Every name (canonical and alias) → index into `services`.
    by_name: HashMap<Box<str>, usize>,
    /// Address → index into `services` (first service in name order wins).
    by_addr: HashMap<IpAddr, usize>,
}

#[derive(Clone, Debug)]
struct Entry {
    service: Arc<str>,
    addrs: Vec<IpAddr>,
    source: NameSource,
    allocated: bool,
}

/// One row of [`MeshNames::dump`] (for `/config_dump`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NameDump {
    /// Canonical name.
    pub service: String,
    /// Addresses.
    pub addrs: Vec<IpAddr>,
    /// Whether the address was allocated from the capture range.
    pub allocated: bool,
    /// Where the name came from.
    pub source: NameSource,
    /// Names that resolve to it, canonical name first.
    pub names: Vec<String>,
}

// === impl CaptureCidr ===

impl CaptureCidr {
    /// A range from a network address and prefix length; host bits are cleared.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, InvalidCidr> {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > bits {
            return Err(InvalidCidr(format!("{addr}/{prefix_len}")));
        }
        let n = to_u128(addr) & !host_mask(bits, prefix_len);
        Ok(CaptureCidr {
            network: from_u128(n, addr.is_ipv4()),
            prefix_len,
        })
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        let mask = !host_mask(self.bits(), self.prefix_len);
        to_u128(ip) & mask == to_u128(self.network)
    }

    fn bits(&self) -> u8 {
        if self.network.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// Number of addresses, saturating at `u64::MAX` (large IPv6 ranges).
    fn size(&self) -> u64 {
        let host_bits = u32::from(self.bits() - self.prefix_len);
        if host_bits >= 64 {
            u64::MAX
        } else {
            1u64 << host_bits
        }
    }

    fn addr_at(&self, offset: u64) -> IpAddr {
        from_u128(
            to_u128(self.network) + u128::from(offset),
            self.network.is_ipv4(),
        )
    }

    /// Whether an offset may be handed out: not the network address, and for IPv4 ranges of
    /// at least a /24 nothing ending in .0 or .255 (Istio skips those too: some stacks treat
    /// them as network or broadcast addresses).
    fn usable(&self, offset: u64) -> bool {
        if self.size() <= 2 {
            return true;
        }
        if offset == 0 {
            return false;
        }
        match self.addr_at(offset) {
            IpAddr::V4(v4) if self.prefix_len <= 24 => !matches!(v4.octets()[3], 0 | 255),
            IpAddr::V4(_) => offset != self.size() - 1,
            IpAddr::V6(_) => true,
        }
    }
}

impl Default for CaptureCidr {
    fn default() -> Self {
        DEFAULT_CAPTURE_CIDR
    }
}

impl fmt::Display for CaptureCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for CaptureCidr {
    type Err = InvalidCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidCidr(s.to_string());
        let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        CaptureCidr::new(addr, len).map_err(|_| bad())
    }
}

fn host_mask(bits: u8, prefix_len: u8) -> u128 {
    let host_bits = u32::from(bits - prefix_len);
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        // Callers only pass values derived from an IPv4 address plus an in-range offset.
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

// === impl MeshName ===

impl MeshName {
    /// A service named `name` (normalized), with no aliases and an allocated address.
    /// `None` when `name` is not a DNS name (wildcards, IP literals, empty labels).
    pub fn new(name: &str, source: NameSource) -> Option<Self> {
        Some(MeshName {
            service: Arc::from(normalize(name)?),
            aliases: Vec::new(),
            addrs: Vec::new(),
            source,
        })
    }

    /// Sets fixed addresses.
    pub fn with_addrs(mut self, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        self.addrs = addrs.into_iter().collect();
        self
    }

    /// Adds an alias (ignored when it is not a DNS name).
    pub fn with_alias(mut self, alias: &str) -> Self {
        if let Some(a) = normalize(alias) {
            if *a != *self.service && !self.aliases.iter().any(|x| **x == *a) {
                self.aliases.push(Arc::from(a));
            }
        }
        self
    }

    /// Adds the Kubernetes short forms of `service` when it looks like
    /// `NAME.NAMESPACE.svc.DOMAIN` (`NAME.NAMESPACE.svc`, `NAME.NAMESPACE`, and `NAME` when
    /// NAMESPACE is the proxy's), then the search-domain forms of every name the client's stub
    /// resolver would try with its search list first (fewer dots than ndots).
    pub fn with_short_forms(self, ctx: &NameContext) -> Self {
        let labels: Vec<&str> = self.service.split('.').collect();
        let k8s = (labels.len() >= 4 && labels[2] == "svc").then(|| (labels[0], labels[1]));
        let (name, ns) = match k8s {
            Some((n, ns)) => (n.to_string(), ns.to_string()),
            None => return self.with_search_forms(ctx),
        };
        self.with_kubernetes_forms(&name, &ns, ctx)
    }

    fn with_kubernetes_forms(mut self, name: &str, ns: &str, ctx: &NameContext) -> Self {
        if ctx.namespace.as_deref() == Some(ns) {
            self = self.with_alias(name);
        }
        self = self
            .with_alias(&format!("{name}.{ns}"))
            .with_alias(&format!("{name}.{ns}.svc"));
        self.with_search_forms(ctx)
    }

    fn with_search_forms(mut self, ctx: &NameContext) -> Self {
        let ndots = usize::from(ctx.ndots.max(1));
        let short: Vec<Arc<str>> = std::iter::once(self.service.clone())
            .chain(self.aliases.iter().cloned())
            .filter(|n| n.matches('.').count() < ndots)
            .collect();
        for n in short {
            for s in &ctx.search {
                self = self.with_alias(&format!("{n}.{s}"));
            }
        }
        self
    }

    /// The service a cluster stands for: the host of an Istio outbound cluster name
    /// (`outbound|9080|v1|reviews.default.svc.cluster.local`), or the cluster name itself when
    /// it is a DNS name with at least one dot. Internal clusters (`xds-grpc`,
    /// `BlackHoleCluster`, `inbound|...`) are not mesh names.
    pub fn from_cluster(cluster: &str, ctx: &NameContext) -> Option<Self> {
        let host = match cluster.split('|').collect::<Vec<_>>().as_slice() {
            ["outbound", _port, _subset, host] => *host,
            [_] if cluster.contains('.') => cluster,
            _ => return None,
        };
        Some(MeshName::new(host, NameSource::Cluster)?.with_short_forms(ctx))
    }

    /// The service a route virtual host stands for: its longest domain (ports stripped) is the
    /// canonical name, the other domains are aliases. Wildcards and IP literals are skipped;
    /// `None` when nothing is left.
    pub fn from_virtual_host<S: AsRef<str>>(domains: &[S], ctx: &NameContext) -> Option<Self> {
        let mut hosts: Vec<String> = domains
            .iter()
            .filter_map(|d| normalize(strip_port(d.as_ref())))
            .collect();
        hosts.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        let (canonical, rest) = hosts.split_first()?;
        let mut m = MeshName::new(canonical, NameSource::VirtualHost)?;
        for h in rest {
            m = m.with_alias(h);
        }
        Some(m.with_short_forms(ctx))
    }

    /// The services of Istio's NDS `NameTable`, with their addresses, and the Kubernetes
    /// short forms for entries of the `Kubernetes` registry (as istio-agent builds them).
    pub fn from_name_table(table: &NameTable, ctx: &NameContext) -> Vec<Self> {
        let mut out = Vec::with_capacity(table.table.len());
        for (host, info) in &table.table {
            let Some(m) = MeshName::new(host, NameSource::Nds) else {
                continue;
            };
            let addrs: Vec<IpAddr> = info.ips.iter().filter_map(|ip| ip.parse().ok()).collect();
            let m = m.with_addrs(addrs);
            let m = if info.registry == "Kubernetes"
                && !info.shortname.is_empty()
                && !info.namespace.is_empty()
            {
                m.with_kubernetes_forms(&info.shortname, &info.namespace, ctx)
            } else {
                m.with_search_forms(ctx)
            };
            out.push(m);
        }
        out
    }
}

/// Lower case, no trailing dot; `None` unless every label is 1–63 of `[a-z0-9_-]` and the
/// name is at most 253 characters and not an IP literal.
pub(crate) fn normalize(name: &str) -> Option<String> {
    let n = name.trim().strip_suffix('.').unwrap_or(name.trim());
    if n.is_empty() || n.len() > 253 || n.parse::<IpAddr>().is_ok() {
        return None;
    }
    let ok = n.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    ok.then(|| n.to_ascii_lowercase())
}

fn strip_port(d: &str) -> &str {
    if let Some(rest) = d.strip_prefix('[') {
        // `[::1]:80`: an IP literal, skipped by `normalize` anyway.
        return rest.split(']').next().unwrap_or(rest);
    }
    match d.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => d,
    }
}

// === impl MeshNames ===

impl MeshNames {
    /// Builds the table: merges entries naming the same service, then allocates addresses in
    /// `cidr` for services without fixed ones.
    pub fn build(entries: impl IntoIterator<Item = MeshName>, cidr: CaptureCidr) -> Self {
        Self::build_from(entries, cidr, None)
    }

    /// Builds a new table from `entries`, keeping the addresses this table allocated for names
    /// still present (so running connections and cached answers stay valid).
    pub fn rebuild(&self, entries: impl IntoIterator<Item = MeshName>) -> Self {
        Self::build_from(entries, self.cidr.unwrap_or_default(), Some(self))
    }

    fn build_from(
        entries: impl IntoIterator<Item = MeshName>,
        cidr: CaptureCidr,
        prev: Option<&MeshNames>,
    ) -> Self {
        // Merge by canonical name; BTreeMap gives the sorted order allocation depends on.
        let mut merged: BTreeMap<Arc<str>, MeshName> = BTreeMap::new();
        for e in entries {
            match merged.get_mut(&e.service) {
                None => {
                    merged.insert(e.service.clone(), e);
                }
                Some(m) => {
                    for a in e.aliases {
                        if !m.aliases.contains(&a) {
                            m.aliases.push(a);
                        }
                    }
                    if e.source > m.source && (!e.addrs.is_empty() || m.addrs.is_empty()) {
                        m.source = e.source;
                        if !e.addrs.is_empty() {
                            m.addrs = e.addrs;
                        }
                    } else if m.addrs.is_empty() && !e.addrs.is_empty() {
                        m.addrs = e.addrs;
                    }
                }
            }
        }

        // Fixed addresses in the range are taken first, then the previous table's
        // allocations, then hash + linear probing.
        let mut taken: HashSet<IpAddr> = merged
            .values()
            .flat_map(|m| m.addrs.iter().copied())
            .filter(|ip| cidr.contains(*ip))
            .collect();
        let mut assigned: HashMap<Arc<str>, IpAddr> = HashMap::new();
        if let Some(prev) = prev {
            for m in merged.values().filter(|m| m.addrs.is_empty()) {
                let old = prev
                    .by_name
                    .get(&*m.service)
                    .map(|&i| &prev.services[i])
                    .filter(|e| e.allocated && *e.service == *m.service)
                    .and_then(|e| e.addrs.first().copied())
                    .filter(|ip| cidr.contains(*ip));
                if let Some(ip) = old {
                    if taken.insert(ip) {
                        assigned.insert(m.service.clone(), ip);
                    }
                }
            }
        }
        let mut exhausted = false;
        for m in merged.values().filter(|m| m.addrs.is_empty()) {
            if assigned.contains_key(&m.service) || exhausted {
                continue;
            }
            match allocate(&m.service, cidr, &taken) {
                Some(ip) => {
                    taken.insert(ip);
                    assigned.insert(m.service.clone(), ip);
                }
                None => {
                    tracing::warn!(%cidr, service = %m.service, "capture range exhausted; later mesh names get no address");
                    exhausted = true;
                }
            }
        }

        let mut out = MeshNames {
            cidr: Some(cidr),
            ..Default::default()
        };
        let mut aliases = Vec::new();
        for m in merged.into_values() {
            let (addrs, allocated) = match assigned.get(&m.service) {
                Some(ip) => (vec![*ip], true),
                None if m.addrs.is_empty() => continue,
                None => (m.addrs, false),
            };
            let idx = out.services.len();
            out.by_name.insert(Box::from(&*m.service), idx);
            for ip in &addrs {
                out.by_addr.entry(*ip).or_insert(idx);
            }
            out.services.push(Entry {
                service: m.service,
                addrs,
                source: m.source,
                allocated,
            });
            aliases.push((idx, m.aliases));
        }
        // Aliases go in after every canonical name, so a service's own name always beats
        // another service's alias; between aliases, the first service in name order wins.
        for (idx, names) in aliases {
            for a in names {
                out.by_name.entry(Box::from(&*a)).or_insert(idx);
            }
        }
        out
    }

    /// Resolves `name` (any case, trailing dot allowed) to its first address.
    pub fn resolve(&self, name: &str) -> Option<IpAddr> {
        self.lookup(name).and_then(|a| a.first().copied())
    }

    /// Every address of `name` (any case, trailing dot allowed).
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        let n = name.strip_suffix('.').unwrap_or(name);
        let idx = match self.by_name.get(n) {
            Some(i) => *i,
            None if n.bytes().any(|b| b.is_ascii_uppercase()) => {
                *self.by_name.get(n.to_ascii_lowercase().as_str())?
            }
            None => return None,
        };
        Some(&self.services[idx].addrs)
    }

    /// The canonical name of the service `ip` was allocated (or given) for: the outbound
    /// listener's reverse lookup for a captured destination.
    pub fn name_for(&self, ip: IpAddr) -> Option<&str> {
        self.by_addr.get(&ip).map(|&i| &*self.services[i].service)
    }

    /// The service a capture address was *allocated* for, and where its name came from.
    /// `None` for fixed addresses (NDS, static entries): those are real addresses the control
    /// plane knows, and connections to them are routed like any other destination.
    pub fn allocated_service(&self, ip: IpAddr) -> Option<(&str, NameSource)> {
        let e = &self.services[*self.by_addr.get(&ip)?];
        e.allocated.then_some((&*e.service, e.source))
    }

    /// The capture range addresses are allocated from.
    pub fn cidr(&self) -> CaptureCidr {
        self.cidr.unwrap_or_default()
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether there are no services.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Every service with its names, sorted by name (for `/config_dump`).
    pub fn dump(&self) -> Vec<NameDump> {
        let mut names: Vec<Vec<String>> = self
            .services
            .iter()
            .map(|e| vec![e.service.to_string()])
            .collect();
        let mut aliases: Vec<(&str, usize)> = self
            .by_name
            .iter()
            .filter(|(n, &i)| ***n != *self.services[i].service)
            .map(|(n, &i)| (&**n, i))
            .collect();
        aliases.sort();
        for (n, i) in aliases {
            names[i].push(n.to_string());
        }
        self.services
            .iter()
            .zip(names)
            .map(|(e, names)| NameDump {
                service: e.service.to_string(),
                addrs: e.addrs.clone(),
                allocated: e.allocated,
                source: e.source,
                names,
            })
            .collect()
    }
}

/// The slot FNV-1a of `name` picks, probing linearly past taken and unusable addresses.
fn allocate(name: &str, cidr: CaptureCidr, taken: &HashSet<IpAddr>) -> Option<IpAddr> {
    let size = cidr.size();
    let start = fnv1a64(name.as_bytes()) % size;
    let mut off = start;
    // One lap at most; huge (IPv6) ranges stop after 2^20 probes, which only a nearly full
    // range could need.
    for _ in 0..size.min(1 << 20) {
        if cidr.usable(off) {
            let ip = cidr.addr_at(off);
            if !taken.contains(&ip) {
                return Some(ip);
            }
        }
        off = (off + 1) % size;
    }
    None
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
#[path = "names_tests.rs"]
mod tests;
