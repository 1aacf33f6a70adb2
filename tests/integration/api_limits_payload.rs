//! Payload limits and JSON strictness against the real server: each limit at the limit and one
//! over, lying and missing lengths, chunked bodies, slow bodies on a raw socket, nesting,
//! duplicate keys, invalid UTF-8, content types; and the envelope rules (meta keys and values,
//! the job-type allowlist, priority and timeout quotas). No refusal stores anything.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{ServerOptions, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

const BODY_LIMIT: usize = 4096;

fn limited_server() -> TestServer {
    limited(false)
}

/// [`limited_server`], as a process of its own (its metrics count only its own requests).
fn limited_server_process() -> TestServer {
    limited(true)
}

fn limited(process: bool) -> TestServer {
    TestServer::start(ServerOptions {
        extra_toml: "[payload]\nmax_args_bytes = 100\nmax_meta_bytes = 60\nmax_json_depth = 8\n\
                     body_read_timeout_secs = 1\n"
            .into(),
        process,
        ..ServerOptions::default()
    })
    .with_body_limit(BODY_LIMIT)
}

trait WithBodyLimit {
    fn with_body_limit(self, limit: usize) -> Self;
}

impl WithBodyLimit for TestServer {
    /// Restarts the server with `server.max_body_bytes = limit` (the generated config already
    /// has a `[server]` table, so the key is added to it).
    fn with_body_limit(mut self, limit: usize) -> Self {
        let path = self.config_path().to_path_buf();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replacen(
            "[server]\n",
            &format!("[server]\nmax_body_bytes = {limit}\n"),
            1,
        );
        std::fs::write(&path, text).unwrap();
        self.restart();
        self
    }
}

async fn post_raw(
    server: &TestServer,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = server
        .client()
        .post(server.url("/ojs/v1/jobs"))
        .header("Authorization", server.auth())
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn post(server: &TestServer, body: &Value) -> (StatusCode, Value) {
    post_raw(
        server,
        Some("application/json"),
        body.to_string().into_bytes(),
    )
    .await
}

/// Every queue the admin can see, with counts: must not change on a refusal.
async fn queues(server: &TestServer) -> Value {
    server
        .client()
        .get(server.url("/ojs/v1/queues"))
        .header("Authorization", server.auth())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A job body of exactly `size` bytes (padded with spaces inside the object).
fn job_of_size(size: usize) -> Vec<u8> {
    let base = br#"{"type":"pad.job","args":[]}"#;
    assert!(size >= base.len());
    let mut out = base[..base.len() - 1].to_vec();
    out.resize(size - 1, b' ');
    out.push(b'}');
    out
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// Opens a raw connection and sends a request head for `POST /ojs/v1/jobs`.
fn raw_head(server: &TestServer, extra_headers: &str) -> TcpStream {
    let addr = server.base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let head = format!(
        "POST /ojs/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\n{extra_headers}\r\n",
        server.auth()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream
}

/// Reads until the status line and headers are in; returns the status code and the text.
fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(end) = text.find("\r\n\r\n") {
                    // Wait for the body when there is a content length.
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn body_size_at_the_limit_passes_and_one_over_is_413() {
    let server = limited_server_process();
    let (status, body) = post_raw(&server, Some("application/json"), job_of_size(BODY_LIMIT)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let before = queues(&server).await;
    let (status, body) = post_raw(
        &server,
        Some("application/json"),
        job_of_size(BODY_LIMIT + 1),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(code(&body), "payload_too_large");

    // Chunked (no Content-Length): cut at the limit; at the limit it passes.
    let (status, text) = send_chunked(&server, &job_of_size(BODY_LIMIT * 4));
    assert_eq!(status, 413, "{text}");
    let (status, text) = send_chunked(&server, &job_of_size(BODY_LIMIT));
    assert_eq!(status, 201, "{text}");
    let after = queues(&server).await;
    let count = |v: &Value| v["queues"][0]["counts"]["available"].as_u64();
    assert_eq!(count(&after), count(&before).map(|n| n + 1));
    // The refusals are counted.
    let metrics = server
        .client()
        .get(server.url("/metrics"))
        .header("Authorization", server.auth())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("bulwark_limit_refusals_total{code=\"payload_too_large\"} 2"),
        "{metrics}"
    );
}

/// Sends a body with chunked transfer encoding, in chunks of 1 KiB.
fn send_chunked(server: &TestServer, body: &[u8]) -> (u16, String) {
    let mut stream = raw_head(server, "Transfer-Encoding: chunked\r\n");
    for chunk in body.chunks(1024) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(chunk);
        frame.extend_from_slice(b"\r\n");
        // The server may answer and close before the whole body is sent.
        if stream.write_all(&frame).is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    read_response(&mut stream)
}

#[test]
fn a_lying_content_length_is_refused_before_the_body_is_read() {
    let server = limited_server();
    // Declares far more than the limit and sends nothing: refused at once, without waiting
    // for the body (the body-read timeout is 1 s; the answer must come sooner).
    let started = Instant::now();
    let mut stream = raw_head(&server, &format!("Content-Length: {}\r\n", BODY_LIMIT + 1));
    let (status, text) = read_response(&mut stream);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("payload_too_large"));
    assert!(started.elapsed() < Duration::from_millis(900));

    // Declares less than it sends: only the declared bytes are the body, which is then
    // truncated JSON.
    let mut stream = raw_head(&server, "Content-Length: 10\r\n");
    stream.write_all(br#"{"type":"a.b","args":[]}"#).unwrap();
    let (status, text) = read_response(&mut stream);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("invalid_payload"));

    // Declares more than it sends (within the limit) and stalls: the body-read timeout.
    let mut stream = raw_head(&server, "Content-Length: 500\r\n");
    stream.write_all(br#"{"type":"a.b","#).unwrap();
    let started = Instant::now();
    let (status, text) = read_response(&mut stream);
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("request_timeout"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_slowloris_body_is_cut_by_the_body_read_timeout() {
    let server = limited_server();
    let body = br#"{"type":"slow.job","args":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}"#;
    let mut stream = raw_head(&server, &format!("Content-Length: {}\r\n", body.len()));
    stream.set_nonblocking(false).unwrap();
    let started = Instant::now();
    // One byte every 200 ms: the whole body would take about 14 s; the limit is 1 s.
    let writer = {
        let mut w = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in body {
                if w.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let (status, text) = read_response(&mut stream);
    let elapsed = started.elapsed();
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("request_timeout"));
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    drop(stream);
    writer.join().unwrap();
    // Nothing was stored.
    let log = server.log();
    assert!(!log.contains("slow.job"));
}

#[tokio::test]
async fn json_strictness_depth_duplicates_utf8_and_content_types() {
    let server = limited_server();
    let before = queues(&server).await;
    // Depth 8 is the limit: the body object (1) + args array (2) + 6 more levels.
    let nested = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
    let at_limit = format!(r#"{{"type":"deep.ok","args":[{}]}}"#, nested(6));
    let (status, body) = post_raw(&server, Some("application/json"), at_limit.into_bytes()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let over = format!(r#"{{"type":"deep.no","args":[{}]}}"#, nested(7));
    let (status, body) = post_raw(&server, Some("application/json"), over.into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "invalid_payload");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("deeper than 8"));
    assert_eq!(body["error"]["details"]["field"], "/args/0/0/0/0/0/0/0");
    let after_ok = queues(&server).await;

    // (name, content type, body, status, code)
    type Case = (
        &'static str,
        Option<&'static str>,
        Vec<u8>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "duplicate top-level key",
            Some("application/json"),
            br#"{"type":"a.b","type":"c.d","args":[]}"#.to_vec(),
            400,
            "invalid_payload",
        ),
        (
            "duplicate nested key",
            Some("application/json"),
            br#"{"type":"a.b","args":[],"options":{"queue":"x","queue":"y"}}"#.to_vec(),
            400,
            "invalid_payload",
        ),
        (
            "invalid utf-8",
            Some("application/json"),
            b"{\"type\":\"a.b\",\"args\":[\"\xc3\x28\"]}".to_vec(),
            400,
            "invalid_payload",
        ),
        (
            "wrong content type",
            Some("text/plain"),
            br#"{"type":"a.b","args":[]}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "json body without content type",
            None,
            br#"{"type":"a.b","args":[]}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "empty body without content type",
            None,
            Vec::new(),
            400,
            "invalid_payload",
        ),
    ];
    for (name, ct, bytes, status, want) in cases {
        let (got, body) = post_raw(&server, ct, bytes).await;
        assert_eq!(got.as_u16(), status, "{name}: {body}");
        assert_eq!(code(&body), want, "{name}");
    }
    let (_, body) = post_raw(
        &server,
        Some("application/json"),
        br#"{"type":"a.b","args":[],"meta":{"CANARY":1,"CANARY":2}}"#.to_vec(),
    )
    .await;
    assert_eq!(body["error"]["details"]["field"], "/meta/CANARY");
    assert_eq!(queues(&server).await, after_ok);
    assert_ne!(before, after_ok);
}

#[tokio::test]
async fn args_and_meta_limits_at_the_limit_and_one_over() {
    let server = limited_server();
    // `["` + n×"a" + `"]` is n + 4 bytes: 96 a's make exactly 100.
    let args_at = json!({"type": "a.b", "args": ["a".repeat(96)]});
    assert_eq!(post(&server, &args_at).await.0, StatusCode::CREATED);
    let before = queues(&server).await;
    let args_over = json!({"type": "a.b", "args": ["a".repeat(97)]});
    let (status, body) = post(&server, &args_over).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["details"]["field"], "args");
    // `{"k":"` + n + `"}` is n + 8 bytes: 52 make exactly 60.
    let meta_at = json!({"type": "a.b", "args": [], "meta": {"k": "m".repeat(52)}});
    assert_eq!(post(&server, &meta_at).await.0, StatusCode::CREATED);
    let mid = queues(&server).await;
    assert_ne!(before, mid);
    // The manifest declares the limits in force (OJS payload limits §8.1).
    let manifest: Value = server
        .client()
        .get(server.url("/ojs/manifest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let limits = &manifest["capabilities"]["payload_limits"];
    assert_eq!(limits["max_meta_bytes"], 60);
    assert_eq!(limits["max_args_bytes"], 100);
    assert_eq!(limits["max_envelope_bytes"], BODY_LIMIT);
    let meta_over = json!({"type": "a.b", "args": [], "meta": {"k": "m".repeat(53)}});
    let (status, body) = post(&server, &meta_over).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["details"]["field"], "meta");
    assert_eq!(queues(&server).await, mid);
}

#[tokio::test]
async fn meta_keys_and_values_are_checked_without_echo() {
    let server = TestServer::start(ServerOptions::default());
    let ok = json!({"type": "a.b", "args": [], "meta": {"trace.id": "abc", "Run_1-x": [1, "two"]}});
    assert_eq!(post(&server, &ok).await.0, StatusCode::CREATED);
    let before = queues(&server).await;
    for (meta, field) in [
        (json!({"bad key": 1}), "meta"),
        (json!({"k".repeat(129): 1}), "meta"),
        (json!({"CANARY<x>": 1}), "meta"),
        (json!({"note": "line1\nCANARY"}), "meta.note"),
        (json!({"note": "a\rCANARY"}), "meta.note"),
        (json!({"note": {"deep": ["x", "CANARY\n"]}}), "meta.note"),
    ] {
        let (status, body) = post(&server, &json!({"type": "a.b", "args": [], "meta": meta})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
        assert!(!body.to_string().contains("CANARY"), "{body}");
    }
    assert_eq!(queues(&server).await, before);
}

#[tokio::test]
async fn the_job_type_allowlist_and_request_quotas() {
    let server = TestServer::start(ServerOptions {
        extra_toml: "[validation]\njob_types = [\"email.send\", \"reports.*\"]\n\
                     [quotas]\nmax_priority = 10\nmax_timeout_ms = 60000\n"
            .into(),
        ..ServerOptions::default()
    });
    for t in ["email.send", "reports.daily", "reports.daily.eu"] {
        let (status, body) = post(&server, &json!({"type": t, "args": []})).await;
        assert_eq!(status, StatusCode::CREATED, "{t}: {body}");
    }
    let before = queues(&server).await;
    for t in [
        "email.sendx",
        "email",
        "reports",
        "reportsx.daily",
        "other.job",
    ] {
        let (status, body) = post(&server, &json!({"type": t, "args": []})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{t}: {body}");
        assert_eq!(code(&body), "invalid_job_type");
        assert!(!body.to_string().contains(t) || t == "email", "{body}");
    }
    // The refusals are audited (best effort, so allow the writer a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let audit: Value = server
            .client()
            .get(server.url("/ojs/v1/admin/audit?event_type=job.type_refused"))
            .header("Authorization", server.auth())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let records = audit["records"].as_array().unwrap();
        if records.len() == 5 {
            assert!(records.iter().all(|r| r["outcome"] == "failure"));
            break;
        }
        assert!(Instant::now() < deadline, "{audit}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Priority and timeout: at the maximum passes, one over is 422.
    let at =
        json!({"type": "email.send", "args": [], "options": {"priority": 10, "timeout_ms": 60000}});
    assert_eq!(post(&server, &at).await.0, StatusCode::CREATED);
    let mid = queues(&server).await;
    assert_ne!(before, mid);
    for (options, field) in [
        (json!({"priority": 11}), "options.priority"),
        (json!({"timeout_ms": 60001}), "options.timeout_ms"),
    ] {
        let (status, body) = post(
            &server,
            &json!({"type": "email.send", "args": [], "options": options}),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(code(&body), "quota_exceeded");
        assert_eq!(body["error"]["details"]["field"], field);
    }
    assert_eq!(queues(&server).await, mid);
}

#[tokio::test]
async fn args_are_checked_against_the_job_types_schema() {
    let schemas = tempfile::tempdir().unwrap();
    let path = schemas.path().join("email.send.json");
    std::fs::write(
        &path,
        r#"{"type": "array", "prefixItems": [{"type": "object",
            "properties": {"to": {"type": "string"}, "n": {"type": "integer", "maximum": 5}},
            "required": ["to"]}], "items": false}"#,
    )
    .unwrap();
    let server = TestServer::start(ServerOptions {
        extra_toml: format!(
            "[validation.schemas]\n\"email.send\" = {:?}\n",
            path.display()
        ),
        ..ServerOptions::default()
    });
    let ok = json!({"type": "email.send", "args": [{"to": "a@example.com", "n": 5}]});
    assert_eq!(post(&server, &ok).await.0, StatusCode::CREATED);
    let before = queues(&server).await;
    for (args, instance_path) in [
        (json!([{"to": "CANARY-1", "n": 6}]), "/0/n"),
        (json!([{"n": 1}]), "/0"),
        (json!([{"to": 5}]), "/0/to"),
        (json!([{"to": "x"}, "CANARY-2"]), ""),
    ] {
        let (status, body) = post(&server, &json!({"type": "email.send", "args": args})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(code(&body), "schema_validation_failed");
        assert_eq!(body["error"]["details"]["field"], "args");
        if !instance_path.is_empty() {
            assert_eq!(
                body["error"]["details"]["instance_path"], instance_path,
                "{body}"
            );
        }
        assert!(!body.to_string().contains("CANARY"), "{body}");
    }
    // Other types are not checked.
    let other = json!({"type": "other.job", "args": [1, "x"]});
    assert_eq!(post(&server, &other).await.0, StatusCode::CREATED);
    assert_ne!(queues(&server).await, before);
}

#[test]
fn an_invalid_schema_stops_the_server_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("bad.json");
    std::fs::write(&schema, r#"{"type": "no-such-type"}"#).unwrap();
    let config = dir.path().join("bulwark.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = {:?}\n\
             [secrets]\ndir = {:?}\n[validation.schemas]\n\"email.send\" = \"bad.json\"\n",
            dir.path().join("data").display().to_string(),
            dir.path().join("secrets").display().to_string(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::bin_path())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.json"), "{stderr}");
    // `config check` compiles the schemas too.
    let out = std::process::Command::new(common::bin_path())
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.json"));
    std::fs::write(&schema, r#"{"type": "array"}"#).unwrap();
    let out = std::process::Command::new(common::bin_path())
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn batch_bodies_have_their_own_limit() {
    let server = TestServer::start(ServerOptions {
        extra_toml: "[payload]\nmax_batch_bytes = 2048\n".into(),
        ..ServerOptions::default()
    })
    .with_body_limit(1024);
    // A batch body of exactly `size` bytes.
    let batch_of_size = |size: usize| {
        let base = br#"{"jobs":[{"type":"pad.job","args":[]}]}"#;
        let mut out = base[..base.len() - 1].to_vec();
        out.resize(size - 1, b' ');
        out.push(b'}');
        out
    };
    let send = |bytes: Vec<u8>| {
        let server = &server;
        async move {
            let res = server
                .client()
                .post(server.url("/ojs/v1/jobs/batch"))
                .header("Authorization", server.auth())
                .header("Content-Type", "application/json")
                .body(bytes)
                .send()
                .await
                .unwrap();
            res.status()
        }
    };
    // Larger than a single job body may be, within the batch limit.
    assert_eq!(send(batch_of_size(2048)).await, StatusCode::CREATED);
    assert_eq!(
        send(batch_of_size(2049)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // The single-job route keeps its own, smaller limit.
    let (status, _) = post_raw(&server, Some("application/json"), job_of_size(1025)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}
