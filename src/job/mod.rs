//! The job: its identifier, lifecycle states, the record the queue keeps for it, and the pure
//! rules around it (envelope validation in [`envelope`], retry timing in [`retry`]). Nothing here
//! does I/O; the queue actor owns the records and calls into this module.

pub mod envelope;
pub mod retry;
pub mod view;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Millis;

pub use retry::RetryPolicy;

/// A job identifier: a UUID (version 7 when the server makes it), rendered lowercase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh, time-ordered UUIDv7.
    #[must_use]
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses the wire form. Only lowercase hyphenated UUIDv7 is accepted, as the spec requires.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 36 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let id = Uuid::try_parse(text).ok()?;
        (id.get_version_num() == 7 && id.get_variant() == uuid::Variant::RFC4122)
            .then_some(Self(id))
    }

    /// The key under which the record is stored.
    #[must_use]
    pub fn as_u128(self) -> u128 {
        self.0.as_u128()
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The OJS lifecycle states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Scheduled,
    Available,
    Pending,
    Active,
    Completed,
    Retryable,
    Cancelled,
    Discarded,
}

impl JobState {
    /// Completed, cancelled and discarded jobs never change state again (except a dead-letter
    /// retry, which is an explicit operator action).
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Discarded)
    }

    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Available => "available",
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Retryable => "retryable",
            Self::Cancelled => "cancelled",
            Self::Discarded => "discarded",
        }
    }
}

/// A piece of client JSON kept as its text: args, meta, results and error details. The server
/// routes on none of it. The key vault seals these at rest ([`crate::vault::sealed`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload(pub String);

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0.len())
    }
}

/// Who holds an active job: the authenticated principal and the worker it named, and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The principal id of the credential that fetched the job.
    pub principal: String,
    /// The `worker_id` given at fetch, if any.
    pub worker_id: Option<String>,
    /// When the job goes back to `available` unless a heartbeat extends it.
    pub visibility_deadline: Millis,
    /// When the execution timeout (`timeout_ms` from `started_at`) fails the attempt.
    pub execution_deadline: Millis,
}

impl Lease {
    /// The earlier of the two deadlines: when the queue must look at the job again.
    #[must_use]
    pub fn next_deadline(&self) -> Millis {
        self.visibility_deadline.min(self.execution_deadline)
    }
}

/// Who may see a job besides administrators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Everyone of its tenant whose role lets them inspect its queue.
    Tenant,
    /// Only its owner (and administrators); anyone else gets 404.
    Owner,
}

/// Job-level access rules (GopherQueue's `security`): they narrow what roles allow, never widen
/// it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSecurity {
    pub visibility: Visibility,
    /// Who may cancel: `owner` and role names; anyone whose role allows it when `None`.
    pub cancellable_by: Option<Vec<String>>,
}

/// One failure of one attempt, as the error history keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
    /// The language-level error type (`details.error_class` or `error.type` from the worker).
    pub error_type: Option<String>,
    pub retryable: Option<bool>,
    pub details: Option<Payload>,
    pub attempt: u32,
    pub occurred_at: Millis,
}

/// The most recent error entries kept per job (the spec asks for at least ten).
pub const ERROR_HISTORY_LIMIT: usize = 20;

/// Everything the server keeps about a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    /// The tenant that owns the job; `None` for the system scope.
    pub tenant: Option<String>,
    /// The principal that submitted it (or that it was submitted for).
    #[serde(default)]
    pub owner: Option<String>,
    /// Job-level access rules.
    #[serde(default)]
    pub security: Option<JobSecurity>,
    pub job_type: String,
    pub queue: String,
    pub state: JobState,
    pub priority: i32,
    pub args: Payload,
    pub meta: Option<Payload>,
    /// Unknown top-level envelope attributes, kept only in `preserve` mode (a JSON object).
    pub extra: Option<Payload>,
    pub tags: Vec<String>,
    pub schema: Option<String>,
    /// The unique policy as submitted (a JSON object); echoed back, not enforced yet.
    pub unique: Option<Payload>,
    pub retry: RetryPolicy,
    pub timeout_ms: u64,
    pub visibility_timeout_ms: u64,
    pub expires_at: Option<Millis>,
    pub attempt: u32,
    /// Enqueue order, for FIFO within a priority.
    pub seq: u64,
    pub created_at: Millis,
    pub enqueued_at: Millis,
    /// When a scheduled or retryable job becomes available.
    pub scheduled_at: Option<Millis>,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub cancelled_at: Option<Millis>,
    pub discarded_at: Option<Millis>,
    pub result: Option<Payload>,
    /// Current error (cleared on success) and history, newest last.
    pub error: Option<JobError>,
    pub errors: Vec<JobError>,
    pub retry_delay_ms: Option<u64>,
    pub lease: Option<Lease>,
    /// In the dead letter queue (discarded with `on_exhaustion = dead_letter`).
    pub dead_letter: bool,
    /// A conformance-suite directive (`options.metadata.test_directive`), kept only in testing mode.
    pub test_directive: Option<String>,
    /// The job's unwrapped data key while the job is in memory (never serialized: the record
    /// keeps it wrapped, see [`crate::vault::sealed`]).
    #[serde(skip)]
    pub key: Option<std::sync::Arc<crate::vault::sealed::JobKey>>,
}

impl Job {
    /// A new job from a validated envelope: `available`, or `scheduled` when it runs later, or
    /// `pending` when it waits for activation.
    #[must_use]
    pub fn from_new(
        new: envelope::NewJob,
        id: JobId,
        tenant: Option<String>,
        owner: Option<String>,
        seq: u64,
        now: Millis,
    ) -> Self {
        let (state, scheduled_at) = if new.pending {
            (JobState::Pending, None)
        } else {
            match new.run_at {
                Some(at) if at > now => (JobState::Scheduled, Some(at)),
                _ => (JobState::Available, None),
            }
        };
        Self {
            id,
            tenant,
            owner,
            security: new.security,
            job_type: new.job_type,
            queue: new.queue,
            state,
            priority: new.priority,
            args: new.args,
            meta: new.meta,
            extra: new.extra,
            tags: new.tags,
            schema: new.schema,
            unique: new.unique,
            retry: new.retry,
            timeout_ms: new.timeout_ms,
            visibility_timeout_ms: new.visibility_timeout_ms,
            expires_at: new.expires_at,
            attempt: 0,
            seq,
            created_at: now,
            enqueued_at: now,
            scheduled_at,
            started_at: None,
            completed_at: None,
            cancelled_at: None,
            discarded_at: None,
            result: None,
            error: None,
            errors: Vec::new(),
            retry_delay_ms: None,
            lease: None,
            dead_letter: false,
            test_directive: new.test_directive,
            key: None,
        }
    }

    /// Records a failure in the current error and the bounded history.
    pub fn push_error(&mut self, error: JobError) {
        self.errors.push(error.clone());
        if self.errors.len() > ERROR_HISTORY_LIMIT {
            let excess = self.errors.len() - ERROR_HISTORY_LIMIT;
            self.errors.drain(..excess);
        }
        self.error = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_must_be_lowercase_v7() {
        assert!(JobId::parse("019461a8-1a2b-7c3d-8e4f-5a6b7c8d9e0f").is_some());
        assert!(JobId::parse("019461A8-1A2B-7C3D-8E4F-5A6B7C8D9E0F").is_none());
        assert!(JobId::parse("550e8400-e29b-41d4-a716-446655440000").is_none());
        assert!(JobId::parse("019461a81a2b7c3d8e4f5a6b7c8d9e0f").is_none());
        assert!(JobId::parse("").is_none());
        let id = JobId::generate();
        assert_eq!(JobId::parse(&id.to_string()), Some(id));
    }
}
