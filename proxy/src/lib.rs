//! Petrel's data plane.
//!
//! Layout (lower layers never import higher ones):
//! - `stats`: Envoy-named counters and gauges with lock-free handles.
//! - `cli`: Envoy's command-line flags.
//! - `config`: Envoy protos → runtime objects, validated once, errors naming field paths.
//! - `route`: compiled route tables and matching.
//! - `upstream`: clusters, load balancing, connection pools, DNS.
//! - `listener`: accept, original-destination handoff, listener filters, chain selection.
//! - `tcp_proxy` / `http`: the network filters (the HTTP router lives in `http`).
//! - `server`: state shared by listeners and admin.
//! - `runtime`: the listener manager (bind, hitless replace, drain).
//! - `xds`: the ADS resource sink: CDS/EDS/LDS/RDS → runtime objects, warming, NACKs.
//! - `dns` / `mesh` / `spec`: VM mode: the mesh DNS, its name table, the app's spec.yaml.
//! - `admin`: Envoy-compatible admin endpoints.
//! - `app`: process lifecycle: load, validate, serve, drain.
//! - `run_capture`: `petrel run --capture`: capture rules around the proxy's lifetime.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod dns;
pub mod http;
pub mod listener;
pub mod mesh;
pub mod policy;
pub mod route;
pub mod run_capture;
pub mod runtime;
pub mod server;
pub mod spec;
pub mod stats;
pub mod tcp_proxy;
pub mod upstream;
pub mod xds;
