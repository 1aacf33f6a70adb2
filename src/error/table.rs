//! The one error table: for each [`Code`], what the client sees of it that does not depend on
//! the error at hand (wire code, HTTP status, `type`, `retryable`), and the defaults a domain
//! error answers with unless it says otherwise (message, hint, `Retry-After`).
//! `docs/errors.md` publishes it ([`markdown_table`]).

use super::Code;

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// The OJS error code on the wire.
    pub wire: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// The envelope's `type`.
    pub kind: &'static str,
    /// The envelope's `retryable`: whether the same request may succeed later unchanged.
    pub retryable: bool,
    /// The message of an error that says no message of its own. Never an internal cause.
    pub message: &'static str,
    /// The hint of an error that says no hint of its own.
    pub hint: Option<&'static str>,
    /// The `Retry-After` seconds of an error that says none of its own.
    pub retry_after_secs: Option<u64>,
    /// Whether the refusal is counted as a limit refusal (`bulwark_limit_refusals_total`).
    pub limit_refusal: bool,
}

const VALIDATION: &str = "validation_error";
const RATE_LIMIT: &str = "rate_limit_error";
const SERVER: &str = "server_error";

/// A row with the usual defaults: not retryable, no hint, no `Retry-After`, not a limit.
const fn row(wire: &'static str, status: u16, kind: &'static str, message: &'static str) -> Row {
    Row {
        wire,
        status,
        kind,
        retryable: false,
        message,
        hint: None,
        retry_after_secs: None,
        limit_refusal: false,
    }
}

/// A 429 row: retryable after `secs`, and a limit refusal unless it is a rate limit.
const fn too_many(wire: &'static str, message: &'static str, secs: u64, limit: bool) -> Row {
    Row {
        retryable: true,
        retry_after_secs: Some(secs),
        limit_refusal: limit,
        ..row(wire, 429, RATE_LIMIT, message)
    }
}

/// A validation row that counts as a limit refusal.
const fn limit(wire: &'static str, status: u16, message: &'static str) -> Row {
    Row {
        limit_refusal: true,
        ..row(wire, status, VALIDATION, message)
    }
}

impl Code {
    /// Every code, in table order.
    pub const ALL: [Code; 26] = [
        Self::InvalidRequest,
        Self::Unprocessable,
        Self::InvalidRetryPolicy,
        Self::InvalidJobType,
        Self::SchemaValidationFailed,
        Self::JobLimitExceeded,
        Self::InvalidPayload,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::RequestTimeout,
        Self::UriTooLong,
        Self::HeadersTooLarge,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::Duplicate,
        Self::QueueFull,
        Self::QuotaExceeded,
        Self::TenantLimitExceeded,
        Self::RateLimited,
        Self::TooManyLongPolls,
        Self::JobUnreadable,
        Self::InternalError,
        Self::BackendUnavailable,
    ];

    /// The code's row of the table.
    #[must_use]
    pub const fn row(self) -> Row {
        match self {
            Self::InvalidRequest => {
                row("invalid_request", 400, VALIDATION, "the request is invalid")
            }
            Self::Unprocessable => row(
                "invalid_request",
                422,
                VALIDATION,
                "the request cannot be carried out as it stands",
            ),
            Self::InvalidRetryPolicy => row(
                "invalid_retry_policy",
                422,
                VALIDATION,
                "the retry policy is invalid",
            ),
            Self::InvalidJobType => limit(
                "invalid_job_type",
                422,
                "the job type is not registered on this server",
            ),
            Self::SchemaValidationFailed => limit(
                "schema_validation_failed",
                422,
                "args do not match the schema of this job type",
            ),
            Self::JobLimitExceeded => limit("quota_exceeded", 422, "a per-job limit is exceeded"),
            Self::InvalidPayload => limit(
                "invalid_payload",
                400,
                "the request body is not a valid JSON request",
            ),
            Self::PayloadTooLarge => limit("payload_too_large", 413, "the request is too large"),
            Self::UnsupportedMediaType => limit(
                "unsupported_media_type",
                415,
                "send application/openjobspec+json or application/json",
            ),
            Self::RequestTimeout => Row {
                limit_refusal: true,
                ..row(
                    "request_timeout",
                    408,
                    "timeout_error",
                    "the request did not arrive in time",
                )
            },
            Self::UriTooLong => row(
                "invalid_request",
                414,
                VALIDATION,
                "the request target is too long",
            ),
            Self::HeadersTooLarge => row(
                "invalid_request",
                431,
                VALIDATION,
                "the request head is too large",
            ),
            Self::Unauthenticated => Row {
                hint: Some("send Authorization: Bearer <api key>"),
                ..row(
                    "unauthenticated",
                    401,
                    "authentication_error",
                    "missing or invalid credentials",
                )
            },
            Self::PermissionDenied => row(
                "permission_denied",
                403,
                "permission_error",
                "permission denied",
            ),
            Self::NotFound => Row {
                hint: Some("check the identifier; it may have been deleted or never existed"),
                ..row("not_found", 404, "not_found_error", "not found")
            },
            Self::MethodNotAllowed => row(
                "method_not_allowed",
                405,
                "invalid_request_error",
                "the method is not allowed here",
            ),
            Self::Conflict => row(
                "conflict",
                409,
                "conflict_error",
                "the resource's state does not allow the operation",
            ),
            Self::Duplicate => row(
                "duplicate",
                409,
                "conflict_error",
                "a job with this id already exists",
            ),
            Self::QueueFull => too_many(
                "queue_full",
                "the queue has reached its depth bound",
                5,
                true,
            ),
            Self::QuotaExceeded => too_many("quota_exceeded", "a quota is used up", 5, true),
            Self::TenantLimitExceeded => too_many(
                "tenant_limit_exceeded",
                "a tenant limit is used up",
                5,
                true,
            ),
            Self::RateLimited => too_many(
                "rate_limited",
                "too many requests; try again later",
                1,
                false,
            ),
            Self::TooManyLongPolls => Row {
                hint: Some("fetch without wait_ms, or with fewer concurrent long-polls"),
                ..too_many(
                    "too_many_long_polls",
                    "too many long-poll fetches wait at once",
                    1,
                    true,
                )
            },
            Self::JobUnreadable => Row {
                hint: Some("restore the job's key-encryption key (see GET /ojs/v1/admin/vault)"),
                ..row(
                    "job_unreadable",
                    500,
                    SERVER,
                    "the job's data cannot be decrypted with the keys this server holds",
                )
            },
            Self::InternalError => row(
                "internal_error",
                500,
                SERVER,
                "the server could not complete the operation",
            ),
            Self::BackendUnavailable => Row {
                retryable: true,
                retry_after_secs: Some(1),
                ..row(
                    "backend_unavailable",
                    503,
                    SERVER,
                    "the server cannot complete this request right now",
                )
            },
        }
    }

    /// The OJS error code on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        self.row().wire
    }

    /// The HTTP status, as a number.
    #[must_use]
    pub const fn status_u16(self) -> u16 {
        self.row().status
    }
}

/// The error table as Markdown, as `docs/errors.md` publishes it.
#[must_use]
pub fn markdown_table() -> String {
    let mut out = String::from("| code | status | type | retryable |\n|---|---|---|---|\n");
    for code in Code::ALL {
        let row = code.row();
        out.push_str(&format!(
            "| `{}` | {} | `{}` | {} |\n",
            row.wire,
            row.status,
            row.kind,
            if row.retryable { "yes" } else { "no" }
        ));
    }
    out
}
