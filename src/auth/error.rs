//! Authentication and authorization errors.

use std::borrow::Cow;
use std::time::Duration;

use serde_json::Value;
use tracing::warn;

use super::Permission;
use crate::error::{permission_denied_parts, Code, ErrorCode, ErrorKind};
use crate::store::StoreError;

/// What the auth store can answer besides a principal. The client sees one 401 body for every
/// authentication failure; the variant is for logs and audit.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    MissingCredentials,
    #[error("malformed credentials")]
    Malformed,
    #[error("unknown key")]
    UnknownKey,
    #[error("wrong secret")]
    WrongSecret,
    #[error("key revoked")]
    Revoked,
    #[error("credential expired")]
    Expired,
    /// A JWT that failed verification; the reason is a short label.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// Too many verifications from this address: refused before any argon2 work. Every one is
    /// counted; the audit trail aggregates them per address ([`crate::audit::aggregate`]).
    #[error("too many authentication attempts from this address")]
    Throttled { retry_after: Duration },
    /// Authenticated, but the principal may not do this.
    #[error("permission denied ({reason})")]
    Forbidden {
        principal: String,
        permission: Permission,
        queue: Option<String>,
        reason: &'static str,
    },
    #[error("storage failure: {0}")]
    Storage(#[from] StoreError),
    #[error("the auth store is unavailable")]
    Unavailable,
}

impl AuthError {
    /// A short label for metrics and audit records.
    #[must_use]
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Self::MissingCredentials => "missing",
            Self::Malformed => "malformed",
            Self::UnknownKey | Self::WrongSecret => "invalid",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::InvalidToken(_) => "invalid_token",
            Self::Throttled { .. } => "throttled",
            Self::Forbidden { .. } => "forbidden",
            Self::Storage(_) | Self::Unavailable => "unavailable",
        }
    }

    /// The coarse class the HTTP layer maps to a status.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::MissingCredentials
            | Self::Malformed
            | Self::UnknownKey
            | Self::WrongSecret
            | Self::Revoked
            | Self::Expired
            | Self::InvalidToken(_) => ErrorKind::Unauthenticated,
            Self::Throttled { .. } => ErrorKind::TooManyRequests,
            Self::Forbidden { .. } => ErrorKind::Forbidden,
            Self::Storage(_) | Self::Unavailable => ErrorKind::Unavailable,
        }
    }
}

/// The client sees one answer per class: the 401, the 403 naming what was refused, the 429,
/// or the 503; which credential check failed is for logs and audit.
impl ErrorCode for AuthError {
    fn code(&self) -> Code {
        match (self, self.kind()) {
            (Self::Forbidden { .. }, _) => Code::PermissionDenied,
            (Self::Throttled { .. }, _) => Code::RateLimited,
            (_, ErrorKind::Unauthenticated) => Code::Unauthenticated,
            _ => Code::BackendUnavailable,
        }
    }

    fn message(&self) -> Cow<'static, str> {
        if let Some((message, _)) = self.forbidden() {
            return message.into();
        }
        match self {
            Self::Throttled { .. } => "too many authentication attempts from this address".into(),
            _ => self.code().row().message.into(),
        }
    }

    fn details(&self) -> Option<Value> {
        self.forbidden().map(|(_, d)| d)
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            // Rounded up: a client that waits this long is not refused again.
            Self::Throttled { retry_after } => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
            }
            _ => self.code().row().retry_after_secs,
        }
    }

    fn log_cause(&self) {
        if self.kind() == ErrorKind::Unavailable {
            warn!(error = %self, "auth store unavailable");
        }
    }
}

impl AuthError {
    /// The 403's message and details, for [`Self::Forbidden`].
    fn forbidden(&self) -> Option<(String, Value)> {
        match self {
            Self::Forbidden {
                principal,
                permission,
                queue,
                ..
            } => Some(permission_denied_parts(
                principal,
                Some(*permission),
                queue.as_deref(),
            )),
            _ => None,
        }
    }
}
