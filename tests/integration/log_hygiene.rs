//! Canaries in every place a client can put data (args, meta, results, error details, request
//! headers, query strings, credentials), with the server logging at `trace` for every crate:
//! neither its log nor its audit file may contain any of them.

use crate::common;

use common::{ServerOptions, TestServer};
use serde_json::{json, Value};

#[tokio::test]
async fn no_canary_reaches_any_log_at_any_level() {
    let server = TestServer::start(ServerOptions {
        process: true,
        extra_toml: "[log]\nlevel = \"trace\"\n".into(),
        conformance: true,
        ..ServerOptions::default()
    });
    let client = server.client();
    let auth = server.auth();
    let canaries = [
        "CANARYARGS7",
        "CANARYMETA7",
        "CANARYRESULT7",
        "CANARYERRMSG7",
        "CANARYDETAIL7",
        "CANARYQUERY7",
        "CANARYHEADER7",
    ];
    let job: Value = client
        .post(server.url("/ojs/v1/jobs"))
        .header("Authorization", &auth)
        .header("X-Custom", "CANARYHEADER7")
        .json(&json!({
            "type": "canary.job",
            "args": ["CANARYARGS7", {"password": "CANARYARGS7"}],
            "meta": {"note": "CANARYMETA7", "data_classification": "secret"},
            "options": {"queue": "canary"},
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["job"]["id"].as_str().unwrap().to_string();
    let fetched: Value = client
        .post(server.url("/ojs/v1/workers/fetch"))
        .header("Authorization", &auth)
        .json(&json!({"queues": ["canary"], "worker_id": "w"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["jobs"][0]["id"], id.as_str());
    let res = client
        .post(server.url("/ojs/v1/workers/nack"))
        .header("Authorization", &auth)
        .json(&json!({"job_id": id, "worker_id": "w", "requeue": true,
                      "error": {"code": "x", "message": "CANARYERRMSG7", "details": {"d": "CANARYDETAIL7"}}}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    client
        .post(server.url("/ojs/v1/workers/fetch"))
        .header("Authorization", &auth)
        .json(&json!({"queues": ["canary"], "worker_id": "w"}))
        .send()
        .await
        .unwrap();
    let res = client
        .post(server.url("/ojs/v1/workers/ack"))
        .header("Authorization", &auth)
        .json(&json!({"job_id": id, "worker_id": "w", "result": {"out": "CANARYRESULT7"}}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let _ = client
        .get(server.url("/ojs/v1/events?types=CANARYQUERY7"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    // Credentials: a wrong key and a bearer token that is no key at all.
    let wrong = format!("{}Z", &server.admin_key[..server.admin_key.len() - 1]);
    for bad in [wrong.clone(), "not-a-key-CANARYTOKEN7".to_string()] {
        let _ = client
            .get(server.url("/ojs/v1/queues"))
            .header("Authorization", format!("Bearer {bad}"))
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let log = server.log();
    assert!(
        log.lines().count() > 20,
        "trace logging produced too little to mean anything:\n{log}"
    );
    let audit = std::fs::read_to_string(server.dir.join("data").join("audit.log")).unwrap();
    let secret = common::key_secret(&server.admin_key);
    let wrong_secret = common::key_secret(&wrong);
    for (name, text) in [("server log", &log), ("audit log", &audit)] {
        for canary in canaries
            .iter()
            .copied()
            .chain(["CANARYTOKEN7", secret, wrong_secret])
        {
            assert!(!text.contains(canary), "{canary} found in the {name}");
        }
    }
}
