//! Petrel vs Envoy comparison harness (`cargo run --release -p benches --bin compare`).
//!
//! # Layout
//! - [`upstream`]: the fast upstream: HTTP/1.1 and h2c with fixed responses, gRPC unary echo,
//!   TCP echo, bulk sink and source, on one thread.
//! - [`loadgen`]: the load generators wrk, h2load and oha lack: TCP echo ping-pong, bulk TCP,
//!   connection churn, idle-connection holder.
//! - [`procs`]: children with deadlines, killed by PID when dropped; /proc CPU and RSS readers.
//! - [`tools`]: installing and driving Envoy, wrk, h2load and oha, and parsing their output.
//! - [`scenario`]: scenarios, loads and targets, with their ports and readiness probes.
//! - [`runner`]: interleaved rounds of start, probe, warm-up and measurement, plus the memory and
//!   start-up figures.
//! - [`report`]: medians, ratios, `RESULTS.md` and the summary the plot script reads.
#![forbid(unsafe_code)]

pub mod loadgen;
pub mod procs;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod tools;
pub mod upstream;
