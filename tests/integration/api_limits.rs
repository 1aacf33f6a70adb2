//! Abuse resistance from outside: rate limits at the limit and one over (with the 429 headers,
//! and the `X-RateLimit-*` headers on successes too), the per-address connection limit, a
//! slowloris request head, the idle keep-alive cut, the long-poll cap, abuse detection, and
//! limits reloaded on SIGHUP without a restart. Each test runs the real server with small
//! limits.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::client::{eventually, Client, PATIENCE};
use common::{ServerOptions, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn start(extra: &str) -> TestServer {
    TestServer::start(ServerOptions {
        extra_toml: extra.to_string(),
        ..ServerOptions::default()
    })
}

/// [`start`], as a process of its own (for signals).
fn start_process(extra: &str) -> TestServer {
    TestServer::start(ServerOptions {
        extra_toml: extra.to_string(),
        process: true,
        ..ServerOptions::default()
    })
}

/// A server whose `[server]` table (written by the common config) gets `keys` too: the file is
/// rewritten and the server restarted on it.
fn start_with_server_keys(keys: &str) -> TestServer {
    let mut server = start("");
    let text = std::fs::read_to_string(server.config_path()).unwrap();
    let text = text.replacen("[server]\n", &format!("[server]\n{keys}"), 1);
    std::fs::write(server.config_path(), text).unwrap();
    server.restart();
    server
}

fn addr(server: &TestServer) -> SocketAddr {
    server
        .base_url
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn job(queue: &str) -> Value {
    json!({"type": "limits.test", "args": [1], "options": {"queue": queue}})
}

#[tokio::test]
async fn a_principal_gets_its_burst_with_headers_and_the_next_request_gets_429() {
    let server = start_process("[limits.rate]\nenqueue = { per_second = 0.01, burst = 3 }\n");
    for left in (0..3).rev() {
        let res = server.admin_client().enqueue(job("rl")).await;
        assert_eq!(res.status, StatusCode::CREATED);
        assert_eq!(res.header_u64("x-ratelimit-limit"), 3);
        assert_eq!(res.header_u64("x-ratelimit-remaining"), left);
        let reset = res.header_u64("x-ratelimit-reset");
        assert!(reset >= unix_now().saturating_sub(1), "reset {reset}");
    }
    let res = server.admin_client().enqueue(job("rl")).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after = res.header_u64("retry-after");
    assert!((1..=101).contains(&retry_after), "{retry_after}");
    assert_eq!(res.header_u64("x-ratelimit-limit"), 3);
    assert_eq!(res.header_u64("x-ratelimit-remaining"), 0);
    assert!(res.header_u64("x-ratelimit-reset") >= unix_now() + retry_after - 2);
    let body = res.json().clone();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["retryable"], true);
    assert_eq!(body["error"]["details"]["scope"], "principal_enqueue");
    // Nothing was stored for the refused request.
    let queues: Value = server
        .client()
        .get(server.url("/ojs/v1/queues"))
        .header("Authorization", server.auth())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rl = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "rl")
        .cloned()
        .unwrap_or_default();
    assert_eq!(rl["counts"]["available"], 3, "{queues}");
    // Other operation classes keep their own budget (the listing above passed).
    let record = server
        .wait_audit_event("rate_limit.exceeded", |_| true)
        .await;
    assert_eq!(record["detail"]["scope"], "principal_enqueue");
    assert!(server
        .admin_client()
        .metrics_text()
        .await
        .contains("bulwark_rate_limited_total{scope=\"principal_enqueue\"} 1"));
}

#[tokio::test]
async fn the_per_address_budget_runs_before_authentication() {
    let server = start("[limits.rate]\nip = { per_second = 0.01, burst = 4 }\n");
    let client = Client::anonymous(&server);
    for left in (0..4).rev() {
        // No credential: the answer is 401, after the address budget was spent.
        let res = client.queues().await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
        assert_eq!(res.header_u64("x-ratelimit-limit"), 4);
        assert_eq!(res.header_u64("x-ratelimit-remaining"), left);
    }
    let res = client.with_key(&server.admin_key).queues().await;
    assert_eq!(
        res.status,
        StatusCode::TOO_MANY_REQUESTS,
        "even a valid key waits"
    );
    assert!(res.headers.contains_key("retry-after"));
    let body = res.json().clone();
    assert_eq!(body["error"]["details"]["scope"], "ip");
}

#[tokio::test]
async fn failed_authentication_429s_carry_the_rate_limit_headers() {
    let server = start("[auth.throttle]\nverifications_per_minute = 1\nburst = 2\n");
    // The right key id with a wrong last character: a real argon2 verification each time.
    let mut wrong = server.admin_key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    let client = Client::new(&server, &wrong);
    for _ in 0..2 {
        let res = client.queues().await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    }
    let started = Instant::now();
    let res = client.queues().await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "a refusal before authentication is held back for refusal_delay_ms"
    );
    assert_eq!(res.header_u64("x-ratelimit-limit"), 2);
    assert_eq!(res.header_u64("x-ratelimit-remaining"), 0);
    let retry_after = res.header_u64("retry-after");
    assert!(retry_after >= 1);
    assert!(res.header_u64("x-ratelimit-reset") >= unix_now() + retry_after - 2);

    // Logins have their own budget ([sessions] login_per_minute_per_ip, 5 by default).
    let mut last = None;
    for _ in 0..6 {
        let res = client
            .with_authorization(None)
            .post(
                "/ojs/v1/auth/login",
                json!({"username": "nobody", "password": "not-the-password-1A!", "totp": "000000"}),
            )
            .await;
        last = Some(res);
    }
    let res = last.unwrap();
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.header_u64("x-ratelimit-limit"), 5);
    assert_eq!(res.header_u64("x-ratelimit-remaining"), 0);
    assert!(res.header_u64("retry-after") >= 1);
}

/// Sends one GET on `stream` and reads its answer: (status, the whole head in lowercase).
async fn exchange(stream: &mut TcpStream, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(stream).await
}

async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    (status, head)
}

/// Reads until the server closes the connection; how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
        }
    }
}

async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn connections_at_the_limit_pass_and_the_next_one_gets_429_and_is_closed() {
    let server = start("[limits.connections]\nper_ip = 3\n");
    let to = addr(&server);
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.1", to).await;
        assert_eq!(exchange(&mut s, "/ojs/v1/health").await.0, 200);
        open.push(s);
    }
    let mut over = connect_from("127.0.0.1", to).await;
    let (status, head) = exchange(&mut over, "/ojs/v1/health").await;
    assert_eq!(status, 429);
    assert!(head.contains("connection: close"), "{head}");
    assert!(head.contains("retry-after:"), "{head}");
    closed_within(&mut over, Duration::from_secs(5)).await;
    // Another address has its own count (Linux routes all of 127/8 to loopback).
    let mut other = connect_from("127.0.0.2", to).await;
    assert_eq!(exchange(&mut other, "/ojs/v1/health").await.0, 200);
    // The open connections still work; closing one frees a place.
    assert_eq!(exchange(&mut open[0], "/ojs/v1/health").await.0, 200);
    drop(open.pop());
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut again = connect_from("127.0.0.1", to).await;
        status = exchange(&mut again, "/ojs/v1/health").await.0;
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200);
    assert!(server
        .admin_client()
        .metrics_text()
        .await
        .contains("bulwark_connections_rejected_total{limit=\"per_ip\"}"));
}

#[tokio::test]
async fn a_slowloris_head_is_cut_within_the_head_timeout() {
    let server = start_with_server_keys("request_head_timeout_secs = 2\n");
    let to = addr(&server);
    let mut slow = connect_from("127.0.0.1", to).await;
    slow.write_all(b"GET /ojs/v1/health HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let (mut reader, mut writer) = slow.into_split();
    // One header line every half second, never the blank line that ends the head.
    let trickle = tokio::spawn(async move {
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if writer
                .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut got)).await;
    let elapsed = started.elapsed();
    trickle.abort();
    assert!(closed.is_ok(), "the slow head was never cut");
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(5),
        "cut after {elapsed:?}"
    );
    let answer = String::from_utf8_lossy(&got);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // A normal client is unaffected.
    let mut fast = connect_from("127.0.0.1", to).await;
    assert_eq!(exchange(&mut fast, "/ojs/v1/health").await.0, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = start_with_server_keys("keep_alive_secs = 1\n");
    let mut s = connect_from("127.0.0.1", addr(&server)).await;
    let (status, head) = exchange(&mut s, "/ojs/v1/health").await;
    assert_eq!(status, 200);
    assert!(!head.contains("connection: close"), "{head}");
    let after = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(after < Duration::from_secs(4), "closed after {after:?}");
}

/// A fetch, and how long it took to be answered.
async fn fetch(api: &Client, body: Value) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let res = api.fetch_with(body).await;
    (res.status, res.json().clone(), started.elapsed())
}

#[tokio::test]
async fn a_long_poll_fetch_is_capped_and_answers_as_soon_as_a_job_arrives() {
    let server = start("[limits]\nmax_fetch_wait_ms = 1500\n");
    // Asked to wait a minute on an empty queue: answered empty at the cap.
    let (status, body, took) = fetch(
        &server.admin_client(),
        json!({"queues": ["lp"], "wait_ms": 60000}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"jobs": []}));
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // Without wait_ms, no wait at all.
    let (_, body, took) = fetch(&server.admin_client(), json!({"queues": ["lp"]})).await;
    assert_eq!(body, json!({"jobs": []}));
    assert!(took < Duration::from_millis(1400), "{took:?}");
    // A job enqueued during the wait is handed out.
    let producer = {
        let client = server.admin_client();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.enqueue(job("lp")).await.status
        })
    };
    let (status, body, _) = fetch(
        &server.admin_client(),
        json!({"queues": ["lp"], "wait_ms": 1500}),
    )
    .await;
    assert_eq!(producer.await.unwrap(), StatusCode::CREATED);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1, "{body}");
    let (status, body, _) = fetch(
        &server.admin_client(),
        json!({"queues": ["lp"], "wait_ms": "soon"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["details"]["field"], "wait_ms");
}

#[tokio::test]
async fn a_submission_spike_is_throttled_audited_and_counted() {
    let server = start_process("[limits.abuse]\nspike_floor_per_sec = 5\ncooldown_secs = 60\n");
    let mut statuses = Vec::new();
    let mut refusal = None;
    for _ in 0..40 {
        let res = server.admin_client().enqueue(job("spike")).await;
        statuses.push(res.status);
        if res.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(res.header_u64("retry-after") >= 50);
            refusal = Some(res.json().clone());
            break;
        }
    }
    assert!(
        statuses[..5].iter().all(|s| *s == StatusCode::CREATED),
        "the floor lets a first burst through: {statuses:?}"
    );
    let refusal = refusal.expect("a spike is throttled");
    assert_eq!(refusal["error"]["code"], "rate_limited");
    assert_eq!(refusal["error"]["details"]["pattern"], "spike");
    // Throttled for the cool-down, even at a slow pace.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        server.admin_client().enqueue(job("spike")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let record = server.wait_audit_event("abuse.spike", |_| true).await;
    assert_eq!(record["detail"]["action"], "throttled");
    assert_eq!(record["outcome"], "failure");
    assert!(server
        .admin_client()
        .metrics_text()
        .await
        .contains("bulwark_abuse_events_total{pattern=\"spike\"} 1"));
}

#[tokio::test]
async fn payload_floods_priority_abuse_and_retry_storms_are_detected() {
    let server = start(
        "[limits.abuse]\nspike_floor_per_sec = 100000\nlarge_payload_bytes = 1000\n\
         large_payload_count = 2\npriority_flood_count = 3\nretry_storm_count = 3\n",
    );
    // Large payloads: two pass (the second is the flood), the third large one is refused,
    // small ones still pass.
    let large =
        json!({"type": "limits.big", "args": ["x".repeat(2000)], "options": {"queue": "big"}});
    assert_eq!(
        server.admin_client().enqueue(large.clone()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        server.admin_client().enqueue(large.clone()).await.status,
        StatusCode::CREATED
    );
    let res = server.admin_client().enqueue(large).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    let body = res.json().clone();
    assert_eq!(body["error"]["details"]["pattern"], "large_payloads");
    assert_eq!(
        server.admin_client().enqueue(job("big")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        server
            .wait_audit_event("abuse.large_payloads", |_| true)
            .await["detail"]["action"],
        "large_payloads_refused"
    );

    // Priority abuse: the third top-priority job in a row and the next are demoted to 0; a job
    // below the top keeps its priority.
    let mut priorities = Vec::new();
    for p in [100, 100, 100, 100, 50] {
        let res = server.admin_client().enqueue(json!({"type": "limits.prio", "args": [], "options": {"queue": "prio", "priority": p}}))
        .await;
        assert_eq!(res.status, StatusCode::CREATED);
        let body = res.json().clone();
        priorities.push(body["job"]["priority"].as_i64().unwrap());
    }
    assert_eq!(priorities, [100, 100, 0, 0, 50]);
    let record = server
        .wait_audit_event("abuse.priority_flood", |_| true)
        .await;
    assert_eq!(record["detail"]["action"], "demoted");
    assert_eq!(record["detail"]["observed"], 3);

    // Retry storm: three nacks.
    for _ in 0..3 {
        assert_eq!(
            server.admin_client().enqueue(job("storm")).await.status,
            StatusCode::CREATED
        );
    }
    let (_, fetched, _) = fetch(
        &server.admin_client(),
        json!({"queues": ["storm"], "count": 3}),
    )
    .await;
    for j in fetched["jobs"].as_array().unwrap() {
        let res = server
            .admin_client()
            .post(
                "/ojs/v1/workers/nack",
                json!({"job_id": j["id"], "error": {"code": "boom", "message": "failed"}}),
            )
            .await;
        assert_eq!(res.status, StatusCode::OK);
    }
    let record = server.wait_audit_event("abuse.retry_storm", |_| true).await;
    assert_eq!(record["detail"]["observed"], 3);
    let metrics = server.admin_client().metrics_text().await;
    for pattern in ["large_payloads", "priority_flood", "retry_storm"] {
        assert!(
            metrics.contains(&format!(
                "bulwark_abuse_events_total{{pattern=\"{pattern}\"}}"
            )),
            "{pattern}"
        );
    }
}

fn sighup(server: &TestServer) {
    let status = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(server.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn limits_are_reloaded_on_sighup_and_a_bad_file_keeps_the_old_ones() {
    let server = start_process("[limits.rate]\nenqueue = { per_second = 0.01, burst = 2 }\n");
    for _ in 0..2 {
        assert_eq!(
            server.admin_client().enqueue(job("re")).await.status,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        server.admin_client().enqueue(job("re")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let good = std::fs::read_to_string(server.config_path())
        .unwrap()
        .replace("burst = 2", "burst = 50");
    std::fs::write(server.config_path(), &good).unwrap();
    sighup(&server);
    let record = server.wait_audit_event("config.reloaded", |_| true).await;
    assert!(record["detail"]["sections"]
        .as_str()
        .unwrap()
        .starts_with("limits"));
    let res = server.admin_client().enqueue(job("re")).await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(res.header_u64("x-ratelimit-limit"), 50);

    // An invalid file: audited, and the limits in force stay.
    std::fs::write(
        server.config_path(),
        good.replace("burst = 50", "burst = 0"),
    )
    .unwrap();
    sighup(&server);
    let record = server
        .wait_audit_event("config.reload_failed", |_| true)
        .await;
    assert_eq!(record["outcome"], "failure");
    let res = server.admin_client().enqueue(job("re")).await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(res.header_u64("x-ratelimit-limit"), 50);
    assert!(server.log().contains("the old settings stay"));

    // The request rules reload with the limits: a job-type allowlist takes effect at once.
    let listed = format!("{good}\n[validation]\njob_types = [\"listed.*\"]\n");
    std::fs::write(server.config_path(), &listed).unwrap();
    sighup(&server);
    let applied = eventually(PATIENCE, || async {
        let res = server.admin_client().enqueue(job("re")).await;
        (res.status == StatusCode::UNPROCESSABLE_ENTITY).then_some(())
    })
    .await;
    assert!(applied.is_some(), "allowlist not applied");
    // A schema that does not compile keeps the old rules (and limits) whole.
    std::fs::write(
        server.config_path(),
        format!("{listed}\n[validation.schemas]\n\"listed.a\" = \"missing.json\"\n"),
    )
    .unwrap();
    sighup(&server);
    let failures = server.wait_audit_count("config.reload_failed", 2).await;
    assert!(failures.len() >= 2, "no second failure");
    assert_eq!(
        server.admin_client().enqueue(job("re")).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}
