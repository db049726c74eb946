use super::*;

fn cluster(yaml: &str) -> XdsCluster {
    xds_client::decode::decode_text_as(
        &format!("name: c\n{yaml}"),
        "envoy.config.cluster.v3.Cluster",
        "test",
        Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn cla(yaml: &str) -> ClusterLoadAssignment {
    xds_client::decode::decode_text_as(
        yaml,
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        "test",
        Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn err(yaml: &str) -> ConfigError {
    lb_config(&cluster(yaml), "c", cluster::DiscoveryType::Static).unwrap_err()
}

#[test]
fn legacy_policies_compile_with_envoys_defaults() {
    let c = lb_config(
        &cluster("lb_policy: RING_HASH"),
        "c",
        cluster::DiscoveryType::Static,
    )
    .unwrap();
    assert_eq!(c.policy, LbPolicy::RingHash(RingHashConfig::default()));
    assert_eq!(c.panic_threshold, 50);
    let c = lb_config(
        &cluster("lb_policy: MAGLEV\nmaglev_lb_config: {table_size: 7}"),
        "c",
        cluster::DiscoveryType::Static,
    )
    .unwrap();
    assert_eq!(c.policy, LbPolicy::Maglev(7));
    let c = lb_config(
        &cluster(
            "lb_policy: LEAST_REQUEST\nleast_request_lb_config: {choice_count: 3, active_request_bias: {default_value: 0.5, runtime_key: k}}",
        ),
        "c",
        cluster::DiscoveryType::Static,
    )
    .unwrap();
    assert_eq!(
        c.policy,
        LbPolicy::LeastRequest {
            choice_count: 3,
            active_request_bias: 0.5,
            bias_explicit: true,
            full_scan: false
        }
    );
    let c = lb_config(
        &cluster(
            "lb_policy: RING_HASH\ncommon_lb_config: {healthy_panic_threshold: {value: 12.5}, locality_weighted_lb_config: {}, consistent_hashing_lb_config: {use_hostname_for_hashing: true}}",
        ),
        "c",
        cluster::DiscoveryType::StrictDns,
    )
    .unwrap();
    // 12.5 rounds to 13, as Envoy's PROTOBUF_PERCENT_TO_ROUNDED_INTEGER_OR_DEFAULT.
    assert_eq!(c.panic_threshold, 13);
    assert!(c.locality_weighted && c.use_hostname_for_hashing);
}

#[test]
fn unimplemented_settings_are_refused_naming_the_field() {
    for (yaml, path) in [
        (
            "lb_policy: RING_HASH\nring_hash_lb_config: {hash_function: MURMUR_HASH_2}",
            "c.ring_hash_lb_config.hash_function",
        ),
        (
            "lb_policy: MAGLEV\nmaglev_lb_config: {table_size: 8}",
            "c.maglev_lb_config.table_size",
        ),
        (
            "lb_policy: LEAST_REQUEST\nleast_request_lb_config: {choice_count: 1}",
            "c.least_request_lb_config.choice_count",
        ),
        (
            "common_lb_config: {healthy_panic_threshold: {value: 101}}",
            "c.common_lb_config.healthy_panic_threshold.value",
        ),
        (
            "common_lb_config: {zone_aware_lb_config: {}}",
            "c.common_lb_config.zone_aware_lb_config",
        ),
        (
            "common_lb_config: {consistent_hashing_lb_config: {hash_balance_factor: 150}}",
            "c.common_lb_config.consistent_hashing_lb_config.hash_balance_factor",
        ),
        (
            "round_robin_lb_config: {slow_start_config: {slow_start_window: 1s}}",
            "c.round_robin_lb_config.slow_start_config",
        ),
        ("lb_policy: CLUSTER_PROVIDED", "c.lb_policy"),
        (
            "lb_policy: RING_HASH\ncommon_lb_config: {consistent_hashing_lb_config: {use_hostname_for_hashing: true}}",
            "c.common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing",
        ),
    ] {
        assert_eq!(err(yaml).path, path, "{yaml}");
    }
    // ring sizes: min above max.
    let e = err(
        "lb_policy: RING_HASH\nring_hash_lb_config: {minimum_ring_size: 10, maximum_ring_size: 5}",
    );
    assert_eq!(e.path, "c.ring_hash_lb_config.minimum_ring_size");
}

fn typed(ty: &str, body: &str) -> String {
    format!(
        "load_balancing_policy: {{policies: [{{typed_extension_config: {{name: x, typed_config: {{'@type': type.googleapis.com/{ty}{body}}}}}}}]}}"
    )
}

#[test]
fn extension_policies_map_to_the_same_balancers() {
    let c = lb_config(
        &cluster(&typed(
            LEAST_REQUEST,
            ", selection_method: FULL_SCAN, locality_lb_config: {locality_weighted_lb_config: {}}",
        )),
        "c",
        cluster::DiscoveryType::Static,
    )
    .unwrap();
    assert!(matches!(
        c.policy,
        LbPolicy::LeastRequest {
            full_scan: true,
            choice_count: 2,
            ..
        }
    ));
    assert!(c.locality_weighted);
    let c = lb_config(
        &cluster(&typed(
            RING_HASH,
            ", minimum_ring_size: 64, consistent_hashing_lb_config: {use_hostname_for_hashing: true}",
        )),
        "c",
        cluster::DiscoveryType::Static,
    )
    .unwrap();
    assert_eq!(
        c.policy,
        LbPolicy::RingHash(RingHashConfig {
            min_ring_size: 64,
            max_ring_size: super::super::hash::MAX_RING_SIZE
        })
    );
    assert!(c.use_hostname_for_hashing);
    let c = lb_config(
        &cluster(&typed(MAGLEV, "")),
        "c",
        cluster::DiscoveryType::Static,
    )
    .unwrap();
    assert_eq!(c.policy, LbPolicy::Maglev(65537));
    let c = lb_config(
        &cluster(&typed(RANDOM, "")),
        "c",
        cluster::DiscoveryType::Static,
    )
    .unwrap();
    assert_eq!(c.policy, LbPolicy::Random);
    let e = lb_config(
        &cluster(&typed(
            RING_HASH,
            ", consistent_hashing_lb_config: {hash_policy: [{header: {header_name: x}}]}",
        )),
        "c",
        cluster::DiscoveryType::Static,
    )
    .unwrap_err();
    assert_eq!(
        e.path,
        "c.load_balancing_policy.policies[0].typed_extension_config.typed_config.consistent_hashing_lb_config.hash_policy"
    );
    let e = lb_config(
        &cluster(&typed(
            "envoy.extensions.load_balancing_policies.pick_first.v3.PickFirst",
            "",
        )),
        "c",
        cluster::DiscoveryType::Static,
    )
    .unwrap_err();
    assert_eq!(e.path, "c.load_balancing_policy.policies");
}

#[test]
fn membership_keeps_every_host_with_priority_locality_and_health() {
    let la = cla(r#"
cluster_name: c
policy: {overprovisioning_factor: 200, weighted_priority_health: true}
endpoints:
- locality: {zone: z1}
  load_balancing_weight: 3
  lb_endpoints:
  - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}, hostname: one}
    health_status: DEGRADED
    load_balancing_weight: 5
    metadata: {filter_metadata: {envoy.lb: {hash_key: k1}}}
  - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 2}}}
    health_status: UNHEALTHY
- priority: 1
  lb_endpoints:
  - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 3}}}
    health_status: DRAINING
  - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 4}}}
    health_status: TIMEOUT
  - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 5}}}
    health_status: UNKNOWN
"#);
    let (m, names) = membership(&la, "la", false, &HostSet::default()).unwrap();
    assert!(names.is_empty());
    assert_eq!(m.overprovisioning, 200);
    assert!(m.weighted_priority_health);
    let summary: Vec<(u32, u32, EdsHealth, &str)> = m
        .members
        .iter()
        .map(|x| (x.priority, x.weight, x.health, &*x.host.hostname))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, 5, EdsHealth::Degraded, "one"),
            (0, 1, EdsHealth::Unhealthy, ""),
            (1, 1, EdsHealth::Draining, ""),
            (1, 1, EdsHealth::Unhealthy, ""),
            (1, 1, EdsHealth::Healthy, ""),
        ]
    );
    assert_eq!(m.members[0].hash_key.as_deref(), Some("k1"));
    assert_eq!(m.members[0].locality.zone, "z1");
    assert_eq!(
        m.locality_weights
            .get(&(0, m.members[0].locality.clone()))
            .copied(),
        Some(3)
    );
}

#[test]
fn hosts_keep_their_identity_across_updates() {
    let one = |w: u32| {
        cla(&format!(
            "cluster_name: c\nendpoints:\n- lb_endpoints:\n  - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9}}}}}}\n    load_balancing_weight: {w}\n"
        ))
    };
    let (a, _) = membership(&one(1), "", false, &HostSet::default()).unwrap();
    let set = HostSet::build(&a, &LbConfig::default(), |_| false, &HostSet::default(), 0).0;
    // A weight change keeps the host (and its pool and stats), as Envoy.
    let (b, _) = membership(&one(4), "", false, &set).unwrap();
    assert!(Arc::ptr_eq(&a.members[0].host, &b.members[0].host));
    assert_eq!(b.members[0].weight, 4);
    HostSet::build(&b, &LbConfig::default(), |_| false, &set, 0);
    assert_eq!(b.members[0].host.weight(), 4);
}

#[test]
fn bad_endpoints_are_refused_naming_the_field() {
    for (yaml, path) in [
        (
            "cluster_name: c\nendpoints:\n- lb_endpoints:\n  - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n    load_balancing_weight: 0\n",
            "la.endpoints[0].lb_endpoints[0].load_balancing_weight",
        ),
        (
            "cluster_name: c\nendpoints:\n- load_balancing_weight: 0\n  lb_endpoints: []\n",
            "la.endpoints[0].load_balancing_weight",
        ),
        (
            "cluster_name: c\npolicy: {overprovisioning_factor: 0}\n",
            "la.policy.overprovisioning_factor",
        ),
        (
            "cluster_name: c\npolicy: {drop_overloads: [{category: x, drop_percentage: {numerator: 1}}]}\n",
            "la.policy.drop_overloads",
        ),
    ] {
        let e = membership(&cla(yaml), "la", false, &HostSet::default()).unwrap_err();
        assert_eq!(e.path, path, "{yaml}");
    }
}
