//! The seam between the protocol and the data plane.
//!
//! The client knows names, versions and nonces; the sink knows what a `Cluster` means. The
//! client hands the sink each response's resources of one type, still as `Any`, and the sink
//! answers with the resources it refused. The client turns that answer into an ACK or NACK.
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// Implemented by the data plane (the proxy's config applier).
///
/// Calls come from the client's task, one at a time, in stream order. `apply` should not
/// block for long: while it runs, the client reads nothing from the control plane.
pub trait ResourceSink: Send + Sync + 'static {
    /// Applies one response's resources of one type. Valid resources must be applied
    /// (partial acceptance); each invalid one is returned as a [`Rejection`] and its previous
    /// version, if any, keeps serving. Names in `update.removed` must be dropped.
    ///
    /// The sink may call [`AdsHandle::set_subscriptions`](super::AdsHandle::set_subscriptions)
    /// from here (RDS names of new listeners, EDS names of new clusters); those requests go
    /// out before this response's ACK, as in Envoy.
    fn apply(&self, update: ResourceUpdate<'_>) -> Vec<Rejection>;

    /// The ADS stream came up (`true`) or went down (`false`). While down, keep serving the
    /// last applied config.
    fn on_connection_state(&self, _connected: bool) {}

    /// No response of `type_url` arrived within its `initial_fetch_timeout` after it was
    /// first requested. Envoy stops waiting for it in its init manager; the sink should too.
    /// Called at most once per type.
    fn on_initial_fetch_timeout(&self, _type_url: &str) {}
}

/// One response's worth of changes to one resource type.
#[derive(Debug)]
pub struct ResourceUpdate<'a> {
    /// The type URL of every resource in `resources`.
    pub type_url: &'a str,
    /// SotW: the response's `version_info`. Delta: its `system_version_info`. This is what
    /// Envoy shows as the type's `version_info` in `/config_dump` once accepted.
    pub version_info: &'a str,
    /// Added or updated resources, in response order, without duplicates.
    pub resources: &'a [Resource],
    /// Names to remove: explicit in delta; in SotW, wildcard-type resources the response
    /// left out.
    pub removed: &'a [String],
    /// SotW wildcard update: `resources` plus what the sink already held minus `removed` is
    /// the complete set of this type.
    pub state_of_the_world: bool,
}

/// One resource of a response.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// The resource name (`Cluster.name`, `ClusterLoadAssignment.cluster_name`, …).
    pub name: String,
    /// Delta: the resource's own version. SotW: the response's `version_info`.
    pub version: String,
    /// The encoded resource; decode it with [`Resource::decode`].
    pub body: Any,
}

/// A resource the sink refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The resource's name.
    pub name: String,
    /// Why, naming the field where possible (`lb_policy: RING_HASH is not supported`).
    pub reason: String,
}

/// An `Any` that does not hold the expected message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAny {
    /// The `type_url` names another message.
    #[error("expected {expected}, got {actual}")]
    WrongType {
        /// The type URL wanted.
        expected: String,
        /// The type URL found.
        actual: String,
    },
    /// The bytes are not a valid encoding of the message.
    #[error("cannot decode {type_url}: {reason}")]
    Malformed {
        /// The type URL being decoded.
        type_url: String,
        /// prost's description of the problem.
        reason: String,
    },
}

// === impl Resource ===

impl Resource {
    /// Decodes the body as `M`, checking its type URL.
    pub fn decode<M: Message + Name + Default>(&self) -> Result<M, InvalidAny> {
        decode_any(&self.body)
    }
}

// === impl Rejection ===

impl Rejection {
    /// A rejection of `name` because of `reason`.
    pub fn new(name: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Rejection {
            name: name.into(),
            reason: reason.to_string(),
        }
    }
}

/// Decodes an `Any` into `M` after checking that its type URL names `M` (any
/// `prefix/full.name` form is accepted, as protobuf does).
pub fn decode_any<M: Message + Name + Default>(any: &Any) -> Result<M, InvalidAny> {
    let full = M::full_name();
    let actual_name = any.type_url.rsplit('/').next().unwrap_or_default();
    if actual_name != full {
        return Err(InvalidAny::WrongType {
            expected: M::type_url(),
            actual: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|e| InvalidAny::Malformed {
        type_url: any.type_url.clone(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::listener::v3::Listener;

    #[test]
    fn decode_any_checks_type_and_bytes() {
        let c = Cluster {
            name: "a".into(),
            ..Default::default()
        };
        let any = Any {
            type_url: Cluster::type_url(),
            value: c.encode_to_vec(),
        };
        assert_eq!(decode_any::<Cluster>(&any).unwrap().name, "a");
        let err = decode_any::<Listener>(&any).unwrap_err();
        assert!(matches!(err, InvalidAny::WrongType { .. }), "{err}");
        let bad = Any {
            type_url: Cluster::type_url(),
            value: vec![0x0a, 0xff],
        };
        let err = decode_any::<Cluster>(&bad).unwrap_err();
        assert!(matches!(err, InvalidAny::Malformed { .. }), "{err}");
    }
}
