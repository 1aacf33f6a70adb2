//! The key vault: owns the key-encryption keys (KEKs), publishes the current key ring as an
//! immutable snapshot ([`VaultKeys`]) that the queue reads inline to seal and open job records
//! ([`sealed`], the sealed record format), reloads the ring when its files change
//! ([`KekReloader`], driven by the generic [`crate::secrets::watch::SecretWatcher`]), and runs re-wrapping of old data keys in small batches
//! through the queue actor while the server serves traffic.
//!
//! KEKs never enter the database or a log. See `docs/encryption.md`.

pub mod error;
pub mod keyring;
pub mod sealed;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use redb::ReadableTable;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use zeroize::Zeroizing;

pub use error::VaultError;
pub use keyring::{KeyRing, KeySource};

use crate::audit::{AuditEvent, AuditHandle, Outcome};
use crate::queue::QueueHandle;
use crate::secrets::watch::{Change, Reload, ReloadError};
use crate::store::{tables, Store, StoreError};

/// `bulwark_vault_unreadable_jobs` (gauge): jobs whose KEK is not loaded, as of the last scan.
pub const METRIC_UNREADABLE: &str = "bulwark_vault_unreadable_jobs";
/// `bulwark_vault_decrypt_failures_total`: job reads refused because they could not be opened.
pub const METRIC_DECRYPT_FAILURES: &str = "bulwark_vault_decrypt_failures_total";
/// `bulwark_vault_rewrapped_total`: data keys re-wrapped with the active KEK.
pub const METRIC_REWRAPPED: &str = "bulwark_vault_rewrapped_total";

/// `[vault]` settings.
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// Where the KEK files live.
    pub kek_dir: PathBuf,
    /// The active KEK id; the newest key when `None`.
    pub active: Option<String>,
    /// Records examined per re-wrap step (one queue turn each).
    pub rewrap_batch: usize,
}

/// The published key ring: read inline by whoever seals or opens a record.
#[derive(Clone)]
pub struct VaultKeys {
    ring: Arc<ArcSwap<KeyRing>>,
    unreadable: Arc<AtomicU64>,
}

impl VaultKeys {
    /// A fixed ring (tests, benchmarks, offline commands).
    #[must_use]
    pub fn fixed(ring: KeyRing) -> Self {
        Self {
            ring: Arc::new(ArcSwap::from_pointee(ring)),
            unreadable: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The current ring.
    #[must_use]
    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }

    fn publish(&self, ring: KeyRing) {
        self.ring.store(Arc::new(ring));
    }

    /// Jobs that the current ring cannot open, as of the last scan.
    #[must_use]
    pub fn unreadable_jobs(&self) -> u64 {
        self.unreadable.load(Ordering::Relaxed)
    }

    /// Counts a record that could not be opened.
    pub fn count_failure(&self) {
        metrics::counter!(METRIC_DECRYPT_FAILURES).increment(1);
    }
}

fn summary(ring: &KeyRing) -> String {
    let ids: Vec<String> = ring.ids().map(keyring::short_id).collect();
    format!(
        "keys [{}], active {}",
        ids.join(", "),
        ring.active_id()
            .map_or_else(|| "none".into(), keyring::short_id)
    )
}

/// Re-reads the KEK folder and `OJS_SECRET_KEK_*` (as read at start) and publishes the new ring
/// when anything changed. A set that fails to load or has no active key is refused whole.
pub struct KekReloader {
    source: KeySource,
    env: Vec<(String, Zeroizing<Vec<u8>>)>,
    salt: [u8; 32],
    fingerprint: Mutex<keyring::Fingerprint>,
    keys: VaultKeys,
}

impl KekReloader {
    /// Loads the ring for the first time; generates a KEK (named for `now`) when there is none
    /// at all (first start). Returns the reloader and the published keys.
    pub fn load(
        source: KeySource,
        env: Vec<(String, Zeroizing<Vec<u8>>)>,
        now: crate::clock::Millis,
    ) -> Result<(Arc<Self>, VaultKeys), VaultError> {
        let mut salt = [0u8; 32];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| VaultError::KeySet("no randomness".into()))?;
        let (mut ring, mut fingerprint) = keyring::load(&source, &env, &salt)?;
        if ring.is_empty() {
            let id = keyring::generate(&source.dir, now)?;
            warn!(kek = %keyring::short_id(&id), dir = %source.dir.display(), "no key-encryption key found; created one");
            (ring, fingerprint) = keyring::load(&source, &env, &salt)?;
        }
        if ring.active().is_none() {
            return Err(VaultError::NoActiveKey);
        }
        info!(keys = %summary(&ring), "key vault loaded");
        let keys = VaultKeys::fixed(ring);
        Ok((
            Arc::new(Self {
                source,
                env,
                salt,
                fingerprint: Mutex::new(fingerprint),
                keys: keys.clone(),
            }),
            keys,
        ))
    }
}

impl Reload for KekReloader {
    fn name(&self) -> &'static str {
        "kek"
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.source.dir.clone()]
    }

    fn reload(&self) -> Result<Change, ReloadError> {
        let (ring, fingerprint) = keyring::load(&self.source, &self.env, &self.salt)
            .map_err(|e| ReloadError(e.to_string()))?;
        if ring.active().is_none() {
            return Err(ReloadError("no key-encryption key left".into()));
        }
        let mut current = self
            .fingerprint
            .lock()
            .map_err(|_| ReloadError("vault state poisoned".into()))?;
        if *current == fingerprint {
            return Ok(Change::Unchanged);
        }
        let text = summary(&ring);
        self.keys.publish(ring);
        *current = fingerprint;
        Ok(Change::Changed(text))
    }
}

/// One KEK's line in the status.
#[derive(Clone, Debug, Serialize)]
pub struct KekStatus {
    pub id: String,
    /// Jobs whose data key this KEK wraps.
    pub jobs: u64,
    pub active: bool,
    /// Whether the KEK is loaded (a record naming an unloaded KEK cannot be opened).
    pub loaded: bool,
}

/// What `bulwark vault status` and `GET /ojs/v1/admin/vault` show.
#[derive(Clone, Debug, Serialize)]
pub struct VaultStatus {
    pub active: Option<String>,
    pub keys: Vec<KekStatus>,
    /// Jobs stored before encryption at rest (a re-wrap seals them).
    pub clear_jobs: u64,
    /// Jobs that no loaded KEK can open.
    pub unreadable_jobs: u64,
    pub total_jobs: u64,
}

/// Counts jobs per KEK (reads only the clear part of each record).
pub fn scan(store: &Store, ring: &KeyRing) -> Result<VaultStatus, VaultError> {
    let txn = store.jobs_read()?;
    let table = txn.open_table(tables::JOBS).map_err(StoreError::from)?;
    let mut per_kek: BTreeMap<String, u64> = ring.ids().map(|id| (id.to_string(), 0)).collect();
    let (mut clear, mut total, mut corrupt) = (0, 0, 0);
    for entry in table.iter().map_err(StoreError::from)? {
        let (_, value) = entry.map_err(StoreError::from)?;
        total += 1;
        match sealed::job_head(value.value()) {
            Ok(head) => match head.kek {
                Some(kek) => *per_kek.entry(kek).or_default() += 1,
                None => clear += 1,
            },
            // Set aside by the queue too: it counts as unreadable.
            Err(_) => corrupt += 1,
        }
    }
    let mut unreadable = corrupt;
    let keys = per_kek
        .into_iter()
        .map(|(id, jobs)| {
            let loaded = ring.get(&id).is_some();
            if !loaded {
                unreadable += jobs;
            }
            KekStatus {
                active: ring.active_id() == Some(id.as_str()),
                id,
                jobs,
                loaded,
            }
        })
        .collect();
    Ok(VaultStatus {
        active: ring.active_id().map(str::to_string),
        keys,
        clear_jobs: clear,
        unreadable_jobs: unreadable,
        total_jobs: total,
    })
}

/// One step of re-wrapping data keys with the active KEK.
#[derive(Clone, Debug, Default)]
pub struct RewrapStep {
    /// Records looked at.
    pub examined: u64,
    /// Records whose data key was re-wrapped (or that were sealed for the first time).
    pub rewrapped: u64,
    /// Records that could not be opened (their KEK is not loaded, or they fail to decrypt).
    pub failed: u64,
    /// Where the next step starts; `None` when the table is done.
    pub next: Option<u128>,
}

/// Re-wraps the data keys of up to `batch` job records after `after` (key order) with the
/// ring's active KEK, inside the caller's write transaction. Payloads are not re-encrypted.
pub fn rewrap_step(
    table: &mut redb::Table<'_, u128, &'static [u8]>,
    ring: &KeyRing,
    after: Option<u128>,
    batch: usize,
) -> Result<RewrapStep, VaultError> {
    let batch = batch.max(1);
    let mut step = RewrapStep::default();
    let mut updates = Vec::new();
    let mut last = None;
    {
        let range = match after {
            Some(a) => table.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => table.range::<u128>(..),
        }
        .map_err(StoreError::from)?;
        for entry in range.take(batch) {
            let (key, value) = entry.map_err(StoreError::from)?;
            let key = key.value();
            last = Some(key);
            step.examined += 1;
            match sealed::rewrap(ring, value.value()) {
                Ok(Some(bytes)) => updates.push((key, bytes)),
                Ok(None) => {}
                Err(VaultError::NoActiveKey) => return Err(VaultError::NoActiveKey),
                Err(e) => {
                    step.failed += 1;
                    warn!(error = %e, "cannot re-wrap a job record");
                }
            }
        }
    }
    for (key, bytes) in updates {
        table
            .insert(key, bytes.as_slice())
            .map_err(StoreError::from)?;
        step.rewrapped += 1;
    }
    step.next = if step.examined < batch as u64 {
        None
    } else {
        last
    };
    Ok(step)
}

/// Re-wraps every data key in the database with the active KEK while the server is stopped,
/// one write transaction per `batch` records; `progress` is told after each.
pub fn rewrap_offline(
    store: &Store,
    ring: &KeyRing,
    batch: usize,
    mut progress: impl FnMut(&RewrapStep, u64),
) -> Result<RewrapStep, VaultError> {
    let mut total = RewrapStep::default();
    let mut after = None;
    loop {
        let step = store.jobs_write(|txn| {
            let mut table = txn.open_table(tables::JOBS).map_err(StoreError::from)?;
            rewrap_step(&mut table, ring, after, batch)
        })?;
        total.examined += step.examined;
        total.rewrapped += step.rewrapped;
        total.failed += step.failed;
        progress(&step, total.examined);
        match step.next {
            Some(next) => after = Some(next),
            None => return Ok(total),
        }
    }
}

/// Progress of a re-wrap run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RewrapProgress {
    pub running: bool,
    /// Records examined so far, of `total` when the run started.
    pub examined: u64,
    pub total: u64,
    pub rewrapped: u64,
    /// Records that could not be re-wrapped (their KEK is not loaded, or they fail to open).
    pub failed: u64,
    /// The KEK the data keys were re-wrapped with.
    pub target: Option<String>,
    pub finished: bool,
}

enum Msg {
    Status(oneshot::Sender<Result<VaultStatus, VaultError>>),
    Rescan,
    StartRewrap {
        batch: Option<usize>,
        reply: oneshot::Sender<RewrapProgress>,
    },
    Progress(oneshot::Sender<RewrapProgress>),
    Step(RewrapStep),
    StepFailed(String),
}

/// A handle to the vault actor.
#[derive(Clone)]
pub struct VaultHandle {
    tx: mpsc::Sender<Msg>,
    keys: VaultKeys,
}

struct VaultActor {
    store: Store,
    keys: VaultKeys,
    queue: QueueHandle,
    audit: Option<AuditHandle>,
    batch: usize,
    progress: RewrapProgress,
    cursor: Option<u128>,
    step_batch: usize,
}

impl VaultHandle {
    /// Starts the actor; it scans the job table once to count jobs per KEK.
    #[must_use]
    pub fn spawn(
        config: &VaultConfig,
        keys: VaultKeys,
        store: Store,
        queue: QueueHandle,
        audit: Option<AuditHandle>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let actor = VaultActor {
            store,
            keys: keys.clone(),
            queue,
            audit,
            batch: config.rewrap_batch.max(1),
            progress: RewrapProgress::default(),
            cursor: None,
            step_batch: config.rewrap_batch.max(1),
        };
        tokio::spawn(actor.run(rx, tx.downgrade()));
        let _ = tx.try_send(Msg::Rescan);
        Self { tx, keys }
    }

    /// The published keys.
    #[must_use]
    pub fn keys(&self) -> &VaultKeys {
        &self.keys
    }

    /// Jobs per KEK (a fresh scan).
    pub async fn status(&self) -> Result<VaultStatus, VaultError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Status(reply))
            .await
            .map_err(|_| VaultError::Unavailable)?;
        rx.await.map_err(|_| VaultError::Unavailable)?
    }

    /// Re-counts unreadable jobs (after a key reload).
    pub fn rescan(&self) {
        let _ = self.tx.try_send(Msg::Rescan);
    }

    /// Starts re-wrapping every data key not under the active KEK, `batch` records per step
    /// (the configured size when `None`); a run already going is left alone. Returns the
    /// progress.
    pub async fn start_rewrap(&self, batch: Option<usize>) -> Result<RewrapProgress, VaultError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::StartRewrap { batch, reply })
            .await
            .map_err(|_| VaultError::Unavailable)?;
        rx.await.map_err(|_| VaultError::Unavailable)
    }

    /// The progress of the current or last re-wrap run.
    pub async fn rewrap_progress(&self) -> Result<RewrapProgress, VaultError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Progress(reply))
            .await
            .map_err(|_| VaultError::Unavailable)?;
        rx.await.map_err(|_| VaultError::Unavailable)
    }
}

impl VaultActor {
    async fn scan(&self) -> Result<VaultStatus, VaultError> {
        let store = self.store.clone();
        let ring = self.keys.ring();
        let status = tokio::task::spawn_blocking(move || scan(&store, &ring))
            .await
            .map_err(|_| VaultError::Unavailable)??;
        self.keys
            .unreadable
            .store(status.unreadable_jobs, Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(METRIC_UNREADABLE).set(status.unreadable_jobs as f64);
        if status.unreadable_jobs > 0 {
            warn!(
                jobs = status.unreadable_jobs,
                "jobs whose key-encryption key is not loaded cannot be read"
            );
        }
        Ok(status)
    }

    fn step(&self, tx: &mpsc::WeakSender<Msg>) {
        let (Some(tx), queue) = (tx.upgrade(), self.queue.clone()) else {
            return;
        };
        let after = self.cursor;
        let batch = self.step_batch;
        tokio::spawn(async move {
            let msg = match queue.rewrap(after, batch).await {
                Ok(step) => Msg::Step(step),
                Err(e) => Msg::StepFailed(e.to_string()),
            };
            let _ = tx.send(msg).await;
        });
    }

    async fn finish(&mut self, outcome: Outcome, reason: Option<String>) {
        self.progress.running = false;
        self.progress.finished = true;
        info!(
            examined = self.progress.examined,
            rewrapped = self.progress.rewrapped,
            failed = self.progress.failed,
            "re-wrap finished"
        );
        if let Some(audit) = &self.audit {
            let mut event = AuditEvent::new("vault.rewrap_finished", outcome)
                .detail("examined", self.progress.examined)
                .detail("rewrapped", self.progress.rewrapped)
                .detail("failed", self.progress.failed)
                .detail(
                    "target",
                    self.progress
                        .target
                        .as_deref()
                        .map(keyring::short_id)
                        .unwrap_or_default(),
                );
            if let Some(reason) = reason {
                event = event.detail("reason", reason);
            }
            audit.emit(event).await;
        }
        let _ = self.scan().await;
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, me: mpsc::WeakSender<Msg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Status(reply) => {
                    let _ = reply.send(self.scan().await);
                }
                Msg::Rescan => {
                    if let Err(e) = self.scan().await {
                        warn!(error = %e, "vault scan failed");
                    }
                }
                Msg::Progress(reply) => {
                    let _ = reply.send(self.progress.clone());
                }
                Msg::StartRewrap { batch, reply } => {
                    if !self.progress.running {
                        let total = match self.scan().await {
                            Ok(s) => s.total_jobs,
                            Err(_) => 0,
                        };
                        self.progress = RewrapProgress {
                            running: true,
                            total,
                            target: self.keys.ring().active_id().map(str::to_string),
                            ..RewrapProgress::default()
                        };
                        self.cursor = None;
                        self.step_batch = batch.unwrap_or(self.batch).clamp(1, 10_000);
                        info!(batch = self.step_batch, total, "re-wrap started");
                        self.step(&me);
                    }
                    let _ = reply.send(self.progress.clone());
                }
                Msg::Step(step) => {
                    self.progress.examined += step.examined;
                    self.progress.rewrapped += step.rewrapped;
                    self.progress.failed += step.failed;
                    metrics::counter!(METRIC_REWRAPPED).increment(step.rewrapped);
                    match step.next {
                        Some(next) => {
                            self.cursor = Some(next);
                            self.step(&me);
                        }
                        None => {
                            let outcome = if self.progress.failed == 0 {
                                Outcome::Success
                            } else {
                                Outcome::Failure
                            };
                            self.finish(outcome, None).await;
                        }
                    }
                }
                Msg::StepFailed(reason) => {
                    warn!(error = %reason, "re-wrap step failed; stopping");
                    self.finish(Outcome::Failure, Some(reason)).await;
                }
            }
        }
    }
}

/// A reloader that also makes the vault re-count unreadable jobs after a change.
pub struct KekWatch {
    pub reloader: Arc<KekReloader>,
    pub vault: VaultHandle,
}

impl Reload for KekWatch {
    fn name(&self) -> &'static str {
        self.reloader.name()
    }
    fn dirs(&self) -> Vec<PathBuf> {
        self.reloader.dirs()
    }
    fn reload(&self) -> Result<Change, ReloadError> {
        let change = self.reloader.reload()?;
        if matches!(change, Change::Changed(_)) {
            self.vault.rescan();
        }
        Ok(change)
    }
}
