use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::dns::nds::{NameInfo, NameTable};

fn ctx() -> NameContext {
    NameContext {
        namespace: Some("default".into()),
        search: vec!["vm.example.com".into()],
        ndots: 1,
    }
}

fn svc(name: &str) -> MeshName {
    MeshName::new(name, NameSource::Static).unwrap()
}

#[test]
fn same_names_get_same_addresses_in_any_order() {
    let names: Vec<String> = (0..2000)
        .map(|i| format!("svc{i}.ns.svc.cluster.local"))
        .collect();
    let a = MeshNames::build(names.iter().map(|n| svc(n)), CaptureCidr::default());
    let b = MeshNames::build(names.iter().rev().map(|n| svc(n)), CaptureCidr::default());
    let mut seen = std::collections::HashSet::new();
    for n in &names {
        let ip = a.resolve(n).unwrap();
        assert_eq!(Some(ip), b.resolve(n), "{n}");
        assert!(CaptureCidr::default().contains(ip));
        assert!(seen.insert(ip), "{ip} given twice");
        let IpAddr::V4(v4) = ip else { panic!() };
        assert!(!matches!(v4.octets()[3], 0 | 255), "{ip}");
        assert_eq!(a.name_for(ip), Some(n.as_str()));
    }
    assert_eq!(a.len(), 2000);
}

#[test]
fn collisions_probe_linearly_in_a_tiny_range() {
    let cidr: CaptureCidr = "10.9.9.0/30".parse().unwrap();
    let m = MeshNames::build(["a.x", "b.x", "c.x", "d.x", "e.x"].map(svc), cidr);
    // A /30 has four addresses, all usable (no network/broadcast skipping below /24 is done
    // for the size <= 2 case only; /30 skips the first and last): two services fit.
    let got: Vec<_> = ["a.x", "b.x", "c.x", "d.x", "e.x"]
        .iter()
        .filter_map(|n| m.resolve(n))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|ip| cidr.contains(*ip)));
    assert_ne!(got[0], got[1]);
}

#[test]
fn rebuild_keeps_existing_addresses_when_names_are_added() {
    let cidr: CaptureCidr = "240.240.0.0/28".parse().unwrap();
    let first = MeshNames::build(["m.x", "n.x"].map(svc), cidr);
    let (m, n) = (first.resolve("m.x").unwrap(), first.resolve("n.x").unwrap());
    let more: Vec<MeshName> = (0..10)
        .map(|i| svc(&format!("s{i}.x")))
        .chain(["n.x", "m.x"].map(svc))
        .collect();
    let second = first.rebuild(more);
    assert_eq!(second.resolve("m.x"), Some(m));
    assert_eq!(second.resolve("n.x"), Some(n));
    assert_eq!(second.name_for(m), Some("m.x"));
    // A removed name no longer resolves, and its address maps to nothing (or a new owner).
    let third = second.rebuild(vec![svc("m.x")]);
    assert_eq!(third.resolve("n.x"), None);
    assert_eq!(third.name_for(n), None);
}

#[test]
fn lookups_ignore_case_and_trailing_dot() {
    let m = MeshNames::build(
        [svc("Reviews.Default.svc.cluster.local.")],
        CaptureCidr::default(),
    );
    let ip = m.resolve("reviews.default.svc.cluster.local").unwrap();
    assert_eq!(m.resolve("REVIEWS.default.SVC.cluster.local."), Some(ip));
    assert_eq!(m.resolve("ratings.default.svc.cluster.local"), None);
    assert_eq!(m.name_for(ip), Some("reviews.default.svc.cluster.local"));
    assert_eq!(m.name_for(IpAddr::V4(Ipv4Addr::new(240, 240, 0, 0))), None);
}

#[test]
fn kubernetes_short_forms_and_search_domains() {
    let m = MeshName::from_cluster("outbound|9080|v1|reviews.default.svc.cluster.local", &ctx())
        .unwrap();
    let mut aliases: Vec<&str> = m.aliases.iter().map(|a| &**a).collect();
    aliases.sort();
    assert_eq!(
        aliases,
        vec![
            "reviews",
            "reviews.default",
            "reviews.default.svc",
            "reviews.vm.example.com",
        ]
    );
    // Another namespace: no bare short name (it would shadow the proxy's own namespace).
    let other =
        MeshName::from_cluster("outbound|80||ratings.prod.svc.cluster.local", &ctx()).unwrap();
    assert!(!other.aliases.iter().any(|a| &**a == "ratings"));
    assert!(other.aliases.iter().any(|a| &**a == "ratings.prod"));

    let table = MeshNames::build([m, other], CaptureCidr::default());
    let ip = table.resolve("reviews.default.svc.cluster.local").unwrap();
    for n in [
        "reviews",
        "reviews.default",
        "reviews.default.svc",
        "reviews.vm.example.com",
    ] {
        assert_eq!(table.resolve(n), Some(ip), "{n}");
    }
    assert_eq!(
        table.name_for(ip),
        Some("reviews.default.svc.cluster.local")
    );
}

#[test]
fn internal_clusters_are_not_mesh_names() {
    for c in [
        "xds-grpc",
        "BlackHoleCluster",
        "inbound|9080||",
        "outbound|80||*.example.com",
        "prometheus_stats",
    ] {
        assert_eq!(MeshName::from_cluster(c, &ctx()), None, "{c}");
    }
    assert_eq!(
        MeshName::from_cluster("payments.internal", &ctx()).map(|m| m.service),
        Some(Arc::from("payments.internal"))
    );
}

#[test]
fn virtual_host_longest_domain_is_canonical() {
    let m = MeshName::from_virtual_host(
        &[
            "reviews",
            "reviews:9080",
            "reviews.default.svc.cluster.local:9080",
            "reviews.default.svc.cluster.local",
            "10.96.3.4",
            "10.96.3.4:9080",
            "*",
            "[fd00::1]:9080",
        ],
        &ctx(),
    )
    .unwrap();
    assert_eq!(&*m.service, "reviews.default.svc.cluster.local");
    assert!(m.aliases.iter().any(|a| &**a == "reviews"));
    assert!(!m.aliases.iter().any(|a| a.contains(':') || a.contains('*')));
    assert_eq!(
        MeshName::from_virtual_host(&["*", "10.0.0.1"], &ctx()),
        None
    );
}

#[test]
fn nds_entries_keep_their_addresses_and_win_over_config() {
    let mut table = NameTable::default();
    table.table.insert(
        "details.default.svc.cluster.local".into(),
        NameInfo {
            ips: vec!["10.96.0.20".into(), "fd00::20".into(), "bogus".into()],
            registry: "Kubernetes".into(),
            shortname: "details".into(),
            namespace: "default".into(),
            alt_hosts: vec![],
        },
    );
    table.table.insert(
        "api.external.example".into(),
        NameInfo {
            ips: vec!["240.240.7.7".into()],
            ..Default::default()
        },
    );
    let bytes = prost::Message::encode_to_vec(&table);
    let decoded = NameTable::decode_bytes(&bytes).unwrap();
    assert_eq!(decoded, table);

    let mut entries = MeshName::from_name_table(&decoded, &ctx());
    entries.push(
        MeshName::from_cluster("outbound|9080||details.default.svc.cluster.local", &ctx()).unwrap(),
    );
    let m = MeshNames::build(entries, CaptureCidr::default());
    let details = m.lookup("details").unwrap();
    assert_eq!(
        details,
        &[
            "10.96.0.20".parse::<IpAddr>().unwrap(),
            "fd00::20".parse().unwrap()
        ]
    );
    assert_eq!(
        m.name_for("10.96.0.20".parse().unwrap()),
        Some("details.default.svc.cluster.local")
    );
    assert_eq!(
        m.resolve("api.external.example"),
        Some("240.240.7.7".parse().unwrap())
    );
    let dump = m.dump();
    assert_eq!(dump.len(), 2);
    assert!(dump
        .iter()
        .all(|d| !d.allocated && d.source == NameSource::Nds));
}

#[test]
fn fixed_addresses_in_the_range_are_never_allocated_again() {
    let cidr: CaptureCidr = "240.240.0.0/30".parse().unwrap();
    // /30: offsets 1 and 2 usable. Fix one, allocate two: one of them gets nothing.
    let fixed = svc("fixed.x").with_addrs(["240.240.0.1".parse().unwrap()]);
    let m = MeshNames::build([fixed, svc("a.x")], cidr);
    assert_eq!(m.resolve("a.x"), Some("240.240.0.2".parse().unwrap()));
}

#[test]
fn canonical_name_beats_another_services_alias() {
    let a = svc("b.x").with_alias("a.x");
    let m = MeshNames::build([a, svc("a.x")], CaptureCidr::default());
    assert_ne!(m.resolve("a.x"), m.resolve("b.x"));
    assert_eq!(m.name_for(m.resolve("a.x").unwrap()), Some("a.x"));
}

#[test]
fn cidr_parsing() {
    let c: CaptureCidr = "240.240.1.2/16".parse().unwrap();
    assert_eq!(c.to_string(), "240.240.0.0/16");
    assert!(c.contains("240.240.255.1".parse().unwrap()));
    assert!(!c.contains("240.241.0.1".parse().unwrap()));
    assert!(!c.contains("::1".parse().unwrap()));
    for bad in ["240.240.0.0", "240.240.0.0/33", "x/16", "::/129"] {
        assert!(bad.parse::<CaptureCidr>().is_err(), "{bad}");
    }
    let v6: CaptureCidr = "2001:2::/48".parse().unwrap();
    let m = MeshNames::build([svc("a.x")], v6);
    assert!(v6.contains(m.resolve("a.x").unwrap()));
}

#[test]
fn allocated_service_maps_only_allocated_addresses_back() {
    let vip: IpAddr = "10.96.0.20".parse().unwrap();
    let m = MeshNames::build(
        [
            MeshName::from_cluster("outbound|5432||db.default.svc.cluster.local", &ctx()).unwrap(),
            MeshName::from_virtual_host(&["reviews.default.svc.cluster.local:9080"], &ctx())
                .unwrap(),
            MeshName::from_cluster("reviews.default.svc.cluster.local", &ctx()).unwrap(),
            svc("fixed.x").with_addrs([vip]),
        ],
        CaptureCidr::default(),
    );
    let db = m.resolve("db.default").unwrap();
    assert_eq!(
        m.allocated_service(db),
        Some(("db.default.svc.cluster.local", NameSource::Cluster))
    );
    // Named by a route domain and a cluster: the higher source is kept (it is an HTTP route).
    let reviews = m.resolve("reviews").unwrap();
    assert_eq!(
        m.allocated_service(reviews),
        Some(("reviews.default.svc.cluster.local", NameSource::VirtualHost))
    );
    // A fixed address is real: the control plane routes it, not the capture mapping.
    assert_eq!(m.name_for(vip), Some("fixed.x"));
    assert_eq!(m.allocated_service(vip), None);
    assert_eq!(m.allocated_service("240.240.0.0".parse().unwrap()), None);
}
