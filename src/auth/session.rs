//! Session tokens and refresh tokens for admin users.
//!
//! A session (access) token reads `bws_<claims>.<tag>`: `claims` is base64url JSON (username,
//! session id, issue and expiry times in seconds, credential version) and `tag` the base64url
//! HMAC-SHA256 of `bws_<claims>` under the server's session key (`secrets/session-signing.key`).
//! Checking one costs an HMAC, a constant-time compare and a look-up in an in-memory snapshot of
//! every user's credential version and disabled flag ([`Gates`]): no argon2, no database read.
//! Whoever changes a user publishes the new snapshot.
//!
//! A refresh token reads `bwr_<43 base64url chars>` (256 random bits). Only its SHA-256 digest
//! is stored, with its family (one per login), user, expiry and whether it has been used. Each
//! refresh spends the token and issues the next of the same family; presenting a spent token
//! again revokes the whole family (someone else has a copy), and the family's sessions with it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use redb::{ReadableTable, WriteTransaction};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::AuthError;
use crate::clock::{Clock, Millis};
use crate::store::{codec, tables, Store, StoreError};

/// Prefix of session tokens (the auth extractor routes on it).
pub const ACCESS_PREFIX: &str = "bws_";
/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "bwr_";
/// The session signing key inside the secrets folder.
pub const KEY_FILE: &str = "session-signing.key";
/// Longest session token looked at.
const MAX_TOKEN_LEN: usize = 512;
/// Clock skew tolerated on a token's issue time, in seconds.
const LEEWAY_SECS: i64 = 30;
/// Random bytes in a refresh token and in a session/family id.
const REFRESH_BYTES: usize = 32;
const FAMILY_BYTES: usize = 16;

/// What a session token says. Times are seconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The username.
    pub sub: String,
    /// The session id: the refresh token family of the login.
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    /// The user's credential version at login.
    pub cv: u32,
}

/// What the server knows about a user on the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    pub credential_version: u32,
    pub disabled: bool,
}

/// The published snapshot: every user's gate, and sessions revoked before their expiry (by
/// logout or refresh reuse), with the time until which they must stay refused.
#[derive(Clone, Debug, Default)]
pub struct Gates {
    pub users: HashMap<String, Gate>,
    pub revoked: HashMap<String, i64>,
}

/// Why a session token was refused (for logs and audit; the client sees one 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("malformed session token")]
    Malformed,
    #[error("bad session token signature")]
    BadSignature,
    #[error("session expired")]
    Expired,
    #[error("session revoked")]
    Revoked,
    #[error("unknown or disabled user")]
    UnknownUser,
}

impl From<SessionError> for AuthError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Malformed => Self::Malformed,
            SessionError::BadSignature => Self::WrongSecret,
            SessionError::Expired => Self::Expired,
            SessionError::Revoked => Self::Revoked,
            SessionError::UnknownUser => Self::UnknownKey,
        }
    }
}

/// Signs and verifies session tokens. Cheap to clone; every clone sees the same snapshot.
#[derive(Clone)]
pub struct SessionVerifier {
    keys: Arc<ArcSwap<SigningKeys>>,
    gates: Arc<ArcSwap<Gates>>,
    /// The time tokens are checked at, and key grace periods start from.
    clock: Clock,
}

/// The current signing key and, after a rotation, the previous one with the time (seconds)
/// until which tokens it signed still verify.
struct SigningKeys {
    current: Arc<hmac::Key>,
    previous: Option<(Arc<hmac::Key>, i64)>,
}

impl SessionVerifier {
    /// A verifier with `key` and an initial snapshot, checking tokens at `clock`'s time.
    #[must_use]
    pub fn new(key: hmac::Key, gates: Gates, clock: Clock) -> Self {
        Self {
            keys: Arc::new(ArcSwap::from_pointee(SigningKeys {
                current: Arc::new(key),
                previous: None,
            })),
            gates: Arc::new(ArcSwap::from_pointee(gates)),
            clock,
        }
    }

    /// Makes `key` the signing key; tokens signed with the one it replaces keep verifying
    /// until `previous_until` (seconds since the epoch: the longest session lifetime from now).
    pub fn rotate_key(&self, key: hmac::Key, previous_until: i64) {
        let old = self.keys.load();
        self.keys.store(Arc::new(SigningKeys {
            current: Arc::new(key),
            previous: Some((old.current.clone(), previous_until)),
        }));
    }

    fn tag(&self, signed: &str) -> hmac::Tag {
        hmac::sign(&self.keys.load().current, signed.as_bytes())
    }

    /// Whether `presented` is the tag of `signed` under the current key, or under the previous
    /// one while its grace period lasts.
    fn tag_matches(&self, signed: &str, presented: &[u8], now_secs: i64) -> bool {
        let keys = self.keys.load();
        let current = hmac::sign(&keys.current, signed.as_bytes());
        if bool::from(presented.ct_eq(current.as_ref())) {
            return true;
        }
        match &keys.previous {
            Some((key, until)) if now_secs < *until => {
                let tag = hmac::sign(key, signed.as_bytes());
                bool::from(presented.ct_eq(tag.as_ref()))
            }
            _ => false,
        }
    }

    /// Makes a session token for `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<SecretString, SessionError> {
        let json = serde_json::to_vec(claims).map_err(|_| SessionError::Malformed)?;
        let signed = format!("{ACCESS_PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let tag = URL_SAFE_NO_PAD.encode(self.tag(&signed).as_ref());
        Ok(SecretString::from(format!("{signed}.{tag}")))
    }

    /// Checks a session token at `now_secs`: signature, times, then the user's current gate and
    /// the revoked sessions. Returns the claims.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, SessionError> {
        if token.len() > MAX_TOKEN_LEN || !token.starts_with(ACCESS_PREFIX) {
            return Err(SessionError::Malformed);
        }
        let (signed, tag) = token.rsplit_once('.').ok_or(SessionError::Malformed)?;
        let presented = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| SessionError::Malformed)?;
        if !self.tag_matches(signed, &presented, now_secs) {
            return Err(SessionError::BadSignature);
        }
        let payload = signed
            .strip_prefix(ACCESS_PREFIX)
            .ok_or(SessionError::Malformed)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| SessionError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| SessionError::Malformed)?;
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if lifetime <= 0
            || lifetime > i64::try_from(crate::config::sessions::MAX_ACCESS_TTL_SECS).unwrap_or(0)
        {
            return Err(SessionError::Malformed);
        }
        if claims.exp <= now_secs || claims.iat > now_secs.saturating_add(LEEWAY_SECS) {
            return Err(SessionError::Expired);
        }
        let gates = self.gates.load();
        let gate = gates
            .users
            .get(&claims.sub)
            .ok_or(SessionError::UnknownUser)?;
        if gate.disabled {
            return Err(SessionError::UnknownUser);
        }
        if gate.credential_version != claims.cv || gates.revoked.contains_key(&claims.sid) {
            return Err(SessionError::Revoked);
        }
        Ok(claims)
    }

    /// The auth extractor's entry: a principal for a valid session token, checked now.
    pub fn authenticate(&self, token: &SecretString) -> Result<Arc<super::Principal>, AuthError> {
        let claims = self.verify(token.expose_secret(), self.clock.now_secs())?;
        Ok(Arc::new(super::Principal::session_admin(
            &claims.sub,
            &claims.sid,
            Some(claims.exp.saturating_mul(1000)),
        )))
    }

    /// Whether a session that was valid stands now: its user exists and is enabled, and the
    /// session was not revoked since (logout, refresh-token reuse, an administrator). A
    /// waiting long-poll asks this before it is handed a job.
    #[must_use]
    pub fn stands(&self, username: &str, sid: &str) -> bool {
        let gates = self.gates.load();
        gates.users.get(username).is_some_and(|gate| !gate.disabled)
            && !gates.revoked.contains_key(sid)
    }

    /// Publishes a user's current gate (after creation or a credential change).
    pub fn publish_user(&self, username: &str, gate: Gate) {
        self.gates.rcu(|current| {
            let mut next = Gates::clone(current);
            next.users.insert(username.to_string(), gate);
            next
        });
    }

    /// Refuses a session from now until `until_secs` (its longest possible expiry).
    pub fn revoke_session(&self, sid: &str, until_secs: i64) {
        self.gates.rcu(|current| {
            let mut next = Gates::clone(current);
            next.revoked.insert(sid.to_string(), until_secs);
            next
        });
    }

    /// Forgets revocations of sessions that have expired anyway.
    pub fn prune(&self, now_secs: i64) {
        if self
            .gates
            .load()
            .revoked
            .values()
            .all(|until| *until > now_secs)
        {
            return;
        }
        self.gates.rcu(|current| {
            let mut next = Gates::clone(current);
            next.revoked.retain(|_, until| *until > now_secs);
            next
        });
    }
}

/// Re-reads the session signing key file when the secrets folder changes (see
/// [`crate::secrets::watch`]). A new key signs new tokens at once; tokens signed with the old
/// one keep verifying for the longest session lifetime. A malformed or exposed file changes
/// nothing.
pub struct SessionKeyReload {
    verifier: SessionVerifier,
    dir: std::path::PathBuf,
    digest: std::sync::Mutex<[u8; 32]>,
}

fn key_file_digest(dir: &Path) -> Result<[u8; 32], String> {
    let bytes = crate::secrets::read_hex_key(&dir.join(KEY_FILE)).map_err(|e| e.to_string())?;
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes.as_ref()).as_ref());
    Ok(out)
}

impl SessionKeyReload {
    /// Watches the key `verifier` was made with (read again now to remember it).
    pub fn new(verifier: SessionVerifier, secrets_dir: &Path) -> Result<Self, String> {
        Ok(Self {
            verifier,
            digest: std::sync::Mutex::new(key_file_digest(secrets_dir)?),
            dir: secrets_dir.to_path_buf(),
        })
    }
}

impl crate::secrets::watch::Reload for SessionKeyReload {
    fn name(&self) -> &'static str {
        "session_signing_key"
    }

    fn dirs(&self) -> Vec<std::path::PathBuf> {
        vec![self.dir.clone()]
    }

    fn reload(&self) -> Result<crate::secrets::watch::Change, crate::secrets::watch::ReloadError> {
        use crate::secrets::watch::{Change, ReloadError};
        let bytes = crate::secrets::read_hex_key(&self.dir.join(KEY_FILE))
            .map_err(|e| ReloadError(e.to_string()))?;
        let mut digest = [0u8; 32];
        digest
            .copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes.as_ref()).as_ref());
        let mut known = self
            .digest
            .lock()
            .map_err(|_| ReloadError("session key state poisoned".into()))?;
        if bool::from(digest.ct_eq(&*known)) {
            return Ok(Change::Unchanged);
        }
        let grace = i64::try_from(crate::config::sessions::MAX_ACCESS_TTL_SECS).unwrap_or(3600);
        let until = self.verifier.clock.now_secs().saturating_add(grace);
        self.verifier
            .rotate_key(hmac::Key::new(hmac::HMAC_SHA256, bytes.as_ref()), until);
        *known = digest;
        Ok(Change::Changed(format!(
            "new key; the previous one verifies for {grace} s"
        )))
    }
}

/// Reads the session signing key from the secrets folder, creating it (32 random bytes, hex,
/// mode 0600) on first start. A key file readable by group or others is refused.
pub fn load_or_create_key(secrets_dir: &Path) -> Result<hmac::Key, String> {
    crate::secrets::load_or_create_hex_key(&secrets_dir.join(KEY_FILE))
        .map(|bytes| hmac::Key::new(hmac::HMAC_SHA256, bytes.as_ref()))
        .map_err(|e| e.to_string())
}

/// A new random id (session/family), 32 hex digits.
pub fn new_family_id() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; FAMILY_BYTES];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// How logs and audit records show a session: its first eight hex digits.
#[must_use]
pub fn display_family(family: &str) -> String {
    format!("bws_{}…", family.get(..8).unwrap_or(family))
}

/// The SHA-256 digest under which a refresh token is stored.
pub type TokenDigest = [u8; 32];

/// A new refresh token and its digest.
pub fn new_refresh_token() -> Result<(SecretString, TokenDigest), ring::error::Unspecified> {
    let mut bytes = Zeroizing::new([0u8; REFRESH_BYTES]);
    SystemRandom::new().fill(bytes.as_mut())?;
    let token = SecretString::from(format!(
        "{REFRESH_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(bytes.as_ref())
    ));
    let digest = refresh_digest(&token).ok_or(ring::error::Unspecified)?;
    Ok((token, digest))
}

/// The digest of a presented refresh token, or `None` if it does not have the right shape.
#[must_use]
pub fn refresh_digest(token: &SecretString) -> Option<TokenDigest> {
    let text = token.expose_secret();
    let body = text.strip_prefix(REFRESH_PREFIX)?;
    let shape_ok = body.len() == 43
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !shape_ok {
        return None;
    }
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    Some(out)
}

/// A stored refresh token (its digest is the key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub family: String,
    pub username: String,
    /// The user's credential version when the family was issued.
    pub credential_version: u32,
    pub issued_at: Millis,
    pub expires_at: Millis,
    /// Set when the token was exchanged for the next one.
    pub used_at: Option<Millis>,
    /// Set when the family was revoked (logout, reuse, credential change).
    pub revoked_at: Option<Millis>,
}

/// What presenting a refresh token leads to. Pure: [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Spend it and issue the next token of the family.
    Rotate,
    /// A spent token came back: revoke the family.
    Reuse,
    /// Refuse, and change nothing.
    Refuse(&'static str),
}

/// Decides what a presented refresh token does, given the user's current gate.
#[must_use]
pub fn decide(record: &RefreshRecord, now: Millis, gate: Option<Gate>) -> Decision {
    if record.revoked_at.is_some() {
        return Decision::Refuse("refresh token revoked");
    }
    if record.used_at.is_some() {
        return Decision::Reuse;
    }
    if record.expires_at <= now {
        return Decision::Refuse("refresh token expired");
    }
    match gate {
        None => Decision::Refuse("unknown user"),
        Some(g) if g.disabled => Decision::Refuse("user disabled"),
        Some(g) if g.credential_version != record.credential_version => {
            Decision::Refuse("credentials changed")
        }
        Some(_) => Decision::Rotate,
    }
}

/// Reads a refresh record inside a write transaction.
pub fn get_refresh(
    txn: &WriteTransaction,
    digest: &TokenDigest,
) -> Result<Option<RefreshRecord>, StoreError> {
    let table = txn.open_table(tables::REFRESH_TOKENS)?;
    let got = table.get(digest.as_slice())?;
    got.map(|g| codec::decode(g.value())).transpose()
}

/// Writes a refresh record inside a write transaction.
pub fn put_refresh(
    txn: &WriteTransaction,
    digest: &TokenDigest,
    record: &RefreshRecord,
) -> Result<(), StoreError> {
    let bytes = codec::encode(record)?;
    let mut table = txn.open_table(tables::REFRESH_TOKENS)?;
    table.insert(digest.as_slice(), bytes.as_slice())?;
    Ok(())
}

/// Marks every live token matching `which` revoked; returns how many.
fn revoke_where(
    txn: &WriteTransaction,
    now: Millis,
    which: impl Fn(&RefreshRecord) -> bool,
) -> Result<usize, StoreError> {
    let mut table = txn.open_table(tables::REFRESH_TOKENS)?;
    let mut hits = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        let record: RefreshRecord = codec::decode(value.value())?;
        if record.revoked_at.is_none() && which(&record) {
            hits.push((key.value().to_vec(), record));
        }
    }
    for (key, mut record) in hits.iter().cloned() {
        record.revoked_at = Some(now);
        let bytes = codec::encode(&record)?;
        table.insert(key.as_slice(), bytes.as_slice())?;
    }
    Ok(hits.len())
}

/// Revokes every token of a family.
pub fn revoke_family(
    txn: &WriteTransaction,
    family: &str,
    now: Millis,
) -> Result<usize, StoreError> {
    revoke_where(txn, now, |r| r.family == family)
}

/// Revokes every token of a user (password change, TOTP re-enrolment, disabling).
pub fn revoke_user_tokens(
    txn: &WriteTransaction,
    username: &str,
    now: Millis,
) -> Result<usize, StoreError> {
    revoke_where(txn, now, |r| r.username == username)
}

/// The sessions revoked by a durable refresh-token revocation that must still be refused, with
/// the time (seconds) until which: a session token lives at most `max_access_ttl_secs` after
/// its family's revocation. Read at start, so a logout or a reuse revocation outlives a
/// restart (the session tokens themselves are never stored).
pub fn revoked_families(
    store: &Store,
    now: Millis,
    max_access_ttl_secs: i64,
) -> Result<HashMap<String, i64>, StoreError> {
    let txn = store.control_read()?;
    let table = txn.open_table(tables::REFRESH_TOKENS)?;
    let mut out = HashMap::new();
    for entry in table.iter()? {
        let (_, value) = entry?;
        let record: RefreshRecord = codec::decode(value.value())?;
        let Some(revoked_at) = record.revoked_at else {
            continue;
        };
        let until = (revoked_at / 1000).saturating_add(max_access_ttl_secs);
        if until > now / 1000 {
            let entry = out.entry(record.family).or_insert(until);
            *entry = (*entry).max(until);
        }
    }
    Ok(out)
}

/// Deletes records past their expiry (spent and revoked ones included); returns how many.
pub fn purge_expired(txn: &WriteTransaction, now: Millis) -> Result<usize, StoreError> {
    let mut table = txn.open_table(tables::REFRESH_TOKENS)?;
    let removed = table.extract_if(|_, value| {
        codec::decode::<RefreshRecord>(value).map_or(true, |r| r.expires_at <= now)
    })?;
    let mut count = 0;
    for entry in removed {
        entry?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn verifier() -> SessionVerifier {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]);
        let mut gates = Gates::default();
        gates.users.insert(
            "alice".into(),
            Gate {
                credential_version: 1,
                disabled: false,
            },
        );
        SessionVerifier::new(key, gates, Clock::manual(NOW * 1000).0)
    }

    /// The manual clocks' start, in seconds.
    const NOW: i64 = 1_700_000_000;

    fn claims(now: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            sid: "00112233445566778899aabbccddeeff".into(),
            iat: now,
            exp: now + 900,
            cv: 1,
        }
    }

    #[test]
    fn a_rotated_key_signs_and_the_previous_one_verifies_for_the_grace_period() {
        use crate::secrets::watch::{Change, Reload};
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_key(dir.path()).unwrap();
        let mut gates = Gates::default();
        gates.users.insert(
            "alice".into(),
            Gate {
                credential_version: 1,
                disabled: false,
            },
        );
        let (clock, _) = Clock::manual(NOW * 1000);
        let v = SessionVerifier::new(key, gates, clock);
        let reload = SessionKeyReload::new(v.clone(), dir.path()).unwrap();
        assert_eq!(reload.reload().unwrap(), Change::Unchanged);
        let now = NOW;
        let old = v.sign(&claims(now)).unwrap();
        // A malformed rewrite keeps the key.
        crate::secrets::write_private(&dir.path().join(KEY_FILE), b"nope").unwrap();
        assert!(reload.reload().is_err());
        assert!(v.verify(old.expose_secret(), now + 1).is_ok());
        crate::secrets::write_private(&dir.path().join(KEY_FILE), "ab".repeat(32).as_bytes())
            .unwrap();
        assert!(matches!(reload.reload().unwrap(), Change::Changed(_)));
        let new = v.sign(&claims(now)).unwrap();
        assert_ne!(new.expose_secret(), old.expose_secret());
        assert!(v.verify(new.expose_secret(), now + 1).is_ok());
        assert!(
            v.verify(old.expose_secret(), now + 1).is_ok(),
            "grace period"
        );
        // Past the grace period only the new key verifies.
        v.rotate_key(hmac::Key::new(hmac::HMAC_SHA256, &[9u8; 32]), now - 1);
        assert_eq!(
            v.verify(new.expose_secret(), now + 1),
            Err(SessionError::BadSignature)
        );
    }

    #[test]
    fn tokens_verify_and_tampering_is_refused() {
        let v = verifier();
        let now = 1_700_000_000;
        let token = v.sign(&claims(now)).unwrap();
        let text = token.expose_secret();
        assert!(text.starts_with(ACCESS_PREFIX));
        assert!(text.len() < 300, "{}", text.len());
        assert_eq!(v.verify(text, now + 10).unwrap(), claims(now));
        // Expired, and issued in the future.
        assert_eq!(v.verify(text, now + 900), Err(SessionError::Expired));
        assert_eq!(v.verify(text, now - 60), Err(SessionError::Expired));
        // Another key's token.
        let other = SessionVerifier::new(
            hmac::Key::new(hmac::HMAC_SHA256, &[8u8; 32]),
            Gates::default(),
            Clock::system(),
        );
        let forged = other.sign(&claims(now)).unwrap();
        assert_eq!(
            v.verify(forged.expose_secret(), now),
            Err(SessionError::BadSignature)
        );
        // Changed claims with the old tag.
        let (signed, tag) = text.rsplit_once('.').unwrap();
        let mut raised = claims(now);
        raised.exp = now + 3000;
        let raised_json = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&raised).unwrap());
        assert_eq!(
            v.verify(&format!("{ACCESS_PREFIX}{raised_json}.{tag}"), now),
            Err(SessionError::BadSignature)
        );
        // A flipped tag character, a missing tag, garbage.
        let mut flipped = tag.to_string();
        let last = flipped.pop().unwrap();
        flipped.push(if last == 'A' { 'B' } else { 'A' });
        assert!(v.verify(&format!("{signed}.{flipped}"), now).is_err());
        assert_eq!(v.verify(signed, now), Err(SessionError::Malformed));
        assert_eq!(v.verify("bws_", now), Err(SessionError::Malformed));
        assert_eq!(
            v.verify(&"bws_A".repeat(200), now),
            Err(SessionError::Malformed)
        );
        // A validly signed token longer than an hour is refused.
        let mut long = claims(now);
        long.exp = now + 3601;
        let long = v.sign(&long).unwrap();
        assert_eq!(
            v.verify(long.expose_secret(), now),
            Err(SessionError::Malformed)
        );
    }

    #[test]
    fn a_session_stands_until_it_is_revoked_or_its_user_disabled() {
        let v = verifier();
        assert!(v.stands("alice", "s1"));
        assert!(
            !v.stands("mallory", "s1"),
            "an unknown user's session never stands"
        );
        v.revoke_session("s1", 2_000_000_000);
        assert!(!v.stands("alice", "s1"));
        assert!(v.stands("alice", "s2"));
        v.publish_user(
            "alice",
            Gate {
                credential_version: 1,
                disabled: true,
            },
        );
        assert!(!v.stands("alice", "s2"));
    }

    #[test]
    fn gates_revoke_sessions_without_a_database() {
        let v = verifier();
        let now = 1_700_000_000;
        let token = v.sign(&claims(now)).unwrap();
        let text = token.expose_secret();
        v.publish_user(
            "alice",
            Gate {
                credential_version: 2,
                disabled: false,
            },
        );
        assert_eq!(v.verify(text, now), Err(SessionError::Revoked));
        v.publish_user(
            "alice",
            Gate {
                credential_version: 1,
                disabled: true,
            },
        );
        assert_eq!(v.verify(text, now), Err(SessionError::UnknownUser));
        v.publish_user(
            "alice",
            Gate {
                credential_version: 1,
                disabled: false,
            },
        );
        assert!(v.verify(text, now).is_ok());
        v.revoke_session(&claims(now).sid, now + 900);
        assert_eq!(v.verify(text, now), Err(SessionError::Revoked));
        v.prune(now + 901);
        assert!(v.gates.load().revoked.is_empty());
        let mut bob = claims(now);
        bob.sub = "bob".into();
        let bob = v.sign(&bob).unwrap();
        assert_eq!(
            v.verify(bob.expose_secret(), now),
            Err(SessionError::UnknownUser)
        );
    }

    #[test]
    fn refresh_tokens_have_a_shape_and_distinct_digests() {
        let (a, da) = new_refresh_token().unwrap();
        let (b, db) = new_refresh_token().unwrap();
        assert_ne!(da, db);
        assert_eq!(refresh_digest(&a), Some(da));
        assert_eq!(refresh_digest(&b), Some(db));
        for bad in [
            "",
            "bwr_",
            "bwr_short",
            &format!("bws_{}", "A".repeat(43)),
            &format!("bwr_{}!", "A".repeat(42)),
        ] {
            assert_eq!(
                refresh_digest(&SecretString::from(bad.to_string())),
                None,
                "{bad}"
            );
        }
        assert_eq!(new_family_id().unwrap().len(), 32);
        assert_eq!(display_family("0011223344556677"), "bws_00112233…");
    }

    #[test]
    fn refresh_decisions() {
        let gate = Some(Gate {
            credential_version: 1,
            disabled: false,
        });
        let fresh = RefreshRecord {
            family: "f".into(),
            username: "alice".into(),
            credential_version: 1,
            issued_at: 0,
            expires_at: 1000,
            used_at: None,
            revoked_at: None,
        };
        assert_eq!(decide(&fresh, 10, gate), Decision::Rotate);
        let used = RefreshRecord {
            used_at: Some(5),
            ..fresh.clone()
        };
        assert_eq!(decide(&used, 10, gate), Decision::Reuse);
        // Reuse is detected even after expiry: the family is still revoked.
        assert_eq!(decide(&used, 2000, gate), Decision::Reuse);
        let revoked = RefreshRecord {
            revoked_at: Some(5),
            ..used.clone()
        };
        assert!(matches!(decide(&revoked, 10, gate), Decision::Refuse(_)));
        assert!(matches!(decide(&fresh, 1000, gate), Decision::Refuse(_)));
        assert!(matches!(decide(&fresh, 10, None), Decision::Refuse(_)));
        let changed = Some(Gate {
            credential_version: 2,
            disabled: false,
        });
        assert!(matches!(decide(&fresh, 10, changed), Decision::Refuse(_)));
        let disabled = Some(Gate {
            credential_version: 1,
            disabled: true,
        });
        assert!(matches!(decide(&fresh, 10, disabled), Decision::Refuse(_)));
    }

    #[test]
    fn family_and_user_revocation_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let record = |family: &str, user: &str, expires_at| RefreshRecord {
            family: family.into(),
            username: user.into(),
            credential_version: 1,
            issued_at: 0,
            expires_at,
            used_at: None,
            revoked_at: None,
        };
        store
            .control_write(|txn| {
                put_refresh(txn, &[1; 32], &record("f1", "alice", 100)).unwrap();
                put_refresh(txn, &[2; 32], &record("f1", "alice", 100)).unwrap();
                put_refresh(txn, &[3; 32], &record("f2", "alice", 100)).unwrap();
                put_refresh(txn, &[4; 32], &record("f3", "bob", 10)).unwrap();
                assert_eq!(revoke_family(txn, "f1", 50).unwrap(), 2);
                assert_eq!(revoke_family(txn, "f1", 50).unwrap(), 0);
                assert!(get_refresh(txn, &[3; 32])
                    .unwrap()
                    .unwrap()
                    .revoked_at
                    .is_none());
                assert_eq!(revoke_user_tokens(txn, "alice", 60).unwrap(), 1);
                assert_eq!(
                    get_refresh(txn, &[1; 32]).unwrap().unwrap().revoked_at,
                    Some(50)
                );
                assert!(get_refresh(txn, &[4; 32])
                    .unwrap()
                    .unwrap()
                    .revoked_at
                    .is_none());
                assert_eq!(purge_expired(txn, 50).unwrap(), 1);
                assert!(get_refresh(txn, &[4; 32]).unwrap().is_none());
                assert!(get_refresh(txn, &[9; 32]).unwrap().is_none());
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_key(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create_key(dir.path()).unwrap();
        assert_eq!(hmac::sign(&a, b"x").as_ref(), hmac::sign(&b, b"x").as_ref());
        std::fs::set_permissions(
            dir.path().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(load_or_create_key(dir.path()).is_err());
    }
}
