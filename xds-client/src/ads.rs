//! ADS/xDS protocol client (state-of-the-world and delta) over one gRPC stream.
//!
//! Layout:
//! - `config`: what to subscribe to, in which mode, and how to back off ([`AdsConfig`]).
//! - `channel`: the control-plane address (TCP or Unix socket) → tonic [`Channel`](tonic::transport::Channel).
//! - `sink`: the seam to the data plane ([`ResourceSink`]); decoding `Any`s is the sink's job.
//! - `stats`: plain atomic counters the proxy reports under Envoy's stat names.
//! - `client`: the task that owns the stream, reconnects with backoff, and the [`AdsHandle`].
//! - `engine`: per-type protocol state shared by both variants (versions, nonces, interest).
//! - `sotw`, `delta`: the two wire variants (requests built, responses handled).
//! - `test_util` (feature `test-util`): a scriptable control plane for tests.
//!
//! # Semantics mirrored from Envoy
//!
//! - **Per-type version and nonce.** An ACK repeats the response's `version_info` and `nonce`.
//!   A NACK carries the *previously accepted* version, the response's nonce and an
//!   `error_detail` (`google.rpc.Status`) whose message names each rejected resource.
//! - **Partial acceptance** (Envoy `CdsApiHelper`/`LdsApiImpl::onConfigUpdate`, gRFC A46): every
//!   resource of a response is handed to the sink, which applies the valid ones and returns a
//!   [`Rejection`] for each invalid one. If any was rejected the whole response is NACKed —
//!   the SotW `version_info` is not advanced, and for delta the per-resource versions reported
//!   in `initial_resource_versions` are not advanced (Envoy's `DeltaSubscriptionState` records
//!   them only after a clean update) — but the valid resources stay applied. The NACK message
//!   follows Envoy's wording: `Error adding/updating cluster(s) a: why, b: why` for CDS,
//!   `Error adding/updating listener(s) a: why\n` for LDS.
//! - **Structural errors** (an `Any` whose type differs from the response's `type_url`,
//!   duplicate names in a delta response) reject the whole response without applying
//!   anything, as Envoy does.
//! - **Wildcard** types (LDS, CDS) send empty `resource_names` (SotW) or an empty first
//!   `resource_names_subscribe` (delta, Envoy's legacy wildcard); in SotW a resource missing
//!   from a wildcard response is removed. Named types (RDS, EDS, SDS) follow
//!   [`AdsHandle::set_subscriptions`]; a request is sent only when the set changes, and
//!   omission from a SotW response never removes them.
//! - **Ordering**: on every (re)connect, types are requested CDS, EDS, LDS, RDS, then the
//!   rest in configuration order. Subscription changes made by the sink *during* `apply`
//!   are sent before that response's ACK, as Envoy's pause/resume of EDS under CDS (and RDS
//!   under LDS) does.
//! - **Reconnect** keeps the accepted versions and subscriptions: SotW re-requests with the
//!   last accepted `version_info` (and no nonce), delta sends `initial_resource_versions`.
//! - **Unknown type URLs** on the stream are NACKed (Envoy only logs and drops them;
//!   [`UnknownTypePolicy::Ignore`] does that instead).
//! - NACKs use gRPC code INTERNAL like Envoy (`GrpcMuxImpl`, `DeltaSubscriptionState`);
//!   [`AdsConfig::nack_code`] can switch to INVALID_ARGUMENT (grpc-go/gRFC A46 style).

mod channel;
mod client;
mod config;
mod delta;
mod engine;
mod sink;
mod sotw;
mod stats;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use channel::{connect_channel, InvalidTarget, XdsTarget};
pub use client::{AdsClient, AdsHandle, UndeclaredType};
pub use config::{AdsConfig, AdsMode, Backoff, Interest, TypeConfig, UnknownTypePolicy};
pub use sink::{decode_any, InvalidAny, Rejection, Resource, ResourceSink, ResourceUpdate};
pub use stats::{AdsStats, TypeStats};

/// Type URLs of the resources Envoy fetches over ADS.
pub mod type_url {
    /// CDS.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS.
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// LDS.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RDS.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// SDS.
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    /// SRDS.
    pub const SCOPED_ROUTE: &str =
        "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";
    /// VHDS.
    pub const VIRTUAL_HOST: &str = "type.googleapis.com/envoy.config.route.v3.VirtualHost";
    /// RTDS.
    pub const RUNTIME: &str = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
    /// The `Resource` envelope a SotW response may wrap resources in.
    pub const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";
}

#[cfg(test)]
mod tests;
