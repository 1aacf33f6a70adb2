//! `/ojs/v1/admin`: operator routes. `reset` exists only when `[testing] allow_reset` is set.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;
use tracing::warn;

use super::json;
use crate::auth::Permission;
use crate::http::auth::Authenticated;
use crate::http::error::ApiError;
use crate::queue::QueueHandle;

/// `POST /ojs/v1/admin/reset`: deletes every job. For external conformance runners.
pub async fn reset(
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
) -> Result<HttpResponse, ApiError> {
    caller.0.require(Permission::Admin)?;
    queue.reset().await?;
    warn!(principal = %caller.0.display_id(), "all job state reset through the testing route");
    Ok(json(StatusCode::OK, &json!({ "reset": true })))
}
