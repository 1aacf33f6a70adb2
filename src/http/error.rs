//! The one place where errors become HTTP responses: the OJS error envelope
//! `{"error": {"code", "message", "type", "retryable", "details", "hint", "docs_url"}}` with the
//! right status. Internal causes go to the log, never to the client.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Map, Value};

pub use crate::error::Code;

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

pub use crate::error::ApiError;

/// Whether a response of `status` ends its connection: the refusals after which the rest of
/// the client's byte stream is not trusted (a body cut off at the limit or timed out, a head
/// over its bounds).
#[must_use]
pub fn closes_connection(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 413 | 414 | 431)
}

/// The envelope, from the table.
impl ApiError {
    /// The HTTP status, from the table.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.error_code().status()
    }

    fn error_type(&self) -> &'static str {
        match self.status().as_u16() {
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
        matches!(self.status().as_u16(), 429 | 503 | 504)
    }

    /// Whether the refusal leaves the connection's byte stream in a state the server no longer
    /// trusts (a body cut off at the limit or timed out, a head over its bounds): the response
    /// closes the connection, so nothing more of that stream is read.
    #[must_use]
    pub fn closes_connection(&self) -> bool {
        closes_connection(self.status())
    }

    /// The envelope body.
    #[must_use]
    pub fn body(&self) -> Value {
        let mut e = Map::new();
        e.insert("code".into(), self.code().into());
        e.insert("type".into(), self.error_type().into());
        e.insert("message".into(), self.message().into());
        e.insert("retryable".into(), self.retryable().into());
        if let Some(d) = self.details() {
            e.insert("details".into(), d.clone());
        }
        if let Some(h) = self.hint() {
            e.insert("hint".into(), h.into());
        }
        e.insert(
            "docs_url".into(),
            format!("{DOCS_BASE}{}", self.code()).into(),
        );
        json!({ "error": e })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status().as_u16(), self.code())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(
            self.code(),
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
            metrics::counter!(crate::metrics::LIMIT_REFUSALS, "code" => self.code()).increment(1);
        }
        let mut res = HttpResponse::build(self.status());
        res.content_type(OJS_JSON);
        if self.closes_connection() {
            res.force_close();
        }
        if self.status() == StatusCode::UNAUTHORIZED {
            res.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"bulwark\""),
            ));
        }
        if let Some(secs) = self.retry_after_secs() {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        for (name, value) in self.extra_headers() {
            res.insert_header((name, value));
        }
        res.body(self.body().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::queue::QueueError;

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
