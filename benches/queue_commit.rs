//! The queue actor's commit path without HTTP: a fresh redb store in a temporary folder, the
//! real actor thread, and tokio tasks as senders.
//!
//! - `enqueue/N`: N concurrent senders each awaiting one durable enqueue after another. One
//!   sender gets one commit (one fsync) per job; more senders share commits (group commit).
//! - `fetch_ack/N`: N workers each fetching 10 jobs and acking them one by one, on a queue filled
//!   beforehand (outside the measurement).
//!
//! One criterion iteration is one job; the reported throughput is jobs per second.
//! Run: `cargo bench --bench queue_commit`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bulwark::clock::Clock;
use bulwark::job::envelope::{parse_new_job, EnvelopeRules, NewJob};
use bulwark::queue::{AckRequest, FetchRequest, Holder, QueueConfig, QueueHandle};
use bulwark::store::Store;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const QUEUE: &str = "bench";
const FETCH_COUNT: usize = 10;

/// A queue actor on a fresh store; dropping it stops the actor and removes the folder.
struct Fixture {
    handle: Option<QueueHandle>,
    join: Option<JoinHandle<bulwark::queue::QueueExit>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bulwark-queue-bench-")
            .tempdir()
            .expect("temp dir");
        let store = Store::open(&dir.path().join("data")).expect("store");
        let kek = bulwark::vault::keyring::Kek::new("bench", &[7; 32], None);
        let keys = bulwark::vault::VaultKeys::fixed(
            bulwark::vault::KeyRing::new(vec![kek], None).expect("ring"),
        );
        let (handle, join) =
            QueueHandle::spawn(store, keys, QueueConfig::default()).expect("queue");
        Self {
            handle: Some(handle),
            join: Some(join),
            _dir: dir,
        }
    }

    fn handle(&self) -> QueueHandle {
        self.handle.clone().expect("handle")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.handle = None;
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

/// A job like the load bench's: about 200 bytes of args.
fn new_job() -> NewJob {
    let json = serde_json::json!({
        "type": "bench.job",
        "args": [{"seq": 12_345, "t": 1_234_567_890_123_u64, "pad": "x".repeat(155)}],
        "options": {"queue": QUEUE},
    });
    parse_new_job(&json, &EnvelopeRules::default(), Clock::system().now_ms()).expect("valid job")
}

/// `total` enqueues from `senders` concurrent tasks; returns how long they took.
async fn enqueue_many(handle: &QueueHandle, job: &NewJob, senders: usize, total: u64) -> Duration {
    let total = usize::try_from(total).expect("iteration count");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders.min(total.max(1)))
        .map(|_| {
            let handle = handle.clone();
            let job = job.clone();
            let next = next.clone();
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    handle
                        .enqueue(job.clone(), None, None)
                        .await
                        .expect("enqueue");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("sender");
    }
    started.elapsed()
}

/// `workers` tasks fetch and ack until `total` jobs are acked; returns how long they took.
async fn drain(handle: &QueueHandle, workers: usize, total: u64) -> Duration {
    let total = usize::try_from(total).expect("iteration count");
    let acked = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let handle = handle.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                let holder = Holder {
                    principal: "bench".into(),
                    worker_id: Some(format!("w{w}")),
                    tenant: None,
                };
                let deadline = Instant::now() + Duration::from_secs(120);
                while acked.load(Ordering::Relaxed) < total && Instant::now() < deadline {
                    let jobs = handle
                        .fetch(FetchRequest {
                            queues: vec![QUEUE.into()],
                            count: FETCH_COUNT,
                            holder: holder.clone(),
                            visibility_timeout_ms: None,
                            max_running: 0,
                            max_tenant_active: 0,
                        })
                        .await
                        .expect("fetch");
                    if jobs.is_empty() {
                        break;
                    }
                    for job in jobs {
                        handle
                            .ack(AckRequest {
                                id: job.id,
                                holder: holder.clone(),
                                attempt: None,
                                result: None,
                            })
                            .await
                            .expect("ack");
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("worker");
    }
    assert_eq!(acked.load(Ordering::Relaxed), total, "drained every job");
    started.elapsed()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn enqueue(c: &mut Criterion) {
    let rt = runtime();
    let job = new_job();
    let mut group = c.benchmark_group("enqueue");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
    for senders in [1usize, 16, 256] {
        let fixture = Fixture::new();
        let handle = fixture.handle();
        group.bench_with_input(BenchmarkId::from_parameter(senders), &senders, |b, &n| {
            b.iter_custom(|iters| rt.block_on(enqueue_many(&handle, &job, n, iters)));
        });
        drop(handle);
        drop(fixture);
    }
    group.finish();
}

fn fetch_ack(c: &mut Criterion) {
    let rt = runtime();
    let job = new_job();
    let mut group = c.benchmark_group("fetch_ack");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
    for workers in [1usize, 8, 64] {
        let fixture = Fixture::new();
        let handle = fixture.handle();
        group.bench_with_input(BenchmarkId::from_parameter(workers), &workers, |b, &n| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    // Fill outside the measurement, with many senders so it is quick.
                    enqueue_many(&handle, &job, 256, iters).await;
                    drain(&handle, n, iters).await
                })
            });
        });
        drop(handle);
        drop(fixture);
    }
    group.finish();
}

criterion_group!(benches, enqueue, fetch_ack);
criterion_main!(benches);
