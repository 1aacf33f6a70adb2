//! Audit queries: records newest first, filtered by type, principal, tenant and time, paged
//! back by sequence number. Every query is itself recorded (`audit.queried`).

use std::path::PathBuf;

use super::{blocking, Caller};
use crate::audit::index::Query;
use crate::audit::Outcome;
use crate::error::ApiError;
use crate::store::Store;

/// The audit query service: the index in the control file, the log beside it.
#[derive(Clone)]
pub struct AuditQueries {
    store: Store,
    log_file: PathBuf,
}

impl AuditQueries {
    #[must_use]
    pub fn new(store: Store, log_file: PathBuf) -> Self {
        Self { store, log_file }
    }

    /// The records `query` selects.
    pub async fn query(
        &self,
        caller: &Caller,
        query: Query,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        caller
            .trail()
            .emit(caller.event("audit.queried", Outcome::Success))
            .await;
        let (store, log_file) = (self.store.clone(), self.log_file.clone());
        blocking(move || {
            crate::audit::index::query(&store, &log_file, &query).map_err(|e| {
                tracing::error!(error = %e, "audit query failed");
                ApiError::unavailable()
            })
        })
        .await
    }
}
