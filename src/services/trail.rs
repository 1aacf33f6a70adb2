//! How services write the audit trail. Security-relevant changes are recorded before they
//! happen and not at all without their record ([`Trail::guarded`]); refusals and routine
//! events are sent without waiting for the disk ([`Trail::emit`]). The same calls serve the
//! running server and the offline command line, so a change writes the same record either
//! way.

use std::future::Future;

use crate::audit::{AuditEvent, AuditHandle, Outcome};
use crate::error::ApiError;

/// The audit trail, as the services write it.
#[derive(Clone)]
pub struct Trail {
    audit: AuditHandle,
}

impl Trail {
    #[must_use]
    pub fn new(audit: AuditHandle) -> Self {
        Self { audit }
    }

    /// The writer behind it.
    #[must_use]
    pub fn handle(&self) -> &AuditHandle {
        &self.audit
    }

    /// Records an event durably before a security-relevant operation; if the record cannot be
    /// written, the operation must not happen, and the caller gets 503.
    pub async fn record_or_refuse(&self, event: AuditEvent) -> Result<(), ApiError> {
        self.audit.record(event).await.map_err(|e| {
            tracing::error!(error = %e, "audit record failed; operation refused");
            ApiError::unavailable()
        })
    }

    /// Records an event without waiting for the disk.
    pub async fn emit(&self, event: AuditEvent) {
        self.audit.emit(event).await;
    }

    /// Records an event of a kind that can come in floods (refusals by a limit), aggregated
    /// per `key`: the first at once, the rest counted into one record when the window closes.
    pub async fn aggregate(&self, key: String, event: AuditEvent) {
        self.audit.aggregate(key, event).await;
    }

    /// Runs a security-relevant operation fail-closed: its record is written durably first (no
    /// record, no operation: 503), and if the operation then fails, a failure record follows.
    pub async fn guarded<T, E, F>(&self, event: AuditEvent, operation: F) -> Result<T, ApiError>
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display + Into<ApiError>,
    {
        let mut failure = event.clone();
        self.record_or_refuse(event).await?;
        let result = operation.await;
        if let Err(e) = &result {
            failure.outcome = Outcome::Failure;
            self.emit(failure.detail("reason", e.to_string())).await;
        }
        result.map_err(Into::into)
    }
}
