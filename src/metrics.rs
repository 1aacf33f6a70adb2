//! Prometheus metrics: names in one place, the recorder installed once, and the rendering for
//! `GET /metrics` (which needs the inspect permission: an observer or admin credential).
//!
//! Security metrics: authentication attempts by outcome and failure reason, requests by
//! credential kind (API key, JWT, session, certificate), API key verifications (argon2 runs),
//! authorization denials, admin logins and token refreshes by outcome, audit records and audit
//! write failures, credentials throttled before verification, rate-limit refusals by scope,
//! connections over a limit, abuse detections, configuration reloads, TLS handshake failures and
//! rejected client certificates, certificate reloads and expiry, unreadable jobs; plus HTTP
//! responses by status class, handler panics, corrupt records set aside, and jobs by state.

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
/// `bulwark_credential_uses_total{kind}`: authenticated requests by credential kind.
pub const CREDENTIAL_USES: &str = "bulwark_credential_uses_total";
/// `bulwark_logins_total{outcome}`: admin logins (`success`, `failure`, `throttled`).
pub const LOGINS: &str = "bulwark_logins_total";
/// `bulwark_token_refreshes_total{outcome}`: refresh-token use (`success`, `failure`, `reuse`).
pub const TOKEN_REFRESHES: &str = "bulwark_token_refreshes_total";
/// `bulwark_audit_records_total`
pub const AUDIT_RECORDS: &str = "bulwark_audit_records_total";
/// `bulwark_audit_write_failures_total`
pub const AUDIT_WRITE_FAILURES: &str = "bulwark_audit_write_failures_total";
/// `bulwark_audit_failing` (gauge): 1 while the audit log cannot be written (appends fail
/// closed; health answers 503), else 0.
pub const AUDIT_FAILING: &str = "bulwark_audit_failing";
/// `bulwark_http_responses_total{class}`
pub const HTTP_RESPONSES: &str = "bulwark_http_responses_total";
/// `bulwark_http_panics_total`: requests whose handling panicked (answered 500; each is a bug).
pub const HTTP_PANICS: &str = "bulwark_http_panics_total";
/// `bulwark_corrupt_records_total{table}`: records read back from disk that do not decode, set
/// aside (left on disk, out of the indexes) rather than stopping the reader.
pub const CORRUPT_RECORDS: &str = "bulwark_corrupt_records_total";
/// `bulwark_limit_refusals_total{code}`: requests refused by a payload limit, the validation
/// rules, a queue bound or a quota (`payload_too_large`, `request_timeout`, `invalid_payload`,
/// `unsupported_media_type`, `invalid_job_type`, `schema_validation_failed`, `queue_full`,
/// `quota_exceeded`).
pub const LIMIT_REFUSALS: &str = "bulwark_limit_refusals_total";
/// `bulwark_backpressure_dropped_total`: jobs discarded by drop-oldest queues.
pub const BACKPRESSURE_DROPPED: &str = "bulwark_backpressure_dropped_total";
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
/// `bulwark_rate_limited_total{scope}`: requests refused by a rate limit.
pub const RATE_LIMITED: &str = "bulwark_rate_limited_total";
/// `bulwark_connections_rejected_total{limit}`: connections over a connection limit.
pub const CONNECTIONS_REJECTED: &str = "bulwark_connections_rejected_total";
/// `bulwark_edge_refusals_total{reason}`: requests refused at the edge for their form (a
/// request head over its bounds or malformed, a duplicated security header, an unsupported
/// encoding).
pub const EDGE_REFUSALS: &str = "bulwark_edge_refusals_total";
/// `bulwark_http2_goaways_total{reason}`: HTTP/2 connections ended by the guard.
pub const HTTP2_GOAWAYS: &str = "bulwark_http2_goaways_total";
/// `bulwark_connections_open` (gauge, refreshed by the limiter's clean-up)
pub const CONNECTIONS_OPEN: &str = "bulwark_connections_open";
/// `bulwark_rate_limit_keys` (gauge): keys the rate limiters track.
pub const RATE_LIMIT_KEYS: &str = "bulwark_rate_limit_keys";
/// `bulwark_abuse_events_total{pattern}`: abuse detections.
pub const ABUSE_EVENTS: &str = "bulwark_abuse_events_total";
/// `bulwark_abuse_tracked_principals` (gauge)
pub const ABUSE_TRACKED: &str = "bulwark_abuse_tracked_principals";
/// `bulwark_config_reloads_total{outcome}`
pub const CONFIG_RELOADS: &str = "bulwark_config_reloads_total";

/// Installs the process-wide recorder once; returns the handle that renders it (`None` when
/// another recorder was installed first).
pub fn install() -> Option<PrometheusHandle> {
    // The recorder is global: a second server in the same process (the in-process integration
    // tests) shares the first one's.
    static INSTALLED: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
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
    metrics::describe_counter!(EDGE_REFUSALS, "Requests refused at the edge for their form");
    metrics::describe_counter!(HTTP2_GOAWAYS, "HTTP/2 connections ended for abuse");
    metrics::describe_counter!(
        AUTH_THROTTLED,
        "Credentials refused by the per-address verification budget, before argon2"
    );
    metrics::describe_counter!(CREDENTIAL_USES, "Authenticated requests by credential kind");
    metrics::describe_counter!(LOGINS, "Admin logins by outcome");
    metrics::describe_counter!(TOKEN_REFRESHES, "Refresh-token uses by outcome");
    metrics::describe_counter!(AUDIT_RECORDS, "Audit records written durably");
    metrics::describe_counter!(
        AUDIT_WRITE_FAILURES,
        "Audit records that could not be written"
    );
    metrics::describe_gauge!(
        AUDIT_FAILING,
        "1 while the audit log cannot be written (fail-closed operations are refused)"
    );
    metrics::describe_counter!(HTTP_RESPONSES, "HTTP responses by status class");
    metrics::describe_counter!(
        HTTP_PANICS,
        "Requests whose handling panicked (answered 500)"
    );
    metrics::describe_counter!(
        CORRUPT_RECORDS,
        "Records read back from disk that do not decode (set aside)"
    );
    metrics::describe_counter!(
        LIMIT_REFUSALS,
        "Requests refused by a payload limit, validation rule, queue bound or quota, by code"
    );
    metrics::describe_counter!(
        BACKPRESSURE_DROPPED,
        "Jobs discarded to make room in full drop-oldest queues"
    );
    metrics::describe_gauge!(JOBS, "Jobs by state");
    metrics::describe_counter!(RATE_LIMITED, "Requests refused by a rate limit, by scope");
    metrics::describe_counter!(
        CONNECTIONS_REJECTED,
        "Connections refused for being over a connection limit"
    );
    metrics::describe_gauge!(CONNECTIONS_OPEN, "Open client connections");
    metrics::describe_gauge!(RATE_LIMIT_KEYS, "Keys tracked by the rate limiters");
    metrics::describe_counter!(ABUSE_EVENTS, "Abuse patterns detected, by pattern");
    metrics::describe_gauge!(ABUSE_TRACKED, "Principals tracked by abuse detection");
    metrics::describe_counter!(CONFIG_RELOADS, "Configuration reloads by outcome");
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
