//! What readers see of the queue without waiting for a turn: a read model the actor publishes
//! after every turn that changed something (queue counts, bounds, the dead letter queue), and
//! the event log it appends to after each commit. Request handlers read these directly, and
//! by-id reads open their own read transaction through the storage seam, so no read is queued
//! behind a commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::bounds::QueueBound;
use super::events::{Event, EventFilter, EventLog};
use super::msg::BoundInfo;
use super::sched::{self, DeadLetters, QueueKey, QueueSummary, StateCounts};
use crate::job::JobId;

/// One published state of the queue.
#[derive(Debug, Default)]
pub struct ReadModel {
    pub(super) queues: BTreeMap<QueueKey, QueueSummary>,
    pub(super) bounds: HashMap<QueueKey, QueueBound>,
    pub(super) dead: Arc<DeadLetters>,
}

impl ReadModel {
    /// Every known queue of a tenant with its counts, by name.
    #[must_use]
    pub fn queues(&self, tenant: Option<&str>) -> Vec<QueueSummary> {
        self.queues
            .iter()
            .filter(|((t, _), _)| t.as_deref() == tenant)
            .map(|(_, q)| q.clone())
            .collect()
    }

    /// Jobs per state over every queue.
    #[must_use]
    pub fn totals(&self) -> StateCounts {
        sched::totals(self.queues.values())
    }

    /// How many queues there are, over all tenants.
    #[must_use]
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// A queue's bound (configured or the default) and its depth.
    #[must_use]
    pub fn bound(&self, key: &QueueKey, default_max_depth: u64) -> BoundInfo {
        let depth = self.queues.get(key).map_or(0, |q| q.counts.depth());
        BoundInfo::of(self.bounds.get(key), depth, default_max_depth)
    }

    /// A tenant's dead-letter entries, newest first, optionally of one queue.
    #[must_use]
    pub fn dead_letter(&self, tenant: Option<&str>, queue: Option<&str>) -> Vec<JobId> {
        self.dead
            .iter()
            .rev()
            .filter(|(_, (t, q))| {
                t.as_deref() == tenant && queue.is_none_or(|want| want == q.as_str())
            })
            .map(|((_, id), _)| *id)
            .collect()
    }
}

/// The read side shared by the actor (the only writer) and every handle.
#[derive(Debug)]
pub struct Shared {
    model: ArcSwap<ReadModel>,
    events: Mutex<EventLog>,
}

impl Shared {
    /// An empty read side keeping `events_capacity` events.
    #[must_use]
    pub fn new(events_capacity: usize) -> Self {
        Self {
            model: ArcSwap::from_pointee(ReadModel::default()),
            events: Mutex::new(EventLog::new(events_capacity)),
        }
    }

    /// The current read model.
    #[must_use]
    pub fn model(&self) -> Arc<ReadModel> {
        self.model.load_full()
    }

    /// Publishes a new read model (the actor, after a turn).
    pub fn publish(&self, model: ReadModel) {
        self.model.store(Arc::new(model));
    }

    /// Appends committed events (the actor, after a commit).
    pub fn record(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        if let Ok(mut log) = self.events.lock() {
            log.extend(events);
        }
    }

    /// Forgets every event (the testing reset).
    pub fn clear_events(&self) {
        if let Ok(mut log) = self.events.lock() {
            log.clear();
        }
    }

    /// Recent events matching `filter`.
    #[must_use]
    pub fn events(&self, filter: &EventFilter) -> Vec<Event> {
        self.events
            .lock()
            .map(|log| log.list(filter))
            .unwrap_or_default()
    }
}
