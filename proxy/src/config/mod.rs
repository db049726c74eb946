//! Compiling Envoy protos into Petrel's runtime objects.
//!
//! Protos are validated once here; the request path only sees the typed results. Every
//! error names the config path of the offending field.
// Envoy still accepts deprecated fields (`http2_protocol_options` on clusters, `exact_match`
// in header matchers, ...) and real bootstraps use them, so we read them too.
#![allow(deprecated)]
pub(crate) mod address;
pub(crate) mod bootstrap;
pub(crate) mod cluster;
pub(crate) mod listener;
pub(crate) mod route;

use std::time::Duration;

use envoy_types::pb::google::protobuf::Duration as PbDuration;

pub use bootstrap::{build_static, StaticConfig};

/// A configuration value Petrel cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Field path, e.g. `static_resources.listeners[0].address`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Converts a proto Duration; negative or out-of-range values are errors.
pub(crate) fn duration(d: &PbDuration, path: &str) -> Result<Duration, ConfigError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(ConfigError::new(path, "duration must be non-negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Decodes a typed_config `Any` into `M`, naming the path on failure.
pub(crate) fn unpack<M: prost::Message + Default>(
    any: &envoy_types::pb::google::protobuf::Any,
    expected: &str,
    path: &str,
) -> Result<M, ConfigError> {
    xds_client::decode::unpack_any(any, expected).map_err(|e| ConfigError::new(path, e))
}
