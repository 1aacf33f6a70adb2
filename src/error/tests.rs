//! Every domain error answers with the code, and so the status, it answered with before the one
//! table; and a few envelopes in full, where they carry more than the table's defaults.

use std::time::Duration;

use serde_json::{json, Value};

use super::{ApiError, Code, ErrorCode};
use crate::auth::accounts::AccountError;
use crate::auth::login_throttle::{Scope, Throttled};
use crate::auth::policy::PolicyError;
use crate::auth::records::KeyError;
use crate::auth::users::{PolicyViolation, UserError};
use crate::auth::{AuthError, Permission};
use crate::http::strict_json::StrictError;
use crate::job::envelope::{Invalid, InvalidKind};
use crate::job::{JobId, JobState};
use crate::queue::bounds::{Quota, Strategy};
use crate::queue::QueueError;
use crate::secrets::SecretFileError;
use crate::store::StoreError;
use crate::vault::VaultError;

/// A storage failure whose text must never reach the client.
fn store() -> StoreError {
    StoreError::Corrupt("SECRET-CAUSE".into())
}

/// The error as the client sees it, with the code its type says, checked to be the same.
fn answer<E: ErrorCode>(e: E) -> (ApiError, Code) {
    let said = e.code();
    let api = ApiError::from(e);
    assert_eq!(api.error_code(), said);
    (api, said)
}

/// (the error, its wire code, its status), as before the table.
fn check(rows: Vec<(ApiError, Code, &str, u16)>) {
    for (api, said, wire, status) in rows {
        assert_eq!(
            (api.code(), said.status_u16()),
            (wire, status),
            "{said:?}: {}",
            api.message()
        );
        assert!(!api.message().contains("SECRET-CAUSE"), "{said:?} leaks");
        assert!(!api.message().is_empty(), "{said:?} says nothing");
        // A retryable answer says when to retry; no other does.
        assert_eq!(
            api.retry_after_secs().is_some(),
            said.row().retryable,
            "{said:?}"
        );
    }
}

macro_rules! rows {
    ($(($e:expr, $wire:expr, $status:expr)),* $(,)?) => {
        vec![$({ let (api, said) = answer($e); (api, said, $wire, $status) }),*]
    };
}

#[test]
fn every_queue_error_keeps_its_status() {
    check(rows![
        (QueueError::NotFound, "not_found", 404),
        (QueueError::OtherTenant, "not_found", 404),
        (QueueError::Duplicate, "duplicate", 409),
        (
            QueueError::InvalidState {
                action: "cancel",
                current: JobState::Completed,
            },
            "conflict",
            409
        ),
        (QueueError::LeaseNotHeld, "conflict", 409),
        (QueueError::NotInDeadLetter, "not_found", 404),
        (
            QueueError::QueueFull {
                depth: 1,
                bound: 1,
                strategy: Strategy::Reject,
            },
            "queue_full",
            429
        ),
        (
            QueueError::QuotaExceeded {
                quota: Quota::PrincipalPending,
                limit: 1,
            },
            "quota_exceeded",
            429
        ),
        (
            QueueError::QuotaExceeded {
                quota: Quota::TenantActive,
                limit: 1,
            },
            "tenant_limit_exceeded",
            429
        ),
        (
            QueueError::TooManyWaits {
                limit: 1,
                scope: "principal",
            },
            "too_many_long_polls",
            429
        ),
        (QueueError::CredentialInvalid, "unauthenticated", 401),
        (
            QueueError::Unreadable(JobId::generate()),
            "job_unreadable",
            500
        ),
        (QueueError::Storage(store()), "backend_unavailable", 503),
        (QueueError::Unavailable, "backend_unavailable", 503),
    ]);
}

#[test]
fn every_auth_error_keeps_its_status() {
    check(rows![
        (AuthError::MissingCredentials, "unauthenticated", 401),
        (AuthError::Malformed, "unauthenticated", 401),
        (AuthError::UnknownKey, "unauthenticated", 401),
        (AuthError::WrongSecret, "unauthenticated", 401),
        (AuthError::Revoked, "unauthenticated", 401),
        (AuthError::Expired, "unauthenticated", 401),
        (AuthError::InvalidToken("bad"), "unauthenticated", 401),
        (
            AuthError::Throttled {
                retry_after: Duration::from_millis(1500),
            },
            "rate_limited",
            429
        ),
        (
            AuthError::Forbidden {
                principal: "p".into(),
                permission: Permission::Enqueue,
                queue: Some("q".into()),
                reason: "acl",
            },
            "permission_denied",
            403
        ),
        (AuthError::Storage(store()), "backend_unavailable", 503),
        (AuthError::Unavailable, "backend_unavailable", 503),
    ]);
}

#[test]
fn every_vault_error_keeps_its_status() {
    check(rows![
        (
            VaultError::KeySet("SECRET-CAUSE".into()),
            "internal_error",
            500
        ),
        (
            VaultError::KeyFile(SecretFileError::Missing {
                path: "SECRET-CAUSE".into(),
            }),
            "internal_error",
            500
        ),
        (
            VaultError::MissingKeks {
                dir: "SECRET-CAUSE".into(),
                missing: "k".into(),
            },
            "internal_error",
            500
        ),
        (VaultError::NoActiveKey, "backend_unavailable", 503),
        (
            VaultError::UnknownKek {
                kek: "SECRET-CAUSE".into(),
            },
            "internal_error",
            500
        ),
        (VaultError::Undecryptable, "internal_error", 500),
        (
            VaultError::Corrupt("SECRET-CAUSE".into()),
            "internal_error",
            500
        ),
        (VaultError::Storage(store()), "backend_unavailable", 503),
        (VaultError::Unavailable, "backend_unavailable", 503),
    ]);
}

fn user_errors() -> Vec<(UserError, &'static str, u16)> {
    vec![
        (UserError::InvalidUsername, "invalid_request", 400),
        (UserError::Exists, "conflict", 409),
        (UserError::NotFound, "not_found", 404),
        (
            UserError::Policy(PolicyViolation {
                missing: vec!["length".into()],
            }),
            "invalid_request",
            422,
        ),
        (UserError::Store(store()), "backend_unavailable", 503),
        (UserError::Crypto, "backend_unavailable", 503),
    ]
}

#[test]
fn every_account_and_user_error_keeps_its_status() {
    check(rows![
        (
            AccountError::Throttled(Throttled {
                scope: Scope::SourceIp,
                retry_after_secs: 0,
            }),
            "rate_limited",
            429
        ),
        (
            AccountError::Refused("wrong password"),
            "unauthenticated",
            401
        ),
        (
            AccountError::RefreshReuse {
                username: "u".into(),
                family: "f".into(),
            },
            "unauthenticated",
            401
        ),
        (AccountError::Unavailable, "backend_unavailable", 503),
    ]);
    for (e, wire, status) in user_errors() {
        check(rows![(e, wire, status)]);
    }
    // A user error answers the same on its own and inside an account error.
    for ((alone, ..), (inside, ..)) in user_errors().into_iter().zip(user_errors()) {
        let (alone, inside) = (
            ApiError::from(alone),
            ApiError::from(AccountError::User(inside)),
        );
        assert_eq!(envelope(&alone), envelope(&inside));
    }
}

#[test]
fn every_key_error_keeps_its_status() {
    check(rows![
        (KeyError::Store(store()), "backend_unavailable", 503),
        (KeyError::Crypto, "backend_unavailable", 503),
        (
            KeyError::Policy(PolicyError::UnknownRole("r".into())),
            "invalid_request",
            422
        ),
        (
            KeyError::Invalid {
                field: "name",
                message: "bad name",
            },
            "invalid_request",
            400
        ),
        (KeyError::NotFound, "not_found", 404),
        (KeyError::NotLive, "conflict", 409),
    ]);
}

fn invalid(kind: InvalidKind, field: Option<&str>) -> Invalid {
    Invalid {
        kind,
        message: "m".into(),
        field: field.map(str::to_string),
        unknown: vec!["x".into()],
    }
}

#[test]
fn every_envelope_and_body_error_keeps_its_status() {
    check(rows![
        (
            invalid(InvalidKind::Request, Some("type")),
            "invalid_request",
            400
        ),
        (
            invalid(InvalidKind::Policy, Some("f")),
            "invalid_retry_policy",
            422
        ),
        (
            invalid(InvalidKind::UnknownFields, None),
            "invalid_request",
            422
        ),
        (
            invalid(InvalidKind::TooLarge, Some("args")),
            "payload_too_large",
            413
        ),
        (StrictError::Utf8, "invalid_payload", 400),
        (
            StrictError::Syntax { line: 1, column: 2 },
            "invalid_payload",
            400
        ),
        (
            StrictError::TooDeep {
                max: 1,
                path: "/a".into(),
            },
            "invalid_payload",
            400
        ),
        (
            StrictError::DuplicateKey { path: "/a".into() },
            "invalid_payload",
            400
        ),
    ]);
}

/// What the client sees of an error: the body, `Retry-After` and the extra headers.
fn envelope(e: &ApiError) -> (Value, Option<u64>, Vec<(&'static str, String)>) {
    let headers = e.extra_headers().map(|(n, v)| (n, v.to_string())).collect();
    (e.body(), e.retry_after_secs(), headers)
}

fn error_of(e: &ApiError) -> Value {
    e.body()["error"].clone()
}

#[test]
fn envelopes_carry_what_each_error_says() {
    let full = ApiError::from(QueueError::QueueFull {
        depth: 7,
        bound: 5,
        strategy: Strategy::Reject,
    });
    assert_eq!(full.retry_after_secs(), Some(5), "the table's Retry-After");
    assert_eq!(
        envelope(&full).2,
        vec![
            ("X-OJS-Queue-Depth", "7".to_string()),
            ("X-OJS-Queue-Bound", "5".to_string())
        ]
    );
    assert_eq!(
        error_of(&full)["details"],
        json!({ "depth": 7, "bound": 5, "strategy": "reject" })
    );
    assert_eq!(
        error_of(&full)["message"],
        "the queue has reached its depth bound (5)"
    );

    // Throttles round up and never say 0.
    let auth = ApiError::from(AuthError::Throttled {
        retry_after: Duration::from_millis(1500),
    });
    assert_eq!(auth.retry_after_secs(), Some(2));
    let login = ApiError::from(AccountError::Throttled(Throttled {
        scope: Scope::Username,
        retry_after_secs: 0,
    }));
    assert_eq!(login.retry_after_secs(), Some(1));

    // The 401 and 404 carry the table's hints; the 403 names what was refused.
    let e = error_of(&ApiError::from(AuthError::Revoked));
    assert_eq!(e["message"], "missing or invalid credentials");
    assert_eq!(e["hint"], "send Authorization: Bearer <api key>");
    let e = error_of(&ApiError::from(KeyError::NotFound));
    assert_eq!(e["message"], "api key not found");
    assert_eq!(e["details"], json!({ "resource_type": "api key" }));
    assert_eq!(
        e["hint"],
        "check the identifier; it may have been deleted or never existed"
    );
    let e = error_of(&ApiError::from(AuthError::Forbidden {
        principal: "p".into(),
        permission: Permission::Enqueue,
        queue: Some("q".into()),
        reason: "acl",
    }));
    assert_eq!(
        e["message"],
        "Principal 'p' does not have 'enqueue' permission on queue 'q'."
    );
    assert_eq!(
        e["details"],
        json!({ "principal": "p", "operation": "enqueue", "queue": "q" })
    );

    // A malformed envelope names its field only when it has one; a policy one always.
    let e = error_of(&ApiError::from(invalid(InvalidKind::Request, None)));
    assert!(e.get("details").is_none());
    let e = error_of(&ApiError::from(invalid(InvalidKind::Policy, None)));
    assert_eq!(e["details"], json!({ "field": null }));
    let e = error_of(&ApiError::from(invalid(InvalidKind::UnknownFields, None)));
    assert_eq!(e["details"], json!({ "unknown_fields": ["x"] }));
    assert!(e["hint"].as_str().is_some_and(|h| h.contains("preserve")));

    // The vault never names what failed; a 503 is the table's, with its Retry-After.
    let e = ApiError::from(VaultError::UnknownKek { kek: "k1".into() });
    assert_eq!(
        e.message(),
        "the key vault could not complete the operation"
    );
    let e = ApiError::from(QueueError::Storage(store()));
    assert_eq!(envelope(&e), envelope(&ApiError::unavailable()));
    assert_eq!(e.retry_after_secs(), Some(1));
}

#[test]
fn a_bare_code_is_its_row() {
    for code in Code::ALL {
        let row = code.row();
        let e = ApiError::from(code);
        assert_eq!(
            (e.message(), e.hint(), e.retry_after_secs()),
            (row.message, row.hint, row.retry_after_secs),
            "{code:?}"
        );
    }
}

#[test]
fn every_code_is_listed_once_and_each_wire_code_and_status_pair_once() {
    let mut seen = std::collections::HashSet::new();
    for code in Code::ALL {
        let row = code.row();
        assert!(
            seen.insert((row.wire, row.status)),
            "{code:?} repeats a row"
        );
    }
    assert_eq!(seen.len(), Code::ALL.len());
}
