//! The key vault from outside, on the real server with real key files: nothing a client sends
//! reaches the disk or the logs in any encoding, and no KEK reaches the database; a database
//! opened with other keys, or with a record moved to another row, fails closed on every read;
//! rotation and re-wrap under concurrent traffic lose nothing; a Kubernetes-style secret mount
//! swap is picked up within 2 s and a malformed key never replaces a good one.

use crate::common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::client::Reply;
use common::{ServerOptions, TestServer};
use redb::ReadableTable;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn kek_dir(server: &TestServer) -> PathBuf {
    server.dir.join("secrets").join("kek")
}

fn write_key(path: &Path, bytes: &[u8; 32]) {
    let text = format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Every KEK file's bytes.
fn kek_bytes(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let text = std::fs::read(&path).unwrap();
            let text = String::from_utf8(text).unwrap();
            out.push(
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .unwrap(),
            );
        }
    }
    out
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The forms a canary could take on disk: raw, JSON-escaped, hex (both cases) and base64 at
/// each of the three alignments (standard and URL-safe alphabets).
fn encodings(canary: &str) -> Vec<Vec<u8>> {
    let mut forms = vec![canary.as_bytes().to_vec()];
    let escaped = serde_json::to_string(canary).unwrap();
    forms.push(escaped.trim_matches('"').as_bytes().to_vec());
    let hex: String = canary.bytes().map(|b| format!("{b:02x}")).collect();
    forms.push(hex.clone().into_bytes());
    forms.push(hex.to_uppercase().into_bytes());
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for shift in 0..3 {
            let mut data = vec![0u8; shift];
            data.extend_from_slice(canary.as_bytes());
            let text = engine.encode(&data);
            // Drop the characters that depend on the unknown neighbours.
            let skip = if shift == 0 {
                0
            } else {
                (shift * 4).div_ceil(3)
            };
            let inner = &text[skip..text.len().saturating_sub(2)];
            forms.push(inner.as_bytes().to_vec());
        }
    }
    forms
}

async fn vault_status(server: &TestServer) -> Value {
    let res = server.admin_client().get("/ojs/v1/admin/vault").await;
    res.expect(StatusCode::OK).body
}

#[tokio::test]
async fn no_payload_reaches_the_disk_or_logs_and_no_kek_reaches_the_database() {
    let mut server = TestServer::start(ServerOptions {
        process: true,
        extra_toml: "[log]\nlevel = \"trace\"\n".into(),
        ..ServerOptions::default()
    });
    let canaries = [
        "CANARYARGSv4a",
        "CANARYMETAv4b",
        "CANARYRESULTv4c",
        "CANARYERRMSGv4d",
        "CANARYDETAILv4e",
        "CANARYQUOTE\"v4f\\",
        "CANARYCODECv4g",
    ];
    let client = server.client();
    let auth = server.auth();
    let id = server.admin_client().enqueue(json!({
            "type": "canary.job",
            "args": [canaries[0], {"secret": canaries[5]}],
            "meta": {"note": canaries[1]},
            "options": {"queue": "canary", "retry": {"max_attempts": 3, "initial_interval": "PT0.01S", "jitter": false}},
        })).await.expect(StatusCode::CREATED).job_id();
    // Args already encrypted by the client (OJS codec): passed through, sealed like any other.
    let codec_id = server
        .admin_client()
        .enqueue(json!({
            "type": "canary.job",
            "args": [{"ojs_encoded": canaries[6]}],
            "meta": {"ojs.codec.encodings": "encrypt", "ojs.codec.key_id": "client-key-1"},
            "options": {"queue": "canary-codec"},
        }))
        .await
        .expect(StatusCode::CREATED)
        .job_id();
    let fetch = |queue: &'static str| {
        let (client, auth, url) = (
            client.clone(),
            auth.clone(),
            server.url("/ojs/v1/workers/fetch"),
        );
        async move {
            let body: Value = client
                .post(url)
                .header("Authorization", auth)
                .json(&json!({"queues": [queue], "worker_id": "w"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body
        }
    };
    let fetched = fetch("canary").await;
    assert_eq!(
        fetched["jobs"][0]["args"][0], canaries[0],
        "plaintext to the worker"
    );
    assert_eq!(fetched["jobs"][0]["meta"]["note"], canaries[1]);
    let Reply { status, .. } = server
        .admin_client()
        .call(
            reqwest::Method::POST,
            "/ojs/v1/workers/nack",
            Some(json!({"job_id": id, "worker_id": "w", "error": {
            "code": "boom", "message": canaries[3], "details": {"trace": canaries[4]}}})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut again = Value::Null;
    for _ in 0..100 {
        again = fetch("canary").await;
        if again["jobs"][0]["id"] == id.as_str() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again["jobs"][0]["errors"][0]["message"], canaries[3]);
    let Reply { status, .. } = server
        .admin_client()
        .call(
            reqwest::Method::POST,
            "/ojs/v1/workers/ack",
            Some(json!({"job_id": id, "worker_id": "w", "result": {"out": canaries[2]}})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Authorized callers read plaintext back.
    let Reply { body: job, .. } = server.admin_client().job(&id).await;
    assert_eq!(job["job"]["args"][1]["secret"], canaries[5]);
    assert_eq!(job["job"]["result"]["out"], canaries[2]);
    assert_eq!(job["job"]["errors"][0]["details"]["trace"], canaries[4]);
    let Reply { body: codec, .. } = server.admin_client().job(&codec_id).await;
    assert_eq!(codec["job"]["args"][0]["ojs_encoded"], canaries[6]);
    assert_eq!(codec["job"]["meta"]["ojs.codec.key_id"], "client-key-1");

    assert_eq!(server.terminate(), Some(0));
    let mut files = Vec::new();
    files_under(&server.dir.join("data"), &mut files);
    files.push(server.dir.join("server.log"));
    assert!(files.iter().any(|f| f.ends_with("bulwark.redb")));
    assert!(files.iter().any(|f| f.ends_with("control.redb")));
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for canary in canaries {
            for form in encodings(canary) {
                assert!(
                    !contains(&bytes, &form),
                    "{} holds canary {canary} as {}",
                    file.display(),
                    String::from_utf8_lossy(&form)
                );
            }
        }
    }
    let mut db = std::fs::read(server.dir.join("data").join("bulwark.redb")).unwrap();
    db.extend(std::fs::read(server.dir.join("data").join("control.redb")).unwrap());
    let keks = kek_bytes(&kek_dir(&server));
    assert_eq!(keks.len(), 1, "one KEK made on first start");
    for kek in &keks {
        assert_eq!(kek.len(), 32);
        for form in [kek.clone(), hex(kek).into_bytes()] {
            assert!(!contains(&db, &form), "a KEK is in a database file");
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(kek);
        assert!(!contains(&db, b64.as_bytes()));
        assert!(
            !contains(server.log().as_bytes(), b64.as_bytes()),
            "a KEK is in the log"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn other_keys_and_moved_records_fail_closed_on_every_read() {
    let mut server = TestServer::start(ServerOptions {
        process: true,
        ..ServerOptions::default()
    });
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            server.admin_client().enqueue(json!({"type": "t.x", "args": [format!("payload-{i}")], "options": {"queue": "fc"}})).await.expect(StatusCode::CREATED).job_id(),
        );
    }
    // Swap one record onto another row while the server is stopped: copy job 1's whole record
    // onto job 0's row, and job 3's sealed section into job 2's record.
    assert_eq!(server.terminate(), Some(0));
    {
        let db = redb::Database::open(server.dir.join("data").join("bulwark.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(bulwark::store::tables::JOBS).unwrap();
            let key = |s: &str| uuid::Uuid::parse_str(s).unwrap().as_u128();
            let one = table.get(key(&ids[1])).unwrap().unwrap().value().to_vec();
            table.insert(key(&ids[0]), one.as_slice()).unwrap();
            let two = table.get(key(&ids[2])).unwrap().unwrap().value().to_vec();
            let three = table.get(key(&ids[3])).unwrap().unwrap().value().to_vec();
            let mut rec = bulwark::vault::sealed::read_record(&two).unwrap();
            rec.sealed = bulwark::vault::sealed::read_record(&three).unwrap().sealed;
            let spliced = bulwark::vault::sealed::write_record(&rec).unwrap();
            table.insert(key(&ids[2]), spliced.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    server.restart();
    for bad in [&ids[0], &ids[2]] {
        let Reply { status, body, .. } = server.admin_client().job(bad).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(body["error"]["code"], "job_unreadable");
    }
    for good in [&ids[1], &ids[3], &ids[4]] {
        let Reply { status, body, .. } = server.admin_client().job(good).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body["job"]["args"][0]
            .as_str()
            .unwrap()
            .starts_with("payload-"));
    }

    // Now a different KEK set: the old key file replaced by another key under another id.
    assert_eq!(server.terminate(), Some(0));
    let dir = kek_dir(&server);
    for entry in std::fs::read_dir(&dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    write_key(&dir.join("other"), &[0x42; 32]);
    server.restart();
    for id in &ids {
        let Reply { status, body, .. } = server.admin_client().job(id).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(body["error"]["code"], "job_unreadable");
        assert!(!body.to_string().contains("payload-"));
    }
    // Fetching skips them instead of failing or handing out garbage.
    let Reply {
        status,
        body: fetched,
        ..
    } = server
        .admin_client()
        .call(
            reqwest::Method::POST,
            "/ojs/v1/workers/fetch",
            Some(json!({"queues": ["fc"], "worker_id": "w", "count": 10})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{fetched}");
    assert_eq!(fetched["jobs"].as_array().unwrap().len(), 0);
    // New work goes on under the new key.
    let fresh = server
        .admin_client()
        .enqueue(json!({"type": "t.x", "args": ["new"], "options": {"queue": "fc"}}))
        .await
        .expect(StatusCode::CREATED)
        .job_id();
    assert_eq!(
        server.admin_client().job(&fresh).await.body["job"]["args"][0],
        "new"
    );
    // Counted in health, metrics and the vault status.
    let Reply { body: health, .. } = server
        .admin_client()
        .call(reqwest::Method::GET, "/ojs/v1/health", None, &[])
        .await;
    // All five old records name the old KEK (the two tampered ones too).
    assert_eq!(health["encryption"]["unreadable_jobs"], 5, "{health}");
    assert_eq!(health["encryption"]["status"], "degraded");
    let status = vault_status(&server).await;
    assert_eq!(status["vault"]["unreadable_jobs"], 5, "{status}");
    assert_eq!(status["vault"]["active"], "other");
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
    assert!(
        metrics.contains("bulwark_vault_unreadable_jobs 5"),
        "{metrics}"
    );
    assert!(metrics.contains("bulwark_vault_decrypt_failures_total"));

    // The same id with other bytes fails the same way (no garbage from a wrong key).
    assert_eq!(server.terminate(), Some(0));
    write_key(&dir.join("other"), &[0x43; 32]);
    server.restart();
    let Reply { status, body, .. } = server.admin_client().job(&fresh).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["code"], "job_unreadable");
}

#[tokio::test]
async fn rotation_and_rewrap_under_concurrent_traffic_lose_nothing() {
    let server = Arc::new(TestServer::start(ServerOptions::default()));
    let first = vault_status(&server).await["vault"]["active"]
        .as_str()
        .unwrap()
        .to_string();
    // Some jobs under the first key.
    let mut old_ids = Vec::new();
    for i in 0..200 {
        old_ids.push(
            server
                .admin_client()
                .enqueue(json!({"type": "t.x", "args": [i], "options": {"queue": "keep"}}))
                .await
                .expect(StatusCode::CREATED)
                .job_id(),
        );
    }
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (server, failures, done) = (server.clone(), failures.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let client = server.client();
            let auth = server.auth();
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                let queue = format!("load-{w}");
                let res = client
                    .post(server.url("/ojs/v1/jobs"))
                    .header("Authorization", &auth)
                    .json(&json!({"type": "t.x", "args": [w, n], "options": {"queue": queue}}))
                    .send()
                    .await;
                if !res.is_ok_and(|r| r.status() == StatusCode::CREATED) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                let res = client
                    .post(server.url("/ojs/v1/workers/fetch"))
                    .header("Authorization", &auth)
                    .json(&json!({"queues": [queue], "worker_id": format!("w{w}")}))
                    .send()
                    .await
                    .unwrap();
                let body: Value = res.json().await.unwrap();
                match body["jobs"].as_array() {
                    Some(jobs) => {
                        for job in jobs {
                            if job["args"][0] != w {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                            let ack = client
                                .post(server.url("/ojs/v1/workers/ack"))
                                .header("Authorization", &auth)
                                .json(&json!({"job_id": job["id"], "worker_id": format!("w{w}")}))
                                .send()
                                .await;
                            if !ack.is_ok_and(|r| r.status() == StatusCode::OK) {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    None => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            n
        }));
    }
    // A reader that keeps checking the old jobs decrypt to what was sent.
    let reader = {
        let (server, failures, done, ids) = (
            server.clone(),
            failures.clone(),
            done.clone(),
            old_ids.clone(),
        );
        tokio::spawn(async move {
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) {
                for (i, id) in ids.iter().enumerate().step_by(7) {
                    let Reply { status, body, .. } = server.admin_client().job(id).await;
                    if status != StatusCode::OK || body["job"]["args"][0] != i {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    reads += 1;
                }
            }
            reads
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Rotate: a new key file, picked up by the watcher.
    let out = server.cli(&["vault", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let second = loop {
        let active = vault_status(&server).await["vault"]["active"]
            .as_str()
            .unwrap()
            .to_string();
        if active != first {
            break active;
        }
        assert!(Instant::now() < deadline, "the new key was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Re-wrap in small batches while traffic goes on.
    let Reply {
        status,
        body: started,
        ..
    } = server
        .admin_client()
        .call(
            reqwest::Method::POST,
            "/ojs/v1/admin/vault/rewrap?batch=16",
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let finished = loop {
        let s = vault_status(&server).await;
        if s["rewrap"]["finished"] == true {
            break s;
        }
        assert!(Instant::now() < deadline, "re-wrap did not finish: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(finished["rewrap"]["failed"], 0, "{finished}");
    assert!(
        finished["rewrap"]["rewrapped"].as_u64().unwrap() >= 200,
        "{finished}"
    );
    let keys = finished["vault"]["keys"].as_array().unwrap();
    let count = |id: &str| {
        keys.iter()
            .find(|k| k["id"] == id)
            .map_or(0, |k| k["jobs"].as_u64().unwrap())
    };
    assert_eq!(
        count(&first),
        0,
        "every data key moved off the old KEK: {finished}"
    );
    assert!(count(&second) >= 200);
    // Retire the old key: every job stays readable.
    std::fs::remove_file(kek_dir(&server).join(&first)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = vault_status(&server).await;
        if !s["vault"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == first.as_str())
        {
            assert_eq!(s["vault"]["unreadable_jobs"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "the removal was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::Relaxed);
    let mut cycles = 0;
    for t in tasks {
        cycles += t.await.unwrap();
    }
    let reads = reader.await.unwrap();
    assert!(
        cycles > 20 && reads > 20,
        "traffic ran: {cycles} cycles, {reads} reads"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests during rotation"
    );
    for (i, id) in old_ids.iter().enumerate() {
        let Reply { status, body, .. } = server.admin_client().job(id).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["job"]["args"][0], i);
    }
    // Both the start and the end of the re-wrap are audited.
    let audit = std::fs::read_to_string(server.dir.join("data").join("audit.log")).unwrap();
    assert!(audit.contains("\"vault.rewrap\""));
    assert!(audit.contains("\"vault.rewrap_finished\""));
    assert!(audit.contains("\"secret.rotated\""));
}

/// A Kubernetes secret volume: `..<timestamp>/` holds the files, `..data` points at it, and
/// each key name is a symlink `name -> ..data/name`. An update writes a new timestamped folder
/// and renames a new `..data` symlink over the old one.
struct Mount {
    dir: PathBuf,
    n: u32,
}

impl Mount {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        Self {
            dir: dir.to_path_buf(),
            n: 0,
        }
    }

    fn publish(&mut self, files: &[(String, Vec<u8>, u32)]) {
        self.n += 1;
        let stamp = format!("..2026_11_22_14_00_{:02}.{}", self.n, std::process::id());
        let target = self.dir.join(&stamp);
        std::fs::create_dir(&target).unwrap();
        for (name, bytes, mode) in files {
            let path = target.join(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for (name, _, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(name), &link).unwrap();
            }
        }
    }
}

fn b64(bytes: &[u8; 32]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .into_bytes()
}

#[tokio::test]
async fn a_kubernetes_secret_swap_is_picked_up_within_two_seconds_and_bad_keys_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mount_dir = tmp.path().join("kek-mount");
    let mut mount = Mount::new(&mount_dir);
    let key = |id: &str, byte: u8| (id.to_string(), b64(&[byte; 32]), 0o400);
    mount.publish(&[key("k01", 1)]);
    let server = TestServer::start(ServerOptions {
        process: true,
        extra_toml: format!("[vault]\nkek_dir = {:?}\n", mount_dir.display().to_string()),
        ..ServerOptions::default()
    });
    assert_eq!(vault_status(&server).await["vault"]["active"], "k01");
    let first = server
        .admin_client()
        .enqueue(json!({"type": "t.x", "args": ["under-k01"], "options": {"queue": "k"}}))
        .await
        .expect(StatusCode::CREATED)
        .job_id();
    let mut files = vec![key("k01", 1)];
    for trial in 2..=5u8 {
        let id = format!("k{trial:02}");
        files.push(key(&id, trial));
        let started = Instant::now();
        mount.publish(&files);
        loop {
            if vault_status(&server).await["vault"]["active"] == id.as_str() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "trial {trial}: the swap was not picked up within 2 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let job = server
            .admin_client()
            .enqueue(json!({"type": "t.x", "args": [id], "options": {"queue": "k"}}))
            .await
            .expect(StatusCode::CREATED)
            .job_id();
        assert_eq!(
            server.admin_client().job(&job).await.body["job"]["args"][0],
            id.as_str()
        );
    }
    assert_eq!(
        server.admin_client().job(&first).await.body["job"]["args"][0],
        "under-k01"
    );

    // A half-written key: the whole new set is refused and the old one stays.
    let mut bad = files.clone();
    bad.push(("k09".to_string(), b"not-a-key".to_vec(), 0o400));
    mount.publish(&bad);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = vault_status(&server).await;
    assert_eq!(status["vault"]["active"], "k05", "{status}");
    let job = server
        .admin_client()
        .enqueue(json!({"type": "t.x", "args": ["still-fine"], "options": {"queue": "k"}}))
        .await
        .expect(StatusCode::CREATED)
        .job_id();
    assert_eq!(
        server.admin_client().job(&job).await.body["job"]["args"][0],
        "still-fine"
    );
    let audit = std::fs::read_to_string(server.dir.join("data").join("audit.log")).unwrap();
    let failed: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["event_type"] == "secret.reload_failed")
        .collect();
    assert!(!failed.is_empty(), "the refusal is audited");
    assert!(failed[0]["detail"]["reason"]
        .as_str()
        .unwrap()
        .contains("k09"));
    let rotated = audit
        .lines()
        .filter(|l| l.contains("\"secret.rotated\""))
        .count();
    assert!(rotated >= 4, "each rotation is audited");
    assert!(server.log().contains("secret reload refused"));
    assert!(!server.log().contains("not-a-key"));

    // A key readable by others is refused the same way, with the fix in the message.
    let mut exposed = files.clone();
    exposed.push(("k10".to_string(), b64(&[10; 32]), 0o644));
    mount.publish(&exposed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SIGHUP re-reads too.
    let _ = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(server.pid().to_string())
        .status();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(vault_status(&server).await["vault"]["active"], "k05");
    assert!(server.log().contains("chmod 600"));
}

#[test]
fn a_key_file_open_to_others_stops_the_server_from_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    let kek = secrets.join("kek");
    std::fs::create_dir_all(&kek).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(kek.join("k1"), b64(&[5; 32])).unwrap();
    std::fs::set_permissions(kek.join("k1"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let config = tmp.path().join("bulwark.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = {:?}\n[secrets]\ndir = {:?}\n",
            tmp.path().join("data").display().to_string(),
            secrets.display().to_string()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::bin_path())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("readable by group or others") && err.contains("chmod 600"),
        "{err}"
    );
    // `bulwark init` on a fresh folder makes one private key.
    let fresh = tmp.path().join("fresh.toml");
    std::fs::write(
        &fresh,
        format!(
            "[storage]\ndata_dir = {:?}\n[secrets]\ndir = {:?}\n",
            tmp.path().join("data2").display().to_string(),
            tmp.path().join("secrets2").display().to_string()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::bin_path())
        .args(["init", "--config"])
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys: Vec<_> = std::fs::read_dir(tmp.path().join("secrets2").join("kek"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1);
    let mode = std::fs::metadata(&keys[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn the_offline_commands_count_rotate_and_rewrap() {
    let mut server = TestServer::start(ServerOptions::default());
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            server
                .admin_client()
                .enqueue(json!({"type": "t.x", "args": [i], "options": {"queue": "off"}}))
                .await
                .expect(StatusCode::CREATED)
                .job_id(),
        );
    }
    let old = vault_status(&server).await["vault"]["active"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(server.terminate(), Some(0));
    std::thread::sleep(Duration::from_millis(20));
    let out = server.cli(&["vault", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = server.cli(&["vault", "status"]);
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let old_line = text.lines().find(|l| l.starts_with(&old[..12])).unwrap();
    assert!(
        old_line.contains(" 5 ") && old_line.ends_with("loaded"),
        "{text}"
    );
    let rewrap = server.cli(&["vault", "rewrap", "--batch", "2"]);
    assert!(
        rewrap.status.success(),
        "{}",
        String::from_utf8_lossy(&rewrap.stderr)
    );
    assert!(
        String::from_utf8_lossy(&rewrap.stdout).contains("re-wrapped 5 of 5 records"),
        "{}",
        String::from_utf8_lossy(&rewrap.stdout)
    );
    assert!(String::from_utf8_lossy(&rewrap.stderr).contains("re-wrapping: 5/5 records"));
    // The old key can go: every job still opens.
    std::fs::remove_file(kek_dir(&server).join(&old)).unwrap();
    server.restart();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            server.admin_client().job(id).await.body["job"]["args"][0],
            i
        );
    }
    let status = vault_status(&server).await;
    assert_eq!(status["vault"]["unreadable_jobs"], 0);
    let audit = std::fs::read_to_string(server.dir.join("data").join("audit.log")).unwrap();
    assert!(audit.contains("\"vault.rewrap\"") && audit.contains("\"vault.rewrap_finished\""));
    // A secret-looking argument draws a warning that does not repeat it.
    let out = server.cli(&["vault", "status", "bwk_live_abcdefgh_secretsecret"]);
    let err = String::from_utf8_lossy(&out.stderr);
    // (clap itself then names the argument it does not know; the warning does not.)
    let warning = err
        .lines()
        .find(|l| l.contains("looks like a secret"))
        .unwrap();
    assert!(!warning.contains("secretsecret"), "{err}");
}

fn gauge(text: &str, name: &str, kek: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{kek=\"{kek}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Every data key a KEK wraps is counted, durably (a restart keeps the count); past
/// `[vault] rotate_after_wraps` the KEK is due for rotation, and health, metrics, the status
/// route, the CLI and the audit trail (`vault.rotation_due`) all say so.
#[tokio::test]
async fn data_keys_wrapped_per_kek_are_counted_durably_and_warned_past_the_threshold() {
    let mut server = TestServer::start(ServerOptions {
        extra_toml: "[vault]\nrotate_after_wraps = 3\n".into(),
        ..ServerOptions::default()
    });
    let Reply { body: health, .. } = server
        .admin_client()
        .call(reqwest::Method::GET, "/ojs/v1/health", None, &[])
        .await;
    assert_eq!(health["encryption"]["rotation"]["status"], "ok", "{health}");
    for i in 0..4 {
        server
            .admin_client()
            .enqueue(json!({"type": "t.x", "args": [i]}))
            .await
            .expect(StatusCode::CREATED)
            .job_id();
    }
    let status = vault_status(&server).await;
    let active = status["vault"]["active"].as_str().unwrap().to_string();
    let key = status["vault"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == active.as_str())
        .unwrap()
        .clone();
    assert_eq!(key["wrapped_keys"], 4, "{status}");
    assert_eq!(key["rotation_due"], json!(["wraps"]), "{status}");
    let mut health = Value::Null;
    for _ in 0..100 {
        health = server
            .admin_client()
            .call(reqwest::Method::GET, "/ojs/v1/health", None, &[])
            .await
            .body;
        if health["encryption"]["rotation"]["status"] == "due" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        health["encryption"]["rotation"]["status"], "due",
        "{health}"
    );
    assert_eq!(health["encryption"]["rotation"]["active_wrapped_keys"], 4);
    assert_eq!(
        health["status"], "ok",
        "a rotation warning is not an outage"
    );
    let audit_log = server.dir.join("data").join("audit.log");
    let mut due = None;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&audit_log).unwrap();
        due = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|r| r["event_type"] == "vault.rotation_due");
        if due.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let due = due.expect("no vault.rotation_due record");
    // Written when the count crossed the threshold.
    assert!(
        due["detail"]["wrapped_keys"].as_u64().unwrap() >= 3,
        "{due}"
    );
    assert_eq!(due["detail"]["reasons"], json!(["wraps"]));
    let (_, text) = {
        let res = server
            .client()
            .get(server.url("/metrics"))
            .header("Authorization", server.auth())
            .send()
            .await
            .unwrap();
        (res.status(), res.text().await.unwrap())
    };
    let short: String = active.chars().take(12).collect();
    assert_eq!(
        gauge(&text, "bulwark_vault_kek_wrapped_keys", &short),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        gauge(&text, "bulwark_vault_kek_rotation_due", &short),
        Some(1.0),
        "{text}"
    );

    // Durable: the count survives a crash, and the offline status shows it.
    server.kill();
    let out = server.cli(&["vault", "status"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = stdout.lines().find(|l| l.starts_with(&short)).unwrap();
    assert!(line.contains("ROTATION DUE"), "{stdout}");
    server.restart();
    let status = vault_status(&server).await;
    assert_eq!(status["vault"]["keys"][0]["wrapped_keys"], 4, "{status}");
}
