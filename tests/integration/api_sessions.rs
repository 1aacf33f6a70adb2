//! Admin user accounts from outside: users made with the offline CLI (password on stdin, TOTP
//! enrolment URI on stdout), then password + TOTP login against the real server, session tokens
//! on admin routes, refresh rotation and reuse detection, password changes, throttling, and what
//! the audit log records (and must not).

use crate::common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::client::{Client, Reply};
use common::{ServerOptions, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use totp_rs::Totp;

const PASSWORD: &str = "Correct-Horse-Battery-9";
const NEW_PASSWORD: &str = "Tr0ub4dor-and-Staple";

/// Limits high enough that only the throttling test meets them.
const LAX: &str = "[sessions]\nlogin_per_minute_per_ip = 1000\nlogin_per_minute_per_user = 1000\n";

/// Runs `bulwark ARGS --config CONFIG` with `input` on stdin.
fn cli_stdin(server: &TestServer, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(common::bin_path())
        .args(args)
        .arg("--config")
        .arg(server.config_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "bulwark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Stops the server, creates `name` with `PASSWORD` and enrols TOTP offline, starts it again.
/// Returns the enrolment URI.
fn add_user(server: &mut TestServer, name: &str) -> String {
    assert_eq!(server.terminate(), Some(0), "{}", server.log());
    ok(&cli_stdin(
        server,
        &["users", "create", name],
        &format!("{PASSWORD}\n"),
    ));
    let uri = ok(&server.cli(&["users", "totp", name])).trim().to_string();
    assert!(uri.starts_with("otpauth://totp/Bulwark:"), "{uri}");
    server.restart();
    uri
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The code for the current step plus `steps` (the server accepts -1..=+1, each step once).
fn code(uri: &str, steps: i64) -> String {
    let totp = Totp::from_url(uri).unwrap();
    let at = now_secs().checked_add_signed(steps * 30).unwrap();
    totp.generate(at).to_string()
}

async fn login(server: &TestServer, user: &str, password: &str, totp: &str) -> (StatusCode, Value) {
    let res = Client::anonymous(server)
        .post(
            "/ojs/v1/auth/login",
            json!({"username": user, "password": password, "totp": totp}),
        )
        .await;
    (res.status, res.body)
}

fn str_of(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .to_string()
}

#[tokio::test]
async fn login_needs_password_and_totp_and_every_failure_looks_the_same() {
    let mut server = TestServer::start(ServerOptions {
        extra_toml: LAX.into(),
        ..ServerOptions::default()
    });
    let uri = add_user(&mut server, "alice");
    // bob has a password but no TOTP: MFA is mandatory, so he cannot get a session.
    assert_eq!(server.terminate(), Some(0));
    ok(&cli_stdin(
        &server,
        &["users", "create", "bob"],
        &format!("{PASSWORD}\n"),
    ));
    ok(&cli_stdin(
        &server,
        &["users", "create", "carol"],
        &format!("{PASSWORD}\n"),
    ));
    ok(&server.cli(&["users", "totp", "carol"]));
    ok(&server.cli(&["users", "disable", "carol"]));
    ok(&server.cli(&["users", "enable", "carol"]));
    ok(&server.cli(&["users", "disable", "carol"]));
    // Each offline change was recorded first, marked as made from the command line.
    let audit = std::fs::read_to_string(server.dir.join("data").join("audit.log")).unwrap();
    for (event_type, user) in [
        ("user.created", "bob"),
        ("user.created", "carol"),
        ("user.totp_enrolled", "carol"),
        ("user.disabled", "carol"),
        ("user.enabled", "carol"),
    ] {
        assert!(
            audit.lines().any(|l| {
                let r: Value = serde_json::from_str(l).unwrap();
                r["event_type"] == event_type
                    && r["detail"]["username"] == user
                    && r["detail"]["via"] == "cli"
            }),
            "no {event_type} record for {user}"
        );
    }
    server.restart();

    let (status, reference) = login(&server, "nobody", PASSWORD, &code(&uri, 0)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(reference["error"]["code"], "unauthenticated");
    for (user, password, totp) in [
        ("alice", "Wrong-Password-123", code(&uri, 0)),
        ("alice", PASSWORD, String::new()),
        ("alice", PASSWORD, "000000".to_string()),
        ("alice", PASSWORD, code(&uri, 3)),
        ("bob", PASSWORD, code(&uri, 0)),
        ("carol", PASSWORD, code(&uri, 0)),
        ("ALICE", PASSWORD, code(&uri, 0)),
    ] {
        let (status, body) = login(&server, user, password, &totp).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{user} {totp:?}");
        assert_eq!(body, reference, "{user} {totp:?}");
    }
    // A body without the code is malformed, not a login attempt.
    let Reply { status, .. } = Client::anonymous(&server)
        .post(
            "/ojs/v1/auth/login",
            json!({"username": "alice", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let totp = code(&uri, 0);
    let res = server
        .client()
        .post(server.url("/ojs/v1/auth/login"))
        .json(&json!({"username": "alice", "password": PASSWORD, "totp": totp}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let tokens: Value = res.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    assert_eq!(tokens["refresh_expires_in"], 604_800);
    let access = str_of(&tokens, "access_token");
    let refresh = str_of(&tokens, "refresh_token");
    assert!(access.starts_with("bws_") && refresh.starts_with("bwr_"));

    // The session works on an admin route.
    assert_eq!(
        Client::new(&server, &access)
            .get("/ojs/v1/admin/audit")
            .await
            .status,
        StatusCode::OK
    );
    // The same code again is a replay, refused like any other failure.
    let (status, body) = login(&server, "alice", PASSWORD, &totp).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, reference);

    // The first login confirmed alice's enrolment; bob is listed without TOTP; no secrets.
    let res = server
        .client()
        .get(server.url("/ojs/v1/admin/users"))
        .header("Authorization", format!("Bearer {access}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let listing = res.text().await.unwrap();
    let users: Value = serde_json::from_str(&listing).unwrap();
    let alice = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "alice")
        .unwrap();
    assert_eq!(alice["totp_confirmed"], true);
    let secret = Totp::from_url(&uri).unwrap().secret().to_base32();
    assert!(
        !listing.contains(&secret) && !listing.contains("argon2"),
        "{listing}"
    );

    // The audit trail has each cause, and no password, code, token or secret.
    let failures = server.wait_audit_count("auth.login", 10).await;
    let reasons: Vec<String> = failures
        .iter()
        .map(|r| r["detail"]["reason"].as_str().unwrap_or("").to_string())
        .collect();
    for reason in [
        "unknown user",
        "wrong password",
        "wrong totp code",
        "replayed totp code",
        "totp not enrolled",
        "user disabled",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} in {reasons:?}"
        );
    }
    let success = failures.iter().find(|r| r["outcome"] == "success").unwrap();
    assert_eq!(success["principal"], "user:alice");
    assert_eq!(
        server.wait_audit_count("audit.queried", 1).await[0]["principal"],
        "user:alice"
    );
    let log = server.audit_text();
    for secret_text in [
        PASSWORD,
        "Wrong-Password-123",
        &totp,
        &access,
        &refresh,
        &secret,
    ] {
        assert!(!log.contains(secret_text), "the audit log holds a secret");
    }
    let server_log = server.log();
    for secret_text in [PASSWORD, &access, &refresh, &secret] {
        assert!(
            !server_log.contains(secret_text),
            "the server log holds a secret"
        );
    }
}

#[tokio::test]
async fn tampered_foreign_and_expired_session_tokens_are_refused() {
    let mut server = TestServer::start(ServerOptions {
        extra_toml: format!("{LAX}access_ttl_secs = 2\n"),
        ..ServerOptions::default()
    });
    let uri = add_user(&mut server, "alice");
    let (status, tokens) = login(&server, "alice", PASSWORD, &code(&uri, 0)).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["expires_in"], 2);
    let access = str_of(&tokens, "access_token");
    assert_eq!(
        Client::new(&server, &access)
            .get("/ojs/v1/admin/audit")
            .await
            .status,
        StatusCode::OK
    );
    let (claims, tag) = access.rsplit_once('.').unwrap();
    let flip = |s: &str, at: usize| {
        let mut b = s.as_bytes().to_vec();
        b[at] = if b[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let tampered = [
        format!("{}.{tag}", flip(claims, 10)),
        format!("{claims}.{}", flip(tag, 3)),
        claims.to_string(),
        format!("{claims}."),
        format!("bws_{}", &access[4..].replace('.', "")),
    ];
    for t in &tampered {
        assert_eq!(
            Client::new(&server, t)
                .get("/ojs/v1/admin/audit")
                .await
                .status,
            StatusCode::UNAUTHORIZED,
            "{t}"
        );
    }
    // A token signed by another server's key.
    let mut other = TestServer::start(ServerOptions {
        extra_toml: LAX.into(),
        ..ServerOptions::default()
    });
    let other_uri = add_user(&mut other, "alice");
    let (_, foreign) = login(&other, "alice", PASSWORD, &code(&other_uri, 0)).await;
    let foreign = str_of(&foreign, "access_token");
    assert_eq!(
        Client::new(&server, &foreign)
            .get("/ojs/v1/admin/audit")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    drop(other);
    // Expiry.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        Client::new(&server, &access)
            .get("/ojs/v1/admin/audit")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // The refusals are recorded without waiting for the disk: wait for the last one.
    let deadline = Instant::now() + Duration::from_secs(5);
    let reasons = loop {
        let reasons: Vec<Value> = server
            .wait_audit_count("auth.failure", 6)
            .await
            .iter()
            .map(|r| r["detail"]["reason"].clone())
            .collect();
        if reasons.contains(&json!("expired")) || Instant::now() > deadline {
            break reasons;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(reasons.contains(&json!("expired")), "{reasons:?}");
    assert!(reasons.contains(&json!("invalid")), "{reasons:?}");
}

#[tokio::test]
async fn refresh_rotates_reuse_revokes_the_family_and_logout_ends_the_session() {
    let mut server = TestServer::start(ServerOptions {
        extra_toml: LAX.into(),
        ..ServerOptions::default()
    });
    let uri = add_user(&mut server, "alice");
    let bob = add_user(&mut server, "bob");
    let (_, first) = login(&server, "alice", PASSWORD, &code(&uri, 0)).await;
    let r1 = str_of(&first, "refresh_token");

    let Reply {
        status,
        body: second,
        ..
    } = Client::anonymous(&server)
        .post("/ojs/v1/auth/refresh", json!({"refresh_token": r1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let (a2, r2) = (
        str_of(&second, "access_token"),
        str_of(&second, "refresh_token"),
    );
    assert_ne!(r1, r2);
    assert_eq!(second["expires_in"], 900);
    assert_eq!(
        Client::new(&server, &a2)
            .get("/ojs/v1/admin/audit")
            .await
            .status,
        StatusCode::OK
    );

    // r1 is spent: presenting it again is reuse, and the whole family dies with it.
    let Reply { status, body, .. } = Client::anonymous(&server)
        .post("/ojs/v1/auth/refresh", json!({"refresh_token": r1}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthenticated");
    let Reply { status, .. } = Client::anonymous(&server)
        .post("/ojs/v1/auth/refresh", json!({"refresh_token": r2}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        Client::new(&server, &a2)
            .get("/ojs/v1/admin/audit")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let reuse = server.wait_audit_count("auth.refresh_reuse", 1).await;
    assert_eq!(reuse.len(), 1);
    assert_eq!(reuse[0]["principal"], "user:alice");
    // Garbage and unknown tokens get the same answer.
    for bad in ["", "bwr_x", &format!("bwr_{}", "A".repeat(43))] {
        let Reply { status, .. } = Client::anonymous(&server)
            .post("/ojs/v1/auth/refresh", json!({"refresh_token": bad}))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
    }
    // The metrics count refreshes by outcome, and session-authenticated requests.
    let metrics = server
        .client()
        .get(server.url("/metrics"))
        .header("Authorization", server.auth())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "bulwark_token_refreshes_total{outcome=\"success\"}",
        "bulwark_token_refreshes_total{outcome=\"reuse\"}",
        "bulwark_token_refreshes_total{outcome=\"failure\"}",
        "bulwark_logins_total{outcome=\"success\"}",
        "bulwark_credential_uses_total{kind=\"session\"}",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(series)
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(1.0)),
            "{series} not counted:\n{metrics}"
        );
    }

    // Logout ends a session: its refresh token and its session token.
    let (status, third) = login(&server, "alice", PASSWORD, &code(&uri, 1)).await;
    assert_eq!(status, StatusCode::OK, "{third}");
    let (a3, r3) = (
        str_of(&third, "access_token"),
        str_of(&third, "refresh_token"),
    );
    let Reply { status, .. } = Client::anonymous(&server)
        .post("/ojs/v1/auth/logout", json!({"refresh_token": r3}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let Reply { status, .. } = Client::anonymous(&server)
        .post("/ojs/v1/auth/refresh", json!({"refresh_token": r3}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        Client::new(&server, &a3)
            .get("/ojs/v1/admin/audit")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(server.wait_audit_count("auth.logout", 1).await.len(), 1);

    // Revocations outlive a restart; a session nobody revoked does too.
    let (status, fourth) = login(&server, "bob", PASSWORD, &code(&bob, 0)).await;
    assert_eq!(status, StatusCode::OK, "{fourth}");
    let a4 = str_of(&fourth, "access_token");
    server.restart();
    for (token, expected) in [
        (&a2, StatusCode::UNAUTHORIZED),
        (&a3, StatusCode::UNAUTHORIZED),
        (&a4, StatusCode::OK),
    ] {
        assert_eq!(
            Client::new(&server, token)
                .get("/ojs/v1/admin/audit")
                .await
                .status,
            expected
        );
    }
    assert!(server
        .wait_audit_count("auth.refresh", 1)
        .await
        .iter()
        .any(|r| r["outcome"] == "success"));

    // Only digests are stored: no refresh token is in either database file.
    for file in ["bulwark.redb", "control.redb"] {
        let db = std::fs::read(server.dir.join("data").join(file)).unwrap();
        for token in [&r1, &r2, &r3] {
            assert!(
                !db.windows(token.len()).any(|w| w == token.as_bytes()),
                "a refresh token is in {file}"
            );
        }
    }
    let log = server.audit_text();
    for token in [&r1, &r2, &r3, &a2, &a3] {
        assert!(!log.contains(token.as_str()));
    }
}

#[tokio::test]
async fn a_password_change_ends_every_session_of_the_user() {
    let mut server = TestServer::start(ServerOptions {
        extra_toml: LAX.into(),
        ..ServerOptions::default()
    });
    let uri = add_user(&mut server, "alice");
    let (_, tokens) = login(&server, "alice", PASSWORD, &code(&uri, 0)).await;
    let (access, refresh) = (
        str_of(&tokens, "access_token"),
        str_of(&tokens, "refresh_token"),
    );
    let change = |body: Value, token: String| {
        let client = server.client();
        let url = server.url("/ojs/v1/admin/users/alice/password");
        async move {
            let res = client
                .post(url)
                .header("Authorization", format!("Bearer {token}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = res.status();
            (status, res.text().await.unwrap())
        }
    };
    // Her own change needs her current password, and the new one must meet the policy.
    let (status, _) = change(json!({"new_password": NEW_PASSWORD}), access.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = change(
        json!({"current_password": "Not-Her-Password-1", "new_password": NEW_PASSWORD}),
        access.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = change(
        json!({"current_password": PASSWORD, "new_password": "alice-Password-12"}),
        access.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("must not contain the username"), "{body}");
    assert!(
        !body.contains("alice-Password-12"),
        "the password is echoed: {body}"
    );
    let (status, body) = change(
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
        access.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        Client::new(&server, &access)
            .get("/ojs/v1/admin/audit")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let Reply { status, .. } = Client::anonymous(&server)
        .post("/ojs/v1/auth/refresh", json!({"refresh_token": refresh}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = login(&server, "alice", PASSWORD, &code(&uri, 1)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, tokens) = login(&server, "alice", NEW_PASSWORD, &code(&uri, 1)).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");

    // An admin (here the bootstrap API key) resets it without the current password.
    let (status, body) = change(json!({"new_password": PASSWORD}), server.admin_key.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        Client::new(&server, &str_of(&tokens, "access_token"))
            .get("/ojs/v1/admin/audit")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let changes = server.wait_audit_count("user.password_changed", 3).await;
    assert!(changes
        .iter()
        .any(|r| r["outcome"] == "success" && r["detail"]["by"] == "admin"));
    let log = server.audit_text();
    assert!(!log.contains(NEW_PASSWORD) && !log.contains(PASSWORD));
}

/// The sum of a Prometheus counter's series.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn login_is_throttled_before_any_password_work() {
    let mut server = TestServer::start(ServerOptions {
        process: true,
        ..ServerOptions::default()
    });
    let uri = add_user(&mut server, "alice");
    // Four wrong passwords and one unknown user (checked against the decoy hash).
    for user in ["alice", "nobody", "alice", "alice", "alice"] {
        let (status, _) = login(&server, user, "Wrong-Password-123", &code(&uri, 0)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{user}");
    }
    let res = server
        .client()
        .post(server.url("/ojs/v1/auth/login"))
        .json(&json!({"username": "alice", "password": PASSWORD, "totp": code(&uri, 0)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["retryable"], true);

    // Five argon2 checks (the unknown user's too), not six: the refused attempt did no
    // password work.
    let metrics = server
        .client()
        .get(server.url("/metrics"))
        .header("Authorization", server.auth())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        counter(&metrics, "bulwark_password_verifications_total"),
        5.0,
        "{metrics}"
    );
    let throttled = server.wait_audit_count("auth.login_throttled", 1).await;
    assert_eq!(throttled.len(), 1);
    assert_eq!(throttled[0]["outcome"], "failure");
    assert_eq!(throttled[0]["detail"]["limit"], "source_ip");
    assert_eq!(server.wait_audit_count("auth.login", 5).await.len(), 5);
}

#[tokio::test]
async fn admins_create_users_over_http() {
    let server = TestServer::start(ServerOptions {
        extra_toml: LAX.into(),
        ..ServerOptions::default()
    });
    let create = |body: Value, auth: Option<String>| {
        let mut req = server
            .client()
            .post(server.url("/ojs/v1/admin/users"))
            .json(&body);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    let (status, _) = create(json!({"username": "dave", "password": PASSWORD}), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = create(
        json!({"username": "dave", "password": "short"}),
        Some(server.auth()),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"]["field"], "password");
    assert!(
        body["error"]["details"]["missing"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    );
    assert!(!body.to_string().contains("\"short\""));
    let (status, _) = create(
        json!({"username": "Dave!", "password": PASSWORD}),
        Some(server.auth()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = create(
        json!({"username": "dave", "password": PASSWORD}),
        Some(server.auth()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["username"], "dave");
    assert_eq!(body["totp_confirmed"], false);
    let uri = str_of(&body, "otpauth_uri");
    let (status, _) = create(
        json!({"username": "dave", "password": PASSWORD}),
        Some(server.auth()),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, tokens) = login(&server, "dave", PASSWORD, &code(&uri, 0)).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let created = server.wait_audit_count("user.created", 2).await;
    assert!(created
        .iter()
        .any(|r| r["outcome"] == "success" && r["detail"]["username"] == "dave"));
    assert!(!server.audit_text().contains(&uri));
}

/// Starts `bulwark serve` on `server`'s config with `OJS_SECRET_ADMIN_PASSWORD` set; returns
/// the child, and the base URL once it listens (or `None` if it exited).
fn serve_with_admin_password(
    server: &TestServer,
    password: &str,
) -> (std::process::Child, Option<String>) {
    let addr_file = server.dir.join("addr-env");
    let mut child = Command::new(common::bin_path())
        .args(["serve", "--config"])
        .arg(server.config_path())
        .arg("--addr-file")
        .arg(&addr_file)
        .env("OJS_SECRET_ADMIN_PASSWORD", password)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            if addr.ends_with('\n') {
                return (child, Some(format!("http://{}", addr.trim())));
            }
        }
        if child.try_wait().unwrap().is_some() {
            return (child, None);
        }
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn the_first_admin_comes_from_the_environment_and_never_has_a_default_password() {
    let mut server = TestServer::start(ServerOptions {
        extra_toml: LAX.into(),
        ..ServerOptions::default()
    });
    // Without the variable no user exists.
    assert_eq!(server.terminate(), Some(0));
    assert_eq!(ok(&server.cli(&["users", "list"])).lines().count(), 1);

    // A weak password stops the start with a clear message that does not echo it.
    let (child, url) = serve_with_admin_password(&server, "admin12345");
    assert!(url.is_none());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("OJS_SECRET_ADMIN_PASSWORD does not meet the password policy"),
        "{stderr}"
    );
    assert!(!stderr.contains("admin12345"));

    let (child, url) = serve_with_admin_password(&server, PASSWORD);
    let url = url.expect("the server started");
    let uri_file = server.dir.join("secrets").join("bootstrap-admin-totp.uri");
    let uri = std::fs::read_to_string(&uri_file)
        .unwrap()
        .trim()
        .to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&uri_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let totp = Totp::from_url(&uri).unwrap();
    let res = server
        .client()
        .post(format!("{url}/ojs/v1/auth/login"))
        .json(&json!({"username": "admin", "password": PASSWORD, "totp": totp.generate(now_secs()).to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&uri), "the enrolment URI is shown once");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(PASSWORD) && !stderr.contains(&uri),
        "{stderr}"
    );
    assert!(!server.audit_text().contains(PASSWORD));
}
