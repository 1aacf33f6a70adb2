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
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use super::auth::Authenticated;
use super::error::{ApiError, Code, OJS_JSON};

/// 200 with a JSON body in the OJS media type.
pub fn ok<T: Serialize>(body: &T) -> HttpResponse {
    json(StatusCode::OK, body)
}

/// 201 with a JSON body: something was created (and is on disk).
pub fn created<T: Serialize>(body: &T) -> HttpResponse {
    json(StatusCode::CREATED, body)
}

/// 202 with a JSON body: accepted, carried out in the background.
pub fn accepted<T: Serialize>(body: &T) -> HttpResponse {
    json(StatusCode::ACCEPTED, body)
}

/// 503 with a JSON body that is not an error envelope (health when degraded).
pub fn degraded<T: Serialize>(body: &T) -> HttpResponse {
    json(StatusCode::SERVICE_UNAVAILABLE, body)
}

/// 204: done, nothing to say.
#[must_use]
pub fn no_content() -> HttpResponse {
    HttpResponse::build(StatusCode::NO_CONTENT).finish()
}

/// 200 with a body that is not JSON (the Prometheus text format).
pub fn ok_text(content_type: &'static str, body: String) -> HttpResponse {
    HttpResponse::build(StatusCode::OK)
        .content_type(content_type)
        .body(body)
}

/// A JSON response in the OJS media type. Only the helpers above name a status: success
/// statuses are theirs, error statuses come from [`Code`]'s table (a body that cannot be
/// serialized is a 500 `internal_error` envelope).
fn json<T: Serialize>(status: StatusCode, body: &T) -> HttpResponse {
    match serde_json::to_vec(body) {
        Ok(bytes) => HttpResponse::build(status)
            .content_type(OJS_JSON)
            .body(bytes),
        Err(_) => ApiError::from(Code::InternalError).error_response(),
    }
}

/// Unknown paths: authenticated callers learn it does not exist; others get 401 (deny by
/// default, and no map of the server for anonymous callers).
pub async fn not_found(_caller: Authenticated) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(Code::NotFound, "no such route"))
}

/// A known path with a method it does not serve.
pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        Code::MethodNotAllowed,
        "this route does not accept that method",
    ))
}

/// Reads a job id from a path segment.
pub fn job_id(text: &str) -> Result<crate::job::JobId, ApiError> {
    crate::job::JobId::parse(text)
        .ok_or_else(|| ApiError::invalid("id", "job ids are lowercase hyphenated UUIDv7"))
}
