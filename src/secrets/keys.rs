//! The keys that protect data already stored, and the rule that none of them is ever made
//! afresh over that data.
//!
//! Two keys bind what is in the data folder: the key-encryption keys (KEKs) that wrap the data
//! keys of sealed jobs, and the audit key that chains the audit log. A new KEK over jobs sealed
//! by a lost one would serve them all as unreadable; a new audit key over an existing log would
//! make the trail unverifiable. So before anything is created, [`refuse_missing`] looks at the
//! data folder: if stored jobs name KEKs and no KEK is loaded, or the audit log holds records and
//! its key is gone, the start is refused, naming every missing key at once (nothing is written
//! first). Restoring the secrets backup fixes it; `bulwark init --new-keys` ([`init`]) makes new
//! keys on purpose, sets the old audit log aside and records `secret.keys_created`.
//!
//! The session signing key is not among them: it protects only session tokens (an hour at
//! most), so a new one just ends the sessions. It is made after these checks pass.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::audit::{self, AuditEvent, Outcome};
use crate::clock::Clock;
use crate::config::Config;
use crate::store::Store;
use crate::vault::{keyring, KekReloader, KeySource, NewKeys};

/// A key that data in the data folder needs and the secrets folder lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// What the key is and where it belongs (`key-encryption key kek-… (secrets/kek/kek-…)`).
    pub key: String,
    /// What it protects (`12 stored jobs`, `40 records of data/audit.log`).
    pub protects: String,
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Kek,
    Audit,
}

fn kek_source(config: &Config) -> KeySource {
    let vault = config.vault_config();
    KeySource {
        dir: vault.kek_dir,
        active: vault.active,
    }
}

/// Every key that stored data needs and that is missing (none is created here).
pub fn missing(config: &Config, store: &Store) -> anyhow::Result<Vec<Missing>> {
    let mut out = Vec::new();
    let source = KeySource {
        active: None,
        ..kek_source(config)
    };
    let present = crate::vault::present_keks(&source, &keyring::env_keys())
        .context("cannot load the key-encryption keys ([vault])")?;
    if present.is_empty() {
        for (id, jobs) in crate::vault::sealed_keks(store)? {
            out.push(Missing {
                key: format!(
                    "key-encryption key {} ({})",
                    keyring::short_id(&id),
                    source.dir.join(&id).display()
                ),
                protects: format!("{jobs} stored jobs"),
                kind: Kind::Kek,
            });
        }
    }
    let trail = config.audit_config();
    let key = config.secrets.dir.join(audit::KEY_FILE);
    if std::fs::symlink_metadata(&key).is_err() {
        let records = audit::records_in_log(&trail);
        if records > 0 {
            out.push(Missing {
                key: format!("audit key ({})", key.display()),
                protects: format!(
                    "the {records} records of {} (their chain)",
                    trail.log_file.display()
                ),
                kind: Kind::Audit,
            });
        }
    }
    Ok(out)
}

fn listing(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| format!("\n  - {}: protects {}", m.key, m.protects))
        .collect()
}

/// Refuses (before any key is created) when stored data needs keys that are missing.
pub fn refuse_missing(config: &Config, store: &Store) -> anyhow::Result<()> {
    let missing = missing(config, store)?;
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "refusing to start: data in {} is protected by keys missing from {}; a new key would \
         leave it unreadable or unverifiable, so none was created:{}\nRestore them from the \
         secrets backup. To start over with new keys on purpose (those jobs stay unreadable and \
         the old audit log is set aside), stop here and run `bulwark init --new-keys`.",
        config.storage.data_dir.display(),
        config.secrets.dir.display(),
        listing(&missing)
    )
}

/// What `bulwark init` did.
#[derive(Debug, Default)]
pub struct InitReport {
    /// Keys created (descriptions).
    pub created: Vec<String>,
    /// The old audit log and head, where they were moved.
    pub set_aside: Vec<PathBuf>,
    /// KEK ids loaded after init, and the active one.
    pub keys: usize,
    pub active: Option<String>,
}

/// `path` renamed with `.orphaned-<stamp>` appended (the file name kept in front).
fn set_aside(path: &Path, stamp: &str) -> anyhow::Result<Option<PathBuf>> {
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".orphaned-{stamp}"));
    let to = path.with_file_name(name);
    std::fs::rename(path, &to).with_context(|| format!("cannot move {} aside", path.display()))?;
    Ok(Some(to))
}

/// `bulwark init`: prepares the secrets folder and creates a KEK when there is none. Refuses when
/// stored data needs keys that are missing, unless `new_keys`: then the missing keys are made
/// anew (the jobs they sealed stay unreadable; the audit log they chained is moved aside and a
/// new trail starts) and `secret.keys_created` is recorded in the trail, or nothing is kept.
pub fn init(config: &Config, new_keys: bool, clock: &Clock) -> anyhow::Result<InitReport> {
    super::prepare_dir(&config.secrets.dir)?;
    let store = Store::open(&config.storage.data_dir)
        .context("stop the server first: init opens the database")?;
    let missing = missing(config, &store)?;
    let mut report = InitReport::default();
    if !missing.is_empty() && !new_keys {
        bail!(
            "data in {} is protected by keys missing from {}:{}\nRestore them from the secrets \
             backup; or, to start over with new keys on purpose (those jobs stay unreadable, the \
             old audit log is set aside), run `bulwark init --new-keys`.",
            config.storage.data_dir.display(),
            config.secrets.dir.display(),
            listing(&missing)
        );
    }
    let trail = config.audit_config();
    let stamp = keyring::new_key_id(clock.now_ms());
    let stamp = stamp.trim_start_matches("kek-");
    if missing.iter().any(|m| m.kind == Kind::Audit) {
        for path in [&trail.log_file, &trail.head_file] {
            report.set_aside.extend(set_aside(path, stamp)?);
        }
        report.created.push("audit key".into());
    }
    let source = kek_source(config);
    let before = crate::vault::present_keks(
        &KeySource {
            active: None,
            ..source.clone()
        },
        &keyring::env_keys(),
    )?;
    let (_, keys) = KekReloader::load(
        source.clone(),
        keyring::env_keys(),
        &store,
        if new_keys {
            NewKeys::Deliberately
        } else {
            NewKeys::IfNothingSealed
        },
        config.vault_config().rotation,
        clock.clone(),
    )
    .context("cannot load the key-encryption keys ([vault])")?;
    let ring = keys.ring();
    let made: Vec<String> = ring
        .ids()
        .filter(|id| !before.iter().any(|b| b == id))
        .map(str::to_string)
        .collect();
    report
        .created
        .extend(made.iter().map(|id| format!("key-encryption key {id}")));
    report.keys = ring.len();
    report.active = ring.active_id().map(str::to_string);
    if new_keys && !missing.is_empty() {
        let recorded = audit::load_or_create_key(&config.secrets.dir, &trail).and_then(|key| {
            let event = AuditEvent::new("secret.keys_created", Outcome::Success)
                .detail("created", report.created.clone())
                .detail(
                    "missing",
                    missing.iter().map(|m| m.key.clone()).collect::<Vec<_>>(),
                )
                .detail(
                    "protected",
                    missing
                        .iter()
                        .map(|m| m.protects.clone())
                        .collect::<Vec<_>>(),
                )
                .detail(
                    "set_aside",
                    report
                        .set_aside
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>(),
                )
                .detail("via", "cli");
            audit::record_offline(&trail, key, &store, clock, event)
        });
        if let Err(e) = recorded {
            // Not recorded, not kept: the new KEKs go (the audit key and the moved log stay,
            // so a retry finds the same state).
            for id in &made {
                let _ = std::fs::remove_file(source.dir.join(id));
            }
            return Err(e).context("the audit trail could not be written; no key was kept");
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let mut c = Config::default();
        c.storage.data_dir = dir.join("data");
        c.secrets.dir = dir.join("secrets");
        c
    }

    fn seal_one(store: &Store, config: &Config) {
        let (_, keys) = KekReloader::load(
            kek_source(config),
            Vec::new(),
            store,
            NewKeys::IfNothingSealed,
            crate::vault::RotationPolicy::default(),
            Clock::system(),
        )
        .unwrap();
        let body = serde_json::json!({"type": "t1.x", "args": [1]});
        let new = crate::job::envelope::parse_new_job(
            &body,
            &crate::job::envelope::EnvelopeRules::default(),
            1_780_000_000_000,
        )
        .unwrap();
        let job = crate::job::Job::from_new(new, crate::job::JobId::generate(), None, None, 1, 0);
        let bytes = crate::vault::sealed::seal_job(&keys.ring(), &job).unwrap();
        store
            .jobs_write(|txn| {
                txn.open_table(crate::store::tables::JOBS)?
                    .insert(job.id.as_u128(), bytes.as_slice())?;
                Ok::<_, crate::store::StoreError>(())
            })
            .unwrap();
    }

    #[test]
    fn no_key_is_made_over_sealed_jobs_or_a_chained_log_and_init_new_keys_does_it_on_purpose() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        super::super::prepare_dir(&c.secrets.dir).unwrap();
        let store = Store::open(&c.storage.data_dir).unwrap();
        assert!(
            missing(&c, &store).unwrap().is_empty(),
            "a fresh folder needs nothing"
        );
        seal_one(&store, &c);
        let clock = Clock::system();
        let key = audit::load_or_create_key(&c.secrets.dir, &c.audit_config()).unwrap();
        audit::record_offline(
            &c.audit_config(),
            key,
            &store,
            &clock,
            AuditEvent::new("server.started", Outcome::Success),
        )
        .unwrap();
        drop(store);

        // The whole secrets folder lost.
        std::fs::remove_dir_all(&c.secrets.dir).unwrap();
        super::super::prepare_dir(&c.secrets.dir).unwrap();
        let store = Store::open(&c.storage.data_dir).unwrap();
        let err = format!("{:#}", refuse_missing(&c, &store).unwrap_err());
        assert!(err.contains("key-encryption key kek-"), "{err}");
        assert!(err.contains("1 stored jobs"), "{err}");
        assert!(err.contains("audit key"), "{err}");
        assert_eq!(
            std::fs::read_dir(&c.secrets.dir).unwrap().count(),
            0,
            "nothing was created before refusing"
        );
        // The loaders refuse on their own too.
        assert!(matches!(
            KekReloader::load(
                kek_source(&c),
                Vec::new(),
                &store,
                NewKeys::IfNothingSealed,
                crate::vault::RotationPolicy::default(),
                clock.clone()
            ),
            Err(crate::vault::VaultError::MissingKeks { .. })
        ));
        assert!(matches!(
            audit::load_or_create_key(&c.secrets.dir, &c.audit_config()),
            Err(audit::AuditError::KeyMissing { records: 1, .. })
        ));
        drop(store);
        assert!(init(&c, false, &clock).is_err());

        let report = init(&c, true, &clock).unwrap();
        assert_eq!(report.created.len(), 2, "{report:?}");
        assert_eq!(report.set_aside.len(), 2, "{report:?}");
        let log = std::fs::read_to_string(&c.audit_config().log_file).unwrap();
        let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        assert_eq!(first["event_type"], "secret.keys_created");
        assert_eq!(first["seq"], 1, "a new trail");
        let store = Store::open(&c.storage.data_dir).unwrap();
        assert!(missing(&c, &store).unwrap().is_empty());
    }
}
