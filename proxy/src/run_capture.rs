//! `petrel run [--capture] [redirect flags] -- [proxy flags]`: the proxy with its own capture
//! rules, like TSF's pilot-agent on a VM.
//!
//! Order of events, each step only if the previous one succeeded:
//!
//! 1. Parse both flag sets; take the inbound ports from `spec.yaml` when `-b` is not given.
//! 2. Check everything that would make the proxy fail to start or the rules break the host,
//!    **before** a rule is installed: the redirect flags (→ [`CaptureConfig`]), the bootstrap
//!    and spec (compiled as `--mode validate` does), and that the two flag sets agree
//!    ([`check_consistency`]: captured DNS goes to a mesh DNS that will be listening, mesh
//!    names resolve into the captured range).
//! 3. `--dry-run` or `--mode validate`: print the rule scripts (dry run) and stop there, having
//!    changed nothing. This is what `examples/systemd/petrel.service` is tested with.
//! 4. Start the proxy. Once it handles SIGTERM, and before it binds the mesh DNS and the
//!    listeners, it installs the rules ([`redirect::CaptureGuard`]: rules a crashed run left,
//!    recorded in the state file, are removed first); they are removed when the proxy returns
//!    (SIGTERM, `/quitquitquit`, a startup error). Installing only after the signal handler
//!    exists closes the window in which a SIGTERM would kill the process with the rules in.
//!    SIGKILL leaves them: the next start or `petrel redirect --cleanup --state-file` (the
//!    unit's `ExecStopPost=`) removes them.
use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use redirect::config::{DnsCapture, OutboundCidrs};
use redirect::CaptureConfig;

use crate::cli::{Args, Mode};

/// Where `petrel run --capture` records installed rules when `--state-file` is not given.
pub const DEFAULT_CAPTURE_STATE: &str = "/run/petrel/capture.state";

/// `petrel run [--capture] [redirect flags] -- [proxy flags]`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "petrel run",
    about = "Run the proxy; with --capture, install capture rules before serving and remove them on exit",
    after_help = "Proxy flags (Envoy's, plus --spec/--mesh-dns/--capture-cidr) follow `--`.\n\
                  With --dry-run (or `-- --mode validate`) the rules are printed (dry run) and \
                  the configuration checked; nothing is installed or started."
)]
struct RunArgs {
    /// Install capture rules (the redirect flags below) before serving; remove them on exit.
    /// Rules left by a crashed run (recorded in --state-file) are removed first.
    #[arg(long)]
    capture: bool,
    #[command(flatten)]
    redirect: redirect::RedirectArgs,
}

/// Installs the capture rules; called by the proxy once SIGTERM is handled, just before it
/// starts serving. The guard removes them when dropped (the proxy returning, whichever way).
pub type CaptureHook = Box<dyn FnOnce() -> anyhow::Result<redirect::CaptureGuard>>;

/// Runs `petrel run`; `serve` is the proxy (`app::run`).
pub(crate) fn main(
    argv: Vec<OsString>,
    serve: fn(Args, Option<CaptureHook>) -> anyhow::Result<()>,
) -> ExitCode {
    let split = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    let run_args = std::iter::once(OsString::from("petrel run"))
        .chain(argv[2.min(split)..split].iter().cloned());
    let proxy_args =
        std::iter::once(OsString::from("petrel")).chain(argv.iter().skip(split + 1).cloned());
    let (run_args, mut args) = match (
        RunArgs::try_parse_from(run_args),
        Args::try_parse_from(proxy_args),
    ) {
        (Ok(r), Ok(a)) => (r, a),
        (Err(e), _) | (_, Err(e)) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let dry_run = run_args.redirect.dry_run;
    let skip_apply = run_args.redirect.skip_rule_apply;
    let capture = match plan(run_args, &args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("petrel run: {e:#}");
            return ExitCode::from(1);
        }
    };
    if dry_run {
        args.mode = Mode::Validate;
    }
    let mut hook: Option<CaptureHook> = None;
    if let Some((cfg, opts)) = capture {
        if dry_run {
            // Detection reads the rule set, which needs no change; a machine without iptables
            // still gets the script (both iptables variants print the same one).
            let backend = redirect::apply::detect_backend(opts.backend)
                .unwrap_or(redirect::Backend::IptablesNft);
            let script = redirect::apply::dry_run_script(&cfg, backend);
            // A closed stdout (`| head`) ends the dry run quietly, never with a panic.
            if std::io::stdout().write_all(script.as_bytes()).is_err() {
                return ExitCode::SUCCESS;
            }
        } else if args.mode == Mode::Serve && !skip_apply {
            hook = Some(Box::new(move || {
                if let Some(dir) = opts.state_file.as_deref().and_then(|p| p.parent()) {
                    let _ = std::fs::create_dir_all(dir);
                }
                redirect::CaptureGuard::install(&cfg, opts)
                    .map_err(|e| anyhow::anyhow!("capture: {e}"))
            }));
        }
    }
    match serve(args, hook) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("petrel run: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Steps 1 and 2: the rules to install (with `--capture`) and how, after every check passed.
fn plan(
    mut run_args: RunArgs,
    args: &Args,
) -> anyhow::Result<Option<(CaptureConfig, redirect::ApplyOptions)>> {
    let spec = match &args.spec {
        Some(path) => Some(crate::spec::AppSpec::load(path)?),
        None => None,
    };
    preflight(args)?;
    if !run_args.capture {
        return Ok(None);
    }
    // Inbound ports default to the application's ports from spec.yaml.
    if run_args.redirect.inbound_ports.is_empty() {
        if let Some(spec) = &spec {
            run_args.redirect.inbound_ports = spec
                .inbound_ports()
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",");
        }
    }
    let cfg = run_args
        .redirect
        .to_config(&redirect::HostDefaults::detect())
        .map_err(|e| anyhow::anyhow!("capture: {e}"))?;
    check_consistency(&cfg, args).map_err(|e| anyhow::anyhow!("capture: {e}"))?;
    let opts = redirect::ApplyOptions {
        backend: run_args
            .redirect
            .backend()
            .map_err(|e| anyhow::anyhow!("capture: {e}"))?,
        state_file: Some(
            run_args
                .redirect
                .state_file
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CAPTURE_STATE)),
        ),
    };
    Ok(Some((cfg, opts)))
}

/// Compiles the bootstrap the way `--mode validate` does, without starting anything, so that a
/// configuration the proxy would refuse never gets capture rules installed for it.
fn preflight(args: &Args) -> anyhow::Result<()> {
    let loaded = xds_client::bootstrap::load(
        args.config_path.as_deref(),
        args.config_yaml.as_deref(),
        xds_client::decode::DecodeOptions {
            allow_unknown_fields: args.allow_unknown_static_fields,
        },
    )?;
    let stats = crate::stats::Stats::default();
    let routes = crate::route::RouteStore::default();
    let has_xds = loaded.bootstrap.dynamic_resources.is_some();
    let ctx = crate::config::BuildCtx {
        stats: &stats,
        routes: has_xds.then_some(&routes),
        xds: has_xds,
    };
    crate::config::build_static(&loaded.bootstrap, &ctx)?;
    args.capture_cidr
        .parse::<crate::dns::CaptureCidr>()
        .map_err(|e| anyhow::anyhow!("--capture-cidr: {e}"))?;
    args.log_filter().map_err(anyhow::Error::msg)?;
    Ok(())
}

/// The redirect flags and the proxy flags must describe the same setup, or capture breaks the
/// host: DNS captured to a port nobody serves fails every lookup on the machine, and mesh names
/// resolving outside the captured range reach nothing.
pub fn check_consistency(cfg: &CaptureConfig, args: &Args) -> Result<(), String> {
    if let Some(dns) = &cfg.dns {
        check_dns(dns, cfg.ipv6, args.mesh_dns)?;
    }
    if let Some(_listen) = args.mesh_dns {
        let names: crate::dns::CaptureCidr = args
            .capture_cidr
            .parse()
            .map_err(|e| format!("--capture-cidr: {e}"))?;
        let captured = match &cfg.outbound_cidrs {
            OutboundCidrs::All => true,
            OutboundCidrs::Only(cidrs) => cidrs.iter().any(|c| {
                c.prefix() <= names.prefix_len()
                    && c.contains(names.network())
                    && c.is_ipv4() == names.network().is_ipv4()
            }),
            OutboundCidrs::None => false,
        };
        if !captured {
            return Err(format!(
                "the mesh DNS answers mesh names with addresses in --capture-cidr {names}, but \
                 outbound capture does not cover that range (set --vm-capture-cidr {names}, or \
                 add it to -i): connections to mesh names would not reach Petrel"
            ));
        }
    }
    Ok(())
}

fn check_dns(dns: &DnsCapture, ipv6: bool, mesh_dns: Option<SocketAddr>) -> Result<(), String> {
    let port = dns.port;
    let Some(listen) = mesh_dns else {
        return Err(format!(
            "DNS (port 53) is redirected to port {port}, but no `--mesh-dns` is given after \
             `--`: every DNS lookup on this host would fail; add `-- --mesh-dns 127.0.0.1:{port}`"
        ));
    };
    if listen.port() != port {
        return Err(format!(
            "DNS is redirected to port {port} (--dns-port) but --mesh-dns listens on {listen}: \
             use the same port"
        ));
    }
    let ip = listen.ip();
    if !ip.is_loopback() && !ip.is_unspecified() {
        return Err(format!(
            "--mesh-dns {listen}: REDIRECT delivers captured queries to a loopback address; \
             listen on 127.0.0.1:{port} (or [::]:{port} when IPv6 DNS is captured too)"
        ));
    }
    // Which families' queries are redirected: all of them without a server list, else the
    // families of the listed servers (the rules are written per family).
    let captured = |v6: bool| {
        (!v6 || ipv6) && (dns.servers.is_empty() || dns.servers.iter().any(|s| s.is_ipv6() == v6))
    };
    // `[::]` is dual-stack (Linux's default `bindv6only=0`); `0.0.0.0` and `127.0.0.1` are
    // IPv4 only, `::1` IPv6 only.
    let serves_v4 = ip.is_ipv4() || ip.is_unspecified();
    let serves_v6 = ip.is_ipv6();
    if captured(false) && !serves_v4 {
        return Err(format!(
            "IPv4 DNS is redirected to 127.0.0.1:{port}, but --mesh-dns {listen} does not \
             serve IPv4; use 127.0.0.1:{port} or [::]:{port}"
        ));
    }
    if captured(true) && !serves_v6 {
        return Err(format!(
            "IPv6 DNS is redirected to [::1]:{port} (IPv6 capture with IPv6 resolvers or \
             --capture-all-dns), but --mesh-dns {listen} serves IPv4 only; use [::]:{port}, \
             or --no-ipv6"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(flags: &[&str], resolvers: &[&str]) -> CaptureConfig {
        let args = redirect::RedirectArgs::try_parse_from(
            std::iter::once("petrel-redirect").chain(flags.iter().copied()),
        )
        .expect("redirect flags");
        args.to_config(&redirect::HostDefaults {
            ipv6: false,
            resolvers: resolvers.iter().map(|r| r.parse().unwrap()).collect(),
        })
        .expect("valid")
    }

    fn proxy(flags: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("petrel").chain(flags.iter().copied()))
            .expect("proxy flags")
    }

    #[test]
    fn vm_capture_with_the_matching_mesh_dns_is_accepted() {
        let c = cfg(&["--vm", "-u", "1337", "-b", "8080"], &["10.0.0.2"]);
        check_consistency(&c, &proxy(&["--mesh-dns", "127.0.0.1:15053"])).expect("consistent");
        // Dual-stack: [::] serves both families.
        let c = cfg(&["--vm", "-b", "8080", "--ipv6", "--capture-all-dns"], &[]);
        check_consistency(&c, &proxy(&["--mesh-dns", "[::]:15053"])).expect("consistent");
        // Pod capture without DNS: no mesh DNS needed.
        let c = cfg(&["-i", "*", "-b", "*"], &[]);
        check_consistency(&c, &proxy(&[])).expect("consistent");
    }

    #[test]
    fn captured_dns_without_a_mesh_dns_is_refused() {
        let c = cfg(&["--vm", "-b", "8080"], &["10.0.0.2"]);
        let e = check_consistency(&c, &proxy(&[])).unwrap_err();
        assert!(e.contains("--mesh-dns 127.0.0.1:15053"), "{e}");
        let e = check_consistency(&c, &proxy(&["--mesh-dns", "127.0.0.1:5353"])).unwrap_err();
        assert!(e.contains("same port"), "{e}");
        let e = check_consistency(&c, &proxy(&["--mesh-dns", "10.0.0.5:15053"])).unwrap_err();
        assert!(e.contains("loopback"), "{e}");
    }

    #[test]
    fn ipv6_dns_capture_needs_an_ipv6_mesh_dns() {
        let c = cfg(&["--vm", "-b", "8080", "--ipv6"], &["10.0.0.2", "fd00::53"]);
        let e = check_consistency(&c, &proxy(&["--mesh-dns", "127.0.0.1:15053"])).unwrap_err();
        assert!(e.contains("IPv6 DNS"), "{e}");
        // Only IPv4 resolvers: no IPv6 DNS rules, so an IPv4 mesh DNS is enough.
        let c = cfg(&["--vm", "-b", "8080", "--ipv6"], &["10.0.0.2"]);
        check_consistency(&c, &proxy(&["--mesh-dns", "127.0.0.1:15053"])).expect("consistent");
        let e = check_consistency(&c, &proxy(&["--mesh-dns", "[::1]:15053"])).unwrap_err();
        assert!(e.contains("IPv4 DNS"), "{e}");
    }

    #[test]
    fn mesh_names_outside_the_captured_range_are_refused() {
        let c = cfg(&["--vm", "-b", "8080"], &["10.0.0.2"]);
        let dns = ["--mesh-dns", "127.0.0.1:15053"];
        let e = check_consistency(
            &c,
            &proxy(&[&dns[..], &["--capture-cidr", "240.241.0.0/16"]].concat()),
        )
        .unwrap_err();
        assert!(e.contains("--vm-capture-cidr 240.241.0.0/16"), "{e}");
        // A narrower range inside the captured one is fine.
        check_consistency(
            &c,
            &proxy(&[&dns[..], &["--capture-cidr", "240.240.8.0/24"]].concat()),
        )
        .expect("inside 240.240/16");
        // Mesh DNS without outbound capture at all.
        let c = cfg(&["-b", "8080", "--redirect-dns"], &["10.0.0.2"]);
        let e = check_consistency(&c, &proxy(&dns)).unwrap_err();
        assert!(e.contains("outbound capture does not cover"), "{e}");
    }
}
