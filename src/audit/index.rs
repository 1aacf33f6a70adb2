//! The audit index in redb: one summary per record (time, type, principal, tenant, where the
//! line sits in the log) and lookup lists by type, principal and tenant, for the admin query
//! route. The log stays the source of truth: the index is rebuilt from it at start-up when it
//! lags, and query results are read back from the log itself.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::parse_rfc3339;
use crate::store::{codec, tables, Store, StoreError};

/// What the index keeps of one record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub seq: u64,
    pub at: i64,
    pub event_type: String,
    pub principal: Option<String>,
    pub tenant: Option<String>,
    /// Byte offset and length of the line in the log (without the newline).
    pub offset: u64,
    pub len: u32,
}

impl Summary {
    /// The summary of a log line starting at `offset`.
    #[must_use]
    pub fn of_line(line: &str, offset: u64) -> Option<Self> {
        let v: Value = serde_json::from_str(line).ok()?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(Self {
            seq: v.get("seq")?.as_u64()?,
            at: parse_rfc3339(v.get("timestamp")?.as_str()?)?,
            event_type: text("event_type")?,
            principal: text("principal"),
            tenant: text("tenant"),
            offset,
            len: u32::try_from(line.len()).ok()?,
        })
    }

    fn lookup_keys(&self) -> Vec<String> {
        let mut keys = vec![format!("type:{}", self.event_type)];
        if let Some(p) = &self.principal {
            keys.push(format!("principal:{p}"));
        }
        if let Some(t) = &self.tenant {
            keys.push(format!("tenant:{t}"));
        }
        keys
    }
}

/// The highest indexed sequence number.
pub fn last_indexed(store: &Store) -> Result<u64, StoreError> {
    let txn = store.control_read()?;
    let table = txn.open_table(tables::AUDIT_INDEX)?;
    let last = table.last()?.map_or(0, |(k, _)| k.value());
    Ok(last)
}

/// The lowest indexed sequence number, if any.
pub fn first_indexed(store: &Store) -> Result<Option<u64>, StoreError> {
    let txn = store.control_read()?;
    let table = txn.open_table(tables::AUDIT_INDEX)?;
    let first = table.first()?.map(|(k, _)| k.value());
    Ok(first)
}

/// Replaces the whole index with `summaries`, in one transaction (after pruning moved every
/// line).
pub fn replace(store: &Store, summaries: &[Summary]) -> Result<(), StoreError> {
    store.control_write(|txn| {
        txn.open_table(tables::AUDIT_INDEX)?.retain(|_, _| false)?;
        let mut by = txn.open_multimap_table(tables::AUDIT_BY)?;
        let keys: Vec<String> = redb::ReadableMultimapTable::iter(&by)?
            .filter_map(Result::ok)
            .map(|(k, _)| k.value().to_string())
            .collect();
        for k in keys {
            by.remove_all(k.as_str())?;
        }
        let mut index = txn.open_table(tables::AUDIT_INDEX)?;
        for s in summaries {
            index.insert(s.seq, codec::encode(s)?.as_slice())?;
            for key in s.lookup_keys() {
                by.insert(key.as_str(), s.seq)?;
            }
        }
        Ok(())
    })
}

/// Forgets the whole index (when it runs ahead of the log it describes).
pub fn clear(store: &Store) -> Result<(), StoreError> {
    replace(store, &[])
}

/// Adds summaries in one transaction.
pub fn add(store: &Store, summaries: &[Summary]) -> Result<(), StoreError> {
    if summaries.is_empty() {
        return Ok(());
    }
    store.control_write(|txn| {
        let mut index = txn.open_table(tables::AUDIT_INDEX)?;
        let mut by = txn.open_multimap_table(tables::AUDIT_BY)?;
        for s in summaries {
            index.insert(s.seq, codec::encode(s)?.as_slice())?;
            for key in s.lookup_keys() {
                by.insert(key.as_str(), s.seq)?;
            }
        }
        Ok(())
    })
}

/// Summaries of every line of a verified log after `after`, with their offsets.
#[must_use]
pub fn summaries_after(log: &[u8], after: u64) -> Vec<Summary> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    for line in log.split(|b| *b == b'\n') {
        let len = line.len() as u64;
        if let Some(s) = std::str::from_utf8(line)
            .ok()
            .and_then(|l| Summary::of_line(l, offset))
        {
            if s.seq > after {
                out.push(s);
            }
        }
        offset += len + 1;
    }
    out
}

/// What an audit query asks for.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub event_type: Option<String>,
    pub principal: Option<String>,
    pub tenant: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Only records older than this sequence number (the page cursor).
    pub before: Option<u64>,
    pub limit: usize,
}

/// Records matching a query, newest first, read back from the log.
pub fn query(store: &Store, log_path: &Path, q: &Query) -> Result<Vec<Value>, StoreError> {
    let txn = store.control_read()?;
    let index = txn.open_table(tables::AUDIT_INDEX)?;
    let by = txn.open_multimap_table(tables::AUDIT_BY)?;
    let before = q.before.unwrap_or(u64::MAX);
    let candidates: Box<dyn Iterator<Item = Result<u64, StoreError>>> =
        match (&q.event_type, &q.principal, &q.tenant) {
            (Some(t), _, _) => lookup(&by, &format!("type:{t}"))?,
            (None, Some(p), _) => lookup(&by, &format!("principal:{p}"))?,
            (None, None, Some(t)) => lookup(&by, &format!("tenant:{t}"))?,
            (None, None, None) => Box::new(
                index
                    .range(..before)?
                    .rev()
                    .map(|e| e.map(|(k, _)| k.value()).map_err(StoreError::from)),
            ),
        };
    let log = File::open(log_path).map_err(StoreError::Io)?;
    let mut out = Vec::new();
    for seq in candidates {
        let seq = seq?;
        if seq >= before {
            continue;
        }
        let Some(raw) = index.get(seq)? else { continue };
        let s: Summary = codec::decode(raw.value())?;
        let matches = q.event_type.as_ref().is_none_or(|t| *t == s.event_type)
            && q.principal
                .as_ref()
                .is_none_or(|p| Some(p) == s.principal.as_ref())
            && q.tenant
                .as_ref()
                .is_none_or(|t| Some(t) == s.tenant.as_ref())
            && q.since.is_none_or(|t| s.at >= t)
            && q.until.is_none_or(|t| s.at <= t);
        if q.since.is_some_and(|t| s.at < t)
            && q.event_type.is_none()
            && q.principal.is_none()
            && q.tenant.is_none()
        {
            // Newest first over the whole index: nothing older can match.
            break;
        }
        if !matches {
            continue;
        }
        let mut buf = vec![0u8; s.len as usize];
        log.read_exact_at(&mut buf, s.offset)
            .map_err(StoreError::Io)?;
        let value: Value = serde_json::from_slice(&buf).map_err(|_| {
            StoreError::Corrupt(format!(
                "audit record {seq} unreadable at its indexed offset"
            ))
        })?;
        if value.get("seq").and_then(Value::as_u64) != Some(seq) {
            return Err(StoreError::Corrupt(format!(
                "audit index points record {seq} at another record"
            )));
        }
        out.push(value);
        if out.len() >= q.limit {
            break;
        }
    }
    Ok(out)
}

fn lookup<'a>(
    by: &'a redb::ReadOnlyMultimapTable<&'static str, u64>,
    key: &str,
) -> Result<Box<dyn Iterator<Item = Result<u64, StoreError>> + 'a>, StoreError> {
    Ok(Box::new(
        by.get(key)?
            .rev()
            .map(|e| e.map(|v| v.value()).map_err(StoreError::from)),
    ))
}
