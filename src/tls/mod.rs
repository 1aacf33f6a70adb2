//! Transport security: rustls (ring provider) with TLS 1.3 and 1.2 only, ECDHE key exchange
//! with AEAD suites only, server cipher preference (TLS 1.3 first), no 0-RTT, ALPN h2 and
//! http/1.1; optional or required client certificates verified against a CA bundle with CRLs;
//! verified certificates mapped to principals; hot reload of the certificate files.
//!
//! - [`config`]: the `[tls]` section.
//! - [`store`]: the live certificate, key and client verifier, swapped atomically on reload.
//! - [`identity`]: what a client certificate says and which principal it is.
//! - [`accept`]: the connection hook (client certificate into the connection's data) and the
//!   handshake-failure reporter (counted, audited aggregated per address and reason).
//!
//! `app.rs` builds a [`TlsRuntime`] at start-up; the HTTP server takes its rustls config.

pub mod accept;
pub mod config;
pub mod identity;
pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::{ring as ring_provider, CryptoProvider};
use rustls::ServerConfig;

pub use config::{ClientAuth, ClientIdentity, TlsConfig};
pub use store::{CertInfo, CertStore};

use crate::auth::Policy;
use crate::clock::Clock;
use identity::Identities;

/// Why certificate material cannot be used. Messages name files, never their contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
    #[error("a previous reload panicked")]
    Poisoned,
}

/// The ring provider restricted to what Bulwark allows: every cipher suite is an AEAD suite
/// with ephemeral (EC)DHE key exchange (ring's TLS 1.2 suites are all ECDHE with AES-GCM or
/// ChaCha20-Poly1305; TLS 1.3 suites are AEAD by design). Filtering keeps it so if the
/// provider ever grows other suites.
#[must_use]
pub fn provider() -> CryptoProvider {
    let mut provider = ring_provider::default_provider();
    provider.cipher_suites.retain(|suite| match suite {
        rustls::SupportedCipherSuite::Tls13(_) => true,
        rustls::SupportedCipherSuite::Tls12(s) => {
            matches!(
                s.common.suite,
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                    | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                    | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        }
    });
    provider
}

/// Installs the process-wide default provider (ring) once, so no code path can pick another.
pub fn install_default_provider() {
    let _ = ring_provider::default_provider().install_default();
}

/// Everything TLS the server needs at run time.
pub struct TlsRuntime {
    pub store: Arc<CertStore>,
    pub identities: Arc<Identities>,
    /// Roles usable only with a matching client certificate on the connection.
    pub require_certificate_for_roles: Arc<Vec<String>>,
    pub settings: TlsConfig,
    provider: Arc<CryptoProvider>,
    /// The time certificate expiry is reported at. (rustls checks peer certificate validity
    /// against its own time provider, the system clock.)
    clock: Clock,
}

impl TlsRuntime {
    /// Loads the certificate files named by `config` (which was validated); expiry is judged
    /// at `clock`'s time.
    pub fn load(
        config: &TlsConfig,
        secrets_dir: &Path,
        policy: Arc<Policy>,
        clock: Clock,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(provider());
        let store = CertStore::load(
            config.paths(secrets_dir),
            config.client_auth,
            provider.clone(),
        )?;
        Ok(Self {
            store,
            identities: Arc::new(Identities::new(config.client_identities.clone(), policy)),
            require_certificate_for_roles: Arc::new(config.require_certificate_for_roles.clone()),
            settings: config.clone(),
            provider,
            clock,
        })
    }

    /// The rustls server configuration: TLS 1.3 and 1.2, server preference, no early data,
    /// the reloading certificate resolver and client verifier. The HTTPS server
    /// (`http::server`) sets the ALPN protocols (h2, http/1.1).
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(self.store.client_verifier())
            .with_cert_resolver(self.store.clone());
        config.ignore_client_order = true;
        // No 0-RTT: early data is replayable.
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// The handshake timeout.
    #[must_use]
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.handshake_timeout_secs)
    }

    /// The expiry status of the live certificate at `now` (unix seconds).
    #[must_use]
    pub fn expiry(&self, now: i64) -> Expiry {
        expiry(
            &self.store.info(),
            now,
            i64::from(self.settings.expiry_warning_days),
        )
    }

    /// The expiry status of the live certificate now, by the runtime's clock.
    #[must_use]
    pub fn expiry_now(&self) -> Expiry {
        self.expiry(self.clock.now_secs())
    }
}

/// How close the server certificate is to expiring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// `ok`, `expiring` (within the warning window) or `expired`.
    pub status: &'static str,
    /// Unix seconds.
    pub not_after: i64,
    /// Seconds left (negative once expired).
    pub seconds_left: i64,
}

/// The expiry status of `info` at `now`, with a warning window of `warning_days`.
#[must_use]
pub fn expiry(info: &CertInfo, now: i64, warning_days: i64) -> Expiry {
    let seconds_left = info.not_after.saturating_sub(now);
    let status = if seconds_left <= 0 {
        "expired"
    } else if seconds_left <= warning_days.saturating_mul(86_400) {
        "expiring"
    } else {
        "ok"
    };
    Expiry {
        status,
        not_after: info.not_after,
        seconds_left,
    }
}

/// Publishes the certificate expiry gauges.
pub fn publish_expiry(runtime: &TlsRuntime) {
    let e = runtime.expiry_now();
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(crate::metrics::TLS_CERT_EXPIRY).set(e.seconds_left as f64);
    metrics::gauge!(crate::metrics::TLS_CERT_EXPIRING).set(if e.status == "ok" {
        0.0
    } else {
        1.0
    });
}

/// A cheap signature of the files (length and modification time of each), for polling.
fn files_signature(runtime: &TlsRuntime) -> Vec<Option<(u64, std::time::SystemTime)>> {
    runtime
        .store
        .paths()
        .all()
        .into_iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)))
        })
        .collect()
}

/// The certificate store as one of the secret watcher's reloaders: a change in the folder of
/// the certificate, key, client CA or CRLs is picked up within the watcher's debounce. (The
/// poll of [`spawn_reloader`] stays for mounts that send no file events.)
pub struct TlsReload(pub Arc<TlsRuntime>);

impl crate::secrets::watch::Reload for TlsReload {
    fn name(&self) -> &'static str {
        "tls"
    }

    fn dirs(&self) -> Vec<std::path::PathBuf> {
        let mut dirs: Vec<std::path::PathBuf> = self
            .0
            .store
            .paths()
            .all()
            .into_iter()
            .filter_map(|p| p.parent().map(std::path::Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn reload(&self) -> Result<crate::secrets::watch::Change, crate::secrets::watch::ReloadError> {
        use crate::secrets::watch::{Change, ReloadError};
        match self.0.store.reload() {
            Ok(false) => Ok(Change::Unchanged),
            Ok(true) => {
                metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "success").increment(1);
                publish_expiry(&self.0);
                let info = self.0.store.info();
                Ok(Change::Changed(format!(
                    "certificate {} valid until {}",
                    info.fingerprint.get(..16).unwrap_or(""),
                    crate::clock::rfc3339(info.not_after * 1000)
                )))
            }
            Err(e) => {
                metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "failure").increment(1);
                Err(ReloadError(e.to_string()))
            }
        }
    }

    fn events(&self) -> (&'static str, &'static str) {
        ("tls.certificate_reloaded", "tls.reload_failed")
    }
}

/// Polls the files' size and modification time every `reload_poll_secs` (never when 0) for
/// mounts that send no file events, and has the secret watcher reload when they change (the
/// watcher also reloads on folder events and SIGHUP, and audits the outcome); refreshes the
/// expiry gauges on each tick. Runs until aborted through the returned handle.
pub fn spawn_reloader(
    runtime: Arc<TlsRuntime>,
    watcher: crate::secrets::watch::SecretWatcher,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let poll = runtime.settings.reload_poll_secs;
        let mut tick = tokio::time::interval(Duration::from_secs(poll.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = files_signature(&runtime);
        loop {
            tick.tick().await;
            publish_expiry(&runtime);
            if poll == 0 {
                continue;
            }
            let now = files_signature(&runtime);
            if now != seen {
                seen = now;
                watcher.reload_all("poll").await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_aead_suites_with_ephemeral_key_exchange_are_offered() {
        let p = provider();
        assert!(!p.cipher_suites.is_empty());
        for suite in &p.cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name}"
            );
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
        }
        assert!(matches!(
            p.cipher_suites.first(),
            Some(rustls::SupportedCipherSuite::Tls13(_))
        ));
    }

    fn write(dir: &Path, name: &str, text: &str) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(name))
            .unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    }

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn runtime(dir: &Path) -> TlsRuntime {
        let config = TlsConfig {
            enabled: true,
            cert_file: "server.crt".into(),
            key_file: "server.key".into(),
            ..TlsConfig::default()
        };
        TlsRuntime::load(&config, dir, Arc::new(Policy::default()), Clock::system()).unwrap()
    }

    #[test]
    fn the_certificate_reads_expiring_then_expired_as_the_clock_reaches_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair();
        write(dir.path(), "server.crt", &cert);
        write(dir.path(), "server.key", &key);
        let config = TlsConfig {
            enabled: true,
            cert_file: "server.crt".into(),
            key_file: "server.key".into(),
            ..TlsConfig::default()
        };
        let (clock, hand) = Clock::manual(0);
        let rt = TlsRuntime::load(&config, dir.path(), Arc::new(Policy::default()), clock).unwrap();
        let end_ms = rt.store.info().not_after * 1000;
        let window_ms = i64::from(config.expiry_warning_days) * 86_400_000;
        hand.set(end_ms - window_ms - 1000);
        assert_eq!(rt.expiry_now().status, "ok");
        hand.set(end_ms - window_ms);
        assert_eq!(rt.expiry_now().status, "expiring");
        hand.set(end_ms);
        assert_eq!(rt.expiry_now().status, "expired");
    }

    #[test]
    fn the_server_config_has_no_early_data_and_prefers_its_own_order() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair();
        write(dir.path(), "server.crt", &cert);
        write(dir.path(), "server.key", &key);
        let config = runtime(dir.path()).server_config().unwrap();
        assert_eq!(config.max_early_data_size, 0);
        assert!(!config.send_half_rtt_data);
        assert!(config.ignore_client_order);
        assert!(
            config.alpn_protocols.is_empty(),
            "actix-web adds h2 and http/1.1"
        );
    }

    #[test]
    fn reload_swaps_only_a_matching_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair();
        write(dir.path(), "server.crt", &cert);
        write(dir.path(), "server.key", &key);
        let rt = runtime(dir.path());
        let first = rt.store.info();
        assert!(!rt.store.reload().unwrap(), "nothing changed");
        // Half-written: a new certificate with the old key.
        let (cert2, key2) = pair();
        write(dir.path(), "server.crt", &cert2);
        let err = rt.store.reload().unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        assert_eq!(rt.store.info(), first);
        // Garbage key.
        write(
            dir.path(),
            "server.key",
            "-----BEGIN PRIVATE KEY-----\nnope\n",
        );
        assert!(rt.store.reload().is_err());
        assert_eq!(rt.store.info(), first);
        // The completed pair goes live.
        write(dir.path(), "server.key", &key2);
        assert!(rt.store.reload().unwrap());
        assert_ne!(rt.store.info(), first);
        // A key readable by others is refused.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("server.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(rt.store.reload().is_err());
    }

    #[test]
    fn expiry_status_has_a_warning_window() {
        let info = CertInfo {
            not_after: 100 * 86_400,
            fingerprint: String::new(),
        };
        assert_eq!(expiry(&info, 0, 14).status, "ok");
        assert_eq!(expiry(&info, 86 * 86_400, 14).status, "expiring");
        assert_eq!(expiry(&info, 100 * 86_400, 14).status, "expired");
        assert_eq!(expiry(&info, 99 * 86_400, 14).seconds_left, 86_400);
    }
}
