//! `dynamic_resources` of the bootstrap → how to reach the ADS control plane.
use std::collections::BTreeSet;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::{
    api_config_source, config_source, grpc_service, ConfigSource,
};
use xds_client::ads::{type_url, AdsConfig, AdsMode, Interest, TypeConfig, XdsTarget};

use crate::config::ConfigError;
use crate::server::ClusterTable;
use crate::upstream::HostAddr;

/// Where and how to run the ADS client.
#[derive(Debug)]
pub struct AdsSettings {
    /// The control plane address.
    pub target: XdsTarget,
    /// Client configuration (node, mode, types).
    pub config: AdsConfig,
}

fn is_ads(cs: Option<&ConfigSource>) -> bool {
    cs.is_some_and(|cs| {
        matches!(
            cs.config_source_specifier,
            Some(config_source::ConfigSourceSpecifier::Ads(_))
        )
    })
}

fn fetch_timeout(cs: Option<&ConfigSource>) -> Option<Duration> {
    match cs.and_then(|c| c.initial_fetch_timeout.as_ref()) {
        // Envoy: 0 disables the timeout; unset means 15 s.
        Some(d) => {
            let d = Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32);
            (!d.is_zero()).then_some(d)
        }
        None => Some(Duration::from_secs(15)),
    }
}

/// Reads `dynamic_resources`; `None` when the bootstrap is static.
pub fn ads_settings(
    b: &Bootstrap,
    clusters: &ClusterTable,
) -> Result<Option<AdsSettings>, ConfigError> {
    let Some(dr) = &b.dynamic_resources else {
        return Ok(None);
    };
    for (name, cs) in [
        ("lds_config", dr.lds_config.as_ref()),
        ("cds_config", dr.cds_config.as_ref()),
    ] {
        if cs.is_some() && !is_ads(cs) {
            return Err(ConfigError::new(
                format!("dynamic_resources.{name}"),
                "only `ads: {}` is supported (per-type API and path config sources are not yet)",
            ));
        }
    }
    let ads = dr.ads_config.as_ref().ok_or_else(|| {
        ConfigError::new(
            "dynamic_resources.ads_config",
            "missing (needed by ads: {} sources)",
        )
    })?;
    let mode = match api_config_source::ApiType::try_from(ads.api_type) {
        Ok(api_config_source::ApiType::Grpc) | Ok(api_config_source::ApiType::AggregatedGrpc) => {
            AdsMode::StateOfTheWorld
        }
        Ok(api_config_source::ApiType::DeltaGrpc)
        | Ok(api_config_source::ApiType::AggregatedDeltaGrpc) => AdsMode::Delta,
        _ => {
            return Err(ConfigError::new(
                "dynamic_resources.ads_config.api_type",
                "must be GRPC or DELTA_GRPC",
            ))
        }
    };
    let svc = ads
        .grpc_services
        .first()
        .ok_or_else(|| ConfigError::new("dynamic_resources.ads_config.grpc_services", "missing"))?;
    let target = match &svc.target_specifier {
        Some(grpc_service::TargetSpecifier::EnvoyGrpc(e)) => {
            let path = "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name";
            let cluster = clusters.get(e.cluster_name.as_str()).ok_or_else(|| {
                ConfigError::new(path, format!("unknown static cluster {:?}", e.cluster_name))
            })?;
            let hosts = cluster.hosts.load();
            let host = hosts.hosts.first().ok_or_else(|| {
                ConfigError::new(
                    path,
                    format!("cluster {:?} has no endpoint", e.cluster_name),
                )
            })?;
            match &host.addr {
                HostAddr::Tcp(a) => XdsTarget::parse(&format!("http://{a}")),
                HostAddr::Unix(p) => Ok(XdsTarget::Unix(p.clone())),
            }
            .map_err(|e| ConfigError::new(path, e.to_string()))?
        }
        Some(grpc_service::TargetSpecifier::GoogleGrpc(g)) => XdsTarget::parse(&g.target_uri)
            .map_err(|e| {
                ConfigError::new(
                    "dynamic_resources.ads_config.grpc_services[0].google_grpc.target_uri",
                    e.to_string(),
                )
            })?,
        None => {
            return Err(ConfigError::new(
                "dynamic_resources.ads_config.grpc_services[0]",
                "missing envoy_grpc or google_grpc",
            ))
        }
    };
    let mut node = b.node.clone().unwrap_or_default();
    if node.user_agent_name.is_empty() {
        node.user_agent_name = "petrel".into();
    }
    if node.user_agent_version_type.is_none() {
        node.user_agent_version_type = Some(
            envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").into(),
            ),
        );
    }
    let mut config = AdsConfig::new(node, mode);
    config.set_node_on_first_message_only = ads.set_node_on_first_message_only;
    let t = |url: &str, interest, timeout| TypeConfig {
        type_url: url.to_string(),
        interest,
        initial_fetch_timeout: timeout,
    };
    config.types = vec![
        t(
            type_url::CLUSTER,
            Interest::Wildcard,
            fetch_timeout(dr.cds_config.as_ref()),
        ),
        t(
            type_url::ENDPOINT,
            Interest::Names(BTreeSet::new()),
            Some(Duration::from_secs(15)),
        ),
        t(
            type_url::LISTENER,
            Interest::Wildcard,
            fetch_timeout(dr.lds_config.as_ref()),
        ),
        t(
            type_url::ROUTE,
            Interest::Names(BTreeSet::new()),
            Some(Duration::from_secs(15)),
        ),
    ];
    Ok(Some(AdsSettings { target, config }))
}
