//! The auth store: who a credential is, and what it may do.
//!
//! API keys are verified with argon2id at most once per key per process: a verified key is
//! cached under an HMAC-SHA256 digest made with a per-process random key, so the cache holds no
//! usable secret and a lookup costs one HMAC. Cache misses go to the [`actor`], which verifies
//! off the async threads and lets concurrent requests with the same key share one verification.
//!
//! [`Principal`] can only be made here: a handler that takes one has an authenticated caller.
//! The identity model (tenants, roles beyond admin, queue ACLs, JWT) grows from this seam.

pub mod accounts;
mod actor;
pub mod error;
pub mod key;
pub mod records;
pub mod session;
pub mod throttle;
pub mod users;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ring::hmac;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use error::AuthError;

use crate::store::Store;

/// A role a credential carries. Only `admin` exists until the identity model lands; it may do
/// everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
}

impl Role {
    /// Parses a role name as given on the command line.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// What an operation needs (OJS security §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    Enqueue,
    /// Fetch, ack, nack, heartbeat.
    Dequeue,
    Cancel,
    Inspect,
    Admin,
}

impl Permission {
    /// The name used in errors and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enqueue => "enqueue",
            Self::Dequeue => "dequeue",
            Self::Cancel => "cancel",
            Self::Inspect => "inspect",
            Self::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    id: String,
    name: String,
    roles: Vec<Role>,
    tenant: Option<String>,
}

impl Principal {
    /// An admin user signed in with a session token: the admin role, system scope, id
    /// `user:<name>`.
    #[must_use]
    pub fn admin_user(name: &str) -> Principal {
        Principal {
            id: format!("user:{name}"),
            name: name.to_string(),
            roles: vec![Role::Admin],
            tenant: None,
        }
    }

    /// The credential's stable id (the API key id); leases are bound to it.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The credential's human name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tenant the credential belongs to; `None` for system scope.
    #[must_use]
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// How logs show this caller.
    #[must_use]
    pub fn display_id(&self) -> String {
        if self.id.starts_with("user:") {
            return self.id.clone();
        }
        key::display_id(&self.id)
    }

    /// Checks a permission. Deny by default: a principal without a role granting it is refused.
    pub fn require(&self, permission: Permission) -> Result<(), AuthError> {
        let granted = self.roles.iter().any(|role| match role {
            Role::Admin => true,
        });
        if granted {
            Ok(())
        } else {
            metrics::counter!(crate::metrics::AUTHZ_DENIALS, "permission" => permission.as_str())
                .increment(1);
            Err(AuthError::Forbidden {
                permission: permission.as_str(),
            })
        }
    }
}

type Digest = [u8; 32];
type Cache = HashMap<Digest, Arc<Principal>>;

enum Msg {
    Verify {
        digest: Digest,
        token: SecretString,
        reply: oneshot::Sender<Result<Arc<Principal>, AuthError>>,
    },
    Verified {
        digest: Digest,
        result: Result<Arc<Principal>, AuthError>,
    },
}

/// A cheap, cloneable handle to the auth store.
#[derive(Clone)]
pub struct AuthHandle {
    tx: mpsc::Sender<Msg>,
    cache: Arc<ArcSwap<Cache>>,
    mac: Arc<hmac::Key>,
}

impl AuthHandle {
    /// Starts the auth store on the current tokio runtime.
    pub fn spawn(store: Store) -> Result<Self, AuthError> {
        let rng = ring::rand::SystemRandom::new();
        let mac =
            hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| AuthError::Unavailable)?;
        let cache = Arc::new(ArcSwap::from_pointee(Cache::new()));
        let (tx, rx) = mpsc::channel(1024);
        let actor = actor::AuthActor::new(store, cache.clone(), tx.downgrade())
            .map_err(|_| AuthError::Unavailable)?;
        tokio::spawn(actor.run(rx));
        Ok(Self {
            tx,
            cache,
            mac: Arc::new(mac),
        })
    }

    /// Who presents this bearer token. Every failure looks the same to the caller.
    pub async fn authenticate(&self, token: SecretString) -> Result<Arc<Principal>, AuthError> {
        let tag = hmac::sign(&self.mac, token.expose_secret().as_bytes());
        let mut digest = [0u8; 32];
        digest.copy_from_slice(tag.as_ref());
        if let Some(principal) = self.cache.load().get(&digest) {
            return Ok(principal.clone());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Verify {
                digest,
                token,
                reply,
            })
            .await
            .map_err(|_| AuthError::Unavailable)?;
        rx.await.map_err(|_| AuthError::Unavailable)?
    }
}
