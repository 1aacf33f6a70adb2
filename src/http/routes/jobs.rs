//! `/ojs/v1/jobs`: enqueue, info, cancel, activate.
//!
//! Every by-id route is tenant-scoped: the queue answers 404 for another tenant's job exactly as
//! for an id nobody used, and [`Authenticated::job`] applies the queue ACL and the job's
//! own rules before anything changes.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::{created, job_id, ok};
use crate::audit::Outcome;
use crate::auth::actions::ActionGuard;
use crate::auth::policy::RESERVED_QUEUE_PREFIX;
use crate::auth::records::is_valid_tenant;
use crate::auth::Permission;
use crate::http::actions::{require_policy_token, used_event};
use crate::http::audit;
use crate::http::auth::Authenticated;
use crate::http::body::{OjsBatchJson, OjsJson};
use crate::http::error::ApiError;
use crate::http::error::Code;
use crate::job::envelope::{parse_new_job, NewJob, NAME_MAX};
use crate::job::view::job_json;
use crate::queue::{Enqueued, QueueError, QueueHandle};
use crate::rules::{Rules, RulesHandle};
use std::time::Duration;

/// A reserved `_ojs_` queue named in the body, if it is plain enough to name back.
fn reserved_queue(body: &Value) -> Option<&str> {
    let queue = body
        .get("options")
        .and_then(|o| o.get("queue"))
        .or_else(|| body.get("queue"))?
        .as_str()?;
    let plain = queue.len() <= NAME_MAX
        && queue.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    (queue.starts_with(RESERVED_QUEUE_PREFIX) && plain).then_some(queue)
}

/// The configured rules on a parsed job: the job-type allowlist (422 `invalid_job_type`,
/// audited: an unregistered type is a probe or a misconfigured producer), the type's JSON
/// Schema for `args` (422 `schema_validation_failed` with the failing path, never the value),
/// then the per-request quotas on priority and timeout (422 `quota_exceeded`).
pub(crate) async fn check_job_rules(
    req: &HttpRequest,
    caller: &Authenticated,
    rules: &Rules,
    new: &NewJob,
    args: &Value,
) -> Result<(), ApiError> {
    if !rules.allowlist.allows(&new.job_type) {
        let event = audit::event(
            req,
            "job.type_refused",
            Outcome::Denied,
            Some(&caller.principal),
        )
        .detail("job_type", new.job_type.clone())
        .detail("queue", new.queue.clone());
        audit::emit(req, event).await;
        return Err(ApiError::new(
            Code::InvalidJobType,
            "the job type is not registered on this server",
        )
        .with_details(json!({ "field": "type" }))
        .with_hint("add the type to [validation] job_types on the server"));
    }
    if let Err(v) = rules.schemas.check(&new.job_type, args) {
        return Err(ApiError::new(
            Code::SchemaValidationFailed,
            "args do not match the schema of this job type",
        )
        .with_details(json!({
            "field": "args",
            "instance_path": v.instance_path,
            "schema_path": v.schema_path,
        })));
    }
    let quotas = &rules.quotas;
    if new.priority > quotas.max_priority {
        return Err(ApiError::new(
            Code::JobLimitExceeded,
            format!("priority may be at most {}", quotas.max_priority),
        )
        .with_details(json!({ "field": "options.priority", "max": quotas.max_priority })));
    }
    if new.timeout_ms > quotas.max_timeout_ms {
        return Err(ApiError::new(
            Code::JobLimitExceeded,
            format!("timeout_ms may be at most {}", quotas.max_timeout_ms),
        )
        .with_details(json!({ "field": "options.timeout_ms", "max": quotas.max_timeout_ms })));
    }
    Ok(())
}

/// A job that passed every check but the policy token, with the tenant it is stored for and
/// its owner.
struct Prepared {
    new: NewJob,
    tenant: Option<String>,
    owner: String,
}

/// Reads one envelope and applies every check of an enqueue except the policy token: reserved
/// queues, the envelope, the queue ACL, the configured rules, `meta.tenant_id` and the owner.
async fn prepare(
    req: &HttpRequest,
    caller: &Authenticated,
    rules: &Rules,
    body: &Value,
    now: crate::clock::Millis,
) -> Result<Prepared, ApiError> {
    // Reserved queues are refused as a permission matter (OJS security §15.2), before the
    // envelope's pattern check would call them malformed.
    if let Some(reserved) = reserved_queue(body) {
        caller.allow(Permission::Enqueue, reserved).await?;
    }
    let new = parse_new_job(body, &rules.envelope, now)?;
    caller.allow(Permission::Enqueue, &new.queue).await?;
    check_job_rules(req, caller, rules, &new, &body["args"]).await?;
    // `meta.tenant_id` may only repeat the tenant the request acts for; a system
    // administrator acting on the system scope may use it to act for a tenant, as with the
    // header.
    let mut tenant = caller.tenant.clone();
    if let Some(claimed) = &new.meta_tenant {
        if tenant.is_none() && caller.principal.is_system_admin() {
            if !is_valid_tenant(claimed) {
                return Err(ApiError::invalid(
                    "meta.tenant_id",
                    "meta.tenant_id must be 1 to 64 lowercase letters, digits, _ or -",
                ));
            }
            tenant = Some(claimed.clone());
        } else if tenant.as_deref() != Some(claimed.as_str()) {
            return Err(caller
                .refuse(Some(&new.queue), "meta_tenant_mismatch")
                .await);
        }
    }
    // A tenant-bound caller may not choose ids: a collision with another tenant's job would
    // reveal that it exists.
    if new.id.is_some() && caller.principal.tenant().is_some() {
        return Err(ApiError::invalid(
            "id",
            "job ids are assigned by the server for tenant credentials; leave id out",
        ));
    }
    let owner = match &new.requested_owner {
        Some(named)
            if named != caller.principal.id()
                && !caller.principal.grants().has(Permission::Admin) =>
        {
            return Err(caller.refuse(Some(&new.queue), "owner_not_self").await);
        }
        Some(named) => named.clone(),
        None => caller.principal.id().to_string(),
    };
    Ok(Prepared { new, tenant, owner })
}

/// `POST /ojs/v1/jobs`: 201 once the job is on disk (or 200 for a dry run, which stores
/// nothing). An action job type also needs a valid policy token, dry run or not.
pub async fn enqueue(
    req: HttpRequest,
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
    rules: web::Data<RulesHandle>,
    actions: web::Data<ActionGuard>,
    body: OjsJson,
) -> Result<HttpResponse, ApiError> {
    let rules = rules.current();
    let Prepared {
        mut new,
        tenant,
        owner,
    } = prepare(&req, &caller, &rules, &body.0, queue.clock().now_ms()).await?;
    // Last of the checks, so that the token is judged for exactly the job that would be
    // stored: its type, the tenant it is stored for, and the principal.
    let token = require_policy_token(
        &req,
        &caller,
        &actions,
        &new.job_type,
        &new.queue,
        tenant.as_deref(),
    )
    .await?;
    if new.dry_run {
        if let Some(claims) = &token {
            audit::record_or_refuse(&req, used_event(&req, &caller, claims, &new.queue, true))
                .await?;
        }
        let event = audit::event(
            &req,
            "job.dry_run",
            Outcome::Success,
            Some(&caller.principal),
        )
        .detail("job_type", new.job_type.clone())
        .detail("queue", new.queue.clone())
        .detail("dry_run", true)
        .detail("action", token.is_some());
        audit::record_or_refuse(&req, event).await?;
        return Ok(ok(&json!({
            "dry_run": true,
            "valid": true,
            "job": { "type": new.job_type, "queue": new.queue, "priority": new.priority },
        })));
    }
    // Abuse detection sees each stored submission (not dry runs): spikes and payload floods
    // are refused, all-top-priority floods demoted.
    crate::http::limits::check_enqueue(&req, &caller.principal, &mut new).await?;
    let queue_name = new.queue.clone();
    let stored = async {
        let result = enqueue_bounded(&caller, &queue, &rules, new, tenant, owner).await;
        if let Err(e) = &result {
            crate::http::limits::audit_limit_refusal(&req, &caller.principal, e).await;
        }
        result
    };
    let done = match &token {
        // The token's use is on disk before the job is; a failed enqueue adds a failure record.
        Some(claims) => {
            let used = used_event(&req, &caller, claims, &queue_name, false);
            audit::guarded(&req, used, stored).await?
        }
        None => stored.await?,
    };
    if let Some(dropped) = &done.dropped {
        metrics::counter!(crate::metrics::BACKPRESSURE_DROPPED).increment(1);
        let event = audit::event(
            &req,
            "backpressure.dropped",
            Outcome::Success,
            Some(&caller.principal),
        )
        .detail("job_id", dropped.id.to_string())
        .detail("queue", dropped.queue.clone())
        .detail("for_job_id", done.job.id.to_string());
        audit::emit(&req, event).await;
    }
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

/// How long a `block` queue may hold this request: `OJS-Block-Timeout` (seconds) when sent,
/// otherwise the configured maximum, never more than it.
fn block_timeout(req: &HttpRequest, rules: &Rules) -> Duration {
    Duration::from_secs(block_timeout_secs(
        req.headers().get("ojs-block-timeout"),
        rules.backpressure.max_block_secs,
    ))
}

/// The block timeout in seconds an `OJS-Block-Timeout` value asks for, capped at `max`; `max`
/// when the header is absent or not a whole number of seconds.
#[must_use]
pub fn block_timeout_secs(value: Option<&header::HeaderValue>, max: u64) -> u64 {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(max)
        .min(max)
}

/// Stores a job under its queue's bound and the caller's quotas. A full `block` queue holds the
/// enqueue inside the queue engine until there is room (first come, first served) or the block
/// timeout passes; then, like a `reject` queue, 429 `queue_full` with the depth headers. A held
/// enqueue whose credential is revoked or expires meanwhile is answered 401 (audited) and is
/// never stored.
async fn enqueue_bounded(
    caller: &Authenticated,
    queue: &QueueHandle,
    rules: &Rules,
    new: NewJob,
    tenant: Option<String>,
    owner: String,
) -> Result<Enqueued, ApiError> {
    let retry_after = rules.backpressure.retry_after_secs;
    let block = Some((block_timeout(caller.request(), rules), caller.standing()?));
    match queue
        .enqueue_blocking(new, tenant, Some(owner), rules.limits(), block)
        .await
    {
        Ok(done) => Ok(done),
        Err(QueueError::CredentialInvalid) => {
            caller.audit_credential_gone().await;
            Err(ApiError::from(QueueError::CredentialInvalid))
        }
        Err(e) => Err(ApiError::from(e).with_retry_after(retry_after)),
    }
}

/// `GET /ojs/v1/jobs/{id}`
pub async fn info(
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = caller
        .job(&queue, job_id(&id)?, Permission::Inspect)
        .await?;
    Ok(ok(&json!({ "job": job_json(&job) })))
}

/// `DELETE /ojs/v1/jobs/{id}`
pub async fn cancel(
    req: HttpRequest,
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&id)?;
    caller.job(&queue, id, Permission::Cancel).await?;
    let (job, previous) = queue.cancel(id, caller.tenant.clone()).await?;
    let event = audit::event(
        &req,
        "job.cancelled",
        Outcome::Success,
        Some(&caller.principal),
    )
    .detail("job_id", job.id.to_string())
    .detail("queue", job.queue.clone())
    .detail("previous_state", previous.as_str());
    audit::emit(&req, event).await;
    let mut view = job_json(&job);
    view["previous_state"] = previous.as_str().into();
    Ok(ok(&json!({ "job": view })))
}

/// `POST /ojs/v1/jobs/{id}/activate`
pub async fn activate(
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&id)?;
    caller.job(&queue, id, Permission::Enqueue).await?;
    let job = queue.activate(id, caller.tenant.clone()).await?;
    let mut view = job_json(&job);
    view["previous_state"] = "pending".into();
    Ok(ok(&json!({ "job": view })))
}

/// Most jobs in one batch.
pub const MAX_BATCH_JOBS: usize = 1000;

/// `POST /ojs/v1/jobs/batch`: `{"jobs": [envelope, ...]}`, all stored in one transaction or
/// none. Each envelope gets every check of a single enqueue; the first refusal answers for the
/// whole batch with the job's index in `details.index`. The body may be up to
/// `payload.max_batch_bytes`. Action job types (which need a policy token each) and dry runs are
/// enqueued one at a time, not in batches.
pub async fn enqueue_batch(
    req: HttpRequest,
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
    rules: web::Data<RulesHandle>,
    actions: web::Data<ActionGuard>,
    body: OjsBatchJson,
) -> Result<HttpResponse, ApiError> {
    let rules = rules.current();
    let items = body
        .0
        .get("jobs")
        .and_then(Value::as_array)
        .filter(|j| !j.is_empty() && j.len() <= MAX_BATCH_JOBS)
        .ok_or_else(|| {
            ApiError::invalid(
                "jobs",
                format!("jobs must be an array of 1 to {MAX_BATCH_JOBS} job envelopes"),
            )
        })?;
    let mut jobs = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let at = |e: ApiError| e.with_index(index);
        let Prepared {
            mut new,
            tenant,
            owner,
        } = prepare(&req, &caller, &rules, item, queue.clock().now_ms())
            .await
            .map_err(at)?;
        if actions.is_action(&new.job_type) {
            return Err(at(ApiError::new(
                Code::Unprocessable,
                "action job types need a policy token each: enqueue them one at a time",
            )));
        }
        if new.dry_run {
            return Err(at(ApiError::invalid(
                "options.dry_run",
                "dry runs are not supported in batches",
            )));
        }
        crate::http::limits::check_enqueue(&req, &caller.principal, &mut new)
            .await
            .map_err(at)?;
        jobs.push((new, tenant, Some(owner)));
    }
    let count = jobs.len();
    let stored = match queue.enqueue_batch(jobs, rules.limits()).await {
        Ok(stored) => stored,
        Err(e) => {
            let e = ApiError::from(e).with_retry_after(rules.backpressure.retry_after_secs);
            crate::http::limits::audit_limit_refusal(&req, &caller.principal, &e).await;
            return Err(e);
        }
    };
    let views: Vec<Value> = stored.iter().map(job_json).collect();
    let event = audit::event(
        &req,
        "job.batch_enqueued",
        Outcome::Success,
        Some(&caller.principal),
    )
    .detail("count", count);
    audit::emit(&req, event).await;
    Ok(created(&json!({ "jobs": views, "count": count })))
}
