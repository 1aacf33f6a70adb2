//! `/ojs/v1/queues/{name}/stats` and `/ojs/v1/admin/queues/{name}/config`: a queue's depth and
//! its backpressure bound (`ojs-backpressure.md` §6). The handlers read the request and render;
//! the queue service ([`crate::services::queues`]) checks and records.

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

use super::ok;
use crate::http::auth::Authenticated;
use crate::http::body::OjsJson;
use crate::http::error::ApiError;
use crate::http::error::Code;
use crate::job::envelope::{attribute_name, is_valid_queue};
use crate::queue::bounds::{QueueBound, Strategy};
use crate::queue::BoundInfo;
use crate::services::queues::QueueStats;
use crate::services::Services;

fn queue_name(name: &str) -> Result<String, ApiError> {
    if is_valid_queue(name) {
        Ok(name.to_string())
    } else {
        Err(ApiError::invalid(
            "name",
            "queue names must match ^[a-z0-9][a-z0-9.-]*$ and be at most 255 characters",
        ))
    }
}

fn bound_json(info: &BoundInfo) -> Value {
    json!({
        "max_depth": info.bound.max_depth,
        "strategy": info.bound.strategy.as_str(),
        "warning_threshold": info.bound.warning_threshold,
        "configured": info.configured,
    })
}

/// `GET /ojs/v1/queues/{name}/stats`: depth, bound and per-state counts.
pub async fn stats(
    caller: Authenticated,
    services: web::Data<Services>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = queue_name(&name)?;
    let QueueStats { info, summary } = services.queues.stats(&caller, &name).await?;
    let counts = summary.map(|q| q.counts).unwrap_or_default();
    let mut summary = serde_json::to_value(&counts).unwrap_or_else(|_| json!({}));
    summary["name"] = json!(name);
    summary["depth"] = json!(info.depth);
    let pressure = match info.bound.max_depth {
        0 => Value::Null,
        #[allow(clippy::cast_precision_loss)]
        max => json!((info.depth as f64 / max as f64).min(1.0)),
    };
    Ok(ok(&json!({
        "stats": {
            "queue": name,
            "depth": info.depth,
            "max_depth": info.bound.max_depth,
            "pressure": pressure,
            "counts": counts,
        },
        "queue": summary,
        "backpressure": bound_json(&info),
    })))
}

/// `GET /ojs/v1/admin/queues/{name}/config`
pub async fn config(
    caller: Authenticated,
    services: web::Data<Services>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = queue_name(&name)?;
    let info = services.queues.bound(&caller, &name).await?;
    Ok(ok(
        &json!({ "queue": name, "depth": info.depth, "backpressure": bound_json(&info) }),
    ))
}

/// Reads `{"backpressure": {...}}`; `"backpressure": null` removes the queue's own bound.
fn parse_bound(body: &Value) -> Result<Option<QueueBound>, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "the request body must be a JSON object"))?;
    if let Some(key) = obj.keys().find(|k| k.as_str() != "backpressure") {
        return Err(
            ApiError::new(Code::Unprocessable, "only backpressure can be configured")
                .with_details(json!({ "unknown_fields": [attribute_name("", key)] })),
        );
    }
    let bp = match obj.get("backpressure") {
        None => {
            return Err(ApiError::invalid(
                "backpressure",
                "backpressure is required",
            ))
        }
        Some(Value::Null) => return Ok(None),
        Some(Value::Object(bp)) => bp,
        Some(_) => {
            return Err(ApiError::invalid(
                "backpressure",
                "backpressure must be a JSON object or null",
            ))
        }
    };
    check_fields(bp)?;
    let max_depth = match bp.get("max_depth") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_u64().ok_or_else(|| {
            ApiError::invalid(
                "backpressure.max_depth",
                "max_depth must be a non-negative integer (0: unbounded)",
            )
        })?,
    };
    let strategy = match bp.get("strategy").map(|v| v.as_str()) {
        None | Some(Some("reject")) => Strategy::Reject,
        Some(Some("block")) => Strategy::Block,
        Some(Some("drop_oldest")) => Strategy::DropOldest,
        Some(_) => {
            return Err(ApiError::invalid(
                "backpressure.strategy",
                "strategy must be \"reject\", \"block\" or \"drop_oldest\"",
            ))
        }
    };
    let warning_threshold = match bp.get("warning_threshold") {
        None | Some(Value::Null) => 0.8,
        Some(v) => v
            .as_f64()
            .filter(|t| (0.0..=1.0).contains(t))
            .ok_or_else(|| {
                ApiError::invalid(
                    "backpressure.warning_threshold",
                    "warning_threshold must be a number from 0.0 to 1.0",
                )
            })?,
    };
    match bp.get("max_size_bytes") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64() == Some(0) => {}
        Some(_) => {
            return Err(ApiError::new(
                Code::Unprocessable,
                "size bounds are not supported; bound the queue by max_depth",
            )
            .with_details(json!({ "field": "backpressure.max_size_bytes" })))
        }
    }
    Ok(Some(QueueBound {
        max_depth,
        strategy,
        warning_threshold,
    }))
}

fn check_fields(bp: &Map<String, Value>) -> Result<(), ApiError> {
    const KNOWN: &[&str] = &[
        "max_depth",
        "strategy",
        "warning_threshold",
        "max_size_bytes",
    ];
    let unknown: Vec<String> = bp
        .keys()
        .filter(|k| !KNOWN.contains(&k.as_str()))
        .map(|k| attribute_name("backpressure.", k))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::Unprocessable,
            format!("unknown attributes: {}", unknown.join(", ")),
        )
        .with_details(json!({ "unknown_fields": unknown })))
    }
}

/// `PUT /ojs/v1/admin/queues/{name}/config`: sets (or with `null` removes) a queue's bound.
pub async fn set_config(
    caller: Authenticated,
    services: web::Data<Services>,
    name: web::Path<String>,
    body: OjsJson,
) -> Result<HttpResponse, ApiError> {
    let name = queue_name(&name)?;
    let bound = parse_bound(&body.0)?;
    let info = services.queues.set_bound(&caller, &name, bound).await?;
    Ok(ok(
        &json!({ "queue": name, "depth": info.depth, "backpressure": bound_json(&info) }),
    ))
}
