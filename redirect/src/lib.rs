//! Traffic capture for Petrel.
//!
//! Layout:
//! - `orig_dst`: reading the original destination (`SO_ORIGINAL_DST`, v4 and v6) of a
//!   redirected connection.
#![forbid(unsafe_code)]

pub mod orig_dst;

pub use orig_dst::{original_dst, OrigDstAddr};
