//! The audit writer thread: groups waiting records into one append and one fsync, then
//! rewrites the signed head, then answers the senders that wait for durability.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use ring::hmac;
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::index::{self, Summary};
use super::record::{self, Head, GENESIS};
use super::{AuditConfig, AuditError, Msg};
use crate::clock::{now_ms, rfc3339};
use crate::store::Store;

const MAX_GROUP: usize = 1024;

pub(super) struct Writer {
    file: File,
    head_file: PathBuf,
    key: hmac::Key,
    seq: u64,
    chain: String,
    /// Bytes in the log, so that each new line's offset is known for the index.
    len: u64,
    store: Option<Store>,
    /// Set after a failed append that could not be rolled back: every later record fails too
    /// (fail closed) until an operator restarts and verifies.
    broken: bool,
}

fn read_head(path: &PathBuf) -> Result<Option<Head>, AuditError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| AuditError::Log(format!("{} is not a valid audit head", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditError::Log(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

impl Writer {
    pub(super) fn open(
        config: &AuditConfig,
        key: hmac::Key,
        store: Option<Store>,
    ) -> Result<Self, AuditError> {
        let log_err = |what: &str, e: std::io::Error| {
            AuditError::Log(format!("{what} {}: {e}", config.log_file.display()))
        };
        if let Some(dir) = config
            .log_file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| log_err("cannot create the folder of", e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&config.log_file)
            .map_err(|e| log_err("cannot open", e))?;
        let meta = file.metadata().map_err(|e| log_err("cannot stat", e))?;
        let mut log = Vec::new();
        if meta.is_file() {
            file.read_to_end(&mut log)
                .map_err(|e| log_err("cannot read", e))?;
            // A crash in the middle of an append leaves a partial last line that was never
            // acknowledged: cut it off.
            if !log.is_empty() && !log.ends_with(b"\n") {
                let keep = log.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                warn!(
                    bytes = log.len() - keep,
                    "cutting an incomplete record left by a crash from the audit log"
                );
                file.set_len(keep as u64)
                    .map_err(|e| log_err("cannot repair", e))?;
                log.truncate(keep);
            }
        }
        let head = read_head(&config.head_file)?;
        let verified = record::verify(&key, &log, None).map_err(|b| {
            AuditError::Log(format!(
                "{} fails verification at line {}: {}; run `bulwark audit verify` and investigate before starting",
                config.log_file.display(),
                b.line,
                b.reason
            ))
        })?;
        if let Some(head) = &head {
            // The log may run ahead of its head (a crash between the append and the head
            // rewrite), never behind it.
            let behind = verified.records < head.seq;
            let matches_at_head =
                head.seq == 0 || line_chain(&log, head.seq).as_deref() == Some(head.chain.as_str());
            if !head.is_authentic(&key) || behind || !matches_at_head {
                return Err(AuditError::Log(format!(
                    "{} does not match its signed head {} (records missing or replaced); run `bulwark audit verify`",
                    config.log_file.display(),
                    config.head_file.display()
                )));
            }
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| log_err("cannot seek", e))?;
        if let Some(store) = &store {
            // The index may lag the log (a crash after the append, an index write that failed):
            // catch it up from the verified log.
            let mut indexed =
                index::last_indexed(store).map_err(|e| AuditError::Log(e.to_string()))?;
            if indexed > verified.records {
                warn!("the audit index describes a longer log than the one on disk; rebuilding it");
                index::clear(store).map_err(|e| AuditError::Log(e.to_string()))?;
                indexed = 0;
            }
            if indexed < verified.records {
                index::add(store, &index::summaries_after(&log, indexed))
                    .map_err(|e| AuditError::Log(e.to_string()))?;
            }
        }
        Ok(Self {
            file,
            head_file: config.head_file.clone(),
            key,
            seq: verified.records,
            chain: if verified.records == 0 {
                GENESIS.to_string()
            } else {
                verified.last_chain
            },
            len: log.len() as u64,
            store,
            broken: false,
        })
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(msg) => group.push(msg),
                    Err(_) => break,
                }
            }
            let result = self.append(&group);
            match &result {
                Ok(()) => {
                    metrics::counter!(crate::metrics::AUDIT_RECORDS).increment(group.len() as u64)
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::AUDIT_WRITE_FAILURES)
                        .increment(group.len() as u64);
                    error!(error = %e, records = group.len(), "audit append failed");
                }
            }
            for msg in group.drain(..) {
                if let Some(done) = msg.done {
                    let _ = done.send(match &result {
                        Ok(()) => Ok(()),
                        Err(_) => Err(AuditError::WriteFailed),
                    });
                }
            }
        }
    }

    fn append(&mut self, group: &[Msg]) -> Result<(), AuditError> {
        if self.broken {
            return Err(AuditError::WriteFailed);
        }
        let timestamp = rfc3339(now_ms());
        let mut bytes = String::new();
        let mut seq = self.seq;
        let mut chain = self.chain.clone();
        for msg in group {
            seq += 1;
            let (line, next) =
                record::seal(&self.key, &chain, msg.event.to_unchained(seq, &timestamp));
            bytes.push_str(&line);
            chain = next;
        }
        let before = self.file.metadata().map(|m| m.len()).ok();
        let written = self
            .file
            .write_all(bytes.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Roll the partial append back so the chain on disk stays whole; if that fails
            // too, refuse everything from now on.
            let rolled_back = before.is_some_and(|len| {
                self.file
                    .set_len(len)
                    .and_then(|()| self.file.sync_data())
                    .is_ok()
            });
            if !rolled_back {
                self.broken = true;
            }
            return Err(AuditError::Log(e.to_string()));
        }
        let start = self.len;
        self.len += bytes.len() as u64;
        self.seq = seq;
        self.chain = chain;
        self.write_head()?;
        if let Some(store) = &self.store {
            let mut offset = start;
            let summaries: Vec<Summary> = bytes
                .split_inclusive('\n')
                .filter_map(|line| {
                    let s = Summary::of_line(line.trim_end_matches('\n'), offset);
                    offset += line.len() as u64;
                    s
                })
                .collect();
            // The log is the record of truth; a lagging index is rebuilt at the next start.
            if let Err(e) = index::add(store, &summaries) {
                error!(error = %e, "audit index update failed");
            }
        }
        Ok(())
    }

    fn write_head(&self) -> Result<(), AuditError> {
        let head = Head::new(&self.key, self.seq, &self.chain);
        let text = serde_json::to_string(&head).map_err(|e| AuditError::Log(e.to_string()))?;
        let tmp = self.head_file.with_extension("tmp");
        let result = (|| -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.head_file)
        })();
        result
            .map_err(|e| AuditError::Log(format!("cannot write {}: {e}", self.head_file.display())))
    }
}

/// The chain value of record number `seq` in a verified log.
fn line_chain(log: &[u8], seq: u64) -> Option<String> {
    let index = usize::try_from(seq.checked_sub(1)?).ok()?;
    let line = log.split(|b| *b == b'\n').nth(index)?;
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    value.get("chain")?.as_str().map(str::to_string)
}
