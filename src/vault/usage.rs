//! How much each key-encryption key has been used: the data keys it wrapped, counted durably in
//! the jobs file in the same transaction as the records they seal (a job's first write, a
//! re-wrap), and when it first and last did. A KEK wraps each data key under a fresh random
//! 96-bit nonce, and AES-GCM with random nonces is safe for about 2^32 encryptions per key
//! (NIST SP 800-38D §8.3), so a KEK has a budget; it also has an age. Past either configured
//! threshold ([`RotationPolicy`]) the KEK is due for rotation: health, metrics and the audit
//! trail (`vault.rotation_due`) say so. Pure but for the table access.

use std::collections::BTreeMap;

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::store::{codec, tables, Store, StoreError};

/// One KEK's use, as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekUsage {
    /// Data keys wrapped with this KEK (job records sealed, data keys re-wrapped).
    pub wrapped: u64,
    /// When it wrapped its first data key (ms since the epoch).
    pub first_wrap_at: Millis,
    /// When it wrapped its latest.
    pub last_wrap_at: Millis,
}

/// `[vault] rotate_after_wraps` and `rotate_after_days`: past either, a KEK is due for rotation
/// (0 turns a threshold off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationPolicy {
    pub max_wraps: u64,
    pub max_age_days: u64,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            max_wraps: 1 << 30,
            max_age_days: 365,
        }
    }
}

const DAY_MS: i64 = 86_400_000;

impl RotationPolicy {
    /// Why a KEK with `usage` is due for rotation at `now` (`wraps`, `age`), if it is.
    #[must_use]
    pub fn reasons(&self, usage: &KekUsage, now: Millis) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.max_wraps > 0 && usage.wrapped >= self.max_wraps {
            out.push("wraps");
        }
        let max_age = i64::try_from(self.max_age_days)
            .unwrap_or(i64::MAX)
            .saturating_mul(DAY_MS);
        if self.max_age_days > 0 && usage.wrapped > 0 && age_ms(usage, now) >= max_age {
            out.push("age");
        }
        out
    }
}

/// How long ago `usage`'s KEK wrapped its first data key.
#[must_use]
pub fn age_ms(usage: &KekUsage, now: Millis) -> Millis {
    if usage.wrapped == 0 {
        0
    } else {
        now.saturating_sub(usage.first_wrap_at).max(0)
    }
}

/// Whole days of an age.
#[must_use]
pub fn days(ms: Millis) -> u64 {
    u64::try_from(ms.div_euclid(DAY_MS)).unwrap_or(0)
}

/// Adds `counts` (KEK id → data keys wrapped now) to the table inside the caller's write
/// transaction; returns the new totals of those KEKs.
pub fn add(
    txn: &WriteTransaction,
    counts: &BTreeMap<String, u64>,
    now: Millis,
) -> Result<BTreeMap<String, KekUsage>, StoreError> {
    let mut table = txn.open_table(tables::KEK_USAGE)?;
    let mut totals = BTreeMap::new();
    for (kek, n) in counts.iter().filter(|(_, n)| **n > 0) {
        let mut usage = match table.get(kek.as_str())? {
            Some(g) => codec::decode::<KekUsage>(g.value())?,
            None => KekUsage {
                first_wrap_at: now,
                ..KekUsage::default()
            },
        };
        if usage.wrapped == 0 {
            usage.first_wrap_at = now;
        }
        usage.wrapped = usage.wrapped.saturating_add(*n);
        usage.last_wrap_at = now;
        table.insert(kek.as_str(), codec::encode(&usage)?.as_slice())?;
        totals.insert(kek.clone(), usage);
    }
    Ok(totals)
}

/// Every KEK's use, as stored.
pub fn read_all(store: &Store) -> Result<BTreeMap<String, KekUsage>, StoreError> {
    let txn = store.jobs_read()?;
    let table = match txn.open_table(tables::KEK_USAGE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = BTreeMap::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        out.insert(k.value().to_string(), codec::decode::<KekUsage>(v.value())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kek_is_due_past_its_wraps_or_its_age_and_zero_turns_a_threshold_off() {
        let policy = RotationPolicy {
            max_wraps: 10,
            max_age_days: 2,
        };
        let t0 = 1_780_000_000_000;
        let young = KekUsage {
            wrapped: 9,
            first_wrap_at: t0,
            last_wrap_at: t0,
        };
        assert!(policy.reasons(&young, t0 + DAY_MS).is_empty());
        let used = KekUsage {
            wrapped: 10,
            ..young
        };
        assert_eq!(policy.reasons(&used, t0), ["wraps"]);
        assert_eq!(policy.reasons(&used, t0 + 2 * DAY_MS), ["wraps", "age"]);
        let off = RotationPolicy {
            max_wraps: 0,
            max_age_days: 0,
        };
        assert!(off.reasons(&used, t0 + 900 * DAY_MS).is_empty());
        assert!(
            policy.reasons(&KekUsage::default(), t0).is_empty(),
            "an unused key has no age"
        );
        assert_eq!(days(age_ms(&used, t0 + 3 * DAY_MS + 5)), 3);
    }

    #[test]
    fn counts_add_up_durably_and_keep_their_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let counts = |n| BTreeMap::from([("k1".to_string(), n)]);
        store.jobs_write(|txn| add(txn, &counts(3), 1000)).unwrap();
        let totals = store.jobs_write(|txn| add(txn, &counts(2), 5000)).unwrap();
        assert_eq!(totals["k1"].wrapped, 5);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let all = read_all(&store).unwrap();
        assert_eq!(
            all["k1"],
            KekUsage {
                wrapped: 5,
                first_wrap_at: 1000,
                last_wrap_at: 5000
            }
        );
    }
}
