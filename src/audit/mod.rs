//! The audit writer: the only writer of the audit log, an append-only JSON-lines file whose
//! records are HMAC-chained ([`record`]) so that `bulwark audit verify` detects any edited,
//! inserted, removed, reordered or cut record.
//!
//! Records are never dropped silently: senders wait for room in a bounded mailbox. Operations
//! that must not happen unrecorded call [`AuditHandle::record`], which returns only once the
//! record is on disk (fsync); if it cannot be written, the operation is refused (fail closed).

pub mod catalog;
pub mod index;
pub mod record;
pub mod retention;
mod writer;

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use ring::hmac;
use tokio::sync::{mpsc, oneshot};
use tracing::error;

use crate::clock::Clock;
use crate::store::Store;

pub use record::{AuditEvent, Outcome};

/// The key file inside the secrets folder.
pub const KEY_FILE: &str = "audit-hmac.key";

/// Where the audit trail lives, and how long it is kept.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub log_file: PathBuf,
    pub head_file: PathBuf,
    /// Records older than this are pruned (behind a signed checkpoint); `None` keeps them all.
    pub retention: Option<Duration>,
}

/// What can go wrong with the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log could not be written durably")]
    WriteFailed,
    #[error("the audit writer is unavailable")]
    Unavailable,
    #[error("audit key: {0}")]
    Key(String),
    #[error("audit log: {0}")]
    Log(String),
}

pub(crate) enum Msg {
    Record {
        event: AuditEvent,
        done: Option<oneshot::Sender<Result<(), AuditError>>>,
    },
    /// Apply the retention period now; answers with the number of records removed.
    Prune {
        done: oneshot::Sender<Result<u64, AuditError>>,
    },
}

/// What a prune did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pruned {
    pub removed: u64,
}

/// A cheap, cloneable handle to the audit writer.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<Msg>,
}

impl AuditHandle {
    /// Opens the log (recovering from a crash mid-append), checks it against its signed head,
    /// and starts the writer thread. Refuses to start on a log that does not match its head.
    /// With a store, records are also indexed there for the admin query route. Records are
    /// stamped, and retention measured, by `clock`.
    pub fn spawn(
        config: &AuditConfig,
        key: hmac::Key,
        store: Option<Store>,
        clock: Clock,
    ) -> Result<(Self, JoinHandle<()>), AuditError> {
        let writer = writer::Writer::open(config, key, store, clock)?;
        let (tx, rx) = mpsc::channel(4096);
        let thread = std::thread::Builder::new()
            .name("bulwark-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Log(e.to_string()))?;
        Ok((Self { tx }, thread))
    }

    /// Appends a record and waits until it is durably written. Use before a security-relevant
    /// operation: if this fails, do not perform it.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Msg::Record {
                event,
                done: Some(done),
            })
            .await
            .map_err(|_| AuditError::Unavailable)?;
        rx.await.map_err(|_| AuditError::Unavailable)?
    }

    /// Appends a record without waiting for the disk (it waits for room in the mailbox, so
    /// nothing is dropped). A writer that is gone is logged.
    pub async fn emit(&self, event: AuditEvent) {
        let event_type = event.event_type;
        if self
            .tx
            .send(Msg::Record { event, done: None })
            .await
            .is_err()
        {
            error!(event_type, "audit writer unavailable, record not written");
        }
    }
}

impl AuditHandle {
    /// Removes the records older than the retention period now (the writer also does so at
    /// start and every hour). Returns how many were removed.
    pub async fn prune(&self) -> Result<Pruned, AuditError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Msg::Prune { done })
            .await
            .map_err(|_| AuditError::Unavailable)?;
        let removed = rx.await.map_err(|_| AuditError::Unavailable)??;
        Ok(Pruned { removed })
    }
}

/// Reads the audit HMAC key from the secrets folder, creating it (32 random bytes, hex, mode
/// 0600) on first use. A key file readable by group or others is refused.
pub fn load_or_create_key(secrets_dir: &Path) -> Result<hmac::Key, AuditError> {
    crate::secrets::load_or_create_hex_key(&secrets_dir.join(KEY_FILE))
        .map(|bytes| hmac::Key::new(hmac::HMAC_SHA256, bytes.as_ref()))
        .map_err(|e| AuditError::Key(e.to_string()))
}

/// Reads an existing audit HMAC key (for `bulwark audit verify`).
pub fn load_key(secrets_dir: &Path) -> Result<hmac::Key, AuditError> {
    crate::secrets::read_hex_key(&secrets_dir.join(KEY_FILE))
        .map(|bytes| hmac::Key::new(hmac::HMAC_SHA256, bytes.as_ref()))
        .map_err(|e| AuditError::Key(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;
    /// 2026-05-28T00:00:00Z.
    const START_MS: i64 = 1_779_926_400_000;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn records_are_stamped_by_the_clock_and_pruned_once_it_passes_their_retention() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            log_file: dir.path().join("test-audit.log"),
            head_file: dir.path().join("test-audit.head"),
            retention: Some(Duration::from_millis(2 * DAY_MS)),
        };
        let key = || hmac::Key::new(hmac::HMAC_SHA256, &[5u8; 32]);
        let (clock, hand) = Clock::manual(START_MS);
        let (audit, thread) = AuditHandle::spawn(&config, key(), None, clock).unwrap();
        for _ in 0..3 {
            audit
                .record(AuditEvent::new("auth.failure", Outcome::Failure))
                .await
                .unwrap();
        }
        let stamped = lines(&config.log_file);
        assert!(stamped
            .iter()
            .all(|r| r["timestamp"] == "2026-05-28T00:00:00.000Z"));

        // A day later nothing is old enough; past two days the first three go.
        hand.advance(DAY_MS);
        assert_eq!(audit.prune().await.unwrap().removed, 0);
        audit
            .record(AuditEvent::new("server.started", Outcome::Success))
            .await
            .unwrap();
        hand.advance(DAY_MS + 1);
        assert_eq!(audit.prune().await.unwrap().removed, 3);
        drop(audit);
        thread.join().unwrap();

        let kept = lines(&config.log_file);
        let types: Vec<&str> = kept
            .iter()
            .filter_map(|r| r["event_type"].as_str())
            .collect();
        assert_eq!(types, vec!["server.started", "audit.pruned"]);
        assert_eq!(kept[0]["checkpoint"]["seq"], 3);
        assert_eq!(kept[2]["timestamp"], "2026-05-30T00:00:00.001Z");
        let head: record::Head =
            serde_json::from_slice(&std::fs::read(&config.head_file).unwrap()).unwrap();
        let log = std::fs::read(&config.log_file).unwrap();
        let verified = record::verify(&key(), &log, Some(&head)).unwrap();
        assert_eq!(verified.checkpoint, Some(3));
    }
}
