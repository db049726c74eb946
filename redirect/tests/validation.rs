//! Bad flags are rejected with an error naming the flag and the value; nothing is applied.
use std::net::IpAddr;

use clap::Parser;
use redirect::config::{InboundPorts, OutboundCidrs};
use redirect::{HostDefaults, RedirectArgs, RedirectError};

fn config(flags: &[&str]) -> Result<redirect::CaptureConfig, RedirectError> {
    let args = RedirectArgs::try_parse_from(
        std::iter::once("petrel-redirect").chain(flags.iter().copied()),
    )
    .unwrap_or_else(|e| panic!("{flags:?}: clap rejected: {e}"));
    args.to_config(&HostDefaults::default())
}

#[test]
fn bad_values_name_the_flag_and_value() {
    init();
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["-i", "10.0.0.0/33"],
            "-i/--istio-service-cidr",
            "10.0.0.0/33",
        ),
        (
            &["-i", "10.0.0.0/8,bogus"],
            "-i/--istio-service-cidr",
            "bogus",
        ),
        (
            &["-x", "300.1.1.1/32"],
            "-x/--istio-service-exclude-cidr",
            "300.1.1.1/32",
        ),
        (
            &["-x", "fd00::/129"],
            "-x/--istio-service-exclude-cidr",
            "fd00::/129",
        ),
        (&["-p", "0"], "-p/--envoy-port", "0"),
        (&["-p", "65536"], "-p/--envoy-port", "65536"),
        (&["-z", "http"], "-z/--inbound-capture-port", "http"),
        (&["-z", "80:90"], "-z/--inbound-capture-port", "80:90"),
        (&["-b", "80,abc"], "-b/--istio-inbound-ports", "abc"),
        (&["-b", "90:80"], "-b/--istio-inbound-ports", "90:80"),
        (&["-d", "0"], "-d/--istio-local-exclude-ports", "0"),
        (&["-q", "70000"], "-q/--istio-outbound-ports", "70000"),
        (&["-o", "x"], "-o/--istio-local-outbound-ports-exclude", "x"),
        (
            &["-m", "DNAT"],
            "-m/--istio-inbound-interception-mode",
            "DNAT",
        ),
        (
            &["-u", "no-such-user-petrel"],
            "-u/--proxy-uid",
            "no-such-user-petrel",
        ),
        (
            &["-g", "no-such-group-petrel"],
            "-g/--proxy-gid",
            "no-such-group-petrel",
        ),
        (&["-t", "1338"], "-t/--istio-inbound-tproxy-mark", "1338"),
        (
            &["-r", "main"],
            "-r/--istio-inbound-tproxy-route-table",
            "main",
        ),
        (
            &["-c", "this-name-is-too-long"],
            "-c/--istio-exclude-interfaces",
            "this-name-is-too-long",
        ),
        (&["-k", "a/b"], "-k/--kube-virt-interfaces", "a/b"),
        (&["-x", "*"], "-x/--istio-service-exclude-cidr", "*"),
        (&["--redirect-dns", "--dns-port", "53"], "--dns-port", "53"),
        (
            &["--redirect-dns", "--dns-servers", "resolver"],
            "--dns-servers",
            "resolver",
        ),
        (&["--admin-port", "0"], "--admin-port", "0"),
        (&["--vm", "-b", "*"], "-b/--istio-inbound-ports", "*"),
        (&["--vm", "-i", "*"], "-i/--istio-service-cidr", "*"),
        (&["--vm", "--vm-capture-cidr", "240.240.0.0"], "", ""),
        (
            &["--vm", "--vm-capture-cidr", "240.240/16"],
            "--vm-capture-cidr",
            "240.240/16",
        ),
        (
            &["--vm", "--mesh-cidrs", "10.96.0.0/12,x"],
            "--mesh-cidrs",
            "x",
        ),
        (
            &["--mesh-cidrs", "10.96.0.0/12"],
            "--mesh-cidrs",
            "10.96.0.0/12",
        ),
    ];
    for (flags, flag, value) in cases {
        let result = config(flags);
        if flag.is_empty() {
            assert!(result.is_ok(), "{flags:?} should be accepted: {result:?}");
            continue;
        }
        let err = result.expect_err(&format!("{flags:?} should be rejected"));
        assert!(err.is_invalid_input(), "{flags:?}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains(flag),
            "{flags:?}: message {msg:?} does not name {flag}"
        );
        assert!(
            msg.contains(&format!("{value:?}")),
            "{flags:?}: message {msg:?} does not quote {value:?}"
        );
    }
}

#[test]
fn clap_rejects_unknown_backend_and_flags() {
    init();
    for flags in [&["--backend", "ipfw"][..], &["-Q", "80"], &["--bogus"]] {
        let r = RedirectArgs::try_parse_from(
            std::iter::once("petrel-redirect").chain(flags.iter().copied()),
        );
        assert!(r.is_err(), "{flags:?} accepted");
    }
}

#[test]
fn defaults_match_istio_iptables() {
    init();
    let cfg = config(&[]).expect("defaults are valid");
    assert_eq!(cfg.proxy_port, 15001);
    assert_eq!(cfg.inbound_capture_port, 15006);
    assert_eq!(cfg.inbound_tunnel_port, 15008);
    assert_eq!(cfg.proxy_uids, vec![1337]);
    assert_eq!(cfg.proxy_gids, vec![1337], "GID defaults to the UID");
    assert_eq!(cfg.inbound_ports, InboundPorts::None);
    assert_eq!(cfg.outbound_cidrs, OutboundCidrs::None);
    assert_eq!(cfg.dns, None);
    assert!(!cfg.ipv6);
}

#[test]
fn cidrs_are_normalised_and_users_resolved() {
    init();
    let cfg = config(&["-i", "10.1.2.3/16, fd00::1/8", "-u", "root", "-g", "0"]).expect("valid");
    let OutboundCidrs::Only(cidrs) = &cfg.outbound_cidrs else {
        panic!("expected a list")
    };
    let shown: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["10.1.0.0/16", "fd00::/8"]);
    assert_eq!(cfg.proxy_uids, vec![0]);
}

#[test]
fn vm_mode_captures_only_the_mesh_and_dns() {
    init();
    let host = HostDefaults {
        ipv6: false,
        resolvers: vec!["127.0.0.53".parse::<IpAddr>().expect("ip")],
    };
    let args =
        RedirectArgs::try_parse_from(["x", "--vm", "-b", "8080", "--mesh-cidrs", "10.96.0.0/12"])
            .expect("parse");
    let cfg = args.to_config(&host).expect("valid");
    let OutboundCidrs::Only(cidrs) = &cfg.outbound_cidrs else {
        panic!("VM mode must not capture everything")
    };
    let shown: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["240.240.0.0/16", "10.96.0.0/12"]);
    let dns = cfg.dns.expect("VM mode captures DNS");
    assert_eq!(dns.port, 15053);
    assert_eq!(
        dns.servers, host.resolvers,
        "defaults to resolv.conf's servers"
    );

    let args = RedirectArgs::try_parse_from(["x", "--vm", "--capture-all-dns"]).expect("parse");
    assert!(args
        .to_config(&host)
        .expect("valid")
        .dns
        .expect("dns")
        .servers
        .is_empty());
}

#[test]
fn resolv_conf_nameservers_are_parsed() {
    init();
    let text = "# comment\nsearch svc.cluster.local\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\noptions ndots:5\nnameserver bogus\n";
    let got = redirect::cli::parse_resolv_conf(text);
    assert_eq!(
        got,
        [
            "10.96.0.10".parse::<IpAddr>().expect("ip"),
            "fe80::1".parse().expect("ip")
        ]
    );
}

fn init() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
}

#[test]
fn istio_injector_flags_are_accepted() {
    init();
    // The istio-init container's arguments as Istio's injection template writes them.
    let istio = [
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
        "REDIRECT",
        "-i",
        "*",
        "-x",
        "",
        "-b",
        "*",
        "-d",
        "15090,15021,15020",
        "--log_output_level=default:info",
        "--log_as_json",
        "--force-apply",
    ];
    let plain = config(&istio[..16]).expect("valid");
    assert_eq!(config(&istio).expect("valid"), plain);

    let args = |flags: &[&str]| {
        RedirectArgs::try_parse_from(
            std::iter::once("petrel-redirect").chain(flags.iter().copied()),
        )
        .expect("parses")
    };
    assert_eq!(
        args(&["--native-nftables"]).backend().ok(),
        Some(redirect::Backend::Nft)
    );
    assert_eq!(args(&[]).backend().ok(), Some(redirect::Backend::Auto));
    let err = args(&["--native-nftables", "--backend", "iptables-legacy"])
        .to_config(&HostDefaults::default())
        .expect_err("conflict");
    assert!(
        err.is_invalid_input() && err.to_string().contains("--native-nftables"),
        "{err}"
    );
    let err = args(&["--run-validation", "--skip-rule-apply"])
        .to_config(&HostDefaults::default())
        .expect_err("not implemented");
    assert!(
        err.to_string()
            .contains("--run-validation is not supported"),
        "{err}"
    );
}
