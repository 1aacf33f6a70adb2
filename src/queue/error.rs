//! Queue errors.

use std::borrow::Cow;

use serde_json::{json, Value};
use tracing::{error, warn};

use crate::error::{not_found_details, not_found_message, Code, ErrorCode, ErrorKind};
use crate::job::JobState;
use crate::store::StoreError;

/// What a queue operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job not found")]
    NotFound,
    /// The job belongs to another tenant. Callers must answer exactly as for [`Self::NotFound`];
    /// the difference is for the audit trail only.
    #[error("job not found")]
    OtherTenant,
    #[error("a job with this id already exists")]
    Duplicate,
    /// The operation does not apply to the job's current state.
    #[error("cannot {action} a job in state {}", current.as_str())]
    InvalidState {
        action: &'static str,
        current: JobState,
    },
    /// The job is active under somebody else's lease (another principal, another worker, or an
    /// earlier attempt that was reclaimed).
    #[error("the job's lease is not held by this worker")]
    LeaseNotHeld,
    #[error("the job is not in the dead letter queue")]
    NotInDeadLetter,
    /// The queue is at its depth bound (`ojs-backpressure.md`).
    #[error("the queue is at its depth bound")]
    QueueFull {
        depth: u64,
        bound: u64,
        strategy: super::bounds::Strategy,
    },
    /// A per-principal or per-tenant quota is used up.
    #[error("quota {} exceeded", quota.as_str())]
    QuotaExceeded {
        quota: super::bounds::Quota,
        limit: u64,
    },
    /// The job's record cannot be opened with the keys this server holds (its KEK is not
    /// loaded, or the record was moved or tampered with). Fails closed.
    #[error("job {0} cannot be decrypted")]
    Unreadable(crate::job::JobId),
    /// Too many long-poll fetches wait at once, for this principal or on the server.
    #[error("too many long-poll fetches ({scope} limit {limit})")]
    TooManyWaits { limit: usize, scope: &'static str },
    /// The credential of a waiting long-poll was revoked or expired while it waited: it is
    /// answered like any request with that credential, and never handed a job.
    #[error("the credential is no longer valid")]
    CredentialInvalid,
    #[error("storage failure: {0}")]
    Storage(#[from] StoreError),
    /// The actor is gone or its commit failed; the operation did not happen.
    #[error("the queue is unavailable")]
    Unavailable,
}

impl ErrorCode for QueueError {
    fn code(&self) -> Code {
        match self {
            Self::NotFound | Self::OtherTenant | Self::NotInDeadLetter => Code::NotFound,
            Self::Duplicate => Code::Duplicate,
            Self::InvalidState { .. } | Self::LeaseNotHeld => Code::Conflict,
            Self::QueueFull { .. } => Code::QueueFull,
            Self::QuotaExceeded { quota, .. } if quota.is_tenant() => Code::TenantLimitExceeded,
            Self::QuotaExceeded { .. } => Code::QuotaExceeded,
            Self::TooManyWaits { .. } => Code::TooManyLongPolls,
            Self::CredentialInvalid => Code::Unauthenticated,
            Self::Unreadable(_) => Code::JobUnreadable,
            Self::Storage(_) | Self::Unavailable => Code::BackendUnavailable,
        }
    }

    fn message(&self) -> Cow<'static, str> {
        match self {
            // The same answer whoever's job it is.
            Self::NotFound | Self::OtherTenant => not_found_message(JOB).into(),
            Self::NotInDeadLetter => not_found_message(DEAD_LETTER_JOB).into(),
            Self::InvalidState { .. } | Self::LeaseNotHeld => self.to_string().into(),
            Self::QueueFull { bound, .. } => {
                format!("the queue has reached its depth bound ({bound})").into()
            }
            Self::QuotaExceeded { quota, limit } => {
                format!("quota {} ({limit}) is used up", quota.as_str()).into()
            }
            Self::TooManyWaits { limit, scope } => {
                format!("too many long-poll fetches wait at once ({scope} limit {limit})").into()
            }
            _ => self.code().row().message.into(),
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            Self::NotFound | Self::OtherTenant => Some(not_found_details(JOB)),
            Self::NotInDeadLetter => Some(not_found_details(DEAD_LETTER_JOB)),
            Self::InvalidState { current, .. } => {
                Some(json!({ "current_state": current.as_str() }))
            }
            Self::QueueFull {
                depth,
                bound,
                strategy,
            } => Some(json!({ "depth": depth, "bound": bound, "strategy": strategy.as_str() })),
            Self::QuotaExceeded { quota, limit } => {
                Some(json!({ "quota": quota.as_str(), "limit": limit }))
            }
            Self::TooManyWaits { limit, scope } => Some(json!({ "limit": limit, "scope": scope })),
            _ => None,
        }
    }

    fn hint(&self) -> Option<&'static str> {
        match self {
            Self::LeaseNotHeld => Some(
                "only the worker that fetched the job, with the same credential, may ack, nack \
                 or heartbeat it",
            ),
            _ => self.code().row().hint,
        }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::QueueFull { depth, bound, .. } => vec![
                ("X-OJS-Queue-Depth", depth.to_string()),
                ("X-OJS-Queue-Bound", bound.to_string()),
            ],
            _ => Vec::new(),
        }
    }

    fn log_cause(&self) {
        match self {
            Self::Unreadable(id) => {
                error!(job_id = %id, "job record cannot be decrypted with the loaded keys");
            }
            Self::Storage(inner) => error!(error = %inner, "storage failure"),
            Self::Unavailable => warn!(error = %self, "queue unavailable"),
            _ => {}
        }
    }
}

/// The resources a queue error's 404 names.
const JOB: &str = "job";
const DEAD_LETTER_JOB: &str = "dead letter job";

impl QueueError {
    /// The coarse class the HTTP layer maps to a status.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound | Self::OtherTenant | Self::NotInDeadLetter => ErrorKind::NotFound,
            Self::Duplicate | Self::InvalidState { .. } | Self::LeaseNotHeld => ErrorKind::Conflict,
            Self::QueueFull { .. } | Self::QuotaExceeded { .. } | Self::TooManyWaits { .. } => {
                ErrorKind::TooManyRequests
            }
            Self::CredentialInvalid => ErrorKind::Unauthenticated,
            Self::Storage(_) | Self::Unavailable => ErrorKind::Unavailable,
            Self::Unreadable(_) => ErrorKind::Internal,
        }
    }
}
