//! The OJS ext-backpressure conformance suite against the real server, each test on a fresh
//! server in the documented conformance configuration.
//!
//! `cargo test --test integration conformance_backpressure:: -- --nocapture` prints the summary.

use crate::conformance;

use conformance::KnownFailure;

/// Tests that no server answering with the lower_snake error codes of the HTTP binding can
/// pass (see CONFORMANCE-NOTES.md).
const KNOWN_FAILURES: &[KnownFailure] = &[(
    "EXT-BP-001",
    "asserts error.code \"QUEUE_FULL\"; Bulwark answers 429 with Retry-After and the \
         lower_snake code queue_full, as for every other error code (CONFORMANCE-NOTES.md)",
)];

#[test]
fn ext_backpressure() {
    conformance::run_and_assert("ext-backpressure", KNOWN_FAILURES);
}
