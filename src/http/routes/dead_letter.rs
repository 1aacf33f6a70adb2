//! `/ojs/v1/dead-letter`: list, retry, delete.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{job_id, ok};
use crate::audit::Outcome;
use crate::auth::Permission;
use crate::http::audit;
use crate::http::auth::Authenticated;
use crate::http::error::ApiError;
use crate::job::envelope::is_valid_queue;
use crate::job::view::job_json;
use crate::queue::QueueHandle;

/// Query of the listing.
#[derive(Deserialize)]
pub struct ListQuery {
    queue: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

/// `GET /ojs/v1/dead-letter`
pub async fn list(
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > 100 {
        return Err(ApiError::invalid("limit", "limit must be from 1 to 100"));
    }
    let offset = query.offset.unwrap_or(0);
    if let Some(q) = &query.queue {
        if !is_valid_queue(q) {
            return Err(ApiError::invalid(
                "queue",
                "queue names must match ^[a-z0-9][a-z0-9.-]*$",
            ));
        }
        caller.allow(Permission::Inspect, q).await?;
    }
    let page = queue
        .dead_letter(caller.tenant.clone(), query.queue.clone(), limit, offset)
        .await?;
    // Only queues the caller may inspect are shown (the total counts the tenant's whole list).
    let jobs: Vec<Value> = page
        .items
        .iter()
        .filter(|j| caller.sees_queue(&j.queue))
        .map(job_json)
        .collect();
    Ok(ok(&json!({
        "jobs": jobs,
        "pagination": {
            "total": page.total,
            "limit": limit,
            "offset": offset,
            "has_more": offset.saturating_add(jobs.len()) < page.total,
        },
    })))
}

/// `POST /ojs/v1/dead-letter/{id}/retry`
pub async fn retry(
    req: HttpRequest,
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&id)?;
    caller.job(&queue, id, Permission::Admin).await?;
    let event = audit::event(
        &req,
        "dead_letter.retried",
        Outcome::Success,
        Some(&caller.principal),
    )
    .detail("job_id", id.to_string());
    let job = audit::guarded(
        &req,
        event,
        queue.retry_dead_letter(id, caller.tenant.clone()),
    )
    .await?;
    Ok(ok(&json!({ "job": job_json(&job) })))
}

/// `DELETE /ojs/v1/dead-letter/{id}`
pub async fn delete(
    req: HttpRequest,
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&id)?;
    caller.job(&queue, id, Permission::Admin).await?;
    let event = audit::event(
        &req,
        "dead_letter.deleted",
        Outcome::Success,
        Some(&caller.principal),
    )
    .detail("job_id", id.to_string());
    audit::guarded(
        &req,
        event,
        queue.delete_dead_letter(id, caller.tenant.clone()),
    )
    .await?;
    Ok(ok(&json!({ "deleted": true, "job_id": id.to_string() })))
}
