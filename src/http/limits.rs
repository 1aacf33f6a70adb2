//! The limits middleware (the edge's side of the [`crate::limiter`]), before authentication: a connection over the connection limits is
//! answered 429 and closed; then the global and per-address budgets are spent. On the way out
//! it writes `X-RateLimit-Limit`, `-Remaining` and `-Reset` (the Unix time at which at least one
//! more request will pass, OJS rate limiting §10.4) for the tightest budget the request met,
//! on successes and refusals alike.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage, HttpRequest, ResponseError};
use tracing::info;

use crate::audit::Outcome;
use crate::auth::Principal;
use crate::http::error::ApiError;
use crate::limiter::connections::OverLimit;
use crate::limiter::rates::{Limited, RateInfo, Scope};
use crate::limiter::LimiterHandle;

use crate::limiter::RATE_LIMIT_HINT as HINT;

/// Notes a budget this request met; the tightest one ends up in the headers.
pub fn record(req: &HttpRequest, info: RateInfo) {
    let mut ext = req.extensions_mut();
    let merged = match ext.get::<RateInfo>() {
        Some(seen) => seen.tighter(info),
        None => info,
    };
    ext.insert(merged);
}

/// Notes a refusal: its budget replaces whatever the request met before.
pub fn record_refusal(req: &HttpRequest, info: RateInfo) {
    req.extensions_mut().insert(info);
}

/// The 429 for a spent budget; audited aggregated per scope and key (the first of a window at
/// once, the rest as one record with their count; every refusal is also counted in
/// `bulwark_rate_limited_total`).
pub async fn refuse(
    req: &HttpRequest,
    limited: Limited,
    key: &str,
    principal: Option<&Principal>,
) -> ApiError {
    record_refusal(req, limited.info);
    let scope = limited.info.scope;
    let event = crate::http::audit::event(req, "rate_limit.exceeded", Outcome::Failure, principal)
        .detail("scope", scope.as_str())
        .detail("limit", limited.info.limit)
        .detail("retry_after_secs", limited.retry_after_secs);
    crate::http::audit::aggregate(req, format!("{}:{key}", scope.as_str()), event).await;
    info!(scope = scope.as_str(), "rate limit exceeded");
    rate_limited(scope, limited.retry_after_secs)
}

/// The OJS `rate_limited` envelope for `scope`.
#[must_use]
pub fn rate_limited(scope: Scope, retry_after_secs: u64) -> ApiError {
    let message = match scope {
        Scope::Global => "the server is receiving too many requests",
        Scope::Ip => "too many requests from this address",
        Scope::Tenant => "too many requests for this tenant",
        Scope::FailedAuth => "too many authentication attempts from this address",
        Scope::Login => "too many login attempts; try again later",
        Scope::Enqueue | Scope::Worker | Scope::Other => "too many requests for this credential",
    };
    ApiError::rate_limited(message, retry_after_secs)
        .with_details(serde_json::json!({ "scope": scope.as_str() }))
        .with_hint(HINT)
}

fn header(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

/// Holds back a refusal made before authentication (see `[limits] refusal_delay_ms`).
pub async fn delay_refusal(req: &HttpRequest, retry_after_secs: u64) {
    let Some(limiter) = req.app_data::<web::Data<LimiterHandle>>() else {
        return;
    };
    let ms = limiter
        .config()
        .refusal_delay_ms
        .min(retry_after_secs.saturating_mul(1000));
    if ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// The middleware.
pub async fn limits(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    // A missing limiter is a wiring fault: refuse rather than serve without limits.
    let Some(limiter) = req.app_data::<web::Data<LimiterHandle>>().cloned() else {
        tracing::error!("the limiter is not wired into the HTTP app; refusing");
        let res = ApiError::unavailable().error_response();
        return Ok(req.into_response(res));
    };
    if let Some(over) = req.conn_data::<OverLimit>().copied() {
        let message = match over {
            OverLimit::PerIp => "too many open connections from this address",
            OverLimit::Global => "the server has too many open connections",
        };
        let mut res = ApiError::rate_limited(message, 1)
            .with_details(serde_json::json!({ "scope": format!("connections_{}", over.as_str()) }))
            .error_response();
        res.head_mut().set_connection_type(ConnectionType::Close);
        return Ok(req.into_response(res));
    }
    if let Some(ip) = req.peer_addr().map(|a| a.ip()) {
        let checked = limiter.rates().check_source(ip);
        match checked {
            Ok(info) => record(req.request(), info),
            Err(limited) => {
                let key = crate::limiter::rates::ip_bucket(ip).to_string();
                let error = refuse(req.request(), limited, &key, None).await;
                if limited.info.scope == Scope::Ip {
                    delay_refusal(req.request(), limited.retry_after_secs).await;
                }
                let mut res = req.into_response(error.error_response());
                add_headers(&mut res, limiter.clock());
                return Ok(res);
            }
        }
    }
    let mut res = next.call(req).await?.map_into_boxed_body();
    add_headers(&mut res, limiter.clock());
    Ok(res)
}

/// The `X-RateLimit-*` headers of the budget the request met; the reset is a Unix time by
/// `clock`.
fn add_headers(res: &mut ServiceResponse<BoxBody>, clock: &crate::clock::Clock) {
    let info = res.request().extensions().get::<RateInfo>().copied();
    if let Some(info) = info {
        let headers = res.headers_mut();
        headers.insert(
            HeaderName::from_static("x-ratelimit-limit"),
            header(u64::from(info.limit)),
        );
        headers.insert(
            HeaderName::from_static("x-ratelimit-remaining"),
            header(u64::from(info.remaining)),
        );
        headers.insert(
            HeaderName::from_static("x-ratelimit-reset"),
            header(u64::try_from(clock.now_secs()).unwrap_or(0) + info.reset_in_secs),
        );
    }
}
