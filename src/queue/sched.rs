//! The queue's in-memory indexes: what is ready in each queue (priority, then FIFO), what falls
//! due when (scheduled and retryable jobs), whose lease runs out when, what sits in the dead
//! letter queue, and per-queue counts. They hold ids and ordering keys only; the records live in
//! redb. Rebuilt from redb at start-up by replaying [`Indexes::add`] over every record.
//!
//! Every change of a job goes `remove(old) → mutate → add(new)`, so membership always follows
//! the record's state and no index can drift from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::clock::Millis;
use crate::job::{Job, JobId, JobState};

/// Ready-set order: higher priority first, then enqueue order.
type ReadyKey = (i64, u64, JobId);

/// A queue is a name within a tenant: tenants' queues of the same name never mix.
pub type QueueKey = (Option<String>, String);

/// The dead letter queue: by discard time and job id, with the job's queue.
pub type DeadLetters = BTreeMap<(Millis, JobId), QueueKey>;

fn queue_key(job: &Job) -> QueueKey {
    (job.tenant.clone(), job.queue.clone())
}

/// Per-state counts of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    pub scheduled: u64,
    pub available: u64,
    pub pending: u64,
    pub active: u64,
    pub completed: u64,
    pub retryable: u64,
    pub cancelled: u64,
    pub discarded: u64,
    pub dead_letter: u64,
}

impl StateCounts {
    /// Non-terminal jobs: a queue's depth for backpressure.
    #[must_use]
    pub fn depth(&self) -> u64 {
        self.scheduled + self.available + self.pending + self.active + self.retryable
    }

    fn slot(&mut self, state: JobState) -> &mut u64 {
        match state {
            JobState::Scheduled => &mut self.scheduled,
            JobState::Available => &mut self.available,
            JobState::Pending => &mut self.pending,
            JobState::Active => &mut self.active,
            JobState::Completed => &mut self.completed,
            JobState::Retryable => &mut self.retryable,
            JobState::Cancelled => &mut self.cancelled,
            JobState::Discarded => &mut self.discarded,
        }
    }
}

/// What the queue listing shows for one queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueueSummary {
    pub name: String,
    /// When the queue's oldest known job was created.
    pub created_at: Millis,
    pub counts: StateCounts,
}

/// All indexes.
#[derive(Debug, Default)]
pub struct Indexes {
    ready: HashMap<QueueKey, BTreeSet<ReadyKey>>,
    timed: BTreeSet<(Millis, JobId)>,
    leases: BTreeSet<(Millis, JobId)>,
    /// Shared with the published read model; copied only when the dead letter queue changes
    /// while a reader holds the previous version.
    dead: Arc<DeadLetters>,
    queues: BTreeMap<QueueKey, QueueSummary>,
    next_seq: u64,
    /// Non-terminal jobs per owner (the per-principal pending quota).
    owners: HashMap<String, u64>,
    /// Active jobs per lease holder (the per-principal running quota).
    holders: HashMap<String, u64>,
    /// Non-terminal jobs per tenant (the per-tenant quota).
    tenants: HashMap<String, u64>,
    /// Active jobs per tenant.
    tenant_active: HashMap<String, u64>,
    /// Scheduled jobs per tenant.
    tenant_scheduled: HashMap<String, u64>,
}

fn bump(map: &mut HashMap<String, u64>, key: &str) {
    *map.entry(key.to_string()).or_default() += 1;
}

/// Decrements a count, dropping the entry at zero so the maps stay as small as the live set.
fn drop_one(map: &mut HashMap<String, u64>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

fn ready_key(job: &Job) -> ReadyKey {
    (-i64::from(job.priority), job.seq, job.id)
}

impl Indexes {
    /// Indexes a job by its current state.
    pub fn add(&mut self, job: &Job) {
        self.next_seq = self.next_seq.max(job.seq + 1);
        if !job.state.is_terminal() {
            if let Some(owner) = &job.owner {
                bump(&mut self.owners, owner);
            }
            if let Some(tenant) = &job.tenant {
                bump(&mut self.tenants, tenant);
            }
        }
        if let (JobState::Active, Some(lease)) = (job.state, &job.lease) {
            bump(&mut self.holders, &lease.principal);
        }
        if let Some(tenant) = &job.tenant {
            match job.state {
                JobState::Active => bump(&mut self.tenant_active, tenant),
                JobState::Scheduled => bump(&mut self.tenant_scheduled, tenant),
                _ => {}
            }
        }
        match job.state {
            JobState::Available => {
                self.ready
                    .entry(queue_key(job))
                    .or_default()
                    .insert(ready_key(job));
            }
            JobState::Scheduled | JobState::Retryable => {
                self.timed.insert((job.scheduled_at.unwrap_or(0), job.id));
            }
            JobState::Active => {
                if let Some(lease) = &job.lease {
                    self.leases.insert((lease.next_deadline(), job.id));
                }
            }
            _ => {}
        }
        if job.dead_letter {
            Arc::make_mut(&mut self.dead)
                .insert((job.discarded_at.unwrap_or(0), job.id), queue_key(job));
        }
        let summary = self
            .queues
            .entry(queue_key(job))
            .or_insert_with(|| QueueSummary {
                name: job.queue.clone(),
                created_at: job.created_at,
                counts: StateCounts::default(),
            });
        summary.created_at = summary.created_at.min(job.created_at);
        *summary.counts.slot(job.state) += 1;
        if job.dead_letter {
            summary.counts.dead_letter += 1;
        }
    }

    /// Removes a job from every index, as it was indexed (call before mutating it).
    pub fn remove(&mut self, job: &Job) {
        if !job.state.is_terminal() {
            if let Some(owner) = &job.owner {
                drop_one(&mut self.owners, owner);
            }
            if let Some(tenant) = &job.tenant {
                drop_one(&mut self.tenants, tenant);
            }
        }
        if let (JobState::Active, Some(lease)) = (job.state, &job.lease) {
            drop_one(&mut self.holders, &lease.principal);
        }
        if let Some(tenant) = &job.tenant {
            match job.state {
                JobState::Active => drop_one(&mut self.tenant_active, tenant),
                JobState::Scheduled => drop_one(&mut self.tenant_scheduled, tenant),
                _ => {}
            }
        }
        match job.state {
            JobState::Available => {
                if let Some(set) = self.ready.get_mut(&queue_key(job)) {
                    set.remove(&ready_key(job));
                }
            }
            JobState::Scheduled | JobState::Retryable => {
                self.timed.remove(&(job.scheduled_at.unwrap_or(0), job.id));
            }
            JobState::Active => {
                if let Some(lease) = &job.lease {
                    self.leases.remove(&(lease.next_deadline(), job.id));
                }
            }
            _ => {}
        }
        if job.dead_letter {
            Arc::make_mut(&mut self.dead).remove(&(job.discarded_at.unwrap_or(0), job.id));
        }
        if let Some(summary) = self.queues.get_mut(&queue_key(job)) {
            let slot = summary.counts.slot(job.state);
            *slot = slot.saturating_sub(1);
            if job.dead_letter {
                summary.counts.dead_letter = summary.counts.dead_letter.saturating_sub(1);
            }
        }
    }

    /// The next enqueue sequence number.
    pub fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The next ready job of a tenant's queue, without removing it.
    #[must_use]
    pub fn peek_ready(&self, tenant: Option<&str>, queue: &str) -> Option<JobId> {
        self.ready
            .get(&(tenant.map(str::to_string), queue.to_string()))
            .and_then(|set| set.first())
            .map(|(_, _, id)| *id)
    }

    /// Whether a queue has a job ready to fetch.
    #[must_use]
    pub fn has_ready(&self, key: &QueueKey) -> bool {
        self.ready.get(key).is_some_and(|set| !set.is_empty())
    }

    /// Scheduled and retryable jobs due at `now`, in due order.
    #[must_use]
    pub fn due_timed(&self, now: Millis) -> Vec<JobId> {
        self.timed
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Active jobs whose lease or execution deadline has passed.
    #[must_use]
    pub fn due_leases(&self, now: Millis) -> Vec<JobId> {
        self.leases
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Whether anything falls due at `now`.
    #[must_use]
    pub fn has_due(&self, now: Millis) -> bool {
        self.next_wake().is_some_and(|at| at <= now)
    }

    /// When the queue next has to look at a deadline.
    #[must_use]
    pub fn next_wake(&self) -> Option<Millis> {
        let timed = self.timed.first().map(|(at, _)| *at);
        let lease = self.leases.first().map(|(at, _)| *at);
        match (timed, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The dead letter queue, to publish.
    #[must_use]
    pub fn dead_letters(&self) -> Arc<DeadLetters> {
        self.dead.clone()
    }

    /// Every queue with its counts, to publish.
    #[must_use]
    pub fn summaries(&self) -> &BTreeMap<QueueKey, QueueSummary> {
        &self.queues
    }

    /// Non-terminal jobs of one queue: its depth for backpressure.
    #[must_use]
    pub fn depth(&self, key: &QueueKey) -> u64 {
        self.queues.get(key).map_or(0, |q| q.counts.depth())
    }

    /// Non-terminal jobs owned by a principal.
    #[must_use]
    pub fn owned(&self, owner: &str) -> u64 {
        self.owners.get(owner).copied().unwrap_or(0)
    }

    /// Active jobs held by a principal.
    #[must_use]
    pub fn held(&self, principal: &str) -> u64 {
        self.holders.get(principal).copied().unwrap_or(0)
    }

    /// Non-terminal jobs of a tenant.
    #[must_use]
    pub fn tenant_jobs(&self, tenant: &str) -> u64 {
        self.tenants.get(tenant).copied().unwrap_or(0)
    }

    /// Active jobs of a tenant.
    #[must_use]
    pub fn tenant_active(&self, tenant: &str) -> u64 {
        self.tenant_active.get(tenant).copied().unwrap_or(0)
    }

    /// Scheduled jobs of a tenant.
    #[must_use]
    pub fn tenant_scheduled(&self, tenant: &str) -> u64 {
        self.tenant_scheduled.get(tenant).copied().unwrap_or(0)
    }

    /// Whether the queue is known (has or had jobs since start).
    #[must_use]
    pub fn has_queue(&self, key: &QueueKey) -> bool {
        self.queues.contains_key(key)
    }

    /// Queues a tenant has.
    #[must_use]
    pub fn tenant_queue_count(&self, tenant: &str) -> u64 {
        let start = (Some(tenant.to_string()), String::new());
        self.queues
            .range(start..)
            .take_while(|((t, _), _)| t.as_deref() == Some(tenant))
            .count() as u64
    }

    /// The oldest `available` job of a queue (lowest enqueue sequence), for drop-oldest.
    #[must_use]
    pub fn oldest_ready(&self, key: &QueueKey) -> Option<JobId> {
        self.ready
            .get(key)?
            .iter()
            .min_by_key(|(_, seq, _)| *seq)
            .map(|(_, _, id)| *id)
    }

    /// Jobs per state over all queues.
    #[must_use]
    pub fn totals(&self) -> StateCounts {
        totals(self.queues.values())
    }

    /// Whether these live indexes hold what a rebuild from the store (`rebuilt`) holds: the
    /// same ready sets, timers, leases, dead letters and counts. Queues emptied since the
    /// rebuild's records were written may linger here with zero counts.
    #[cfg(test)]
    pub fn agrees_with(&self, rebuilt: &Indexes) -> Result<(), String> {
        fn non_empty<K: Clone + Ord, V: Clone + Ord>(
            m: &HashMap<QueueKey, BTreeSet<(K, V, JobId)>>,
        ) -> BTreeMap<QueueKey, BTreeSet<(K, V, JobId)>> {
            m.iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect()
        }
        let check = |what: &str, same: bool| {
            if same {
                Ok(())
            } else {
                Err(format!("{what} differ from a rebuild"))
            }
        };
        check(
            "ready sets",
            non_empty(&self.ready) == non_empty(&rebuilt.ready),
        )?;
        check("timers", self.timed == rebuilt.timed)?;
        check("leases", self.leases == rebuilt.leases)?;
        check("dead letters", self.dead == rebuilt.dead)?;
        check("owner counts", self.owners == rebuilt.owners)?;
        check("holder counts", self.holders == rebuilt.holders)?;
        check("tenant counts", self.tenants == rebuilt.tenants)?;
        check(
            "tenant active counts",
            self.tenant_active == rebuilt.tenant_active,
        )?;
        check(
            "tenant scheduled counts",
            self.tenant_scheduled == rebuilt.tenant_scheduled,
        )?;
        for (key, summary) in &self.queues {
            let want = rebuilt
                .queues
                .get(key)
                .map(|q| q.counts.clone())
                .unwrap_or_default();
            check(&format!("counts of {key:?}"), summary.counts == want)?;
        }
        check(
            "queues",
            rebuilt.queues.keys().all(|k| self.queues.contains_key(k)),
        )?;
        check("sequence", self.next_seq >= rebuilt.next_seq)
    }
}

/// Jobs per state over some queues.
pub fn totals<'a>(queues: impl Iterator<Item = &'a QueueSummary>) -> StateCounts {
    let mut t = StateCounts::default();
    for q in queues {
        let c = &q.counts;
        t.scheduled += c.scheduled;
        t.available += c.available;
        t.pending += c.pending;
        t.active += c.active;
        t.completed += c.completed;
        t.retryable += c.retryable;
        t.cancelled += c.cancelled;
        t.discarded += c.discarded;
        t.dead_letter += c.dead_letter;
    }
    t
}
