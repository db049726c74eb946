//! What the ADS client subscribes to and how it behaves on the wire.
use std::collections::BTreeSet;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;

use super::type_url;

/// Configuration of one ADS client.
#[derive(Clone, Debug)]
pub struct AdsConfig {
    /// Sent in requests (every request, unless `set_node_on_first_message_only`).
    pub node: Node,
    /// `ads_config.api_type`: GRPC (state-of-the-world) or DELTA_GRPC.
    pub mode: AdsMode,
    /// The resource types this client speaks, with their initial interest. Only these types
    /// can be changed later with [`AdsHandle::set_subscriptions`](super::AdsHandle::set_subscriptions).
    pub types: Vec<TypeConfig>,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// `ads_config.set_node_on_first_message_only`: send the node only in the first request
    /// of each stream.
    pub set_node_on_first_message_only: bool,
    /// The `google.rpc.Code` put in NACKs' `error_detail`. Envoy uses INTERNAL (13).
    pub nack_code: tonic::Code,
    /// What to do with a response for a type URL not in `types`.
    pub unknown_type: UnknownTypePolicy,
    /// Largest response accepted. Envoy sets no limit by default; Istio configs of several
    /// MiB are common, so the gRPC default of 4 MiB is too small. 64 MiB bounds the damage a
    /// misbehaving control plane can do.
    pub max_message_size: usize,
}

/// Which variant of the ADS protocol to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdsMode {
    /// `StreamAggregatedResources` (`api_type: GRPC`).
    StateOfTheWorld,
    /// `DeltaAggregatedResources` (`api_type: DELTA_GRPC`).
    Delta,
}

/// One resource type and its initial subscription.
#[derive(Clone, Debug)]
pub struct TypeConfig {
    /// The type URL, e.g. [`type_url::CLUSTER`].
    pub type_url: String,
    /// Initial interest. `Interest::Names` with an empty set declares the type without
    /// requesting anything until names are set.
    pub interest: Interest,
    /// `initial_fetch_timeout`: if no response for this type arrives this long after it was
    /// first requested, the sink is told once (Envoy then lets initialization proceed).
    /// `None` waits forever. Envoy's default is 15 s.
    pub initial_fetch_timeout: Option<Duration>,
}

/// The resources of one type the client asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interest {
    /// Everything the control plane has for this type (LDS, CDS).
    Wildcard,
    /// Exactly these names (RDS, EDS, SDS).
    Names(BTreeSet<String>),
}

/// Reconnect backoff: full-jitter exponential, like Envoy's
/// `JitteredExponentialBackOffStrategy`: the n-th retry waits a uniformly random time in
/// `[0, min(base · 2ⁿ, max))`. It restarts from `base` once a stream delivers a response.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// First interval. Envoy's default for xDS streams is 500 ms.
    pub base: Duration,
    /// Cap. Envoy's default is 30 s.
    pub max: Duration,
}

/// How to answer a response whose type URL the client was not configured for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownTypePolicy {
    /// NACK it with an `error_detail` naming the type (the requirement).
    Nack,
    /// Log and drop it, sending nothing (what Envoy's `GrpcMuxImpl` does).
    Ignore,
}

// === impl AdsConfig ===

impl AdsConfig {
    /// Wildcard CDS and LDS plus empty RDS and EDS, Envoy's defaults otherwise.
    pub fn new(node: Node, mode: AdsMode) -> Self {
        let t = |url: &str, interest| TypeConfig {
            type_url: url.to_string(),
            interest,
            initial_fetch_timeout: Some(Duration::from_secs(15)),
        };
        AdsConfig {
            node,
            mode,
            types: vec![
                t(type_url::CLUSTER, Interest::Wildcard),
                t(type_url::ENDPOINT, Interest::Names(BTreeSet::new())),
                t(type_url::LISTENER, Interest::Wildcard),
                t(type_url::ROUTE, Interest::Names(BTreeSet::new())),
            ],
            backoff: Backoff::default(),
            set_node_on_first_message_only: false,
            nack_code: tonic::Code::Internal,
            unknown_type: UnknownTypePolicy::Nack,
            max_message_size: 64 << 20,
        }
    }
}

// === impl Interest ===

impl Interest {
    /// Whether a request for this type belongs at the start of a stream.
    pub(crate) fn wants_anything(&self) -> bool {
        match self {
            Interest::Wildcard => true,
            Interest::Names(n) => !n.is_empty(),
        }
    }

    /// Whether `name` is covered.
    pub(crate) fn contains(&self, name: &str) -> bool {
        match self {
            Interest::Wildcard => true,
            Interest::Names(n) => n.contains(name),
        }
    }

    /// SotW `resource_names`: empty for wildcard.
    pub(crate) fn sotw_names(&self) -> Vec<String> {
        match self {
            Interest::Wildcard => Vec::new(),
            Interest::Names(n) => n.iter().cloned().collect(),
        }
    }

    /// The set as delta subscriptions see it: wildcard is the name `*`.
    pub(crate) fn delta_set(&self) -> BTreeSet<String> {
        match self {
            Interest::Wildcard => BTreeSet::from(["*".to_string()]),
            Interest::Names(n) => n.clone(),
        }
    }
}

// === impl Backoff ===

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (0-based).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .checked_mul(1u32 << attempt.min(20))
            .unwrap_or(self.max)
            .min(self.max);
        let ms = u64::try_from(ceiling.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_millis(rand::random_range(0..ms))
    }
}

/// The order Envoy's init sequence puts subscriptions on a fresh stream: clusters, their
/// endpoints, listeners, their routes, then anything else.
pub(crate) fn rank(type_url: &str) -> u8 {
    match type_url {
        type_url::CLUSTER => 0,
        type_url::ENDPOINT => 1,
        type_url::LISTENER => 2,
        type_url::ROUTE => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_cap() {
        let b = Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        };
        for attempt in 0..40 {
            let d = b.delay(attempt);
            assert!(d < Duration::from_secs(30), "{attempt}: {d:?}");
            if attempt == 0 {
                assert!(d < Duration::from_millis(500));
            }
        }
    }

    #[test]
    fn rank_puts_cds_before_eds_before_lds_before_rds() {
        let mut v = [
            type_url::ROUTE,
            type_url::SECRET,
            type_url::LISTENER,
            type_url::ENDPOINT,
            type_url::CLUSTER,
        ];
        v.sort_by_key(|t| rank(t));
        assert_eq!(
            v,
            [
                type_url::CLUSTER,
                type_url::ENDPOINT,
                type_url::LISTENER,
                type_url::ROUTE,
                type_url::SECRET
            ]
        );
    }
}
