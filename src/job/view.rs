//! The wire form of a job (the OJS job envelope with its system-managed fields).

use serde_json::{json, Map, Value};

use super::retry::{Backoff, OnExhaustion};
use super::{Job, JobError, JobState, Payload};
use crate::clock::rfc3339;

fn payload(p: &Payload) -> Value {
    // Stored payloads were produced by serde_json from a parsed value, so they parse back; a
    // record that does not is reported as null rather than failing the whole response.
    serde_json::from_str(&p.0).unwrap_or(Value::Null)
}

/// One error entry.
#[must_use]
pub fn error_json(e: &JobError) -> Value {
    let mut m = Map::new();
    m.insert("code".into(), e.code.clone().into());
    m.insert("message".into(), e.message.clone().into());
    if let Some(t) = &e.error_type {
        m.insert("type".into(), t.clone().into());
    }
    if let Some(r) = e.retryable {
        m.insert("retryable".into(), r.into());
    }
    if let Some(d) = &e.details {
        m.insert("details".into(), payload(d));
    }
    m.insert("attempt".into(), e.attempt.into());
    m.insert("occurred_at".into(), rfc3339(e.occurred_at).into());
    Value::Object(m)
}

/// The full job envelope.
#[must_use]
pub fn job_json(job: &Job) -> Value {
    let mut m = Map::new();
    m.insert("specversion".into(), "1.0".into());
    m.insert("id".into(), job.id.to_string().into());
    m.insert("type".into(), job.job_type.clone().into());
    m.insert("state".into(), job.state.as_str().into());
    m.insert("queue".into(), job.queue.clone().into());
    m.insert("args".into(), payload(&job.args));
    if let Some(meta) = &job.meta {
        m.insert("meta".into(), payload(meta));
    }
    m.insert("priority".into(), job.priority.into());
    m.insert("attempt".into(), job.attempt.into());
    m.insert("max_attempts".into(), job.retry.max_attempts.into());
    m.insert("timeout_ms".into(), job.timeout_ms.into());
    m.insert(
        "visibility_timeout_ms".into(),
        job.visibility_timeout_ms.into(),
    );
    m.insert("retry".into(), retry_json(job));
    if !job.tags.is_empty() {
        m.insert("tags".into(), job.tags.clone().into());
    }
    if let Some(schema) = &job.schema {
        m.insert("schema".into(), schema.clone().into());
    }
    if let Some(unique) = &job.unique {
        m.insert("unique".into(), payload(unique));
    }
    m.insert("created_at".into(), rfc3339(job.created_at).into());
    m.insert("enqueued_at".into(), rfc3339(job.enqueued_at).into());
    if let Some(t) = job.scheduled_at {
        m.insert("scheduled_at".into(), rfc3339(t).into());
        if job.state == JobState::Retryable {
            m.insert("next_attempt_at".into(), rfc3339(t).into());
        }
    }
    if let Some(t) = job.expires_at {
        m.insert("expires_at".into(), rfc3339(t).into());
    }
    for (name, value) in [
        ("started_at", job.started_at),
        ("completed_at", job.completed_at),
        ("cancelled_at", job.cancelled_at),
        ("discarded_at", job.discarded_at),
    ] {
        if let Some(t) = value {
            m.insert(name.into(), rfc3339(t).into());
        }
    }
    if let Some(r) = &job.result {
        m.insert("result".into(), payload(r));
    }
    if let Some(e) = &job.error {
        m.insert("error".into(), error_json(e));
    }
    if !job.errors.is_empty() {
        m.insert("errors".into(), job.errors.iter().map(error_json).collect());
    }
    if let Some(d) = job.retry_delay_ms {
        m.insert("retry_delay_ms".into(), d.into());
    }
    if job.dead_letter {
        m.insert("dead_letter".into(), true.into());
    }
    if let Some(extra) = &job.extra {
        if let Value::Object(extra) = payload(extra) {
            for (k, v) in extra {
                m.entry(k).or_insert(v);
            }
        }
    }
    Value::Object(m)
}

fn retry_json(job: &Job) -> Value {
    let r = &job.retry;
    json!({
        "max_attempts": r.max_attempts,
        "initial_interval_ms": r.initial_interval_ms,
        "backoff_coefficient": r.backoff_coefficient,
        "max_interval_ms": r.max_interval_ms,
        "jitter": r.jitter,
        "backoff_strategy": match r.backoff {
            Backoff::Exponential => "exponential",
            Backoff::Linear => "linear",
            Backoff::Constant => "constant",
        },
        "non_retryable_errors": r.non_retryable_errors,
        "on_exhaustion": match r.on_exhaustion {
            OnExhaustion::Discard => "discard",
            OnExhaustion::DeadLetter => "dead_letter",
        },
    })
}
