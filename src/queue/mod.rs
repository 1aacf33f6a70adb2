//! The queue actor: owns the job state machine and is the only writer of the job table. See
//! [`actor`] for the group-commit loop; [`QueueHandle`] is how everything else talks to it.

mod actor;
pub mod bounds;
pub mod error;
pub mod events;
pub mod msg;
pub mod sched;

use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

pub use error::QueueError;
pub use events::{Event, EventFilter};
pub use msg::{
    AckRequest, BoundInfo, Enqueued, Failure, FetchRequest, HeartbeatOutcome, HeartbeatRequest,
    Holder, NackRequest, Page, QueueStats, RewrapStep, Scope,
};
pub use sched::QueueSummary;

use crate::job::envelope::NewJob;
use crate::job::{Job, JobId, JobState};
use crate::store::Store;
use crate::vault::VaultKeys;
use msg::{Msg, Reply};

/// Queue behaviour from the config.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Most messages applied in one write transaction.
    pub max_group: usize,
    /// Mailbox size; senders wait when it is full (backpressure, never loss).
    pub mailbox: usize,
    /// Events kept for `GET /ojs/v1/events`.
    pub events_capacity: usize,
    /// Honour `test_directive` on heartbeats (conformance runs only).
    pub honour_test_directives: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_group: 1024,
            mailbox: 8192,
            events_capacity: 10_000,
            honour_test_directives: false,
        }
    }
}

/// A cheap, cloneable handle to the queue actor.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::Sender<Msg>,
    keys: VaultKeys,
}

impl QueueHandle {
    /// Loads the indexes from the store and starts the actor on its own thread. The thread ends
    /// when every handle is dropped; join it to be sure the last commit is done.
    pub fn spawn(
        store: Store,
        keys: VaultKeys,
        config: QueueConfig,
    ) -> Result<(Self, JoinHandle<()>), QueueError> {
        let (tx, rx) = mpsc::channel(config.mailbox.max(1));
        let actor = actor::QueueActor::load(store, keys.clone(), config)?;
        let thread = std::thread::Builder::new()
            .name("bulwark-queue".into())
            .spawn(move || actor.run(rx))
            .map_err(|_| QueueError::Unavailable)?;
        Ok((Self { tx, keys }, thread))
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Msg) -> Result<T, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| QueueError::Unavailable)?;
        rx.await.map_err(|_| QueueError::Unavailable)?
    }

    /// Enqueues a job for `tenant`, owned by `owner`, with no quota and no default bound;
    /// returns once it is durably on disk.
    pub async fn enqueue(
        &self,
        job: NewJob,
        tenant: Option<String>,
        owner: Option<String>,
    ) -> Result<Job, QueueError> {
        self.enqueue_with(job, tenant, owner, bounds::Limits::default())
            .await
            .map(|e| e.job)
    }

    /// Enqueues a job under the queue's bound and the quotas of `limits`.
    pub async fn enqueue_with(
        &self,
        mut job: NewJob,
        tenant: Option<String>,
        owner: Option<String>,
        limits: bounds::Limits,
    ) -> Result<Enqueued, QueueError> {
        // The id is fixed here so the args and meta can be sealed on the caller's thread (the
        // associated data names the job); the queue thread then only stores them.
        let id = *job.id.get_or_insert_with(JobId::generate);
        let key = crate::vault::envelope::preseal(
            &self.keys.ring(),
            id,
            tenant.as_deref(),
            &job.args,
            job.meta.as_ref(),
        )
        .ok()
        .map(std::sync::Arc::new);
        self.call(|reply| Msg::Enqueue {
            job: Box::new(job),
            tenant,
            owner,
            limits,
            key,
            reply,
        })
        .await
    }

    /// Enqueues every job (each with its tenant and owner) in one transaction, or none: a
    /// duplicate id, a quota or a full queue refuses the whole batch. Full `drop_oldest`
    /// queues refuse batches too.
    pub async fn enqueue_batch(
        &self,
        jobs: Vec<(NewJob, Option<String>, Option<String>)>,
        limits: bounds::Limits,
    ) -> Result<Vec<Job>, QueueError> {
        self.call(|reply| Msg::EnqueueBatch {
            jobs,
            limits,
            reply,
        })
        .await
    }

    /// Sets a queue's bound (kept in the database), or removes it with `None`.
    pub async fn set_bound(
        &self,
        tenant: Option<String>,
        queue: String,
        bound: Option<bounds::QueueBound>,
    ) -> Result<(), QueueError> {
        self.call(|reply| Msg::SetBound {
            tenant,
            queue,
            bound,
            reply,
        })
        .await
    }

    /// A queue's bound (configured or the default) and its depth.
    pub async fn bound(
        &self,
        tenant: Option<String>,
        queue: String,
        default_max_depth: u64,
    ) -> Result<BoundInfo, QueueError> {
        self.call(|reply| Msg::Bound {
            tenant,
            queue,
            default_max_depth,
            reply,
        })
        .await
    }

    /// Claims up to `count` ready jobs from the queues, in the order given.
    pub async fn fetch(&self, req: FetchRequest) -> Result<Vec<Job>, QueueError> {
        self.call(|reply| Msg::Fetch { req, reply }).await
    }

    /// Completes an active job held by the caller.
    pub async fn ack(&self, req: AckRequest) -> Result<Job, QueueError> {
        self.call(|reply| Msg::Ack { req, reply }).await
    }

    /// Fails the current attempt of an active job held by the caller.
    pub async fn nack(&self, req: NackRequest) -> Result<Job, QueueError> {
        self.call(|reply| Msg::Nack {
            req: Box::new(req),
            reply,
        })
        .await
    }

    /// Extends the caller's leases.
    pub async fn heartbeat(&self, req: HeartbeatRequest) -> Result<HeartbeatOutcome, QueueError> {
        self.call(|reply| Msg::Heartbeat { req, reply }).await
    }

    /// Cancels a job that is not yet terminal; returns it with its previous state.
    pub async fn cancel(&self, id: JobId, scope: Scope) -> Result<(Job, JobState), QueueError> {
        self.call(|reply| Msg::Cancel { id, scope, reply }).await
    }

    /// Makes a pending job available.
    pub async fn activate(&self, id: JobId, scope: Scope) -> Result<Job, QueueError> {
        self.call(|reply| Msg::Activate { id, scope, reply }).await
    }

    /// Reads a job.
    pub async fn get(&self, id: JobId, scope: Scope) -> Result<Job, QueueError> {
        self.call(|reply| Msg::Get { id, scope, reply }).await
    }

    /// Lists the dead letter queue, newest first.
    pub async fn dead_letter(
        &self,
        scope: Scope,
        queue: Option<String>,
        limit: usize,
        offset: usize,
    ) -> Result<Page<Job>, QueueError> {
        self.call(|reply| Msg::DeadLetterList {
            scope,
            queue,
            limit,
            offset,
            reply,
        })
        .await
    }

    /// Puts a dead-letter job back to `available` with its attempts reset.
    pub async fn retry_dead_letter(&self, id: JobId, scope: Scope) -> Result<Job, QueueError> {
        self.call(|reply| Msg::DeadLetterRetry { id, scope, reply })
            .await
    }

    /// Deletes a dead-letter job for good.
    pub async fn delete_dead_letter(&self, id: JobId, scope: Scope) -> Result<(), QueueError> {
        self.call(|reply| Msg::DeadLetterDelete { id, scope, reply })
            .await
    }

    /// Every known queue of the scope's tenant with its counts.
    pub async fn queues(&self, scope: Scope) -> Result<Vec<QueueSummary>, QueueError> {
        self.call(|reply| Msg::Queues { scope, reply }).await
    }

    /// Recent lifecycle events.
    pub async fn events(&self, filter: EventFilter) -> Result<Vec<Event>, QueueError> {
        self.call(|reply| Msg::Events { filter, reply }).await
    }

    /// Totals for health and metrics.
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.call(|reply| Msg::Stats { reply }).await
    }

    /// Deletes every job (testing mode only; the HTTP layer guards it).
    pub async fn reset(&self) -> Result<(), QueueError> {
        self.call(|reply| Msg::Reset { reply }).await
    }

    /// Re-wraps the data keys of up to `batch` records after `after` (job id order) with the
    /// active KEK, in one turn beside other traffic.
    pub async fn rewrap(
        &self,
        after: Option<u128>,
        batch: usize,
    ) -> Result<RewrapStep, QueueError> {
        self.call(|reply| Msg::Rewrap {
            after,
            batch,
            reply,
        })
        .await
    }

    /// From now on heartbeats answer `quiet`: the server is shutting down.
    pub async fn drain(&self) {
        let _ = self.tx.send(Msg::Drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;
    use crate::job::envelope::{parse_new_job, EnvelopeRules};
    use serde_json::json;

    fn new_job(priority: i32, tag: u32) -> NewJob {
        let body =
            json!({"type": "t.x", "args": [tag], "options": {"queue": "q", "priority": priority}});
        parse_new_job(&body, &EnvelopeRules::default(), now_ms()).unwrap()
    }

    fn test_keys() -> VaultKeys {
        let kek = crate::vault::keyring::Kek::new("test", &[9; 32], None);
        VaultKeys::fixed(crate::vault::KeyRing::new(vec![kek], None).unwrap())
    }

    fn holder() -> Holder {
        Holder {
            principal: "p".into(),
            worker_id: Some("w".into()),
            tenant: None,
        }
    }

    async fn fetch_one(queue: &QueueHandle) -> Option<Job> {
        let req = FetchRequest {
            queues: vec!["q".into()],
            count: 1,
            holder: holder(),
            visibility_timeout_ms: None,
            max_running: 0,
            max_tenant_active: 0,
        };
        queue.fetch(req).await.unwrap().pop()
    }

    #[tokio::test]
    async fn order_and_leases_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (queue, thread) =
            QueueHandle::spawn(store.clone(), test_keys(), QueueConfig::default()).unwrap();
        let low = queue.enqueue(new_job(0, 1), None, None).await.unwrap();
        let high = queue.enqueue(new_job(10, 2), None, None).await.unwrap();
        let low2 = queue.enqueue(new_job(0, 3), None, None).await.unwrap();
        let low3 = queue.enqueue(new_job(0, 4), None, None).await.unwrap();
        // Higher priority first, then FIFO.
        assert_eq!(fetch_one(&queue).await.unwrap().id, high.id);
        let active = fetch_one(&queue).await.unwrap();
        assert_eq!(active.id, low.id);
        drop(queue);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap()
            .unwrap();

        // A new actor over the same file rebuilds the same order and the lease.
        let (queue, _thread) =
            QueueHandle::spawn(store, test_keys(), QueueConfig::default()).unwrap();
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.totals.available, stats.totals.active), (2, 2));
        assert_eq!(fetch_one(&queue).await.unwrap().id, low2.id);
        assert_eq!(fetch_one(&queue).await.unwrap().id, low3.id);
        assert!(fetch_one(&queue).await.is_none());
        let acked = queue
            .ack(AckRequest {
                id: active.id,
                holder: holder(),
                attempt: Some(1),
                result: None,
            })
            .await
            .unwrap();
        assert_eq!(acked.state, JobState::Completed);
    }

    #[tokio::test]
    async fn a_failed_attempt_retries_then_exhausts_into_the_dead_letter_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (queue, _thread) =
            QueueHandle::spawn(store, test_keys(), QueueConfig::default()).unwrap();
        let body = json!({"type": "t.x", "args": [], "options": {"queue": "q", "retry": {
            "max_attempts": 2, "initial_interval": "PT0.05S", "jitter": false, "on_exhaustion": "dead_letter"}}});
        let job = queue
            .enqueue(
                parse_new_job(&body, &EnvelopeRules::default(), now_ms()).unwrap(),
                None,
                None,
            )
            .await
            .unwrap();
        let failure = || Failure {
            code: "handler_error".into(),
            message: "boom".into(),
            error_type: None,
            retryable: None,
            details: None,
        };
        fetch_one(&queue).await.unwrap();
        let nacked = queue
            .nack(NackRequest {
                id: job.id,
                holder: holder(),
                attempt: None,
                failure: failure(),
                requeue: false,
            })
            .await
            .unwrap();
        assert_eq!(
            (nacked.state, nacked.retry_delay_ms),
            (JobState::Retryable, Some(50))
        );
        assert!(fetch_one(&queue).await.is_none(), "not due yet");
        tokio::time::sleep(std::time::Duration::from_millis(80)).await;
        assert_eq!(fetch_one(&queue).await.unwrap().attempt, 2);
        let nacked = queue
            .nack(NackRequest {
                id: job.id,
                holder: holder(),
                attempt: Some(2),
                failure: failure(),
                requeue: false,
            })
            .await
            .unwrap();
        assert_eq!(nacked.state, JobState::Discarded);
        assert!(nacked.dead_letter);
        assert_eq!(nacked.errors.len(), 2);
        let page = queue.dead_letter(None, None, 10, 0).await.unwrap();
        assert_eq!(page.total, 1);
        let retried = queue.retry_dead_letter(job.id, None).await.unwrap();
        assert_eq!((retried.state, retried.attempt), (JobState::Available, 0));
        assert_eq!(queue.dead_letter(None, None, 10, 0).await.unwrap().total, 0);
    }
}
