//! Workers: fetch (with an optional long poll), ack, nack, heartbeat. Every lease is bound to
//! the caller's principal, tenant and `worker_id`; the queue refuses anyone else, and a job of
//! another tenant does not exist for the caller. Fetch checks the dequeue permission on every
//! queue named and the caller's running-job and tenant quotas; a long poll waits inside the
//! queue engine, on the condition that the caller's credential still stands.

use std::time::Duration;

use super::abuse::Abuse;
use super::Caller;
use crate::auth::Permission;
use crate::error::ApiError;
use crate::job::{Job, JobId, Payload};
use crate::limiter::LimiterHandle;
use crate::queue::{
    AckRequest, Failure, FetchRequest, HeartbeatOutcome, HeartbeatRequest, NackRequest, QueueError,
    QueueHandle,
};
use crate::rules::RulesHandle;

/// The worker service.
#[derive(Clone)]
pub struct Workers {
    queue: QueueHandle,
    rules: RulesHandle,
    limiter: LimiterHandle,
    abuse: Abuse,
    /// Most jobs one fetch may claim (`[queue] max_fetch_count`).
    max_fetch_count: usize,
}

/// A fetch, as the worker asked for it.
#[derive(Clone, Debug)]
pub struct FetchAsk {
    pub queues: Vec<String>,
    /// How many jobs (1 by default, at most `[queue] max_fetch_count`).
    pub count: Option<u64>,
    pub worker_id: Option<String>,
    pub visibility_timeout_ms: Option<u64>,
    /// How long to wait for a job (none by default; capped at `[limits] max_fetch_wait_ms`).
    pub wait_ms: Option<u64>,
}

impl Workers {
    #[must_use]
    pub fn new(
        queue: QueueHandle,
        rules: RulesHandle,
        limiter: LimiterHandle,
        abuse: Abuse,
        max_fetch_count: usize,
    ) -> Self {
        Self {
            queue,
            rules,
            limiter,
            abuse,
            max_fetch_count,
        }
    }

    /// The server's time, for the heartbeat's answer.
    #[must_use]
    pub fn now(&self) -> crate::clock::Millis {
        self.queue.clock().now_ms()
    }

    /// Claims jobs, waiting for them up to `wait_ms` (answered as soon as a job can be
    /// claimed; waits are served in the order they began). A wait whose credential is revoked
    /// or expires meanwhile is answered 401 and is never handed a job; a principal's
    /// concurrent waits are capped.
    pub async fn fetch(&self, caller: &Caller, ask: FetchAsk) -> Result<Vec<Job>, ApiError> {
        for q in &ask.queues {
            caller.allow(Permission::Dequeue, q).await?;
        }
        let max = self.max_fetch_count;
        let count = match ask.count {
            None => 1,
            Some(c) => usize::try_from(c)
                .ok()
                .filter(|c| (1..=max).contains(c))
                .ok_or_else(|| {
                    ApiError::invalid("count", format!("count must be an integer from 1 to {max}"))
                })?,
        };
        let cap_ms = self.limiter.config().max_fetch_wait_ms;
        let wait = Duration::from_millis(ask.wait_ms.unwrap_or(0).min(cap_ms));
        let quotas = self.rules.current().quotas.clone();
        let req = FetchRequest {
            queues: ask.queues,
            count,
            holder: caller.holder(ask.worker_id),
            visibility_timeout_ms: ask.visibility_timeout_ms,
            max_running: quotas.max_running_jobs_per_principal,
            max_tenant_active: quotas.max_active_jobs_per_tenant,
        };
        match self.queue.fetch_wait(req, wait, caller.standing()).await {
            Ok(jobs) => Ok(jobs),
            Err(QueueError::CredentialInvalid) => {
                caller.audit_credential_gone().await;
                Err(ApiError::from(QueueError::CredentialInvalid))
            }
            Err(e) => {
                let e = ApiError::from(e);
                self.abuse.audit_limit_refusal(caller, &e).await;
                Err(e)
            }
        }
    }

    /// Completes a job the caller holds.
    pub async fn ack(
        &self,
        caller: &Caller,
        id: JobId,
        worker_id: Option<String>,
        attempt: Option<u32>,
        result: Option<Payload>,
    ) -> Result<Job, ApiError> {
        let req = AckRequest {
            id,
            holder: caller.holder(worker_id),
            attempt,
            result,
        };
        caller.scoped(self.queue.ack(req).await).await
    }

    /// Fails a job the caller holds (retried, or discarded after its last attempt). Abuse
    /// detection watches for retry storms.
    pub async fn nack(
        &self,
        caller: &Caller,
        id: JobId,
        worker_id: Option<String>,
        attempt: Option<u32>,
        failure: Failure,
        requeue: bool,
    ) -> Result<Job, ApiError> {
        let req = NackRequest {
            id,
            holder: caller.holder(worker_id),
            attempt,
            failure,
            requeue,
        };
        let job = caller.scoped(self.queue.nack(req).await).await?;
        self.abuse.note_nack(caller).await;
        Ok(job)
    }

    /// Extends the leases the caller holds.
    pub async fn heartbeat(
        &self,
        caller: &Caller,
        worker_id: Option<String>,
        job_ids: Vec<JobId>,
        visibility_timeout_ms: Option<u64>,
    ) -> Result<HeartbeatOutcome, ApiError> {
        Ok(self
            .queue
            .heartbeat(HeartbeatRequest {
                holder: caller.holder(worker_id),
                job_ids,
                visibility_timeout_ms,
            })
            .await?)
    }
}
