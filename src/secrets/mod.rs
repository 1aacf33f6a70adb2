//! The secrets folder: files only the server's user may read (folder 0700, files 0600), kept
//! apart from the data folder. Every secret file the server reads or writes goes through here,
//! so the permission rules and the wiping of buffers are in one place. [`watch`] re-reads
//! mounted secrets when they change, for every subsystem that reads one.

pub mod keys;
pub mod watch;

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Largest secret file read (a key is tens of bytes; anything this big is a mistake).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Why a secret file could not be used. Messages name the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{path} does not exist")]
    Missing { path: String },
    #[error("{path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    Exposed { path: String, mode: u32 },
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Unwritable { path: String, reason: String },
    #[error("{path} must hold {what}")]
    Malformed { path: String, what: &'static str },
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Where `path` really is: absolute, `.` and `..` resolved, and its longest existing ancestor
/// canonicalized (so a symlink into another folder counts as that folder).
#[must_use]
pub fn resolved(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut lexical = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.clone();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(&existing).is_err() {
        match existing.file_name() {
            Some(name) => {
                rest.push(name.to_os_string());
                existing.pop();
            }
            None => break,
        }
    }
    let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
    for name in rest.iter().rev() {
        out.push(name);
    }
    out
}

/// A folder or file and what the configuration calls it, for [`check_placement`].
pub struct Placed<'a> {
    pub what: &'a str,
    pub path: &'a Path,
}

/// Refuses secrets kept inside the data folder and data kept inside the secrets folder: a copy
/// of the data folder (a backup, a snapshot handed to support) must never carry the keys that
/// decrypt and authenticate it, and a copy of the secrets must never carry the data. `secrets`
/// are the secret folders (the secrets folder, the KEK folder), `data` the data folder and the
/// audit files. Paths are compared where they really are (symlinks followed).
pub fn check_placement(secrets: &[Placed<'_>], data: &[Placed<'_>]) -> anyhow::Result<()> {
    for s in secrets {
        let secret = resolved(s.path);
        for d in data {
            let stored = resolved(d.path);
            if secret.starts_with(&stored) {
                anyhow::bail!(
                    "{} ({}) is inside {} ({}): a copy or backup of the data would carry the keys                      that decrypt and authenticate it. Keep the secrets in a folder of their own,                      outside the data folder (e.g. [secrets] dir = \"/etc/bulwark/secrets\" with                      [storage] data_dir = \"/var/lib/bulwark\")",
                    s.what,
                    secret.display(),
                    d.what,
                    stored.display()
                );
            }
            if stored.starts_with(&secret) {
                anyhow::bail!(
                    "{} ({}) is inside {} ({}): a copy or backup of the secrets would carry the                      data. Keep the data outside the secrets folder",
                    d.what,
                    stored.display(),
                    s.what,
                    secret.display()
                );
            }
        }
    }
    Ok(())
}

/// Creates the secrets folder with mode 0700, or checks an existing one is not open to others.
pub fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    if dir.is_dir() {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "the secrets folder {} is accessible to group or others (mode {:o}); run: chmod 700 {}",
                dir.display(),
                mode & 0o777,
                dir.display()
            );
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the secrets folder {}", dir.display()))
}

/// Reads a secret file that only its owner may read. The buffer is wiped on drop.
pub fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretFileError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SecretFileError::Missing { path: shown(path) })
        }
        Err(e) => {
            return Err(SecretFileError::Unreadable {
                path: shown(path),
                reason: e.to_string(),
            })
        }
    };
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Exposed {
            path: shown(path),
            mode: mode & 0o777,
        });
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(SecretFileError::Malformed {
            path: shown(path),
            what: "a key, not a file of more than 64 KiB",
        });
    }
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| SecretFileError::Unreadable {
            path: shown(path),
            reason: e.to_string(),
        })
}

/// Writes a secret file with mode 0600, replacing any previous one atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), SecretFileError> {
    let tmp = path.with_extension("tmp");
    let fail = |e: std::io::Error| SecretFileError::Unwritable {
        path: shown(path),
        reason: e.to_string(),
    };
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Reads a 256-bit key kept as 64 hex digits.
pub fn read_hex_key(path: &Path) -> Result<Zeroizing<[u8; 32]>, SecretFileError> {
    let text = read_private(path)?;
    parse_hex_key(&text).ok_or_else(|| SecretFileError::Malformed {
        path: shown(path),
        what: "64 hex digits",
    })
}

/// A 256-bit key from a secret file's bytes: 64 hex digits (either case) with surrounding ASCII
/// whitespace allowed; `None` for anything else.
#[must_use]
pub fn parse_hex_key(text: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let hex = text.trim_ascii();
    let mut key = Zeroizing::new([0u8; 32]);
    // Digits only: `from_str_radix` alone would also take a sign (`"+c"` as 0x0c).
    let valid = hex.len() == 64
        && hex.iter().all(u8::is_ascii_hexdigit)
        && hex.chunks(2).zip(key.iter_mut()).all(|(pair, out)| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .map(|b| *out = b)
                .is_some()
        });
    valid.then_some(key)
}

/// Reads a 256-bit hex key, creating it (32 random bytes, mode 0600) if the file is missing.
pub fn load_or_create_hex_key(path: &Path) -> Result<Zeroizing<[u8; 32]>, SecretFileError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = Zeroizing::new([0u8; 32]);
            SystemRandom::new()
                .fill(bytes.as_mut())
                .map_err(|_| SecretFileError::Unwritable {
                    path: shown(path),
                    reason: "no randomness".into(),
                })?;
            let mut hex = Zeroizing::new(String::with_capacity(65));
            for b in bytes.iter() {
                hex.push_str(&format!("{b:02x}"));
            }
            hex.push('\n');
            write_private(path, hex.as_bytes())?;
        }
        Err(e) => {
            return Err(SecretFileError::Unreadable {
                path: shown(path),
                reason: e.to_string(),
            })
        }
    }
    read_hex_key(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_inside_data_and_data_inside_secrets_are_refused_through_symlinks_too() {
        let dir = tempfile::tempdir().unwrap();
        let p = |rel: &str| dir.path().join(rel);
        let check = |secrets: &Path, data: &Path| {
            check_placement(
                &[Placed {
                    what: "secrets.dir",
                    path: secrets,
                }],
                &[Placed {
                    what: "storage.data_dir",
                    path: data,
                }],
            )
        };
        assert!(check(&p("secrets"), &p("data")).is_ok());
        assert!(
            check(&p("data-secrets"), &p("data")).is_ok(),
            "a prefix of the name is not inside"
        );
        let err = check(&p("data/secrets"), &p("data"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("secrets.dir") && err.contains("inside storage.data_dir"),
            "{err}"
        );
        assert!(check(&p("data/../data/./k"), &p("data")).is_err());
        let err = check(&p("secrets"), &p("secrets/data"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("storage.data_dir") && err.contains("inside secrets.dir"),
            "{err}"
        );
        assert!(check(&p("same"), &p("same")).is_err());
        // A symlink in the data folder pointing at the secrets is where it points.
        std::fs::create_dir_all(p("real-data")).unwrap();
        std::fs::create_dir_all(p("elsewhere")).unwrap();
        std::os::unix::fs::symlink(p("real-data"), p("elsewhere/data-link")).unwrap();
        assert!(check(&p("real-data/secrets"), &p("elsewhere/data-link")).is_err());
    }

    #[test]
    fn keys_are_created_private_reused_and_refused_when_exposed_or_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let a = load_or_create_hex_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create_hex_key(&path).unwrap();
        assert_eq!(*a, *b, "the second start reads the same key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            read_hex_key(&path),
            Err(SecretFileError::Exposed { mode: 0o640, .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_private(&path, b"not hex\n").unwrap();
        assert!(matches!(
            read_hex_key(&path),
            Err(SecretFileError::Malformed { .. })
        ));
        assert!(matches!(
            read_private(&dir.path().join("none")),
            Err(SecretFileError::Missing { .. })
        ));
    }
}
