//! `/ojs/v1/admin`: operator routes. `reset` exists only when `[testing] allow_reset` is set.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use tracing::warn;

use super::json;
use crate::audit::Outcome;
use crate::auth::Permission;
use crate::http::audit;
use crate::http::auth::Authenticated;
use crate::http::error::ApiError;
use crate::queue::QueueHandle;

/// `POST /ojs/v1/admin/reset`: deletes every job. For external conformance runners.
pub async fn reset(
    req: HttpRequest,
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
) -> Result<HttpResponse, ApiError> {
    caller.0.require(Permission::Admin)?;
    // Fail closed: no record on disk, no reset.
    audit::record_or_refuse(
        &req,
        audit::event(&req, "admin.reset", Outcome::Success, Some(&caller.0)),
    )
    .await?;
    let result = queue.reset().await;
    if let Err(e) = &result {
        let failed = audit::event(&req, "admin.reset", Outcome::Failure, Some(&caller.0))
            .detail("reason", e.to_string());
        audit::emit(&req, failed).await;
    }
    result?;
    warn!(principal = %caller.0.display_id(), "all job state reset through the testing route");
    Ok(json(StatusCode::OK, &json!({ "reset": true })))
}
