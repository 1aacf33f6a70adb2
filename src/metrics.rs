//! Prometheus metrics: names in one place, the recorder installed once, and the rendering for
//! `GET /metrics` (which needs the inspect permission: an observer or admin credential).
//!
//! Security metrics recorded today: authentication attempts by outcome and failure reason, API
//! key verifications (argon2 runs), authorization denials, audit records and audit write
//! failures, credentials throttled before verification, TLS handshake failures and rejected
//! client certificates, certificate reloads and expiry; plus HTTP responses by status class and
//! jobs by state. Rate-limit hits, token refreshes and unreadable jobs come with the features
//! that produce them.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// `bulwark_auth_attempts_total{outcome, reason}`
pub const AUTH_ATTEMPTS: &str = "bulwark_auth_attempts_total";
/// `bulwark_api_key_verifications_total{result}`: argon2 verifications (cache misses).
pub const KEY_VERIFICATIONS: &str = "bulwark_api_key_verifications_total";
/// `bulwark_authorization_denials_total{permission}`
pub const AUTHZ_DENIALS: &str = "bulwark_authorization_denials_total";
/// `bulwark_auth_throttled_total`: credentials refused by the per-address verification budget
/// before any argon2 work.
pub const AUTH_THROTTLED: &str = "bulwark_auth_throttled_total";
/// `bulwark_audit_records_total`
pub const AUDIT_RECORDS: &str = "bulwark_audit_records_total";
/// `bulwark_audit_write_failures_total`
pub const AUDIT_WRITE_FAILURES: &str = "bulwark_audit_write_failures_total";
/// `bulwark_http_responses_total{class}`
pub const HTTP_RESPONSES: &str = "bulwark_http_responses_total";
/// `bulwark_tls_handshake_failures_total{reason}`
pub const TLS_HANDSHAKE_FAILURES: &str = "bulwark_tls_handshake_failures_total";
/// `bulwark_tls_certificate_rejections_total{reason}`: client certificates refused at the
/// handshake (expired, revoked, unknown issuer, missing when required, ...).
pub const TLS_CERT_REJECTIONS: &str = "bulwark_tls_certificate_rejections_total";
/// `bulwark_tls_reloads_total{result}`: certificate reloads that went live or were refused.
pub const TLS_RELOADS: &str = "bulwark_tls_reloads_total";
/// `bulwark_tls_certificate_expiry_seconds`: seconds until the server certificate expires.
pub const TLS_CERT_EXPIRY: &str = "bulwark_tls_certificate_expiry_seconds";
/// `bulwark_tls_certificate_expiring`: 1 when the server certificate expires within
/// `[tls] expiry_warning_days` (or has expired), else 0.
pub const TLS_CERT_EXPIRING: &str = "bulwark_tls_certificate_expiring";
/// `bulwark_jobs{state}` (gauge, refreshed at each scrape)
pub const JOBS: &str = "bulwark_jobs";

/// Installs the process-wide recorder; returns the handle that renders it. Idempotent enough
/// for one server per process: a second install fails and yields `None`.
pub fn install() -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    describe();
    Some(handle)
}

fn describe() {
    metrics::describe_counter!(
        AUTH_ATTEMPTS,
        "Authentication attempts by outcome and failure reason"
    );
    metrics::describe_counter!(
        KEY_VERIFICATIONS,
        "API key argon2 verifications (credential cache misses) by result"
    );
    metrics::describe_counter!(AUTHZ_DENIALS, "Requests refused for lack of a permission");
    metrics::describe_counter!(
        AUTH_THROTTLED,
        "Credentials refused by the per-address verification budget, before argon2"
    );
    metrics::describe_counter!(AUDIT_RECORDS, "Audit records written durably");
    metrics::describe_counter!(
        AUDIT_WRITE_FAILURES,
        "Audit records that could not be written"
    );
    metrics::describe_counter!(HTTP_RESPONSES, "HTTP responses by status class");
    metrics::describe_gauge!(JOBS, "Jobs by state");
    metrics::describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed, by reason"
    );
    metrics::describe_counter!(
        TLS_CERT_REJECTIONS,
        "Client certificates refused at the handshake, by reason"
    );
    metrics::describe_counter!(TLS_RELOADS, "TLS certificate reloads by result");
    metrics::describe_gauge!(
        TLS_CERT_EXPIRY,
        "Seconds until the server certificate expires"
    );
    metrics::describe_gauge!(
        TLS_CERT_EXPIRING,
        "1 when the server certificate expires within the warning window"
    );
}
