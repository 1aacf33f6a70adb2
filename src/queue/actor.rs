//! The queue actor's loop and its operations.
//!
//! The actor runs on its own thread (redb I/O blocks, so it never runs on the HTTP workers). Each
//! turn it drains every waiting message (`recv_many`), opens one write transaction, first moves
//! due scheduled/retryable jobs to `available` and handles expired leases, then applies the
//! messages in order, commits once (durably), and only then answers every sender. A reply is
//! therefore a promise that the change is on disk. If the commit fails, every sender of the turn
//! gets `Unavailable` and the in-memory indexes are rebuilt from the file.

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::bounds::{self, Limits, QueueBound, Quota, Strategy};
use super::events::{Event, EventLog};
use super::msg::{
    AckRequest, Failure, FetchRequest, HeartbeatOutcome, HeartbeatRequest, Holder, Msg,
    NackRequest, Page, QueueStats, Reply,
};
use super::msg::{BoundInfo, Enqueued};
use super::sched::{Indexes, QueueKey};
use super::{QueueConfig, QueueError};
use crate::clock::{now_ms, Millis};
use crate::job::envelope::NewJob;
use crate::job::retry::OnExhaustion;
use crate::job::{Job, JobId, JobState, Lease};
use crate::store::{codec, tables, Store, StoreError};
use crate::vault::envelope;
use crate::vault::{KeyRing, VaultError, VaultKeys};

type Table<'t> = redb::Table<'t, u128, &'static [u8]>;
type ConfigTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;

/// What to send once the turn's outcome is known: `true` if the commit succeeded.
type Delivery = Box<dyn FnOnce(bool) + Send>;

/// The longest the loop sleeps without looking at deadlines.
const MAX_IDLE_MS: i64 = 1000;

pub(super) struct QueueActor {
    store: Store,
    keys: VaultKeys,
    idx: Indexes,
    events: EventLog,
    config: QueueConfig,
    draining: bool,
    rng: SystemRandom,
    /// Bounds set through the admin API (mirror of the `queue_config` table).
    bounds: HashMap<QueueKey, QueueBound>,
}

/// One turn's write transaction and what it produced.
struct Batch<'t> {
    table: Table<'t>,
    config: ConfigTable<'t>,
    /// The key ring as of the start of the turn.
    ring: std::sync::Arc<KeyRing>,
    keys: VaultKeys,
    now: Millis,
    dirty: bool,
    events: Vec<Event>,
}

impl Batch<'_> {
    /// Loads and opens a job. A record the ring cannot open is [`QueueError::Unreadable`]
    /// (counted), never a job with wrong payloads.
    fn load(&self, id: JobId) -> Result<Option<Job>, QueueError> {
        let guard = self.table.get(id.as_u128()).map_err(StoreError::from)?;
        let Some(guard) = guard else { return Ok(None) };
        match envelope::open_job(&self.ring, guard.value()) {
            Ok(job) if job.id == id => Ok(Some(job)),
            // A whole record copied onto another row: its own id no longer matches the key.
            Ok(_) => {
                self.keys.count_failure();
                warn!(job_id = %id, "job record belongs to another row");
                Err(QueueError::Unreadable(id))
            }
            Err(e) if e.is_unreadable() => {
                self.keys.count_failure();
                warn!(job_id = %id, error = %e, "job record cannot be opened");
                Err(QueueError::Unreadable(id))
            }
            Err(VaultError::Storage(e)) => Err(QueueError::Storage(e)),
            Err(e) => Err(QueueError::Storage(StoreError::Corrupt(e.to_string()))),
        }
    }

    /// The clear part of a record (routing fields; payloads empty), for index upkeep.
    fn load_head(&self, id: JobId) -> Result<Option<Job>, QueueError> {
        let guard = self.table.get(id.as_u128()).map_err(StoreError::from)?;
        guard
            .map(|g| envelope::job_head(g.value()).map(|h| h.job))
            .transpose()
            .map_err(QueueError::from)
    }

    /// Loads a job of `tenant`; another tenant's job is `NotFound`, exactly like a missing one
    /// (also when it cannot be opened: the tenant is checked on the clear part first).
    fn load_scoped(&self, id: JobId, tenant: Option<&str>) -> Result<Job, QueueError> {
        match self.load(id) {
            Ok(Some(job)) if job.tenant.as_deref() == tenant => Ok(job),
            Ok(Some(_)) => Err(QueueError::OtherTenant),
            Ok(None) => Err(QueueError::NotFound),
            Err(QueueError::Unreadable(id)) => match self.load_head(id)? {
                Some(head) if head.tenant.as_deref() != tenant => Err(QueueError::OtherTenant),
                _ => Err(QueueError::Unreadable(id)),
            },
            Err(e) => Err(e),
        }
    }

    /// Takes a job that cannot be opened out of the in-memory indexes, so that it does not
    /// block its queue or the timers; it stays on disk for when its key comes back.
    fn set_aside(&self, idx: &mut Indexes, id: JobId) -> Result<(), QueueError> {
        if let Some(head) = self.load_head(id)? {
            if head.id == id {
                idx.remove(&head);
            }
        }
        Ok(())
    }

    fn exists(&self, id: JobId) -> Result<bool, QueueError> {
        Ok(self
            .table
            .get(id.as_u128())
            .map_err(StoreError::from)?
            .is_some())
    }

    fn save(&mut self, job: &Job) -> Result<(), QueueError> {
        // A job that cannot be sealed is not written; the turn fails and nothing is lost.
        let bytes = envelope::seal_job(&self.ring, job)
            .map_err(|e| QueueError::Storage(StoreError::Corrupt(format!("seal: {e}"))))?;
        self.table
            .insert(job.id.as_u128(), bytes.as_slice())
            .map_err(StoreError::from)?;
        self.dirty = true;
        Ok(())
    }

    fn delete(&mut self, id: JobId) -> Result<(), QueueError> {
        self.table.remove(id.as_u128()).map_err(StoreError::from)?;
        self.dirty = true;
        Ok(())
    }

    fn event(&mut self, kind: &'static str, job: &Job) {
        self.events.push(Event::about(kind, job, self.now));
    }
}

fn deliver<T: Send + 'static>(
    reply: Reply<T>,
    result: Result<T, QueueError>,
    failed: &mut bool,
) -> Delivery {
    if matches!(result, Err(QueueError::Storage(_))) {
        *failed = true;
    }
    Box::new(move |committed| {
        // A caller that went away (client disconnected) is no error of ours.
        let _ = reply.send(if committed {
            result
        } else {
            Err(QueueError::Unavailable)
        });
    })
}

/// The configured queue bounds. A record that does not decode is skipped with an error in the
/// log (that queue falls back to the default bound) rather than keeping the server down.
fn load_bounds(store: &Store) -> Result<HashMap<QueueKey, QueueBound>, QueueError> {
    let txn = store.db().begin_read().map_err(StoreError::from)?;
    let table = txn
        .open_table(tables::QUEUE_CONFIG)
        .map_err(StoreError::from)?;
    let mut out = HashMap::new();
    for entry in table.iter().map_err(StoreError::from)? {
        let (key, value) = entry.map_err(StoreError::from)?;
        let bound = codec::decode::<QueueBound>(value.value());
        match (bounds::parse_table_key(key.value()), bound) {
            (Some(k), Ok(b)) => {
                out.insert(k, b);
            }
            _ => error!("unreadable queue bound record skipped"),
        }
    }
    Ok(out)
}

fn load_indexes(store: &Store) -> Result<Indexes, QueueError> {
    let txn = store.db().begin_read().map_err(StoreError::from)?;
    let table = txn.open_table(tables::JOBS).map_err(StoreError::from)?;
    let mut idx = Indexes::default();
    for entry in table.iter().map_err(StoreError::from)? {
        let (key, value) = entry.map_err(StoreError::from)?;
        // Only the clear part: the indexes need no payload, and a job whose key is missing
        // still has its place (it fails closed when read).
        let head = envelope::job_head(value.value())?;
        if head.job.id.as_u128() != key.value() {
            // A record copied onto another row is never scheduled; reading it fails closed.
            error!(row = %JobId(uuid::Uuid::from_u128(key.value())), "job record belongs to another row; left out");
            continue;
        }
        idx.add(&head.job);
    }
    Ok(idx)
}

impl QueueActor {
    pub(super) fn load(
        store: Store,
        keys: VaultKeys,
        config: QueueConfig,
    ) -> Result<Self, QueueError> {
        let idx = load_indexes(&store)?;
        let totals = idx.totals();
        info!(
            available = totals.available,
            active = totals.active,
            scheduled = totals.scheduled + totals.retryable,
            dead_letter = totals.dead_letter,
            "queue indexes rebuilt"
        );
        let bounds = load_bounds(&store)?;
        Ok(Self {
            store,
            keys,
            idx,
            events: EventLog::new(config.events_capacity),
            config,
            draining: false,
            rng: SystemRandom::new(),
            bounds,
        })
    }

    /// Runs the loop until every handle is gone.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                error!(error = %e, "queue actor could not start its runtime");
                return;
            }
        };
        runtime.block_on(async move {
            let max = self.config.max_group.max(1);
            let mut inbox = Vec::with_capacity(max);
            loop {
                let idle = self
                    .idx
                    .next_wake()
                    .map_or(MAX_IDLE_MS, |at| (at - now_ms()).clamp(0, MAX_IDLE_MS));
                tokio::select! {
                    n = rx.recv_many(&mut inbox, max) => {
                        // Zero means the channel is closed and empty: every handle is gone.
                        if n == 0 {
                            break;
                        }
                    }
                    () = tokio::time::sleep(std::time::Duration::from_millis(idle.unsigned_abs())) => {}
                }
                self.turn(std::mem::take(&mut inbox));
                inbox.reserve(max);
            }
            debug!("queue actor stopped");
        });
    }

    /// One group commit.
    fn turn(&mut self, msgs: Vec<Msg>) {
        let now = now_ms();
        if msgs.is_empty() && !self.idx.has_due(now) {
            return;
        }
        let mut deliveries: Vec<Delivery> = Vec::with_capacity(msgs.len());
        let txn = match self.store.db().begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                error!(error = %e, "queue could not begin a write transaction");
                self.fail_all(msgs);
                return;
            }
        };
        let mut failed = false;
        let (dirty, events) = {
            let table = match txn.open_table(tables::JOBS) {
                Ok(t) => t,
                Err(e) => {
                    error!(error = %e, "queue could not open the job table");
                    self.fail_all(msgs);
                    return;
                }
            };
            let config = match txn.open_table(tables::QUEUE_CONFIG) {
                Ok(t) => t,
                Err(e) => {
                    error!(error = %e, "queue could not open the queue config table");
                    self.fail_all(msgs);
                    return;
                }
            };
            let mut batch = Batch {
                table,
                config,
                ring: self.keys.ring(),
                keys: self.keys.clone(),
                now,
                dirty: false,
                events: Vec::new(),
            };
            if let Err(e) = self.process_due(&mut batch) {
                error!(error = %e, "queue failed to process due jobs");
                failed = true;
            }
            for msg in msgs {
                if let Some(d) = self.apply(&mut batch, msg, &mut failed) {
                    deliveries.push(d);
                }
            }
            (batch.dirty, batch.events)
        };
        let committed = if failed {
            let _ = txn.abort();
            false
        } else if dirty {
            match txn.commit() {
                Ok(()) => true,
                Err(e) => {
                    error!(error = %e, "queue commit failed");
                    false
                }
            }
        } else {
            let _ = txn.abort();
            true
        };
        if committed {
            self.events.extend(events);
        } else {
            match load_indexes(&self.store) {
                Ok(idx) => self.idx = idx,
                Err(e) => error!(error = %e, "queue could not rebuild its indexes"),
            }
            match load_bounds(&self.store) {
                Ok(bounds) => self.bounds = bounds,
                Err(e) => error!(error = %e, "queue could not reload its bounds"),
            }
        }
        for d in deliveries {
            d(committed);
        }
    }

    /// Answers a turn that could not even start: dropping a reply sender makes the caller see
    /// `Unavailable`. A drain request still takes effect.
    fn fail_all(&mut self, msgs: Vec<Msg>) {
        for msg in msgs {
            if matches!(msg, Msg::Drain) {
                self.draining = true;
            }
        }
    }

    fn apply(&mut self, b: &mut Batch<'_>, msg: Msg, failed: &mut bool) -> Option<Delivery> {
        Some(match msg {
            Msg::Enqueue {
                job,
                tenant,
                owner,
                limits,
                key,
                reply,
            } => deliver(
                reply,
                self.enqueue(b, *job, tenant, owner, limits, key),
                failed,
            ),
            Msg::EnqueueBatch {
                jobs,
                limits,
                reply,
            } => {
                let result = self.enqueue_batch(b, jobs, limits);
                // A failure after the first write would leave part of the batch in the
                // transaction: abort the whole turn instead.
                if matches!(result, Err(QueueError::Unavailable)) {
                    *failed = true;
                }
                deliver(reply, result, failed)
            }
            Msg::SetBound {
                tenant,
                queue,
                bound,
                reply,
            } => deliver(reply, self.set_bound(b, tenant, queue, bound), failed),
            Msg::Bound {
                tenant,
                queue,
                default_max_depth,
                reply,
            } => {
                let key = (tenant, queue);
                let configured = self.bounds.get(&key).cloned();
                let info = BoundInfo {
                    depth: self.idx.depth(&key),
                    configured: configured.is_some(),
                    bound: configured
                        .unwrap_or_else(|| QueueBound::default_with(default_max_depth)),
                };
                deliver(reply, Ok(info), failed)
            }
            Msg::Fetch { req, reply } => deliver(reply, self.fetch(b, &req), failed),
            Msg::Ack { req, reply } => deliver(reply, self.ack(b, req), failed),
            Msg::Nack { req, reply } => deliver(reply, self.nack(b, *req), failed),
            Msg::Heartbeat { req, reply } => deliver(reply, self.heartbeat(b, &req), failed),
            Msg::Cancel { id, scope, reply } => {
                deliver(reply, self.cancel(b, id, scope.as_deref()), failed)
            }
            Msg::Activate { id, scope, reply } => {
                deliver(reply, self.activate(b, id, scope.as_deref()), failed)
            }
            Msg::Get { id, scope, reply } => {
                deliver(reply, b.load_scoped(id, scope.as_deref()), failed)
            }
            Msg::DeadLetterList {
                scope,
                queue,
                limit,
                offset,
                reply,
            } => deliver(
                reply,
                self.dead_letter_list(b, scope.as_deref(), queue.as_deref(), limit, offset),
                failed,
            ),
            Msg::DeadLetterRetry { id, scope, reply } => deliver(
                reply,
                self.dead_letter_retry(b, id, scope.as_deref()),
                failed,
            ),
            Msg::DeadLetterDelete { id, scope, reply } => deliver(
                reply,
                self.dead_letter_delete(b, id, scope.as_deref()),
                failed,
            ),
            Msg::Queues { scope, reply } => {
                deliver(reply, Ok(self.idx.queues(scope.as_deref())), failed)
            }
            Msg::Events { filter, reply } => deliver(reply, Ok(self.events.list(&filter)), failed),
            Msg::Stats { reply } => deliver(
                reply,
                Ok(QueueStats {
                    totals: self.idx.totals(),
                    queues: self.idx.queue_count(),
                }),
                failed,
            ),
            Msg::Reset { reply } => deliver(reply, self.reset(b), failed),
            Msg::Rewrap {
                after,
                batch,
                reply,
            } => deliver(reply, Self::rewrap(b, after, batch), failed),
            Msg::Drain => {
                self.draining = true;
                return None;
            }
        })
    }

    /// A uniform number in `[0, 1)` for retry jitter.
    fn random_unit(&self) -> f64 {
        let mut bytes = [0u8; 8];
        if self.rng.fill(&mut bytes).is_err() {
            return 0.5;
        }
        #[allow(clippy::cast_precision_loss)]
        let unit = (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
        unit
    }

    /// Moves due scheduled and retryable jobs to `available` and handles expired leases.
    fn process_due(&mut self, b: &mut Batch<'_>) -> Result<(), QueueError> {
        let now = b.now;
        for id in self.idx.due_timed(now) {
            let mut job = match b.load(id) {
                Ok(Some(job)) => job,
                Ok(None) => continue,
                Err(QueueError::Unreadable(id)) => {
                    b.set_aside(&mut self.idx, id)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.idx.remove(&job);
            job.state = JobState::Available;
            job.scheduled_at = None;
            // A job that falls due joins the back of its queue, like a fresh enqueue.
            job.seq = self.idx.take_seq();
            b.save(&job)?;
            self.idx.add(&job);
            b.event("job.available", &job);
        }
        for id in self.idx.due_leases(now) {
            let mut job = match b.load(id) {
                Ok(Some(job)) => job,
                Ok(None) => continue,
                Err(QueueError::Unreadable(id)) => {
                    b.set_aside(&mut self.idx, id)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.idx.remove(&job);
            let Some(lease) = job.lease.take() else {
                self.idx.add(&job);
                continue;
            };
            if lease.execution_deadline <= now {
                warn!(job_id = %job.id, attempt = job.attempt, "execution timeout");
                let failure = Failure {
                    code: "handler_timeout".into(),
                    message: format!("execution exceeded timeout_ms ({} ms)", job.timeout_ms),
                    error_type: Some("TimeoutError".into()),
                    retryable: Some(true),
                    details: None,
                };
                self.fail_attempt(b, &mut job, failure);
            } else {
                debug!(job_id = %job.id, attempt = job.attempt, "visibility timeout, reclaiming");
                job.push_error(
                    Failure {
                        code: "lease_expired".into(),
                        message:
                            "the visibility timeout ran out before the worker acknowledged the job"
                                .into(),
                        error_type: None,
                        retryable: Some(true),
                        details: None,
                    }
                    .into_error(job.attempt, now),
                );
                if job.retry.has_attempts_left(job.attempt) {
                    job.state = JobState::Available;
                    job.seq = self.idx.take_seq();
                    b.event("job.reclaimed", &job);
                } else {
                    self.exhaust(b, &mut job);
                }
            }
            b.save(&job)?;
            self.idx.add(&job);
        }
        Ok(())
    }

    /// Records a failed attempt and moves the job to `retryable` or its exhaustion state. The
    /// job must already be out of the indexes with its lease taken.
    fn fail_attempt(&mut self, b: &mut Batch<'_>, job: &mut Job, failure: Failure) {
        let now = b.now;
        let non_retryable = failure.retryable == Some(false)
            || failure
                .error_type
                .as_deref()
                .is_some_and(|t| job.retry.is_non_retryable(t));
        job.push_error(failure.into_error(job.attempt, now));
        b.event("job.failed", job);
        if !non_retryable && job.retry.has_attempts_left(job.attempt) {
            let delay = job.retry.delay_ms(job.attempt, self.random_unit());
            job.state = JobState::Retryable;
            job.scheduled_at = Some(now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)));
            job.retry_delay_ms = Some(delay);
            b.event("job.retrying", job);
        } else {
            self.exhaust(b, job);
        }
    }

    /// No attempts left (or a non-retryable error): discard, or dead-letter if the policy says.
    fn exhaust(&mut self, b: &mut Batch<'_>, job: &mut Job) {
        job.state = JobState::Discarded;
        job.discarded_at = Some(b.now);
        job.completed_at = Some(b.now);
        job.dead_letter = job.retry.on_exhaustion == OnExhaustion::DeadLetter;
        b.event(
            if job.dead_letter {
                "job.dead_lettered"
            } else {
                "job.discarded"
            },
            job,
        );
    }

    fn enqueue(
        &mut self,
        b: &mut Batch<'_>,
        new: NewJob,
        tenant: Option<String>,
        owner: Option<String>,
        limits: Limits,
        sealed: Option<std::sync::Arc<crate::vault::envelope::JobKey>>,
    ) -> Result<Enqueued, QueueError> {
        let now = b.now;
        let id = new.id.unwrap_or_else(JobId::generate);
        if b.exists(id)? {
            return Err(QueueError::Duplicate);
        }
        let key: QueueKey = (tenant.clone(), new.queue.clone());
        let scheduled = !new.pending && new.run_at.is_some_and(|at| at > now);
        self.check_quotas(&key, owner.as_deref(), scheduled, &limits)?;
        let bound = self
            .bounds
            .get(&key)
            .cloned()
            .unwrap_or_else(|| QueueBound::default_with(limits.default_max_depth));
        let depth = self.idx.depth(&key);
        let mut dropped = None;
        if bound.is_full(depth) {
            let victim = match bound.strategy {
                Strategy::DropOldest => self.idx.oldest_ready(&key),
                Strategy::Reject | Strategy::Block => None,
            };
            let Some(victim) = victim else {
                return Err(QueueError::QueueFull {
                    depth,
                    bound: bound.max_depth,
                    strategy: bound.strategy,
                });
            };
            dropped = Some(self.drop_job(b, victim)?);
        }
        let mut job = Job::from_new(new, id, tenant, owner, self.idx.take_seq(), now);
        job.key = sealed;
        let state = job.state;
        b.save(&job)?;
        self.idx.add(&job);
        b.event(
            if state == JobState::Scheduled {
                "job.scheduled"
            } else {
                "job.enqueued"
            },
            &job,
        );
        Ok(Enqueued {
            depth: self.idx.depth(&key),
            job,
            dropped,
            bound,
        })
    }

    fn enqueue_batch(
        &mut self,
        b: &mut Batch<'_>,
        jobs: Vec<(NewJob, Option<String>, Option<String>)>,
        limits: Limits,
    ) -> Result<Vec<Job>, QueueError> {
        // Every check for the whole batch first, counting the batch's own jobs, so that nothing
        // is written unless everything fits.
        let over = |used: u64, limit: u64| limit > 0 && used >= limit;
        let mut ids = std::collections::HashSet::new();
        let mut owners: HashMap<&str, u64> = HashMap::new();
        let mut tenants: HashMap<&str, u64> = HashMap::new();
        let mut scheduled: HashMap<&str, u64> = HashMap::new();
        let mut new_queues: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
        let mut depths: HashMap<QueueKey, u64> = HashMap::new();
        for (new, tenant, owner) in &jobs {
            if let Some(id) = new.id {
                if !ids.insert(id) || b.exists(id)? {
                    return Err(QueueError::Duplicate);
                }
            }
            if let Some(owner) = owner.as_deref() {
                let n = owners.entry(owner).or_default();
                if over(self.idx.owned(owner) + *n, limits.max_pending_per_principal) {
                    return Err(QueueError::QuotaExceeded {
                        quota: Quota::PrincipalPending,
                        limit: limits.max_pending_per_principal,
                    });
                }
                *n += 1;
            }
            let key: QueueKey = (tenant.clone(), new.queue.clone());
            if let Some(t) = tenant.as_deref() {
                let n = tenants.entry(t).or_default();
                if over(self.idx.tenant_jobs(t) + *n, limits.max_pending_per_tenant) {
                    return Err(QueueError::QuotaExceeded {
                        quota: Quota::TenantPending,
                        limit: limits.max_pending_per_tenant,
                    });
                }
                *n += 1;
                if !new.pending && new.run_at.is_some_and(|at| at > b.now) {
                    let n = scheduled.entry(t).or_default();
                    if over(
                        self.idx.tenant_scheduled(t) + *n,
                        limits.max_scheduled_per_tenant,
                    ) {
                        return Err(QueueError::QuotaExceeded {
                            quota: Quota::TenantScheduled,
                            limit: limits.max_scheduled_per_tenant,
                        });
                    }
                    *n += 1;
                }
                let fresh = new_queues.entry(t).or_default();
                if !self.idx.has_queue(&key) && !fresh.contains(new.queue.as_str()) {
                    let have = self.idx.tenant_queue_count(t) + fresh.len() as u64;
                    if over(have, limits.max_queues_per_tenant) {
                        return Err(QueueError::QuotaExceeded {
                            quota: Quota::TenantQueues,
                            limit: limits.max_queues_per_tenant,
                        });
                    }
                    fresh.insert(new.queue.as_str());
                }
            }
            let bound = self
                .bounds
                .get(&key)
                .cloned()
                .unwrap_or_else(|| QueueBound::default_with(limits.default_max_depth));
            let depth = self.idx.depth(&key) + depths.get(&key).copied().unwrap_or(0);
            if bound.is_full(depth) {
                return Err(QueueError::QueueFull {
                    depth,
                    bound: bound.max_depth,
                    strategy: bound.strategy,
                });
            }
            *depths.entry(key).or_default() += 1;
        }
        let mut stored = Vec::with_capacity(jobs.len());
        for (new, tenant, owner) in jobs {
            match self.enqueue(b, new, tenant, owner, limits, None) {
                Ok(done) => stored.push(done.job),
                Err(e) => {
                    error!(error = %e, "batch enqueue failed after its checks passed");
                    return Err(QueueError::Unavailable);
                }
            }
        }
        Ok(stored)
    }

    /// The per-principal and per-tenant counts a new job of `key` owned by `owner` would pass.
    fn check_quotas(
        &self,
        key: &QueueKey,
        owner: Option<&str>,
        scheduled: bool,
        limits: &Limits,
    ) -> Result<(), QueueError> {
        let over = |used: u64, limit: u64| limit > 0 && used >= limit;
        if let Some(owner) = owner {
            if over(self.idx.owned(owner), limits.max_pending_per_principal) {
                return Err(QueueError::QuotaExceeded {
                    quota: Quota::PrincipalPending,
                    limit: limits.max_pending_per_principal,
                });
            }
        }
        if let Some(tenant) = key.0.as_deref() {
            if over(self.idx.tenant_jobs(tenant), limits.max_pending_per_tenant) {
                return Err(QueueError::QuotaExceeded {
                    quota: Quota::TenantPending,
                    limit: limits.max_pending_per_tenant,
                });
            }
            if !self.idx.has_queue(key)
                && over(
                    self.idx.tenant_queue_count(tenant),
                    limits.max_queues_per_tenant,
                )
            {
                return Err(QueueError::QuotaExceeded {
                    quota: Quota::TenantQueues,
                    limit: limits.max_queues_per_tenant,
                });
            }
            if scheduled
                && over(
                    self.idx.tenant_scheduled(tenant),
                    limits.max_scheduled_per_tenant,
                )
            {
                return Err(QueueError::QuotaExceeded {
                    quota: Quota::TenantScheduled,
                    limit: limits.max_scheduled_per_tenant,
                });
            }
        }
        Ok(())
    }

    /// Discards an available job to make room (drop-oldest backpressure).
    fn drop_job(&mut self, b: &mut Batch<'_>, id: JobId) -> Result<Job, QueueError> {
        let Some(mut job) = b.load(id)? else {
            error!(job_id = %id, "ready index names a missing job; rebuilding indexes");
            self.idx = load_indexes(&self.store)?;
            return Err(QueueError::Unavailable);
        };
        self.idx.remove(&job);
        job.push_error(
            Failure {
                code: "backpressure_dropped".into(),
                message: "discarded to make room in a full drop-oldest queue".into(),
                error_type: None,
                retryable: Some(false),
                details: None,
            }
            .into_error(job.attempt, b.now),
        );
        job.state = JobState::Discarded;
        job.discarded_at = Some(b.now);
        job.completed_at = Some(b.now);
        b.save(&job)?;
        self.idx.add(&job);
        b.event("backpressure.dropped", &job);
        Ok(job)
    }

    fn set_bound(
        &mut self,
        b: &mut Batch<'_>,
        tenant: Option<String>,
        queue: String,
        bound: Option<QueueBound>,
    ) -> Result<(), QueueError> {
        let key = bounds::table_key(tenant.as_deref(), &queue);
        match &bound {
            Some(bound) => {
                let bytes = codec::encode(bound)?;
                b.config
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(StoreError::from)?;
            }
            None => {
                b.config.remove(key.as_str()).map_err(StoreError::from)?;
            }
        }
        b.dirty = true;
        match bound {
            Some(bound) => self.bounds.insert((tenant, queue), bound),
            None => self.bounds.remove(&(tenant, queue)),
        };
        Ok(())
    }

    fn fetch(&mut self, b: &mut Batch<'_>, req: &FetchRequest) -> Result<Vec<Job>, QueueError> {
        let now = b.now;
        let mut claimed = Vec::new();
        // A fetch claims no more than the principal's and the tenant's running quotas leave.
        let mut count = req.count;
        let mut room = |used: u64, limit: u64, quota: Quota| {
            if limit == 0 {
                return Ok(());
            }
            if used >= limit {
                return Err(QueueError::QuotaExceeded { quota, limit });
            }
            count = count.min(usize::try_from(limit - used).unwrap_or(usize::MAX));
            Ok(())
        };
        room(
            self.idx.held(&req.holder.principal),
            req.max_running,
            Quota::PrincipalRunning,
        )?;
        if let Some(tenant) = req.holder.tenant.as_deref() {
            room(
                self.idx.tenant_active(tenant),
                req.max_tenant_active,
                Quota::TenantActive,
            )?;
        }
        for queue in &req.queues {
            while claimed.len() < count {
                let Some(id) = self.idx.peek_ready(req.holder.tenant.as_deref(), queue) else {
                    break;
                };
                let mut job = match b.load(id) {
                    Ok(Some(job)) => job,
                    Ok(None) => {
                        // An index entry without a record: the indexes drifted from the file.
                        error!(job_id = %id, "ready index names a missing job; rebuilding indexes");
                        self.idx = load_indexes(&self.store)?;
                        continue;
                    }
                    // A job that cannot be opened is never handed to a worker, and does not
                    // hold up the jobs behind it.
                    Err(QueueError::Unreadable(id)) => {
                        b.set_aside(&mut self.idx, id)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                self.idx.remove(&job);
                if job.expires_at.is_some_and(|at| at <= now) {
                    job.push_error(
                        Failure {
                            code: "expired".into(),
                            message: "the job expired before a worker started it".into(),
                            error_type: None,
                            retryable: Some(false),
                            details: None,
                        }
                        .into_error(job.attempt, now),
                    );
                    job.state = JobState::Discarded;
                    job.discarded_at = Some(now);
                    job.completed_at = Some(now);
                    b.save(&job)?;
                    self.idx.add(&job);
                    b.event("job.expired", &job);
                    continue;
                }
                job.attempt += 1;
                job.state = JobState::Active;
                job.started_at = Some(now);
                let visibility = req
                    .visibility_timeout_ms
                    .unwrap_or(job.visibility_timeout_ms);
                job.lease = Some(Lease {
                    principal: req.holder.principal.clone(),
                    worker_id: req.holder.worker_id.clone(),
                    visibility_deadline: now
                        .saturating_add(i64::try_from(visibility).unwrap_or(i64::MAX)),
                    execution_deadline: now
                        .saturating_add(i64::try_from(job.timeout_ms).unwrap_or(i64::MAX)),
                });
                b.save(&job)?;
                self.idx.add(&job);
                b.event("job.started", &job);
                claimed.push(job);
            }
            if claimed.len() >= count {
                break;
            }
        }
        Ok(claimed)
    }

    /// Loads an active job and checks that `holder` holds its lease.
    fn load_held(
        b: &Batch<'_>,
        id: JobId,
        holder: &Holder,
        attempt: Option<u32>,
        action: &'static str,
    ) -> Result<Job, QueueError> {
        let job = b.load_scoped(id, holder.tenant.as_deref())?;
        if job.state != JobState::Active {
            return Err(QueueError::InvalidState {
                action,
                current: job.state,
            });
        }
        let lease = job.lease.as_ref().ok_or(QueueError::InvalidState {
            action,
            current: job.state,
        })?;
        if !holds(lease, holder) || attempt.is_some_and(|a| a != job.attempt) {
            return Err(QueueError::LeaseNotHeld);
        }
        Ok(job)
    }

    fn ack(&mut self, b: &mut Batch<'_>, req: AckRequest) -> Result<Job, QueueError> {
        let mut job = Self::load_held(b, req.id, &req.holder, req.attempt, "acknowledge")?;
        self.idx.remove(&job);
        job.state = JobState::Completed;
        job.completed_at = Some(b.now);
        job.result = req.result;
        job.lease = None;
        job.error = None;
        b.save(&job)?;
        self.idx.add(&job);
        b.event("job.completed", &job);
        Ok(job)
    }

    fn nack(&mut self, b: &mut Batch<'_>, req: NackRequest) -> Result<Job, QueueError> {
        let mut job = Self::load_held(b, req.id, &req.holder, req.attempt, "fail")?;
        self.idx.remove(&job);
        job.lease = None;
        if req.requeue {
            job.push_error(req.failure.into_error(job.attempt, b.now));
            job.state = JobState::Available;
            job.seq = self.idx.take_seq();
            b.event("job.requeued", &job);
        } else {
            self.fail_attempt(b, &mut job, req.failure);
        }
        b.save(&job)?;
        self.idx.add(&job);
        Ok(job)
    }

    fn heartbeat(
        &mut self,
        b: &mut Batch<'_>,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatOutcome, QueueError> {
        let mut held = Vec::new();
        let mut directive = if self.draining { "quiet" } else { "running" };
        for id in &req.job_ids {
            let Some(job) = b.load(*id)? else { continue };
            // Another tenant's job is not there for this worker at all.
            if job.state != JobState::Active || job.tenant != req.holder.tenant {
                continue;
            }
            match &job.lease {
                Some(lease) if holds(lease, &req.holder) => {}
                // Somebody else's job: refuse the whole heartbeat and change nothing.
                _ => return Err(QueueError::LeaseNotHeld),
            }
            if self.config.honour_test_directives {
                match job.test_directive.as_deref() {
                    Some("terminate") => directive = "terminate",
                    Some("quiet") if directive == "running" => directive = "quiet",
                    _ => {}
                }
            }
            if !held.iter().any(|j: &Job| j.id == job.id) {
                held.push(job);
            }
        }
        let mut extended = Vec::with_capacity(held.len());
        for mut job in held {
            self.idx.remove(&job);
            let visibility = req
                .visibility_timeout_ms
                .unwrap_or(job.visibility_timeout_ms);
            if let Some(lease) = job.lease.as_mut() {
                lease.visibility_deadline = b
                    .now
                    .saturating_add(i64::try_from(visibility).unwrap_or(i64::MAX));
            }
            b.save(&job)?;
            self.idx.add(&job);
            extended.push(job.id);
        }
        Ok(HeartbeatOutcome {
            extended,
            directive,
        })
    }

    fn cancel(
        &mut self,
        b: &mut Batch<'_>,
        id: JobId,
        scope: Option<&str>,
    ) -> Result<(Job, JobState), QueueError> {
        let mut job = b.load_scoped(id, scope)?;
        if job.state.is_terminal() {
            return Err(QueueError::InvalidState {
                action: "cancel",
                current: job.state,
            });
        }
        let previous = job.state;
        self.idx.remove(&job);
        job.state = JobState::Cancelled;
        job.cancelled_at = Some(b.now);
        job.lease = None;
        job.scheduled_at = None;
        b.save(&job)?;
        self.idx.add(&job);
        b.event("job.cancelled", &job);
        Ok((job, previous))
    }

    fn activate(
        &mut self,
        b: &mut Batch<'_>,
        id: JobId,
        scope: Option<&str>,
    ) -> Result<Job, QueueError> {
        let mut job = b.load_scoped(id, scope)?;
        if job.state != JobState::Pending {
            return Err(QueueError::InvalidState {
                action: "activate",
                current: job.state,
            });
        }
        self.idx.remove(&job);
        job.state = JobState::Available;
        job.enqueued_at = b.now;
        b.save(&job)?;
        self.idx.add(&job);
        b.event("job.enqueued", &job);
        Ok(job)
    }

    fn dead_letter_list(
        &self,
        b: &Batch<'_>,
        tenant: Option<&str>,
        queue: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<Page<Job>, QueueError> {
        let ids: Vec<JobId> = self.idx.dead_letter(tenant, queue).collect();
        let total = ids.len();
        let mut items = Vec::new();
        for id in ids.into_iter().skip(offset).take(limit) {
            // One unreadable job does not hide the others (it is counted and logged).
            match b.load(id) {
                Ok(Some(job)) => items.push(job),
                Ok(None) | Err(QueueError::Unreadable(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Page { items, total })
    }

    fn load_dead(b: &Batch<'_>, id: JobId, scope: Option<&str>) -> Result<Job, QueueError> {
        let job = b.load_scoped(id, scope)?;
        if job.dead_letter {
            Ok(job)
        } else {
            Err(QueueError::NotInDeadLetter)
        }
    }

    fn dead_letter_retry(
        &mut self,
        b: &mut Batch<'_>,
        id: JobId,
        scope: Option<&str>,
    ) -> Result<Job, QueueError> {
        let mut job = Self::load_dead(b, id, scope)?;
        self.idx.remove(&job);
        job.dead_letter = false;
        job.state = JobState::Available;
        job.attempt = 0;
        job.discarded_at = None;
        job.completed_at = None;
        job.started_at = None;
        job.error = None;
        job.retry_delay_ms = None;
        job.enqueued_at = b.now;
        job.seq = self.idx.take_seq();
        b.save(&job)?;
        self.idx.add(&job);
        b.event("job.enqueued", &job);
        Ok(job)
    }

    fn dead_letter_delete(
        &mut self,
        b: &mut Batch<'_>,
        id: JobId,
        scope: Option<&str>,
    ) -> Result<(), QueueError> {
        let job = Self::load_dead(b, id, scope)?;
        self.idx.remove(&job);
        b.delete(id)?;
        b.event("job.deleted", &job);
        Ok(())
    }

    /// Re-wraps the data keys of up to `batch` records after `after` with the active KEK. Only
    /// the wrapped key changes; payloads are not re-encrypted. The indexes are untouched.
    fn rewrap(
        b: &mut Batch<'_>,
        after: Option<u128>,
        batch: usize,
    ) -> Result<crate::vault::RewrapStep, QueueError> {
        let step =
            crate::vault::rewrap_step(&mut b.table, &b.ring, after, batch).map_err(
                |e| match e {
                    VaultError::Storage(e) => QueueError::Storage(e),
                    _ => QueueError::Unavailable,
                },
            )?;
        if step.rewrapped > 0 {
            b.dirty = true;
        }
        Ok(step)
    }

    fn reset(&mut self, b: &mut Batch<'_>) -> Result<(), QueueError> {
        b.table.retain(|_, _| false).map_err(StoreError::from)?;
        b.config.retain(|_, _| false).map_err(StoreError::from)?;
        self.bounds.clear();
        b.dirty = true;
        b.events.clear();
        self.idx = Indexes::default();
        self.events.clear();
        info!("all job state reset");
        Ok(())
    }
}

/// Whether `holder` holds `lease`: the same principal, and the same worker whenever both name
/// one.
fn holds(lease: &Lease, holder: &Holder) -> bool {
    lease.principal == holder.principal
        && match (&lease.worker_id, &holder.worker_id) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}
