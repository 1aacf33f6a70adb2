//! The auth extractor: a handler that takes [`Authenticated`] only runs for a caller whose
//! credential the auth store accepted and whom the route table ([`super::access`]) allows on
//! this route, acting for the tenant the credential decides.
//!
//! Credentials: a bearer token (API key, JWT, admin session) when the request has an
//! `Authorization` header; otherwise the connection's verified TLS client certificate, when it
//! maps to a `[[tls.client_identities]]` entry. A principal holding a role listed in
//! `[tls] require_certificate_for_roles` must be the certificate's own principal, or come over
//! a connection whose certificate maps to the same principal name and tenant (else 403,
//! `certificate_required`).
//!
//! Tenant: a tenant-bound credential acts for its tenant; `X-OJS-Tenant` (or
//! `X-OJS-Tenant-Id`) may only repeat it. A system-scoped administrator may name a tenant in
//! the header to act for it. Anything else is refused with 403 and audited.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use secrecy::{ExposeSecret, SecretString};
use tracing::{error, info};

use super::access::{self, Need};
use super::error::ApiError;
use super::limits;
use super::middleware::RequestId;
use crate::audit::Outcome;
use crate::auth::records::is_valid_tenant;
use crate::auth::session::{self, SessionVerifier};
use crate::auth::{jwt, key, AuthError, AuthHandle, Credential, Permission, Principal, Reach};
use crate::limiter::rates::{Class, RateInfo, Scope};
use crate::limiter::LimiterHandle;
use crate::queue::StillValid;
use crate::services::caller::denial;
use crate::services::{Caller, Origin, Services, Via};
use crate::tls::accept::ClientCertificate;

/// The longest bearer token looked at; anything longer is refused unread.
const MAX_TOKEN_LEN: usize = 8192;

/// The headers that may name a tenant (header names are case-insensitive, so `X-OJS-Tenant-ID`
/// is the second).
const TENANT_HEADERS: [&str; 2] = ["x-ojs-tenant", "x-ojs-tenant-id"];

/// An authenticated, authorized caller: the services' [`Caller`], and the request it made.
pub struct Authenticated {
    caller: Caller,
    req: HttpRequest,
}

impl std::ops::Deref for Authenticated {
    type Target = Caller;

    fn deref(&self) -> &Caller {
        &self.caller
    }
}

enum TokenCheck {
    Missing,
    Malformed,
    Bearer(SecretString),
}

fn bearer(req: &HttpRequest) -> TokenCheck {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return TokenCheck::Missing;
    };
    if value.len() > MAX_TOKEN_LEN + 16 {
        return TokenCheck::Malformed;
    }
    let Ok(value) = value.to_str() else {
        return TokenCheck::Malformed;
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return TokenCheck::Malformed;
    };
    let token = token.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' ') {
        TokenCheck::Bearer(SecretString::from(token.to_string()))
    } else {
        TokenCheck::Malformed
    }
}

/// The tenant named by the request headers: `Ok(None)` when none is, `Err` when they are
/// malformed or disagree.
fn header_tenant(req: &HttpRequest) -> Result<Option<String>, BadTenantHeader> {
    tenant_from_headers(
        TENANT_HEADERS
            .iter()
            .flat_map(|name| req.headers().get_all(*name)),
    )
}

/// Tenant headers that are malformed (not `^[a-z0-9][a-z0-9_-]{0,63}$` once trimmed) or name
/// two different tenants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed or conflicting tenant headers")]
pub struct BadTenantHeader;

/// The tenant named by the values of the tenant headers, in order (pure: the fuzz target
/// drives it with arbitrary bytes).
pub fn tenant_from_headers<'a>(
    values: impl IntoIterator<Item = &'a header::HeaderValue>,
) -> Result<Option<String>, BadTenantHeader> {
    let mut found: Option<String> = None;
    for value in values {
        let value = value.to_str().map_err(|_| BadTenantHeader)?.trim();
        if !is_valid_tenant(value) || found.as_deref().is_some_and(|f| f != value) {
            return Err(BadTenantHeader);
        }
        found = Some(value.to_string());
    }
    Ok(found)
}

/// Counts a refused authentication and audits it: one record each, or, for refusals that may
/// come in a flood (`aggregated`: throttled ones), aggregated per address and reason with a
/// count, so the records' counts add up to the metric.
async fn refuse_unauthenticated(
    req: &HttpRequest,
    reason: &str,
    key_id: Option<String>,
    aggregated: bool,
) {
    metrics::counter!(crate::metrics::AUTH_ATTEMPTS, "outcome" => "failure", "reason" => reason.to_string()).increment(1);
    let mut event =
        super::audit::event(req, "auth.failure", Outcome::Failure, None).detail("reason", reason);
    if let Some(id) = key_id {
        event = event.detail("key", id);
    }
    if aggregated {
        let source = event.source_ip.clone().unwrap_or_default();
        super::audit::aggregate(req, format!("{source}|{reason}"), event).await;
    } else {
        super::audit::emit(req, event).await;
    }
}

/// Where a request came from, for the services and the audit trail.
#[must_use]
pub fn origin(req: &HttpRequest) -> Origin {
    Origin {
        via: Via::Http,
        source_ip: req.peer_addr().map(|a| a.ip()),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
        operation: format!(
            "{} {}",
            req.method(),
            req.match_pattern().unwrap_or_default()
        ),
    }
}

/// Audits a refusal made while deciding who the caller is, and turns it into the 403 the
/// client sees.
async fn forbidden(
    req: &HttpRequest,
    principal: &Principal,
    permission: Option<Permission>,
    queue: Option<&str>,
    reason: &'static str,
) -> ApiError {
    let event = denial(
        &origin(req),
        principal,
        permission,
        queue,
        reason,
        Vec::new(),
    );
    super::audit::emit(req, event).await;
    info!(principal = %principal.display_id(), reason, "request refused");
    ApiError::permission_denied(principal.name(), permission, queue)
}

impl Authenticated {
    /// The request this caller made.
    #[must_use]
    pub fn request(&self) -> &HttpRequest {
        &self.req
    }
}

/// Whether a principal's credential still stands at a later time: not expired, not revoked
/// or changed since (API keys), and for an admin session not logged out, revoked or its user
/// disabled.
fn standing(principal: &Arc<Principal>, sessions: &SessionVerifier) -> StillValid {
    let principal = principal.clone();
    let session = match principal.credential() {
        Credential::Session { session } => {
            let user = principal.name().strip_prefix("user:").unwrap_or_default();
            Some((sessions.clone(), user.to_string(), session.clone()))
        }
        _ => None,
    };
    StillValid(Arc::new(move |now| {
        principal.still_valid(now)
            && session
                .as_ref()
                .is_none_or(|(gates, user, sid)| gates.stands(user, sid))
    }))
}

/// Puts the failed-authentication budget (`[auth.throttle]`) in the rate-limit headers of its
/// 429.
fn note_throttled(req: &HttpRequest, retry_after: &std::time::Duration) {
    let limit = req
        .app_data::<web::Data<crate::config::Config>>()
        .map_or(0, |c| c.auth.throttle.burst);
    limits::record_refusal(
        req,
        RateInfo {
            scope: Scope::FailedAuth,
            limit,
            remaining: 0,
            reset_in_secs: retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
        },
    );
}

/// Who a bearer token is: an admin session (one HMAC), a JWT (one signature check) or an API
/// key (argon2 once per key per process). Failures are counted and audited.
async fn bearer_principal(
    req: &HttpRequest,
    auth: &AuthHandle,
    token: SecretString,
    peer: Option<std::net::IpAddr>,
) -> Result<Arc<Principal>, ApiError> {
    // The public key id, if the token has the shape of a key, for the record.
    let key_id = key::parse(token.expose_secret()).map(|k| key::display_id(k.id));
    let result = if token.expose_secret().starts_with(session::ACCESS_PREFIX) {
        match req.app_data::<web::Data<SessionVerifier>>() {
            Some(sessions) => sessions.authenticate(&token),
            None => Err(AuthError::Unavailable),
        }
    } else if jwt::looks_like_jwt(token.expose_secret()) {
        auth.authenticate_jwt(token.expose_secret())
    } else {
        auth.authenticate(token, peer).await
    };
    match result {
        Ok(principal) => Ok(principal),
        Err(e) => {
            info!(source_ip = ?peer, reason = %e, "authentication failed");
            if let AuthError::Throttled { retry_after, .. } = &e {
                note_throttled(req, retry_after);
            }
            if !matches!(e, AuthError::Storage(_) | AuthError::Unavailable) {
                // Throttled refusals come in floods: aggregated per address, each counted.
                let aggregated = matches!(e, AuthError::Throttled { .. });
                refuse_unauthenticated(req, e.metric_reason(), key_id, aggregated).await;
            }
            if let AuthError::Throttled { retry_after, .. } = &e {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                limits::delay_refusal(req, secs).await;
            }
            Err(e.into())
        }
    }
}

/// The principal of the connection's verified client certificate, when it maps to a
/// configured identity.
fn certificate_principal(req: &HttpRequest) -> Option<Arc<Principal>> {
    req.conn_data::<ClientCertificate>()
        .and_then(|c| c.principal.clone())
}

async fn authenticate(req: HttpRequest) -> Result<Authenticated, ApiError> {
    let auth = req
        .app_data::<web::Data<AuthHandle>>()
        .cloned()
        .ok_or_else(ApiError::unavailable)?;
    let peer = req.peer_addr().map(|a| a.ip());
    let from_certificate = certificate_principal(&req);
    let token = match bearer(&req) {
        TokenCheck::Bearer(token) => Some(token),
        TokenCheck::Missing if from_certificate.is_some() => None,
        TokenCheck::Missing => {
            refuse_unauthenticated(&req, "missing", None, false).await;
            return Err(ApiError::unauthenticated());
        }
        TokenCheck::Malformed => {
            refuse_unauthenticated(&req, "malformed", None, false).await;
            return Err(ApiError::unauthenticated());
        }
    };
    let clock = auth.clock();
    let principal = match token {
        Some(token) => bearer_principal(&req, &auth, token, peer).await?,
        // No Authorization header and a client certificate mapped to an identity: that
        // identity, for as long as the certificate is valid.
        None => match from_certificate.clone() {
            Some(p) if !p.expired_at(clock.now_ms()) => p,
            _ => {
                refuse_unauthenticated(&req, "certificate_expired", None, false).await;
                return Err(ApiError::unauthenticated());
            }
        },
    };
    // A role that requires a certificate is usable only by the certificate's own principal:
    // a key or JWT holding it must come over a connection whose client certificate maps to
    // the same principal name and tenant.
    // Missing wiring refuses (503) rather than skipping the check.
    let Some(policy) = req.app_data::<web::Data<super::CertificatePolicy>>() else {
        tracing::error!("the certificate policy is not wired into the HTTP app; refusing");
        return Err(ApiError::unavailable());
    };
    let needs_certificate = principal
        .roles()
        .iter()
        .any(|r| policy.required_for_roles.contains(r));
    let bound = matches!(principal.credential(), Credential::Certificate { .. })
        || from_certificate
            .as_ref()
            .is_some_and(|c| c.name() == principal.name() && c.tenant() == principal.tenant());
    if needs_certificate && !bound {
        return Err(forbidden(&req, &principal, None, None, "certificate_required").await);
    }
    metrics::counter!(crate::metrics::AUTH_ATTEMPTS, "outcome" => "success", "reason" => "")
        .increment(1);
    metrics::counter!(crate::metrics::CREDENTIAL_USES, "kind" => principal.credential_kind())
        .increment(1);

    // The route table decides what this route needs; a matched route missing from it is
    // refused.
    let need = match req.match_pattern() {
        None => None,
        Some(pattern) => match access::lookup(req.method().as_str(), &pattern) {
            Some(route) => Some(route.need),
            None => {
                error!(route = %pattern, method = %req.method(), "route missing from the access table; refused");
                return Err(forbidden(&req, &principal, None, None, "route_not_in_table").await);
            }
        },
    };

    let Ok(named) = header_tenant(&req) else {
        return Err(forbidden(&req, &principal, None, None, "malformed_tenant_header").await);
    };
    let tenant = match (principal.tenant(), named) {
        (Some(own), Some(named)) if own != named => {
            return Err(forbidden(&req, &principal, None, None, "tenant_mismatch").await);
        }
        (Some(own), _) => Some(own.to_string()),
        (None, Some(named)) if principal.is_system_admin() => Some(named),
        (None, Some(_)) => {
            return Err(forbidden(
                &req,
                &principal,
                None,
                None,
                "tenant_selection_requires_admin",
            )
            .await);
        }
        (None, None) => None,
    };

    // The tenant's and the principal's budgets, before anything else is looked at, so that
    // refused requests spend them too.
    let Some(limiter) = req.app_data::<web::Data<LimiterHandle>>() else {
        tracing::error!("the limiter is not wired into the HTTP app; refusing");
        return Err(ApiError::unavailable());
    };
    {
        let pattern = req.match_pattern().unwrap_or_default();
        let class = super::access::lookup(req.method().as_str(), &pattern)
            .map_or(Class::Other, |route| route.rate);
        let checked = limiter
            .rates()
            .check_caller(principal.id(), tenant.as_deref(), class);
        match checked {
            Ok(info) => limits::record(&req, info),
            Err(limited) => {
                let key = match limited.info.scope {
                    Scope::Tenant => tenant.clone().unwrap_or_default(),
                    _ => principal.id().to_string(),
                };
                return Err(limits::refuse(&req, limited, &key, Some(&principal)).await);
            }
        }
    }

    let permission = need.and_then(Need::permission);
    if let Some(need) = need {
        if let Need::System(_) = need {
            if tenant.is_some() {
                return Err(
                    forbidden(&req, &principal, permission, None, "system_scope_required").await,
                );
            }
        }
        if let Some(p) = permission {
            match principal.decide(p, None) {
                Ok(Reach::OwnJobs)
                    if !req.match_pattern().is_some_and(|m| m.contains("{id}"))
                        && p != Permission::Enqueue =>
                {
                    return Err(forbidden(&req, &principal, Some(p), None, "own_jobs_only").await);
                }
                Ok(_) => {}
                Err(AuthError::Forbidden { reason, .. }) => {
                    return Err(forbidden(&req, &principal, Some(p), None, reason).await);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let Some(services) = req.app_data::<web::Data<Services>>() else {
        error!("the services are not wired into the HTTP app; refusing");
        return Err(ApiError::unavailable());
    };
    let Some(sessions) = req.app_data::<web::Data<SessionVerifier>>() else {
        error!("the session verifier is not wired into the HTTP app; refusing");
        return Err(ApiError::unavailable());
    };
    let caller = Caller::new(
        principal.clone(),
        tenant,
        permission,
        origin(&req),
        standing(&principal, sessions),
        services.trail.clone(),
    );
    Ok(Authenticated { caller, req })
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(authenticate(req.clone()))
    }
}
