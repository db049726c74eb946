use super::chain::select;
use super::*;

fn chain(name: &str, m: ChainMatch) -> FilterChain {
    FilterChain {
        name: Arc::from(name),
        matcher: m,
        filter: NetworkFilter::Tcp(Arc::new(TcpProxy {
            stat_prefix: Arc::from("t"),
            clusters: vec![(Arc::from("c"), 1)],
            total_weight: 1,
            idle_timeout: None,
            stats: crate::tcp_proxy::TcpStats::new(&Stats::default(), "t"),
        })),
    }
}

fn info<'a>(dst: &str, sni: Option<&'a str>, tp: &'a str) -> ConnInfo<'a> {
    ConnInfo {
        src: "10.0.0.9:5555".parse().unwrap(),
        dst: dst.parse().unwrap(),
        sni,
        transport_protocol: tp,
        alpn: &[],
    }
}

#[test]
fn most_specific_chain_wins_at_each_level() {
    let chains = vec![
        chain("any", ChainMatch::default()),
        chain(
            "port",
            ChainMatch {
                destination_port: Some(9080),
                ..Default::default()
            },
        ),
        chain(
            "port_and_net",
            ChainMatch {
                destination_port: Some(9080),
                prefix_ranges: vec![Cidr {
                    addr: "10.1.0.0".parse().unwrap(),
                    prefix_len: 16,
                }],
                ..Default::default()
            },
        ),
        chain(
            "sni",
            ChainMatch {
                server_names: vec!["*.example.com".into()],
                transport_protocol: Some("tls".into()),
                ..Default::default()
            },
        ),
    ];
    let name = |i: ConnInfo<'_>| select(&chains, &i).map(|c| c.name.to_string());
    assert_eq!(
        name(info("10.1.2.3:9080", None, "raw_buffer")).as_deref(),
        Some("port_and_net")
    );
    assert_eq!(
        name(info("10.9.2.3:9080", None, "raw_buffer")).as_deref(),
        Some("port")
    );
    assert_eq!(
        name(info("10.9.2.3:80", None, "raw_buffer")).as_deref(),
        Some("any")
    );
    assert_eq!(
        name(info("10.9.2.3:443", Some("a.example.com"), "tls")).as_deref(),
        Some("sni")
    );
    // SNI chain requires tls: a raw connection with no SNI falls to "any".
    assert_eq!(
        name(info("10.9.2.3:443", None, "raw_buffer")).as_deref(),
        Some("any")
    );
}

#[test]
fn no_match_without_catch_all() {
    let chains = vec![chain(
        "port",
        ChainMatch {
            destination_port: Some(1),
            ..Default::default()
        },
    )];
    assert!(select(&chains, &info("127.0.0.1:2", None, "raw_buffer")).is_none());
}

#[test]
fn original_destination_lookup_falls_back_to_wildcard() {
    let stats = Stats::default();
    let mk = |addr: &str| {
        Arc::new(Listener {
            name: Arc::from(addr),
            addr: ListenAddr::Tcp(addr.parse().unwrap()),
            bind_to_port: false,
            use_original_dst: false,
            original_dst_filter: false,
            tls_inspector: false,
            http_inspector: false,
            chains: vec![],
            default_chain: None,
            inbound: false,
            drain: tokio::sync::watch::channel(false).0,
            stats: ListenerStats::new(&stats, addr),
        })
    };
    let mut t = ListenerTable::default();
    for a in ["10.0.0.1:80", "0.0.0.0:80", "[::]:443"] {
        let l = mk(a);
        t.by_addr.insert(a.parse().unwrap(), l);
    }
    assert_eq!(
        &*t.lookup("10.0.0.1:80".parse().unwrap()).unwrap().name,
        "10.0.0.1:80"
    );
    assert_eq!(
        &*t.lookup("10.0.0.2:80".parse().unwrap()).unwrap().name,
        "0.0.0.0:80"
    );
    assert_eq!(
        &*t.lookup("[fd00::1]:443".parse().unwrap()).unwrap().name,
        "[::]:443"
    );
    assert!(t.lookup("10.0.0.2:81".parse().unwrap()).is_none());
}
