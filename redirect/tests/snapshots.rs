//! Snapshot tests: the generated scripts for several istio-iptables flag sets.
//!
//! The expected files under `tests/snapshots/` were reviewed against istio-iptables' golden
//! files for the same flags (chain names, rule order, loop-safety exceptions); the differences
//! are the deliberate ones documented in `redirect::rules`. Regenerate after an intended change
//! with `UPDATE_SNAPSHOTS=1 cargo test -p redirect --test snapshots` and review the diff.
use std::path::PathBuf;

use clap::Parser;
use redirect::apply::dry_run_script;
use redirect::{Backend, HostDefaults, RedirectArgs};

/// `(snapshot name, flags)`. Every case pins `--ipv6`/`--no-ipv6`, so snapshots do not depend
/// on the host.
const CASES: &[(&str, &str)] = &[
    ("defaults", "--no-ipv6"),
    (
        "pod-sidecar",
        "-p 15001 -z 15006 -u 1337 -m REDIRECT -i * -b * -d 15090,15021,15020 --no-ipv6",
    ),
    (
        "inbound-ports-ipv6",
        "-b 8080,9090 -i 10.0.0.0/8,fd00::/8 -x 10.1.0.0/16 --ipv6",
    ),
    ("tproxy", "-m TPROXY -b * -d 15020 -i * -c eth1 --ipv6"),
    (
        "tproxy-ports",
        "-m TPROXY -b 80,443 -i 10.0.0.0/8 --no-ipv6",
    ),
    (
        "dns-servers",
        "-u 1337 -g 1337 -b 8080 -i * --redirect-dns --dns-servers 127.0.0.53,::1 --ipv6",
    ),
    (
        "outbound-ports-interfaces",
        "-q 3306,5432 -o 15090,9000:9100 -c eth9 -k vmtap0 -i 10.0.0.0/8 --no-ipv6",
    ),
    (
        "loopback-include",
        "-i 127.0.0.1/32,10.0.0.0/8 -b 8080 --no-ipv6",
    ),
    (
        "drop-invalid-uid-list",
        "-u 1337,1338 -g 1400 -b * -i * --drop-invalid --no-ipv6",
    ),
    ("vm", "--vm -b 8080,8443 --mesh-cidrs 10.96.0.0/12 --ipv6"),
    (
        "vm-dns-servers",
        "--vm -b 9080 --dns-servers 127.0.0.53 --dns-port 15054 --no-ipv6",
    ),
];

fn render(flags: &str) -> String {
    let args = RedirectArgs::try_parse_from(
        std::iter::once("petrel-redirect").chain(flags.split_whitespace()),
    )
    .unwrap_or_else(|e| panic!("{flags}: {e}"));
    let cfg = args
        .to_config(&HostDefaults::default())
        .expect("snapshot flags are valid");
    format!(
        "# flags: {flags}\n# ==== iptables backends ====\n{}# ==== nft backend ====\n{}",
        dry_run_script(&cfg, Backend::IptablesNft),
        dry_run_script(&cfg, Backend::Nft)
    )
}

#[test]
fn generated_scripts_match_snapshots() {
    init();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut mismatched = Vec::new();
    for (name, flags) in CASES {
        let got = render(flags);
        let path = dir.join(format!("{name}.snap"));
        if update {
            std::fs::write(&path, &got).expect("write snapshot");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            eprintln!("--- snapshot {name} differs; got:\n{got}");
            mismatched.push(*name);
        }
    }
    assert!(
        mismatched.is_empty(),
        "snapshots differ: {mismatched:?} (UPDATE_SNAPSHOTS=1 to accept)"
    );
}

/// The jump rules go in at the head of the built-in chains, never appended.
#[test]
fn jumps_are_inserted_at_the_head() {
    init();
    for (_, flags) in CASES {
        let script = render(flags);
        for line in script.lines() {
            for builtin in ["PREROUTING", "OUTPUT"] {
                assert!(
                    !line.starts_with(&format!("-A {builtin} ")),
                    "appended to a built-in chain: {line}"
                );
                if line.starts_with(&format!("-I {builtin} ")) {
                    assert!(
                        line.contains("--comment petrel"),
                        "uncommented built-in rule: {line}"
                    );
                }
            }
        }
    }
}

/// The proxy's own traffic is returned before anything could redirect it, in every case.
#[test]
fn proxy_owner_returns_before_redirects() {
    init();
    for (name, flags) in CASES {
        let script = render(flags);
        let nat_v4: Vec<&str> = script
            .split("*nat")
            .nth(1)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("-A ISTIO_OUTPUT "))
            .collect();
        let owner = nat_v4
            .iter()
            .position(|l| l.contains("-m owner --uid-owner") && l.ends_with("-j RETURN"))
            .unwrap_or_else(|| panic!("{name}: no owner RETURN"));
        let first_redirect = nat_v4.iter().position(|l| l.ends_with("-j ISTIO_REDIRECT"));
        if let Some(r) = first_redirect {
            assert!(owner < r, "{name}: owner RETURN after a redirect");
        }
    }
}

fn init() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
}
