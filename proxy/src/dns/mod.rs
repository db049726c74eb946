#![doc = include_str!("README.md")]
mod names;
mod nds;
mod resolv;
mod server;
mod wire;

pub use names::{
    CaptureCidr, InvalidCidr, MeshName, MeshNames, NameContext, NameDump, NameSource,
    DEFAULT_CAPTURE_CIDR,
};
pub use nds::{NameInfo, NameTable, NAME_TABLE_TYPE_URL};
pub use resolv::{ResolvConf, RESOLV_CONF};
pub use server::{
    DnsConfig, DnsServer, DEFAULT_DNS_ADDR, DEFAULT_LOCAL_TTL, DEFAULT_UPSTREAM_TIMEOUT,
};

#[cfg(test)]
mod tests;
