//! The storage seam: the narrow interface between the queue engine and the store that keeps its
//! jobs. The engine's core ([`super::core`]) only reads through [`JobSource`] and returns the
//! writes of a turn as [`Writes`]; the actor hands those to [`JobStore::commit`] as one durable
//! transaction. redb ([`crate::store::jobs`]) is the first implementation and the embedded
//! default; a PostgreSQL store implements the same trait.
//!
//! Why each method exists is written beside it and in `docs/queue-engine.md`. Anything not here
//! (indexes, ordering, leases, quotas) is the engine's business, not the store's.

use std::collections::BTreeMap;

use super::bounds::QueueBound;
use super::sched::QueueKey;
use super::QueueError;
use crate::job::{Job, JobId};
use crate::vault::RewrapStep;

/// Reads of job records as of the last commit. Implementations open (decrypt) the record; a
/// record the server's keys cannot open is [`QueueError::Unreadable`], never a wrong job.
pub trait JobSource {
    /// The job with this id, opened.
    fn job(&self, id: JobId) -> Result<Option<Job>, QueueError>;

    /// The clear part of the record (routing fields; payloads empty): for index upkeep and
    /// tenant checks on a record that cannot be opened.
    fn head(&self, id: JobId) -> Result<Option<Job>, QueueError>;
}

/// One turn's writes, applied by [`JobStore::commit`] in one durable transaction or not at all.
#[derive(Debug, Default)]
pub struct Writes {
    /// Remove every job and queue bound first (the testing reset).
    pub clear: bool,
    /// The new record of each job the turn changed (`None`: delete it), in id order.
    pub jobs: BTreeMap<JobId, Option<Job>>,
    /// Queue bounds set (`Some`) or removed (`None`).
    pub bounds: BTreeMap<QueueKey, Option<QueueBound>>,
}

impl Writes {
    /// Whether there is nothing to commit.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.clear && self.jobs.is_empty() && self.bounds.is_empty()
    }
}

/// The store behind the queue engine. Only the queue actor calls the writing methods, so a
/// store never sees two turns at once; readers may run beside a commit.
pub trait JobStore: Send + Sync + 'static {
    /// A consistent view of the committed jobs. The actor opens one per turn to read the
    /// records it changes; request handlers open their own for by-id reads, so a read never
    /// waits for a commit.
    fn reader(&self) -> Result<Box<dyn JobSource + '_>, QueueError>;

    /// Visits the clear part of every record: the input of an index rebuild (at start, and
    /// after a failed commit). A record stored under another job's key is left out.
    fn scan_heads(&self, visit: &mut dyn FnMut(Job)) -> Result<(), QueueError>;

    /// The queue bounds set through the admin API: kept with the jobs, since the engine
    /// checks them in the same turn as the enqueue they refuse.
    fn bounds(&self) -> Result<Vec<(QueueKey, QueueBound)>, QueueError>;

    /// Applies a turn's writes durably, all or nothing. Only after it returns `Ok` does the
    /// actor answer the turn's callers: a 201 means the job is on disk.
    fn commit(&self, writes: &Writes) -> Result<(), QueueError>;

    /// Re-wraps the data keys of up to `batch` records after `after` (id order) with the
    /// active KEK, in one durable transaction. A store-level pass (payloads are not opened), so
    /// the engine's state is unchanged; the actor runs it between turns so no job write races it.
    fn rewrap(&self, after: Option<u128>, batch: usize) -> Result<RewrapStep, QueueError>;
}

/// An in-memory store for the engine's unit and model tests: a map of jobs and bounds that a
/// commit replaces in one step, like a transaction. It keeps records unencrypted; the redb
/// store's own tests cover sealing.
#[cfg(test)]
#[derive(Default)]
pub struct MemoryStore {
    state: std::sync::Mutex<MemoryState>,
}

#[cfg(test)]
#[derive(Default, Clone)]
struct MemoryState {
    jobs: BTreeMap<JobId, Job>,
    bounds: BTreeMap<QueueKey, QueueBound>,
}

#[cfg(test)]
impl MemoryStore {
    /// Every stored job, by id.
    pub fn jobs(&self) -> BTreeMap<JobId, Job> {
        self.state
            .lock()
            .map(|s| s.jobs.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
struct MemoryReader(MemoryState);

#[cfg(test)]
impl JobSource for MemoryReader {
    fn job(&self, id: JobId) -> Result<Option<Job>, QueueError> {
        Ok(self.0.jobs.get(&id).cloned())
    }

    fn head(&self, id: JobId) -> Result<Option<Job>, QueueError> {
        self.job(id)
    }
}

#[cfg(test)]
impl JobStore for MemoryStore {
    fn reader(&self) -> Result<Box<dyn JobSource + '_>, QueueError> {
        let state = self.state.lock().map_err(|_| QueueError::Unavailable)?;
        Ok(Box::new(MemoryReader(state.clone())))
    }

    fn scan_heads(&self, visit: &mut dyn FnMut(Job)) -> Result<(), QueueError> {
        for job in self.jobs().into_values() {
            visit(job);
        }
        Ok(())
    }

    fn bounds(&self) -> Result<Vec<(QueueKey, QueueBound)>, QueueError> {
        let state = self.state.lock().map_err(|_| QueueError::Unavailable)?;
        Ok(state.bounds.clone().into_iter().collect())
    }

    fn commit(&self, writes: &Writes) -> Result<(), QueueError> {
        let mut state = self.state.lock().map_err(|_| QueueError::Unavailable)?;
        if writes.clear {
            *state = MemoryState::default();
        }
        for (id, job) in &writes.jobs {
            match job {
                Some(job) => state.jobs.insert(*id, job.clone()),
                None => state.jobs.remove(id),
            };
        }
        for (key, bound) in &writes.bounds {
            match bound {
                Some(b) => state.bounds.insert(key.clone(), b.clone()),
                None => state.bounds.remove(key),
            };
        }
        Ok(())
    }

    fn rewrap(&self, _after: Option<u128>, _batch: usize) -> Result<RewrapStep, QueueError> {
        Ok(RewrapStep::default())
    }
}
