//! Health, manifest (both public), queue listing and events.

use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{degraded, ok};
use crate::clock::rfc3339;
use crate::http::auth::Authenticated;
use crate::http::error::ApiError;
use crate::queue::{EventFilter, QueueHandle};

/// When the server started (app data).
#[derive(Clone, Copy)]
pub struct StartedAt(pub Instant);

/// `GET /ojs/v1/health`: public, so it tells only whether the server can serve, how many jobs
/// no loaded key can open, whether the active key-encryption key is due for rotation (its wrap
/// count and age, no key id), whether the audit trail is being written (when it is not, every
/// fail-closed operation is refused, so the server is `degraded` and answers 503: readiness
/// fails), and on HTTPS the expiry of the certificate every client already sees (`tls.status`
/// is `expiring` within `[tls] expiry_warning_days`).
pub async fn health(
    queue: web::Data<QueueHandle>,
    vault: web::Data<crate::vault::VaultHandle>,
    audit: web::Data<crate::audit::AuditHandle>,
    started: web::Data<StartedAt>,
    tls: web::Data<Option<std::sync::Arc<crate::tls::TlsRuntime>>>,
) -> HttpResponse {
    let uptime = started.0.elapsed().as_secs();
    let unreadable = vault.keys().unreadable_jobs();
    let rotation = vault.keys().rotation();
    let active = rotation.iter().find(|r| r.active);
    let due = rotation.iter().filter(|r| !r.due.is_empty()).count();
    let encryption = json!({
        "status": if unreadable == 0 { "ok" } else { "degraded" },
        "unreadable_jobs": unreadable,
        "rotation": {
            "status": if due == 0 { "ok" } else { "due" },
            "keys_due": due,
            "active_wrapped_keys": active.map_or(0, |r| r.wrapped_keys),
            "active_age_days": active.map_or(0, |r| r.age_days),
        },
    });
    let trail = audit.status();
    let audit_body = json!({
        "status": if trail.is_ok() { "ok" } else { "failing" },
        "failing_since": trail.failing_since.map(rfc3339),
        "unwritten_records": trail.failed_records,
    });
    match queue.stats().await {
        Ok(_) if !trail.is_ok() => degraded(&json!({
            "status": "degraded",
            "version": "1.0",
            "uptime_seconds": uptime,
            "backend": { "type": "redb", "status": "connected" },
            "encryption": encryption,
            "audit": audit_body,
        })),
        Ok(_) => {
            let mut body = json!({
                "status": "ok",
                "version": "1.0",
                "uptime_seconds": uptime,
                "backend": { "type": "redb", "status": "connected" },
                "encryption": encryption,
                "audit": audit_body,
            });
            if let Some(runtime) = tls.as_ref() {
                let e = runtime.expiry_now();
                body["tls"] = json!({
                    "status": e.status,
                    "certificate_not_after": rfc3339(e.not_after.saturating_mul(1000)),
                    "certificate_expires_in_days": e.seconds_left.div_euclid(86_400),
                });
            }
            ok(&body)
        }
        Err(_) => degraded(&json!({
            "status": "degraded",
            "version": "1.0",
            "uptime_seconds": uptime,
            "backend": { "type": "redb", "status": "unavailable" },
        })),
    }
}

/// `GET /ojs/manifest`: public.
pub async fn manifest(rules: web::Data<crate::rules::RulesHandle>) -> HttpResponse {
    let rules = rules.current();
    ok(&json!({
        "specversion": "1.0",
        "implementation": {
            "name": "bulwark",
            "version": env!("CARGO_PKG_VERSION"),
            "language": "rust",
            "homepage": null,
        },
        "conformance_level": 1,
        "protocols": ["http"],
        "backend": "redb",
        "extensions": ["dead-letter", "backpressure", "bulk-operations"],
        "capabilities": {
            "authentication": ["api_key"],
            "authorization": ["roles", "queue_acl", "tenant_isolation"],
            "unknown_fields": "configurable",
            // OJS payload limits §8.1 (the binding keeps `extensions` a list of names, so
            // the limits are declared here).
            "payload_limits": {
                "max_envelope_bytes": rules.max_body_bytes,
                "max_batch_bytes": rules.payload.max_batch_bytes,
                "max_args_bytes": rules.payload.max_args_bytes,
                "max_meta_bytes": rules.payload.max_meta_bytes,
                "max_json_depth": rules.payload.max_json_depth,
                "max_queue_name_bytes": crate::job::envelope::NAME_MAX,
                "max_job_type_bytes": crate::job::envelope::NAME_MAX,
                "supported_compression": [],
                "external_references": false,
                "chunking": false,
                "per_queue_limits": false,
            },
        },
    }))
}

/// `GET /ojs/v1/queues`
pub async fn list_queues(
    caller: Authenticated,
    services: web::Data<crate::services::Services>,
) -> Result<HttpResponse, ApiError> {
    let queues = services.queues.list(&caller).await?;
    let total = queues.len();
    let items: Vec<_> = queues
        .into_iter()
        .map(|q| {
            json!({
                "name": q.name,
                "status": "active",
                "created_at": rfc3339(q.created_at),
                "counts": q.counts,
            })
        })
        .collect();
    Ok(ok(&json!({
        "queues": items,
        "pagination": { "total": total, "limit": total, "offset": 0, "has_more": false },
    })))
}

/// `GET /metrics`: Prometheus text format; needs the inspect permission.
pub async fn metrics(
    caller: Authenticated,
    queue: web::Data<QueueHandle>,
    handle: web::Data<Option<metrics_exporter_prometheus::PrometheusHandle>>,
) -> Result<HttpResponse, ApiError> {
    let _ = caller;
    let Some(handle) = handle.as_ref() else {
        return Err(ApiError::unavailable());
    };
    let totals = queue.stats().await?.totals;
    for (state, n) in [
        ("scheduled", totals.scheduled),
        ("available", totals.available),
        ("pending", totals.pending),
        ("active", totals.active),
        ("completed", totals.completed),
        ("retryable", totals.retryable),
        ("cancelled", totals.cancelled),
        ("discarded", totals.discarded),
        ("dead_letter", totals.dead_letter),
    ] {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(crate::metrics::JOBS, "state" => state).set(n as f64);
    }
    handle.run_upkeep();
    Ok(super::ok_text("text/plain; version=0.0.4", handle.render()))
}

/// Query of `GET /ojs/v1/events`.
#[derive(Deserialize)]
pub struct EventsQuery {
    types: Option<String>,
    queues: Option<String>,
    limit: Option<usize>,
    after: Option<u64>,
}

const EVENTS_LIMIT_MAX: usize = 1000;

fn list_param(value: Option<&String>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .take(64)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /ojs/v1/events`
pub async fn list_events(
    caller: Authenticated,
    services: web::Data<crate::services::Services>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > EVENTS_LIMIT_MAX {
        return Err(ApiError::invalid("limit", "limit must be from 1 to 1000"));
    }
    let filter = EventFilter {
        tenant: None,
        types: list_param(query.types.as_ref()),
        queues: list_param(query.queues.as_ref()),
        after: query.after,
        limit,
    };
    let events = services.queues.events(&caller, filter).await?;
    let next = events.last().map(|e| e.seq);
    let events: Vec<_> = events.iter().map(crate::queue::Event::to_json).collect();
    Ok(ok(&json!({ "events": events, "next_after": next })))
}
