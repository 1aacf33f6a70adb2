//! The accounts service: login (password + TOTP), refresh, logout, and user management while
//! the server runs. The HTTP routes call it; it owns the login throttle, the session verifier's
//! published snapshot, and the password workers.
//!
//! Argon2 runs only on the blocking pool, at most [`PASSWORD_WORKERS`] at a time, each reusing a
//! 19 MiB working memory; a login is throttled before any of it. Every read-check-write (a TOTP
//! step, a refresh rotation) happens inside one write transaction on the control file, and redb
//! runs one writer at a time, so two requests cannot both spend the same code or token.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::key::{self, Verifier};
use super::login_throttle::{LoginThrottle, Throttled};
use super::session::{self, Claims, Decision, Gate, Gates, RefreshRecord, SessionVerifier};
use super::users::{self, PasswordPolicy, PolicyViolation, UserError, UserRecord, UserSummary};
use crate::clock::Clock;
use crate::config::SessionsConfig;
use crate::error::{Code, ErrorCode, ErrorKind};
use crate::store::{Store, StoreError};

/// `bulwark_password_verifications_total{result}`: argon2 password checks (logins and password
/// changes), so a test or an operator can see that throttled attempts cost none.
pub const PASSWORD_VERIFICATIONS: &str = "bulwark_password_verifications_total";
/// `bulwark_login_attempts_total{outcome}`: success, failure, throttled.
pub const LOGIN_ATTEMPTS: &str = "bulwark_login_attempts_total";
/// `bulwark_token_refreshes_total{outcome}`: success, failure, reuse.
pub const TOKEN_REFRESHES: &str = "bulwark_token_refreshes_total";

/// Argon2 computations at once (each holds 19 MiB).
const PASSWORD_WORKERS: usize = 2;
/// Password checks waiting for a worker before more are refused with 503.
const PASSWORD_QUEUE: usize = 64;
/// How often the throttle maps and revoked-session list are trimmed.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);
/// Expired refresh records are deleted every this many maintenance rounds.
const PURGE_EVERY_ROUNDS: u32 = 10;

/// What can go wrong with an accounts operation. Every authentication failure looks the same
/// to the client; the variant and its reason are for the audit record.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("too many login attempts")]
    Throttled(Throttled),
    #[error("{0}")]
    Refused(&'static str),
    #[error("a spent refresh token was presented again; its family is revoked")]
    RefreshReuse { username: String, family: String },
    #[error("{0}")]
    User(#[from] UserError),
    #[error("the accounts service is unavailable")]
    Unavailable,
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        Self::User(UserError::Store(e))
    }
}

impl From<PolicyViolation> for AccountError {
    fn from(e: PolicyViolation) -> Self {
        Self::User(UserError::Policy(e))
    }
}

/// Every authentication failure is the one 401; a user error says its own answer.
impl ErrorCode for AccountError {
    fn code(&self) -> Code {
        match self {
            Self::Throttled(_) => Code::RateLimited,
            Self::Refused(_) | Self::RefreshReuse { .. } => Code::Unauthenticated,
            Self::User(u) => u.code(),
            Self::Unavailable => Code::BackendUnavailable,
        }
    }

    fn message(&self) -> Cow<'static, str> {
        match self {
            Self::Throttled(_) => "too many login attempts; try again later".into(),
            Self::User(u) => u.message(),
            _ => self.code().row().message.into(),
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            Self::User(u) => u.details(),
            _ => None,
        }
    }

    fn hint(&self) -> Option<&'static str> {
        match self {
            Self::User(u) => u.hint(),
            _ => self.code().row().hint,
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Throttled(t) => Some(t.retry_after_secs),
            Self::User(u) => u.retry_after_secs(),
            _ => self.code().row().retry_after_secs,
        }
    }

    fn log_cause(&self) {
        match self {
            Self::User(u) => u.log_cause(),
            Self::Unavailable => warn!(error = %self, "accounts service unavailable"),
            _ => {}
        }
    }
}

impl AccountError {
    /// The coarse class the HTTP layer maps to a status.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Throttled(_) => ErrorKind::TooManyRequests,
            Self::Refused(_) | Self::RefreshReuse { .. } => ErrorKind::Unauthenticated,
            Self::User(UserError::InvalidUsername | UserError::Policy(_)) => ErrorKind::BadRequest,
            Self::User(UserError::Exists) => ErrorKind::Conflict,
            Self::User(UserError::NotFound) => ErrorKind::NotFound,
            Self::User(UserError::Store(_) | UserError::Crypto) | Self::Unavailable => {
                ErrorKind::Unavailable
            }
        }
    }
}

/// Tokens handed out by a login or a refresh. Shown to the client once, never logged.
pub struct Issued {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub username: String,
    /// The session (refresh family) id.
    pub family: String,
    /// Whether this login confirmed the user's TOTP enrolment.
    pub confirmed_totp: bool,
}

/// The result of a password check.
enum PasswordCheck {
    UnknownUser,
    WrongPassword,
    Matches(Box<UserRecord>),
}

/// Runs argon2 on the blocking pool, a bounded number at a time.
struct PasswordPool {
    permits: Arc<Semaphore>,
    verifiers: Mutex<Vec<Verifier>>,
    waiting: AtomicUsize,
}

impl PasswordPool {
    fn new() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(PASSWORD_WORKERS)),
            verifiers: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Verifier) -> T + Send + 'static,
    ) -> Result<T, AccountError> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= PASSWORD_QUEUE {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            warn!("password check queue full, refusing");
            return Err(AccountError::Unavailable);
        }
        let permit = self.permits.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let permit = permit.map_err(|_| AccountError::Unavailable)?;
        let mut verifier = self
            .verifiers
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_default();
        let (verifier, result) = tokio::task::spawn_blocking(move || {
            let result = work(&mut verifier);
            (verifier, result)
        })
        .await
        .map_err(|_| AccountError::Unavailable)?;
        if let Ok(mut v) = self.verifiers.lock() {
            v.push(verifier);
        }
        drop(permit);
        Ok(result)
    }
}

struct Inner {
    store: Store,
    /// The time logins, refreshes, expiries and revocations are judged at.
    clock: Clock,
    sessions: SessionVerifier,
    config: SessionsConfig,
    throttle: LoginThrottle,
    pool: PasswordPool,
    /// A hash of a password nobody has, so an unknown user costs the same argon2 work as a
    /// wrong password.
    decoy: String,
}

/// A cheap, cloneable handle to the accounts service.
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AccountError> + Send + 'static,
) -> Result<T, AccountError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| AccountError::Unavailable)?
}

fn gate(r: &UserRecord) -> Gate {
    Gate {
        credential_version: r.credential_version,
        disabled: r.disabled,
    }
}

fn secs(ms: i64) -> i64 {
    ms / 1000
}

fn ttl_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The longest a session token can live, in seconds.
fn max_access_ttl_secs() -> i64 {
    i64::try_from(crate::config::sessions::MAX_ACCESS_TTL_SECS).unwrap_or(3600)
}

impl Accounts {
    /// Loads the session key (creating it on first start) and every user's gate. Blocking:
    /// call it from start-up's blocking section.
    pub fn open(
        store: Store,
        config: &SessionsConfig,
        secrets_dir: &std::path::Path,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let key = session::load_or_create_key(secrets_dir).map_err(anyhow::Error::msg)?;
        let mut gates = Gates::default();
        for record in users::list(&store)? {
            gates.users.insert(record.username.clone(), gate(&record));
        }
        gates.revoked = session::revoked_families(&store, clock.now_ms(), max_access_ttl_secs())?;
        let decoy = decoy_hash()?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                sessions: SessionVerifier::new(key, gates, clock.clone()),
                clock,
                config: config.clone(),
                throttle: LoginThrottle::new(
                    config.login_per_minute_per_ip,
                    config.login_per_minute_per_user,
                ),
                pool: PasswordPool::new(),
                decoy,
            }),
        })
    }

    /// The session verifier the auth extractor uses.
    #[must_use]
    pub fn sessions(&self) -> SessionVerifier {
        self.inner.sessions.clone()
    }

    /// Starts the periodic clean-up (throttle maps, revoked sessions, expired refresh tokens)
    /// on the current runtime. It ends when the last handle is dropped.
    pub fn start_maintenance(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
            tick.tick().await;
            let mut round: u32 = 0;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.throttle.retain_recent();
                inner.sessions.prune(inner.clock.now_secs());
                round = round.wrapping_add(1);
                if round % PURGE_EVERY_ROUNDS == 0 {
                    let (store, clock) = (inner.store.clone(), inner.clock.clone());
                    let purged = blocking(move || {
                        store.control_write(|txn| {
                            session::purge_expired(txn, clock.now_ms()).map_err(AccountError::from)
                        })
                    })
                    .await;
                    match purged {
                        Ok(n) => debug!(purged = n, "expired refresh tokens deleted"),
                        Err(e) => warn!(error = %e, "refresh token purge failed"),
                    }
                }
            }
        });
    }

    fn issue_access(
        &self,
        username: &str,
        family: &str,
        cv: u32,
    ) -> Result<SecretString, AccountError> {
        let now = self.inner.clock.now_secs();
        let ttl = i64::try_from(self.inner.config.access_ttl_secs).unwrap_or(900);
        self.inner
            .sessions
            .sign(&Claims {
                sub: username.to_string(),
                sid: family.to_string(),
                iat: now,
                exp: now.saturating_add(ttl),
                cv,
            })
            .map_err(|_| AccountError::Unavailable)
    }

    /// Checks a password against a user's record (or the decoy) on the password workers.
    async fn check_password(
        &self,
        username: &str,
        password: SecretString,
    ) -> Result<PasswordCheck, AccountError> {
        let store = self.inner.store.clone();
        let name = username.to_string();
        let inner = self.inner.clone();
        let check = self
            .inner
            .pool
            .run(move |verifier| -> Result<PasswordCheck, StoreError> {
                let record = if users::valid_username(&name) {
                    users::get(&store, &name)?
                } else {
                    None
                };
                let result = match record {
                    None => {
                        let _ = verifier.verify(&password, &inner.decoy);
                        PasswordCheck::UnknownUser
                    }
                    Some(r) => {
                        if verifier.verify(&password, &r.password_hash) {
                            PasswordCheck::Matches(Box::new(r))
                        } else {
                            PasswordCheck::WrongPassword
                        }
                    }
                };
                Ok(result)
            })
            .await??;
        let label = match &check {
            PasswordCheck::Matches(_) => "accepted",
            _ => "refused",
        };
        metrics::counter!(PASSWORD_VERIFICATIONS, "result" => label).increment(1);
        Ok(check)
    }

    /// Logs a user in: throttle, password (argon2), disabled flag, TOTP (each step accepted
    /// once; the first valid code confirms enrolment), then a new session and refresh family.
    pub async fn login(
        &self,
        source: IpAddr,
        username: &str,
        password: SecretString,
        code: SecretString,
    ) -> Result<Issued, AccountError> {
        let outcome = self.login_inner(source, username, password, code).await;
        let label = match &outcome {
            Ok(_) => "success",
            Err(AccountError::Throttled(_)) => "throttled",
            Err(_) => "failure",
        };
        metrics::counter!(LOGIN_ATTEMPTS, "outcome" => label).increment(1);
        outcome
    }

    async fn login_inner(
        &self,
        source: IpAddr,
        username: &str,
        password: SecretString,
        code: SecretString,
    ) -> Result<Issued, AccountError> {
        self.inner
            .throttle
            .check(source, username)
            .map_err(AccountError::Throttled)?;
        if password.expose_secret().len() > 4 * users::MAX_PASSWORD_CHARS {
            return Err(AccountError::Refused("password too long"));
        }
        let record = match self.check_password(username, password).await? {
            PasswordCheck::UnknownUser => return Err(AccountError::Refused("unknown user")),
            PasswordCheck::WrongPassword => return Err(AccountError::Refused("wrong password")),
            PasswordCheck::Matches(r) => r,
        };
        if record.disabled {
            return Err(AccountError::Refused("user disabled"));
        }
        if record.totp_secret.is_none() {
            return Err(AccountError::Refused("totp not enrolled"));
        }
        let (store, clock) = (self.inner.store.clone(), self.inner.clock.clone());
        let refresh_ttl = self.inner.config.refresh_ttl_secs;
        let name = record.username.clone();
        let checked_cv = record.credential_version;
        let (refresh_token, family, cv, confirmed) = blocking(move || {
            let now = clock.now_ms();
            store.control_write(|txn| {
                let mut current =
                    users::get_in(txn, &name)?.ok_or(AccountError::Refused("unknown user"))?;
                if current.credential_version != checked_cv || current.disabled {
                    return Err(AccountError::Refused("credentials changed during login"));
                }
                let secret = current
                    .totp_secret
                    .clone()
                    .ok_or(AccountError::Refused("totp not enrolled"))?;
                let now_secs = u64::try_from(secs(now)).unwrap_or(0);
                let Some(step) =
                    users::check_totp(&secret, &code, now_secs, current.last_totp_step)
                else {
                    return Err(AccountError::Refused(
                        if users::check_totp(&secret, &code, now_secs, None).is_some() {
                            "replayed totp code"
                        } else {
                            "wrong totp code"
                        },
                    ));
                };
                let confirmed = !current.totp_confirmed;
                current.last_totp_step = Some(step);
                current.totp_confirmed = true;
                current.updated_at = now;
                users::put_in(txn, &current)?;
                let family = session::new_family_id().map_err(|_| AccountError::Unavailable)?;
                let (token, digest) =
                    session::new_refresh_token().map_err(|_| AccountError::Unavailable)?;
                session::put_refresh(
                    txn,
                    &digest,
                    &RefreshRecord {
                        family: family.clone(),
                        username: name.clone(),
                        credential_version: current.credential_version,
                        issued_at: now,
                        expires_at: now.saturating_add(ttl_ms(refresh_ttl)),
                        used_at: None,
                        revoked_at: None,
                    },
                )?;
                Ok((token, family, current.credential_version, confirmed))
            })
        })
        .await?;
        let access_token = self.issue_access(&record.username, &family, cv)?;
        Ok(Issued {
            access_token,
            refresh_token,
            access_ttl_secs: self.inner.config.access_ttl_secs,
            refresh_ttl_secs: refresh_ttl,
            username: record.username.clone(),
            family,
            confirmed_totp: confirmed,
        })
    }

    /// Exchanges a refresh token for a new session token and the next refresh token of its
    /// family. A spent token presented again revokes the family and its sessions.
    pub async fn refresh(&self, token: SecretString) -> Result<Issued, AccountError> {
        let outcome = self.refresh_inner(token).await;
        let label = match &outcome {
            Ok(_) => "success",
            Err(AccountError::RefreshReuse { .. }) => "reuse",
            Err(_) => "failure",
        };
        metrics::counter!(TOKEN_REFRESHES, "outcome" => label).increment(1);
        outcome
    }

    async fn refresh_inner(&self, token: SecretString) -> Result<Issued, AccountError> {
        let digest = session::refresh_digest(&token)
            .ok_or(AccountError::Refused("malformed refresh token"))?;
        drop(token);
        let (store, clock) = (self.inner.store.clone(), self.inner.clock.clone());
        let refresh_ttl = self.inner.config.refresh_ttl_secs;
        let result = blocking(move || {
            let now = clock.now_ms();
            // The outer error aborts the transaction; the inner one (reuse) is answered after
            // the family's revocation is committed.
            store
                .control_write(|txn| {
                    let mut record = session::get_refresh(txn, &digest)?
                        .ok_or(AccountError::Refused("unknown refresh token"))?;
                    let user = users::get_in(txn, &record.username)?;
                    match session::decide(&record, now, user.as_ref().map(gate)) {
                        Decision::Refuse(reason) => Err(AccountError::Refused(reason)),
                        Decision::Reuse => {
                            session::revoke_family(txn, &record.family, now)?;
                            Ok(Err(AccountError::RefreshReuse {
                                username: record.username,
                                family: record.family,
                            }))
                        }
                        Decision::Rotate => {
                            record.used_at = Some(now);
                            session::put_refresh(txn, &digest, &record)?;
                            let (next, next_digest) = session::new_refresh_token()
                                .map_err(|_| AccountError::Unavailable)?;
                            let next_record = RefreshRecord {
                                issued_at: now,
                                expires_at: now.saturating_add(ttl_ms(refresh_ttl)),
                                used_at: None,
                                revoked_at: None,
                                ..record.clone()
                            };
                            session::put_refresh(txn, &next_digest, &next_record)?;
                            Ok(Ok((next, record)))
                        }
                    }
                })
                .and_then(std::convert::identity)
        })
        .await;
        let (refresh_token, record) = match result {
            Ok(ok) => ok,
            Err(AccountError::RefreshReuse { username, family }) => {
                self.revoke_session(&family);
                return Err(AccountError::RefreshReuse { username, family });
            }
            Err(e) => return Err(e),
        };
        let access_token =
            self.issue_access(&record.username, &record.family, record.credential_version)?;
        Ok(Issued {
            access_token,
            refresh_token,
            access_ttl_secs: self.inner.config.access_ttl_secs,
            refresh_ttl_secs: refresh_ttl,
            username: record.username,
            family: record.family,
            confirmed_totp: false,
        })
    }

    fn revoke_session(&self, family: &str) {
        let until = self
            .inner
            .clock
            .now_secs()
            .saturating_add(max_access_ttl_secs());
        self.inner.sessions.revoke_session(family, until);
    }

    /// Ends a session: revokes the refresh family of `token` and its session tokens. Returns
    /// the user and the family.
    pub async fn logout(&self, token: SecretString) -> Result<(String, String), AccountError> {
        let digest = session::refresh_digest(&token)
            .ok_or(AccountError::Refused("malformed refresh token"))?;
        drop(token);
        let (store, clock) = (self.inner.store.clone(), self.inner.clock.clone());
        let (username, family) = blocking(move || {
            let now = clock.now_ms();
            store.control_write(|txn| {
                let record = session::get_refresh(txn, &digest)?
                    .ok_or(AccountError::Refused("unknown refresh token"))?;
                if record.revoked_at.is_some() {
                    return Err(AccountError::Refused("refresh token revoked"));
                }
                if record.expires_at <= now {
                    return Err(AccountError::Refused("refresh token expired"));
                }
                session::revoke_family(txn, &record.family, now)?;
                Ok((record.username, record.family))
            })
        })
        .await?;
        self.revoke_session(&family);
        Ok((username, family))
    }

    /// Creates a user with a policy-checked password and a fresh TOTP secret; returns the
    /// user and the `otpauth://` URI (to show once).
    pub async fn create_user(
        &self,
        username: &str,
        password: SecretString,
    ) -> Result<(UserSummary, SecretString), AccountError> {
        let (user, uri) = self.create_user_with(username, password, true).await?;
        let uri = uri.ok_or(AccountError::Unavailable)?;
        Ok((user, uri))
    }

    /// Creates a user with a policy-checked password and, when `with_totp`, a fresh TOTP
    /// secret (its `otpauth://` URI returned, to show once). Without, the user cannot log in
    /// until [`Self::enrol_totp`].
    pub async fn create_user_with(
        &self,
        username: &str,
        password: SecretString,
        with_totp: bool,
    ) -> Result<(UserSummary, Option<SecretString>), AccountError> {
        if !users::valid_username(username) {
            return Err(UserError::InvalidUsername.into());
        }
        PasswordPolicy::from(&self.inner.config).check(username, &password)?;
        let hash = self
            .inner
            .pool
            .run(move |_| key::hash(&password))
            .await?
            .map_err(|_| UserError::Crypto)?;
        let (secret, uri) = if with_totp {
            let secret = users::new_totp_secret()?;
            let uri = users::otpauth_uri(&secret, username)?;
            (Some(secret), Some(uri))
        } else {
            (None, None)
        };
        let record = users::new_record(username, hash, secret, self.inner.clock.now_ms());
        let store = self.inner.store.clone();
        let record = blocking(move || {
            users::insert(&store, &record)?;
            Ok(record)
        })
        .await?;
        self.inner.sessions.publish_user(username, gate(&record));
        Ok((UserSummary::from(&record), uri))
    }

    /// Changes a user's password. With `current`, the user is changing their own: it is
    /// throttled like a login and checked first. Every session and refresh token of the user
    /// dies.
    pub async fn change_password(
        &self,
        source: IpAddr,
        username: &str,
        current: Option<SecretString>,
        new: SecretString,
    ) -> Result<UserSummary, AccountError> {
        if !users::valid_username(username) {
            return Err(UserError::NotFound.into());
        }
        if let Some(current) = current {
            self.inner
                .throttle
                .check(source, username)
                .map_err(AccountError::Throttled)?;
            match self.check_password(username, current).await? {
                PasswordCheck::Matches(_) => {}
                PasswordCheck::UnknownUser => return Err(UserError::NotFound.into()),
                PasswordCheck::WrongPassword => {
                    return Err(AccountError::Refused("wrong current password"))
                }
            }
        } else {
            let store = self.inner.store.clone();
            let name = username.to_string();
            blocking(move || users::get(&store, &name)?.ok_or(UserError::NotFound.into())).await?;
        }
        PasswordPolicy::from(&self.inner.config).check(username, &new)?;
        let hash = self
            .inner
            .pool
            .run(move |_| key::hash(&new))
            .await?
            .map_err(|_| UserError::Crypto)?;
        let store = self.inner.store.clone();
        let name = username.to_string();
        let clock = self.inner.clock.clone();
        let record =
            blocking(move || Ok(users::set_password(&store, &name, hash, clock.now_ms())?)).await?;
        self.inner.sessions.publish_user(username, gate(&record));
        Ok(UserSummary::from(&record))
    }

    /// Gives a user a new TOTP secret (unconfirmed until its first login) and returns its
    /// `otpauth://` URI, to show once. Every session of the user ends.
    pub async fn enrol_totp(&self, username: &str) -> Result<SecretString, AccountError> {
        let secret = users::new_totp_secret()?;
        let uri = users::otpauth_uri(&secret, username)?;
        let store = self.inner.store.clone();
        let name = username.to_string();
        let now = self.inner.clock.now_ms();
        let record = blocking(move || Ok(users::set_totp(&store, &name, secret, now)?)).await?;
        self.inner.sessions.publish_user(username, gate(&record));
        Ok(uri)
    }

    /// Disables (or enables again) a user; a disabled user's sessions stop working at once.
    pub async fn set_disabled(
        &self,
        username: &str,
        disabled: bool,
    ) -> Result<UserSummary, AccountError> {
        let store = self.inner.store.clone();
        let name = username.to_string();
        let now = self.inner.clock.now_ms();
        let record =
            blocking(move || Ok(users::set_disabled(&store, &name, disabled, now)?)).await?;
        self.inner.sessions.publish_user(username, gate(&record));
        Ok(UserSummary::from(&record))
    }

    /// Whether a user exists.
    pub async fn user_exists(&self, username: &str) -> Result<bool, AccountError> {
        let store = self.inner.store.clone();
        let name = username.to_string();
        blocking(move || Ok(users::get(&store, &name)?.is_some())).await
    }

    /// Every user, without secrets.
    pub async fn list_users(&self) -> Result<Vec<UserSummary>, AccountError> {
        let store = self.inner.store.clone();
        blocking(move || Ok(users::list(&store)?.iter().map(UserSummary::from).collect())).await
    }
}

/// The PHC string of a random password nobody knows.
fn decoy_hash() -> anyhow::Result<String> {
    static DECOY: OnceLock<String> = OnceLock::new();
    if let Some(d) = DECOY.get() {
        return Ok(d.clone());
    }
    let token = key::generate("decoy").map_err(|_| anyhow::anyhow!("no randomness"))?;
    let hash = key::hash(&token.token).map_err(|e| anyhow::anyhow!("decoy hash: {e}"))?;
    Ok(DECOY.get_or_init(|| hash).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::auth::AuthError;
    use crate::clock::ManualClock;

    /// Where the tests' manual clocks start (2026-05-28).
    const START_MS: i64 = 1_780_000_000_000;

    /// Accounts on a fresh store, on a manual clock: the clock to read and the hand that moves
    /// it.
    async fn setup(per_minute: u32) -> (tempfile::TempDir, Accounts, Clock, ManualClock) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        let config = SessionsConfig {
            login_per_minute_per_ip: per_minute,
            login_per_minute_per_user: per_minute,
            ..SessionsConfig::default()
        };
        let (clock, hand) = Clock::manual(START_MS);
        let accounts = Accounts::open(store, &config, &secrets, clock.clone()).unwrap();
        (dir, accounts, clock, hand)
    }

    fn s(text: &str) -> SecretString {
        SecretString::from(text.to_string())
    }

    fn code_for(uri: &SecretString, at: u64) -> SecretString {
        let totp = totp_rs::Totp::from_url(uri.expose_secret()).unwrap();
        s(&totp.generate(at).to_string())
    }

    fn now_secs(clock: &Clock) -> u64 {
        u64::try_from(clock.now_secs()).unwrap()
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn login_refresh_reuse_and_password_change() {
        let (_dir, accounts, clock, _hand) = setup(100).await;
        let (user, uri) = accounts
            .create_user("alice", s("Correct-Horse-9"))
            .await
            .unwrap();
        assert!(user.totp_enrolled && !user.totp_confirmed);
        assert!(matches!(
            accounts.create_user("alice", s("Correct-Horse-9")).await,
            Err(AccountError::User(UserError::Exists))
        ));
        // Wrong password, then the right one.
        let err = accounts
            .login(
                IP,
                "alice",
                s("wrong-Password-1"),
                code_for(&uri, now_secs(&clock)),
            )
            .await
            .err()
            .unwrap();
        assert!(matches!(err, AccountError::Refused("wrong password")));
        let issued = accounts
            .login(
                IP,
                "alice",
                s("Correct-Horse-9"),
                code_for(&uri, now_secs(&clock)),
            )
            .await
            .unwrap();
        assert!(issued.confirmed_totp);
        let sessions = accounts.sessions();
        let now = clock.now_secs();
        let claims = sessions
            .verify(issued.access_token.expose_secret(), now)
            .unwrap();
        assert_eq!(claims.sub, "alice");
        // The same code again is a replay.
        let err = accounts
            .login(
                IP,
                "alice",
                s("Correct-Horse-9"),
                code_for(&uri, now_secs(&clock)),
            )
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, AccountError::Refused("replayed totp code")),
            "{err:?}"
        );

        // Rotation: the first token is spent, the second works once.
        let second = accounts
            .refresh(s(issued.refresh_token.expose_secret()))
            .await
            .unwrap();
        assert_eq!(second.family, issued.family);
        assert_ne!(
            second.refresh_token.expose_secret(),
            issued.refresh_token.expose_secret()
        );
        // Reuse of the first revokes the family: the second no longer works either, nor do
        // the family's session tokens.
        let err = accounts
            .refresh(s(issued.refresh_token.expose_secret()))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, AccountError::RefreshReuse { .. }));
        assert!(matches!(
            accounts
                .refresh(s(second.refresh_token.expose_secret()))
                .await,
            Err(AccountError::Refused(_))
        ));
        assert!(sessions
            .verify(second.access_token.expose_secret(), now)
            .is_err());

        // Password change by the user: wrong current password refused; then sessions and
        // refresh tokens of other families die.
        let code = code_for(&uri, now_secs(&clock) + 30);
        let third = accounts
            .login(IP, "alice", s("Correct-Horse-9"), code)
            .await
            .unwrap();
        assert!(matches!(
            accounts
                .change_password(IP, "alice", Some(s("nope-Nope-123")), s("Battery-Staple-8"))
                .await,
            Err(AccountError::Refused(_))
        ));
        let violation = accounts
            .change_password(IP, "alice", Some(s("Correct-Horse-9")), s("short"))
            .await
            .err()
            .unwrap();
        assert!(matches!(
            violation,
            AccountError::User(UserError::Policy(_))
        ));
        let changed = accounts
            .change_password(
                IP,
                "alice",
                Some(s("Correct-Horse-9")),
                s("Battery-Staple-8"),
            )
            .await
            .unwrap();
        assert_eq!(changed.credential_version, 2);
        assert!(sessions
            .verify(third.access_token.expose_secret(), now)
            .is_err());
        assert!(matches!(
            accounts
                .refresh(s(third.refresh_token.expose_secret()))
                .await,
            Err(AccountError::Refused(_))
        ));
        let listed = accounts.list_users().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].totp_confirmed);
    }

    #[tokio::test]
    async fn unknown_users_cost_a_password_check_and_logout_revokes() {
        let (_dir, accounts, clock, _hand) = setup(5).await;
        let err = accounts
            .login(IP, "nobody", s("Correct-Horse-9"), s("123456"))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, AccountError::Refused("unknown user")));
        let (_, uri) = accounts
            .create_user("bob", s("Correct-Horse-9"))
            .await
            .unwrap();
        let issued = accounts
            .login(
                IP,
                "bob",
                s("Correct-Horse-9"),
                code_for(&uri, now_secs(&clock)),
            )
            .await
            .unwrap();
        let (user, family) = accounts
            .logout(s(issued.refresh_token.expose_secret()))
            .await
            .unwrap();
        assert_eq!(
            (user.as_str(), family.as_str()),
            ("bob", issued.family.as_str())
        );
        assert!(accounts
            .sessions()
            .verify(issued.access_token.expose_secret(), clock.now_secs())
            .is_err());
        assert!(accounts
            .refresh(s(issued.refresh_token.expose_secret()))
            .await
            .is_err());
        // Three more attempts from the same source pass the throttle; the sixth is refused.
        for _ in 0..3 {
            let _ = accounts.login(IP, "carol", s("x"), s("000000")).await;
        }
        assert!(matches!(
            accounts.login(IP, "carol", s("x"), s("000000")).await,
            Err(AccountError::Throttled(_))
        ));
    }

    #[tokio::test]
    async fn session_and_refresh_tokens_die_when_the_clock_passes_their_lifetimes() {
        let (_dir, accounts, clock, hand) = setup(100).await;
        let (_, uri) = accounts
            .create_user("dave", s("Correct-Horse-9"))
            .await
            .unwrap();
        let issued = accounts
            .login(
                IP,
                "dave",
                s("Correct-Horse-9"),
                code_for(&uri, now_secs(&clock)),
            )
            .await
            .unwrap();
        let sessions = accounts.sessions();
        let access_ms = i64::try_from(issued.access_ttl_secs * 1000).unwrap();
        let refresh_ms = i64::try_from(issued.refresh_ttl_secs * 1000).unwrap();
        assert!(access_ms < refresh_ms);

        // The session token stands until its last millisecond, not after.
        hand.set(START_MS + access_ms - 1000);
        assert!(sessions.authenticate(&issued.access_token).is_ok());
        hand.set(START_MS + access_ms);
        assert!(matches!(
            sessions.authenticate(&issued.access_token),
            Err(AuthError::Expired)
        ));

        // The refresh token outlives it, and is refused once its own lifetime is over.
        hand.set(START_MS + refresh_ms);
        let err = accounts
            .refresh(s(issued.refresh_token.expose_secret()))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, AccountError::Refused(_)), "{err:?}");
        // A logout with it is refused too: nothing is left to end.
        assert!(matches!(
            accounts
                .logout(s(issued.refresh_token.expose_secret()))
                .await,
            Err(AccountError::Refused("refresh token expired"))
        ));
    }

    #[tokio::test]
    async fn a_refresh_just_before_expiry_issues_tokens_that_run_from_the_refresh() {
        let (_dir, accounts, clock, hand) = setup(100).await;
        let (_, uri) = accounts
            .create_user("erin", s("Correct-Horse-9"))
            .await
            .unwrap();
        let issued = accounts
            .login(
                IP,
                "erin",
                s("Correct-Horse-9"),
                code_for(&uri, now_secs(&clock)),
            )
            .await
            .unwrap();
        let refresh_ms = i64::try_from(issued.refresh_ttl_secs * 1000).unwrap();
        hand.set(START_MS + refresh_ms - 1);
        let next = accounts
            .refresh(s(issued.refresh_token.expose_secret()))
            .await
            .unwrap();
        // The new pair counts from the refresh: an hour past the first refresh token's end, the
        // new session token has ended and the new refresh token still works.
        hand.advance(3_600_000);
        assert!(accounts
            .sessions()
            .authenticate(&next.access_token)
            .is_err());
        assert!(accounts
            .refresh(s(next.refresh_token.expose_secret()))
            .await
            .is_ok());
    }
}
