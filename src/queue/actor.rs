//! The queue actor: a thin loop around the engine's pure core ([`super::core`]).
//!
//! It runs on its own thread (store I/O blocks, so it never runs on the HTTP workers). Each
//! turn it drains every waiting message (`recv_many`), opens a read view of the store, applies
//! the due timers and then the messages in order to the [`Engine`], hands newly available jobs
//! to parked long-polls ([`super::waiters`]), commits the turn's writes once (durably), and only
//! then answers every sender. A reply is therefore a promise that the change is on disk. If the
//! commit fails, every sender of the turn gets `Unavailable` and the engine is rebuilt from the
//! store. A turn that writes nothing (an empty fetch) opens no write transaction.

use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::mpsc;
use tracing::{debug, error, info};

use super::bounds::{Limits, Strategy};
use super::core::{Engine, Turn};
use super::msg::{Enqueued, FetchRequest, Msg, Reply, StillValid};
use super::sched::QueueKey;
use super::seam::JobStore;
use super::view::Shared;
use super::waiters::Waiters;
use super::{QueueConfig, QueueError};
use crate::clock::{Clock, Millis};
use crate::job::envelope::NewJob;
use crate::job::Job;
use crate::vault::sealed::JobKey;

/// What to send once the turn's outcome is known: `true` if the commit succeeded.
type Delivery = Box<dyn FnOnce(bool) + Send>;

/// The longest the loop sleeps without looking at deadlines.
const MAX_IDLE_MS: i64 = 1000;
/// With a manual clock, time can jump at any moment: look often.
const MANUAL_IDLE_MS: i64 = 5;
/// How often parked long-polls are checked for a gone caller or a revoked credential even when
/// no job arrives.
const SWEEP_EVERY_MS: i64 = 1000;

/// A parked long-poll fetch.
struct Waiter {
    req: FetchRequest,
    /// The (tenant, queue) keys it waits on, in the order of `req.queues`.
    keys: Vec<QueueKey>,
    valid: StillValid,
    until: Millis,
    reply: Reply<Vec<Job>>,
}

/// An enqueue held by a full `block` queue until there is room or its time is up.
struct Blocked {
    job: Box<NewJob>,
    tenant: Option<String>,
    owner: Option<String>,
    limits: Limits,
    key: Option<Arc<JobKey>>,
    valid: StillValid,
    reply: Reply<Enqueued>,
}

pub(super) struct QueueActor {
    store: Arc<dyn JobStore>,
    engine: Engine,
    shared: Arc<Shared>,
    config: QueueConfig,
    clock: Clock,
    rng: SystemRandom,
    waiters: Waiters<Waiter>,
    blocked: Waiters<Blocked>,
    last_sweep: Millis,
    exit: QueueExit,
}

/// How the queue engine ended: what it did over its life, for the shutdown log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueExit {
    /// Turns that applied anything.
    pub turns: u64,
    /// Durable commits that wrote something.
    pub commits: u64,
    /// Turns that failed (a store error or a failed commit) and were answered 503.
    pub failed_turns: u64,
    /// Long-polls and held enqueues still waiting at the end, answered then.
    pub released: u64,
    /// The runtime could not start: the engine never ran.
    pub never_started: bool,
}

fn deliver<T: Send + 'static>(
    reply: Reply<T>,
    result: Result<T, QueueError>,
    failed: &mut bool,
) -> Delivery {
    if matches!(result, Err(QueueError::Storage(_))) {
        *failed = true;
    }
    Box::new(move |committed| {
        // A caller that went away (client disconnected) is no error of ours.
        let _ = reply.send(if committed {
            result
        } else {
            Err(QueueError::Unavailable)
        });
    })
}

impl QueueActor {
    pub(super) fn load(
        store: Arc<dyn JobStore>,
        shared: Arc<Shared>,
        config: QueueConfig,
    ) -> Result<Self, QueueError> {
        let engine = Engine::load(store.as_ref(), config.honour_test_directives)?;
        let totals = engine.indexes().totals();
        info!(
            available = totals.available,
            active = totals.active,
            scheduled = totals.scheduled + totals.retryable,
            dead_letter = totals.dead_letter,
            "queue indexes rebuilt"
        );
        shared.publish(engine.read_model());
        let clock = config.clock.clone();
        Ok(Self {
            store,
            engine,
            shared,
            config,
            last_sweep: clock.now_ms(),
            clock,
            rng: SystemRandom::new(),
            waiters: Waiters::default(),
            blocked: Waiters::default(),
            exit: QueueExit::default(),
        })
    }

    /// Runs the loop until every handle is gone.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> QueueExit {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                error!(error = %e, "queue actor could not start its runtime");
                return QueueExit {
                    never_started: true,
                    ..QueueExit::default()
                };
            }
        };
        runtime.block_on(async move {
            let max = self.config.max_group.max(1);
            let mut inbox = Vec::with_capacity(max);
            loop {
                let idle = self.idle_ms();
                tokio::select! {
                    n = rx.recv_many(&mut inbox, max) => {
                        // Zero means the channel is closed and empty: every handle is gone.
                        if n == 0 {
                            break;
                        }
                    }
                    () = tokio::time::sleep(std::time::Duration::from_millis(idle.unsigned_abs())) => {}
                }
                self.turn(std::mem::take(&mut inbox));
                inbox.reserve(max);
            }
            // Nobody is left to fetch for the waiters: let them go empty-handed.
            for waiter in self.waiters.take_all() {
                self.exit.released += 1;
                let _ = waiter.reply.send(Ok(Vec::new()));
            }
            for blocked in self.blocked.take_all() {
                self.exit.released += 1;
                let _ = blocked.reply.send(Err(QueueError::Unavailable));
            }
            debug!("queue actor stopped");
            self.exit
        })
    }

    /// How long the loop may sleep before a timer, a lease or a waiter falls due.
    fn idle_ms(&self) -> i64 {
        let cap = if self.clock.is_manual() {
            MANUAL_IDLE_MS
        } else {
            MAX_IDLE_MS
        };
        let now = self.clock.now_ms();
        let next = [
            self.engine.next_wake(),
            self.waiters.next_deadline(),
            self.blocked.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        let sweep = !(self.waiters.is_empty() && self.blocked.is_empty());
        let sweep = sweep.then_some(self.last_sweep + SWEEP_EVERY_MS);
        let next = match (next, sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map_or(cap, |at| (at - now).clamp(0, cap))
    }

    /// One group commit.
    fn turn(&mut self, msgs: Vec<Msg>) {
        let now = self.clock.now_ms();
        self.end_waits(now);
        if msgs.is_empty() && self.engine.next_wake().is_none_or(|at| at > now) {
            return;
        }
        let store = self.store.clone();
        let reader = match store.reader() {
            Ok(reader) => reader,
            Err(e) => {
                error!(error = %e, "queue could not open a read view");
                self.fail_all(msgs);
                return;
            }
        };
        let rng = self.rng.clone();
        let mut random = move || random_unit(&rng);
        let mut turn = Turn::new(reader.as_ref(), now, &mut random);
        let mut deliveries: Vec<Delivery> = Vec::with_capacity(msgs.len());
        let mut rewraps = Vec::new();
        let mut reset = false;
        let mut failed = false;
        if let Err(e) = self.engine.process_due(&mut turn) {
            error!(error = %e, "queue failed to process due jobs");
            failed = true;
        }
        for msg in msgs {
            match msg {
                Msg::Rewrap {
                    after,
                    batch,
                    reply,
                } => rewraps.push((after, batch, reply)),
                Msg::Reset { reply } => {
                    reset = true;
                    self.engine.reset(&mut turn);
                    deliveries.push(deliver(reply, Ok(()), &mut failed));
                }
                msg => {
                    if let Some(d) = self.apply(&mut turn, msg, &mut failed) {
                        deliveries.push(d);
                    }
                }
            }
        }
        if !failed {
            self.serve_blocked(&mut turn, &mut deliveries, &mut failed);
            self.serve_waiters(&mut turn, &mut deliveries, &mut failed);
        }
        let (writes, events) = turn.finish();
        drop(reader);
        let committed = !failed
            && match self.store.commit(&writes) {
                Ok(()) => true,
                Err(e) => {
                    error!(error = %e, "queue commit failed");
                    false
                }
            };
        self.exit.turns += 1;
        if !committed {
            self.exit.failed_turns += 1;
        } else if !writes.is_empty() {
            self.exit.commits += 1;
        }
        if committed {
            if reset {
                self.shared.clear_events();
            }
            self.shared.record(events);
            if !writes.is_empty() {
                self.shared.publish(self.engine.read_model());
            }
        } else {
            self.rebuild();
        }
        for d in deliveries {
            d(committed);
        }
        // Re-wraps run between turns: they rewrite records, so no job write may race them.
        for (after, batch, reply) in rewraps {
            let _ = reply.send(self.store.rewrap(after, batch));
        }
    }

    /// Throws the engine's state away and rebuilds it from the store (after a failed commit or
    /// when the indexes drifted).
    fn rebuild(&mut self) {
        match Engine::load(self.store.as_ref(), self.config.honour_test_directives) {
            Ok(mut engine) => {
                if self.engine.draining() {
                    engine.drain();
                }
                self.engine = engine;
                self.shared.publish(self.engine.read_model());
            }
            Err(e) => error!(error = %e, "queue could not rebuild its indexes"),
        }
    }

    /// Answers a turn that could not even start: dropping a reply sender makes the caller see
    /// `Unavailable`. A drain request still takes effect.
    fn fail_all(&mut self, msgs: Vec<Msg>) {
        for msg in msgs {
            if matches!(msg, Msg::Drain) {
                self.engine.drain();
            }
        }
    }

    fn apply(&mut self, t: &mut Turn<'_>, msg: Msg, failed: &mut bool) -> Option<Delivery> {
        let e = &mut self.engine;
        Some(match msg {
            Msg::Enqueue {
                job,
                tenant,
                owner,
                limits,
                key,
                block,
                reply,
            } => {
                // Only an enqueue that may block, into a queue already full, keeps a copy to
                // retry with.
                let queue = (tenant.clone(), job.queue.clone());
                let block = block.filter(|wait| wait.until > t.now());
                let retry = (block.is_some() && !e.has_room(&queue, &limits)).then(|| job.clone());
                match e.enqueue(t, *job, tenant.clone(), owner.clone(), &limits, key.clone()) {
                    Err(QueueError::QueueFull {
                        strategy: Strategy::Block,
                        ..
                    }) if retry.is_some() => {
                        if let (Some(job), Some(wait)) = (retry, block) {
                            let blocked = Blocked {
                                job,
                                tenant,
                                owner,
                                limits,
                                key,
                                valid: wait.valid,
                                reply,
                            };
                            self.blocked.park(vec![queue], wait.until, blocked);
                        }
                        return None;
                    }
                    result => deliver(reply, result, failed),
                }
            }
            Msg::EnqueueBatch {
                jobs,
                limits,
                reply,
            } => {
                let result = e.enqueue_batch(t, jobs, &limits);
                // A failure after the first write would leave part of the batch in the
                // turn: abort the whole turn instead.
                if matches!(result, Err(QueueError::Unavailable)) {
                    *failed = true;
                }
                deliver(reply, result, failed)
            }
            Msg::SetBound {
                tenant,
                queue,
                bound,
                reply,
            } => {
                e.set_bound(t, (tenant, queue), bound);
                deliver(reply, Ok(()), failed)
            }
            Msg::Fetch { req, wait, reply } => {
                let result = e.fetch(t, &req);
                match (result, wait) {
                    (Ok(jobs), Some(wait)) if jobs.is_empty() && wait.until > t.now() => {
                        let keys: Vec<QueueKey> = req
                            .queues
                            .iter()
                            .map(|q| (req.holder.tenant.clone(), q.clone()))
                            .collect();
                        let waiter = Waiter {
                            req,
                            keys: keys.clone(),
                            valid: wait.valid,
                            until: wait.until,
                            reply,
                        };
                        self.waiters.park(keys, wait.until, waiter);
                        return None;
                    }
                    (result, _) => {
                        if matches!(result, Err(QueueError::Unavailable)) {
                            *failed = true;
                        }
                        deliver(reply, result, failed)
                    }
                }
            }
            Msg::Ack { req, reply } => deliver(reply, e.ack(t, req), failed),
            Msg::Nack { req, reply } => deliver(reply, e.nack(t, *req), failed),
            Msg::Heartbeat { req, reply } => deliver(reply, e.heartbeat(t, &req), failed),
            Msg::Cancel { id, scope, reply } => {
                deliver(reply, e.cancel(t, id, scope.as_deref()), failed)
            }
            Msg::Activate { id, scope, reply } => {
                deliver(reply, e.activate(t, id, scope.as_deref()), failed)
            }
            Msg::DeadLetterRetry { id, scope, reply } => {
                deliver(reply, e.dead_letter_retry(t, id, scope.as_deref()), failed)
            }
            Msg::DeadLetterDelete { id, scope, reply } => {
                deliver(reply, e.dead_letter_delete(t, id, scope.as_deref()), failed)
            }
            Msg::Drain => {
                e.drain();
                return None;
            }
            // Handled by the turn itself, or only there to wake the loop.
            Msg::Tick | Msg::Reset { .. } | Msg::Rewrap { .. } => return None,
        })
    }

    /// Hands ready jobs to parked long-polls of their queues, longest-waiting first, in this
    /// turn (so the claim commits with the change that made the job available). A waiter whose
    /// credential went bad meanwhile is answered `CredentialInvalid` and never handed a job.
    fn serve_waiters(
        &mut self,
        t: &mut Turn<'_>,
        deliveries: &mut Vec<Delivery>,
        failed: &mut bool,
    ) {
        if self.waiters.is_empty() {
            return;
        }
        let engine = &self.engine;
        let ready = self.waiters.ready(|key| engine.has_ready(key));
        for id in ready {
            let Some(waiter) = self.waiters.get(id) else {
                continue;
            };
            let still_ready = waiter.keys.iter().any(|key| self.engine.has_ready(key));
            if !still_ready {
                continue;
            }
            let Some(waiter) = self.waiters.take(id) else {
                continue;
            };
            if waiter.reply.is_closed() {
                continue;
            }
            if !(waiter.valid.0)(t.now()) {
                let _ = waiter.reply.send(Err(QueueError::CredentialInvalid));
                continue;
            }
            match self.engine.fetch(t, &waiter.req) {
                Ok(jobs) if jobs.is_empty() => {
                    // Nothing for it after all (a quota): it keeps waiting, at the back.
                    let (keys, until) = (waiter.keys.clone(), waiter.until);
                    self.waiters.park(keys, until, waiter);
                }
                result => {
                    if matches!(result, Err(QueueError::Unavailable)) {
                        *failed = true;
                    }
                    deliveries.push(deliver(waiter.reply, result, failed));
                }
            }
        }
    }

    /// Stores held enqueues whose queue has room again, longest-held first, in this turn.
    fn serve_blocked(
        &mut self,
        t: &mut Turn<'_>,
        deliveries: &mut Vec<Delivery>,
        failed: &mut bool,
    ) {
        for id in self.blocked.ids() {
            let Some(blocked) = self.blocked.get(id) else {
                continue;
            };
            let queue = (blocked.tenant.clone(), blocked.job.queue.clone());
            if !blocked.reply.is_closed() && !self.engine.has_room(&queue, &blocked.limits) {
                continue;
            }
            let Some(blocked) = self.blocked.take(id) else {
                continue;
            };
            if blocked.reply.is_closed() {
                continue;
            }
            if !(blocked.valid.0)(t.now()) {
                let _ = blocked.reply.send(Err(QueueError::CredentialInvalid));
                continue;
            }
            let result = self.engine.enqueue(
                t,
                *blocked.job,
                blocked.tenant,
                blocked.owner,
                &blocked.limits,
                blocked.key,
            );
            if matches!(result, Err(QueueError::Unavailable)) {
                *failed = true;
            }
            deliveries.push(deliver(blocked.reply, result, failed));
        }
    }

    /// Ends the waits that are over (no jobs, or `CredentialInvalid`), and, once a second,
    /// drops waiters whose caller is gone and answers those whose credential went bad.
    fn end_waits(&mut self, now: Millis) {
        for blocked in self.blocked.take_expired(now) {
            if !(blocked.valid.0)(now) {
                let _ = blocked.reply.send(Err(QueueError::CredentialInvalid));
                continue;
            }
            let queue = (blocked.tenant.clone(), blocked.job.queue.clone());
            let info = self
                .engine
                .bound_info(&queue, blocked.limits.default_max_depth);
            let _ = blocked.reply.send(Err(QueueError::QueueFull {
                depth: info.depth,
                bound: info.bound.max_depth,
                strategy: info.bound.strategy,
            }));
        }
        for waiter in self.waiters.take_expired(now) {
            let answer = if (waiter.valid.0)(now) {
                Ok(Vec::new())
            } else {
                Err(QueueError::CredentialInvalid)
            };
            let _ = waiter.reply.send(answer);
        }
        if !(self.waiters.is_empty() && self.blocked.is_empty())
            && now - self.last_sweep >= SWEEP_EVERY_MS
        {
            self.last_sweep = now;
            for waiter in self
                .waiters
                .take_unless(|w| !w.reply.is_closed() && (w.valid.0)(now))
            {
                let _ = waiter.reply.send(Err(QueueError::CredentialInvalid));
            }
            for blocked in self
                .blocked
                .take_unless(|b| !b.reply.is_closed() && (b.valid.0)(now))
            {
                let _ = blocked.reply.send(Err(QueueError::CredentialInvalid));
            }
        }
    }
}

/// A uniform number in `[0, 1)` for retry jitter.
fn random_unit(rng: &SystemRandom) -> f64 {
    let mut bytes = [0u8; 8];
    if rng.fill(&mut bytes).is_err() {
        return 0.5;
    }
    #[allow(clippy::cast_precision_loss)]
    let unit = (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
    unit
}
