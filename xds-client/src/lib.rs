//! Petrel's xDS client: everything that speaks Envoy protos.
//!
//! Layout:
//! - `descriptor`: the embedded envoy-types FileDescriptorSet, for reflection.
//! - `decode`: Envoy YAML/JSON/binary → prost types, with errors that name the line or field.
//! - `support`: the one table of which Envoy fields Petrel implements, ignores or rejects.
//! - `bootstrap`: loading `-c` / `--config-yaml` into a checked `Bootstrap`.
//! - `ads`: the ADS protocol client (state-of-the-world and delta, ACK/NACK).
#![forbid(unsafe_code)]

pub mod ads;
pub mod bootstrap;
pub mod decode;
pub mod descriptor;
pub mod support;

pub use envoy_types::pb;
