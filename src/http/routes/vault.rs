//! `/ojs/v1/admin/vault`: the key vault's status (jobs per key-encryption key, unreadable jobs,
//! re-wrap progress) and starting a re-wrap ([`crate::services::vault`]). System
//! administrators only (see `access.rs`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{accepted, ok};
use crate::http::auth::Authenticated;
use crate::http::error::ApiError;
use crate::services::Services;

/// `GET /ojs/v1/admin/vault`
pub async fn status(
    _caller: Authenticated,
    services: web::Data<Services>,
) -> Result<HttpResponse, ApiError> {
    let (status, rewrap) = services.vault.status().await?;
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
    caller: Authenticated,
    services: web::Data<Services>,
    query: web::Query<RewrapQuery>,
) -> Result<HttpResponse, ApiError> {
    let progress = services.vault.rewrap(&caller, query.batch).await?;
    Ok(accepted(&json!({ "rewrap": progress })))
}
