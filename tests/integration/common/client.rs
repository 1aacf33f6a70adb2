//! A typed client for the integration tests: one credential bound to one [`TestServer`], with a
//! method per API operation the tests use, each returning a [`Reply`]; and the audit log file
//! and polling helpers that wait for a condition with a deadline instead of sleeping.
//!
//! Tests that send malformed bytes over raw sockets or need special TLS clients keep their own
//! code; everything else goes through here.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::TestServer;

/// How long the polling helpers wait by default before they give up.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A response: status, headers, the raw text and the body parsed as JSON (`Null` when the text
/// is not JSON; [`Reply::json`] insists).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Reply {
    /// A header's value, when present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A header that must be present and a whole number.
    pub fn header_u64(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .parse()
            .unwrap()
    }

    /// The body, which must be JSON.
    pub fn json(&self) -> &Value {
        assert!(
            serde_json::from_str::<Value>(&self.text).is_ok(),
            "not JSON ({}): {:?}",
            self.status,
            self.text
        );
        &self.body
    }

    /// Asserts the status (showing the body when it differs) and hands the reply on.
    #[track_caller]
    pub fn expect(self, status: StatusCode) -> Self {
        assert_eq!(self.status, status, "{}", self.text);
        self
    }

    /// `job.id` of an enqueue or job answer.
    #[track_caller]
    pub fn job_id(&self) -> String {
        self.body["job"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no job id ({}): {}", self.status, self.text))
            .to_string()
    }

    /// The OJS error code, or "" when there is none.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A credential (or none) and default headers against one server (its address when the client
/// was made: after a restart, make a new one). Clients made from one another with
/// [`Client::with_key`] and friends share their connection pool. A client owns what it needs,
/// so a clone can move into a spawned task.
#[derive(Clone)]
pub struct Client {
    base_url: String,
    http: reqwest::Client,
    authorization: Option<String>,
    headers: Vec<(String, String)>,
}

impl Client {
    /// A client sending `Authorization: Bearer <bearer>` (an API key or an access token).
    pub fn new(server: &TestServer, bearer: &str) -> Self {
        Self::authorized(server, &format!("Bearer {bearer}"))
    }

    /// A client sending `authorization` as the `Authorization` header, as it is.
    pub fn authorized(server: &TestServer, authorization: &str) -> Self {
        Client {
            base_url: server.base_url.clone(),
            http: server.client(),
            authorization: Some(authorization.to_string()),
            headers: Vec::new(),
        }
    }

    /// A client sending no credential.
    pub fn anonymous(server: &TestServer) -> Self {
        Client {
            base_url: server.base_url.clone(),
            http: server.client(),
            authorization: None,
            headers: Vec::new(),
        }
    }

    /// The same connections with another key.
    pub fn with_key(&self, bearer: &str) -> Self {
        self.with_authorization(Some(&format!("Bearer {bearer}")))
    }

    /// The same connections with another `Authorization` header (or none).
    pub fn with_authorization(&self, authorization: Option<&str>) -> Self {
        Client {
            authorization: authorization.map(str::to_string),
            ..self.clone()
        }
    }

    /// The same connections with `authorization` as the `Authorization` header, as it is.
    pub fn by(&self, authorization: &str) -> Self {
        self.with_authorization(Some(authorization))
    }

    /// This client with a header sent on every request (e.g. `X-OJS-Tenant`).
    pub fn with_header(&self, name: &str, value: &str) -> Self {
        let mut c = self.clone();
        c.headers.push((name.to_string(), value.to_string()));
        c
    }

    /// Acting for `tenant` (`X-OJS-Tenant`); `None` leaves the client as it is.
    pub fn for_tenant(&self, tenant: Option<&str>) -> Self {
        match tenant {
            Some(t) => self.with_header("X-OJS-Tenant", t),
            None => self.clone(),
        }
    }

    /// The underlying HTTP client (for a request this client has no method for).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req
    }

    async fn send(req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            body,
        }
    }

    /// Any request: a JSON body if given, and extra headers.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.request(method, path, headers);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::send(req).await
    }

    /// Any request with a body of raw bytes and the content type given (none if `None`).
    pub async fn call_bytes(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.request(method, path, headers).body(body);
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        Self::send(req).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body), &[]).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(body), &[]).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, None, &[]).await
    }

    // Jobs.

    /// `POST /ojs/v1/jobs` with a whole job.
    pub async fn enqueue(&self, job: Value) -> Reply {
        self.post("/ojs/v1/jobs", job).await
    }

    /// `POST /ojs/v1/jobs` of a job of `job_type` with `args` on `queue`.
    pub async fn enqueue_to(&self, queue: &str, job_type: &str, args: Value) -> Reply {
        self.enqueue(json!({"type": job_type, "args": args, "options": {"queue": queue}}))
            .await
    }

    /// `POST /ojs/v1/jobs/batch` of `jobs`.
    pub async fn enqueue_batch(&self, jobs: Vec<Value>) -> Reply {
        self.post("/ojs/v1/jobs/batch", json!({ "jobs": jobs }))
            .await
    }

    pub async fn job(&self, id: &str) -> Reply {
        self.get(&format!("/ojs/v1/jobs/{id}")).await
    }

    pub async fn cancel(&self, id: &str) -> Reply {
        self.delete(&format!("/ojs/v1/jobs/{id}")).await
    }

    pub async fn activate(&self, id: &str) -> Reply {
        self.call(
            Method::POST,
            &format!("/ojs/v1/jobs/{id}/activate"),
            None,
            &[],
        )
        .await
    }

    // Workers.

    /// `POST /ojs/v1/workers/fetch` as worker `w` (`wait_ms` for a long poll).
    pub async fn fetch(&self, queues: &[&str], count: u32, wait_ms: Option<u64>) -> Reply {
        let mut body = json!({"queues": queues, "count": count, "worker_id": "w"});
        if let Some(ms) = wait_ms {
            body["wait_ms"] = ms.into();
        }
        self.fetch_with(body).await
    }

    /// `POST /ojs/v1/workers/fetch` with a body of the caller's.
    pub async fn fetch_with(&self, body: Value) -> Reply {
        self.post("/ojs/v1/workers/fetch", body).await
    }

    pub async fn ack(&self, job_id: &str, worker_id: &str) -> Reply {
        self.post(
            "/ojs/v1/workers/ack",
            json!({"job_id": job_id, "worker_id": worker_id}),
        )
        .await
    }

    pub async fn nack(&self, job_id: &str, worker_id: &str, error: Value) -> Reply {
        self.post(
            "/ojs/v1/workers/nack",
            json!({"job_id": job_id, "worker_id": worker_id, "error": error}),
        )
        .await
    }

    pub async fn heartbeat(&self, body: Value) -> Reply {
        self.post("/ojs/v1/workers/heartbeat", body).await
    }

    // Queues and dead letters.

    pub async fn queues(&self) -> Reply {
        self.get("/ojs/v1/queues").await
    }

    pub async fn queue_stats(&self, queue: &str) -> Reply {
        self.get(&format!("/ojs/v1/queues/{queue}/stats")).await
    }

    /// A queue's depth, which must be readable.
    pub async fn queue_depth(&self, queue: &str) -> u64 {
        let r = self.queue_stats(queue).await.expect(StatusCode::OK);
        r.body["stats"]["depth"].as_u64().unwrap()
    }

    pub async fn set_queue_config(&self, queue: &str, config: Value) -> Reply {
        self.put(&format!("/ojs/v1/admin/queues/{queue}/config"), config)
            .await
    }

    pub async fn dead_letters(&self) -> Reply {
        self.get("/ojs/v1/dead-letter").await
    }

    // Keys and users.

    /// `POST /ojs/v1/admin/keys`.
    pub async fn create_key(&self, spec: Value) -> Reply {
        self.post("/ojs/v1/admin/keys", spec).await
    }

    /// A new key that must be created: its secret and id.
    pub async fn new_key(&self, spec: Value) -> (String, String) {
        let r = self.create_key(spec).await.expect(StatusCode::CREATED);
        (
            r.body["secret"].as_str().unwrap().to_string(),
            r.body["key"]["id"].as_str().unwrap().to_string(),
        )
    }

    pub async fn keys(&self) -> Reply {
        self.get("/ojs/v1/admin/keys").await
    }

    pub async fn revoke_key(&self, id: &str) -> Reply {
        self.delete(&format!("/ojs/v1/admin/keys/{id}")).await
    }

    pub async fn rotate_key(&self, id: &str, body: Value) -> Reply {
        self.post(&format!("/ojs/v1/admin/keys/{id}/rotate"), body)
            .await
    }

    pub async fn users(&self) -> Reply {
        self.get("/ojs/v1/admin/users").await
    }

    pub async fn create_user(&self, spec: Value) -> Reply {
        self.post("/ojs/v1/admin/users", spec).await
    }

    // Audit, metrics, health.

    /// `GET /ojs/v1/admin/audit?<query>`.
    pub async fn audit(&self, query: &str) -> Reply {
        self.get(&format!("/ojs/v1/admin/audit?{query}")).await
    }

    /// The `records` of an audit query (none when the answer has none).
    pub async fn audit_records(&self, query: &str) -> Vec<Value> {
        self.audit(query).await.body["records"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls an audit query until it returns at least `want` records or [`PATIENCE`] has
    /// passed; returns the last answer's records (the caller asserts on them).
    pub async fn wait_audit_records(&self, query: &str, want: usize) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let records = self.audit_records(query).await;
            if records.len() >= want || Instant::now() > deadline {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /metrics` as text.
    pub async fn metrics_text(&self) -> String {
        self.get("/metrics").await.text
    }

    pub async fn health(&self) -> Reply {
        self.get("/ojs/v1/health").await
    }
}

impl TestServer {
    /// A client with the bootstrap admin key.
    pub fn admin_client(&self) -> Client {
        Client::new(self, &self.admin_key)
    }

    /// A client with `key`.
    pub fn client_for(&self, key: &str) -> Client {
        Client::new(self, key)
    }

    /// The audit log file as it is, which must exist.
    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("data").join("audit.log")).expect("the audit log")
    }

    /// Every complete record of the audit log file (none while there is no file); each must be
    /// JSON. A last line still being written (no newline yet) is left for the next read.
    pub fn audit_records(&self) -> Vec<Value> {
        let text =
            std::fs::read_to_string(self.dir.join("data").join("audit.log")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// The audit log's records of `event_type`.
    pub fn audit_events(&self, event_type: &str) -> Vec<Value> {
        self.audit_records()
            .into_iter()
            .filter(|r| r["event_type"] == event_type)
            .collect()
    }

    /// Waits until `found` picks something out of the audit log's records; panics with `what`
    /// and the server log after [`PATIENCE`].
    pub async fn wait_audit<T>(
        &self,
        what: &str,
        mut found: impl FnMut(&[Value]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(t) = found(&self.audit_records()) {
                return t;
            }
            if Instant::now() > deadline {
                self.audit_timeout(what)
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`TestServer::wait_audit`] for tests without a runtime.
    pub fn wait_audit_blocking<T>(
        &self,
        what: &str,
        mut found: impl FnMut(&[Value]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(t) = found(&self.audit_records()) {
                return t;
            }
            if Instant::now() > deadline {
                self.audit_timeout(what)
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the first record of `event_type` satisfying `matches`.
    pub async fn wait_audit_event(
        &self,
        event_type: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_audit(&format!("a {event_type} record"), |records| {
            records
                .iter()
                .find(|r| r["event_type"] == event_type && matches(r))
                .cloned()
        })
        .await
    }

    /// [`TestServer::wait_audit_event`] for tests without a runtime.
    pub fn wait_audit_event_blocking(
        &self,
        event_type: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_audit_blocking(&format!("a {event_type} record"), |records| {
            records
                .iter()
                .find(|r| r["event_type"] == event_type && matches(r))
                .cloned()
        })
    }

    /// Waits until the audit log holds at least `at_least` records of `event_type` and returns
    /// them all; after [`PATIENCE`] returns those there are (the caller asserts on them).
    pub async fn wait_audit_count(&self, event_type: &str, at_least: usize) -> Vec<Value> {
        let all = eventually(PATIENCE, || async {
            let events = self.audit_events(event_type);
            (events.len() >= at_least).then_some(events)
        })
        .await;
        all.unwrap_or_else(|| self.audit_events(event_type))
    }

    fn audit_timeout(&self, what: &str) -> ! {
        panic!(
            "no {what} in the audit log after {PATIENCE:?}; audit log:\n{}\nserver log:\n{}",
            std::fs::read_to_string(self.dir.join("data").join("audit.log")).unwrap_or_default(),
            self.log()
        )
    }
}

/// Polls `check` until it gives `Some` or `within` has passed (then `None`): for conditions
/// that become true on their own (an asynchronous audit record, a reload, a drained queue),
/// without a fixed sleep.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = check().await {
            return Some(t);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
