//! Audit burst: paces events into the real audit writer at a fixed rate (default 10,000/s for
//! 3 s) from several tasks, then stops the writer and verifies the file: every event must be
//! there, chained, in order. Also measures durable `record` latency while the burst runs.
//!
//! `cargo bench --bench audit_burst -- [--rate N] [--secs S]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bulwark::audit::{record, AuditConfig, AuditEvent, AuditHandle, Outcome};
use ring::hmac;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let rate = arg("--rate", 10_000);
    let secs = arg("--secs", 3);
    let tasks = 8u64;
    let dir = tempfile::tempdir().unwrap();
    let config = AuditConfig::at(dir.path().join("audit.log"));
    let key_bytes = [42u8; 32];
    let (audit, thread) = AuditHandle::spawn(
        &config,
        hmac::Key::new(hmac::HMAC_SHA256, &key_bytes),
        None,
        bulwark::clock::Clock::system(),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let total = rate * secs;
    let per_task = total / tasks;
    let started = Instant::now();
    let latencies = runtime.block_on(async {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let audit = audit.clone();
            handles.push(tokio::spawn(async move {
                let interval = Duration::from_secs_f64(tasks as f64 / rate as f64);
                let begin = Instant::now();
                let mut durable = Vec::new();
                for n in 0..per_task {
                    let due = begin + interval.mul_f64(n as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        tokio::time::sleep(wait).await;
                    }
                    let event = AuditEvent::new("bench.event", Outcome::Success)
                        .detail("task", t)
                        .detail("n", n);
                    // One event in 100 waits for the disk, as an admin operation would.
                    if n % 100 == 0 {
                        let sent = Instant::now();
                        audit.record(event).await.unwrap();
                        durable.push(sent.elapsed());
                    } else {
                        audit.emit(event).await;
                    }
                }
                durable
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all
    });
    let sent_for = started.elapsed();
    drop(audit);
    thread.join().unwrap();
    let written_for = started.elapsed();

    let log = std::fs::read(&config.log_file).unwrap();
    let head: record::Head =
        serde_json::from_slice(&std::fs::read(&config.head_file).unwrap()).unwrap();
    let verified = record::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, &key_bytes),
        &log,
        Some(&head),
    )
    .expect("the burst log verifies");
    let mut latencies = latencies;
    latencies.sort();
    let sent = per_task * tasks;
    println!("audit burst: {sent} events at {rate}/s target from {tasks} tasks");
    println!(
        "  sent in {:.2} s ({:.0} events/s), all written in {:.2} s",
        sent_for.as_secs_f64(),
        sent as f64 / sent_for.as_secs_f64(),
        written_for.as_secs_f64()
    );
    println!(
        "  written and verified: {} records (lost: {})",
        verified.records,
        sent - verified.records
    );
    println!(
        "  durable record() latency during the burst: p50 {:.2} ms, p99 {:.2} ms ({} samples)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len()
    );
    assert_eq!(verified.records, sent, "audit records were lost");
}
