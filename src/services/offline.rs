//! The services for the command line, with the server stopped: the same store files, the same
//! audit trail (the writer takes the log for itself, as the server does) and the same service
//! code as the HTTP API, called as [`Caller::local`]. An offline change is refused if it cannot
//! be recorded.

use std::thread::JoinHandle;

use anyhow::Context;

use super::keys::Keys;
use super::users::Users;
use super::{Caller, Trail};
use crate::auth::accounts::Accounts;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::ApiError;
use crate::store::Store;

/// The offline services and what they run on.
pub struct Offline {
    pub config: Config,
    pub store: Store,
    pub clock: Clock,
    trail: Trail,
    audit_thread: JoinHandle<()>,
    runtime: tokio::runtime::Runtime,
}

impl Offline {
    /// Opens the data folder (refused while the server holds it) and the audit trail.
    pub fn open(config: Config) -> anyhow::Result<Self> {
        crate::app::prepare_secrets_dir(&config.secrets.dir)?;
        let store = Store::open(&config.storage.data_dir)
            .context("stop the server first: this command works on the stopped server's files")?;
        let clock = Clock::system();
        let key = crate::audit::load_or_create_key(&config.secrets.dir, &config.audit_config())?;
        let (audit, audit_thread) = crate::audit::AuditHandle::spawn(
            &config.audit_config(),
            key,
            Some(store.clone()),
            clock.clone(),
        )?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            config,
            store,
            clock,
            trail: Trail::new(audit),
            audit_thread,
            runtime,
        })
    }

    /// The operator running `command`.
    #[must_use]
    pub fn caller(&self, command: &str) -> Caller {
        Caller::local(command, self.trail.clone())
    }

    /// The key service, offline.
    pub fn keys(&self) -> anyhow::Result<Keys> {
        Ok(Keys::offline(
            self.store.clone(),
            self.config.policy()?,
            self.clock.clone(),
            self.config.secrets.key_env.clone(),
            self.config.auth.rotation_grace_secs,
        ))
    }

    /// The user service, offline.
    pub fn users(&self) -> anyhow::Result<Users> {
        let accounts = Accounts::open(
            self.store.clone(),
            &self.config.sessions,
            &self.config.secrets.dir,
            self.clock.clone(),
        )?;
        Ok(Users::new(accounts))
    }

    /// Runs a service call to its end; a refusal becomes the error the command prints.
    pub fn run<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> anyhow::Result<T> {
        self.runtime.block_on(call).map_err(refused)
    }

    /// Stops the audit writer once everything is recorded.
    pub fn close(self) {
        let Self {
            trail,
            audit_thread,
            runtime,
            ..
        } = self;
        drop(trail);
        drop(runtime);
        let _ = audit_thread.join();
    }
}

/// A service's refusal as the command line says it: the message, its OJS code, and the field
/// or hint when there is one.
#[must_use]
pub fn refused(e: ApiError) -> anyhow::Error {
    let mut text = format!("{} ({})", e.message(), e.code());
    if let Some(field) = e
        .details()
        .and_then(|d| d.get("field"))
        .and_then(|f| f.as_str())
    {
        text.push_str(&format!("; field: {field}"));
    }
    if let Some(hint) = e.hint() {
        text.push_str(&format!("; {hint}"));
    }
    anyhow::anyhow!(text)
}
