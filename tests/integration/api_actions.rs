//! Action job types from outside: the real server with `[auth.actions]`, tokens signed with the
//! real HMAC. An action job is stored only with a valid policy token made for its tenant,
//! principal and type; every refusal is 403, stores nothing and is audited with its reason; a
//! dry run checks the token too; and the server does not start with action types and no
//! usable secret.

use crate::common;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulwark::auth::policy_token::{sign, Claims, PolicySecret};
use common::client::Client;
use common::{ServerOptions, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The secret in the policy-token file (41 bytes).
const SECRET: &[u8] = b"file-secret-for-policy-tokens-0123456789a";
/// A different secret, for the environment variable.
const ENV_SECRET: &str = "env-secret-for-policy-tokens-9876543210zyx";
const HEADER: &str = "X-OJS-Policy-Token";
const ACTIONS: &str = "[auth.actions]\ntypes = [\"ops.apply\", \"billing.*\"]\n";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn secret(bytes: &[u8]) -> PolicySecret {
    PolicySecret::new(bytes.to_vec()).unwrap()
}

fn write_private(path: &Path, contents: &[u8], mode: u32) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A server whose action types are `ops.apply` and `billing.*`, with the secret in a file
/// outside its secrets folder (absolute `secret_file`), and logging at trace level.
fn start() -> (TestServer, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let path = keys.path().join("policy.key");
    let mut contents = SECRET.to_vec();
    contents.push(b'\n');
    write_private(&path, &contents, 0o600);
    let server = TestServer::start(ServerOptions {
        extra_toml: format!(
            "{ACTIONS}secret_file = {:?}\n\n[log]\nlevel = \"trace\"\n",
            path.display().to_string()
        ),
        ..ServerOptions::default()
    });
    (server, keys)
}

/// Claims for `svc-ops` of tenant `acme` enqueueing `ops.apply`, valid for ten minutes.
fn claims() -> Claims {
    let now = now();
    Claims {
        tenant: Some("acme".into()),
        actor: "svc-ops".into(),
        action: "ops.apply".into(),
        scopes: vec!["enqueue".into()],
        iat: now - 5,
        exp: now + 600,
        jti: Some("test-jti-1".into()),
    }
}

fn token(c: &Claims) -> String {
    sign(c, &secret(SECRET)).unwrap()
}

/// Creates a producer key for `name` in `tenant` through the admin API.
async fn producer_key(server: &TestServer, name: &str, tenant: &str) -> String {
    let (secret, _) = server
        .admin_client()
        .new_key(json!({"name": name, "roles": ["producer"], "tenant": tenant}))
        .await;
    format!("Bearer {secret}")
}

/// Enqueues `job_type` on `queue` with an optional token and a request id; status and body.
async fn enqueue(
    server: &TestServer,
    auth: &str,
    job_type: &str,
    queue: &str,
    token: Option<&str>,
    request_id: &str,
    dry_run: bool,
) -> (StatusCode, Value) {
    let mut options = json!({"queue": queue});
    if dry_run {
        options["dry_run"] = true.into();
    }
    let mut headers = vec![("X-Request-Id", request_id)];
    if let Some(t) = token {
        headers.push((HEADER, t));
    }
    let job = json!({"type": job_type, "args": [], "options": options});
    let res = Client::authorized(server, auth)
        .call(Method::POST, "/ojs/v1/jobs", Some(job), &headers)
        .await;
    (res.status, res.body)
}

/// The audit record of `event_type` made for the request `request_id`.
async fn record_for(server: &TestServer, event_type: &str, request_id: &str) -> Value {
    server
        .wait_audit_event(event_type, |r| r["correlation_id"] == request_id)
        .await
}

/// The queues of `tenant` with their job counts, as the system admin sees them.
async fn queue_counts(server: &TestServer, tenant: &str) -> Vec<(String, u64)> {
    let res = server
        .admin_client()
        .for_tenant(Some(tenant))
        .queues()
        .await;
    res.json()["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            let total = q["counts"]
                .as_object()
                .map_or(0, |c| c.values().filter_map(Value::as_u64).sum());
            (q["name"].as_str().unwrap().to_string(), total)
        })
        .collect()
}

fn stored(counts: &[(String, u64)], queue: &str) -> u64 {
    counts
        .iter()
        .find(|(name, _)| name == queue)
        .map_or(0, |(_, n)| *n)
}

#[tokio::test]
async fn action_jobs_need_a_valid_token_and_every_refusal_is_audited() {
    let (server, _keys) = start();
    let svc = producer_key(&server, "svc-ops", "acme").await;
    let now = now();

    // A token made by tampering: another payload under a genuine signature.
    let genuine = token(&claims());
    let forged = token(&Claims {
        action: "ops.apply".into(),
        scopes: vec!["enqueue".into(), "admin".into()],
        ..claims()
    });
    let tampered = format!(
        "{}.{}",
        forged.split_once('.').unwrap().0,
        genuine.split_once('.').unwrap().1
    );
    let oversized = token(&Claims {
        jti: Some("j".repeat(5000)),
        ..claims()
    });

    let cases: Vec<(&str, Option<String>, &str, &str)> = vec![
        ("missing", None, "ops.apply", "policy_token_missing"),
        (
            "expired",
            Some(token(&Claims {
                iat: now - 900,
                exp: now - 300,
                ..claims()
            })),
            "ops.apply",
            "policy_token_expired",
        ),
        (
            "future-iat",
            Some(token(&Claims {
                iat: now + 600,
                exp: now + 900,
                ..claims()
            })),
            "ops.apply",
            "policy_token_not_yet_valid",
        ),
        (
            "over-lifetime",
            Some(token(&Claims {
                iat: now,
                exp: now + 3601,
                ..claims()
            })),
            "ops.apply",
            "policy_token_lifetime_exceeded",
        ),
        (
            "wrong-tenant",
            Some(token(&Claims {
                tenant: Some("globex".into()),
                ..claims()
            })),
            "ops.apply",
            "policy_token_tenant_mismatch",
        ),
        (
            "system-tenant",
            Some(token(&Claims {
                tenant: None,
                ..claims()
            })),
            "ops.apply",
            "policy_token_tenant_mismatch",
        ),
        (
            "wrong-actor",
            Some(token(&Claims {
                actor: "svc-other".into(),
                ..claims()
            })),
            "ops.apply",
            "policy_token_actor_mismatch",
        ),
        (
            "wrong-action",
            Some(token(&Claims {
                action: "billing.charge".into(),
                ..claims()
            })),
            "ops.apply",
            "policy_token_action_mismatch",
        ),
        (
            "missing-scope",
            Some(token(&Claims {
                scopes: vec!["ops:write".into()],
                ..claims()
            })),
            "ops.apply",
            "policy_token_scope_missing",
        ),
        (
            "tampered",
            Some(tampered),
            "ops.apply",
            "policy_token_bad_signature",
        ),
        (
            "wrong-secret",
            Some(sign(&claims(), &secret(&[b'w'; 32])).unwrap()),
            "ops.apply",
            "policy_token_bad_signature",
        ),
        (
            "oversized",
            Some(oversized),
            "ops.apply",
            "policy_token_too_large",
        ),
        (
            "garbage",
            Some("bpt_not-a-token".into()),
            "ops.apply",
            "policy_token_invalid",
        ),
        // A prefix pattern: its types need a token too.
        (
            "prefix-type",
            None,
            "billing.charge",
            "policy_token_missing",
        ),
    ];
    for (i, (name, presented, job_type, reason)) in cases.iter().enumerate() {
        let queue = format!("neg-{i}");
        let request_id = format!("neg-{name}");
        let (status, body) = enqueue(
            &server,
            &svc,
            job_type,
            &queue,
            presented.as_deref(),
            &request_id,
            false,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {body}");
        assert_eq!(body["error"]["code"], "permission_denied", "{name}");
        assert_eq!(body["error"]["details"]["job_type"], *job_type, "{name}");
        if let Some(t) = presented {
            let sig = t.rsplit('.').next().unwrap();
            assert!(!body.to_string().contains(sig), "{name}: token echoed");
        }
        let denied = record_for(&server, "authz.denied", &request_id).await;
        assert_eq!(denied["detail"]["reason"], *reason, "{name}: {denied}");
        assert_eq!(denied["detail"]["job_type"], *job_type, "{name}");
        assert_eq!(denied["detail"]["queue"], queue, "{name}");
        assert_eq!(denied["principal"], "svc-ops", "{name}");
        assert_eq!(denied["outcome"], "failure", "{name}");
    }

    // Two token headers are ambiguous: refused at the edge, before the token is looked at.
    let res = Client::authorized(&server, &svc)
        .call(
            Method::POST,
            "/ojs/v1/jobs",
            Some(json!({"type": "ops.apply", "args": [], "options": {"queue": "neg-twice"}})),
            &[
                ("X-Request-Id", "neg-twice"),
                (HEADER, &genuine),
                (HEADER, &genuine),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let refused = record_for(&server, "request.refused", "neg-twice").await;
    assert_eq!(refused["detail"]["reason"], "duplicate_header");
    assert_eq!(refused["detail"]["header"], "x-ojs-policy-token");

    // The valid token (the header name is case-insensitive): 201, and its use is on record.
    let (status, body) = enqueue(
        &server,
        &svc,
        "ops.apply",
        "pos-q",
        Some(&genuine),
        "pos-1",
        false,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["job"]["type"], "ops.apply");
    let used = record_for(&server, "policy_token.used", "pos-1").await;
    assert_eq!(used["outcome"], "success");
    assert_eq!(used["principal"], "svc-ops");
    assert_eq!(used["detail"]["action"], "ops.apply");
    assert_eq!(used["detail"]["tenant"], "acme");
    assert_eq!(used["detail"]["actor"], "svc-ops");
    assert_eq!(used["detail"]["scopes"], json!(["enqueue"]));
    assert_eq!(used["detail"]["dry_run"], false);
    assert_eq!(used["detail"]["jti"], "test-jti-1");

    // Non-action types need no token: another type, and a name the prefix does not cover.
    for (job_type, queue) in [("ops.scan", "free-1"), ("billing", "free-2")] {
        let (status, body) = enqueue(&server, &svc, job_type, queue, None, "free", false).await;
        assert_eq!(status, StatusCode::CREATED, "{job_type}: {body}");
    }

    // Only the accepted jobs were stored.
    let counts = queue_counts(&server, "acme").await;
    assert_eq!(stored(&counts, "pos-q"), 1, "{counts:?}");
    assert_eq!(stored(&counts, "free-1"), 1, "{counts:?}");
    assert_eq!(stored(&counts, "free-2"), 1, "{counts:?}");
    for i in 0..cases.len() {
        assert_eq!(stored(&counts, &format!("neg-{i}")), 0, "{counts:?}");
    }
    assert_eq!(stored(&counts, "neg-twice"), 0);

    // No token, nor its signature, reached the audit trail or the (trace-level) log.
    let audit = server.audit_text();
    let log = server.log();
    for (_, presented, _, _) in &cases {
        if let Some(t) = presented {
            let sig = t.rsplit('.').next().unwrap();
            assert!(!audit.contains(sig), "a token is in the audit log");
            assert!(!log.contains(sig), "a token is in the server log");
        }
    }
    let sig = genuine.rsplit('.').next().unwrap();
    assert!(!audit.contains(sig) && !log.contains(sig));
}

#[tokio::test]
async fn a_dry_run_checks_the_token_and_stores_nothing() {
    let (server, _keys) = start();
    let svc = producer_key(&server, "svc-ops", "acme").await;

    let (status, body) = enqueue(
        &server,
        &svc,
        "ops.apply",
        "dry-q",
        Some(&token(&claims())),
        "dry-ok",
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dry_run"], true);
    assert_eq!(body["valid"], true);
    let used = record_for(&server, "policy_token.used", "dry-ok").await;
    assert_eq!(used["detail"]["dry_run"], true);
    assert_eq!(used["detail"]["action"], "ops.apply");
    let dry = record_for(&server, "job.dry_run", "dry-ok").await;
    assert_eq!(dry["detail"]["action"], true);
    assert_eq!(dry["detail"]["dry_run"], true);

    let (status, body) = enqueue(&server, &svc, "ops.apply", "dry-q", None, "dry-none", true).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let denied = record_for(&server, "authz.denied", "dry-none").await;
    assert_eq!(denied["detail"]["reason"], "policy_token_missing");

    // An expired token fails a dry run as it fails the real thing.
    let now = now();
    let expired = token(&Claims {
        iat: now - 900,
        exp: now - 300,
        ..claims()
    });
    let (status, _) = enqueue(
        &server,
        &svc,
        "ops.apply",
        "dry-q",
        Some(&expired),
        "dry-expired",
        true,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let denied = record_for(&server, "authz.denied", "dry-expired").await;
    assert_eq!(denied["detail"]["reason"], "policy_token_expired");

    // A control that the listing shows stored jobs at all.
    let (status, _) = enqueue(
        &server,
        &svc,
        "ops.apply",
        "real-q",
        Some(&token(&claims())),
        "real",
        false,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let counts = queue_counts(&server, "acme").await;
    assert_eq!(stored(&counts, "real-q"), 1, "{counts:?}");
    assert_eq!(stored(&counts, "dry-q"), 0, "{counts:?}");
}

#[tokio::test]
async fn a_system_admin_needs_a_token_for_the_tenant_it_acts_for() {
    let (server, _keys) = start();
    let admin = server.auth();
    let for_acme = Claims {
        actor: "bootstrap-admin".into(),
        ..claims()
    };
    let system = Claims {
        tenant: None,
        ..for_acme.clone()
    };
    // Acting for acme through the header: the token must name acme, not the system scope.
    for (claims, expected) in [
        (&system, StatusCode::FORBIDDEN),
        (&for_acme, StatusCode::CREATED),
    ] {
        let res = Client::authorized(&server, &admin)
            .for_tenant(Some("acme"))
            .call(
                Method::POST,
                "/ojs/v1/jobs",
                Some(json!({"type": "ops.apply", "args": [], "options": {"queue": "adm-q"}})),
                &[(&HEADER.to_ascii_lowercase(), &token(claims))],
            )
            .await;
        assert_eq!(res.status, expected);
    }
    // On the system scope, the token's tenant is null.
    let (status, body) = enqueue(
        &server,
        &admin,
        "ops.apply",
        "adm-q",
        Some(&token(&system)),
        "adm-system",
        false,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = enqueue(
        &server,
        &admin,
        "ops.apply",
        "adm-q",
        Some(&token(&for_acme)),
        "adm-system-2",
        false,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(stored(&queue_counts(&server, "acme").await, "adm-q"), 1);
}

#[tokio::test]
async fn the_cli_signs_tokens_the_server_accepts() {
    let (server, _keys) = start();
    let svc = producer_key(&server, "svc-ops", "acme").await;
    let out = server.cli(&[
        "policy-token",
        "sign",
        "--tenant",
        "acme",
        "--actor",
        "svc-ops",
        "--action",
        "ops.apply",
        "--ttl-secs",
        "300",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(cli_token.starts_with("bpt_"), "{cli_token}");
    let (status, body) = enqueue(
        &server,
        &svc,
        "ops.apply",
        "cli-q",
        Some(&cli_token),
        "cli",
        false,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let used = record_for(&server, "policy_token.used", "cli").await;
    assert!(used["detail"]["jti"].is_string());

    let too_long = server.cli(&[
        "policy-token",
        "sign",
        "--actor",
        "svc-ops",
        "--action",
        "ops.apply",
        "--ttl-secs",
        "3601",
    ]);
    assert!(!too_long.status.success());
}

#[tokio::test]
async fn the_secret_may_come_from_the_environment() {
    // No file at the default secret_file: the variable alone is enough.
    let server = TestServer::start(ServerOptions {
        extra_toml: ACTIONS.into(),
        env: vec![("OJS_SECRET_POLICY_TOKEN".into(), ENV_SECRET.into())],
        ..ServerOptions::default()
    });
    let svc = producer_key(&server, "svc-ops", "acme").await;
    let from_env = sign(&claims(), &secret(ENV_SECRET.as_bytes())).unwrap();
    let (status, body) = enqueue(
        &server,
        &svc,
        "ops.apply",
        "env-q",
        Some(&from_env),
        "env-ok",
        false,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // A token under another secret is refused.
    let (status, _) = enqueue(
        &server,
        &svc,
        "ops.apply",
        "env-q",
        Some(&token(&claims())),
        "env-other",
        false,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let denied = record_for(&server, "authz.denied", "env-other").await;
    assert_eq!(denied["detail"]["reason"], "policy_token_bad_signature");
    assert!(!server.log().contains(ENV_SECRET));
}

/// Runs `bulwark serve` on a fresh folder with action types and `extra` config; returns the
/// exit status, stderr, and whether it ever listened or created its database.
fn serve_expecting_exit(
    extra: &str,
    env: Option<&str>,
    setup: impl FnOnce(&Path),
) -> (bool, String, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let secrets = dir.join("secrets");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&secrets)
        .unwrap();
    setup(&secrets);
    let config = dir.join("bulwark.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\ndata_dir = {:?}\n\n\
             [secrets]\ndir = {:?}\n\n{ACTIONS}{extra}",
            dir.join("data").display().to_string(),
            secrets.display().to_string(),
        ),
    )
    .unwrap();
    let addr_file: PathBuf = dir.join("addr");
    let mut cmd = Command::new(common::bin_path());
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--addr-file")
        .arg(&addr_file)
        .env_remove("OJS_SECRET_POLICY_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(value) = env {
        cmd.env("OJS_SECRET_POLICY_TOKEN", value);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bulwark kept running without a usable policy-token secret");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let started = addr_file.exists()
        || dir.join("data").join("bulwark.redb").exists()
        || dir.join("data").join("control.redb").exists();
    (status.success(), stderr, started)
}

#[test]
fn the_server_refuses_to_start_without_a_usable_secret() {
    // No secret at all.
    let (ok, stderr, started) = serve_expecting_exit("", None, |_| {});
    assert!(!ok && !started, "{stderr}");
    assert!(stderr.contains("OJS_SECRET_POLICY_TOKEN"), "{stderr}");
    assert!(stderr.contains("policy-token.key"), "{stderr}");

    // 31 bytes in the file.
    let short = [b's'; 31];
    let (ok, stderr, started) = serve_expecting_exit("", None, |secrets| {
        write_private(&secrets.join("policy-token.key"), &short, 0o600);
    });
    assert!(!ok && !started, "{stderr}");
    assert!(stderr.contains("is 31 bytes"), "{stderr}");
    assert!(stderr.contains("at least 32"), "{stderr}");
    assert!(
        !stderr.contains("sssssss"),
        "the secret is in the message: {stderr}"
    );

    // 31 bytes in the environment (a good file does not rescue it: the variable wins).
    let (ok, stderr, started) = serve_expecting_exit("", Some(&"e".repeat(31)), |secrets| {
        write_private(&secrets.join("policy-token.key"), &[b'f'; 40], 0o600);
    });
    assert!(!ok && !started, "{stderr}");
    assert!(
        stderr.contains("OJS_SECRET_POLICY_TOKEN is 31 bytes"),
        "{stderr}"
    );

    // A file others may read.
    let (ok, stderr, started) = serve_expecting_exit("", None, |secrets| {
        write_private(&secrets.join("policy-token.key"), &[b'f'; 40], 0o644);
    });
    assert!(!ok && !started, "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");

    // The control: the same start with a good file runs (and is stopped here).
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&secrets)
        .unwrap();
    write_private(&secrets.join("policy-token.key"), &[b'f'; 40], 0o600);
    let config = tmp.path().join("bulwark.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout_secs = 1\n\n[storage]\n\
             data_dir = {:?}\n\n[secrets]\ndir = {:?}\n\n{ACTIONS}",
            tmp.path().join("data").display().to_string(),
            secrets.display().to_string(),
        ),
    )
    .unwrap();
    let addr_file = tmp.path().join("addr");
    let mut child = Command::new(common::bin_path())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--addr-file")
        .arg(&addr_file)
        .env_remove("OJS_SECRET_POLICY_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !addr_file.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the control did not start"
        );
        assert!(Instant::now() < deadline, "the control did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
