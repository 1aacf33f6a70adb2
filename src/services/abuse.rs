//! The abuse and limit checks the job and worker services share: abuse detection on each
//! stored enqueue and each nack ([`crate::limiter::abuse`]), and the audit record of a refusal
//! by a quota, a tenant limit, a full queue or the long-poll caps.

use tracing::info;

use super::Caller;
use crate::audit::{AuditEvent, Outcome};
use crate::error::ApiError;
use crate::job::envelope::NewJob;
use crate::limiter::abuse::{Pattern, Report};
use crate::limiter::{unsigned_ms, LimiterHandle, RATE_LIMIT_HINT};

/// Abuse detection and limit-refusal records.
#[derive(Clone)]
pub struct Abuse {
    limiter: LimiterHandle,
}

impl Abuse {
    #[must_use]
    pub fn new(limiter: LimiterHandle) -> Self {
        Self { limiter }
    }

    /// Abuse detection for one enqueue about to be stored: refuses it (429) while its
    /// principal is throttled for a spike or a large-payload flood, and demotes it during
    /// priority abuse. Detections are audited (once per principal and pattern a minute) and
    /// counted.
    pub async fn check_enqueue(&self, caller: &Caller, job: &mut NewJob) -> Result<(), ApiError> {
        let limiter = &self.limiter;
        let config = limiter.config();
        let principal = &caller.principal;
        let bytes = job.args.0.len() + job.meta.as_ref().map_or(0, |m| m.0.len());
        let verdict = limiter.abuse().on_enqueue(
            &config.abuse,
            config.max_tracked_keys,
            principal.id(),
            bytes,
            job.priority,
            unsigned_ms(limiter.clock()),
        );
        for report in &verdict.reports {
            let action = match report.pattern {
                Pattern::Spike => "throttled",
                Pattern::LargePayloads => "large_payloads_refused",
                Pattern::PriorityFlood => "demoted",
                Pattern::RetryStorm => "reported",
            };
            let event = abuse_event(caller, report, action)
                .detail("queue", job.queue.clone())
                .detail("job_type", job.job_type.clone());
            caller.trail().emit(event).await;
            info!(principal = %principal.display_id(), pattern = report.pattern.as_str(), "abuse detected");
        }
        if let Some(priority) = verdict.demote_to {
            job.priority = priority;
        }
        if let Some((pattern, retry_after_secs)) = verdict.refuse {
            let message = match pattern {
                Pattern::LargePayloads => {
                    "too many large jobs from this credential; large jobs are refused for a while"
                }
                _ => "this credential is submitting far above its usual rate; it is throttled for a while",
            };
            return Err(ApiError::rate_limited(message, retry_after_secs)
                .with_details(serde_json::json!({ "scope": "abuse", "pattern": pattern.as_str() }))
                .with_hint(RATE_LIMIT_HINT));
        }
        Ok(())
    }

    /// Abuse detection for one nack: a retry storm is audited and counted.
    pub async fn note_nack(&self, caller: &Caller) {
        let limiter = &self.limiter;
        let config = limiter.config();
        let report = limiter.abuse().on_nack(
            &config.abuse,
            config.max_tracked_keys,
            caller.principal.id(),
            unsigned_ms(limiter.clock()),
        );
        if let Some(report) = report {
            caller
                .trail()
                .emit(abuse_event(caller, &report, "reported"))
                .await;
            info!(principal = %caller.principal.display_id(), "retry storm detected");
        }
    }

    /// Audits a refusal by a quota, a tenant limit, a full queue or a long-poll cap, aggregated
    /// per principal and code, so a client hammering a full queue cannot flood the trail and the
    /// records' counts add up to `bulwark_limit_refusals_total`. Other errors pass through
    /// unrecorded.
    pub async fn audit_limit_refusal(&self, caller: &Caller, error: &ApiError) {
        let code = error.code();
        if !matches!(
            code,
            "quota_exceeded" | "tenant_limit_exceeded" | "queue_full" | "too_many_long_polls"
        ) {
            return;
        }
        let event = caller
            .event("limit.refused", Outcome::Failure)
            .detail("code", code);
        caller
            .trail()
            .aggregate(format!("{code}:{}", caller.principal.id()), event)
            .await;
    }
}

fn abuse_event(caller: &Caller, report: &Report, action: &'static str) -> AuditEvent {
    let mut event = caller
        .event(report.pattern.event_type(), Outcome::Failure)
        .detail("pattern", report.pattern.as_str())
        .detail("detections", report.count)
        .detail("observed", report.observed)
        .detail("action", action);
    if let Some(b) = report.baseline {
        event = event.detail("baseline_per_sec", (b * 100.0).round() / 100.0);
    }
    event
}
