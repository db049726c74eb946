//! Test support for Petrel's end-to-end and differential tests.
//!
//! # Layout
//!
//! - [`bins`]: finds the `petrel` and reference `envoy` binaries (`PETREL_BIN`, `ENVOY_BIN`).
//! - [`netns`]: network namespaces + veth for privileged iptables/`SO_ORIGINAL_DST` tests.
//! - [`ports`]: hands out free loopback ports and "closed" ports that refuse connections.
//! - [`proxy`]: [`Proxy`] runs Envoy or Petrel on a templated bootstrap, waits for `/ready`,
//!   captures its output and kills it on drop.
//! - [`admin`]: admin-endpoint client and the `/stats` text parser.
//! - [`upstream`]: an HTTP/1.1 + h2c echo server whose behaviour is steered by request headers.
//! - [`grpc`]: a unary gRPC server and client over h2c with real trailers.
//! - [`tcp`]: a TCP echo server.
//! - [`client`]: HTTP/1.1 and h2c clients that keep one connection, plus raw-bytes exchanges.
//! - [`diff`]: runs one scenario once per proxy kind and compares what each observed.
//! - [`wait`]: polling helpers and [`assert_eventually!`].
//! - [`tls`]: hand-built TLS ClientHello records for `tls_inspector` matching.
//! - [`trace`]: tracing initialisation for tests.
//! - [`vm`]: multi-namespace capture scenarios: a service namespace joined to the proxy's, Python
//!   servers and a fake resolver inside it, `curl` as another UID, firewall rule snapshots.
//! - [`yaml`]: bootstrap building blocks (clusters, a one-listener HTTP bootstrap).
#![forbid(unsafe_code)]

pub mod admin;
pub mod bins;
pub mod client;
pub mod diff;
pub mod grpc;
pub mod netns;
pub mod ports;
pub mod proxy;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod vm;
pub mod wait;
pub mod xds;
pub mod yaml;

pub use admin::{Admin, Stats};
pub use bins::ProxyKind;
pub use client::{HttpClient, Proto, Reply};
pub use diff::{differential, Observations};
pub use proxy::{render, Proxy};
pub use trace::init as trace_init;
pub use upstream::{Echo, Upstream};
