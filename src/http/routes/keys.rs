//! `/ojs/v1/admin/keys`: API key management (admin credentials only). Keys are listed without
//! their secrets; a new key's secret is in the creation (or rotation) response and nowhere else.
//! A tenant-bound administrator manages its own tenant's keys; a system administrator manages
//! every key, or one tenant's when it names it in `X-OJS-Tenant`. Every change is written to
//! the audit trail before it happens (no record, no change), and a revoked key stops working on
//! its very next request: the auth store forgets it before the answer goes out.

use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{created, ok};
use crate::audit::Outcome;
use crate::auth::key::display_id;
use crate::auth::records::{self, KeyError, KeyRecord, KeySpec};
use crate::auth::{AuthHandle, Permission, QueuePattern};
use crate::clock::{parse_iso_duration, parse_rfc3339, rfc3339, Millis};
use crate::config::Config;
use crate::http::audit;
use crate::http::auth::Authenticated;
use crate::http::error::ApiError;
use crate::http::error::Code;

/// Longest grace period a rotation may ask for (30 days).
const MAX_GRACE_SECS: u64 = 30 * 24 * 3600;

fn view(k: &KeyRecord, now: Millis) -> Value {
    json!({
        "id": k.id,
        "display_id": display_id(&k.id),
        "name": k.name,
        "tenant": k.tenant,
        "roles": k.roles,
        "scopes": k.scopes,
        "queues": k.queues,
        "status": k.status(now),
        "created_at": rfc3339(k.created_at),
        "expires_at": k.expires_at.map(rfc3339),
        "revoked_at": k.revoked_at.map(rfc3339),
        "last_used_at": k.last_used_at.map(rfc3339),
        "rotated_from": k.rotated_from,
        "replaced_by": k.replaced_by,
    })
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Invalid { field, message } => ApiError::invalid(field, message),
            KeyError::Policy(p) => ApiError::new(Code::Unprocessable, p.to_string())
                .with_details(json!({ "field": "roles" })),
            KeyError::NotFound => ApiError::not_found("api key"),
            KeyError::NotLive => ApiError::new(
                Code::Conflict,
                "the key is revoked or expired and cannot be rotated",
            ),
            KeyError::Store(inner) => {
                tracing::error!(error = %inner, "key store failure");
                ApiError::unavailable()
            }
            KeyError::Crypto => ApiError::unavailable(),
        }
    }
}

/// Runs blocking key-store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KeyError> + Send + 'static,
) -> Result<T, ApiError> {
    actix_web::rt::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(ApiError::from)
}

/// Whether the caller manages `key`: its tenant's keys, or every key for a system
/// administrator acting on the system scope.
fn manages(caller: &Authenticated, key: &KeyRecord) -> bool {
    match &caller.tenant {
        Some(t) => key.tenant.as_ref() == Some(t),
        None => caller.principal.is_system_admin(),
    }
}

fn key_event(
    req: &HttpRequest,
    caller: &Authenticated,
    event_type: &'static str,
    key: &KeyRecord,
) -> crate::audit::AuditEvent {
    let mut event = audit::event(req, event_type, Outcome::Success, Some(&caller.principal))
        .detail("key", display_id(&key.id))
        .detail("name", key.name.clone())
        .detail("roles", key.roles.clone());
    event.tenant.clone_from(&key.tenant);
    event
}

fn strings(obj: &Map<String, Value>, field: &'static str) -> Result<Option<Vec<String>>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.len() <= 64 => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, "must be an array of strings")),
        Some(_) => Err(ApiError::invalid(
            field,
            "must be an array of at most 64 strings",
        )),
    }
}

/// Query of the listing.
#[derive(Deserialize)]
pub struct ListQuery {
    name: Option<String>,
}

/// `GET /ojs/v1/admin/keys`
pub async fn list(
    caller: Authenticated,
    auth: web::Data<AuthHandle>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let store = auth.store().clone();
    let mut keys = blocking(move || records::list(&store).map_err(KeyError::from)).await?;
    let recent = auth.last_used().await.unwrap_or_default();
    let clock = auth.clock();
    let now = clock.now_ms();
    keys.retain(|k| manages(&caller, k) && query.name.as_ref().is_none_or(|n| &k.name == n));
    let items: Vec<Value> = keys
        .iter_mut()
        .map(|k| {
            if let Some(at) = recent.get(&k.id) {
                k.last_used_at = Some(k.last_used_at.map_or(*at, |old| old.max(*at)));
            }
            view(k, now)
        })
        .collect();
    Ok(ok(&json!({ "keys": items })))
}

/// `POST /ojs/v1/admin/keys`: `{name, roles, tenant?, scopes?, queues?, expires_at? |
/// expires_in?}`; 201 with the key's secret, shown this once.
pub async fn create(
    req: HttpRequest,
    caller: Authenticated,
    auth: web::Data<AuthHandle>,
    config: web::Data<Config>,
    body: crate::http::body::OjsJson,
) -> Result<HttpResponse, ApiError> {
    let obj = body
        .0
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "the request body must be a JSON object"))?;
    let known = [
        "name",
        "roles",
        "tenant",
        "scopes",
        "queues",
        "expires_at",
        "expires_in",
    ];
    if obj.keys().any(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            "body",
            "accepted fields: name, roles, tenant, scopes, queues, expires_at, expires_in",
        ));
    }
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("name", "name is required"))?
        .to_string();
    let roles =
        strings(obj, "roles")?.ok_or_else(|| ApiError::invalid("roles", "roles is required"))?;
    let named_tenant = match obj.get("tenant") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(ApiError::invalid("tenant", "tenant must be a string")),
    };
    // A tenant administrator makes keys of its own tenant only.
    let tenant = match (&caller.tenant, named_tenant) {
        (Some(own), Some(named)) if *own != named => {
            return Err(caller.refuse(None, "tenant_mismatch").await);
        }
        (Some(own), _) => Some(own.clone()),
        (None, named) => named,
    };
    let scopes = strings(obj, "scopes")?
        .map(|ss| {
            ss.iter()
                .map(|s| Permission::parse(s))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::invalid("scopes", "scopes are permission names"))
        })
        .transpose()?;
    let queues = strings(obj, "queues")?
        .map(|qs| {
            qs.iter()
                .map(|q| QueuePattern::parse(q))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ApiError::invalid("queues", "queues are patterns: *, name or prefix.*")
                })
        })
        .transpose()?;
    let clock = auth.clock().clone();
    let now = clock.now_ms();
    let expires_at = match (obj.get("expires_at"), obj.get("expires_in")) {
        (Some(Value::String(at)), None) => Some(parse_rfc3339(at).ok_or_else(|| {
            ApiError::invalid("expires_at", "expires_at must be an RFC 3339 time")
        })?),
        (None, Some(Value::String(d))) => Some(
            parse_iso_duration(d)
                .and_then(|ms| i64::try_from(ms).ok())
                .map(|ms| now.saturating_add(ms))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "expires_in",
                        "expires_in must be an ISO 8601 duration such as P90D",
                    )
                })?,
        ),
        (None, None) => None,
        _ => return Err(ApiError::invalid(
            "expires_at",
            "give expires_at (RFC 3339) or expires_in (ISO 8601 duration), as strings, not both",
        )),
    };
    let spec = KeySpec {
        name,
        roles,
        tenant,
        scopes,
        queues,
        expires_at,
    };
    spec.validate(auth.policy(), now)?;
    let mut event = audit::event(
        &req,
        "key.created",
        Outcome::Success,
        Some(&caller.principal),
    )
    .detail("name", spec.name.clone())
    .detail("roles", spec.roles.clone());
    event.tenant.clone_from(&spec.tenant);
    let (store, policy, env) = (
        auth.store().clone(),
        auth.policy().clone(),
        config.secrets.key_env.clone(),
    );
    let (record, token) = audit::guarded(
        &req,
        event,
        blocking({
            let clock = clock.clone();
            move || records::create(&store, &policy, &spec, &env, clock.now_ms())
        }),
    )
    .await?;
    Ok(created(
        &json!({ "key": view(&record, clock.now_ms()), "secret": token.expose_secret() }),
    ))
}

async fn load_managed(
    caller: &Authenticated,
    auth: &AuthHandle,
    id: &str,
) -> Result<KeyRecord, ApiError> {
    let store = auth.store().clone();
    let owned = id.to_string();
    let key = blocking(move || records::get(&store, &owned).map_err(KeyError::from)).await?;
    match key {
        Some(k) if manages(caller, &k) => Ok(k),
        // Another tenant's key does not exist for this caller (but the attempt is recorded).
        Some(_) => {
            caller.audit_hidden("other_tenant").await;
            Err(ApiError::not_found("api key"))
        }
        None => Err(ApiError::not_found("api key")),
    }
}

/// `DELETE /ojs/v1/admin/keys/{id}`
pub async fn revoke(
    req: HttpRequest,
    caller: Authenticated,
    auth: web::Data<AuthHandle>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = load_managed(&caller, &auth, &id).await?;
    let event = key_event(&req, &caller, "key.revoked", &key);
    let clock = auth.clock().clone();
    let store = auth.store().clone();
    let key_id = key.id.clone();
    let revoked = audit::guarded(
        &req,
        event,
        blocking({
            let clock = clock.clone();
            move || records::revoke(&store, &key_id, clock.now_ms())?.ok_or(KeyError::NotFound)
        }),
    )
    .await?;
    auth.forget(vec![revoked.id.clone()])
        .await
        .map_err(ApiError::from)?;
    Ok(ok(&json!({ "key": view(&revoked, clock.now_ms()) })))
}

/// `POST /ojs/v1/admin/keys/revoke`: `{ids?, name?, tenant?}` revokes every matching key the
/// caller manages (at least one filter).
pub async fn revoke_many(
    req: HttpRequest,
    caller: Authenticated,
    auth: web::Data<AuthHandle>,
    body: crate::http::body::OjsJson,
) -> Result<HttpResponse, ApiError> {
    let obj = body
        .0
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "the request body must be a JSON object"))?;
    let ids = strings(obj, "ids")?;
    let name = obj.get("name").and_then(Value::as_str).map(str::to_string);
    let tenant = obj
        .get("tenant")
        .and_then(Value::as_str)
        .map(str::to_string);
    if ids.is_none() && name.is_none() && tenant.is_none() {
        return Err(ApiError::invalid("body", "give ids, name or tenant"));
    }
    let mut event = audit::event(
        &req,
        "key.bulk_revoked",
        Outcome::Success,
        Some(&caller.principal),
    );
    if let Some(n) = &name {
        event = event.detail("name", n.clone());
    }
    if let Some(t) = &tenant {
        event = event.detail("tenant_filter", t.clone());
    }
    if let Some(ids) = &ids {
        event = event.detail(
            "keys",
            ids.iter().map(|i| display_id(i)).collect::<Vec<_>>(),
        );
    }
    let (store, clock) = (auth.store().clone(), auth.clock().clone());
    let scope = caller.tenant.clone();
    let system = caller.principal.is_system_admin();
    let revoked = audit::guarded(
        &req,
        event,
        blocking(move || {
            records::revoke_where(
                &store,
                |k| {
                    let managed = match &scope {
                        Some(t) => k.tenant.as_ref() == Some(t),
                        None => system,
                    };
                    managed
                        && ids.as_ref().is_none_or(|ids| ids.contains(&k.id))
                        && name.as_ref().is_none_or(|n| &k.name == n)
                        && tenant.as_ref().is_none_or(|t| k.tenant.as_ref() == Some(t))
                },
                clock.now_ms(),
            )
            .map_err(KeyError::from)
        }),
    )
    .await?;
    let revoked_ids: Vec<String> = revoked.iter().map(|k| k.id.clone()).collect();
    auth.forget(revoked_ids.clone())
        .await
        .map_err(ApiError::from)?;
    Ok(ok(&json!({ "revoked": revoked_ids })))
}

/// Query of the rotation.
#[derive(Deserialize)]
pub struct RotateQuery {
    grace_secs: Option<u64>,
}

/// `POST /ojs/v1/admin/keys/{id}/rotate[?grace_secs=N]`; 201 with the new key's secret. The old
/// key keeps working for the grace period (default `[auth] rotation_grace_secs`).
pub async fn rotate(
    req: HttpRequest,
    caller: Authenticated,
    auth: web::Data<AuthHandle>,
    config: web::Data<Config>,
    id: web::Path<String>,
    query: web::Query<RotateQuery>,
) -> Result<HttpResponse, ApiError> {
    let key = load_managed(&caller, &auth, &id).await?;
    let grace = match query.grace_secs {
        None => config.auth.rotation_grace_secs,
        Some(s) if s <= MAX_GRACE_SECS => s,
        Some(_) => {
            return Err(ApiError::invalid(
                "grace_secs",
                "grace_secs must be at most 30 days",
            ))
        }
    };
    let event = key_event(&req, &caller, "key.rotated", &key).detail("grace_secs", grace);
    let (store, env) = (auth.store().clone(), config.secrets.key_env.clone());
    let clock = auth.clock().clone();
    let key_id = key.id.clone();
    let grace_ms = i64::try_from(grace.saturating_mul(1000)).unwrap_or(i64::MAX);
    let (new, token, old) = audit::guarded(
        &req,
        event,
        blocking({
            let clock = clock.clone();
            move || records::rotate(&store, &key_id, grace_ms, &env, clock.now_ms())
        }),
    )
    .await?;
    // The old key's cached copy carries its old expiry: forget it so the grace period holds.
    auth.forget(vec![old.id.clone()])
        .await
        .map_err(ApiError::from)?;
    let now = clock.now_ms();
    Ok(created(&json!({
        "key": view(&new, now),
        "secret": token.expose_secret(),
        "previous": view(&old, now),
    })))
}
