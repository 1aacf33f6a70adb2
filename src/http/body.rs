//! Request bodies: JSON objects under a size limit, in an accepted media type. Oversized bodies
//! are refused from `Content-Length` before they are read, and cut off at the limit when chunked.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::StreamExt;
use serde_json::Value;

use super::error::ApiError;
use super::strict_json;
use crate::http::error::Code;
use crate::rules::{Rules, RulesHandle};

/// A parsed JSON request body: valid UTF-8, no duplicate keys, nesting within the limit.
pub struct OjsJson(pub Value);

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!("the request body exceeds {limit} bytes"),
    )
}

fn unsupported() -> ApiError {
    ApiError::new(
        Code::UnsupportedMediaType,
        "send application/openjobspec+json or application/json",
    )
}

/// Whether a `Content-Type` names JSON in UTF-8: `application/json` or
/// `application/openjobspec+json`; a `charset` parameter, if any, must be UTF-8 (JSON is
/// UTF-8 on the wire, RFC 8259 §8.1, and the body is read as such: a body declared in another
/// charset would be misread).
fn is_json(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or("").trim();
    let json = essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("application/openjobspec+json");
    json && parts.all(|param| {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        !name.trim().eq_ignore_ascii_case("charset") || {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
    })
}

/// The path whose body is a batch, under `payload.max_batch_bytes`.
pub const BATCH_PATH: &str = "/ojs/v1/jobs/batch";

/// The body limit of a request to `path`.
#[must_use]
pub fn limit_for(rules: &Rules, path: &str) -> usize {
    if path == BATCH_PATH {
        rules.payload.max_batch_bytes
    } else {
        rules.max_body_bytes
    }
}

/// The `Expect: 100-continue` check, before the client is told to send its body: a declared
/// length over the route's limit is refused 413 at once, so the body is never sent.
pub fn may_continue(rules: &Rules, path: &str, declared: Option<u64>) -> Result<(), ApiError> {
    let limit = limit_for(rules, path);
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    Ok(())
}

/// Reads the body up to `limit` bytes. Slow bodies are the caller's to time out.
async fn read_limited(mut payload: Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|_| ApiError::invalid_payload("the request body could not be read"))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads and strictly parses a JSON body of at most `limit` bytes under `rules`.
async fn read_json(
    content_type: Option<String>,
    declared: Option<u64>,
    payload: Payload,
    limit: usize,
    rules: &Rules,
) -> Result<Value, ApiError> {
    // An over-long declared length is refused before a byte of the body is read.
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    if let Some(ct) = &content_type {
        if !is_json(ct) {
            return Err(unsupported());
        }
    }
    let timeout = rules.body_read_timeout();
    let body = tokio::time::timeout(timeout, read_limited(payload, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                Code::RequestTimeout,
                format!(
                    "the request body did not arrive within {} seconds",
                    timeout.as_secs()
                ),
            )
        })??;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_payload("a JSON request body is required"));
    }
    if content_type.is_none() {
        return Err(unsupported());
    }
    Ok(strict_json::parse(&body, rules.payload.max_json_depth)?)
}

impl OjsJson {
    fn extract(req: &HttpRequest, payload: &mut Payload, batch: bool) -> BodyFuture {
        let rules = req.app_data::<web::Data<RulesHandle>>().map_or_else(
            || std::sync::Arc::new(Rules::from_config(&crate::config::Config::default())),
            |r| r.current(),
        );
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("invalid").to_string());
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let payload = payload.take();
        Box::pin(async move {
            let limit = if batch {
                rules.payload.max_batch_bytes
            } else {
                rules.max_body_bytes
            };
            read_json(content_type, declared, payload, limit, &rules)
                .await
                .map(OjsJson)
        })
    }
}

type BodyFuture = Pin<Box<dyn Future<Output = Result<OjsJson, ApiError>>>>;

impl FromRequest for OjsJson {
    type Error = ApiError;
    type Future = BodyFuture;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        Self::extract(req, payload, false)
    }
}

/// A batch body: like [`OjsJson`], under the batch limit (`payload.max_batch_bytes`).
pub struct OjsBatchJson(pub Value);

impl FromRequest for OjsBatchJson {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let inner = OjsJson::extract(req, payload, true);
        Box::pin(async move { inner.await.map(|OjsJson(v)| OjsBatchJson(v)) })
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

    #[test]
    fn the_batch_path_is_the_routed_batch_enqueue() {
        assert!(crate::http::access::ROUTES
            .iter()
            .any(|r| r.method == "POST" && r.path == super::BATCH_PATH));
    }

    #[test]
    fn json_in_any_charset_but_utf8_is_not_json() {
        // The review's story: `application/json; charset=utf-16` was accepted and the body
        // read as UTF-8.
        for ok in [
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "application/openjobspec+json; charset=utf8",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "application/json; charset=utf-16",
            "application/json; charset=UTF-16LE",
            "application/json; charset=iso-8859-1",
            "application/json; charset=",
            "application/json; charset=utf-8; charset=utf-16",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }
}
