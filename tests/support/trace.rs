//! Tracing for tests: one subscriber per test binary, writing through the test harness so output
//! is shown only for failing tests. `RUST_LOG` overrides the default filter.

use std::sync::Once;

use tracing_subscriber::EnvFilter;

/// Installs the test subscriber (idempotent). Call first in every test.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,hyper=warn,h2=warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    });
}
