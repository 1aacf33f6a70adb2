//! The key vault: its status (jobs per key-encryption key, unreadable jobs, re-wrap progress)
//! and re-wrapping every data key under the active KEK. A re-wrap is recorded before it starts
//! (`vault.rewrap`; no record, no run).

use super::Caller;
use crate::audit::Outcome;
use crate::error::ApiError;
use crate::vault::{RewrapProgress, VaultHandle, VaultStatus};

/// The vault service.
#[derive(Clone)]
pub struct Vault {
    vault: VaultHandle,
}

impl Vault {
    #[must_use]
    pub fn new(vault: VaultHandle) -> Self {
        Self { vault }
    }

    /// The vault's status and the progress of the current (or last) re-wrap.
    pub async fn status(&self) -> Result<(VaultStatus, RewrapProgress), ApiError> {
        let status = self.vault.status().await?;
        let rewrap = self.vault.rewrap_progress().await?;
        Ok((status, rewrap))
    }

    /// Starts re-wrapping in steps of `batch` records (1 to 10000) beside normal traffic; a
    /// run already going is reported, not restarted.
    pub async fn rewrap(
        &self,
        caller: &Caller,
        batch: Option<usize>,
    ) -> Result<RewrapProgress, ApiError> {
        if let Some(batch) = batch {
            if !(1..=10_000).contains(&batch) {
                return Err(ApiError::invalid("batch", "batch must be from 1 to 10000"));
            }
        }
        let target = self
            .vault
            .keys()
            .ring()
            .active_id()
            .map(crate::vault::keyring::short_id)
            .unwrap_or_default();
        let event = caller
            .event("vault.rewrap", Outcome::Success)
            .detail("target", target)
            .detail("batch", batch.unwrap_or(0));
        caller
            .trail()
            .guarded(event, self.vault.start_rewrap(batch))
            .await
    }
}
