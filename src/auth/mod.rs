//! The auth store: who a credential is, and what it may do.
//!
//! API keys are verified with argon2id at most once per key per process: a verified key is
//! cached under an HMAC-SHA256 digest made with a per-process random key, so the cache holds no
//! usable secret and a lookup costs one HMAC. Cache misses go to the [`actor`], which verifies
//! off the async threads and lets concurrent requests with the same key share one verification.
//! Before a miss costs any argon2 work, the source IP spends from its verification budget
//! ([`throttle`]); a flood of wrong keys from one address is refused with 429.
//!
//! [`Principal`] can only be made here: a handler that takes one has an authenticated caller.
//! What it may do is decided by [`policy`].

pub mod accounts;
pub mod actions;
mod actor;
pub mod error;
pub mod jwt;
pub mod key;
pub mod login_throttle;
pub mod policy;
pub mod policy_token;
pub mod records;
pub mod session;
pub mod throttle;
pub mod users;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ring::hmac;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, oneshot};

pub use error::AuthError;
pub use policy::{DenyReason, Grants, Permission, Policy, QueuePattern, Reach};

use crate::clock::{Clock, Millis};
use crate::store::Store;
use records::KeyRecord;

/// What kind of credential authenticated a principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// An API key, by its public id.
    ApiKey { id: String },
    /// A JWT, by the id of the key that verified it.
    Jwt { kid: String },
    /// An admin user's session.
    Session { session: String },
    /// A verified TLS client certificate, by its SHA-256 fingerprint (hex).
    Certificate { fingerprint: String },
    /// The operator at the machine, on the command line with the server stopped (whoever can
    /// write the data folder holds every key anyway).
    Local,
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Principal {
    name: String,
    tenant: Option<String>,
    credential: Credential,
    roles: Vec<String>,
    grants: Grants,
    expires_at: Option<Millis>,
    /// When this principal was last seen, for the key listing (flushed to the store now and
    /// then).
    last_used: AtomicI64,
    /// Set when the credential behind this principal is revoked or changed: whoever still
    /// holds the principal (a waiting long-poll) must stop acting on it.
    invalidated: std::sync::atomic::AtomicBool,
}

impl Principal {
    /// An admin user (its audit identity, before or without a session): the built-in admin
    /// role, system scope, principal `user:<name>`.
    #[must_use]
    pub fn admin_user(name: &str) -> Self {
        Self::session_admin(name, "", None)
    }

    /// An admin user signed in with session `session`, valid until `expires_at`.
    #[must_use]
    pub fn session_admin(name: &str, session: &str, expires_at: Option<Millis>) -> Self {
        Self::external(
            format!("user:{name}"),
            None,
            Credential::Session {
                session: session.to_string(),
            },
            vec!["admin".to_string()],
            None,
            expires_at,
            Policy::builtin(),
        )
    }

    /// The operator at the machine running the command line: a system administrator named
    /// `local-operator`.
    #[must_use]
    pub fn local_operator() -> Self {
        Self::external(
            crate::audit::record::LOCAL_OPERATOR.to_string(),
            None,
            Credential::Local,
            vec!["admin".to_string()],
            None,
            None,
            Policy::builtin(),
        )
    }

    /// A principal authenticated by an API key record.
    #[must_use]
    pub fn from_key(record: &KeyRecord, policy: &Policy) -> Self {
        Self {
            name: record.name.clone(),
            tenant: record.tenant.clone(),
            credential: Credential::ApiKey {
                id: record.id.clone(),
            },
            grants: policy.grants(
                &record.roles,
                record.scopes.as_deref(),
                record.queues.as_deref(),
            ),
            roles: record.roles.clone(),
            expires_at: record.expires_at,
            last_used: AtomicI64::new(0),
            invalidated: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A principal from an external credential (JWT, session) with its own roles.
    #[must_use]
    pub fn external(
        name: String,
        tenant: Option<String>,
        credential: Credential,
        roles: Vec<String>,
        queues: Option<Vec<QueuePattern>>,
        expires_at: Option<Millis>,
        policy: &Policy,
    ) -> Self {
        Self {
            grants: policy.grants(&roles, None, queues.as_deref()),
            name,
            tenant,
            credential,
            roles,
            expires_at,
            last_used: AtomicI64::new(0),
            invalidated: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The principal's stable identity (its name): leases and job ownership are bound to it,
    /// so a rotated key keeps its principal's jobs.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.name
    }

    /// The principal's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tenant the credential belongs to; `None` for system scope.
    #[must_use]
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Its role names.
    #[must_use]
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// The credential that authenticated it.
    #[must_use]
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// What it may do.
    #[must_use]
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Whether it may administer the server (admin permission, system scope).
    #[must_use]
    pub fn is_system_admin(&self) -> bool {
        self.tenant.is_none() && self.grants.has(Permission::Admin)
    }

    /// How logs show the caller: the name and a truncated credential id.
    #[must_use]
    pub fn display_id(&self) -> String {
        format!("{} ({})", self.name, self.credential_id())
    }

    /// The credential, truncated so that it identifies without revealing: `bwk_…a1b2`,
    /// `jwt:<kid>`, `session:…a1b2`, `cert:<first 16 hex digits of the SHA-256 fingerprint>`.
    #[must_use]
    pub fn credential_id(&self) -> String {
        match &self.credential {
            Credential::ApiKey { id } => key::display_id(id),
            Credential::Jwt { kid } => format!("jwt:{kid}"),
            Credential::Session { session } => {
                let tail = session.get(session.len().saturating_sub(4)..).unwrap_or("");
                format!("session:…{tail}")
            }
            Credential::Certificate { fingerprint } => {
                format!("cert:{}", fingerprint.get(..16).unwrap_or(fingerprint))
            }
            Credential::Local => "local".to_string(),
        }
    }

    /// What kind of credential authenticated this principal (a metric label).
    #[must_use]
    pub fn credential_kind(&self) -> &'static str {
        match &self.credential {
            Credential::ApiKey { .. } => "api_key",
            Credential::Jwt { .. } => "jwt",
            Credential::Session { .. } => "session",
            Credential::Certificate { .. } => "certificate",
            Credential::Local => "local",
        }
    }

    /// Whether the credential has expired at `now`.
    #[must_use]
    pub fn expired_at(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Marks the credential as revoked or changed (the auth store, when it forgets a key).
    pub fn invalidate(&self) {
        self.invalidated.store(true, Ordering::SeqCst);
    }

    /// Whether the credential still stands at `now`: not expired, not revoked or changed since
    /// this principal was authenticated.
    #[must_use]
    pub fn still_valid(&self, now: Millis) -> bool {
        !self.expired_at(now) && !self.invalidated.load(Ordering::SeqCst)
    }

    fn touch(&self, now: Millis) {
        self.last_used.fetch_max(now, Ordering::Relaxed);
    }

    fn last_used(&self) -> Millis {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Checks a permission on some queue (the route-level check). Deny by default.
    pub fn require(&self, permission: Permission) -> Result<(), AuthError> {
        self.decide(permission, None).map(|_| ())
    }

    /// Decides a permission on a queue (or on some queue when `None`).
    pub fn decide(&self, permission: Permission, queue: Option<&str>) -> Result<Reach, AuthError> {
        self.grants.decide(permission, queue).map_err(|reason| {
            metrics::counter!(crate::metrics::AUTHZ_DENIALS, "permission" => permission.as_str())
                .increment(1);
            AuthError::Forbidden {
                principal: self.name.clone(),
                permission,
                queue: queue.map(str::to_string),
                reason: reason.as_str(),
            }
        })
    }
}

type Digest = [u8; 32];
type Cache = HashMap<Digest, Arc<Principal>>;

enum Msg {
    Verify {
        digest: Digest,
        token: SecretString,
        source: Option<IpAddr>,
        reply: oneshot::Sender<Result<Arc<Principal>, AuthError>>,
    },
    Verified {
        digest: Digest,
        epoch: u64,
        result: Result<Arc<Principal>, AuthError>,
    },
    /// Drop every cached principal of these API keys (revoked, rotated or changed), and
    /// discard verifications already under way.
    Forget {
        key_ids: Vec<String>,
        reply: oneshot::Sender<()>,
    },
    /// Last-used times not yet flushed, by key id.
    LastUsed {
        reply: oneshot::Sender<HashMap<String, Millis>>,
    },
}

/// A cheap, cloneable handle to the auth store.
#[derive(Clone)]
pub struct AuthHandle {
    tx: mpsc::Sender<Msg>,
    cache: Arc<ArcSwap<Cache>>,
    mac: Arc<hmac::Key>,
    policy: Arc<Policy>,
    /// The JWT verifier, replaced whole when its key files are reloaded.
    jwt: Option<Arc<ArcSwap<jwt::JwtVerifier>>>,
    store: Store,
    /// The time credentials are checked at (expiry of keys, JWTs and cached principals).
    clock: Clock,
}

impl AuthHandle {
    /// Starts the auth store on the current tokio runtime; credentials are checked at `clock`'s
    /// time.
    pub fn spawn(
        store: Store,
        policy: Arc<Policy>,
        throttle: throttle::ThrottleConfig,
        jwt: Option<jwt::JwtVerifier>,
        audit: Option<crate::audit::AuditHandle>,
        clock: Clock,
    ) -> Result<Self, AuthError> {
        let rng = ring::rand::SystemRandom::new();
        let mac =
            hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| AuthError::Unavailable)?;
        let cache = Arc::new(ArcSwap::from_pointee(Cache::new()));
        let throttle = Arc::new(throttle::Throttle::new(&throttle));
        let (tx, rx) = mpsc::channel(1024);
        let actor = actor::AuthActor::new(
            store.clone(),
            policy.clone(),
            cache.clone(),
            throttle.clone(),
            audit,
            tx.downgrade(),
            clock.clone(),
        )
        .map_err(|_| AuthError::Unavailable)?;
        tokio::spawn(actor.run(rx));
        Ok(Self {
            tx,
            cache,
            mac: Arc::new(mac),
            policy,
            jwt: jwt.map(|j| Arc::new(ArcSwap::from_pointee(j))),
            store,
            clock,
        })
    }

    /// The clock credentials are checked at.
    #[must_use]
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Where the JWT verifier is published, for reloading its keys (`None` without `[auth.jwt]`).
    #[must_use]
    pub fn jwt_slot(&self) -> Option<Arc<ArcSwap<jwt::JwtVerifier>>> {
        self.jwt.clone()
    }

    /// The roles the server knows.
    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The database, for key management.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Who presents this API key. Every failure looks the same to the caller. A cache miss that
    /// needs a new verification first spends from `source`'s verification budget (requests
    /// sharing a verification under way spend nothing): over it, the answer is
    /// [`AuthError::Throttled`] and no argon2 work is done.
    pub async fn authenticate(
        &self,
        token: SecretString,
        source: Option<IpAddr>,
    ) -> Result<Arc<Principal>, AuthError> {
        let tag = hmac::sign(&self.mac, token.expose_secret().as_bytes());
        let mut digest = [0u8; 32];
        digest.copy_from_slice(tag.as_ref());
        let now = self.clock.now_ms();
        if let Some(principal) = self.cache.load().get(&digest) {
            if principal.expired_at(now) {
                return Err(AuthError::Expired);
            }
            principal.touch(now);
            return Ok(principal.clone());
        }
        if key::parse(token.expose_secret()).is_none() {
            return Err(AuthError::Malformed);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Verify {
                digest,
                token,
                source,
                reply,
            })
            .await
            .map_err(|_| AuthError::Unavailable)?;
        let principal = rx.await.map_err(|_| AuthError::Unavailable)??;
        principal.touch(now);
        Ok(principal)
    }

    /// Who presents this JWT: verified on every request (signature with the key its `kid`
    /// names, then exp, nbf, iat, iss, aud and lifetime), mapped to a principal of the tenant,
    /// roles and queues its claims name. A token without a tenant claim, with unknown roles, or
    /// with both producer and worker roles is refused.
    pub fn authenticate_jwt(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let verifier = self
            .jwt
            .as_ref()
            .ok_or(AuthError::InvalidToken("jwt_disabled"))?;
        let now_secs = u64::try_from(self.clock.now_secs()).unwrap_or(0);
        let verified = verifier
            .load()
            .verify(token, now_secs)
            .map_err(|e| AuthError::InvalidToken(e.reason()))?;
        let tenant = verified
            .tenant
            .filter(|t| records::is_valid_tenant(t))
            .ok_or(AuthError::InvalidToken("tenant_claim"))?;
        if !records::is_valid_name(&verified.subject) {
            return Err(AuthError::InvalidToken("subject_claim"));
        }
        self.policy
            .check_roles(&verified.roles)
            .map_err(|_| AuthError::InvalidToken("roles_claim"))?;
        let queues = verified
            .queues
            .map(|qs| {
                qs.iter()
                    .map(|q| QueuePattern::parse(q))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(AuthError::InvalidToken("queues_claim"))
            })
            .transpose()?;
        let expires_at = i64::try_from(verified.expires_at.saturating_mul(1000)).ok();
        Ok(Arc::new(Principal::external(
            verified.subject,
            Some(tenant),
            Credential::Jwt { kid: verified.kid },
            verified.roles,
            queues,
            expires_at,
            &self.policy,
        )))
    }

    /// Forgets every cached verification of these keys; returns once no request can be
    /// authenticated by a cached copy of them.
    pub async fn forget(&self, key_ids: Vec<String>) -> Result<(), AuthError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Forget { key_ids, reply })
            .await
            .map_err(|_| AuthError::Unavailable)?;
        rx.await.map_err(|_| AuthError::Unavailable)
    }

    /// When each cached key was last used (newer than what the store has).
    pub async fn last_used(&self) -> Result<HashMap<String, Millis>, AuthError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::LastUsed { reply })
            .await
            .map_err(|_| AuthError::Unavailable)?;
        rx.await.map_err(|_| AuthError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_780_000_000_000;

    fn key_expiring_at(
        expires_at: Millis,
    ) -> (tempfile::TempDir, Store, SecretString, records::KeyRecord) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let spec = records::KeySpec {
            name: "svc-short".into(),
            roles: vec!["producer".into()],
            tenant: Some("acme".into()),
            scopes: None,
            queues: None,
            expires_at: Some(expires_at),
        };
        let (record, token) =
            records::create(&store, &Policy::default(), &spec, "test", NOW).unwrap();
        (dir, store, token, record)
    }

    fn spawn(store: &Store, clock: Clock) -> AuthHandle {
        AuthHandle::spawn(
            store.clone(),
            Arc::new(Policy::default()),
            throttle::ThrottleConfig::default(),
            None,
            None,
            clock,
        )
        .unwrap()
    }

    fn copy(token: &SecretString) -> SecretString {
        SecretString::from(token.expose_secret().to_string())
    }

    #[tokio::test]
    async fn an_api_key_is_refused_once_the_clock_passes_its_expiry_even_from_the_cache() {
        let (_dir, store, token, record) = key_expiring_at(NOW + 60_000);
        let (clock, hand) = Clock::manual(NOW);
        let auth = spawn(&store, clock);
        let principal = auth.authenticate(copy(&token), None).await.unwrap();
        assert_eq!(principal.credential_id(), key::display_id(&record.id));
        // Served from the cache until its last millisecond.
        hand.set(NOW + 59_999);
        assert!(auth.authenticate(copy(&token), None).await.is_ok());
        hand.set(NOW + 60_000);
        assert!(matches!(
            auth.authenticate(copy(&token), None).await,
            Err(AuthError::Expired)
        ));
    }

    #[tokio::test]
    async fn a_key_first_presented_after_its_expiry_is_refused_by_the_verifier() {
        let (_dir, store, token, _) = key_expiring_at(NOW + 60_000);
        let (clock, _hand) = Clock::manual(NOW + 60_001);
        let auth = spawn(&store, clock);
        assert!(matches!(
            auth.authenticate(copy(&token), None).await,
            Err(AuthError::Expired)
        ));
    }
}
