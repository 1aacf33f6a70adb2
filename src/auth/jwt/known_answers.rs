//! Known answers for the signature and MAC primitives behind every token Bulwark checks,
//! against Project Wycheproof: each public key goes through the loader the server uses for key
//! files (PEM SubjectPublicKeyInfo), and each signature through [`VerifyingKey::verify`].
//! Valid vectors must verify and invalid ones must not; "acceptable" ones are counted only.

use std::path::Path;

use ring::hmac;
use wycheproof::TestResult;

use super::keys::{load_public_pem, VerifyingKey};
use super::Alg;

fn key_from_pem(dir: &Path, pem: &str, alg: Alg) -> VerifyingKey {
    let path = dir.join("key.pem");
    std::fs::write(&path, pem).unwrap();
    load_public_pem(&path, alg).unwrap()
}

/// Checks one vector; returns whether it was a must-verify or must-fail one.
fn check(key: &VerifyingKey, msg: &[u8], sig: &[u8], result: TestResult, id: usize) -> bool {
    let verified = key.verify(msg, sig);
    match result {
        TestResult::Valid => assert!(verified, "valid vector {id} refused"),
        TestResult::Invalid => assert!(!verified, "invalid vector {id} verified"),
        TestResult::Acceptable => return false,
    }
    true
}

#[test]
fn ed25519_matches_wycheproof() {
    use wycheproof::eddsa::{TestName, TestSet};
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for group in TestSet::load(TestName::Ed25519).unwrap().test_groups {
        let key = key_from_pem(dir.path(), &group.pem, Alg::EdDsa);
        for t in group.tests {
            checked += usize::from(check(&key, &t.msg, &t.sig, t.result, t.tc_id));
        }
    }
    assert!(checked > 100, "only {checked} vectors");
}

#[test]
fn ecdsa_p256_sha256_fixed_matches_wycheproof() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for group in TestSet::load(TestName::EcdsaSecp256r1Sha256P1363)
        .unwrap()
        .test_groups
    {
        let key = key_from_pem(dir.path(), &group.pem, Alg::Es256);
        for t in group.tests {
            checked += usize::from(check(&key, &t.msg, &t.sig, t.result, t.tc_id));
        }
    }
    assert!(checked > 100, "only {checked} vectors");
}

#[test]
fn rsa_pkcs1_sha256_matches_wycheproof() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for name in [
        TestName::Rsa2048Sha256,
        TestName::Rsa3072Sha256,
        TestName::Rsa4096Sha256,
    ] {
        for group in TestSet::load(name).unwrap().test_groups {
            let key = key_from_pem(dir.path(), &group.pem, Alg::Rs256);
            for t in group.tests {
                checked += usize::from(check(&key, &t.msg, &t.sig, t.result, t.tc_id));
            }
        }
    }
    assert!(checked > 100, "only {checked} vectors");
}

/// HMAC-SHA256 (HS256 JWTs, policy and session tokens, the audit chain), with ring as the
/// server calls it; truncated tags are compared on their prefix.
#[test]
fn hmac_sha256_matches_wycheproof() {
    use wycheproof::mac::{TestName, TestSet};
    let mut checked = 0;
    for group in TestSet::load(TestName::HmacSha256).unwrap().test_groups {
        for t in group.tests {
            let key = hmac::Key::new(hmac::HMAC_SHA256, &t.key);
            let tag = hmac::sign(&key, &t.msg);
            let matches = if group.tag_size == 256 {
                hmac::verify(&key, &t.msg, &t.tag).is_ok()
            } else {
                tag.as_ref().starts_with(&t.tag) && t.tag.len() * 8 == group.tag_size
            };
            match t.result {
                TestResult::Valid => assert!(matches, "valid vector {} refused", t.tc_id),
                TestResult::Invalid => assert!(!matches, "invalid vector {} accepted", t.tc_id),
                TestResult::Acceptable => continue,
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} vectors");
}
