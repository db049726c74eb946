//! Benchmark harness support.
