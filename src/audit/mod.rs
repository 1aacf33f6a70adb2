//! The audit writer: the only writer of the audit log, an append-only JSON-lines file whose
//! records are HMAC-chained ([`record`]) so that `bulwark audit verify` detects any edited,
//! inserted, removed, reordered or cut record.
//!
//! Records are never dropped silently: senders wait for room in a bounded mailbox. Operations
//! that must not happen unrecorded call [`AuditHandle::record`], which returns only once the
//! record is on disk (fsync); if it cannot be written, the operation is refused (fail closed).

pub mod aggregate;
pub mod catalog;
pub mod index;
pub mod record;
pub mod retention;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
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
    /// How long repeated refusals of one key are counted before their record is written
    /// ([`aggregate`]).
    pub aggregate_window: Duration,
}

impl AuditConfig {
    /// A trail at `log_file` with its head beside it (`.head`), kept forever, aggregating over a
    /// minute.
    #[must_use]
    pub fn at(log_file: PathBuf) -> Self {
        Self {
            head_file: log_file.with_extension("head"),
            log_file,
            retention: None,
            aggregate_window: Duration::from_secs(60),
        }
    }
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
    #[error(
        "the audit key {key} is missing, but {log} already holds {records} records chained with \
         it; restore the key from the secrets backup (a new key would break the chain). To start a \
         new trail on purpose, run `bulwark init --new-keys`, which sets the old log aside"
    )]
    KeyMissing {
        key: String,
        log: String,
        records: u64,
    },
}

pub(crate) enum Msg {
    Record {
        event: AuditEvent,
        done: Option<oneshot::Sender<Result<(), AuditError>>>,
    },
    /// One occurrence of a refusal that may repeat fast: written at once if it opens a window
    /// for its key, else counted ([`aggregate`]).
    Aggregate { key: String, event: AuditEvent },
    /// The writer's timer: close the windows that are due; retry a failing log.
    Tick,
    /// Write every open window now (before `server.stopped`).
    Flush { done: oneshot::Sender<()> },
    /// Apply the retention period now; answers with the number of records removed.
    Prune {
        done: oneshot::Sender<Result<u64, AuditError>>,
    },
}

/// Whether the trail can be written now, as the writer last found it (shared with the handle).
#[derive(Debug, Default)]
pub(crate) struct SharedStatus {
    /// When appends started failing (ms since the epoch); 0 while they succeed.
    failing_since: AtomicI64,
    /// Records not confirmed durable since then.
    failed_records: AtomicU64,
}

/// The audit trail's health (`GET /ojs/v1/health`, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditStatus {
    /// `None` while records are written; else when writing started to fail.
    pub failing_since: Option<crate::clock::Millis>,
    /// Records not written (or not confirmed durable) since then.
    pub failed_records: u64,
}

impl AuditStatus {
    /// Whether records are being written.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.failing_since.is_none()
    }
}

impl SharedStatus {
    pub(crate) fn failed(&self, now: crate::clock::Millis, records: u64) {
        let _ =
            self.failing_since
                .compare_exchange(0, now.max(1), Ordering::SeqCst, Ordering::SeqCst);
        self.failed_records.fetch_add(records, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::AUDIT_FAILING).set(1.0);
    }

    pub(crate) fn recovered(&self) {
        self.failing_since.store(0, Ordering::SeqCst);
        self.failed_records.store(0, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::AUDIT_FAILING).set(0.0);
    }

    pub(crate) fn get(&self) -> AuditStatus {
        let since = self.failing_since.load(Ordering::SeqCst);
        AuditStatus {
            failing_since: (since != 0).then_some(since),
            failed_records: self.failed_records.load(Ordering::SeqCst),
        }
    }
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
    status: Arc<SharedStatus>,
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
        let status = Arc::new(SharedStatus::default());
        // A manual clock (tests) jumps: look at the windows often in real time.
        let tick = if clock.is_manual() {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(500)
        };
        let writer = writer::Writer::open(config, key, store, clock, status.clone())?;
        let (tx, rx) = mpsc::channel(4096);
        let thread = std::thread::Builder::new()
            .name("bulwark-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Log(e.to_string()))?;
        spawn_timer(tx.downgrade(), tick)?;
        Ok((Self { tx, status }, thread))
    }

    /// Whether records are being written now (the writer's last append, or its last retry).
    #[must_use]
    pub fn status(&self) -> AuditStatus {
        self.status.get()
    }

    /// Hands over one occurrence of a refusal that may repeat fast, grouped by `key` (with the
    /// event type): the first of a window is written at once with `count: 1`, the rest are
    /// counted and written as one record with their `count` when the window closes. Waits for
    /// room in the mailbox, never for the disk.
    pub async fn aggregate(&self, key: String, event: AuditEvent) {
        let event_type = event.event_type;
        if self.tx.send(Msg::Aggregate { key, event }).await.is_err() {
            error!(event_type, "audit writer unavailable, record not written");
        }
    }

    /// Writes every open aggregation window now (before the last records of a shutdown).
    pub async fn flush_windows(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush { done }).await.is_ok() {
            let _ = rx.await;
        }
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

/// The writer's timer: a thread that sends [`Msg::Tick`] every `every` until the writer's
/// mailbox is gone (it holds only a weak sender, so it never keeps the writer alive).
fn spawn_timer(tx: mpsc::WeakSender<Msg>, every: Duration) -> Result<(), AuditError> {
    std::thread::Builder::new()
        .name("bulwark-audit-timer".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(tx) = tx.upgrade() else {
                return;
            };
            // A full mailbox means the writer is busy; it looks at the windows after every
            // group anyway.
            let _ = tx.try_send(Msg::Tick);
        })
        .map(|_| ())
        .map_err(|e| AuditError::Log(e.to_string()))
}

/// Records in the audit log at `config` (0 when there is none, or it is not a regular file).
/// A log that does not parse counts as holding records: only an empty one is safe to start over.
#[must_use]
pub fn records_in_log(config: &AuditConfig) -> u64 {
    let Ok(meta) = std::fs::metadata(&config.log_file) else {
        return head_seq(config);
    };
    if !meta.is_file() || meta.len() == 0 {
        return head_seq(config);
    }
    let lines = std::fs::read(&config.log_file)
        .map(|log| log.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64)
        .unwrap_or(1);
    lines.max(1).max(head_seq(config))
}

/// The sequence number the signed head names (0 without a readable head).
fn head_seq(config: &AuditConfig) -> u64 {
    std::fs::read(&config.head_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<record::Head>(&b).ok())
        .map_or(0, |h| h.seq)
}

/// Reads the audit HMAC key from the secrets folder, creating it (32 random bytes, hex, mode
/// 0600) only when there is no trail yet: a log that already holds records was chained with a
/// key that must come back ([`AuditError::KeyMissing`]), not be replaced. A key file readable by
/// group or others is refused.
pub fn load_or_create_key(
    secrets_dir: &Path,
    config: &AuditConfig,
) -> Result<hmac::Key, AuditError> {
    let path = secrets_dir.join(KEY_FILE);
    if std::fs::symlink_metadata(&path).is_err() {
        let records = records_in_log(config);
        if records > 0 {
            return Err(AuditError::KeyMissing {
                key: path.display().to_string(),
                log: config.log_file.display().to_string(),
                records,
            });
        }
    }
    crate::secrets::load_or_create_hex_key(&path)
        .map(|bytes| hmac::Key::new(hmac::HMAC_SHA256, bytes.as_ref()))
        .map_err(|e| AuditError::Key(e.to_string()))
}

/// Appends one record durably while the server is stopped (offline commands): the writer takes
/// the log for itself, as the server does, and is gone when this returns.
pub fn record_offline(
    config: &AuditConfig,
    key: hmac::Key,
    store: &Store,
    clock: &Clock,
    event: AuditEvent,
) -> Result<(), AuditError> {
    let (audit, thread) = AuditHandle::spawn(config, key, Some(store.clone()), clock.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AuditError::Log(e.to_string()))?;
    let result = runtime.block_on(audit.record(event));
    drop(audit);
    let _ = thread.join();
    result
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

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..300 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn a_window_is_flushed_with_its_count_when_it_closes_not_when_the_next_refusal_comes() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig::at(dir.path().join("test-audit.log"));
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[5u8; 32]);
        let (clock, hand) = Clock::manual(START_MS);
        let (audit, thread) = AuditHandle::spawn(&config, key, None, clock).unwrap();
        let refusal = |ip: &str| {
            let mut e = AuditEvent::new("tls.certificate_rejected", Outcome::Failure)
                .detail("reason", "revoked");
            e.source_ip = Some(ip.to_string());
            e
        };
        for _ in 0..15 {
            audit
                .aggregate("192.0.2.1|revoked".into(), refusal("192.0.2.1"))
                .await;
            hand.advance(1000);
        }
        audit
            .aggregate("192.0.2.2|revoked".into(), refusal("192.0.2.2"))
            .await;
        let rejected = |path: &Path| -> Vec<serde_json::Value> {
            lines(path)
                .into_iter()
                .filter(|r| r["event_type"] == "tls.certificate_rejected")
                .collect()
        };
        until("the first records", || {
            rejected(&config.log_file).len() == 2
        })
        .await;
        // Nothing else arrives; the clock passes the window's end and the timer writes it.
        hand.advance(60_000);
        until("the window's record", || {
            rejected(&config.log_file).len() == 3
        })
        .await;
        let records = rejected(&config.log_file);
        let from_first: Vec<u64> = records
            .iter()
            .filter(|r| r["source_ip"] == "192.0.2.1")
            .map(|r| r["detail"]["count"].as_u64().unwrap())
            .collect();
        assert_eq!(from_first, [1, 14], "every refusal is accounted for");
        let window = records.iter().find(|r| r["detail"]["count"] == 14).unwrap();
        let (first, last) = (&window["detail"]["first_at"], &window["detail"]["last_at"]);
        assert!(first.is_string() && last.is_string() && first.as_str() <= last.as_str());
        assert_eq!(window["detail"]["window_secs"], 60);
        assert_eq!(window["principal"], record::ANONYMOUS);
        // A window still open at shutdown is written before the writer ends.
        audit
            .aggregate("192.0.2.2|revoked".into(), refusal("192.0.2.2"))
            .await;
        drop(audit);
        thread.join().unwrap();
        let counts: u64 = rejected(&config.log_file)
            .iter()
            .map(|r| r["detail"]["count"].as_u64().unwrap())
            .sum();
        assert_eq!(counts, 17);
    }

    #[tokio::test]
    async fn a_trail_that_cannot_be_written_reports_failing_until_a_write_succeeds_again() {
        let dir = tempfile::tempdir().unwrap();
        // The head's folder is missing: every append fails (closed) until it is back.
        let config = AuditConfig {
            head_file: dir.path().join("gone").join("test-audit.head"),
            ..AuditConfig::at(dir.path().join("test-audit.log"))
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[5u8; 32]);
        let (clock, _hand) = Clock::manual(START_MS);
        let (audit, thread) = AuditHandle::spawn(&config, key, None, clock).unwrap();
        assert!(audit.status().is_ok());
        let refused = audit
            .record(AuditEvent::new("admin.reset", Outcome::Success))
            .await;
        assert!(matches!(refused, Err(AuditError::WriteFailed)));
        let status = audit.status();
        assert_eq!(status.failing_since, Some(START_MS));
        assert_eq!(status.failed_records, 1);
        std::fs::create_dir(dir.path().join("gone")).unwrap();
        // The timer retries on its own, and says what was lost.
        until("recovery", || audit.status().is_ok()).await;
        drop(audit);
        thread.join().unwrap();
        let resumed = lines(&config.log_file)
            .into_iter()
            .find(|r| r["event_type"] == "audit.resumed")
            .unwrap();
        assert_eq!(resumed["detail"]["failed_records"], 1);
        assert_eq!(resumed["principal"], record::SYSTEM);
    }

    #[tokio::test]
    async fn records_are_stamped_by_the_clock_and_pruned_once_it_passes_their_retention() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            retention: Some(Duration::from_millis(2 * DAY_MS)),
            ..AuditConfig::at(dir.path().join("test-audit.log"))
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
