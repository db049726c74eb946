//! Loading an Envoy v3 bootstrap the way Envoy does: a file (`-c`) in YAML, JSON or binary,
//! with `--config-yaml` merged over it by protobuf merge semantics, then checked against the
//! support table.
use std::path::Path;

use prost::Message;

use crate::decode::{self, DecodeError, DecodeOptions, Format};
use crate::support::{self, Report};
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;

const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";

/// A decoded, checked bootstrap.
#[derive(Debug, Clone)]
pub struct LoadedBootstrap {
    /// The merged bootstrap.
    pub bootstrap: Bootstrap,
    /// Fields accepted but ignored (warned about once at startup).
    pub warnings: Vec<String>,
}

/// Why a bootstrap was refused.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Neither `-c` nor `--config-yaml` was given.
    #[error("no configuration: pass -c/--config-path or --config-yaml")]
    Missing,
    /// The file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The text or bytes do not decode as a Bootstrap.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Fields Petrel does not implement and that would change behaviour.
    #[error("unsupported configuration:\n  {}", .0.join("\n  "))]
    Unsupported(Vec<String>),
}

/// Loads the bootstrap from `config_path` and/or `config_yaml` (merged over the file).
pub fn load(
    config_path: Option<&Path>,
    config_yaml: Option<&str>,
    opts: DecodeOptions,
) -> Result<LoadedBootstrap, BootstrapError> {
    if config_path.is_none() && config_yaml.is_none() {
        return Err(BootstrapError::Missing);
    }
    let desc = decode::message_descriptor(BOOTSTRAP).ok_or_else(|| {
        BootstrapError::Decode(DecodeError {
            source: "bootstrap".into(),
            path: None,
            location: None,
            message: "Bootstrap descriptor missing from the descriptor pool".into(),
        })
    })?;

    // Protobuf merge semantics (what Envoy's MergeFrom does for --config-yaml) are exactly
    // those of decoding the concatenation of two encodings: scalars of the second win,
    // repeated fields append, sub-messages merge.
    let mut encoded = Vec::new();
    if let Some(path) = config_path {
        let source = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|error| BootstrapError::Read {
            path: source.clone(),
            error,
        })?;
        match Format::from_path(path) {
            Format::Binary => {
                decode::decode_dynamic(&bytes, desc.clone(), &source)?;
                encoded.extend_from_slice(&bytes);
            }
            Format::Yaml => {
                let text = String::from_utf8(bytes).map_err(|e| DecodeError {
                    source: source.clone(),
                    path: None,
                    location: None,
                    message: format!("not UTF-8: {e}"),
                })?;
                let msg = decode::decode_text(&text, desc.clone(), &source, opts)?;
                encoded.extend_from_slice(&msg.encode_to_vec());
            }
        }
    }
    if let Some(text) = config_yaml {
        let msg = decode::decode_text(text, desc.clone(), "--config-yaml", opts)?;
        encoded.extend_from_slice(&msg.encode_to_vec());
    }

    let merged = decode::decode_dynamic(&encoded, desc, "bootstrap")?;
    let Report {
        warnings,
        rejections,
    } = support::check(&merged, "");
    if !rejections.is_empty() {
        return Err(BootstrapError::Unsupported(rejections));
    }
    let bootstrap = Bootstrap::decode(encoded.as_slice()).map_err(|e| DecodeError {
        source: "bootstrap".into(),
        path: None,
        location: None,
        message: e.to_string(),
    })?;
    Ok(LoadedBootstrap {
        bootstrap,
        warnings,
    })
}

#[cfg(test)]
mod tests;
