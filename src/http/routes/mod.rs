//! The routes, grouped by the resource they serve. Each handler names the permission it needs
//! and calls one actor.

pub mod admin;
pub mod dead_letter;
pub mod jobs;
pub mod keys;
pub mod queues;
pub mod sessions;
pub mod system;
pub mod vault;
pub mod workers;

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Serialize;

use super::auth::Authenticated;
use super::error::{ApiError, OJS_JSON};

/// A JSON response in the OJS media type.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> HttpResponse {
    match serde_json::to_vec(body) {
        Ok(bytes) => HttpResponse::build(status)
            .content_type(OJS_JSON)
            .body(bytes),
        Err(_) => HttpResponse::InternalServerError()
            .content_type(OJS_JSON)
            .finish(),
    }
}

/// Unknown paths: authenticated callers learn it does not exist; others get 401 (deny by
/// default, and no map of the server for anonymous callers).
pub async fn not_found(_caller: Authenticated) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route",
    ))
}

/// A known path with a method it does not serve.
pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    ))
}

/// Reads a job id from a path segment.
pub fn job_id(text: &str) -> Result<crate::job::JobId, ApiError> {
    crate::job::JobId::parse(text)
        .ok_or_else(|| ApiError::invalid("id", "job ids are lowercase hyphenated UUIDv7"))
}
