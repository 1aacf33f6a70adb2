//! The edge middleware: refusals about a request's form, before rate budgets are spent on it
//! by a handler and before any credential is looked at. Every refusal is audited
//! (`request.refused`, once a minute per address and reason) and counted
//! (`bulwark_edge_refusals_total{reason}`).
//!
//! - A stand-in request from the HTTP/1 connection guard ([`super::guard`]) is answered with
//!   the refusal it stands for (414, 431, 400, 408), then the connection closes.
//! - A security-relevant header sent twice (`Authorization`, `X-OJS-Tenant`,
//!   `X-OJS-Tenant-Id`, `X-OJS-Policy-Token`, `Content-Length`, `Content-Type`) is refused 400:
//!   which copy a component reads must never decide who the caller is.
//! - `Content-Encoding` other than `identity` is refused 415: no route decodes bodies, so an
//!   encoded body would be misread or stored as sent.
//! - The request-target, header field, head size and field count bounds are applied here too,
//!   for HTTP/2 (whose heads actix-http decodes without bounds of ours).
//!
//! On the way out, a response that closes the connection (408, 413, 414, 431) tells the guard
//! to read nothing more, so the rest of an over-long body is never read.

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::middleware::Next;
use actix_web::{web, Error, ResponseError};
use serde_json::json;

use super::error::{ApiError, Code};
use super::guard::{EdgeConn, EdgeLimits, REFUSAL_HEADER};
use crate::audit::Outcome;
use crate::config::Config;

/// Headers whose value decides who the caller is or how its body is read: each may appear
/// once.
pub const SINGLE_HEADERS: [&str; 6] = [
    "authorization",
    "x-ojs-tenant",
    "x-ojs-tenant-id",
    "x-ojs-policy-token",
    "content-length",
    "content-type",
];

/// A refusal: the error, the audit reason, and the header it is about (if one).
struct Refused {
    error: ApiError,
    reason: &'static str,
    header: Option<&'static str>,
}

impl Refused {
    fn new(error: ApiError, reason: &'static str) -> Self {
        Self {
            error,
            reason,
            header: None,
        }
    }
}

/// The first header of [`SINGLE_HEADERS`] that appears more than once.
#[must_use]
pub fn duplicated(headers: &HeaderMap) -> Option<&'static str> {
    SINGLE_HEADERS
        .into_iter()
        .find(|name| headers.get_all(*name).nth(1).is_some())
}

/// Whether every `Content-Encoding` value is `identity`.
#[must_use]
pub fn identity_encoding(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_ENCODING).all(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .all(|c| c.trim().is_empty() || c.trim().eq_ignore_ascii_case("identity"))
        })
    })
}

/// The bound of [`EdgeLimits`] a request's target and fields cross, if any.
fn over_bounds(req: &ServiceRequest, limits: &EdgeLimits) -> Option<Refused> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > limits.max_uri_bytes {
        return Some(Refused::new(
            ApiError::new(
                Code::UriTooLong,
                format!(
                    "the request target is longer than {} bytes",
                    limits.max_uri_bytes
                ),
            ),
            "uri_too_long",
        ));
    }
    let headers = req.headers();
    let too_large = |message: String, reason| {
        Some(Refused::new(
            ApiError::new(Code::HeadersTooLarge, message),
            reason,
        ))
    };
    if headers.len() > limits.max_headers {
        return too_large(
            format!(
                "the request has more than {} header fields",
                limits.max_headers
            ),
            "too_many_headers",
        );
    }
    let mut total = target;
    for (name, value) in headers {
        let size = name.as_str().len() + value.len();
        if size > limits.max_header_bytes {
            return too_large(
                format!(
                    "a header field is longer than {} bytes",
                    limits.max_header_bytes
                ),
                "header_too_large",
            );
        }
        total += size + 4;
    }
    if total > limits.max_head_bytes {
        return too_large(
            format!(
                "the request head is larger than {} bytes",
                limits.max_head_bytes
            ),
            "head_too_large",
        );
    }
    None
}

fn check(req: &ServiceRequest, conn: Option<&Arc<EdgeConn>>) -> Option<Refused> {
    let headers = req.headers();
    if let Some(token) = headers.get(REFUSAL_HEADER) {
        return Some(
            match conn.and_then(|c| c.refusal_for(token.as_bytes()).map(|r| (c, r))) {
                Some((c, refusal)) => {
                    Refused::new(refusal.error(&c.limits, c.head_timeout), refusal.reason())
                }
                None => Refused {
                    error: ApiError::invalid(REFUSAL_HEADER, "this header is reserved"),
                    reason: "reserved_header",
                    header: Some(REFUSAL_HEADER),
                },
            },
        );
    }
    if let Some(name) = duplicated(headers) {
        return Some(Refused {
            error: ApiError::new(
                Code::InvalidRequest,
                format!("the {name} header appears more than once; send it once"),
            )
            .with_details(json!({ "header": name })),
            reason: "duplicate_header",
            header: Some(name),
        });
    }
    if !identity_encoding(headers) {
        return Some(Refused {
            error: ApiError::new(
                Code::UnsupportedMediaType,
                "request bodies are accepted without Content-Encoding only",
            )
            .with_details(json!({ "header": "content-encoding" })),
            reason: "content_encoding",
            header: Some("content-encoding"),
        });
    }
    let limits = conn.map(|c| c.limits).unwrap_or_else(|| {
        req.app_data::<web::Data<Config>>()
            .map_or_else(EdgeLimits::default, |c| c.edge_limits())
    });
    over_bounds(req, &limits)
}

/// Audits a refusal, aggregated per address and reason (each one is counted, and the records'
/// counts add up to the metric).
async fn audit(req: &ServiceRequest, refused: &Refused) {
    metrics::counter!(crate::metrics::EDGE_REFUSALS, "reason" => refused.reason).increment(1);
    let ip = req
        .peer_addr()
        .map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
    let mut event = super::audit::event(req.request(), "request.refused", Outcome::Failure, None)
        .detail("reason", refused.reason)
        .detail("status", refused.error.status_code().as_u16());
    if let Some(h) = refused.header {
        event = event.detail("header", h);
    }
    super::audit::aggregate(
        req.request(),
        format!("edge:{}:{ip}", refused.reason),
        event,
    )
    .await;
}

/// The middleware.
pub async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let conn = req.conn_data::<Arc<EdgeConn>>().cloned();
    if let Some(refused) = check(&req, conn.as_ref()) {
        audit(&req, &refused).await;
        let mut res = refused.error.error_response();
        res.head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        if let Some(c) = &conn {
            c.stop_reading();
        }
        return Ok(req.into_response(res));
    }
    let res = next.call(req).await?;
    if let Some(c) = &conn {
        if super::error::closes_connection(res.status()) {
            c.stop_reading();
        }
    }
    Ok(res.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn each_security_header_sent_twice_is_found_whatever_its_case() {
        for name in SINGLE_HEADERS {
            let upper = name.to_ascii_uppercase();
            let m = map(&[(name, "a"), (&upper, "b")]);
            assert_eq!(duplicated(&m), Some(name));
        }
        assert_eq!(duplicated(&map(&[("accept", "a"), ("accept", "b")])), None);
        assert_eq!(duplicated(&map(&[("authorization", "a")])), None);
    }

    #[test]
    fn only_identity_content_encoding_passes() {
        assert!(identity_encoding(&map(&[])));
        assert!(identity_encoding(&map(&[("content-encoding", "identity")])));
        assert!(identity_encoding(&map(&[("content-encoding", "Identity")])));
        for bad in ["gzip", "br", "identity, gzip", "deflate", "x"] {
            assert!(
                !identity_encoding(&map(&[("content-encoding", bad)])),
                "{bad}"
            );
        }
        assert!(!identity_encoding(&map(&[
            ("content-encoding", "identity"),
            ("content-encoding", "gzip")
        ])));
    }
}
