//! Leases belong to their holder: only the credential and worker that fetched a job may ack,
//! nack or heartbeat it, and a stale ack after the job was reclaimed and re-delivered is refused.

use crate::common;

use std::time::Duration;

use common::client::{eventually, Reply, PATIENCE};
use common::{ServerOptions, TestServer};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn only_the_lease_holder_may_ack_nack_or_heartbeat() {
    let mut server = TestServer::start(ServerOptions::default());
    let other = server.add_admin_key("other-worker");
    let owner = server.admin_key.clone();
    let api = server.admin_client();

    let Reply {
        status: s, body, ..
    } = api
        .post(
            "/ojs/v1/jobs",
            json!({"type": "a.b", "args": [1], "options": {"queue": "leases"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = body["job"]["id"].as_str().unwrap().to_string();
    let Reply {
        status: s, body, ..
    } = api
        .post(
            "/ojs/v1/workers/fetch",
            json!({"queues": ["leases"], "worker_id": "w-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["jobs"][0]["id"], id.as_str());
    let before = api.job(&id).await.json()["job"].clone();

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
        let Reply {
            status: s,
            body: res,
            ..
        } = api.with_key(key).post(path, body.clone()).await;
        assert_eq!(s, StatusCode::CONFLICT, "{path} {body}: {res}");
        assert_eq!(res["error"]["code"], "conflict");
    }
    // None of it changed the job.
    assert_eq!(api.job(&id).await.json()["job"].clone(), before);

    let Reply {
        status: s,
        body: res,
        ..
    } = api
        .post(
            "/ojs/v1/workers/heartbeat",
            json!({"worker_id": "w-1", "active_jobs": [id]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{res}");
    assert_eq!(res["jobs_extended"], json!([id]));
    let Reply {
        status: s,
        body: res,
        ..
    } = api
        .post(
            "/ojs/v1/workers/ack",
            json!({"job_id": id, "worker_id": "w-1", "attempt": 1, "result": {"ok": true}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{res}");
    assert_eq!(api.job(&id).await.json()["job"]["state"], "completed");
}

#[tokio::test]
async fn a_stale_ack_after_reclaim_and_redelivery_is_refused() {
    let server = TestServer::start(ServerOptions::default());
    let api = server.admin_client();
    let Reply { body, .. } = api.post("/ojs/v1/jobs", json!({"type": "a.b", "args": [], "options": {"queue": "stale", "visibility_timeout_ms": 500}}))
        .await;
    let id = body["job"]["id"].as_str().unwrap().to_string();
    let Reply { body: first, .. } = api
        .post(
            "/ojs/v1/workers/fetch",
            json!({"queues": ["stale"], "worker_id": "slow"}),
        )
        .await;
    assert_eq!(first["jobs"][0]["attempt"], 1);

    // The lease runs out; the job comes back and another worker takes it.
    let second = eventually(PATIENCE, || async {
        let fetched = api
            .post(
                "/ojs/v1/workers/fetch",
                json!({"queues": ["stale"], "worker_id": "fast"}),
            )
            .await;
        (!fetched.body["jobs"][0].is_null()).then_some(fetched.body)
    })
    .await
    .expect("the job comes back once its lease runs out");
    assert_eq!(second["jobs"][0]["id"], id.as_str());
    assert_eq!(second["jobs"][0]["attempt"], 2);

    // The slow worker's late ack, by worker id or by attempt, is refused.
    let Reply { status: s, .. } = api
        .post(
            "/ojs/v1/workers/ack",
            json!({"job_id": id, "worker_id": "slow"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let Reply { status: s, .. } = api
        .post("/ojs/v1/workers/ack", json!({"job_id": id, "attempt": 1}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(api.job(&id).await.json()["job"]["state"], "active");

    let Reply { status: s, .. } = api
        .post(
            "/ojs/v1/workers/ack",
            json!({"job_id": id, "worker_id": "fast", "attempt": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let job = api.job(&id).await.json()["job"].clone();
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
    let api = server.admin_client();
    let Reply {
        status: s, body, ..
    } = api
        .post(
            "/ojs/v1/admin/keys",
            json!({"name": "poller", "roles": ["worker"], "queues": ["polls"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let worker = body["secret"].as_str().unwrap().to_string();
    let worker_id = body["key"]["id"].as_str().unwrap().to_string();

    let poll = tokio::spawn({
        let poller = api.with_key(&worker);
        async move {
            let started = std::time::Instant::now();
            let res = poller
                .fetch_with(json!({"queues": ["polls"], "worker_id": "w1", "wait_ms": 20_000}))
                .await;
            (res.status, res.json().clone(), started.elapsed())
        }
    });
    // Let the poll reach the engine and park.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "the poll waits for a job");
    let res = api.revoke_key(&worker_id).await;
    assert!(res.status.is_success(), "{}", res.status);
    let Reply {
        status: s, body, ..
    } = api
        .post(
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
    assert_eq!(api.job(&id).await.json()["job"]["state"], "available");
    let log = server.log();
    assert!(!log.contains("secret-args"));
}

/// A long-poll is handed a job enqueued while it waits, claimed for it (active) in the enqueue's
/// commit. How soon is measured by the load bench (`--wait-ms`), not here.
#[tokio::test]
async fn a_long_poll_is_handed_a_job_enqueued_while_it_waits() {
    let server = TestServer::start(ServerOptions::default());
    let api = server.admin_client();
    let poll = tokio::spawn({
        let poller = server.admin_client();
        async move {
            let res = poller
                .fetch_with(json!({"queues": ["soon"], "worker_id": "w1", "wait_ms": 20_000}))
                .await;
            (res.status, res.json().clone(), std::time::Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = std::time::Instant::now();
    let Reply {
        status: s, body, ..
    } = api
        .post(
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
    let api = server.admin_client();
    let first = tokio::spawn({
        let poller = server.admin_client();
        async move {
            poller
                .fetch_with(json!({"queues": ["capped"], "wait_ms": 3_000}))
                .await
                .status
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let Reply { status, body, .. } = api
        .post(
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
    let Reply { status, .. } = api
        .post("/ojs/v1/workers/fetch", json!({"queues": ["capped"]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    let audited = eventually(PATIENCE, || async {
        let records = api.audit_records("event_type=limit.refused").await;
        records
            .iter()
            .any(|r| r.to_string().contains("too_many_long_polls"))
            .then_some(())
    })
    .await;
    assert!(
        audited.is_some(),
        "the refusal was not audited: {}",
        api.audit("event_type=limit.refused").await.text
    );
}
