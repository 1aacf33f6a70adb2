//! Jobs: enqueue (one, or a batch all or none), read, cancel and activate. Every rule of an
//! enqueue lives here, in this order: reserved queues, the envelope, the queue ACL, the
//! configured rules (job-type allowlist, schemas, per-job quotas), `meta.tenant_id`, ids and
//! owners, the policy token of an action job type, abuse detection, then the queue's bound
//! and the caller's quotas inside the queue engine (a full `block` queue holds the enqueue
//! there until there is room).
//!
//! Every by-id operation is tenant-scoped: the queue answers 404 for another tenant's job
//! exactly as for an id nobody used, and [`Caller::job`] applies the queue ACL and the job's
//! own rules before anything changes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::abuse::Abuse;
use super::actions::{require_policy_token, used_event, Presented};
use super::Caller;
use crate::audit::Outcome;
use crate::auth::actions::ActionGuard;
use crate::auth::policy::RESERVED_QUEUE_PREFIX;
use crate::auth::records::is_valid_tenant;
use crate::auth::Permission;
use crate::error::{ApiError, Code};
use crate::job::envelope::{parse_new_job, NewJob, NAME_MAX};
use crate::job::{Job, JobId, JobState};
use crate::queue::{Enqueued, QueueError, QueueHandle};
use crate::rules::{Rules, RulesHandle};

/// Most jobs in one batch.
pub const MAX_BATCH_JOBS: usize = 1000;

/// The job service.
#[derive(Clone)]
pub struct Jobs {
    queue: QueueHandle,
    rules: RulesHandle,
    actions: Arc<ActionGuard>,
    abuse: Abuse,
}

/// What an enqueue asked for beyond the envelope.
#[derive(Clone, Debug)]
pub struct EnqueueOptions {
    /// The policy token the request carried.
    pub policy_token: Presented,
    /// How long a full `block` queue may hold the request (seconds), if the caller said;
    /// never more than the configured maximum.
    pub block_timeout_secs: Option<u64>,
}

/// What an enqueue did.
pub enum Enqueue {
    /// A dry run passed every check; nothing was stored.
    DryRun {
        job_type: String,
        queue: String,
        priority: i32,
    },
    /// The job is on disk.
    Stored(Box<Enqueued>),
}

/// A job that passed every check but the policy token, with the tenant it is stored for and
/// its owner.
struct Prepared {
    new: NewJob,
    tenant: Option<String>,
    owner: String,
}

impl Jobs {
    #[must_use]
    pub fn new(
        queue: QueueHandle,
        rules: RulesHandle,
        actions: Arc<ActionGuard>,
        abuse: Abuse,
    ) -> Self {
        Self {
            queue,
            rules,
            actions,
            abuse,
        }
    }

    /// The header an action job's policy token comes in.
    #[must_use]
    pub fn policy_token_header(&self) -> &str {
        self.actions.header()
    }

    /// Enqueues one job from its envelope: stored (on disk before this returns) or, for a dry
    /// run, only checked. An action job type also needs a valid policy token, dry run or not.
    pub async fn enqueue(
        &self,
        caller: &Caller,
        body: &Value,
        options: EnqueueOptions,
    ) -> Result<Enqueue, ApiError> {
        let rules = self.rules.current();
        let Prepared {
            mut new,
            tenant,
            owner,
        } = prepare(caller, &rules, body, self.queue.clock().now_ms()).await?;
        // Last of the checks, so that the token is judged for exactly the job that would be
        // stored: its type, the tenant it is stored for, and the principal.
        let token = require_policy_token(
            caller,
            &self.actions,
            self.queue.clock(),
            &options.policy_token,
            &new.job_type,
            &new.queue,
            tenant.as_deref(),
        )
        .await?;
        if new.dry_run {
            if let Some(claims) = &token {
                caller
                    .trail()
                    .record_or_refuse(used_event(caller, claims, &new.queue, true))
                    .await?;
            }
            let event = caller
                .event("job.dry_run", Outcome::Success)
                .detail("job_type", new.job_type.clone())
                .detail("queue", new.queue.clone())
                .detail("dry_run", true)
                .detail("action", token.is_some());
            caller.trail().record_or_refuse(event).await?;
            return Ok(Enqueue::DryRun {
                job_type: new.job_type,
                queue: new.queue,
                priority: new.priority,
            });
        }
        // Abuse detection sees each stored submission (not dry runs): spikes and payload
        // floods are refused, all-top-priority floods demoted.
        self.abuse.check_enqueue(caller, &mut new).await?;
        let queue_name = new.queue.clone();
        let block = block_timeout(&rules, options.block_timeout_secs);
        let stored = async {
            let result = self
                .enqueue_bounded(caller, &rules, new, tenant, owner, block)
                .await;
            if let Err(e) = &result {
                self.abuse.audit_limit_refusal(caller, e).await;
            }
            result
        };
        let done = match &token {
            // The token's use is on disk before the job is; a failed enqueue adds a failure
            // record.
            Some(claims) => {
                let used = used_event(caller, claims, &queue_name, false);
                caller.trail().guarded(used, stored).await?
            }
            None => stored.await?,
        };
        if let Some(dropped) = &done.dropped {
            metrics::counter!(crate::metrics::BACKPRESSURE_DROPPED).increment(1);
            let event = caller
                .event("backpressure.dropped", Outcome::Success)
                .detail("job_id", dropped.id.to_string())
                .detail("queue", dropped.queue.clone())
                .detail("for_job_id", done.job.id.to_string());
            caller.trail().emit(event).await;
        }
        Ok(Enqueue::Stored(Box::new(done)))
    }

    /// Stores a job under its queue's bound and the caller's quotas. A full `block` queue
    /// holds the enqueue inside the queue engine until there is room (first come, first
    /// served) or the block timeout passes; then, like a `reject` queue, 429 `queue_full`
    /// with the depth headers. A held enqueue whose credential is revoked or expires
    /// meanwhile is answered 401 (audited) and is never stored.
    async fn enqueue_bounded(
        &self,
        caller: &Caller,
        rules: &Rules,
        new: NewJob,
        tenant: Option<String>,
        owner: String,
        block: Duration,
    ) -> Result<Enqueued, ApiError> {
        let retry_after = rules.backpressure.retry_after_secs;
        match self
            .queue
            .enqueue_blocking(
                new,
                tenant,
                Some(owner),
                rules.limits(),
                Some((block, caller.standing())),
            )
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

    /// Enqueues jobs all in one transaction or none. Each envelope gets every check of a
    /// single enqueue; the first refusal answers for the whole batch with the job's index in
    /// `details.index`. Action job types (which need a policy token each) and dry runs are
    /// enqueued one at a time, not in batches.
    pub async fn enqueue_batch(
        &self,
        caller: &Caller,
        items: &[Value],
    ) -> Result<Vec<Job>, ApiError> {
        if items.is_empty() || items.len() > MAX_BATCH_JOBS {
            return Err(ApiError::invalid(
                "jobs",
                format!("jobs must be an array of 1 to {MAX_BATCH_JOBS} job envelopes"),
            ));
        }
        let rules = self.rules.current();
        let mut jobs = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let at = |e: ApiError| e.with_index(index);
            let Prepared {
                mut new,
                tenant,
                owner,
            } = prepare(caller, &rules, item, self.queue.clock().now_ms())
                .await
                .map_err(at)?;
            if self.actions.is_action(&new.job_type) {
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
            self.abuse
                .check_enqueue(caller, &mut new)
                .await
                .map_err(at)?;
            jobs.push((new, tenant, Some(owner)));
        }
        let count = jobs.len();
        let stored = match self.queue.enqueue_batch(jobs, rules.limits()).await {
            Ok(stored) => stored,
            Err(e) => {
                let e = ApiError::from(e).with_retry_after(rules.backpressure.retry_after_secs);
                self.abuse.audit_limit_refusal(caller, &e).await;
                return Err(e);
            }
        };
        let event = caller
            .event("job.batch_enqueued", Outcome::Success)
            .detail("count", count);
        caller.trail().emit(event).await;
        Ok(stored)
    }

    /// A job the caller may inspect.
    pub async fn info(&self, caller: &Caller, id: JobId) -> Result<Job, ApiError> {
        caller.job(&self.queue, id, Permission::Inspect).await
    }

    /// Cancels a job; returns it and the state it was in.
    pub async fn cancel(&self, caller: &Caller, id: JobId) -> Result<(Job, JobState), ApiError> {
        caller.job(&self.queue, id, Permission::Cancel).await?;
        let (job, previous) = self.queue.cancel(id, caller.tenant.clone()).await?;
        let event = caller
            .event("job.cancelled", Outcome::Success)
            .detail("job_id", job.id.to_string())
            .detail("queue", job.queue.clone())
            .detail("previous_state", previous.as_str());
        caller.trail().emit(event).await;
        Ok((job, previous))
    }

    /// Deletes every job (the testing-only reset route), recorded first (no record, no reset).
    pub async fn reset(&self, caller: &Caller) -> Result<(), ApiError> {
        let event = caller.event("admin.reset", Outcome::Success);
        caller.trail().guarded(event, self.queue.reset()).await?;
        tracing::warn!(principal = %caller.principal.display_id(), "all job state reset through the testing route");
        Ok(())
    }

    /// Makes a pending job available: the caller's own, or one it may manage (cancel) in
    /// that queue, as an operator or an administrator may. Another principal's job is 404
    /// to a caller that cannot see it and 403 to one that can (audited either way).
    pub async fn activate(&self, caller: &Caller, id: JobId) -> Result<Job, ApiError> {
        let job = caller.job(&self.queue, id, Permission::Enqueue).await?;
        if job.owner.as_deref() != Some(caller.principal.id()) {
            caller.allow_job(Permission::Cancel, &job).await?;
        }
        Ok(self.queue.activate(id, caller.tenant.clone()).await?)
    }
}

/// How long a `block` queue may hold a request: what the caller asked for, otherwise the
/// configured maximum, never more than it.
fn block_timeout(rules: &Rules, asked: Option<u64>) -> Duration {
    Duration::from_secs(block_timeout_secs(asked, rules.backpressure.max_block_secs))
}

/// The block timeout in seconds: `asked`, capped at `max`; `max` when none was asked for.
#[must_use]
pub fn block_timeout_secs(asked: Option<u64>, max: u64) -> u64 {
    asked.unwrap_or(max).min(max)
}

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
async fn check_job_rules(
    caller: &Caller,
    rules: &Rules,
    new: &NewJob,
    args: &Value,
) -> Result<(), ApiError> {
    if !rules.allowlist.allows(&new.job_type) {
        let event = caller
            .event("job.type_refused", Outcome::Failure)
            .detail("job_type", new.job_type.clone())
            .detail("queue", new.queue.clone());
        caller.trail().emit(event).await;
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

/// Reads one envelope and applies every check of an enqueue except the policy token: reserved
/// queues, the envelope, the queue ACL, the configured rules, `meta.tenant_id` and the owner.
async fn prepare(
    caller: &Caller,
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
    check_job_rules(caller, rules, &new, &body["args"]).await?;
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
