//! Vault errors. Messages name keys by (shortened) id and files by path, never key material.

use std::borrow::Cow;

use tracing::error;

use crate::error::{Code, ErrorCode, ErrorKind};
use crate::secrets::SecretFileError;
use crate::store::StoreError;

/// What the vault can fail with.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The key set as a whole is unusable (duplicate id, unknown active key, unreadable folder).
    #[error("key set refused: {0}")]
    KeySet(String),
    /// A key file is missing, exposed to others, or not a key.
    #[error("key file refused: {0}")]
    KeyFile(#[source] SecretFileError),
    /// No KEK is loaded, and stored jobs are sealed with KEKs that are missing: a new key would
    /// leave them all unreadable, so none is made.
    #[error(
        "no key-encryption key in {dir} (nor OJS_SECRET_KEK_*), but stored jobs are sealed with \
         missing keys: {missing}. Restore those key files from the secrets backup; to start over \
         with a new key on purpose (those jobs stay unreadable), run `bulwark init --new-keys`"
    )]
    MissingKeks { dir: String, missing: String },
    /// There is no active KEK, so nothing new can be sealed.
    #[error("no active key-encryption key")]
    NoActiveKey,
    /// The record names a KEK this server does not hold (retired or lost).
    #[error("the key-encryption key {kek} is not loaded")]
    UnknownKek { kek: String },
    /// Authentication failed: wrong key, ciphertext moved to another row or field, or tampered.
    /// One variant for every cause, on purpose.
    #[error("decryption failed")]
    Undecryptable,
    /// The record is not in a format this version understands.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("storage failure: {0}")]
    Storage(#[from] StoreError),
    /// The vault actor is gone.
    #[error("the key vault is unavailable")]
    Unavailable,
}

impl VaultError {
    /// The coarse class the HTTP layer maps to a status.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::KeySet(_) | Self::KeyFile(_) | Self::Corrupt(_) | Self::MissingKeks { .. } => {
                ErrorKind::Internal
            }
            Self::UnknownKek { .. } | Self::Undecryptable => ErrorKind::Internal,
            Self::NoActiveKey | Self::Storage(_) | Self::Unavailable => ErrorKind::Unavailable,
        }
    }

    /// Whether this error means "this record cannot be opened with the keys held" (fail closed,
    /// counted as unreadable), as opposed to an operational failure.
    #[must_use]
    pub fn is_unreadable(&self) -> bool {
        matches!(self, Self::UnknownKek { .. } | Self::Undecryptable)
    }
}

/// The client learns only that the vault failed: which key, file or record is for the log.
impl ErrorCode for VaultError {
    fn code(&self) -> Code {
        match self.kind() {
            ErrorKind::Unavailable => Code::BackendUnavailable,
            _ => Code::InternalError,
        }
    }

    fn message(&self) -> Cow<'static, str> {
        match self.code() {
            Code::InternalError => "the key vault could not complete the operation".into(),
            code => code.row().message.into(),
        }
    }

    fn log_cause(&self) {
        error!(error = %self, "key vault failure");
    }
}
