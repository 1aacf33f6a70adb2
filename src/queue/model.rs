//! The model test of the engine's core: random sequences of enqueue (priorities, delays,
//! retry policies, pending), fetch (two queues, counts, two workers), ack, nack (retryable or
//! not, requeue), heartbeat, cancel, activate, dead-letter retry, time advances (schedules,
//! retries, lease and execution timeouts) and restarts (the engine rebuilt from the store), run
//! against a small reference model. After every step it checks that every operation answered
//! as the model says, that no job was lost or duplicated, that each active job has exactly one
//! holder, that every state change is one the OJS state machine allows, that attempts and
//! error histories add up, and that the live indexes equal a rebuild from the store.
//!
//! `cargo test` runs `BULWARK_MODEL_CASES` sequences (default 1000, each up to 80 steps); set it
//! higher for a longer run, e.g. `BULWARK_MODEL_CASES=20000 cargo test --lib queue::model`.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::core::{Engine, Turn};
use super::msg::{AckRequest, Failure, FetchRequest, HeartbeatRequest, Holder, NackRequest};
use super::seam::{JobStore, MemoryStore};
use super::QueueError;
use crate::clock::Millis;
use crate::job::envelope::NewJob;
use crate::job::retry::{Backoff, OnExhaustion, RetryPolicy};
use crate::job::{Job, JobId, JobState, Payload, ERROR_HISTORY_LIMIT};

const START: Millis = 1_800_000_000_000;
const QUEUES: [&str; 2] = ["alpha", "beta"];
const VISIBILITY_MS: u64 = 3_000;
const TIMEOUT_MS: u64 = 7_000;
const RETRY_MS: u64 = 1_000;

#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        queue: usize,
        priority: i32,
        delay: Option<u64>,
        max_attempts: u32,
        pending: bool,
        dead_letter: bool,
    },
    Fetch {
        first: usize,
        both: bool,
        count: usize,
        worker: usize,
    },
    Ack {
        pick: usize,
        worker: usize,
    },
    Nack {
        pick: usize,
        worker: usize,
        retryable: bool,
        requeue: bool,
    },
    Heartbeat {
        pick: usize,
        worker: usize,
    },
    Cancel {
        pick: usize,
    },
    Activate {
        pick: usize,
    },
    RetryDead {
        pick: usize,
    },
    Advance {
        ms: u64,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, -2..=2i32, prop::option::weighted(0.3, 1..4_000u64), 1..=3u32, prop::bool::weighted(0.1), any::<bool>())
            .prop_map(|(queue, priority, delay, max_attempts, pending, dead_letter)| Op::Enqueue {
                queue, priority, delay, max_attempts, pending, dead_letter
            }),
        5 => (0..2usize, any::<bool>(), 1..=3usize, 0..2usize)
            .prop_map(|(first, both, count, worker)| Op::Fetch { first, both, count, worker }),
        3 => (any::<usize>(), 0..2usize).prop_map(|(pick, worker)| Op::Ack { pick, worker }),
        3 => (any::<usize>(), 0..2usize, any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, worker, retryable, requeue)| Op::Nack { pick, worker, retryable, requeue }),
        1 => (any::<usize>(), 0..2usize).prop_map(|(pick, worker)| Op::Heartbeat { pick, worker }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Activate { pick }),
        1 => any::<usize>().prop_map(|pick| Op::RetryDead { pick }),
        3 => (1..5_000u64).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Restart),
    ]
}

/// What the model knows of a job.
#[derive(Clone, Debug)]
struct ModelJob {
    id: JobId,
    queue: usize,
    priority: i32,
    state: JobState,
    /// Place in its queue among ready jobs of the same priority (lower first).
    order: u64,
    due: Option<Millis>,
    attempt: u32,
    max_attempts: u32,
    holder: Option<usize>,
    visible_until: Millis,
    run_until: Millis,
    errors: usize,
    dead_letter: bool,
    dead_on_exhaustion: bool,
}

#[derive(Default)]
struct Model {
    jobs: Vec<ModelJob>,
    next_order: u64,
    now: Millis,
}

/// The outcome class the model expects.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Ok,
    InvalidState,
    LeaseNotHeld,
    NotInDeadLetter,
}

fn class(result: Result<(), &QueueError>) -> Expect {
    match result {
        Ok(()) => Expect::Ok,
        Err(QueueError::InvalidState { .. }) => Expect::InvalidState,
        Err(QueueError::LeaseNotHeld) => Expect::LeaseNotHeld,
        Err(QueueError::NotInDeadLetter) => Expect::NotInDeadLetter,
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

impl Model {
    fn take_order(&mut self) -> u64 {
        self.next_order += 1;
        self.next_order
    }

    fn pick(&self, pick: usize) -> Option<usize> {
        (!self.jobs.is_empty()).then(|| pick % self.jobs.len())
    }

    fn exhaust(job: &mut ModelJob) {
        job.state = JobState::Discarded;
        job.holder = None;
        job.dead_letter = job.dead_on_exhaustion;
    }

    fn fail(&mut self, i: usize, retryable: bool) {
        let now = self.now;
        let job = &mut self.jobs[i];
        job.errors += 1;
        job.holder = None;
        if retryable && job.attempt < job.max_attempts {
            job.state = JobState::Retryable;
            job.due = Some(now + RETRY_MS as i64);
        } else {
            Self::exhaust(job);
        }
    }

    /// What the engine does at the start of every turn.
    fn process_due(&mut self) {
        let now = self.now;
        let mut timed: Vec<(Millis, JobId, usize)> = self
            .jobs
            .iter()
            .enumerate()
            .filter(|(_, j)| matches!(j.state, JobState::Scheduled | JobState::Retryable))
            .filter_map(|(i, j)| j.due.filter(|d| *d <= now).map(|d| (d, j.id, i)))
            .collect();
        timed.sort_unstable();
        for (_, _, i) in timed {
            let order = self.take_order();
            let job = &mut self.jobs[i];
            job.state = JobState::Available;
            job.due = None;
            job.order = order;
        }
        let mut leases: Vec<(Millis, JobId, usize)> = self
            .jobs
            .iter()
            .enumerate()
            .filter(|(_, j)| j.state == JobState::Active)
            .map(|(i, j)| (j.visible_until.min(j.run_until), j.id, i))
            .filter(|(at, _, _)| *at <= now)
            .collect();
        leases.sort_unstable();
        for (_, _, i) in leases {
            if self.jobs[i].run_until <= now {
                self.fail(i, true);
            } else {
                let order = self.take_order();
                let job = &mut self.jobs[i];
                job.errors += 1;
                job.holder = None;
                if job.attempt < job.max_attempts {
                    job.state = JobState::Available;
                    job.order = order;
                } else {
                    Self::exhaust(job);
                }
            }
        }
    }

    /// The jobs a fetch claims, in order.
    fn fetch(&mut self, queues: &[usize], count: usize, worker: usize) -> Vec<JobId> {
        let now = self.now;
        let mut claimed = Vec::new();
        for &q in queues {
            while claimed.len() < count {
                let next = self
                    .jobs
                    .iter()
                    .enumerate()
                    .filter(|(_, j)| j.queue == q && j.state == JobState::Available)
                    .min_by_key(|(_, j)| (-j.priority, j.order))
                    .map(|(i, _)| i);
                let Some(i) = next else { break };
                let job = &mut self.jobs[i];
                job.state = JobState::Active;
                job.attempt += 1;
                job.holder = Some(worker);
                job.visible_until = now + VISIBILITY_MS as i64;
                job.run_until = now + TIMEOUT_MS as i64;
                claimed.push(job.id);
            }
        }
        claimed
    }

    fn held(&self, i: usize, worker: usize) -> Expect {
        let job = &self.jobs[i];
        if job.state != JobState::Active {
            Expect::InvalidState
        } else if job.holder != Some(worker) {
            Expect::LeaseNotHeld
        } else {
            Expect::Ok
        }
    }
}

fn holder(worker: usize) -> Holder {
    Holder {
        principal: format!("p{worker}"),
        worker_id: Some(format!("w{worker}")),
        tenant: None,
    }
}

fn new_job(
    queue: usize,
    priority: i32,
    run_at: Option<Millis>,
    max_attempts: u32,
    pending: bool,
    dead: bool,
) -> NewJob {
    NewJob {
        id: Some(JobId::generate()),
        job_type: "model.job".into(),
        queue: QUEUES[queue].into(),
        priority,
        args: Payload("[]".into()),
        meta: None,
        extra: None,
        tags: Vec::new(),
        schema: None,
        unique: None,
        retry: RetryPolicy {
            max_attempts,
            initial_interval_ms: RETRY_MS,
            backoff_coefficient: 1.0,
            max_interval_ms: RETRY_MS,
            jitter: false,
            backoff: Backoff::Exponential,
            non_retryable_errors: Vec::new(),
            on_exhaustion: if dead {
                OnExhaustion::DeadLetter
            } else {
                OnExhaustion::Discard
            },
        },
        timeout_ms: TIMEOUT_MS,
        visibility_timeout_ms: VISIBILITY_MS,
        run_at,
        expires_at: None,
        pending,
        test_directive: None,
        security: None,
        requested_owner: None,
        meta_tenant: None,
        dry_run: false,
    }
}

/// Runs one turn at `now`: the due timers, then `op`, then one commit.
fn turn<T>(
    engine: &mut Engine,
    store: &MemoryStore,
    now: Millis,
    op: impl FnOnce(&mut Engine, &mut Turn<'_>) -> T,
) -> T {
    let reader = store.reader().unwrap();
    let mut random = || 0.5;
    let mut t = Turn::new(reader.as_ref(), now, &mut random);
    engine.process_due(&mut t).unwrap();
    let out = op(engine, &mut t);
    let (writes, _events) = t.finish();
    drop(reader);
    store.commit(&writes).unwrap();
    out
}

/// Whether one step may move a job from `from` to `to`: the turn's due timers and then its
/// operation can each make one transition of the OJS state machine.
fn allowed(from: JobState, to: JobState, dead_retry: bool) -> bool {
    const ALL: [JobState; 8] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Pending,
        JobState::Active,
        JobState::Completed,
        JobState::Retryable,
        JobState::Cancelled,
        JobState::Discarded,
    ];
    one_transition(from, to, dead_retry)
        || ALL
            .iter()
            .any(|mid| one_transition(from, *mid, false) && one_transition(*mid, to, dead_retry))
}

fn one_transition(from: JobState, to: JobState, dead_retry: bool) -> bool {
    use JobState::{
        Active, Available, Cancelled, Completed, Discarded, Pending, Retryable, Scheduled,
    };
    from == to
        || matches!(
            (from, to),
            (Scheduled | Pending | Retryable, Available)
                | (
                    Scheduled | Available | Pending | Active | Retryable,
                    Cancelled
                )
                | (Available, Active)
                | (Active, Completed | Retryable | Available | Discarded)
        )
        || (dead_retry && from == Discarded && to == Available)
}

/// Checks the store and the indexes against the model after a step.
fn check(
    engine: &Engine,
    store: &MemoryStore,
    model: &Model,
    before: &BTreeMap<JobId, JobState>,
    dead_retry: Option<JobId>,
) {
    let stored = store.jobs();
    assert_eq!(stored.len(), model.jobs.len(), "no job lost or duplicated");
    for m in &model.jobs {
        let job: &Job = stored
            .get(&m.id)
            .expect("every job the model knows is stored");
        assert_eq!(job.state, m.state, "state of {}", m.id);
        assert_eq!(job.attempt, m.attempt, "attempt of {}", m.id);
        assert_eq!(
            job.errors.len(),
            m.errors.min(ERROR_HISTORY_LIMIT),
            "error history of {}",
            m.id
        );
        assert_eq!(
            job.dead_letter, m.dead_letter,
            "dead letter flag of {}",
            m.id
        );
        match job.state {
            JobState::Active => {
                let lease = job.lease.as_ref().expect("an active job has a lease");
                let worker = m.holder.expect("the model knows the holder");
                assert_eq!(lease.principal, format!("p{worker}"), "one holder");
                assert_eq!(lease.visibility_deadline, m.visible_until);
                assert_eq!(lease.execution_deadline, m.run_until);
            }
            _ => assert!(job.lease.is_none(), "only active jobs are held"),
        }
        if matches!(job.state, JobState::Scheduled | JobState::Retryable) {
            assert_eq!(job.scheduled_at, m.due, "due time of {}", m.id);
        }
        if let Some(from) = before.get(&m.id) {
            assert!(
                allowed(*from, job.state, dead_retry == Some(m.id)),
                "{} moved from {from:?} to {:?}",
                m.id,
                job.state
            );
        }
    }
    let rebuilt = Engine::load(store, false).unwrap();
    if let Err(e) = engine.indexes().agrees_with(rebuilt.indexes()) {
        panic!("indexes: {e}");
    }
}

fn run(ops: Vec<Op>) {
    let store = MemoryStore::default();
    let mut engine = Engine::load(&store, false).unwrap();
    let mut model = Model {
        now: START,
        ..Model::default()
    };
    for op in ops {
        let before: BTreeMap<JobId, JobState> = store
            .jobs()
            .into_iter()
            .map(|(id, j)| (id, j.state))
            .collect();
        let mut dead_retry = None;
        if !matches!(op, Op::Restart) {
            model.process_due();
        }
        let now = model.now;
        match op {
            Op::Enqueue {
                queue,
                priority,
                delay,
                max_attempts,
                pending,
                dead_letter,
            } => {
                let run_at = delay.map(|d| now + d as i64);
                let new = new_job(queue, priority, run_at, max_attempts, pending, dead_letter);
                let id = new.id.unwrap();
                let limits = super::bounds::Limits::default();
                let done = turn(&mut engine, &store, now, |e, t| {
                    e.enqueue(t, new, None, None, &limits, None)
                })
                .unwrap();
                assert_eq!(done.job.id, id);
                let order = model.take_order();
                let state = if pending {
                    JobState::Pending
                } else if run_at.is_some_and(|at| at > now) {
                    JobState::Scheduled
                } else {
                    JobState::Available
                };
                assert_eq!(done.job.state, state);
                model.jobs.push(ModelJob {
                    id,
                    queue,
                    priority,
                    state,
                    order,
                    due: (state == JobState::Scheduled).then_some(run_at).flatten(),
                    attempt: 0,
                    max_attempts,
                    holder: None,
                    visible_until: 0,
                    run_until: 0,
                    errors: 0,
                    dead_letter: false,
                    dead_on_exhaustion: dead_letter,
                });
            }
            Op::Fetch {
                first,
                both,
                count,
                worker,
            } => {
                let queues: Vec<usize> = if both {
                    vec![first, 1 - first]
                } else {
                    vec![first]
                };
                let req = FetchRequest {
                    queues: queues.iter().map(|q| QUEUES[*q].to_string()).collect(),
                    count,
                    holder: holder(worker),
                    visibility_timeout_ms: None,
                    max_running: 0,
                    max_tenant_active: 0,
                };
                let got: Vec<JobId> = turn(&mut engine, &store, now, |e, t| e.fetch(t, &req))
                    .unwrap()
                    .iter()
                    .map(|j| j.id)
                    .collect();
                let want = model.fetch(&queues, count, worker);
                assert_eq!(
                    got, want,
                    "fetch claims by priority, then FIFO, and nothing early"
                );
            }
            Op::Ack { pick, worker } => {
                let Some(i) = model.pick(pick) else { continue };
                let req = AckRequest {
                    id: model.jobs[i].id,
                    holder: holder(worker),
                    attempt: None,
                    result: None,
                };
                let got = turn(&mut engine, &store, now, |e, t| e.ack(t, req).map(|_| ()));
                let want = model.held(i, worker);
                assert_eq!(class(got.as_ref().copied()), want);
                if want == Expect::Ok {
                    model.jobs[i].state = JobState::Completed;
                    model.jobs[i].holder = None;
                }
            }
            Op::Nack {
                pick,
                worker,
                retryable,
                requeue,
            } => {
                let Some(i) = model.pick(pick) else { continue };
                let req = NackRequest {
                    id: model.jobs[i].id,
                    holder: holder(worker),
                    attempt: None,
                    failure: Failure {
                        code: "boom".into(),
                        message: "failed".into(),
                        error_type: None,
                        retryable: Some(retryable),
                        details: None,
                    },
                    requeue,
                };
                let got = turn(&mut engine, &store, now, |e, t| e.nack(t, req).map(|_| ()));
                let want = model.held(i, worker);
                assert_eq!(class(got.as_ref().copied()), want);
                if want == Expect::Ok {
                    if requeue {
                        let order = model.take_order();
                        let job = &mut model.jobs[i];
                        job.errors += 1;
                        job.holder = None;
                        job.state = JobState::Available;
                        job.order = order;
                    } else {
                        model.fail(i, retryable);
                    }
                }
            }
            Op::Heartbeat { pick, worker } => {
                let Some(i) = model.pick(pick) else { continue };
                let req = HeartbeatRequest {
                    holder: holder(worker),
                    job_ids: vec![model.jobs[i].id],
                    visibility_timeout_ms: None,
                };
                let got = turn(&mut engine, &store, now, |e, t| e.heartbeat(t, &req));
                match model.held(i, worker) {
                    Expect::Ok => {
                        assert_eq!(got.unwrap().extended, vec![model.jobs[i].id]);
                        model.jobs[i].visible_until = now + VISIBILITY_MS as i64;
                    }
                    Expect::LeaseNotHeld => assert!(matches!(got, Err(QueueError::LeaseNotHeld))),
                    _ => assert!(got.unwrap().extended.is_empty()),
                }
            }
            Op::Cancel { pick } => {
                let Some(i) = model.pick(pick) else { continue };
                let id = model.jobs[i].id;
                let got = turn(&mut engine, &store, now, |e, t| {
                    e.cancel(t, id, None).map(|_| ())
                });
                let terminal = model.jobs[i].state.is_terminal();
                assert_eq!(
                    class(got.as_ref().copied()),
                    if terminal {
                        Expect::InvalidState
                    } else {
                        Expect::Ok
                    }
                );
                if !terminal {
                    let job = &mut model.jobs[i];
                    job.state = JobState::Cancelled;
                    job.holder = None;
                    job.due = None;
                }
            }
            Op::Activate { pick } => {
                let Some(i) = model.pick(pick) else { continue };
                let id = model.jobs[i].id;
                let got = turn(&mut engine, &store, now, |e, t| {
                    e.activate(t, id, None).map(|_| ())
                });
                let pending = model.jobs[i].state == JobState::Pending;
                assert_eq!(
                    class(got.as_ref().copied()),
                    if pending {
                        Expect::Ok
                    } else {
                        Expect::InvalidState
                    }
                );
                if pending {
                    model.jobs[i].state = JobState::Available;
                }
            }
            Op::RetryDead { pick } => {
                let Some(i) = model.pick(pick) else { continue };
                let id = model.jobs[i].id;
                let got = turn(&mut engine, &store, now, |e, t| {
                    e.dead_letter_retry(t, id, None).map(|_| ())
                });
                let dead = model.jobs[i].dead_letter;
                assert_eq!(
                    class(got.as_ref().copied()),
                    if dead {
                        Expect::Ok
                    } else {
                        Expect::NotInDeadLetter
                    }
                );
                if dead {
                    dead_retry = Some(id);
                    let order = model.take_order();
                    let job = &mut model.jobs[i];
                    job.dead_letter = false;
                    job.state = JobState::Available;
                    job.attempt = 0;
                    job.order = order;
                }
            }
            Op::Advance { ms } => {
                model.now += ms as i64;
                model.process_due();
                turn(&mut engine, &store, model.now, |_, _| ());
            }
            Op::Restart => {
                engine = Engine::load(&store, false).unwrap();
            }
        }
        check(&engine, &store, &model, &before, dead_retry);
    }
}

fn cases() -> u32 {
    std::env::var("BULWARK_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_engine_agrees_with_the_model_after_every_step(ops in prop::collection::vec(op(), 1..80)) {
        run(ops);
    }
}

#[test]
fn a_scheduled_job_is_not_delivered_a_millisecond_early() {
    let store = MemoryStore::default();
    let mut engine = Engine::load(&store, false).unwrap();
    let limits = super::bounds::Limits::default();
    let new = new_job(0, 0, Some(START + 1_000), 1, false, false);
    turn(&mut engine, &store, START, |e, t| {
        e.enqueue(t, new, None, None, &limits, None)
    })
    .unwrap();
    let req = FetchRequest {
        queues: vec![QUEUES[0].into()],
        count: 1,
        holder: holder(0),
        visibility_timeout_ms: None,
        max_running: 0,
        max_tenant_active: 0,
    };
    assert!(
        turn(&mut engine, &store, START + 999, |e, t| e.fetch(t, &req))
            .unwrap()
            .is_empty()
    );
    assert_eq!(engine.next_wake(), Some(START + 1_000));
    assert_eq!(
        turn(&mut engine, &store, START + 1_000, |e, t| e.fetch(t, &req))
            .unwrap()
            .len(),
        1
    );
}
