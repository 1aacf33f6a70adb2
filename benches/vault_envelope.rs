//! The cost of envelope encryption per job, as the queue pays it when it writes and reads a job
//! record: a fresh data key wrapped by the KEK plus the sealed args (`seal`), and the unwrap
//! plus decryption of every sealed field (`open`), for small, 1 KiB and 64 KiB args. The
//! `plain` lines encode and decode the same record without encryption, for comparison.
//!
//! `cargo bench --bench vault_envelope`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;

use bulwark::clock::Clock;
use bulwark::job::envelope::{parse_new_job, EnvelopeRules};
use bulwark::job::{Job, JobId};
use bulwark::store::codec;
use bulwark::vault::keyring::Kek;
use bulwark::vault::sealed::{open_job, seal_job};
use bulwark::vault::KeyRing;

fn job(args_bytes: usize) -> Job {
    let text = "x".repeat(args_bytes);
    let body = json!({"type": "bench.job", "args": [text], "meta": {"trace_id": "abc123"},
        "options": {"queue": "bench"}});
    let rules = EnvelopeRules {
        ..EnvelopeRules::default()
    };
    let clock = Clock::system();
    let new = parse_new_job(&body, &rules, clock.now_ms()).unwrap();
    Job::from_new(
        new,
        JobId::generate(),
        Some("acme".into()),
        None,
        1,
        clock.now_ms(),
    )
}

fn bench(c: &mut Criterion) {
    let ring = KeyRing::new(vec![Kek::new("bench", &[7; 32], None)], None).unwrap();
    let mut group = c.benchmark_group("vault_envelope");
    for (name, size) in [("small", 16), ("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let job = job(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", name), &job, |b, job| {
            b.iter(|| seal_job(&ring, job).unwrap());
        });
        let sealed = seal_job(&ring, &job).unwrap();
        group.bench_with_input(BenchmarkId::new("open", name), &sealed, |b, bytes| {
            b.iter(|| open_job(&ring, bytes).unwrap());
        });
        let opened = open_job(&ring, &sealed).unwrap();
        group.bench_with_input(BenchmarkId::new("reseal", name), &opened, |b, job| {
            b.iter(|| seal_job(&ring, job).unwrap());
        });
        group.bench_with_input(BenchmarkId::new("plain_encode", name), &job, |b, job| {
            b.iter(|| codec::encode(job).unwrap());
        });
        let plain = codec::encode(&job).unwrap();
        group.bench_with_input(
            BenchmarkId::new("plain_decode", name),
            &plain,
            |b, bytes| {
                b.iter(|| codec::decode::<Job>(bytes).unwrap());
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
