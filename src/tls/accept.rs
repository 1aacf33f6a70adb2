//! The edge of a TLS connection: what the server keeps from a completed handshake (the
//! verified client certificate and the principal it maps to, in the connection's data), and
//! what it does with a failed one (counted by reason; audited as `tls.handshake_failure` or
//! `tls.certificate_rejected`, aggregated per source address, kind and reason with a count, so a
//! scanner cannot flood the audit log and the records still add up to the metrics).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use actix_web::dev::Extensions;
use rustls::{CertificateError, Error as RustlsError};

use super::identity::{self, Identities};
use crate::audit::{AuditEvent, AuditHandle, Outcome};
use crate::auth::Principal;

/// The verified client certificate of a connection (connection data).
#[derive(Clone, Debug)]
pub struct ClientCertificate {
    /// SHA-256 of the leaf, hex.
    pub fingerprint: String,
    /// The configured identity it maps to, if any.
    pub principal: Option<Arc<Principal>>,
}

/// Records the leaf certificate (the first of the peer's chain; rustls has verified the chain
/// during the handshake) and the principal it maps to.
pub fn on_connect(conn: &rustls::ServerConnection, identities: &Identities, ext: &mut Extensions) {
    let Some(leaf) = conn.peer_certificates().and_then(<[_]>::first) else {
        return;
    };
    let Some(peer) = identity::parse(leaf) else {
        return;
    };
    let principal = identities.principal(&peer);
    ext.insert(ClientCertificate {
        fingerprint: peer.fingerprint,
        principal,
    });
}

/// Why a handshake failed, as the audit and metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Failure {
    /// `tls.handshake_failure` or `tls.certificate_rejected`.
    pub event: &'static str,
    /// A short, fixed label.
    pub reason: &'static str,
}

fn certificate_reason(e: &CertificateError) -> &'static str {
    match e {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not_valid_yet"
        }
        CertificateError::Revoked => "revoked",
        CertificateError::UnknownIssuer => "unknown_issuer",
        CertificateError::UnknownRevocationStatus => "unknown_revocation_status",
        CertificateError::BadSignature => "bad_signature",
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "invalid_purpose"
        }
        CertificateError::BadEncoding => "bad_encoding",
        _ => "other",
    }
}

/// Classifies a failed handshake from the error the TLS acceptor returned.
#[must_use]
pub fn classify(timed_out: bool, io: Option<&std::io::Error>) -> Failure {
    let handshake = |reason| Failure {
        event: "tls.handshake_failure",
        reason,
    };
    if timed_out {
        return handshake("timeout");
    }
    let Some(io) = io else {
        return handshake("other");
    };
    match io.get_ref().and_then(|e| e.downcast_ref::<RustlsError>()) {
        Some(RustlsError::InvalidCertificate(e)) => Failure {
            event: "tls.certificate_rejected",
            reason: certificate_reason(e),
        },
        Some(RustlsError::NoCertificatesPresented) => Failure {
            event: "tls.certificate_rejected",
            reason: "no_certificate",
        },
        Some(RustlsError::PeerIncompatible(_)) => handshake("peer_incompatible"),
        Some(RustlsError::PeerMisbehaved(_)) => handshake("peer_misbehaved"),
        Some(RustlsError::InvalidMessage(_)) => handshake("invalid_message"),
        Some(RustlsError::AlertReceived(_)) => handshake("alert_received"),
        Some(_) => handshake("other"),
        None => handshake("io"),
    }
}

/// Stands for the address when the peer's is unknown.
const UNKNOWN: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Counts and audits failed handshakes.
pub struct HandshakeReporter {
    audit: AuditHandle,
}

impl HandshakeReporter {
    #[must_use]
    pub fn new(audit: AuditHandle) -> Self {
        Self { audit }
    }

    /// Counts a failed handshake from `peer` and audits it, aggregated per source address,
    /// kind and reason: the first of a window at once, the rest as one record with their
    /// `count` when the window closes, so the records add up to the metric.
    pub async fn report(&self, peer: Option<SocketAddr>, failure: Failure) {
        let metric = if failure.event == "tls.certificate_rejected" {
            crate::metrics::TLS_CERT_REJECTIONS
        } else {
            crate::metrics::TLS_HANDSHAKE_FAILURES
        };
        metrics::counter!(metric, "reason" => failure.reason).increment(1);
        let ip = peer.map_or(UNKNOWN, |p| p.ip());
        tracing::debug!(source_ip = %ip, event = failure.event, reason = failure.reason, "TLS handshake failed");
        let mut event =
            AuditEvent::new(failure.event, Outcome::Failure).detail("reason", failure.reason);
        event.source_ip = peer.map(|p| p.ip().to_string());
        self.audit
            .aggregate(format!("{ip}|{}", failure.reason), event)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_are_rejections_and_the_rest_handshake_failures() {
        let io = |e: RustlsError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let f = classify(
            false,
            Some(&io(RustlsError::InvalidCertificate(
                CertificateError::Revoked,
            ))),
        );
        assert_eq!(f.event, "tls.certificate_rejected");
        assert_eq!(f.reason, "revoked");
        let f = classify(false, Some(&io(RustlsError::NoCertificatesPresented)));
        assert_eq!(f.reason, "no_certificate");
        let f = classify(
            false,
            Some(&io(RustlsError::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ))),
        );
        assert_eq!(f.event, "tls.handshake_failure");
        assert_eq!(f.reason, "peer_incompatible");
        assert_eq!(classify(true, None).reason, "timeout");
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(classify(false, Some(&eof)).reason, "io");
    }
}
