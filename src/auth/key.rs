//! API key format, generation and hashing. Pure functions, no I/O.
//!
//! A key reads `bwk_<env>_<id>_<secret>`: `env` names the deployment (`live` by default), `id` is
//! a public 16-hex-digit identifier (the store looks up one record by it, and logs show it), and
//! `secret` is 32 random bytes in unpadded base64url (256 bits). Only an argon2id hash of the
//! whole key is stored.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

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

/// Most argon2 memory a stored hash may ask for (64 MiB); ours use 19 MiB.
const MAX_M_COST: u32 = 64 * 1024;

/// Checks presented keys against stored PHC strings, reusing one argon2 working memory (19 MiB)
/// for its whole life: a fixed set of verifiers bounds memory by construction, where allocating
/// per verification lets the allocator keep every freed buffer.
pub struct Verifier {
    blocks: Vec<Block>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    #[must_use]
    pub fn new() -> Self {
        Self { blocks: Vec::new() }
    }

    /// Whether `token` matches `phc` (argon2id v19 only). Slow by design; the comparison of the
    /// derived hash is constant-time, and the working memory is wiped afterwards.
    pub fn verify(&mut self, token: &SecretString, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
            return false;
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return false;
        };
        if parsed.algorithm.as_str() != "argon2id"
            || parsed.version.is_some_and(|v| v != 0x13)
            || params.m_cost() > MAX_M_COST
        {
            return false;
        }
        let needed = params.block_count();
        if self.blocks.len() < needed {
            self.blocks.resize(needed, Block::default());
        }
        let mut out = Zeroizing::new(vec![0u8; expected.as_bytes().len()]);
        let memory = &mut self.blocks[..needed];
        let computed = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into_with_memory(
                token.expose_secret().as_bytes(),
                salt.as_ref(),
                &mut out,
                &mut *memory,
            )
            .is_ok();
        memory.iter_mut().for_each(Zeroize::zeroize);
        computed && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
    }
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
        let other = generate("live").unwrap();
        // One verifier, reused, keeps giving the right answers.
        let mut verifier = Verifier::new();
        assert!(!verifier.verify(&key.token, "not a phc string"));
        for _ in 0..2 {
            assert!(verifier.verify(&key.token, &phc));
            assert!(!verifier.verify(&other.token, &phc));
        }
        // Only argon2id is accepted.
        let argon2i = phc.replacen("$argon2id$", "$argon2i$", 1);
        assert!(!verifier.verify(&key.token, &argon2i));
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
