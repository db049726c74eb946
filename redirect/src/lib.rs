//! Traffic capture for Petrel: the pieces that replace istio-iptables and its init container.
//!
//! Layout:
//! - `cli`: `petrel redirect` flags (istio-iptables compatible, plus VM mode) and [`cli::run`].
//! - `config`: the typed, validated [`CaptureConfig`] the flags compile into.
//! - `rules`: pure generation of one `iptables-restore` script per family, or one `nft -f`
//!   script, with istio's chain names and semantics.
//! - `apply`: atomic, idempotent installation and exact removal, backend detection, and the
//!   state file that lets the next start clean up after a crash.
//! - `orig_dst`: reading the original destination (`SO_ORIGINAL_DST`, v4 and v6) of a
//!   redirected connection.
//! - `error`: [`RedirectError`].
#![forbid(unsafe_code)]

pub mod apply;
pub mod cli;
pub mod config;
pub mod error;
pub mod orig_dst;
pub mod rules;

pub use apply::{ApplyOptions, Backend, CaptureGuard, CaptureState};
pub use cli::{run, HostDefaults, RedirectArgs};
pub use config::CaptureConfig;
pub use error::RedirectError;
pub use orig_dst::{original_dst, OrigDstAddr};
