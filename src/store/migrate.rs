//! Moving the control tables out of the jobs file. Before the split, `bulwark.redb` held every
//! table; now API keys, the audit index, users and refresh tokens live in `control.redb`.
//! [`split_control_tables`] runs in [`super::Store::open`], before anything else reads or
//! writes either file.
//!
//! Crash safety comes from the order and from each step being one transaction: the copy into
//! the control file commits (with an fsync) before the old tables are deleted from the jobs
//! file. A crash between the two leaves the same entries in both files; the next open sees that
//! the control file already holds exactly what the old tables hold and only deletes them.
//! Control data in both files that differs (an older binary ran on the folder after the split)
//! is refused rather than guessed at.

use redb::{
    Database, Key, MultimapTableDefinition, MultimapTableHandle, ReadTransaction, ReadableDatabase,
    ReadableMultimapTable, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
    TableHandle, Value, WriteTransaction,
};

use super::{commit_durably, tables, StoreError};

/// What [`split_control_tables`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The jobs file holds no control table: nothing to do (the usual case).
    NothingToMove,
    /// The jobs file held only empty control tables; they were deleted.
    DroppedEmpty,
    /// This many entries were copied into the control file, then deleted from the jobs file.
    Moved(u64),
    /// A previous run had copied the entries and stopped before deleting them; they were
    /// deleted now.
    FinishedEarlierMove,
}

/// Moves every entry of the control tables from the jobs file into the control file, then
/// deletes those tables from the jobs file. See the module docs for the crash-safety argument.
pub fn split_control_tables(jobs: &Database, control: &Database) -> Result<Split, StoreError> {
    let old = jobs.begin_read()?;
    if !holds_control_tables(&old)? {
        return Ok(Split::NothingToMove);
    }
    let new = control.begin_read()?;
    let split = if all_empty(&old)? {
        Split::DroppedEmpty
    } else if all_empty(&new)? {
        let moved = commit_durably(control, |txn| copy_all(&old, txn))?;
        tracing::info!(entries = moved, "control tables moved to their own file");
        Split::Moved(moved)
    } else if all_same(&old, &new)? {
        tracing::info!("finishing an interrupted move of the control tables");
        Split::FinishedEarlierMove
    } else {
        return Err(StoreError::Migration(format!(
            "both {} and {} hold control data, and it differs (did an older bulwark run on this \
             data folder?); keep the copy you trust and delete the other one's tables",
            super::DB_FILE,
            super::CONTROL_FILE
        )));
    };
    drop((old, new));
    commit_durably(jobs, |txn| {
        txn.delete_table(tables::API_KEYS)?;
        txn.delete_table(tables::AUDIT_INDEX)?;
        txn.delete_multimap_table(tables::AUDIT_BY)?;
        txn.delete_table(tables::USERS)?;
        txn.delete_table(tables::REFRESH_TOKENS)?;
        Ok::<_, StoreError>(())
    })?;
    Ok(split)
}

/// Whether any control table exists in this file.
fn holds_control_tables(txn: &ReadTransaction) -> Result<bool, StoreError> {
    let names = [
        tables::API_KEYS.name(),
        tables::AUDIT_INDEX.name(),
        tables::USERS.name(),
        tables::REFRESH_TOKENS.name(),
    ];
    let table = txn.list_tables()?.any(|t| names.contains(&t.name()));
    let multimap = txn
        .list_multimap_tables()?
        .any(|t| t.name() == tables::AUDIT_BY.name());
    Ok(table || multimap)
}

/// Whether every control table of this file is empty or absent.
fn all_empty(txn: &ReadTransaction) -> Result<bool, StoreError> {
    Ok(entries(txn, tables::API_KEYS)? == 0
        && entries(txn, tables::AUDIT_INDEX)? == 0
        && multimap_entries(txn, tables::AUDIT_BY)? == 0
        && entries(txn, tables::USERS)? == 0
        && entries(txn, tables::REFRESH_TOKENS)? == 0)
}

/// Whether the two files hold exactly the same control entries.
fn all_same(a: &ReadTransaction, b: &ReadTransaction) -> Result<bool, StoreError> {
    Ok(same(a, b, tables::API_KEYS)?
        && same(a, b, tables::AUDIT_INDEX)?
        && same_multimap(a, b, tables::AUDIT_BY)?
        && same(a, b, tables::USERS)?
        && same(a, b, tables::REFRESH_TOKENS)?)
}

/// Copies every control entry of `from` into `to`; returns how many.
fn copy_all(from: &ReadTransaction, to: &WriteTransaction) -> Result<u64, StoreError> {
    Ok(copy(from, to, tables::API_KEYS)?
        + copy(from, to, tables::AUDIT_INDEX)?
        + copy_multimap(from, to, tables::AUDIT_BY)?
        + copy(from, to, tables::USERS)?
        + copy(from, to, tables::REFRESH_TOKENS)?)
}

/// A table's entry count; an absent table has none.
fn entries<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    match txn.open_table(def) {
        Ok(table) => Ok(table.len()?),
        Err(TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// A multimap table's value count; an absent table has none.
fn multimap_entries<K: Key + 'static, V: Key + 'static>(
    txn: &ReadTransaction,
    def: MultimapTableDefinition<K, V>,
) -> Result<u64, StoreError> {
    match txn.open_multimap_table(def) {
        Ok(table) => Ok(table.len()?),
        Err(TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn copy<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let source = match from.open_table(def) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut target = to.open_table(def)?;
    let mut n = 0;
    for entry in source.iter()? {
        let (key, value) = entry?;
        target.insert(key.value(), value.value())?;
        n += 1;
    }
    Ok(n)
}

fn copy_multimap<K: Key + 'static, V: Key + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    def: MultimapTableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let source = match from.open_multimap_table(def) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut target = to.open_multimap_table(def)?;
    let mut n = 0;
    for entry in source.iter()? {
        let (key, values) = entry?;
        for value in values {
            target.insert(key.value(), value?.value())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Whether a table holds the same entries in both files (an absent table counts as empty).
fn same<K: Key + 'static, V: Value + 'static>(
    a: &ReadTransaction,
    b: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<bool, StoreError> {
    let (ta, tb) = match (a.open_table(def), b.open_table(def)) {
        (Ok(ta), Ok(tb)) => (ta, tb),
        (Err(TableError::TableDoesNotExist(_)), _) => return Ok(entries(b, def)? == 0),
        (_, Err(TableError::TableDoesNotExist(_))) => return Ok(entries(a, def)? == 0),
        (Err(e), _) | (_, Err(e)) => return Err(e.into()),
    };
    if ta.len()? != tb.len()? {
        return Ok(false);
    }
    for (ea, eb) in ta.iter()?.zip(tb.iter()?) {
        let ((ka, va), (kb, vb)) = (ea?, eb?);
        if K::as_bytes(&ka.value()).as_ref() != K::as_bytes(&kb.value()).as_ref()
            || V::as_bytes(&va.value()).as_ref() != V::as_bytes(&vb.value()).as_ref()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether a multimap table holds the same pairs in both files (absent counts as empty).
fn same_multimap<K: Key + 'static, V: Key + 'static>(
    a: &ReadTransaction,
    b: &ReadTransaction,
    def: MultimapTableDefinition<K, V>,
) -> Result<bool, StoreError> {
    let (ta, tb) = match (a.open_multimap_table(def), b.open_multimap_table(def)) {
        (Ok(ta), Ok(tb)) => (ta, tb),
        (Err(TableError::TableDoesNotExist(_)), _) => return Ok(multimap_entries(b, def)? == 0),
        (_, Err(TableError::TableDoesNotExist(_))) => return Ok(multimap_entries(a, def)? == 0),
        (Err(e), _) | (_, Err(e)) => return Err(e.into()),
    };
    if ta.len()? != tb.len()? {
        return Ok(false);
    }
    // Equal totals: the pairs are equal when every key holds the same values in order.
    for (ea, eb) in ta.iter()?.zip(tb.iter()?) {
        let ((ka, va), (kb, vb)) = (ea?, eb?);
        if K::as_bytes(&ka.value()).as_ref() != K::as_bytes(&kb.value()).as_ref()
            || va.len() != vb.len()
        {
            return Ok(false);
        }
        for (x, y) in va.zip(vb) {
            let (x, y) = (x?, y?);
            if V::as_bytes(&x.value()).as_ref() != V::as_bytes(&y.value()).as_ref() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, CONTROL_FILE, DB_FILE};

    /// Writes a jobs file in the layout from before the split: every table in `bulwark.redb`.
    fn old_layout(dir: &std::path::Path) {
        std::fs::create_dir_all(dir).unwrap();
        let db = Database::create(dir.join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        fill(&txn);
        {
            let mut jobs = txn.open_table(tables::JOBS).unwrap();
            jobs.insert(7u128, b"job-seven".as_slice()).unwrap();
            let mut bounds = txn.open_table(tables::QUEUE_CONFIG).unwrap();
            bounds.insert("acme/mail", b"bounds".as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    /// The control entries every test expects to find moved.
    fn fill(txn: &WriteTransaction) {
        let mut keys = txn.open_table(tables::API_KEYS).unwrap();
        keys.insert("k1", b"key-one".as_slice()).unwrap();
        keys.insert("k2", b"key-two".as_slice()).unwrap();
        let mut index = txn.open_table(tables::AUDIT_INDEX).unwrap();
        index.insert(1u64, b"summary-1".as_slice()).unwrap();
        index.insert(2u64, b"summary-2".as_slice()).unwrap();
        let mut by = txn.open_multimap_table(tables::AUDIT_BY).unwrap();
        by.insert("type:auth.login", 1u64).unwrap();
        by.insert("type:auth.login", 2u64).unwrap();
        by.insert("principal:admin", 2u64).unwrap();
        let mut users = txn.open_table(tables::USERS).unwrap();
        users.insert("admin", b"user".as_slice()).unwrap();
        let mut tokens = txn.open_table(tables::REFRESH_TOKENS).unwrap();
        tokens
            .insert([9u8; 32].as_slice(), b"token".as_slice())
            .unwrap();
    }

    fn control_tables_left_in_jobs_file(dir: &std::path::Path) -> Vec<String> {
        let db = Database::open(dir.join(DB_FILE)).unwrap();
        let txn = db.begin_read().unwrap();
        let mut names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .chain(
                txn.list_multimap_tables()
                    .unwrap()
                    .map(|t| t.name().to_string()),
            )
            .collect();
        let jobs_file = [
            tables::JOBS.name(),
            tables::QUEUE_CONFIG.name(),
            tables::KEK_USAGE.name(),
        ];
        names.retain(|n| !jobs_file.contains(&n.as_str()));
        names
    }

    fn assert_control_moved(store: &Store) {
        let txn = store.control_read().unwrap();
        let keys = txn.open_table(tables::API_KEYS).unwrap();
        assert_eq!(keys.len().unwrap(), 2);
        assert_eq!(keys.get("k2").unwrap().unwrap().value(), b"key-two");
        let index = txn.open_table(tables::AUDIT_INDEX).unwrap();
        assert_eq!(index.len().unwrap(), 2);
        assert_eq!(index.get(1u64).unwrap().unwrap().value(), b"summary-1");
        let by = txn.open_multimap_table(tables::AUDIT_BY).unwrap();
        assert_eq!(by.len().unwrap(), 3, "no pair is duplicated");
        let logins: Vec<u64> = by
            .get("type:auth.login")
            .unwrap()
            .map(|v| v.unwrap().value())
            .collect();
        assert_eq!(logins, vec![1, 2]);
        let users = txn.open_table(tables::USERS).unwrap();
        assert_eq!(users.get("admin").unwrap().unwrap().value(), b"user");
        let tokens = txn.open_table(tables::REFRESH_TOKENS).unwrap();
        assert_eq!(
            tokens.get([9u8; 32].as_slice()).unwrap().unwrap().value(),
            b"token"
        );
        let jobs = store.jobs_read().unwrap();
        let table = jobs.open_table(tables::JOBS).unwrap();
        assert_eq!(table.get(7u128).unwrap().unwrap().value(), b"job-seven");
        let bounds = jobs.open_table(tables::QUEUE_CONFIG).unwrap();
        assert_eq!(bounds.get("acme/mail").unwrap().unwrap().value(), b"bounds");
    }

    #[test]
    fn an_old_single_file_database_has_its_control_tables_moved_and_none_left_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        old_layout(&dir);
        let store = Store::open(&dir).unwrap();
        assert_control_moved(&store);
        drop(store);
        assert_eq!(control_tables_left_in_jobs_file(&dir), Vec::<String>::new());
        // Opening again finds nothing to move and changes nothing.
        let store = Store::open(&dir).unwrap();
        assert_control_moved(&store);
        assert_eq!(
            split_control_tables(store.jobs_db(), store.control_db()).unwrap(),
            Split::NothingToMove
        );
    }

    #[test]
    fn a_move_interrupted_after_the_copy_is_finished_without_duplicating_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        old_layout(&dir);
        // The state a crash between the two steps leaves: the copy committed in the control
        // file, the old tables still in the jobs file.
        {
            let control = Database::create(dir.join(CONTROL_FILE)).unwrap();
            let txn = control.begin_write().unwrap();
            fill(&txn);
            txn.commit().unwrap();
        }
        {
            let jobs = Database::open(dir.join(DB_FILE)).unwrap();
            let control = Database::open(dir.join(CONTROL_FILE)).unwrap();
            assert_eq!(
                split_control_tables(&jobs, &control).unwrap(),
                Split::FinishedEarlierMove
            );
        }
        let store = Store::open(&dir).unwrap();
        assert_control_moved(&store);
        drop(store);
        assert_eq!(control_tables_left_in_jobs_file(&dir), Vec::<String>::new());
    }

    #[test]
    fn differing_control_data_in_both_files_is_refused_and_left_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        old_layout(&dir);
        {
            let control = Database::create(dir.join(CONTROL_FILE)).unwrap();
            let txn = control.begin_write().unwrap();
            txn.open_table(tables::API_KEYS)
                .unwrap()
                .insert("k9", b"another key".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&dir).err().unwrap();
        assert!(matches!(err, StoreError::Migration(_)), "{err}");
        assert_eq!(control_tables_left_in_jobs_file(&dir).len(), 5);
    }

    #[test]
    fn empty_control_tables_in_the_jobs_file_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir_all(&dir).unwrap();
        {
            let db = Database::create(dir.join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(tables::API_KEYS).unwrap();
            txn.open_multimap_table(tables::AUDIT_BY).unwrap();
            txn.commit().unwrap();
        }
        let jobs = Database::open(dir.join(DB_FILE)).unwrap();
        let control = Database::create(dir.join(CONTROL_FILE)).unwrap();
        assert_eq!(
            split_control_tables(&jobs, &control).unwrap(),
            Split::DroppedEmpty
        );
        drop((jobs, control));
        assert_eq!(control_tables_left_in_jobs_file(&dir), Vec::<String>::new());
    }
}
