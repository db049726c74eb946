//! `iptables-restore` / `ip6tables-restore` scripts with istio-iptables' chains.
//!
//! A script is applied with `--noflush`, so only the tables and chains it names are touched.
//! Idempotency comes from the same transaction: our chains are declared (which flushes them if
//! they exist), our previous jump rules (found by their comment in `iptables-save`) are deleted,
//! stale chains of ours are removed, and then the new rules go in. One `COMMIT` per table, and
//! the restore tool applies all tables or none.
use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{Family, CHAIN_PREFIX, COMMENT};
use crate::config::{CaptureConfig, InboundPorts, InterceptMode, OutboundCidrs, OUTBOUND_MARK};

/// The rules of one family, table by table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IptablesRules {
    /// Which family (`iptables-restore` or `ip6tables-restore`).
    pub family: Family,
    /// Tables in the order istio writes them (mangle, nat, raw).
    pub tables: Vec<TableRules>,
}

/// Our rules in one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRules {
    /// `nat`, `mangle` or `raw`.
    pub table: &'static str,
    /// Our chains, in declaration order.
    pub chains: Vec<&'static str>,
    /// Rules appended to our chains, in order: `(chain, rule spec)`.
    pub rules: Vec<(&'static str, String)>,
    /// Rules inserted at the head of built-in chains, in order: `(built-in chain, spec)`.
    /// The spec already carries the Petrel comment.
    pub head: Vec<(&'static str, String)>,
}

/// What Petrel has installed in one family, read back from `iptables-save`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Per table: our chains (`ISTIO_*`) and our rules in built-in chains (`-A CHAIN spec`
    /// lines as printed by `iptables-save`).
    pub tables: Vec<InstalledTable>,
}

/// What Petrel has installed in one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstalledTable {
    /// The table name.
    pub table: String,
    /// Our chains present in it.
    pub chains: BTreeSet<String>,
    /// Our rules in built-in chains, as `-A CHAIN spec` lines.
    pub head_rules: Vec<String>,
}

// === impl IptablesRules ===

impl IptablesRules {
    /// Generates the whole rule set of `family` for `cfg`.
    pub fn build(cfg: &CaptureConfig, family: Family) -> Self {
        let mut tables = Vec::new();
        if let Some(mangle) = mangle(cfg, family) {
            tables.push(mangle);
        }
        tables.push(nat(cfg, family));
        if let Some(raw) = raw(cfg, family) {
            tables.push(raw);
        }
        Self { family, tables }
    }

    /// The restore script installing these rules, replacing whatever of ours is `installed`.
    pub fn restore_script(&self, installed: &Installed) -> String {
        let mut out = String::new();
        let mut names: Vec<&str> = self.tables.iter().map(|t| t.table).collect();
        for t in &installed.tables {
            if !names.contains(&t.table.as_str()) && t.is_nonempty() {
                names.push(&t.table);
            }
        }
        for name in names {
            let want = self.tables.iter().find(|t| t.table == name);
            let have = installed.tables.iter().find(|t| t.table == name);
            write_table(&mut out, name, want, have);
        }
        out
    }
}

/// The restore script removing everything of ours that is `installed` (empty if nothing is).
pub fn cleanup_script(installed: &Installed) -> String {
    let mut out = String::new();
    for t in installed.tables.iter().filter(|t| t.is_nonempty()) {
        write_table(&mut out, &t.table, None, Some(t));
    }
    out
}

fn write_table(
    out: &mut String,
    name: &str,
    want: Option<&TableRules>,
    have: Option<&InstalledTable>,
) {
    let wanted: Vec<&str> = want.map(|t| t.chains.clone()).unwrap_or_default();
    let stale: Vec<&str> = have
        .map(|h| {
            h.chains
                .iter()
                .map(String::as_str)
                .filter(|c| !wanted.contains(c))
                .collect()
        })
        .unwrap_or_default();
    // `writeln!` to a String cannot fail.
    let _ = writeln!(out, "*{name}");
    // Declaring a chain creates it or, with --noflush, flushes it: stale chains are emptied so
    // that they can be deleted even if they jump to each other.
    for chain in wanted.iter().chain(stale.iter()) {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    if let Some(have) = have {
        for rule in &have.head_rules {
            if let Some(spec) = rule.strip_prefix("-A ") {
                let _ = writeln!(out, "-D {spec}");
            }
        }
    }
    for chain in &stale {
        let _ = writeln!(out, "-X {chain}");
    }
    if let Some(want) = want {
        for (chain, spec) in &want.rules {
            let _ = writeln!(out, "-A {chain} {spec}");
        }
        let mut position: Vec<(&str, usize)> = Vec::new();
        for (chain, spec) in &want.head {
            let n = match position.iter_mut().find(|(c, _)| c == chain) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    position.push((chain, 1));
                    1
                }
            };
            let _ = writeln!(out, "-I {chain} {n} {spec}");
        }
    }
    let _ = writeln!(out, "COMMIT");
}

// === impl Installed ===

impl Installed {
    /// Whether nothing of ours is installed.
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| !t.is_nonempty())
    }
}

impl InstalledTable {
    fn is_nonempty(&self) -> bool {
        !self.chains.is_empty() || !self.head_rules.is_empty()
    }
}

/// Reads our chains and our commented rules in built-in chains from `iptables-save` output.
pub fn parse_save(save: &str) -> Installed {
    let mut installed = Installed::default();
    for line in save.lines().map(str::trim) {
        if let Some(table) = line.strip_prefix('*') {
            installed.tables.push(InstalledTable {
                table: table.to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(current) = installed.tables.last_mut() else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or_default();
            if chain.starts_with(CHAIN_PREFIX) {
                current.chains.insert(chain.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            // `iptables-save` prints the comment bare (quoted only if it had spaces).
            let tokens: Vec<&str> = rule.split_whitespace().collect();
            let ours = tokens
                .windows(2)
                .any(|w| w[0] == "--comment" && w[1].trim_matches('"') == COMMENT);
            if ours && !chain.starts_with(CHAIN_PREFIX) {
                current.head_rules.push(line.to_string());
            }
        }
    }
    installed.tables.retain(InstalledTable::is_nonempty);
    installed
}

// === generation ===

fn head_rule(matches: &str, target: &str) -> String {
    if matches.is_empty() {
        format!("-m comment --comment {COMMENT} -j {target}")
    } else {
        format!("{matches} -m comment --comment {COMMENT} -j {target}")
    }
}

fn nat(cfg: &CaptureConfig, fam: Family) -> TableRules {
    let dns = dns_for(cfg, fam);
    let mut chains = vec![
        "ISTIO_INBOUND",
        "ISTIO_REDIRECT",
        "ISTIO_IN_REDIRECT",
        "ISTIO_OUTPUT",
    ];
    if dns.is_some() {
        chains.push("ISTIO_OUTPUT_DNS");
    }
    let mut r: Vec<(&'static str, String)> = Vec::new();
    let lo = fam.localhost();
    let tunnel = cfg.inbound_tunnel_port;

    // --- ISTIO_INBOUND (nat) ---
    for iface in &cfg.exclude_interfaces {
        r.push(("ISTIO_INBOUND", format!("-i {iface} -j RETURN")));
    }
    // Traffic arriving on a KubeVirt-style interface comes from a VM behind the pod: it is the
    // VM's *outbound* traffic, captured like the app's own, and never inbound.
    for iface in &cfg.kube_virt_interfaces {
        match &cfg.outbound_cidrs {
            OutboundCidrs::All => {
                r.push(("ISTIO_INBOUND", format!("-i {iface} -j ISTIO_REDIRECT")))
            }
            OutboundCidrs::Only(cidrs) => {
                for c in cidrs.iter().filter(|c| fam.matches(c.addr())) {
                    r.push((
                        "ISTIO_INBOUND",
                        format!("-i {iface} -d {c} -j ISTIO_REDIRECT"),
                    ));
                }
            }
            OutboundCidrs::None => {}
        }
        r.push(("ISTIO_INBOUND", format!("-i {iface} -j RETURN")));
    }
    r.push((
        "ISTIO_INBOUND",
        format!("-p tcp --dport {tunnel} -j RETURN"),
    ));
    let redirect_inbound =
        cfg.mode == InterceptMode::Redirect && cfg.inbound_ports != InboundPorts::None;
    if cfg.mode == InterceptMode::Redirect {
        match &cfg.inbound_ports {
            InboundPorts::All => {
                for p in &cfg.inbound_ports_exclude {
                    r.push((
                        "ISTIO_INBOUND",
                        format!("-p tcp --dport {} -j RETURN", p.iptables()),
                    ));
                }
                r.push(("ISTIO_INBOUND", "-p tcp -j ISTIO_IN_REDIRECT".into()));
            }
            InboundPorts::Only(ports) => {
                for p in ports {
                    r.push((
                        "ISTIO_INBOUND",
                        format!("-p tcp --dport {} -j ISTIO_IN_REDIRECT", p.iptables()),
                    ));
                }
            }
            InboundPorts::None => {}
        }
    }

    // --- ISTIO_REDIRECT / ISTIO_IN_REDIRECT ---
    r.push((
        "ISTIO_REDIRECT",
        format!("-p tcp -j REDIRECT --to-ports {}", cfg.proxy_port),
    ));
    r.push((
        "ISTIO_IN_REDIRECT",
        format!("-p tcp -j REDIRECT --to-ports {}", cfg.inbound_capture_port),
    ));

    // --- ISTIO_OUTPUT ---
    for iface in &cfg.exclude_interfaces {
        r.push(("ISTIO_OUTPUT", format!("-o {iface} -j RETURN")));
    }
    // Port exclusions come before anything that could send traffic back to the proxy.
    for p in &cfg.outbound_ports_exclude {
        r.push((
            "ISTIO_OUTPUT",
            format!("-p tcp --dport {} -j RETURN", p.iptables()),
        ));
        r.push((
            "ISTIO_OUTPUT",
            format!("-p udp --dport {} -j RETURN", p.iptables()),
        ));
    }
    // The proxy reaches the app from 127.0.0.6 (inbound passthrough): never captured again.
    r.push((
        "ISTIO_OUTPUT",
        format!("-o lo -s {} -j RETURN", fam.passthrough()),
    ));
    let owner_rules = |r: &mut Vec<(&'static str, String)>, kind: &str, id: u32| {
        // The proxy calling its own pod through a service VIP, routed to lo: send it to the
        // inbound side (app → proxy (client) → proxy (server) → app). DNS to a local resolver
        // and the tunnel port are exceptions.
        let ports = if dns.is_some() {
            format!("-m multiport ! --dports 53,{tunnel}")
        } else {
            format!("! --dport {tunnel}")
        };
        r.push((
            "ISTIO_OUTPUT",
            format!(
                "-o lo ! -d {lo} -p tcp {ports} -m owner --{kind}-owner {id} -j ISTIO_IN_REDIRECT"
            ),
        ));
        // The app talking to itself over lo is left alone, unless -i explicitly captures
        // loopback. With DNS capture, TCP DNS to a local resolver must still be captured.
        if !cfg.includes_loopback() {
            let dns_exception = if dns.is_some() {
                "-p tcp ! --dport 53 "
            } else {
                ""
            };
            r.push((
                "ISTIO_OUTPUT",
                format!("-o lo {dns_exception}-m owner ! --{kind}-owner {id} -j RETURN"),
            ));
        }
        // Loop safety: nothing the proxy sends is captured, TCP or UDP, whatever the
        // destination.
        r.push((
            "ISTIO_OUTPUT",
            format!("-m owner --{kind}-owner {id} -j RETURN"),
        ));
    };
    for &uid in &cfg.proxy_uids {
        owner_rules(&mut r, "uid", uid);
    }
    for &gid in &cfg.proxy_gids {
        owner_rules(&mut r, "gid", gid);
    }
    if let Some(servers) = &dns {
        r.push(("ISTIO_OUTPUT", "-j ISTIO_OUTPUT_DNS".into()));
        let port = cfg.dns.as_ref().map(|d| d.port).unwrap_or_default();
        let dests = dest_matches(servers);
        for d in &dests {
            r.push((
                "ISTIO_OUTPUT_DNS",
                format!("-p tcp --dport 53{d} -j REDIRECT --to-ports {port}"),
            ));
        }
        for &uid in &cfg.proxy_uids {
            r.push((
                "ISTIO_OUTPUT_DNS",
                format!("-p udp --dport 53 -m owner --uid-owner {uid} -j RETURN"),
            ));
        }
        for &gid in &cfg.proxy_gids {
            r.push((
                "ISTIO_OUTPUT_DNS",
                format!("-p udp --dport 53 -m owner --gid-owner {gid} -j RETURN"),
            ));
        }
        for d in &dests {
            r.push((
                "ISTIO_OUTPUT_DNS",
                format!("-p udp --dport 53{d} -j REDIRECT --to-ports {port}"),
            ));
        }
    }
    // Applications that explicitly use localhost are not captured.
    r.push(("ISTIO_OUTPUT", format!("-d {lo} -j RETURN")));
    for c in cfg
        .outbound_cidrs_exclude
        .iter()
        .filter(|c| fam.matches(c.addr()))
    {
        r.push(("ISTIO_OUTPUT", format!("-d {c} -j RETURN")));
    }
    for p in &cfg.outbound_ports_include {
        r.push((
            "ISTIO_OUTPUT",
            format!("-p tcp --dport {} -j ISTIO_REDIRECT", p.iptables()),
        ));
    }
    match &cfg.outbound_cidrs {
        OutboundCidrs::All => r.push(("ISTIO_OUTPUT", "-j ISTIO_REDIRECT".into())),
        OutboundCidrs::Only(cidrs) => {
            for c in cidrs.iter().filter(|c| fam.matches(c.addr())) {
                r.push(("ISTIO_OUTPUT", format!("-d {c} -j ISTIO_REDIRECT")));
            }
        }
        OutboundCidrs::None => {}
    }

    let mut head = Vec::new();
    if redirect_inbound || !cfg.kube_virt_interfaces.is_empty() {
        head.push(("PREROUTING", head_rule("-p tcp", "ISTIO_INBOUND")));
    }
    head.push(("OUTPUT", head_rule("", "ISTIO_OUTPUT")));
    TableRules {
        table: "nat",
        chains,
        rules: r,
        head,
    }
}

fn mangle(cfg: &CaptureConfig, fam: Family) -> Option<TableRules> {
    let tproxy = cfg.mode == InterceptMode::Tproxy;
    if !tproxy && !cfg.drop_invalid {
        return None;
    }
    let mut chains = Vec::new();
    let mut r: Vec<(&'static str, String)> = Vec::new();
    let mut head = Vec::new();
    if cfg.drop_invalid {
        // Out-of-window packets are dropped instead of resetting the connection.
        chains.push("ISTIO_DROP");
        r.push(("ISTIO_DROP", "-j DROP".into()));
        head.push((
            "PREROUTING",
            head_rule("-m conntrack --ctstate INVALID", "ISTIO_DROP"),
        ));
    }
    if tproxy {
        let mark = cfg.tproxy_mark;
        let lo = fam.localhost();
        chains.extend([
            "ISTIO_DIVERT",
            "ISTIO_TPROXY",
            "ISTIO_INBOUND",
            "ISTIO_OUTPUT",
        ]);
        // Packets of connections the proxy already owns: mark them so the policy route
        // delivers them locally, and stop.
        r.push(("ISTIO_DIVERT", format!("-j MARK --set-mark {mark}")));
        r.push(("ISTIO_DIVERT", "-j ACCEPT".into()));
        r.push((
            "ISTIO_TPROXY",
            format!(
                "! -d {lo} -p tcp -j TPROXY --tproxy-mark {mark}/0xffffffff --on-port {}",
                cfg.inbound_capture_port
            ),
        ));
        // Loop safety: already-diverted packets, the proxy's passthrough from 127.0.0.6, and
        // app → app over lo (everything on lo not marked by the proxy) are not captured.
        r.push((
            "ISTIO_INBOUND",
            format!("-p tcp -m mark --mark {mark} -j RETURN"),
        ));
        r.push((
            "ISTIO_INBOUND",
            format!("-p tcp -s {} -i lo -j RETURN", fam.passthrough()),
        ));
        r.push((
            "ISTIO_INBOUND",
            format!("-p tcp -i lo -m mark ! --mark {OUTBOUND_MARK} -j RETURN"),
        ));
        for iface in &cfg.exclude_interfaces {
            r.push(("ISTIO_INBOUND", format!("-i {iface} -j RETURN")));
        }
        let established = "-m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT";
        match &cfg.inbound_ports {
            InboundPorts::All => {
                for p in &cfg.inbound_ports_exclude {
                    r.push((
                        "ISTIO_INBOUND",
                        format!("-p tcp --dport {} -j RETURN", p.iptables()),
                    ));
                }
                r.push(("ISTIO_INBOUND", format!("-p tcp {established}")));
                r.push(("ISTIO_INBOUND", "-p tcp -j ISTIO_TPROXY".into()));
            }
            InboundPorts::Only(ports) => {
                for p in ports {
                    let p = p.iptables();
                    r.push(("ISTIO_INBOUND", format!("-p tcp --dport {p} {established}")));
                    r.push((
                        "ISTIO_INBOUND",
                        format!("-p tcp --dport {p} -j ISTIO_TPROXY"),
                    ));
                }
            }
            InboundPorts::None => {}
        }
        // istio appends these to mangle OUTPUT directly; ours sit behind one jump so that the
        // RETURN only skips our marking, not other people's mangle rules.
        r.push((
            "ISTIO_OUTPUT",
            format!("-p tcp -o lo -m mark --mark {mark} -j RETURN"),
        ));
        for (kind, ids) in [("uid", &cfg.proxy_uids), ("gid", &cfg.proxy_gids)] {
            for id in ids {
                // The proxy's outbound → its own inbound over lo is marked, so the inbound
                // rules above capture it (app → VIP → proxy → proxy → app).
                r.push((
                    "ISTIO_OUTPUT",
                    format!("! -d {lo} -p tcp -o lo -m owner --{kind}-owner {id} -j MARK --set-mark {OUTBOUND_MARK}"),
                ));
            }
        }
        r.push((
            "ISTIO_OUTPUT",
            format!("-p tcp -m connmark --mark {mark} -j CONNMARK --restore-mark"),
        ));
        if cfg.inbound_ports != InboundPorts::None {
            head.push(("PREROUTING", head_rule("-p tcp", "ISTIO_INBOUND")));
        }
        head.push((
            "PREROUTING",
            format!("-p tcp -m mark --mark {mark} -m comment --comment {COMMENT} -j CONNMARK --save-mark"),
        ));
        head.push(("OUTPUT", head_rule("-p tcp", "ISTIO_OUTPUT")));
    }
    Some(TableRules {
        table: "mangle",
        chains,
        rules: r,
        head,
    })
}

/// Splits UDP DNS into two conntrack zones (proxy ↔ resolvers, clients ↔ proxy), avoiding
/// conntrack collisions between the redirected query and the proxy's forwarded one (istio's
/// `addDNSConntrackZones`).
fn raw(cfg: &CaptureConfig, fam: Family) -> Option<TableRules> {
    let servers = dns_for(cfg, fam)?;
    let port = cfg.dns.as_ref().map(|d| d.port)?;
    let mut r: Vec<(&'static str, String)> = Vec::new();
    for (kind, ids) in [("uid", &cfg.proxy_uids), ("gid", &cfg.proxy_gids)] {
        for id in ids {
            r.push((
                "ISTIO_OUTPUT_DNS",
                format!("-p udp --dport 53 -m owner --{kind}-owner {id} -j CT --zone 1"),
            ));
            r.push((
                "ISTIO_OUTPUT_DNS",
                format!("-p udp --sport {port} -m owner --{kind}-owner {id} -j CT --zone 2"),
            ));
        }
    }
    for d in dest_matches(&servers) {
        r.push((
            "ISTIO_OUTPUT_DNS",
            format!("-p udp --dport 53{d} -j CT --zone 2"),
        ));
    }
    for s in source_matches(&servers) {
        r.push((
            "ISTIO_INBOUND",
            format!("-p udp --sport 53{s} -j CT --zone 1"),
        ));
    }
    Some(TableRules {
        table: "raw",
        chains: vec!["ISTIO_OUTPUT_DNS", "ISTIO_INBOUND"],
        rules: r,
        head: vec![
            ("PREROUTING", head_rule("", "ISTIO_INBOUND")),
            ("OUTPUT", head_rule("", "ISTIO_OUTPUT_DNS")),
        ],
    })
}

/// The DNS servers to capture in `fam`: `Some(empty)` means every destination, `None` means no
/// DNS capture in this family (servers were listed, none of this family).
fn dns_for(cfg: &CaptureConfig, fam: Family) -> Option<Vec<String>> {
    let dns = cfg.dns.as_ref()?;
    if dns.servers.is_empty() {
        return Some(Vec::new());
    }
    let host = match fam {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    let servers: Vec<String> = dns
        .servers
        .iter()
        .filter(|s| fam.matches(**s))
        .map(|s| format!("{s}/{host}"))
        .collect();
    (!servers.is_empty()).then_some(servers)
}

fn dest_matches(servers: &[String]) -> Vec<String> {
    if servers.is_empty() {
        vec![String::new()]
    } else {
        servers.iter().map(|s| format!(" -d {s}")).collect()
    }
}

fn source_matches(servers: &[String]) -> Vec<String> {
    if servers.is_empty() {
        vec![String::new()]
    } else {
        servers.iter().map(|s| format!(" -s {s}")).collect()
    }
}
