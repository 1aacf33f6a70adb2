//! The edge against the real server, as an attacker probes it (issue 17, findings 1, 3, 4, 5;
//! issue 13, parser-level errors): ambiguous credentials from duplicated headers, bodies
//! announced over the limit behind `Expect: 100-continue`, chunked bodies that go on after the
//! refusal, encoded bodies and non-UTF-8 JSON, oversized and malformed request heads, schedules
//! thousands of years ahead, and HTTP/2 over TLS (advertised stream bound, SETTINGS flood).
//! Raw sockets where the request must be malformed on purpose.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{ServerOptions, TestServer};

fn server_with(extra: &str) -> TestServer {
    TestServer::start(ServerOptions {
        extra_toml: format!("{}{extra}", common::UNTHROTTLED),
        ..ServerOptions::default()
    })
}

/// A server whose `[server]` table gets `lines` (the generated config already has one).
fn server_with_server_keys(lines: &str) -> TestServer {
    let mut server = server_with("");
    let path = server.config_path().to_path_buf();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("[server]\n", &format!("[server]\n{lines}"), 1),
    )
    .unwrap();
    server.restart();
    server
}

fn connect(server: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(server.authority()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads one response (head and a `Content-Length` body); returns the status, the head
/// (lower-cased) and the body.
fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if buf.len() >= end + 4 + len {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let body = text[end + 4..end + 4 + len].to_string();
                return (status, head, body);
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => panic!("connection closed mid-response: {text:?}"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("read failed: {e}; so far {text:?}"),
        }
    }
}

/// The request goes out raw; the answer must be the OJS envelope with the standard headers.
fn raw(server: &TestServer, request: &[u8]) -> (u16, String, Value) {
    let mut stream = connect(server);
    stream.write_all(request).unwrap();
    let (status, head, body) = read_response(&mut stream);
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, head, body)
}

fn assert_envelope(status: u16, head: &str, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{head}\n{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(head.contains("\r\nojs-version: 1.0"), "{head}");
    assert!(head.contains("\r\nx-request-id: "), "{head}");
    assert!(
        head.contains("\r\nx-content-type-options: nosniff"),
        "{head}"
    );
}

fn job_request(server: &TestServer, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /ojs/v1/jobs HTTP/1.1\r\nHost: {}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        server.authority(),
        body.len()
    )
    .into_bytes()
}

/// How many queues hold a job (none means nothing was stored).
async fn queue_count(server: &TestServer) -> u64 {
    let res = server.admin_client().queues().await;
    res.json().to_string().matches("\"name\"").count() as u64
}

#[tokio::test]
async fn a_duplicated_credential_or_tenant_header_is_refused_whatever_the_order_and_audited() {
    // The review's story: two Authorization headers were accepted and the first one won, so
    // the order of two credentials decided who the caller was (201 one way, 403 the other).
    let server = server_with("");
    let admin = server.auth();
    let bogus = "Bearer bwk_test_nothere_000000000000000000000000";
    let body = r#"{"type":"dup.job","args":[]}"#;
    for (first, second) in [(admin.as_str(), bogus), (bogus, admin.as_str())] {
        let req = job_request(
            &server,
            &format!(
                "Authorization: {first}\r\nAuthorization: {second}\r\nContent-Type: application/json\r\n"
            ),
            body,
        );
        let (status, head, body) = raw(&server, &req);
        assert_envelope(status, &head, &body, 400, "invalid_request");
        assert_eq!(body["error"]["details"]["header"], "authorization");
    }
    for header in [
        "X-OJS-Tenant: acme\r\nx-ojs-tenant: other\r\n",
        "X-OJS-Tenant-Id: a\r\nX-OJS-Tenant-Id: b\r\n",
        "X-OJS-Policy-Token: a\r\nX-OJS-Policy-Token: b\r\n",
        "Content-Type: text/plain\r\n",
    ] {
        let req = job_request(
            &server,
            &format!("Authorization: {admin}\r\nContent-Type: application/json\r\n{header}"),
            body,
        );
        let (status, head, body) = raw(&server, &req);
        assert_envelope(status, &head, &body, 400, "invalid_request");
    }
    let record = server.wait_audit_event_blocking("request.refused", |v| {
        v["detail"]["reason"] == "duplicate_header"
    });
    assert_eq!(record["detail"]["header"], "authorization");
    assert!(record["source_ip"].as_str().is_some());
    // Nothing was stored; one credential still works.
    let res = server
        .client()
        .post(server.url("/ojs/v1/jobs"))
        .header("Authorization", &admin)
        .json(&json!({"type": "dup.job", "args": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(queue_count(&server).await, 1);
}

#[test]
fn a_duplicated_content_length_is_refused_before_any_body_is_read() {
    let server = server_with("");
    let req = format!(
        "POST /ojs/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\nContent-Length: 40\r\n\r\n{{}}",
        server.auth()
    );
    let (status, head, body) = raw(&server, req.as_bytes());
    assert_envelope(status, &head, &body, 400, "invalid_request");
    // Content-Length with chunked: the request-smuggling pair.
    let req = "POST /ojs/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
               Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let (status, head, body) = raw(&server, req.as_bytes());
    assert_envelope(status, &head, &body, 400, "invalid_request");
    server.wait_audit_event_blocking("request.refused", |v| {
        v["detail"]["reason"] == "ambiguous_length"
    });
}

#[test]
fn expect_continue_with_a_length_over_the_limit_is_refused_before_continue() {
    // The review's story: the server answered `100 Continue`, took the body, then said 413.
    let server = server_with_server_keys("max_body_bytes = 4096\n");
    let mut stream = connect(&server);
    stream
        .write_all(
            format!(
                "POST /ojs/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 4097\r\n\
                 Expect: 100-continue\r\n\r\n",
                server.auth()
            )
            .as_bytes(),
        )
        .unwrap();
    let (status, head, body) = read_response(&mut stream);
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_envelope(status, &head, &body, 413, "payload_too_large");
    // Within the limit, the client is told to go on.
    let mut stream = connect(&server);
    stream
        .write_all(
            format!(
                "POST /ojs/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 28\r\n\
                 Expect: 100-continue\r\n\r\n",
                server.auth()
            )
            .as_bytes(),
        )
        .unwrap();
    let mut first = [0u8; 25];
    stream.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 100 Continue"), "{first:?}");
}

#[test]
fn a_chunked_body_over_the_limit_is_refused_and_nothing_more_is_read() {
    // The review's story: the 413 came, but the connection stayed open and 200 MiB more
    // were read in 0.2 s.
    let server = server_with_server_keys("max_body_bytes = 4096\n");
    let mut stream = connect(&server);
    stream
        .write_all(
            format!(
                "POST /ojs/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                server.auth()
            )
            .as_bytes(),
        )
        .unwrap();
    let chunk = format!("400\r\n{}\r\n", "x".repeat(0x400));
    for _ in 0..6 {
        stream.write_all(chunk.as_bytes()).unwrap();
    }
    let (status, head, body) = read_response(&mut stream);
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_envelope(status, &head, &body, 413, "payload_too_large");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    // Keep sending: the server must have stopped reading and closed, so the writes fail long
    // before 64 MiB are through.
    let big = format!("100000\r\n{}\r\n", "y".repeat(0x10_0000));
    let mut sent = 0usize;
    let started = Instant::now();
    let refused = loop {
        if stream.write_all(big.as_bytes()).is_err() {
            break true;
        }
        sent += big.len();
        if sent > 64 << 20 || started.elapsed() > Duration::from_secs(10) {
            break false;
        }
    };
    assert!(
        refused,
        "the server read {sent} more bytes after refusing the body"
    );
}

#[tokio::test]
async fn encoded_bodies_and_json_in_other_charsets_are_refused_415() {
    // The review's story: a gzip body got 400, plain JSON labelled gzip was stored, and
    // `charset=utf-16` was accepted.
    let server = server_with("");
    let post = |headers: Vec<(&'static str, &'static str)>, body: Vec<u8>| {
        let mut req = server
            .client()
            .post(server.url("/ojs/v1/jobs"))
            .header("Authorization", server.auth())
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let json = br#"{"type":"enc.job","args":[]}"#.to_vec();
    for encoding in ["gzip", "br", "deflate", "identity, gzip"] {
        let res = post(
            vec![
                ("Content-Type", "application/json"),
                ("Content-Encoding", encoding),
            ],
            json.clone(),
        )
        .await
        .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{encoding}"
        );
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unsupported_media_type");
    }
    for content_type in [
        "application/json; charset=utf-16",
        "application/json; charset=iso-8859-1",
    ] {
        let res = post(vec![("Content-Type", content_type)], json.clone())
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type}"
        );
    }
    assert_eq!(queue_count(&server).await, 0, "nothing was stored");
    server.wait_audit_event_blocking("request.refused", |v| {
        v["detail"]["reason"] == "content_encoding"
    });
    let res = post(
        vec![
            ("Content-Type", "application/json; charset=utf-8"),
            ("Content-Encoding", "identity"),
        ],
        json,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

#[test]
fn oversized_and_malformed_heads_leave_as_the_ojs_envelope() {
    // The review's story: a single 64 KiB header was accepted, and a 64 KiB URI got a bare
    // 400 from actix-http, without the envelope or the request id (issue 13).
    let server = server_with("");
    let big = "a".repeat(64 * 1024);
    let (status, head, body) = raw(
        &server,
        format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    assert_envelope(status, &head, &body, 431, "invalid_request");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    let (status, head, body) = raw(
        &server,
        format!("GET /health?{big} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    assert_envelope(status, &head, &body, 414, "invalid_request");
    let mut many = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (status, head, body) = raw(&server, many.as_bytes());
    assert_envelope(status, &head, &body, 431, "invalid_request");
    for bad in [
        &b"GET /health HTTP/1.1\r\nHost: x\r\nBad\x01Name: v\r\n\r\n"[..],
        b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n",
        b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
        b"POST /ojs/v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    ] {
        let (status, head, body) = raw(&server, bad);
        assert_envelope(status, &head, &body, 400, "invalid_request");
    }
    server.wait_audit_event_blocking("request.refused", |v| {
        v["detail"]["reason"] == "header_too_large"
    });
    server.wait_audit_event_blocking("request.refused", |v| {
        v["detail"]["reason"] == "uri_too_long"
    });
    server.wait_audit_event_blocking("request.refused", |v| {
        v["detail"]["reason"] == "malformed_head"
    });
    // A forged stand-in request is refused, not honoured.
    let (status, head, body) = raw(
        &server,
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Bulwark-Refusal: 00\r\n\r\n",
    );
    assert_envelope(status, &head, &body, 400, "invalid_request");
}

#[test]
fn the_head_bounds_are_configurable_and_hold_at_the_bound() {
    let server = server_with_server_keys("max_header_bytes = 1024\nmax_uri_bytes = 512\n");
    let at = format!(
        "GET /ojs/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1024 - "x-big".len())
    );
    let (status, _, _) = raw(&server, at.as_bytes());
    assert_eq!(status, 200);
    let over = format!(
        "GET /ojs/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2048)
    );
    let (status, head, body) = raw(&server, over.as_bytes());
    assert_envelope(status, &head, &body, 431, "invalid_request");
    let uri = format!(
        "GET /ojs/v1/health?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "q".repeat(600)
    );
    let (status, head, body) = raw(&server, uri.as_bytes());
    assert_envelope(status, &head, &body, 414, "invalid_request");
}

#[test]
fn a_head_that_never_completes_is_answered_408_with_the_envelope() {
    let server = server_with_server_keys("request_head_timeout_secs = 1\n");
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let (status, head, body) = read_response(&mut stream);
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_envelope(status, &head, &body, 408, "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(4));
    server.wait_audit_event_blocking("request.refused", |v| {
        v["detail"]["reason"] == "head_timeout"
    });
}

#[tokio::test]
async fn a_schedule_beyond_the_horizon_is_refused_with_the_field_named() {
    // The review's story: `"delay_until": "9999-12-31T23:59:59Z"` was accepted. The default
    // horizon is one year.
    let server = server_with("");
    for (field, value) in [
        ("delay_until", "9999-12-31T23:59:59Z"),
        ("scheduled_at", "9999-12-31T23:59:59Z"),
        ("delay_until", "+P400D"),
    ] {
        let res = server
            .client()
            .post(server.url("/ojs/v1/jobs"))
            .header("Authorization", server.auth())
            .json(&json!({"type": "far.job", "args": [], "options": {field: value}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{field}={value}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request");
        assert_eq!(
            body["error"]["details"]["field"],
            format!("options.{field}")
        );
    }
    assert_eq!(queue_count(&server).await, 0, "nothing was stored");
    let res = server
        .client()
        .post(server.url("/ojs/v1/jobs"))
        .header("Authorization", server.auth())
        .json(&json!({"type": "far.job", "args": [], "options": {"delay_until": "+P300D"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}
