//! Transport security against the real server with real handshakes: protocol versions and
//! cipher suites (openssl `s_client`), client certificates (good, expired, self-signed,
//! revoked, missing), certificate-to-principal mapping, roles that require a certificate,
//! certificate hot reload, security headers, and the plain-HTTP rules.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::pki::{self, Ca};
use common::{tls_client, tls_client_kept_alive, tls_options, ServerOptions, TestServer};

const WORKER_IDENTITY: &str = "[[tls.client_identities]]\nname = \"worker-1\"\ntenant = \"acme\"\nroles = [\"worker\"]\nsubject_cn = \"worker-1\"\n";

/// Runs `openssl s_client` against the server with `args`; returns (handshake ok, output).
fn s_client(server: &TestServer, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(server.authority())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A completed handshake names its cipher; a refused one says "Cipher is (NONE)".
    let ok = text.contains("Cipher is ") && !text.contains("Cipher is (NONE)");
    (ok, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn only_tls_1_2_and_1_3_with_aead_suites_are_accepted() {
    let ca = Ca::new("versions CA");
    let server = TestServer::start(ServerOptions {
        process: true,
        ..tls_options(&ca, "none", &[], "", "")
    });
    let ca_file = server.dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.cert).unwrap();
    let ca_arg = ca_file.to_str().unwrap();

    for old in ["-tls1", "-tls1_1"] {
        let (ok, out) = s_client(&server, &[old, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        assert!(!ok, "{old} was accepted:\n{out}");
    }
    // CBC (non-AEAD) suites, with and without forward secrecy, over TLS 1.2.
    let (ok, out) = s_client(
        &server,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:AES128-SHA:AES256-GCM-SHA384",
        ],
    );
    assert!(!ok, "a non-AEAD or static-RSA suite was accepted:\n{out}");

    let (ok, out) = s_client(&server, &["-tls1_2", "-CAfile", ca_arg, "-alpn", "h2"]);
    assert!(ok, "TLS 1.2 refused:\n{out}");
    assert!(
        out.contains("ECDHE-ECDSA-AES256-GCM-SHA384") || out.contains("ECDHE-ECDSA-"),
        "{out}"
    );
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    let (ok, out) = s_client(&server, &["-CAfile", ca_arg, "-alpn", "http/1.1"]);
    assert!(ok, "default handshake refused:\n{out}");
    assert!(out.contains("TLSv1.3"), "TLS 1.3 is not preferred:\n{out}");
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");

    // rustls clients limited to each version get real answers over HTTPS.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let client = tls_client(&ca.cert, None, Some(version));
        let res = client
            .get(server.url("/ojs/v1/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    // Refused handshakes are audited (aggregated per address and reason) and all counted.
    let record = server.wait_audit_event_blocking("tls.handshake_failure", |v| {
        v["detail"]["reason"] == "peer_incompatible"
    });
    assert_eq!(record["source_ip"], "127.0.0.1");
    assert_eq!(
        server.audit_events("tls.handshake_failure").len(),
        1,
        "repeated failures from one address within a window share one record (and its count)"
    );
    let m = server.admin_client().metrics_text().await;
    let line = m
        .lines()
        .find(|l| {
            l.starts_with("bulwark_tls_handshake_failures_total{reason=\"peer_incompatible\"}")
        })
        .unwrap_or_else(|| panic!("no handshake failure metric:\n{m}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3.0, "{line}");
    assert!(m.contains("bulwark_tls_certificate_expiring 0"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_are_verified_and_mapped_to_principals() {
    let ca = Ca::new("mtls CA");
    let extra = "require_certificate_for_roles = [\"worker\"]\n";
    let server = TestServer::start(ServerOptions {
        process: true,
        ..tls_options(&ca, "optional", &[13], extra, WORKER_IDENTITY)
    });
    let good = ca.client("worker-1", 11, -1, 30);
    let expired = ca.client("worker-1", 12, -30, -1);
    let revoked = ca.client("worker-1", 13, -1, 30);
    let unmapped = ca.client("someone-else", 14, -1, 30);
    let self_signed = pki::self_signed_client("worker-1");

    let fetch = |client: reqwest::Client| {
        let url = server.url("/ojs/v1/workers/fetch");
        async move {
            client
                .post(url)
                .json(&json!({"queues": ["default"]}))
                .send()
                .await
        }
    };

    // The mapped worker certificate alone authenticates: it may fetch, not enqueue.
    let worker = tls_client(&ca.cert, Some(&good), None);
    let res = fetch(worker.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = worker
        .post(server.url("/ojs/v1/jobs"))
        .json(&json!({"type": "email.send", "args": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let denied = server
        .wait_audit_event_blocking("authz.denied", |v| v["detail"]["reason"] == "not_granted");
    assert_eq!(denied["principal"], "worker-1");
    assert_eq!(denied["tenant"], "acme");
    assert!(denied["detail"]["credential"]
        .as_str()
        .unwrap()
        .starts_with("cert:"));

    // Expired, revoked and self-signed certificates never finish the handshake.
    for (name, pair, reason) in [
        ("expired", &expired, "expired"),
        ("revoked", &revoked, "revoked"),
        ("self-signed", &self_signed, "unknown_issuer"),
    ] {
        let err = fetch(tls_client(&ca.cert, Some(pair), None)).await;
        assert!(err.is_err(), "the {name} certificate was accepted");
        server.wait_audit_event_blocking("tls.certificate_rejected", |v| {
            v["detail"]["reason"] == reason
        });
    }

    // A valid certificate that maps to no identity authenticates nobody.
    let res = fetch(tls_client(&ca.cert, Some(&unmapped), None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // The worker role requires a certificate: a worker key without one is refused.
    let admin = server.client();
    let res = admin
        .post(server.url("/ojs/v1/admin/keys"))
        .header("Authorization", server.auth())
        .json(&json!({"name": "worker-1", "roles": ["worker"], "tenant": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    let bearer = format!("Bearer {}", body["secret"].as_str().unwrap());
    let res = admin
        .post(server.url("/ojs/v1/workers/fetch"))
        .header("Authorization", &bearer)
        .json(&json!({"queues": ["default"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    server.wait_audit_event_blocking("authz.denied", |v| {
        v["detail"]["reason"] == "certificate_required"
    });
    // The same key over the connection of its principal's certificate is accepted.
    let res = worker
        .post(server.url("/ojs/v1/workers/fetch"))
        .header("Authorization", &bearer)
        .json(&json!({"queues": ["default"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Over another principal's certificate it is not.
    let res = tls_client(&ca.cert, Some(&unmapped), None)
        .post(server.url("/ojs/v1/workers/fetch"))
        .header("Authorization", &bearer)
        .json(&json!({"queues": ["default"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let m = server.admin_client().metrics_text().await;
    for reason in ["expired", "revoked", "unknown_issuer"] {
        assert!(
            m.contains(&format!(
                "bulwark_tls_certificate_rejections_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn required_client_auth_refuses_connections_without_a_certificate() {
    let ca = Ca::new("required CA");
    let server = TestServer::start(tls_options(&ca, "required", &[], "", WORKER_IDENTITY));
    let anonymous = tls_client(&ca.cert, None, None);
    assert!(anonymous
        .get(server.url("/ojs/v1/health"))
        .send()
        .await
        .is_err());
    server.wait_audit_event_blocking("tls.certificate_rejected", |v| {
        v["detail"]["reason"] == "no_certificate"
    });
    let good = ca.client("worker-1", 21, -1, 30);
    let res = tls_client(&ca.cert, Some(&good), None)
        .get(server.url("/ojs/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

fn write_secret(server: &TestServer, rel: &str, contents: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let path = server.dir.join("secrets").join(rel);
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .unwrap();
    std::io::Write::write_all(&mut f, contents.as_bytes()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

async fn health_ok(client: &reqwest::Client, server: &TestServer) -> bool {
    client
        .get(server.url("/ojs/v1/health"))
        .send()
        .await
        .is_ok_and(|r| r.status() == StatusCode::OK)
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_swapped_without_restart_and_bad_pairs_never_go_live() {
    let old_ca = Ca::new("old CA");
    let server = TestServer::start(ServerOptions {
        process: true,
        ..tls_options(&old_ca, "none", &[], "", "")
    });
    // One client keeps its connection open across the swap (HTTP/2, one connection).
    let kept = tls_client(&old_ca.cert, None, None);
    assert!(health_ok(&kept, &server).await);

    // A new pair from another CA: new handshakes see it, the open connection is untouched.
    let new_ca = Ca::new("new CA");
    let fresh = new_ca.server(90);
    write_secret(&server, "tls/server.key", &fresh.key);
    write_secret(&server, "tls/server.crt", &fresh.cert);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !health_ok(&tls_client(&new_ca.cert, None, None), &server).await {
        assert!(
            Instant::now() < deadline,
            "the new certificate never went live:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.wait_audit_event_blocking("tls.certificate_reloaded", |_| true);
    assert!(
        !health_ok(&tls_client(&old_ca.cert, None, None), &server).await,
        "a new handshake still got the old certificate"
    );
    assert!(
        health_ok(&kept, &server).await,
        "the open connection was disturbed"
    );

    // A certificate whose key is not in the key file: refused, the current pair stays.
    let other = new_ca.server(90);
    write_secret(&server, "tls/server.crt", &other.cert);
    let failed = server.wait_audit_event_blocking("tls.reload_failed", |_| true);
    assert!(
        failed["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{failed}"
    );
    assert!(health_ok(&tls_client(&new_ca.cert, None, None), &server).await);
    let (ok, out) = s_client(&server, &["-servername", "localhost"]);
    assert!(ok, "{out}");
    let served = fingerprint_of_served(&out);
    assert_eq!(
        served,
        pem_fingerprint(&fresh.cert),
        "the mismatched certificate went live"
    );

    // Completing the pair makes it live.
    write_secret(&server, "tls/server.key", &other.key);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, out) = s_client(&server, &["-servername", "localhost"]);
        if fingerprint_of_served(&out) == pem_fingerprint(&other.cert) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the completed pair never went live"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGHUP reloads too, through the secret watcher (its folder events and this server's
    // 1 s poll would also find the change, so this only checks the signal path does no harm;
    // `sighup_reloads_a_certificate_whose_change_sends_no_folder_event` shows it works alone).
    let third = new_ca.server(90);
    write_secret(&server, "tls/server.key", &third.key);
    write_secret(&server, "tls/server.crt", &third.cert);
    Command::new("kill")
        .arg("-HUP")
        .arg(server.pid().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, out) = s_client(&server, &["-servername", "localhost"]);
        if fingerprint_of_served(&out) == pem_fingerprint(&third.cert) {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The SHA-256 of the first certificate in `s_client -showcerts`-less output (the server's
/// leaf, which s_client prints as PEM).
fn fingerprint_of_served(out: &str) -> String {
    let start = out.find("-----BEGIN CERTIFICATE-----");
    let end = out.find("-----END CERTIFICATE-----");
    match (start, end) {
        (Some(s), Some(e)) => pem_fingerprint(&out[s..e + "-----END CERTIFICATE-----".len()]),
        _ => String::new(),
    }
}

fn pem_fingerprint(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    ring::digest::digest(&ring::digest::SHA256, der.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

async fn responses(server: &TestServer) -> Vec<(String, reqwest::Response)> {
    let client = server.client();
    let mut out = Vec::new();
    for (label, req) in [
        ("health", client.get(server.url("/ojs/v1/health"))),
        ("404", client.get(server.url("/nothing/here"))),
        ("401", client.get(server.url("/ojs/v1/queues"))),
        ("405", client.put(server.url("/ojs/v1/health"))),
        (
            "authenticated",
            client
                .get(server.url("/ojs/v1/queues"))
                .header("Authorization", server.auth()),
        ),
        (
            "422",
            client
                .post(server.url("/ojs/v1/jobs"))
                .header("Authorization", server.auth())
                .header("X-Forwarded-Proto", "https")
                .body("{not json"),
        ),
    ] {
        out.push((label.to_string(), req.send().await.unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_response_carries_the_security_headers_and_hsts_only_on_tls() {
    let ca = Ca::new("headers CA");
    let tls = TestServer::start(tls_options(&ca, "none", &[], "", ""));
    for (label, res) in responses(&tls).await {
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(
                res.headers().get(name).map(|v| v.to_str().unwrap()),
                Some(value),
                "{label}: {name}"
            );
        }
        assert_eq!(
            res.headers()
                .get("strict-transport-security")
                .map(|v| v.to_str().unwrap()),
            Some("max-age=63072000; includeSubDomains"),
            "{label}"
        );
    }
    // Regression: the certificate reloader held an audit handle forever, so SIGTERM never
    // finished (the audit writer waits for every handle).
    let mut tls = tls;
    assert_eq!(tls.terminate(), Some(0), "{}", tls.log());
    let plain = TestServer::start(ServerOptions::default());
    for (label, res) in responses(&plain).await {
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(
                res.headers().get(name).map(|v| v.to_str().unwrap()),
                Some(value),
                "{label}: {name}"
            );
        }
        assert!(
            res.headers().get("strict-transport-security").is_none(),
            "{label}: HSTS over plain HTTP (a forwarded-proto header must not turn it on)"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_a_certificate_close_to_expiry() {
    let ca = Ca::new("expiry CA");
    let mut opts = tls_options(&ca, "none", &[], "", "");
    let short = ca.server(5);
    opts.secret_files[0].1 = short.cert;
    opts.secret_files[1].1 = short.key;
    let server = TestServer::start(ServerOptions {
        process: true,
        ..opts
    });
    let body: Value = server
        .client()
        .get(server.url("/ojs/v1/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["tls"]["status"], "expiring", "{body}");
    assert!(body["tls"]["certificate_expires_in_days"].as_i64().unwrap() <= 5);
    assert!(server
        .admin_client()
        .metrics_text()
        .await
        .contains("bulwark_tls_certificate_expiring 1"));
}

/// Starts the binary on `toml` in a fresh folder; returns (exit status if it exited within a
/// few seconds, stderr so far).
fn start_raw(toml: &str) -> (Option<std::process::ExitStatus>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("bulwark.toml");
    std::fs::write(
        &config,
        format!(
            "{toml}\n[storage]\ndata_dir = {:?}\n[secrets]\ndir = {:?}\n",
            dir.join("data").display().to_string(),
            dir.join("secrets").display().to_string()
        ),
    )
    .unwrap();
    let addr_file = dir.join("addr");
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let mut child = Command::new(common::bin_path())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--addr-file")
        .arg(&addr_file)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::fs::read_to_string(&addr_file).is_ok_and(|a| a.ends_with('\n')) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        assert!(Instant::now() < deadline, "neither started nor exited");
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(dir.join("log")).unwrap())
}

#[test]
fn plain_http_off_loopback_needs_the_named_insecure_switch_and_warns() {
    let (status, log) = start_raw("[server]\nlisten = \"0.0.0.0:0\"\n");
    assert!(status.is_some_and(|s| !s.success()), "started: {log}");
    assert!(log.contains("[tls] enabled = true"), "{log}");
    let (status, log) = start_raw(
        "[server]\nlisten = \"0.0.0.0:0\"\nallow_insecure_plaintext_non_loopback = true\n",
    );
    assert!(status.is_none(), "did not start: {log}");
    assert!(log.contains("INSECURE"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_secret_watcher_swaps_certificates_within_two_seconds_without_polling() {
    let old_ca = Ca::new("old CA");
    let mut opts = tls_options(&old_ca, "none", &[], "", "");
    // Polling off: only the secret watcher (folder events) can pick the change up.
    assert!(opts.extra_toml.contains("reload_poll_secs = 1"));
    opts.extra_toml = opts
        .extra_toml
        .replace("reload_poll_secs = 1", "reload_poll_secs = 0");
    let server = TestServer::start(opts);
    assert!(health_ok(&tls_client(&old_ca.cert, None, None), &server).await);
    for trial in 0..3 {
        let ca = Ca::new(&format!("CA {trial}"));
        let pair = ca.server(90);
        let started = Instant::now();
        write_secret(&server, "tls/server.key", &pair.key);
        write_secret(&server, "tls/server.crt", &pair.cert);
        while !health_ok(&tls_client(&ca.cert, None, None), &server).await {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "trial {trial}: not live within 2 s:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let reloaded = server.wait_audit_event_blocking("tls.certificate_reloaded", |_| true);
    assert_eq!(reloaded["detail"]["secret"], "tls", "{reloaded}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_and_rate_limits_apply_over_tls_too() {
    let ca = Ca::new("limits CA");
    let server = TestServer::start(tls_options(
        &ca,
        "none",
        &[],
        "",
        "[limits.connections]\nper_ip = 2\n",
    ));
    // Each client holds one connection (kept alive in its pool).
    let first = tls_client_kept_alive(&ca.cert);
    let second = tls_client_kept_alive(&ca.cert);
    assert!(health_ok(&first, &server).await);
    assert!(health_ok(&second, &server).await);
    let third = tls_client(&ca.cert, None, None)
        .get(server.url("/ojs/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    // The rate-limit headers come through the TLS listener's middleware as well.
    let res = first
        .get(server.url("/ojs/v1/health"))
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("x-ratelimit-limit"), "{res:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_a_certificate_whose_change_sends_no_folder_event() {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let old_ca = Ca::new("old CA");
    let mut opts = tls_options(&old_ca, "none", &[], "", "");
    opts.extra_toml = opts
        .extra_toml
        .replace("reload_poll_secs = 1", "reload_poll_secs = 0");
    let server = TestServer::start(ServerOptions {
        process: true,
        ..opts
    });
    let tls_dir = server.dir.join("secrets").join("tls");
    // Like a subPath mount: the files in the watched folder are links to files elsewhere,
    // whose rewrites the folder never hears of.
    let elsewhere = server.dir.join("elsewhere");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&elsewhere)
        .unwrap();
    for name in ["server.crt", "server.key"] {
        std::fs::copy(tls_dir.join(name), elsewhere.join(name)).unwrap();
        std::fs::set_permissions(elsewhere.join(name), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::remove_file(tls_dir.join(name)).unwrap();
        std::os::unix::fs::symlink(elsewhere.join(name), tls_dir.join(name)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(health_ok(&tls_client(&old_ca.cert, None, None), &server).await);

    let new_ca = Ca::new("new CA");
    let fresh = new_ca.server(90);
    for (name, contents) in [("server.key", &fresh.key), ("server.crt", &fresh.cert)] {
        std::fs::write(elsewhere.join(name), contents).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !health_ok(&tls_client(&new_ca.cert, None, None), &server).await,
        "the change was picked up without a signal; this test would not show SIGHUP works"
    );
    Command::new("kill")
        .arg("-HUP")
        .arg(server.pid().to_string())
        .status()
        .unwrap();
    let started = Instant::now();
    while !health_ok(&tls_client(&new_ca.cert, None, None), &server).await {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "SIGHUP did not reload:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reloaded = server.wait_audit_event_blocking("tls.certificate_reloaded", |_| true);
    assert_eq!(reloaded["detail"]["trigger"], "sighup", "{reloaded}");
}

/// An HTTP/2 connection over TLS, by hand: the preface and an empty SETTINGS frame sent.
async fn h2_connect(
    server: &TestServer,
    ca: &Ca,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut config = common::rustls_client_config(&ca.cert, None, None);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.authority())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&h2_frame(0x4, 0, 0, &[])).await.unwrap();
    tls
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads one frame: (type, flags, payload); `None` at the end of the stream.
async fn h2_read_frame(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Option<(u8, u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    tls.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tls.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], payload))
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_advertises_a_stream_bound_and_ends_a_settings_flood_with_goaway() {
    // The review's story: over TLS HTTP/2 no SETTINGS_MAX_CONCURRENT_STREAMS was advertised,
    // and 20,000 SETTINGS frames were each acknowledged, with no GOAWAY.
    use tokio::io::AsyncWriteExt;
    let ca = Ca::new("h2 CA");
    // The defaults: 100 streams, 100 control frames a second with a burst of 1,000.
    let server = TestServer::start(tls_options(&ca, "none", &[], "", ""));
    let mut tls = h2_connect(&server, &ca).await;
    let (kind, flags, payload) = h2_read_frame(&mut tls).await.unwrap();
    assert_eq!(
        (kind, flags & 1),
        (0x4, 0),
        "the server's SETTINGS come first"
    );
    let params: Vec<(u16, u32)> = payload
        .chunks(6)
        .map(|p| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
            )
        })
        .collect();
    assert!(params.contains(&(0x3, 100)), "{params:?}");
    assert!(params.iter().any(|(id, _)| *id == 0x6), "{params:?}");
    tls.write_all(&h2_frame(0x4, 1, 0, &[])).await.unwrap();

    // The flood, written from a task while this one reads.
    let (mut reader, mut writer) = tokio::io::split(tls);
    let flood = tokio::spawn(async move {
        let frame = h2_frame(0x4, 0, 0, &[]);
        let mut batch = Vec::new();
        for _ in 0..1000 {
            batch.extend_from_slice(&frame);
        }
        for _ in 0..20 {
            if writer.write_all(&batch).await.is_err() {
                return;
            }
        }
        let _ = writer.flush().await;
    });
    let outcome = tokio::time::timeout(Duration::from_secs(15), async {
        use tokio::io::AsyncReadExt;
        let mut acks = 0usize;
        loop {
            let mut head = [0u8; 9];
            if reader.read_exact(&mut head).await.is_err() {
                return (acks, None);
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).await.is_err() {
                return (acks, None);
            }
            match head[3] {
                0x4 => acks += 1,
                0x7 => {
                    return (
                        acks,
                        Some(u32::from_be_bytes([
                            payload[4], payload[5], payload[6], payload[7],
                        ])),
                    )
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the flood went on without the server ending the connection");
    let _ = flood.await;
    assert_eq!(
        outcome.1,
        Some(0xb),
        "GOAWAY ENHANCE_YOUR_CALM, after {} ACKs",
        outcome.0
    );
    assert!(
        outcome.0 <= 1000,
        "{} SETTINGS were acknowledged",
        outcome.0
    );
    // A well-behaved HTTP/2 client is served as before.
    let client = tls_client(&ca.cert, None, None);
    let res = client
        .get(server.url("/ojs/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
}
