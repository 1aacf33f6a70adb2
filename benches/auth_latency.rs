//! Authentication latency against the real server (release build, loopback, one request at a
//! time so no queueing hides in the figures):
//!
//! - a key this process already verified (the cache: one HMAC),
//! - a key's first request (one argon2id verification),
//! - a well-formed key with an unknown id, and one with a known id and a wrong secret (both must
//!   cost the same argon2 work, or the difference would tell an attacker which ids exist).
//!
//! `cargo bench --bench auth_latency`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CACHED: usize = 2000;
const FRESH: usize = 100;

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
    admin: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let config = p.join("bulwark.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = {:?}\n[secrets]\ndir = {:?}\n\
             [auth.throttle]\nverifications_per_minute = 1000000\nburst = 1000000\n\
             [limits.rate]\n\
             global = {{ per_second = 1000000000, burst = 1000000 }}\n\
             ip = {{ per_second = 1000000000, burst = 1000000 }}\n\
             tenant = {{ per_second = 1000000000, burst = 1000000 }}\n\
             other = {{ per_second = 1000000000, burst = 1000000 }}\n",
            p.join("data").display().to_string(),
            p.join("secrets").display().to_string()
        ),
    )
    .unwrap();
    let addr_file = p.join("addr");
    let child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--addr-file")
        .arg(&addr_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            if a.ends_with('\n') {
                break format!("http://{}", a.trim());
            }
        }
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let admin = std::fs::read_to_string(p.join("secrets").join("bootstrap-admin.key"))
        .unwrap()
        .trim()
        .to_string();
    Server {
        child,
        _dir: dir,
        url,
        admin,
    }
}

fn pct(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

fn report(name: &str, v: &[Duration]) {
    println!(
        "{name:<34} n={:<5} p50 {:>9.3} ms  p99 {:>9.3} ms",
        v.len(),
        pct(v.to_vec(), 0.5).as_secs_f64() * 1e3,
        pct(v.to_vec(), 0.99).as_secs_f64() * 1e3
    );
}

async fn timed(client: &reqwest::Client, url: &str, key: &str, want: u16) -> Duration {
    let t = Instant::now();
    let res = client
        .get(format!("{url}/ojs/v1/queues"))
        .header("Authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let _ = res.bytes().await;
    let elapsed = t.elapsed();
    assert_eq!(status, want, "unexpected status");
    elapsed
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = start();
    let client = reqwest::Client::new();
    let url = server.url.clone();

    // Keys made through the admin API (observer: may list queues).
    let mut fresh = Vec::new();
    for i in 0..FRESH {
        let body: Value = client
            .post(format!("{url}/ojs/v1/admin/keys"))
            .header("Authorization", format!("Bearer {}", server.admin))
            .json(&json!({"name": format!("bench-{i}"), "roles": ["observer"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        fresh.push(body["secret"].as_str().unwrap().to_string());
    }

    // Warm the admin key and the connection.
    for _ in 0..50 {
        timed(&client, &url, &server.admin, 200).await;
    }
    let mut cached = Vec::with_capacity(CACHED);
    for _ in 0..CACHED {
        cached.push(timed(&client, &url, &server.admin, 200).await);
    }
    let mut first = Vec::new();
    for key in &fresh {
        first.push(timed(&client, &url, key, 200).await);
    }
    let mut unknown = Vec::new();
    let mut wrong = Vec::new();
    for (i, key) in fresh.iter().enumerate() {
        unknown.push(
            timed(
                &client,
                &url,
                &format!("bwk_live_{:016x}_{}", 0xdead_0000 + i, "A".repeat(43)),
                401,
            )
            .await,
        );
        let mut w = key.clone();
        let last = w.pop().unwrap();
        w.push(if last == 'A' { 'B' } else { 'A' });
        wrong.push(timed(&client, &url, &w, 401).await);
    }
    println!("authenticated GET /ojs/v1/queues, one request at a time, loopback:");
    report("verified key (cache)", &cached);
    report("first request of a key (argon2)", &first);
    report("unknown key id", &unknown);
    report("known id, wrong secret", &wrong);
}
