//! The Envoy descriptor pool: every proto envoy-types compiles, for reflection.
use std::sync::OnceLock;

use prost_reflect::DescriptorPool;

/// envoy-types' FileDescriptorSet, copied into OUT_DIR by build.rs.
static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_types.bin"));

/// Returns the pool of Envoy's descriptors (decoded once, on first use).
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The descriptor set is produced by envoy-types' own build from protoc output and is
        // embedded at compile time; failing to decode it is a build defect, not bad input.
        DescriptorPool::decode(DESCRIPTOR_SET).expect("envoy-types descriptor set decodes")
    })
}
