//! Dead letters: list, retry, purge. Retrying and purging are administrator operations on a
//! job the caller may see, each recorded before it happens (no record, no change).

use super::Caller;
use crate::audit::Outcome;
use crate::auth::Permission;
use crate::error::ApiError;
use crate::job::{Job, JobId};
use crate::queue::QueueHandle;

/// The dead-letter service.
#[derive(Clone)]
pub struct DeadLetters {
    queue: QueueHandle,
}

/// A page of dead letters: those the caller may see, and the total of the tenant's list.
pub struct DeadLetterPage {
    pub jobs: Vec<Job>,
    pub total: usize,
}

impl DeadLetters {
    #[must_use]
    pub fn new(queue: QueueHandle) -> Self {
        Self { queue }
    }

    /// Dead letters, newest first, of one queue (inspect permission on it) or of every queue
    /// the caller may inspect.
    pub async fn list(
        &self,
        caller: &Caller,
        queue: Option<String>,
        limit: usize,
        offset: usize,
    ) -> Result<DeadLetterPage, ApiError> {
        if let Some(q) = &queue {
            caller.allow(Permission::Inspect, q).await?;
        }
        let page = self
            .queue
            .dead_letter(caller.tenant.clone(), queue, limit, offset)
            .await?;
        let jobs = page
            .items
            .into_iter()
            .filter(|j| caller.sees_queue(&j.queue))
            .collect();
        Ok(DeadLetterPage {
            jobs,
            total: page.total,
        })
    }

    /// Puts a dead letter back in its queue.
    pub async fn retry(&self, caller: &Caller, id: JobId) -> Result<Job, ApiError> {
        caller.job(&self.queue, id, Permission::Admin).await?;
        let event = caller
            .event("dead_letter.retried", Outcome::Success)
            .detail("job_id", id.to_string());
        caller
            .trail()
            .guarded(
                event,
                self.queue.retry_dead_letter(id, caller.tenant.clone()),
            )
            .await
    }

    /// Purges a dead letter.
    pub async fn delete(&self, caller: &Caller, id: JobId) -> Result<(), ApiError> {
        caller.job(&self.queue, id, Permission::Admin).await?;
        let event = caller
            .event("dead_letter.deleted", Outcome::Success)
            .detail("job_id", id.to_string());
        caller
            .trail()
            .guarded(
                event,
                self.queue.delete_dead_letter(id, caller.tenant.clone()),
            )
            .await
    }
}
