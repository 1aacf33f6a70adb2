//! The one place where errors become HTTP responses: the OJS error envelope
//! `{"error": {"code", "message", "type", "retryable", "details", "hint", "docs_url"}}` with the
//! right status. Internal causes go to the log, never to the client.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Map, Value};
use tracing::{error, warn};

use crate::auth::accounts::AccountError;
use crate::auth::users::UserError;
use crate::auth::{AuthError, Permission};
pub use crate::error::Code;
use crate::error::{ErrorCode, ErrorKind};
use crate::job::envelope::{Invalid, InvalidKind};
use crate::queue::QueueError;

/// The OJS media type every response carries.
pub const OJS_JSON: &str = "application/openjobspec+json";

/// Where error codes are documented.
const DOCS_BASE: &str = "https://openjobspec.org/spec/errors#";

/// The table: each [`Code`] with its wire code and HTTP status.
impl Code {
    /// The wire code and the HTTP status.
    #[must_use]
    pub const fn row(self) -> (&'static str, StatusCode) {
        (self.as_str(), self.status())
    }

    /// The HTTP status.
    #[must_use]
    pub const fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InvalidRetryPolicy => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InvalidJobType => StatusCode::UNPROCESSABLE_ENTITY,
            Self::SchemaValidationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            Self::JobLimitExceeded => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InvalidPayload => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::Duplicate => StatusCode::CONFLICT,
            Self::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            Self::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            Self::TenantLimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::TooManyLongPolls => StatusCode::TOO_MANY_REQUESTS,
            Self::JobUnreadable => StatusCode::INTERNAL_SERVER_ERROR,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The error table as Markdown, as `docs/errors.md` publishes it.
#[must_use]
pub fn markdown_table() -> String {
    let mut out = String::from("| code | status | type | retryable |\n|---|---|---|---|\n");
    for code in Code::ALL {
        let e = ApiError::new(code, "");
        out.push_str(&format!(
            "| `{}` | {} | `{}` | {} |\n",
            code.as_str(),
            code.status().as_u16(),
            e.error_type(),
            if e.retryable() { "yes" } else { "no" }
        ));
    }
    out
}

/// Whether a response of `status` ends its connection: the refusals after which the rest of
/// the client's byte stream is not trusted (a body cut off at the limit or timed out, a head
/// over its bounds).
#[must_use]
pub fn closes_connection(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 413 | 414 | 431)
}

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
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
        self.code
    }

    /// A new error of `code` (its status comes from the [`Code`] table).
    #[must_use]
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let (code, status) = code.row();
        Self {
            status,
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

    fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 413 | 414 | 415 | 422 | 431 => "validation_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            405 => "invalid_request_error",
            408 => "timeout_error",
            409 => "conflict_error",
            429 => "rate_limit_error",
            _ => "server_error",
        }
    }

    fn retryable(&self) -> bool {
        matches!(self.status.as_u16(), 429 | 503 | 504)
    }

    /// Whether the refusal leaves the connection's byte stream in a state the server no longer
    /// trusts (a body cut off at the limit or timed out, a head over its bounds): the response
    /// closes the connection, so nothing more of that stream is read.
    #[must_use]
    pub fn closes_connection(&self) -> bool {
        closes_connection(self.status)
    }

    /// The envelope body.
    #[must_use]
    pub fn body(&self) -> Value {
        let mut e = Map::new();
        e.insert("code".into(), self.code.into());
        e.insert("type".into(), self.error_type().into());
        e.insert("message".into(), self.message.clone().into());
        e.insert("retryable".into(), self.retryable().into());
        if let Some(d) = &self.details {
            e.insert("details".into(), d.clone());
        }
        if let Some(h) = self.hint {
            e.insert("hint".into(), h.into());
        }
        e.insert(
            "docs_url".into(),
            format!("{DOCS_BASE}{}", self.code).into(),
        );
        json!({ "error": e })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.code)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(
            self.code,
            "payload_too_large"
                | "request_timeout"
                | "invalid_payload"
                | "unsupported_media_type"
                | "invalid_job_type"
                | "schema_validation_failed"
                | "queue_full"
                | "quota_exceeded"
                | "tenant_limit_exceeded"
                | "too_many_long_polls"
        ) {
            metrics::counter!(crate::metrics::LIMIT_REFUSALS, "code" => self.code).increment(1);
        }
        let mut res = HttpResponse::build(self.status);
        res.content_type(OJS_JSON);
        if self.closes_connection() {
            res.force_close();
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"bulwark\""),
            ));
        }
        if let Some(secs) = self.retry_after_secs {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        for (name, value) in self.headers.iter().flat_map(|h| h.0.iter()) {
            res.insert_header((*name, value.as_str()));
        }
        res.body(self.body().to_string())
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        let field = e.field.clone();
        match e.kind {
            InvalidKind::Request => {
                let mut err = Self::new(Code::InvalidRequest, e.message);
                if let Some(f) = field {
                    err = err.with_details(json!({ "field": f }));
                }
                err
            }
            InvalidKind::Policy => Self::new(Code::InvalidRetryPolicy,
                e.message,
            )
            .with_details(json!({ "field": field })),
            InvalidKind::UnknownFields => Self::new(Code::Unprocessable,
                e.message,
            )
            .with_details(json!({ "unknown_fields": e.unknown }))
            .with_hint(
                "remove the attributes, or set [api] unknown_fields = \"preserve\" on the server",
            ),
            InvalidKind::TooLarge => Self::new(Code::PayloadTooLarge,
                e.message,
            )
            .with_details(json!({ "field": field })),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match (&e, e.kind()) {
            (QueueError::Duplicate, _) => Self::new(e.code(), "a job with this id already exists"),
            (QueueError::InvalidState { current, .. }, _) => {
                Self::new(e.code(), e.to_string())
                    .with_details(json!({ "current_state": current.as_str() }))
            }
            (QueueError::LeaseNotHeld, _) => Self::new(e.code(), e.to_string())
                .with_hint("only the worker that fetched the job, with the same credential, may ack, nack or heartbeat it"),
            (QueueError::NotInDeadLetter, _) => Self::not_found("dead letter job"),
            (QueueError::QueueFull { depth, bound, strategy }, _) => Self::too_many(
                e.code(),
                format!("the queue has reached its depth bound ({bound})"),
                5,
            )
            .with_details(json!({ "depth": depth, "bound": bound, "strategy": strategy.as_str() }))
            .with_header("X-OJS-Queue-Depth", depth.to_string())
            .with_header("X-OJS-Queue-Bound", bound.to_string()),
            (QueueError::QuotaExceeded { quota, limit }, _) => Self::too_many(
                e.code(),
                format!("quota {} ({limit}) is used up", quota.as_str()),
                5,
            )
            .with_details(json!({ "quota": quota.as_str(), "limit": limit })),
            (QueueError::TooManyWaits { limit, scope }, _) => Self::too_many(
                e.code(),
                format!("too many long-poll fetches wait at once ({scope} limit {limit})"),
                1,
            )
            .with_details(json!({ "limit": limit, "scope": scope }))
            .with_hint("fetch without wait_ms, or with fewer concurrent long-polls"),
            (QueueError::CredentialInvalid, _) => Self::unauthenticated(),
            (_, ErrorKind::NotFound) => Self::not_found("job"),
            (QueueError::Unreadable(id), _) => {
                error!(job_id = %id, "job record cannot be decrypted with the loaded keys");
                Self::new(e.code(),
                    "the job's data cannot be decrypted with the keys this server holds",
                )
                .with_hint("restore the job's key-encryption key (see GET /ojs/v1/admin/vault)")
            }
            (QueueError::Storage(inner), _) => {
                error!(error = %inner, "storage failure");
                Self::unavailable()
            }
            _ => {
                warn!(error = %e, "queue unavailable");
                Self::unavailable()
            }
        }
    }
}

impl From<crate::vault::VaultError> for ApiError {
    fn from(e: crate::vault::VaultError) -> Self {
        error!(error = %e, "key vault failure");
        match e.code() {
            Code::BackendUnavailable => Self::unavailable(),
            code => Self::new(code, "the key vault could not complete the operation"),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match (&e, e.kind()) {
            (
                AuthError::Forbidden {
                    principal,
                    permission,
                    queue,
                    ..
                },
                _,
            ) => Self::permission_denied(principal, Some(*permission), queue.as_deref()),
            (AuthError::Throttled { retry_after, .. }, _) => Self::rate_limited(
                "too many authentication attempts from this address",
                retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
            ),
            (_, ErrorKind::Unauthenticated) => Self::unauthenticated(),
            _ => {
                warn!(error = %e, "auth store unavailable");
                Self::unavailable()
            }
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::Throttled(t) => Self::rate_limited(
                "too many login attempts; try again later",
                t.retry_after_secs,
            ),
            AccountError::Refused(_) | AccountError::RefreshReuse { .. } => Self::unauthenticated(),
            AccountError::User(UserError::InvalidUsername) => {
                Self::invalid("username", UserError::InvalidUsername.to_string())
            }
            AccountError::User(UserError::Policy(v)) => Self::new(
                Code::Unprocessable,
                "the password does not meet the password policy",
            )
            .with_details(json!({ "field": "password", "missing": v.missing })),
            AccountError::User(UserError::Exists) => {
                Self::new(Code::Conflict, "a user with this name already exists")
            }
            AccountError::User(UserError::NotFound) => Self::not_found("user"),
            other => {
                warn!(error = %other, "accounts service unavailable");
                Self::unavailable()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_error_table_matches_the_code() {
        let doc = include_str!("../../docs/errors.md");
        let table = markdown_table();
        assert!(
            doc.contains(&table),
            "docs/errors.md is out of date; its table must read:\n{table}"
        );
    }

    #[test]
    fn a_queue_error_answers_with_the_code_it_says_it_is() {
        use crate::queue::bounds::{Quota, Strategy};
        let errors = vec![
            QueueError::NotFound,
            QueueError::OtherTenant,
            QueueError::Duplicate,
            QueueError::LeaseNotHeld,
            QueueError::NotInDeadLetter,
            QueueError::QueueFull {
                depth: 1,
                bound: 1,
                strategy: Strategy::Reject,
            },
            QueueError::QuotaExceeded {
                quota: Quota::PrincipalPending,
                limit: 1,
            },
            QueueError::QuotaExceeded {
                quota: Quota::TenantActive,
                limit: 1,
            },
            QueueError::TooManyWaits {
                limit: 1,
                scope: "principal",
            },
            QueueError::CredentialInvalid,
            QueueError::Unreadable(crate::job::JobId::generate()),
            QueueError::Unavailable,
        ];
        for e in errors {
            let code = e.code();
            let api = ApiError::from(e);
            assert_eq!(
                (api.code(), api.status_code()),
                (code.as_str(), code.status())
            );
        }
    }

    #[test]
    fn every_code_is_listed_once_and_each_wire_code_and_status_pair_once() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.row()), "{code:?} repeats a row");
        }
        assert_eq!(seen.len(), Code::ALL.len());
    }
}
