//! JWT bearer-token verification on ring (RFC 7519, with RFC 8725's best practices).
//!
//! [`JwtVerifier::load`] reads the configured key set once ([`JwtConfig`], `[auth.jwt]`) and
//! validates every key; the verifier is immutable afterwards, so a hot reload builds a new one
//! and swaps it in whole. [`JwtVerifier::verify`] checks one token against it: size cap before
//! any decoding, strict base64url, JSON with duplicate keys refused, the algorithm taken from
//! the configured key named by `kid` (never from the token), the signature before any claim,
//! then `exp`/`nbf`/`iat` with a small leeway, `iss`, `aud`, lifetime and the identity claims.
//!
//! Pure: no I/O besides reading key files at load, no clock (the caller passes `now`), no
//! logging. The HTTP auth extractor routes bearer tokens here with [`looks_like_jwt`].

mod der;
mod error;
pub(crate) mod json;
mod keys;
#[cfg(test)]
mod known_answers;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use error::JwtError;

use keys::VerifyingKey;

/// Largest leeway the configuration may ask for, in seconds.
pub const MAX_LEEWAY_SECS: u64 = 30;
/// Longest token lifetime (`exp - iat`) the configuration may allow, in seconds.
pub const MAX_LIFETIME_SECS: u64 = 3600;
/// Bounds on `max_token_bytes`.
const TOKEN_BYTES_RANGE: std::ops::RangeInclusive<usize> = 256..=65536;
/// Latest accepted NumericDate: 9999-12-31T23:59:59Z.
const MAX_NUMERIC_DATE: u64 = 253_402_300_799;
/// Longest subject, tenant, `jti` and `kid`, in characters.
const MAX_ID_CHARS: usize = 256;
/// Longest role or queue name, in characters.
const MAX_NAME_CHARS: usize = 128;
const MAX_ROLES: usize = 64;
const MAX_QUEUES: usize = 256;
/// Header parameters we refuse outright: `crit` demands extensions we do not implement, and
/// the others point at keys chosen by the token's author (RFC 8725 §3.10).
const FORBIDDEN_HEADERS: [&str; 5] = ["crit", "jku", "x5u", "jwk", "x5c"];
/// Registered claims the configurable claim names may not take.
const REGISTERED_CLAIMS: [&str; 6] = ["exp", "nbf", "iat", "iss", "aud", "jti"];

/// A signature algorithm. Each configured key is pinned to exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048 to 8192-bit keys.
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// HMAC-SHA256 with a shared secret of at least 32 bytes.
    #[serde(rename = "HS256")]
    Hs256,
}

impl Alg {
    /// The JOSE name, as it appears in a token header's `alg`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
            Self::Hs256 => "HS256",
        }
    }
}

/// How an HS256 secret file is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretEncoding {
    /// The file's bytes exactly, with no newline trimming.
    Raw,
    /// Base64 (standard or URL-safe alphabet, padded or not), surrounding whitespace ignored.
    Base64,
}

/// One configured verification key (`[[auth.jwt.keys]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The `kid` tokens name this key by.
    pub kid: String,
    /// The only algorithm this key verifies.
    pub alg: Alg,
    /// RS256, ES256, EdDSA: a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`).
    /// HS256: a secret file of at least 32 bytes. Relative paths resolve against the secrets
    /// folder.
    pub file: PathBuf,
    /// HS256 only, and required there: whether the secret file is `raw` or `base64`. Explicit
    /// because guessing misreads common secrets (a hex string is also valid base64).
    pub encoding: Option<SecretEncoding>,
}

/// `[auth.jwt]`: who may issue tokens to us and with which keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss` value. Must be set.
    pub issuer: String,
    /// Audience that `aud` must contain. Must be set.
    pub audience: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds (default 30, at most 30).
    pub leeway_secs: u64,
    /// Longest allowed `exp - iat`, in seconds (default 3600, at most 3600).
    pub max_lifetime_secs: u64,
    /// Longer tokens are refused before decoding (default 8192).
    pub max_token_bytes: usize,
    /// Claim holding the caller's identity (default `sub`).
    pub subject_claim: String,
    /// Claim holding the caller's tenant (default `tenant`); optional in tokens.
    pub tenant_claim: String,
    /// Claim holding the caller's roles, a string or an array of strings (default `roles`).
    pub roles_claim: String,
    /// Claim holding the queues the caller may use, an array of strings (default `queues`).
    pub queues_claim: String,
    /// Keys from individual files.
    pub keys: Vec<KeyEntry>,
    /// JWKS files (RFC 7517) holding public keys, each with a `kid`.
    pub jwks_files: Vec<PathBuf>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 30,
            max_lifetime_secs: 3600,
            max_token_bytes: 8192,
            subject_claim: "sub".into(),
            tenant_claim: "tenant".into(),
            roles_claim: "roles".into(),
            queues_claim: "queues".into(),
            keys: Vec::new(),
            jwks_files: Vec::new(),
        }
    }
}

fn config_error(message: impl Into<String>) -> JwtError {
    JwtError::Config(message.into())
}

/// Whether `s` is an acceptable identifier: non-empty, at most `max` characters, no control
/// characters (they would reach logs).
fn valid_text(s: &str, max: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

fn valid_kid(kid: &str) -> bool {
    valid_text(kid, MAX_ID_CHARS)
}

impl JwtConfig {
    /// Checks the settings without reading any file. [`JwtVerifier::load`] calls it first.
    pub fn validate(&self) -> Result<(), JwtError> {
        if self.issuer.trim().is_empty() {
            return Err(config_error("issuer must be set"));
        }
        if self.audience.trim().is_empty() {
            return Err(config_error("audience must be set"));
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(config_error(format!(
                "leeway_secs must be at most {MAX_LEEWAY_SECS}"
            )));
        }
        if !(1..=MAX_LIFETIME_SECS).contains(&self.max_lifetime_secs) {
            return Err(config_error(format!(
                "max_lifetime_secs must be between 1 and {MAX_LIFETIME_SECS}"
            )));
        }
        if !TOKEN_BYTES_RANGE.contains(&self.max_token_bytes) {
            return Err(config_error(format!(
                "max_token_bytes must be between {} and {}",
                TOKEN_BYTES_RANGE.start(),
                TOKEN_BYTES_RANGE.end()
            )));
        }
        let names = [
            ("subject_claim", &self.subject_claim),
            ("tenant_claim", &self.tenant_claim),
            ("roles_claim", &self.roles_claim),
            ("queues_claim", &self.queues_claim),
        ];
        for (i, (setting, name)) in names.iter().enumerate() {
            if !valid_text(name, 64) {
                return Err(config_error(format!(
                    "{setting} must be a non-empty claim name of at most 64 characters"
                )));
            }
            if REGISTERED_CLAIMS.contains(&name.as_str()) {
                return Err(config_error(format!(
                    "{setting} cannot be the registered claim {name:?}"
                )));
            }
            if names[..i].iter().any(|(_, other)| other == name) {
                return Err(config_error(format!(
                    "{setting} repeats the claim name {name:?}"
                )));
            }
        }
        if self.keys.is_empty() && self.jwks_files.is_empty() {
            return Err(config_error("no keys: set keys or jwks_files"));
        }
        for entry in &self.keys {
            if !valid_kid(&entry.kid) {
                return Err(config_error(
                    "every key needs a kid: non-empty, at most 256 characters",
                ));
            }
            match (entry.alg, entry.encoding) {
                (Alg::Hs256, None) => {
                    return Err(config_error(format!(
                        "key {:?}: HS256 needs encoding = \"raw\" or \"base64\"",
                        entry.kid
                    )))
                }
                (Alg::Rs256 | Alg::Es256 | Alg::EdDsa, Some(_)) => {
                    return Err(config_error(format!(
                        "key {:?}: encoding applies to HS256 secret files only",
                        entry.kid
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The claim names a verifier reads identities from.
#[derive(Debug)]
struct ClaimNames {
    subject: String,
    tenant: String,
    roles: String,
    queues: String,
}

/// Verifies bearer JWTs against a fixed key set. Immutable once built: share it behind an
/// `Arc` and replace it whole on reload.
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    leeway_secs: u64,
    max_lifetime_secs: u64,
    max_token_bytes: usize,
    claims: ClaimNames,
    keys: HashMap<String, Arc<VerifyingKey>>,
    /// Shared (HS256) secrets this set replaced at a reload, by `kid`, with the time (Unix
    /// seconds) until which they still verify: tokens signed just before a rotation stay valid
    /// for their lifetime (dual-read).
    previous: HashMap<String, (Arc<VerifyingKey>, u64)>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("max_lifetime_secs", &self.max_lifetime_secs)
            .field("max_token_bytes", &self.max_token_bytes)
            .field("claims", &self.claims)
            .field("keys", &self.key_ids())
            .finish()
    }
}

/// What a verified token says about its bearer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The subject claim: non-empty, at most 256 characters.
    pub subject: String,
    /// The tenant claim, if present.
    pub tenant: Option<String>,
    /// The roles claim; empty when absent. Names are not interpreted here.
    pub roles: Vec<String>,
    /// The queues claim; `None` when absent, which is not the same as an empty list.
    pub queues: Option<Vec<String>>,
    /// The key that verified the token.
    pub kid: String,
    /// `iat`, seconds since the epoch.
    pub issued_at: u64,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// `jti`, if present (for replay tracking by the caller).
    pub jti: Option<String>,
}

/// Re-reads the JWT verification keys (key files and JWKS files) when their folders change
/// (see [`crate::secrets::watch`]) and publishes a new verifier; a set that fails to load (a
/// malformed, half-written or exposed file, a weak key, a duplicate `kid`) changes nothing.
pub struct JwtReload {
    pub slot: std::sync::Arc<arc_swap::ArcSwap<JwtVerifier>>,
    pub config: JwtConfig,
    pub base_dir: PathBuf,
    digest: std::sync::Mutex<[u8; 32]>,
    /// Where the grace period of replaced shared secrets starts.
    clock: crate::clock::Clock,
}

impl JwtReload {
    /// Watches the files of `config` (read again now to remember them); grace periods run on
    /// `clock`.
    #[must_use]
    pub fn new(
        slot: std::sync::Arc<arc_swap::ArcSwap<JwtVerifier>>,
        config: JwtConfig,
        base_dir: PathBuf,
        clock: crate::clock::Clock,
    ) -> Self {
        let digest = files_digest(&config, &base_dir);
        Self {
            slot,
            config,
            base_dir,
            digest: std::sync::Mutex::new(digest),
            clock,
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        key_files(&self.config, &self.base_dir)
    }
}

fn key_files(config: &JwtConfig, base_dir: &Path) -> Vec<PathBuf> {
    config
        .keys
        .iter()
        .map(|k| resolve(base_dir, &k.file))
        .chain(config.jwks_files.iter().map(|f| resolve(base_dir, f)))
        .collect()
}

/// A digest of every key file's path and bytes (unreadable files count as empty).
fn files_digest(config: &JwtConfig, base_dir: &Path) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for path in key_files(config, base_dir) {
        ctx.update(path.as_os_str().as_encoded_bytes());
        let bytes = zeroize::Zeroizing::new(std::fs::read(&path).unwrap_or_default());
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(&bytes);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl crate::secrets::watch::Reload for JwtReload {
    fn name(&self) -> &'static str {
        "jwt_keys"
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .files()
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn reload(&self) -> Result<crate::secrets::watch::Change, crate::secrets::watch::ReloadError> {
        use crate::secrets::watch::{Change, ReloadError};
        let digest = files_digest(&self.config, &self.base_dir);
        let mut known = self
            .digest
            .lock()
            .map_err(|_| ReloadError("jwt key state poisoned".into()))?;
        if digest == *known {
            return Ok(Change::Unchanged);
        }
        let mut verifier = JwtVerifier::load(&self.config, &self.base_dir)
            .map_err(|e| ReloadError(e.to_string()))?;
        // Dual-read for shared secrets: the HS256 keys being replaced keep verifying for the
        // longest token lifetime (and the leeway), as do earlier ones still in their grace.
        let now = u64::try_from(self.clock.now_secs()).unwrap_or(0);
        let until = now + verifier.max_lifetime_secs + verifier.leeway_secs;
        let current = self.slot.load_full();
        for (kid, key) in &current.keys {
            if key.alg() == Alg::Hs256 && verifier.keys.contains_key(kid) {
                verifier
                    .previous
                    .insert(kid.clone(), (Arc::clone(key), until));
            }
        }
        for (kid, entry) in &current.previous {
            if entry.1 >= now && verifier.keys.contains_key(kid) {
                verifier
                    .previous
                    .entry(kid.clone())
                    .or_insert_with(|| entry.clone());
            }
        }
        let kids: Vec<String> = verifier.keys.keys().cloned().collect();
        self.slot.store(std::sync::Arc::new(verifier));
        *known = digest;
        Ok(Change::Changed(format!("keys [{}]", kids.join(", "))))
    }
}

fn resolve(base_dir: &Path, file: &Path) -> PathBuf {
    if file.is_absolute() {
        file.to_path_buf()
    } else {
        base_dir.join(file)
    }
}

impl JwtVerifier {
    /// Validates `config` and loads every key: individual files first, then JWKS files.
    /// Relative paths resolve against `base_dir` (the secrets folder). Fails on the first bad
    /// setting, unreadable or malformed file, weak key (RSA under 2048 bits, HS256 secret under
    /// 32 bytes) or duplicate `kid`.
    pub fn load(config: &JwtConfig, base_dir: &Path) -> Result<Self, JwtError> {
        config.validate()?;
        let mut keys = HashMap::new();
        let mut insert = |kid: String, key: VerifyingKey| {
            if keys.contains_key(&kid) {
                return Err(JwtError::DuplicateKeyId(kid));
            }
            keys.insert(kid, Arc::new(key));
            Ok(())
        };
        for entry in &config.keys {
            let path = resolve(base_dir, &entry.file);
            let key = match (entry.alg, entry.encoding) {
                (Alg::Hs256, Some(encoding)) => keys::load_hmac_secret(&path, encoding)?,
                // `validate` has refused HS256 without an encoding.
                (Alg::Hs256, None) => {
                    return Err(config_error("HS256 needs encoding = \"raw\" or \"base64\""))
                }
                (alg, _) => keys::load_public_pem(&path, alg)?,
            };
            insert(entry.kid.clone(), key)?;
        }
        for file in &config.jwks_files {
            for (kid, key) in keys::load_jwks(&resolve(base_dir, file))? {
                insert(kid, key)?;
            }
        }
        Ok(Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_secs: config.leeway_secs,
            max_lifetime_secs: config.max_lifetime_secs,
            max_token_bytes: config.max_token_bytes,
            claims: ClaimNames {
                subject: config.subject_claim.clone(),
                tenant: config.tenant_claim.clone(),
                roles: config.roles_claim.clone(),
                queues: config.queues_claim.clone(),
            },
            keys,
            previous: HashMap::new(),
        })
    }

    /// The loaded key ids with their algorithms, sorted by id (for logs and `check-config`).
    #[must_use]
    pub fn key_ids(&self) -> Vec<(&str, Alg)> {
        let mut ids: Vec<_> = self
            .keys
            .iter()
            .map(|(kid, key)| (kid.as_str(), key.alg()))
            .collect();
        ids.sort_unstable_by_key(|(kid, _)| *kid);
        ids
    }

    /// Verifies `token` at `now_secs` (seconds since the epoch) and returns what it says about
    /// its bearer. The signature is checked before any claim is read.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<VerifiedToken, JwtError> {
        if token.len() > self.max_token_bytes {
            return Err(JwtError::TooLarge);
        }
        let (signing_input, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
        let (header, payload) = signing_input.split_once('.').ok_or(JwtError::Malformed)?;
        // Alphabet only, no decoding yet: garbage is refused as malformed without any crypto.
        // An empty signature passes here so an unsigned `alg: none` token is reported as such.
        if header.is_empty()
            || payload.is_empty()
            || payload.contains('.')
            || ![header, payload, signature].into_iter().all(is_base64url)
        {
            return Err(JwtError::Malformed);
        }

        let header = json::parse_object(&decode_segment(header)?).ok_or(JwtError::Malformed)?;
        let key_id = self.check_header(&header)?;
        let key = self.keys.get(key_id).ok_or(JwtError::UnknownKey)?;
        match header.get("alg") {
            Some(Value::String(alg)) if alg == key.alg().as_str() => {}
            _ => return Err(JwtError::AlgorithmMismatch),
        }
        let signature = decode_segment(signature)?;
        if !key.verify(signing_input.as_bytes(), &signature) {
            // A shared secret replaced by a reload still verifies until its grace ends.
            let previous = self.previous.get(key_id).filter(|(old, until)| {
                now_secs <= *until
                    && old.alg() == key.alg()
                    && old.verify(signing_input.as_bytes(), &signature)
            });
            if previous.is_none() {
                return Err(JwtError::BadSignature);
            }
        }

        let claims = json::parse_object(&decode_segment(payload)?).ok_or(JwtError::Malformed)?;
        self.check_claims(&claims, key_id, now_secs)
    }

    /// Checks the header's own rules and returns its `kid`. `alg` is matched against the key
    /// by the caller.
    fn check_header<'h>(&self, header: &'h Map<String, Value>) -> Result<&'h str, JwtError> {
        match header.get("alg") {
            Some(Value::String(alg)) if alg.eq_ignore_ascii_case("none") => {
                return Err(JwtError::AlgorithmNone)
            }
            Some(Value::String(_)) => {}
            _ => return Err(JwtError::BadHeader("alg")),
        }
        if let Some(name) = FORBIDDEN_HEADERS.iter().find(|h| header.contains_key(**h)) {
            return Err(JwtError::ForbiddenHeader(name));
        }
        match header.get("typ") {
            None => {}
            // RFC 7515 §4.1.9: the `application/` prefix may be omitted; compare without case.
            Some(Value::String(typ)) if is_accepted_typ(typ) => {}
            Some(_) => return Err(JwtError::BadHeader("typ")),
        }
        match header.get("kid") {
            Some(Value::String(kid)) => Ok(kid),
            Some(_) => Err(JwtError::BadHeader("kid")),
            None => Err(JwtError::MissingKeyId),
        }
    }

    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        kid: &str,
        now: u64,
    ) -> Result<VerifiedToken, JwtError> {
        let exp = numeric_date(claims, "exp")?;
        let nbf = numeric_date(claims, "nbf")?;
        let iat = numeric_date(claims, "iat")?;

        match claims.get("iss") {
            Some(Value::String(iss)) if *iss == self.issuer => {}
            Some(Value::String(_)) => return Err(JwtError::WrongIssuer),
            Some(_) => return Err(JwtError::BadClaim("iss")),
            None => return Err(JwtError::MissingClaim("iss")),
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.audience,
            Some(Value::Array(auds)) => {
                let mut found = false;
                for aud in auds {
                    match aud {
                        Value::String(aud) => found |= *aud == self.audience,
                        _ => return Err(JwtError::BadClaim("aud")),
                    }
                }
                found
            }
            Some(_) => return Err(JwtError::BadClaim("aud")),
            None => return Err(JwtError::MissingClaim("aud")),
        };
        if !audience_ok {
            return Err(JwtError::WrongAudience);
        }

        // exp > now - leeway, written without subtraction.
        if exp.saturating_add(self.leeway_secs) <= now {
            return Err(JwtError::Expired);
        }
        let latest = now.saturating_add(self.leeway_secs);
        if nbf > latest {
            return Err(JwtError::NotYetValid);
        }
        if iat > latest {
            return Err(JwtError::IssuedInFuture);
        }
        if exp < iat {
            return Err(JwtError::BadClaim("exp"));
        }
        if nbf > exp {
            return Err(JwtError::BadClaim("nbf"));
        }
        if exp - iat > self.max_lifetime_secs {
            return Err(JwtError::LifetimeTooLong);
        }

        let subject = match claims.get(&self.claims.subject) {
            Some(Value::String(s)) if valid_text(s, MAX_ID_CHARS) => s.clone(),
            Some(_) => return Err(JwtError::BadClaim("subject")),
            None => return Err(JwtError::MissingClaim("subject")),
        };
        let tenant = optional_text(claims, &self.claims.tenant, "tenant")?;
        let jti = optional_text(claims, "jti", "jti")?;
        let roles = name_list(claims, &self.claims.roles, MAX_ROLES, "roles")?.unwrap_or_default();
        let queues = name_list(claims, &self.claims.queues, MAX_QUEUES, "queues")?;

        Ok(VerifiedToken {
            subject,
            tenant,
            roles,
            queues,
            kid: kid.to_owned(),
            issued_at: iat,
            expires_at: exp,
            jti,
        })
    }
}

fn is_accepted_typ(typ: &str) -> bool {
    let typ = typ
        .get(..12)
        .filter(|prefix| prefix.eq_ignore_ascii_case("application/"))
        .and_then(|_| typ.get(12..))
        .unwrap_or(typ);
    typ.eq_ignore_ascii_case("jwt") || typ.eq_ignore_ascii_case("at+jwt")
}

/// Whether every character of `segment` is in the base64url alphabet (no padding).
fn is_base64url(segment: &str) -> bool {
    segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Decodes one token segment: non-empty, base64url alphabet only, no padding, canonical.
fn decode_segment(segment: &str) -> Result<Vec<u8>, JwtError> {
    if segment.is_empty() || !is_base64url(segment) {
        return Err(JwtError::Malformed);
    }
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Malformed)
}

/// A required NumericDate: a non-negative whole number of seconds (JSON integers, or numbers
/// like `1.7e9` that are whole) no later than year 9999.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<u64, JwtError> {
    let Some(value) = claims.get(name) else {
        return Err(JwtError::MissingClaim(name));
    };
    let Value::Number(number) = value else {
        return Err(JwtError::BadClaim(name));
    };
    let seconds = if let Some(seconds) = number.as_u64() {
        seconds
    } else {
        match number.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= MAX_NUMERIC_DATE as f64 => f as u64,
            _ => return Err(JwtError::BadClaim(name)),
        }
    };
    if seconds > MAX_NUMERIC_DATE {
        return Err(JwtError::BadClaim(name));
    }
    Ok(seconds)
}

/// An optional identifier claim: absent, or a valid string.
fn optional_text(
    claims: &Map<String, Value>,
    name: &str,
    label: &'static str,
) -> Result<Option<String>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if valid_text(s, MAX_ID_CHARS) => Ok(Some(s.clone())),
        Some(_) => Err(JwtError::BadClaim(label)),
    }
}

/// An optional list of names: a single string or an array of strings, each non-empty, without
/// whitespace or control characters, at most [`MAX_NAME_CHARS`] long.
fn name_list(
    claims: &Map<String, Value>,
    name: &str,
    max_items: usize,
    label: &'static str,
) -> Result<Option<Vec<String>>, JwtError> {
    let valid_name = |s: &str| valid_text(s, MAX_NAME_CHARS) && !s.chars().any(char::is_whitespace);
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if valid_name(s) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(items)) if items.len() <= max_items => items
            .iter()
            .map(|item| match item {
                Value::String(s) if valid_name(s) => Ok(s.clone()),
                _ => Err(JwtError::BadClaim(label)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(JwtError::BadClaim(label)),
    }
}

/// The `(kid, alg)` of every signing key in a JWKS document, or why the document is refused:
/// what [`JwtVerifier::load`] does with a JWKS file's bytes, without the file (the fuzz
/// targets call it).
pub fn jwks_key_ids(bytes: &[u8]) -> Result<Vec<(String, Alg)>, String> {
    keys::parse_jwks(bytes).map(|keys| {
        keys.into_iter()
            .map(|(kid, key)| (kid, key.alg()))
            .collect()
    })
}

/// Whether a bearer token is shaped like a compact JWS (three dot-separated segments, the
/// first starting `eyJ`, which is base64url for `{"`), so the auth extractor can route it here
/// rather than to API-key parsing. A cheap shape test, not validation.
#[must_use]
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|&b| b == b'.').count() == 2
}
