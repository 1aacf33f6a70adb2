//! The secret watcher: one task that re-reads mounted secrets when they change. Anything that
//! reads a secret from a file implements [`Reload`] and is registered once; the watcher calls
//! it when one of its folders changes (notify, non-recursive, debounced), on SIGHUP, and on a
//! slow timer (subPath mounts and network file systems send no events).
//!
//! Events are debounced here (not with a debouncing crate) so that access events — a reload
//! opening the files it watches — can be left out before they start the quiet period.
//!
//! Folders are watched, never files: a Kubernetes secret mount swaps a `..data` symlink, editors
//! save by rename, and both leave a watch on the old file deaf. A reloader re-reads and
//! validates its whole set before swapping it in; when it fails, the old set stays, the error
//! is logged (no material) and audited as `secret.reload_failed`. A successful change is
//! audited as `secret.rotated`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::audit::{AuditEvent, AuditHandle, Outcome};

/// What a reload found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The secret is as it was.
    Unchanged,
    /// A new value is live; the text says what changed (ids, counts; never material).
    Changed(String),
}

/// Why a reload was refused. The text names files and ids, never material.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReloadError(pub String);

/// Something that reads secrets from files and can re-read them.
pub trait Reload: Send + Sync {
    /// A short name for logs and audit records (`kek`, `jwt_keys`, `tls`).
    fn name(&self) -> &'static str;
    /// The folders to watch (non-recursively). May be empty (timer and SIGHUP only).
    fn dirs(&self) -> Vec<PathBuf>;
    /// Re-reads and validates the whole set and swaps it in atomically; on error, keeps the
    /// current one.
    fn reload(&self) -> Result<Change, ReloadError>;
    /// The audit event types of a rotation and of a refused reload.
    fn events(&self) -> (&'static str, &'static str) {
        ("secret.rotated", "secret.reload_failed")
    }
}

/// Watcher settings.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Quiet time after the last file event before reloading.
    pub debounce: Duration,
    /// Re-read everything this often even without events.
    pub interval: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(300),
            interval: Duration::from_secs(60),
        }
    }
}

enum Command {
    Register(Arc<dyn Reload>),
    Changed(Vec<PathBuf>),
    ReloadAll(&'static str, tokio::sync::oneshot::Sender<()>),
}

/// A handle to the watcher task; cloning is cheap. The task ends when every handle is gone.
#[derive(Clone)]
pub struct SecretWatcher {
    tx: mpsc::Sender<Command>,
}

impl SecretWatcher {
    /// Starts the watcher (inside a tokio runtime).
    #[must_use]
    pub fn spawn(config: WatchConfig, audit: Option<AuditHandle>) -> Self {
        let (tx, rx) = mpsc::channel(256);
        // Weak, so the watcher's own callback does not keep the task alive.
        let events = tx.downgrade();
        let watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
            match result {
                // Reading a secret opens it: access events would make every reload trigger
                // the next one.
                Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => {}
                Ok(event) => {
                    if let Some(events) = events.upgrade() {
                        // Full means reloads are queued already; they re-read everything.
                        let _ = events.try_send(Command::Changed(event.paths));
                    }
                }
                Err(e) => warn!(error = %e, "secret watcher error"),
            }
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "cannot watch secret folders; relying on SIGHUP and the timer");
                None
            }
        };
        tokio::spawn(run(rx, watcher, config, audit));
        Self { tx }
    }

    /// Registers a reloader and watches its folders.
    pub async fn register(&self, reloader: Arc<dyn Reload>) {
        let _ = self.tx.send(Command::Register(reloader)).await;
    }

    /// Reloads everything now (what SIGHUP does) and waits until done; `why` names the
    /// trigger in logs and audit records.
    pub async fn reload_all(&self, why: &'static str) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Command::ReloadAll(why, tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn watch_dir(watcher: &mut Option<notify::RecommendedWatcher>, name: &str, dir: &Path) {
    let Some(w) = watcher.as_mut() else { return };
    match w.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => debug!(secret = name, dir = %dir.display(), "watching"),
        Err(e) => warn!(
            secret = name,
            dir = %dir.display(),
            error = %e,
            "cannot watch folder; it is re-read on SIGHUP and on the timer"
        ),
    }
}

fn under(dirs: &[PathBuf], path: &Path) -> bool {
    dirs.iter()
        .any(|d| path.parent() == Some(d.as_path()) || path == d.as_path())
}

async fn reload_one(reloader: Arc<dyn Reload>, audit: Option<&AuditHandle>, why: &'static str) {
    let name = reloader.name();
    let (rotated, refused) = reloader.events();
    let outcome = tokio::task::spawn_blocking(move || reloader.reload()).await;
    match outcome {
        Ok(Ok(Change::Unchanged)) => debug!(secret = name, why, "secret unchanged"),
        Ok(Ok(Change::Changed(summary))) => {
            info!(secret = name, why, change = %summary, "secret rotated");
            if let Some(audit) = audit {
                audit
                    .emit(
                        AuditEvent::new(rotated, Outcome::Success)
                            .detail("secret", name)
                            .detail("change", summary)
                            .detail("trigger", why),
                    )
                    .await;
            }
        }
        Ok(Err(e)) => {
            error!(secret = name, why, error = %e, "secret reload refused; the previous value stays");
            if let Some(audit) = audit {
                audit
                    .emit(
                        AuditEvent::new(refused, Outcome::Failure)
                            .detail("secret", name)
                            .detail("reason", e.to_string())
                            .detail("trigger", why),
                    )
                    .await;
            }
        }
        Err(e) => error!(secret = name, error = %e, "secret reload panicked"),
    }
}

async fn reload_all(
    reloaders: &[(Arc<dyn Reload>, Vec<PathBuf>)],
    audit: Option<&AuditHandle>,
    why: &'static str,
) {
    for (r, _) in reloaders {
        reload_one(r.clone(), audit, why).await;
    }
}

async fn run(
    mut rx: mpsc::Receiver<Command>,
    mut watcher: Option<notify::RecommendedWatcher>,
    config: WatchConfig,
    audit: Option<AuditHandle>,
) {
    let mut reloaders: Vec<(Arc<dyn Reload>, Vec<PathBuf>)> = Vec::new();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut timer = tokio::time::interval(config.interval.max(Duration::from_secs(1)));
    timer.tick().await;
    // Paths changed since the last reload, and when the burst is over (debounce).
    let mut pending: Vec<PathBuf> = Vec::new();
    let mut quiet_at: Option<tokio::time::Instant> = None;
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let settle = async {
            match quiet_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Command::Register(r)) => {
                    let mut dirs = r.dirs();
                    for dir in dirs.clone() {
                        watch_dir(&mut watcher, r.name(), &dir);
                        // Events may name the folder by its resolved path.
                        if let Ok(real) = dir.canonicalize() {
                            if real != dir {
                                dirs.push(real);
                            }
                        }
                    }
                    reloaders.push((r, dirs));
                }
                Some(Command::Changed(paths)) => {
                    pending.extend(paths);
                    quiet_at = Some(tokio::time::Instant::now() + config.debounce);
                }
                Some(Command::ReloadAll(why, done)) => {
                    reload_all(&reloaders, audit.as_ref(), why).await;
                    let _ = done.send(());
                }
            },
            () = settle => {
                quiet_at = None;
                let paths = std::mem::take(&mut pending);
                for (r, dirs) in &reloaders {
                    if paths.iter().any(|p| under(dirs, p)) {
                        reload_one(r.clone(), audit.as_ref(), "file_change").await;
                    }
                }
            }
            _ = hup_recv => {
                info!("SIGHUP: re-reading every secret");
                reload_all(&reloaders, audit.as_ref(), "sighup").await;
            }
            _ = timer.tick() => reload_all(&reloaders, audit.as_ref(), "timer").await,
        }
    }
    debug!("secret watcher stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counter {
        dir: PathBuf,
        calls: AtomicUsize,
    }

    impl Reload for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        fn dirs(&self) -> Vec<PathBuf> {
            vec![self.dir.clone()]
        }
        fn reload(&self) -> Result<Change, ReloadError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Change::Changed("x".into()))
        }
    }

    #[tokio::test]
    async fn a_file_change_in_a_watched_folder_triggers_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let counter = Arc::new(Counter {
            dir: dir.path().canonicalize().unwrap(),
            calls: AtomicUsize::new(0),
        });
        let watcher = SecretWatcher::spawn(
            WatchConfig {
                debounce: Duration::from_millis(100),
                interval: Duration::from_secs(3600),
            },
            None,
        );
        watcher.register(counter.clone()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(dir.path().join("k"), b"x").unwrap();
        for _ in 0..50 {
            if counter.calls.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(counter.calls.load(Ordering::SeqCst) > 0);
        let before = counter.calls.load(Ordering::SeqCst);
        watcher.reload_all("request").await;
        assert_eq!(counter.calls.load(Ordering::SeqCst), before + 1);
    }
}
