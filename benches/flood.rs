//! Flood benchmark: does a flood of invalid credentials from one address hurt everyone else?
//!
//! Starts the real server (the release binary Cargo built for the bench) with the default
//! limits, then runs two phases of the same legitimate load: clients on 127.0.0.1 each sending
//! an authenticated `GET /ojs/v1/queues` every 20 ms, measuring every latency. The first phase
//! runs alone; in the second, flooders bound to 127.0.0.2 (Linux routes all of 127/8 to
//! loopback) send requests with a well-formed API key whose secret is wrong, as fast as the
//! server answers. It prints p50/p99 of both phases, what the flood got back, and how many
//! argon2 verifications ran (`bulwark_api_key_verifications_total`) against what the
//! failed-authentication budget (`[auth.throttle]`, 20 at once then 30 a minute per address)
//! allows.
//!
//! `cargo bench --bench flood -- [--secs N] [--clients N] [--flooders N]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/integration/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ServerOptions, TestServer};

struct Opts {
    secs: u64,
    clients: usize,
    flooders: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        secs: 10,
        clients: 4,
        flooders: 8,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = || args.get(i + 1).and_then(|v| v.parse().ok());
        match args[i].as_str() {
            "--secs" => o.secs = value().expect("--secs N"),
            "--clients" => o.clients = value().map(|v: u64| v as usize).expect("--clients N"),
            "--flooders" => o.flooders = value().map(|v: u64| v as usize).expect("--flooders N"),
            // `cargo bench` passes --bench.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn client(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// The legitimate load for `secs`: every latency, and how many requests did not get 200.
async fn legit(server: &TestServer, opts: &Opts) -> (Vec<Duration>, usize) {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(0usize));
    let stop = Instant::now() + Duration::from_secs(opts.secs);
    let mut tasks = Vec::new();
    for _ in 0..opts.clients {
        let c = client("127.0.0.1");
        let url = server.url("/ojs/v1/queues");
        let auth = server.auth();
        let latencies = latencies.clone();
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < stop {
                tick.tick().await;
                let started = Instant::now();
                let ok = match c.get(&url).header("Authorization", &auth).send().await {
                    Ok(res) => {
                        let ok = res.status() == 200;
                        let _ = res.bytes().await;
                        ok
                    }
                    Err(_) => false,
                };
                let took = started.elapsed();
                latencies.lock().unwrap().push(took);
                if !ok {
                    *failures.lock().unwrap() += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut all = std::mem::take(&mut *latencies.lock().unwrap());
    all.sort();
    let failed = *failures.lock().unwrap();
    (all, failed)
}

async fn verifications(server: &TestServer) -> u64 {
    let text = client("127.0.0.1")
        .get(server.url("/metrics"))
        .header("Authorization", server.auth())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("bulwark_api_key_verifications_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn report(name: &str, latencies: &[Duration], failed: usize) {
    println!(
        "{name:<10} requests {:>6}  failed {failed:>4}  p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}",
        latencies.len(),
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let opts = opts();
    let server = TestServer::start(ServerOptions::default());
    // The legitimate key verifies once (argon2) and is cached from then on.
    let before_all = {
        let _ = legit(
            &server,
            &Opts {
                secs: 1,
                clients: 1,
                flooders: 0,
            },
        )
        .await;
        verifications(&server).await
    };
    println!(
        "flood bench: {} legitimate clients from 127.0.0.1 (one request per 20 ms each), {} \
         flooders from 127.0.0.2, {} s per phase, default limits",
        opts.clients, opts.flooders, opts.secs
    );
    let (quiet, quiet_failed) = legit(&server, &opts).await;
    report("no flood", &quiet, quiet_failed);

    let mut wrong = server.admin_key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    let running = Arc::new(AtomicBool::new(true));
    let statuses = Arc::new(Mutex::new(BTreeMap::<u16, u64>::new()));
    let mut flood = Vec::new();
    for _ in 0..opts.flooders {
        let c = client("127.0.0.2");
        let url = server.url("/ojs/v1/queues");
        let auth = format!("Bearer {wrong}");
        let running = running.clone();
        let statuses = statuses.clone();
        flood.push(tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let status = match c.get(&url).header("Authorization", &auth).send().await {
                    Ok(res) => {
                        let s = res.status().as_u16();
                        let _ = res.bytes().await;
                        s
                    }
                    Err(_) => 0,
                };
                *statuses.lock().unwrap().entry(status).or_default() += 1;
            }
        }));
    }
    let flood_started = Instant::now();
    let (noisy, noisy_failed) = legit(&server, &opts).await;
    running.store(false, Ordering::Relaxed);
    for t in flood {
        t.await.unwrap();
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();
    report("flood", &noisy, noisy_failed);
    let statuses = statuses.lock().unwrap().clone();
    let sent: u64 = statuses.values().sum();
    println!(
        "flood: {sent} requests in {flood_secs:.1} s ({:.0}/s), answers by status {statuses:?}",
        sent as f64 / flood_secs
    );
    let ran = verifications(&server).await - before_all;
    let allowed = 20.0 + 30.0 * flood_secs / 60.0;
    println!(
        "argon2 verifications during the flood: {ran} (the budget allows at most {:.0}: 20 at once, \
         then 30 a minute)",
        allowed.floor()
    );
    let p99_quiet = percentile(&quiet, 0.99);
    let p99_noisy = percentile(&noisy, 0.99);
    println!(
        "p99 with flood / without: {:.2}x",
        p99_noisy.as_secs_f64() / p99_quiet.as_secs_f64().max(1e-9)
    );
}
