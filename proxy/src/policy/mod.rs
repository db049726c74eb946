//! Traffic policy as Envoy enforces it (issue 4): circuit breakers, outlier detection,
//! retries, local rate limits and fault injection.
//!
//! Each module holds a typed config compiled from the Envoy proto (`from_proto`, errors
//! naming the field path) and a runtime object whose hot path is atomics only. Time is
//! passed in explicitly (`Instant`) so every algorithm is a deterministic, testable function.
