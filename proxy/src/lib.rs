//! Petrel data plane.
