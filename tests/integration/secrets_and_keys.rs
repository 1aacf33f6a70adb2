//! Secrets placement, config errors and keys from outside, as an attacker or a careless
//! operator meets them: a secrets folder inside the data folder (or the reverse) is refused; a
//! secret pasted into the config file never comes back on stderr, in the log or in the audit
//! trail; and no key is ever created over data sealed or chained by keys that are missing: the
//! start is refused naming them, and only `bulwark init --new-keys` makes new ones, audited.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{ServerOptions, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A secret-looking value that must never be repeated.
const PASTED: &str = "Zm9yLXlvdXItZXllcy1vbmx5LWRvLW5vdC1lY2hvLXRoaXM=";

/// Runs `bulwark serve` and says how it ended: `Err(stderr)` when it refused to start, `Ok(())`
/// when it was still serving after 10 s (then it is stopped).
fn serve(config: &Path) -> Result<(), String> {
    let err_file = config.with_extension("stderr");
    let mut child = Command::new(common::bin_path())
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .expect("run bulwark");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let stderr = std::fs::read_to_string(&err_file).unwrap_or_default();
            assert!(!status.success(), "serve exited cleanly:\n{stderr}");
            return Err(stderr);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

fn base_config(dir: &Path, data: &str, secrets: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\ndata_dir = {:?}\n\n[secrets]\ndir = {:?}\n\n",
        dir.join(data).display().to_string(),
        dir.join(secrets).display().to_string()
    )
}

#[test]
fn secrets_inside_the_data_folder_and_the_reverse_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    for (data, secrets, needle) in [
        ("data", "data/secrets", "inside storage.data_dir"),
        ("secrets/data", "secrets", "inside secrets.dir"),
    ] {
        let config = tmp.path().join("bulwark.toml");
        std::fs::write(&config, base_config(tmp.path(), data, secrets)).unwrap();
        let stderr = serve(&config).expect_err("the placement was accepted");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(
            !tmp.path().join(secrets).exists() && !tmp.path().join(data).exists(),
            "nothing is created before the refusal"
        );
    }
}

#[test]
fn a_secret_pasted_into_the_config_file_is_refused_without_being_repeated() {
    let tmp = tempfile::tempdir().unwrap();
    for section in [
        format!("[vault]\nkek = \"{PASTED}\"\n"),
        format!("[auth]\napi_key = \"{PASTED}\"\n"),
        format!("[auth.actions]\nsecret_file = 7\nsecret = \"{PASTED}\"\n"),
        format!("[log]\nlevel = \"info\"\nformat = \"{PASTED}\"\n"),
    ] {
        let config = tmp.path().join("bulwark.toml");
        let text = base_config(tmp.path(), "data", "secrets") + &section;
        std::fs::write(&config, &text).unwrap();
        for args in [vec!["serve"], vec!["config", "check"], vec!["init"]] {
            let out = Command::new(common::bin_path())
                .args(&args)
                .arg("--config")
                .arg(&config)
                .output()
                .unwrap();
            assert!(!out.status.success());
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(all.contains("line "), "{all}");
            for piece in [PASTED, &PASTED[..16], &PASTED[16..32]] {
                assert!(!all.contains(piece), "{args:?} echoed the secret:\n{all}");
            }
        }
    }
}

/// The same on a running server: a config file edited with a secret in it and reloaded with
/// SIGHUP is refused, and neither the log nor the audit record of the refusal repeats it.
#[tokio::test]
async fn a_reload_refusing_a_pasted_secret_does_not_record_it() {
    // SIGHUP and the log are the point: a process of its own.
    let server = TestServer::start(ServerOptions {
        process: true,
        ..ServerOptions::default()
    });
    let mut text = std::fs::read_to_string(server.config_path()).unwrap();
    text.push_str(&format!("\n[vault]\nkek = \"{PASTED}\"\n"));
    std::fs::write(server.config_path(), text).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let log = server.dir.join("data").join("audit.log");
    let mut refused = None;
    for _ in 0..100 {
        let trail = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = trail.lines().find(|l| l.contains("config.reload_failed")) {
            refused = Some(line.to_string());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let refused = refused.expect("no config.reload_failed record");
    assert!(refused.contains("line "), "{refused}");
    let trail = std::fs::read_to_string(&log).unwrap();
    assert!(
        !trail.contains(&PASTED[..16]),
        "the audit trail holds the secret"
    );
    assert!(
        !server.log().contains(&PASTED[..16]),
        "the log holds the secret"
    );
}

fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(files(&path));
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// A server with one sealed job and a chained audit log, stopped.
async fn stopped_server_with_data() -> TestServer {
    let mut server = TestServer::start(ServerOptions::default());
    let res = server
        .client()
        .post(server.url("/ojs/v1/jobs"))
        .header("Authorization", server.auth())
        .json(&json!({"type": "a.b", "args": ["kept"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(server.terminate(), Some(0));
    server
}

#[tokio::test]
async fn no_key_is_created_over_data_whose_key_is_missing() {
    let server = stopped_server_with_data().await;
    let secrets = server.dir.join("secrets");
    let kek_dir = secrets.join("kek");
    let kek_id = std::fs::read_dir(&kek_dir)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();

    // 1. The KEK files removed: refused, naming the key, and no new KEK.
    let saved = tempfile::tempdir().unwrap();
    std::fs::rename(kek_dir.join(&kek_id), saved.path().join(&kek_id)).unwrap();
    let stderr = serve(server.config_path()).expect_err("the server started without its KEK");
    assert!(stderr.contains(&kek_id[..12]), "{stderr}");
    assert!(stderr.contains("1 stored jobs"), "{stderr}");
    assert!(stderr.contains("--new-keys"), "{stderr}");
    assert!(
        files(&kek_dir).is_empty(),
        "a KEK was created: {:?}",
        files(&kek_dir)
    );

    // 2. The whole secrets folder gone: refused naming both keys, nothing written first.
    std::fs::rename(&secrets, saved.path().join("secrets")).unwrap();
    let stderr = serve(server.config_path()).expect_err("the server started without its keys");
    assert!(stderr.contains("audit key"), "{stderr}");
    assert!(stderr.contains(&kek_id[..12]), "{stderr}");
    assert!(
        files(&secrets).is_empty(),
        "keys were written: {:?}",
        files(&secrets)
    );
    let init = server.cli(&["init"]);
    assert!(!init.status.success(), "init made keys over the data");
    assert!(
        files(&secrets).is_empty(),
        "init wrote keys: {:?}",
        files(&secrets)
    );

    // 3. On purpose: new keys, the old trail set aside, and the first record of the new one
    //    says so; the new trail verifies.
    let init = server.cli(&["init", "--new-keys"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let stdout = String::from_utf8_lossy(&init.stdout);
    assert!(stdout.contains("set aside"), "{stdout}");
    let trail = std::fs::read_to_string(server.dir.join("data").join("audit.log")).unwrap();
    let first: Value = serde_json::from_str(trail.lines().next().unwrap()).unwrap();
    assert_eq!(first["event_type"], "secret.keys_created");
    assert_eq!(first["seq"], 1);
    assert!(first["detail"]["missing"]
        .to_string()
        .contains(&kek_id[..12]));
    let verify = server.cli(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let aside = files(&server.dir.join("data"));
    assert!(
        aside.iter().any(|f| f.contains("audit.log.orphaned-")),
        "{aside:?}"
    );
}
