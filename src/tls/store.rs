//! The live certificate material: the server certificate and key, and the client-certificate
//! verifier (CA bundle and CRLs). Every handshake reads the current value through
//! [`arc_swap`]; [`CertStore::reload`] re-reads the files, validates them (a certificate that
//! parses, a key that matches it, a CA bundle and CRLs that build a verifier) and only then
//! swaps, so a half-written or mismatched pair never goes live and open connections keep the
//! material they were set up with.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ring::digest;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

use super::config::{ClientAuth, TlsPaths};
use super::TlsError;

/// Largest certificate, CA or CRL file read.
const MAX_FILE: u64 = 1024 * 1024;

/// What health and metrics show about the server certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the leaf, hex.
    pub fingerprint: String,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    info: CertInfo,
    digest: [u8; 32],
}

/// The server's certificate material, swapped atomically on reload.
pub struct CertStore {
    paths: TlsPaths,
    client_auth: ClientAuth,
    provider: Arc<CryptoProvider>,
    key: ArcSwap<CertifiedKey>,
    verifier: Option<Arc<ArcSwap<Arc<dyn ClientCertVerifier>>>>,
    info: ArcSwap<CertInfo>,
    /// Digest of the files that are live; reloads run one at a time.
    live: Mutex<[u8; 32]>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.paths.cert)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

fn read_public(path: &Path) -> Result<Vec<u8>, TlsError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| TlsError::File {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    if meta.len() > MAX_FILE {
        return Err(TlsError::File {
            path: shown,
            reason: "larger than 1 MiB".into(),
        });
    }
    std::fs::read(path).map_err(|e| TlsError::File {
        path: shown,
        reason: e.to_string(),
    })
}

fn read_key(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, TlsError> {
    crate::secrets::read_private(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn bad(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn certificates(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad(path, "not a PEM certificate list"))?;
    if certs.is_empty() {
        return Err(bad(path, "holds no certificate"));
    }
    Ok(certs)
}

fn crls(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    if bytes.starts_with(b"-----") {
        let list = CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad(path, "not a PEM CRL"))?;
        if list.is_empty() {
            return Err(bad(path, "holds no CRL"));
        }
        Ok(list)
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())])
    }
}

impl CertStore {
    /// Loads the files once; fails if they are missing or do not make a usable pair.
    pub fn load(
        paths: TlsPaths,
        client_auth: ClientAuth,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, TlsError> {
        let loaded = Self::read(&paths, client_auth, &provider)?;
        let verifier = loaded
            .verifier
            .clone()
            .map(|v| Arc::new(ArcSwap::from_pointee(v)));
        Ok(Arc::new(Self {
            paths,
            client_auth,
            provider,
            key: ArcSwap::new(loaded.key),
            verifier,
            info: ArcSwap::from_pointee(loaded.info),
            live: Mutex::new(loaded.digest),
        }))
    }

    fn read(
        paths: &TlsPaths,
        client_auth: ClientAuth,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Loaded, TlsError> {
        let mut hash = digest::Context::new(&digest::SHA256);
        let cert_bytes = read_public(&paths.cert)?;
        let key_bytes = read_key(&paths.key)?;
        hash.update(&cert_bytes);
        // The key enters the digest only through its own hash, so the digest kept in memory
        // says nothing about it.
        hash.update(digest::digest(&digest::SHA256, &key_bytes).as_ref());
        let chain = certificates(&paths.cert, &cert_bytes)?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_bytes)
            .map_err(|_| bad(&paths.key, "not a PEM private key"))?;
        let signing = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|_| bad(&paths.key, "not a supported private key"))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|_| {
            bad(
                &paths.key,
                "does not match the certificate in the cert file",
            )
        })?;
        let leaf = certified
            .cert
            .first()
            .ok_or_else(|| bad(&paths.cert, "holds no certificate"))?;
        let parsed = super::identity::parse(leaf)
            .ok_or_else(|| bad(&paths.cert, "the first certificate does not parse"))?;
        let info = CertInfo {
            not_after: parsed.not_after,
            fingerprint: parsed.fingerprint,
        };
        let verifier = match (client_auth, &paths.client_ca) {
            (ClientAuth::None, _) | (_, None) => None,
            (mode, Some(ca_path)) => {
                let ca_bytes = read_public(ca_path)?;
                hash.update(&ca_bytes);
                let mut roots = RootCertStore::empty();
                for ca in certificates(ca_path, &ca_bytes)? {
                    roots
                        .add(ca)
                        .map_err(|e| bad(ca_path, format!("not a usable CA certificate: {e}")))?;
                }
                let mut revoked = Vec::new();
                for crl_path in &paths.client_crls {
                    let bytes = read_public(crl_path)?;
                    hash.update(&bytes);
                    revoked.extend(crls(crl_path, &bytes)?);
                }
                let mut builder =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .with_crls(revoked);
                if mode == ClientAuth::Optional {
                    builder = builder.allow_unauthenticated();
                }
                Some(
                    builder
                        .build()
                        .map_err(|e| bad(ca_path, format!("cannot verify clients: {e}")))?,
                )
            }
        };
        let mut out = [0u8; 32];
        out.copy_from_slice(hash.finish().as_ref());
        Ok(Loaded {
            key: Arc::new(certified),
            verifier,
            info,
            digest: out,
        })
    }

    /// Re-reads every file and, if they changed and make a valid set, swaps them in: new
    /// handshakes use them, open connections are untouched. `Ok(false)` when nothing changed;
    /// on error the current material stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let mut live = self.live.lock().map_err(|_| TlsError::Poisoned)?;
        let loaded = Self::read(&self.paths, self.client_auth, &self.provider)?;
        if loaded.digest == *live {
            return Ok(false);
        }
        if let (Some(slot), Some(verifier)) = (&self.verifier, loaded.verifier) {
            slot.store(Arc::new(verifier));
        }
        self.key.store(loaded.key);
        self.info.store(Arc::new(loaded.info));
        *live = loaded.digest;
        Ok(true)
    }

    /// The files it reads.
    #[must_use]
    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// The live server certificate's expiry and fingerprint.
    #[must_use]
    pub fn info(&self) -> Arc<CertInfo> {
        self.info.load_full()
    }

    /// The client-certificate verifier handshakes use: one that follows reloads, or none.
    #[must_use]
    pub fn client_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        match &self.verifier {
            Some(slot) => Arc::new(ReloadingVerifier {
                inner: slot.clone(),
                mandatory: self.client_auth == ClientAuth::Required,
            }),
            None => WebPkiClientVerifier::no_client_auth(),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.load_full())
    }
}

/// A client-certificate verifier that delegates to the current one, so a reloaded CA bundle
/// or CRL applies to the next handshake. It sends no CA names in its certificate request
/// (clients send the certificate they are configured with).
struct ReloadingVerifier {
    inner: Arc<ArcSwap<Arc<dyn ClientCertVerifier>>>,
    mandatory: bool,
}

impl fmt::Debug for ReloadingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingVerifier")
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.load().supported_verify_schemes()
    }
}
