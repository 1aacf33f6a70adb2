//! Client certificates as identities: what a verified leaf certificate says (fingerprint,
//! subject common name, subject alternative names, expiry), and which configured principal it
//! maps to. Pure functions; the connection hook ([`super::accept`]) calls them once per
//! connection.

use std::sync::Arc;

use ring::digest;

use super::config::ClientIdentity;
use crate::auth::{Credential, Policy, Principal};

/// What the server reads from a client's leaf certificate (after rustls verified it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCert {
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint: String,
    pub common_name: Option<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
}

/// The SHA-256 fingerprint of a DER certificate, lowercase hex.
#[must_use]
pub fn fingerprint(der: &[u8]) -> String {
    let d = digest::digest(&digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a DER certificate; `None` if it does not parse.
#[must_use]
pub fn parse(der: &[u8]) -> Option<PeerCert> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut peer = PeerCert {
        fingerprint: fingerprint(der),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        not_after: cert.validity().not_after.timestamp(),
        ..PeerCert::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(v) => peer.dns.push((*v).to_string()),
                GeneralName::URI(v) => peer.uris.push((*v).to_string()),
                GeneralName::RFC822Name(v) => peer.emails.push((*v).to_string()),
                _ => {}
            }
        }
    }
    Some(peer)
}

/// Whether `peer` is the certificate `identity` describes.
#[must_use]
pub fn matches(identity: &ClientIdentity, peer: &PeerCert) -> bool {
    if let Some(cn) = &identity.subject_cn {
        return peer.common_name.as_deref() == Some(cn.as_str());
    }
    if let Some(dns) = &identity.san_dns {
        return peer.dns.iter().any(|d| d.eq_ignore_ascii_case(dns));
    }
    if let Some(uri) = &identity.san_uri {
        return peer.uris.iter().any(|u| u == uri);
    }
    if let Some(email) = &identity.san_email {
        return peer.emails.iter().any(|e| e.eq_ignore_ascii_case(email));
    }
    false
}

/// The configured client identities and the roles they refer to.
#[derive(Debug)]
pub struct Identities {
    list: Vec<ClientIdentity>,
    policy: Arc<Policy>,
}

impl Identities {
    /// `list` was validated with `policy` ([`super::TlsConfig::validate`]).
    #[must_use]
    pub fn new(list: Vec<ClientIdentity>, policy: Arc<Policy>) -> Self {
        Self { list, policy }
    }

    /// The principal a verified certificate authenticates as: the first identity it matches,
    /// valid until the certificate expires. `None` when no identity matches.
    #[must_use]
    pub fn principal(&self, peer: &PeerCert) -> Option<Arc<Principal>> {
        let identity = self.list.iter().find(|id| matches(id, peer))?;
        Some(Arc::new(Principal::external(
            identity.name.clone(),
            identity.tenant.clone(),
            Credential::Certificate {
                fingerprint: peer.fingerprint.clone(),
            },
            identity.roles.clone(),
            identity.queues.clone(),
            Some(peer.not_after.saturating_mul(1000)),
            &self.policy,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerCert {
        PeerCert {
            fingerprint: "ab".repeat(32),
            common_name: Some("worker-1".into()),
            dns: vec!["Worker-1.Example".into()],
            uris: vec!["spiffe://example/worker".into()],
            emails: vec!["W@example.com".into()],
            not_after: 4_000_000_000,
        }
    }

    fn identity() -> ClientIdentity {
        ClientIdentity {
            name: "w".into(),
            tenant: Some("acme".into()),
            roles: vec!["worker".into()],
            queues: None,
            subject_cn: None,
            san_dns: None,
            san_uri: None,
            san_email: None,
        }
    }

    #[test]
    fn each_matcher_compares_its_own_field() {
        let p = peer();
        let cn = ClientIdentity {
            subject_cn: Some("worker-1".into()),
            ..identity()
        };
        assert!(matches(&cn, &p));
        let cn_case = ClientIdentity {
            subject_cn: Some("WORKER-1".into()),
            ..identity()
        };
        assert!(!matches(&cn_case, &p));
        let dns = ClientIdentity {
            san_dns: Some("worker-1.example".into()),
            ..identity()
        };
        assert!(matches(&dns, &p));
        let uri = ClientIdentity {
            san_uri: Some("spiffe://example/worker".into()),
            ..identity()
        };
        assert!(matches(&uri, &p));
        let uri_other = ClientIdentity {
            san_uri: Some("spiffe://example/worker2".into()),
            ..identity()
        };
        assert!(!matches(&uri_other, &p));
        let email = ClientIdentity {
            san_email: Some("w@EXAMPLE.com".into()),
            ..identity()
        };
        assert!(matches(&email, &p));
        assert!(!matches(&identity(), &p));
    }

    #[test]
    fn a_matched_certificate_is_a_principal_with_the_identity_roles() {
        let ids = Identities::new(
            vec![ClientIdentity {
                subject_cn: Some("worker-1".into()),
                ..identity()
            }],
            Arc::new(Policy::default()),
        );
        let p = ids.principal(&peer()).unwrap();
        assert_eq!(p.name(), "w");
        assert_eq!(p.tenant(), Some("acme"));
        assert!(p.credential_id().starts_with("cert:abababab"));
        assert!(p.require(crate::auth::Permission::Dequeue).is_ok());
        assert!(p.require(crate::auth::Permission::Enqueue).is_err());
        let other = PeerCert {
            common_name: Some("someone".into()),
            ..peer()
        };
        assert!(ids.principal(&other).is_none());
    }
}
