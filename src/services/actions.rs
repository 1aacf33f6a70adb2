//! Action jobs: the job service asks [`require_policy_token`] before it stores (or dry-runs) a
//! job. For an action job type ([`ActionGuard::is_action`]) the policy token the request
//! carries must be made for this tenant, this principal and this job type; anything else is 403
//! `permission_denied`, with the reason in an `authz.denied` audit record. Every refusal looks
//! the same to the client, and nothing here ever records or echoes the token.

use serde_json::json;

use super::Caller;
use crate::audit::{AuditEvent, Outcome};
use crate::auth::actions::ActionGuard;
use crate::auth::policy_token::{Claims, Expected, PolicyTokenError};
use crate::clock::Clock;
use crate::error::{ApiError, Code};

/// What the request carried as its policy token (the edge reads it from the header named by
/// [`ActionGuard::header`]).
#[derive(Clone, Debug)]
pub enum Presented {
    Missing,
    /// Longer than a token may be; not even scanned.
    TooLarge,
    /// Repeated, or not visible ASCII.
    Unusable,
    Token(secrecy::SecretString),
}

/// The refusal the client sees, whatever the cause.
fn refusal(principal: &str, job_type: &str, queue: &str, header: &str) -> ApiError {
    ApiError::new(
        Code::PermissionDenied,
        format!(
            "Job type '{job_type}' is an action: enqueueing it needs a valid policy token in the \
             '{header}' header."
        ),
    )
    .with_details(json!({
        "principal": principal,
        "operation": "enqueue",
        "queue": queue,
        "job_type": job_type,
    }))
}

/// `Ok(None)` for a job type that is not an action; for an action, the claims of the valid
/// policy token it came with, or a 403 (audited) without one.
pub async fn require_policy_token(
    caller: &Caller,
    guard: &ActionGuard,
    clock: &Clock,
    presented: &Presented,
    job_type: &str,
    queue: &str,
    tenant: Option<&str>,
) -> Result<Option<Claims>, ApiError> {
    if !guard.is_action(job_type) {
        return Ok(None);
    }
    let checked = match presented {
        Presented::Missing => Err("policy_token_missing"),
        Presented::TooLarge => Err(PolicyTokenError::TooLarge.reason()),
        Presented::Unusable => Err(PolicyTokenError::Malformed.reason()),
        Presented::Token(token) => {
            let expected = Expected {
                tenant,
                actor: caller.principal.name(),
                action: job_type,
            };
            let now = u64::try_from(clock.now_secs()).unwrap_or(0);
            guard
                .verify(
                    secrecy::ExposeSecret::expose_secret(token).trim(),
                    &expected,
                    now,
                )
                .map_err(PolicyTokenError::reason)
        }
    };
    match checked {
        Ok(claims) => Ok(Some(claims)),
        Err(reason) => {
            // The audited refusal is what matters; the client gets the uniform answer below.
            let _ = caller
                .refuse_with(Some(queue), reason, vec![("job_type", job_type.into())])
                .await;
            Err(refusal(
                caller.principal.name(),
                job_type,
                queue,
                guard.header(),
            ))
        }
    }
}

/// The record of a policy token's use: what it allowed and for whom, never the token.
#[must_use]
pub fn used_event(caller: &Caller, claims: &Claims, queue: &str, dry_run: bool) -> AuditEvent {
    let mut event = caller
        .event("policy_token.used", Outcome::Success)
        .detail("action", claims.action.clone())
        .detail("tenant", claims.tenant.clone())
        .detail("actor", claims.actor.clone())
        .detail("scopes", claims.scopes.clone())
        .detail("queue", queue)
        .detail("dry_run", dry_run)
        .detail("expires_at", claims.exp);
    if let Some(jti) = &claims.jti {
        event = event.detail("jti", jti.clone());
    }
    event
}
