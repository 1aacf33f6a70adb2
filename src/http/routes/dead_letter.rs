//! `/ojs/v1/dead-letter`: list, retry, delete (the dead-letter service,
//! [`crate::services::dead_letters`], checks and records).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{job_id, ok};
use crate::http::auth::Authenticated;
use crate::http::error::ApiError;
use crate::job::envelope::is_valid_queue;
use crate::job::view::job_json;
use crate::services::Services;

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
    services: web::Data<Services>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > 100 {
        return Err(ApiError::invalid("limit", "limit must be from 1 to 100"));
    }
    let offset = query.offset.unwrap_or(0);
    if query.queue.as_deref().is_some_and(|q| !is_valid_queue(q)) {
        return Err(ApiError::invalid(
            "queue",
            "queue names must match ^[a-z0-9][a-z0-9.-]*$",
        ));
    }
    let page = services
        .dead_letters
        .list(&caller, query.queue.clone(), limit, offset)
        .await?;
    // Only queues the caller may inspect are shown (the total counts the tenant's whole list).
    let jobs: Vec<Value> = page.jobs.iter().map(job_json).collect();
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
    caller: Authenticated,
    services: web::Data<Services>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = services.dead_letters.retry(&caller, job_id(&id)?).await?;
    Ok(ok(&json!({ "job": job_json(&job) })))
}

/// `DELETE /ojs/v1/dead-letter/{id}`
pub async fn delete(
    caller: Authenticated,
    services: web::Data<Services>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&id)?;
    services.dead_letters.delete(&caller, id).await?;
    Ok(ok(&json!({ "deleted": true, "job_id": id.to_string() })))
}
