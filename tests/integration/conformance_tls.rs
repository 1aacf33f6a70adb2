//! The OJS conformance suites, levels 0 and 1, over HTTPS: every lane's server serves TLS
//! (with optional client certificates, CRLs and hot reload on) and the runner speaks to it
//! through a rustls client that trusts only the test CA. Same known failures as over plain
//! HTTP.

use crate::common;
use crate::conformance;

use common::pki::Ca;
use common::{tls_options, ServerOptions};
use conformance::KnownFailure;

const KNOWN_FAILURES: &[KnownFailure] = &[(
    "L1-RTR-014",
    "asserts errors[].type values (ConnectionTimeout, RateLimitExceeded, InternalServerError) \
     that the test never sends: each nack carries only code handler_error and a message",
)];

fn options() -> ServerOptions {
    let ca = Ca::new("conformance CA");
    tls_options(&ca, "optional", &[], "", "")
}

#[test]
fn level_0_core_over_tls() {
    conformance::run_and_assert_with("level-0-core", KNOWN_FAILURES, &options());
}

#[test]
fn level_1_reliable_over_tls() {
    conformance::run_and_assert_with("level-1-reliable", KNOWN_FAILURES, &options());
}
