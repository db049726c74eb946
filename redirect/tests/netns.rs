//! Privileged tests in real network namespaces (root or CAP_SYS_ADMIN + CAP_NET_ADMIN).
//!
//! Each test creates its own namespaces (`ip netns add`) and deletes them when done; traffic
//! only flows over loopback and a veth pair between two namespaces the test made. Where the
//! privileges or tools are missing the test prints why and passes without checking anything.
//!
//! A namespace cannot be entered by a thread without `unsafe` `setns`, so work inside one runs
//! in a child process: `ip netns exec NS <this test binary> netns_child --ignored`, with the
//! role in `PETREL_NETNS_ROLE` (apply the rules through `redirect::run`, or accept connections
//! and print their `redirect::original_dst`).

use clap::Parser;
use redirect::RedirectArgs;
use tracing::info;

#[macro_use]
mod support;

use support::*;

// === child side ===

/// Runs inside a namespace for the tests below; does nothing when run directly.
#[test]
#[ignore = "helper run by the privileged tests inside a network namespace"]
fn netns_child() {
    match std::env::var(ROLE).as_deref() {
        Ok("redirect") => {
            let args = std::env::var(ARGS).unwrap_or_default();
            let argv = std::iter::once("petrel-redirect")
                .chain(args.split('\x1f').filter(|a| !a.is_empty()));
            let args = RedirectArgs::try_parse_from(argv).expect("valid flags");
            if let Err(e) = redirect::run(args) {
                println!("REDIRECT_ERROR {e}");
                panic!("redirect failed: {e}");
            }
            println!("REDIRECT_OK");
        }
        Ok("guard") => {
            // `petrel run --capture`: install, then either exit normally (the guard removes the
            // rules) or "crash" (forget the guard: the rules and the state file stay).
            let args = std::env::var(ARGS).unwrap_or_default();
            let argv = std::iter::once("petrel-redirect")
                .chain(args.split('\x1f').filter(|a| !a.is_empty()));
            let args = RedirectArgs::try_parse_from(argv).expect("valid flags");
            let cfg = args
                .to_config(&redirect::HostDefaults::detect())
                .expect("valid config");
            let opts = redirect::ApplyOptions {
                backend: args.backend,
                state_file: args.state_file.clone(),
            };
            let guard = redirect::CaptureGuard::install(&cfg, opts).expect("install");
            if std::env::var_os("PETREL_NETNS_CRASH").is_some() {
                std::mem::forget(guard);
            } else {
                drop(guard);
            }
            println!("REDIRECT_OK");
        }
        Ok("serve") => support::serve(),
        _ => {}
    }
}

fn iptables_lifecycle(variant: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new(&format!("ipt-{variant}"));
    add_foreign_rules(&ns, variant);
    let before = saved(&ns, variant);
    let rules_before = ns.exec(&["ip", "rule"]) + &ns.exec(&["ip", "-6", "rule"]);
    let state = std::env::temp_dir().join(format!("{}.state", ns.0));
    let state_s = state.display().to_string();
    let backend = format!("iptables-{variant}");
    let flags = [
        "-b",
        "*",
        "-i",
        "*",
        "-d",
        "15090",
        "-x",
        "10.0.0.0/8",
        "--redirect-dns",
        "--capture-all-dns",
        "--drop-invalid",
        "--ipv6",
        "--backend",
        &backend,
        "--state-file",
        &state_s,
    ];

    info!(ns = %ns.0, "apply");
    ns.redirect(&flags);
    let first = saved(&ns, variant);
    for needle in [
        ":ISTIO_INBOUND",
        ":ISTIO_IN_REDIRECT",
        ":ISTIO_OUTPUT",
        ":ISTIO_REDIRECT",
        ":ISTIO_OUTPUT_DNS",
        "-j ISTIO_IN_REDIRECT",
        "--to-ports 15001",
        "--to-ports 15006",
        "127.0.0.6/32",
        "::6/128",
    ] {
        assert!(
            first.contains(needle),
            "{needle} missing after apply:\n{first}"
        );
    }
    // Our jump precedes the foreign rule that was there first (inserted, not appended).
    let pos = |s: &str| {
        first
            .find(s)
            .unwrap_or_else(|| panic!("{s} missing:\n{first}"))
    };
    assert!(
        pos("-A OUTPUT -m comment --comment petrel -j ISTIO_OUTPUT")
            < pos("--dport 9999 -j RETURN")
    );
    assert!(
        pos("-A PREROUTING -p tcp -m comment --comment petrel -j ISTIO_INBOUND")
            < pos("--dport 9998 -j ACCEPT")
    );
    assert!(
        std::fs::read_to_string(&state).is_ok_and(|s| s.contains(&format!("backend={backend}")))
    );

    info!("apply again: same rule set");
    ns.redirect(&flags);
    assert_eq!(
        saved(&ns, variant),
        first,
        "second apply changed the rule set"
    );

    info!("switch to TPROXY: the old rules are replaced, not added to");
    ns.redirect(&[
        "-m",
        "TPROXY",
        "-b",
        "8080",
        "-i",
        "10.0.0.0/8",
        "--ipv6",
        "--backend",
        &backend,
        "--state-file",
        &state_s,
    ]);
    let tproxy = saved(&ns, variant);
    assert!(
        tproxy.contains(":ISTIO_TPROXY") && tproxy.contains(":ISTIO_DIVERT"),
        "{tproxy}"
    );
    assert!(
        !tproxy.contains("ISTIO_OUTPUT_DNS") && !tproxy.contains("ISTIO_DROP"),
        "stale chains left:\n{tproxy}"
    );
    assert_eq!(
        tproxy.matches("-j ISTIO_OUTPUT").count(),
        4,
        "one nat + one mangle jump per family:\n{tproxy}"
    );
    assert!(ns.exec(&["ip", "rule"]).contains("fwmark 0x539 lookup 133"));

    info!("cleanup: exactly the rule set from before");
    ns.redirect(&["--cleanup", "--state-file", &state_s]);
    assert_eq!(
        saved(&ns, variant),
        before,
        "cleanup did not restore the rule set"
    );
    assert_eq!(
        ns.exec(&["ip", "rule"]) + &ns.exec(&["ip", "-6", "rule"]),
        rules_before
    );
    assert!(!ns
        .exec(&["ip", "-6", "addr", "show", "dev", "lo"])
        .contains("::6/128"));
    assert!(!state.exists(), "state file left behind");

    info!("cleanup with nothing installed is a no-op");
    ns.redirect(&["--cleanup", "--backend", &backend]);
    assert_eq!(saved(&ns, variant), before);
}

#[test]
fn iptables_legacy_apply_is_idempotent_and_cleanup_is_exact() {
    require!("iptables-legacy-restore", "ip6tables-legacy-restore");
    iptables_lifecycle("legacy");
}

#[test]
fn iptables_nft_apply_is_idempotent_and_cleanup_is_exact() {
    require!("iptables-nft-restore", "ip6tables-nft-restore");
    iptables_lifecycle("nft");
}

#[test]
fn nft_apply_is_idempotent_and_cleanup_is_exact() {
    require!("nft");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new("nft");
    ns.exec(&["nft", "add table inet foreign; add chain inet foreign out { type filter hook output priority 0; }; add rule inet foreign out tcp dport 9999 accept"]);
    let before = ns.exec(&["nft", "list", "ruleset"]);
    let flags = [
        "-b",
        "*",
        "-i",
        "*",
        "--redirect-dns",
        "--ipv6",
        "--drop-invalid",
        "--backend",
        "nft",
    ];
    ns.redirect(&flags);
    let first = ns.exec(&["nft", "list", "ruleset"]);
    for needle in [
        "table inet petrel_nat",
        "chain ISTIO_OUTPUT",
        "chain ISTIO_IN_REDIRECT",
        "redirect to :15001",
        "table inet petrel_raw",
        "table inet foreign",
    ] {
        assert!(first.contains(needle), "{needle} missing:\n{first}");
    }
    ns.redirect(&flags);
    assert_eq!(
        ns.exec(&["nft", "list", "ruleset"]),
        first,
        "second apply changed the rule set"
    );
    ns.redirect(&[
        "-m",
        "TPROXY",
        "-b",
        "8080",
        "--no-ipv6",
        "--backend",
        "nft",
    ]);
    let tproxy = ns.exec(&["nft", "list", "ruleset"]);
    assert!(
        tproxy.contains("chain ISTIO_TPROXY") && !tproxy.contains("petrel_raw"),
        "{tproxy}"
    );
    ns.redirect(&["--cleanup", "--backend", "nft"]);
    assert_eq!(
        ns.exec(&["nft", "list", "ruleset"]),
        before,
        "cleanup did not restore the rule set"
    );
}

fn redirect_end_to_end(backend: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (app, peer) = topology(&format!("e2e-{backend}"));
    // Inbound: app port 8080 captured to 15006. Outbound: 10.77.0.0/24 and fd77::/64 captured to
    // 15001, except for the proxy's UID 1337.
    app.redirect(&[
        "-b",
        "8080",
        "-i",
        "10.77.0.0/24,fd77::/64",
        "-u",
        "1337",
        "--ipv6",
        "--backend",
        backend,
    ]);

    info!("inbound: peer → app:8080 lands on the inbound capture port with the app address");
    let server = Server::start(&app, "0.0.0.0:15006,[::]:15006", 2);
    assert!(
        connect(&peer, "10.77.0.1", 8080, None),
        "v4 inbound connect failed"
    );
    assert!(
        connect(&peer, "fd77::1", 8080, None),
        "v6 inbound connect failed"
    );
    let got = server.finish();
    assert_eq!(
        got,
        [
            "ACCEPT 0.0.0.0:15006 10.77.0.1:8080",
            "ACCEPT [::]:15006 [fd77::1]:8080"
        ],
        "{backend}"
    );

    info!("outbound: app → peer:9090 lands on the outbound capture port with the peer address");
    let server = Server::start(&app, "0.0.0.0:15001,[::]:15001", 2);
    assert!(
        connect(&app, "10.77.0.2", 9090, None),
        "v4 outbound connect failed"
    );
    assert!(
        connect(&app, "fd77::2", 9090, None),
        "v6 outbound connect failed"
    );
    let got = server.finish();
    assert_eq!(
        got,
        [
            "ACCEPT 0.0.0.0:15001 10.77.0.2:9090",
            "ACCEPT [::]:15001 [fd77::2]:9090"
        ],
        "{backend}"
    );

    info!("loop safety: the proxy's own UID reaches the peer directly");
    let direct = Server::start(&peer, "0.0.0.0:9090,[::]:9090", 2);
    assert!(
        connect(&app, "10.77.0.2", 9090, Some(1337)),
        "proxy UID v4 connect failed"
    );
    assert!(
        connect(&app, "fd77::2", 9090, Some(1337)),
        "proxy UID v6 connect failed"
    );
    let got = direct.finish();
    assert_eq!(got.len(), 2, "proxy traffic was captured: {got:?}");
    assert!(got
        .iter()
        .all(|l| l.starts_with("ACCEPT 0.0.0.0:9090") || l.starts_with("ACCEPT [::]:9090")));

    info!("inbound passthrough: the proxy reaching the app's address from 127.0.0.6 (::6) is not captured again");
    let both = Server::start(&app, "0.0.0.0:8080,[::]:8080,0.0.0.0:15006", 3);
    assert!(connect_from(&app, "127.0.0.6", "10.77.0.1", 8080, 1337));
    assert!(connect_from(&app, "::6", "fd77::1", 8080, 1337));
    // From its ordinary source the same connection goes to the inbound side (app → proxy →
    // proxy → app through the pod's own address, as in istio).
    assert!(connect(&app, "10.77.0.1", 8080, Some(1337)));
    let mut got = both.finish();
    got.sort();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].starts_with("ACCEPT 0.0.0.0:15006 10.77.0.1:8080"),
        "{got:?}"
    );
    assert!(got[1].starts_with("ACCEPT 0.0.0.0:8080 "), "{got:?}");
    assert!(got[2].starts_with("ACCEPT [::]:8080 "), "{got:?}");

    info!("ports that are not captured reach the app's own listener");
    let other = Server::start(&app, "0.0.0.0:7070", 1);
    assert!(connect(&peer, "10.77.0.1", 7070, None));
    assert_eq!(other.finish().len(), 1);

    app.redirect(&["--cleanup", "--backend", backend]);
}

#[test]
fn redirect_end_to_end_iptables_legacy() {
    require!("iptables-legacy-restore", "ip6tables-legacy-restore");
    redirect_end_to_end("iptables-legacy");
}

#[test]
fn redirect_end_to_end_iptables_nft() {
    require!("iptables-nft-restore", "ip6tables-nft-restore");
    redirect_end_to_end("iptables-nft");
}

#[test]
fn redirect_end_to_end_nft() {
    require!("nft");
    redirect_end_to_end("nft");
}

#[test]
fn iptables_nft_cleanup_in_a_fresh_namespace_removes_the_tables_too() {
    require!("iptables-nft-restore", "ip6tables-nft-restore", "nft");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new("fresh");
    let before = ns.exec(&["nft", "list", "ruleset"]);
    let state = std::env::temp_dir().join(format!("{}.state", ns.0));
    let state_s = state.display().to_string();
    let flags = [
        "-m",
        "TPROXY",
        "-b",
        "*",
        "-i",
        "*",
        "--redirect-dns",
        "--ipv6",
        "--backend",
        "iptables-nft",
        "--state-file",
        &state_s,
    ];
    ns.redirect(&flags);
    ns.redirect(&flags);
    assert!(ns.exec(&["nft", "list", "tables"]).contains("table ip nat"));
    ns.redirect(&["--cleanup", "--state-file", &state_s]);
    assert_eq!(
        ns.exec(&["nft", "list", "ruleset"]),
        before,
        "tables Petrel created were left behind"
    );
}

#[test]
fn capture_guard_recovers_after_a_crash() {
    require!("iptables-legacy-restore", "ip6tables-legacy-restore");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new("guard");
    add_foreign_rules(&ns, "legacy");
    let before = saved(&ns, "legacy");
    let state = std::env::temp_dir().join(format!("{}.state", ns.0));
    let state_s = state.display().to_string();
    let flags = [
        "-b",
        "8080",
        "-i",
        "*",
        "--ipv6",
        "--backend",
        "iptables-legacy",
        "--state-file",
        &state_s,
    ];

    info!("a proxy installs capture and crashes");
    let mut crashing = ns.child("guard");
    crashing.env("PETREL_NETNS_CRASH", "1");
    ns.run_role(crashing, &flags);
    assert!(saved(&ns, "legacy").contains(":ISTIO_OUTPUT"));
    assert!(state.exists(), "state file missing after install");

    info!("with other flags, the next start removes the old rules first, and its own at exit");
    let other = [
        "-b",
        "9090",
        "--no-ipv6",
        "--backend",
        "iptables-legacy",
        "--state-file",
        &state_s,
    ];
    ns.run_role(ns.child("guard"), &other);
    assert_eq!(
        saved(&ns, "legacy"),
        before,
        "rules left after a normal exit"
    );
    assert!(!ns
        .exec(&["ip", "-6", "addr", "show", "dev", "lo"])
        .contains("::6/128"));
    assert!(!state.exists(), "state file left after a normal exit");
}

#[test]
fn missing_privileges_are_reported() {
    require!("iptables-legacy-restore");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new("unpriv");
    let exe = std::env::current_exe().expect("test binary path");
    let exe = exe.display().to_string();
    let out = ns.try_exec_env(
        &[
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            &exe,
            "netns_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ],
        &[
            (ROLE, "redirect"),
            (
                ARGS,
                "-b\x1f8080\x1f--no-ipv6\x1f--backend\x1fiptables-legacy",
            ),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("REDIRECT_ERROR missing privileges"),
        "{stdout}"
    );
    assert!(stdout.contains("CAP_NET_ADMIN"), "{stdout}");
}

/// A systemd-style unprivileged proxy user holding only `CAP_NET_ADMIN` and `CAP_NET_RAW`
/// (`User=` + `AmbientCapabilities=`): iptables-legacy refuses it (its table list is
/// root-only) with a message saying so, and an nf_tables backend works.
#[test]
fn unprivileged_user_with_capabilities_needs_an_nf_tables_backend() {
    require!("iptables-legacy-restore", "iptables-nft-restore");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new("capuser");
    let exe = std::env::current_exe().expect("test binary path");
    let exe = exe.display().to_string();
    let as_user = |backend: &str| {
        let caps = "+net_admin,+net_raw";
        ns.try_exec_env(
            &[
                "setpriv",
                "--reuid",
                "1337",
                "--regid",
                "1337",
                "--clear-groups",
                "--inh-caps",
                caps,
                "--ambient-caps",
                caps,
                &exe,
                "netns_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ],
            &[
                (ROLE, "redirect"),
                (
                    ARGS,
                    &format!("-b\x1f8080\x1f--no-ipv6\x1f--backend\x1f{backend}"),
                ),
            ],
        )
    };
    let out = as_user("iptables-legacy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("REDIRECT_ERROR") && stdout.contains("needs root"),
        "{stdout}"
    );
    assert!(stdout.contains("--backend iptables-nft or nft"), "{stdout}");
    assert!(
        !saved(&ns, "legacy").contains("ISTIO_"),
        "legacy rules were installed anyway"
    );

    let out = as_user("iptables-nft");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("REDIRECT_OK"), "{stdout}");
    let rules = saved(&ns, "nft");
    assert!(
        rules.contains("-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT"),
        "{rules}"
    );
    ns.redirect(&["--cleanup", "--backend", "iptables-nft"]);
    assert!(!saved(&ns, "nft").contains("ISTIO_"));
}

fn vm_mode(backend: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (vm, peer) = topology(&format!("vm-{backend}"));
    // The VM's default route points at the peer, so mesh capture addresses would leave the VM.
    vm.exec(&["ip", "route", "add", "default", "via", "10.77.0.2"]);
    vm.redirect(&[
        "--vm",
        "-b",
        "8080",
        "--mesh-cidrs",
        "10.96.0.0/12",
        "--dns-servers",
        "10.77.0.2",
        "--no-ipv6",
        "--backend",
        backend,
    ]);

    info!("mesh destinations and DNS are captured");
    let proxy = Server::start(&vm, "0.0.0.0:15001,0.0.0.0:15053,udp:0.0.0.0:15053", 4);
    assert!(
        connect(&vm, "240.240.0.5", 80, None),
        "capture-range connect failed"
    );
    assert!(
        connect(&vm, "10.96.0.1", 443, None),
        "mesh CIDR connect failed"
    );
    assert!(send_udp(&vm, "10.77.0.2", 53, None), "UDP DNS send failed");
    assert!(
        connect(&vm, "10.77.0.2", 53, None),
        "TCP DNS connect failed"
    );
    let mut got = proxy.finish();
    got.sort();
    assert_eq!(
        got,
        [
            "ACCEPT 0.0.0.0:15001 10.96.0.1:443",
            "ACCEPT 0.0.0.0:15001 240.240.0.5:80",
            "ACCEPT 0.0.0.0:15053 10.77.0.2:53",
            "UDP 0.0.0.0:15053",
        ],
        "{backend}"
    );

    info!("other destinations, and the proxy's own DNS queries, are not captured");
    let direct = Server::start(&peer, "0.0.0.0:9090,udp:0.0.0.0:53", 2);
    assert!(
        connect(&vm, "10.77.0.2", 9090, None),
        "non-mesh connect failed"
    );
    assert!(
        send_udp(&vm, "10.77.0.2", 53, Some(1337)),
        "proxy DNS send failed"
    );
    let mut got = direct.finish();
    got.sort();
    assert_eq!(got.len(), 2, "{backend}: {got:?}");
    assert!(
        got[0].starts_with("ACCEPT 0.0.0.0:9090 "),
        "{backend}: {got:?}"
    );
    assert_eq!(got[1], "UDP 0.0.0.0:53", "{backend}");

    vm.redirect(&["--cleanup", "--backend", backend]);
}

#[test]
fn vm_mode_captures_only_the_mesh_and_dns_iptables_legacy() {
    require!("iptables-legacy-restore", "ip6tables-legacy-restore");
    vm_mode("iptables-legacy");
}

#[test]
fn vm_mode_captures_only_the_mesh_and_dns_nft() {
    require!("nft");
    vm_mode("nft");
}

fn tproxy_end_to_end(backend: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (app, peer) = topology(&format!("tp-{backend}"));
    let state = std::env::temp_dir().join(format!("{}.state", app.0));
    let state = state.display().to_string();
    app.redirect(&[
        "-m",
        "TPROXY",
        "-b",
        "8080",
        "--ipv6",
        "--backend",
        backend,
        "--state-file",
        &state,
    ]);
    info!("inbound: peer → app:8080 is delivered to the transparent listener, destination kept");
    let server = Server::start(&app, "tproxy:0.0.0.0:15006,tproxy:[::]:15006", 2);
    assert!(
        connect(&peer, "10.77.0.1", 8080, None),
        "v4 TPROXY connect failed"
    );
    assert!(
        connect(&peer, "fd77::1", 8080, None),
        "v6 TPROXY connect failed"
    );
    let got = server.finish();
    assert_eq!(
        got,
        [
            "ACCEPT 0.0.0.0:15006 10.77.0.1:8080",
            "ACCEPT [::]:15006 [fd77::1]:8080"
        ],
        "{backend}"
    );
    // The policy route is ours only according to the state file.
    app.redirect(&["--cleanup", "--state-file", &state]);
    assert!(
        !app.exec(&["ip", "rule"]).contains("lookup 133"),
        "policy rule left behind"
    );
    assert!(
        !app.exec(&["ip", "-6", "rule"]).contains("lookup 133"),
        "policy rule left behind"
    );
}

#[test]
fn tproxy_end_to_end_iptables_legacy() {
    require!("iptables-legacy-restore", "ip6tables-legacy-restore");
    tproxy_end_to_end("iptables-legacy");
}

#[test]
fn tproxy_end_to_end_nft() {
    require!("nft");
    tproxy_end_to_end("nft");
}
