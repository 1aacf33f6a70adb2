//! The queue engine's pure core: the OJS job state machine over the in-memory indexes
//! ([`Indexes`]). No channels, no I/O, no clock: every operation runs inside a [`Turn`], which
//! carries the time (`now`), reads committed records through the storage seam's
//! [`JobSource`], and collects the writes to persist and the events to emit. The actor
//! ([`super::actor`]) commits a turn's [`Writes`] in one durable transaction and only then
//! answers; when the commit fails it throws the engine away and rebuilds it from the store.
//!
//! Every change of a job goes `idx.remove(old) → mutate → turn.put(new) → idx.add(new)`, so
//! the indexes follow the records. The model test at the bottom of this file drives random
//! operation sequences against a reference model and checks, after every step, that the
//! indexes equal a rebuild from the store.

use std::collections::{HashMap, HashSet};

use tracing::{debug, error, warn};

use super::bounds::{Limits, QueueBound, Quota, Strategy};
use super::events::Event;
use super::msg::{
    AckRequest, BoundInfo, Enqueued, Failure, FetchRequest, HeartbeatOutcome, HeartbeatRequest,
    Holder, NackRequest,
};
use super::sched::{Indexes, QueueKey};
use super::seam::{JobSource, JobStore, Writes};
use super::QueueError;
use crate::clock::Millis;
use crate::job::envelope::NewJob;
use crate::job::retry::OnExhaustion;
use crate::job::{Job, JobId, JobState, Lease};

/// One group commit's worth of work: the time it happens at, the committed state it reads, and
/// what it writes and emits. Reads see the turn's own earlier writes first.
pub struct Turn<'a> {
    source: &'a dyn JobSource,
    now: Millis,
    random: &'a mut dyn FnMut() -> f64,
    writes: Writes,
    events: Vec<Event>,
}

impl<'a> Turn<'a> {
    /// A turn at `now` over `source`; `random` gives uniform numbers in `[0, 1)` for retry
    /// jitter.
    pub fn new(source: &'a dyn JobSource, now: Millis, random: &'a mut dyn FnMut() -> f64) -> Self {
        Self {
            source,
            now,
            random,
            writes: Writes::default(),
            events: Vec::new(),
        }
    }

    /// The time of this turn.
    #[must_use]
    pub fn now(&self) -> Millis {
        self.now
    }

    /// The writes and events of the turn.
    #[must_use]
    pub fn finish(self) -> (Writes, Vec<Event>) {
        (self.writes, self.events)
    }

    /// Loads and opens a job as this turn sees it.
    fn load(&self, id: JobId) -> Result<Option<Job>, QueueError> {
        match self.writes.jobs.get(&id) {
            Some(written) => Ok(written.clone()),
            None if self.writes.clear => Ok(None),
            None => self.source.job(id),
        }
    }

    fn load_head(&self, id: JobId) -> Result<Option<Job>, QueueError> {
        match self.writes.jobs.get(&id) {
            Some(written) => Ok(written.clone()),
            None if self.writes.clear => Ok(None),
            None => self.source.head(id),
        }
    }

    fn load_scoped(&self, id: JobId, tenant: Option<&str>) -> Result<Job, QueueError> {
        scoped(self.load(id), || self.load_head(id), tenant)
    }

    fn exists(&self, id: JobId) -> Result<bool, QueueError> {
        Ok(self.load_head(id)?.is_some())
    }

    fn put(&mut self, job: &Job) {
        self.writes.jobs.insert(job.id, Some(job.clone()));
    }

    fn delete(&mut self, id: JobId) {
        self.writes.jobs.insert(id, None);
    }

    fn event(&mut self, kind: &'static str, job: &Job) {
        self.events.push(Event::about(kind, job, self.now));
    }
}

/// Loads a job of `tenant` from a committed view: another tenant's job is
/// [`QueueError::OtherTenant`] (answered exactly like a missing one), also when it cannot be
/// opened, since the tenant is checked on the clear part first.
pub fn load_scoped(
    source: &dyn JobSource,
    id: JobId,
    tenant: Option<&str>,
) -> Result<Job, QueueError> {
    scoped(source.job(id), || source.head(id), tenant)
}

fn scoped(
    loaded: Result<Option<Job>, QueueError>,
    head: impl FnOnce() -> Result<Option<Job>, QueueError>,
    tenant: Option<&str>,
) -> Result<Job, QueueError> {
    match loaded {
        Ok(Some(job)) if job.tenant.as_deref() == tenant => Ok(job),
        Ok(Some(_)) => Err(QueueError::OtherTenant),
        Ok(None) => Err(QueueError::NotFound),
        Err(QueueError::Unreadable(id)) => match head()? {
            Some(head) if head.tenant.as_deref() != tenant => Err(QueueError::OtherTenant),
            _ => Err(QueueError::Unreadable(id)),
        },
        Err(e) => Err(e),
    }
}

/// The engine's state: the indexes, the configured queue bounds and the drain flag.
#[derive(Debug, Default)]
pub struct Engine {
    idx: Indexes,
    /// Bounds set through the admin API (mirror of what the store keeps).
    bounds: HashMap<QueueKey, QueueBound>,
    draining: bool,
    honour_test_directives: bool,
}

impl Engine {
    /// Rebuilds the engine from what the store holds.
    pub fn load(store: &dyn JobStore, honour_test_directives: bool) -> Result<Self, QueueError> {
        let mut idx = Indexes::default();
        store.scan_heads(&mut |job| idx.add(&job))?;
        let bounds = store.bounds()?.into_iter().collect();
        Ok(Self {
            idx,
            bounds,
            draining: false,
            honour_test_directives,
        })
    }

    /// What readers see of this state: queue counts, bounds and the dead letter queue.
    #[must_use]
    pub fn read_model(&self) -> super::view::ReadModel {
        super::view::ReadModel {
            queues: self.idx.summaries().clone(),
            bounds: self.bounds.clone(),
            dead: self.idx.dead_letters(),
        }
    }

    /// The indexes (read-only).
    #[must_use]
    pub fn indexes(&self) -> &Indexes {
        &self.idx
    }

    /// The configured bounds.
    #[must_use]
    pub fn bounds(&self) -> &HashMap<QueueKey, QueueBound> {
        &self.bounds
    }

    /// From now on heartbeats answer `quiet`.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Whether heartbeats answer `quiet`.
    #[must_use]
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// When the engine next has to look at a deadline.
    #[must_use]
    pub fn next_wake(&self) -> Option<Millis> {
        self.idx.next_wake()
    }

    /// Whether a tenant's queue has a job ready to fetch.
    #[must_use]
    pub fn has_ready(&self, key: &QueueKey) -> bool {
        self.idx.has_ready(key)
    }

    /// Whether a queue has room for one more job under its bound.
    #[must_use]
    pub fn has_room(&self, key: &QueueKey, limits: &Limits) -> bool {
        !self.bound_of(key, limits).is_full(self.idx.depth(key))
    }

    /// A queue's bound (configured or the default) and its depth.
    #[must_use]
    pub fn bound_info(&self, key: &QueueKey, default_max_depth: u64) -> BoundInfo {
        BoundInfo::of(self.bounds.get(key), self.idx.depth(key), default_max_depth)
    }

    /// Moves due scheduled and retryable jobs to `available` and handles expired leases.
    pub fn process_due(&mut self, t: &mut Turn<'_>) -> Result<(), QueueError> {
        let now = t.now;
        for id in self.idx.due_timed(now) {
            let Some(mut job) = self.load_indexed(t, id)? else {
                continue;
            };
            self.idx.remove(&job);
            job.state = JobState::Available;
            job.scheduled_at = None;
            // A job that falls due joins the back of its queue, like a fresh enqueue.
            job.seq = self.idx.take_seq();
            t.put(&job);
            self.idx.add(&job);
            t.event("job.available", &job);
        }
        for id in self.idx.due_leases(now) {
            let Some(mut job) = self.load_indexed(t, id)? else {
                continue;
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
                self.fail_attempt(t, &mut job, failure);
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
                    t.event("job.reclaimed", &job);
                } else {
                    self.exhaust(t, &mut job);
                }
            }
            t.put(&job);
            self.idx.add(&job);
        }
        Ok(())
    }

    /// Loads a job an index names. A job that cannot be opened is taken out of the indexes, so
    /// that it neither blocks its queue nor the timers (it stays on disk for when its key comes
    /// back); an index entry without a record means the indexes drifted from the store, which
    /// fails the turn so the actor rebuilds them.
    fn load_indexed(&mut self, t: &Turn<'_>, id: JobId) -> Result<Option<Job>, QueueError> {
        match t.load(id) {
            Ok(Some(job)) => Ok(Some(job)),
            Ok(None) => {
                error!(job_id = %id, "an index names a missing job; the indexes will be rebuilt");
                Err(QueueError::Unavailable)
            }
            Err(QueueError::Unreadable(id)) => {
                if let Some(head) = t.load_head(id)? {
                    if head.id == id {
                        self.idx.remove(&head);
                    }
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Records a failed attempt and moves the job to `retryable` or its exhaustion state. The
    /// job must already be out of the indexes with its lease taken.
    fn fail_attempt(&mut self, t: &mut Turn<'_>, job: &mut Job, failure: Failure) {
        let now = t.now;
        let non_retryable = failure.retryable == Some(false)
            || failure
                .error_type
                .as_deref()
                .is_some_and(|kind| job.retry.is_non_retryable(kind));
        job.push_error(failure.into_error(job.attempt, now));
        t.event("job.failed", job);
        if !non_retryable && job.retry.has_attempts_left(job.attempt) {
            let delay = job.retry.delay_ms(job.attempt, (t.random)());
            job.state = JobState::Retryable;
            job.scheduled_at = Some(now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)));
            job.retry_delay_ms = Some(delay);
            t.event("job.retrying", job);
        } else {
            Self::exhaust(self, t, job);
        }
    }

    /// No attempts left (or a non-retryable error): discard, or dead-letter if the policy says.
    #[allow(clippy::unused_self)]
    fn exhaust(&mut self, t: &mut Turn<'_>, job: &mut Job) {
        job.state = JobState::Discarded;
        job.discarded_at = Some(t.now);
        job.completed_at = Some(t.now);
        job.dead_letter = job.retry.on_exhaustion == OnExhaustion::DeadLetter;
        t.event(
            if job.dead_letter {
                "job.dead_lettered"
            } else {
                "job.discarded"
            },
            job,
        );
    }

    /// Stores a new job under the queue's bound and the quotas of `limits`. `key` is the job's
    /// data key with its args and meta already sealed by the caller's thread.
    pub fn enqueue(
        &mut self,
        t: &mut Turn<'_>,
        new: NewJob,
        tenant: Option<String>,
        owner: Option<String>,
        limits: &Limits,
        key: Option<std::sync::Arc<crate::vault::sealed::JobKey>>,
    ) -> Result<Enqueued, QueueError> {
        let now = t.now;
        let id = new.id.unwrap_or_else(JobId::generate);
        if t.exists(id)? {
            return Err(QueueError::Duplicate);
        }
        let queue_key: QueueKey = (tenant.clone(), new.queue.clone());
        let scheduled = !new.pending && new.run_at.is_some_and(|at| at > now);
        self.check_quotas(&queue_key, owner.as_deref(), scheduled, limits)?;
        let bound = self.bound_of(&queue_key, limits);
        let depth = self.idx.depth(&queue_key);
        let mut dropped = None;
        if bound.is_full(depth) {
            let victim = match bound.strategy {
                Strategy::DropOldest => self.idx.oldest_ready(&queue_key),
                Strategy::Reject | Strategy::Block => None,
            };
            let Some(victim) = victim else {
                return Err(QueueError::QueueFull {
                    depth,
                    bound: bound.max_depth,
                    strategy: bound.strategy,
                });
            };
            dropped = Some(self.drop_job(t, victim)?);
        }
        let mut job = Job::from_new(new, id, tenant, owner, self.idx.take_seq(), now);
        job.key = key;
        t.put(&job);
        self.idx.add(&job);
        t.event(
            if job.state == JobState::Scheduled {
                "job.scheduled"
            } else {
                "job.enqueued"
            },
            &job,
        );
        Ok(Enqueued {
            depth: self.idx.depth(&queue_key),
            job,
            dropped,
            bound,
        })
    }

    fn bound_of(&self, key: &QueueKey, limits: &Limits) -> QueueBound {
        self.bounds
            .get(key)
            .cloned()
            .unwrap_or_else(|| QueueBound::default_with(limits.default_max_depth))
    }

    /// Enqueues every job (each with its tenant and owner) or none: every check for the whole
    /// batch runs first, counting the batch's own jobs, so that nothing is written unless
    /// everything fits.
    pub fn enqueue_batch(
        &mut self,
        t: &mut Turn<'_>,
        jobs: Vec<(NewJob, Option<String>, Option<String>)>,
        limits: &Limits,
    ) -> Result<Vec<Job>, QueueError> {
        let over = |used: u64, limit: u64| limit > 0 && used >= limit;
        let mut ids = HashSet::new();
        let mut owners: HashMap<&str, u64> = HashMap::new();
        let mut tenants: HashMap<&str, u64> = HashMap::new();
        let mut scheduled: HashMap<&str, u64> = HashMap::new();
        let mut new_queues: HashMap<&str, HashSet<&str>> = HashMap::new();
        let mut depths: HashMap<QueueKey, u64> = HashMap::new();
        for (new, tenant, owner) in &jobs {
            if let Some(id) = new.id {
                if !ids.insert(id) || t.exists(id)? {
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
            if let Some(tenant) = tenant.as_deref() {
                let n = tenants.entry(tenant).or_default();
                if over(
                    self.idx.tenant_jobs(tenant) + *n,
                    limits.max_pending_per_tenant,
                ) {
                    return Err(QueueError::QuotaExceeded {
                        quota: Quota::TenantPending,
                        limit: limits.max_pending_per_tenant,
                    });
                }
                *n += 1;
                if !new.pending && new.run_at.is_some_and(|at| at > t.now) {
                    let n = scheduled.entry(tenant).or_default();
                    if over(
                        self.idx.tenant_scheduled(tenant) + *n,
                        limits.max_scheduled_per_tenant,
                    ) {
                        return Err(QueueError::QuotaExceeded {
                            quota: Quota::TenantScheduled,
                            limit: limits.max_scheduled_per_tenant,
                        });
                    }
                    *n += 1;
                }
                let fresh = new_queues.entry(tenant).or_default();
                if !self.idx.has_queue(&key) && !fresh.contains(new.queue.as_str()) {
                    let have = self.idx.tenant_queue_count(tenant) + fresh.len() as u64;
                    if over(have, limits.max_queues_per_tenant) {
                        return Err(QueueError::QuotaExceeded {
                            quota: Quota::TenantQueues,
                            limit: limits.max_queues_per_tenant,
                        });
                    }
                    fresh.insert(new.queue.as_str());
                }
            }
            let bound = self.bound_of(&key, limits);
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
            match self.enqueue(t, new, tenant, owner, limits, None) {
                Ok(done) => stored.push(done.job),
                Err(e) => {
                    // A failure after the first write would leave part of the batch in the
                    // turn: the caller fails the whole turn instead.
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
    fn drop_job(&mut self, t: &mut Turn<'_>, id: JobId) -> Result<Job, QueueError> {
        let Some(mut job) = t.load(id)? else {
            error!(job_id = %id, "ready index names a missing job; the indexes will be rebuilt");
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
            .into_error(job.attempt, t.now),
        );
        job.state = JobState::Discarded;
        job.discarded_at = Some(t.now);
        job.completed_at = Some(t.now);
        t.put(&job);
        self.idx.add(&job);
        t.event("backpressure.dropped", &job);
        Ok(job)
    }

    /// Sets a queue's bound, or removes it with `None`.
    pub fn set_bound(&mut self, t: &mut Turn<'_>, key: QueueKey, bound: Option<QueueBound>) {
        t.writes.bounds.insert(key.clone(), bound.clone());
        match bound {
            Some(bound) => self.bounds.insert(key, bound),
            None => self.bounds.remove(&key),
        };
    }

    /// Claims up to `req.count` ready jobs from the queues, in the order given, within the
    /// principal's and the tenant's running quotas.
    pub fn fetch(&mut self, t: &mut Turn<'_>, req: &FetchRequest) -> Result<Vec<Job>, QueueError> {
        let now = t.now;
        let mut claimed = Vec::new();
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
                // A job that cannot be opened is never handed to a worker, and does not hold
                // up the jobs behind it.
                let Some(mut job) = self.load_indexed(t, id)? else {
                    continue;
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
                    t.put(&job);
                    self.idx.add(&job);
                    t.event("job.expired", &job);
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
                t.put(&job);
                self.idx.add(&job);
                t.event("job.started", &job);
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
        t: &Turn<'_>,
        id: JobId,
        holder: &Holder,
        attempt: Option<u32>,
        action: &'static str,
    ) -> Result<Job, QueueError> {
        let job = t.load_scoped(id, holder.tenant.as_deref())?;
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

    /// Completes an active job held by the caller.
    pub fn ack(&mut self, t: &mut Turn<'_>, req: AckRequest) -> Result<Job, QueueError> {
        let mut job = Self::load_held(t, req.id, &req.holder, req.attempt, "acknowledge")?;
        self.idx.remove(&job);
        job.state = JobState::Completed;
        job.completed_at = Some(t.now);
        job.result = req.result;
        job.lease = None;
        job.error = None;
        t.put(&job);
        self.idx.add(&job);
        t.event("job.completed", &job);
        Ok(job)
    }

    /// Fails the current attempt of an active job held by the caller.
    pub fn nack(&mut self, t: &mut Turn<'_>, req: NackRequest) -> Result<Job, QueueError> {
        let mut job = Self::load_held(t, req.id, &req.holder, req.attempt, "fail")?;
        self.idx.remove(&job);
        job.lease = None;
        if req.requeue {
            job.push_error(req.failure.into_error(job.attempt, t.now));
            job.state = JobState::Available;
            job.seq = self.idx.take_seq();
            t.event("job.requeued", &job);
        } else {
            self.fail_attempt(t, &mut job, req.failure);
        }
        t.put(&job);
        self.idx.add(&job);
        Ok(job)
    }

    /// Extends the caller's leases. A job held by somebody else refuses the whole heartbeat.
    pub fn heartbeat(
        &mut self,
        t: &mut Turn<'_>,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatOutcome, QueueError> {
        let mut held = Vec::new();
        let mut directive = if self.draining { "quiet" } else { "running" };
        for id in &req.job_ids {
            let Some(job) = t.load(*id)? else { continue };
            // Another tenant's job is not there for this worker at all.
            if job.state != JobState::Active || job.tenant != req.holder.tenant {
                continue;
            }
            match &job.lease {
                Some(lease) if holds(lease, &req.holder) => {}
                _ => return Err(QueueError::LeaseNotHeld),
            }
            if self.honour_test_directives {
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
                lease.visibility_deadline = t
                    .now
                    .saturating_add(i64::try_from(visibility).unwrap_or(i64::MAX));
            }
            t.put(&job);
            self.idx.add(&job);
            extended.push(job.id);
        }
        Ok(HeartbeatOutcome {
            extended,
            directive,
        })
    }

    /// Cancels a job that is not yet terminal; returns it with its previous state.
    pub fn cancel(
        &mut self,
        t: &mut Turn<'_>,
        id: JobId,
        scope: Option<&str>,
    ) -> Result<(Job, JobState), QueueError> {
        let mut job = t.load_scoped(id, scope)?;
        if job.state.is_terminal() {
            return Err(QueueError::InvalidState {
                action: "cancel",
                current: job.state,
            });
        }
        let previous = job.state;
        self.idx.remove(&job);
        job.state = JobState::Cancelled;
        job.cancelled_at = Some(t.now);
        job.lease = None;
        job.scheduled_at = None;
        t.put(&job);
        self.idx.add(&job);
        t.event("job.cancelled", &job);
        Ok((job, previous))
    }

    /// Makes a pending job available.
    pub fn activate(
        &mut self,
        t: &mut Turn<'_>,
        id: JobId,
        scope: Option<&str>,
    ) -> Result<Job, QueueError> {
        let mut job = t.load_scoped(id, scope)?;
        if job.state != JobState::Pending {
            return Err(QueueError::InvalidState {
                action: "activate",
                current: job.state,
            });
        }
        self.idx.remove(&job);
        job.state = JobState::Available;
        job.enqueued_at = t.now;
        t.put(&job);
        self.idx.add(&job);
        t.event("job.enqueued", &job);
        Ok(job)
    }

    fn load_dead(t: &Turn<'_>, id: JobId, scope: Option<&str>) -> Result<Job, QueueError> {
        let job = t.load_scoped(id, scope)?;
        if job.dead_letter {
            Ok(job)
        } else {
            Err(QueueError::NotInDeadLetter)
        }
    }

    /// Puts a dead-letter job back to `available` with its attempts reset.
    pub fn dead_letter_retry(
        &mut self,
        t: &mut Turn<'_>,
        id: JobId,
        scope: Option<&str>,
    ) -> Result<Job, QueueError> {
        let mut job = Self::load_dead(t, id, scope)?;
        self.idx.remove(&job);
        job.dead_letter = false;
        job.state = JobState::Available;
        job.attempt = 0;
        job.discarded_at = None;
        job.completed_at = None;
        job.started_at = None;
        job.error = None;
        job.retry_delay_ms = None;
        job.enqueued_at = t.now;
        job.seq = self.idx.take_seq();
        t.put(&job);
        self.idx.add(&job);
        t.event("job.enqueued", &job);
        Ok(job)
    }

    /// Deletes a dead-letter job for good.
    pub fn dead_letter_delete(
        &mut self,
        t: &mut Turn<'_>,
        id: JobId,
        scope: Option<&str>,
    ) -> Result<(), QueueError> {
        let job = Self::load_dead(t, id, scope)?;
        self.idx.remove(&job);
        t.delete(id);
        t.event("job.deleted", &job);
        Ok(())
    }

    /// Deletes every job and bound (testing mode only).
    pub fn reset(&mut self, t: &mut Turn<'_>) {
        t.writes = Writes {
            clear: true,
            ..Writes::default()
        };
        t.events.clear();
        self.idx = Indexes::default();
        self.bounds.clear();
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
