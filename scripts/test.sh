#!/usr/bin/env bash
# The one command that runs every test: installs test dependencies, builds the petrel binary the
# end-to-end tests drive, and runs every crate's tests (including tests/, crate petrel-e2e).
#
# Sized for a 2-core machine: each end-to-end test starts real proxy processes, so at most
# RUST_TEST_THREADS (default 2) tests run at once within a test binary; cargo runs test binaries
# one after another.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

if [ -z "${ENVOY_BIN:-}" ]; then
    ENVOY_BIN="$(python3 -c 'import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),"_bin","envoy"))')"
    export ENVOY_BIN
fi
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"

cargo build -p petrel
cargo test --workspace "$@"
