//! Attacks on identity, each against the real server: the right status, nothing changed, an
//! audit record. JWTs (HS256 and EdDSA keys made here), API key lifecycle (scopes, queues,
//! expiry, rotation, revocation on a kept-alive connection), the per-address verification
//! budget, tenant headers, job-level rules and dry runs.

use crate::common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use reqwest::{Method, StatusCode};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

use common::client::{Client, Reply};
use common::{ServerOptions, TestServer};

const HS_SECRET: &[u8] = b"an-hs256-secret-of-more-than-32-bytes!!";

/// A new key; returns `Bearer <key>` and its id.
async fn key(api: &Client, spec: Value) -> (String, String) {
    let (secret, id) = api.new_key(spec).await;
    (format!("Bearer {secret}"), id)
}

/// Enqueues a job of the tests' type on `queue` with the `Authorization` header `bearer`.
async fn enqueue(api: &Client, bearer: &str, queue: &str) -> Reply {
    api.by(bearer).enqueue_to(queue, "id.test", json!([])).await
}

/// Jobs of `tenant` in every state (the system administrator acting for it).
async fn job_count(api: &Client, tenant: &str) -> u64 {
    let body = api.for_tenant(Some(tenant)).queues().await.body;
    body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            q["counts"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum::<u64>()
        })
        .sum()
}

/// Waits until the audit log holds a record of `event_type` whose detail has `reason`.
async fn audited(server: &TestServer, event_type: &str, reason: &str) {
    server
        .wait_audit_event(event_type, |r| r["detail"]["reason"] == reason)
        .await;
}

fn write_secret(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let signed = format!("{}.{}", b64(header), b64(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn eddsa(header: &Value, claims: &Value, key: &Ed25519KeyPair) -> String {
    let signed = format!("{}.{}", b64(header), b64(claims));
    let sig = key.sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn claims(tenant: Option<&str>, roles: &[&str]) -> Value {
    let t = now();
    let mut c = json!({"sub": "svc-jwt", "iss": "https://idp.test", "aud": "bulwark",
        "iat": t, "nbf": t, "exp": t + 600, "roles": roles});
    if let Some(tenant) = tenant {
        c["tenant"] = tenant.into();
    }
    c
}

#[tokio::test]
async fn jwt_attacks_are_refused_and_audited() {
    let keys = tempfile::tempdir().unwrap();
    let hs_file = keys.path().join("hs.key");
    write_secret(&hs_file, HS_SECRET);
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(ed.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(&spki)
    );
    let ed_file = keys.path().join("ed.pem");
    write_secret(&ed_file, pem.as_bytes());
    let toml = format!(
        "[auth.jwt]\nissuer = \"https://idp.test\"\naudience = \"bulwark\"\n\
         [[auth.jwt.keys]]\nkid = \"hs\"\nalg = \"HS256\"\nfile = {:?}\nencoding = \"raw\"\n\
         [[auth.jwt.keys]]\nkid = \"ed\"\nalg = \"EdDSA\"\nfile = {:?}\n",
        hs_file.display().to_string(),
        ed_file.display().to_string()
    );
    let server = TestServer::start(ServerOptions {
        extra_toml: toml,
        ..ServerOptions::default()
    });
    let api = server.admin_client();

    let hs = json!({"alg": "HS256", "typ": "JWT", "kid": "hs"});
    let ed_header = json!({"alg": "EdDSA", "kid": "ed"});
    let producer = claims(Some("acme"), &["producer"]);
    // Good tokens work, as tenant principals with their roles.
    for token in [
        hs256(&hs, &producer, HS_SECRET),
        eddsa(&ed_header, &producer, &ed),
    ] {
        let Reply { status, body, .. } = enqueue(&api, &format!("Bearer {token}"), "jwt").await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let Reply { status, .. } = api
            .by(&format!("Bearer {token}"))
            .call(
                Method::POST,
                "/ojs/v1/workers/fetch",
                Some(json!({"queues": ["jwt"]})),
                &[],
            )
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "a producer token on a worker route"
        );
    }
    let stored = job_count(&api, "acme").await;
    assert_eq!(stored, 2);

    let t = now();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = producer.clone();
        f(&mut c);
        c
    };
    let none_header = json!({"alg": "none", "kid": "hs"});
    let tampered = {
        let good = hs256(&hs, &producer, HS_SECRET);
        let parts: Vec<&str> = good.split('.').collect();
        let admin = b64(&claims(Some("acme"), &["admin"]));
        format!("{}.{admin}.{}", parts[0], parts[2])
    };
    let attacks: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!("{}.{}.", b64(&none_header), b64(&producer)),
        ),
        (
            "EdDSA public key used as an HS256 secret",
            hs256(
                &json!({"alg": "HS256", "kid": "ed"}),
                &producer,
                ed.public_key().as_ref(),
            ),
        ),
        (
            "header alg differs from the key's",
            hs256(&json!({"alg": "HS512", "kid": "hs"}), &producer, HS_SECRET),
        ),
        (
            "unknown kid",
            hs256(
                &json!({"alg": "HS256", "kid": "nope"}),
                &producer,
                HS_SECRET,
            ),
        ),
        (
            "wrong secret",
            hs256(&hs, &producer, b"another-secret-of-more-than-32-bytes!!"),
        ),
        ("tampered payload", tampered),
        (
            "expired",
            hs256(
                &hs,
                &with(&|c| {
                    c["iat"] = (t - 900).into();
                    c["nbf"] = (t - 900).into();
                    c["exp"] = (t - 300).into();
                }),
                HS_SECRET,
            ),
        ),
        (
            "nbf in the future",
            hs256(&hs, &with(&|c| c["nbf"] = (t + 300).into()), HS_SECRET),
        ),
        (
            "missing iss",
            hs256(
                &hs,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("iss");
                }),
                HS_SECRET,
            ),
        ),
        (
            "missing aud",
            hs256(
                &hs,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("aud");
                }),
                HS_SECRET,
            ),
        ),
        (
            "wrong iss",
            hs256(
                &hs,
                &with(&|c| c["iss"] = "https://evil.test".into()),
                HS_SECRET,
            ),
        ),
        (
            "wrong aud",
            hs256(&hs, &with(&|c| c["aud"] = json!(["other"])), HS_SECRET),
        ),
        (
            "lifetime over the cap",
            hs256(&hs, &with(&|c| c["exp"] = (t + 7200).into()), HS_SECRET),
        ),
        (
            "no tenant claim",
            hs256(&hs, &claims(None, &["producer"]), HS_SECRET),
        ),
        (
            "producer and worker at once",
            hs256(
                &hs,
                &claims(Some("acme"), &["producer", "worker"]),
                HS_SECRET,
            ),
        ),
        (
            "oversized",
            // Over the verifier's 8 KiB, within the 16 KiB header bound (beyond it the edge
            // answers 431 before any credential is looked at: api_edge).
            format!("{}.{}.x", b64(&hs), "A".repeat(12_000)),
        ),
    ];
    let mut reference: Option<Value> = None;
    for (name, token) in &attacks {
        let Reply { status, body, .. } = enqueue(&api, &format!("Bearer {token}"), "jwt").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        // Every refusal has the same body.
        match &reference {
            None => reference = Some(body),
            Some(r) => assert_eq!(&body, r, "{name}"),
        }
    }
    assert_eq!(
        job_count(&api, "acme").await,
        stored,
        "nothing was enqueued"
    );
    // Each refusal is in the audit trail, with a reason but never the token.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failures: Vec<Value> = server
        .audit_records()
        .into_iter()
        .filter(|r| r["event_type"] == "auth.failure")
        .collect();
    assert!(
        failures.len() >= attacks.len(),
        "{} attacks, {} auth.failure records",
        attacks.len(),
        failures.len()
    );
    let log = std::fs::read_to_string(server.dir.join("data").join("audit.log")).unwrap();
    for (name, token) in &attacks {
        if let Some(sig) = token.rsplit('.').next().filter(|s| s.len() > 16) {
            assert!(!log.contains(sig), "{name}: a token reached the audit log");
        }
    }
}

#[tokio::test]
async fn api_keys_are_scoped_expire_rotate_and_revoke_at_once() {
    let server = TestServer::start(ServerOptions {
        extra_toml: common::UNTHROTTLED.into(),
        ..ServerOptions::default()
    });
    let api = server.admin_client();

    // Producer and worker roles on one key are refused.
    let Reply { status, body, .. } = api
        .call(
            Method::POST,
            "/ojs/v1/admin/keys",
            Some(json!({"name": "both", "roles": ["producer", "worker"], "tenant": "acme"})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Queue patterns and scopes narrow a key.
    let (billing, _) = key(&api, json!({"name": "billing", "roles": ["producer"], "tenant": "acme", "queues": ["billing.*"]}))
        .await;
    assert_eq!(
        enqueue(&api, &billing, "billing.invoices").await.status,
        StatusCode::CREATED
    );
    let Reply { status, body, .. } = enqueue(&api, &billing, "emails").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["details"]["queue"], "emails");
    assert_eq!(body["error"]["details"]["principal"], "billing");
    let (read_only, _) = key(
        &api,
        json!({"name": "ro", "roles": ["admin"], "tenant": "acme", "scopes": ["inspect"]}),
    )
    .await;
    assert_eq!(
        enqueue(&api, &read_only, "q").await.status,
        StatusCode::FORBIDDEN
    );
    audited(&server, "authz.denied", "out_of_scope").await;
    // Authentication success is recorded once per key per process, not per request.
    let mut successes = 0;
    for _ in 0..50 {
        successes = server
            .audit_records()
            .iter()
            .filter(|r| r["event_type"] == "auth.success" && r["principal"] == "billing")
            .count();
        if successes > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(successes, 1, "billing made three requests");

    // Revocation takes effect on the very next request, on the same kept-alive connection.
    let (doomed, doomed_id) = key(
        &api,
        json!({"name": "doomed", "roles": ["producer"], "tenant": "acme"}),
    )
    .await;
    assert_eq!(
        enqueue(&api, &doomed, "q").await.status,
        StatusCode::CREATED
    );
    let Reply { status, .. } = api
        .call(
            Method::DELETE,
            &format!("/ojs/v1/admin/keys/{doomed_id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let Reply {
        status,
        body: revoked_body,
        ..
    } = enqueue(&api, &doomed, "q").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Unknown id, wrong secret, revoked and expired all answer the same body.
    let (short, _) = key(
        &api,
        json!({"name": "short", "roles": ["producer"], "tenant": "acme", "expires_in": "PT1S"}),
    )
    .await;
    assert_eq!(enqueue(&api, &short, "q").await.status, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let Reply {
        status,
        body: expired_body,
        ..
    } = enqueue(&api, &short, "q").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "an expired cached key");
    let unknown = "Bearer bwk_live_00000000000000ff_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let Reply {
        body: unknown_body, ..
    } = enqueue(&api, unknown, "q").await;
    let mut wrong = billing.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    let Reply {
        body: wrong_body, ..
    } = enqueue(&api, &wrong, "q").await;
    assert_eq!(revoked_body, expired_body);
    assert_eq!(revoked_body, unknown_body);
    assert_eq!(revoked_body, wrong_body);
    audited(&server, "auth.failure", "revoked").await;
    audited(&server, "auth.failure", "expired").await;

    // Rotation: both keys work during the grace period, then only the new one.
    let (old, old_id) = key(
        &api,
        json!({"name": "rotating", "roles": ["producer"], "tenant": "acme"}),
    )
    .await;
    assert_eq!(enqueue(&api, &old, "q").await.status, StatusCode::CREATED);
    let Reply { status, body, .. } = api
        .call(
            Method::POST,
            &format!("/ojs/v1/admin/keys/{old_id}/rotate?grace_secs=1"),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let new = format!("Bearer {}", body["secret"].as_str().unwrap());
    assert_eq!(body["key"]["name"], "rotating");
    assert_eq!(
        enqueue(&api, &old, "q").await.status,
        StatusCode::CREATED,
        "grace period"
    );
    assert_eq!(enqueue(&api, &new, "q").await.status, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        enqueue(&api, &old, "q").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(enqueue(&api, &new, "q").await.status, StatusCode::CREATED);

    // Listing shows no secret, and the last use.
    let Reply { body: listing, .. } = api.call(Method::GET, "/ojs/v1/admin/keys", None, &[]).await;
    let text = listing.to_string();
    assert!(!text.contains(common::key_secret(new.trim_start_matches("Bearer "))));
    let rotated = listing["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == old_id.as_str())
        .unwrap();
    assert_eq!(rotated["status"], "expired");
    assert!(rotated["last_used_at"].is_string());

    // Bulk revocation by principal.
    let Reply { status, body, .. } = api
        .call(
            Method::POST,
            "/ojs/v1/admin/keys/revoke",
            Some(json!({"name": "rotating"})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["revoked"].as_array().unwrap().len(), 2);
    assert_eq!(
        enqueue(&api, &new, "q").await.status,
        StatusCode::UNAUTHORIZED
    );

    // A tenant administrator cannot make keys for another tenant or the system.
    let (tenant_admin, _) = key(
        &api,
        json!({"name": "acme-admin", "roles": ["admin"], "tenant": "acme"}),
    )
    .await;
    let Reply { status, .. } = api
        .by(&tenant_admin)
        .call(
            Method::POST,
            "/ojs/v1/admin/keys",
            Some(json!({"name": "escalate", "roles": ["admin"], "tenant": "globex"})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let Reply { status, body, .. } = api
        .by(&tenant_admin)
        .call(
            Method::POST,
            "/ojs/v1/admin/keys",
            Some(json!({"name": "mine", "roles": ["worker"]})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        body["key"]["tenant"], "acme",
        "the tenant comes from the creator"
    );
}

#[tokio::test]
async fn wrong_keys_from_one_address_are_throttled_before_argon2() {
    // The default budget: 20 verifications at once, then 30 a minute. Throttled answers are
    // not held back here, so the 40 attempts fit in a second or two and the budget cannot
    // refill in between.
    let server = TestServer::start(ServerOptions {
        process: true,
        extra_toml: "[limits]\nrefusal_delay_ms = 0\n".into(),
        ..ServerOptions::default()
    });
    let api = server.admin_client();
    let good = server.auth();
    assert_eq!(enqueue(&api, &good, "q").await.status, StatusCode::CREATED);
    let mut statuses = Vec::new();
    for i in 0..40u32 {
        let key = format!("Bearer bwk_live_{i:016x}_{}", "A".repeat(43));
        statuses.push(enqueue(&api, &key, "q").await);
    }
    let unauthorized = statuses
        .iter()
        .filter(|r| r.status == StatusCode::UNAUTHORIZED)
        .count();
    let throttled: Vec<&Value> = statuses
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .map(|r| &r.body)
        .collect();
    assert!((19..=21).contains(&unauthorized), "{unauthorized} verified");
    assert_eq!(unauthorized + throttled.len(), 40);
    assert_eq!(throttled[0]["error"]["code"], "rate_limited");
    assert_eq!(throttled[0]["error"]["retryable"], true);
    // The key this process already verified still works: the budget is spent only by keys
    // that need argon2.
    assert_eq!(enqueue(&api, &good, "q").await.status, StatusCode::CREATED);
    // argon2 ran once for the good key and once per verified wrong key, never for a throttled
    // one.
    let metrics = api.by(&good).metrics_text().await;
    let verifications: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("bulwark_api_key_verifications_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    #[allow(clippy::cast_precision_loss)]
    let expected = (unauthorized + 1) as f64;
    assert!(
        (verifications - expected).abs() < 0.5,
        "{verifications} argon2 verifications, expected {expected}"
    );
    // A 429 carries Retry-After.
    let res = api
        .by(&format!("Bearer bwk_live_{:016x}_{}", 99, "B".repeat(43)))
        .enqueue(json!({"type": "a.b", "args": []}))
        .await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(res.header("retry-after").is_some());
    // The flood is audited once for the address, not once per refused request (each refused
    // request is still counted in the metrics).
    audited(&server, "auth.failure", "throttled").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let recorded = server
        .audit_records()
        .iter()
        .filter(|r| r["event_type"] == "auth.failure" && r["detail"]["reason"] == "throttled")
        .count();
    assert_eq!(recorded, 1, "{} throttled requests", throttled.len() + 1);
}

#[tokio::test]
async fn tenant_headers_job_rules_and_dry_runs() {
    let server = TestServer::start(ServerOptions {
        extra_toml: common::UNTHROTTLED.into(),
        ..ServerOptions::default()
    });
    let api = server.admin_client();
    let (producer, _) = key(
        &api,
        json!({"name": "p", "roles": ["producer"], "tenant": "acme"}),
    )
    .await;
    let (operator, _) = key(
        &api,
        json!({"name": "op", "roles": ["operator"], "tenant": "acme"}),
    )
    .await;
    let (submitter, _) = key(
        &api,
        json!({"name": "sub", "roles": ["submitter"], "tenant": "acme"}),
    )
    .await;
    let (other_submitter, _) = key(
        &api,
        json!({"name": "sub2", "roles": ["submitter"], "tenant": "acme"}),
    )
    .await;
    let body = json!({"type": "t.x", "args": []});

    // The tenant header and meta.tenant_id may only repeat the credential's tenant.
    for (name, header) in [("X-OJS-Tenant", "globex"), ("X-OJS-Tenant-ID", "globex")] {
        let Reply { status, .. } = api
            .by(&producer)
            .call(
                Method::POST,
                "/ojs/v1/jobs",
                Some(body.clone()),
                &[(name, header)],
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}");
    }
    audited(&server, "authz.denied", "tenant_mismatch").await;
    let Reply { status, .. } = api
        .by(&producer)
        .call(
            Method::POST,
            "/ojs/v1/jobs",
            Some(json!({"type": "t.x", "args": [], "meta": {"tenant_id": "globex"}})),
            &[("X-OJS-Tenant", "acme")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    audited(&server, "authz.denied", "meta_tenant_mismatch").await;
    // Tenant credentials cannot pick job ids.
    let Reply { status, .. } = api
        .by(&producer)
        .call(
            Method::POST,
            "/ojs/v1/jobs",
            Some(json!({"type": "t.x", "args": [], "id": "019b0000-0000-7000-8000-000000000001"})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(job_count(&api, "acme").await, 0, "nothing stored");

    // A dry run checks everything and stores nothing, and is audited as one.
    let Reply { status, body, .. } = api
        .by(&producer)
        .call(
            Method::POST,
            "/ojs/v1/jobs",
            Some(json!({"type": "t.x", "args": [1], "dry_run": true})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dry_run"], true);
    assert_eq!(job_count(&api, "acme").await, 0);
    assert!(server
        .audit_records()
        .iter()
        .any(|r| r["event_type"] == "job.dry_run"));
    let Reply { status, .. } = api
        .by(&producer)
        .call(
            Method::POST,
            "/ojs/v1/jobs",
            Some(
                json!({"type": "t.x", "args": [], "dry_run": true, "options": {"queue": "_ojs_x"}}),
            ),
            &[],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a dry run is checked like a real one"
    );

    // A job only its owner may see, and only its owner may cancel.
    let Reply { body: job, .. } = api
        .by(&submitter)
        .call(
            Method::POST,
            "/ojs/v1/jobs",
            Some(json!({"type": "t.x", "args": [], "options": {"security": {
                "visibility": "owner", "cancellable_by": ["owner"]}}})),
            &[],
        )
        .await;
    let id = job["job"]["id"].as_str().unwrap();
    let path = format!("/ojs/v1/jobs/{id}");
    assert_eq!(
        api.by(&submitter)
            .call(Method::GET, &path, None, &[])
            .await
            .status,
        StatusCode::OK
    );
    let Reply {
        status,
        body: hidden,
        ..
    } = api.by(&operator).call(Method::GET, &path, None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "restricted to its owner");
    let Reply { body: random, .. } = api
        .by(&operator)
        .call(
            Method::GET,
            "/ojs/v1/jobs/019b0000-0000-7000-8000-000000000002",
            None,
            &[],
        )
        .await;
    assert_eq!(hidden, random);
    assert_eq!(
        api.by(&other_submitter)
            .call(Method::GET, &path, None, &[])
            .await
            .status,
        StatusCode::NOT_FOUND,
        "another submitter"
    );
    audited(&server, "authz.denied", "restricted_job").await;
    // An unrestricted job of the producer: the operator may see it but, with
    // cancellable_by ["owner"], not cancel it.
    let Reply { body: job, .. } = api.by(&producer).call(Method::POST, "/ojs/v1/jobs", Some(json!({"type": "t.x", "args": [], "options": {"security": {"cancellable_by": ["owner"]}}})), &[])
        .await;
    let path = format!("/ojs/v1/jobs/{}", job["job"]["id"].as_str().unwrap());
    assert_eq!(
        api.by(&operator)
            .call(Method::GET, &path, None, &[])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.by(&operator)
            .call(Method::DELETE, &path, None, &[])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let Reply { body: after, .. } = api.by(&operator).call(Method::GET, &path, None, &[]).await;
    assert_eq!(after["job"]["state"], "available", "nothing changed");
    // Only an administrator may name another owner.
    let Reply { status, .. } = api
        .by(&producer)
        .call(
            Method::POST,
            "/ojs/v1/jobs",
            Some(json!({"type": "t.x", "args": [], "options": {"security": {"owner": "op"}}})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn offline_key_commands_scope_rotate_revoke_and_audit() {
    let mut server = TestServer::start(ServerOptions::default());
    assert_eq!(server.terminate(), Some(0));
    let out = server.cli(&[
        "keys",
        "create",
        "--name",
        "cli-billing",
        "--role",
        "producer",
        "--tenant",
        "acme",
        "--queues",
        "billing.*",
        "--expires",
        "P1D",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let id = key.split('_').nth(2).unwrap().to_string();
    // Refusals: producer and worker at once, an unknown role, a bad queue pattern.
    for bad in [
        vec!["--role", "producer,worker"],
        vec!["--role", "root"],
        vec!["--role", "producer", "--queues", "Bad Queue"],
    ] {
        let mut args = vec!["keys", "create", "--name", "x"];
        args.extend(bad.iter());
        assert!(!server.cli(&args).status.success(), "{bad:?}");
    }
    let list = String::from_utf8(server.cli(&["keys", "list"]).stdout).unwrap();
    assert!(list.contains(&id) && list.contains("acme") && list.contains("producer"));
    assert!(
        !list.contains(common::key_secret(&key)),
        "list shows no secret"
    );
    let out = server.cli(&["keys", "rotate", &id, "--grace-secs", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = String::from_utf8(out.stdout).unwrap().trim().to_string();
    server.restart();

    let api = server.admin_client();
    let old = format!("Bearer {key}");
    let new = format!("Bearer {rotated}");
    assert_eq!(
        enqueue(&api, &old, "billing.a").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        enqueue(&api, &new, "billing.a").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        enqueue(&api, &new, "emails").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(server.terminate(), Some(0));
    let out = server.cli(&["keys", "revoke", "--tenant", "acme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.restart();
    let api = server.admin_client();
    assert_eq!(
        enqueue(&api, &new, "billing.a").await.status,
        StatusCode::UNAUTHORIZED
    );
    // Each offline change is in the audit trail, made by the operator at the machine and marked
    // as made from the command line; a revocation by filter is the HTTP API's bulk revocation,
    // with the same record.
    let audit = server.audit_records();
    for event in ["key.created", "key.rotated", "key.bulk_revoked"] {
        assert!(
            audit.iter().any(|r| r["event_type"] == event
                && r["detail"]["via"] == "cli"
                && r["principal"] == "local-operator"
                && r["detail"]["credential"] == "local"),
            "{event}"
        );
    }
    let bulk = audit
        .iter()
        .find(|r| r["event_type"] == "key.bulk_revoked")
        .unwrap();
    assert_eq!(bulk["detail"]["tenant_filter"], "acme");
}

/// An offline `keys revoke ID` is the HTTP API's `DELETE /admin/keys/{id}`: the same service
/// writes the same record (event, key, name, roles, tenant), only the principal and `via` tell
/// them apart.
#[tokio::test]
async fn an_offline_revocation_writes_the_record_the_http_one_writes() {
    let mut server = TestServer::start(ServerOptions::default());
    let api = server.admin_client();
    let spec = |name: &str| json!({"name": name, "roles": ["producer"], "tenant": "acme"});
    let (_, online) = key(&api, spec("revoked-online")).await;
    let (bearer, offline) = key(&api, spec("revoked-offline")).await;
    let Reply { status, .. } = api
        .call(
            Method::DELETE,
            &format!("/ojs/v1/admin/keys/{online}"),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.terminate(), Some(0));
    let out = server.cli(&["keys", "revoke", &offline]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.restart();
    let api = server.admin_client();
    assert_eq!(
        enqueue(&api, &bearer, "billing").await.status,
        StatusCode::UNAUTHORIZED
    );
    let audit = server.audit_records();
    let record = |name: &str| {
        audit
            .iter()
            .find(|r| r["event_type"] == "key.revoked" && r["detail"]["name"] == name)
            .unwrap_or_else(|| panic!("no key.revoked record for {name}"))
            .clone()
    };
    let (http, cli) = (record("revoked-online"), record("revoked-offline"));
    for r in [&http, &cli] {
        assert_eq!(r["outcome"], "success");
        assert_eq!(r["tenant"], "acme");
        assert_eq!(r["detail"]["roles"], json!(["producer"]));
    }
    let fields = |r: &Value| {
        let mut keys: Vec<String> = r["detail"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "via")
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(fields(&http), fields(&cli));
    assert_eq!(cli["principal"], "local-operator");
    assert_eq!(cli["detail"]["via"], "cli");
    assert!(http["detail"].get("via").is_none());
    assert_ne!(http["principal"], cli["principal"]);
}
