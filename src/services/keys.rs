//! API keys: list, create, revoke (one or many) and rotate. A tenant-bound administrator
//! manages its own tenant's keys; a system administrator every key, or one tenant's when it
//! acts for it. Every change is written to the audit trail before it happens (no record, no
//! change). On the running server a revoked or rotated key stops working on its very next
//! request: the auth store forgets it before the answer goes out. The command line calls the
//! same operations offline, with the server stopped, as [`super::Caller::local`].

use std::sync::Arc;

use secrecy::SecretString;

use super::{blocking, Caller};
use crate::audit::{AuditEvent, Outcome};
use crate::auth::key::display_id;
use crate::auth::policy::Policy;
use crate::auth::records::{self, KeyError, KeyRecord, KeySpec};
use crate::auth::AuthHandle;
use crate::clock::{Clock, Millis};
use crate::error::ApiError;
use crate::store::Store;

/// Longest grace period a rotation may ask for (30 days).
pub const MAX_GRACE_SECS: u64 = 30 * 24 * 3600;

/// Where the server keeps keys it has already verified.
#[derive(Clone)]
enum Verified {
    /// The running server's auth store: told to forget a key the moment it changes.
    Server(AuthHandle),
    /// No server runs (the command line): nothing is cached.
    Offline,
}

/// Which keys a bulk revocation takes (at least one filter is required).
#[derive(Clone, Debug, Default)]
pub struct KeyFilter {
    pub ids: Option<Vec<String>>,
    pub name: Option<String>,
    pub tenant: Option<String>,
}

/// A new key, and its secret (shown this once).
pub struct NewKey {
    pub record: KeyRecord,
    pub secret: SecretString,
}

/// A rotation: the new key and its secret, and the old key as it now is.
pub struct Rotated {
    pub new: KeyRecord,
    pub secret: SecretString,
    pub old: KeyRecord,
}

/// The API key service.
#[derive(Clone)]
pub struct Keys {
    store: Store,
    policy: Arc<Policy>,
    clock: Clock,
    /// The environment tag in new keys (`bwk_<env>_…`).
    key_env: String,
    /// A rotation's grace period when none is asked for.
    default_grace_secs: u64,
    verified: Verified,
}

impl Keys {
    /// The service of the running server.
    #[must_use]
    pub fn new(auth: AuthHandle, key_env: String, default_grace_secs: u64) -> Self {
        Self {
            store: auth.store().clone(),
            policy: Arc::new(auth.policy().clone()),
            clock: auth.clock().clone(),
            key_env,
            default_grace_secs,
            verified: Verified::Server(auth),
        }
    }

    /// The service of the command line, with the server stopped.
    #[must_use]
    pub fn offline(
        store: Store,
        policy: Policy,
        clock: Clock,
        key_env: String,
        default_grace_secs: u64,
    ) -> Self {
        Self {
            store,
            policy: Arc::new(policy),
            clock,
            key_env,
            default_grace_secs,
            verified: Verified::Offline,
        }
    }

    /// The time, for views of the records.
    #[must_use]
    pub fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    /// The keys the caller manages (optionally those named `name`), without secrets, with
    /// their latest use.
    pub async fn list(
        &self,
        caller: &Caller,
        name: Option<&str>,
    ) -> Result<Vec<KeyRecord>, ApiError> {
        let store = self.store.clone();
        let mut keys = blocking(move || records::list(&store).map_err(KeyError::from)).await?;
        let recent = match &self.verified {
            Verified::Server(auth) => auth.last_used().await.unwrap_or_default(),
            Verified::Offline => Default::default(),
        };
        keys.retain(|k| manages(caller, k) && name.is_none_or(|n| k.name == n));
        for k in &mut keys {
            if let Some(at) = recent.get(&k.id) {
                k.last_used_at = Some(k.last_used_at.map_or(*at, |old| old.max(*at)));
            }
        }
        Ok(keys)
    }

    /// Creates a key. A tenant administrator makes keys of its own tenant only (naming
    /// another is refused, audited); `spec.tenant` of `None` means the caller's tenant.
    pub async fn create(&self, caller: &Caller, mut spec: KeySpec) -> Result<NewKey, ApiError> {
        spec.tenant = match (&caller.tenant, spec.tenant.take()) {
            (Some(own), Some(named)) if *own != named => {
                return Err(caller.refuse(None, "tenant_mismatch").await);
            }
            (Some(own), _) => Some(own.clone()),
            (None, named) => named,
        };
        spec.validate(&self.policy, self.now())?;
        let mut event = caller
            .event("key.created", Outcome::Success)
            .detail("name", spec.name.clone())
            .detail("roles", spec.roles.clone());
        event.tenant.clone_from(&spec.tenant);
        let (store, policy, env, clock) = (
            self.store.clone(),
            self.policy.clone(),
            self.key_env.clone(),
            self.clock.clone(),
        );
        let (record, secret) = caller
            .trail()
            .guarded(
                event,
                blocking(move || records::create(&store, &policy, &spec, &env, clock.now_ms())),
            )
            .await?;
        Ok(NewKey { record, secret })
    }

    /// A key the caller manages; another tenant's key does not exist for it (and the attempt
    /// is recorded).
    async fn managed(&self, caller: &Caller, id: &str) -> Result<KeyRecord, ApiError> {
        let store = self.store.clone();
        let owned = id.to_string();
        let key = blocking(move || records::get(&store, &owned).map_err(KeyError::from)).await?;
        match key {
            Some(k) if manages(caller, &k) => Ok(k),
            Some(_) => {
                caller.audit_hidden("other_tenant").await;
                Err(ApiError::not_found("api key"))
            }
            None => Err(ApiError::not_found("api key")),
        }
    }

    /// Revokes one key.
    pub async fn revoke(&self, caller: &Caller, id: &str) -> Result<KeyRecord, ApiError> {
        let key = self.managed(caller, id).await?;
        let event = key_event(caller, "key.revoked", &key);
        let (store, clock) = (self.store.clone(), self.clock.clone());
        let key_id = key.id.clone();
        let revoked = caller
            .trail()
            .guarded(
                event,
                blocking(move || {
                    records::revoke(&store, &key_id, clock.now_ms())?.ok_or(KeyError::NotFound)
                }),
            )
            .await?;
        self.forget(vec![revoked.id.clone()]).await?;
        Ok(revoked)
    }

    /// Revokes every unrevoked key the caller manages that matches `filter`; returns them.
    pub async fn revoke_many(
        &self,
        caller: &Caller,
        filter: KeyFilter,
    ) -> Result<Vec<KeyRecord>, ApiError> {
        let KeyFilter { ids, name, tenant } = filter;
        if ids.is_none() && name.is_none() && tenant.is_none() {
            return Err(ApiError::invalid("body", "give ids, name or tenant"));
        }
        let mut event = caller.event("key.bulk_revoked", Outcome::Success);
        if let Some(n) = &name {
            event = event.detail("name", n.clone());
        }
        if let Some(t) = &tenant {
            event = event.detail("tenant_filter", t.clone());
        }
        if let Some(ids) = &ids {
            event = event.detail(
                "keys",
                ids.iter().map(|i| display_id(i)).collect::<Vec<_>>(),
            );
        }
        let (store, clock) = (self.store.clone(), self.clock.clone());
        let scope = caller.tenant.clone();
        let system = caller.principal.is_system_admin();
        let revoked = caller
            .trail()
            .guarded(
                event,
                blocking(move || {
                    records::revoke_where(
                        &store,
                        |k| {
                            let managed = match &scope {
                                Some(t) => k.tenant.as_ref() == Some(t),
                                None => system,
                            };
                            managed
                                && ids.as_ref().is_none_or(|ids| ids.contains(&k.id))
                                && name.as_ref().is_none_or(|n| &k.name == n)
                                && tenant.as_ref().is_none_or(|t| k.tenant.as_ref() == Some(t))
                        },
                        clock.now_ms(),
                    )
                    .map_err(KeyError::from)
                }),
            )
            .await?;
        self.forget(revoked.iter().map(|k| k.id.clone()).collect())
            .await?;
        Ok(revoked)
    }

    /// Replaces a live key with a new one; the old key keeps working for `grace_secs` (at most
    /// 30 days; the configured default when `None`).
    pub async fn rotate(
        &self,
        caller: &Caller,
        id: &str,
        grace_secs: Option<u64>,
    ) -> Result<Rotated, ApiError> {
        let key = self.managed(caller, id).await?;
        let grace = match grace_secs {
            None => self.default_grace_secs,
            Some(s) if s <= MAX_GRACE_SECS => s,
            Some(_) => {
                return Err(ApiError::invalid(
                    "grace_secs",
                    "grace_secs must be at most 30 days",
                ))
            }
        };
        let event = key_event(caller, "key.rotated", &key).detail("grace_secs", grace);
        let (store, env, clock) = (self.store.clone(), self.key_env.clone(), self.clock.clone());
        let key_id = key.id.clone();
        let grace_ms = i64::try_from(grace.saturating_mul(1000)).unwrap_or(i64::MAX);
        let (new, secret, old) = caller
            .trail()
            .guarded(
                event,
                blocking(move || records::rotate(&store, &key_id, grace_ms, &env, clock.now_ms())),
            )
            .await?;
        // The old key's cached copy carries its old expiry: forget it so the grace period holds.
        self.forget(vec![old.id.clone()]).await?;
        Ok(Rotated { new, secret, old })
    }

    async fn forget(&self, ids: Vec<String>) -> Result<(), ApiError> {
        match &self.verified {
            Verified::Server(auth) => auth.forget(ids).await.map_err(ApiError::from),
            Verified::Offline => Ok(()),
        }
    }
}

/// Whether the caller manages `key`: its tenant's keys, or every key for a system
/// administrator acting on the system scope.
fn manages(caller: &Caller, key: &KeyRecord) -> bool {
    match &caller.tenant {
        Some(t) => key.tenant.as_ref() == Some(t),
        None => caller.principal.is_system_admin(),
    }
}

fn key_event(caller: &Caller, event_type: &'static str, key: &KeyRecord) -> AuditEvent {
    let mut event = caller
        .event(event_type, Outcome::Success)
        .detail("key", display_id(&key.id))
        .detail("name", key.name.clone())
        .detail("roles", key.roles.clone());
    event.tenant.clone_from(&key.tenant);
    event
}
