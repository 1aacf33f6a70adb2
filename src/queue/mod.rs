//! The queue engine: the OJS job state machine and the only writer of the jobs.
//!
//! - [`core`]: the pure state machine over the in-memory indexes ([`sched`]): time passed
//!   in, writes and events passed out;
//! - [`seam`]: the narrow storage trait it reads and commits through (redb implements it in
//!   [`crate::store::jobs`]);
//! - [`actor`]: the thin loop around the core (group commit, long-poll [`waiters`]);
//! - [`view`]: what readers see without waiting for a turn;
//! - [`QueueHandle`]: how everything else talks to it.

mod actor;
pub mod bounds;
pub mod core;
pub mod error;
pub mod events;
#[cfg(test)]
mod model;
pub mod msg;
pub mod sched;
pub mod seam;
pub mod view;
pub mod waiters;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use actor::QueueExit;
pub use error::QueueError;
pub use events::{Event, EventFilter};
pub use msg::{
    AckRequest, BoundInfo, Enqueued, Failure, FetchRequest, HeartbeatOutcome, HeartbeatRequest,
    Holder, NackRequest, Page, QueueStats, RewrapStep, Scope, StillValid,
};
pub use sched::QueueSummary;

use crate::clock::Clock;
use crate::job::envelope::NewJob;
use crate::job::{Job, JobId, JobState};
use crate::store::Store;
use crate::vault::VaultKeys;
use msg::{Msg, Reply, Wait};
use seam::JobStore;
use view::Shared;
use waiters::WaitPermits;

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
    /// Long-poll fetches one principal may have waiting at once.
    pub max_waits_per_principal: usize,
    /// Long-poll fetches waiting at once, in all.
    pub max_waits: usize,
    /// Where the engine reads the time.
    pub clock: Clock,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_group: 1024,
            mailbox: 8192,
            events_capacity: 10_000,
            honour_test_directives: false,
            max_waits_per_principal: 10,
            max_waits: 10_000,
            clock: Clock::system(),
        }
    }
}

/// A cheap, cloneable handle to the queue engine.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::Sender<Msg>,
    keys: VaultKeys,
    store: Arc<dyn JobStore>,
    shared: Arc<Shared>,
    permits: WaitPermits,
    clock: Clock,
}

impl QueueHandle {
    /// Loads the indexes from the redb store and starts the actor on its own thread. The thread
    /// ends when every handle is dropped; join it to be sure the last commit is done.
    pub fn spawn(
        store: Store,
        keys: VaultKeys,
        config: QueueConfig,
    ) -> Result<(Self, JoinHandle<QueueExit>), QueueError> {
        let jobs = crate::store::jobs::RedbJobs::new(store, keys.clone());
        Self::spawn_on(Arc::new(jobs), keys, config)
    }

    /// Starts the engine over any store behind the seam.
    pub fn spawn_on(
        store: Arc<dyn JobStore>,
        keys: VaultKeys,
        config: QueueConfig,
    ) -> Result<(Self, JoinHandle<QueueExit>), QueueError> {
        let (tx, rx) = mpsc::channel(config.mailbox.max(1));
        let shared = Arc::new(Shared::new(config.events_capacity));
        let permits = WaitPermits::new(config.max_waits_per_principal, config.max_waits);
        let clock = config.clock.clone();
        let actor = actor::QueueActor::load(store.clone(), shared.clone(), config)?;
        let thread = std::thread::Builder::new()
            .name("bulwark-queue".into())
            .spawn(move || actor.run(rx))
            .map_err(|_| QueueError::Unavailable)?;
        Ok((
            Self {
                tx,
                keys,
                store,
                shared,
                permits,
                clock,
            },
            thread,
        ))
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
        job: NewJob,
        tenant: Option<String>,
        owner: Option<String>,
        limits: bounds::Limits,
    ) -> Result<Enqueued, QueueError> {
        self.enqueue_blocking(job, tenant, owner, limits, None)
            .await
    }

    /// Enqueues a job under the queue's bound and the quotas of `limits`; when the queue is
    /// full and its strategy is `block`, the engine holds the enqueue until there is room (the
    /// first blocked enqueue of a queue gets the first free place) or the wait in `block` has
    /// passed, then refuses it with [`QueueError::QueueFull`]. A held enqueue whose credential
    /// stops standing meanwhile is refused with [`QueueError::CredentialInvalid`] and never
    /// stored.
    pub async fn enqueue_blocking(
        &self,
        mut job: NewJob,
        tenant: Option<String>,
        owner: Option<String>,
        limits: bounds::Limits,
        block: Option<(Duration, StillValid)>,
    ) -> Result<Enqueued, QueueError> {
        let block = block
            .filter(|(wait, _)| !wait.is_zero())
            .map(|(wait, valid)| Wait {
                until: self.until(wait),
                valid,
            });
        // The id is fixed here so the args and meta can be sealed on the caller's thread (the
        // associated data names the job); the queue thread then only stores them.
        let id = *job.id.get_or_insert_with(JobId::generate);
        let key = crate::vault::sealed::preseal(
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
            block,
            reply,
        })
        .await
    }

    /// The engine time `wait` from now.
    fn until(&self, wait: Duration) -> crate::clock::Millis {
        self.clock
            .now_ms()
            .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX))
    }

    /// Enqueues every job (each with its tenant and owner) in one transaction, or none: a
    /// duplicate id, a quota or a full queue refuses the whole batch. Full `drop_oldest`
    /// queues refuse batches too.
    pub async fn enqueue_batch(
        &self,
        mut jobs: Vec<(NewJob, Option<String>, Option<String>)>,
        limits: bounds::Limits,
    ) -> Result<Vec<Job>, QueueError> {
        for (job, _, _) in &mut jobs {
            job.id.get_or_insert_with(JobId::generate);
        }
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

    /// A queue's bound (configured or the default) and its depth, as last published.
    pub async fn bound(
        &self,
        tenant: Option<String>,
        queue: String,
        default_max_depth: u64,
    ) -> Result<BoundInfo, QueueError> {
        Ok(self
            .shared
            .model()
            .bound(&(tenant, queue), default_max_depth))
    }

    /// Claims up to `count` ready jobs from the queues, in the order given.
    pub async fn fetch(&self, req: FetchRequest) -> Result<Vec<Job>, QueueError> {
        self.call(|reply| Msg::Fetch {
            req,
            wait: None,
            reply,
        })
        .await
    }

    /// Claims ready jobs, or waits up to `wait` for one to become available (a long poll):
    /// the engine hands it over the moment it is, in the order the waits began. `valid` is
    /// asked before a job is handed over and when the wait ends; once it says no, the answer
    /// is [`QueueError::CredentialInvalid`]. A principal's concurrent waits are capped.
    pub async fn fetch_wait(
        &self,
        req: FetchRequest,
        wait: Duration,
        valid: StillValid,
    ) -> Result<Vec<Job>, QueueError> {
        if wait.is_zero() {
            return self.fetch(req).await;
        }
        let _permit = self.permits.acquire(&req.holder.principal)?;
        let until = self.until(wait);
        self.call(|reply| Msg::Fetch {
            req,
            wait: Some(Wait { until, valid }),
            reply,
        })
        .await
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

    /// Reads a job from a read transaction of its own: never queued behind a commit.
    pub async fn get(&self, id: JobId, scope: Scope) -> Result<Job, QueueError> {
        let reader = self.store.reader()?;
        core::load_scoped(reader.as_ref(), id, scope.as_deref())
    }

    /// Lists the dead letter queue, newest first (ids from the published read model, records
    /// from one read transaction).
    pub async fn dead_letter(
        &self,
        scope: Scope,
        queue: Option<String>,
        limit: usize,
        offset: usize,
    ) -> Result<Page<Job>, QueueError> {
        let ids = self
            .shared
            .model()
            .dead_letter(scope.as_deref(), queue.as_deref());
        let total = ids.len();
        let store = self.store.clone();
        // A page of records to read and open: blocking work, off the HTTP worker.
        let items = tokio::task::spawn_blocking(move || {
            let reader = store.reader()?;
            let mut items = Vec::new();
            for id in ids.into_iter().skip(offset).take(limit) {
                // One unreadable job does not hide the others (it is counted and logged), and
                // a job deleted since the model was published is simply gone.
                match reader.job(id) {
                    Ok(Some(job)) if job.dead_letter => items.push(job),
                    Ok(_) | Err(QueueError::Unreadable(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(items)
        })
        .await
        .map_err(|_| QueueError::Unavailable)??;
        Ok(Page { items, total })
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

    /// Every known queue of the scope's tenant with its counts, as last published.
    pub async fn queues(&self, scope: Scope) -> Result<Vec<QueueSummary>, QueueError> {
        Ok(self.shared.model().queues(scope.as_deref()))
    }

    /// Recent lifecycle events.
    pub async fn events(&self, filter: EventFilter) -> Result<Vec<Event>, QueueError> {
        Ok(self.shared.events(&filter))
    }

    /// Totals for health and metrics, as last published.
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let model = self.shared.model();
        Ok(QueueStats {
            totals: model.totals(),
            queues: model.queue_count(),
        })
    }

    /// The clock the engine runs on: handlers read it for the times they stamp on a job (a
    /// relative `delay_until`, a fetch's server time), so those agree with the engine's.
    #[must_use]
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Long-poll fetches waiting now.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.permits.open()
    }

    /// Deletes every job (testing mode only; the HTTP layer guards it).
    pub async fn reset(&self) -> Result<(), QueueError> {
        self.call(|reply| Msg::Reset { reply }).await
    }

    /// Re-wraps the data keys of up to `batch` records after `after` (job id order) with the
    /// active KEK, between two turns.
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

    /// Asks the engine to look at the clock now (tests that move a manual clock).
    pub async fn tick(&self) {
        let _ = self.tx.send(Msg::Tick).await;
    }

    /// From now on heartbeats answer `quiet`: the server is shutting down.
    pub async fn drain(&self) {
        let _ = self.tx.send(Msg::Drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    fn now_ms() -> crate::clock::Millis {
        Clock::system().now_ms()
    }
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

    /// A queue on a fresh store whose engine runs on a manual clock.
    fn manual_queue() -> (QueueHandle, crate::clock::ManualClock, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (clock, hand) = Clock::manual(now_ms());
        let config = QueueConfig {
            clock,
            ..QueueConfig::default()
        };
        let (queue, _thread) = QueueHandle::spawn(store, test_keys(), config).unwrap();
        (queue, hand, dir)
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

    /// A record that no longer decodes (a torn write, a bit flipped on disk, a record from a
    /// newer version) once kept the queue from starting: the index rebuild failed on it. It is
    /// set aside now, counted like an unreadable job, and every other job is served.
    #[tokio::test]
    async fn a_corrupt_record_is_set_aside_and_the_queue_still_starts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (queue, thread) =
            QueueHandle::spawn(store.clone(), test_keys(), QueueConfig::default()).unwrap();
        let good = queue.enqueue(new_job(0, 1), None, None).await.unwrap();
        drop(queue);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap()
            .unwrap();
        let bad = JobId::generate();
        for garbage in [&b""[..], b"\x02", b"\x02\x81\xa3job\xc0", b"\x09junk"] {
            store
                .jobs_write(|txn| {
                    let mut t = txn
                        .open_table(crate::store::tables::JOBS)
                        .map_err(crate::store::StoreError::from)?;
                    t.insert(bad.as_u128(), garbage)
                        .map_err(crate::store::StoreError::from)?;
                    Ok::<_, crate::store::StoreError>(())
                })
                .unwrap();
            let (queue, _thread) =
                QueueHandle::spawn(store.clone(), test_keys(), QueueConfig::default()).unwrap();
            assert_eq!(queue.stats().await.unwrap().totals.available, 1);
            assert!(matches!(
                queue.get(bad, None).await,
                Err(QueueError::Unreadable(id)) if id == bad
            ));
            assert_eq!(queue.get(good.id, None).await.unwrap().id, good.id);
            let status = crate::vault::scan(&store, &test_keys()).unwrap();
            assert_eq!((status.total_jobs, status.unreadable_jobs), (2, 1));
            drop(queue);
            store
                .jobs_write(|txn| {
                    let mut t = txn
                        .open_table(crate::store::tables::JOBS)
                        .map_err(crate::store::StoreError::from)?;
                    t.remove(bad.as_u128())
                        .map_err(crate::store::StoreError::from)?;
                    Ok::<_, crate::store::StoreError>(())
                })
                .unwrap();
        }
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
        let exit = tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap()
            .unwrap();
        // Four enqueues and two fetches, each its own durable commit; nothing failed.
        assert_eq!((exit.commits, exit.failed_turns, exit.released), (6, 0, 0));

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
        let (queue, hand, _dir) = manual_queue();
        let body = json!({"type": "t.x", "args": [], "options": {"queue": "q", "retry": {
            "max_attempts": 2, "initial_interval": "PT0.05S", "jitter": false, "on_exhaustion": "dead_letter"}}});
        let job = queue
            .enqueue(
                parse_new_job(&body, &EnvelopeRules::default(), hand.now_ms()).unwrap(),
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
        hand.advance(49);
        assert!(fetch_one(&queue).await.is_none(), "not due yet");
        hand.advance(1);
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

    fn fetch_req(principal: &str) -> FetchRequest {
        FetchRequest {
            queues: vec!["q".into()],
            count: 1,
            holder: Holder {
                principal: principal.into(),
                worker_id: None,
                tenant: None,
            },
            visibility_timeout_ms: None,
            max_running: 0,
            max_tenant_active: 0,
        }
    }

    fn always() -> StillValid {
        StillValid(std::sync::Arc::new(|_| true))
    }

    async fn waiting(queue: &QueueHandle, n: usize) {
        for _ in 0..500 {
            if queue.waiting() == n {
                // The permit is taken before the wait reaches the engine: give it a turn.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("{n} long-polls never waited");
    }

    #[tokio::test]
    async fn long_polls_are_handed_jobs_in_the_order_they_began_and_time_out_empty() {
        let (queue, hand, _dir) = manual_queue();
        let wait = std::time::Duration::from_secs(30);
        let first = tokio::spawn({
            let queue = queue.clone();
            async move { queue.fetch_wait(fetch_req("a"), wait, always()).await }
        });
        waiting(&queue, 1).await;
        let second = tokio::spawn({
            let queue = queue.clone();
            async move { queue.fetch_wait(fetch_req("b"), wait, always()).await }
        });
        waiting(&queue, 2).await;
        let job = queue.enqueue(new_job(0, 1), None, None).await.unwrap();
        let got = first.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, job.id, "the first waiter gets the job");
        assert_eq!(got[0].lease.as_ref().unwrap().principal, "a");
        assert!(!second.is_finished(), "the second keeps waiting");
        // Its wait ends on the engine's clock, not the wall clock.
        hand.advance(30_000);
        queue.tick().await;
        assert!(second.await.unwrap().unwrap().is_empty());
        assert_eq!(queue.waiting(), 0);
    }

    #[tokio::test]
    async fn a_long_poll_whose_credential_went_bad_is_refused_and_handed_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (queue, _thread) =
            QueueHandle::spawn(store, test_keys(), QueueConfig::default()).unwrap();
        let revoked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let valid = StillValid(std::sync::Arc::new({
            let revoked = revoked.clone();
            move |_| !revoked.load(std::sync::atomic::Ordering::SeqCst)
        }));
        let poll = tokio::spawn({
            let queue = queue.clone();
            async move {
                queue
                    .fetch_wait(fetch_req("w"), std::time::Duration::from_secs(30), valid)
                    .await
            }
        });
        waiting(&queue, 1).await;
        revoked.store(true, std::sync::atomic::Ordering::SeqCst);
        let job = queue.enqueue(new_job(0, 1), None, None).await.unwrap();
        assert!(matches!(
            poll.await.unwrap(),
            Err(QueueError::CredentialInvalid)
        ));
        let still = queue.get(job.id, None).await.unwrap();
        assert_eq!(
            still.state,
            JobState::Available,
            "the job was not handed out"
        );
    }

    #[tokio::test]
    async fn a_principal_may_hold_only_so_many_long_polls() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config = QueueConfig {
            max_waits_per_principal: 2,
            ..QueueConfig::default()
        };
        let (queue, _thread) = QueueHandle::spawn(store, test_keys(), config).unwrap();
        let wait = std::time::Duration::from_secs(30);
        let mut polls = Vec::new();
        for _ in 0..2 {
            let queue = queue.clone();
            polls.push(tokio::spawn(async move {
                queue.fetch_wait(fetch_req("p"), wait, always()).await
            }));
        }
        waiting(&queue, 2).await;
        assert!(matches!(
            queue.fetch_wait(fetch_req("p"), wait, always()).await,
            Err(QueueError::TooManyWaits { .. })
        ));
        // Another principal is not held back, and a plain fetch never counts.
        assert!(queue.fetch(fetch_req("p")).await.unwrap().is_empty());
        queue.enqueue(new_job(0, 1), None, None).await.unwrap();
        queue.enqueue(new_job(0, 2), None, None).await.unwrap();
        for poll in polls {
            assert_eq!(poll.await.unwrap().unwrap().len(), 1);
        }
    }

    #[tokio::test]
    async fn a_full_block_queue_holds_enqueues_in_the_engine_until_there_is_room_or_time_is_up() {
        let (queue, hand, _dir) = manual_queue();
        let bound = bounds::QueueBound {
            max_depth: 1,
            strategy: bounds::Strategy::Block,
            warning_threshold: 0.8,
        };
        queue
            .set_bound(None, "q".into(), Some(bound))
            .await
            .unwrap();
        let first = queue.enqueue(new_job(0, 1), None, None).await.unwrap();
        let limits = bounds::Limits::default();
        let block = Some((std::time::Duration::from_secs(30), always()));
        let held = tokio::spawn({
            let queue = queue.clone();
            let block = block.clone();
            async move {
                queue
                    .enqueue_blocking(new_job(0, 2), None, None, limits, block)
                    .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!held.is_finished(), "the enqueue waits for room");
        let active = fetch_one(&queue).await.unwrap();
        assert_eq!(active.id, first.id);
        queue
            .ack(AckRequest {
                id: active.id,
                holder: holder(),
                attempt: None,
                result: None,
            })
            .await
            .unwrap();
        let stored = held.await.unwrap().unwrap();
        assert_eq!(
            stored.job.state,
            JobState::Available,
            "stored once there was room"
        );

        // The queue is full again: the next one is refused when its time is up.
        let late = tokio::spawn({
            let queue = queue.clone();
            async move {
                queue
                    .enqueue_blocking(new_job(0, 3), None, None, limits, block)
                    .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        hand.advance(30_000);
        queue.tick().await;
        assert!(matches!(
            late.await.unwrap(),
            Err(QueueError::QueueFull {
                depth: 1,
                bound: 1,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_held_enqueue_whose_credential_went_bad_is_refused_and_never_stored() {
        let (queue, _hand, _dir) = manual_queue();
        let bound = bounds::QueueBound {
            max_depth: 1,
            strategy: bounds::Strategy::Block,
            warning_threshold: 0.8,
        };
        queue
            .set_bound(None, "q".into(), Some(bound))
            .await
            .unwrap();
        queue.enqueue(new_job(0, 1), None, None).await.unwrap();
        let revoked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let valid = StillValid(std::sync::Arc::new({
            let revoked = revoked.clone();
            move |_| !revoked.load(std::sync::atomic::Ordering::SeqCst)
        }));
        let held = tokio::spawn({
            let queue = queue.clone();
            let block = Some((std::time::Duration::from_secs(30), valid));
            async move {
                queue
                    .enqueue_blocking(new_job(0, 2), None, None, bounds::Limits::default(), block)
                    .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!held.is_finished(), "the enqueue waits for room");
        revoked.store(true, std::sync::atomic::Ordering::SeqCst);
        // Room comes free: the held enqueue is refused instead of stored.
        let active = fetch_one(&queue).await.unwrap();
        queue
            .ack(AckRequest {
                id: active.id,
                holder: holder(),
                attempt: None,
                result: None,
            })
            .await
            .unwrap();
        assert!(matches!(
            held.await.unwrap(),
            Err(QueueError::CredentialInvalid)
        ));
        let stats = queue.stats().await.unwrap();
        assert_eq!(
            (stats.totals.available, stats.totals.completed),
            (0, 1),
            "nothing was stored for the refused enqueue"
        );
    }
}
