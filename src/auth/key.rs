//! API key format, generation and hashing. Pure functions, no I/O.
//!
//! A key reads `bwk_<env>_<id>_<secret>`: `env` names the deployment (`live` by default), `id` is
//! a public 16-hex-digit identifier (the store looks up one record by it, and logs show it), and
//! `secret` is 32 random bytes in unpadded base64url (256 bits). Only an argon2id hash of the
//! whole key is stored.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};

/// The fixed prefix of every key.
pub const PREFIX: &str = "bwk";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
const SECRET_CHARS: usize = 43;

/// The parts of a presented key: the public id in clear, the whole key kept secret.
pub struct ParsedKey<'a> {
    pub env: &'a str,
    pub id: &'a str,
}

/// Splits a presented key, checking its shape. Returns `None` for anything malformed.
#[must_use]
pub fn parse(token: &str) -> Option<ParsedKey<'_>> {
    let mut parts = token.splitn(4, '_');
    if parts.next()? != PREFIX {
        return None;
    }
    let env = parts.next()?;
    let id = parts.next()?;
    let secret = parts.next()?;
    let env_ok = (1..=16).contains(&env.len())
        && env
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let id_ok =
        id.len() == ID_BYTES * 2 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let secret_ok = secret.len() == SECRET_CHARS
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (env_ok && id_ok && secret_ok).then_some(ParsedKey { env, id })
}

/// A freshly generated key: its public id and the whole key, to be shown once.
pub struct NewKey {
    pub id: String,
    pub token: SecretString,
}

/// Generates a key for `env`.
pub fn generate(env: &str) -> Result<NewKey, ring::error::Unspecified> {
    let rng = SystemRandom::new();
    let mut id = [0u8; ID_BYTES];
    rng.fill(&mut id)?;
    let mut secret = zeroize::Zeroizing::new([0u8; SECRET_BYTES]);
    rng.fill(secret.as_mut())?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let token = format!(
        "{PREFIX}_{env}_{id}_{}",
        URL_SAFE_NO_PAD.encode(secret.as_ref())
    );
    Ok(NewKey {
        id,
        token: SecretString::from(token),
    })
}

/// The argon2id (OWASP parameters: 19 MiB, t=2, p=1) PHC string of a key. Slow by design: call
/// it off the async threads.
pub fn hash(token: &SecretString) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| argon2::password_hash::Error::Crypto)?;
    let phc = Argon2::default().hash_password_with_salt(token.expose_secret().as_bytes(), &salt)?;
    Ok(phc.to_string())
}

/// Checks a presented key against a stored PHC string. Slow by design.
#[must_use]
pub fn verify(token: &SecretString, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(token.expose_secret().as_bytes(), &parsed)
        .is_ok()
}

/// How a key appears in logs: `bwk_…<last four of the id>`.
#[must_use]
pub fn display_id(id: &str) -> String {
    let tail = id.get(id.len().saturating_sub(4)..).unwrap_or("");
    format!("{PREFIX}_…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_verify() {
        let key = generate("live").unwrap();
        let parsed = parse(key.token.expose_secret()).unwrap();
        assert_eq!(parsed.id, key.id);
        assert_eq!(parsed.env, "live");
        let phc = hash(&key.token).unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify(&key.token, &phc));
        let other = generate("live").unwrap();
        assert!(!verify(&other.token, &phc));
        assert!(!verify(&key.token, "not a phc string"));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let key = generate("live").unwrap();
        let good = key.token.expose_secret().to_string();
        for bad in [
            String::new(),
            "bwk".into(),
            good.replacen("bwk", "xyz", 1),
            good[..good.len() - 1].to_string(),
            format!("{good}A"),
            good.replace("live", "LIVE"),
            "bwk_live_0123456789abcdeg_".to_string() + &"A".repeat(43),
            "bwk_live_0123456789abcdef_".to_string() + &"A".repeat(42) + "!",
        ] {
            assert!(parse(&bad).is_none(), "{bad}");
        }
        assert!(
            parse(&("bwk_live_0123456789abcdef_".to_string() + &"A_-".repeat(14) + "z")).is_some()
        );
    }

    #[test]
    fn display_id_truncates() {
        assert_eq!(display_id("0123456789abcdef"), "bwk_…cdef");
    }
}
