//! Queue depth bounds and quotas against the real server: the reject, block and drop-oldest
//! strategies, pressure headers, bounds surviving a restart, the admin route's validation and
//! audit, per-principal pending and running quotas, and per-tenant limits.

use crate::common;

use std::time::{Duration, Instant};

use common::{ServerOptions, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A job of the tests' type on `queue`.
fn job(queue: &str, n: u32) -> Value {
    json!({"type": "bp.job", "args": [n], "options": {"queue": queue}})
}

#[tokio::test]
async fn reject_refuses_at_the_bound_until_room_is_made_and_survives_a_restart() {
    let mut server = TestServer::start(ServerOptions {
        extra_toml: "[backpressure]\nretry_after_secs = 7\n".into(),
        ..ServerOptions::default()
    });
    {
        let api = server.admin_client();
        let res = api
            .set_queue_config(
                "bp",
                json!({"backpressure": {"max_depth": 2, "strategy": "reject"}}),
            )
            .await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        assert_eq!(res.body["backpressure"]["max_depth"], 2);
        assert_eq!(res.body["backpressure"]["configured"], true);
        assert_eq!(api.enqueue(job("bp", 1)).await.status, StatusCode::CREATED);
        assert_eq!(api.enqueue(job("bp", 2)).await.status, StatusCode::CREATED);
        let full = api.enqueue(job("bp", 3)).await;
        assert_eq!(full.status, StatusCode::TOO_MANY_REQUESTS, "{}", full.body);
        assert_eq!(full.body["error"]["code"], "queue_full");
        assert_eq!(full.body["error"]["retryable"], true);
        assert_eq!(full.header("retry-after"), Some("7"));
        assert_eq!(full.header("x-ojs-queue-depth"), Some("2"));
        assert_eq!(full.header("x-ojs-queue-bound"), Some("2"));
        assert_eq!(api.queue_depth("bp").await, 2);
        // Another queue is not affected.
        assert_eq!(
            api.enqueue(job("other", 1)).await.status,
            StatusCode::CREATED
        );
        // An active job still counts; a completed one does not.
        let fetched = api.fetch(&["bp"], 1, None).await;
        let id = fetched.body["jobs"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(
            api.enqueue(job("bp", 4)).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(api.ack(&id, "w").await.status, StatusCode::OK);
        assert_eq!(api.enqueue(job("bp", 5)).await.status, StatusCode::CREATED);
        assert_eq!(
            api.enqueue(job("bp", 6)).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        // The change was audited.
        let records = api
            .wait_audit_records("event_type=queue.config_changed", 1)
            .await;
        assert_eq!(records.len(), 1);
        // The three refusals are one record (once per principal and code a minute).
        let refused = api.wait_audit_records("event_type=limit.refused", 1).await;
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0]["detail"]["code"], "queue_full");
        assert_eq!(refused[0]["outcome"], "failure");
        assert_eq!(records[0]["detail"]["queue"], "bp");
        assert_eq!(records[0]["detail"]["max_depth"], 2);
    }
    server.restart();
    let api = server.admin_client();
    let res = api
        .call(Method::GET, "/ojs/v1/admin/queues/bp/config", None, &[])
        .await;
    assert_eq!(res.body["backpressure"]["max_depth"], 2, "{}", res.body);
    assert_eq!(res.body["depth"], 2);
    assert_eq!(
        api.enqueue(job("bp", 7)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Removing the bound falls back to the configured default (1,000,000).
    let res = api
        .call(
            Method::PUT,
            "/ojs/v1/admin/queues/bp/config",
            Some(json!({"backpressure": null})),
            &[],
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["backpressure"]["configured"], false);
    assert_eq!(res.body["backpressure"]["max_depth"], 1_000_000);
    assert_eq!(api.enqueue(job("bp", 8)).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn the_default_bound_applies_to_unconfigured_queues_and_pressure_headers_warn() {
    let server = TestServer::start(ServerOptions {
        extra_toml: "[backpressure]\ndefault_max_depth = 3\n".into(),
        ..ServerOptions::default()
    });
    let api = server.admin_client();
    for n in 0..3 {
        assert_eq!(
            api.enqueue(job("plain", n)).await.status,
            StatusCode::CREATED
        );
    }
    let res = api.enqueue(job("plain", 3)).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.header("x-ojs-queue-bound"), Some("3"));

    let res = api
        .set_queue_config(
            "warn",
            json!({"backpressure": {"max_depth": 10, "strategy": "reject", "warning_threshold": 0.5}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    for n in 1..=4 {
        let res = api.enqueue(job("warn", n)).await;
        assert_eq!(res.status, StatusCode::CREATED);
        assert_eq!(res.header("x-ojs-queue-pressure"), None, "depth {n}");
    }
    let res = api.enqueue(job("warn", 5)).await;
    assert_eq!(res.header("x-ojs-queue-pressure"), Some("0.50"));
    assert_eq!(res.header("x-ojs-queue-depth"), Some("5"));
    assert_eq!(res.header("x-ojs-queue-bound"), Some("10"));
    let res = api.enqueue(job("warn", 6)).await;
    assert_eq!(res.header("x-ojs-queue-pressure"), Some("0.60"));
}

#[tokio::test]
async fn block_waits_for_room_and_then_gives_up() {
    let server = TestServer::start(ServerOptions::default());
    let api = server.admin_client();
    let res = api
        .set_queue_config(
            "blk",
            json!({"backpressure": {"max_depth": 1, "strategy": "block"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(api.enqueue(job("blk", 1)).await.status, StatusCode::CREATED);

    // Nothing frees room: refused once the client's block timeout (1 s) has passed.
    let started = Instant::now();
    let res = api
        .call(
            Method::POST,
            "/ojs/v1/jobs",
            Some(job("blk", 2)),
            &[("OJS-Block-Timeout", "1")],
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.body["error"]["code"], "queue_full");
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(4),
        "{waited:?}"
    );

    // A worker completes the job while the producer waits: the blocked enqueue goes through.
    let worker = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let fetched = api.fetch(&["blk"], 1, None).await;
        let id = fetched.body["jobs"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(api.ack(&id, "w").await.status, StatusCode::OK);
    };
    let started = Instant::now();
    let (res, ()) = tokio::join!(
        api.call(
            Method::POST,
            "/ojs/v1/jobs",
            Some(job("blk", 3)),
            &[("OJS-Block-Timeout", "10")]
        ),
        worker
    );
    let waited = started.elapsed();
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(api.queue_depth("blk").await, 1);
}

#[tokio::test]
async fn drop_oldest_discards_the_oldest_available_job_and_audits_it() {
    let server = TestServer::start(ServerOptions::default());
    let api = server.admin_client();
    let res = api
        .set_queue_config(
            "drop",
            json!({"backpressure": {"max_depth": 2, "strategy": "drop_oldest"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    let first = api.enqueue(job("drop", 1)).await.job_id();
    let second = api.enqueue(job("drop", 2)).await.job_id();
    let third = api.enqueue(job("drop", 3)).await;
    assert_eq!(third.status, StatusCode::CREATED);
    let third = third.job_id();
    let state = |id: String| {
        let api = &api;
        async move {
            api.job(&id).await.body["job"]["state"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(state(first.clone()).await, "discarded");
    assert_eq!(state(second.clone()).await, "available");
    assert_eq!(state(third.clone()).await, "available");
    assert_eq!(api.queue_depth("drop").await, 2);
    let records = api
        .wait_audit_records("event_type=backpressure.dropped", 1)
        .await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["detail"]["job_id"], first.as_str());
    assert_eq!(records[0]["detail"]["for_job_id"], third.as_str());

    // With every job active there is nothing to drop: refused like reject.
    let fetched = api.fetch(&["drop"], 2, None).await;
    assert_eq!(fetched.body["jobs"].as_array().unwrap().len(), 2);
    let res = api.enqueue(job("drop", 4)).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.body["error"]["details"]["strategy"], "drop_oldest");
}

#[tokio::test]
async fn queue_config_bodies_are_validated_and_change_nothing_when_wrong() {
    let server = TestServer::start(ServerOptions::default());
    let api = server.admin_client();
    for (body, status) in [
        (json!({"backpressure": {"max_depth": -1}}), 400),
        (json!({"backpressure": {"max_depth": "ten"}}), 400),
        (json!({"backpressure": {"strategy": "drop_newest"}}), 400),
        (json!({"backpressure": {"warning_threshold": 1.5}}), 400),
        (json!({"backpressure": {"max_size_bytes": 1024}}), 422),
        (json!({"backpressure": {"max_depth": 1, "CANARY": 1}}), 422),
        (json!({"paused": true}), 422),
        (json!({}), 400),
        (json!({"backpressure": []}), 400),
    ] {
        let res = api
            .call(
                Method::PUT,
                "/ojs/v1/admin/queues/cfg/config",
                Some(body.clone()),
                &[],
            )
            .await;
        assert_eq!(res.status.as_u16(), status, "{body}: {}", res.body);
    }
    let res = api
        .call(
            Method::PUT,
            "/ojs/v1/admin/queues/Bad_Name/config",
            Some(json!({"backpressure": {"max_depth": 1}})),
            &[],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let res = api
        .call(Method::GET, "/ojs/v1/admin/queues/cfg/config", None, &[])
        .await;
    assert_eq!(res.body["backpressure"]["configured"], false);
    assert!(api
        .wait_audit_records("event_type=queue.config_changed", 0)
        .await
        .is_empty());
}

#[tokio::test]
async fn per_principal_pending_and_running_quotas() {
    let server = TestServer::start(ServerOptions {
        extra_toml: "[quotas]\nmax_pending_jobs_per_principal = 3\n\
                     max_running_jobs_per_principal = 2\n"
            .into(),
        ..ServerOptions::default()
    });
    let api = server.admin_client();
    for n in 0..3 {
        assert_eq!(api.enqueue(job("qq", n)).await.status, StatusCode::CREATED);
    }
    let res = api.enqueue(job("qq", 3)).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS, "{}", res.body);
    assert_eq!(res.body["error"]["code"], "quota_exceeded");
    assert_eq!(
        res.body["error"]["details"]["quota"],
        "max_pending_jobs_per_principal"
    );
    assert!(res.header("retry-after").is_some());
    assert_eq!(api.queue_depth("qq").await, 3);

    // Fetch claims no more than the running quota allows, then refuses.
    let fetched = api.fetch(&["qq"], 10, None).await;
    let jobs = fetched.body["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 2, "{}", fetched.body);
    let res = api.fetch(&["qq"], 1, None).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        res.body["error"]["details"]["quota"],
        "max_running_jobs_per_principal"
    );
    // Completing a job frees both quotas.
    assert_eq!(
        api.ack(jobs[0]["id"].as_str().unwrap(), "w").await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.fetch(&["qq"], 10, None).await.body["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(api.enqueue(job("qq", 4)).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn per_tenant_job_and_queue_limits() {
    let server = TestServer::start(ServerOptions {
        extra_toml: "[quotas]\nmax_pending_jobs_per_tenant = 3\nmax_queues_per_tenant = 2\n\
                     max_active_jobs_per_tenant = 1\nmax_scheduled_jobs_per_tenant = 1\n"
            .into(),
        ..ServerOptions::default()
    });
    let api = server.admin_client();
    let acme = [("X-OJS-Tenant", "acme")];
    let globex = [("X-OJS-Tenant", "globex")];
    assert_eq!(
        api.call(Method::POST, "/ojs/v1/jobs", Some(job("a", 1)), &acme)
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        api.call(Method::POST, "/ojs/v1/jobs", Some(job("b", 2)), &acme)
            .await
            .status,
        StatusCode::CREATED
    );
    // A third queue for the tenant is refused; its existing queues still take jobs.
    let res = api
        .call(Method::POST, "/ojs/v1/jobs", Some(job("c", 3)), &acme)
        .await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS, "{}", res.body);
    assert_eq!(res.body["error"]["code"], "tenant_limit_exceeded");
    assert_eq!(
        res.body["error"]["details"]["quota"],
        "max_queues_per_tenant"
    );
    assert_eq!(
        api.call(Method::POST, "/ojs/v1/jobs", Some(job("a", 4)), &acme)
            .await
            .status,
        StatusCode::CREATED
    );
    // The tenant's fourth job is refused; another tenant is unaffected.
    let res = api
        .call(Method::POST, "/ojs/v1/jobs", Some(job("b", 5)), &acme)
        .await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        res.body["error"]["details"]["quota"],
        "max_pending_jobs_per_tenant"
    );
    assert_eq!(
        api.call(Method::POST, "/ojs/v1/jobs", Some(job("a", 6)), &globex)
            .await
            .status,
        StatusCode::CREATED
    );
    // Active jobs per tenant: a fetch for the tenant claims one, then is refused.
    let fetch = |tenant: [(&'static str, &'static str); 1]| {
        let api = &api;
        async move {
            api.call(
                Method::POST,
                "/ojs/v1/workers/fetch",
                Some(json!({"queues": ["a"], "count": 5, "worker_id": "w"})),
                &tenant,
            )
            .await
        }
    };
    assert_eq!(fetch(acme).await.body["jobs"].as_array().unwrap().len(), 1);
    let res = fetch(acme).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS, "{}", res.body);
    assert_eq!(
        res.body["error"]["details"]["quota"],
        "max_active_jobs_per_tenant"
    );
    // Scheduled jobs per tenant.
    let later = |n: u32| json!({"type": "bp.job", "args": [n], "options": {"queue": "a", "delay_until": "+PT1H"}});
    let res = api
        .call(Method::POST, "/ojs/v1/jobs", Some(later(7)), &globex)
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let res = api
        .call(Method::POST, "/ojs/v1/jobs", Some(later(8)), &globex)
        .await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS, "{}", res.body);
    assert_eq!(
        res.body["error"]["details"]["quota"],
        "max_scheduled_jobs_per_tenant"
    );
    // The system scope has no tenant limit.
    for n in 0..4 {
        assert_eq!(
            api.enqueue(job(&format!("sys{n}"), n)).await.status,
            StatusCode::CREATED
        );
    }
}

#[tokio::test]
async fn batches_are_all_or_nothing_under_bounds_quotas_and_validation() {
    let server = TestServer::start(ServerOptions {
        extra_toml: "[quotas]\nmax_pending_jobs_per_principal = 6\n".into(),
        ..ServerOptions::default()
    });
    let api = server.admin_client();
    let job =
        |n: u32, queue: &str| json!({"type": "bp.batch", "args": [n], "options": {"queue": queue}});
    let api = &api;
    let batch = |jobs: Vec<Value>| api.enqueue_batch(jobs);
    let res = batch(vec![job(1, "b1"), job(2, "b2")]).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    assert_eq!(res.body["count"], 2);
    assert_eq!(res.body["jobs"][1]["state"], "available");
    let records = api
        .wait_audit_records("event_type=job.batch_enqueued", 1)
        .await;
    assert_eq!(records[0]["detail"]["count"], 2);

    // One invalid envelope refuses the batch and names its index.
    let res = batch(vec![job(3, "b1"), json!({"args": []}), job(4, "b1")]).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.body);
    assert_eq!(res.body["error"]["details"]["index"], 1);
    assert_eq!(api.queue_depth("b1").await, 1);

    // A bound that the batch would cross refuses all of it.
    api.set_queue_config("b3", json!({"backpressure": {"max_depth": 2}}))
        .await;
    let res = batch(vec![job(5, "b3"), job(6, "b3"), job(7, "b3")]).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS, "{}", res.body);
    assert_eq!(res.body["error"]["code"], "queue_full");
    assert_eq!(api.queue_depth("b3").await, 0);
    assert_eq!(
        batch(vec![job(5, "b3"), job(6, "b3")]).await.status,
        StatusCode::CREATED
    );

    // So does the principal's quota (4 of 6 used; 3 more do not fit, 2 do).
    let res = batch(vec![job(8, "b1"), job(9, "b1"), job(10, "b1")]).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.body["error"]["code"], "quota_exceeded");
    assert_eq!(api.queue_depth("b1").await, 1);

    // Repeated ids in one batch are a conflict, and nothing is stored.
    let id = "019a0b6e-1c2d-7e3f-8a4b-5c6d7e8f9a0b";
    let with_id = json!({"id": id, "type": "bp.batch", "args": [], "options": {"queue": "b1"}});
    let res = batch(vec![with_id.clone(), with_id]).await;
    assert_eq!(res.status, StatusCode::CONFLICT, "{}", res.body);
    assert_eq!(api.queue_depth("b1").await, 1);

    // Shape of the batch itself.
    for body in [json!({}), json!({"jobs": []}), json!({"jobs": {}})] {
        let res = api
            .call(Method::POST, "/ojs/v1/jobs/batch", Some(body), &[])
            .await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST);
    }
}
