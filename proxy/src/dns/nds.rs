//! Istio's NDS (name discovery service) table, which istiod sends on the ADS stream as type
//! `type.googleapis.com/istio.networking.nds.v1.NameTable` when DNS capture is on.
//!
//! envoy-types does not carry Istio's protos; this is `pkg/dns/proto/nds.proto` by hand
//! (same field numbers, so it decodes what istiod sends).
use std::collections::HashMap;

/// The ADS type URL of [`NameTable`].
pub const NAME_TABLE_TYPE_URL: &str = "type.googleapis.com/istio.networking.nds.v1.NameTable";

/// Hostnames and the addresses they resolve to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NameTable {
    /// Hostname → resolution attributes.
    #[prost(map = "string, message", tag = "1")]
    pub table: HashMap<String, NameInfo>,
    /// Attributes for the hostname in `Resource.name` (unused by istiod's SotW table).
    #[prost(message, optional, tag = "2")]
    pub name_info: Option<NameInfo>,
}

/// Resolution attributes of one hostname.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NameInfo {
    /// Addresses of the host.
    #[prost(string, repeated, tag = "1")]
    pub ips: Vec<String>,
    /// The service registry (`Kubernetes` enables the short forms).
    #[prost(string, tag = "2")]
    pub registry: String,
    /// The Kubernetes service name (registry `Kubernetes` only).
    #[prost(string, tag = "3")]
    pub shortname: String,
    /// The Kubernetes namespace (registry `Kubernetes` only).
    #[prost(string, tag = "4")]
    pub namespace: String,
    /// Deprecated in Istio; decoded and ignored.
    #[prost(string, repeated, tag = "5")]
    pub alt_hosts: Vec<String>,
}

impl NameTable {
    /// Decodes the table from the bytes of an `Any` of type [`NAME_TABLE_TYPE_URL`].
    pub fn decode_bytes(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        <Self as prost::Message>::decode(bytes)
    }
}
