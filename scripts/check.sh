#!/usr/bin/env bash
# The full check: formatting, clippy with warnings as errors, and the test suite (unit tests,
# integration tests against the real server, SIGKILL durability, OJS conformance levels 0-1).
set -euo pipefail
cd "$(dirname "$0")/.."

suites="${OJS_CONFORMANCE_SUITES:-../shared/ojs-conformance/suites}"
if [ ! -d "$suites" ]; then
  echo "warning: conformance suites not found at $suites (set OJS_CONFORMANCE_SUITES); the conformance tests will fail" >&2
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The README's test command:
cargo test --locked
