//! Reloading the configuration without a restart: SIGHUP re-reads the config file, validates
//! all of it, and publishes the new `[limits]`. An invalid file changes nothing: the old limits
//! stay and `config.reload_failed` is audited; a good one audits `config.reloaded`. Other
//! sections can hook in here later; the listener timeouts in `[server]` need a restart.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::LimiterHandle;
use crate::audit::{AuditEvent, AuditHandle, Outcome};
use crate::config::Config;

/// Longest error text kept in the audit record.
const MAX_REASON: usize = 300;

/// Re-reads `path`, validates it and publishes its limits; audits the outcome.
pub async fn reload_from_file(
    path: &Path,
    limiter: &LimiterHandle,
    audit: &AuditHandle,
) -> anyhow::Result<()> {
    let file = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || Config::load(Some(&file)))
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
    let result = match loaded {
        Ok(config) => limiter
            .reload(config.limits)
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    match &result {
        Ok(()) => {
            metrics::counter!(crate::metrics::CONFIG_RELOADS, "outcome" => "success").increment(1);
            info!(path = %path.display(), "configuration reloaded");
            audit
                .emit(
                    AuditEvent::new("config.reloaded", Outcome::Success)
                        .detail("path", path.display().to_string())
                        .detail("sections", "limits"),
                )
                .await;
        }
        Err(e) => {
            metrics::counter!(crate::metrics::CONFIG_RELOADS, "outcome" => "failure").increment(1);
            let reason: String = format!("{e:#}").chars().take(MAX_REASON).collect();
            warn!(path = %path.display(), error = %reason, "configuration reload failed; the old limits stay");
            audit
                .emit(
                    AuditEvent::new("config.reload_failed", Outcome::Failure)
                        .detail("path", path.display().to_string())
                        .detail("reason", reason),
                )
                .await;
        }
    }
    result
}

/// Listens for SIGHUP (from now on: the handler is installed before this returns, so a SIGHUP
/// sent once the server is up never meets the default action, which ends the process) and
/// reloads on each until the returned task is aborted.
pub fn spawn_on_sighup(
    path: PathBuf,
    limiter: LimiterHandle,
    audit: AuditHandle,
) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP; configuration reloads are off");
        return None;
    };
    Some(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!("SIGHUP received, reloading the configuration");
            // The outcome is logged and audited inside.
            let _ = reload_from_file(&path, &limiter, &audit).await;
        }
    }))
}
