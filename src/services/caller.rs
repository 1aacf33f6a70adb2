//! Who is asking, as the services see it: the principal, the tenant the request acts for,
//! where it came from (address, request id, the operation it named) and the audit trail its
//! refusals go to. The HTTP edge builds one per request after authentication
//! (`http::auth::Authenticated`); the command line builds [`Caller::local`] for the operator
//! at the machine. Nothing here knows about HTTP.
//!
//! The access checks every service shares live here: the queue ACL ([`Caller::allow`]), a
//! job's own rules ([`Caller::allow_job`]), the tenant scoping of by-id reads
//! ([`Caller::job`]), and the audited refusals behind them.

use std::net::IpAddr;
use std::sync::Arc;

use tracing::info;

use super::trail::Trail;
use crate::audit::{AuditEvent, Outcome};
use crate::auth::{AuthError, Permission, Principal, Reach};
use crate::error::ApiError;
use crate::job::{Job, JobId, Visibility};
use crate::queue::{Holder, QueueError, QueueHandle, StillValid};

/// How a request reached the services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The HTTP API.
    Http,
    /// The command line, offline, on the machine that holds the files.
    Cli,
}

/// Where a request came from.
#[derive(Clone, Debug)]
pub struct Origin {
    pub via: Via,
    /// The peer address (HTTP).
    pub source_ip: Option<IpAddr>,
    /// The request id (`X-Request-Id`), the audit record's correlation id.
    pub request_id: Option<String>,
    /// The operation as the caller named it: `METHOD /route/pattern` over HTTP, the command
    /// on the command line.
    pub operation: String,
}

/// An authenticated, authorized caller.
#[derive(Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    /// The tenant this request acts for; `None` for the system scope.
    pub tenant: Option<String>,
    /// The permission the operation needs (the route table's, over HTTP).
    pub need: Option<Permission>,
    pub origin: Origin,
    /// Whether the credential still stands later on (for requests that wait in the queue
    /// engine).
    standing: StillValid,
    trail: Trail,
}

impl Caller {
    /// A caller authenticated at the edge.
    #[must_use]
    pub fn new(
        principal: Arc<Principal>,
        tenant: Option<String>,
        need: Option<Permission>,
        origin: Origin,
        standing: StillValid,
        trail: Trail,
    ) -> Self {
        Self {
            principal,
            tenant,
            need,
            origin,
            standing,
            trail,
        }
    }

    /// The operator at the machine, running `command` from the command line while the server
    /// is stopped: a system administrator (whoever can read the data folder owns it anyway),
    /// recorded as `local-operator` with `via: cli`.
    #[must_use]
    pub fn local(command: &str, trail: Trail) -> Self {
        Self {
            principal: Arc::new(Principal::local_operator()),
            tenant: None,
            need: Some(Permission::Admin),
            origin: Origin {
                via: Via::Cli,
                source_ip: None,
                request_id: None,
                operation: command.to_string(),
            },
            standing: StillValid(Arc::new(|_| true)),
            trail,
        }
    }

    /// The audit trail this caller's operations are recorded in.
    #[must_use]
    pub fn trail(&self) -> &Trail {
        &self.trail
    }

    /// An audit event by this caller: its principal, address, request id, and `via: cli` for
    /// the command line.
    #[must_use]
    pub fn event(&self, event_type: &'static str, outcome: Outcome) -> AuditEvent {
        let mut e = origin_event(&self.origin, event_type, outcome);
        e.principal = Some(self.principal.name().to_string());
        e.tenant = self.principal.tenant().map(str::to_string);
        e.detail("credential", self.principal.credential_id())
    }

    /// The lease holder this caller is, with the `worker_id` it gave.
    #[must_use]
    pub fn holder(&self, worker_id: Option<String>) -> Holder {
        Holder {
            principal: self.principal.id().to_string(),
            worker_id,
            tenant: self.tenant.clone(),
        }
    }

    /// Whether this caller's credential still stands at a later time: not expired, not revoked
    /// or changed since, and for an admin session not logged out, revoked or its user disabled.
    /// The queue engine asks it before handing a waiting request anything.
    #[must_use]
    pub fn standing(&self) -> StillValid {
        self.standing.clone()
    }

    /// Checks `permission` on `queue`; a refusal is audited and answered 403.
    pub async fn allow(&self, permission: Permission, queue: &str) -> Result<Reach, ApiError> {
        match self.principal.decide(permission, Some(queue)) {
            Ok(reach) => Ok(reach),
            Err(AuthError::Forbidden { reason, .. }) => Err(self
                .forbidden(Some(permission), Some(queue), reason, Vec::new())
                .await),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a listing may show `queue` (no audit: the caller asked for a list, not for it).
    #[must_use]
    pub fn sees_queue(&self, queue: &str) -> bool {
        matches!(
            self.principal
                .grants()
                .decide(Permission::Inspect, Some(queue)),
            Ok(Reach::All)
        )
    }

    /// Checks `permission` on a job the caller named by id (already known to be of the
    /// caller's tenant): its queue, and the job's own rules. A job the caller may not even
    /// see answers 404, exactly like a job that does not exist; a visible job the caller may
    /// not act on answers 403.
    pub async fn allow_job(&self, permission: Permission, job: &Job) -> Result<(), ApiError> {
        let me = self.principal.id();
        let owner = job.owner.as_deref() == Some(me);
        let admin = self.principal.grants().has(Permission::Admin);
        let hidden = |reason: &'static str| async move {
            let event = self
                .event("authz.denied", Outcome::Failure)
                .detail("reason", reason)
                .detail("permission", permission.as_str())
                .detail("job_id", job.id.to_string());
            self.trail.emit(event).await;
            metrics::counter!(crate::metrics::AUTHZ_DENIALS, "permission" => permission.as_str())
                .increment(1);
            ApiError::not_found("job")
        };
        let restricted = job.security.as_ref();
        if restricted.is_some_and(|s| s.visibility == Visibility::Owner) && !owner && !admin {
            return Err(hidden("restricted_job").await);
        }
        match self.principal.decide(permission, Some(&job.queue)) {
            Ok(Reach::All) => {}
            Ok(Reach::OwnJobs) if owner => {}
            Ok(Reach::OwnJobs) => return Err(hidden("not_owner").await),
            Err(AuthError::Forbidden { reason, .. }) => {
                // Without inspect on the queue the job stays invisible; otherwise say no.
                let visible = matches!(
                    self.principal
                        .grants()
                        .decide(Permission::Inspect, Some(&job.queue)),
                    Ok(Reach::All)
                ) || (owner && self.principal.grants().has(Permission::Inspect));
                if !visible {
                    return Err(hidden(reason).await);
                }
                return Err(self
                    .forbidden(Some(permission), Some(&job.queue), reason, Vec::new())
                    .await);
            }
            Err(e) => return Err(e.into()),
        }
        if permission == Permission::Cancel && !admin {
            if let Some(allowed) = restricted.and_then(|s| s.cancellable_by.as_ref()) {
                let ok = allowed.iter().any(|who| {
                    (who == "owner" && owner) || self.principal.roles().iter().any(|r| r == who)
                });
                if !ok {
                    return Err(self
                        .forbidden(
                            Some(permission),
                            Some(&job.queue),
                            "not_cancellable_by",
                            Vec::new(),
                        )
                        .await);
                }
            }
        }
        Ok(())
    }

    /// Passes a queue answer through, auditing an attempt on another tenant's job (which the
    /// client sees as the same 404 as a job that does not exist).
    pub async fn scoped<T>(&self, result: Result<T, QueueError>) -> Result<T, ApiError> {
        if let Err(QueueError::OtherTenant) = &result {
            self.audit_hidden("other_tenant").await;
        }
        result.map_err(ApiError::from)
    }

    /// Reads a job the caller named by id and checks `permission` on it: another tenant's job
    /// is 404 like a missing one (and audited), then [`Self::allow_job`] applies.
    pub async fn job(
        &self,
        queue: &QueueHandle,
        id: JobId,
        permission: Permission,
    ) -> Result<Job, ApiError> {
        let job = self
            .scoped(queue.get(id, self.tenant.clone()).await)
            .await?;
        self.allow_job(permission, &job).await?;
        Ok(job)
    }

    /// Audits a request refused because its credential was revoked or expired while it
    /// waited in the queue engine (a long-poll, or an enqueue held by a full `block` queue).
    pub async fn audit_credential_gone(&self) {
        metrics::counter!(crate::metrics::AUTH_ATTEMPTS, "outcome" => "failure", "reason" => "invalidated_while_waiting")
            .increment(1);
        let event = self
            .event("auth.failure", Outcome::Failure)
            .detail("reason", "invalidated_while_waiting");
        self.trail.emit(event).await;
    }

    /// Audits a refusal the client sees as 404 (a resource of another tenant).
    pub async fn audit_hidden(&self, reason: &'static str) {
        let event = self
            .event("authz.denied", Outcome::Failure)
            .detail("reason", reason)
            .detail("route", self.origin.operation.clone());
        self.trail.emit(event).await;
    }

    /// Refuses with 403 (audited) for a reason found by a service.
    pub async fn refuse(&self, queue: Option<&str>, reason: &'static str) -> ApiError {
        self.forbidden(self.need, queue, reason, Vec::new()).await
    }

    /// [`Caller::refuse`], with more context for the audit record (never credentials or
    /// payloads).
    pub async fn refuse_with(
        &self,
        queue: Option<&str>,
        reason: &'static str,
        extra: Vec<(&'static str, serde_json::Value)>,
    ) -> ApiError {
        self.forbidden(self.need, queue, reason, extra).await
    }

    /// Audits a refusal and turns it into the 403 the client sees.
    pub async fn forbidden(
        &self,
        permission: Option<Permission>,
        queue: Option<&str>,
        reason: &'static str,
        extra: Vec<(&'static str, serde_json::Value)>,
    ) -> ApiError {
        let event = denial(
            &self.origin,
            &self.principal,
            permission,
            queue,
            reason,
            extra,
        );
        self.trail.emit(event).await;
        info!(principal = %self.principal.display_id(), reason, "request refused");
        ApiError::permission_denied(self.principal.name(), permission, queue)
    }
}

/// An event from `origin` before any principal is known (or for one the caller is not).
#[must_use]
pub fn origin_event(origin: &Origin, event_type: &'static str, outcome: Outcome) -> AuditEvent {
    let mut e = AuditEvent::new(event_type, outcome);
    e.source_ip = origin.source_ip.map(|ip| ip.to_string());
    e.correlation_id.clone_from(&origin.request_id);
    if origin.via == Via::Cli {
        e = e.detail("via", "cli");
    }
    e
}

/// The `authz.denied` record of a refusal (counted in the metrics too). The edge uses it for
/// refusals made while it is still deciding who the caller is.
#[must_use]
pub fn denial(
    origin: &Origin,
    principal: &Principal,
    permission: Option<Permission>,
    queue: Option<&str>,
    reason: &'static str,
    extra: Vec<(&'static str, serde_json::Value)>,
) -> AuditEvent {
    let mut event = origin_event(origin, "authz.denied", Outcome::Failure);
    event.principal = Some(principal.name().to_string());
    event.tenant = principal.tenant().map(str::to_string);
    let mut event = event
        .detail("credential", principal.credential_id())
        .detail("reason", reason)
        .detail("route", origin.operation.clone());
    if let Some(p) = permission {
        event = event.detail("permission", p.as_str());
        metrics::counter!(crate::metrics::AUTHZ_DENIALS, "permission" => p.as_str()).increment(1);
    }
    if let Some(q) = queue {
        event = event.detail("queue", q);
    }
    for (key, value) in extra {
        event = event.detail(key, value);
    }
    event
}
