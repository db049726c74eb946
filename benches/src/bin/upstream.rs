//! The benchmark upstream on its own, for poking at by hand:
//! HTTP/1.1 + h2c + gRPC echo on 31080, TCP echo on 31090, bulk sink on 31091, bulk source on
//! 31092 (all on 127.0.0.1). `compare` runs the same code as `compare upstream`.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    benches::upstream::run(benches::scenario::upstream_addrs(), false)
}
