//! `/ojs/v1/workers`: fetch, ack, nack, heartbeat. The handlers read the request; the worker
//! service ([`crate::services::workers`]) binds every lease to the caller and checks the
//! queue ACL and quotas.

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

use super::ok;
use crate::clock::rfc3339;
use crate::http::auth::Authenticated;
use crate::http::body::OjsJson;
use crate::http::error::ApiError;
use crate::job::envelope::is_valid_queue;
use crate::job::view::job_json;
use crate::job::{JobId, JobState, Payload};
use crate::queue::Failure;
use crate::services::workers::FetchAsk;
use crate::services::Services;

const MAX_QUEUES: usize = 32;
const MAX_HEARTBEAT_JOBS: usize = 1000;
const MAX_VISIBILITY_MS: u64 = 24 * 3_600_000;
const MAX_TEXT: usize = 8 * 1024;

fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object()
        .ok_or_else(|| ApiError::invalid("body", "the request body must be a JSON object"))
}

fn worker_id(obj: &Map<String, Value>, required: bool) -> Result<Option<String>, ApiError> {
    let worker_id = match obj.get("worker_id") {
        None | Some(Value::Null) if !required => None,
        Some(Value::String(w))
            if (1..=255).contains(&w.len()) && !w.chars().any(char::is_control) =>
        {
            Some(w.clone())
        }
        _ => {
            return Err(ApiError::invalid(
                "worker_id",
                "worker_id must be a string of 1 to 255 printable characters",
            ))
        }
    };
    Ok(worker_id)
}

fn required_job_id(obj: &Map<String, Value>) -> Result<JobId, ApiError> {
    obj.get("job_id")
        .and_then(Value::as_str)
        .and_then(JobId::parse)
        .ok_or_else(|| {
            ApiError::invalid(
                "job_id",
                "job_id is required and must be a lowercase UUIDv7",
            )
        })
}

fn optional_attempt(obj: &Map<String, Value>) -> Result<Option<u32>, ApiError> {
    match obj.get("attempt") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|a| u32::try_from(a).ok())
            .map(Some)
            .ok_or_else(|| ApiError::invalid("attempt", "attempt must be a non-negative integer")),
    }
}

fn visibility(obj: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    match obj.get("visibility_timeout_ms") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|ms| *ms > 0 && *ms <= MAX_VISIBILITY_MS)
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(
                    "visibility_timeout_ms",
                    "visibility_timeout_ms must be a positive integer up to 24 hours",
                )
            }),
    }
}

/// `wait_ms`: how long a long-poll fetch may wait (absent means no wait).
fn wait_ms(obj: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    match obj.get("wait_ms") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid("wait_ms", "wait_ms must be a non-negative integer")),
    }
}

/// `POST /ojs/v1/workers/fetch`: with `wait_ms`, a long poll that the queue engine answers as
/// soon as a job can be claimed (waits are served in the order they began), or with
/// `{"jobs": []}` once the wait (at most `[limits] max_fetch_wait_ms`, 30 s by default) is
/// over. A wait whose credential is revoked or expires meanwhile is answered 401 and is never
/// handed a job; a principal's concurrent waits are capped (`[queue] max_waits_per_principal`).
pub async fn fetch(
    caller: Authenticated,
    services: web::Data<Services>,
    body: OjsJson,
) -> Result<HttpResponse, ApiError> {
    let obj = object(&body.0)?;
    let queues = obj
        .get("queues")
        .and_then(Value::as_array)
        .filter(|q| !q.is_empty() && q.len() <= MAX_QUEUES)
        .ok_or_else(|| {
            ApiError::invalid(
                "queues",
                "queues must be a non-empty array of at most 32 queue names",
            )
        })?
        .iter()
        .map(|q| {
            q.as_str()
                .filter(|q| is_valid_queue(q))
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::invalid("queues", "queue names must match ^[a-z0-9][a-z0-9.-]*$")
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let count = match obj.get("count") {
        None | Some(Value::Null) => None,
        // Anything but a whole number is refused by the service like an out-of-range one.
        Some(v) => Some(v.as_u64().unwrap_or(0)),
    };
    let ask = FetchAsk {
        queues,
        count,
        worker_id: worker_id(obj, false)?,
        visibility_timeout_ms: visibility(obj)?,
        wait_ms: wait_ms(obj)?,
    };
    let jobs = services.workers.fetch(&caller, ask).await?;
    let jobs: Vec<Value> = jobs.iter().map(job_json).collect();
    Ok(ok(&json!({ "jobs": jobs })))
}

/// `POST /ojs/v1/workers/ack`
pub async fn ack(
    caller: Authenticated,
    services: web::Data<Services>,
    body: OjsJson,
) -> Result<HttpResponse, ApiError> {
    let obj = object(&body.0)?;
    let id = required_job_id(obj)?;
    let worker = worker_id(obj, false)?;
    let attempt = optional_attempt(obj)?;
    let result = obj
        .get("result")
        .filter(|r| !r.is_null())
        .map(|r| Payload(r.to_string()));
    let job = services
        .workers
        .ack(&caller, id, worker, attempt, result)
        .await?;
    Ok(ok(&json!({
        "acknowledged": true,
        "id": job.id.to_string(),
        "job_id": job.id.to_string(),
        "state": job.state.as_str(),
        "attempt": job.attempt,
        "completed_at": job.completed_at.map(rfc3339),
    })))
}

fn text(obj: &Map<String, Value>, name: &str, field: &str) -> Result<String, ApiError> {
    obj.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= MAX_TEXT)
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::invalid(
                field,
                format!("{field} is required: a string of at most 8 KiB"),
            )
        })
}

fn failure(obj: &Map<String, Value>) -> Result<Failure, ApiError> {
    let error = obj.get("error").and_then(Value::as_object).ok_or_else(|| {
        ApiError::invalid(
            "error",
            "error is required: an object with code and message",
        )
    })?;
    let code = text(error, "code", "error.code")?;
    let message = text(error, "message", "error.message")?;
    let retryable = match error.get("retryable") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(ApiError::invalid(
                "error.retryable",
                "error.retryable must be a boolean",
            ))
        }
    };
    let details = error.get("details").filter(|d| !d.is_null());
    // The error's language-level type: `type`, else `details.error_class`.
    let error_type = error
        .get("type")
        .and_then(Value::as_str)
        .or_else(|| {
            details
                .and_then(|d| d.get("error_class"))
                .and_then(Value::as_str)
        })
        .filter(|t| !t.is_empty() && t.len() <= 255)
        .map(str::to_string);
    Ok(Failure {
        code,
        message,
        error_type,
        retryable,
        details: details.map(|d| Payload(d.to_string())),
    })
}

/// `POST /ojs/v1/workers/nack`
pub async fn nack(
    caller: Authenticated,
    services: web::Data<Services>,
    body: OjsJson,
) -> Result<HttpResponse, ApiError> {
    let obj = object(&body.0)?;
    let requeue = match obj.get("requeue") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("requeue", "requeue must be a boolean")),
    };
    let id = required_job_id(obj)?;
    let worker = worker_id(obj, false)?;
    let attempt = optional_attempt(obj)?;
    let failure = failure(obj)?;
    let job = services
        .workers
        .nack(&caller, id, worker, attempt, failure, requeue)
        .await?;
    let mut out = json!({
        "id": job.id.to_string(),
        "job_id": job.id.to_string(),
        "state": job.state.as_str(),
        "attempt": job.attempt,
        "max_attempts": job.retry.max_attempts,
    });
    if job.state == JobState::Retryable {
        out["next_attempt_at"] = job.scheduled_at.map(rfc3339).into();
        out["retry_delay_ms"] = job.retry_delay_ms.into();
    }
    if job.state == JobState::Discarded {
        out["discarded_at"] = job.discarded_at.map(rfc3339).into();
        out["completed_at"] = job.completed_at.map(rfc3339).into();
        out["dead_letter"] = job.dead_letter.into();
    }
    Ok(ok(&out))
}

/// `POST /ojs/v1/workers/heartbeat`
pub async fn heartbeat(
    caller: Authenticated,
    services: web::Data<Services>,
    body: OjsJson,
) -> Result<HttpResponse, ApiError> {
    let obj = object(&body.0)?;
    let worker = worker_id(obj, true)?;
    let job_ids = match obj.get("active_jobs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ids)) if ids.len() <= MAX_HEARTBEAT_JOBS => ids
            .iter()
            .map(|id| {
                id.as_str().and_then(JobId::parse).ok_or_else(|| {
                    ApiError::invalid(
                        "active_jobs",
                        "active_jobs must hold lowercase UUIDv7 job ids",
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "active_jobs",
                "active_jobs must be an array of at most 1000 job ids",
            ))
        }
    };
    let visibility = visibility(obj)?;
    let outcome = services
        .workers
        .heartbeat(&caller, worker, job_ids, visibility)
        .await?;
    let extended: Vec<String> = outcome.extended.iter().map(ToString::to_string).collect();
    Ok(ok(&json!({
        "state": outcome.directive,
        "jobs_extended": extended,
        "server_time": rfc3339(services.workers.now()),
    })))
}
