//! The services: one per domain, each owning the rules of its operations (validation, the
//! queue ACL and the tenant and owner rules, policy tokens, abuse and quota checks) and the
//! audit records they write. The HTTP handlers parse a request, call one service with the
//! [`Caller`] and render the answer; the command line calls the same services offline with
//! [`Caller::local`], so an operation is written once and leaves the same record whichever way
//! it came. Services know nothing of HTTP: they answer [`crate::error::ApiError`], which the
//! edge renders.

pub mod abuse;
pub mod actions;
pub mod audit_queries;
pub mod caller;
pub mod dead_letters;
pub mod jobs;
pub mod keys;
pub mod offline;
pub mod queues;
pub mod sessions;
pub mod trail;
pub mod users;
pub mod vault;
pub mod workers;

pub use caller::{Caller, Origin, Via};
pub use trail::Trail;

use crate::error::ApiError;

/// Every service of the running server, built once at start (`app::serve`) from engines that
/// are all present: nothing is optional, so no check can be skipped for want of a part.
#[derive(Clone)]
pub struct Services {
    pub jobs: jobs::Jobs,
    pub keys: keys::Keys,
    pub users: users::Users,
    pub sessions: sessions::Sessions,
    pub workers: workers::Workers,
    pub queues: queues::Queues,
    pub dead_letters: dead_letters::DeadLetters,
    pub vault: vault::Vault,
    pub audit: audit_queries::AuditQueries,
    /// The audit trail every caller writes to.
    pub trail: Trail,
}

/// Runs blocking store work off the async threads.
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(Into::into)
}
