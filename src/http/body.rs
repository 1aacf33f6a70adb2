//! Request bodies: JSON objects under a size limit, in an accepted media type. Oversized bodies
//! are refused from `Content-Length` before they are read, and cut off at the limit when chunked.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::StreamExt;
use serde_json::Value;

use super::error::ApiError;

/// The largest body a route accepts, in bytes (app data).
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// A parsed JSON request body.
pub struct OjsJson(pub Value);

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body exceeds {limit} bytes"),
    )
}

/// Whether a `Content-Type` names JSON: `application/json` or `application/openjobspec+json`,
/// parameters allowed.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("application/openjobspec+json")
}

impl FromRequest for OjsJson {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<web::Data<BodyLimit>>()
            .map_or(2 * 1024 * 1024, |l| l.0);
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("invalid").to_string());
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(too_large(limit));
            }
            if let Some(ct) = &content_type {
                if !is_json(ct) {
                    return Err(ApiError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_media_type",
                        "send application/openjobspec+json or application/json",
                    ));
                }
            }
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk
                    .map_err(|_| ApiError::invalid_payload("the request body could not be read"))?;
                if body.len() + chunk.len() > limit {
                    return Err(too_large(limit));
                }
                body.extend_from_slice(&chunk);
            }
            if body.iter().all(u8::is_ascii_whitespace) {
                return Err(ApiError::invalid_payload("a JSON request body is required"));
            }
            if content_type.is_none() {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send application/openjobspec+json or application/json",
                ));
            }
            // serde_json's messages can quote the input; only the position is reported.
            let value: Value = serde_json::from_slice(&body).map_err(|e| {
                ApiError::invalid_payload(format!(
                    "the request body is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ))
            })?;
            Ok(OjsJson(value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/openjobspec+json; charset=utf-8"));
        assert!(is_json("Application/JSON"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/jsonx"));
        assert!(!is_json(""));
    }
}
