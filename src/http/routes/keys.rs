//! `/ojs/v1/admin/keys`: API key management (admin credentials only). The rules (who manages
//! which key, the audit record before each change, forgetting a revoked key at once) are the
//! key service's ([`crate::services::keys`]); these handlers read the request and render the
//! keys. Keys are listed without their secrets; a new key's secret is in the creation (or
//! rotation) response and nowhere else.

use actix_web::{web, HttpResponse};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{created, ok};
use crate::auth::key::display_id;
use crate::auth::records::{KeyRecord, KeySpec};
use crate::auth::{Permission, QueuePattern};
use crate::clock::{parse_iso_duration, parse_rfc3339, rfc3339, Millis};
use crate::http::auth::Authenticated;
use crate::http::error::ApiError;
use crate::services::keys::{KeyFilter, NewKey, Rotated};
use crate::services::Services;

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
    services: web::Data<Services>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let keys = services.keys.list(&caller, query.name.as_deref()).await?;
    let now = services.keys.now();
    let items: Vec<Value> = keys.iter().map(|k| view(k, now)).collect();
    Ok(ok(&json!({ "keys": items })))
}

/// `POST /ojs/v1/admin/keys`: `{name, roles, tenant?, scopes?, queues?, expires_at? |
/// expires_in?}`; 201 with the key's secret, shown this once.
pub async fn create(
    caller: Authenticated,
    services: web::Data<Services>,
    body: crate::http::body::OjsJson,
) -> Result<HttpResponse, ApiError> {
    let obj = body
        .0
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "the request body must be a JSON object"))?;
    let spec = key_spec(obj, services.keys.now())?;
    let NewKey { record, secret } = services.keys.create(&caller, spec).await?;
    Ok(created(
        &json!({ "key": view(&record, services.keys.now()), "secret": secret.expose_secret() }),
    ))
}

/// Reads a key's description from the creation body.
fn key_spec(obj: &Map<String, Value>, now: Millis) -> Result<KeySpec, ApiError> {
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
    let tenant = match obj.get("tenant") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(ApiError::invalid("tenant", "tenant must be a string")),
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
    Ok(KeySpec {
        name,
        roles,
        tenant,
        scopes,
        queues,
        expires_at,
    })
}

/// `DELETE /ojs/v1/admin/keys/{id}`
pub async fn revoke(
    caller: Authenticated,
    services: web::Data<Services>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let revoked = services.keys.revoke(&caller, &id).await?;
    Ok(ok(&json!({ "key": view(&revoked, services.keys.now()) })))
}

/// `POST /ojs/v1/admin/keys/revoke`: `{ids?, name?, tenant?}` revokes every matching key the
/// caller manages (at least one filter).
pub async fn revoke_many(
    caller: Authenticated,
    services: web::Data<Services>,
    body: crate::http::body::OjsJson,
) -> Result<HttpResponse, ApiError> {
    let obj = body
        .0
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "the request body must be a JSON object"))?;
    let text = |field: &str| obj.get(field).and_then(Value::as_str).map(str::to_string);
    let filter = KeyFilter {
        ids: strings(obj, "ids")?,
        name: text("name"),
        tenant: text("tenant"),
    };
    let revoked = services.keys.revoke_many(&caller, filter).await?;
    let ids: Vec<&str> = revoked.iter().map(|k| k.id.as_str()).collect();
    Ok(ok(&json!({ "revoked": ids })))
}

/// Query of the rotation.
#[derive(Deserialize)]
pub struct RotateQuery {
    grace_secs: Option<u64>,
}

/// `POST /ojs/v1/admin/keys/{id}/rotate[?grace_secs=N]`; 201 with the new key's secret. The old
/// key keeps working for the grace period (default `[auth] rotation_grace_secs`).
pub async fn rotate(
    caller: Authenticated,
    services: web::Data<Services>,
    id: web::Path<String>,
    query: web::Query<RotateQuery>,
) -> Result<HttpResponse, ApiError> {
    let Rotated { new, secret, old } = services.keys.rotate(&caller, &id, query.grace_secs).await?;
    let now = services.keys.now();
    Ok(created(&json!({
        "key": view(&new, now),
        "secret": secret.expose_secret(),
        "previous": view(&old, now),
    })))
}
