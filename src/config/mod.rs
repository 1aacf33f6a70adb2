//! Configuration: one TOML file (`config/bulwark.toml` documents every key with its default),
//! read once at start. Unknown keys are refused so a typo never silently falls back to a default.
//! Secrets never come from this file: they live in the secrets folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

pub mod limits;
pub mod sessions;
pub use limits::LimitsConfig;
pub mod reload;
pub mod validation;
pub use sessions::SessionsConfig;
pub use validation::{BackpressureConfig, PayloadConfig, QuotaConfig, ValidationConfig};

use crate::auth::actions::ActionsConfig;
use crate::auth::jwt::JwtConfig;
use crate::auth::policy::{Policy, RoleDef};
use crate::auth::throttle::ThrottleConfig;
use crate::job::envelope::EnvelopeRules;
use crate::queue::QueueConfig;

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub secrets: SecretsConfig,
    pub queue: QueueSection,
    pub api: ApiConfig,
    pub testing: TestingConfig,
    pub log: LogConfig,
    pub audit: AuditSection,
    pub auth: AuthSection,
    pub sessions: SessionsConfig,
    /// Rates, connection caps, the long-poll cap and abuse detection (`[limits]`).
    pub limits: LimitsConfig,
    /// The file this configuration was read from, for reloads (not a TOML key).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    pub payload: PayloadConfig,
    pub validation: ValidationConfig,
    pub quotas: QuotaConfig,
    pub backpressure: BackpressureConfig,
    /// The folder of the config file: relative paths in it (schemas) start there.
    #[serde(skip)]
    pub base_dir: PathBuf,
    pub vault: VaultSection,
    pub tls: crate::tls::TlsConfig,
}

/// `[vault]`: envelope encryption at rest.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultSection {
    /// The KEK folder; default `<secrets.dir>/kek`.
    pub kek_dir: Option<PathBuf>,
    /// The active KEK id; default the newest key.
    pub active_kek: Option<String>,
    /// Records per re-wrap step.
    pub rewrap_batch: usize,
    /// Data keys a KEK may wrap before it is due for rotation (warned in health, metrics and
    /// the audit trail). AES-GCM with random nonces allows about 2^32 per key; default 2^30.
    /// 0 turns the check off.
    pub rotate_after_wraps: u64,
    /// Days after its first wrap at which a KEK is due for rotation. Default 365; 0 turns the
    /// check off.
    pub rotate_after_days: u64,
}

impl Default for VaultSection {
    fn default() -> Self {
        let rotation = crate::vault::RotationPolicy::default();
        Self {
            kek_dir: None,
            active_kek: None,
            rewrap_batch: 256,
            rotate_after_wraps: rotation.max_wraps,
            rotate_after_days: rotation.max_age_days,
        }
    }
}

/// `[auth]`: credentials and access policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// How long a rotated API key keeps working, in seconds (OJS security §12.5: 24 h).
    pub rotation_grace_secs: u64,
    /// The per-address budget of key verifications (`[auth.throttle]`).
    pub throttle: ThrottleConfig,
    /// Custom roles (`[[auth.roles]]`), beside the built-in ones.
    pub roles: Vec<RoleDef>,
    /// JWT bearer tokens (`[auth.jwt]`); off when the section is absent.
    pub jwt: Option<JwtConfig>,
    /// Action job types and their policy tokens (`[auth.actions]`); no action types by
    /// default.
    pub actions: ActionsConfig,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            rotation_grace_secs: 24 * 3600,
            throttle: ThrottleConfig::default(),
            roles: Vec::new(),
            jwt: None,
            actions: ActionsConfig::default(),
        }
    }
}

/// `[audit]`
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSection {
    /// The append-only audit log; default `<storage.data_dir>/audit.log`.
    pub log_file: Option<PathBuf>,
    /// Its signed head; default `<storage.data_dir>/audit.head`.
    pub head_file: Option<PathBuf>,
    /// Days a record is kept; older ones are pruned behind a signed checkpoint. 0 keeps them
    /// forever. Default 365.
    pub retention_days: u32,
    /// Seconds over which repeated refusals of one kind and source (throttled credentials,
    /// refused certificates, failed handshakes, rate and limit refusals) are counted into one
    /// record: the first is written at once, the rest with their count when the window closes.
    /// 1 to 3600; default 60.
    pub aggregate_window_secs: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            log_file: None,
            head_file: None,
            retention_days: 365,
            aggregate_window_secs: 60,
        }
    }
}

/// `[server]`
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Loopback by default.
    pub listen: SocketAddr,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Seconds to let in-flight requests finish on shutdown.
    pub shutdown_timeout_secs: u64,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Seconds a client has to send the request head (at most 30); a slower head is cut.
    pub request_head_timeout_secs: u64,
    /// Seconds an idle keep-alive connection stays open (at most 120).
    pub keep_alive_secs: u64,
    /// Serve plain HTTP on a non-loopback address (no `[tls]`). Insecure: anyone on the path
    /// reads credentials and payloads; a warning is logged at every start.
    pub allow_insecure_plaintext_non_loopback: bool,
    /// Longest request target (path and query), in bytes; longer is answered 414.
    pub max_uri_bytes: usize,
    /// Longest single header field (name and value), in bytes; longer is answered 431.
    pub max_header_bytes: usize,
    /// Largest request head (request line and every header field), in bytes; larger is
    /// answered 431.
    pub max_head_bytes: usize,
    /// Most header fields in one request; more is answered 431.
    pub max_headers: usize,
    /// HTTP/2: `SETTINGS_MAX_CONCURRENT_STREAMS` advertised to clients; a client that opens
    /// more is sent GOAWAY and disconnected.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2: control frames (SETTINGS, PING, PRIORITY, WINDOW_UPDATE, RST_STREAM, empty DATA,
    /// unknown types) one connection may send per second, sustained, with a burst of ten
    /// seconds' worth; beyond, GOAWAY (`ENHANCE_YOUR_CALM`) and the connection is closed.
    pub http2_max_control_frames_per_second: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            shutdown_timeout_secs: 10,
            max_body_bytes: 2 * 1024 * 1024,
            request_head_timeout_secs: 10,
            keep_alive_secs: 75,
            allow_insecure_plaintext_non_loopback: false,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            max_head_bytes: 32 * 1024,
            max_headers: 64,
            http2_max_concurrent_streams: 100,
            http2_max_control_frames_per_second: 100,
        }
    }
}

/// `[storage]`
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Folder of the database files (`bulwark.redb` for jobs, `control.redb` for keys, users and
    /// the audit index). Relative paths are relative to the working directory.
    pub data_dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
        }
    }
}

/// `[secrets]`
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// Folder of secret files (mode 0700, files 0600), kept apart from the data folder.
    pub dir: PathBuf,
    /// The `<env>` part of new API keys (`bwk_<env>_…`).
    pub key_env: String,
    /// Seconds between re-reads of mounted secrets without file events.
    pub reload_interval_secs: u64,
    /// Milliseconds of quiet after a file event before re-reading.
    pub reload_debounce_ms: u64,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("secrets"),
            key_env: "live".into(),
            reload_interval_secs: 60,
            reload_debounce_ms: 300,
        }
    }
}

/// `[queue]`
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSection {
    /// Most operations committed in one transaction.
    pub max_group: usize,
    /// Operations waiting for the queue before senders wait.
    pub mailbox: usize,
    /// Recent events kept for `GET /ojs/v1/events`.
    pub events_capacity: usize,
    /// Execution timeout of jobs that set none, in ms.
    pub default_timeout_ms: u64,
    /// Visibility timeout of jobs that set none, in ms.
    pub default_visibility_timeout_ms: u64,
    /// Most jobs one fetch may claim.
    pub max_fetch_count: usize,
    /// Long-poll fetches (`wait_ms`) one principal may have waiting at once; the next is
    /// answered 429.
    pub max_waits_per_principal: usize,
    /// Long-poll fetches waiting at once on the whole server.
    pub max_waits: usize,
}

impl Default for QueueSection {
    fn default() -> Self {
        Self {
            max_group: 1024,
            mailbox: 8192,
            events_capacity: 10_000,
            default_timeout_ms: 30_000,
            default_visibility_timeout_ms: 30_000,
            max_fetch_count: 100,
            max_waits_per_principal: 10,
            max_waits: 10_000,
        }
    }
}

/// What to do with envelope attributes the server does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    /// Refuse the job with 422 listing them (OJS security SEC-012).
    #[default]
    Reject,
    /// Keep and echo them (OJS core forward compatibility; the conformance suites expect it).
    Preserve,
}

/// `[api]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub unknown_fields: UnknownFields,
}

/// `[testing]`: switches for conformance runs. Never enable them in production.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestingConfig {
    /// Expose `POST /ojs/v1/admin/reset`, which deletes every job.
    pub allow_reset: bool,
    /// Honour `options.metadata.test_directive` in heartbeats.
    pub honour_test_directives: bool,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// `[log]`
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter (`info`, `bulwark=debug`, ...). `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Json,
        }
    }
}

impl Config {
    /// Reads a config file, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let mut config = match path {
            None => Self::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                let mut config = Self::parse(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?;
                config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                config
            }
        };
        config.validate()?;
        config.source = path.map(Path::to_path_buf);
        Ok(config)
    }

    /// Parses TOML text. A refusal says where (line, column, the key) and what kind of mistake,
    /// never a value from the file ([`toml_error`]).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!(toml_error(text, &e)))
    }

    /// Refuses unsafe or meaningless combinations.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.server.listen.ip().is_loopback()
            && !self.tls.enabled
            && !self.server.allow_insecure_plaintext_non_loopback
        {
            bail!(
                "server.listen is {}, which is not a loopback address, and TLS is off: Bulwark \
                 serves plain HTTP on loopback only. Fix: set [tls] enabled = true with cert_file \
                 and key_file (scripts/dev-certs.sh makes a development set), or listen on \
                 127.0.0.1 / ::1",
                self.server.listen
            );
        }
        self.check_placement()?;
        if !(1..=30).contains(&self.server.request_head_timeout_secs) {
            bail!("server.request_head_timeout_secs must be from 1 to 30 (OJS security §10.5)");
        }
        if !(1..=120).contains(&self.server.keep_alive_secs) {
            bail!("server.keep_alive_secs must be from 1 to 120 (OJS security §10.5)");
        }
        self.validate_edge()?;
        self.limits.validate().context("invalid [limits]")?;
        if self.server.max_body_bytes < 1024 {
            bail!("server.max_body_bytes must be at least 1024");
        }
        if self.queue.max_fetch_count == 0 || self.queue.max_group == 0 {
            bail!("queue.max_fetch_count and queue.max_group must be positive");
        }
        if self.queue.max_waits_per_principal == 0 || self.queue.max_waits == 0 {
            bail!("queue.max_waits_per_principal and queue.max_waits must be positive");
        }
        let key_env_ok = (1..=16).contains(&self.secrets.key_env.len())
            && self
                .secrets
                .key_env
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !key_env_ok {
            bail!("secrets.key_env must be 1 to 16 lowercase letters or digits");
        }
        if self.secrets.reload_interval_secs == 0 || self.secrets.reload_debounce_ms == 0 {
            bail!("secrets.reload_interval_secs and secrets.reload_debounce_ms must be positive");
        }
        if !(1..=3600).contains(&self.audit.aggregate_window_secs) {
            bail!("audit.aggregate_window_secs must be from 1 to 3600");
        }
        if !(1..=10_000).contains(&self.vault.rewrap_batch) {
            bail!("vault.rewrap_batch must be from 1 to 10000");
        }
        if self.vault.rotate_after_wraps > 1 << 32 {
            bail!(
                "vault.rotate_after_wraps must be at most 4294967296 (2^32, the AES-GCM limit for \
                 random nonces under one key); 0 turns the warning off"
            );
        }
        if self.vault.rotate_after_days > 36_500 {
            bail!("vault.rotate_after_days must be at most 36500; 0 turns the warning off");
        }
        if let Some(id) = &self.vault.active_kek {
            if !crate::vault::keyring::valid_id(id) {
                bail!("vault.active_kek must be a key id (1-64 of A-Z a-z 0-9 _ . -)");
            }
        }
        let policy = self.policy()?;
        self.tls.validate(&policy).context("invalid [tls]")?;
        self.sessions.validate()?;
        self.payload.validate()?;
        self.validation.validate()?;
        self.quotas.validate()?;
        self.backpressure.validate()?;
        if let Some(jwt) = &self.auth.jwt {
            jwt.validate().context("invalid [auth.jwt]")?;
        }
        self.auth
            .actions
            .validate()
            .context("invalid [auth.actions]")?;
        Ok(())
    }

    /// Secrets and data each in a folder of their own (see [`crate::secrets::check_placement`]).
    fn check_placement(&self) -> anyhow::Result<()> {
        use crate::secrets::Placed;
        let kek_dir = self.vault_config().kek_dir;
        let audit = self.audit_config();
        let secrets = [
            Placed {
                what: "secrets.dir",
                path: &self.secrets.dir,
            },
            Placed {
                what: "vault.kek_dir",
                path: &kek_dir,
            },
        ];
        let mut data = vec![Placed {
            what: "storage.data_dir",
            path: &self.storage.data_dir,
        }];
        // An audit file on a device (`/dev/…`) is a sink, not data kept in a folder.
        for (what, path) in [
            ("audit.log_file", &audit.log_file),
            ("audit.head_file", &audit.head_file),
        ] {
            if !path.starts_with("/dev") {
                data.push(Placed { what, path });
            }
        }
        crate::secrets::check_placement(&secrets, &data).context("secrets placement")
    }

    /// The request-head and HTTP/2 bounds of `[server]`. actix-http has fixed ceilings of its
    /// own (a 128 KiB head, 96 header fields, a 64 KiB request target); the configured bounds
    /// must stay under them so that Bulwark, not actix, answers every refusal.
    fn validate_edge(&self) -> anyhow::Result<()> {
        let s = &self.server;
        if !(256..=65_000).contains(&s.max_uri_bytes) {
            bail!("server.max_uri_bytes must be from 256 to 65000");
        }
        if !(256..=65_000).contains(&s.max_header_bytes) {
            bail!("server.max_header_bytes must be from 256 to 65000");
        }
        if s.max_head_bytes < s.max_uri_bytes.max(s.max_header_bytes) || s.max_head_bytes > 120_000
        {
            bail!(
                "server.max_head_bytes must be at least max_uri_bytes and max_header_bytes, and \
                 at most 120000"
            );
        }
        if let Some(jwt) = &self.auth.jwt {
            // `Authorization: Bearer ` and a token of the largest size the verifier accepts
            // must fit in one header field, or a valid token would be refused for its size.
            if jwt.max_token_bytes + 32 > s.max_header_bytes {
                bail!(
                    "server.max_header_bytes must be at least auth.jwt.max_token_bytes + 32, so \
                     that the largest accepted token fits in the Authorization header"
                );
            }
        }
        if !(8..=90).contains(&s.max_headers) {
            bail!("server.max_headers must be from 8 to 90");
        }
        if !(1..=1000).contains(&s.http2_max_concurrent_streams) {
            bail!("server.http2_max_concurrent_streams must be from 1 to 1000");
        }
        if !(10..=100_000).contains(&s.http2_max_control_frames_per_second) {
            bail!("server.http2_max_control_frames_per_second must be from 10 to 100000");
        }
        Ok(())
    }

    /// The bounds the connection guards and the edge middleware apply.
    #[must_use]
    pub fn edge_limits(&self) -> crate::http::guard::EdgeLimits {
        let s = &self.server;
        crate::http::guard::EdgeLimits {
            max_uri_bytes: s.max_uri_bytes,
            max_header_bytes: s.max_header_bytes,
            max_head_bytes: s.max_head_bytes,
            max_headers: s.max_headers,
            http2_max_concurrent_streams: s.http2_max_concurrent_streams,
            http2_max_control_frames_per_second: s.http2_max_control_frames_per_second,
        }
    }

    /// The built-in roles plus the configured ones.
    pub fn policy(&self) -> anyhow::Result<Policy> {
        Policy::new(&self.auth.roles).context("invalid [[auth.roles]]")
    }

    /// The envelope rules the HTTP layer applies.
    #[must_use]
    pub fn envelope_rules(&self) -> EnvelopeRules {
        EnvelopeRules {
            preserve_unknown: self.api.unknown_fields == UnknownFields::Preserve,
            honour_test_directives: self.testing.honour_test_directives,
            default_timeout_ms: self.queue.default_timeout_ms,
            default_visibility_timeout_ms: self.queue.default_visibility_timeout_ms,
            max_args_bytes: self.payload.max_args_bytes,
            max_meta_bytes: self.payload.max_meta_bytes,
            max_schedule_ahead_ms: self.validation.max_schedule_ahead_secs.saturating_mul(1000),
        }
    }

    /// Where the audit trail lives.
    #[must_use]
    pub fn audit_config(&self) -> crate::audit::AuditConfig {
        crate::audit::AuditConfig {
            log_file: self
                .audit
                .log_file
                .clone()
                .unwrap_or_else(|| self.storage.data_dir.join("audit.log")),
            head_file: self
                .audit
                .head_file
                .clone()
                .unwrap_or_else(|| self.storage.data_dir.join("audit.head")),
            retention: (self.audit.retention_days > 0).then(|| {
                std::time::Duration::from_secs(u64::from(self.audit.retention_days) * 86_400)
            }),
            aggregate_window: std::time::Duration::from_secs(self.audit.aggregate_window_secs),
        }
    }

    /// The key vault's settings.
    #[must_use]
    pub fn vault_config(&self) -> crate::vault::VaultConfig {
        crate::vault::VaultConfig {
            kek_dir: self
                .vault
                .kek_dir
                .clone()
                .unwrap_or_else(|| self.secrets.dir.join("kek")),
            active: self.vault.active_kek.clone(),
            rewrap_batch: self.vault.rewrap_batch,
            rotation: crate::vault::RotationPolicy {
                max_wraps: self.vault.rotate_after_wraps,
                max_age_days: self.vault.rotate_after_days,
            },
        }
    }

    /// The secret watcher's settings.
    #[must_use]
    pub fn watch_config(&self) -> crate::secrets::watch::WatchConfig {
        crate::secrets::watch::WatchConfig {
            debounce: std::time::Duration::from_millis(self.secrets.reload_debounce_ms),
            interval: std::time::Duration::from_secs(self.secrets.reload_interval_secs),
        }
    }

    /// The queue actor's settings.
    #[must_use]
    pub fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            max_group: self.queue.max_group,
            mailbox: self.queue.mailbox,
            events_capacity: self.queue.events_capacity,
            honour_test_directives: self.testing.honour_test_directives,
            max_waits_per_principal: self.queue.max_waits_per_principal,
            max_waits: self.queue.max_waits,
            clock: crate::clock::Clock::system(),
        }
    }
}

/// Whether `text` can be shown as the name of a key: shaped like Bulwark's own keys (lowercase,
/// `_ - .`, short, no long run of digits), so a secret pasted where a key goes (base64, hex) is
/// not repeated either.
fn key_like(text: &str) -> bool {
    let mut digits = 0;
    (1..=40).contains(&text.len())
        && text.bytes().all(|b| {
            digits = if b.is_ascii_digit() { digits + 1 } else { 0 };
            digits <= 2 && (b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
        })
}

/// `text` with every backquoted part that is not shaped like a key replaced by `` `…` ``.
fn only_key_names(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 && !key_like(part) {
                "…"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("`")
}

/// `text` with every double-quoted part replaced by `"…"` (serde quotes values that way).
fn without_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            out.push('…');
            let mut escaped = false;
            for q in chars.by_ref() {
                match q {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => break,
                    _ => escaped = false,
                }
            }
            out.push('"');
        }
    }
    out
}

/// A TOML error as Bulwark reports it. `toml`'s own text quotes the offending line of the file
/// (a secret pasted in as `kek = "…"` included), and serde's messages quote values (`invalid
/// type: string "…"`, ``unknown variant `…` ``): neither reaches stderr, a log or an audit
/// record. Kept: the line and column, the key named on that line (or the table header), and the
/// kind of mistake with what was expected. Unknown and missing keys are named: keys are names,
/// not values.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let place = e.span().map(|span| {
        let start = span.start.min(text.len());
        let before = text.get(..start).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let line_text = text.lines().nth(line - 1).unwrap_or_default().trim();
        let key = if line_text.starts_with('[') {
            let header = line_text.trim_matches(|c| c == '[' || c == ']').trim();
            key_like(header).then(|| format!("[{header}]"))
        } else {
            line_text
                .split_once('=')
                .map(|(k, _)| k.trim())
                .filter(|k| key_like(k))
                .map(str::to_string)
        };
        match key {
            Some(key) => format!("line {line}, column {column} (`{key}`)"),
            None => format!("line {line}, column {column}"),
        }
    });
    let message = e.message().lines().next().unwrap_or_default().trim();
    let names_a_key = [
        "unknown field",
        "missing field",
        "duplicate key",
        "duplicate field",
    ]
    .iter()
    .any(|p| message.starts_with(p));
    let what = if names_a_key {
        only_key_names(&without_quoted(message))
    } else if let Some(at) = message.find("expected") {
        format!("invalid value: {}", without_quoted(&message[at..]))
    } else {
        without_quoted(message)
    };
    match place {
        Some(place) => format!("{place}: {what} (the value is not repeated here)"),
        None => format!("{what} (the value is not repeated here)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an attacker (or a careless operator) finds on stderr after pasting a secret.
    #[test]
    fn config_errors_never_echo_a_value_from_the_file() {
        let secret = "c2VjcmV0LWtlay1ieXRlcy10aGF0LW11c3Qtbm90LWxlYWs=";
        let cases = [
            format!("[vault]\nkek = \"{secret}\"\n"),
            format!("[auth]\napi_key = \"{secret}\"\n"),
            format!("[server]\nworkers = \"{secret}\"\n"),
            format!("[log]\nformat = \"{secret}\"\n"),
            format!("[auth.actions]\ntypes = [\"{secret}\"]\n"),
            format!("[vault]\nactive_kek = 1\nkek_dir = \"{secret}\"\nx = \"{secret}\"\n"),
            format!("[auth]\napi_key = \"{secret}"),
            format!("{secret} = 1\n"),
        ];
        for text in &cases {
            let err = format!("{:#}", Config::parse(text).unwrap_err());
            for piece in [secret, &secret[..12], &secret[20..40]] {
                assert!(!err.contains(piece), "{text:?} echoed the value: {err}");
            }
            assert!(err.contains("line "), "{err}");
        }
        let err = format!(
            "{:#}",
            Config::parse(&format!("[vault]\nkek = \"{secret}\"\n")).unwrap_err()
        );
        assert!(
            err.contains("line 2") && err.contains("unknown field `kek`"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            Config::parse("[log]\nformat = \"yaml\"\n").unwrap_err()
        );
        assert!(err.contains("expected `json` or `text`"), "{err}");
        // Validation refusals name entries by position, not by value.
        let c = Config::parse(&format!("[validation]\njob_types = [\"{secret}\"]\n")).unwrap();
        let err = format!("{:#}", c.validate().unwrap_err());
        assert!(!err.contains(&secret[..12]), "{err}");
    }

    #[test]
    fn secrets_inside_the_data_folder_and_the_reverse_are_refused() {
        let refused = |text: &str| {
            let c = Config::parse(text).unwrap();
            format!("{:#}", c.validate().unwrap_err())
        };
        let err = refused("[storage]\ndata_dir = \"d\"\n[secrets]\ndir = \"d/secrets\"\n");
        assert!(
            err.contains("secrets.dir") && err.contains("inside storage.data_dir"),
            "{err}"
        );
        let err = refused("[storage]\ndata_dir = \"s/data\"\n[secrets]\ndir = \"s\"\n");
        assert!(err.contains("inside secrets.dir"), "{err}");
        let err = refused("[storage]\ndata_dir = \"d\"\n[vault]\nkek_dir = \"d/kek\"\n");
        assert!(err.contains("vault.kek_dir"), "{err}");
        let err = refused("[audit]\nlog_file = \"secrets/audit.log\"\n");
        assert!(err.contains("audit.log_file"), "{err}");
        let err = refused("[storage]\ndata_dir = \"x\"\n[secrets]\ndir = \"x\"\n");
        assert!(err.contains("inside"), "{err}");
        Config::parse("[audit]\nlog_file = \"/dev/full\"\n")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn defaults_are_safe() {
        let c = Config::default();
        assert!(c.server.listen.ip().is_loopback());
        assert_eq!(c.server.listen.port(), 8080);
        assert_eq!(c.api.unknown_fields, UnknownFields::Reject);
        assert!(!c.testing.allow_reset);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_public_listeners_are_refused() {
        assert!(Config::parse("[server]\nlisten_on = \"127.0.0.1:1\"\n").is_err());
        let c = Config::parse("[server]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_documented_file_matches_the_defaults() {
        let text = include_str!("../../config/bulwark.toml");
        let c = Config::parse(text).unwrap();
        let d = Config::default();
        assert_eq!(c.server.listen, d.server.listen);
        assert_eq!(c.server.max_body_bytes, d.server.max_body_bytes);
        assert_eq!(c.queue.max_group, d.queue.max_group);
        assert_eq!(
            c.queue.default_visibility_timeout_ms,
            d.queue.default_visibility_timeout_ms
        );
        assert_eq!(c.storage.data_dir, d.storage.data_dir);
        assert_eq!(c.secrets.dir, d.secrets.dir);
        assert_eq!(c.api.unknown_fields, d.api.unknown_fields);
        assert_eq!(c.testing.allow_reset, d.testing.allow_reset);
        assert_eq!(c.sessions, d.sessions);
        assert_eq!(c.auth.rotation_grace_secs, d.auth.rotation_grace_secs);
        assert_eq!(c.auth.throttle, d.auth.throttle);
        assert!(c.auth.roles.is_empty());
        assert_eq!(c.auth.actions, d.auth.actions);
        assert_eq!(c.limits, d.limits);
        assert_eq!(
            c.server.request_head_timeout_secs,
            d.server.request_head_timeout_secs
        );
        assert_eq!(c.server.keep_alive_secs, d.server.keep_alive_secs);
        assert_eq!(c.edge_limits(), d.edge_limits());
        assert_eq!(c.payload, d.payload);
        assert_eq!(c.validation, d.validation);
        assert_eq!(c.quotas, d.quotas);
        assert_eq!(c.backpressure, d.backpressure);
        assert_eq!(c.vault, d.vault);
        assert_eq!(c.audit.aggregate_window_secs, d.audit.aggregate_window_secs);
        assert_eq!(
            c.secrets.reload_interval_secs,
            d.secrets.reload_interval_secs
        );
        assert_eq!(c.secrets.reload_debounce_ms, d.secrets.reload_debounce_ms);
        assert_eq!(c.tls, d.tls);
        assert_eq!(
            c.server.allow_insecure_plaintext_non_loopback,
            d.server.allow_insecure_plaintext_non_loopback
        );
    }

    #[test]
    fn timeouts_and_limits_past_the_ojs_bounds_are_refused() {
        let ok = |text: &str| Config::parse(text).unwrap().validate().is_ok();
        assert!(ok(
            "[server]\nrequest_head_timeout_secs = 30\nkeep_alive_secs = 120\n"
        ));
        assert!(!ok("[server]\nrequest_head_timeout_secs = 31\n"));
        assert!(!ok("[server]\nrequest_head_timeout_secs = 0\n"));
        assert!(!ok("[server]\nkeep_alive_secs = 121\n"));
        assert!(ok(
            "[server]\nmax_uri_bytes = 4096\nmax_header_bytes = 4096\n"
        ));
        assert!(!ok("[server]\nmax_uri_bytes = 65535\n"));
        assert!(!ok(
            "[server]\nmax_header_bytes = 8192\n[auth.jwt]\nmax_token_bytes = 8192\n"
        ));
        assert!(!ok("[server]\nmax_head_bytes = 131072\n"));
        assert!(!ok("[server]\nmax_head_bytes = 1024\n"));
        assert!(!ok("[server]\nmax_headers = 96\n"));
        assert!(!ok("[server]\nhttp2_max_concurrent_streams = 0\n"));
        assert!(!ok("[validation]\nmax_schedule_ahead_secs = 0\n"));
        assert!(ok("[limits]\nmax_fetch_wait_ms = 30000\n"));
        assert!(!ok("[limits]\nmax_fetch_wait_ms = 30001\n"));
        assert!(!ok(
            "[limits.rate]\nenqueue = { per_second = 10, burst = 0 }\n"
        ));
        assert!(!ok("[limits.rate]\nip = { per_second = 0, burst = 5 }\n"));
        assert!(ok("[limits.rate]\nip = { per_second = 0.5, burst = 5 }\n"));
        assert!(!ok("[limits.connections]\nper_ip = 0\n"));
        assert!(!ok("[limits.abuse]\ndemote_to = 100\n"));
        assert!(Config::parse("[limits.rate]\nip = { per_second = 1 }\n").is_err());
        assert!(Config::parse("[limits]\nper_ip = 1\n").is_err());
    }

    #[test]
    fn public_listeners_need_tls_or_the_insecure_switch() {
        let c = Config::parse("[server]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
        let msg = format!("{:#}", c.validate().unwrap_err());
        assert!(msg.contains("[tls] enabled = true"), "{msg}");
        let c = Config::parse(
            "[server]\nlisten = \"0.0.0.0:8080\"\nallow_insecure_plaintext_non_loopback = true\n",
        )
        .unwrap();
        c.validate().unwrap();
        let c =
            Config::parse("[server]\nlisten = \"0.0.0.0:8443\"\n[tls]\nenabled = true\n").unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn action_types_parse_and_bad_ones_are_refused() {
        let c = Config::parse(
            "[auth.actions]\ntypes = [\"ops.apply\", \"billing.*\"]\nmax_lifetime_secs = 600\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.auth.actions.enabled());
        assert_eq!(c.auth.actions.types.len(), 2);
        assert!(Config::parse("[auth.actions]\ntypes = [\"Ops.Apply\"]\n").is_err());
        assert!(Config::parse("[auth.actions]\nsecret = \"inline\"\n").is_err());
        let long = Config::parse("[auth.actions]\nmax_lifetime_secs = 7200\n").unwrap();
        assert!(long.validate().is_err());
    }

    #[test]
    fn custom_roles_parse_and_bad_ones_are_refused() {
        let c = Config::parse(
            r#"
[[auth.roles]]
name = "billing-producer"
allow = [{ permissions = ["enqueue"], queues = ["billing.*"] }]
deny = [{ permissions = ["enqueue"], queues = ["billing.internal"] }]
"#,
        )
        .unwrap();
        c.validate().unwrap();
        let g = c
            .policy()
            .unwrap()
            .grants(&["billing-producer".into()], None, None);
        assert!(g
            .decide(crate::auth::Permission::Enqueue, Some("billing.x"))
            .is_ok());
        assert!(g
            .decide(crate::auth::Permission::Enqueue, Some("billing.internal"))
            .is_err());
        let bad =
            Config::parse("[[auth.roles]]\nname = \"x\"\nallow = [{ permissions = [\"fly\"] }]\n");
        assert!(bad.is_err());
        let shadow = Config::parse("[[auth.roles]]\nname = \"admin\"\n").unwrap();
        assert!(shadow.validate().is_err());
    }
}
