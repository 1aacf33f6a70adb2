//! What every layer's errors map into. Each domain error says which OJS error [`Code`] it is and
//! what the client sees of it ([`ErrorCode`]); the one table ([`Code::row`], in `table.rs`)
//! gives each code its wire name, status, `type`, `retryable` and default message, hint and
//! `Retry-After`; one blanket conversion turns any [`ErrorCode`] into an [`ApiError`], which the
//! HTTP layer renders as the OJS envelope (`http::error`). [`ErrorKind`] is the coarse class.

mod table;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use serde_json::{json, Value};

pub use table::{markdown_table, Row};

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
/// [`Code::row`] is the one table from a code to its wire name and HTTP status, so nothing
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

/// An error that knows which OJS error it is, and says everything the client sees of it. Only
/// [`ErrorCode::code`] is required: the rest defaults to the [`Code`]'s row of the table, and
/// [`ApiError`]'s one conversion (`From<E: ErrorCode>`) builds the envelope from the answers.
/// Nothing here may carry an internal cause (a storage error, a path, a key id): those go to
/// the log, in [`ErrorCode::log_cause`].
pub trait ErrorCode {
    /// The code the API answers this error with.
    fn code(&self) -> Code;

    /// What the client is told; by default the table's message for the code.
    fn message(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.code().row().message)
    }

    /// The envelope's `details`; none by default.
    fn details(&self) -> Option<Value> {
        None
    }

    /// The envelope's `hint`; by default the table's hint for the code.
    fn hint(&self) -> Option<&'static str> {
        self.code().row().hint
    }

    /// The `Retry-After` seconds (at least 1); by default the table's for the code.
    fn retry_after_secs(&self) -> Option<u64> {
        self.code().row().retry_after_secs
    }

    /// Response headers beyond the standard ones; none by default. Values are ours: numbers and
    /// validated names.
    fn headers(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Logs what the client is not told (the internal cause), once, as the error is answered.
    /// Nothing by default.
    fn log_cause(&self) {}
}

/// A bare code is the error with every default of its row.
impl ErrorCode for Code {
    fn code(&self) -> Code {
        *self
    }
}

/// The one conversion from a domain error to what the client sees. ([`ApiError`] itself is not
/// an [`ErrorCode`], which keeps this apart from `From<ApiError> for ApiError`.)
impl<E: ErrorCode> From<E> for ApiError {
    fn from(e: E) -> Self {
        e.log_cause();
        let headers = e.headers();
        Self {
            code: e.code(),
            message: e.message().into_owned(),
            details: e.details(),
            hint: e.hint(),
            retry_after_secs: e.retry_after_secs().map(|s| s.max(1)),
            headers: (!headers.is_empty()).then(|| Box::new(ExtraHeaders(headers))),
        }
    }
}

/// `{"field": field}`: the details of an error about one field.
#[must_use]
pub fn field_details(field: &str) -> Value {
    json!({ "field": field })
}

/// `{resource} not found`: the message of a 404 for a resource.
#[must_use]
pub fn not_found_message(resource: &str) -> String {
    format!("{resource} not found")
}

/// `{"resource_type": resource}`: the details of a 404 for a resource.
#[must_use]
pub fn not_found_details(resource: &str) -> Value {
    json!({ "resource_type": resource })
}

/// The message and details of a 403 `permission_denied`, naming the principal, the operation
/// and the queue (OJS security §15.2). Names and queues come from our records or passed
/// validation.
#[must_use]
pub fn permission_denied_parts(
    principal: &str,
    permission: Option<Permission>,
    queue: Option<&str>,
) -> (String, Value) {
    let operation = permission.map_or("this operation", Permission::as_str);
    let message = match queue {
        Some(q) => {
            format!(
                "Principal '{principal}' does not have '{operation}' permission on queue '{q}'."
            )
        }
        None => format!("Principal '{principal}' may not perform '{operation}' here."),
    };
    let details = json!({
        "principal": principal,
        "operation": operation,
        "queue": queue,
    });
    (message, details)
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
        Self::new(Code::InvalidRequest, message).with_details(field_details(field))
    }

    /// 400 `invalid_payload`: the body is not what a JSON request needs.
    #[must_use]
    pub fn invalid_payload(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidPayload, message)
    }

    /// 401, the same whatever went wrong.
    #[must_use]
    pub fn unauthenticated() -> Self {
        Self::from(Code::Unauthenticated)
    }

    /// 403 `permission_denied`, naming the principal, the operation and the queue (OJS
    /// security §15.2). Names and queues come from our records or passed validation.
    #[must_use]
    pub fn permission_denied(
        principal: &str,
        permission: Option<Permission>,
        queue: Option<&str>,
    ) -> Self {
        let (message, details) = permission_denied_parts(principal, permission, queue);
        Self::new(Code::PermissionDenied, message).with_details(details)
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
        let mut e = Self::new(Code::NotFound, not_found_message(resource))
            .with_details(not_found_details(resource));
        e.hint = Code::NotFound.row().hint;
        e
    }

    /// 503: try again shortly.
    #[must_use]
    pub fn unavailable() -> Self {
        Self::from(Code::BackendUnavailable)
    }
}
