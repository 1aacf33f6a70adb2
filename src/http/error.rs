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

/// A code's status, from the table ([`Code::row`]).
impl Code {
    /// The HTTP status.
    #[must_use]
    pub fn status(self) -> StatusCode {
        // Every row's number is a valid status (a test reads them all).
        StatusCode::from_u16(self.status_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

pub use crate::error::markdown_table;
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
        self.error_code().row().kind
    }

    fn retryable(&self) -> bool {
        self.error_code().row().retryable
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
        if self.error_code().row().limit_refusal {
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
    fn every_row_names_a_valid_status_of_its_class() {
        for code in Code::ALL {
            let status = StatusCode::from_u16(code.status_u16());
            assert!(status.is_ok(), "{code:?}");
            assert_eq!(code.status().as_u16(), code.status_u16());
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }

    #[test]
    fn the_envelope_takes_type_and_retryable_from_the_table() {
        for code in Code::ALL {
            let row = code.row();
            let body = ApiError::new(code, "m").body();
            assert_eq!(body["error"]["type"], row.kind, "{code:?}");
            assert_eq!(body["error"]["retryable"], row.retryable, "{code:?}");
            assert_eq!(body["error"]["code"], row.wire, "{code:?}");
        }
    }
}
