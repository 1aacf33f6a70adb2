//! `/ojs/v1/admin/vault`: the key vault's status (jobs per key-encryption key, unreadable jobs,
//! re-wrap progress) and starting a re-wrap. System administrators only (see `access.rs`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{accepted, ok};
use crate::audit::Outcome;
use crate::http::audit;
use crate::http::auth::Authenticated;
use crate::http::error::ApiError;
use crate::vault::VaultHandle;

/// `GET /ojs/v1/admin/vault`
pub async fn status(
    _caller: Authenticated,
    vault: web::Data<VaultHandle>,
) -> Result<HttpResponse, ApiError> {
    let status = vault.status().await?;
    let rewrap = vault.rewrap_progress().await?;
    Ok(ok(&json!({ "vault": status, "rewrap": rewrap })))
}

/// Query of `POST /ojs/v1/admin/vault/rewrap`.
#[derive(Deserialize)]
pub struct RewrapQuery {
    batch: Option<usize>,
}

/// `POST /ojs/v1/admin/vault/rewrap[?batch=N]`: starts re-wrapping every data key that is not
/// under the active KEK, in steps of `batch` records beside normal traffic; 202 with the
/// progress (poll `GET /ojs/v1/admin/vault`). A run already going is reported, not restarted.
/// Audited before it starts (`vault.rewrap`; no record, no run) and when it ends
/// (`vault.rewrap_finished`).
pub async fn rewrap(
    req: HttpRequest,
    caller: Authenticated,
    vault: web::Data<VaultHandle>,
    query: web::Query<RewrapQuery>,
) -> Result<HttpResponse, ApiError> {
    if let Some(batch) = query.batch {
        if !(1..=10_000).contains(&batch) {
            return Err(ApiError::invalid("batch", "batch must be from 1 to 10000"));
        }
    }
    let target = vault
        .keys()
        .ring()
        .active_id()
        .map(crate::vault::keyring::short_id)
        .unwrap_or_default();
    let event = audit::event(
        &req,
        "vault.rewrap",
        Outcome::Success,
        Some(&caller.principal),
    )
    .detail("target", target)
    .detail("batch", query.batch.unwrap_or(0));
    let progress = audit::guarded(&req, event, vault.start_rewrap(query.batch)).await?;
    Ok(accepted(&json!({ "rewrap": progress })))
}
