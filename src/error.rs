//! What every layer's errors map into: the OJS error [`Code`] each one says it is
//! ([`ErrorCode`]), and the coarse class ([`ErrorKind`]). The HTTP layer turns a code into a
//! status once, in `http::error`.

/// A coarse error class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    TooManyRequests,
    Unavailable,
    Internal,
}

/// Every error the API answers with. Each layer's error says which one it is ([`ErrorCode`]);
/// `http::error` holds the one table from a code to its wire name and HTTP status, so nothing
/// else writes an error status. Two rows may share a wire code when the spec's
/// code covers two statuses (`invalid_request` for a malformed request, 400, and for one the
/// server understood but refuses, 422).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// 400: the request is malformed.
    InvalidRequest,
    /// 422: the request is well formed but refused (unknown attributes, impossible settings).
    Unprocessable,
    /// 422: the retry policy is invalid.
    InvalidRetryPolicy,
    /// 422: the job type is not allowed.
    InvalidJobType,
    /// 422: the args do not match the job type's schema.
    SchemaValidationFailed,
    /// 422: a per-job limit (priority, timeout) is exceeded.
    JobLimitExceeded,
    /// 400: the body is not what a JSON request needs.
    InvalidPayload,
    /// 413
    PayloadTooLarge,
    /// 415
    UnsupportedMediaType,
    /// 408
    RequestTimeout,
    /// 414: the request target is longer than `[server] max_uri_bytes`.
    UriTooLong,
    /// 431: a header field, or the whole head, is over its `[server]` bound.
    HeadersTooLarge,
    /// 401
    Unauthenticated,
    /// 403
    PermissionDenied,
    /// 404
    NotFound,
    /// 405
    MethodNotAllowed,
    /// 409: the resource's state does not allow the operation.
    Conflict,
    /// 409: a job with this id exists.
    Duplicate,
    /// 429: the queue is at its depth bound.
    QueueFull,
    /// 429: a per-principal quota is used up.
    QuotaExceeded,
    /// 429: a per-tenant limit is used up.
    TenantLimitExceeded,
    /// 429: a rate budget is spent.
    RateLimited,
    /// 429: too many long-polls wait at once.
    TooManyLongPolls,
    /// 500: a job record cannot be decrypted with the loaded keys.
    JobUnreadable,
    /// 500
    InternalError,
    /// 503
    BackendUnavailable,
}

impl Code {
    /// The OJS error code on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unprocessable => "invalid_request",
            Self::InvalidRetryPolicy => "invalid_retry_policy",
            Self::InvalidJobType => "invalid_job_type",
            Self::SchemaValidationFailed => "schema_validation_failed",
            Self::JobLimitExceeded => "quota_exceeded",
            Self::InvalidPayload => "invalid_payload",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RequestTimeout => "request_timeout",
            Self::UriTooLong => "invalid_request",
            Self::HeadersTooLarge => "invalid_request",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::Duplicate => "duplicate",
            Self::QueueFull => "queue_full",
            Self::QuotaExceeded => "quota_exceeded",
            Self::TenantLimitExceeded => "tenant_limit_exceeded",
            Self::RateLimited => "rate_limited",
            Self::TooManyLongPolls => "too_many_long_polls",
            Self::JobUnreadable => "job_unreadable",
            Self::InternalError => "internal_error",
            Self::BackendUnavailable => "backend_unavailable",
        }
    }

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
}

/// An error that knows which OJS error it is.
pub trait ErrorCode {
    /// The code the API answers this error with.
    fn code(&self) -> Code;
}
