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

/// What compiling a listener needs besides its proto.
#[derive(Debug, Clone, Copy)]
pub struct BuildCtx<'a> {
    /// Where stats are registered.
    pub stats: &'a crate::stats::Stats,
    /// RDS route slots; `None` when there is no control plane (then `rds` is refused).
    pub routes: Option<&'a crate::route::RouteStore>,
    /// A control plane is configured (EDS clusters are allowed).
    pub xds: bool,
}

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

/// How HTTP/1 header names are written (`http_protocol_options.header_key_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderCase {
    /// Lower-case (Envoy's default).
    #[default]
    Lower,
    /// `Proper-Case-Words`.
    Title,
    /// As received (the `preserve_case` stateful formatter).
    Preserve,
}

const PRESERVE_CASE: &str =
    "envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig";

/// Reads `header_key_format` from HTTP/1 protocol options.
pub(crate) fn header_case(
    opts: Option<&envoy_types::pb::envoy::config::core::v3::Http1ProtocolOptions>,
    path: &str,
) -> Result<HeaderCase, ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::http1_protocol_options::header_key_format::HeaderFormat;
    let Some(fmt) = opts.and_then(|o| o.header_key_format.as_ref()) else {
        return Ok(HeaderCase::Lower);
    };
    match &fmt.header_format {
        Some(HeaderFormat::ProperCaseWords(_)) => Ok(HeaderCase::Title),
        Some(HeaderFormat::StatefulFormatter(ext)) => {
            let ty = ext
                .typed_config
                .as_ref()
                .map(|a| xds_client::decode::type_name(&a.type_url));
            if ty == Some(PRESERVE_CASE) {
                Ok(HeaderCase::Preserve)
            } else {
                Err(ConfigError::new(
                    format!("{path}.header_key_format.stateful_formatter"),
                    format!(
                        "{} is not supported",
                        ty.unwrap_or("(missing typed_config)")
                    ),
                ))
            }
        }
        None => Ok(HeaderCase::Lower),
    }
}

/// Decodes a typed_config `Any` into `M`, naming the path on failure.
pub(crate) fn unpack<M: prost::Message + Default>(
    any: &envoy_types::pb::google::protobuf::Any,
    expected: &str,
    path: &str,
) -> Result<M, ConfigError> {
    xds_client::decode::unpack_any(any, expected).map_err(|e| ConfigError::new(path, e))
}
