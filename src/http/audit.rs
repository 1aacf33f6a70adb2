//! Audit records from the HTTP edge: who (principal, source IP) and which request (request id)
//! are filled in from the request, so handlers only say what happened.

use std::future::Future;

use actix_web::{web, HttpMessage, HttpRequest};

use super::error::ApiError;
use super::middleware::RequestId;
use crate::audit::{AuditEvent, AuditHandle, Outcome};
use crate::auth::Principal;

/// An event with the request's source IP and request id.
#[must_use]
pub fn event(
    req: &HttpRequest,
    event_type: &'static str,
    outcome: Outcome,
    principal: Option<&Principal>,
) -> AuditEvent {
    let mut e = AuditEvent::new(event_type, outcome);
    e.source_ip = req.peer_addr().map(|a| a.ip().to_string());
    e.correlation_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    if let Some(p) = principal {
        e.principal = Some(p.name().to_string());
        e.tenant = p.tenant().map(str::to_string);
        e = e.detail("credential", p.credential_id());
    }
    e
}

/// Records an event durably before a security-relevant operation; if the record cannot be
/// written, the operation must not happen, and the caller gets 503.
pub async fn record_or_refuse(req: &HttpRequest, event: AuditEvent) -> Result<(), ApiError> {
    let audit = req
        .app_data::<web::Data<AuditHandle>>()
        .ok_or_else(ApiError::unavailable)?;
    audit.record(event).await.map_err(|e| {
        tracing::error!(error = %e, "audit record failed; operation refused");
        ApiError::unavailable()
    })
}

/// Records an event without waiting for the disk.
pub async fn emit(req: &HttpRequest, event: AuditEvent) {
    if let Some(audit) = req.app_data::<web::Data<AuditHandle>>() {
        audit.emit(event).await;
    }
}

/// Records a refusal that may repeat fast, aggregated per `key` and event type: the first of a
/// window is written at once, the rest as one record with their `count` when the window closes
/// (see [`crate::audit::aggregate`]).
pub async fn aggregate(req: &HttpRequest, key: String, event: AuditEvent) {
    if let Some(audit) = req.app_data::<web::Data<AuditHandle>>() {
        audit.aggregate(key, event).await;
    }
}

/// Runs a security-relevant operation fail-closed: its record is written durably first (no
/// record, no operation: 503), and if the operation then fails, a failure record follows.
pub async fn guarded<T, E, F>(
    req: &HttpRequest,
    event: AuditEvent,
    operation: F,
) -> Result<T, ApiError>
where
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display + Into<ApiError>,
{
    let mut failure = event.clone();
    record_or_refuse(req, event).await?;
    let result = operation.await;
    if let Err(e) = &result {
        failure.outcome = Outcome::Failure;
        emit(req, failure.detail("reason", e.to_string())).await;
    }
    result.map_err(Into::into)
}
