//! `[tls]`: the server certificate, client-certificate authentication and the identities client
//! certificates map to. File paths are relative to the secrets folder unless absolute.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::policy::{Policy, QueuePattern};
use crate::auth::records::{is_valid_name, is_valid_tenant};

/// Whether clients are asked for a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    None,
    /// A client may present one; if it does, it must verify.
    Optional,
    /// Every connection must present a certificate that verifies.
    Required,
}

/// `[tls]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Serve HTTPS (TLS 1.3 and 1.2) instead of plain HTTP.
    pub enabled: bool,
    /// The server certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// Its private key (PEM, PKCS#8, SEC1 or PKCS#1; mode 0600).
    pub key_file: PathBuf,
    /// Ask clients for a certificate: `none`, `optional` or `required`.
    pub client_auth: ClientAuth,
    /// The CA bundle (PEM) client certificates must chain to.
    pub client_ca_file: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER) of that CA.
    pub client_crl_files: Vec<PathBuf>,
    /// How often the certificate files are checked for changes, in seconds (0: only on
    /// SIGHUP).
    pub reload_poll_secs: u64,
    /// Seconds a client has to complete the handshake.
    pub handshake_timeout_secs: u64,
    /// A server certificate expiring within this many days shows as `expiring` in health and
    /// metrics.
    pub expiry_warning_days: u32,
    /// Roles that may only be used over a connection presenting a verified client certificate
    /// mapped to the same principal (see README, "TLS and client certificates").
    pub require_certificate_for_roles: Vec<String>,
    /// Client certificates that authenticate a principal (`[[tls.client_identities]]`).
    pub client_identities: Vec<ClientIdentity>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            cert_file: PathBuf::from("tls/server.crt"),
            key_file: PathBuf::from("tls/server.key"),
            client_auth: ClientAuth::None,
            client_ca_file: None,
            client_crl_files: Vec::new(),
            reload_poll_secs: 10,
            handshake_timeout_secs: 10,
            expiry_warning_days: 14,
            require_certificate_for_roles: Vec::new(),
            client_identities: Vec::new(),
        }
    }
}

/// One `[[tls.client_identities]]`: a verified client certificate whose subject common name
/// or subject alternative name equals the one given authenticates as this principal. Exactly
/// one of `subject_cn`, `san_dns`, `san_uri` and `san_email` is set.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientIdentity {
    /// The principal name (leases and job ownership are bound to it).
    pub name: String,
    /// Its tenant; system scope when left out.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Its roles.
    pub roles: Vec<String>,
    /// The queues it may use (all its roles allow when left out).
    #[serde(default)]
    pub queues: Option<Vec<QueuePattern>>,
    /// Match the subject common name exactly.
    #[serde(default)]
    pub subject_cn: Option<String>,
    /// Match a DNS subject alternative name (case-insensitive).
    #[serde(default)]
    pub san_dns: Option<String>,
    /// Match a URI subject alternative name exactly (e.g. a SPIFFE id).
    #[serde(default)]
    pub san_uri: Option<String>,
    /// Match an email subject alternative name (case-insensitive).
    #[serde(default)]
    pub san_email: Option<String>,
}

impl ClientIdentity {
    /// What it matches on, as `kind:value` (for duplicates and messages).
    #[must_use]
    pub fn matcher(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(v) = &self.subject_cn {
            out.push(format!("cn:{v}"));
        }
        if let Some(v) = &self.san_dns {
            out.push(format!("dns:{}", v.to_ascii_lowercase()));
        }
        if let Some(v) = &self.san_uri {
            out.push(format!("uri:{v}"));
        }
        if let Some(v) = &self.san_email {
            out.push(format!("email:{}", v.to_ascii_lowercase()));
        }
        out
    }
}

/// Why `[tls]` is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsConfigError {
    #[error("tls.client_auth, tls.client_identities and tls.require_certificate_for_roles need tls.enabled = true")]
    NotEnabled,
    #[error("tls.client_auth = \"{0}\" needs tls.client_ca_file (the CA bundle client certificates chain to)")]
    NoClientCa(&'static str),
    #[error("tls.client_ca_file and tls.client_crl_files need tls.client_auth = \"optional\" or \"required\"")]
    CaWithoutClientAuth,
    #[error("tls.client_identities and tls.require_certificate_for_roles need tls.client_auth = \"optional\" or \"required\"")]
    IdentitiesWithoutClientAuth,
    #[error("tls.client_identities entry `{0}`: set exactly one of subject_cn, san_dns, san_uri, san_email (non-empty)")]
    Matcher(String),
    #[error("tls.client_identities entry `{0}`: the name must be 1 to 128 letters, digits, . _ - @, starting with a letter or digit")]
    Name(String),
    #[error("tls.client_identities entry `{0}`: the tenant must be 1 to 64 lowercase letters, digits, _ or -")]
    Tenant(String),
    #[error("tls.client_identities entry `{0}`: {1}")]
    Roles(String, String),
    #[error("tls.client_identities: two entries match on {0}")]
    Duplicate(String),
    #[error("tls.require_certificate_for_roles entry {0} is not a defined role")]
    UnknownRole(String),
    #[error("tls.handshake_timeout_secs must be from 1 to 60")]
    HandshakeTimeout,
}

impl TlsConfig {
    /// Checks the section against the roles the server knows.
    pub fn validate(&self, policy: &Policy) -> Result<(), TlsConfigError> {
        let wants_client_certs = self.client_auth != ClientAuth::None
            || !self.client_identities.is_empty()
            || !self.require_certificate_for_roles.is_empty();
        if !self.enabled {
            return if wants_client_certs {
                Err(TlsConfigError::NotEnabled)
            } else {
                Ok(())
            };
        }
        if !(1..=60).contains(&self.handshake_timeout_secs) {
            return Err(TlsConfigError::HandshakeTimeout);
        }
        match self.client_auth {
            ClientAuth::None => {
                if self.client_ca_file.is_some() || !self.client_crl_files.is_empty() {
                    return Err(TlsConfigError::CaWithoutClientAuth);
                }
                if wants_client_certs {
                    return Err(TlsConfigError::IdentitiesWithoutClientAuth);
                }
            }
            ClientAuth::Optional | ClientAuth::Required => {
                if self.client_ca_file.is_none() {
                    let mode = if self.client_auth == ClientAuth::Optional {
                        "optional"
                    } else {
                        "required"
                    };
                    return Err(TlsConfigError::NoClientCa(mode));
                }
            }
        }
        let known: BTreeSet<&str> = policy.role_names().collect();
        // Entries are named by position, never by a value from the file (config errors do not
        // echo values: the wrong one may be a pasted secret).
        if let Some(i) = self
            .require_certificate_for_roles
            .iter()
            .position(|r| !known.contains(r.as_str()))
        {
            return Err(TlsConfigError::UnknownRole(format!("#{}", i + 1)));
        }
        let mut seen = BTreeSet::new();
        for (i, id) in self.client_identities.iter().enumerate() {
            let entry = format!("#{}", i + 1);
            let matchers = id.matcher();
            let empty = [&id.subject_cn, &id.san_dns, &id.san_uri, &id.san_email]
                .iter()
                .any(|m| m.as_ref().is_some_and(String::is_empty));
            if matchers.len() != 1 || empty {
                return Err(TlsConfigError::Matcher(entry));
            }
            if !is_valid_name(&id.name) {
                return Err(TlsConfigError::Name(entry));
            }
            if id.tenant.as_deref().is_some_and(|t| !is_valid_tenant(t)) {
                return Err(TlsConfigError::Tenant(entry));
            }
            policy
                .check_roles(&id.roles)
                .map_err(|_| TlsConfigError::Roles(entry, "a role is not defined".into()))?;
            for m in matchers {
                if !seen.insert(m.clone()) {
                    return Err(TlsConfigError::Duplicate(m));
                }
            }
        }
        Ok(())
    }

    /// The files, resolved against the secrets folder.
    #[must_use]
    pub fn paths(&self, secrets_dir: &Path) -> TlsPaths {
        let at = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                secrets_dir.join(p)
            }
        };
        TlsPaths {
            cert: at(&self.cert_file),
            key: at(&self.key_file),
            client_ca: self.client_ca_file.as_deref().map(at),
            client_crls: self.client_crl_files.iter().map(|p| at(p)).collect(),
        }
    }
}

/// The certificate files, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_crls: Vec<PathBuf>,
}

impl TlsPaths {
    /// Every file, in a fixed order.
    #[must_use]
    pub fn all(&self) -> Vec<&Path> {
        let mut out = vec![self.cert.as_path(), self.key.as_path()];
        out.extend(self.client_ca.as_deref());
        out.extend(self.client_crls.iter().map(PathBuf::as_path));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str) -> ClientIdentity {
        ClientIdentity {
            name: name.into(),
            tenant: Some("acme".into()),
            roles: vec!["worker".into()],
            queues: None,
            subject_cn: Some(name.into()),
            san_dns: None,
            san_uri: None,
            san_email: None,
        }
    }

    fn mtls() -> TlsConfig {
        TlsConfig {
            enabled: true,
            client_auth: ClientAuth::Optional,
            client_ca_file: Some("tls/ca.crt".into()),
            client_identities: vec![identity("worker-1")],
            ..TlsConfig::default()
        }
    }

    #[test]
    fn defaults_are_off_and_valid() {
        let policy = Policy::default();
        TlsConfig::default().validate(&policy).unwrap();
        mtls().validate(&policy).unwrap();
    }

    #[test]
    fn client_certificates_need_tls_a_ca_and_one_matcher() {
        let policy = Policy::default();
        let mut c = mtls();
        c.enabled = false;
        assert_eq!(c.validate(&policy), Err(TlsConfigError::NotEnabled));
        let mut c = mtls();
        c.client_ca_file = None;
        assert_eq!(
            c.validate(&policy),
            Err(TlsConfigError::NoClientCa("optional"))
        );
        let mut c = mtls();
        c.client_auth = ClientAuth::None;
        assert!(c.validate(&policy).is_err());
        let mut c = mtls();
        c.client_identities[0].san_dns = Some("w.example".into());
        assert!(matches!(
            c.validate(&policy),
            Err(TlsConfigError::Matcher(_))
        ));
        let mut c = mtls();
        c.client_identities[0].subject_cn = Some(String::new());
        assert!(matches!(
            c.validate(&policy),
            Err(TlsConfigError::Matcher(_))
        ));
        let mut c = mtls();
        c.client_identities.push(identity("worker-1"));
        assert!(matches!(
            c.validate(&policy),
            Err(TlsConfigError::Duplicate(_))
        ));
        let mut c = mtls();
        c.client_identities[0].roles = vec!["producer".into(), "worker".into()];
        assert!(matches!(
            c.validate(&policy),
            Err(TlsConfigError::Roles(..))
        ));
        let mut c = mtls();
        c.require_certificate_for_roles = vec!["nobody".into()];
        assert!(matches!(
            c.validate(&policy),
            Err(TlsConfigError::UnknownRole(_))
        ));
    }

    #[test]
    fn relative_paths_are_in_the_secrets_folder() {
        let p = mtls().paths(Path::new("/s"));
        assert_eq!(p.cert, PathBuf::from("/s/tls/server.crt"));
        assert_eq!(p.client_ca, Some(PathBuf::from("/s/tls/ca.crt")));
        let c = TlsConfig {
            cert_file: "/etc/x.crt".into(),
            ..TlsConfig::default()
        };
        assert_eq!(c.paths(Path::new("/s")).cert, PathBuf::from("/etc/x.crt"));
    }
}
