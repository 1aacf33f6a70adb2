//! `/ojs/v1/jobs`: enqueue, info, cancel, activate.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::{job_id, json};
use crate::audit::Outcome;
use crate::auth::Permission;
use crate::clock::now_ms;
use crate::http::audit;
use crate::http::auth::Authenticated;
use crate::http::body::OjsJson;
use crate::http::error::ApiError;
use crate::job::envelope::{parse_new_job, EnvelopeRules};
use crate::job::view::job_json;
use crate::queue::QueueHandle;

/// `POST /ojs/v1/jobs`: 201 once the job is on disk.
pub async fn enqueue(
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
    rules: web::Data<EnvelopeRules>,
    body: OjsJson,
) -> Result<HttpResponse, ApiError> {
    caller.0.require(Permission::Enqueue)?;
    let new = parse_new_job(&body.0, &rules, now_ms())?;
    let job = queue
        .enqueue(new, caller.0.tenant().map(str::to_string))
        .await?;
    let mut res = json(StatusCode::CREATED, &json!({ "job": job_json(&job) }));
    if let Ok(location) = header::HeaderValue::from_str(&format!("/ojs/v1/jobs/{}", job.id)) {
        res.headers_mut().insert(header::LOCATION, location);
    }
    Ok(res)
}

/// `GET /ojs/v1/jobs/{id}`
pub async fn info(
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.0.require(Permission::Inspect)?;
    let job = queue.get(job_id(&id)?).await?;
    Ok(json(StatusCode::OK, &json!({ "job": job_json(&job) })))
}

/// `DELETE /ojs/v1/jobs/{id}`
pub async fn cancel(
    req: HttpRequest,
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.0.require(Permission::Cancel)?;
    let (job, previous) = queue.cancel(job_id(&id)?).await?;
    let event = audit::event(&req, "job.cancelled", Outcome::Success, Some(&caller.0))
        .detail("job_id", job.id.to_string())
        .detail("queue", job.queue.clone())
        .detail("previous_state", previous.as_str());
    audit::emit(&req, event).await;
    let mut view = job_json(&job);
    view["previous_state"] = previous.as_str().into();
    Ok(json(StatusCode::OK, &json!({ "job": view })))
}

/// `POST /ojs/v1/jobs/{id}/activate`
pub async fn activate(
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.0.require(Permission::Enqueue)?;
    let job = queue.activate(job_id(&id)?).await?;
    let mut view = job_json(&job);
    view["previous_state"] = "pending".into();
    Ok(json(StatusCode::OK, &json!({ "job": view })))
}
