//! Messages to the queue actor. Requests carry the caller's identity where a lease is involved.

use tokio::sync::oneshot;

use super::bounds::{Limits, QueueBound};
use super::sched::StateCounts;
use super::QueueError;
use crate::job::envelope::NewJob;
use crate::job::{Job, JobId, JobState, Payload};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

/// Who is asking for or holding a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The authenticated principal's id.
    pub principal: String,
    /// The `worker_id` from the request, if any.
    pub worker_id: Option<String>,
    /// The tenant the request acts for: only its jobs can be fetched or held.
    pub tenant: Option<String>,
}

/// The tenant a by-id request acts for: a job of another tenant does not exist for it.
pub type Scope = Option<String>;

/// `POST /workers/fetch`.
#[derive(Clone, Debug)]
pub struct FetchRequest {
    pub queues: Vec<String>,
    pub count: usize,
    pub holder: Holder,
    pub visibility_timeout_ms: Option<u64>,
    /// The most jobs the holder's principal may hold active at once (0: no limit).
    pub max_running: u64,
    /// The most jobs the holder's tenant may have active at once (0: no limit).
    pub max_tenant_active: u64,
}

/// What an enqueue did beyond storing the job.
#[derive(Clone, Debug)]
pub struct Enqueued {
    pub job: Job,
    /// The job discarded to make room (drop-oldest queues).
    pub dropped: Option<Job>,
    /// The queue's depth after the enqueue, and its bound.
    pub depth: u64,
    pub bound: QueueBound,
}

/// A queue's bound as the admin API shows it.
#[derive(Clone, Debug)]
pub struct BoundInfo {
    pub bound: QueueBound,
    /// Set through the admin API (otherwise the configured default).
    pub configured: bool,
    pub depth: u64,
}

impl BoundInfo {
    /// A queue's bound as configured (or the default of `default_max_depth`) and its depth.
    #[must_use]
    pub fn of(configured: Option<&QueueBound>, depth: u64, default_max_depth: u64) -> Self {
        Self {
            depth,
            configured: configured.is_some(),
            bound: configured
                .cloned()
                .unwrap_or_else(|| QueueBound::default_with(default_max_depth)),
        }
    }
}

/// `POST /workers/ack`.
#[derive(Clone, Debug)]
pub struct AckRequest {
    pub id: JobId,
    pub holder: Holder,
    /// The attempt the worker is acknowledging, if it says; a mismatch is a stale ack.
    pub attempt: Option<u32>,
    pub result: Option<Payload>,
}

/// The failure a worker reports.
#[derive(Clone, Debug)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub error_type: Option<String>,
    pub retryable: Option<bool>,
    pub details: Option<Payload>,
}

impl Failure {
    /// The history entry for this failure of `attempt`, recorded at `at`.
    #[must_use]
    pub fn into_error(self, attempt: u32, at: crate::clock::Millis) -> crate::job::JobError {
        crate::job::JobError {
            code: self.code,
            message: self.message,
            error_type: self.error_type,
            retryable: self.retryable,
            details: self.details,
            attempt,
            occurred_at: at,
        }
    }
}

/// `POST /workers/nack`.
#[derive(Clone, Debug)]
pub struct NackRequest {
    pub id: JobId,
    pub holder: Holder,
    pub attempt: Option<u32>,
    pub failure: Failure,
    /// Put the job straight back to `available` (a worker releasing it on shutdown).
    pub requeue: bool,
}

/// `POST /workers/heartbeat`.
#[derive(Clone, Debug)]
pub struct HeartbeatRequest {
    pub holder: Holder,
    pub job_ids: Vec<JobId>,
    pub visibility_timeout_ms: Option<u64>,
}

/// What a heartbeat did and what the worker should do next.
#[derive(Clone, Debug)]
pub struct HeartbeatOutcome {
    pub extended: Vec<JobId>,
    /// `running`, `quiet` or `terminate`.
    pub directive: &'static str,
}

/// One page of a listing.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: usize,
}

/// Figures for health and metrics.
#[derive(Clone, Debug)]
pub struct QueueStats {
    pub totals: StateCounts,
    pub queues: usize,
}

pub use crate::vault::RewrapStep;

/// Whether the credential of a waiting long-poll is still good at a time: checked before a
/// waiter is handed a job and when its wait ends.
#[derive(Clone)]
pub struct StillValid(pub std::sync::Arc<dyn Fn(crate::clock::Millis) -> bool + Send + Sync>);

impl std::fmt::Debug for StillValid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StillValid")
    }
}

/// How long a fetch that finds nothing may wait for a job, and on whose credential.
#[derive(Clone, Debug)]
pub struct Wait {
    /// The engine time the wait ends at.
    pub until: crate::clock::Millis,
    pub valid: StillValid,
}

pub(crate) enum Msg {
    Enqueue {
        job: Box<NewJob>,
        tenant: Option<String>,
        owner: Option<String>,
        limits: Limits,
        /// The job's data key with its args and meta already sealed (by the caller's thread).
        key: Option<std::sync::Arc<crate::vault::sealed::JobKey>>,
        /// For a full `block` queue: how long the enqueue may wait for room, and on whose
        /// credential.
        block: Option<Wait>,
        reply: Reply<Enqueued>,
    },
    /// Enqueues every job or none (each with its tenant and owner).
    EnqueueBatch {
        jobs: Vec<(NewJob, Option<String>, Option<String>)>,
        limits: Limits,
        reply: Reply<Vec<Job>>,
    },
    /// Sets (or with `None` removes) a queue's bound.
    SetBound {
        tenant: Option<String>,
        queue: String,
        bound: Option<QueueBound>,
        reply: Reply<()>,
    },
    /// Claims ready jobs; with `wait`, parks until one is available or the wait ends.
    Fetch {
        req: FetchRequest,
        wait: Option<Wait>,
        reply: Reply<Vec<Job>>,
    },
    Ack {
        req: AckRequest,
        reply: Reply<Job>,
    },
    Nack {
        req: Box<NackRequest>,
        reply: Reply<Job>,
    },
    Heartbeat {
        req: HeartbeatRequest,
        reply: Reply<HeartbeatOutcome>,
    },
    Cancel {
        id: JobId,
        scope: Scope,
        reply: Reply<(Job, JobState)>,
    },
    Activate {
        id: JobId,
        scope: Scope,
        reply: Reply<Job>,
    },
    DeadLetterRetry {
        id: JobId,
        scope: Scope,
        reply: Reply<Job>,
    },
    DeadLetterDelete {
        id: JobId,
        scope: Scope,
        reply: Reply<()>,
    },
    Reset {
        reply: Reply<()>,
    },
    Rewrap {
        after: Option<u128>,
        batch: usize,
        reply: Reply<RewrapStep>,
    },
    /// Look at the clock now (a test moved a manual clock).
    Tick,
    /// Start answering heartbeats with `quiet` (graceful shutdown).
    Drain,
}
