//! The embedded database: one redb file, its tables and the record encoding. The queue actor is
//! the only writer of the job tables and the auth store the only writer of the key tables; both
//! reach the file through [`Store`].

pub mod codec;
pub mod error;
pub mod jobs;
pub mod tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::Database;

pub use error::StoreError;

/// The database file name inside the data folder.
pub const DB_FILE: &str = "bulwark.redb";

/// A shared handle to the open database.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `DATA_DIR/bulwark.redb` and makes sure every table exists.
    /// Fails with [`StoreError::InUse`] when another process holds the file.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(StoreError::Io)?;
        let path = data_dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.clone()),
            other => StoreError::from(redb::Error::from(other)),
        })?;
        let txn = db.begin_write()?;
        {
            txn.open_table(tables::JOBS)?;
            txn.open_table(tables::API_KEYS)?;
            txn.open_table(tables::AUDIT_INDEX)?;
            txn.open_multimap_table(tables::AUDIT_BY)?;
            txn.open_table(tables::USERS)?;
            txn.open_table(tables::REFRESH_TOKENS)?;
            txn.open_table(tables::QUEUE_CONFIG)?;
        }
        txn.commit()?;
        Ok(Self {
            db: Arc::new(db),
            path,
        })
    }

    /// The redb database.
    #[must_use]
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Where the file lives.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}
