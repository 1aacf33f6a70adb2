//! Durability, proved with SIGKILL: a 201 means the job is on disk, an acknowledged completion
//! is never lost, and jobs claimed but not acknowledged come back after their visibility timeout.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ServerOptions, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const PRODUCERS: usize = 16;

async fn drain_all(server: &TestServer, client: &reqwest::Client, queue: &str) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let res: Value = client
            .post(server.url("/ojs/v1/workers/fetch"))
            .header("Authorization", server.auth())
            // The drain's own leases outlast the drain: on a loaded machine a drain slower
            // than the jobs' visibility timeout would see its own claims come back.
            .json(&json!({"queues": [queue], "count": 100, "worker_id": "drain", "visibility_timeout_ms": 600_000}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let jobs = res["jobs"].as_array().unwrap();
        if jobs.is_empty() {
            return ids;
        }
        ids.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_string()));
    }
}

/// The checks drain every job into `active` with one key and never ack most of them: lift the
/// per-principal running quota, which exists to stop exactly that.
fn drain_options() -> ServerOptions {
    ServerOptions {
        extra_toml: format!(
            "{}[quotas]\nmax_running_jobs_per_principal = 0\n",
            common::UNLIMITED
        ),
        // SIGKILL is the point: a process of its own.
        process: true,
        ..ServerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_enqueue_that_got_201_survives_sigkill_exactly_once() {
    let mut server = TestServer::start(drain_options());
    let confirmed = Arc::new(Mutex::new(Vec::<String>::new()));
    let attempted = Arc::new(Mutex::new(HashSet::<String>::new()));
    let stop_at = Instant::now() + Duration::from_secs(20);
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let client = server.client();
        let url = server.url("/ojs/v1/jobs");
        let auth = server.auth();
        let confirmed = confirmed.clone();
        let attempted = attempted.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            while Instant::now() < stop_at {
                let id = Uuid::now_v7().to_string();
                attempted.lock().unwrap().insert(id.clone());
                let res = client
                    .post(&url)
                    .header("Authorization", &auth)
                    .json(&json!({"id": id, "type": "durable.job", "args": [p, n], "options": {"queue": "durable"}}))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == StatusCode::CREATED => confirmed.lock().unwrap().push(id),
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    // The server was killed under us.
                    Err(_) => break,
                }
                n += 1;
            }
        }));
    }
    // Let the load run, then kill the server in the middle of it.
    while confirmed.lock().unwrap().len() < 2000 {
        assert!(Instant::now() < stop_at, "load did not reach 2000 jobs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let confirmed: Vec<String> = confirmed.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();

    server.restart();
    let client = server.client();
    let found = drain_all(&server, &client, "durable").await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &found {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = confirmed
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} confirmed jobs lost, e.g. {:?}",
        missing.len(),
        confirmed.len(),
        &missing[..missing.len().min(5)]
    );
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "jobs present more than once: {duplicated:?}"
    );
    let strangers: Vec<_> = found.iter().filter(|id| !attempted.contains(*id)).collect();
    assert!(strangers.is_empty(), "jobs nobody sent: {strangers:?}");
    eprintln!(
        "confirmed {} jobs before SIGKILL, {} found after restart ({} in flight at the kill)",
        confirmed.len(),
        found.len(),
        found.len() - confirmed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_completions_survive_sigkill_and_claimed_jobs_come_back() {
    const JOBS: usize = 3000;
    const VISIBILITY_MS: u64 = 2000;
    let mut server = TestServer::start(drain_options());
    let client = server.client();
    let mut all = HashSet::new();
    for chunk in 0..JOBS / 100 {
        let mut pending = Vec::new();
        for i in 0..100 {
            let c = client.clone();
            let url = server.url("/ojs/v1/jobs");
            let auth = server.auth();
            pending.push(tokio::spawn(async move {
                let res: Value = c
                    .post(&url)
                    .header("Authorization", auth)
                    .json(&json!({"type": "durable.work", "args": [chunk, i], "options": {"queue": "work", "visibility_timeout_ms": VISIBILITY_MS}}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                res["job"]["id"].as_str().unwrap().to_string()
            }));
        }
        for p in pending {
            all.insert(p.await.unwrap());
        }
    }

    let acked = Arc::new(Mutex::new(HashSet::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..8 {
        let client = server.client();
        let base = server.base_url.clone();
        let auth = server.auth();
        let acked = acked.clone();
        workers.push(tokio::spawn(async move {
            let worker_id = format!("w{w}");
            loop {
                let res = client
                    .post(format!("{base}/ojs/v1/workers/fetch"))
                    .header("Authorization", &auth)
                    .json(&json!({"queues": ["work"], "count": 5, "worker_id": worker_id}))
                    .send()
                    .await;
                let Ok(res) = res else { return };
                let Ok(body) = res.json::<Value>().await else {
                    return;
                };
                let Some(jobs) = body["jobs"].as_array() else {
                    return;
                };
                if jobs.is_empty() {
                    return;
                }
                // Ack all but every fifth job, which stays claimed when the server dies.
                for (i, job) in jobs.iter().enumerate() {
                    let id = job["id"].as_str().unwrap().to_string();
                    if i == 4 {
                        continue;
                    }
                    let res = client
                        .post(format!("{base}/ojs/v1/workers/ack"))
                        .header("Authorization", &auth)
                        .json(&json!({"job_id": id, "worker_id": worker_id}))
                        .send()
                        .await;
                    match res {
                        Ok(r) if r.status() == StatusCode::OK => {
                            acked.lock().unwrap().insert(id);
                        }
                        Ok(r) => panic!("ack answered {}", r.status()),
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < JOBS / 3 {
        assert!(Instant::now() < deadline, "workers made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() < JOBS,
        "the kill came too late to test anything"
    );

    server.restart();
    let client = server.client();
    // Every acknowledged completion is still completed.
    let mut lost = Vec::new();
    for id in &acked {
        let job: Value = client
            .get(server.url(&format!("/ojs/v1/jobs/{id}")))
            .header("Authorization", server.auth())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["job"]["state"] != "completed" {
            lost.push((id.clone(), job["job"]["state"].clone()));
        }
    }
    assert!(
        lost.is_empty(),
        "acknowledged completions lost: {:?}",
        &lost[..lost.len().min(5)]
    );

    // After the visibility timeout, everything not completed can be fetched again; nothing is
    // missing and no completed job is delivered twice.
    tokio::time::sleep(Duration::from_millis(VISIBILITY_MS + 1200)).await;
    let redelivered = drain_all(&server, &client, "work").await;
    let redelivered_set: HashSet<String> = redelivered.iter().cloned().collect();
    assert_eq!(
        redelivered_set.len(),
        redelivered.len(),
        "a job was delivered twice"
    );
    assert!(
        redelivered_set.is_disjoint(&acked),
        "an acknowledged job was delivered again"
    );
    let covered: HashSet<String> = acked.union(&redelivered_set).cloned().collect();
    // Jobs whose ack was in flight at the kill may be completed without our knowing it.
    let unaccounted: Vec<&String> = all.difference(&covered).collect();
    for id in &unaccounted {
        let job: Value = client
            .get(server.url(&format!("/ojs/v1/jobs/{id}")))
            .header("Authorization", server.auth())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            job["job"]["state"], "completed",
            "job {id} is neither completed nor back in the queue"
        );
    }
    assert!(
        unaccounted.len() <= 8 * 5,
        "{} jobs unaccounted for",
        unaccounted.len()
    );
    eprintln!(
        "{} acked before SIGKILL, {} back in the queue after the visibility timeout, {} completed with their ack in flight",
        acked.len(),
        redelivered.len(),
        unaccounted.len()
    );
}
