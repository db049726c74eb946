//! Native nftables: one `nft -f` script with the same chains and semantics.
//!
//! Petrel owns whole tables here (`inet petrel_nat`, `inet petrel_mangle`, `inet petrel_raw`),
//! each mirroring the iptables table of the same name, with istio's chain names inside. Our base
//! chains hook in 10 priority points *before* the standard ones (`dstnat`, `mangle`, `raw`), the
//! nftables analogue of inserting jump rules at the head: other tables cannot act on a packet
//! before we have captured it. Re-applying replaces the tables atomically
//! (`table X` + `delete table X` + `table X { ... }` in one transaction), and cleanup deletes
//! them: nothing outside our tables is ever touched.
use std::fmt::Write as _;

use super::Family;
use crate::config::{
    CaptureConfig, InboundPorts, InterceptMode, Interface, OutboundCidrs, PortSpec, OUTBOUND_MARK,
};

/// Our tables, all in the `inet` family.
pub const TABLES: [&str; 3] = ["petrel_mangle", "petrel_nat", "petrel_raw"];

/// Priority of our nat hooks: `dstnat` (-100) minus 10.
const NAT_PRIORITY: i32 = -110;
/// Priority of our mangle hooks: `mangle` (-150) minus 10.
const MANGLE_PRIORITY: i32 = -160;
/// Priority of our raw hooks: `raw` (-300) minus 10, before conntrack (-200) so zones apply.
const RAW_PRIORITY: i32 = -310;

/// The `nft -f` script installing the rule set, replacing any previous one of ours.
pub fn script(cfg: &CaptureConfig) -> String {
    let mut out = cleanup_script();
    out.push_str(&nat(cfg));
    if let Some(m) = mangle(cfg) {
        out.push_str(&m);
    }
    if let Some(r) = raw(cfg) {
        out.push_str(&r);
    }
    out
}

/// The `nft -f` script removing all our tables; a no-op where they do not exist.
pub fn cleanup_script() -> String {
    let mut out = String::new();
    for t in TABLES {
        // Declaring first makes the delete valid when the table does not exist yet.
        let _ = writeln!(out, "table inet {t}\ndelete table inet {t}");
    }
    out
}

/// Rules for both families unless IPv6 is off, then IPv6 is let through untouched first.
fn family_guard(cfg: &CaptureConfig) -> &'static str {
    if cfg.ipv6 {
        ""
    } else {
        "\t\tmeta nfproto ipv6 return\n"
    }
}

fn addr_kw(fam: Family) -> &'static str {
    match fam {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn host(fam: Family) -> &'static str {
    match fam {
        Family::V4 => "127.0.0.1",
        Family::V6 => "::1",
    }
}

fn passthrough(fam: Family) -> &'static str {
    match fam {
        Family::V4 => "127.0.0.6",
        Family::V6 => "::6",
    }
}

fn ports(p: &[PortSpec]) -> String {
    if let [one] = p {
        one.nft()
    } else {
        format!(
            "{{ {} }}",
            p.iter().map(PortSpec::nft).collect::<Vec<_>>().join(", ")
        )
    }
}

struct Chain {
    name: &'static str,
    hook: Option<String>,
    rules: Vec<String>,
}

fn table(name: &str, chains: &[Chain]) -> String {
    let mut out = format!("table inet {name} {{\n");
    for c in chains {
        let _ = writeln!(out, "\tchain {} {{", c.name);
        if let Some(hook) = &c.hook {
            let _ = writeln!(out, "\t\t{hook}");
        }
        for r in &c.rules {
            let _ = writeln!(out, "\t\t{r}");
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

fn dns_servers(cfg: &CaptureConfig, fam: Family) -> Option<Vec<String>> {
    let dns = cfg.dns.as_ref()?;
    if dns.servers.is_empty() {
        return Some(Vec::new());
    }
    let s: Vec<String> = dns
        .servers
        .iter()
        .filter(|s| s.is_ipv4() == (fam == Family::V4))
        .map(ToString::to_string)
        .collect();
    (!s.is_empty()).then_some(s)
}

fn nat(cfg: &CaptureConfig) -> String {
    let fams = Family::enabled(cfg);
    let tunnel = cfg.inbound_tunnel_port;
    let dns_any = fams.iter().any(|f| dns_servers(cfg, *f).is_some());
    let mut inbound = Vec::new();
    for iface in cfg.exclude_interfaces.iter().map(Interface::nft) {
        inbound.push(format!("iifname \"{iface}\" return"));
    }
    for iface in cfg.kube_virt_interfaces.iter().map(Interface::nft) {
        match &cfg.outbound_cidrs {
            OutboundCidrs::All => inbound.push(format!("iifname \"{iface}\" jump ISTIO_REDIRECT")),
            OutboundCidrs::Only(cidrs) => {
                for c in cidrs.iter().filter(|c| fams.contains(&fam_of(c.is_ipv4()))) {
                    let kw = addr_kw(fam_of(c.is_ipv4()));
                    inbound.push(format!(
                        "iifname \"{iface}\" {kw} daddr {c} jump ISTIO_REDIRECT"
                    ));
                }
            }
            OutboundCidrs::None => {}
        }
        inbound.push(format!("iifname \"{iface}\" return"));
    }
    inbound.push(format!("tcp dport {tunnel} return"));
    if cfg.mode == InterceptMode::Redirect {
        match &cfg.inbound_ports {
            InboundPorts::All => {
                if !cfg.inbound_ports_exclude.is_empty() {
                    inbound.push(format!(
                        "tcp dport {} return",
                        ports(&cfg.inbound_ports_exclude)
                    ));
                }
                inbound.push("meta l4proto tcp jump ISTIO_IN_REDIRECT".into());
            }
            InboundPorts::Only(p) => {
                inbound.push(format!("tcp dport {} jump ISTIO_IN_REDIRECT", ports(p)))
            }
            InboundPorts::None => {}
        }
    }

    let mut output = Vec::new();
    for iface in cfg.exclude_interfaces.iter().map(Interface::nft) {
        output.push(format!("oifname \"{iface}\" return"));
    }
    if !cfg.outbound_ports_exclude.is_empty() {
        let p = ports(&cfg.outbound_ports_exclude);
        output.push(format!("tcp dport {p} return"));
        output.push(format!("udp dport {p} return"));
    }
    for &f in fams {
        output.push(format!(
            "oifname \"lo\" {} saddr {} return",
            addr_kw(f),
            passthrough(f)
        ));
    }
    for (key, ids) in [("skuid", &cfg.proxy_uids), ("skgid", &cfg.proxy_gids)] {
        for id in ids {
            let except = if dns_any {
                format!("{{ 53, {tunnel} }}")
            } else {
                tunnel.to_string()
            };
            for &f in fams {
                output.push(format!(
                    "oifname \"lo\" {} daddr != {} tcp dport != {except} meta {key} {id} jump ISTIO_IN_REDIRECT",
                    addr_kw(f),
                    host(f)
                ));
            }
            if !cfg.includes_loopback() {
                let dns_exception = if dns_any { "tcp dport != 53 " } else { "" };
                output.push(format!(
                    "oifname \"lo\" {dns_exception}meta {key} != {id} return"
                ));
            }
            output.push(format!("meta {key} {id} return"));
        }
    }
    let mut dns_chain = Vec::new();
    if let Some(d) = &cfg.dns {
        output.push("jump ISTIO_OUTPUT_DNS".into());
        for proto in ["tcp", "udp"] {
            if proto == "udp" {
                for id in &cfg.proxy_uids {
                    dns_chain.push(format!("udp dport 53 meta skuid {id} return"));
                }
                for id in &cfg.proxy_gids {
                    dns_chain.push(format!("udp dport 53 meta skgid {id} return"));
                }
            }
            if d.servers.is_empty() {
                dns_chain.push(format!("{proto} dport 53 redirect to :{}", d.port));
            }
            for &f in fams {
                for s in dns_servers(cfg, f).unwrap_or_default() {
                    dns_chain.push(format!(
                        "{} daddr {s} {proto} dport 53 redirect to :{}",
                        addr_kw(f),
                        d.port
                    ));
                }
            }
        }
    }
    for &f in fams {
        output.push(format!("{} daddr {} return", addr_kw(f), host(f)));
    }
    for c in &cfg.outbound_cidrs_exclude {
        if fams.contains(&fam_of(c.is_ipv4())) {
            output.push(format!("{} daddr {c} return", addr_kw(fam_of(c.is_ipv4()))));
        }
    }
    if !cfg.outbound_ports_include.is_empty() {
        output.push(format!(
            "tcp dport {} jump ISTIO_REDIRECT",
            ports(&cfg.outbound_ports_include)
        ));
    }
    match &cfg.outbound_cidrs {
        OutboundCidrs::All => output.push("jump ISTIO_REDIRECT".into()),
        OutboundCidrs::Only(cidrs) => {
            for c in cidrs.iter().filter(|c| fams.contains(&fam_of(c.is_ipv4()))) {
                output.push(format!(
                    "{} daddr {c} jump ISTIO_REDIRECT",
                    addr_kw(fam_of(c.is_ipv4()))
                ));
            }
        }
        OutboundCidrs::None => {}
    }

    let guard = family_guard(cfg);
    let mut chains = vec![
        Chain {
            name: "ISTIO_INBOUND",
            hook: None,
            rules: inbound,
        },
        Chain {
            name: "ISTIO_REDIRECT",
            hook: None,
            rules: vec![format!("meta l4proto tcp redirect to :{}", cfg.proxy_port)],
        },
        Chain {
            name: "ISTIO_IN_REDIRECT",
            hook: None,
            rules: vec![format!(
                "meta l4proto tcp redirect to :{}",
                cfg.inbound_capture_port
            )],
        },
        Chain {
            name: "ISTIO_OUTPUT",
            hook: None,
            rules: output,
        },
    ];
    if cfg.dns.is_some() {
        chains.push(Chain {
            name: "ISTIO_OUTPUT_DNS",
            hook: None,
            rules: dns_chain,
        });
    }
    let redirect_inbound =
        cfg.mode == InterceptMode::Redirect && cfg.inbound_ports != InboundPorts::None;
    if redirect_inbound || !cfg.kube_virt_interfaces.is_empty() {
        chains.push(Chain {
            name: "PREROUTING",
            hook: Some(format!(
                "type nat hook prerouting priority {NAT_PRIORITY}; policy accept;\n{guard}\t\tmeta l4proto tcp jump ISTIO_INBOUND"
            )),
            rules: vec![],
        });
    }
    chains.push(Chain {
        name: "OUTPUT",
        hook: Some(format!(
            "type nat hook output priority {NAT_PRIORITY}; policy accept;\n{guard}\t\tjump ISTIO_OUTPUT"
        )),
        rules: vec![],
    });
    table("petrel_nat", &chains)
}

fn fam_of(v4: bool) -> Family {
    if v4 {
        Family::V4
    } else {
        Family::V6
    }
}

fn mangle(cfg: &CaptureConfig) -> Option<String> {
    let tproxy = cfg.mode == InterceptMode::Tproxy;
    if !tproxy && !cfg.drop_invalid {
        return None;
    }
    let fams = Family::enabled(cfg);
    let guard = family_guard(cfg);
    let mark = cfg.tproxy_mark;
    let mut chains = Vec::new();
    let mut prerouting = Vec::new();
    if cfg.drop_invalid {
        prerouting.push("ct state invalid drop".to_string());
    }
    let mut output_hook = None;
    if tproxy {
        chains.push(Chain {
            name: "ISTIO_DIVERT",
            hook: None,
            rules: vec![format!("meta mark set {mark} accept")],
        });
        chains.push(Chain {
            name: "ISTIO_TPROXY",
            hook: None,
            rules: fams
                .iter()
                .map(|&f| {
                    format!(
                        "{kw} daddr != {h} meta l4proto tcp tproxy {kw} to :{port} meta mark set {mark} accept",
                        kw = addr_kw(f),
                        h = host(f),
                        port = cfg.inbound_capture_port
                    )
                })
                .collect(),
        });
        let mut inbound = vec![format!("meta l4proto tcp meta mark {mark} return")];
        for &f in fams {
            inbound.push(format!(
                "iifname \"lo\" {} saddr {} meta l4proto tcp return",
                addr_kw(f),
                passthrough(f)
            ));
        }
        inbound.push(format!(
            "iifname \"lo\" meta l4proto tcp meta mark != {OUTBOUND_MARK} return"
        ));
        for iface in cfg.exclude_interfaces.iter().map(Interface::nft) {
            inbound.push(format!("iifname \"{iface}\" return"));
        }
        match &cfg.inbound_ports {
            InboundPorts::All => {
                if !cfg.inbound_ports_exclude.is_empty() {
                    inbound.push(format!(
                        "tcp dport {} return",
                        ports(&cfg.inbound_ports_exclude)
                    ));
                }
                inbound
                    .push("meta l4proto tcp ct state related,established jump ISTIO_DIVERT".into());
                inbound.push("meta l4proto tcp jump ISTIO_TPROXY".into());
            }
            InboundPorts::Only(p) => {
                let p = ports(p);
                inbound.push(format!(
                    "tcp dport {p} ct state related,established jump ISTIO_DIVERT"
                ));
                inbound.push(format!("tcp dport {p} jump ISTIO_TPROXY"));
            }
            InboundPorts::None => {}
        }
        chains.push(Chain {
            name: "ISTIO_INBOUND",
            hook: None,
            rules: inbound,
        });
        let mut output = vec![format!(
            "oifname \"lo\" meta l4proto tcp meta mark {mark} return"
        )];
        for (key, ids) in [("skuid", &cfg.proxy_uids), ("skgid", &cfg.proxy_gids)] {
            for id in ids {
                for &f in fams {
                    output.push(format!(
                        "oifname \"lo\" {} daddr != {} meta l4proto tcp meta {key} {id} meta mark set {OUTBOUND_MARK}",
                        addr_kw(f),
                        host(f)
                    ));
                }
            }
        }
        output.push(format!(
            "meta l4proto tcp ct mark {mark} meta mark set ct mark"
        ));
        chains.push(Chain {
            name: "ISTIO_OUTPUT",
            hook: None,
            rules: output,
        });
        if cfg.inbound_ports != InboundPorts::None {
            prerouting.push("meta l4proto tcp jump ISTIO_INBOUND".into());
        }
        prerouting.push(format!(
            "meta l4proto tcp meta mark {mark} ct mark set meta mark"
        ));
        output_hook = Some(Chain {
            name: "OUTPUT",
            hook: Some(format!(
                "type route hook output priority {MANGLE_PRIORITY}; policy accept;\n{guard}\t\tmeta l4proto tcp jump ISTIO_OUTPUT"
            )),
            rules: vec![],
        });
    }
    chains.push(Chain {
        name: "PREROUTING",
        hook: Some(
            format!(
                "type filter hook prerouting priority {MANGLE_PRIORITY}; policy accept;\n{guard}"
            )
            .trim_end()
            .to_string(),
        ),
        rules: prerouting,
    });
    chains.extend(output_hook);
    Some(table("petrel_mangle", &chains))
}

fn raw(cfg: &CaptureConfig) -> Option<String> {
    let d = cfg.dns.as_ref()?;
    let fams = Family::enabled(cfg);
    if !fams.iter().any(|f| dns_servers(cfg, *f).is_some()) {
        return None;
    }
    let guard = family_guard(cfg);
    let mut out_dns = Vec::new();
    for (key, ids) in [("skuid", &cfg.proxy_uids), ("skgid", &cfg.proxy_gids)] {
        for id in ids {
            out_dns.push(format!("udp dport 53 meta {key} {id} ct zone set 1"));
            out_dns.push(format!(
                "udp sport {} meta {key} {id} ct zone set 2",
                d.port
            ));
        }
    }
    let mut inbound = Vec::new();
    if d.servers.is_empty() {
        out_dns.push("udp dport 53 ct zone set 2".into());
        inbound.push("udp sport 53 ct zone set 1".into());
    }
    for &f in fams {
        for s in dns_servers(cfg, f).unwrap_or_default() {
            let kw = addr_kw(f);
            out_dns.push(format!("{kw} daddr {s} udp dport 53 ct zone set 2"));
            inbound.push(format!("{kw} saddr {s} udp sport 53 ct zone set 1"));
        }
    }
    let chains = [
        Chain {
            name: "ISTIO_OUTPUT_DNS",
            hook: None,
            rules: out_dns,
        },
        Chain {
            name: "ISTIO_INBOUND",
            hook: None,
            rules: inbound,
        },
        Chain {
            name: "PREROUTING",
            hook: Some(format!(
                "type filter hook prerouting priority {RAW_PRIORITY}; policy accept;\n{guard}\t\tjump ISTIO_INBOUND"
            )),
            rules: vec![],
        },
        Chain {
            name: "OUTPUT",
            hook: Some(format!(
                "type filter hook output priority {RAW_PRIORITY}; policy accept;\n{guard}\t\tjump ISTIO_OUTPUT_DNS"
            )),
            rules: vec![],
        },
    ];
    Some(table("petrel_raw", &chains))
}
