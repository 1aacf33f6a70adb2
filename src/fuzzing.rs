//! Fuzz entry points: one function per parser that reads untrusted bytes, each checking
//! properties of what it gets back, not only that nothing panics: what parses re-encodes to
//! something that parses to the same value, what the strict JSON reader accepts serde_json
//! accepts with the same value, a refusal is a typed error, a limit holds at N and refuses at
//! N+1. A property that fails panics with what it found; so does any panic inside a parser.
//!
//! The libFuzzer targets in `fuzz/` call these (one target per function, same name), and
//! `tests/fuzz_corpus.rs` replays the seed corpora and every regression input through them in
//! `cargo test`. See `docs/security.md`, "Fuzzing and known-answer tests".
//!
//! Where a parser only reads a signed token, the target also signs the fuzzer's bytes with the
//! harness key (selected by the first input byte), so the fuzzer reaches the claims parsing
//! behind the signature check.
//!
//! Not part of the server: nothing calls this module outside the fuzz targets and tests.

use std::path::PathBuf;
use std::sync::OnceLock;

use actix_web::http::header::HeaderValue;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use secrecy::SecretString;
use serde::de::IgnoredAny;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::audit::record as audit_record;
use crate::auth::jwt::{JwtConfig, JwtError, JwtVerifier, KeyEntry, SecretEncoding};
use crate::auth::{key, policy_token, session};
use crate::clock::{Clock, Millis};
use crate::http::strict_json::{self, StrictError, DEPTH_CEILING};
use crate::job::envelope::{self, EnvelopeRules};
use crate::job::{Job, JobId};
use crate::store::codec;
use crate::vault::keyring::Kek;
use crate::vault::{sealed, KeyRing};

/// A fuzz target: takes any bytes, panics when a property fails.
pub type Target = fn(&[u8]);

/// Every target, by name, as the corpus test and the smoke script list them.
pub const TARGETS: &[(&str, Target)] = &[
    ("strict_json", strict_json),
    ("job_envelope", job_envelope),
    ("api_key", api_key),
    ("jwt", jwt),
    ("jwks", jwks),
    ("policy_token", policy_token),
    ("session_token", session_token),
    ("totp_code", totp_code),
    ("headers", headers),
    ("store_record", store_record),
    ("sealed_record", sealed_record),
    ("audit_log", audit_log),
    ("secret_file", secret_file),
    ("config_toml", config_toml),
];

/// The time every target checks tokens and jobs at (seconds since the epoch).
const NOW_SECS: u64 = 1_780_000_000;
const NOW_MS: Millis = 1_780_000_000_000;

/// Splits off the first byte (a mode or a small setting) from the rest.
fn mode(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((m, rest)) => (*m, rest),
        None => (0, data),
    }
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The strict JSON reader for request bodies. The first byte sets the depth limit (0 to 103,
/// so the ceiling and past it are reached).
pub fn strict_json(data: &[u8]) {
    let (m, body) = mode(data);
    let limit = usize::from(m) % 104;
    let effective = limit.min(DEPTH_CEILING);
    let strict = strict_json::parse(body, limit);
    let plain = serde_json::from_slice::<Value>(body);
    match strict {
        Ok(value) => {
            match &plain {
                Ok(p) => assert_eq!(p, &value, "strict and serde_json read different values"),
                Err(e) => panic!("strict JSON accepted what serde_json refuses: {e}"),
            }
            let depth = strict_json::depth(&value);
            assert!(depth <= effective, "depth {depth} passed limit {effective}");
            // Limits hold at N and refuse at N+1.
            assert!(
                strict_json::parse(body, depth).is_ok(),
                "refused at its own depth"
            );
            if depth > 0 {
                assert!(
                    matches!(
                        strict_json::parse(body, depth - 1),
                        Err(StrictError::TooDeep { .. })
                    ),
                    "accepted one level over the limit"
                );
            }
            // Round trip through serde_json's writer.
            let again = serde_json::to_vec(&value).map(|t| strict_json::parse(&t, limit));
            assert!(
                matches!(again, Ok(Ok(ref v)) if *v == value),
                "re-serialized body reads differently"
            );
        }
        Err(StrictError::Utf8) => assert!(std::str::from_utf8(body).is_err()),
        Err(StrictError::Syntax { .. }) => {
            assert!(
                plain.is_err(),
                "strict JSON refused a well-formed body as a syntax error"
            );
        }
        Err(StrictError::TooDeep { max, .. }) => {
            assert_eq!(max, effective);
            if let Ok(p) = &plain {
                assert!(
                    strict_json::depth(p) > effective,
                    "refused as too deep within the limit"
                );
            }
        }
        Err(StrictError::DuplicateKey { .. }) => {}
    }
}

/// The job envelope. The first byte: bit 0 keeps unknown attributes; the rest scales the
/// `args` size limit (so N and N+1 are both reached).
pub fn job_envelope(data: &[u8]) {
    let (m, body) = mode(data);
    let Ok(value) = strict_json::parse(body, 32) else {
        return;
    };
    let rules = EnvelopeRules {
        preserve_unknown: m & 1 == 1,
        max_args_bytes: 16 + usize::from(m >> 1) * 8,
        max_meta_bytes: 64,
        ..EnvelopeRules::default()
    };
    let new = match envelope::parse_new_job(&value, &rules, NOW_MS) {
        Ok(new) => new,
        Err(invalid) => {
            assert!(!invalid.message.is_empty(), "a refusal without a message");
            return;
        }
    };
    assert!(envelope::is_valid_job_type(&new.job_type));
    assert!(envelope::is_valid_queue(&new.queue));
    assert!((-100..=100).contains(&new.priority));
    let args_len = new.args.0.len();
    assert!(args_len <= rules.max_args_bytes, "args over the limit");
    assert!(new
        .meta
        .as_ref()
        .is_none_or(|m| m.0.len() <= rules.max_meta_bytes));
    // N passes, N+1 over the limit is refused.
    let at_limit = EnvelopeRules {
        max_args_bytes: args_len,
        ..rules.clone()
    };
    assert!(
        envelope::parse_new_job(&value, &at_limit, NOW_MS).is_ok(),
        "refused at the args limit"
    );
    if args_len > 0 {
        let under = EnvelopeRules {
            max_args_bytes: args_len - 1,
            ..rules.clone()
        };
        assert!(
            envelope::parse_new_job(&value, &under, NOW_MS).is_err(),
            "accepted over the args limit"
        );
    }
    // The job as stored: sealed and opened again, the client's fields come back unchanged.
    let job = Job::from_new(new, harness_job_id(), Some("acme".into()), None, 1, NOW_MS);
    let ring = harness_ring(HARNESS_KEK_A);
    let opened = seal_and_open(&ring, &job);
    assert_eq!(opened.job_type, job.job_type);
    assert_eq!(opened.queue, job.queue);
    assert_eq!(opened.args, job.args);
    assert_eq!(opened.meta, job.meta);
    assert_eq!(opened.extra, job.extra);
    assert_eq!(opened.tags, job.tags);
    // The wire form's client fields read back as the same job.
    let wire = crate::job::view::job_json(&job);
    let mut again = Map::new();
    for field in ["type", "queue", "args", "meta", "priority", "tags"] {
        if let Some(v) = wire.get(field) {
            again.insert(field.into(), v.clone());
        }
    }
    match envelope::parse_new_job(&Value::Object(again), &rules, NOW_MS) {
        Ok(back) => {
            assert_eq!(back.job_type, job.job_type);
            assert_eq!(back.queue, job.queue);
            assert_eq!(back.args, job.args);
            assert_eq!(back.meta, job.meta);
            assert_eq!(back.priority, job.priority);
            assert_eq!(back.tags, job.tags);
        }
        Err(e) => panic!("the wire form of an accepted job is refused: {}", e.message),
    }
}

/// API keys as presented: what parses has the documented shape and reassembles to itself.
pub fn api_key(data: &[u8]) {
    let Some(token) = text(data) else { return };
    if let Some(parsed) = key::parse(token) {
        let secret = token
            .strip_prefix(&format!("{}_{}_{}_", key::PREFIX, parsed.env, parsed.id))
            .unwrap_or_else(|| panic!("parsed parts do not reassemble the key"));
        assert_eq!(secret.len(), 43);
        assert_eq!(parsed.id.len(), 16);
        assert!((1..=16).contains(&parsed.env.len()));
        let shown = key::display_id(parsed.id);
        assert!(!shown.is_empty());
    }
}

/// The HS256 shared secret of the JWT harness (test-only, protects nothing).
const HARNESS_HS256: &[u8] = b"fuzz-harness-hs256-secret-0123456789-abcdef";
const JWT_ISSUER: &str = "https://idp.fuzz.test";
const JWT_AUDIENCE: &str = "bulwark";

fn harness_jwt() -> &'static JwtVerifier {
    static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let dir = scratch_dir("jwt");
        let file = dir.join("hs.key");
        let written = crate::secrets::write_private(&file, HARNESS_HS256);
        assert!(written.is_ok(), "cannot write the harness key: {written:?}");
        let config = JwtConfig {
            issuer: JWT_ISSUER.into(),
            audience: JWT_AUDIENCE.into(),
            keys: vec![KeyEntry {
                kid: "hs".into(),
                alg: crate::auth::jwt::Alg::Hs256,
                file,
                encoding: Some(SecretEncoding::Raw),
            }],
            ..JwtConfig::default()
        };
        let verifier = JwtVerifier::load(&config, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        match verifier {
            Ok(v) => v,
            Err(e) => panic!("the harness verifier does not load: {e}"),
        }
    })
}

fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bulwark-fuzz-{what}-{}", std::process::id()));
    let made = std::fs::create_dir_all(&dir);
    assert!(made.is_ok(), "cannot make {}: {made:?}", dir.display());
    dir
}

fn hs256(secret: &[u8], message: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), message)
        .as_ref()
        .to_vec()
}

/// JWTs. Mode byte odd: the rest is `header JSON \n claims JSON`, signed with the harness key;
/// even: the rest is the token itself.
pub fn jwt(data: &[u8]) {
    let (m, rest) = mode(data);
    let verifier = harness_jwt();
    let token = if m & 1 == 1 {
        let (header, claims) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (&br#"{"alg":"HS256","kid":"hs"}"#[..], rest),
        };
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = hs256(HARNESS_HS256, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    } else {
        match text(rest) {
            Some(t) => t.to_string(),
            None => return,
        }
    };
    let result = verifier.verify(&token, NOW_SECS);
    let too_large = token.len() > JwtConfig::default().max_token_bytes;
    assert_eq!(
        matches!(result, Err(JwtError::TooLarge)),
        too_large,
        "the size limit moved"
    );
    match &result {
        Ok(t) => {
            assert!(!t.subject.is_empty() && t.subject.chars().count() <= 256);
            assert_eq!(t.kid, "hs");
            assert!(t.expires_at > t.issued_at, "expires before it is issued");
            assert!(t.expires_at - t.issued_at <= crate::auth::jwt::MAX_LIFETIME_SECS);
            assert!(t.issued_at <= NOW_SECS + crate::auth::jwt::MAX_LEEWAY_SECS);
            assert!(t.expires_at + crate::auth::jwt::MAX_LEEWAY_SECS >= NOW_SECS);
            // A token that verifies was signed: one changed signature byte fails it.
            let mut forged = token.clone().into_bytes();
            if let Some(last) = forged.last_mut() {
                *last = if *last == b'A' { b'B' } else { b'A' };
            }
            if let Some(f) = text(&forged) {
                assert!(
                    verifier.verify(f, NOW_SECS).is_err(),
                    "a forged signature verifies"
                );
            }
        }
        Err(e) => {
            assert!(!e.reason().is_empty());
        }
    }
    // Verification is a function of the token and the time.
    assert_eq!(
        format!("{result:?}"),
        format!("{:?}", verifier.verify(&token, NOW_SECS))
    );
}

/// JWKS documents: what loads has keys with ids; re-serialized, it loads the same keys.
pub fn jwks(data: &[u8]) {
    let loaded = crate::auth::jwt::jwks_key_ids(data);
    if let Ok(keys) = &loaded {
        assert!(!keys.is_empty());
        assert!(keys.iter().all(|(kid, _)| !kid.is_empty()));
        let reserialized = serde_json::from_slice::<Value>(data)
            .ok()
            .and_then(|v| serde_json::to_vec(&v).ok());
        match reserialized {
            Some(bytes) => assert_eq!(
                crate::auth::jwt::jwks_key_ids(&bytes).ok().as_ref(),
                Some(keys),
                "re-serialized JWKS loads different keys"
            ),
            None => panic!("a JWKS that loads is not JSON"),
        }
    }
}

const HARNESS_POLICY_SECRET: &[u8] = b"fuzz-harness-policy-secret-0123456789-abcdef";

/// Policy tokens. Mode byte odd: the rest is the claims JSON, signed with the harness secret;
/// even: the rest is the token itself.
pub fn policy_token(data: &[u8]) {
    let Some(secret) = policy_token::PolicySecret::new(HARNESS_POLICY_SECRET.to_vec()) else {
        panic!("the harness policy secret is too short");
    };
    let (m, rest) = mode(data);
    let token = if m & 1 == 1 {
        let signed = format!("{}{}", policy_token::PREFIX, URL_SAFE_NO_PAD.encode(rest));
        let tag = hs256(HARNESS_POLICY_SECRET, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
    } else {
        match text(rest) {
            Some(t) => t.to_string(),
            None => return,
        }
    };
    let expected = policy_token::Expected {
        tenant: Some("acme"),
        actor: "svc-billing",
        action: "email.send",
    };
    let max_lifetime = policy_token::MAX_LIFETIME_SECS;
    let result = policy_token::verify(&token, &secret, &expected, max_lifetime, NOW_SECS);
    assert_eq!(
        result == Err(policy_token::PolicyTokenError::TooLarge),
        token.len() > policy_token::MAX_TOKEN_BYTES,
        "the size limit moved"
    );
    if let Ok(claims) = result {
        assert_eq!(claims.tenant.as_deref(), expected.tenant);
        assert_eq!(claims.actor, expected.actor);
        assert_eq!(claims.action, expected.action);
        assert!(claims
            .scopes
            .iter()
            .any(|s| s == policy_token::ENQUEUE_SCOPE));
        assert!(claims.exp > claims.iat && claims.exp - claims.iat <= max_lifetime);
        // Round trip: signed again, the claims verify to themselves.
        match policy_token::sign(&claims, &secret) {
            Ok(again) => assert_eq!(
                policy_token::verify(&again, &secret, &expected, max_lifetime, NOW_SECS),
                Ok(claims)
            ),
            Err(e) => panic!("verified claims cannot be signed again: {e}"),
        }
    }
}

const HARNESS_SESSION_KEY: &[u8] = b"fuzz-harness-session-key-0123456789-abcdef";

/// Session tokens and refresh tokens. Mode byte odd: the rest is the claims JSON, signed with
/// the harness key; even: the rest is the token itself (also tried as a refresh token).
pub fn session_token(data: &[u8]) {
    let mut gates = session::Gates::default();
    gates.users.insert(
        "alice".into(),
        session::Gate {
            credential_version: 3,
            disabled: false,
        },
    );
    let (clock, _) = Clock::manual(NOW_MS);
    let verifier = session::SessionVerifier::new(
        hmac::Key::new(hmac::HMAC_SHA256, HARNESS_SESSION_KEY),
        gates,
        clock,
    );
    let (m, rest) = mode(data);
    let token = if m & 1 == 1 {
        let signed = format!("{}{}", session::ACCESS_PREFIX, URL_SAFE_NO_PAD.encode(rest));
        let tag = hs256(HARNESS_SESSION_KEY, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
    } else {
        match text(rest) {
            Some(t) => t.to_string(),
            None => return,
        }
    };
    let now = i64::try_from(NOW_SECS).unwrap_or(i64::MAX);
    let result = verifier.verify(&token, now);
    if token.len() > 512 {
        assert_eq!(
            result,
            Err(session::SessionError::Malformed),
            "the size limit moved"
        );
    }
    if let Ok(claims) = result {
        assert_eq!((claims.sub.as_str(), claims.cv), ("alice", 3));
        let lifetime = claims.exp - claims.iat;
        assert!(lifetime > 0);
        assert!(
            lifetime <= i64::try_from(crate::config::sessions::MAX_ACCESS_TTL_SECS).unwrap_or(0)
        );
        assert!(claims.exp > now);
        match verifier.sign(&claims) {
            Ok(again) => {
                use secrecy::ExposeSecret;
                assert_eq!(verifier.verify(again.expose_secret(), now), Ok(claims));
            }
            Err(e) => panic!("verified claims cannot be signed again: {e}"),
        }
    }
    // The same text as a refresh token: a digest only for the documented shape, always the same.
    let presented = SecretString::from(token.clone());
    if let Some(digest) = session::refresh_digest(&presented) {
        let body = token.strip_prefix(session::REFRESH_PREFIX).unwrap_or("");
        assert_eq!(body.len(), 43);
        assert_eq!(session::refresh_digest(&presented), Some(digest));
    }
}

/// The TOTP secret of the harness (20 bytes, test-only).
const HARNESS_TOTP: [u8; 20] = *b"fuzz-harness-totp-20";

/// TOTP codes. The input: 8 bytes of time, one byte choosing the last step used, the code.
pub fn totp_code(data: &[u8]) {
    let Some((time, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let (last, code) = mode(rest);
    // Times from 0 up to far in the future, avoiding overflow at the very top.
    let now = u64::from_le_bytes(*time) >> 8;
    let origin = now / 30;
    let last_step = match last % 4 {
        0 => None,
        1 => Some(origin.saturating_sub(2)),
        2 => Some(origin),
        _ => Some(origin.saturating_add(1)),
    };
    let secret = harness_totp_secret();
    let Some(code_text) = text(code) else { return };
    let presented = SecretString::from(code_text.to_string());
    if let Some(step) = crate::auth::users::check_totp(&secret, &presented, now, last_step) {
        assert!(code_text.len() == 6 && code_text.bytes().all(|b| b.is_ascii_digit()));
        assert!(
            step + 1 >= origin && step <= origin + 1,
            "a step outside the skew window"
        );
        assert!(last_step.is_none_or(|l| step > l), "a step accepted twice");
    }
    // The genuine code for now: accepted once, then refused as a replay.
    let genuine = SecretString::from(rfc6238(&HARNESS_TOTP, origin));
    let first = crate::auth::users::check_totp(&secret, &genuine, now, None);
    assert!(first.is_some(), "the genuine code is refused");
    assert_eq!(
        crate::auth::users::check_totp(&secret, &genuine, now, Some(origin + 1)),
        None,
        "a code accepted after its step was used"
    );
}

/// The RFC 6238 code (HMAC-SHA1, six digits) of `step`, computed here independently of the
/// TOTP library the server uses.
fn rfc6238(secret: &[u8], step: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &step.to_be_bytes());
    let t = tag.as_ref();
    let at = usize::from(t[19] & 0x0f);
    let n = u32::from_be_bytes([t[at] & 0x7f, t[at + 1], t[at + 2], t[at + 3]]) % 1_000_000;
    format!("{n:06}")
}

fn harness_totp_secret() -> crate::auth::users::TotpSecret {
    match serde_json::from_value(json!(HARNESS_TOTP.to_vec())) {
        Ok(s) => s,
        Err(e) => panic!("harness TOTP secret: {e}"),
    }
}

/// Header values: the tenant headers, `X-Request-Id`, `OJS-Block-Timeout`, and a job id from a
/// path. The input's lines are the values (header values cannot hold a newline).
pub fn headers(data: &[u8]) {
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let values: Vec<HeaderValue> = lines
        .iter()
        .filter_map(|l| HeaderValue::from_bytes(l).ok())
        .collect();

    // Tenant: the first two values as the two tenant headers.
    let tenant_values = &values[..values.len().min(2)];
    match crate::http::auth::tenant_from_headers(tenant_values) {
        Ok(Some(t)) => {
            assert!(crate::auth::records::is_valid_tenant(&t));
            assert!(tenant_values
                .iter()
                .all(|v| v.to_str().is_ok_and(|s| s.trim() == t)));
        }
        Ok(None) => assert!(tenant_values.is_empty()),
        Err(_) => assert!(!tenant_values.is_empty()),
    }

    for value in &values {
        if let Some(id) = crate::http::middleware::client_request_id(Some(value)) {
            assert!((1..=64).contains(&id.len()));
            assert_eq!(
                id.as_bytes(),
                value.as_bytes(),
                "an echoed id differs from the header"
            );
        }
        for max in [0, 1, 30, 300] {
            let secs = block_timeout_secs(Some(value), max);
            assert!(secs <= max, "block timeout over its maximum");
            if let Some(asked) = value
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                assert_eq!(secs, asked.min(max));
            }
        }
        if let Some(id) = value.to_str().ok().and_then(JobId::parse) {
            assert_eq!(
                id.to_string().as_bytes(),
                value.as_bytes(),
                "a job id that does not print as read"
            );
        }
    }
    // The limit at N and N+1.
    for max in [0u64, 30, u64::MAX - 1] {
        let at = HeaderValue::from(max);
        let over = HeaderValue::from(max + 1);
        let f = block_timeout_secs;
        assert_eq!(
            (f(Some(&at), max), f(Some(&over), max), f(None, max)),
            (max, max, max)
        );
    }
}

/// The block timeout an `OJS-Block-Timeout` value gives: read at the edge, capped by the job
/// service.
fn block_timeout_secs(value: Option<&HeaderValue>, max: u64) -> u64 {
    crate::services::jobs::block_timeout_secs(crate::http::routes::jobs::block_timeout(value), max)
}

/// Encodes, decodes and encodes again: a record read from disk re-encodes to a fixed point.
fn settles<T: serde::de::DeserializeOwned + Serialize>(bytes: &[u8]) {
    if let Ok(value) = codec::decode::<T>(bytes) {
        let once = codec::encode(&value);
        let Ok(once) = once else {
            panic!("a decoded record does not encode: {once:?}")
        };
        match codec::decode::<T>(&once) {
            Ok(back) => assert_eq!(
                codec::encode(&back).ok(),
                Some(once),
                "record encoding is not stable"
            ),
            Err(e) => panic!("a re-encoded record does not decode: {e}"),
        }
    }
}

/// MessagePack records read back from the database files (control file and queue bounds).
pub fn store_record(data: &[u8]) {
    let _ = codec::decode::<IgnoredAny>(data);
    settles::<crate::auth::records::KeyRecord>(data);
    settles::<crate::auth::users::UserRecord>(data);
    settles::<session::RefreshRecord>(data);
    settles::<crate::queue::bounds::QueueBound>(data);
    settles::<crate::audit::index::Summary>(data);
    // A record of another version is never read as this one.
    if codec::version(data) != Some(codec::RECORD_VERSION) {
        assert!(codec::decode::<IgnoredAny>(data).is_err());
    }
}

const HARNESS_KEK_A: (&str, [u8; 32]) = ("kek-a", [0xa1; 32]);
const HARNESS_KEK_B: (&str, [u8; 32]) = ("kek-b", [0xb2; 32]);

fn harness_ring(active: (&str, [u8; 32])) -> KeyRing {
    let keys = vec![
        Kek::new(HARNESS_KEK_A.0, &HARNESS_KEK_A.1, None),
        Kek::new(HARNESS_KEK_B.0, &HARNESS_KEK_B.1, None),
    ];
    match KeyRing::new(keys, Some(active.0)) {
        Ok(r) => r,
        Err(e) => panic!("harness key ring: {e}"),
    }
}

fn harness_job_id() -> JobId {
    JobId(uuid::Uuid::from_u128(
        0x0190_0000_0000_7000_8000_0000_0000_0001,
    ))
}

fn seal_and_open(ring: &KeyRing, job: &Job) -> Job {
    let bytes = match sealed::seal_job(ring, job) {
        Ok(b) => b,
        Err(e) => panic!("a job does not seal: {e}"),
    };
    match sealed::open_job(ring, &bytes) {
        Ok(j) => j,
        Err(e) => panic!("a sealed job does not open: {e}"),
    }
}

/// Job records as stored (clear version 1, sealed version 2). Mode byte odd: the rest is a
/// payload sealed into a job, then one byte of the record (chosen by the payload) is changed:
/// the record must then fail to open, or open with every payload unchanged. Even: the rest is
/// a record read with the harness keys.
pub fn sealed_record(data: &[u8]) {
    let (m, rest) = mode(data);
    let ring = harness_ring(HARNESS_KEK_A);
    if m & 1 == 1 {
        let mut job = harness_job(rest);
        job.result = Some(crate::job::Payload(
            json!(String::from_utf8_lossy(rest)).to_string(),
        ));
        let Ok(bytes) = sealed::seal_job(&ring, &job) else {
            panic!("a job does not seal");
        };
        let original = match sealed::open_job(&ring, &bytes) {
            Ok(j) => j,
            Err(e) => panic!("a sealed job does not open: {e}"),
        };
        let at = rest.iter().map(|b| usize::from(*b)).sum::<usize>() % bytes.len();
        let flip = rest.first().copied().unwrap_or(1).max(1);
        let mut changed = bytes.clone();
        changed[at] ^= flip;
        if let Ok(j) = sealed::open_job(&ring, &changed) {
            assert_eq!(
                j.args, original.args,
                "a changed record opens with other args"
            );
            // An optional sealed field may come back absent: its presence is not bound to the
            // record (the known gap in docs/security.md, kept as an ignored regression test in
            // tests/fuzz_corpus.rs). Its contents never change.
            assert!(
                j.meta.is_none() || j.meta == original.meta,
                "a changed record opens with other meta"
            );
            assert!(
                j.result.is_none() || j.result == original.result,
                "a changed record opens with another result"
            );
            assert_eq!(j.id, original.id, "a changed record opens under another id");
            assert_eq!(
                j.tenant, original.tenant,
                "a changed record opens for another tenant"
            );
        }
        return;
    }
    let head = sealed::job_head(rest);
    match sealed::open_job(&ring, rest) {
        Ok(job) => {
            let Ok(head) = head else {
                panic!("a record opens but its clear part does not read");
            };
            assert_eq!((head.job.id, &head.job.tenant), (job.id, &job.tenant));
            // Written again and re-read, the payloads survive; re-wrapped under another KEK,
            // they open with that ring.
            let again = seal_and_open(&ring, &job);
            assert_eq!(
                (&again.args, &again.meta, &again.result),
                (&job.args, &job.meta, &job.result)
            );
            let other = harness_ring(HARNESS_KEK_B);
            match sealed::rewrap(&other, rest) {
                Ok(Some(bytes)) => match sealed::open_job(&other, &bytes) {
                    Ok(j) => assert_eq!((&j.args, &j.meta), (&job.args, &job.meta)),
                    Err(e) => panic!("a re-wrapped record does not open: {e}"),
                },
                Ok(None) => panic!("a record under kek-a re-wrapped for kek-b is left alone"),
                Err(e) => panic!("a readable record does not re-wrap: {e}"),
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn harness_job(args: &[u8]) -> Job {
    let body = json!({
        "type": "fuzz.job",
        "args": [String::from_utf8_lossy(args)],
        "meta": {"k": "v"},
    });
    match envelope::parse_new_job(&body, &EnvelopeRules::default(), NOW_MS) {
        Ok(new) => Job::from_new(new, harness_job_id(), Some("acme".into()), None, 1, NOW_MS),
        Err(e) => panic!("harness job: {}", e.message),
    }
}

const HARNESS_AUDIT_KEY: &[u8] = b"fuzz-harness-audit-key-0123456789-abcdef";

/// The audit log `audit verify` reads. Mode byte odd: each line of the rest becomes the detail
/// of one record, chained as the writer does; the log must verify, and with any one byte
/// changed it must not. Even: the rest is a log file.
pub fn audit_log(data: &[u8]) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, HARNESS_AUDIT_KEY);
    let (m, rest) = mode(data);
    if m & 1 == 0 {
        let lines = rest.iter().filter(|b| **b == b'\n').count();
        match audit_record::verify(&key, rest, None) {
            Ok(v) => assert!(v.records <= lines as u64),
            Err(b) => {
                assert!(b.line <= lines + 1, "a break past the end of the log");
                assert!(!b.reason.is_empty());
            }
        }
        return;
    }
    let mut log = String::new();
    let mut previous = audit_record::GENESIS.to_string();
    let mut seq = 0u64;
    for line in rest.split(|b| *b == b'\n') {
        seq += 1;
        let detail = serde_json::from_slice::<Value>(line)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(line).into_owned()));
        let event = crate::audit::AuditEvent::new("fuzz.event", crate::audit::Outcome::Success)
            .detail("value", detail);
        let (text, chain) = audit_record::seal(
            &key,
            &previous,
            event.to_unchained(seq, "2026-01-01T00:00:00Z"),
        );
        log.push_str(&text);
        previous = chain;
    }
    match audit_record::verify(&key, log.as_bytes(), None) {
        Ok(v) => assert_eq!((v.records, v.last_seq), (seq, seq)),
        Err(b) => panic!(
            "a log the writer made does not verify: line {} {}",
            b.line, b.reason
        ),
    }
    let mut bytes = log.into_bytes();
    let at = rest.iter().map(|b| usize::from(*b)).sum::<usize>() % bytes.len();
    let flip = rest.last().copied().unwrap_or(1).max(1);
    bytes[at] ^= flip;
    assert!(
        audit_record::verify(&key, &bytes, None).is_err(),
        "a log with byte {at} changed still verifies"
    );
}

/// Mounted secret files: 256-bit hex keys and policy-token secrets.
pub fn secret_file(data: &[u8]) {
    if let Some(key) = crate::secrets::parse_hex_key(data) {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            data.trim_ascii().eq_ignore_ascii_case(hex.as_bytes()),
            "a key that is not its digits"
        );
    } else if let Some(t) = text(data) {
        let t = t.trim_ascii();
        assert!(
            t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()),
            "64 hex digits refused"
        );
    }
    let policy = policy_token::PolicySecret::new(data.to_vec());
    assert_eq!(
        policy.is_some(),
        data.len() >= policy_token::MIN_SECRET_BYTES
    );
}

/// The TOML configuration: parsing and validation refuse with an error, and a configuration
/// that validates yields every derived setting.
pub fn config_toml(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let Ok(config) = crate::config::Config::parse(t) else {
        return;
    };
    if config.validate().is_ok() {
        let _ = config.policy();
        let _ = config.envelope_rules();
        let _ = config.audit_config();
        let _ = config.vault_config();
        let _ = config.watch_config();
        let _ = config.queue_config();
    }
}

/// Seeds for the record targets, made with the harness keys: `(target, file name, bytes)`.
/// `cargo test --test fuzz_corpus -- --ignored write_record_seeds` writes them to
/// `fuzz/seeds/` (after a change of record format).
#[must_use]
pub fn record_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut push = |target, name, bytes: Result<Vec<u8>, String>| match bytes {
        Ok(b) => out.push((target, name, b)),
        Err(e) => panic!("seed {name}: {e}"),
    };
    let enc = |v: Value| codec::encode(&v).map_err(|e| e.to_string());
    push(
        "store_record",
        "key",
        enc(json!({
            "id": "0123456789abcdef", "name": "svc-billing", "roles": ["producer"], "tenant": "acme",
            "scopes": null, "queues": null, "hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            "created_at": NOW_MS, "expires_at": null, "revoked_at": null, "last_used_at": null,
            "rotated_from": null, "replaced_by": null,
        })),
    );
    push(
        "store_record",
        "user",
        enc(json!({
            "username": "alice", "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            "totp_secret": HARNESS_TOTP.to_vec(), "totp_confirmed": true, "last_totp_step": 59_333_333,
            "credential_version": 3, "created_at": NOW_MS, "updated_at": NOW_MS, "disabled": false,
        })),
    );
    push(
        "store_record",
        "refresh",
        enc(json!({
            "family": "f1", "username": "alice", "credential_version": 3, "issued_at": NOW_MS,
            "expires_at": NOW_MS + 1000, "used_at": null, "revoked_at": null,
        })),
    );
    push(
        "store_record",
        "bound",
        enc(json!({
            "max_depth": 100, "strategy": "block", "warning_threshold": 0.8,
        })),
    );
    push(
        "store_record",
        "summary",
        enc(json!({
            "seq": 7, "at": NOW_MS, "event_type": "auth.login", "principal": "alice",
            "tenant": null, "offset": 4096, "len": 200,
        })),
    );
    let ring = harness_ring(HARNESS_KEK_A);
    let mut job = harness_job(b"seed");
    job.result = Some(crate::job::Payload("\"done\"".into()));
    job.push_error(crate::job::JobError {
        code: "handler_error".into(),
        message: "boom".into(),
        error_type: None,
        retryable: Some(true),
        details: None,
        attempt: 1,
        occurred_at: NOW_MS,
    });
    let mut record = vec![0u8];
    record.extend(
        sealed::seal_job(&ring, &job)
            .map_err(|e| e.to_string())
            .unwrap_or_default(),
    );
    push("sealed_record", "sealed-v2", Ok(record));
    let plain = codec::encode_as(sealed::RECORD_PLAIN, &job).map_err(|e| e.to_string());
    push(
        "sealed_record",
        "plain-v1",
        plain.map(|b| [&[0u8][..], &b].concat()),
    );
    push(
        "sealed_record",
        "tamper",
        Ok(b"\x01{\"k\":\"payload to seal\"}".to_vec()),
    );
    out
}
