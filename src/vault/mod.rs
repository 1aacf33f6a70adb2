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
pub mod usage;

use std::collections::{BTreeMap, BTreeSet};
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
pub use usage::{KekUsage, RotationPolicy};

use crate::audit::{AuditEvent, AuditHandle, Outcome};
use crate::clock::{Clock, Millis};
use crate::queue::QueueHandle;
use crate::secrets::watch::{Change, Reload, ReloadError};
use crate::store::{tables, Store, StoreError};

/// `bulwark_vault_unreadable_jobs` (gauge): jobs whose KEK is not loaded, as of the last scan.
pub const METRIC_UNREADABLE: &str = "bulwark_vault_unreadable_jobs";
/// `bulwark_vault_decrypt_failures_total`: job reads refused because they could not be opened.
pub const METRIC_DECRYPT_FAILURES: &str = "bulwark_vault_decrypt_failures_total";
/// `bulwark_vault_rewrapped_total`: data keys re-wrapped with the active KEK.
pub const METRIC_REWRAPPED: &str = "bulwark_vault_rewrapped_total";
/// `bulwark_vault_kek_wrapped_keys{kek}` (gauge): data keys each KEK has wrapped (durable count).
pub const METRIC_KEK_WRAPPED: &str = "bulwark_vault_kek_wrapped_keys";
/// `bulwark_vault_kek_age_seconds{kek}` (gauge): time since each KEK wrapped its first data key.
pub const METRIC_KEK_AGE: &str = "bulwark_vault_kek_age_seconds";
/// `bulwark_vault_kek_rotation_due{kek}` (gauge): 1 when a KEK is past `[vault]
/// rotate_after_wraps` or `rotate_after_days`.
pub const METRIC_KEK_ROTATION_DUE: &str = "bulwark_vault_kek_rotation_due";

/// `[vault]` settings.
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// Where the KEK files live.
    pub kek_dir: PathBuf,
    /// The active KEK id; the newest key when `None`.
    pub active: Option<String>,
    /// Records examined per re-wrap step (one queue turn each).
    pub rewrap_batch: usize,
    /// When a KEK is due for rotation.
    pub rotation: RotationPolicy,
}

/// The published key ring: read inline by whoever seals or opens a record. Also the data keys
/// each KEK has wrapped ([`usage`]), as last committed, and the rotation policy.
#[derive(Clone)]
pub struct VaultKeys {
    ring: Arc<ArcSwap<KeyRing>>,
    unreadable: Arc<AtomicU64>,
    usage: Arc<ArcSwap<BTreeMap<String, KekUsage>>>,
    /// Told when a count crosses the rotation threshold (the vault actor audits it).
    crossed: Arc<tokio::sync::Notify>,
    policy: RotationPolicy,
    clock: Clock,
}

/// A KEK's use and whether it is due for rotation.
#[derive(Clone, Debug, Serialize)]
pub struct KekRotation {
    pub id: String,
    pub active: bool,
    pub wrapped_keys: u64,
    pub age_days: u64,
    /// Why it is due (`wraps`, `age`); empty when it is not.
    pub due: Vec<&'static str>,
}

impl VaultKeys {
    /// A fixed ring (tests, benchmarks, offline commands), with the default rotation policy on
    /// the system clock.
    #[must_use]
    pub fn fixed(ring: KeyRing) -> Self {
        Self::new(ring, RotationPolicy::default(), Clock::system())
    }

    /// A ring with a rotation policy, timed by `clock`.
    #[must_use]
    pub fn new(ring: KeyRing, policy: RotationPolicy, clock: Clock) -> Self {
        Self {
            ring: Arc::new(ArcSwap::from_pointee(ring)),
            unreadable: Arc::new(AtomicU64::new(0)),
            usage: Arc::new(ArcSwap::from_pointee(BTreeMap::new())),
            crossed: Arc::new(tokio::sync::Notify::new()),
            policy,
            clock,
        }
    }

    /// The time usage is stamped with.
    #[must_use]
    pub fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    /// Data keys wrapped per KEK, as last committed.
    #[must_use]
    pub fn usage(&self) -> Arc<BTreeMap<String, KekUsage>> {
        self.usage.load_full()
    }

    /// Reads the stored counts (at start, before anything is sealed).
    pub fn load_usage(&self, store: &Store) -> Result<(), VaultError> {
        let all = usage::read_all(store)?;
        for (id, u) in &all {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(METRIC_KEK_WRAPPED, "kek" => keyring::short_id(id))
                .set(u.wrapped as f64);
        }
        self.usage.store(Arc::new(all));
        Ok(())
    }

    /// Publishes the new totals of the KEKs a commit counted (after it is durable). A KEK that
    /// crosses its wrap threshold wakes the vault actor, which audits it.
    pub fn publish_usage(&self, totals: BTreeMap<String, KekUsage>) {
        if totals.is_empty() {
            return;
        }
        let mut crossed = false;
        self.usage.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            for (id, u) in &totals {
                let before = next.get(id).map_or(0, |b: &KekUsage| b.wrapped);
                crossed |= self.policy.max_wraps > 0
                    && before < self.policy.max_wraps
                    && u.wrapped >= self.policy.max_wraps;
                next.insert(id.clone(), *u);
            }
            next
        });
        for (id, u) in &totals {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(METRIC_KEK_WRAPPED, "kek" => keyring::short_id(id))
                .set(u.wrapped as f64);
        }
        if crossed {
            self.crossed.notify_one();
        }
    }

    /// The use of every loaded KEK, and which are due for rotation now (a retired KEK's count
    /// stays in the table but is not reported).
    #[must_use]
    pub fn rotation(&self) -> Vec<KekRotation> {
        let ring = self.ring();
        let usage = self.usage();
        let now = self.now();
        ring.ids()
            .map(|id| {
                let u = usage.get(id).copied().unwrap_or_default();
                KekRotation {
                    id: id.to_string(),
                    active: ring.active_id() == Some(id),
                    wrapped_keys: u.wrapped,
                    age_days: usage::days(usage::age_ms(&u, now)),
                    due: self.policy.reasons(&u, now),
                }
            })
            .collect()
    }

    /// The rotation policy.
    #[must_use]
    pub fn policy(&self) -> RotationPolicy {
        self.policy
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

/// Whether loading the ring may create a KEK when there is none at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewKeys {
    /// Never (status and re-wrap commands): no key, no command.
    Never,
    /// Only when no stored job is sealed with a KEK (the first start, `bulwark init`): a key is
    /// never made over data whose key is missing.
    IfNothingSealed,
    /// Even over sealed jobs whose KEKs are gone, which stay unreadable (`bulwark init
    /// --new-keys`, audited).
    Deliberately,
}

/// KEK ids that seal stored jobs, with how many each.
pub fn sealed_keks(store: &Store) -> Result<BTreeMap<String, u64>, VaultError> {
    Ok(scan_counts(store)?.per_kek)
}

/// The ids of KEKs that are loaded now from `source` and `env` (the key bytes are read to
/// check them, then dropped).
pub fn present_keks(
    source: &KeySource,
    env: &[(String, Zeroizing<Vec<u8>>)],
) -> Result<Vec<String>, VaultError> {
    let (ring, _) = keyring::load(source, env, &[0u8; 32])?;
    Ok(ring.ids().map(str::to_string).collect())
}

impl KekReloader {
    /// Loads the ring for the first time. With no key at all, generates one (named for the
    /// clock's time) as `new_keys` allows; never over jobs sealed by KEKs that are missing
    /// unless deliberately ([`VaultError::MissingKeks`] names them). Reads the stored usage
    /// counts. Returns the reloader and the published keys.
    pub fn load(
        source: KeySource,
        env: Vec<(String, Zeroizing<Vec<u8>>)>,
        store: &Store,
        new_keys: NewKeys,
        policy: RotationPolicy,
        clock: Clock,
    ) -> Result<(Arc<Self>, VaultKeys), VaultError> {
        let mut salt = [0u8; 32];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| VaultError::KeySet("no randomness".into()))?;
        let (mut ring, mut fingerprint) = keyring::load(&source, &env, &salt)?;
        if ring.is_empty() {
            let sealed = sealed_keks(store)?;
            match new_keys {
                NewKeys::Never => return Err(VaultError::NoActiveKey),
                NewKeys::IfNothingSealed if !sealed.is_empty() => {
                    return Err(VaultError::MissingKeks {
                        dir: source.dir.display().to_string(),
                        missing: sealed
                            .iter()
                            .map(|(id, jobs)| format!("{} ({jobs} jobs)", keyring::short_id(id)))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                _ => {}
            }
            let id = keyring::generate(&source.dir, clock.now_ms())?;
            warn!(kek = %keyring::short_id(&id), dir = %source.dir.display(), "no key-encryption key found; created one");
            (ring, fingerprint) = keyring::load(&source, &env, &salt)?;
        }
        if ring.active().is_none() {
            return Err(VaultError::NoActiveKey);
        }
        info!(keys = %summary(&ring), "key vault loaded");
        let keys = VaultKeys::new(ring, policy, clock);
        keys.load_usage(store)?;
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
    /// Data keys this KEK has ever wrapped (jobs sealed, data keys re-wrapped), counted
    /// durably: its use of the AES-GCM budget.
    pub wrapped_keys: u64,
    /// Days since it wrapped its first data key.
    pub age_days: u64,
    /// Why it is due for rotation (`wraps`, `age`); empty when it is not.
    pub rotation_due: Vec<&'static str>,
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

/// What a scan of the job records found.
struct Counts {
    /// Jobs per KEK id.
    per_kek: BTreeMap<String, u64>,
    /// Jobs stored in clear (before encryption was on).
    clear: u64,
    /// Records whose clear head does not decode (set aside by the queue too).
    corrupt: u64,
    total: u64,
}

/// Counts jobs per KEK id, jobs in clear, corrupt records and all jobs (reads only the clear
/// part of each record).
fn scan_counts(store: &Store) -> Result<Counts, VaultError> {
    let txn = store.jobs_read()?;
    let table = txn.open_table(tables::JOBS).map_err(StoreError::from)?;
    let mut per_kek: BTreeMap<String, u64> = BTreeMap::new();
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
    Ok(Counts {
        per_kek,
        clear,
        corrupt,
        total,
    })
}

/// Counts jobs per KEK (reads only the clear part of each record), with each KEK's use.
pub fn scan(store: &Store, keys: &VaultKeys) -> Result<VaultStatus, VaultError> {
    let ring = keys.ring();
    let Counts {
        per_kek: sealed,
        clear,
        corrupt,
        total,
    } = scan_counts(store)?;
    let mut per_kek: BTreeMap<String, u64> = ring.ids().map(|id| (id.to_string(), 0)).collect();
    per_kek.extend(sealed);
    let rotation: BTreeMap<String, KekRotation> = keys
        .rotation()
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    // A corrupt record is unreadable whatever keys are loaded.
    let mut unreadable = corrupt;
    let keys = per_kek
        .into_iter()
        .map(|(id, jobs)| {
            let loaded = ring.get(&id).is_some();
            if !loaded {
                unreadable += jobs;
            }
            let r = rotation.get(&id);
            KekStatus {
                active: ring.active_id() == Some(id.as_str()),
                loaded,
                wrapped_keys: r.map_or(0, |r| r.wrapped_keys),
                age_days: r.map_or(0, |r| r.age_days),
                rotation_due: r.map(|r| r.due.clone()).unwrap_or_default(),
                id,
                jobs,
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

/// One re-wrap step inside the caller's write transaction on the jobs file, counting the data
/// keys wrapped with the active KEK ([`usage`]). Publish the returned totals once committed.
pub fn rewrap_in(
    txn: &redb::WriteTransaction,
    keys: &VaultKeys,
    ring: &KeyRing,
    after: Option<u128>,
    batch: usize,
) -> Result<(RewrapStep, BTreeMap<String, KekUsage>), VaultError> {
    let step = {
        let mut table = txn.open_table(tables::JOBS).map_err(StoreError::from)?;
        rewrap_step(&mut table, ring, after, batch)?
    };
    let counts: BTreeMap<String, u64> = ring
        .active_id()
        .map(|id| (id.to_string(), step.rewrapped))
        .into_iter()
        .collect();
    let totals = usage::add(txn, &counts, keys.now())?;
    Ok((step, totals))
}

/// Re-wraps every data key in the database with the active KEK while the server is stopped,
/// one write transaction per `batch` records; `progress` is told after each.
pub fn rewrap_offline(
    store: &Store,
    keys: &VaultKeys,
    batch: usize,
    mut progress: impl FnMut(&RewrapStep, u64),
) -> Result<RewrapStep, VaultError> {
    let ring = keys.ring();
    let mut total = RewrapStep::default();
    let mut after = None;
    loop {
        let (step, totals) = store.jobs_write(|txn| rewrap_in(txn, keys, &ring, after, batch))?;
        keys.publish_usage(totals);
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
    /// KEKs found due for rotation (audited once per process).
    warned: BTreeSet<String>,
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
            warned: BTreeSet::new(),
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
    /// Publishes every KEK's age and whether it is due, and audits (and logs) each KEK the
    /// first time this process finds it due: `vault.rotation_due`.
    async fn check_rotation(&mut self) {
        for r in self.keys.rotation() {
            let short = keyring::short_id(&r.id);
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(METRIC_KEK_AGE, "kek" => short.clone())
                .set((r.age_days * 86_400) as f64);
            metrics::gauge!(METRIC_KEK_ROTATION_DUE, "kek" => short.clone())
                .set(if r.due.is_empty() { 0.0 } else { 1.0 });
            if r.due.is_empty() || !self.warned.insert(r.id.clone()) {
                continue;
            }
            let policy = self.keys.policy();
            warn!(
                kek = %short,
                wrapped_keys = r.wrapped_keys,
                age_days = r.age_days,
                reasons = ?r.due,
                "key-encryption key due for rotation: run `bulwark vault rotate`, then a re-wrap"
            );
            if let Some(audit) = &self.audit {
                let event = AuditEvent::new("vault.rotation_due", Outcome::Success)
                    .detail("kek", short)
                    .detail("active", r.active)
                    .detail("wrapped_keys", r.wrapped_keys)
                    .detail("age_days", r.age_days)
                    .detail("reasons", r.due.clone())
                    .detail("rotate_after_wraps", policy.max_wraps)
                    .detail("rotate_after_days", policy.max_age_days);
                audit.emit(event).await;
            }
        }
    }

    async fn scan(&self) -> Result<VaultStatus, VaultError> {
        let store = self.store.clone();
        let keys = self.keys.clone();
        let status = tokio::task::spawn_blocking(move || scan(&store, &keys))
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
        // KEKs age without traffic: look again every minute, and at once when a count crosses
        // its threshold.
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        let crossed = self.keys.crossed.clone();
        loop {
            let msg = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => msg,
                    None => return,
                },
                _ = every.tick() => {
                    self.check_rotation().await;
                    continue;
                }
                () = crossed.notified() => {
                    self.check_rotation().await;
                    continue;
                }
            };
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
