//! The access matrix: every route of the route table × every built-in role × a tenant-bound
//! and a system-scoped credential × the caller's own scope and another tenant, checked against
//! what the table and the role definitions say (`bulwark::http::access::ROUTES`,
//! `bulwark::auth::Policy`). Fixtures are made fresh for every case by the bootstrap
//! administrator, so each request meets exactly the state it expects.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};

use bulwark::auth::{Permission, Policy, Reach};
use bulwark::http::access::{Need, Route, ROUTES};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use common::client::{Client, Reply};
use common::{ServerOptions, TestServer};

const ROLES: [&str; 6] = [
    "producer",
    "worker",
    "operator",
    "admin",
    "observer",
    "submitter",
];
const OWN_TENANT: &str = "acme";
const OTHER_TENANT: &str = "globex";
const PASSWORD: &str = "Correct-Horse-Battery-9";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A 2xx answer.
    Allowed,
    /// 403 `permission_denied`.
    Forbidden,
    /// 404, byte for byte the answer to an id nobody used.
    Hidden,
    /// No credential needed.
    Public,
}

struct Cred {
    role: &'static str,
    tenant: Option<&'static str>,
    bearer: String,
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", UNIQUE.fetch_add(1, Ordering::Relaxed))
}

/// Routes that name one job (or key, or user) owned by some scope.
fn by_id(route: &Route) -> bool {
    route.path.contains("{id}")
        || matches!(
            route.path,
            "/ojs/v1/workers/ack" | "/ojs/v1/workers/nack" | "/ojs/v1/workers/heartbeat"
        )
}

fn key_route(route: &Route) -> bool {
    route.path.starts_with("/ojs/v1/admin/keys")
}

/// What the table and the roles say should happen.
fn expected(route: &Route, cred: &Cred, other: bool) -> Expect {
    let (permission, system_route) = match route.need {
        Need::Public => return Expect::Public,
        Need::Tenant(p) => (p, false),
        Need::System(p) => (p, true),
    };
    let grants = Policy::default().grants(&[cred.role.to_string()], None, None);
    let admin = grants.has(Permission::Admin);
    if other && !by_id(route) {
        // Acting for another tenant through the header: only a system administrator may, and
        // never on a system route.
        if cred.tenant.is_some() || !admin || system_route {
            return Expect::Forbidden;
        }
    }
    if system_route && cred.tenant.is_some() {
        return Expect::Forbidden;
    }
    match grants.decide(permission, None) {
        Err(_) => Expect::Forbidden,
        Ok(Reach::OwnJobs) if !by_id(route) && permission != Permission::Enqueue => {
            Expect::Forbidden
        }
        // A system administrator manages every API key.
        Ok(_) if other && key_route(route) && cred.tenant.is_none() => Expect::Allowed,
        Ok(_) if other && by_id(route) => Expect::Hidden,
        // Activating someone else's pending job takes what managing it takes (cancel on its
        // queue); the fixtures belong to the bootstrap administrator. Without inspect the job
        // stays invisible.
        Ok(_)
            if route.path == "/ojs/v1/jobs/{id}/activate"
                && !matches!(
                    grants.decide(Permission::Cancel, Some("matrix")),
                    Ok(Reach::All)
                ) =>
        {
            match grants.decide(Permission::Inspect, Some("matrix")) {
                Ok(Reach::All) => Expect::Forbidden,
                _ => Expect::Hidden,
            }
        }
        // The fixtures belong to the bootstrap administrator, not to a submitter.
        Ok(Reach::OwnJobs) if by_id(route) => Expect::Hidden,
        Ok(_) => Expect::Allowed,
    }
}

struct Harness {
    server: TestServer,
    /// The bootstrap administrator.
    api: Client,
}

impl Harness {
    /// The bootstrap administrator, acting for `scope`.
    async fn admin(&self, method: Method, path: &str, scope: Option<&str>, body: Value) -> Value {
        let Reply { status, body, .. } = self
            .api
            .for_tenant(scope)
            .call(method, path, Some(body), &[])
            .await;
        assert!(status.is_success(), "fixture {path}: {status} {body}");
        body
    }

    async fn job(&self, scope: Option<&str>, options: Value) -> String {
        let body = self
            .admin(
                Method::POST,
                "/ojs/v1/jobs",
                scope,
                json!({"type": "matrix.job", "args": [], "options": options}),
            )
            .await;
        body["job"]["id"].as_str().unwrap().to_string()
    }

    async fn state(&self, scope: Option<&str>, id: &str) -> String {
        let Reply { body, .. } = self
            .api
            .for_tenant(scope)
            .call(Method::GET, &format!("/ojs/v1/jobs/{id}"), None, &[])
            .await;
        body["job"]["state"].as_str().unwrap_or("gone").to_string()
    }

    /// A job in a queue of its own, fetched (so active) by `bearer` in `scope`.
    async fn held_job(&self, scope: Option<&str>, bearer: &str) -> String {
        let queue = unique("held-");
        let id = self.job(scope, json!({"queue": queue})).await;
        let Reply { status, body, .. } = self
            .api
            .with_authorization(Some(bearer))
            .for_tenant(scope)
            .call(
                Method::POST,
                "/ojs/v1/workers/fetch",
                Some(json!({"queues": [queue], "worker_id": "w"})),
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "fixture fetch: {body}");
        assert_eq!(body["jobs"][0]["id"], id.as_str());
        id
    }

    async fn dead_job(&self, scope: Option<&str>) -> String {
        let queue = unique("dead-");
        let id = self
            .job(
                scope,
                json!({"queue": queue, "retry": {"max_attempts": 1, "on_exhaustion": "dead_letter"}}),
            )
            .await;
        let auth = self.server.auth();
        self.held(scope, &auth, &queue).await;
        self.admin(
            Method::POST,
            "/ojs/v1/workers/nack",
            scope,
            json!({"job_id": id, "worker_id": "w", "error": {"code": "x", "message": "x"}}),
        )
        .await;
        id
    }

    async fn held(&self, scope: Option<&str>, bearer: &str, queue: &str) {
        let Reply { status, .. } = self
            .api
            .with_authorization(Some(bearer))
            .for_tenant(scope)
            .call(
                Method::POST,
                "/ojs/v1/workers/fetch",
                Some(json!({"queues": [queue], "worker_id": "w"})),
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }

    async fn key(&self, tenant: Option<&str>) -> (String, String) {
        let name = unique("fixture-key-");
        let body = self
            .admin(
                Method::POST,
                "/ojs/v1/admin/keys",
                None,
                json!({"name": name, "roles": ["producer"], "tenant": tenant}),
            )
            .await;
        (body["key"]["id"].as_str().unwrap().to_string(), name)
    }
}

/// One request of the matrix: the path, body and tenant header for `route`, with fixtures in
/// `scope` (the caller's own, or the other tenant's). Returns the request, and for job routes
/// the fixture and its scope (to check nothing changed).
struct Case {
    path: String,
    header: Option<&'static str>,
    body: Option<Value>,
    job: Option<(Option<&'static str>, String)>,
}

async fn case(h: &Harness, route: &Route, cred: &Cred, other: bool) -> Case {
    let own = cred.tenant;
    // By-id routes reach into the other tenant's data; the others name it in the header.
    let (scope, header) = match (other, by_id(route)) {
        (false, _) => (own, own),
        (true, true) => (Some(OTHER_TENANT), own),
        (true, false) => (Some(OTHER_TENANT), Some(OTHER_TENANT)),
    };
    let plain = |path: &str| Case {
        path: path.to_string(),
        header,
        body: None,
        job: None,
    };
    let can_dequeue = Policy::default()
        .grants(&[cred.role.to_string()], None, None)
        .has(Permission::Dequeue);
    match (route.method, route.path) {
        ("POST", "/ojs/v1/jobs") => Case {
            body: Some(json!({"type": "matrix.job", "args": [1], "options": {"queue": "matrix"}})),
            ..plain(route.path)
        },
        ("POST", "/ojs/v1/jobs/batch") => Case {
            body: Some(json!({"jobs": [
                {"type": "matrix.job", "args": [1], "options": {"queue": "matrix"}},
                {"type": "matrix.job", "args": [2], "options": {"queue": "matrix"}},
            ]})),
            ..plain(route.path)
        },
        ("GET" | "DELETE", "/ojs/v1/jobs/{id}") => {
            let id = h.job(scope, json!({"queue": "matrix"})).await;
            Case {
                job: Some((scope, id.clone())),
                ..plain(&format!("/ojs/v1/jobs/{id}"))
            }
        }
        ("POST", "/ojs/v1/jobs/{id}/activate") => {
            let id = h
                .job(scope, json!({"queue": "matrix", "pending": true}))
                .await;
            Case {
                job: Some((scope, id.clone())),
                ..plain(&format!("/ojs/v1/jobs/{id}/activate"))
            }
        }
        ("POST", "/ojs/v1/workers/fetch") => Case {
            body: Some(json!({"queues": [unique("fetch-")], "worker_id": "w"})),
            ..plain(route.path)
        },
        ("POST", "/ojs/v1/workers/ack" | "/ojs/v1/workers/nack" | "/ojs/v1/workers/heartbeat") => {
            // The caller's own job is one it holds; the other tenant's is held there.
            let holder = if other || !can_dequeue {
                h.server.auth()
            } else {
                cred.bearer.clone()
            };
            let id = h.held_job(scope, &holder).await;
            let body = match route.path {
                "/ojs/v1/workers/ack" => json!({"job_id": id, "worker_id": "w"}),
                "/ojs/v1/workers/nack" => json!({"job_id": id, "worker_id": "w",
                    "error": {"code": "matrix", "message": "matrix"}}),
                _ => json!({"worker_id": "w", "active_jobs": [id]}),
            };
            Case {
                body: Some(body),
                job: Some((scope, id)),
                ..plain(route.path)
            }
        }
        ("DELETE", "/ojs/v1/dead-letter/{id}") | ("POST", "/ojs/v1/dead-letter/{id}/retry") => {
            let id = h.dead_job(scope).await;
            Case {
                job: Some((scope, id.clone())),
                ..plain(&route.path.replace("{id}", &id))
            }
        }
        ("POST", "/ojs/v1/admin/keys") => Case {
            body: Some(json!({"name": unique("made-"), "roles": ["worker"]})),
            ..plain(route.path)
        },
        ("POST", "/ojs/v1/admin/keys/revoke") => {
            let (_, name) = h.key(scope).await;
            Case {
                body: Some(json!({"name": name})),
                ..plain(route.path)
            }
        }
        ("DELETE" | "POST", "/ojs/v1/admin/keys/{id}" | "/ojs/v1/admin/keys/{id}/rotate") => {
            let (id, _) = h.key(scope).await;
            plain(&route.path.replace("{id}", &id))
        }
        ("POST", "/ojs/v1/admin/users") => Case {
            body: Some(json!({"username": unique("user"), "password": PASSWORD})),
            ..plain(route.path)
        },
        ("POST", "/ojs/v1/admin/users/{name}/password") => {
            let name = unique("user");
            h.admin(
                Method::POST,
                "/ojs/v1/admin/users",
                None,
                json!({"username": name, "password": PASSWORD}),
            )
            .await;
            Case {
                body: Some(json!({"new_password": format!("{PASSWORD}-new")})),
                ..plain(&format!("/ojs/v1/admin/users/{name}/password"))
            }
        }
        ("GET", "/ojs/v1/queues/{name}/stats" | "/ojs/v1/admin/queues/{name}/config") => {
            plain(&route.path.replace("{name}", "matrix"))
        }
        ("PUT", "/ojs/v1/admin/queues/{name}/config") => Case {
            body: Some(json!({"backpressure": {"max_depth": 0}})),
            ..plain(&route.path.replace("{name}", "matrix"))
        },
        ("POST", "/ojs/v1/auth/login" | "/ojs/v1/auth/refresh" | "/ojs/v1/auth/logout") => Case {
            body: Some(json!({})),
            ..plain(route.path)
        },
        _ => plain(route.path),
    }
}

async fn setup() -> (Harness, Vec<Cred>) {
    let server = TestServer::start(ServerOptions {
        extra_toml: format!("{}[testing]\nallow_reset = true\n", common::UNTHROTTLED),
        ..ServerOptions::default()
    });
    let h = Harness {
        api: server.admin_client(),
        server,
    };
    let mut creds = Vec::new();
    for tenant in [Some(OWN_TENANT), None] {
        for role in ROLES {
            let body = h
                .admin(
                    Method::POST,
                    "/ojs/v1/admin/keys",
                    None,
                    json!({"name": format!("{role}-{}", tenant.unwrap_or("system")),
                           "roles": [role], "tenant": tenant}),
                )
                .await;
            creds.push(Cred {
                role,
                tenant,
                bearer: format!("Bearer {}", body["secret"].as_str().unwrap()),
            });
        }
    }
    (h, creds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_role_and_tenant_matches_the_table() {
    let (h, creds) = setup().await;
    let mut failures = Vec::new();
    let mut denials = 0usize;
    let mut cases = 0usize;
    for route in ROUTES {
        let method = Method::from_bytes(route.method.as_bytes()).unwrap();
        for cred in &creds {
            for other in [false, true] {
                let want = expected(route, cred, other);
                let c = case(&h, route, cred, other).await;
                let before = match &c.job {
                    Some((scope, id)) => Some(h.state(*scope, id).await),
                    None => None,
                };
                let bearer = (want != Expect::Public).then_some(cred.bearer.as_str());
                let Reply { status, body, .. } = h
                    .api
                    .with_authorization(bearer)
                    .for_tenant(c.header)
                    .call(method.clone(), &c.path, c.body.clone(), &[])
                    .await;
                cases += 1;
                let label = format!(
                    "{} {} as {} ({}) on {} data",
                    route.method,
                    route.path,
                    cred.role,
                    cred.tenant.unwrap_or("system"),
                    if other { "another tenant's" } else { "its own" }
                );
                let heartbeat = route.path == "/ojs/v1/workers/heartbeat";
                let ok = match want {
                    Expect::Public => !matches!(status.as_u16(), 403..=405),
                    Expect::Allowed => status.is_success(),
                    Expect::Forbidden => {
                        denials += 1;
                        status == StatusCode::FORBIDDEN
                            && body["error"]["code"] == "permission_denied"
                    }
                    // A heartbeat simply does not see another tenant's job.
                    Expect::Hidden if heartbeat => {
                        status == StatusCode::OK && body["jobs_extended"] == json!([])
                    }
                    Expect::Hidden => {
                        denials += 1;
                        // Exactly what an id nobody used gets.
                        let random = random_id_answer(&h, route, cred, &c).await;
                        status == StatusCode::NOT_FOUND && body == random
                    }
                };
                if !ok {
                    failures.push(format!(
                        "{label}: expected {want:?}, got {status} {body:.200}"
                    ));
                }
                // A refused request changed nothing.
                if want != Expect::Allowed {
                    if let (Some((scope, id)), Some(before)) = (&c.job, before) {
                        let after = h.state(*scope, id).await;
                        if after != before {
                            failures.push(format!("{label}: job went from {before} to {after}"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases differ from the table:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every refusal left an audit record (they are written asynchronously: give them a moment).
    let mut recorded = 0;
    for _ in 0..50 {
        let log = std::fs::read_to_string(h.server.dir.join("data").join("audit.log")).unwrap();
        recorded = log
            .lines()
            .filter(|l| l.contains("\"event_type\":\"authz.denied\""))
            .count();
        if recorded >= denials {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        recorded >= denials,
        "{denials} refusals but {recorded} authz.denied records"
    );
    eprintln!("{cases} cases, {denials} refusals, all as the table says");
}

/// The answer the same caller gets for a job id nobody used, on the same route.
async fn random_id_answer(h: &Harness, route: &Route, cred: &Cred, c: &Case) -> Value {
    let random = "019b0000-0000-7000-8000-000000000000";
    let (path, body) = match route.path {
        "/ojs/v1/workers/ack" | "/ojs/v1/workers/nack" => {
            let mut body = c.body.clone().unwrap();
            body["job_id"] = random.into();
            (c.path.clone(), Some(body))
        }
        _ if key_route(route) => (route.path.replace("{id}", "0123456789abcdef"), None),
        _ => (route.path.replace("{id}", random), None),
    };
    let method = Method::from_bytes(route.method.as_bytes()).unwrap();
    let Reply { status, body, .. } = h
        .api
        .with_authorization(Some(&cred.bearer))
        .for_tenant(c.header)
        .call(method, &path, body, &[])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    body
}

/// Review finding: a producer could activate any pending job in its queues, an administrator's
/// included. Another principal's pending job takes what managing it takes: a producer gets 404
/// (it cannot see the job) and the job stays pending; an operator, or the owner, may.
#[tokio::test]
async fn a_producer_cannot_activate_another_principals_pending_job() {
    let server = TestServer::start(ServerOptions::default());
    let admin = server.admin_client();
    let mut clients = Vec::new();
    for role in ["producer", "producer", "operator"] {
        let (secret, _) = admin
            .new_key(json!({"name": unique(role), "roles": [role]}))
            .await;
        clients.push(server.client_for(&secret));
    }
    let [mallory, owner, operator] = <[_; 3]>::try_from(clients).ok().unwrap();
    let pending = |client: &common::client::Client| {
        let client = client.clone();
        async move {
            client
                .enqueue(json!({"type": "t.pending", "args": [],
                    "options": {"queue": "shared", "pending": true}}))
                .await
                .expect(StatusCode::CREATED)
                .job_id()
        }
    };
    let state = |id: String| {
        let admin = &admin;
        async move { admin.job(&id).await.body["job"]["state"].clone() }
    };
    // The administrator's and another producer's pending jobs: not for mallory.
    for victim in [&admin, &owner] {
        let id = pending(victim).await;
        let refused = mallory.activate(&id).await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.text);
        assert_eq!(state(id).await, "pending");
    }
    // The owner may; an operator may activate anyone's.
    let id = pending(&owner).await;
    owner.activate(&id).await.expect(StatusCode::OK);
    assert_eq!(state(id).await, "available");
    let id = pending(&owner).await;
    operator.activate(&id).await.expect(StatusCode::OK);
    assert_eq!(state(id).await, "available");
    // Each refusal is in the audit trail.
    let denials = server.wait_audit_count("authz.denied", 2).await;
    let on_jobs = denials
        .iter()
        .filter(|r| r["detail"]["permission"] == "cancel" && r["detail"]["job_id"].is_string())
        .count();
    assert_eq!(on_jobs, 2);
}
