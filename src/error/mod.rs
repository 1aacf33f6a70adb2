//! What every layer's errors map into: the OJS error [`Code`] each one says it is
//! ([`ErrorCode`]), and the coarse class ([`ErrorKind`]). The HTTP layer turns a code into a
//! status once, in `http::error`. [`ApiError`] is what a service answers when it refuses: the
//! OJS error (code, message, details, hint), which the edge renders.

mod domains;

use serde_json::{json, Value};

use crate::auth::Permission;

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

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    code: Code,
    message: String,
    details: Option<Value>,
    hint: Option<&'static str>,
    retry_after_secs: Option<u64>,
    /// Extra headers (boxed: errors travel in `Result`s and must stay small).
    headers: Option<Box<ExtraHeaders>>,
}

/// Response headers beyond the standard ones.
#[derive(Debug, Default)]
struct ExtraHeaders(Vec<(&'static str, String)>);

impl ApiError {
    /// The OJS error code (`invalid_payload`, `quota_exceeded`, ...).
    #[must_use]
    pub fn code(&self) -> &'static str {
        self.code.as_str()
    }

    /// Which error of the table it is.
    #[must_use]
    pub fn error_code(&self) -> Code {
        self.code
    }

    /// What the client is told.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The envelope's `details`.
    #[must_use]
    pub fn details(&self) -> Option<&Value> {
        self.details.as_ref()
    }

    /// The envelope's `hint`.
    #[must_use]
    pub fn hint(&self) -> Option<&'static str> {
        self.hint
    }

    /// The `Retry-After` seconds, for a 429 or 503.
    #[must_use]
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after_secs
    }

    /// Headers beyond the standard ones (queue depth and bound).
    pub fn extra_headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.headers
            .iter()
            .flat_map(|h| h.0.iter())
            .map(|(n, v)| (*n, v.as_str()))
    }

    /// A new error of `code` (its status comes from the [`Code`] table).
    #[must_use]
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
            hint: None,
            retry_after_secs: None,
            headers: None,
        }
    }

    /// Adds a response header (values are ours: numbers and validated names).
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.get_or_insert_default().0.push((name, value));
        self
    }

    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    #[must_use]
    pub fn with_hint(mut self, hint: &'static str) -> Self {
        self.hint = Some(hint);
        self
    }

    /// 400 `invalid_request` about one field.
    #[must_use]
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(Code::InvalidRequest, message).with_details(json!({ "field": field }))
    }

    /// 400 `invalid_payload`: the body is not what a JSON request needs.
    #[must_use]
    pub fn invalid_payload(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidPayload, message)
    }

    /// 401, the same whatever went wrong.
    #[must_use]
    pub fn unauthenticated() -> Self {
        Self::new(Code::Unauthenticated, "missing or invalid credentials")
            .with_hint("send Authorization: Bearer <api key>")
    }

    /// 403 `permission_denied`, naming the principal, the operation and the queue (OJS
    /// security §15.2). Names and queues come from our records or passed validation.
    #[must_use]
    pub fn permission_denied(
        principal: &str,
        permission: Option<Permission>,
        queue: Option<&str>,
    ) -> Self {
        let operation = permission.map_or("this operation", Permission::as_str);
        let message = match queue {
            Some(q) => format!(
                "Principal '{principal}' does not have '{operation}' permission on queue '{q}'."
            ),
            None => format!("Principal '{principal}' may not perform '{operation}' here."),
        };
        Self::new(Code::PermissionDenied, message).with_details(json!({
            "principal": principal,
            "operation": operation,
            "queue": queue,
        }))
    }

    /// 429 `rate_limited` with `Retry-After`.
    #[must_use]
    pub fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(Code::RateLimited, message);
        e.retry_after_secs = Some(retry_after_secs.max(1));
        e
    }

    /// 429 with `Retry-After` and a code of its own (`queue_full`, `quota_exceeded`).
    #[must_use]
    pub fn too_many(code: Code, message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(code, message);
        e.retry_after_secs = Some(retry_after_secs.max(1));
        e
    }

    /// Adds `details.index`: which job of a batch was refused.
    #[must_use]
    pub fn with_index(mut self, index: usize) -> Self {
        match &mut self.details {
            Some(Value::Object(map)) => {
                map.insert("index".into(), index.into());
            }
            _ => self.details = Some(json!({ "index": index })),
        }
        self
    }

    /// Replaces the `Retry-After` of a 429 or 503.
    #[must_use]
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        if self.retry_after_secs.is_some() {
            self.retry_after_secs = Some(secs.max(1));
        }
        self
    }

    /// 404 for a job (or any resource) the caller cannot see.
    #[must_use]
    pub fn not_found(resource: &'static str) -> Self {
        Self::new(Code::NotFound, format!("{resource} not found"))
            .with_details(json!({ "resource_type": resource }))
            .with_hint("check the identifier; it may have been deleted or never existed")
    }

    /// 503: try again shortly.
    #[must_use]
    pub fn unavailable() -> Self {
        let mut e = Self::new(
            Code::BackendUnavailable,
            "the server cannot complete this request right now",
        );
        e.retry_after_secs = Some(1);
        e
    }
}
