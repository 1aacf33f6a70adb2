//! API key records in redb, and the operations on them that do not need a running server
//! (bootstrap at first start, and the offline `bulwark keys` commands).

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{key, Role};
use crate::clock::{now_ms, Millis};
use crate::store::{codec, tables, Store, StoreError};

/// A stored API key: everything but the key itself, of which only the hash is kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub roles: Vec<Role>,
    /// `None`: system scope.
    pub tenant: Option<String>,
    /// argon2id PHC string of the whole key.
    pub hash: String,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

/// Why a key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum KeyCreateError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("could not generate or hash the key")]
    Crypto,
}

/// Creates a key, stores its hash, and returns the record and the key (to show once).
pub fn create(
    store: &Store,
    name: &str,
    roles: Vec<Role>,
    env: &str,
) -> Result<(KeyRecord, SecretString), KeyCreateError> {
    let new = key::generate(env).map_err(|_| KeyCreateError::Crypto)?;
    let hash = key::hash(&new.token).map_err(|_| KeyCreateError::Crypto)?;
    let record = KeyRecord {
        id: new.id,
        name: name.to_string(),
        roles,
        tenant: None,
        hash,
        created_at: now_ms(),
        expires_at: None,
        revoked_at: None,
    };
    let bytes = codec::encode(&record)?;
    let txn = store.db().begin_write().map_err(StoreError::from)?;
    {
        let mut table = txn.open_table(tables::API_KEYS).map_err(StoreError::from)?;
        table
            .insert(record.id.as_str(), bytes.as_slice())
            .map_err(StoreError::from)?;
    }
    txn.commit().map_err(StoreError::from)?;
    Ok((record, new.token))
}

/// Reads one key record.
pub fn get(store: &Store, id: &str) -> Result<Option<KeyRecord>, StoreError> {
    let txn = store.db().begin_read()?;
    let table = txn.open_table(tables::API_KEYS)?;
    table.get(id)?.map(|g| codec::decode(g.value())).transpose()
}

/// Every key record, by id.
pub fn list(store: &Store) -> Result<Vec<KeyRecord>, StoreError> {
    let txn = store.db().begin_read()?;
    let table = txn.open_table(tables::API_KEYS)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (_, value) = entry?;
        out.push(codec::decode(value.value())?);
    }
    Ok(out)
}

/// Marks a key revoked. Returns false if there is no such key.
pub fn revoke(store: &Store, id: &str) -> Result<bool, StoreError> {
    let txn = store.db().begin_write()?;
    let found = {
        let mut table = txn.open_table(tables::API_KEYS)?;
        let record: Option<KeyRecord> = table
            .get(id)?
            .map(|g| codec::decode(g.value()))
            .transpose()?;
        match record {
            Some(mut record) => {
                record.revoked_at.get_or_insert_with(now_ms);
                let bytes = codec::encode(&record)?;
                table.insert(id, bytes.as_slice())?;
                true
            }
            None => false,
        }
    };
    txn.commit()?;
    Ok(found)
}

/// Whether any key exists (first start creates the bootstrap key when none does).
pub fn any(store: &Store) -> Result<bool, StoreError> {
    let txn = store.db().begin_read()?;
    let table = txn.open_table(tables::API_KEYS)?;
    Ok(!table.is_empty()?)
}
