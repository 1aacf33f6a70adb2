//! `/ojs/v1/jobs`: enqueue, info, cancel, activate. The rules are the job service's
//! ([`crate::services::jobs`]); these handlers read the request, call it and render the job.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::{created, job_id, ok};
use crate::auth::policy_token::MAX_TOKEN_BYTES;
use crate::http::auth::Authenticated;
use crate::http::body::{OjsBatchJson, OjsJson};
use crate::http::error::ApiError;
use crate::job::view::job_json;
use crate::services::actions::Presented;
use crate::services::jobs::{Enqueue, EnqueueOptions};
use crate::services::Services;

pub use crate::services::jobs::MAX_BATCH_JOBS;

/// The policy token in `header`: exactly one value of visible ASCII, of at most
/// [`MAX_TOKEN_BYTES`] (two are ambiguous: a proxy may forward one and drop the other).
fn policy_token(req: &HttpRequest, header: &str) -> Presented {
    let mut values = req.headers().get_all(header);
    let Some(first) = values.next() else {
        return Presented::Missing;
    };
    if values.next().is_some() {
        return Presented::Unusable;
    }
    // Checked before `to_str`, so an oversized value is not even scanned.
    if first.len() > MAX_TOKEN_BYTES {
        return Presented::TooLarge;
    }
    match first.to_str() {
        Ok(token) => Presented::Token(secrecy::SecretString::from(token.to_string())),
        Err(_) => Presented::Unusable,
    }
}

/// The seconds an `OJS-Block-Timeout` value asks for, when it is a whole number of seconds
/// (the job service caps it).
#[must_use]
pub fn block_timeout(value: Option<&header::HeaderValue>) -> Option<u64> {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// `POST /ojs/v1/jobs`: 201 once the job is on disk (or 200 for a dry run, which stores
/// nothing).
pub async fn enqueue(
    req: HttpRequest,
    caller: Authenticated,
    services: web::Data<Services>,
    body: OjsJson,
) -> Result<HttpResponse, ApiError> {
    let options = EnqueueOptions {
        policy_token: policy_token(&req, services.jobs.policy_token_header()),
        block_timeout_secs: block_timeout(req.headers().get("ojs-block-timeout")),
    };
    let done = match services.jobs.enqueue(&caller, &body.0, options).await? {
        Enqueue::DryRun {
            job_type,
            queue,
            priority,
        } => {
            return Ok(ok(&json!({
                "dry_run": true,
                "valid": true,
                "job": { "type": job_type, "queue": queue, "priority": priority },
            })))
        }
        Enqueue::Stored(done) => done,
    };
    let job = &done.job;
    let mut res = created(&json!({ "job": job_json(job) }));
    if let Ok(location) = header::HeaderValue::from_str(&format!("/ojs/v1/jobs/{}", job.id)) {
        res.headers_mut().insert(header::LOCATION, location);
    }
    if let Some(pressure) = done.bound.pressure(done.depth) {
        let headers = res.headers_mut();
        for (name, value) in [
            ("x-ojs-queue-depth", done.depth.to_string()),
            ("x-ojs-queue-bound", done.bound.max_depth.to_string()),
            ("x-ojs-queue-pressure", format!("{pressure:.2}")),
        ] {
            if let Ok(v) = header::HeaderValue::from_str(&value) {
                headers.insert(header::HeaderName::from_static(name), v);
            }
        }
    }
    Ok(res)
}

/// `GET /ojs/v1/jobs/{id}`
pub async fn info(
    caller: Authenticated,
    services: web::Data<Services>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = services.jobs.info(&caller, job_id(&id)?).await?;
    Ok(ok(&json!({ "job": job_json(&job) })))
}

/// `DELETE /ojs/v1/jobs/{id}`
pub async fn cancel(
    caller: Authenticated,
    services: web::Data<Services>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (job, previous) = services.jobs.cancel(&caller, job_id(&id)?).await?;
    let mut view = job_json(&job);
    view["previous_state"] = previous.as_str().into();
    Ok(ok(&json!({ "job": view })))
}

/// `POST /ojs/v1/jobs/{id}/activate`
pub async fn activate(
    caller: Authenticated,
    services: web::Data<Services>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = services.jobs.activate(&caller, job_id(&id)?).await?;
    let mut view = job_json(&job);
    view["previous_state"] = "pending".into();
    Ok(ok(&json!({ "job": view })))
}

/// `POST /ojs/v1/jobs/batch`: `{"jobs": [envelope, ...]}`, all stored in one transaction or
/// none. The body may be up to `payload.max_batch_bytes`.
pub async fn enqueue_batch(
    caller: Authenticated,
    services: web::Data<Services>,
    body: OjsBatchJson,
) -> Result<HttpResponse, ApiError> {
    let items = body
        .0
        .get("jobs")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let stored = services.jobs.enqueue_batch(&caller, items).await?;
    let views: Vec<Value> = stored.iter().map(job_json).collect();
    Ok(created(&json!({ "jobs": views, "count": views.len() })))
}
