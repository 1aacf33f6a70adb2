//! Headers every response carries (`OJS-Version`, `X-Request-Id`, the OJS content type, and
//! the security headers: `Content-Security-Policy: default-src 'none'; frame-ancestors
//! 'none'`, `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`, `Referrer-Policy:
//! no-referrer`, `Cache-Control: no-store`, and on HTTPS `Strict-Transport-Security` for two
//! years with subdomains), and one log line per request from an allow-list of fields.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use tracing::{debug, warn};
use uuid::Uuid;

use super::error::OJS_JSON;

/// The API serves JSON only: nothing may load, run or frame.
pub const CSP: &str = "default-src 'none'; frame-ancestors 'none'";
/// Two years, subdomains included (sent on HTTPS only).
pub const HSTS: &str = "max-age=63072000; includeSubDomains";

/// The request id of the current request (a request extension).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// A client-supplied request id is echoed only if it is short and plain; otherwise (or when
/// absent) the server makes one.
#[must_use]
pub fn request_id(headers: &HeaderMap) -> String {
    client_request_id(headers.get("x-request-id"))
        .map_or_else(|| format!("req_{}", Uuid::now_v7()), str::to_string)
}

/// The client's `X-Request-Id` when it may be echoed: 1 to 64 characters of `[A-Za-z0-9._-]`.
#[must_use]
pub fn client_request_id(value: Option<&HeaderValue>) -> Option<&str> {
    value.and_then(|v| v.to_str().ok()).filter(|v| {
        (1..=64).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    })
}

/// Sets the standard headers on a response: for the middleware, and for the answers written
/// before a request reaches the app (the `Expect: 100-continue` refusal).
pub fn apply(headers: &mut HeaderMap, id: &str, secure: bool) {
    headers.insert(
        HeaderName::from_static("ojs-version"),
        HeaderValue::from_static("1.0"),
    );
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(HeaderName::from_static("x-request-id"), v);
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(OJS_JSON));
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if secure {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
}

/// The standard-headers middleware.
pub async fn standard_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let id = request_id(req.headers());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    // The listener decides, never a forwarded-protocol header a client could send.
    let secure = req.app_config().secure();
    let mut res = next.call(req).await?;
    let status = res.status();
    apply(res.headers_mut(), &id, secure);
    let class = match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(crate::metrics::HTTP_RESPONSES, "class" => class).increment(1);
    let latency_us = started.elapsed().as_micros();
    if status.is_server_error() {
        warn!(request_id = %id, %method, route = %route, status = status.as_u16(), latency_us, "request failed");
    } else {
        debug!(request_id = %id, %method, route = %route, status = status.as_u16(), latency_us, "request");
    }
    Ok(res)
}

/// Turns a panic while handling a request into a 500 with the OJS error envelope: the panic is
/// a bug, so it is logged (with the request id, never the panic's text, which may quote
/// input), counted and audited (`http.panic`), and the worker keeps serving. It wraps every
/// resource of the route table (`access::register`): there, after routing, the request can be
/// kept for the answer; [`standard_headers`], further out, adds the usual headers and the
/// request id to it.
pub async fn catch_panics(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, Error> {
    use futures_util::FutureExt as _;
    let request = req.request().clone();
    match std::panic::AssertUnwindSafe(next.call(req))
        .catch_unwind()
        .await
    {
        Ok(res) => res.map(ServiceResponse::map_into_boxed_body),
        Err(_) => {
            let id = request.extensions().get::<RequestId>().map(|r| r.0.clone());
            let route = request
                .match_pattern()
                .unwrap_or_else(|| "unmatched".into());
            tracing::error!(request_id = ?id, route = %route, "request handler panicked; answered 500");
            metrics::counter!(crate::metrics::HTTP_PANICS).increment(1);
            let event = crate::http::audit::event(
                &request,
                "http.panic",
                crate::audit::Outcome::Failure,
                None,
            )
            .detail("route", route)
            .detail("method", request.method().as_str());
            crate::http::audit::emit(&request, event).await;
            let response = actix_web::ResponseError::error_response(&super::error::ApiError::new(
                super::error::Code::InternalError,
                "the server hit an internal error",
            ));
            Ok(ServiceResponse::new(request, response))
        }
    }
}
