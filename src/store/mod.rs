//! The embedded database: two redb files, their tables and the record encoding.
//!
//! - `bulwark.redb`, the **jobs file**: the job table, the queue bounds and the count of data
//!   keys each key-encryption key wrapped. The queue actor is
//!   its only writer (the offline vault re-wrap aside, while the server is stopped).
//! - `control.redb`, the **control file**: API keys, the audit index, admin users and refresh
//!   tokens. The auth store, the audit writer and the accounts service write it.
//!
//! redb lets one write transaction run at a time per file. With one file, a key's last-used
//! flush, an audit index batch or a login would hold the lock the queue's group commit waits
//! for; with two, a control-plane commit never stalls a job commit (see `docs/storage.md`).
//! Readers never wait for either: redb reads a snapshot.
//!
//! Everyone reaches the files through [`Store`]: writes go through [`Store::control_write`] and
//! [`Store::jobs_write`] (the latter only from the queue engine's store, [`jobs`], and the
//! offline vault re-wrap), so no component can open a write on the wrong file by accident. [`migrate`] moves the control
//! tables out of a jobs file written before the split.

pub mod codec;
pub mod error;
pub mod jobs;
pub mod migrate;
pub mod tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadTransaction, ReadableDatabase, WriteTransaction};

pub use error::StoreError;

/// The jobs file name inside the data folder (jobs and queue bounds).
pub const DB_FILE: &str = "bulwark.redb";

/// The control file name inside the data folder (keys, audit index, users, refresh tokens).
pub const CONTROL_FILE: &str = "control.redb";

/// A shared handle to the two open databases.
#[derive(Clone)]
pub struct Store {
    jobs: Arc<Database>,
    control: Arc<Database>,
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `DATA_DIR/bulwark.redb` and `DATA_DIR/control.redb`, moves
    /// control tables out of a jobs file written before the split, and makes sure every table
    /// exists. Fails with [`StoreError::InUse`] when another process holds either file.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(StoreError::Io)?;
        let jobs = open_file(&data_dir.join(DB_FILE))?;
        let control = open_file(&data_dir.join(CONTROL_FILE))?;
        migrate::split_control_tables(&jobs, &control)?;
        commit_durably(&jobs, |txn| {
            txn.open_table(tables::JOBS)?;
            txn.open_table(tables::QUEUE_CONFIG)?;
            txn.open_table(tables::KEK_USAGE)?;
            Ok::<_, StoreError>(())
        })?;
        commit_durably(&control, |txn| {
            txn.open_table(tables::API_KEYS)?;
            txn.open_table(tables::AUDIT_INDEX)?;
            txn.open_multimap_table(tables::AUDIT_BY)?;
            txn.open_table(tables::USERS)?;
            txn.open_table(tables::REFRESH_TOKENS)?;
            Ok::<_, StoreError>(())
        })?;
        Ok(Self {
            jobs: Arc::new(jobs),
            control: Arc::new(control),
            dir: data_dir.to_path_buf(),
        })
    }

    /// Runs `change` in one write transaction on the control file and commits it durably when
    /// it returns `Ok`; an `Err` aborts the transaction and nothing is written. Blocks while
    /// another control write runs (never while a job commit runs): call it from blocking code.
    pub fn control_write<T, E>(
        &self,
        change: impl FnOnce(&WriteTransaction) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        commit_durably(&self.control, change)
    }

    /// A read transaction (a snapshot) on the control file.
    pub fn control_read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(self.control.begin_read()?)
    }

    /// Runs `change` in one write transaction on the jobs file and commits it durably when it
    /// returns `Ok`; an `Err` aborts. In a running server only the queue engine's store
    /// ([`jobs::RedbJobs`], driven by the queue actor's group commit) calls it; the offline
    /// vault re-wrap calls it while the server is stopped.
    pub fn jobs_write<T, E>(
        &self,
        change: impl FnOnce(&WriteTransaction) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        commit_durably(&self.jobs, change)
    }

    /// A read transaction (a snapshot) on the jobs file.
    pub fn jobs_read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(self.jobs.begin_read()?)
    }

    /// The jobs database (tests of the migration).
    #[cfg(test)]
    pub(crate) fn jobs_db(&self) -> &Database {
        &self.jobs
    }

    /// The control database (reads; writes go through [`Store::control_write`]).
    #[must_use]
    pub fn control_db(&self) -> &Database {
        &self.control
    }

    /// Where the jobs file lives.
    #[must_use]
    pub fn jobs_path(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }

    /// Where the control file lives.
    #[must_use]
    pub fn control_path(&self) -> PathBuf {
        self.dir.join(CONTROL_FILE)
    }
}

/// Opens or creates one redb file; a file another process holds is [`StoreError::InUse`].
fn open_file(path: &Path) -> Result<Database, StoreError> {
    Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.to_path_buf()),
        other => StoreError::from(redb::Error::from(other)),
    })
}

/// One write transaction on `db`: `change` runs inside it, `Ok` commits with an fsync, `Err`
/// aborts.
fn commit_durably<T, E>(
    db: &Database,
    change: impl FnOnce(&WriteTransaction) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<StoreError>,
{
    let mut txn = db.begin_write().map_err(StoreError::from)?;
    txn.set_durability(Durability::Immediate)
        .map_err(StoreError::from)?;
    match change(&txn) {
        Ok(value) => {
            txn.commit().map_err(StoreError::from)?;
            Ok(value)
        }
        Err(e) => {
            // The closure's error is what the caller needs; a failed rollback only leaks pages
            // redb repairs on the next open.
            if let Err(abort) = txn.abort() {
                tracing::warn!(error = %abort, "aborting a write transaction failed");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_write_commits_on_ok_and_leaves_nothing_on_err() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .control_write(|txn| {
                txn.open_table(tables::USERS)?
                    .insert("kept", b"1".as_slice())?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let err = store.control_write(|txn| {
            txn.open_table(tables::USERS)?
                .insert("dropped", b"2".as_slice())?;
            Err::<(), _>(StoreError::Corrupt("refused".into()))
        });
        assert!(matches!(err, Err(StoreError::Corrupt(_))));
        let txn = store.control_read().unwrap();
        let users = txn.open_table(tables::USERS).unwrap();
        assert!(users.get("kept").unwrap().is_some());
        assert!(users.get("dropped").unwrap().is_none());
        let jobs = store.jobs_read().unwrap();
        assert!(
            jobs.open_table(tables::USERS).is_err(),
            "control tables never appear in the jobs file"
        );
    }

    #[test]
    fn either_file_held_open_elsewhere_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        for file in [DB_FILE, CONTROL_FILE] {
            let held = Database::open(dir.path().join(file)).unwrap();
            match Store::open(dir.path()) {
                Err(StoreError::InUse(path)) => assert!(path.ends_with(file)),
                Err(e) => panic!("{file}: {e}"),
                Ok(_) => panic!("{file} was opened twice"),
            }
            drop(held);
        }
        assert!(Store::open(dir.path()).is_ok());
    }
}
