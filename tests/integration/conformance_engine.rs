//! Unit tests of the conformance runner's engine (JSONPath, templates, matchers, assertion
//! checks) on hand-written JSON. No server needed.

use crate::common;
use crate::conformance;

use std::collections::BTreeMap;
use std::time::Duration;

use conformance::engine::{
    check_body, match_value, resolve, resolve_str, resolve_value, split_path, RecordedResponse,
    StepRecords,
};
use serde_json::{json, Value};

fn doc() -> Value {
    json!({
        "job": {
            "id": "019a0b6e-1c2d-7e3f-8a4b-5c6d7e8f9a0b",
            "state": "available",
            "attempt": 0,
            "priority": 10,
            "ratio": 1.5,
            "args": ["hello", 42, {"nested": {"deeply": {"key": "v"}}}, [1, [2, 3]]],
            "meta": {"tags": ["a", "b"], "trace_id": "t-1"},
            "created_at": "2024-01-15T10:30:00.123Z",
            "error": null,
            "flag": true
        },
        "jobs": [
            {"id": "j1", "state": "active", "attempt": 1, "errors": []},
            {"id": "j2", "state": "available", "attempt": 2},
            {"id": "j3", "state": "active", "attempt": 3}
        ],
        "empty": []
    })
}

fn get(path: &str) -> Option<Value> {
    resolve(path, &doc()).unwrap()
}

fn ok(m: Value, path: &str) {
    let actual = get(path);
    if let Err(e) = match_value(&m, actual.as_ref()) {
        panic!("{m} at {path} should match {actual:?}: {e}");
    }
}

fn bad(m: Value, path: &str) {
    let actual = get(path);
    assert!(
        match_value(&m, actual.as_ref()).is_err(),
        "{m} at {path} must not match {actual:?}"
    );
}

#[test]
fn jsonpath_dots_indexes_wildcards_filters() {
    assert_eq!(get("$"), Some(doc()));
    assert_eq!(get("$.job.state"), Some(json!("available")));
    assert_eq!(get("$.job.args[1]"), Some(json!(42)));
    assert_eq!(get("$.job.args[2].nested.deeply.key"), Some(json!("v")));
    assert_eq!(get("$.job.args[3][1][0]"), Some(json!(2)));
    assert_eq!(get("$.jobs[*].id"), Some(json!(["j1", "j2", "j3"])));
    assert_eq!(get("$.jobs[*].errors"), Some(json!([[]])));
    assert_eq!(get("$.jobs[?(@.id=='j2')].attempt"), Some(json!(2)));
    assert_eq!(get("$.jobs[?(@.state=='active')].id"), Some(json!("j1")));
    assert_eq!(get("$.jobs[?(@.attempt==3)].id"), Some(json!("j3")));
    assert_eq!(get("$.jobs[?(@.id==\"j3\")]").unwrap()["state"], "active");
    assert_eq!(get("$.job.error"), Some(Value::Null));
    // Not resolving.
    assert_eq!(get("$.job.missing"), None);
    assert_eq!(get("$.job.missing.deeper"), None);
    assert_eq!(get("$.jobs[7].id"), None);
    assert_eq!(get("$.jobs[?(@.id=='nope')].state"), None);
    assert_eq!(get("$.job.state.inner"), None);
    assert_eq!(get("$.job.error.code"), None);
    // Every `.` outside brackets separates segments.
    assert_eq!(
        split_path("job.meta.ojs.codec.key_id"),
        vec!["job", "meta", "ojs", "codec", "key_id"]
    );
    assert_eq!(
        split_path("jobs[?(@.id=='a.b')].state"),
        vec!["jobs[?(@.id=='a.b')]", "state"]
    );
    assert!(resolve("$.jobs[x]", &doc()).is_err());
}

#[test]
fn literal_matchers() {
    ok(json!("available"), "$.job.state");
    bad(json!("active"), "$.job.state");
    bad(json!("available"), "$.job.missing");
    ok(json!(0), "$.job.attempt");
    bad(json!(1), "$.job.attempt");
    bad(json!(0), "$.job.state");
    ok(json!(1.5), "$.job.ratio");
    bad(json!(1.25), "$.job.ratio");
    ok(json!(true), "$.job.flag");
    bad(json!(false), "$.job.flag");
    ok(json!(null), "$.job.error");
    bad(json!(null), "$.job.missing");
    bad(json!(null), "$.job.state");
    ok(json!(["a", "b"]), "$.job.meta.tags");
    ok(json!(["string:nonempty", "b"]), "$.job.meta.tags");
    bad(json!(["a"]), "$.job.meta.tags");
    bad(json!(["a", "c"]), "$.job.meta.tags");
    ok(json!({"trace_id": "t-1"}), "$.job.meta");
    bad(json!({"trace_id": "t-2"}), "$.job.meta");
}

#[test]
fn existence_matchers() {
    ok(json!("any"), "$.job.state");
    bad(json!("any"), "$.job.missing");
    bad(json!("any"), "$.job.error");
    ok(json!("exists"), "$.job.attempt");
    bad(json!("exists"), "$.job.missing");
    ok(json!("absent"), "$.job.missing");
    bad(json!("absent"), "$.job.state");
    bad(json!("absent"), "$.job.error");
    ok(json!({"$exists": true}), "$.job.id");
    bad(json!({"$exists": true}), "$.job.missing");
    ok(json!({"$exists": false}), "$.job.missing");
    bad(json!({"$exists": false}), "$.job.id");
    ok(json!({"$exists": true, "$type": "string"}), "$.job.id");
    bad(json!({"$exists": true, "$type": "number"}), "$.job.id");
    ok(json!({"$type": "array"}), "$.jobs");
    ok(json!({"$type": "object"}), "$.job");
    ok(json!({"$type": "boolean"}), "$.job.flag");
    ok(json!({"$type": "null"}), "$.job.error");
    bad(json!({"$type": "string"}), "$.job.missing");
}

#[test]
fn string_matchers() {
    ok(json!("string:nonempty"), "$.job.state");
    ok(json!("string:non_empty"), "$.job.state");
    bad(json!("string:nonempty"), "$.job.attempt");
    ok(json!("string:uuid"), "$.job.id");
    ok(json!("string:uuidv7"), "$.job.id");
    bad(json!("string:uuidv7"), "$.jobs[0].id");
    ok(json!("string:datetime"), "$.job.created_at");
    bad(json!("string:datetime"), "$.job.state");
    ok(json!("string:contains:vail"), "$.job.state");
    bad(json!("string:contains:Vail"), "$.job.state");
    ok(json!("string:pattern(^avail.*$)"), "$.job.state");
    bad(json!("string:pattern(^active$)"), "$.job.state");
    ok(json!({"$match": "^[0-9a-f-]{36}$"}), "$.job.id");
    bad(json!({"$match": "^x"}), "$.job.id");
    bad(json!({"$match": "^1"}), "$.job.priority");
    let uuid_v4 = json!("6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f");
    assert!(match_value(&json!("string:uuid"), Some(&uuid_v4)).is_ok());
    assert!(match_value(&json!("string:uuidv7"), Some(&uuid_v4)).is_err());
    let offset_time = json!("2024-01-15T10:30:00+02:00");
    assert!(match_value(&json!("string:datetime"), Some(&offset_time)).is_ok());
    let bad_time = json!("2024-01-15 10:30:00");
    assert!(match_value(&json!("string:datetime"), Some(&bad_time)).is_err());
}

#[test]
fn number_matchers() {
    ok(json!("number:positive"), "$.job.priority");
    bad(json!("number:positive"), "$.job.attempt");
    ok(json!("number:non_negative"), "$.job.attempt");
    bad(json!("number:non_negative"), "$.job.state");
    ok(json!("number:range(0,100)"), "$.job.priority");
    ok(json!("number:range(10, 10)"), "$.job.priority");
    bad(json!("number:range(11,100)"), "$.job.priority");
    ok(json!({"range": {"min": 0, "max": 100}}), "$.job.priority");
    ok(json!({"range": {"min": 10}}), "$.job.priority");
    bad(json!({"range": {"max": 9}}), "$.job.priority");
    // ~N: 50% tolerance, at least 100.
    let v = |n: i64| json!(n);
    assert!(match_value(&json!("~2000"), Some(&v(1000))).is_ok());
    assert!(match_value(&json!("~2000"), Some(&v(3000))).is_ok());
    assert!(match_value(&json!("~2000"), Some(&v(3001))).is_err());
    assert!(match_value(&json!("~2000"), Some(&v(999))).is_err());
    assert!(match_value(&json!("~50"), Some(&v(150))).is_ok());
    assert!(match_value(&json!("~50"), Some(&v(151))).is_err());
    assert!(match_value(&json!("~1000"), None).is_err());
    assert!(match_value(&json!("~1000"), Some(&json!("1000"))).is_err());
}

#[test]
fn array_matchers() {
    ok(json!("array:nonempty"), "$.jobs");
    bad(json!("array:nonempty"), "$.empty");
    ok(json!("array:empty"), "$.empty");
    bad(json!("array:empty"), "$.jobs");
    bad(json!("array:empty"), "$.job.missing");
    ok(json!("array:length:3"), "$.jobs");
    ok(json!("array:length(3)"), "$.jobs");
    bad(json!("array:length:2"), "$.jobs");
    ok(json!("array:min_length:2"), "$.jobs");
    ok(json!("array:min:3"), "$.jobs");
    bad(json!("array:min_length:4"), "$.jobs");
    ok(json!("contains:b"), "$.job.meta.tags");
    bad(json!("contains:c"), "$.job.meta.tags");
    ok(json!("contains:42"), "$.job.args");
    ok(json!("not_contains:c"), "$.job.meta.tags");
    bad(json!("not_contains:a"), "$.job.meta.tags");
    ok(json!({"$size": 3}), "$.jobs");
    bad(json!({"$size": 2}), "$.jobs");
    ok(json!({"$size": {"$gte": 1}}), "$.jobs");
    bad(json!({"$size": {"$gte": 1}}), "$.empty");
    bad(json!({"$size": 0}), "$.job.missing");
}

#[test]
fn logical_matchers() {
    ok(json!({"$in": ["active", "available"]}), "$.job.state");
    bad(json!({"$in": ["active", "completed"]}), "$.job.state");
    ok(json!({"$in": [1, 10]}), "$.job.priority");
    ok(json!({"$in": ["number:range(5,15)"]}), "$.job.priority");
    ok(
        json!({"$or": ["active", "string:contains:avail"]}),
        "$.job.state",
    );
    ok(
        json!({"$or": ["string:nonempty", {"$exists": false}]}),
        "$.job.missing",
    );
    bad(
        json!({"$or": ["active", {"$exists": false}]}),
        "$.job.state",
    );
    ok(json!({"$empty": true}), "$.empty");
    bad(json!({"$empty": true}), "$.jobs");
    // Unknown operators and malformed matchers fail instead of passing.
    bad(json!({"$bogus": 1}), "$.job.state");
    bad(json!({"$exists": true, "bogus": 1}), "$.job.state");
    bad(json!("number:range(a,b)"), "$.job.priority");
    bad(json!("array:length:x"), "$.jobs");
    bad(json!("string:pattern(()"), "$.job.state");
}

#[test]
fn body_maps_with_top_level_or_and_empty() {
    let body = json!({"jobs": []});
    let map = json!({
        "$or": [
            {"$.jobs": {"$size": 0}},
            {"$empty": true}
        ]
    });
    assert!(check_body(map.as_object().unwrap(), Some(&body)).is_ok());
    assert!(check_body(map.as_object().unwrap(), None).is_ok());
    let body = json!({"jobs": [{"id": "x"}]});
    let err = check_body(map.as_object().unwrap(), Some(&body)).unwrap_err();
    assert_eq!(err.at, "$or");

    let map =
        json!({"$.job.id": "string:uuidv7", "$.job.state": "available", "$.jobs[0].id": "j1"});
    assert!(check_body(map.as_object().unwrap(), Some(&doc())).is_ok());
    let map = json!({"$.job.id": "string:uuidv7", "$.job.state": "completed"});
    let err = check_body(map.as_object().unwrap(), Some(&doc())).unwrap_err();
    assert_eq!(err.at, "$.job.state");
    assert_eq!(err.actual, "\"available\"");
    // A body that is not JSON resolves nothing.
    let map = json!({"$.job.id": {"$exists": true}});
    assert!(check_body(map.as_object().unwrap(), None).is_err());
    let map = json!({"job.id": "x"});
    assert!(check_body(map.as_object().unwrap(), Some(&doc())).is_err());
}

fn records() -> StepRecords {
    let mut r = StepRecords::default();
    r.insert(
        "step-1",
        RecordedResponse {
            status: 201,
            headers: BTreeMap::new(),
            raw: String::new(),
            body: Some(doc()),
        },
    );
    r
}

#[test]
fn templates() {
    let r = records();
    assert_eq!(
        resolve_str("/ojs/v1/jobs/{{steps.step-1.response.body.job.id}}", &r),
        "/ojs/v1/jobs/019a0b6e-1c2d-7e3f-8a4b-5c6d7e8f9a0b"
    );
    assert_eq!(
        resolve_str("{{steps.step-1.response.body.jobs[1].id}}", &r),
        "j2"
    );
    assert_eq!(
        resolve_str("n={{steps.step-1.response.body.job.priority}}", &r),
        "n=10"
    );
    assert_eq!(
        resolve_str("r={{steps.step-1.response.body.job.ratio}}", &r),
        "r=1.5"
    );
    assert_eq!(
        resolve_str("t={{steps.step-1.response.body.job.meta.tags}}", &r),
        "t=[\"a\",\"b\"]"
    );
    // Unknown steps, missing fields and other template forms stay as they are.
    for s in [
        "{{steps.nope.response.body.job.id}}",
        "{{steps.step-1.response.body.job.missing}}",
        "{{steps.step-1.response.body.job.error}}",
        "{{job_id}}",
    ] {
        assert_eq!(resolve_str(s, &r), s);
    }
    // A whole-string template becomes the JSON value; templates in keys are resolved too.
    let v = resolve_value(
        &json!({
            "jobs": "{{steps.step-1.response.body.jobs}}",
            "id": "{{steps.step-1.response.body.job.id}}",
            "attempt": "{{steps.step-1.response.body.job.attempt}}",
            "whole": "{{steps.step-1.response.body}}",
            "$.jobs[?(@.id=='{{steps.step-1.response.body.jobs[0].id}}')].state": "active",
            "list": ["x-{{steps.step-1.response.body.job.state}}"]
        }),
        &r,
    );
    assert_eq!(v["jobs"], doc()["jobs"]);
    assert_eq!(v["id"], json!("019a0b6e-1c2d-7e3f-8a4b-5c6d7e8f9a0b"));
    assert_eq!(v["attempt"], json!(0));
    assert_eq!(v["whole"], doc());
    assert_eq!(v["$.jobs[?(@.id=='j1')].state"], json!("active"));
    assert_eq!(v["list"], json!(["x-available"]));
}

fn response(status: u16, body: Value, headers: &[(&str, &str)]) -> RecordedResponse {
    RecordedResponse {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        raw: body.to_string(),
        body: Some(body),
    }
}

fn check(assertions: Value, r: &RecordedResponse, ms: u64) -> Result<(), String> {
    conformance::check_response(
        assertions.as_object().unwrap(),
        r,
        Duration::from_millis(ms),
    )
    .map_err(|m| m.to_string())
}

#[test]
fn response_assertions() {
    let r = response(
        422,
        json!({"error": {"code": "invalid_request", "retryable": false}}),
        &[("content-type", "application/openjobspec+json")],
    );
    assert!(check(json!({"status": 422}), &r, 5).is_ok());
    assert!(check(json!({"status": 400}), &r, 5).is_err());
    assert!(check(json!({"status": "number:range(400,422)"}), &r, 5).is_ok());
    assert!(check(json!({"status": "number:range(400,421)"}), &r, 5).is_err());
    assert!(check(json!({"status": "one_of:400,422"}), &r, 5).is_ok());
    assert!(check(json!({"status": "one_of:400,409"}), &r, 5).is_err());
    assert!(check(json!({"status": {"$in": [400, 422]}}), &r, 5).is_ok());
    assert!(check(json!({"status": {"$in": [200, 409]}}), &r, 5).is_err());
    assert!(check(json!({"status_in": [200, 422]}), &r, 5).is_ok());
    assert!(check(json!({"status_in": [200, 201]}), &r, 5).is_err());
    assert!(check(
        json!({"headers": {"Content-Type": "application/openjobspec+json"}}),
        &r,
        5
    )
    .is_ok());
    assert!(check(
        json!({"headers": {"content-type": "application/json"}}),
        &r,
        5
    )
    .is_err());
    assert!(check(json!({"headers": {"X-Missing": "x"}}), &r, 5).is_err());
    assert!(check(
        json!({"headers": {"Content-Type": {"$match": "application/(openjobspec\\+)?json"}}}),
        &r,
        5
    )
    .is_ok());
    assert!(check(json!({"body_absent": ["$.error.details"]}), &r, 5).is_ok());
    assert!(check(json!({"body_absent": ["$.error.code"]}), &r, 5).is_err());
    assert!(check(
        json!({"body_contains": ["\"code\":\"invalid_request\""]}),
        &r,
        5
    )
    .is_ok());
    assert!(check(json!({"body_contains": ["nope"]}), &r, 5).is_err());
    assert!(check(json!({"timing_ms": {"less_than": 500}}), &r, 499).is_ok());
    assert!(check(json!({"timing_ms": {"less_than": 500}}), &r, 500).is_err());
    assert!(check(json!({"timing_ms": {"greater_than": 1000}}), &r, 1001).is_ok());
    assert!(check(json!({"timing_ms": {"greater_than": 1000}}), &r, 1000).is_err());
    assert!(check(json!({"timing_ms": {"approximate": 3000}}), &r, 4500).is_ok());
    assert!(check(json!({"timing_ms": {"approximate": 3000}}), &r, 4600).is_err());
    assert!(check(json!({"timing_ms": {"approximate": 50}}), &r, 150).is_ok());
    // The status is checked first; unknown assertion kinds fail clearly.
    let err = check(json!({"status": 200, "body": {"$.error.code": "x"}}), &r, 5).unwrap_err();
    assert!(err.starts_with("status"), "{err}");
    let err = check(json!({"status": 422, "body_raw": "x"}), &r, 5).unwrap_err();
    assert!(err.contains("unsupported"), "{err}");
    assert!(check(json!({"status": 422, "body_comment": "ignored"}), &r, 5).is_ok());
}

#[test]
fn cross_step_assertions() {
    let job = json!({"id": "job-1", "state": "active"});
    let mut r = StepRecords::default();
    for (id, body) in [
        ("step-1", json!({"job": {"id": "job-1"}})),
        ("step-2", json!({"jobs": [job]})),
        ("step-3", json!({"jobs": []})),
        ("step-4", json!({"jobs": [job]})),
    ] {
        r.insert(id, response(200, body, &[]));
    }
    let check = |a: Value, r: &StepRecords| {
        let resolved = resolve_value(&a, r);
        conformance::check_cross_step(resolved.as_object().unwrap(), r).map_err(|m| m.to_string())
    };
    let claim = |a: &str, b: &str| {
        json!({"exclusive_claim": {
            "job_id": "{{steps.step-1.response.body.job.id}}",
            "fetches": [
                format!("{{{{steps.{a}.response.body.jobs}}}}"),
                format!("{{{{steps.{b}.response.body.jobs}}}}")
            ],
            "exactly_one_has_job": true,
            "exactly_one_empty": true
        }})
    };
    assert!(check(claim("step-2", "step-3"), &r).is_ok());
    assert!(check(claim("step-2", "step-4"), &r).is_err());
    assert!(check(claim("step-3", "step-3"), &r).is_err());
    assert!(check(claim("step-2", "step-9"), &r).is_err());

    let eq = |left: &str, right: &str| {
        json!({"equality": {
            format!("$.steps.{left}.response.body"): format!("{{{{steps.{right}.response.body}}}}")
        }})
    };
    assert!(check(eq("step-2", "step-4"), &r).is_ok());
    assert!(check(eq("step-2", "step-3"), &r).is_err());
    assert!(check(json!({"no_such_assertion": {}}), &r).is_err());
}

#[test]
fn loading_rejects_unsupported_features() {
    let t = conformance::parse_test(
        &json!({"test_id": "X-1", "steps": [{"id": "s", "action": "push", "path": "/x"}]}),
        "x.json".into(),
    );
    assert!(t.load_error.unwrap().contains("unsupported action"));
    let t = conformance::parse_test(
        &json!({"test_id": "X-2", "steps": [{"id": "s", "action": "GET", "path": "/x", "expect": {}}]}),
        "x.json".into(),
    );
    assert!(t.load_error.unwrap().contains("expect"));
    let t = conformance::parse_test(
        &json!({"test_id": "X-3", "steps": [
            {"id": "a", "action": "POST", "path": "/x", "body": {}, "parallel_with": "b", "delay_ms": 100},
            {"id": "b", "action": "POST", "path": "/x", "parallel_with": "a"},
            {"id": "c", "action": "WAIT", "duration_ms": 500}
        ]}),
        "x.json".into(),
    );
    assert!(t.load_error.is_none());
    assert_eq!(t.estimated_ms(), 100 + 500 + 3 * 20 + 20);
}

#[test]
fn lanes_are_balanced() {
    let tests: Vec<_> = [5000u64, 4000, 3000, 100, 100, 100, 900]
        .iter()
        .enumerate()
        .map(|(i, ms)| {
            conformance::parse_test(
                &json!({"test_id": format!("T-{i}"), "steps": [{"id": "w", "action": "WAIT", "duration_ms": ms}]}),
                format!("t{i}.json"),
            )
        })
        .collect();
    let lanes = conformance::distribute(tests, 3);
    assert_eq!(lanes.len(), 3);
    let loads: Vec<u64> = lanes
        .iter()
        .map(|l| l.iter().map(|t| t.estimated_ms()).sum())
        .collect();
    assert!(
        loads.iter().max().unwrap() - loads.iter().min().unwrap() < 1200,
        "{loads:?}"
    );
    assert_eq!(lanes.iter().map(Vec::len).sum::<usize>(), 7);
}

/// A tiny HTTP/1.1 server that answers every request with a JSON echo of it (and sleeps 300 ms
/// first on `/slow`), to check what the step executor sends.
async fn echo_server() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.lines();
                let request_line: Vec<String> = lines
                    .next()
                    .unwrap_or_default()
                    .split(' ')
                    .map(str::to_string)
                    .collect();
                let mut headers = serde_json::Map::new();
                let mut length = 0usize;
                for line in lines {
                    if let Some((k, v)) = line.split_once(':') {
                        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                        if k == "content-length" {
                            length = v.parse().unwrap_or(0);
                        }
                        headers.insert(k, Value::String(v));
                    }
                }
                let mut body = buf[head_end + 4..].to_vec();
                while body.len() < length {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                if request_line.get(1).is_some_and(|p| p == "/slow") {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let echo = json!({
                    "method": request_line.first(),
                    "path": request_line.get(1),
                    "headers": headers,
                    "has_body": headers.contains_key("content-length") || headers.contains_key("transfer-encoding"),
                    "body": String::from_utf8_lossy(&body),
                    "job": {"id": "019a0b6e-1c2d-7e3f-8a4b-5c6d7e8f9a0b"}
                })
                .to_string();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{echo}",
                    echo.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_sends_what_the_step_says() {
    common::install_crypto_provider();
    let target = conformance::Target {
        client: reqwest::Client::new(),
        base_url: echo_server().await,
        auth: "Bearer secret".to_string(),
    };
    let test = conformance::parse_test(
        &json!({"test_id": "X-EXEC", "steps": [
            {"id": "plain", "action": "GET", "path": "/ojs/v1/health",
             "headers": {"Content-Type": "application/openjobspec+json"},
             "assertions": {"status": 200, "body": {
                 "$.method": "GET", "$.has_body": false, "$.body": "",
                 "$.headers.authorization": "Bearer secret",
                 "$.headers.content-type": "application/openjobspec+json"}}},
            {"id": "json", "action": "POST", "path": "/ojs/v1/jobs",
             "body": {"type": "test.echo", "args": [1]},
             "assertions": {"status": 200, "body": {
                 "$.headers.content-type": "application/json",
                 "$.body": "{\"args\":[1],\"type\":\"test.echo\"}"}}},
            {"id": "own-type", "action": "post", "path": "/ojs/v1/jobs",
             "headers": {"Content-Type": "application/openjobspec+json", "Accept": "application/openjobspec+json"},
             "raw_body": "{ invalid json }",
             "assertions": {"body": {
                 "$.headers.content-type": "application/openjobspec+json",
                 "$.headers.accept": "application/openjobspec+json",
                 "$.body": "{ invalid json }"}}},
            {"id": "templated", "action": "DELETE",
             "path": "/ojs/v1/jobs/{{steps.json.response.body.job.id}}",
             "body": {"job_id": "{{steps.json.response.body.job.id}}"},
             "assertions": {"body": {
                 "$.method": "DELETE",
                 "$.path": "/ojs/v1/jobs/019a0b6e-1c2d-7e3f-8a4b-5c6d7e8f9a0b",
                 "$.body": "{\"job_id\":\"019a0b6e-1c2d-7e3f-8a4b-5c6d7e8f9a0b\"}"}}},
            {"id": "a", "action": "POST", "path": "/slow", "parallel_with": "b", "body": {}},
            {"id": "b", "action": "POST", "path": "/slow", "parallel_with": "a", "body": {}},
            {"id": "same", "action": "ASSERT", "assertions": {"equality": {
                "$.steps.a.response.body.path": "/slow",
                "$.steps.json.response.body.job": "{{steps.templated.response.body.job}}"}}}
        ]}),
        "exec.json".into(),
    );
    assert!(test.load_error.is_none(), "{:?}", test.load_error);
    let started = std::time::Instant::now();
    let result = conformance::run_test(&target, &test).await;
    if let Err(f) = &result {
        panic!("{}", f.describe());
    }
    assert!(
        started.elapsed() < Duration::from_millis(550),
        "parallel_with steps ran one after another: {:?}",
        started.elapsed()
    );

    // A failing step names the step, the assertion and the response.
    let test = conformance::parse_test(
        &json!({"test_id": "X-FAIL", "steps": [
            {"id": "s1", "action": "GET", "path": "/x", "assertions": {"status": 200}},
            {"id": "s2", "action": "GET", "path": "/y", "assertions": {"status": 200, "body": {"$.method": "POST"}}},
            {"id": "s3", "action": "GET", "path": "/z", "assertions": {"status": 500}}
        ]}),
        "fail.json".into(),
    );
    let failure = conformance::run_test(&target, &test).await.unwrap_err();
    assert_eq!(failure.step, "s2");
    assert_eq!(failure.mismatch.at, "$.method");
    let text = failure.describe();
    assert!(
        text.contains("\"POST\"") && text.contains("status 200; body {"),
        "{text}"
    );
}
