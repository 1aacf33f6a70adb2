//! End-to-end tests of the verifier with real keys and real signatures.
//!
//! Ed25519 and P-256 keys are generated per run with ring; ring cannot generate RSA keys, so
//! RS256 uses the test-only key pair in `tests/fixtures/jwt/` (see its README).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde_json::{json, Value};

use super::*;

const NOW: u64 = 1_750_000_000;
const ISSUER: &str = "https://idp.example.test";
const AUDIENCE: &str = "bulwark";
const SUBJECT: &str = "subject-marker-7f3a";

/// TEST-ONLY key pair: public in this repository, protects nothing.
const RSA_PRIVATE_PEM: &str =
    include_str!("../../../tests/fixtures/jwt/test-only-rsa2048-private.pem");
const RSA_PUBLIC_PEM: &str =
    include_str!("../../../tests/fixtures/jwt/test-only-rsa2048-public.pem");
const RSA_1024_PUBLIC_PEM: &str =
    include_str!("../../../tests/fixtures/jwt/test-only-rsa1024-public.pem");

/// DER prefixes of an Ed25519 and a P-256 SubjectPublicKeyInfo (checked against openssl).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Shared secrets; recognisable so the `Debug` test can look for them.
const HS_RAW_SECRET: &[u8] = b"raw-shared-secret-0123456789-abcdefghijkl";
const HS_B64_SECRET: &[u8] = b"b64-shared-secret-0123456789-ABCDEFGHIJKL";

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Hmac(Vec<u8>),
}

impl Signer {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Rsa(key) => {
                let mut sig = vec![0; key.public().modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .unwrap();
                sig
            }
            Self::Ec(key) => key.sign(&rng, message).unwrap().as_ref().to_vec(),
            Self::Ed(key) => key.sign(message).as_ref().to_vec(),
            Self::Hmac(secret) => {
                let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
                hmac::sign(&key, message).as_ref().to_vec()
            }
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn spki_pem(prefix: &[u8], key: &[u8]) -> String {
    pem("PUBLIC KEY", &[prefix, key].concat())
}

fn rsa_key_pair() -> RsaKeyPair {
    let der = PrivatePkcs8KeyDer::from_pem_slice(RSA_PRIVATE_PEM.as_bytes()).unwrap();
    RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap()
}

fn ec_key_pair() -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap()
}

fn ed_key_pair() -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

fn write(path: &Path, contents: impl AsRef<[u8]>, mode: u32) {
    fs::write(path, contents).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }
    #[cfg(not(unix))]
    let _ = mode;
}

fn entry(kid: &str, alg: Alg, file: &str) -> KeyEntry {
    KeyEntry {
        kid: kid.into(),
        alg,
        file: file.into(),
        encoding: None,
    }
}

fn secret_entry(kid: &str, file: &str, encoding: SecretEncoding) -> KeyEntry {
    KeyEntry {
        encoding: Some(encoding),
        ..entry(kid, Alg::Hs256, file)
    }
}

/// A secrets folder with one key of every kind from every source, and signers for each.
struct Fixture {
    dir: tempfile::TempDir,
    config: JwtConfig,
    verifier: JwtVerifier,
    signers: HashMap<&'static str, (Alg, Signer)>,
}

/// Every configured kid, one per algorithm and source.
const ALL_KIDS: [&str; 8] = [
    "rsa-pem", "ec-pem", "ed-pem", "hs-raw", "hs-b64", "rsa-jwk", "ec-jwk", "ed-jwk",
];

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        let ec = ec_key_pair();
        let ed = ed_key_pair();
        write(&d.join("rsa.pem"), RSA_PUBLIC_PEM, 0o644);
        write(
            &d.join("ec.pem"),
            spki_pem(&P256_SPKI_PREFIX, ec.public_key().as_ref()),
            0o644,
        );
        write(
            &d.join("ed.pem"),
            spki_pem(&ED25519_SPKI_PREFIX, ed.public_key().as_ref()),
            0o644,
        );
        write(&d.join("hs.raw"), HS_RAW_SECRET, 0o600);
        write(
            &d.join("hs.b64"),
            format!("{}\n", STANDARD.encode(HS_B64_SECRET)),
            0o600,
        );

        // The JWKS reuses the RSA fixture (ring cannot make another) but fresh EC/Ed keys.
        let rsa_jwk = rsa_key_pair();
        let rsa_public = RsaPublicKeyComponents::<Vec<u8>>::from(rsa_jwk.public());
        let ec_jwk = ec_key_pair();
        let ed_jwk = ed_key_pair();
        let point = ec_jwk.public_key().as_ref();
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "rsa-jwk", "use": "sig", "alg": "RS256",
             "n": b64(&rsa_public.n), "e": b64(&rsa_public.e)},
            {"kty": "EC", "kid": "ec-jwk", "crv": "P-256",
             "x": b64(&point[1..33]), "y": b64(&point[33..])},
            {"kty": "OKP", "kid": "ed-jwk", "crv": "Ed25519", "alg": "EdDSA",
             "x": b64(ed_jwk.public_key().as_ref())},
        ]});
        write(&d.join("keys.jwks"), jwks.to_string(), 0o644);

        let config = JwtConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            keys: vec![
                entry("rsa-pem", Alg::Rs256, "rsa.pem"),
                entry("ec-pem", Alg::Es256, "ec.pem"),
                entry("ed-pem", Alg::EdDsa, "ed.pem"),
                secret_entry("hs-raw", "hs.raw", SecretEncoding::Raw),
                secret_entry("hs-b64", "hs.b64", SecretEncoding::Base64),
            ],
            jwks_files: vec!["keys.jwks".into()],
            ..JwtConfig::default()
        };
        let verifier = JwtVerifier::load(&config, d).unwrap();
        let signers = HashMap::from([
            ("rsa-pem", (Alg::Rs256, Signer::Rsa(rsa_key_pair()))),
            ("ec-pem", (Alg::Es256, Signer::Ec(ec))),
            ("ed-pem", (Alg::EdDsa, Signer::Ed(ed))),
            ("hs-raw", (Alg::Hs256, Signer::Hmac(HS_RAW_SECRET.to_vec()))),
            ("hs-b64", (Alg::Hs256, Signer::Hmac(HS_B64_SECRET.to_vec()))),
            ("rsa-jwk", (Alg::Rs256, Signer::Rsa(rsa_jwk))),
            ("ec-jwk", (Alg::Es256, Signer::Ec(ec_jwk))),
            ("ed-jwk", (Alg::EdDsa, Signer::Ed(ed_jwk))),
        ]);
        Self {
            dir,
            config,
            verifier,
            signers,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Loads a verifier from this fixture's folder with a modified configuration.
    fn load_with(&self, change: impl FnOnce(&mut JwtConfig)) -> Result<JwtVerifier, JwtError> {
        let mut config = self.config.clone();
        change(&mut config);
        JwtVerifier::load(&config, self.dir.path())
    }

    /// Signs arbitrary header and payload text with `signer_kid`'s key.
    fn sign_raw(&self, signer_kid: &str, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let sig = self.signers[signer_kid].1.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    fn sign_json(&self, signer_kid: &str, header: &Value, claims: &Value) -> String {
        self.sign_raw(signer_kid, &header.to_string(), &claims.to_string())
    }

    /// A well-formed token for `kid` with `claims`.
    fn token(&self, kid: &str, claims: &Value) -> String {
        self.sign_json(kid, &header(kid, self.signers[kid].0.as_str()), claims)
    }

    fn accept(&self, token: &str) -> VerifiedToken {
        self.verifier.verify(token, NOW).unwrap()
    }

    /// Verifies and expects a refusal whose message quotes nothing from the token.
    fn refuse(&self, token: &str) -> JwtError {
        refuse_with(&self.verifier, token, NOW)
    }
}

fn refuse_with(verifier: &JwtVerifier, token: &str, now: u64) -> JwtError {
    let err = verifier.verify(token, now).unwrap_err();
    let message = err.to_string();
    for segment in token.split('.').filter(|s| s.len() >= 8) {
        assert!(!message.contains(segment), "{message}");
    }
    assert!(!message.contains(SUBJECT), "{message}");
    assert!(!err.is_config());
    err
}

fn header(kid: &str, alg: &str) -> Value {
    json!({"alg": alg, "kid": kid, "typ": "JWT"})
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": SUBJECT,
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "exp": NOW + 600,
    })
}

fn without(mut value: Value, name: &str) -> Value {
    value.as_object_mut().unwrap().remove(name).unwrap();
    value
}

fn with(mut value: Value, name: &str, new: Value) -> Value {
    value[name] = new;
    value
}

fn config_error_of(result: Result<JwtVerifier, JwtError>) -> JwtError {
    let err = result.unwrap_err();
    assert!(err.is_config(), "{err}");
    err
}

// ---- accepted tokens ----

#[test]
fn valid_tokens_verify_for_every_algorithm_and_source() {
    let f = Fixture::new();
    assert_eq!(f.verifier.key_ids().len(), ALL_KIDS.len());
    for kid in ALL_KIDS {
        let verified = f.accept(&f.token(kid, &claims()));
        assert_eq!(
            verified,
            VerifiedToken {
                subject: SUBJECT.into(),
                tenant: None,
                roles: vec![],
                queues: None,
                kid: kid.into(),
                issued_at: NOW - 60,
                expires_at: NOW + 600,
                jti: None,
            },
            "{kid}"
        );
    }
}

#[test]
fn the_fixture_pair_matches_and_the_pem_and_jwks_rsa_keys_agree() {
    let f = Fixture::new();
    // A token for the PEM-configured RSA key also verifies under the JWKS copy of the same
    // key once the kid is swapped: both sources decode to the same modulus and exponent.
    let mut h = header("rsa-jwk", "RS256");
    let token = f.sign_json("rsa-pem", &h, &claims());
    assert_eq!(f.accept(&token).kid, "rsa-jwk");
    h["kid"] = json!("ec-pem");
    h["alg"] = json!("ES256");
    let token = f.sign_json("rsa-pem", &h, &claims());
    assert!(matches!(f.refuse(&token), JwtError::BadSignature));

    let spki = SubjectPublicKeyInfoDer::from_pem_slice(RSA_PUBLIC_PEM.as_bytes()).unwrap();
    let der::SpkiKey::Rsa(pkcs1) = der::parse_spki(&spki).unwrap() else {
        panic!("the fixture is not an RSA key");
    };
    let (n, e) = der::parse_rsa_public_key(pkcs1).unwrap();
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(rsa_key_pair().public());
    assert_eq!((n, e), (&public.n[..], &public.e[..]));
}

#[test]
fn identity_claims_are_returned() {
    let f = Fixture::new();
    let mut c = claims();
    c["tenant"] = json!("acme");
    c["roles"] = json!(["admin", "ops"]);
    c["queues"] = json!(["default", "email"]);
    c["jti"] = json!("token-1");
    let verified = f.accept(&f.token("ed-pem", &c));
    assert_eq!(verified.tenant.as_deref(), Some("acme"));
    assert_eq!(verified.roles, ["admin", "ops"]);
    assert_eq!(
        verified.queues,
        Some(vec!["default".into(), "email".into()])
    );
    assert_eq!(verified.jti.as_deref(), Some("token-1"));

    let one_role = f.accept(&f.token("ed-pem", &with(claims(), "roles", json!("admin"))));
    assert_eq!(one_role.roles, ["admin"]);
    let no_queues = f.accept(&f.token("ed-pem", &with(claims(), "queues", json!([]))));
    assert_eq!(no_queues.queues, Some(vec![]));
}

#[test]
fn bad_identity_claims_are_refused() {
    let f = Fixture::new();
    let long = "x".repeat(257);
    let cases = [
        ("sub", json!(""), "subject"),
        ("sub", json!(long), "subject"),
        ("sub", json!("a\nb"), "subject"),
        ("sub", json!(42), "subject"),
        ("sub", json!(null), "subject"),
        ("tenant", json!(7), "tenant"),
        ("tenant", json!(""), "tenant"),
        ("roles", json!(1), "roles"),
        ("roles", json!(["admin", 1]), "roles"),
        ("roles", json!(["admin ops"]), "roles"),
        ("roles", json!("admin ops"), "roles"),
        ("roles", json!([""]), "roles"),
        ("roles", json!(vec!["r"; 65]), "roles"),
        ("roles", json!({"admin": true}), "roles"),
        ("queues", json!({"q": 1}), "queues"),
        ("queues", json!([null]), "queues"),
        ("jti", json!(5), "jti"),
    ];
    for (name, value, label) in cases {
        let token = f.token("ec-pem", &with(claims(), name, value.clone()));
        match f.refuse(&token) {
            JwtError::BadClaim(got) => assert_eq!(got, label, "{name} = {value}"),
            other => panic!("{name} = {value}: {other:?}"),
        }
    }
    let token = f.token("ec-pem", &without(claims(), "sub"));
    assert!(matches!(
        f.refuse(&token),
        JwtError::MissingClaim("subject")
    ));
    // 256 characters is the limit, counted in characters rather than bytes.
    let token = f.token("ec-pem", &with(claims(), "sub", json!("é".repeat(256))));
    assert_eq!(f.accept(&token).subject.chars().count(), 256);
}

#[test]
fn claim_names_are_configurable() {
    let f = Fixture::new();
    let verifier = f
        .load_with(|c| {
            c.subject_claim = "client_id".into();
            c.tenant_claim = "org".into();
            c.roles_claim = "groups".into();
            c.queues_claim = "allowed_queues".into();
        })
        .unwrap();
    let mut c = claims();
    c["client_id"] = json!("svc-1");
    c["org"] = json!("acme");
    c["groups"] = json!(["admin"]);
    c["allowed_queues"] = json!(["q1"]);
    c["tenant"] = json!("ignored");
    let verified = verifier.verify(&f.token("ed-pem", &c), NOW).unwrap();
    assert_eq!(verified.subject, "svc-1");
    assert_eq!(verified.tenant.as_deref(), Some("acme"));
    assert_eq!(verified.roles, ["admin"]);
    assert_eq!(verified.queues, Some(vec!["q1".into()]));
    let token = f.token("ed-pem", &without(c, "client_id"));
    assert!(matches!(
        refuse_with(&verifier, &token, NOW),
        JwtError::MissingClaim("subject")
    ));
}

// ---- algorithm and header ----

#[test]
fn alg_none_is_refused_in_any_case() {
    let f = Fixture::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = b64(header("ed-pem", alg).to_string().as_bytes());
        let p = b64(claims().to_string().as_bytes());
        // Unsigned, as an attacker sends it, and with a real signature attached.
        let unsigned = format!("{h}.{p}.");
        assert!(
            matches!(f.refuse(&unsigned), JwtError::AlgorithmNone),
            "{alg}"
        );
        let signed = f.sign_json("ed-pem", &header("ed-pem", alg), &claims());
        assert!(
            matches!(f.refuse(&signed), JwtError::AlgorithmNone),
            "{alg}"
        );
    }
}

#[test]
fn rsa_public_key_used_as_hmac_secret_is_refused() {
    // The classic key confusion: the attacker knows the RSA public key and MACs a token with
    // it, naming the RSA key and asking for HS256.
    let f = Fixture::new();
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(RSA_PUBLIC_PEM.as_bytes()).unwrap();
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(rsa_key_pair().public());
    let candidate_secrets = [
        RSA_PUBLIC_PEM.as_bytes().to_vec(),
        spki.as_ref().to_vec(),
        public.n.clone(),
    ];
    for secret in candidate_secrets {
        for kid in ["rsa-pem", "rsa-jwk"] {
            let input = format!(
                "{}.{}",
                b64(header(kid, "HS256").to_string().as_bytes()),
                b64(claims().to_string().as_bytes())
            );
            let mac = Signer::Hmac(secret.clone()).sign(input.as_bytes());
            let token = format!("{input}.{}", b64(&mac));
            assert!(matches!(f.refuse(&token), JwtError::AlgorithmMismatch));
        }
    }
}

#[test]
fn header_alg_must_equal_the_configured_keys_alg() {
    let f = Fixture::new();
    let cases = [
        ("ed-pem", "ES256"),
        ("ec-pem", "EdDSA"),
        ("ec-jwk", "ES384"),
        ("rsa-pem", "rs256"),
        ("rsa-pem", "PS256"),
        ("rsa-jwk", "RS512"),
        ("hs-raw", "RS256"),
        ("hs-b64", "HS512"),
        ("ed-jwk", "Ed25519"),
    ];
    for (kid, alg) in cases {
        // Signed with the kid's real key: only the header's claim about the algorithm is wrong.
        let token = f.sign_json(kid, &header(kid, alg), &claims());
        assert!(
            matches!(f.refuse(&token), JwtError::AlgorithmMismatch),
            "{kid} {alg}"
        );
    }
    for bad_alg in [json!(null), json!(256), json!(["RS256"])] {
        let h = json!({"alg": bad_alg, "kid": "rsa-pem"});
        let token = f.sign_json("rsa-pem", &h, &claims());
        assert!(matches!(f.refuse(&token), JwtError::BadHeader("alg")));
    }
    let token = f.sign_json("rsa-pem", &json!({"kid": "rsa-pem"}), &claims());
    assert!(matches!(f.refuse(&token), JwtError::BadHeader("alg")));
}

#[test]
fn unknown_and_missing_kid_are_refused() {
    let f = Fixture::new();
    let token = f.sign_json("ed-pem", &header("no-such-key", "EdDSA"), &claims());
    assert!(matches!(f.refuse(&token), JwtError::UnknownKey));
    let token = f.sign_json("ed-pem", &header("ED-PEM", "EdDSA"), &claims());
    assert!(matches!(f.refuse(&token), JwtError::UnknownKey));
    let token = f.sign_json("ed-pem", &json!({"alg": "EdDSA"}), &claims());
    assert!(matches!(f.refuse(&token), JwtError::MissingKeyId));
    let token = f.sign_json("ed-pem", &json!({"alg": "EdDSA", "kid": 1}), &claims());
    assert!(matches!(f.refuse(&token), JwtError::BadHeader("kid")));
}

#[test]
fn forbidden_header_parameters_are_refused() {
    let f = Fixture::new();
    let cases = [
        ("jku", json!("https://attacker.test/jwks.json")),
        ("jwk", json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"})),
        ("crit", json!(["exp"])),
        ("x5u", json!("https://attacker.test/cert.pem")),
        ("x5c", json!(["MIIB"])),
    ];
    for (name, value) in cases {
        let h = with(header("ed-pem", "EdDSA"), name, value);
        let token = f.sign_json("ed-pem", &h, &claims());
        match f.refuse(&token) {
            JwtError::ForbiddenHeader(got) => assert_eq!(got, name),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn typ_must_name_a_jwt() {
    let f = Fixture::new();
    for typ in [
        "JWT",
        "jwt",
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/JWT",
    ] {
        let h = with(header("ed-pem", "EdDSA"), "typ", json!(typ));
        f.accept(&f.sign_json("ed-pem", &h, &claims()));
    }
    f.accept(&f.sign_json(
        "ed-pem",
        &without(header("ed-pem", "EdDSA"), "typ"),
        &claims(),
    ));
    for typ in [
        json!("JOSE"),
        json!("application/json"),
        json!("application/"),
        json!("dpop+jwt"),
        json!(1),
    ] {
        let h = with(header("ed-pem", "EdDSA"), "typ", typ.clone());
        let token = f.sign_json("ed-pem", &h, &claims());
        assert!(
            matches!(f.refuse(&token), JwtError::BadHeader("typ")),
            "{typ}"
        );
    }
}

// ---- signature ----

#[test]
fn tampered_payload_is_refused() {
    let f = Fixture::new();
    for kid in ALL_KIDS {
        let token = f.token(kid, &claims());
        let (h, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = with(claims(), "sub", json!("admin"));
        let tampered = format!("{h}.{}.{sig}", b64(forged.to_string().as_bytes()));
        assert!(
            matches!(f.refuse(&tampered), JwtError::BadSignature),
            "{kid}"
        );
        // A header edit breaks the signature too (here: a harmless typ change).
        let other_header = with(
            header(kid, f.signers[kid].0.as_str()),
            "typ",
            json!("at+jwt"),
        );
        let (_, payload_and_sig) = token.split_once('.').unwrap();
        let tampered = format!(
            "{}.{payload_and_sig}",
            b64(other_header.to_string().as_bytes())
        );
        assert!(
            matches!(f.refuse(&tampered), JwtError::BadSignature),
            "{kid}"
        );
    }
}

#[test]
fn tampered_signature_is_refused() {
    let f = Fixture::new();
    for kid in ALL_KIDS {
        let token = f.token(kid, &claims());
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        for i in [0, sig.len() / 2, sig.len() - 1] {
            let mut bad = sig.clone();
            bad[i] ^= 0x01;
            let tampered = format!("{input}.{}", b64(&bad));
            assert!(
                matches!(f.refuse(&tampered), JwtError::BadSignature),
                "{kid} {i}"
            );
        }
        let truncated = format!("{input}.{}", b64(&sig[..sig.len() - 1]));
        assert!(
            matches!(f.refuse(&truncated), JwtError::BadSignature),
            "{kid}"
        );
        let extended = format!("{input}.{}", b64(&[&sig[..], &[0]].concat()));
        assert!(
            matches!(f.refuse(&extended), JwtError::BadSignature),
            "{kid}"
        );
    }
    // Another key's valid signature, under the right kid and alg.
    let theirs = f.token("ec-jwk", &claims());
    let mine = f.token("ec-pem", &claims());
    let spliced = format!(
        "{}.{}",
        mine.rsplit_once('.').unwrap().0,
        theirs.rsplit_once('.').unwrap().1
    );
    assert!(matches!(f.refuse(&spliced), JwtError::BadSignature));
}

#[test]
fn the_signature_is_checked_before_any_claim() {
    let f = Fixture::new();
    // Expired, wrong issuer and audience, no subject, even a payload that is not JSON: with a
    // bad signature, the only answer is the bad signature.
    let bad_claims = json!({"iss": "https://evil.test", "aud": "x", "exp": 1, "nbf": 1, "iat": 1});
    for payload in [bad_claims.to_string(), "not json".to_string()] {
        for kid in ALL_KIDS {
            let h = header(kid, f.signers[kid].0.as_str()).to_string();
            let token = f.sign_raw(kid, &h, &payload);
            let (input, sig) = token.rsplit_once('.').unwrap();
            let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            sig[0] ^= 0x80;
            let tampered = format!("{input}.{}", b64(&sig));
            assert!(
                matches!(f.refuse(&tampered), JwtError::BadSignature),
                "{kid}"
            );
        }
    }
}

// ---- time ----

#[test]
fn expiry_honours_the_leeway_exactly() {
    let f = Fixture::new();
    let at = |exp: u64| f.token("ed-pem", &with(claims(), "exp", json!(exp)));
    f.accept(&at(NOW + 1));
    f.accept(&at(NOW));
    // Expired, but within the 30 s leeway.
    f.accept(&at(NOW - 10));
    f.accept(&at(NOW - 29));
    assert!(matches!(f.refuse(&at(NOW - 30)), JwtError::Expired));
    assert!(matches!(f.refuse(&at(NOW - 45)), JwtError::Expired));

    let strict = f.load_with(|c| c.leeway_secs = 0).unwrap();
    assert!(strict.verify(&at(NOW + 1), NOW).is_ok());
    assert!(matches!(
        refuse_with(&strict, &at(NOW), NOW),
        JwtError::Expired
    ));
}

#[test]
fn not_before_and_issued_at_may_not_be_in_the_future() {
    let f = Fixture::new();
    let token = |nbf: u64, iat: u64| {
        let c = with(with(claims(), "nbf", json!(nbf)), "iat", json!(iat));
        f.token("ed-pem", &c)
    };
    f.accept(&token(NOW + 30, NOW - 60));
    assert!(matches!(
        f.refuse(&token(NOW + 31, NOW - 60)),
        JwtError::NotYetValid
    ));
    assert!(matches!(
        f.refuse(&token(NOW + 600, NOW - 60)),
        JwtError::NotYetValid
    ));
    f.accept(&token(NOW - 60, NOW + 30));
    assert!(matches!(
        f.refuse(&token(NOW - 60, NOW + 31)),
        JwtError::IssuedInFuture
    ));
    // nbf after exp can never be right.
    let c = with(
        with(claims(), "nbf", json!(NOW + 20)),
        "exp",
        json!(NOW + 10),
    );
    assert!(matches!(
        f.refuse(&f.token("ed-pem", &c)),
        JwtError::BadClaim("nbf")
    ));
}

#[test]
fn lifetime_is_capped() {
    let f = Fixture::new();
    let token = |iat: u64, exp: u64| {
        let c = with(with(claims(), "iat", json!(iat)), "exp", json!(exp));
        f.token("ed-pem", &c)
    };
    f.accept(&token(NOW - 100, NOW - 100 + 3600));
    assert!(matches!(
        f.refuse(&token(NOW - 100, NOW - 100 + 3601)),
        JwtError::LifetimeTooLong
    ));
    // A tighter configured cap.
    let tight = f.load_with(|c| c.max_lifetime_secs = 600).unwrap();
    assert!(tight.verify(&token(NOW - 100, NOW + 500), NOW).is_ok());
    assert!(matches!(
        refuse_with(&tight, &token(NOW - 100, NOW + 501), NOW),
        JwtError::LifetimeTooLong
    ));
    // exp before iat is nonsense, not a short lifetime.
    let c = with(with(claims(), "iat", json!(NOW + 5)), "exp", json!(NOW + 1));
    assert!(matches!(
        f.refuse(&f.token("ed-pem", &c)),
        JwtError::BadClaim("exp")
    ));
}

#[test]
fn numeric_dates_must_be_whole_and_in_range() {
    let f = Fixture::new();
    let exp = NOW + 600;
    // A whole number written as a float is accepted and read exactly.
    #[allow(clippy::cast_precision_loss)]
    let as_float = json!(exp as f64);
    assert!(as_float.is_f64());
    assert_eq!(
        f.accept(&f.token("ed-pem", &with(claims(), "exp", as_float)))
            .expires_at,
        exp
    );
    let payload = claims()
        .to_string()
        .replace(&exp.to_string(), &format!("{exp}.0"));
    f.accept(&f.sign_raw("ed-pem", &header("ed-pem", "EdDSA").to_string(), &payload));
    let payload = claims()
        .to_string()
        .replace(&exp.to_string(), "1.7500006e9");
    f.accept(&f.sign_raw("ed-pem", &header("ed-pem", "EdDSA").to_string(), &payload));

    for name in ["exp", "nbf", "iat"] {
        for bad in [
            json!(1_750_000_000.5),
            json!(-1),
            json!(-1.0),
            json!("1750000000"),
            json!(true),
            json!(null),
            json!([NOW]),
            json!(253_402_300_800_u64),
            json!(u64::MAX),
            json!(1e300),
        ] {
            let token = f.token("ed-pem", &with(claims(), name, bad.clone()));
            match f.refuse(&token) {
                JwtError::BadClaim(got) => assert_eq!(got, name, "{bad}"),
                other => panic!("{name} = {bad}: {other:?}"),
            }
        }
    }
}

// ---- registered claims ----

#[test]
fn every_registered_claim_is_required() {
    let f = Fixture::new();
    for name in ["exp", "nbf", "iat", "iss", "aud"] {
        let token = f.token("rsa-pem", &without(claims(), name));
        match f.refuse(&token) {
            JwtError::MissingClaim(got) => assert_eq!(got, name),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn issuer_must_match() {
    let f = Fixture::new();
    for iss in [
        "https://evil.test",
        "https://idp.example.test/",
        "HTTPS://IDP.EXAMPLE.TEST",
        "",
    ] {
        let token = f.token("ec-pem", &with(claims(), "iss", json!(iss)));
        assert!(matches!(f.refuse(&token), JwtError::WrongIssuer), "{iss}");
    }
    let token = f.token("ec-pem", &with(claims(), "iss", json!([ISSUER])));
    assert!(matches!(f.refuse(&token), JwtError::BadClaim("iss")));
}

#[test]
fn audience_must_contain_ours() {
    let f = Fixture::new();
    let token = |aud: Value| f.token("ec-pem", &with(claims(), "aud", aud));
    f.accept(&token(json!(AUDIENCE)));
    f.accept(&token(json!(["other", AUDIENCE])));
    assert!(matches!(
        f.refuse(&token(json!("other"))),
        JwtError::WrongAudience
    ));
    assert!(matches!(
        f.refuse(&token(json!("Bulwark"))),
        JwtError::WrongAudience
    ));
    assert!(matches!(
        f.refuse(&token(json!(["other", "more"]))),
        JwtError::WrongAudience
    ));
    assert!(matches!(
        f.refuse(&token(json!([]))),
        JwtError::WrongAudience
    ));
    assert!(matches!(
        f.refuse(&token(json!([AUDIENCE, 1]))),
        JwtError::BadClaim("aud")
    ));
    assert!(matches!(
        f.refuse(&token(json!({"aud": AUDIENCE}))),
        JwtError::BadClaim("aud")
    ));
}

// ---- encoding ----

#[test]
fn oversized_tokens_are_refused_before_decoding() {
    let f = Fixture::new();
    // Not even base64: only a check that runs before decoding can call this "too large".
    let garbage = "!".repeat(8193);
    assert!(matches!(f.refuse(&garbage), JwtError::TooLarge));
    assert!(matches!(f.refuse(&"!".repeat(8192)), JwtError::Malformed));

    let token = f.token("rsa-pem", &claims());
    let exact = f.load_with(|c| c.max_token_bytes = token.len()).unwrap();
    assert!(exact.verify(&token, NOW).is_ok());
    let smaller = f
        .load_with(|c| c.max_token_bytes = token.len() - 1)
        .unwrap();
    assert!(matches!(
        refuse_with(&smaller, &token, NOW),
        JwtError::TooLarge
    ));
    // A valid token made large by a padding claim.
    let big = f.token("ed-pem", &with(claims(), "pad", json!("x".repeat(8192))));
    assert!(matches!(f.refuse(&big), JwtError::TooLarge));
}

#[test]
fn only_unpadded_base64url_is_accepted() {
    let f = Fixture::new();
    let token = f.token("ec-pem", &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let rebuild = |i: usize, segment: &str| {
        let mut p = parts.clone();
        p[i] = segment;
        p.join(".")
    };
    for i in 0..3 {
        for bad in [
            format!("{}=", parts[i]),
            format!("{}==", parts[i]),
            format!(" {}", parts[i]),
            format!("{}\n", parts[i]),
            parts[i].replacen(|c: char| c.is_ascii_alphanumeric(), "+", 1),
            parts[i].replacen(|c: char| c.is_ascii_alphanumeric(), "/", 1),
            parts[i].replacen(|c: char| c.is_ascii_alphanumeric(), "%", 1),
            String::new(),
        ] {
            let tampered = rebuild(i, &bad);
            assert!(
                matches!(f.refuse(&tampered), JwtError::Malformed),
                "segment {i}: {bad:?}"
            );
            if i < 2 {
                // Re-signed over the bad segment, so no signature check can be what refuses.
                let mut p = parts.clone();
                p[i] = &bad;
                let input = format!("{}.{}", p[0], p[1]);
                let sig = f.signers["ec-pem"].1.sign(input.as_bytes());
                let resigned = format!("{input}.{}", b64(&sig));
                assert!(
                    matches!(f.refuse(&resigned), JwtError::Malformed),
                    "segment {i} re-signed: {bad:?}"
                );
            }
        }
    }
    // A length that no base64 encoding has (1 mod 4).
    let bad = format!("{}AAA", parts[2]);
    assert_eq!(bad.len() % 4, 1);
    assert!(matches!(f.refuse(&rebuild(2, &bad)), JwtError::Malformed));
    // Non-canonical trailing bits: the 64-byte signature's last character carries 4 spare bits.
    let sig = parts[2];
    let last = sig.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = alphabet.find(last).unwrap();
    let noncanonical = alphabet.chars().nth(index ^ 1).unwrap();
    let bad = format!("{}{noncanonical}", &sig[..sig.len() - 1]);
    assert!(matches!(f.refuse(&rebuild(2, &bad)), JwtError::Malformed));
}

#[test]
fn exactly_three_segments() {
    let f = Fixture::new();
    let token = f.token("ed-pem", &claims());
    let parts: Vec<&str> = token.split('.').collect();
    for bad in [
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        parts[0].to_string(),
        parts[..2].join("."),
        format!("{token}."),
        format!("{token}.{}", parts[2]),
        format!("{}.{}.{}.{}", parts[0], parts[1], parts[1], parts[2]),
    ] {
        assert!(matches!(f.refuse(&bad), JwtError::Malformed), "{bad}");
    }
}

#[test]
fn header_and_payload_must_be_json_objects_without_duplicate_keys() {
    let f = Fixture::new();
    let h = header("ed-pem", "EdDSA").to_string();
    let p = claims().to_string();
    let cases = [
        // The second alg would win in serde_json; either way the token is ambiguous.
        (
            r#"{"alg":"none","alg":"EdDSA","kid":"ed-pem"}"#.to_string(),
            p.clone(),
        ),
        (
            r#"{"alg":"EdDSA","kid":"unknown","kid":"ed-pem"}"#.to_string(),
            p.clone(),
        ),
        (h.clone(), p.replacen('{', r#"{"sub":"admin","#, 1)),
        (
            h.clone(),
            p.replacen('{', &format!(r#"{{"exp":{},"#, NOW + 100_000), 1),
        ),
        (h.clone(), p.replacen('{', r#"{"x":{"a":1,"a":2},"#, 1)),
        ("[]".into(), p.clone()),
        ("not json".into(), p.clone()),
        (h.clone(), "null".into()),
        (h.clone(), "[1]".into()),
        (h.clone(), format!("{p} trailing")),
        (format!("{h}\u{0}"), p.clone()),
    ];
    for (header_text, payload_text) in cases {
        let token = f.sign_raw("ed-pem", &header_text, &payload_text);
        assert!(
            matches!(f.refuse(&token), JwtError::Malformed),
            "{header_text} / {payload_text}"
        );
    }
    // The same texts without the duplicates verify, so the refusals above are about them.
    f.accept(&f.sign_raw("ed-pem", &h, &p));
}

// ---- configuration and key loading ----

#[test]
fn config_defaults_and_toml_shape() {
    let config: JwtConfig = toml::from_str(
        r#"
        issuer = "https://idp.example.test"
        audience = "bulwark"
        jwks_files = ["idp.jwks"]
        [[keys]]
        kid = "a"
        alg = "EdDSA"
        file = "a.pem"
        [[keys]]
        kid = "b"
        alg = "HS256"
        file = "b.key"
        encoding = "base64"
        "#,
    )
    .unwrap();
    assert_eq!(config.leeway_secs, 30);
    assert_eq!(config.max_lifetime_secs, 3600);
    assert_eq!(config.max_token_bytes, 8192);
    assert_eq!(
        [
            &config.subject_claim,
            &config.tenant_claim,
            &config.roles_claim,
            &config.queues_claim
        ],
        ["sub", "tenant", "roles", "queues"]
    );
    assert_eq!(config.keys[0].alg, Alg::EdDsa);
    assert_eq!(config.keys[1].encoding, Some(SecretEncoding::Base64));
    config.validate().unwrap();

    assert!(toml::from_str::<JwtConfig>("issuer = \"x\"\nleway_secs = 5").is_err());
    let bad_entry = "[[keys]]\nkid = \"a\"\nalg = \"EdDSA\"\nfile = \"a\"\npath = \"b\"";
    assert!(toml::from_str::<JwtConfig>(bad_entry).is_err());
    for alg in ["none", "RS384", "eddsa", "ES256K"] {
        let text = format!("[[keys]]\nkid = \"a\"\nalg = \"{alg}\"\nfile = \"a\"");
        assert!(toml::from_str::<JwtConfig>(&text).is_err(), "{alg}");
    }
}

#[test]
fn out_of_range_settings_are_refused() {
    let f = Fixture::new();
    type Change = Box<dyn Fn(&mut JwtConfig)>;
    let changes: Vec<(&str, Change)> = vec![
        ("leeway_secs", Box::new(|c| c.leeway_secs = 31)),
        (
            "max_lifetime_secs",
            Box::new(|c| c.max_lifetime_secs = 3601),
        ),
        ("max_lifetime_secs", Box::new(|c| c.max_lifetime_secs = 0)),
        ("max_token_bytes", Box::new(|c| c.max_token_bytes = 100)),
        ("max_token_bytes", Box::new(|c| c.max_token_bytes = 1 << 20)),
        ("issuer", Box::new(|c| c.issuer = " ".into())),
        ("audience", Box::new(|c| c.audience = String::new())),
        (
            "no keys",
            Box::new(|c| {
                c.keys.clear();
                c.jwks_files.clear();
            }),
        ),
        (
            "subject_claim",
            Box::new(|c| c.subject_claim = String::new()),
        ),
        ("tenant_claim", Box::new(|c| c.tenant_claim = "exp".into())),
        ("roles_claim", Box::new(|c| c.roles_claim = "aud".into())),
        (
            "queues_claim",
            Box::new(|c| c.queues_claim = "roles".into()),
        ),
        ("kid", Box::new(|c| c.keys[0].kid = String::new())),
        (
            "HS256 needs encoding",
            Box::new(|c| c.keys[3].encoding = None),
        ),
        (
            "HS256 secret files only",
            Box::new(|c| c.keys[0].encoding = Some(SecretEncoding::Raw)),
        ),
    ];
    for (expected, change) in changes {
        let err = config_error_of(f.load_with(|c| change(c)));
        assert!(matches!(err, JwtError::Config(_)), "{expected}: {err:?}");
        assert!(err.to_string().contains(expected), "{expected}: {err}");
        assert_eq!(err.reason(), "config");
    }
    // The edges themselves are fine.
    f.load_with(|c| {
        c.leeway_secs = 30;
        c.max_lifetime_secs = 3600;
    })
    .unwrap();
}

#[test]
fn duplicate_kids_are_refused() {
    let f = Fixture::new();
    let err = config_error_of(f.load_with(|c| c.keys[1].kid = "rsa-pem".into()));
    assert!(matches!(err, JwtError::DuplicateKeyId(ref kid) if kid == "rsa-pem"));
    // Across sources: a file entry and a JWKS entry.
    let err = config_error_of(f.load_with(|c| c.keys[2].kid = "ed-jwk".into()));
    assert!(matches!(err, JwtError::DuplicateKeyId(ref kid) if kid == "ed-jwk"));
    // The same JWKS file listed twice.
    let err = config_error_of(f.load_with(|c| c.jwks_files.push("keys.jwks".into())));
    assert!(matches!(err, JwtError::DuplicateKeyId(_)));
}

/// Loads a single key entry from `file` written with `contents` and returns the error.
fn load_single(f: &Fixture, key: KeyEntry, contents: &[u8], mode: u32) -> JwtError {
    write(&f.path(&key.file.to_string_lossy()), contents, mode);
    let err = config_error_of(f.load_with(|c| {
        c.keys = vec![key];
        c.jwks_files.clear();
    }));
    assert!(matches!(err, JwtError::KeyFile { .. }), "{err:?}");
    err
}

#[test]
fn weak_and_malformed_key_files_are_refused_by_name() {
    let f = Fixture::new();
    let ec_pem = fs::read(f.path("ec.pem")).unwrap();
    let body_line = RSA_PUBLIC_PEM.lines().nth(2).unwrap();
    let mut garbled = RSA_PUBLIC_PEM.replace(body_line, "not*base64*at*all");
    garbled.insert_str(0, "# comment\n");
    let cases: Vec<(KeyEntry, Vec<u8>, &str)> = vec![
        (
            entry("k", Alg::Rs256, "rsa1024.pem"),
            RSA_1024_PUBLIC_PEM.into(),
            "shorter than 2048 bits",
        ),
        (
            entry("k", Alg::Rs256, "garbled.pem"),
            garbled.into(),
            "malformed PEM",
        ),
        (
            entry("k", Alg::Rs256, "empty.pem"),
            vec![],
            "no PUBLIC KEY block",
        ),
        (
            entry("k", Alg::Rs256, "private.pem"),
            RSA_PRIVATE_PEM.into(),
            "expected a PUBLIC KEY block",
        ),
        (
            entry("k", Alg::Rs256, "two.pem"),
            format!("{RSA_PUBLIC_PEM}{RSA_PUBLIC_PEM}").into(),
            "more than one PEM block",
        ),
        (
            entry("k", Alg::Rs256, "ec-as-rsa.pem"),
            ec_pem.clone(),
            "cannot be used with RS256",
        ),
        (
            entry("k", Alg::EdDsa, "rsa-as-ed.pem"),
            RSA_PUBLIC_PEM.into(),
            "cannot be used with EdDSA",
        ),
        (
            entry("k", Alg::Es256, "not-a-key.pem"),
            pem("PUBLIC KEY", b"\x30\x03\x02\x01\x01").into(),
            "bad public key",
        ),
        (
            entry("k", Alg::Es256, "off-curve.pem"),
            spki_pem(&P256_SPKI_PREFIX, &[&[0x04][..], &[1; 64]].concat()).into(),
            "not a point on the P-256 curve",
        ),
        (
            secret_entry("k", "short.key", SecretEncoding::Raw),
            vec![b'k'; 31],
            "shorter than 32 bytes",
        ),
        (
            secret_entry("k", "short.b64", SecretEncoding::Base64),
            STANDARD.encode([7u8; 31]).into(),
            "shorter than 32 bytes",
        ),
        (
            secret_entry("k", "bad.b64", SecretEncoding::Base64),
            b"this is not base64 at all, not even close!".to_vec(),
            "not valid base64",
        ),
        (
            secret_entry("k", "pem-as-secret.key", SecretEncoding::Raw),
            RSA_PUBLIC_PEM.into(),
            "holds a PEM key",
        ),
    ];
    for (key, contents, expected) in cases {
        let file = key.file.clone();
        let err = load_single(&f, key, &contents, 0o600);
        let message = err.to_string();
        assert!(message.contains(expected), "{message}");
        assert!(message.contains(&*file.to_string_lossy()), "{message}");
        assert!(!message.contains(body_line), "{message}");
        assert_eq!(err.reason(), "key_file");
    }
    // A missing file is named too, resolved against the base folder.
    let err = config_error_of(f.load_with(|c| c.keys[0].file = "missing.pem".into()));
    assert!(
        err.to_string()
            .contains(&*f.path("missing.pem").to_string_lossy()),
        "{err}"
    );
    assert!(err.to_string().contains("not found"), "{err}");
}

#[cfg(unix)]
#[test]
fn world_readable_secrets_are_refused() {
    let f = Fixture::new();
    let err = load_single(
        &f,
        secret_entry("k", "open.key", SecretEncoding::Raw),
        HS_RAW_SECRET,
        0o644,
    );
    assert!(err.to_string().contains("world-readable"), "{err}");
    // Group-readable is allowed (mounted secrets often are).
    write(&f.path("group.key"), HS_RAW_SECRET, 0o640);
    f.load_with(|c| c.keys = vec![secret_entry("k", "group.key", SecretEncoding::Raw)])
        .unwrap();
}

#[test]
fn secret_encodings_read_the_intended_bytes() {
    let f = Fixture::new();
    // Raw keeps every byte, trailing newline included.
    write(&f.path("nl.key"), [HS_RAW_SECRET, b"\n"].concat(), 0o600);
    // Base64 in the URL-safe alphabet without padding, surrounded by whitespace.
    write(
        &f.path("url.b64"),
        format!("  {}\n\n", b64(HS_B64_SECRET)),
        0o600,
    );
    let verifier = f
        .load_with(|c| {
            c.keys = vec![
                secret_entry("nl", "nl.key", SecretEncoding::Raw),
                secret_entry("url", "url.b64", SecretEncoding::Base64),
            ];
            c.jwks_files.clear();
        })
        .unwrap();
    let sign = |kid: &str, secret: &[u8]| {
        let input = format!(
            "{}.{}",
            b64(header(kid, "HS256").to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        format!(
            "{input}.{}",
            b64(&Signer::Hmac(secret.to_vec()).sign(input.as_bytes()))
        )
    };
    assert!(verifier
        .verify(&sign("nl", &[HS_RAW_SECRET, b"\n"].concat()), NOW)
        .is_ok());
    assert!(matches!(
        refuse_with(&verifier, &sign("nl", HS_RAW_SECRET), NOW),
        JwtError::BadSignature
    ));
    assert!(verifier.verify(&sign("url", HS_B64_SECRET), NOW).is_ok());
}

#[test]
fn absolute_key_paths_are_used_as_given() {
    let f = Fixture::new();
    let other = tempfile::tempdir().unwrap();
    let verifier = f
        .load_with(|c| c.keys[0].file = f.path("rsa.pem"))
        .map(|v| v.key_ids().len());
    assert_eq!(verifier.unwrap(), ALL_KIDS.len());
    let config = f.config.clone();
    // With the wrong base folder only the absolute path would resolve.
    let err = config_error_of(JwtVerifier::load(&config, other.path()));
    assert!(
        err.to_string().contains(&*other.path().to_string_lossy()),
        "{err}"
    );
}

fn load_jwks_error(f: &Fixture, jwks: &Value) -> String {
    write(&f.path("test.jwks"), jwks.to_string(), 0o644);
    let err = config_error_of(f.load_with(|c| {
        c.keys.clear();
        c.jwks_files = vec!["test.jwks".into()];
    }));
    assert!(matches!(err, JwtError::KeyFile { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("test.jwks"), "{message}");
    message
}

#[test]
fn bad_jwks_files_are_refused() {
    let f = Fixture::new();
    let ed = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(&[1; 32])});
    let rsa_public = RsaPublicKeyComponents::<Vec<u8>>::from(rsa_key_pair().public());
    let rsa = json!({"kty": "RSA", "kid": "rsa", "n": b64(&rsa_public.n), "e": b64(&rsa_public.e)});
    let cases = [
        (
            json!({"keys": [{"kty": "oct", "kid": "h", "k": b64(&[1; 32])}]}),
            "oct",
        ),
        (
            json!({"keys": [without(ed.clone(), "kid")]}),
            "missing \"kid\"",
        ),
        (
            json!({"keys": [with(ed.clone(), "kid", json!(""))]}),
            "\"kid\" must be",
        ),
        (
            json!({"keys": [with(ed.clone(), "alg", json!("ES256"))]}),
            "disagrees",
        ),
        (
            json!({"keys": [with(rsa.clone(), "alg", json!("PS256"))]}),
            "disagrees",
        ),
        (
            json!({"keys": [with(rsa.clone(), "alg", json!("HS256"))]}),
            "disagrees",
        ),
        (
            json!({"keys": [with(rsa.clone(), "d", json!("AQAB"))]}),
            "private key material",
        ),
        (
            json!({"keys": [with(ed.clone(), "d", json!(b64(&[2; 32])))]}),
            "private key material",
        ),
        (
            json!({"keys": [with(ed.clone(), "crv", json!("Ed448"))]}),
            "Ed25519",
        ),
        (
            json!({"keys": [with(ed.clone(), "x", json!(b64(&[1; 31])))]}),
            "32 bytes",
        ),
        (
            json!({"keys": [with(ed.clone(), "x", json!("AQ=="))]}),
            "base64url",
        ),
        (
            json!({"keys": [with(ed.clone(), "use", json!("foo"))]}),
            "\"use\"",
        ),
        (
            json!({"keys": [with(rsa.clone(), "n", json!(b64(&rsa_public.n[..128])))]}),
            "2048",
        ),
        (
            json!({"keys": [without(rsa.clone(), "e")]}),
            "missing \"e\"",
        ),
        (
            json!({"keys": [{"kty": "EC", "kid": "e", "crv": "P-384", "x": "AA", "y": "AA"}]}),
            "P-256",
        ),
        (
            json!({"keys": [{"kty": "EC", "kid": "e", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[1; 32])}]}),
            "not a point on the P-256 curve",
        ),
        (json!({"keys": [{"kty": "XYZ", "kid": "x"}]}), "kty"),
        (json!({"keys": [ed.clone(), 3]}), "key 1"),
        (json!({"keys": []}), "no signing keys"),
        (
            json!({"keys": [with(ed.clone(), "use", json!("enc"))]}),
            "no signing keys",
        ),
        (json!({"keys": {}}), "\"keys\" array"),
        (json!([ed.clone()]), "not a JSON object"),
    ];
    for (jwks, expected) in cases {
        let message = load_jwks_error(&f, &jwks);
        assert!(message.contains(expected), "{jwks}: {message}");
    }
    // Duplicate members inside a JWK are refused like in tokens.
    let text = format!(
        r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"a","kid":"b","x":"{}"}}]}}"#,
        b64(&[1; 32])
    );
    write(&f.path("dup.jwks"), text, 0o644);
    let err = config_error_of(f.load_with(|c| c.jwks_files = vec!["dup.jwks".into()]));
    assert!(err.to_string().contains("duplicate"), "{err}");
    // Encryption keys are skipped, not loaded.
    let jwks =
        json!({"keys": [with(ed.clone(), "use", json!("enc")), with(ed, "kid", json!("ed2"))]});
    write(&f.path("mixed.jwks"), jwks.to_string(), 0o644);
    let verifier = f
        .load_with(|c| {
            c.keys.clear();
            c.jwks_files = vec!["mixed.jwks".into()];
        })
        .unwrap();
    assert_eq!(verifier.key_ids(), [("ed2", Alg::EdDsa)]);
}

// ---- hygiene ----

#[test]
fn debug_output_never_shows_key_material() {
    let f = Fixture::new();
    let debug = format!("{:?}", f.verifier);
    for kid in ALL_KIDS {
        assert!(debug.contains(kid), "{debug}");
    }
    let raw = String::from_utf8_lossy(HS_RAW_SECRET);
    let decoded = String::from_utf8_lossy(HS_B64_SECRET);
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(rsa_key_pair().public());
    for secret in [
        &raw[..16],
        &decoded[..16],
        &STANDARD.encode(HS_B64_SECRET)[..16],
        &format!("{:?}", &HS_RAW_SECRET[..8]),
        &format!("{:?}", &public.n[..8]),
    ] {
        assert!(!debug.contains(secret), "{debug}");
    }
    for (kid, key) in &f.verifier.keys {
        let debug = format!("{key:?}");
        assert!(
            !debug.contains(&format!("{:?}", &HS_RAW_SECRET[..4])),
            "{kid}: {debug}"
        );
    }
}

#[test]
fn every_error_has_a_distinct_reason() {
    let all = [
        JwtError::TooLarge,
        JwtError::Malformed,
        JwtError::MissingKeyId,
        JwtError::UnknownKey,
        JwtError::AlgorithmNone,
        JwtError::AlgorithmMismatch,
        JwtError::ForbiddenHeader("jku"),
        JwtError::BadHeader("typ"),
        JwtError::BadSignature,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::IssuedInFuture,
        JwtError::MissingClaim("exp"),
        JwtError::WrongIssuer,
        JwtError::WrongAudience,
        JwtError::LifetimeTooLong,
        JwtError::BadClaim("exp"),
        JwtError::Config(String::new()),
        JwtError::KeyFile {
            path: PathBuf::new(),
            reason: String::new(),
        },
        JwtError::DuplicateKeyId(String::new()),
    ];
    let reasons: HashSet<_> = all.iter().map(JwtError::reason).collect();
    assert_eq!(reasons.len(), all.len());
    assert!(all.iter().all(|e| e
        .reason()
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b == b'_')));
    assert_eq!(all.iter().filter(|e| e.is_config()).count(), 3);
    assert!(all
        .iter()
        .all(|e| (e.kind() == crate::error::ErrorKind::Internal) == e.is_config()));
}

#[test]
fn looks_like_jwt_routes_tokens() {
    let f = Fixture::new();
    assert!(looks_like_jwt(&f.token("ed-pem", &claims())));
    assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.e30."));
    for not_jwt in [
        "bwk_live_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "",
        "eyJ",
        "eyJhbGciOiJub25lIn0.e30",
        "eyJ.a.b.c",
        "abc.def.ghi",
    ] {
        assert!(!looks_like_jwt(not_jwt), "{not_jwt}");
    }
}

#[test]
fn the_verifier_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<JwtVerifier>();
}

#[test]
fn reloading_picks_up_rewritten_key_files_and_keeps_the_old_set_on_a_bad_one() {
    use crate::secrets::watch::{Change, Reload};
    let f = Fixture::new();
    let slot = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(
        JwtVerifier::load(&f.config, f.dir.path()).unwrap(),
    ));
    let (clock, _) = crate::clock::Clock::manual(i64::try_from(NOW).unwrap() * 1000);
    let reload = JwtReload::new(
        slot.clone(),
        f.config.clone(),
        f.dir.path().to_path_buf(),
        clock,
    );
    assert_eq!(reload.dirs(), vec![f.dir.path().to_path_buf()]);
    assert_eq!(reload.reload().unwrap(), Change::Unchanged);
    let old = f.token("hs-raw", &claims());
    assert!(slot.load().verify(&old, NOW).is_ok());
    // A secret too short to be a key: refused, the loaded set stays.
    std::fs::remove_file(f.path("hs.raw")).unwrap();
    write(&f.path("hs.raw"), b"short", 0o600);
    assert!(reload.reload().is_err());
    assert!(slot.load().verify(&old, NOW).is_ok());
    // A new secret: tokens signed with it verify, and those signed with the replaced one keep
    // verifying for the longest token lifetime (dual-read), no longer.
    let fresh = [b'z'; 40];
    std::fs::remove_file(f.path("hs.raw")).unwrap();
    write(&f.path("hs.raw"), fresh, 0o600);
    assert!(matches!(reload.reload().unwrap(), Change::Changed(_)));
    assert!(slot.load().verify(&old, NOW).is_ok(), "dual-read");
    let current = slot.load();
    let (_, until) = &current.previous["hs-raw"];
    let grace = current.max_lifetime_secs + current.leeway_secs;
    assert_eq!(*until, NOW + grace, "the grace runs from the reload");
    assert!(current.verify(&old, *until + 1).is_err(), "past the grace");
    // Public keys are not shared secrets: only HS256 keys are kept.
    assert!(current
        .previous
        .values()
        .all(|(key, _)| key.alg() == Alg::Hs256));
    assert!(current.keys.len() > current.previous.len());
    // A token under some other secret still fails.
    let forged = {
        let input = format!(
            "{}.{}",
            b64(header("hs-raw", "HS256").to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &[b'q'; 40]),
            input.as_bytes(),
        );
        format!("{input}.{}", b64(tag.as_ref()))
    };
    assert!(current.verify(&forged, NOW).is_err());
    let input = format!(
        "{}.{}",
        b64(header("hs-raw", "HS256").to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &fresh), input.as_bytes());
    let new = format!("{input}.{}", b64(tag.as_ref()));
    assert!(slot.load().verify(&new, NOW).is_ok());
}
