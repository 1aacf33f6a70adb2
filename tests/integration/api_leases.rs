//! Leases belong to their holder: only the credential and worker that fetched a job may ack,
//! nack or heartbeat it, and a stale ack after the job was reclaimed and re-delivered is refused.

use crate::common;

use std::time::Duration;

use common::{ServerOptions, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Api<'a> {
    server: &'a TestServer,
    client: reqwest::Client,
}

impl Api<'_> {
    async fn post(&self, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let res = self
            .client
            .post(self.server.url(path))
            .header("Authorization", format!("Bearer {key}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn get_job(&self, key: &str, id: &str) -> Value {
        let res = self
            .client
            .get(self.server.url(&format!("/ojs/v1/jobs/{id}")))
            .header("Authorization", format!("Bearer {key}"))
            .send()
            .await
            .unwrap();
        res.json::<Value>().await.unwrap()["job"].clone()
    }
}

#[tokio::test]
async fn only_the_lease_holder_may_ack_nack_or_heartbeat() {
    let mut server = TestServer::start(ServerOptions::default());
    let other = server.add_admin_key("other-worker");
    let owner = server.admin_key.clone();
    let api = Api {
        server: &server,
        client: server.client(),
    };

    let (s, body) = api
        .post(
            &owner,
            "/ojs/v1/jobs",
            json!({"type": "a.b", "args": [1], "options": {"queue": "leases"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = body["job"]["id"].as_str().unwrap().to_string();
    let (s, body) = api
        .post(
            &owner,
            "/ojs/v1/workers/fetch",
            json!({"queues": ["leases"], "worker_id": "w-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["jobs"][0]["id"], id.as_str());
    let before = api.get_job(&owner, &id).await;

    // Another credential, even with the same worker id.
    let attempts = [
        (
            other.as_str(),
            "/ojs/v1/workers/ack",
            json!({"job_id": id, "worker_id": "w-1"}),
        ),
        (other.as_str(), "/ojs/v1/workers/ack", json!({"job_id": id})),
        (
            other.as_str(),
            "/ojs/v1/workers/nack",
            json!({"job_id": id, "worker_id": "w-1", "error": {"code": "x", "message": "y"}}),
        ),
        (
            other.as_str(),
            "/ojs/v1/workers/heartbeat",
            json!({"worker_id": "w-1", "active_jobs": [id]}),
        ),
        // The right credential, but another worker.
        (
            owner.as_str(),
            "/ojs/v1/workers/ack",
            json!({"job_id": id, "worker_id": "w-2"}),
        ),
        (
            owner.as_str(),
            "/ojs/v1/workers/nack",
            json!({"job_id": id, "worker_id": "w-2", "error": {"code": "x", "message": "y"}}),
        ),
        (
            owner.as_str(),
            "/ojs/v1/workers/heartbeat",
            json!({"worker_id": "w-2", "active_jobs": [id]}),
        ),
        // The right worker, a wrong attempt number.
        (
            owner.as_str(),
            "/ojs/v1/workers/ack",
            json!({"job_id": id, "worker_id": "w-1", "attempt": 7}),
        ),
    ];
    for (key, path, body) in attempts {
        let (s, res) = api.post(key, path, body.clone()).await;
        assert_eq!(s, StatusCode::CONFLICT, "{path} {body}: {res}");
        assert_eq!(res["error"]["code"], "conflict");
    }
    // None of it changed the job.
    assert_eq!(api.get_job(&owner, &id).await, before);

    let (s, res) = api
        .post(
            &owner,
            "/ojs/v1/workers/heartbeat",
            json!({"worker_id": "w-1", "active_jobs": [id]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{res}");
    assert_eq!(res["jobs_extended"], json!([id]));
    let (s, res) = api
        .post(
            &owner,
            "/ojs/v1/workers/ack",
            json!({"job_id": id, "worker_id": "w-1", "attempt": 1, "result": {"ok": true}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{res}");
    assert_eq!(api.get_job(&owner, &id).await["state"], "completed");
}

#[tokio::test]
async fn a_stale_ack_after_reclaim_and_redelivery_is_refused() {
    let server = TestServer::start(ServerOptions::default());
    let key = server.admin_key.clone();
    let api = Api {
        server: &server,
        client: server.client(),
    };
    let (_, body) = api
        .post(&key, "/ojs/v1/jobs", json!({"type": "a.b", "args": [], "options": {"queue": "stale", "visibility_timeout_ms": 500}}))
        .await;
    let id = body["job"]["id"].as_str().unwrap().to_string();
    let (_, first) = api
        .post(
            &key,
            "/ojs/v1/workers/fetch",
            json!({"queues": ["stale"], "worker_id": "slow"}),
        )
        .await;
    assert_eq!(first["jobs"][0]["attempt"], 1);

    // The lease runs out; the job comes back and another worker takes it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, second) = api
        .post(
            &key,
            "/ojs/v1/workers/fetch",
            json!({"queues": ["stale"], "worker_id": "fast"}),
        )
        .await;
    assert_eq!(second["jobs"][0]["id"], id.as_str());
    assert_eq!(second["jobs"][0]["attempt"], 2);

    // The slow worker's late ack, by worker id or by attempt, is refused.
    let (s, _) = api
        .post(
            &key,
            "/ojs/v1/workers/ack",
            json!({"job_id": id, "worker_id": "slow"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = api
        .post(
            &key,
            "/ojs/v1/workers/ack",
            json!({"job_id": id, "attempt": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(api.get_job(&key, &id).await["state"], "active");

    let (s, _) = api
        .post(
            &key,
            "/ojs/v1/workers/ack",
            json!({"job_id": id, "worker_id": "fast", "attempt": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let job = api.get_job(&key, &id).await;
    assert_eq!(job["state"], "completed");
    assert_eq!(job["errors"][0]["code"], "lease_expired");
}

/// A worker's long-poll used to be a sleep loop in the handler that re-fetched with the
/// credential it was authenticated with, so a key revoked while the poll waited still received
/// the next job, args and all. The wait now lives in the queue engine, which asks whether the
/// credential still stands before it hands a job over.
#[tokio::test]
async fn a_long_poll_whose_key_is_revoked_while_it_waits_gets_401_and_no_job() {
    let server = TestServer::start(ServerOptions::default());
    let admin = server.admin_key.clone();
    let api = Api {
        server: &server,
        client: server.client(),
    };
    let (s, body) = api
        .post(
            &admin,
            "/ojs/v1/admin/keys",
            json!({"name": "poller", "roles": ["worker"], "queues": ["polls"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let worker = body["secret"].as_str().unwrap().to_string();
    let worker_id = body["key"]["id"].as_str().unwrap().to_string();

    let poll = tokio::spawn({
        let client = server.client();
        let url = server.url("/ojs/v1/workers/fetch");
        let worker = worker.clone();
        async move {
            let started = std::time::Instant::now();
            let res = client
                .post(url)
                .header("Authorization", format!("Bearer {worker}"))
                .json(&json!({"queues": ["polls"], "worker_id": "w1", "wait_ms": 20_000}))
                .send()
                .await
                .unwrap();
            let status = res.status();
            (
                status,
                res.json::<Value>().await.unwrap(),
                started.elapsed(),
            )
        }
    });
    // Let the poll reach the engine and park.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "the poll waits for a job");
    let res = api
        .client
        .delete(server.url(&format!("/ojs/v1/admin/keys/{worker_id}")))
        .header("Authorization", format!("Bearer {admin}"))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let (s, body) = api
        .post(
            &admin,
            "/ojs/v1/jobs",
            json!({"type": "a.b", "args": ["secret-args"], "options": {"queue": "polls"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let id = body["job"]["id"].as_str().unwrap().to_string();

    let (status, body, took) = poll.await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert!(!body.to_string().contains("secret-args"));
    assert!(
        took < Duration::from_secs(10),
        "answered when the job came, not at the deadline"
    );
    assert_eq!(api.get_job(&admin, &id).await["state"], "available");
    let log = server.log();
    assert!(!log.contains("secret-args"));
}

/// A long-poll is handed a job enqueued while it waits, claimed for it (active) in the enqueue's
/// commit. How soon is measured by the load bench (`--wait-ms`), not here.
#[tokio::test]
async fn a_long_poll_is_handed_a_job_enqueued_while_it_waits() {
    let server = TestServer::start(ServerOptions::default());
    let admin = server.admin_key.clone();
    let api = Api {
        server: &server,
        client: server.client(),
    };
    let poll = tokio::spawn({
        let client = server.client();
        let url = server.url("/ojs/v1/workers/fetch");
        let admin = admin.clone();
        async move {
            let res = client
                .post(url)
                .header("Authorization", format!("Bearer {admin}"))
                .json(&json!({"queues": ["soon"], "worker_id": "w1", "wait_ms": 20_000}))
                .send()
                .await
                .unwrap();
            (
                res.status(),
                res.json::<Value>().await.unwrap(),
                std::time::Instant::now(),
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = std::time::Instant::now();
    let (s, body) = api
        .post(
            &admin,
            "/ojs/v1/jobs",
            json!({"type": "a.b", "args": [1], "options": {"queue": "soon"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (status, got, at) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["jobs"][0]["id"], body["job"]["id"]);
    assert_eq!(got["jobs"][0]["state"], "active");
    // Well before its 20 s wait would have ended.
    assert!(at.duration_since(sent) < Duration::from_secs(10));
}

/// An attacker holding one credential opens long-polls until the server runs out of room for
/// waiters. Each principal may have only so many waiting; the next is refused at once (429) and
/// the refusal is audited.
#[tokio::test]
async fn a_principal_over_its_long_poll_cap_is_refused_at_once_and_audited() {
    let server = TestServer::start(ServerOptions {
        extra_toml: "[queue]\nmax_waits_per_principal = 1\n".into(),
        ..ServerOptions::default()
    });
    let admin = server.admin_key.clone();
    let api = Api {
        server: &server,
        client: server.client(),
    };
    let first = tokio::spawn({
        let client = server.client();
        let url = server.url("/ojs/v1/workers/fetch");
        let admin = admin.clone();
        async move {
            client
                .post(url)
                .header("Authorization", format!("Bearer {admin}"))
                .json(&json!({"queues": ["capped"], "wait_ms": 3_000}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let (status, body) = api
        .post(
            &admin,
            "/ojs/v1/workers/fetch",
            json!({"queues": ["capped"], "wait_ms": 3_000}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "too_many_long_polls");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    // A plain fetch is not a wait and is never capped.
    let (status, _) = api
        .post(
            &admin,
            "/ojs/v1/workers/fetch",
            json!({"queues": ["capped"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let res = api
            .client
            .get(server.url("/ojs/v1/admin/audit?event_type=limit.refused"))
            .header("Authorization", format!("Bearer {admin}"))
            .send()
            .await
            .unwrap();
        let records: Value = res.json().await.unwrap();
        let found = records["records"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r.to_string().contains("too_many_long_polls"))
        });
        if found {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal was not audited: {records}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
