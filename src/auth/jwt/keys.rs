//! Verification keys: loading them from PEM files, shared-secret files and JWKS files, and
//! checking a signature with ring.
//!
//! Every key is validated when it is loaded (type, size, encoding) so that a bad file fails at
//! startup or reload, naming the file, rather than turning every request into a bad signature.
//! Messages use fixed words: no key bytes, and no text quoted from a key file.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use ring::{agreement, hmac, signature};
use rustls_pki_types::pem::{self, PemObject, SectionKind};
use secrecy::{ExposeSecret, SecretSlice};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::der::{self, SpkiKey};
use super::error::JwtError;
use super::json;
use super::{Alg, SecretEncoding};

/// Largest key file we read (a JWKS with many RSA-8192 keys fits easily).
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;
/// Shortest HS256 secret: the hash output size (RFC 7518 §3.2).
const MIN_HMAC_SECRET_BYTES: usize = 32;
/// RSA modulus bounds, as `RSA_PKCS1_2048_8192_SHA256` enforces at verification.
const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;
/// Largest public exponent ring accepts.
const MAX_RSA_EXPONENT: u64 = (1 << 33) - 1;

/// JWK members that only private or symmetric keys carry.
const PRIVATE_JWK_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Key bytes ready for ring.
enum Material {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8>, bits: usize },
    /// Uncompressed P-256 point.
    P256(Vec<u8>),
    /// Ed25519 public key.
    Ed25519(Vec<u8>),
    /// HS256 shared secret; zeroized on drop.
    Hmac(SecretSlice<u8>),
}

/// One configured key and the only algorithm it may be used with.
pub(super) struct VerifyingKey {
    alg: Alg,
    material: Material,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("VerifyingKey");
        d.field("alg", &self.alg);
        match &self.material {
            Material::Rsa { bits, .. } => d.field("rsa_bits", bits),
            Material::P256(_) => d.field("curve", &"P-256"),
            Material::Ed25519(_) => d.field("curve", &"Ed25519"),
            Material::Hmac(_) => d.field("secret", &"[redacted]"),
        };
        d.finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// The algorithm this key is pinned to.
    pub(super) fn alg(&self) -> Alg {
        self.alg
    }

    /// Whether `signature` is a valid signature of `message` under this key and its algorithm.
    pub(super) fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Rsa { n, e, .. } => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            Material::P256(point) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            Material::Ed25519(key) => signature::UnparsedPublicKey::new(&signature::ED25519, key)
                .verify(message, sig)
                .is_ok(),
            Material::Hmac(secret) => {
                // Built per call so the only long-lived copy of the secret is the zeroizing one;
                // `hmac::verify` compares in constant time.
                let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret());
                hmac::verify(&key, message, sig).is_ok()
            }
        }
    }
}

fn file_error(path: &Path, reason: impl Into<String>) -> JwtError {
    JwtError::KeyFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads a whole key file, refusing anything over [`MAX_KEY_FILE_BYTES`]. The buffer is wiped
/// on drop because it may hold a shared secret.
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, JwtError> {
    let io_error = |e: std::io::Error| file_error(path, format!("cannot read: {}", e.kind()));
    let file = File::open(path).map_err(io_error)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(file_error(path, "larger than 1 MiB"));
    }
    Ok(bytes)
}

/// Loads a PEM SubjectPublicKeyInfo for `alg` (RS256, ES256 or EdDSA).
pub(super) fn load_public_pem(path: &Path, alg: Alg) -> Result<VerifyingKey, JwtError> {
    let bytes = read_key_file(path)?;
    // Exactly one section, and it must be a public key: a private key or a certificate in a
    // verification key file is a mistake worth stopping for.
    let mut sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes);
    let der = match (sections.next(), sections.next()) {
        (Some(Ok((SectionKind::PublicKey, der))), None) => der,
        (Some(Ok(_)), None) => {
            return Err(file_error(
                path,
                "expected a PUBLIC KEY block (private keys and certificates are refused)",
            ))
        }
        (None, _) | (Some(Err(pem::Error::NoItemsFound)), _) => {
            return Err(file_error(path, "no PUBLIC KEY block"))
        }
        (Some(Ok(_)), Some(_)) => {
            return Err(file_error(
                path,
                "more than one PEM block (one key per file)",
            ))
        }
        // pki-types error texts can quote file content; keep ours fixed.
        (Some(Err(_)), _) => return Err(file_error(path, "malformed PEM")),
    };
    let reject = |reason: &str| file_error(path, format!("bad public key: {reason}"));
    let material = match (alg, der::parse_spki(&der).map_err(reject)?) {
        (Alg::Rs256, SpkiKey::Rsa(pkcs1)) => {
            let (n, e) = der::parse_rsa_public_key(pkcs1).map_err(reject)?;
            rsa_material(n, e).map_err(reject)?
        }
        (Alg::Es256, SpkiKey::P256(point)) => p256_point_material(point).map_err(reject)?,
        (Alg::EdDsa, SpkiKey::Ed25519(key)) => Material::Ed25519(key.to_vec()),
        (Alg::Hs256, _) => return Err(reject("HS256 takes a secret file, not a public key")),
        (_, found) => {
            let found = match found {
                SpkiKey::Rsa(_) => "an RSA key",
                SpkiKey::P256(_) => "a P-256 key",
                SpkiKey::Ed25519(_) => "an Ed25519 key",
            };
            return Err(file_error(
                path,
                format!("holds {found}, which cannot be used with {}", alg.as_str()),
            ));
        }
    };
    Ok(VerifyingKey { alg, material })
}

/// Whether `point` is an uncompressed point on P-256. ring checks points only when they are
/// used, so one throwaway ECDH agreement does the check at load (ring validates the peer point
/// before agreeing).
fn p256_point_material(point: &[u8]) -> Result<Material, &'static str> {
    let rng = ring::rand::SystemRandom::new();
    let valid = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
        .and_then(|ours| {
            let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, point);
            agreement::agree_ephemeral(ours, &peer, |_| ())
        })
        .is_ok();
    if valid {
        Ok(Material::P256(point.to_vec()))
    } else {
        Err("not a point on the P-256 curve")
    }
}

/// Checks an RSA modulus and exponent the way ring will at verification time, so a bad key
/// fails at load.
fn rsa_material(n: &[u8], e: &[u8]) -> Result<Material, &'static str> {
    let n = strip_leading_zeros(n);
    let e = strip_leading_zeros(e);
    let Some(&top) = n.first() else {
        return Err("RSA modulus is zero");
    };
    let bits = n.len() * 8 - top.leading_zeros() as usize;
    if bits < MIN_RSA_BITS {
        return Err("RSA modulus is shorter than 2048 bits");
    }
    if bits > MAX_RSA_BITS {
        return Err("RSA modulus is longer than 8192 bits");
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err("RSA modulus is even");
    }
    if e.len() > 8 {
        return Err("RSA exponent is too large");
    }
    let exponent = e.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
    if !(3..=MAX_RSA_EXPONENT).contains(&exponent) || exponent & 1 == 0 {
        return Err("RSA exponent must be odd, at least 3 and below 2^33");
    }
    Ok(Material::Rsa {
        n: n.to_vec(),
        e: e.to_vec(),
        bits,
    })
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    bytes.get(zeros..).unwrap_or_default()
}

/// Base64 in either alphabet, padded or not, for shared-secret files.
fn lenient_base64(text: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let url_safe = text.iter().any(|&b| b == b'-' || b == b'_');
    let alphabet = if url_safe {
        &alphabet::URL_SAFE
    } else {
        &alphabet::STANDARD
    };
    GeneralPurpose::new(alphabet, config)
        .decode(text)
        .ok()
        .map(Zeroizing::new)
}

/// Loads an HS256 shared secret. `raw` takes the file's bytes exactly (no newline trimming: the
/// secret may be binary); `base64` trims surrounding whitespace and decodes either alphabet.
pub(super) fn load_hmac_secret(
    path: &Path,
    encoding: SecretEncoding,
) -> Result<VerifyingKey, JwtError> {
    let bytes = read_key_file(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| file_error(path, format!("cannot read: {}", e.kind())))?
            .permissions()
            .mode();
        if mode & 0o004 != 0 {
            return Err(file_error(
                path,
                "shared secret is world-readable (make it 0600 or 0640)",
            ));
        }
    }
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        // A public key is no secret: this is the RS256-key-as-HS256-secret confusion.
        return Err(file_error(path, "holds a PEM key, not a shared secret"));
    }
    let secret = match encoding {
        SecretEncoding::Raw => bytes,
        SecretEncoding::Base64 => lenient_base64(bytes.trim_ascii())
            .ok_or_else(|| file_error(path, "not valid base64"))?,
    };
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(file_error(path, "shared secret is shorter than 32 bytes"));
    }
    // Copy into an exactly sized box: converting the Vec could reallocate and leave an unwiped
    // copy behind, while `secret` itself is wiped when it drops here.
    let material = Material::Hmac(SecretSlice::new(Box::from(secret.as_slice())));
    Ok(VerifyingKey {
        alg: Alg::Hs256,
        material,
    })
}

/// Loads every signing key of a JWKS file (RFC 7517) as `(kid, key)`. Keys marked
/// `"use": "enc"` are skipped (they cannot verify signatures); anything else that is not an
/// acceptable RS256, ES256 or EdDSA public key with a `kid` fails the whole file.
pub(super) fn load_jwks(path: &Path) -> Result<Vec<(String, VerifyingKey)>, JwtError> {
    let bytes = read_key_file(path)?;
    parse_jwks(&bytes).map_err(|reason| file_error(path, reason))
}

/// The signing keys of a JWKS document, or why it is refused (the reason names no key bytes).
pub(super) fn parse_jwks(bytes: &[u8]) -> Result<Vec<(String, VerifyingKey)>, String> {
    let set = json::parse_object(bytes)
        .ok_or_else(|| "not a JSON object (or has duplicate keys)".to_string())?;
    let Some(Value::Array(keys)) = set.get("keys") else {
        return Err("no \"keys\" array".into());
    };
    let mut loaded = Vec::with_capacity(keys.len());
    for (index, jwk) in keys.iter().enumerate() {
        let Value::Object(jwk) = jwk else {
            return Err(format!("key {index}: not a JSON object"));
        };
        if jwk.get("use").and_then(Value::as_str) == Some("enc") {
            continue;
        }
        let key = parse_jwk(jwk).map_err(|reason| format!("key {index}: {reason}"))?;
        loaded.push(key);
    }
    if loaded.is_empty() {
        return Err("no signing keys".into());
    }
    Ok(loaded)
}

fn jwk_bytes(jwk: &Map<String, Value>, member: &'static str) -> Result<Vec<u8>, String> {
    match jwk.get(member) {
        Some(Value::String(text)) => URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| format!("\"{member}\" is not unpadded base64url")),
        Some(_) => Err(format!("\"{member}\" is not a string")),
        None => Err(format!("missing \"{member}\"")),
    }
}

fn parse_jwk(jwk: &Map<String, Value>) -> Result<(String, VerifyingKey), String> {
    let kty = match jwk.get("kty") {
        Some(Value::String(kty)) => kty.as_str(),
        _ => return Err("missing \"kty\"".into()),
    };
    if kty == "oct" {
        return Err("symmetric (oct) keys are refused in a JWKS file; use a secret file".into());
    }
    if let Some(member) = PRIVATE_JWK_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(format!(
            "holds private key material (\"{member}\"); publish public keys only"
        ));
    }
    let kid = match jwk.get("kid") {
        Some(Value::String(kid)) if super::valid_kid(kid) => kid.clone(),
        Some(_) => {
            return Err("\"kid\" must be a non-empty string of at most 256 characters".into())
        }
        None => return Err("missing \"kid\"".into()),
    };
    match jwk.get("use") {
        None => {}
        Some(Value::String(usage)) if usage == "sig" => {}
        Some(_) => return Err("\"use\" must be \"sig\"".into()),
    }
    let crv = jwk.get("crv").and_then(Value::as_str);
    let (alg, material) = match kty {
        "RSA" => {
            let n = jwk_bytes(jwk, "n")?;
            let e = jwk_bytes(jwk, "e")?;
            (Alg::Rs256, rsa_material(&n, &e)?)
        }
        "EC" => {
            if crv != Some("P-256") {
                return Err("EC keys must be on curve P-256".into());
            }
            let x = jwk_bytes(jwk, "x")?;
            let y = jwk_bytes(jwk, "y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes each".into());
            }
            let point = [&[0x04][..], &x, &y].concat();
            (Alg::Es256, p256_point_material(&point)?)
        }
        "OKP" => {
            if crv != Some("Ed25519") {
                return Err("OKP keys must be on curve Ed25519".into());
            }
            let x = jwk_bytes(jwk, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 keys must be 32 bytes".into());
            }
            (Alg::EdDsa, Material::Ed25519(x))
        }
        _ => return Err("unsupported \"kty\" (RSA, EC or OKP)".into()),
    };
    match jwk.get("alg") {
        None => {}
        Some(Value::String(declared)) if declared == alg.as_str() => {}
        Some(_) => {
            return Err(format!(
                "\"alg\" disagrees with the key type (expected {})",
                alg.as_str()
            ))
        }
    }
    Ok((kid, VerifyingKey { alg, material }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_bounds() {
        let mut n = vec![0xffu8; 256];
        assert!(matches!(
            rsa_material(&n, &[1, 0, 1]),
            Ok(Material::Rsa { bits: 2048, .. })
        ));
        // Leading zeros are not bits.
        let mut padded = vec![0u8, 0];
        padded.extend(&n);
        assert!(rsa_material(&padded, &[1, 0, 1]).is_ok());
        n[0] = 0x7f;
        assert_eq!(
            rsa_material(&n, &[1, 0, 1]).err(),
            Some("RSA modulus is shorter than 2048 bits")
        );
        n[0] = 0xff;
        n[255] = 0xfe;
        assert_eq!(
            rsa_material(&n, &[1, 0, 1]).err(),
            Some("RSA modulus is even")
        );
        n[255] = 0xff;
        for bad_e in [&[][..], &[1], &[2], &[4, 0], &[2, 0, 0, 0, 1], &[1; 9]] {
            assert!(rsa_material(&n, bad_e).is_err(), "{bad_e:?}");
        }
        assert!(rsa_material(&n, &[1, 0xff, 0xff, 0xff, 0xff]).is_ok());
        assert!(rsa_material(&vec![0xff; 1025], &[3]).is_err());
    }

    #[test]
    fn lenient_base64_takes_both_alphabets() {
        assert_eq!(
            lenient_base64(b"-_8").as_deref().map(Vec::as_slice),
            Some(&[0xfb, 0xff][..])
        );
        assert_eq!(
            lenient_base64(b"+/8=").as_deref().map(Vec::as_slice),
            Some(&[0xfb, 0xff][..])
        );
        assert_eq!(
            lenient_base64(b"+/8").as_deref().map(Vec::as_slice),
            Some(&[0xfb, 0xff][..])
        );
        assert!(lenient_base64(b"+_8").is_none());
        assert!(lenient_base64(b"not base64!").is_none());
    }
}
