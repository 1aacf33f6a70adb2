//! `/ojs/v1/admin`: operator routes. `reset` exists only when `[testing] allow_reset` is set.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use super::ok;
use crate::audit::Outcome;
use crate::http::audit;
use crate::http::auth::Authenticated;
use crate::http::error::ApiError;
use crate::queue::QueueHandle;

/// `POST /ojs/v1/admin/reset`: deletes every job. For external conformance runners.
pub async fn reset(
    req: HttpRequest,
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
) -> Result<HttpResponse, ApiError> {
    // Fail closed: no record on disk, no reset.
    let event = audit::event(
        &req,
        "admin.reset",
        Outcome::Success,
        Some(&caller.principal),
    );
    audit::guarded(&req, event, queue.reset()).await?;
    warn!(principal = %caller.principal.display_id(), "all job state reset through the testing route");
    Ok(ok(&json!({ "reset": true })))
}

/// Where audit queries read from (app data).
#[derive(Clone)]
pub struct AuditSource {
    pub store: crate::store::Store,
    pub log_file: std::path::PathBuf,
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
    req: HttpRequest,
    caller: Authenticated,
    source: web::Data<AuditSource>,
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
    audit::emit(
        &req,
        audit::event(
            &req,
            "audit.queried",
            Outcome::Success,
            Some(&caller.principal),
        ),
    )
    .await;
    let source = source.get_ref().clone();
    let records = actix_web::rt::task::spawn_blocking(move || {
        crate::audit::index::query(&source.store, &source.log_file, &query)
    })
    .await
    .map_err(|_| ApiError::unavailable())?
    .map_err(|e| {
        tracing::error!(error = %e, "audit query failed");
        ApiError::unavailable()
    })?;
    let next_before = records
        .last()
        .and_then(|r| r.get("seq"))
        .and_then(serde_json::Value::as_u64);
    Ok(ok(
        &json!({ "records": records, "next_before": next_before }),
    ))
}
