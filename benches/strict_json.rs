//! What the strict body parser (duplicate keys, nesting depth, UTF-8) costs next to plain
//! `serde_json::from_slice`, on a typical small job envelope and on one just under 1 MiB.
//!
//! `cargo bench --bench strict_json`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};

use bulwark::http::strict_json;

fn bodies() -> Vec<(&'static str, Vec<u8>)> {
    let small = json!({
        "type": "email.send",
        "args": [{"to": "someone@example.com", "subject": "hello", "n": 3}],
        "meta": {"trace_id": "abc123", "tenant_id": "acme"},
        "options": {"queue": "emails", "priority": 5, "retry": {"max_attempts": 5}}
    });
    let rows: Vec<Value> = (0..17_000)
        .map(|i| json!({"id": i, "name": format!("row-{i}"), "tags": ["a", "b"], "v": 1.5}))
        .collect();
    let large = json!({"type": "bulk.import", "args": [rows]});
    let large = serde_json::to_vec(&large).unwrap();
    assert!(
        large.len() > 900_000 && large.len() < 1024 * 1024,
        "{}",
        large.len()
    );
    vec![
        ("small", serde_json::to_vec(&small).unwrap()),
        ("large", large),
    ]
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("body_parse");
    for (name, body) in bodies() {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("serde_json", name), &body, |b, body| {
            b.iter(|| serde_json::from_slice::<Value>(body).unwrap());
        });
        group.bench_with_input(BenchmarkId::new("strict", name), &body, |b, body| {
            b.iter(|| strict_json::parse(body, 32).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
