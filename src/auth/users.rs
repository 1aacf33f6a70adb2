//! Admin user accounts: the record in redb, the username and password rules, and TOTP
//! (RFC 6238: SHA-1, 6 digits, 30 s steps, one step of skew either way).
//!
//! The pure rules (username shape, password policy, TOTP checks) come first; the storage
//! operations below them block on redb and are called from `spawn_blocking`, the offline CLI
//! and start-up. The accounts service ([`super::accounts`]) is the only writer while the
//! server runs.

use std::borrow::Cow;

use redb::{ReadableTable, ReadableTableMetadata};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use totp_rs::{Algorithm, Builder, Secret, Totp};
use tracing::warn;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::session;
use crate::clock::Millis;
use crate::config::SessionsConfig;
use crate::error::{field_details, not_found_details, not_found_message, Code, ErrorCode};
use crate::store::{codec, tables, Store, StoreError};

/// Longest password accepted, in characters.
pub const MAX_PASSWORD_CHARS: usize = 1024;
/// The issuer shown by authenticator apps.
pub const TOTP_ISSUER: &str = "Bulwark";
/// TOTP step length in seconds.
const TOTP_STEP_SECS: u64 = 30;
/// Bytes of a TOTP secret (160 bits, as RFC 4226 recommends).
const TOTP_SECRET_BYTES: usize = 20;

/// A TOTP shared secret. Zeroized on drop, never printed.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(transparent)]
pub struct TotpSecret(Vec<u8>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(…)")
    }
}

/// A stored admin user. Only an argon2id hash of the password is kept.
#[derive(Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub username: String,
    /// argon2id PHC string (the same parameters as API keys).
    pub password_hash: String,
    /// The TOTP secret, `None` until `bulwark users totp` (or creation over HTTP) enrols one.
    /// Stored as is for now: the key vault will wrap it at rest (like job payloads) once it
    /// lands.
    pub totp_secret: Option<TotpSecret>,
    /// Set by the first login that presents a valid code for the current secret.
    pub totp_confirmed: bool,
    /// The last TOTP time step accepted: a code for it or an earlier step is refused, so no
    /// code is ever accepted twice.
    pub last_totp_step: Option<u64>,
    /// Bumped by every credential change (password, TOTP re-enrolment); sessions carry it and
    /// die with the old value.
    pub credential_version: u32,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub disabled: bool,
}

/// What a listing shows of a user: no hash, no secret.
#[derive(Clone, Debug, Serialize)]
pub struct UserSummary {
    pub username: String,
    pub totp_enrolled: bool,
    pub totp_confirmed: bool,
    pub disabled: bool,
    pub credential_version: u32,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&UserRecord> for UserSummary {
    fn from(r: &UserRecord) -> Self {
        Self {
            username: r.username.clone(),
            totp_enrolled: r.totp_secret.is_some(),
            totp_confirmed: r.totp_confirmed,
            disabled: r.disabled,
            credential_version: r.credential_version,
            created_at: crate::clock::rfc3339(r.created_at),
            updated_at: crate::clock::rfc3339(r.updated_at),
        }
    }
}

/// What can go wrong managing users.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("usernames are 3 to 64 characters: a lowercase letter, then lowercase letters, digits, '_', '.' or '-'")]
    InvalidUsername,
    #[error("a user with this name already exists")]
    Exists,
    #[error("no such user")]
    NotFound,
    #[error("{0}")]
    Policy(#[from] PolicyViolation),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("could not generate or hash a secret")]
    Crypto,
}

/// What the client sees of a user operation's failure; storage and crypto causes go to the log.
impl ErrorCode for UserError {
    fn code(&self) -> Code {
        match self {
            Self::InvalidUsername => Code::InvalidRequest,
            Self::Policy(_) => Code::Unprocessable,
            Self::Exists => Code::Conflict,
            Self::NotFound => Code::NotFound,
            Self::Store(_) | Self::Crypto => Code::BackendUnavailable,
        }
    }

    fn message(&self) -> Cow<'static, str> {
        match self {
            Self::InvalidUsername | Self::Exists => self.to_string().into(),
            Self::Policy(_) => "the password does not meet the password policy".into(),
            Self::NotFound => not_found_message(USER).into(),
            Self::Store(_) | Self::Crypto => self.code().row().message.into(),
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            Self::InvalidUsername => Some(field_details("username")),
            Self::Policy(v) => Some(json!({ "field": "password", "missing": v.missing })),
            Self::NotFound => Some(not_found_details(USER)),
            Self::Exists | Self::Store(_) | Self::Crypto => None,
        }
    }

    fn log_cause(&self) {
        if matches!(self, Self::Store(_) | Self::Crypto) {
            warn!(error = %self, "accounts service unavailable");
        }
    }
}

/// The resource a user error's 404 names.
const USER: &str = "user";

impl From<redb::Error> for UserError {
    fn from(e: redb::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}

macro_rules! user_error_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for UserError {
            fn from(e: $t) -> Self {
                Self::Store(StoreError::from(e))
            }
        }
    )*};
}
user_error_from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Whether `name` is a valid username: `^[a-z][a-z0-9_.-]{2,63}$`.
#[must_use]
pub fn valid_username(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=64).contains(&bytes.len())
        && bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// The password policy, from `[sessions]`.
#[derive(Clone, Copy, Debug)]
pub struct PasswordPolicy {
    pub min_length: usize,
    pub min_classes: usize,
}

impl From<&SessionsConfig> for PasswordPolicy {
    fn from(c: &SessionsConfig) -> Self {
        Self {
            min_length: c.password_min_length,
            min_classes: c.password_min_classes,
        }
    }
}

/// Why a password was refused: every rule it breaks, never the password itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the password does not meet the policy: {}", .missing.join("; "))]
pub struct PolicyViolation {
    pub missing: Vec<String>,
}

impl PasswordPolicy {
    /// Checks a new password for `username`.
    pub fn check(&self, username: &str, password: &SecretString) -> Result<(), PolicyViolation> {
        let text = password.expose_secret();
        let chars = text.chars().count();
        let mut missing = Vec::new();
        if chars < self.min_length {
            missing.push(format!("at least {} characters", self.min_length));
        }
        if chars > MAX_PASSWORD_CHARS {
            missing.push(format!("at most {MAX_PASSWORD_CHARS} characters"));
        }
        let (mut lower, mut upper, mut digit, mut symbol) = (false, false, false, false);
        for c in text.chars() {
            if c.is_lowercase() {
                lower = true;
            } else if c.is_uppercase() {
                upper = true;
            } else if c.is_numeric() {
                digit = true;
            } else {
                symbol = true;
            }
        }
        let classes = [lower, upper, digit, symbol].iter().filter(|c| **c).count();
        if classes < self.min_classes {
            let mut absent = Vec::new();
            for (present, name) in [
                (lower, "lowercase letter"),
                (upper, "uppercase letter"),
                (digit, "digit"),
                (symbol, "symbol"),
            ] {
                if !present {
                    absent.push(name);
                }
            }
            missing.push(format!(
                "at least {} of lowercase letter, uppercase letter, digit, symbol (lacks: {})",
                self.min_classes,
                absent.join(", ")
            ));
        }
        if !username.is_empty() && text.to_lowercase().contains(&username.to_lowercase()) {
            missing.push("must not contain the username".into());
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(PolicyViolation { missing })
        }
    }
}

/// A fresh 160-bit TOTP secret.
pub fn new_totp_secret() -> Result<TotpSecret, UserError> {
    let mut bytes = vec![0u8; TOTP_SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| UserError::Crypto)?;
    Ok(TotpSecret(bytes))
}

fn totp(secret: &TotpSecret, username: &str) -> Result<Totp, UserError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(0)
        .with_step_duration(TOTP_STEP_SECS)
        .with_secret(Secret::from(secret.0.as_slice()))
        .with_account_name(username)
        .with_issuer(Some(TOTP_ISSUER))
        .build()
        .map_err(|_| UserError::Crypto)
}

/// The `otpauth://` URI an authenticator app enrols from. It holds the secret: show it once,
/// never log it.
pub fn otpauth_uri(secret: &TotpSecret, username: &str) -> Result<SecretString, UserError> {
    let uri = totp(secret, username)?
        .to_url()
        .map_err(|_| UserError::Crypto)?;
    Ok(SecretString::from(uri))
}

/// Checks a presented code at `now_secs`, allowing one step of clock skew either way, and
/// refusing any step at or before `last_step` (a code is accepted once). Returns the step the
/// code matched.
#[must_use]
pub fn check_totp(
    secret: &TotpSecret,
    code: &SecretString,
    now_secs: u64,
    last_step: Option<u64>,
) -> Option<u64> {
    let code = code.expose_secret();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let Ok(totp) = totp(secret, "") else {
        return None;
    };
    let origin = now_secs / TOTP_STEP_SECS;
    // Every candidate step is computed, so the time taken does not depend on which one matched.
    let mut matched = None;
    for step in origin.saturating_sub(1)..=origin.saturating_add(1) {
        let ok = totp.check(code, step * TOTP_STEP_SECS).is_some();
        let fresh = last_step.is_none_or(|last| step > last);
        if ok && fresh && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

/// Builds a new user record created at `now` (the password already policy-checked and hashed).
#[must_use]
pub fn new_record(
    username: &str,
    password_hash: String,
    totp: Option<TotpSecret>,
    now: Millis,
) -> UserRecord {
    UserRecord {
        username: username.to_string(),
        password_hash,
        totp_secret: totp,
        totp_confirmed: false,
        last_totp_step: None,
        credential_version: 1,
        created_at: now,
        updated_at: now,
        disabled: false,
    }
}

/// Reads one user.
pub fn get(store: &Store, username: &str) -> Result<Option<UserRecord>, StoreError> {
    let txn = store.control_read()?;
    let table = txn.open_table(tables::USERS)?;
    table
        .get(username)?
        .map(|g| codec::decode(g.value()))
        .transpose()
}

/// Reads one user inside a write transaction (to change it atomically).
pub fn get_in(
    txn: &redb::WriteTransaction,
    username: &str,
) -> Result<Option<UserRecord>, StoreError> {
    let table = txn.open_table(tables::USERS)?;
    let got = table.get(username)?;
    got.map(|g| codec::decode(g.value())).transpose()
}

/// Writes one user inside a write transaction.
pub fn put_in(txn: &redb::WriteTransaction, record: &UserRecord) -> Result<(), StoreError> {
    let bytes = codec::encode(record)?;
    let mut table = txn.open_table(tables::USERS)?;
    table.insert(record.username.as_str(), bytes.as_slice())?;
    Ok(())
}

/// Every user, by name.
pub fn list(store: &Store) -> Result<Vec<UserRecord>, StoreError> {
    let txn = store.control_read()?;
    let table = txn.open_table(tables::USERS)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (_, value) = entry?;
        out.push(codec::decode(value.value())?);
    }
    Ok(out)
}

/// Whether any user exists (first start creates `admin` from `OJS_SECRET_ADMIN_PASSWORD` when
/// none does).
pub fn any(store: &Store) -> Result<bool, StoreError> {
    let txn = store.control_read()?;
    let table = txn.open_table(tables::USERS)?;
    Ok(!table.is_empty()?)
}

/// Stores a new user; refuses an existing name.
pub fn insert(store: &Store, record: &UserRecord) -> Result<(), UserError> {
    if !valid_username(&record.username) {
        return Err(UserError::InvalidUsername);
    }
    let bytes = codec::encode(record)?;
    store.control_write(|txn| {
        let mut table = txn.open_table(tables::USERS)?;
        if table.get(record.username.as_str())?.is_some() {
            return Err(UserError::Exists);
        }
        table.insert(record.username.as_str(), bytes.as_slice())?;
        Ok(())
    })
}

/// Reads a user inside a write transaction, changes it, writes it back, and revokes every
/// refresh token of the user when `revoke_tokens` is set, all as of `now`. Returns the updated
/// record.
fn update(
    store: &Store,
    username: &str,
    revoke_tokens: bool,
    now: Millis,
    change: impl FnOnce(&mut UserRecord),
) -> Result<UserRecord, UserError> {
    store.control_write(|txn| {
        let record = {
            let mut table = txn.open_table(tables::USERS)?;
            let mut record: UserRecord = table
                .get(username)?
                .map(|g| codec::decode(g.value()))
                .transpose()?
                .ok_or(UserError::NotFound)?;
            change(&mut record);
            record.updated_at = now;
            let bytes = codec::encode(&record)?;
            table.insert(username, bytes.as_slice())?;
            record
        };
        if revoke_tokens {
            session::revoke_user_tokens(txn, username, now)?;
        }
        Ok(record)
    })
}

/// Replaces the password hash: bumps the credential version (existing sessions die) and
/// revokes every refresh token of the user.
pub fn set_password(
    store: &Store,
    username: &str,
    password_hash: String,
    now: Millis,
) -> Result<UserRecord, UserError> {
    update(store, username, true, now, |r| {
        r.password_hash = password_hash;
        r.credential_version = r.credential_version.saturating_add(1);
    })
}

/// Enrols a new TOTP secret (replacing any old one): unconfirmed until the first login with a
/// valid code. A re-enrolment is a credential change, so sessions and refresh tokens die.
pub fn set_totp(
    store: &Store,
    username: &str,
    secret: TotpSecret,
    now: Millis,
) -> Result<UserRecord, UserError> {
    update(store, username, true, now, |r| {
        let was_enrolled = r.totp_secret.is_some();
        r.totp_secret = Some(secret);
        r.totp_confirmed = false;
        r.last_totp_step = None;
        if was_enrolled {
            r.credential_version = r.credential_version.saturating_add(1);
        }
    })
}

/// Disables or enables a user. Disabling revokes its refresh tokens; sessions die because the
/// server refuses disabled users.
pub fn set_disabled(
    store: &Store,
    username: &str,
    disabled: bool,
    now: Millis,
) -> Result<UserRecord, UserError> {
    update(store, username, disabled, now, |r| r.disabled = disabled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PasswordPolicy {
        PasswordPolicy {
            min_length: 12,
            min_classes: 3,
        }
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn usernames() {
        for good in [
            "admin",
            "ops.team-1",
            "a_b",
            "abc",
            &format!("a{}", "b".repeat(63)),
        ] {
            assert!(valid_username(good), "{good}");
        }
        for bad in [
            "",
            "ab",
            "Admin",
            "1abc",
            "_abc",
            "a b c",
            "abc/",
            "ädmin",
            &format!("a{}", "b".repeat(64)),
        ] {
            assert!(!valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn password_policy_lists_what_is_missing_without_echoing() {
        let p = policy();
        assert!(p.check("alice", &secret("Correct-Horse-9")).is_ok());
        assert!(p.check("alice", &secret("correct horse 9")).is_ok());
        let e = p.check("alice", &secret("short1A")).unwrap_err();
        assert_eq!(e.missing, vec!["at least 12 characters".to_string()]);
        let e = p
            .check("alice", &secret("alllowercaseletters"))
            .unwrap_err();
        assert_eq!(e.missing.len(), 1);
        assert!(
            e.missing[0].contains("uppercase letter, digit, symbol"),
            "{e}"
        );
        assert!(!e.to_string().contains("alllowercaseletters"));
        let e = p.check("alice", &secret("xxAlice-Wonder-9")).unwrap_err();
        assert_eq!(e.missing, vec!["must not contain the username".to_string()]);
        let long = format!("Aa1-{}", "x".repeat(MAX_PASSWORD_CHARS));
        let e = p.check("alice", &secret(&long)).unwrap_err();
        assert_eq!(e.missing, vec!["at most 1024 characters".to_string()]);
        let e = p.check("alice", &secret("aaaa")).unwrap_err();
        assert_eq!(e.missing.len(), 2);
        let lax = PasswordPolicy {
            min_length: 8,
            min_classes: 1,
        };
        assert!(lax.check("alice", &secret("abcdefgh")).is_ok());
    }

    #[test]
    fn totp_matches_rfc_6238_and_never_accepts_a_step_twice() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", T = 59 s: 94287082 (8
        // digits); the 6-digit code is its last six digits.
        let s = TotpSecret(b"12345678901234567890".to_vec());
        let code = secret("287082");
        assert_eq!(check_totp(&s, &code, 59, None), Some(1));
        // One step of skew either way, no more.
        assert_eq!(check_totp(&s, &code, 59 + 30, None), Some(1));
        assert_eq!(check_totp(&s, &code, 29, None), Some(1));
        assert_eq!(check_totp(&s, &code, 59 + 60, None), None);
        // Replays: the step already accepted, or an earlier one, is refused.
        assert_eq!(check_totp(&s, &code, 59, Some(1)), None);
        assert_eq!(check_totp(&s, &code, 59, Some(2)), None);
        assert_eq!(check_totp(&s, &code, 59, Some(0)), Some(1));
        for bad in ["", "28708", "2870822", "28708a", "+87082", "287083"] {
            assert_eq!(check_totp(&s, &secret(bad), 59, None), None, "{bad}");
        }
    }

    #[test]
    fn otpauth_uri_round_trips() {
        let s = new_totp_secret().unwrap();
        assert_eq!(s.0.len(), 20);
        let uri = otpauth_uri(&s, "alice").unwrap();
        let uri = uri.expose_secret();
        assert!(
            uri.starts_with("otpauth://totp/Bulwark:alice?secret="),
            "{uri}"
        );
        let parsed = Totp::from_url(uri).unwrap();
        assert_eq!(parsed.secret().as_bytes(), s.0.as_slice());
        let now = 1_700_000_000;
        let code = secret(&parsed.generate(now).to_string());
        assert!(check_totp(&s, &code, now, None).is_some());
        assert!(!format!("{s:?}").contains(&format!("{:?}", s.0)));
    }

    #[test]
    fn records_store_update_and_refuse_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!any(&store).unwrap());
        let r = new_record("alice", "hash".into(), None, 1_000);
        assert_eq!((r.created_at, r.updated_at), (1_000, 1_000));
        insert(&store, &r).unwrap();
        assert!(matches!(insert(&store, &r), Err(UserError::Exists)));
        let bad = new_record("Alice", "hash".into(), None, 1_000);
        assert!(matches!(
            insert(&store, &bad),
            Err(UserError::InvalidUsername)
        ));
        assert!(any(&store).unwrap());
        let updated = set_password(&store, "alice", "hash2".into(), 2_000).unwrap();
        assert_eq!(updated.credential_version, 2);
        assert_eq!((updated.created_at, updated.updated_at), (1_000, 2_000));
        // A first enrolment does not bump the version; a re-enrolment does.
        let enrolled = set_totp(&store, "alice", new_totp_secret().unwrap(), 3_000).unwrap();
        assert_eq!(enrolled.credential_version, 2);
        let again = set_totp(&store, "alice", new_totp_secret().unwrap(), 4_000).unwrap();
        assert_eq!(again.credential_version, 3);
        assert!(!again.totp_confirmed);
        let got = get(&store, "alice").unwrap().unwrap();
        assert_eq!(got.password_hash, "hash2");
        assert!(matches!(
            set_password(&store, "bob", "h".into(), 5_000),
            Err(UserError::NotFound)
        ));
        assert!(set_disabled(&store, "alice", true, 6_000).unwrap().disabled);
        assert_eq!(list(&store).unwrap().len(), 1);
    }
}
