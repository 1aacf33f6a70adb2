//! API key records in redb and the operations on them. Everything here blocks (redb, and argon2
//! when a key is made): call it off the async threads. The server's key-management routes and
//! the offline `bulwark keys` commands share these functions.

use std::borrow::Cow;

use redb::{ReadableTable, ReadableTableMetadata};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::error;

use super::key;
use super::policy::{Permission, Policy, PolicyError, QueuePattern};
use crate::clock::Millis;
use crate::error::{field_details, not_found_details, not_found_message, Code, ErrorCode};
use crate::store::{codec, tables, Store, StoreError};

/// A stored API key: everything but the key itself, of which only the hash is kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    /// The principal the key authenticates (its identity: rotated keys keep it).
    pub name: String,
    pub roles: Vec<String>,
    /// `None`: system scope.
    pub tenant: Option<String>,
    /// The subset of its roles' permissions the key may use; all of them when `None`.
    #[serde(default)]
    pub scopes: Option<Vec<Permission>>,
    /// The queues the key may touch; what its roles allow when `None`.
    #[serde(default)]
    pub queues: Option<Vec<QueuePattern>>,
    /// argon2id PHC string of the whole key.
    pub hash: String,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
    #[serde(default)]
    pub last_used_at: Option<Millis>,
    /// The key this one replaced, and the key that replaced this one (rotation).
    #[serde(default)]
    pub rotated_from: Option<String>,
    #[serde(default)]
    pub replaced_by: Option<String>,
}

impl KeyRecord {
    /// `active`, `expired` or `revoked` at `now`.
    #[must_use]
    pub fn status(&self, now: Millis) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|at| at <= now) {
            "expired"
        } else {
            "active"
        }
    }

    /// Whether the key still authenticates at `now`.
    #[must_use]
    pub fn is_live(&self, now: Millis) -> bool {
        self.status(now) == "active"
    }
}

/// What a new key is for.
#[derive(Clone, Debug)]
pub struct KeySpec {
    pub name: String,
    pub roles: Vec<String>,
    pub tenant: Option<String>,
    pub scopes: Option<Vec<Permission>>,
    pub queues: Option<Vec<QueuePattern>>,
    pub expires_at: Option<Millis>,
}

/// Why a key could not be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("could not generate or hash the key")]
    Crypto,
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: &'static str,
    },
    #[error("no such key")]
    NotFound,
    #[error("the key is revoked or expired")]
    NotLive,
}

/// What the client sees of a key operation's failure; storage and crypto causes are not shown.
impl ErrorCode for KeyError {
    fn code(&self) -> Code {
        match self {
            Self::Invalid { .. } => Code::InvalidRequest,
            Self::Policy(_) => Code::Unprocessable,
            Self::NotFound => Code::NotFound,
            Self::NotLive => Code::Conflict,
            Self::Store(_) | Self::Crypto => Code::BackendUnavailable,
        }
    }

    fn message(&self) -> Cow<'static, str> {
        match self {
            Self::Invalid { message, .. } => (*message).into(),
            Self::Policy(p) => p.to_string().into(),
            Self::NotFound => not_found_message(API_KEY).into(),
            Self::NotLive => "the key is revoked or expired and cannot be rotated".into(),
            Self::Store(_) | Self::Crypto => self.code().row().message.into(),
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            Self::Invalid { field, .. } => Some(field_details(field)),
            Self::Policy(_) => Some(field_details("roles")),
            Self::NotFound => Some(not_found_details(API_KEY)),
            Self::NotLive | Self::Store(_) | Self::Crypto => None,
        }
    }

    fn log_cause(&self) {
        if let Self::Store(inner) = self {
            error!(error = %inner, "key store failure");
        }
    }
}

/// The resource a key error's 404 names.
const API_KEY: &str = "api key";

/// `^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$`: principal names appear in errors and logs, so they are
/// plain. The audit trail's markers (`anonymous`, `system`, `local-operator`, any case) are
/// reserved, so a record's `principal` is never ambiguous.
#[must_use]
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let reserved = [
        crate::audit::record::ANONYMOUS,
        crate::audit::record::SYSTEM,
        crate::audit::record::LOCAL_OPERATOR,
    ]
    .iter()
    .any(|r| name.eq_ignore_ascii_case(r));
    !reserved
        && name.len() <= 128
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

/// `^[a-z0-9][a-z0-9_-]{0,63}$`.
#[must_use]
pub fn is_valid_tenant(tenant: &str) -> bool {
    let mut bytes = tenant.bytes();
    tenant.len() <= 64
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl KeySpec {
    /// Checks names, roles (known, and producer and worker kept apart), scopes and expiry.
    pub fn validate(&self, policy: &Policy, now: Millis) -> Result<(), KeyError> {
        if !is_valid_name(&self.name) {
            return Err(KeyError::Invalid {
                field: "name",
                message: "1 to 128 characters: letters, digits and _ . @ -, starting with a letter or digit",
            });
        }
        if self.tenant.as_deref().is_some_and(|t| !is_valid_tenant(t)) {
            return Err(KeyError::Invalid {
                field: "tenant",
                message: "1 to 64 characters: lowercase letters, digits, _ and -",
            });
        }
        policy.check_roles(&self.roles)?;
        if self.scopes.as_ref().is_some_and(Vec::is_empty) {
            return Err(KeyError::Invalid {
                field: "scopes",
                message: "give at least one permission, or leave scopes out",
            });
        }
        if self.queues.as_ref().is_some_and(Vec::is_empty) {
            return Err(KeyError::Invalid {
                field: "queues",
                message: "give at least one queue pattern, or leave queues out",
            });
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            return Err(KeyError::Invalid {
                field: "expires_at",
                message: "the expiry must be in the future",
            });
        }
        Ok(())
    }
}

fn read(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<KeyRecord>, StoreError> {
    table.get(id)?.map(|g| codec::decode(g.value())).transpose()
}

fn write(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    record: &KeyRecord,
) -> Result<(), StoreError> {
    let bytes = codec::encode(record)?;
    table.insert(record.id.as_str(), bytes.as_slice())?;
    Ok(())
}

fn new_record(
    spec: &KeySpec,
    env: &str,
    now: Millis,
) -> Result<(KeyRecord, SecretString), KeyError> {
    let new = key::generate(env).map_err(|_| KeyError::Crypto)?;
    let hash = key::hash(&new.token).map_err(|_| KeyError::Crypto)?;
    let record = KeyRecord {
        id: new.id,
        name: spec.name.clone(),
        roles: spec.roles.clone(),
        tenant: spec.tenant.clone(),
        scopes: spec.scopes.clone(),
        queues: spec.queues.clone(),
        hash,
        created_at: now,
        expires_at: spec.expires_at,
        revoked_at: None,
        last_used_at: None,
        rotated_from: None,
        replaced_by: None,
    };
    Ok((record, new.token))
}

/// Creates a key at `now` (after [`KeySpec::validate`]), stores its hash, and returns the
/// record and the key (to show once).
pub fn create(
    store: &Store,
    policy: &Policy,
    spec: &KeySpec,
    env: &str,
    now: Millis,
) -> Result<(KeyRecord, SecretString), KeyError> {
    spec.validate(policy, now)?;
    let (record, token) = new_record(spec, env, now)?;
    store.control_write(|txn| {
        let mut table = txn.open_table(tables::API_KEYS).map_err(StoreError::from)?;
        write(&mut table, &record)
    })?;
    Ok((record, token))
}

/// Replaces a live key with a new one for the same principal, roles, tenant, scopes and queues.
/// The old key keeps working for `grace_ms` (its expiry is brought forward to then, never pushed
/// back). Returns the new record and key, and the old record as it is at `now`.
pub fn rotate(
    store: &Store,
    id: &str,
    grace_ms: Millis,
    env: &str,
    now: Millis,
) -> Result<(KeyRecord, SecretString, KeyRecord), KeyError> {
    let old = get(store, id)?.ok_or(KeyError::NotFound)?;
    if !old.is_live(now) {
        return Err(KeyError::NotLive);
    }
    let spec = KeySpec {
        name: old.name.clone(),
        roles: old.roles.clone(),
        tenant: old.tenant.clone(),
        scopes: old.scopes.clone(),
        queues: old.queues.clone(),
        expires_at: old.expires_at,
    };
    let (mut new, token) = new_record(&spec, env, now)?;
    new.rotated_from = Some(old.id.clone());
    let old = store.control_write(|txn| {
        let mut table = txn.open_table(tables::API_KEYS).map_err(StoreError::from)?;
        // Read again inside the transaction: the key may have changed while argon2 ran.
        let mut old = read(&table, id)?.ok_or(KeyError::NotFound)?;
        if !old.is_live(now) {
            return Err(KeyError::NotLive);
        }
        let deadline = now.saturating_add(grace_ms);
        old.expires_at = Some(old.expires_at.map_or(deadline, |at| at.min(deadline)));
        old.replaced_by = Some(new.id.clone());
        write(&mut table, &old)?;
        write(&mut table, &new)?;
        Ok(old)
    })?;
    Ok((new, token, old))
}

/// Reads one key record.
pub fn get(store: &Store, id: &str) -> Result<Option<KeyRecord>, StoreError> {
    let txn = store.control_read()?;
    let table = txn.open_table(tables::API_KEYS)?;
    read(&table, id)
}

/// Every key record, by id.
pub fn list(store: &Store) -> Result<Vec<KeyRecord>, StoreError> {
    let txn = store.control_read()?;
    let table = txn.open_table(tables::API_KEYS)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (_, value) = entry?;
        out.push(codec::decode(value.value())?);
    }
    Ok(out)
}

/// Revokes, as of `now`, every not-yet-revoked key `select` picks, in one transaction; returns
/// them.
pub fn revoke_where(
    store: &Store,
    select: impl Fn(&KeyRecord) -> bool,
    now: Millis,
) -> Result<Vec<KeyRecord>, StoreError> {
    store.control_write(|txn| {
        let mut table = txn.open_table(tables::API_KEYS)?;
        let mut chosen = Vec::new();
        for entry in table.iter()? {
            let (_, value) = entry?;
            let record: KeyRecord = codec::decode(value.value())?;
            if record.revoked_at.is_none() && select(&record) {
                chosen.push(record);
            }
        }
        let mut revoked = Vec::new();
        for mut record in chosen {
            record.revoked_at = Some(now);
            write(&mut table, &record)?;
            revoked.push(record);
        }
        Ok(revoked)
    })
}

/// Revokes one key as of `now`. Returns the record (already revoked keys are returned as they
/// are), or `None` if there is no such key.
pub fn revoke(store: &Store, id: &str, now: Millis) -> Result<Option<KeyRecord>, StoreError> {
    store.control_write(|txn| {
        let mut table = txn.open_table(tables::API_KEYS)?;
        let record = read(&table, id)?;
        Ok(match record {
            Some(mut record) if record.revoked_at.is_none() => {
                record.revoked_at = Some(now);
                write(&mut table, &record)?;
                Some(record)
            }
            other => other,
        })
    })
}

/// Stores last-used times (newer ones only).
pub fn record_use(store: &Store, uses: &[(String, Millis)]) -> Result<(), StoreError> {
    if uses.is_empty() {
        return Ok(());
    }
    store.control_write(|txn| {
        let mut table = txn.open_table(tables::API_KEYS)?;
        for (id, at) in uses {
            if let Some(mut record) = read(&table, id)? {
                if record.last_used_at.is_none_or(|old| old < *at) {
                    record.last_used_at = Some(*at);
                    write(&mut table, &record)?;
                }
            }
        }
        Ok(())
    })
}

/// Whether any key exists (first start creates the bootstrap key when none does).
pub fn any(store: &Store) -> Result<bool, StoreError> {
    let txn = store.control_read()?;
    let table = txn.open_table(tables::API_KEYS)?;
    Ok(!table.is_empty()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(roles: &[&str]) -> KeySpec {
        KeySpec {
            name: "svc-orders".into(),
            roles: roles.iter().map(|r| (*r).to_string()).collect(),
            tenant: Some("acme".into()),
            scopes: None,
            queues: None,
            expires_at: None,
        }
    }

    const NOW: Millis = 1_780_000_000_000;

    #[test]
    fn keys_are_created_rotated_with_grace_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let policy = Policy::default();
        let (clock, hand) = crate::clock::Clock::manual(NOW);
        let (old, _) = create(&store, &policy, &spec(&["producer"]), "test", NOW).unwrap();
        hand.advance(5_000);
        let (new, _, old_now) = rotate(&store, &old.id, 60_000, "test", clock.now_ms()).unwrap();
        assert_eq!(new.name, old.name);
        assert_eq!(new.created_at, NOW + 5_000);
        assert_eq!(new.rotated_from.as_deref(), Some(old.id.as_str()));
        assert_eq!(old_now.replaced_by.as_deref(), Some(new.id.as_str()));
        assert_eq!(
            old_now.expires_at,
            Some(NOW + 65_000),
            "grace from the rotation"
        );
        assert_eq!(old_now.status(NOW + 64_999), "active");
        assert_eq!(old_now.status(NOW + 65_000), "expired");
        // A second rotation of the old key is allowed while it is live; after revocation not.
        revoke(&store, &old.id, clock.now_ms()).unwrap();
        assert!(matches!(
            rotate(&store, &old.id, 1, "test", clock.now_ms()),
            Err(KeyError::NotLive)
        ));
        assert!(matches!(
            rotate(&store, "0000000000000000", 1, "test", clock.now_ms()),
            Err(KeyError::NotFound)
        ));
        let revoked = revoke_where(
            &store,
            |r| r.tenant.as_deref() == Some("acme"),
            clock.now_ms(),
        )
        .unwrap();
        assert_eq!(revoked.len(), 1, "only the new key was still unrevoked");
        assert_eq!(revoked[0].revoked_at, Some(NOW + 5_000));
        assert!(list(&store)
            .unwrap()
            .iter()
            .all(|r| r.status(clock.now_ms()) == "revoked"));
    }

    #[test]
    fn a_rotated_keys_grace_ends_when_the_clock_passes_it_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (clock, hand) = crate::clock::Clock::manual(NOW);
        let policy = Policy::default();
        let (old, _) = create(&store, &policy, &spec(&["producer"]), "test", NOW).unwrap();
        rotate(&store, &old.id, 30_000, "test", clock.now_ms()).unwrap();
        hand.advance(29_999);
        let stored = get(&store, &old.id).unwrap().unwrap();
        assert!(stored.is_live(clock.now_ms()));
        hand.advance(1);
        assert!(!stored.is_live(clock.now_ms()));
        // Once the grace is over the old key cannot be rotated again.
        assert!(matches!(
            rotate(&store, &old.id, 30_000, "test", clock.now_ms()),
            Err(KeyError::NotLive)
        ));
    }

    #[test]
    fn specs_are_validated() {
        let policy = Policy::default();
        let now = NOW;
        assert!(spec(&["producer"]).validate(&policy, now).is_ok());
        assert!(matches!(
            spec(&["producer", "worker"]).validate(&policy, now),
            Err(KeyError::Policy(PolicyError::ProducerAndWorker))
        ));
        let mut s = spec(&["producer"]);
        s.name = "bad name\n".into();
        assert!(matches!(
            s.validate(&policy, now),
            Err(KeyError::Invalid { field: "name", .. })
        ));
        let mut s = spec(&["producer"]);
        s.tenant = Some("ACME".into());
        assert!(matches!(
            s.validate(&policy, now),
            Err(KeyError::Invalid {
                field: "tenant",
                ..
            })
        ));
        let mut s = spec(&["producer"]);
        s.expires_at = Some(now - 1);
        assert!(s.validate(&policy, now).is_err());
        let mut s = spec(&["producer"]);
        s.scopes = Some(vec![]);
        assert!(s.validate(&policy, now).is_err());
    }
}
