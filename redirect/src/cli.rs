//! `petrel redirect`: istio-iptables' flags, so Petrel can replace it in an init container.
//!
//! Short flags and long names are istio-iptables' (`-p/--envoy-port`, `-b/--istio-inbound-ports`,
//! ...), so an existing init container keeps working with only the binary changed. As in
//! istio, `-c` is *excluded* interfaces and `-k` KubeVirt interfaces (inbound treated as
//! outbound); istio has no `-Q`, so neither does Petrel.
//!
//! `--vm` adds the TSF Mesh VM mode: inbound capture only for the app's ports, outbound capture
//! only for the mesh (the capture range the mesh DNS allocates from, plus the mesh's real
//! service CIDRs), and DNS capture so that names resolve through the mesh DNS.
//!
//! The operator-facing description follows.
#![doc = include_str!("../docs/capture.md")]

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::apply::{self, ApplyOptions, Backend};
use crate::config::{
    parse_list, parse_one, split_list, CaptureConfig, Cidr, DnsCapture, InboundPorts,
    InterceptMode, OutboundCidrs, PortSpec, DEFAULT_VM_CAPTURE_CIDR,
};
use crate::error::RedirectError;

/// Flags of `petrel redirect` (istio-iptables compatible, plus Petrel's VM mode).
#[derive(Clone, Debug, Parser)]
#[command(
    name = "petrel redirect",
    about = "Set up (or remove) transparent capture of a pod's or VM's traffic to Petrel",
    long_about = None
)]
pub struct RedirectArgs {
    /// Port to which all captured outbound TCP traffic is redirected.
    #[arg(
        short = 'p',
        long = "envoy-port",
        visible_alias = "proxy-port",
        default_value = "15001"
    )]
    pub proxy_port: String,

    /// Port to which all captured inbound TCP traffic is redirected.
    #[arg(short = 'z', long = "inbound-capture-port", default_value = "15006")]
    pub inbound_capture_port: String,

    /// Inbound port never captured (istio's HBONE tunnel port).
    #[arg(short = 'e', long = "inbound-tunnel-port", default_value = "15008")]
    pub inbound_tunnel_port: String,

    /// UID(s) (numbers or user names) whose traffic is never captured: the proxy's [default: 1337].
    #[arg(
        short = 'u',
        long = "proxy-uid",
        default_value = "",
        hide_default_value = true
    )]
    pub proxy_uid: String,

    /// GID(s) whose traffic is never captured [default: the -u values].
    #[arg(
        short = 'g',
        long = "proxy-gid",
        default_value = "",
        hide_default_value = true
    )]
    pub proxy_gid: String,

    /// Inbound interception mode: REDIRECT or TPROXY.
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        default_value = "REDIRECT"
    )]
    pub mode: String,

    /// TPROXY packet mark.
    #[arg(
        short = 't',
        long = "istio-inbound-tproxy-mark",
        default_value = "1337"
    )]
    pub tproxy_mark: String,

    /// TPROXY policy routing table.
    #[arg(
        short = 'r',
        long = "istio-inbound-tproxy-route-table",
        default_value = "133"
    )]
    pub tproxy_route_table: String,

    /// Inbound ports to capture (comma separated), or "*" for all; empty disables inbound.
    #[arg(
        short = 'b',
        long = "istio-inbound-ports",
        visible_alias = "app-ports",
        default_value = "",
        hide_default_value = true
    )]
    pub inbound_ports: String,

    /// Inbound ports never captured; applies with -b "*".
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        default_value = "",
        hide_default_value = true
    )]
    pub inbound_ports_exclude: String,

    /// Outbound CIDRs to capture (comma separated), or "*" for all; empty disables.
    #[arg(
        short = 'i',
        long = "istio-service-cidr",
        default_value = "",
        hide_default_value = true
    )]
    pub outbound_cidrs: String,

    /// Outbound CIDRs never captured.
    #[arg(
        short = 'x',
        long = "istio-service-exclude-cidr",
        default_value = "",
        hide_default_value = true
    )]
    pub outbound_cidrs_exclude: String,

    /// Outbound ports captured whatever the destination.
    #[arg(
        short = 'q',
        long = "istio-outbound-ports",
        default_value = "",
        hide_default_value = true
    )]
    pub outbound_ports_include: String,

    /// Outbound ports never captured.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        default_value = "",
        hide_default_value = true
    )]
    pub outbound_ports_exclude: String,

    /// Interfaces whose traffic is never captured, in or out.
    #[arg(
        short = 'c',
        long = "istio-exclude-interfaces",
        default_value = "",
        hide_default_value = true
    )]
    pub exclude_interfaces: String,

    /// Interfaces whose inbound traffic is treated as outbound (VMs behind the pod).
    #[arg(
        short = 'k',
        long = "kube-virt-interfaces",
        default_value = "",
        hide_default_value = true
    )]
    pub kube_virt_interfaces: String,

    /// The proxy's admin port: never captured inbound (added to -d).
    #[arg(long = "admin-port")]
    pub admin_port: Option<String>,

    /// Print the rule scripts instead of applying them.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,

    /// Remove the rules Petrel installed (and nothing else), then exit.
    #[arg(long)]
    pub cleanup: bool,

    /// Firewall backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,

    /// Also generate IPv6 rules [default: when the host has IPv6].
    #[arg(long, visible_alias = "dual-stack", overrides_with = "no_ipv6")]
    pub ipv6: bool,

    /// Generate IPv4 rules only.
    #[arg(long, overrides_with = "ipv6")]
    pub no_ipv6: bool,

    /// Capture DNS (UDP and TCP port 53) to the mesh DNS server; implied by --vm.
    #[arg(long = "redirect-dns")]
    pub redirect_dns: bool,

    /// Capture DNS to any destination, not only to the resolvers of /etc/resolv.conf.
    #[arg(long = "capture-all-dns")]
    pub capture_all_dns: bool,

    /// Capture only DNS queries to these resolvers (comma separated IPs) [default: the
    /// nameservers of /etc/resolv.conf, or every destination if it lists none].
    #[arg(long = "dns-servers", default_value = "", hide_default_value = true)]
    pub dns_servers: String,

    /// Local port of the mesh DNS server.
    #[arg(long = "dns-port", default_value = "15053")]
    pub dns_port: String,

    /// Drop conntrack-INVALID packets instead of letting them reset connections.
    #[arg(long = "drop-invalid")]
    pub drop_invalid: bool,

    /// VM mode: capture inbound only for -b's app ports, outbound only for the mesh capture
    /// range and --mesh-cidrs (and -i), and DNS.
    #[arg(long)]
    pub vm: bool,

    /// VM mode: the range the mesh DNS allocates service addresses from.
    #[arg(long = "vm-capture-cidr", default_value = DEFAULT_VM_CAPTURE_CIDR)]
    pub vm_capture_cidr: String,

    /// VM mode: the mesh's real service CIDRs, captured too (comma separated).
    #[arg(long = "mesh-cidrs", default_value = "", hide_default_value = true)]
    pub mesh_cidrs: String,

    /// Record what was installed here, so a later --cleanup (or the next proxy start) removes
    /// exactly that, even after a crash.
    #[arg(long = "state-file")]
    pub state_file: Option<PathBuf>,

    // --- istio-iptables flags Istio's sidecar injector passes; accepted so that an unchanged
    // init container works ---
    /// Apply even when rules exist (istio `--force-apply`): Petrel always replaces its own
    /// previous rules, so this changes nothing.
    #[arg(long = "force-apply")]
    pub force_apply: bool,

    /// istio's `--native-nftables`: the same as `--backend nft`.
    #[arg(long = "native-nftables")]
    pub native_nftables: bool,

    /// Validate the flags and apply nothing (istio `--skip-rule-apply`, used when istio-cni
    /// installs the rules).
    #[arg(long = "skip-rule-apply")]
    pub skip_rule_apply: bool,

    /// istio's redirect validation (`--run-validation`, istio-cni's validation init container):
    /// not implemented; refused with an explanation rather than silently skipped.
    #[arg(long = "run-validation", hide = true)]
    pub run_validation: bool,

    /// istio's log levels (`--log_output_level=default:info`): accepted, no effect (Petrel
    /// reports errors on stderr and `RUST_LOG` sets its log level).
    #[arg(long = "log_output_level", hide = true)]
    pub log_output_level: Option<String>,

    /// istio's JSON logging switch: accepted, no effect.
    #[arg(long = "log_as_json", hide = true)]
    pub log_as_json: bool,
}

/// Facts about the host that some flags default to. Read once by [`run`]; tests pass them
/// explicitly so that generated rules do not depend on the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostDefaults {
    /// Whether the host has IPv6 (default of `--ipv6`/`--no-ipv6`).
    pub ipv6: bool,
    /// `nameserver`s of `/etc/resolv.conf` (default of `--dns-servers`); empty means capture
    /// DNS to any destination.
    pub resolvers: Vec<IpAddr>,
}

// === impl HostDefaults ===

impl HostDefaults {
    /// Reads `/proc` and `/etc/resolv.conf`.
    pub fn detect() -> Self {
        Self {
            ipv6: apply::ipv6_available(),
            resolvers: std::fs::read_to_string("/etc/resolv.conf")
                .map(|t| parse_resolv_conf(&t))
                .unwrap_or_default(),
        }
    }
}

/// The `nameserver` addresses of a resolv.conf (IPv6 zone suffixes dropped).
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|a| a.split('%').next()?.parse().ok())
        .collect()
}

// === impl RedirectArgs ===

impl RedirectArgs {
    /// `Some(true)` for `--ipv6`, `Some(false)` for `--no-ipv6`, `None` to detect.
    pub fn ipv6_choice(&self) -> Option<bool> {
        match (self.ipv6, self.no_ipv6) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }

    /// The backend to use: `--backend`, or `nft` for istio's `--native-nftables`.
    pub fn backend(&self) -> Result<Backend, RedirectError> {
        match (self.native_nftables, self.backend) {
            (false, b) => Ok(b),
            (true, Backend::Auto | Backend::Nft) => Ok(Backend::Nft),
            (true, b) => Err(RedirectError::invalid(
                "--backend",
                b.name(),
                "conflicts with --native-nftables",
            )),
        }
    }

    /// Validates the flags into a [`CaptureConfig`]; `host` supplies the defaults that depend on
    /// the machine (IPv6 when neither `--ipv6` nor `--no-ipv6` is given, the resolvers whose
    /// queries are captured when neither `--dns-servers` nor `--capture-all-dns` is given).
    pub fn to_config(&self, host: &HostDefaults) -> Result<CaptureConfig, RedirectError> {
        let port = |flag, s: &str| -> Result<u16, RedirectError> {
            let p: PortSpec = parse_one(flag, s)?;
            if p.first != p.last {
                return Err(RedirectError::invalid(
                    flag,
                    s,
                    "a single port is expected here",
                ));
            }
            Ok(p.first)
        };
        if self.run_validation {
            return Err(RedirectError::Unsupported {
                flag: "--run-validation",
                reason: "Petrel does not probe the installed redirect; run `petrel redirect` \
                         itself in the init container instead of validating istio-cni's rules",
            });
        }
        self.backend()?;
        let mut cfg = CaptureConfig {
            proxy_port: port("-p/--envoy-port", &self.proxy_port)?,
            inbound_capture_port: port("-z/--inbound-capture-port", &self.inbound_capture_port)?,
            inbound_tunnel_port: port("-e/--inbound-tunnel-port", &self.inbound_tunnel_port)?,
            ..CaptureConfig::default()
        };
        cfg.proxy_uids = ids("-u/--proxy-uid", &self.proxy_uid, "/etc/passwd")?;
        if cfg.proxy_uids.is_empty() {
            cfg.proxy_uids = vec![crate::config::DEFAULT_PROXY_UID];
        }
        cfg.proxy_gids = ids("-g/--proxy-gid", &self.proxy_gid, "/etc/group")?;
        if cfg.proxy_gids.is_empty() {
            cfg.proxy_gids = cfg.proxy_uids.clone();
        }
        cfg.mode = match self.mode.trim().to_ascii_uppercase().as_str() {
            "REDIRECT" | "" => InterceptMode::Redirect,
            "TPROXY" => InterceptMode::Tproxy,
            _ => {
                return Err(RedirectError::invalid(
                    "-m/--istio-inbound-interception-mode",
                    &self.mode,
                    "expected REDIRECT or TPROXY",
                ))
            }
        };
        cfg.tproxy_mark = number("-t/--istio-inbound-tproxy-mark", &self.tproxy_mark)?;
        cfg.tproxy_route_table = number(
            "-r/--istio-inbound-tproxy-route-table",
            &self.tproxy_route_table,
        )?;
        if cfg.tproxy_mark == 0 || cfg.tproxy_mark == crate::config::OUTBOUND_MARK {
            return Err(RedirectError::invalid(
                "-t/--istio-inbound-tproxy-mark",
                &self.tproxy_mark,
                "must be non-zero and not 1338 (the proxy's outbound mark)",
            ));
        }

        const B: &str = "-b/--istio-inbound-ports";
        cfg.inbound_ports = match self.inbound_ports.trim() {
            "" => InboundPorts::None,
            "*" => InboundPorts::All,
            s => InboundPorts::Only(parse_list(B, s)?),
        };
        cfg.inbound_ports_exclude = parse_list(
            "-d/--istio-local-exclude-ports",
            &self.inbound_ports_exclude,
        )?;
        if let Some(admin) = &self.admin_port {
            cfg.inbound_ports_exclude
                .push(PortSpec::single(port("--admin-port", admin)?));
        }

        const I: &str = "-i/--istio-service-cidr";
        cfg.outbound_cidrs = match self.outbound_cidrs.trim() {
            "" => OutboundCidrs::None,
            "*" => OutboundCidrs::All,
            s => OutboundCidrs::Only(parse_list(I, s)?),
        };
        cfg.outbound_cidrs_exclude = parse_list(
            "-x/--istio-service-exclude-cidr",
            &self.outbound_cidrs_exclude,
        )?;
        if self.outbound_cidrs_exclude.trim() == "*" {
            return Err(RedirectError::invalid(
                "-x/--istio-service-exclude-cidr",
                "*",
                "a wildcard exclusion would disable outbound capture; leave -i empty instead",
            ));
        }
        cfg.outbound_ports_include =
            parse_list("-q/--istio-outbound-ports", &self.outbound_ports_include)?;
        cfg.outbound_ports_exclude = parse_list(
            "-o/--istio-local-outbound-ports-exclude",
            &self.outbound_ports_exclude,
        )?;
        cfg.exclude_interfaces =
            parse_list("-c/--istio-exclude-interfaces", &self.exclude_interfaces)?;
        cfg.kube_virt_interfaces =
            parse_list("-k/--kube-virt-interfaces", &self.kube_virt_interfaces)?;

        let dns_port = port("--dns-port", &self.dns_port)?;
        if dns_port == 53 {
            return Err(RedirectError::invalid(
                "--dns-port",
                &self.dns_port,
                "the mesh DNS cannot listen on 53 itself: queries to 53 are what is redirected",
            ));
        }
        let servers: Vec<IpAddr> = split_list(&self.dns_servers)
            .map(|s| {
                s.parse()
                    .map_err(|_| RedirectError::invalid("--dns-servers", s, "not an IP address"))
            })
            .collect::<Result<_, _>>()?;
        if self.capture_all_dns && !servers.is_empty() {
            return Err(RedirectError::invalid(
                "--dns-servers",
                &self.dns_servers,
                "conflicts with --capture-all-dns",
            ));
        }
        if self.redirect_dns || self.vm {
            // Like istio: without an explicit choice only queries to the configured resolvers are
            // captured, so a local caching resolver's own upstream queries are not looped back.
            let servers = if !servers.is_empty() || self.capture_all_dns {
                servers
            } else {
                host.resolvers.clone()
            };
            cfg.dns = Some(DnsCapture {
                port: dns_port,
                servers,
            });
        }
        cfg.drop_invalid = self.drop_invalid;
        cfg.ipv6 = self.ipv6_choice().unwrap_or(host.ipv6);

        if self.vm {
            self.apply_vm(&mut cfg)?;
        } else if !self.mesh_cidrs.trim().is_empty() {
            return Err(RedirectError::invalid(
                "--mesh-cidrs",
                &self.mesh_cidrs,
                "only meaningful with --vm",
            ));
        }
        Ok(cfg)
    }

    /// VM mode: never capture everything; the mesh is the capture range plus its CIDRs.
    fn apply_vm(&self, cfg: &mut CaptureConfig) -> Result<(), RedirectError> {
        if cfg.inbound_ports == InboundPorts::All {
            return Err(RedirectError::invalid(
                "-b/--istio-inbound-ports",
                "*",
                "in --vm mode list the application's ports: other services on the VM must stay reachable directly",
            ));
        }
        let mut mesh: Vec<Cidr> = vec![parse_one("--vm-capture-cidr", &self.vm_capture_cidr)?];
        mesh.extend(parse_list::<Cidr>("--mesh-cidrs", &self.mesh_cidrs)?);
        match std::mem::take(&mut cfg.outbound_cidrs) {
            OutboundCidrs::All => {
                return Err(RedirectError::invalid(
                    "-i/--istio-service-cidr",
                    "*",
                    "--vm captures only mesh destinations; list the mesh's CIDRs instead",
                ))
            }
            OutboundCidrs::Only(extra) => mesh.extend(extra),
            OutboundCidrs::None => {}
        }
        mesh.dedup();
        cfg.outbound_cidrs = OutboundCidrs::Only(mesh);
        Ok(())
    }
}

/// Parses a comma separated list of numeric IDs or names (looked up in `db`).
fn ids(flag: &'static str, s: &str, db: &str) -> Result<Vec<u32>, RedirectError> {
    split_list(s)
        .map(|e| {
            if let Ok(id) = e.parse::<u32>() {
                return Ok(id);
            }
            lookup_id(db, e).ok_or_else(|| {
                RedirectError::invalid(flag, e, format!("not a number nor a name in {db}"))
            })
        })
        .collect()
}

/// `name:x:ID:...` lines of /etc/passwd and /etc/group.
fn lookup_id(db: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(db).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}

fn number(flag: &'static str, s: &str) -> Result<u32, RedirectError> {
    let s = s.trim();
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| RedirectError::invalid(flag, s, "expected a number"))
}

/// Runs `petrel redirect`: validates the flags, then prints (`--dry-run`), removes
/// (`--cleanup`) or applies the rules.
pub fn run(args: RedirectArgs) -> Result<(), RedirectError> {
    let opts = ApplyOptions {
        backend: args.backend()?,
        state_file: args.state_file.clone(),
    };
    if args.cleanup {
        if args.dry_run {
            print(&format!(
                "# iptables-restore --noflush: delete rules commented `{}` and the ISTIO_* chains\n# nft -f -\n{}",
                crate::rules::COMMENT,
                crate::rules::nft::cleanup_script()
            ))?;
            return Ok(());
        }
        return apply::cleanup(&opts);
    }
    let cfg = args.to_config(&HostDefaults::detect())?;
    if args.dry_run {
        // Detection needs no privileges, but must not fail a dry run on a machine without
        // iptables: both iptables variants print the same script.
        let backend = apply::detect_backend(opts.backend).unwrap_or(Backend::IptablesNft);
        return print(&apply::dry_run_script(&cfg, backend));
    }
    if args.skip_rule_apply {
        // istio: the flags were checked; istio-cni (or someone else) installs the rules.
        return Ok(());
    }
    apply::apply(&cfg, &opts).map(drop)
}

fn print(s: &str) -> Result<(), RedirectError> {
    use std::io::Write as _;
    std::io::stdout()
        .lock()
        .write_all(s.as_bytes())
        .map_err(|source| RedirectError::Io {
            context: "writing to stdout".into(),
            source,
        })
}
