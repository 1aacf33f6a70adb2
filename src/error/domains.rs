//! Each domain's error as the OJS error it answers with: the code it says it is
//! ([`super::ErrorCode`]), with the message, details and hint the client needs. Internal
//! causes go to the log, never to the client.

use serde_json::json;
use tracing::{error, warn};

use super::{ApiError, Code, ErrorCode, ErrorKind};
use crate::auth::accounts::AccountError;
use crate::auth::records::KeyError;
use crate::auth::users::UserError;
use crate::auth::AuthError;
use crate::job::envelope::{Invalid, InvalidKind};
use crate::queue::QueueError;

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        let field = e.field.clone();
        match e.kind {
            InvalidKind::Request => {
                let mut err = Self::new(Code::InvalidRequest, e.message);
                if let Some(f) = field {
                    err = err.with_details(json!({ "field": f }));
                }
                err
            }
            InvalidKind::Policy => Self::new(Code::InvalidRetryPolicy,
                e.message,
            )
            .with_details(json!({ "field": field })),
            InvalidKind::UnknownFields => Self::new(Code::Unprocessable,
                e.message,
            )
            .with_details(json!({ "unknown_fields": e.unknown }))
            .with_hint(
                "remove the attributes, or set [api] unknown_fields = \"preserve\" on the server",
            ),
            InvalidKind::TooLarge => Self::new(Code::PayloadTooLarge,
                e.message,
            )
            .with_details(json!({ "field": field })),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match (&e, e.kind()) {
            (QueueError::Duplicate, _) => Self::new(e.code(), "a job with this id already exists"),
            (QueueError::InvalidState { current, .. }, _) => {
                Self::new(e.code(), e.to_string())
                    .with_details(json!({ "current_state": current.as_str() }))
            }
            (QueueError::LeaseNotHeld, _) => Self::new(e.code(), e.to_string())
                .with_hint("only the worker that fetched the job, with the same credential, may ack, nack or heartbeat it"),
            (QueueError::NotInDeadLetter, _) => Self::not_found("dead letter job"),
            (QueueError::QueueFull { depth, bound, strategy }, _) => Self::too_many(
                e.code(),
                format!("the queue has reached its depth bound ({bound})"),
                5,
            )
            .with_details(json!({ "depth": depth, "bound": bound, "strategy": strategy.as_str() }))
            .with_header("X-OJS-Queue-Depth", depth.to_string())
            .with_header("X-OJS-Queue-Bound", bound.to_string()),
            (QueueError::QuotaExceeded { quota, limit }, _) => Self::too_many(
                e.code(),
                format!("quota {} ({limit}) is used up", quota.as_str()),
                5,
            )
            .with_details(json!({ "quota": quota.as_str(), "limit": limit })),
            (QueueError::TooManyWaits { limit, scope }, _) => Self::too_many(
                e.code(),
                format!("too many long-poll fetches wait at once ({scope} limit {limit})"),
                1,
            )
            .with_details(json!({ "limit": limit, "scope": scope }))
            .with_hint("fetch without wait_ms, or with fewer concurrent long-polls"),
            (QueueError::CredentialInvalid, _) => Self::unauthenticated(),
            (_, ErrorKind::NotFound) => Self::not_found("job"),
            (QueueError::Unreadable(id), _) => {
                error!(job_id = %id, "job record cannot be decrypted with the loaded keys");
                Self::new(e.code(),
                    "the job's data cannot be decrypted with the keys this server holds",
                )
                .with_hint("restore the job's key-encryption key (see GET /ojs/v1/admin/vault)")
            }
            (QueueError::Storage(inner), _) => {
                error!(error = %inner, "storage failure");
                Self::unavailable()
            }
            _ => {
                warn!(error = %e, "queue unavailable");
                Self::unavailable()
            }
        }
    }
}

impl From<crate::vault::VaultError> for ApiError {
    fn from(e: crate::vault::VaultError) -> Self {
        error!(error = %e, "key vault failure");
        match e.code() {
            Code::BackendUnavailable => Self::unavailable(),
            code => Self::new(code, "the key vault could not complete the operation"),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match (&e, e.kind()) {
            (
                AuthError::Forbidden {
                    principal,
                    permission,
                    queue,
                    ..
                },
                _,
            ) => Self::permission_denied(principal, Some(*permission), queue.as_deref()),
            (AuthError::Throttled { retry_after, .. }, _) => Self::rate_limited(
                "too many authentication attempts from this address",
                retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
            ),
            (_, ErrorKind::Unauthenticated) => Self::unauthenticated(),
            _ => {
                warn!(error = %e, "auth store unavailable");
                Self::unavailable()
            }
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::Throttled(t) => Self::rate_limited(
                "too many login attempts; try again later",
                t.retry_after_secs,
            ),
            AccountError::Refused(_) | AccountError::RefreshReuse { .. } => Self::unauthenticated(),
            AccountError::User(UserError::InvalidUsername) => {
                Self::invalid("username", UserError::InvalidUsername.to_string())
            }
            AccountError::User(UserError::Policy(v)) => Self::new(
                Code::Unprocessable,
                "the password does not meet the password policy",
            )
            .with_details(json!({ "field": "password", "missing": v.missing })),
            AccountError::User(UserError::Exists) => {
                Self::new(Code::Conflict, "a user with this name already exists")
            }
            AccountError::User(UserError::NotFound) => Self::not_found("user"),
            other => {
                warn!(error = %other, "accounts service unavailable");
                Self::unavailable()
            }
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Invalid { field, message } => ApiError::invalid(field, message),
            KeyError::Policy(p) => ApiError::new(Code::Unprocessable, p.to_string())
                .with_details(json!({ "field": "roles" })),
            KeyError::NotFound => ApiError::not_found("api key"),
            KeyError::NotLive => ApiError::new(
                Code::Conflict,
                "the key is revoked or expired and cannot be rotated",
            ),
            KeyError::Store(inner) => {
                tracing::error!(error = %inner, "key store failure");
                ApiError::unavailable()
            }
            KeyError::Crypto => ApiError::unavailable(),
        }
    }
}
