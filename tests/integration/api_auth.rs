//! Authentication from outside: every route of the table but the public ones needs a valid
//! credential, and every kind of bad credential gets the same answer.

use crate::common;

use common::{ServerOptions, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Every non-public route of the route table, with sample path parameters, plus an unknown
/// route.
fn routes() -> Vec<(String, String)> {
    let mut routes: Vec<(String, String)> = bulwark::http::access::ROUTES
        .iter()
        .filter(|r| r.need != bulwark::http::access::Need::Public)
        .map(|r| {
            let path = r
                .path
                .replace("{id}", "019461a8-1a2b-7c3d-8e4f-5a6b7c8d9e0f")
                .replace("{name}", "alice");
            (r.method.to_string(), path)
        })
        .collect();
    routes.push(("GET".into(), "/ojs/v1/unknown-route".into()));
    routes
}

fn mangle_last_char(key: &str) -> String {
    let mut k = key.to_string();
    let last = k.pop().unwrap();
    k.push(if last == 'A' { 'B' } else { 'A' });
    k
}

#[tokio::test]
async fn every_route_but_health_and_manifest_needs_a_valid_key() {
    let server = TestServer::start(ServerOptions {
        extra_toml: common::UNTHROTTLED.into(),
        ..ServerOptions::conformance()
    });
    let client = server.client();
    let wrong_secret = mangle_last_char(&server.admin_key);
    let unknown_id =
        "bwk_live_00000000000000ff_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string();
    let credentials: Vec<Option<String>> = vec![
        None,
        Some(String::new()),
        Some("Bearer".into()),
        Some("Bearer ".into()),
        Some(format!("Basic {}", server.admin_key)),
        Some("Bearer not-a-key".into()),
        Some(format!("Bearer {wrong_secret}")),
        Some(format!("Bearer {unknown_id}")),
        Some(format!("Bearer {}", "x".repeat(10_000))),
        Some(format!("Bearer {} ", server.admin_key.to_uppercase())),
    ];
    let mut reference: Option<Value> = None;
    for (method, path) in &routes() {
        for cred in &credentials {
            let mut req = client
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    server.url(path),
                )
                .header("Content-Type", "application/json")
                .body("{}");
            if let Some(c) = cred {
                req = req.header("Authorization", c);
            }
            let res = req.send().await.unwrap();
            assert_eq!(
                res.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {cred:?}"
            );
            assert_eq!(
                res.headers()["www-authenticate"],
                "Bearer realm=\"bulwark\""
            );
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthenticated");
            // Identical bodies whatever the cause: no oracle for valid ids or keys.
            match &reference {
                None => reference = Some(body),
                Some(r) => assert_eq!(&body, r, "{method} {path} with {cred:?}"),
            }
        }
    }
    for path in ["/ojs/v1/health", "/ojs/manifest"] {
        let res = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    // And the real key works.
    let res = client
        .get(server.url("/ojs/v1/queues"))
        .header("Authorization", server.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn keys_are_shown_once_stored_hashed_and_revocable_offline() {
    let mut server = TestServer::start(ServerOptions::default());
    let first = server.admin_key.clone();
    let key_file = server.dir.join("secrets").join("bootstrap-admin.key");
    let meta = std::fs::metadata(&key_file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(server.dir.join("secrets"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    // The CLI refuses to touch the database while the server runs.
    let busy = server.cli(&["keys", "create", "--role", "admin", "--name", "x"]);
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("stop the server"));

    let second = server.add_admin_key("second");
    assert!(second.starts_with("bwk_live_"), "{second}");
    assert_ne!(second, first);

    // Neither key appears in either database file: only hashes are stored.
    for file in ["bulwark.redb", "control.redb"] {
        let db = std::fs::read(server.dir.join("data").join(file)).unwrap();
        for key in [&first, &second] {
            let secret = common::key_secret(key);
            assert!(
                !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a key secret is in {file}"
            );
        }
    }

    let client = server.client();
    for key in [&first, &second] {
        let res = client
            .get(server.url("/ojs/v1/queues"))
            .header("Authorization", format!("Bearer {key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    // Revoke the second key offline; it fails on its next request after restart.
    server.terminate();
    let id = second.split('_').nth(2).unwrap();
    let out = server.cli(&["keys", "revoke", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = server.cli(&["keys", "list"]);
    let listing = String::from_utf8_lossy(&list.stdout);
    assert!(
        listing.contains("revoked") && listing.contains("bootstrap-admin"),
        "{listing}"
    );
    assert!(
        !listing.contains(common::key_secret(&second)),
        "list must not show secrets"
    );
    server.restart();
    let client = server.client();
    let res = client
        .get(server.url("/ojs/v1/queues"))
        .header("Authorization", format!("Bearer {second}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = client
        .post(server.url("/ojs/v1/jobs"))
        .header("Authorization", format!("Bearer {first}"))
        .json(&json!({"type": "a.b", "args": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn keys_appear_in_the_log_only_truncated() {
    let server = TestServer::start(ServerOptions {
        process: true,
        ..ServerOptions::default()
    });
    let client = server.client();
    let wrong = mangle_last_char(&server.admin_key);
    for key in [&server.admin_key, &wrong] {
        let _ = client
            .get(server.url("/ojs/v1/queues"))
            .header("Authorization", format!("Bearer {key}"))
            .send()
            .await
            .unwrap();
    }
    let log = server.log();
    let secret = common::key_secret(&server.admin_key);
    assert!(!log.contains(secret), "a key secret reached the log");
    assert!(!log.contains(common::key_secret(&wrong)));
    assert!(
        log.contains("bwk_…"),
        "wrong-secret attempts are logged with a truncated key id"
    );
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_keys_cannot_exhaust_memory() {
    // Each argon2 verification needs 19 MiB. 96 concurrent well-formed keys verified on the
    // blocking pool peaked at ~950 MiB here; the auth store's two verifier threads with reused
    // working memory keep the peak near the baseline. (The per-address budget, which would
    // refuse most of them before argon2, is lifted to measure the worst case.)
    let server = TestServer::start(ServerOptions {
        process: true,
        extra_toml: common::UNTHROTTLED.into(),
        ..ServerOptions::default()
    });
    let mut tasks = Vec::new();
    for i in 0..96u32 {
        let client = server.client();
        let url = server.url("/ojs/v1/queues");
        tasks.push(tokio::spawn(async move {
            let key = format!("bwk_live_{i:016x}_{}", "A".repeat(43));
            client
                .get(url)
                .header("Authorization", format!("Bearer {key}"))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    let peak_mib = peak_rss_kib(server.pid()) / 1024;
    eprintln!("peak memory under a wrong-key flood: {peak_mib} MiB");
    assert!(
        peak_mib < 200,
        "peak memory {peak_mib} MiB under a wrong-key flood"
    );
}
