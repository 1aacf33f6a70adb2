//! Policy tokens: HMAC-signed permission slips for *action* jobs (JobForge's model).
//!
//! A token is `bpt_<claims>.<signature>`, where `<claims>` is the base64url (no padding) of a
//! JSON object and `<signature>` the base64url of HMAC-SHA256 over the text `bpt_<claims>`
//! with the server's policy-token secret. The claims name who may enqueue what, for whom, and
//! until when: `tenant` (a string, or `null` for the system scope), `actor` (a principal
//! name), `action` (a job type), `scopes` (strings; enqueueing needs `"enqueue"`), `iat` and
//! `exp` (seconds since the epoch) and an optional `jti`.
//!
//! [`verify`] caps the size before decoding anything, checks the signature (in constant time)
//! before reading any claim, reads the claims as strict JSON (duplicate or unknown keys are
//! refused), then checks time, lifetime and that the token was made for this very request.
//! Pure: no I/O, no clock (the caller passes `now`), no logging. The enqueue handler calls it
//! through [`super::actions::ActionGuard`].

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use secrecy::{ExposeSecret, SecretSlice};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroize;

/// Every token starts with this.
pub const PREFIX: &str = "bpt_";
/// Longer tokens are refused unread.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Clock skew allowed on `exp` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// The longest lifetime (`exp - iat`) any configuration may allow, in seconds.
pub const MAX_LIFETIME_SECS: u64 = 3600;
/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// The scope a token must carry to enqueue its action.
pub const ENQUEUE_SCOPE: &str = "enqueue";

/// The HMAC key that signs and verifies policy tokens: at least [`MIN_SECRET_BYTES`] bytes,
/// zeroized on drop, never printed.
pub struct PolicySecret(SecretSlice<u8>);

impl PolicySecret {
    /// Wraps secret bytes; `None` if they are shorter than [`MIN_SECRET_BYTES`].
    #[must_use]
    pub fn new(mut bytes: Vec<u8>) -> Option<Self> {
        // An exact-size copy, so that boxing it never reallocates and frees an unwiped buffer;
        // the caller's buffer, spare capacity included, is wiped here.
        let secret = SecretSlice::from(bytes.as_slice().to_vec());
        bytes.zeroize();
        (secret.expose_secret().len() >= MIN_SECRET_BYTES).then_some(Self(secret))
    }

    /// The secret bytes (for a digest or a copy; never logged).
    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// The ring key, made for one use: ring's keys cannot be zeroized, so none is kept.
    fn key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, self.0.expose_secret())
    }
}

impl fmt::Debug for PolicySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PolicySecret([redacted])")
    }
}

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The tenant the job must be enqueued for; `None` (JSON `null`) for the system scope.
    pub tenant: Option<String>,
    /// The principal name allowed to use the token.
    pub actor: String,
    /// The job type the token allows.
    pub action: String,
    /// What the token allows doing with the action; enqueueing needs [`ENQUEUE_SCOPE`].
    pub scopes: Vec<String>,
    /// Issued at, in seconds since the epoch.
    pub iat: u64,
    /// Expires at, in seconds since the epoch.
    pub exp: u64,
    /// An optional token id, for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// What the request the token comes with is: the token must have been made for exactly this.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    /// The tenant the job would be stored for (`None`: system scope).
    pub tenant: Option<&'a str>,
    /// The caller's principal name.
    pub actor: &'a str,
    /// The job's type.
    pub action: &'a str,
}

/// Why a token was refused. [`PolicyTokenError::reason`] is what the audit trail records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyTokenError {
    #[error("policy token longer than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("malformed policy token")]
    Malformed,
    #[error("policy token signature does not verify")]
    BadSignature,
    #[error("policy token expired")]
    Expired,
    #[error("policy token issued in the future")]
    NotYetValid,
    #[error("policy token lifetime exceeds the allowed maximum")]
    LifetimeExceeded,
    #[error("policy token made for another tenant")]
    TenantMismatch,
    #[error("policy token made for another actor")]
    ActorMismatch,
    #[error("policy token made for another action")]
    ActionMismatch,
    #[error("policy token lacks the enqueue scope")]
    ScopeMissing,
}

impl PolicyTokenError {
    /// The refusal reason as the audit trail records it.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::TooLarge => "policy_token_too_large",
            Self::Malformed => "policy_token_invalid",
            Self::BadSignature => "policy_token_bad_signature",
            Self::Expired => "policy_token_expired",
            Self::NotYetValid => "policy_token_not_yet_valid",
            Self::LifetimeExceeded => "policy_token_lifetime_exceeded",
            Self::TenantMismatch => "policy_token_tenant_mismatch",
            Self::ActorMismatch => "policy_token_actor_mismatch",
            Self::ActionMismatch => "policy_token_action_mismatch",
            Self::ScopeMissing => "policy_token_scope_missing",
        }
    }
}

/// Makes a token for `claims`. For tests and for operators (`bulwark policy-token sign`); the
/// server itself only verifies.
pub fn sign(claims: &Claims, secret: &PolicySecret) -> Result<String, PolicyTokenError> {
    let json = serde_json::to_vec(claims).map_err(|_| PolicyTokenError::Malformed)?;
    let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
    let tag = hmac::sign(&secret.key(), signed.as_bytes());
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())))
}

/// Checks a token against the request it came with, at `now` (seconds since the epoch), and
/// returns its claims. `max_lifetime_secs` is the configured lifetime cap (itself at most
/// [`MAX_LIFETIME_SECS`]).
pub fn verify(
    token: &str,
    secret: &PolicySecret,
    expected: &Expected<'_>,
    max_lifetime_secs: u64,
    now: u64,
) -> Result<Claims, PolicyTokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(PolicyTokenError::TooLarge);
    }
    let (signed, signature) = token.split_once('.').ok_or(PolicyTokenError::Malformed)?;
    let payload = signed
        .strip_prefix(PREFIX)
        .ok_or(PolicyTokenError::Malformed)?;
    // The signature comes before any claim is read: nothing an unsigned payload says may
    // change what happens next.
    let tag = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| PolicyTokenError::BadSignature)?;
    hmac::verify(&secret.key(), signed.as_bytes(), &tag)
        .map_err(|_| PolicyTokenError::BadSignature)?;

    let claims = parse_claims(payload)?;
    let leeway = LEEWAY_SECS;
    if claims.exp <= claims.iat {
        return Err(PolicyTokenError::Malformed);
    }
    if now >= claims.exp.saturating_add(leeway) {
        return Err(PolicyTokenError::Expired);
    }
    if claims.iat > now.saturating_add(leeway) {
        return Err(PolicyTokenError::NotYetValid);
    }
    if claims.exp - claims.iat > max_lifetime_secs.min(MAX_LIFETIME_SECS) {
        return Err(PolicyTokenError::LifetimeExceeded);
    }
    if claims.tenant.as_deref() != expected.tenant {
        return Err(PolicyTokenError::TenantMismatch);
    }
    if claims.actor != expected.actor {
        return Err(PolicyTokenError::ActorMismatch);
    }
    if claims.action != expected.action {
        return Err(PolicyTokenError::ActionMismatch);
    }
    if !claims.scopes.iter().any(|s| s == ENQUEUE_SCOPE) {
        return Err(PolicyTokenError::ScopeMissing);
    }
    Ok(claims)
}

/// Decodes the signed claims: strict base64url, strict JSON (no duplicate keys at any depth,
/// no unknown claims), and `tenant` present even when it is `null`, so that leaving it out
/// never quietly means the system scope.
fn parse_claims(payload: &str) -> Result<Claims, PolicyTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| PolicyTokenError::Malformed)?;
    let object = super::jwt::json::parse_object(&bytes).ok_or(PolicyTokenError::Malformed)?;
    if !object.contains_key("tenant") {
        return Err(PolicyTokenError::Malformed);
    }
    serde_json::from_value(Value::Object(object)).map_err(|_| PolicyTokenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn secret() -> PolicySecret {
        PolicySecret::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap()
    }

    fn claims() -> Claims {
        Claims {
            tenant: Some("acme".into()),
            actor: "svc-ops".into(),
            action: "ops.apply".into(),
            scopes: vec!["enqueue".into()],
            iat: NOW - 10,
            exp: NOW + 600,
            jti: None,
        }
    }

    fn expected() -> Expected<'static> {
        Expected {
            tenant: Some("acme"),
            actor: "svc-ops",
            action: "ops.apply",
        }
    }

    fn check(token: &str) -> Result<Claims, PolicyTokenError> {
        verify(token, &secret(), &expected(), 3600, NOW)
    }

    /// A token over arbitrary claim bytes, correctly signed.
    fn raw_token(json: &[u8]) -> String {
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let tag = hmac::sign(&secret().key(), signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips() {
        let mut c = claims();
        c.jti = Some("t-1".into());
        let token = sign(&c, &secret()).unwrap();
        assert!(token.starts_with("bpt_"));
        assert_eq!(token.matches('.').count(), 1);
        assert_eq!(check(&token).unwrap(), c);
    }

    #[test]
    fn the_format_is_the_documented_one() {
        // Built by hand from the description in the module docs, not with `sign`.
        let json = br#"{"tenant":"acme","actor":"svc-ops","action":"ops.apply","scopes":["enqueue"],"iat":1799999990,"exp":1800000600}"#;
        assert_eq!(check(&raw_token(json)).unwrap(), claims());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(PolicySecret::new(vec![7; 31]).is_none());
        assert!(PolicySecret::new(vec![7; 32]).is_some());
        assert_eq!(format!("{:?}", secret()), "PolicySecret([redacted])");
    }

    #[test]
    fn a_tampered_payload_or_another_secret_fails_the_signature() {
        let token = sign(&claims(), &secret()).unwrap();
        let (signed, tag) = token.split_once('.').unwrap();
        let mut other = claims();
        other.action = "ops.destroy".into();
        let forged_payload = sign(&other, &secret()).unwrap();
        let (forged_signed, _) = forged_payload.split_once('.').unwrap();
        assert_eq!(
            check(&format!("{forged_signed}.{tag}")),
            Err(PolicyTokenError::BadSignature)
        );
        let wrong = PolicySecret::new(vec![b'x'; 32]).unwrap();
        let token_b = sign(&claims(), &wrong).unwrap();
        assert_eq!(check(&token_b), Err(PolicyTokenError::BadSignature));
        // A flipped signature character, a truncated or padded signature.
        let mut flipped = tag.to_string();
        let last = if flipped.ends_with('A') { "B" } else { "A" };
        flipped.replace_range(flipped.len() - 1.., last);
        for bad_tag in [flipped.as_str(), &tag[1..], &format!("{tag}=")] {
            assert_eq!(
                check(&format!("{signed}.{bad_tag}")),
                Err(PolicyTokenError::BadSignature),
                "{bad_tag}"
            );
        }
    }

    #[test]
    fn the_signature_is_checked_before_any_claim() {
        // Unsigned garbage claims: the answer is about the signature, not the JSON.
        let token = format!("{PREFIX}bm90IGpzb24.AAAA");
        assert_eq!(check(&token), Err(PolicyTokenError::BadSignature));
        // Expired claims under a wrong secret: still the signature.
        let mut c = claims();
        c.exp = NOW - 1000;
        c.iat = NOW - 2000;
        let wrong = PolicySecret::new(vec![b'y'; 40]).unwrap();
        assert_eq!(
            check(&sign(&c, &wrong).unwrap()),
            Err(PolicyTokenError::BadSignature)
        );
        assert_eq!(
            check(&sign(&c, &secret()).unwrap()),
            Err(PolicyTokenError::Expired)
        );
    }

    #[test]
    fn shapes_other_than_the_format_are_malformed() {
        let good = sign(&claims(), &secret()).unwrap();
        let (signed, tag) = good.split_once('.').unwrap();
        let payload = signed.strip_prefix(PREFIX).unwrap();
        for bad in [
            String::new(),
            "bpt_".into(),
            payload.to_string(),
            format!("{payload}.{tag}"),
            format!("xpt_{payload}.{tag}"),
            signed.to_string(),
        ] {
            assert_eq!(check(&bad), Err(PolicyTokenError::Malformed), "{bad}");
        }
        // A second dot lands in the signature, which then does not decode.
        assert_eq!(
            check(&format!("{good}.x")),
            Err(PolicyTokenError::BadSignature)
        );
    }

    #[test]
    fn oversized_tokens_are_refused_before_anything_else() {
        let mut c = claims();
        c.jti = Some("j".repeat(MAX_TOKEN_BYTES));
        let token = sign(&c, &secret()).unwrap();
        assert_eq!(check(&token), Err(PolicyTokenError::TooLarge));
        assert_eq!(
            check(&"x".repeat(MAX_TOKEN_BYTES + 1)),
            Err(PolicyTokenError::TooLarge)
        );
        // Just under the cap still works.
        c.jti = Some("j".repeat(2000));
        assert!(check(&sign(&c, &secret()).unwrap()).is_ok());
    }

    #[test]
    fn signed_but_strange_claims_are_malformed() {
        for json in [
            // Duplicate keys: one reader could take the first, another the last.
            &br#"{"tenant":"acme","actor":"svc-ops","action":"ops.apply","action":"ops.apply","scopes":["enqueue"],"iat":1799999990,"exp":1800000600}"#[..],
            // Unknown claims.
            br#"{"tenant":"acme","actor":"svc-ops","action":"ops.apply","scopes":["enqueue"],"iat":1799999990,"exp":1800000600,"nbf":1}"#,
            // No tenant at all is not the system scope.
            br#"{"actor":"svc-ops","action":"ops.apply","scopes":["enqueue"],"iat":1799999990,"exp":1800000600}"#,
            // Wrong types.
            br#"{"tenant":"acme","actor":"svc-ops","action":"ops.apply","scopes":"enqueue","iat":1799999990,"exp":1800000600}"#,
            br#"{"tenant":"acme","actor":"svc-ops","action":"ops.apply","scopes":["enqueue"],"iat":1799999990.5,"exp":1800000600}"#,
            br#"{"tenant":"acme","actor":"svc-ops","action":"ops.apply","scopes":["enqueue"],"iat":-1,"exp":1800000600}"#,
            br#"{"tenant":7,"actor":"svc-ops","action":"ops.apply","scopes":["enqueue"],"iat":1799999990,"exp":1800000600}"#,
            // exp before iat.
            br#"{"tenant":"acme","actor":"svc-ops","action":"ops.apply","scopes":["enqueue"],"iat":1800000600,"exp":1800000500}"#,
            b"[]",
            b"not json",
        ] {
            assert_eq!(
                check(&raw_token(json)),
                Err(PolicyTokenError::Malformed),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn time_is_checked_with_a_small_leeway() {
        let at = |iat: u64, exp: u64| {
            let mut c = claims();
            c.iat = iat;
            c.exp = exp;
            check(&sign(&c, &secret()).unwrap())
        };
        assert_eq!(
            at(NOW - 700, NOW - LEEWAY_SECS),
            Err(PolicyTokenError::Expired)
        );
        assert!(at(NOW - 700, NOW - LEEWAY_SECS + 1).is_ok());
        assert!(at(NOW + LEEWAY_SECS, NOW + 600).is_ok());
        assert_eq!(
            at(NOW + LEEWAY_SECS + 1, NOW + 600),
            Err(PolicyTokenError::NotYetValid)
        );
        assert!(at(NOW, NOW + 3600).is_ok());
        assert_eq!(at(NOW, NOW + 3601), Err(PolicyTokenError::LifetimeExceeded));
        // A configured cap below the maximum applies; one above it does not widen it.
        let c = Claims {
            exp: NOW + 600,
            iat: NOW,
            ..claims()
        };
        let token = sign(&c, &secret()).unwrap();
        assert_eq!(
            verify(&token, &secret(), &expected(), 599, NOW),
            Err(PolicyTokenError::LifetimeExceeded)
        );
        let long = sign(
            &Claims {
                exp: NOW + 7200,
                ..c.clone()
            },
            &secret(),
        )
        .unwrap();
        assert_eq!(
            verify(&long, &secret(), &expected(), u64::MAX, NOW),
            Err(PolicyTokenError::LifetimeExceeded)
        );
        // Huge numbers do not overflow.
        assert_eq!(
            at(u64::MAX - 1, u64::MAX),
            Err(PolicyTokenError::NotYetValid)
        );
    }

    #[test]
    fn the_token_must_be_made_for_this_request() {
        let token = sign(&claims(), &secret()).unwrap();
        let v = |e: Expected<'_>| verify(&token, &secret(), &e, 3600, NOW);
        assert_eq!(
            v(Expected {
                tenant: Some("other"),
                ..expected()
            }),
            Err(PolicyTokenError::TenantMismatch)
        );
        assert_eq!(
            v(Expected {
                tenant: None,
                ..expected()
            }),
            Err(PolicyTokenError::TenantMismatch)
        );
        assert_eq!(
            v(Expected {
                actor: "svc-other",
                ..expected()
            }),
            Err(PolicyTokenError::ActorMismatch)
        );
        assert_eq!(
            v(Expected {
                action: "ops.apply.more",
                ..expected()
            }),
            Err(PolicyTokenError::ActionMismatch)
        );
        // The system scope is `null`, and only matches a system-scope request.
        let system = sign(
            &Claims {
                tenant: None,
                ..claims()
            },
            &secret(),
        )
        .unwrap();
        assert!(verify(
            &system,
            &secret(),
            &Expected {
                tenant: None,
                ..expected()
            },
            3600,
            NOW
        )
        .is_ok());
        assert_eq!(
            verify(&system, &secret(), &expected(), 3600, NOW),
            Err(PolicyTokenError::TenantMismatch)
        );
    }

    #[test]
    fn the_enqueue_scope_is_required() {
        for scopes in [
            vec![],
            vec!["ops:write".to_string()],
            vec!["Enqueue".into()],
        ] {
            let token = sign(&Claims { scopes, ..claims() }, &secret()).unwrap();
            assert_eq!(check(&token), Err(PolicyTokenError::ScopeMissing));
        }
        let token = sign(
            &Claims {
                scopes: vec!["ops:write".into(), "enqueue".into()],
                ..claims()
            },
            &secret(),
        )
        .unwrap();
        assert!(check(&token).is_ok());
    }

    #[test]
    fn reasons_are_distinct() {
        let all = [
            PolicyTokenError::TooLarge,
            PolicyTokenError::Malformed,
            PolicyTokenError::BadSignature,
            PolicyTokenError::Expired,
            PolicyTokenError::NotYetValid,
            PolicyTokenError::LifetimeExceeded,
            PolicyTokenError::TenantMismatch,
            PolicyTokenError::ActorMismatch,
            PolicyTokenError::ActionMismatch,
            PolicyTokenError::ScopeMissing,
        ];
        let reasons: std::collections::HashSet<_> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(reasons.len(), all.len());
        assert!(reasons.iter().all(|r| r.starts_with("policy_token_")));
    }
}
