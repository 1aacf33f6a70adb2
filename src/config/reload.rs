//! Reloading the configuration without a restart: SIGHUP re-reads the config file, validates
//! all of it (schemas compiled included), and only then publishes the new `[limits]` to the
//! limiter and the new request rules (`[payload]`, `[validation]`, `[quotas]`,
//! `[backpressure]`). An invalid file changes nothing: the old settings stay and
//! `config.reload_failed` is audited; a good one audits `config.reloaded`. The listener
//! timeouts in `[server]` need a restart; secrets are re-read by the vault's watcher.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::Config;
use crate::audit::{AuditEvent, AuditHandle, Outcome};
use crate::limiter::LimiterHandle;
use crate::rules::{Rules, RulesHandle};

/// What a reload publishes to.
#[derive(Clone)]
pub struct Reloadable {
    pub limiter: LimiterHandle,
    pub rules: RulesHandle,
}

/// Longest error text kept in the audit record.
const MAX_REASON: usize = 300;

/// Re-reads `path`, validates it and publishes its limits and rules; audits the outcome.
pub async fn reload_from_file(
    path: &Path,
    to: &Reloadable,
    audit: &AuditHandle,
) -> anyhow::Result<()> {
    let file = path.to_path_buf();
    // Reading, validating and compiling schemas block: off the async threads.
    let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<(Config, Rules)> {
        let config = Config::load(Some(&file))?;
        let rules = Rules::load(&config)?;
        Ok((config, rules))
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r);
    let result = match loaded {
        Ok((config, rules)) => match to.limiter.reload(config.limits).await {
            Ok(()) => {
                to.rules.publish(rules);
                Ok(())
            }
            Err(e) => Err(anyhow::Error::from(e)),
        },
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
                        .detail(
                            "sections",
                            "limits, payload, validation, quotas, backpressure",
                        ),
                )
                .await;
        }
        Err(e) => {
            metrics::counter!(crate::metrics::CONFIG_RELOADS, "outcome" => "failure").increment(1);
            let reason: String = format!("{e:#}").chars().take(MAX_REASON).collect();
            warn!(path = %path.display(), error = %reason, "configuration reload failed; the old settings stay");
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
    to: Reloadable,
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
            let _ = reload_from_file(&path, &to, &audit).await;
        }
    }))
}
