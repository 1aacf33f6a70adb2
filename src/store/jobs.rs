//! The redb implementation of the queue engine's storage seam ([`crate::queue::seam`]): job
//! records sealed with the key vault's envelope in the `jobs` table, and queue bounds in
//! `queue_config`, both in the jobs file. The queue actor is its only writer; by-id reads open
//! their own read transaction and never wait for a commit.

use std::collections::BTreeMap;

use redb::ReadableTable;
use tracing::{error, warn};

use super::{codec, tables, Store, StoreError};
use crate::job::{Job, JobId};
use crate::queue::bounds::{self, QueueBound};
use crate::queue::sched::QueueKey;
use crate::queue::seam::{JobSource, JobStore, Writes};
use crate::queue::QueueError;
use crate::vault::sealed;
use crate::vault::{RewrapStep, VaultError, VaultKeys};

/// Jobs in the redb file, sealed and opened with the vault's keys.
#[derive(Clone)]
pub struct RedbJobs {
    store: Store,
    keys: VaultKeys,
}

impl RedbJobs {
    /// The job store over `store`'s jobs file, sealing with `keys`.
    #[must_use]
    pub fn new(store: Store, keys: VaultKeys) -> Self {
        Self { store, keys }
    }
}

/// A read transaction over the job table.
struct Reader {
    table: redb::ReadOnlyTable<u128, &'static [u8]>,
    keys: VaultKeys,
    ring: std::sync::Arc<crate::vault::KeyRing>,
}

impl JobSource for Reader {
    fn job(&self, id: JobId) -> Result<Option<Job>, QueueError> {
        let guard = self.table.get(id.as_u128()).map_err(StoreError::from)?;
        let Some(guard) = guard else { return Ok(None) };
        match sealed::open_job(&self.ring, guard.value()) {
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
            // A record that does not decode: reported like one that does not open.
            Err(VaultError::Storage(StoreError::Corrupt(reason)) | VaultError::Corrupt(reason)) => {
                self.keys.count_failure();
                metrics::counter!(crate::metrics::CORRUPT_RECORDS, "table" => "jobs").increment(1);
                warn!(job_id = %id, error = %reason, "job record does not decode");
                Err(QueueError::Unreadable(id))
            }
            Err(VaultError::Storage(e)) => Err(QueueError::Storage(e)),
            Err(e) => Err(QueueError::Storage(StoreError::Corrupt(e.to_string()))),
        }
    }

    fn head(&self, id: JobId) -> Result<Option<Job>, QueueError> {
        let guard = self.table.get(id.as_u128()).map_err(StoreError::from)?;
        match guard.map(|g| sealed::job_head(g.value()).map(|h| h.job)) {
            None => Ok(None),
            Some(Ok(job)) => Ok(Some(job)),
            // Not even the clear part decodes: unreadable (the engine drops an index entry
            // whose head it cannot read by rebuilding, which sets the record aside).
            Some(Err(StoreError::Corrupt(reason))) => {
                warn!(job_id = %id, error = %reason, "job record does not decode");
                Err(QueueError::Unreadable(id))
            }
            Some(Err(e)) => Err(QueueError::from(e)),
        }
    }
}

impl JobStore for RedbJobs {
    fn reader(&self) -> Result<Box<dyn JobSource + '_>, QueueError> {
        let txn = self.store.jobs_read()?;
        let table = txn.open_table(tables::JOBS).map_err(StoreError::from)?;
        Ok(Box::new(Reader {
            table,
            keys: self.keys.clone(),
            ring: self.keys.ring(),
        }))
    }

    fn scan_heads(&self, visit: &mut dyn FnMut(Job)) -> Result<(), QueueError> {
        let txn = self.store.jobs_read()?;
        let table = txn.open_table(tables::JOBS).map_err(StoreError::from)?;
        for entry in table.iter().map_err(StoreError::from)? {
            let (key, value) = entry.map_err(StoreError::from)?;
            // Only the clear part: the indexes need no payload, and a job whose key is missing
            // still has its place (it fails closed when read).
            let head = match sealed::job_head(value.value()) {
                Ok(head) => head,
                // A record that does not decode is set aside (left on disk, out of the
                // indexes), counted and reported like an unreadable job: one bad record must
                // not keep the queue from starting or rebuilding.
                Err(e) => {
                    self.keys.count_failure();
                    metrics::counter!(crate::metrics::CORRUPT_RECORDS, "table" => "jobs")
                        .increment(1);
                    error!(row = %JobId(uuid::Uuid::from_u128(key.value())), error = %e, "job record does not decode; set aside");
                    continue;
                }
            };
            if head.job.id.as_u128() != key.value() {
                // A record copied onto another row is never scheduled; reading it fails closed.
                error!(row = %JobId(uuid::Uuid::from_u128(key.value())), "job record belongs to another row; left out");
                continue;
            }
            visit(head.job);
        }
        Ok(())
    }

    /// A record that does not decode is skipped with an error in the log (that queue falls
    /// back to the default bound) rather than keeping the server down.
    fn bounds(&self) -> Result<Vec<(QueueKey, QueueBound)>, QueueError> {
        let txn = self.store.jobs_read()?;
        let table = txn
            .open_table(tables::QUEUE_CONFIG)
            .map_err(StoreError::from)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(StoreError::from)? {
            let (key, value) = entry.map_err(StoreError::from)?;
            let bound = codec::decode::<QueueBound>(value.value());
            match (bounds::parse_table_key(key.value()), bound) {
                (Some(k), Ok(b)) => out.push((k, b)),
                _ => error!("unreadable queue bound record skipped"),
            }
        }
        Ok(out)
    }

    fn commit(&self, writes: &Writes) -> Result<(), QueueError> {
        if writes.is_empty() {
            return Ok(());
        }
        // Each record is sealed inside the transaction and inserted at once, so one buffer is
        // live at a time: sealing a whole group first measured slower at large groups (the
        // allocator consolidating hundreds of freed buffers). Only the queue writes this file,
        // so holding its lock while sealing keeps nobody waiting. A job that cannot be sealed
        // is not written: the turn fails and nothing is lost.
        let ring = self.keys.ring();
        let mut config = Vec::with_capacity(writes.bounds.len());
        for ((tenant, queue), bound) in &writes.bounds {
            let key = bounds::table_key(tenant.as_deref(), queue);
            config.push((key, bound.as_ref().map(codec::encode).transpose()?));
        }
        // Data keys wrapped in this commit, per KEK: counted in the same transaction, so the
        // count is exact and durable (see `vault::usage`).
        let mut wrapped: BTreeMap<String, u64> = BTreeMap::new();
        let totals = self.store.jobs_write(|txn| {
            let mut table = txn.open_table(tables::JOBS).map_err(StoreError::from)?;
            let mut bounds_table = txn
                .open_table(tables::QUEUE_CONFIG)
                .map_err(StoreError::from)?;
            if writes.clear {
                table.retain(|_, _| false).map_err(StoreError::from)?;
                bounds_table
                    .retain(|_, _| false)
                    .map_err(StoreError::from)?;
            }
            for (id, job) in &writes.jobs {
                match job {
                    Some(job) => {
                        let record = sealed::seal_job_counted(&ring, job).map_err(|e| {
                            QueueError::Storage(StoreError::Corrupt(format!("seal: {e}")))
                        })?;
                        // A job's first record carries the data key wrapped at enqueue; a
                        // fresh key is wrapped for a job that had none.
                        let first = table
                            .insert(id.as_u128(), record.bytes.as_slice())
                            .map_err(StoreError::from)?
                            .is_none();
                        if first || record.fresh {
                            *wrapped.entry(record.kek).or_default() += 1;
                        }
                    }
                    None => {
                        table.remove(id.as_u128()).map_err(StoreError::from)?;
                    }
                }
            }
            for (key, bytes) in &config {
                match bytes {
                    Some(bytes) => {
                        bounds_table
                            .insert(key.as_str(), bytes.as_slice())
                            .map_err(StoreError::from)?;
                    }
                    None => {
                        bounds_table
                            .remove(key.as_str())
                            .map_err(StoreError::from)?;
                    }
                }
            }
            Ok::<_, QueueError>(crate::vault::usage::add(txn, &wrapped, self.keys.now())?)
        })?;
        self.keys.publish_usage(totals);
        Ok(())
    }

    fn rewrap(&self, after: Option<u128>, batch: usize) -> Result<RewrapStep, QueueError> {
        let ring = self.keys.ring();
        let (step, totals) = self.store.jobs_write(|txn| {
            crate::vault::rewrap_in(txn, &self.keys, &ring, after, batch).map_err(|e| match e {
                VaultError::Storage(e) => QueueError::Storage(e),
                _ => QueueError::Unavailable,
            })
        })?;
        self.keys.publish_usage(totals);
        Ok(step)
    }
}
