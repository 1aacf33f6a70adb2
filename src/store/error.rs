//! Storage errors.

use std::path::PathBuf;

/// What can go wrong below the actors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the database open (a running server, for offline commands).
    #[error("the database {0} is in use by another process")]
    InUse(PathBuf),
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    /// A record that cannot be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("i/o error: {0}")]
    Io(std::io::Error),
    /// The control tables cannot be moved out of the jobs file safely (see
    /// [`super::migrate`]).
    #[error("cannot move the control tables: {0}")]
    Migration(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Db(redb::Error::from(e))
            }
        }
    )*};
}

from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
