//! The audit trail from outside: real requests produce complete records, `bulwark audit verify`
//! accepts the untouched log and names the first broken record of a tampered one, and an admin
//! operation whose record cannot be written does not happen.

use crate::common;

use common::client::Client;
use common::{ServerOptions, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Waits for the latest audit record of `event_type`.
async fn wait_for(server: &TestServer, event_type: &str) -> Value {
    server
        .wait_audit(&format!("a {event_type} record"), |records| {
            records
                .iter()
                .rev()
                .find(|r| r["event_type"] == event_type)
                .cloned()
        })
        .await
}

#[tokio::test]
async fn requests_produce_complete_verifiable_records() {
    let server = TestServer::start(ServerOptions::conformance());
    let client = server.client();
    let auth = server.auth();

    // A wrong key with a client-chosen request id.
    let res = client
        .get(server.url("/ojs/v1/queues"))
        .header(
            "Authorization",
            "Bearer bwk_live_00000000000000ab_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .header("X-Request-Id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let failure = wait_for(&server, "auth.failure").await;
    assert_eq!(failure["outcome"], "failure");
    assert_eq!(failure["correlation_id"], "abc");
    assert_eq!(failure["source_ip"], "127.0.0.1");
    assert_eq!(failure["detail"]["key"], "bwk_…00ab");

    // A cancelled job names who cancelled it.
    let job: Value = client
        .post(server.url("/ojs/v1/jobs"))
        .header("Authorization", &auth)
        .json(&json!({"type": "a.b", "args": ["CANARY-ARG"], "options": {"queue": "audit-q"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["job"]["id"].as_str().unwrap();
    let res = client
        .delete(server.url(&format!("/ojs/v1/jobs/{id}")))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cancelled = wait_for(&server, "job.cancelled").await;
    let key_id = server.admin_key.split('_').nth(2).unwrap();
    assert_eq!(cancelled["principal"], "bootstrap-admin");
    assert_eq!(
        cancelled["detail"]["credential"],
        format!("bwk_…{}", &key_id[12..])
    );
    assert_eq!(cancelled["detail"]["job_id"], id);
    assert_eq!(cancelled["detail"]["previous_state"], "available");

    // The reset is recorded before it happens.
    let res = client
        .post(server.url("/ojs/v1/admin/reset"))
        .header("Authorization", &auth)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let reset = wait_for(&server, "admin.reset").await;

    for record in [&failure, &cancelled, &reset] {
        for field in [
            "seq",
            "timestamp",
            "event_type",
            "principal",
            "tenant",
            "source_ip",
            "correlation_id",
            "outcome",
            "detail",
            "chain",
        ] {
            assert!(record.get(field).is_some(), "{field} missing in {record}");
        }
    }
    let all = server.audit_records();
    assert_eq!(all[0]["event_type"], "server.started");
    let text = std::fs::read_to_string(server.dir.join("data").join("audit.log")).unwrap();
    assert!(
        !text.contains(common::key_secret(&server.admin_key)),
        "a key secret is in the audit log"
    );
    assert!(
        !text.contains("CANARY-ARG"),
        "job args are in the audit log"
    );

    // The CLI accepts the untouched log (it only reads, so the server may run).
    let ok = server.cli(&["audit", "verify"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains(&format!("ok: {} records", all.len())));

    // A copy with one edited record is refused, naming the line.
    let tampered = server.dir.join("tampered.log");
    let edited = text.replacen("\"outcome\":\"failure\"", "\"outcome\":\"success\"", 1);
    std::fs::write(&tampered, edited).unwrap();
    std::fs::copy(
        server.dir.join("data").join("audit.head"),
        server.dir.join("tampered.head"),
    )
    .unwrap();
    let bad = server.cli(&["audit", "verify", tampered.to_str().unwrap()]);
    assert!(!bad.status.success());
    let line = all.iter().position(|r| r["outcome"] == "failure").unwrap() + 1;
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains(&format!("line {line}")), "{stderr}");

    // A copy with its last record cut off is refused by the signed head.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    std::fs::write(&tampered, format!("{}\n", lines.join("\n"))).unwrap();
    let cut = server.cli(&["audit", "verify", tampered.to_str().unwrap()]);
    assert!(!cut.status.success());
    assert!(String::from_utf8_lossy(&cut.stderr).contains("head"));
}

#[tokio::test]
async fn an_admin_operation_that_cannot_be_recorded_does_not_happen() {
    // /dev/full accepts the open and fails every write with ENOSPC: a real, unwritable sink.
    let extra = "[audit]\nlog_file = \"/dev/full\"\n".to_string();
    let server = TestServer::start(ServerOptions {
        extra_toml: extra,
        conformance: true,
        ..ServerOptions::default()
    });
    let client = server.client();
    let auth = server.auth();
    let res = client
        .post(server.url("/ojs/v1/jobs"))
        .header("Authorization", &auth)
        .json(&json!({"type": "a.b", "args": [], "options": {"queue": "kept"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = client
        .post(server.url("/ojs/v1/admin/reset"))
        .header("Authorization", &auth)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["retryable"], true);
    // The reset did not happen: the job is still there.
    let queues: Value = client
        .get(server.url("/ojs/v1/queues"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(queues["queues"][0]["name"], "kept");
    assert_eq!(queues["queues"][0]["counts"]["available"], 1);
}

#[tokio::test]
async fn the_admin_audit_query_filters_pages_and_survives_restart() {
    let mut server = TestServer::start(ServerOptions::default());
    let client = server.client();
    for _ in 0..3 {
        let _ = client
            .get(server.url("/ojs/v1/queues"))
            .header("Authorization", "Bearer nope")
            .send()
            .await
            .unwrap();
    }
    let job: Value = client
        .post(server.url("/ojs/v1/jobs"))
        .header("Authorization", server.auth())
        .json(&json!({"type": "a.b", "args": []}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["job"]["id"].as_str().unwrap().to_string();
    client
        .delete(server.url(&format!("/ojs/v1/jobs/{id}")))
        .header("Authorization", server.auth())
        .send()
        .await
        .unwrap();
    wait_for(&server, "job.cancelled").await;

    let query = |server: &TestServer, q: &str| {
        let client = server.client();
        let url = server.url(&format!("/ojs/v1/admin/audit{q}"));
        let auth = server.auth();
        async move {
            let res = client
                .get(url)
                .header("Authorization", auth)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            res.json::<Value>().await.unwrap()
        }
    };
    // The index follows the log a moment later for records written without waiting.
    let mut cancelled = query(&server, "?event_type=job.cancelled").await;
    for _ in 0..100 {
        if !cancelled["records"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        cancelled = query(&server, "?event_type=job.cancelled").await;
    }
    assert_eq!(cancelled["records"].as_array().unwrap().len(), 1);
    assert_eq!(cancelled["records"][0]["detail"]["job_id"], id.as_str());

    let failures = query(&server, "?event_type=auth.failure&limit=2").await;
    let page: Vec<u64> = failures["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(page.len(), 2);
    assert!(page[0] > page[1], "newest first");
    let before = failures["next_before"].as_u64().unwrap();
    let rest = query(
        &server,
        &format!("?event_type=auth.failure&before={before}"),
    )
    .await;
    assert_eq!(rest["records"].as_array().unwrap().len(), 1);

    let by_principal = query(&server, "?principal=bootstrap-admin").await;
    assert!(by_principal["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["event_type"] == "job.cancelled"));

    // After a restart the index (rebuilt or kept) answers the same.
    server.restart();
    let again = query(&server, "?event_type=job.cancelled").await;
    assert_eq!(again["records"], cancelled["records"]);
    // The queries themselves are audited.
    assert!(
        !query(&server, "?event_type=audit.queried").await["records"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let bad = client
        .get(server.url("/ojs/v1/admin/audit?since=yesterday"))
        .header("Authorization", server.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

/// The audit HMAC key the server created in its secrets folder.
fn audit_key(server: &TestServer) -> ring::hmac::Key {
    let hex = std::fs::read_to_string(server.dir.join("secrets").join("audit-hmac.key")).unwrap();
    let hex = hex.trim();
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes)
}

#[tokio::test]
async fn records_past_retention_are_pruned_behind_a_checkpoint_that_still_verifies() {
    use bulwark::audit::record::{seal, Head, GENESIS};

    let mut server = TestServer::start(ServerOptions::default());
    let client = server.client();
    for _ in 0..5 {
        client
            .get(server.url("/ojs/v1/queues"))
            .header("Authorization", "Bearer nope")
            .send()
            .await
            .unwrap();
    }
    wait_for(&server, "auth.failure").await;
    assert_eq!(server.terminate(), Some(0));

    // Make the first records of the real log 400 days old, re-chained with the server's key
    // (as if the server had written them then).
    let key = audit_key(&server);
    let log_path = server.dir.join("data").join("audit.log");
    let old: Vec<Value> = server.audit_records();
    let aged = 4usize;
    let mut previous = GENESIS.to_string();
    let mut text = String::new();
    for (i, record) in old.iter().enumerate() {
        let mut map = record.as_object().unwrap().clone();
        if i < aged {
            map.insert("timestamp".into(), "2025-10-01T00:00:00.000Z".into());
        }
        let (line, chain) = seal(&key, &previous, map);
        text.push_str(&line);
        previous = chain;
    }
    std::fs::write(&log_path, &text).unwrap();
    let head = Head::new(&key, old.len() as u64, &previous);
    std::fs::write(
        server.dir.join("data").join("audit.head"),
        serde_json::to_string(&head).unwrap(),
    )
    .unwrap();
    let before = server.cli(&["audit", "verify"]);
    assert!(
        before.status.success(),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );

    // The default retention (365 days) prunes them at start.
    server.restart();
    let pruned = wait_for(&server, "audit.pruned").await;
    assert_eq!(pruned["detail"]["removed"], aged);
    assert_eq!(pruned["detail"]["through_seq"], aged);
    assert_eq!(pruned["detail"]["retention_days"], 365);
    let now = std::fs::read_to_string(&log_path).unwrap();
    let first: Value = serde_json::from_str(now.lines().next().unwrap()).unwrap();
    assert_eq!(first["checkpoint"]["seq"], aged);
    assert!(!now.contains("2025-10-01"), "aged records are gone");
    assert!(now.contains(&format!("\"seq\":{}", aged + 1)));

    let ok = server.cli(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout.contains(&format!("checkpoint after record {aged}")),
        "{stdout}"
    );

    // The index follows the moved lines: the query route reads every kept record back. The
    // writer indexes a record just after appending it, so the `audit.pruned` line can be in
    // the log a moment before the index lists it: poll.
    let mut listed = Vec::new();
    for _ in 0..100 {
        let res = server
            .client()
            .get(server.url("/ojs/v1/admin/audit?limit=500"))
            .header("Authorization", server.auth())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        listed = body["records"].as_array().unwrap().clone();
        if listed.iter().any(|r| r["event_type"] == "audit.pruned") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(listed.iter().any(|r| r["event_type"] == "audit.pruned"));
    assert!(listed
        .iter()
        .all(|r| r["seq"].as_u64().unwrap() > aged as u64));

    // Cutting the checkpoint, or records just after it, is detected.
    let lines: Vec<&str> = now.lines().collect();
    let tampered = server.dir.join("pruned.log");
    std::fs::copy(
        server.dir.join("data").join("audit.head"),
        server.dir.join("pruned.head"),
    )
    .unwrap();
    for (what, kept) in [
        ("no checkpoint", lines[1..].to_vec()),
        (
            "record after the checkpoint",
            [&lines[..1], &lines[2..]].concat(),
        ),
    ] {
        std::fs::write(&tampered, format!("{}\n", kept.join("\n"))).unwrap();
        let out = server.cli(&["audit", "verify", tampered.to_str().unwrap()]);
        assert!(!out.status.success(), "undetected: {what}");
    }
}

#[tokio::test]
async fn audit_verify_detects_random_single_mutations_of_a_real_log() {
    let mut server = TestServer::start(ServerOptions::default());
    let client = server.client();
    for i in 0..12 {
        client
            .get(server.url("/ojs/v1/queues"))
            .header("Authorization", "Bearer nope")
            .header("X-Request-Id", format!("req-{i}"))
            .send()
            .await
            .unwrap();
    }
    wait_for(&server, "auth.failure").await;
    assert_eq!(server.terminate(), Some(0));
    let log = std::fs::read(server.dir.join("data").join("audit.log")).unwrap();
    let lines: Vec<&[u8]> = log.split_inclusive(|b| *b == b'\n').collect();
    assert!(lines.len() >= 10);
    std::fs::copy(
        server.dir.join("data").join("audit.head"),
        server.dir.join("mutated.head"),
    )
    .unwrap();
    let target = server.dir.join("mutated.log");
    let rng = ring::rand::SystemRandom::new();
    let random = |bound: usize| -> usize {
        let mut b = [0u8; 8];
        ring::rand::SecureRandom::fill(&rng, &mut b).unwrap();
        (u64::from_le_bytes(b) % bound as u64) as usize
    };
    let mut tried = 0;
    for round in 0..48 {
        let mutated: Vec<u8> = match round % 6 {
            0 => {
                let mut m = log.clone();
                let at = random(m.len());
                m[at] ^= 1 + random(255) as u8;
                m
            }
            1 => {
                let mut v = lines.clone();
                v.remove(random(v.len()));
                v.concat()
            }
            2 => {
                let mut v = lines.clone();
                let copy = v[random(v.len())];
                v.insert(random(v.len() + 1), copy);
                v.concat()
            }
            3 => {
                let mut v = lines.clone();
                let a = random(v.len());
                let b = (a + 1 + random(v.len() - 1)) % v.len();
                v.swap(a, b);
                v.concat()
            }
            4 => {
                let mut v = lines.clone();
                let l = v.remove(random(v.len()));
                v.insert(random(v.len() + 1), l);
                v.concat()
            }
            _ => log[..random(log.len())].to_vec(),
        };
        if mutated == log {
            continue;
        }
        tried += 1;
        std::fs::write(&target, &mutated).unwrap();
        let out = server.cli(&["audit", "verify", target.to_str().unwrap()]);
        assert!(
            !out.status.success(),
            "mutation {round} ({}) went undetected",
            ["edit", "delete", "insert", "swap", "move", "truncate"][round % 6]
        );
    }
    assert!(tried >= 40);
}

#[tokio::test]
async fn admin_operations_and_shutdown_are_recorded_with_who_and_what() {
    let mut server = TestServer::start(ServerOptions::default());
    let client = server.client();
    let auth = server.auth();
    let post = |path: &str, body: Value| {
        client
            .post(server.url(path))
            .header("Authorization", &auth)
            .json(&body)
            .send()
    };

    // Two dead jobs: one retried, one deleted.
    let mut dead = Vec::new();
    for queue in ["dl-a", "dl-b"] {
        let res = post(
            "/ojs/v1/jobs",
            json!({"type": "a.b", "args": [], "options": {"queue": queue,
                "retry": {"max_attempts": 1, "on_exhaustion": "dead_letter"}}}),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let fetched: Value = post(
            "/ojs/v1/workers/fetch",
            json!({"queues": [queue], "worker_id": "w"}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let id = fetched["jobs"][0]["id"].as_str().unwrap().to_string();
        let res = post(
            "/ojs/v1/workers/nack",
            json!({"job_id": id, "worker_id": "w", "error": {"code": "x", "message": "x"}}),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        dead.push(id);
    }
    let res = post(&format!("/ojs/v1/dead-letter/{}/retry", dead[0]), json!({}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = client
        .delete(server.url(&format!("/ojs/v1/dead-letter/{}", dead[1])))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let retried = wait_for(&server, "dead_letter.retried").await;
    let deleted = wait_for(&server, "dead_letter.deleted").await;
    for (record, id) in [(&retried, &dead[0]), (&deleted, &dead[1])] {
        assert_eq!(record["outcome"], "success");
        assert_eq!(record["principal"], "bootstrap-admin");
        assert!(record.to_string().contains(id.as_str()), "{record}");
    }

    // Bulk revocation by tenant names the filter and the count.
    for name in ["bulk-1", "bulk-2"] {
        let res = post(
            "/ojs/v1/admin/keys",
            json!({"name": name, "roles": ["producer"], "tenant": "bulk"}),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let res = post("/ojs/v1/admin/keys/revoke", json!({"tenant": "bulk"}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bulk = wait_for(&server, "key.bulk_revoked").await;
    assert_eq!(bulk["outcome"], "success");
    assert!(bulk["detail"].to_string().contains("bulk"), "{bulk}");

    // An orderly stop is the last record.
    assert_eq!(server.terminate(), Some(0));
    let all = server.audit_records();
    assert_eq!(all.last().unwrap()["event_type"], "server.stopped");
    for r in &all {
        for field in [
            "seq",
            "timestamp",
            "event_type",
            "principal",
            "tenant",
            "source_ip",
            "correlation_id",
            "outcome",
            "detail",
            "chain",
        ] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
    }
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// An auditor's reconciliation: every throttled credential the metrics counted is in the audit
/// trail, in records that carry their count, and the tail of a burst is written when its window
/// closes even though no later refusal comes. Every record says `success` or `failure` and names
/// a principal (`anonymous` for the unauthenticated).
#[tokio::test]
async fn throttled_refusals_are_aggregated_with_counts_that_reconcile_with_the_metrics() {
    let server = TestServer::start(ServerOptions {
        extra_toml: "[auth.throttle]\nverifications_per_minute = 1\nburst = 1\n\n\
                     [audit]\naggregate_window_secs = 1\n"
            .into(),
        ..ServerOptions::default()
    });
    // The admin key is verified (and cached) before the flood spends the address's budget.
    let before = server.admin_client().metrics_text().await;
    assert_eq!(
        metric(
            &before,
            "bulwark_auth_attempts_total{outcome=\"failure\",reason=\"throttled\"}"
        ),
        0.0
    );
    // A burst, all at once (each refusal is held back a little, so one after the other they
    // would span many windows).
    let client = server.client();
    let mut burst = Vec::new();
    for i in 0..15 {
        let request = client
            .get(server.url("/ojs/v1/queues"))
            .header(
                "Authorization",
                format!("Bearer bwk_live_00000000000000{i:02}_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            )
            .send();
        burst.push(tokio::spawn(request));
    }
    for request in burst {
        let res = request.await.unwrap().unwrap();
        assert!(
            matches!(
                res.status(),
                StatusCode::TOO_MANY_REQUESTS | StatusCode::UNAUTHORIZED
            ),
            "{}",
            res.status()
        );
    }
    let after = server.admin_client().metrics_text().await;
    let throttled = metric(
        &after,
        "bulwark_auth_attempts_total{outcome=\"failure\",reason=\"throttled\"}",
    );
    assert!(
        throttled >= 13.0,
        "the budget should refuse most of them: {after}"
    );
    // No more refusals: the window's remainder is written by the timer.
    let mut audited = 0.0;
    for _ in 0..100 {
        audited = server
            .audit_records()
            .iter()
            .filter(|r| r["event_type"] == "auth.failure" && r["detail"]["reason"] == "throttled")
            .map(|r| {
                r["detail"]["count"]
                    .as_f64()
                    .expect("a count on every aggregated record")
            })
            .sum();
        if audited >= throttled {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        audited,
        throttled,
        "audit and metrics disagree; log:\n{}",
        server.log()
    );
    let throttled_records: Vec<Value> = server
        .audit_records()
        .into_iter()
        .filter(|r| r["event_type"] == "auth.failure" && r["detail"]["reason"] == "throttled")
        .collect();
    assert!(throttled_records.len() >= 2, "{throttled_records:?}");
    assert!(
        throttled_records.len() <= 3,
        "a flood must not become a flood of records: {throttled_records:?}"
    );
    let tail = throttled_records.last().unwrap();
    assert!(tail["detail"]["first_at"].is_string() && tail["detail"]["last_at"].is_string());
    assert_eq!(tail["principal"], "anonymous");
    assert_eq!(tail["outcome"], "failure");
    // The OJS fields: outcome is success or failure, the principal is never null.
    for r in server.audit_records() {
        assert!(
            r["outcome"] == "success" || r["outcome"] == "failure",
            "{r}"
        );
        assert!(r["principal"].is_string(), "{r}");
    }
    assert_eq!(server.audit_records()[0]["principal"], "system");
}

/// `audit verify` prints the head (sequence number and chain value) so an operator can keep it
/// elsewhere, and checks such an anchor later: a log rewritten up to it (with the key, by
/// someone who holds it) fails.
#[tokio::test]
async fn audit_verify_prints_the_head_and_checks_an_anchor() {
    let server = TestServer::start(ServerOptions::default());
    wait_for(&server, "server.started").await;
    let out = server.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let all = server.audit_records();
    let last = all.last().unwrap();
    let head_line = format!(
        "head: seq {} chain {}",
        last["seq"],
        last["chain"].as_str().unwrap()
    );
    assert!(stdout.contains(&head_line), "{stdout}");
    let anchor = format!("{}:{}", last["seq"], last["chain"].as_str().unwrap());
    let ok = server.cli(&["audit", "verify", "--anchor", &anchor]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let wrong = format!("{}:{}", last["seq"], "ab".repeat(32));
    let bad = server.cli(&["audit", "verify", "--anchor", &wrong]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("anchored"));
}

async fn health(server: &TestServer) -> (StatusCode, Value) {
    let res = Client::anonymous(server).health().await;
    (res.status, res.json().clone())
}

/// An audit disk that refuses writes: the fail-closed operations are refused, and health says
/// so (503, `degraded`), so a load balancer stops sending traffic.
#[tokio::test]
async fn an_unwritable_audit_log_fails_readiness() {
    let server = TestServer::start(ServerOptions {
        extra_toml: "[audit]\nlog_file = \"/dev/full\"\n".into(),
        ..ServerOptions::default()
    });
    let (status, body) = health(&server).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["audit"]["status"], "failing");
    assert!(body["audit"]["failing_since"].is_string());
    let m = server.admin_client().metrics_text().await;
    assert!(m.contains("bulwark_audit_failing 1"), "{m}");
}

/// When writes work again, the trail says what it lost (`audit.resumed`) and health is ok,
/// without a restart and without waiting for the next audited request.
#[tokio::test]
async fn a_trail_that_can_be_written_again_recovers_and_records_the_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("head-volume");
    let server = TestServer::start(ServerOptions {
        extra_toml: format!(
            "[audit]\nhead_file = {:?}\n",
            gone.join("audit.head").display().to_string()
        ),
        ..ServerOptions::default()
    });
    let (status, body) = health(&server).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    std::fs::create_dir(&gone).unwrap();
    let mut recovered = None;
    for _ in 0..100 {
        let (status, body) = health(&server).await;
        if status == StatusCode::OK {
            recovered = Some(body);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let body = recovered.expect("health never recovered");
    assert_eq!(body["audit"]["status"], "ok");
    let resumed = wait_for(&server, "audit.resumed").await;
    assert!(resumed["detail"]["failed_records"].as_u64().unwrap() >= 1);
    assert!(resumed["detail"]["failing_since"].is_string());
}
