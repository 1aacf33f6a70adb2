//! Queues: the listing, a queue's depth and counts, its backpressure bound (read, set,
//! removed), and the recent job events. Listings show only the queues the caller may inspect;
//! a bound change is recorded before it is made (`queue.config_changed`; no record, no
//! change). Bounds live in the database, so they survive restarts.

use super::Caller;
use crate::audit::Outcome;
use crate::auth::Permission;
use crate::error::ApiError;
use crate::queue::bounds::QueueBound;
use crate::queue::{BoundInfo, Event, EventFilter, QueueHandle, QueueSummary};
use crate::rules::RulesHandle;

/// The queue service.
#[derive(Clone)]
pub struct Queues {
    queue: QueueHandle,
    rules: RulesHandle,
}

/// A queue's depth, bound and per-state counts.
pub struct QueueStats {
    pub info: BoundInfo,
    pub summary: Option<QueueSummary>,
}

impl Queues {
    #[must_use]
    pub fn new(queue: QueueHandle, rules: RulesHandle) -> Self {
        Self { queue, rules }
    }

    /// The caller's tenant's queues that it may inspect.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<QueueSummary>, ApiError> {
        let queues = self.queue.queues(caller.tenant.clone()).await?;
        Ok(queues
            .into_iter()
            .filter(|q| caller.sees_queue(&q.name))
            .collect())
    }

    /// One queue's depth, bound and counts (inspect permission on it).
    pub async fn stats(&self, caller: &Caller, name: &str) -> Result<QueueStats, ApiError> {
        caller.allow(Permission::Inspect, name).await?;
        let info = self.bound(caller, name).await?;
        let summary = self
            .queue
            .queues(caller.tenant.clone())
            .await?
            .into_iter()
            .find(|q| q.name == name);
        Ok(QueueStats { info, summary })
    }

    /// A queue's bound (its own, or the default) and depth.
    pub async fn bound(&self, caller: &Caller, name: &str) -> Result<BoundInfo, ApiError> {
        let default_max_depth = self.rules.current().backpressure.default_max_depth;
        Ok(self
            .queue
            .bound(caller.tenant.clone(), name.to_string(), default_max_depth)
            .await?)
    }

    /// Sets a queue's bound, or with `None` removes it (the default applies again).
    pub async fn set_bound(
        &self,
        caller: &Caller,
        name: &str,
        bound: Option<QueueBound>,
    ) -> Result<BoundInfo, ApiError> {
        let event = caller
            .event("queue.config_changed", Outcome::Success)
            .detail("queue", name);
        let event = match &bound {
            Some(b) => event
                .detail("max_depth", b.max_depth)
                .detail("strategy", b.strategy.as_str()),
            None => event.detail("backpressure", "default"),
        };
        caller
            .trail()
            .guarded(
                event,
                self.queue
                    .set_bound(caller.tenant.clone(), name.to_string(), bound),
            )
            .await?;
        self.bound(caller, name).await
    }

    /// Recent job events of the caller's tenant, of the queues it may inspect.
    pub async fn events(
        &self,
        caller: &Caller,
        mut filter: EventFilter,
    ) -> Result<Vec<Event>, ApiError> {
        filter.tenant.clone_from(&caller.tenant);
        Ok(self
            .queue
            .events(filter)
            .await?
            .into_iter()
            .filter(|e| caller.sees_queue(&e.queue))
            .collect())
    }
}
