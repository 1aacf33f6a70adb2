//! Runner of the official OJS conformance suites against the real `bulwark` binary.
//!
//! Test files are loaded from `OJS_CONFORMANCE_SUITES` (default `../shared/ojs-conformance/suites`
//! next to the crate root). Tests run in lanes: every lane owns one server in conformance mode and
//! runs its share of the tests one after another, resetting the server (`POST
//! /ojs/v1/admin/reset`) before each test. Lanes run concurrently on a multi-thread runtime.
//!
//! Environment:
//! - `OJS_CONFORMANCE_SUITES`: the suites folder.
//! - `OJS_CONFORMANCE_LANES`: number of lanes / servers (default 6).
//! - `OJS_CONFORMANCE_FILTER`: only run tests whose id or file path contains this text
//!   (comma-separated alternatives). The known-failure list is then only checked for tests run.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod engine;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::common::{ServerOptions, TestServer};
use engine::{Mismatch, RecordedResponse, StepRecords};

pub const SUITES_ENV: &str = "OJS_CONFORMANCE_SUITES";
pub const LANES_ENV: &str = "OJS_CONFORMANCE_LANES";
pub const FILTER_ENV: &str = "OJS_CONFORMANCE_FILTER";
pub const DEFAULT_LANES: usize = 6;

/// A test id no server can pass as written, with the reason.
pub type KnownFailure = (&'static str, &'static str);

// ---------------------------------------------------------------------------------------------
// Test files
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct TestCase {
    pub id: String,
    pub name: String,
    /// Path relative to the suites folder.
    pub file: String,
    pub setup: Vec<Step>,
    pub steps: Vec<Step>,
    pub teardown: Vec<Step>,
    /// Why the file cannot be run (malformed or using unsupported features).
    pub load_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub action: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
    pub raw_body: Option<String>,
    pub delay_ms: u64,
    pub duration_ms: Option<u64>,
    pub assertions: Option<Map<String, Value>>,
    pub parallel_with: Option<String>,
    /// How many times to send the step (each response is checked; the last is recorded).
    pub repeat: u64,
}

const STEP_KEYS: &[&str] = &[
    "id",
    "action",
    "intent",
    "path",
    "headers",
    "body",
    "raw_body",
    "delay_ms",
    "duration_ms",
    "description",
    "assertions",
    "parallel_with",
    // Informational in the suites (values are referenced through templates instead).
    "captures",
    "repeat",
];

const TEST_KEYS: &[&str] = &[
    "test_id",
    "level",
    "category",
    "name",
    "description",
    "spec_ref",
    "tags",
    "setup",
    "steps",
    "teardown",
    // Prose for the reader (e.g. ext-backpressure's "Queue X must have max_depth=1"); the
    // steps themselves establish it, so there is nothing to run.
    "preconditions",
];

/// The suites folder: `OJS_CONFORMANCE_SUITES` or `<crate>/../shared/ojs-conformance/suites`.
pub fn suites_dir() -> PathBuf {
    match std::env::var_os(SUITES_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/ojs-conformance/suites"),
    }
}

fn collect_json(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_json(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// Loads every `*.json` under `<suites>/<folder>`, recursively, sorted by path.
pub fn load_folder(folder: &str) -> Vec<TestCase> {
    let root = suites_dir();
    let dir = root.join(folder);
    assert!(
        dir.is_dir(),
        "conformance suites not found: looked for {} (set {SUITES_ENV} to the ojs-conformance \
         `suites` folder)",
        dir.display()
    );
    let mut files = Vec::new();
    collect_json(&dir, &mut files)
        .unwrap_or_else(|e| panic!("reading {}: {e} ({SUITES_ENV})", dir.display()));
    files.sort();
    assert!(
        !files.is_empty(),
        "no test files under {} ({SUITES_ENV})",
        dir.display()
    );
    files
        .iter()
        .map(|path| {
            let rel = path
                .strip_prefix(&root)
                .unwrap_or(path)
                .display()
                .to_string();
            let text = std::fs::read_to_string(path);
            match text
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
            {
                Ok(doc) => parse_test(&doc, rel),
                Err(e) => broken(rel.clone(), rel, format!("cannot read test file: {e}")),
            }
        })
        .collect()
}

fn broken(id: String, file: String, error: String) -> TestCase {
    TestCase {
        id,
        name: String::new(),
        file,
        setup: Vec::new(),
        steps: Vec::new(),
        teardown: Vec::new(),
        load_error: Some(error),
    }
}

/// Parses one test document. Unsupported features become a `load_error`, so the test fails with
/// a clear message instead of silently passing.
pub fn parse_test(doc: &Value, file: String) -> TestCase {
    let id = doc
        .get("test_id")
        .and_then(Value::as_str)
        .map_or_else(|| file.clone(), str::to_string);
    let name = doc
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(obj) = doc.as_object() else {
        return broken(id, file, "test file is not a JSON object".into());
    };
    if let Some(k) = obj.keys().find(|k| !TEST_KEYS.contains(&k.as_str())) {
        return broken(id, file, format!("unsupported test field {k:?}"));
    }
    let section = |key: &str| -> Result<Vec<Step>, String> {
        let steps = match obj.get(key) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(a)) => a,
            Some(Value::Object(o)) => match o.get("steps") {
                Some(Value::Array(a)) => a,
                _ => return Err(format!("{key} has no steps array")),
            },
            Some(_) => return Err(format!("{key} must be an array of steps")),
        };
        steps.iter().map(parse_step).collect()
    };
    let parsed = section("steps").and_then(|steps| {
        if steps.is_empty() {
            return Err("test has no steps".to_string());
        }
        Ok((section("setup")?, steps, section("teardown")?))
    });
    match parsed {
        Ok((setup, steps, teardown)) => TestCase {
            id,
            name,
            file,
            setup,
            steps,
            teardown,
            load_error: None,
        },
        Err(e) => {
            let mut t = broken(id, file, e);
            t.name = name;
            t
        }
    }
}

fn parse_step(v: &Value) -> Result<Step, String> {
    let obj = v.as_object().ok_or("step is not an object")?;
    let id = obj
        .get("id")
        .and_then(Value::as_str)
        .ok_or("step without id")?
        .to_string();
    if let Some(k) = obj.keys().find(|k| !STEP_KEYS.contains(&k.as_str())) {
        return Err(format!("step {id}: unsupported step field {k:?}"));
    }
    let action = obj
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("step {id}: no action"))?
        .to_ascii_uppercase();
    let known_action = matches!(
        action.as_str(),
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" | "WAIT" | "ASSERT"
    );
    if !known_action {
        return Err(format!("step {id}: unsupported action {action:?}"));
    }
    let path = obj
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !matches!(action.as_str(), "WAIT" | "ASSERT") && !path.starts_with('/') {
        return Err(format!(
            "step {id}: HTTP step without a path starting with /"
        ));
    }
    let mut headers = Vec::new();
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                let v = v
                    .as_str()
                    .ok_or_else(|| format!("step {id}: header {k} is not a string"))?;
                headers.push((k.clone(), v.to_string()));
            }
        }
        Some(_) => return Err(format!("step {id}: headers must be an object")),
    }
    let ms = |key: &str| -> Result<Option<u64>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("step {id}: {key} must be a non-negative integer")),
        }
    };
    let raw_body = match obj.get("raw_body") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(format!("step {id}: raw_body must be a string")),
    };
    let assertions = match obj.get("assertions") {
        None | Some(Value::Null) => None,
        Some(Value::Object(a)) => Some(a.clone()),
        Some(_) => return Err(format!("step {id}: assertions must be an object")),
    };
    let repeat = match ms("repeat")? {
        None => 1,
        Some(0) => return Err(format!("step {id}: repeat must be at least 1")),
        Some(n) => n,
    };
    if repeat > 1 && obj.get("parallel_with").is_some_and(|p| !p.is_null()) {
        return Err(format!(
            "step {id}: repeat with parallel_with is not supported"
        ));
    }
    Ok(Step {
        repeat,
        action,
        path,
        headers,
        body: obj.get("body").cloned(),
        raw_body,
        delay_ms: ms("delay_ms")?.unwrap_or(0),
        duration_ms: ms("duration_ms")?,
        assertions,
        parallel_with: obj
            .get("parallel_with")
            .and_then(Value::as_str)
            .map(str::to_string),
        id,
    })
}

impl TestCase {
    /// Rough run time, for spreading tests over lanes.
    pub fn estimated_ms(&self) -> u64 {
        self.setup
            .iter()
            .chain(&self.steps)
            .chain(&self.teardown)
            .map(|s| {
                let wait = if s.action == "WAIT" {
                    s.duration_ms.unwrap_or(s.delay_ms)
                } else {
                    s.delay_ms
                };
                wait + 20
            })
            .sum::<u64>()
            + 20
    }
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// Why a test failed: the step, the first failed assertion and what the server answered.
#[derive(Debug, Clone)]
pub struct Failure {
    pub step: String,
    pub mismatch: Mismatch,
    /// `status 404; body {...}` (truncated), when the step got a response.
    pub response: Option<String>,
}

impl Failure {
    fn plain(step: &str, at: &str, message: String) -> Failure {
        Failure {
            step: step.to_string(),
            mismatch: Mismatch {
                at: at.to_string(),
                expected: String::new(),
                actual: String::new(),
                message,
            },
            response: None,
        }
    }

    pub fn describe(&self) -> String {
        let m = &self.mismatch;
        let mut s = format!("step {}: {}: {}", self.step, m.at, m.message);
        if !m.expected.is_empty() || !m.actual.is_empty() {
            let _ = write!(
                s,
                "\n        expected: {}\n        actual:   {}",
                m.expected, m.actual
            );
        }
        if let Some(r) = &self.response {
            let _ = write!(s, "\n        response: {r}");
        }
        s
    }
}

#[derive(Debug, Clone)]
pub struct TestResult {
    pub id: String,
    pub name: String,
    pub file: String,
    pub outcome: Result<(), Failure>,
    pub elapsed: Duration,
}

// ---------------------------------------------------------------------------------------------
// Executing steps
// ---------------------------------------------------------------------------------------------

/// What a lane needs to talk to its server.
#[derive(Clone)]
pub struct Target {
    pub client: reqwest::Client,
    pub base_url: String,
    pub auth: String,
}

struct HttpOutcome {
    response: RecordedResponse,
    elapsed: Duration,
}

fn response_summary(r: &RecordedResponse) -> String {
    let body = r.raw.replace('\n', " ");
    format!("status {}; body {}", r.status, engine::truncate(&body, 500))
}

async fn send(target: &Target, step: &Step, records: &StepRecords) -> Result<HttpOutcome, Failure> {
    if step.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(step.delay_ms)).await;
    }
    let path = engine::resolve_str(&step.path, records);
    let method = reqwest::Method::from_bytes(step.action.as_bytes())
        .map_err(|e| Failure::plain(&step.id, "action", format!("bad method: {e}")))?;
    let mut req = target
        .client
        .request(method, format!("{}{}", target.base_url, path));
    let mut has_auth = false;
    let mut has_content_type = false;
    for (k, v) in &step.headers {
        has_auth |= k.eq_ignore_ascii_case("authorization");
        has_content_type |= k.eq_ignore_ascii_case("content-type");
        req = req.header(k.as_str(), engine::resolve_str(v, records));
    }
    if !has_auth {
        req = req.header("Authorization", target.auth.as_str());
    }
    let body: Option<Vec<u8>> = if let Some(raw) = &step.raw_body {
        Some(engine::resolve_str(raw, records).into_bytes())
    } else {
        step.body
            .as_ref()
            .map(|b| serde_json::to_vec(&engine::resolve_value(b, records)).unwrap())
    };
    if let Some(body) = body {
        if !has_content_type {
            req = req.header("Content-Type", "application/json");
        }
        req = req.body(body);
    }
    let started = Instant::now();
    let result = async {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in resp.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_ascii_lowercase())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        let bytes = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, headers, bytes))
    }
    .await;
    let elapsed = started.elapsed();
    let (status, headers, bytes) = result.map_err(|e| {
        Failure::plain(
            &step.id,
            "request",
            format!("{} {path} failed: {e:?}", step.action),
        )
    })?;
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    let body = if raw.trim().is_empty() {
        None
    } else {
        serde_json::from_str::<Value>(&raw).ok()
    };
    Ok(HttpOutcome {
        response: RecordedResponse {
            status,
            headers,
            raw,
            body,
        },
        elapsed,
    })
}

fn status_matches(expected: &Value, status: u16) -> Result<(), String> {
    let actual = Value::from(status);
    match expected {
        Value::Number(_) => engine::match_value(expected, Some(&actual)),
        Value::String(s) => match s.trim().parse::<u16>() {
            Ok(n) if n == status => Ok(()),
            Ok(n) => Err(format!("expected {n}, got {status}")),
            Err(_) => engine::match_value(expected, Some(&actual)),
        },
        Value::Object(_) => engine::match_value(expected, Some(&actual)),
        other => Err(format!("unsupported status matcher {other}")),
    }
}

fn simple(at: &str, expected: &Value, actual: String, message: String) -> Mismatch {
    Mismatch {
        at: at.to_string(),
        expected: engine::truncate(&expected.to_string(), 300),
        actual,
        message,
    }
}

/// Evaluates the assertions of an HTTP step (templates already resolved). Order: status, body,
/// body_absent, body_contains, headers, timing.
pub fn check_response(
    assertions: &Map<String, Value>,
    r: &RecordedResponse,
    elapsed: Duration,
) -> Result<(), Mismatch> {
    const ORDER: &[&str] = &[
        "status",
        "status_in",
        "status_one_of",
        "body",
        "body_absent",
        "body_contains",
        "headers",
        "timing_ms",
    ];
    if let Some(k) = assertions
        .keys()
        .find(|k| !ORDER.contains(&k.as_str()) && !k.ends_with("_comment"))
    {
        return Err(simple(
            k,
            &Value::Null,
            String::new(),
            format!("unsupported assertion {k:?} in test"),
        ));
    }
    for key in ORDER {
        let Some(expected) = assertions.get(*key) else {
            continue;
        };
        match *key {
            "status" => {
                if let Err(e) = status_matches(expected, r.status) {
                    return Err(simple("status", expected, r.status.to_string(), e));
                }
            }
            "status_in" | "status_one_of" => {
                let list = expected.as_array().cloned().unwrap_or_default();
                if !list.iter().any(|s| status_matches(s, r.status).is_ok()) {
                    return Err(simple(
                        "status",
                        expected,
                        r.status.to_string(),
                        format!("expected status in {expected}, got {}", r.status),
                    ));
                }
            }
            "body" => {
                let map = expected.as_object().ok_or_else(|| {
                    simple(
                        "body",
                        expected,
                        String::new(),
                        "body must be an object".into(),
                    )
                })?;
                engine::check_body(map, r.body.as_ref())?;
            }
            "body_absent" => {
                for path in expected.as_array().cloned().unwrap_or_default() {
                    let path = path.as_str().unwrap_or_default().to_string();
                    let found = r
                        .body
                        .as_ref()
                        .and_then(|b| engine::resolve(&path, b).ok().flatten());
                    if let Some(v) = found {
                        return Err(simple(
                            &path,
                            &Value::String("absent".into()),
                            engine::show(Some(&v)),
                            "expected the field to be absent".into(),
                        ));
                    }
                }
            }
            "body_contains" => {
                for sub in expected.as_array().cloned().unwrap_or_default() {
                    let sub = sub.as_str().unwrap_or_default();
                    if !r.raw.contains(sub) {
                        return Err(simple(
                            "body_contains",
                            &Value::String(sub.to_string()),
                            engine::truncate(&r.raw, 300),
                            format!("body does not contain {sub:?}"),
                        ));
                    }
                }
            }
            "headers" => {
                let map = expected.as_object().cloned().unwrap_or_default();
                for (name, m) in &map {
                    let actual = r.headers.get(&name.to_ascii_lowercase());
                    let result = match (m, actual) {
                        (Value::String(want), Some(got)) if want == got => Ok(()),
                        (Value::String(want), got) => Err(format!(
                            "expected header {name}: {want:?}, got {}",
                            got.map_or("<missing>".to_string(), |g| format!("{g:?}"))
                        )),
                        (m, got) => {
                            let got = got.map(|g| Value::String(g.clone()));
                            engine::match_value(m, got.as_ref())
                        }
                    };
                    if let Err(e) = result {
                        return Err(simple(
                            &format!("header:{name}"),
                            m,
                            actual.cloned().unwrap_or_else(|| "<missing>".into()),
                            e,
                        ));
                    }
                }
            }
            "timing_ms" => {
                let ms = elapsed.as_secs_f64() * 1000.0;
                let t = expected.as_object().cloned().unwrap_or_default();
                let actual = format!("{ms:.0} ms");
                if let Some(k) = t
                    .keys()
                    .find(|k| !["less_than", "greater_than", "approximate"].contains(&k.as_str()))
                {
                    return Err(simple(
                        "timing_ms",
                        expected,
                        actual,
                        format!("unsupported timing assertion {k:?}"),
                    ));
                }
                if let Some(lt) = t.get("less_than").and_then(Value::as_f64) {
                    if ms >= lt {
                        return Err(simple(
                            "timing_ms",
                            expected,
                            actual,
                            format!("not < {lt} ms"),
                        ));
                    }
                }
                if let Some(gt) = t.get("greater_than").and_then(Value::as_f64) {
                    if ms <= gt {
                        return Err(simple(
                            "timing_ms",
                            expected,
                            actual,
                            format!("not > {gt} ms"),
                        ));
                    }
                }
                if let Some(ap) = t.get("approximate").and_then(Value::as_f64) {
                    if !engine::approx_ok(ap, ms) {
                        return Err(simple(
                            "timing_ms",
                            expected,
                            actual,
                            format!("not ~{ap} ms"),
                        ));
                    }
                }
            }
            _ => unreachable!(),
        }
    }
    Ok(())
}

/// Evaluates the cross-step assertions of an `ASSERT` step (templates already resolved).
pub fn check_cross_step(
    assertions: &Map<String, Value>,
    records: &StepRecords,
) -> Result<(), Mismatch> {
    for (key, spec) in assertions {
        match key.as_str() {
            "exclusive_claim" => check_exclusive_claim(spec)?,
            "equality" => {
                let map = spec.as_object().ok_or_else(|| {
                    simple(
                        key,
                        spec,
                        String::new(),
                        "equality must be an object".into(),
                    )
                })?;
                let doc = records.as_document();
                for (left, right) in map {
                    let actual = engine::resolve(left, &doc).map_err(|e| {
                        simple(left, right, String::new(), format!("bad path: {e}"))
                    })?;
                    if actual.as_ref() != Some(right) {
                        return Err(simple(
                            left,
                            right,
                            engine::show(actual.as_ref()),
                            "values differ".into(),
                        ));
                    }
                }
            }
            k if k.ends_with("_comment") => {}
            other => {
                return Err(simple(
                    other,
                    spec,
                    String::new(),
                    format!("unsupported ASSERT assertion {other:?} in test"),
                ))
            }
        }
    }
    Ok(())
}

fn check_exclusive_claim(spec: &Value) -> Result<(), Mismatch> {
    let at = "exclusive_claim";
    let wanted: Vec<&str> = ["exactly_one_has_job", "exactly_one_empty"]
        .into_iter()
        .filter(|k| spec.get(*k).and_then(Value::as_bool) == Some(true))
        .collect();
    let fail = |message: String, actual: String| {
        Err(Mismatch {
            at: at.to_string(),
            expected: wanted.join(", "),
            actual,
            message,
        })
    };
    let Some(obj) = spec.as_object() else {
        return fail("exclusive_claim must be an object".into(), String::new());
    };
    if let Some(k) = obj.keys().find(|k| {
        ![
            "job_id",
            "fetches",
            "exactly_one_has_job",
            "exactly_one_empty",
        ]
        .contains(&k.as_str())
    }) {
        return fail(
            format!("unsupported exclusive_claim field {k:?}"),
            String::new(),
        );
    }
    let Some(job_id) = obj.get("job_id").and_then(Value::as_str) else {
        return fail("job_id missing".into(), String::new());
    };
    if job_id.contains("{{") {
        return fail(format!("job_id did not resolve: {job_id}"), String::new());
    }
    let Some(fetches) = obj.get("fetches").and_then(Value::as_array) else {
        return fail("fetches missing".into(), String::new());
    };
    let mut with_job = 0;
    let mut empty = 0;
    for (i, f) in fetches.iter().enumerate() {
        let Some(jobs) = f.as_array() else {
            return fail(
                format!("fetch {i} is not an array of jobs (unresolved template?)"),
                engine::show(Some(f)),
            );
        };
        if jobs.is_empty() {
            empty += 1;
        }
        if jobs
            .iter()
            .any(|j| j.get("id").and_then(Value::as_str) == Some(job_id))
        {
            with_job += 1;
        }
    }
    let actual = format!(
        "{with_job} fetches got the job, {empty} were empty: {}",
        engine::truncate(&Value::Array(fetches.clone()).to_string(), 300)
    );
    if obj.get("exactly_one_has_job").and_then(Value::as_bool) == Some(true) && with_job != 1 {
        return fail(
            format!("expected exactly one fetch to get job {job_id}"),
            actual,
        );
    }
    if obj.get("exactly_one_empty").and_then(Value::as_bool) == Some(true) && empty != 1 {
        return fail("expected exactly one fetch to be empty".into(), actual);
    }
    Ok(())
}

/// Indices of the steps from `i` on that run together with step `i` (`parallel_with`).
fn parallel_group(steps: &[Step], i: usize) -> Vec<usize> {
    let mut group = vec![i];
    let mut j = i + 1;
    while j < steps.len() {
        let joined = group.iter().any(|&g| {
            steps[g].parallel_with.as_deref() == Some(steps[j].id.as_str())
                || steps[j].parallel_with.as_deref() == Some(steps[g].id.as_str())
        });
        if !joined || matches!(steps[j].action.as_str(), "WAIT" | "ASSERT") {
            break;
        }
        group.push(j);
        j += 1;
    }
    group
}

async fn run_steps(
    target: &Target,
    steps: &[Step],
    records: &mut StepRecords,
) -> Result<(), Failure> {
    let mut i = 0;
    while i < steps.len() {
        let step = &steps[i];
        match step.action.as_str() {
            "WAIT" => {
                let ms = step.duration_ms.unwrap_or(step.delay_ms);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                i += 1;
            }
            "ASSERT" => {
                if step.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(step.delay_ms)).await;
                }
                if let Some(a) = &step.assertions {
                    let resolved = engine::resolve_value(&Value::Object(a.clone()), records);
                    let resolved = resolved.as_object().cloned().unwrap_or_default();
                    check_cross_step(&resolved, records).map_err(|mismatch| Failure {
                        step: step.id.clone(),
                        mismatch,
                        response: None,
                    })?;
                }
                i += 1;
            }
            _ if steps[i].repeat > 1 && parallel_group(steps, i).len() == 1 => {
                for _ in 0..step.repeat {
                    let snapshot = records.clone();
                    let outcome = send(target, step, &snapshot).await?;
                    records.insert(&step.id, outcome.response.clone());
                    if let Some(a) = &step.assertions {
                        let resolved = engine::resolve_value(&Value::Object(a.clone()), records);
                        let resolved = resolved.as_object().cloned().unwrap_or_default();
                        check_response(&resolved, &outcome.response, outcome.elapsed).map_err(
                            |mismatch| Failure {
                                step: step.id.clone(),
                                mismatch,
                                response: Some(response_summary(&outcome.response)),
                            },
                        )?;
                    }
                }
                i += 1;
            }
            _ => {
                let group = parallel_group(steps, i);
                let snapshot = records.clone();
                let outcomes = futures_util::future::join_all(
                    group.iter().map(|&g| send(target, &steps[g], &snapshot)),
                )
                .await;
                let mut checked = Vec::new();
                for (&g, outcome) in group.iter().zip(outcomes) {
                    let outcome = outcome?;
                    records.insert(&steps[g].id, outcome.response.clone());
                    checked.push((g, outcome));
                }
                for (g, outcome) in checked {
                    let step = &steps[g];
                    if let Some(a) = &step.assertions {
                        let resolved = engine::resolve_value(&Value::Object(a.clone()), records);
                        let resolved = resolved.as_object().cloned().unwrap_or_default();
                        check_response(&resolved, &outcome.response, outcome.elapsed).map_err(
                            |mismatch| Failure {
                                step: step.id.clone(),
                                mismatch,
                                response: Some(response_summary(&outcome.response)),
                            },
                        )?;
                    }
                }
                i += group.len();
            }
        }
    }
    Ok(())
}

/// Runs one test against a freshly reset server: setup, steps (stopping at the first failed
/// step), then teardown (whose failures are ignored).
pub async fn run_test(target: &Target, test: &TestCase) -> Result<(), Failure> {
    if let Some(e) = &test.load_error {
        return Err(Failure::plain("-", "test file", e.clone()));
    }
    let mut records = StepRecords::default();
    let mut result = run_steps(target, &test.setup, &mut records).await;
    if let Err(f) = &mut result {
        f.step = format!("setup/{}", f.step);
    } else {
        result = run_steps(target, &test.steps, &mut records).await;
    }
    let _ = run_steps(target, &test.teardown, &mut records).await;
    result
}

// ---------------------------------------------------------------------------------------------
// Lanes
// ---------------------------------------------------------------------------------------------

async fn reset(target: &Target) -> Result<(), String> {
    let resp = target
        .client
        .post(format!("{}/ojs/v1/admin/reset", target.base_url))
        .header("Authorization", target.auth.as_str())
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .map_err(|e| format!("reset request failed: {e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    if status == 200 {
        Ok(())
    } else {
        Err(format!(
            "POST /ojs/v1/admin/reset answered {status}: {}",
            engine::truncate(&body, 300)
        ))
    }
}

fn log_tail(server: &TestServer) -> String {
    let log = server.log();
    let start = log.len().saturating_sub(1500);
    let start = (start..log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(log.len());
    log[start..].to_string()
}

async fn run_lane(tests: Vec<TestCase>, options: ServerOptions) -> Vec<TestResult> {
    let started = tokio::task::spawn_blocking(move || TestServer::start(options)).await;
    let mut server = match started {
        Ok(server) => server,
        Err(e) => {
            let message = match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into()),
                Err(e) => e.to_string(),
            };
            return tests
                .into_iter()
                .map(|t| TestResult {
                    id: t.id,
                    name: t.name,
                    file: t.file,
                    outcome: Err(Failure::plain(
                        "-",
                        "server",
                        format!("server did not start: {}", engine::truncate(&message, 1500)),
                    )),
                    elapsed: Duration::ZERO,
                })
                .collect();
        }
    };
    let mut target = Target {
        client: server.client(),
        base_url: server.base_url.clone(),
        auth: server.auth(),
    };
    let mut results = Vec::with_capacity(tests.len());
    for test in tests {
        let started = Instant::now();
        let mut outcome = match reset(&target).await {
            Ok(()) => Ok(()),
            Err(first) => {
                // The server may have died during the previous test: start it again.
                let tail = log_tail(&server);
                tokio::task::block_in_place(|| server.restart());
                target.base_url = server.base_url.clone();
                match reset(&target).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(Failure::plain(
                        "reset",
                        "reset",
                        format!("{first}; after a restart: {e}; server log tail:\n{tail}"),
                    )),
                }
            }
        };
        if outcome.is_ok() {
            outcome = run_test(&target, &test).await;
            if let Err(f) = &mut outcome {
                if f.mismatch.at == "request" {
                    let _ = write!(
                        f.mismatch.message,
                        "\n        server log tail:\n{}",
                        log_tail(&server)
                    );
                }
            }
        }
        results.push(TestResult {
            id: test.id,
            name: test.name,
            file: test.file,
            outcome,
            elapsed: started.elapsed(),
        });
    }
    drop(server);
    results
}

/// Spreads tests over `lanes` lanes by estimated duration (longest first onto the least loaded
/// lane); each lane keeps its tests in id order.
pub fn distribute(tests: Vec<TestCase>, lanes: usize) -> Vec<Vec<TestCase>> {
    let lanes = lanes.max(1).min(tests.len().max(1));
    let mut sorted = tests;
    sorted.sort_by(|a, b| {
        b.estimated_ms()
            .cmp(&a.estimated_ms())
            .then(a.id.cmp(&b.id))
    });
    let mut out: Vec<(u64, Vec<TestCase>)> = (0..lanes).map(|_| (0, Vec::new())).collect();
    for t in sorted {
        let lane = out
            .iter_mut()
            .min_by_key(|(load, _)| *load)
            .expect("at least one lane");
        lane.0 += t.estimated_ms();
        lane.1.push(t);
    }
    out.into_iter()
        .map(|(_, mut tests)| {
            tests.sort_by(|a, b| a.id.cmp(&b.id));
            tests
        })
        .filter(|t| !t.is_empty())
        .collect()
}

fn lane_count() -> usize {
    std::env::var(LANES_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_LANES)
}

fn filter(tests: Vec<TestCase>) -> (Vec<TestCase>, Option<String>) {
    match std::env::var(FILTER_ENV) {
        Ok(f) if !f.trim().is_empty() => {
            let wanted: Vec<&str> = f
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            let kept = tests
                .into_iter()
                .filter(|t| {
                    wanted
                        .iter()
                        .any(|w| t.id.contains(w) || t.file.contains(w))
                })
                .collect();
            (kept, Some(f))
        }
        _ => (tests, None),
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

pub struct Report {
    pub folder: String,
    pub known: &'static [KnownFailure],
    pub results: Vec<TestResult>,
    pub lanes: usize,
    pub elapsed: Duration,
    pub filter: Option<String>,
}

impl Report {
    fn known(&self, id: &str) -> Option<&'static str> {
        self.known.iter().find(|(k, _)| *k == id).map(|(_, r)| *r)
    }

    pub fn unexpected_failures(&self) -> Vec<&TestResult> {
        self.results
            .iter()
            .filter(|r| r.outcome.is_err() && self.known(&r.id).is_none())
            .collect()
    }

    pub fn known_failures(&self) -> Vec<&TestResult> {
        self.results
            .iter()
            .filter(|r| r.outcome.is_err() && self.known(&r.id).is_some())
            .collect()
    }

    pub fn unexpected_passes(&self) -> Vec<&TestResult> {
        self.results
            .iter()
            .filter(|r| r.outcome.is_ok() && self.known(&r.id).is_some())
            .collect()
    }

    pub fn ok(&self) -> bool {
        self.unexpected_failures().is_empty() && self.unexpected_passes().is_empty()
    }

    pub fn summary(&self) -> String {
        let passed = self.results.iter().filter(|r| r.outcome.is_ok()).count();
        let failed = self.unexpected_failures();
        let known = self.known_failures();
        let surprising = self.unexpected_passes();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n=== OJS conformance {}: {} tests on {} lanes in {:.1} s{} ===",
            self.folder,
            self.results.len(),
            self.lanes,
            self.elapsed.as_secs_f64(),
            self.filter
                .as_ref()
                .map(|f| format!(" ({FILTER_ENV}={f})"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "{}: passed {passed}, failed {}, known failures {}{}",
            self.folder,
            failed.len(),
            known.len(),
            if surprising.is_empty() {
                String::new()
            } else {
                format!(", known failures now passing {}", surprising.len())
            }
        );
        if !failed.is_empty() {
            let _ = writeln!(s, "\nFAILED ({}):", failed.len());
            for r in &failed {
                let _ = writeln!(s, "  {} {} [{}]", r.id, r.name, r.file);
                if let Err(f) = &r.outcome {
                    let _ = writeln!(s, "      {}", f.describe());
                }
            }
        }
        if !surprising.is_empty() {
            let _ = writeln!(
                s,
                "\nKNOWN FAILURES THAT NOW PASS (take them off KNOWN_FAILURES in \
                 tests/integration/conformance_core.rs):"
            );
            for r in &surprising {
                let _ = writeln!(s, "  {} {} [{}]", r.id, r.name, r.file);
            }
        }
        if !known.is_empty() {
            let _ = writeln!(s, "\nKNOWN FAILURES (no server can pass these as written):");
            for r in &known {
                let _ = writeln!(
                    s,
                    "  {} {}: {}",
                    r.id,
                    r.name,
                    self.known(&r.id).unwrap_or_default()
                );
                if let Err(f) = &r.outcome {
                    let _ = writeln!(s, "      {}", f.describe());
                }
            }
        }
        s
    }
}

/// Runs every test under `<suites>/<folder>` on fresh servers and returns the report.
pub fn run_folder(folder: &str, known: &'static [KnownFailure]) -> Report {
    run_folder_with(folder, known, &ServerOptions::conformance())
}

/// [`run_folder`] on servers started with `options` (conformance mode is switched on).
pub fn run_folder_with(
    folder: &str,
    known: &'static [KnownFailure],
    options: &ServerOptions,
) -> Report {
    let mut options = options.clone();
    options.conformance = true;
    let (tests, filter) = filter(load_folder(folder));
    let lanes_wanted = lane_count();
    let lanes = distribute(tests, lanes_wanted);
    let lane_count = lanes.len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut results: Vec<TestResult> = runtime.block_on(async {
        let handles: Vec<_> = lanes
            .into_iter()
            .map(|l| tokio::spawn(run_lane(l, options.clone())))
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.expect("lane task panicked"));
        }
        all
    });
    results.sort_by(|a, b| a.id.cmp(&b.id).then(a.file.cmp(&b.file)));
    Report {
        folder: folder.to_string(),
        known,
        results,
        lanes: lane_count,
        elapsed: started.elapsed(),
        filter,
    }
}

/// Runs a folder and fails (with the summary as the message) on any unexpected result.
pub fn run_and_assert(folder: &str, known: &'static [KnownFailure]) {
    run_and_assert_with(folder, known, &ServerOptions::conformance());
}

/// [`run_and_assert`] on servers started with `options` (e.g. over HTTPS).
pub fn run_and_assert_with(folder: &str, known: &'static [KnownFailure], options: &ServerOptions) {
    crate::common::install_crypto_provider();
    let report = run_folder_with(folder, known, options);
    let summary = report.summary();
    if report.ok() {
        println!("{summary}");
    } else {
        panic!("{summary}");
    }
}
