//! Decoding Envoy configuration text (YAML or JSON, by the proto3 JSON mapping) and binary
//! protos into envoy-types' prost messages.
//!
//! Decoding goes through prost-reflect's `DynamicMessage` so that `Any` fields with `@type`
//! resolve against Envoy's real descriptors; the result is transcoded into the generated prost
//! type. Errors name the field path and, for YAML, the line and column.
use std::fmt;
use std::path::Path;

use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, ReflectMessage};

use crate::descriptor;
use envoy_types::pb::google::protobuf::Any;

/// The encoding of a configuration file, chosen by its extension as Envoy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `.yaml`, `.yml` and `.json` (JSON is parsed as YAML, which is a superset).
    Yaml,
    /// `.pb`: binary protobuf.
    Binary,
}

/// A configuration that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Where the input came from (file path, `--config-yaml`, resource name).
    pub source: String,
    /// Field path inside the message, e.g. `static_resources.clusters[0].connect_timeout`.
    pub path: Option<String>,
    /// Line and column (1-based) for text input, when the parser knows them.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some((line, col)) = self.location {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(path) = &self.path {
            write!(f, ": field {path}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Options for text decoding.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecodeOptions {
    /// Accept (and drop) fields that do not exist in the proto, like Envoy's
    /// `--allow-unknown-static-fields`.
    pub allow_unknown_fields: bool,
}

// === impl Format ===

impl Format {
    /// Chooses the format from a path's extension; unknown extensions are treated as YAML,
    /// which also accepts JSON.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("pb") => Format::Binary,
            _ => Format::Yaml,
        }
    }
}

/// Returns the descriptor of an Envoy message by full name.
pub fn message_descriptor(full_name: &str) -> Option<MessageDescriptor> {
    descriptor::pool().get_message_by_name(full_name)
}

/// Decodes YAML/JSON text into a dynamic message of type `desc`.
pub fn decode_text(
    text: &str,
    desc: MessageDescriptor,
    source: &str,
    opts: DecodeOptions,
) -> Result<DynamicMessage, DecodeError> {
    let options = DeserializeOptions::new().deny_unknown_fields(!opts.allow_unknown_fields);
    // An empty document is an empty message (Envoy accepts an empty --config-yaml).
    if text.trim().is_empty() {
        return Ok(DynamicMessage::new(desc));
    }
    let de = serde_yaml::Deserializer::from_str(text);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(de, &mut track);
    match DynamicMessage::deserialize_with_options(desc, tracked, &options) {
        Ok(msg) => Ok(msg),
        Err(err) => {
            let path = track.path().to_string();
            // A syntax error has no meaningful field path (serde_path_to_error shows `?`).
            let path = path
                .trim_end_matches(".?")
                .trim_end_matches('?')
                .to_string();
            let location = err.location().map(|l| (l.line(), l.column()));
            // serde_yaml appends " at line X column Y" to its messages; we report the location
            // separately, so strip it to keep one clear sentence.
            let mut message = err.to_string();
            // prost-reflect prefixes messages with the path it knows; we print ours.
            if let Some(rest) = message.strip_prefix(&format!("{path}: ")) {
                message = rest.to_string();
            }
            if let Some(idx) = message.find(" at line ") {
                message.truncate(idx);
            }
            Err(DecodeError {
                source: source.to_string(),
                path: (!path.is_empty() && path != ".").then_some(path),
                location,
                message,
            })
        }
    }
}

/// Decodes text into a generated prost type `M` (whose descriptor must be in Envoy's pool).
pub fn decode_text_as<M: Message + Default>(
    text: &str,
    full_name: &str,
    source: &str,
    opts: DecodeOptions,
) -> Result<M, DecodeError> {
    let desc = message_descriptor(full_name).ok_or_else(|| DecodeError {
        source: source.to_string(),
        path: None,
        location: None,
        message: format!("unknown message type {full_name}"),
    })?;
    let dynamic = decode_text(text, desc, source, opts)?;
    dynamic.transcode_to::<M>().map_err(|e| DecodeError {
        source: source.to_string(),
        path: None,
        location: None,
        message: e.to_string(),
    })
}

/// Decodes a binary message into a dynamic message (for walking with reflection).
pub fn decode_dynamic(
    bytes: &[u8],
    desc: MessageDescriptor,
    source: &str,
) -> Result<DynamicMessage, DecodeError> {
    DynamicMessage::decode(desc, bytes).map_err(|e| DecodeError {
        source: source.to_string(),
        path: None,
        location: None,
        message: e.to_string(),
    })
}

/// The full message name named by an `Any` type URL (`type.googleapis.com/x.y.Z` → `x.y.Z`).
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// Decodes an `Any` into the prost type `M`, checking that the type URL names `M`.
pub fn unpack_any<M: Message + Default>(any: &Any, expected: &str) -> Result<M, String> {
    let name = type_name(&any.type_url);
    if name != expected {
        return Err(format!("expected {expected}, got type {}", any.type_url));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("decoding {name}: {e}"))
}

/// Decodes an `Any` into a dynamic message using Envoy's descriptors.
pub fn any_to_dynamic(any: &Any) -> Result<DynamicMessage, String> {
    let name = type_name(&any.type_url);
    let desc = message_descriptor(name).ok_or_else(|| format!("unknown type {}", any.type_url))?;
    DynamicMessage::decode(desc, any.value.as_slice()).map_err(|e| format!("decoding {name}: {e}"))
}

/// Serialises a prost message to proto3 JSON through reflection (for `/config_dump`).
pub fn to_json<M: Message>(msg: &M, full_name: &str) -> serde_json::Value {
    let Some(desc) = message_descriptor(full_name) else {
        return serde_json::Value::Null;
    };
    let Ok(dynamic) = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()) else {
        return serde_json::Value::Null;
    };
    dynamic_to_json(&dynamic)
}

/// Serialises a dynamic message to proto3 JSON with Envoy's conventions (proto field names).
pub fn dynamic_to_json(dynamic: &DynamicMessage) -> serde_json::Value {
    let opts = prost_reflect::SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .unwrap_or(serde_json::Value::Null)
}

/// The full name of a dynamic message's type (re-exported for callers without prost-reflect).
pub fn full_name(msg: &DynamicMessage) -> String {
    msg.descriptor().full_name().to_string()
}
