//! The key ring: the set of key-encryption keys (KEKs) and which one is active. Keys come from
//! files in the KEK folder (the file name is the key id; 32 random bytes, raw, base64 or hex)
//! and from `OJS_SECRET_KEK_<ID>` environment variables (base64 or hex). Nothing here touches
//! the database: KEKs never enter it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::error::VaultError;
use crate::secrets::{self, SecretFileError};

/// The prefix of environment variables that hold KEKs: `OJS_SECRET_KEK_<ID>`.
pub const KEK_ENV_PREFIX: &str = "OJS_SECRET_KEK_";

/// Longest key id.
const MAX_ID: usize = 64;

/// A key-encryption key. The AES key schedule zeroizes itself on drop; the raw bytes are never
/// kept. Not `Clone`, not `Debug` beyond its id.
pub struct Kek {
    id: String,
    cipher: Aes256Gcm,
    modified: Option<SystemTime>,
}

impl Kek {
    /// Builds a KEK from its 32 bytes (the caller's buffer is its own to wipe).
    #[must_use]
    pub fn new(id: &str, bytes: &[u8; 32], modified: Option<SystemTime>) -> Self {
        let mut key = aes_gcm::Key::<Aes256Gcm>::from(*bytes);
        let cipher = Aes256Gcm::new(&key);
        zeroize::Zeroize::zeroize(key.as_mut_slice());
        Self {
            id: id.to_string(),
            cipher,
            modified,
        }
    }

    /// The key id (not secret).
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// An id shortened for logs and audit records.
#[must_use]
pub fn short_id(id: &str) -> String {
    if id.chars().count() <= 12 {
        id.to_string()
    } else {
        let head: String = id.chars().take(12).collect();
        format!("{head}…")
    }
}

/// Whether `id` may name a KEK: 1–64 of `[A-Za-z0-9_.-]`, not starting with a dot.
#[must_use]
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The KEKs and the active one. Immutable once built: a reload builds a new ring.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, Kek>,
    active: Option<String>,
}

impl KeyRing {
    /// A ring of `keys`; `active` names the active key, or the newest one (latest file
    /// modification, then greatest id) is taken when `None`.
    pub fn new(keys: Vec<Kek>, active: Option<&str>) -> Result<Self, VaultError> {
        let mut map = BTreeMap::new();
        for key in keys {
            if map.contains_key(&key.id) {
                return Err(VaultError::KeySet(format!(
                    "the key id {} is given twice (file and environment)",
                    short_id(&key.id)
                )));
            }
            map.insert(key.id.clone(), key);
        }
        let active = match active {
            Some(id) if map.contains_key(id) => Some(id.to_string()),
            Some(id) => {
                return Err(VaultError::KeySet(format!(
                    "the configured active key {} is not among the loaded keys",
                    short_id(id)
                )))
            }
            None => map
                .values()
                .max_by(|a, b| a.modified.cmp(&b.modified).then_with(|| a.id.cmp(&b.id)))
                .map(|k| k.id.clone()),
        };
        Ok(Self { keys: map, active })
    }

    /// The active KEK, which seals new data keys.
    #[must_use]
    pub fn active(&self) -> Option<&Kek> {
        self.active.as_deref().and_then(|id| self.keys.get(id))
    }

    /// The KEK with this id.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Kek> {
        self.keys.get(id)
    }

    /// Every key id, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// How many keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No keys at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The active key's id.
    #[must_use]
    pub fn active_id(&self) -> Option<&str> {
        self.active.as_deref()
    }
}

/// Decodes a key given as 32 raw bytes, 44 base64 characters or 64 hex digits.
fn decode_key(raw: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    if raw.len() == 32 {
        key.copy_from_slice(raw);
        return Some(key);
    }
    let text = raw.trim_ascii();
    if text.len() == 64 && text.iter().all(u8::is_ascii_hexdigit) {
        for (pair, out) in text.chunks(2).zip(key.iter_mut()) {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            *out = u8::try_from(hi * 16 + lo).ok()?;
        }
        return Some(key);
    }
    let mut buf = Zeroizing::new([0u8; 48]);
    let n = base64::engine::general_purpose::STANDARD
        .decode_slice(text, buf.as_mut_slice())
        .ok()?;
    if n != 32 {
        return None;
    }
    key.copy_from_slice(&buf[..32]);
    Some(key)
}

/// What the key ring is loaded from.
#[derive(Clone, Debug)]
pub struct KeySource {
    /// The KEK folder.
    pub dir: PathBuf,
    /// The configured active key id; the newest key when `None`.
    pub active: Option<String>,
}

/// A fingerprint of what was loaded: ids, active id, and a keyed digest of each key's bytes
/// (so a key rewritten under the same id counts as a change without keeping the bytes).
pub type Fingerprint = Vec<(String, [u8; 32])>;

fn digest(salt: &[u8; 32], bytes: &[u8; 32]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, salt);
    let tag = ring::hmac::sign(&key, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Loads every KEK from `source.dir` and from `env` (name → value pairs, so tests need not
/// touch the process environment). Hidden entries (`..data`, `..2024_…`, editor swap files)
/// and entries that are not regular files are skipped; a key file readable by group or others,
/// or one that is not a key, fails the whole load.
pub fn load(
    source: &KeySource,
    env: &[(String, Zeroizing<Vec<u8>>)],
    salt: &[u8; 32],
) -> Result<(KeyRing, Fingerprint), VaultError> {
    let mut keys = Vec::new();
    let mut fingerprint = Vec::new();
    match std::fs::read_dir(&source.dir) {
        Ok(entries) => {
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| {
                    VaultError::KeySet(format!("cannot list {}: {e}", source.dir.display()))
                })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || name.ends_with(".tmp") || name.ends_with('~') {
                    continue;
                }
                names.push(name);
            }
            names.sort();
            for name in names {
                let path = source.dir.join(&name);
                // Follows the `name -> ..data/name` symlinks of a Kubernetes secret mount.
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                if !valid_id(&name) {
                    return Err(VaultError::KeySet(format!(
                        "{} is not a valid key id (1-64 of A-Z a-z 0-9 _ . -)",
                        path.display()
                    )));
                }
                let raw = secrets::read_private(&path).map_err(VaultError::KeyFile)?;
                let key = decode_key(&raw).ok_or_else(|| {
                    VaultError::KeyFile(SecretFileError::Malformed {
                        path: path.display().to_string(),
                        what: "32 random bytes (raw, base64 or 64 hex digits)",
                    })
                })?;
                fingerprint.push((name.clone(), digest(salt, &key)));
                keys.push(Kek::new(&name, &key, meta.modified().ok()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(VaultError::KeySet(format!(
                "cannot read the KEK folder {}: {e}",
                source.dir.display()
            )))
        }
    }
    for (name, value) in env {
        let Some(id) = name.strip_prefix(KEK_ENV_PREFIX) else {
            continue;
        };
        if !valid_id(id) {
            return Err(VaultError::KeySet(format!(
                "{KEK_ENV_PREFIX}<ID>: the id of a KEK variable must be 1-64 of A-Z a-z 0-9 _ . -"
            )));
        }
        // Raw bytes are not accepted from the environment (they rarely survive a shell).
        let key = (value.len() != 32)
            .then(|| decode_key(value))
            .flatten()
            .ok_or_else(|| {
                VaultError::KeySet(format!(
                    "{KEK_ENV_PREFIX}{id} must hold 32 bytes as base64 or 64 hex digits"
                ))
            })?;
        fingerprint.push((id.to_string(), digest(salt, &key)));
        keys.push(Kek::new(id, &key, None));
    }
    let ring = KeyRing::new(keys, source.active.as_deref())?;
    fingerprint.sort();
    fingerprint.push((
        format!("active:{}", ring.active_id().unwrap_or("")),
        [0; 32],
    ));
    Ok((ring, fingerprint))
}

/// The `OJS_SECRET_KEK_*` variables of the process environment.
#[must_use]
pub fn env_keys() -> Vec<(String, Zeroizing<Vec<u8>>)> {
    use std::os::unix::ffi::OsStringExt;
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            k.starts_with(KEK_ENV_PREFIX)
                .then(|| (k, Zeroizing::new(v.into_vec())))
        })
        .collect()
}

/// A new key id made at `now`: `kek-<UTC timestamp>`, so ids sort by creation time.
#[must_use]
pub fn new_key_id(now: crate::clock::Millis) -> String {
    let now = time::OffsetDateTime::from_unix_timestamp(now.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "kek-{:04}{:02}{:02}t{:02}{:02}{:02}z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// Creates a new KEK file (32 random bytes as base64, mode 0600) in `dir` (created 0700 if
/// missing), named for `now`; returns its id.
///
/// # Errors
/// When the folder or the file cannot be written.
pub fn generate(dir: &Path, now: crate::clock::Millis) -> Result<String, VaultError> {
    // A mounted folder (a Kubernetes secret volume is world-listable) is used as it is; the
    // files inside are what must be private.
    if std::fs::symlink_metadata(dir).is_err() {
        secrets::prepare_dir(dir).map_err(|e| VaultError::KeySet(e.to_string()))?;
    }
    let mut id = new_key_id(now);
    let mut n = 1;
    while std::fs::symlink_metadata(dir.join(&id)).is_ok() {
        n += 1;
        id = format!("{}-{n}", new_key_id(now));
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(bytes.as_mut_slice())
        .map_err(|_| VaultError::KeySet("no randomness".into()))?;
    let text = Zeroizing::new(format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(bytes.as_slice())
    ));
    secrets::write_private(&dir.join(&id), text.as_bytes()).map_err(VaultError::KeyFile)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn source(dir: &Path) -> KeySource {
        KeySource {
            dir: dir.to_path_buf(),
            active: None,
        }
    }

    #[test]
    fn keys_load_in_every_encoding_and_bad_ones_fail_the_whole_set() {
        let dir = tempfile::tempdir().unwrap();
        let salt = [7u8; 32];
        secrets::write_private(&dir.path().join("raw"), &[1u8; 32]).unwrap();
        secrets::write_private(&dir.path().join("hex"), "ab".repeat(32).as_bytes()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        secrets::write_private(&dir.path().join("b64"), format!("{b64}\n").as_bytes()).unwrap();
        secrets::write_private(&dir.path().join(".hidden"), b"x").unwrap();
        let env = vec![(
            format!("{KEK_ENV_PREFIX}ENV1"),
            Zeroizing::new(b64.clone().into_bytes()),
        )];
        let (ring, fp) = load(&source(dir.path()), &env, &salt).unwrap();
        assert_eq!(
            ring.ids().collect::<Vec<_>>(),
            ["ENV1", "b64", "hex", "raw"]
        );
        assert!(ring.active().is_some());
        // Same bytes, same fingerprint; changed bytes, changed fingerprint.
        let (_, again) = load(&source(dir.path()), &env, &salt).unwrap();
        assert_eq!(fp, again);
        secrets::write_private(&dir.path().join("raw"), &[2u8; 32]).unwrap();
        let (_, changed) = load(&source(dir.path()), &env, &salt).unwrap();
        assert_ne!(fp, changed);

        secrets::write_private(&dir.path().join("short"), b"too short").unwrap();
        assert!(matches!(
            load(&source(dir.path()), &[], &salt),
            Err(VaultError::KeyFile(SecretFileError::Malformed { .. }))
        ));
        std::fs::remove_file(dir.path().join("short")).unwrap();
        std::fs::set_permissions(
            dir.path().join("raw"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = load(&source(dir.path()), &[], &salt).unwrap_err();
        assert!(matches!(
            err,
            VaultError::KeyFile(SecretFileError::Exposed { .. })
        ));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn the_active_key_is_configured_or_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let a = generate(dir.path(), 1_780_000_000_000).unwrap();
        assert_eq!(a, "kek-20260528t202640z");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::rename(dir.path().join(&a), dir.path().join("zzz-old")).unwrap();
        let b = generate(dir.path(), 1_780_000_000_000).unwrap();
        let (ring, _) = load(&source(dir.path()), &[], &[0; 32]).unwrap();
        assert_eq!(
            ring.active_id(),
            Some(b.as_str()),
            "newest by time, not by name"
        );
        let src = KeySource {
            dir: dir.path().to_path_buf(),
            active: Some("zzz-old".into()),
        };
        assert_eq!(
            load(&src, &[], &[0; 32]).unwrap().0.active_id(),
            Some("zzz-old")
        );
        let src = KeySource {
            dir: dir.path().to_path_buf(),
            active: Some("gone".into()),
        };
        assert!(load(&src, &[], &[0; 32]).is_err());
        assert!(!format!("{ring:?}").contains("cipher"));
    }
}
