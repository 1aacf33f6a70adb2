//! Every class of bad input gets a clear OJS error with the right status, and changes nothing.

use crate::common;

use common::{ServerOptions, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    status: StatusCode,
    code: &'static str,
}

fn case(
    name: &'static str,
    method: Method,
    path: &str,
    content_type: Option<&'static str>,
    body: Option<&[u8]>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.to_string(),
        content_type,
        body: body.map(<[u8]>::to_vec),
        status: StatusCode::from_u16(status).unwrap(),
        code,
    }
}

const JSON: Option<&str> = Some("application/json");
const OJS: Option<&str> = Some("application/openjobspec+json");

async fn state_snapshot(server: &TestServer, client: &reqwest::Client) -> (Value, Value) {
    let queues: Value = client
        .get(server.url("/ojs/v1/queues"))
        .header("Authorization", server.auth())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dead: Value = client
        .get(server.url("/ojs/v1/dead-letter"))
        .header("Authorization", server.auth())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (queues, dead)
}

#[tokio::test]
async fn bad_input_gets_an_ojs_error_and_changes_nothing() {
    let server = TestServer::start(ServerOptions::default());
    let client = server.client();
    // One valid job, so that by-id routes have something real next to the bad ids.
    let res = client
        .post(server.url("/ojs/v1/jobs"))
        .header("Authorization", server.auth())
        .json(&json!({"type": "test.ok", "args": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let before = state_snapshot(&server, &client).await;

    let big = vec![b' '; 3 * 1024 * 1024];
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let cases = vec![
        // Malformed JSON and empty bodies.
        case(
            "truncated json",
            Method::POST,
            "/ojs/v1/jobs",
            JSON,
            Some(b"{\"type\": \"a.b\", \"args\": ["),
            400,
            "invalid_payload",
        ),
        case(
            "not json at all",
            Method::POST,
            "/ojs/v1/jobs",
            OJS,
            Some(b"hello"),
            400,
            "invalid_payload",
        ),
        case(
            "empty body with content type",
            Method::POST,
            "/ojs/v1/jobs",
            OJS,
            None,
            400,
            "invalid_payload",
        ),
        case(
            "empty body without content type",
            Method::POST,
            "/ojs/v1/jobs",
            None,
            None,
            400,
            "invalid_payload",
        ),
        case(
            "nesting beyond the parser limit",
            Method::POST,
            "/ojs/v1/jobs",
            JSON,
            Some(format!("{{\"type\":\"a.b\",\"args\":{deep}}}").as_bytes()),
            400,
            "invalid_payload",
        ),
        // Wrong content type.
        case(
            "text/plain",
            Method::POST,
            "/ojs/v1/jobs",
            Some("text/plain"),
            Some(b"{\"type\":\"a.b\",\"args\":[]}"),
            415,
            "unsupported_media_type",
        ),
        case(
            "form",
            Method::POST,
            "/ojs/v1/workers/fetch",
            Some("application/x-www-form-urlencoded"),
            Some(b"queues=default"),
            415,
            "unsupported_media_type",
        ),
        case(
            "json body without content type",
            Method::POST,
            "/ojs/v1/jobs",
            None,
            Some(b"{\"type\":\"a.b\",\"args\":[]}"),
            415,
            "unsupported_media_type",
        ),
        // Oversized.
        case(
            "body over the limit",
            Method::POST,
            "/ojs/v1/jobs",
            JSON,
            Some(&big),
            413,
            "payload_too_large",
        ),
        // Missing fields and wrong types.
        case(
            "body is an array",
            Method::POST,
            "/ojs/v1/jobs",
            JSON,
            Some(b"[]"),
            400,
            "invalid_request",
        ),
        case(
            "missing type",
            Method::POST,
            "/ojs/v1/jobs",
            JSON,
            Some(b"{\"args\":[]}"),
            400,
            "invalid_request",
        ),
        case(
            "missing args",
            Method::POST,
            "/ojs/v1/jobs",
            JSON,
            Some(b"{\"type\":\"a.b\"}"),
            400,
            "invalid_request",
        ),
        case(
            "args not an array",
            Method::POST,
            "/ojs/v1/jobs",
            JSON,
            Some(b"{\"type\":\"a.b\",\"args\":{}}"),
            400,
            "invalid_request",
        ),
        case(
            "type not a string",
            Method::POST,
            "/ojs/v1/jobs",
            JSON,
            Some(b"{\"type\":7,\"args\":[]}"),
            400,
            "invalid_request",
        ),
        case(
            "priority a string",
            Method::POST,
            "/ojs/v1/jobs",
            JSON,
            Some(b"{\"type\":\"a.b\",\"args\":[],\"options\":{\"priority\":\"high\"}}"),
            400,
            "invalid_request",
        ),
        case(
            "bad queue name",
            Method::POST,
            "/ojs/v1/jobs",
            JSON,
            Some(b"{\"type\":\"a.b\",\"args\":[],\"options\":{\"queue\":\"Bad Queue\"}}"),
            400,
            "invalid_request",
        ),
        case(
            // A permission matter (OJS security §15.2): 403 even for an administrator.
            "reserved queue name",
            Method::POST,
            "/ojs/v1/jobs",
            JSON,
            Some(b"{\"type\":\"a.b\",\"args\":[],\"options\":{\"queue\":\"_ojs_system\"}}"),
            403,
            "permission_denied",
        ),
        case(
            "invalid retry policy",
            Method::POST,
            "/ojs/v1/jobs",
            JSON,
            Some(b"{\"type\":\"a.b\",\"args\":[],\"options\":{\"retry\":{\"max_attempts\":-1}}}"),
            422,
            "invalid_retry_policy",
        ),
        case(
            "fetch without queues",
            Method::POST,
            "/ojs/v1/workers/fetch",
            JSON,
            Some(b"{}"),
            400,
            "invalid_request",
        ),
        case(
            "fetch count zero",
            Method::POST,
            "/ojs/v1/workers/fetch",
            JSON,
            Some(b"{\"queues\":[\"default\"],\"count\":0}"),
            400,
            "invalid_request",
        ),
        case(
            "fetch count too large",
            Method::POST,
            "/ojs/v1/workers/fetch",
            JSON,
            Some(b"{\"queues\":[\"default\"],\"count\":100000}"),
            400,
            "invalid_request",
        ),
        case(
            "ack without job id",
            Method::POST,
            "/ojs/v1/workers/ack",
            JSON,
            Some(b"{}"),
            400,
            "invalid_request",
        ),
        case(
            "nack without error",
            Method::POST,
            "/ojs/v1/workers/nack",
            JSON,
            Some(b"{\"job_id\":\"019461a8-1a2b-7c3d-8e4f-5a6b7c8d9e0f\"}"),
            400,
            "invalid_request",
        ),
        case(
            "heartbeat without worker id",
            Method::POST,
            "/ojs/v1/workers/heartbeat",
            JSON,
            Some(b"{\"active_jobs\":[]}"),
            400,
            "invalid_request",
        ),
        // Invalid ids.
        case(
            "client id not uuidv7",
            Method::POST,
            "/ojs/v1/jobs",
            JSON,
            Some(b"{\"type\":\"a.b\",\"args\":[],\"id\":\"550e8400-e29b-41d4-a716-446655440000\"}"),
            400,
            "invalid_request",
        ),
        case(
            "info with a malformed id",
            Method::GET,
            "/ojs/v1/jobs/not-a-uuid",
            None,
            None,
            400,
            "invalid_request",
        ),
        case(
            "cancel with a malformed id",
            Method::DELETE,
            "/ojs/v1/jobs/..%2F..%2Fetc",
            None,
            None,
            400,
            "invalid_request",
        ),
        case(
            "ack with a malformed id",
            Method::POST,
            "/ojs/v1/workers/ack",
            JSON,
            Some(b"{\"job_id\":\"1 OR 1=1\"}"),
            400,
            "invalid_request",
        ),
        case(
            "heartbeat with a malformed id",
            Method::POST,
            "/ojs/v1/workers/heartbeat",
            JSON,
            Some(b"{\"worker_id\":\"w\",\"active_jobs\":[\"x\"]}"),
            400,
            "invalid_request",
        ),
        case(
            "info of an unknown id",
            Method::GET,
            "/ojs/v1/jobs/019461a8-1a2b-7c3d-8e4f-5a6b7c8d9e0f",
            None,
            None,
            404,
            "not_found",
        ),
        case(
            "dead-letter retry of an unknown id",
            Method::POST,
            "/ojs/v1/dead-letter/019461a8-1a2b-7c3d-8e4f-5a6b7c8d9e0f/retry",
            JSON,
            Some(b"{}"),
            404,
            "not_found",
        ),
        case(
            "bad dead-letter limit",
            Method::GET,
            "/ojs/v1/dead-letter?limit=abc",
            None,
            None,
            400,
            "invalid_request",
        ),
        // Unknown routes and methods.
        case(
            "unknown route",
            Method::GET,
            "/ojs/v1/nope",
            None,
            None,
            404,
            "not_found",
        ),
        case(
            "unknown root",
            Method::GET,
            "/",
            None,
            None,
            404,
            "not_found",
        ),
        case(
            "wrong method",
            Method::PUT,
            "/ojs/v1/jobs",
            JSON,
            Some(b"{}"),
            405,
            "method_not_allowed",
        ),
        case(
            "wrong method on a job",
            Method::PATCH,
            "/ojs/v1/jobs/019461a8-1a2b-7c3d-8e4f-5a6b7c8d9e0f",
            None,
            None,
            405,
            "method_not_allowed",
        ),
        case(
            "reset is absent outside testing mode",
            Method::POST,
            "/ojs/v1/admin/reset",
            JSON,
            Some(b"{}"),
            404,
            "not_found",
        ),
    ];

    let mut failures = Vec::new();
    for c in &cases {
        let mut req = client
            .request(c.method.clone(), server.url(&c.path))
            .header("Authorization", server.auth());
        if let Some(ct) = c.content_type {
            req = req.header("Content-Type", ct);
        }
        if let Some(body) = &c.body {
            req = req.body(body.clone());
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let ok = status == c.status
            && body["error"]["code"] == c.code
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
            && body["error"]["retryable"] == false
            && headers.get("ojs-version").is_some_and(|v| v == "1.0")
            && headers.get("x-request-id").is_some()
            && headers
                .get("content-type")
                .is_some_and(|v| v == "application/openjobspec+json");
        if !ok {
            failures.push(format!("{}: got {status} {text:.300}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "bad input handled wrongly:\n{}",
        failures.join("\n")
    );

    // Nothing above changed any state.
    assert_eq!(state_snapshot(&server, &client).await, before);
}

#[tokio::test]
async fn error_messages_do_not_echo_client_input() {
    let server = TestServer::start(ServerOptions::default());
    let client = server.client();
    let canary = "CANARY<script>alert(1)</script>";
    for body in [
        json!({"type": canary, "args": []}),
        json!({"type": "a.b", "args": [], "options": {"queue": canary}}),
        json!({"type": "a.b", "args": [], canary: 1}),
    ] {
        let res = client
            .post(server.url("/ojs/v1/jobs"))
            .header("Authorization", server.auth())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error());
        let text = res.text().await.unwrap();
        assert!(!text.contains("<script>"), "{text}");
    }
    let res = client
        .post(server.url("/ojs/v1/jobs"))
        .header("Authorization", server.auth())
        .header("Content-Type", "application/json")
        .body(format!("{{\"type\": \"{canary}\", oops"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(!res.text().await.unwrap().contains("CANARY"));
}

#[tokio::test]
async fn unknown_attributes_are_refused_by_default_and_listed() {
    let server = TestServer::start(ServerOptions::default());
    let client = server.client();
    let res = client
        .post(server.url("/ojs/v1/jobs"))
        .header("Authorization", server.auth())
        .json(&json!({"type": "a.b", "args": [], "x_custom": 1, "options": {"x_opt": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["error"]["details"]["unknown_fields"],
        json!(["options.x_opt", "x_custom"])
    );

    // The conformance switch keeps and echoes them.
    let preserving = TestServer::start(ServerOptions::conformance());
    let res = client
        .post(preserving.url("/ojs/v1/jobs"))
        .header("Authorization", preserving.auth())
        .json(&json!({"type": "a.b", "args": [], "x_custom": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["job"]["x_custom"], 1);
}
