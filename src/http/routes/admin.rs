//! `/ojs/v1/admin`: operator routes. `reset` exists only when `[testing] allow_reset` is set.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::ok;
use crate::http::auth::Authenticated;
use crate::http::error::ApiError;
use crate::services::Services;

/// `POST /ojs/v1/admin/reset`: deletes every job. For external conformance runners.
pub async fn reset(
    caller: Authenticated,
    services: web::Data<Services>,
) -> Result<HttpResponse, ApiError> {
    services.jobs.reset(&caller).await?;
    Ok(ok(&json!({ "reset": true })))
}

/// Query of `GET /ojs/v1/admin/audit`.
#[derive(Deserialize)]
pub struct AuditQueryParams {
    event_type: Option<String>,
    principal: Option<String>,
    tenant: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<u64>,
    limit: Option<usize>,
}

/// `GET /ojs/v1/admin/audit`: audit records, newest first, filtered by type, principal,
/// tenant and time; `before` (a sequence number) pages back. Admin only, and itself audited.
pub async fn audit(
    caller: Authenticated,
    services: web::Data<Services>,
    params: web::Query<AuditQueryParams>,
) -> Result<HttpResponse, ApiError> {
    let time = |name: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|t| {
                crate::clock::parse_rfc3339(t).ok_or_else(|| {
                    ApiError::invalid(name, format!("{name} must be an RFC 3339 timestamp"))
                })
            })
            .transpose()
    };
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::invalid("limit", "limit must be from 1 to 1000"));
    }
    let query = crate::audit::index::Query {
        event_type: params.event_type.clone(),
        principal: params.principal.clone(),
        tenant: params.tenant.clone(),
        since: time("since", &params.since)?,
        until: time("until", &params.until)?,
        before: params.before,
        limit,
    };
    let records = services.audit.query(&caller, query).await?;
    let next_before = records
        .last()
        .and_then(|r| r.get("seq"))
        .and_then(serde_json::Value::as_u64);
    Ok(ok(
        &json!({ "records": records, "next_before": next_before }),
    ))
}
