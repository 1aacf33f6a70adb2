//! Action job types: job types whose enqueue needs a policy token ([`super::policy_token`])
//! besides the caller's credential, because running them changes something (JobForge's
//! "action jobs").
//!
//! `[auth.actions]` ([`ActionsConfig`]) names them. At start, [`ActionGuard::load`] reads the
//! token secret (from `OJS_SECRET_POLICY_TOKEN`, else a file in the secrets folder) and refuses
//! to start if action types are configured without a usable one; without action types no
//! secret is read and nothing is guarded. The enqueue handler asks the guard whether a type is
//! an action and has it verify the token.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use super::policy_token::{
    self, Claims, Expected, PolicySecret, PolicyTokenError, MAX_LIFETIME_SECS, MIN_SECRET_BYTES,
};
use crate::job::envelope::is_valid_job_type;

/// The environment variable that holds the policy-token secret; it wins over the file.
pub const SECRET_ENV: &str = "OJS_SECRET_POLICY_TOKEN";
/// Headers a policy token may not travel in: they mean something else already.
const RESERVED_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-ojs-tenant",
    "x-ojs-tenant-id",
    "x-request-id",
];

/// A job type pattern: `*` (every type), `prefix.*` (the types under `prefix.`), or an exact
/// job type.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TypePattern(String);

impl TypePattern {
    /// Parses a pattern; `None` if it is neither `*`, a job type, nor a job type followed by
    /// `.*`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let valid = text == "*"
            || is_valid_job_type(text)
            || text.strip_suffix(".*").is_some_and(is_valid_job_type);
        valid.then(|| Self(text.to_string()))
    }

    /// Whether `job_type` matches.
    #[must_use]
    pub fn matches(&self, job_type: &str) -> bool {
        if self.0 == "*" {
            return true;
        }
        match self.0.strip_suffix(".*") {
            Some(prefix) => job_type
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
            None => self.0 == job_type,
        }
    }

    /// The pattern as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl TryFrom<String> for TypePattern {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text).ok_or_else(|| {
            format!(
                "{text:?} is not a job type pattern: use `*`, a job type such as `ops.apply`, \
                 or a job type followed by `.*`"
            )
        })
    }
}

/// `[auth.actions]`: which job types are actions, and how their policy tokens are checked.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionsConfig {
    /// Job types that are actions (exact names, `prefix.*` or `*`); empty: none.
    pub types: Vec<TypePattern>,
    /// The request header carrying the policy token.
    pub header: String,
    /// Longest accepted token lifetime (`exp - iat`), in seconds; at most 3600.
    pub max_lifetime_secs: u64,
    /// The secret file, relative to `secrets.dir`; `OJS_SECRET_POLICY_TOKEN` wins over it.
    pub secret_file: PathBuf,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        Self {
            types: Vec::new(),
            header: "X-OJS-Policy-Token".into(),
            max_lifetime_secs: MAX_LIFETIME_SECS,
            secret_file: PathBuf::from("policy-token.key"),
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ActionsConfig {
    /// Checks the settings without reading the secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_LIFETIME_SECS).contains(&self.max_lifetime_secs) {
            return Err(ConfigError(format!(
                "max_lifetime_secs must be from 1 to {MAX_LIFETIME_SECS}"
            )));
        }
        let header_ok = !self.header.is_empty()
            && self.header.len() <= 64
            && self
                .header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !header_ok {
            return Err(ConfigError(
                "header must be 1 to 64 letters, digits, '-' or '_'".into(),
            ));
        }
        if RESERVED_HEADERS.contains(&self.header.to_ascii_lowercase().as_str()) {
            return Err(ConfigError(format!(
                "header may not be {}: it already carries something else",
                self.header
            )));
        }
        if self.secret_file.as_os_str().is_empty() {
            return Err(ConfigError("secret_file must be set".into()));
        }
        Ok(())
    }

    /// Whether any job type is an action.
    #[must_use]
    pub fn enabled(&self) -> bool {
        !self.types.is_empty()
    }
}

/// Why the policy-token secret cannot be used. Messages say how to fix it, and never contain
/// the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "[auth.actions] lists action job types, but there is no policy-token secret: set \
         {SECRET_ENV} or create {path} (at least {MIN_SECRET_BYTES} random bytes, mode 0600), \
         e.g. `head -c 48 /dev/urandom | base64 > {path} && chmod 600 {path}`"
    )]
    Missing { path: String },
    #[error("cannot read the policy-token secret {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error(
        "the policy-token secret {path} is readable by group or others (mode {mode:o}); run: \
         chmod 600 {path}"
    )]
    Exposed { path: String, mode: u32 },
    #[error(
        "the policy-token secret from {origin} is {len} bytes; it must be at least \
         {MIN_SECRET_BYTES} random bytes (e.g. `head -c 48 /dev/urandom | base64`)"
    )]
    TooShort { origin: String, len: usize },
}

/// Reads the policy-token secret: the value of [`SECRET_ENV`] if the caller found it set
/// (`env_value`), else the configured file inside `secrets_dir`, which must not be readable by
/// group or others. One trailing newline of the file is not part of the secret.
pub fn load_secret(
    config: &ActionsConfig,
    secrets_dir: &Path,
    env_value: Option<Zeroizing<Vec<u8>>>,
) -> Result<PolicySecret, SecretError> {
    let (bytes, origin) = match env_value {
        Some(value) => (value, SECRET_ENV.to_string()),
        None => {
            use crate::secrets::{read_private, SecretFileError};
            let path = secrets_dir.join(&config.secret_file);
            let mut bytes = read_private(&path).map_err(|e| match e {
                SecretFileError::Missing { path } => SecretError::Missing { path },
                SecretFileError::Exposed { path, mode } => SecretError::Exposed { path, mode },
                other => SecretError::Unreadable {
                    path: path.display().to_string(),
                    reason: other.to_string(),
                },
            })?;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
            }
            (bytes, path.display().to_string())
        }
    };
    let len = bytes.len();
    // The Zeroizing buffer is wiped on drop; the secret type takes (and wipes) its own copy.
    PolicySecret::new(bytes.to_vec()).ok_or(SecretError::TooShort { origin, len })
}

/// What the enqueue handler consults: which types are actions, and the token check.
#[derive(Debug)]
pub struct ActionGuard {
    types: Vec<TypePattern>,
    header: String,
    max_lifetime_secs: u64,
    /// Present whenever `types` is not empty ([`ActionGuard::load`] refuses otherwise).
    secret: Option<arc_swap::ArcSwap<SecretSet>>,
    /// The secret came from `OJS_SECRET_POLICY_TOKEN` (fixed for the process: not reloaded).
    from_env: bool,
}

/// The current policy-token secret and, for a grace period after a rotation, the previous one
/// (tokens signed before the rotation keep verifying until they could have expired anyway).
struct SecretSet {
    current: PolicySecret,
    /// SHA-256 of the current secret, to tell whether a re-read changed it.
    digest: [u8; 32],
    /// The previous secret and until when (seconds since the epoch) it still verifies.
    previous: Option<(PolicySecret, u64)>,
}

impl std::fmt::Debug for SecretSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSet")
            .field("current", &self.current)
            .field("previous", &self.previous.as_ref().map(|(_, until)| until))
            .finish_non_exhaustive()
    }
}

fn digest_of(secret: &PolicySecret) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, secret.bytes()).as_ref());
    out
}

impl ActionGuard {
    /// A guard for `config`: with action types it needs the secret (see [`load_secret`]) and
    /// fails without one; without action types it reads nothing.
    pub fn load(
        config: &ActionsConfig,
        secrets_dir: &Path,
        env_value: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Self, SecretError> {
        let from_env = env_value.is_some();
        let secret = if config.enabled() {
            let current = load_secret(config, secrets_dir, env_value)?;
            Some(arc_swap::ArcSwap::from_pointee(SecretSet {
                digest: digest_of(&current),
                current,
                previous: None,
            }))
        } else {
            None
        };
        Ok(Self {
            types: config.types.clone(),
            header: config.header.to_ascii_lowercase(),
            max_lifetime_secs: config.max_lifetime_secs,
            secret,
            from_env,
        })
    }

    /// Re-reads the secret file (not the environment variable, which is fixed for the process).
    /// A changed secret becomes current; the previous one keeps verifying for
    /// `max_lifetime_secs` after `now`. A file that fails to load changes nothing.
    /// Returns whether the secret changed.
    pub fn reload_secret(
        &self,
        config: &ActionsConfig,
        secrets_dir: &Path,
        now: u64,
    ) -> Result<bool, SecretError> {
        let Some(set) = &self.secret else {
            return Ok(false);
        };
        if self.from_env {
            return Ok(false);
        }
        let fresh = load_secret(config, secrets_dir, None)?;
        let digest = digest_of(&fresh);
        let old = set.load();
        if bool::from(subtle::ConstantTimeEq::ct_eq(&digest[..], &old.digest[..])) {
            return Ok(false);
        }
        // The old current secret moves to `previous`; it cannot be cloned, so re-read is not
        // possible: take it out of the old set by building the new one from a fresh copy.
        let previous = PolicySecret::new(old.current.bytes().to_vec())
            .map(|p| (p, now.saturating_add(self.max_lifetime_secs)));
        set.store(std::sync::Arc::new(SecretSet {
            current: fresh,
            digest,
            previous,
        }));
        Ok(true)
    }

    /// A guard with no action types.
    #[must_use]
    pub fn disabled() -> Self {
        Self {
            types: Vec::new(),
            header: ActionsConfig::default().header.to_ascii_lowercase(),
            max_lifetime_secs: MAX_LIFETIME_SECS,
            secret: None,
            from_env: false,
        }
    }

    /// Whether enqueueing `job_type` needs a policy token.
    #[must_use]
    pub fn is_action(&self, job_type: &str) -> bool {
        self.types.iter().any(|p| p.matches(job_type))
    }

    /// The header the token travels in (lowercase).
    #[must_use]
    pub fn header(&self) -> &str {
        &self.header
    }

    /// Verifies a presented token for this request at `now` (seconds since the epoch).
    pub fn verify(
        &self,
        token: &str,
        expected: &Expected<'_>,
        now: u64,
    ) -> Result<Claims, PolicyTokenError> {
        // Without a secret nothing can verify; `load` makes that unreachable for action types.
        let set = self
            .secret
            .as_ref()
            .ok_or(PolicyTokenError::BadSignature)?
            .load();
        match policy_token::verify(token, &set.current, expected, self.max_lifetime_secs, now) {
            Err(PolicyTokenError::BadSignature) => match &set.previous {
                Some((previous, until)) if now < *until => {
                    policy_token::verify(token, previous, expected, self.max_lifetime_secs, now)
                }
                _ => Err(PolicyTokenError::BadSignature),
            },
            other => other,
        }
    }
}

/// Re-reads the policy-token secret file when its folder changes (see
/// [`crate::secrets::watch`]).
pub struct PolicySecretReload {
    pub guard: std::sync::Arc<ActionGuard>,
    pub config: ActionsConfig,
    pub secrets_dir: std::path::PathBuf,
    /// Where the previous secret's grace period starts.
    pub clock: crate::clock::Clock,
}

impl crate::secrets::watch::Reload for PolicySecretReload {
    fn name(&self) -> &'static str {
        "policy_token_secret"
    }

    fn dirs(&self) -> Vec<std::path::PathBuf> {
        let path = self.secrets_dir.join(&self.config.secret_file);
        path.parent().map(Path::to_path_buf).into_iter().collect()
    }

    fn reload(&self) -> Result<crate::secrets::watch::Change, crate::secrets::watch::ReloadError> {
        use crate::secrets::watch::{Change, ReloadError};
        let now = self.clock.now_secs().max(0).unsigned_abs();
        match self
            .guard
            .reload_secret(&self.config, &self.secrets_dir, now)
        {
            Ok(true) => Ok(Change::Changed(format!(
                "new secret; the previous one verifies for {} s",
                self.guard.max_lifetime_secs
            ))),
            Ok(false) => Ok(Change::Unchanged),
            Err(e) => Err(ReloadError(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::OpenOptionsExt;

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(types: &[&str]) -> ActionsConfig {
        ActionsConfig {
            types: types
                .iter()
                .map(|t| TypePattern::parse(t).unwrap())
                .collect(),
            ..ActionsConfig::default()
        }
    }

    fn write(path: &Path, contents: &[u8], mode: u32) {
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

    #[test]
    fn patterns_match_exact_names_prefixes_and_everything() {
        let exact = TypePattern::parse("ops.apply").unwrap();
        assert!(exact.matches("ops.apply"));
        assert!(!exact.matches("ops.apply.x"));
        assert!(!exact.matches("ops"));
        let prefix = TypePattern::parse("ops.*").unwrap();
        assert!(prefix.matches("ops.apply"));
        assert!(prefix.matches("ops.a.b"));
        assert!(!prefix.matches("ops"));
        assert!(!prefix.matches("opsx.apply"));
        assert!(!prefix.matches("xops.apply"));
        assert!(TypePattern::parse("*").unwrap().matches("anything.at-all"));
        for bad in [
            "",
            "ops.",
            "ops*",
            "*.ops",
            "Ops.apply",
            "ops.**",
            ".*",
            "a b",
        ] {
            assert!(TypePattern::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn config_is_validated() {
        let d = ActionsConfig::default();
        d.validate().unwrap();
        assert!(!d.enabled());
        assert_eq!(d.header, "X-OJS-Policy-Token");
        assert_eq!(d.max_lifetime_secs, 3600);
        for bad in [
            ActionsConfig {
                max_lifetime_secs: 0,
                ..d.clone()
            },
            ActionsConfig {
                max_lifetime_secs: 3601,
                ..d.clone()
            },
            ActionsConfig {
                header: "Authorization".into(),
                ..d.clone()
            },
            ActionsConfig {
                header: "x-ojs-tenant".into(),
                ..d.clone()
            },
            ActionsConfig {
                header: "bad header".into(),
                ..d.clone()
            },
            ActionsConfig {
                header: String::new(),
                ..d.clone()
            },
            ActionsConfig {
                secret_file: PathBuf::new(),
                ..d.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_action_types_need_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let guard = ActionGuard::load(&config(&[]), dir.path(), None).unwrap();
        assert!(!guard.is_action("ops.apply"));
    }

    #[test]
    fn action_types_without_a_secret_are_refused_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = ActionGuard::load(&config(&["ops.*"]), dir.path(), None).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SecretError::Missing { .. }));
        assert!(text.contains(SECRET_ENV), "{text}");
        assert!(text.contains("policy-token.key"), "{text}");
        assert!(text.contains("chmod 600"), "{text}");
    }

    #[test]
    fn the_file_must_be_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy-token.key");
        let c = config(&["ops.*"]);
        write(&path, &[b'k'; 40], 0o640);
        let err = load_secret(&c, dir.path(), None).unwrap_err();
        assert!(
            matches!(err, SecretError::Exposed { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
        // 31 bytes plus a newline that is not part of the secret.
        let mut short = vec![b'k'; 31];
        short.push(b'\n');
        write(&path, &short, 0o600);
        let err = load_secret(&c, dir.path(), None).unwrap_err();
        assert!(
            matches!(err, SecretError::TooShort { len: 31, .. }),
            "{err}"
        );
        assert!(
            !err.to_string().contains("kkkk"),
            "the secret leaked: {err}"
        );
        let mut ok = vec![b'k'; 32];
        ok.extend_from_slice(b"\r\n");
        write(&path, &ok, 0o600);
        assert!(load_secret(&c, dir.path(), None).is_ok());
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(&["ops.*"]);
        // No file at all: the variable alone is enough.
        let env = Zeroizing::new(vec![b'e'; 32]);
        let guard = ActionGuard::load(&c, dir.path(), Some(env)).unwrap();
        let claims = Claims {
            tenant: None,
            actor: "a".into(),
            action: "ops.apply".into(),
            scopes: vec!["enqueue".into()],
            iat: 100,
            exp: 200,
            jti: None,
        };
        let secret = PolicySecret::new(vec![b'e'; 32]).unwrap();
        let token = policy_token::sign(&claims, &secret).unwrap();
        let expected = Expected {
            tenant: None,
            actor: "a",
            action: "ops.apply",
        };
        assert!(guard.is_action("ops.apply"));
        assert_eq!(guard.verify(&token, &expected, 150).unwrap(), claims);
        // A short variable is refused even when a good file exists.
        write(&dir.path().join("policy-token.key"), &[b'f'; 40], 0o600);
        let err = load_secret(&c, dir.path(), Some(Zeroizing::new(b"short".to_vec()))).unwrap_err();
        assert!(matches!(err, SecretError::TooShort { len: 5, .. }), "{err}");
    }

    #[test]
    fn a_rotated_secret_file_takes_over_and_the_old_one_verifies_for_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&["ops.*"]);
        c.max_lifetime_secs = 600;
        let path = dir.path().join("policy-token.key");
        write(&path, &[b'a'; 32], 0o600);
        let guard = ActionGuard::load(&c, dir.path(), None).unwrap();
        let claims = Claims {
            tenant: None,
            actor: "a".into(),
            action: "ops.apply".into(),
            scopes: vec!["enqueue".into()],
            iat: 1000,
            exp: 1500,
            jti: None,
        };
        let expected = Expected {
            tenant: None,
            actor: "a",
            action: "ops.apply",
        };
        let sign =
            |b: u8| policy_token::sign(&claims, &PolicySecret::new(vec![b; 32]).unwrap()).unwrap();
        let (old, new) = (sign(b'a'), sign(b'b'));
        assert!(
            !guard.reload_secret(&c, dir.path(), 1000).unwrap(),
            "unchanged"
        );
        assert!(guard.verify(&new, &expected, 1100).is_err());
        // A malformed rewrite changes nothing.
        std::fs::remove_file(&path).unwrap();
        write(&path, b"short", 0o600);
        assert!(guard.reload_secret(&c, dir.path(), 1000).is_err());
        assert!(guard.verify(&old, &expected, 1100).is_ok());
        std::fs::remove_file(&path).unwrap();
        write(&path, &[b'b'; 32], 0o600);
        assert!(guard.reload_secret(&c, dir.path(), 1000).unwrap());
        assert!(guard.verify(&new, &expected, 1100).is_ok());
        assert!(guard.verify(&old, &expected, 1100).is_ok(), "grace period");
        // Another rotation: only the last previous secret is kept.
        std::fs::remove_file(&path).unwrap();
        write(&path, &[b'c'; 32], 0o600);
        assert!(guard.reload_secret(&c, dir.path(), 1000).unwrap());
        assert_eq!(
            guard.verify(&old, &expected, 1100),
            Err(PolicyTokenError::BadSignature)
        );
        assert!(guard.verify(&new, &expected, 1100).is_ok());
        // Past the grace period the previous secret no longer verifies.
        std::fs::remove_file(&path).unwrap();
        write(&path, &[b'd'; 32], 0o600);
        assert!(guard.reload_secret(&c, dir.path(), 100).unwrap());
        assert_eq!(
            guard.verify(&sign(b'c'), &expected, 1100),
            Err(PolicyTokenError::BadSignature)
        );
    }
}
