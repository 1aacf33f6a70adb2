//! The audit writer thread: groups waiting records into one append and one fsync, then
//! rewrites the signed head, then answers the senders that wait for durability. It also owns
//! the aggregation windows ([`super::aggregate`]), closed by its timer, and the trail's health:
//! after a failed append it reports failing ([`super::AuditStatus`]) and retries on every tick
//! with an `audit.resumed` record saying how many records were lost, until one is written.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use ring::hmac;
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::aggregate::Windows;
use super::index::{self, Summary};
use super::record::{self, AuditEvent, Head, Outcome};
use super::{retention, AuditConfig, AuditError, Msg, SharedStatus};
use crate::clock::{rfc3339, Clock};
use crate::store::Store;

const MAX_GROUP: usize = 1024;

/// A record waiting to be appended, with whoever waits for it to be durable.
type Pending = (
    AuditEvent,
    Option<tokio::sync::oneshot::Sender<Result<(), AuditError>>>,
);

pub(super) struct Writer {
    file: File,
    log_file: PathBuf,
    head_file: PathBuf,
    retention: Option<std::time::Duration>,
    key: hmac::Key,
    seq: u64,
    chain: String,
    /// Bytes in the log, so that each new line's offset is known for the index.
    len: u64,
    store: Option<Store>,
    /// Set after a failed append that could not be rolled back: every later record fails too
    /// (fail closed) until an operator restarts and verifies.
    broken: bool,
    /// Stamps records and places the retention cutoff.
    clock: Clock,
    /// Repeated refusals being counted.
    windows: Windows,
    /// Whether appends succeed, for the handle (health) to read.
    status: Arc<SharedStatus>,
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
        clock: Clock,
        status: Arc<SharedStatus>,
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
            let behind = verified.last_seq < head.seq;
            let matches_at_head = head.seq == 0
                || record::chain_at(&log, head.seq).as_deref() == Some(head.chain.as_str());
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
            let first = index::first_indexed(store).map_err(|e| AuditError::Log(e.to_string()))?;
            let pruned_but_indexed = verified
                .checkpoint
                .is_some_and(|cp| first.is_some_and(|f| f <= cp));
            if indexed > verified.last_seq || pruned_but_indexed {
                // Ahead of the log, or describing records pruned away (a crash between the
                // prune and the index update): rebuild it.
                warn!("the audit index does not describe the log on disk; rebuilding it");
                index::clear(store).map_err(|e| AuditError::Log(e.to_string()))?;
                indexed = 0;
            }
            if indexed < verified.last_seq {
                index::add(store, &index::summaries_after(&log, indexed))
                    .map_err(|e| AuditError::Log(e.to_string()))?;
            }
        }
        Ok(Self {
            file,
            log_file: config.log_file.clone(),
            head_file: config.head_file.clone(),
            retention: config.retention,
            key,
            seq: verified.last_seq,
            chain: verified.last_chain,
            len: log.len() as u64,
            store,
            broken: false,
            clock,
            windows: Windows::new(
                i64::try_from(config.aggregate_window.as_millis()).unwrap_or(i64::MAX),
            ),
            status,
        })
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        // Retention applies from the start, then whenever asked (hourly).
        if let Err(e) = self.prune() {
            error!(error = %e, "audit retention could not be applied");
        }
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = rx.blocking_recv() {
            let mut prune = None;
            let mut flushed = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Record { event, done } => group.push((event, done)),
                    Msg::Aggregate { key, event } => {
                        let now = self.clock.now_ms();
                        if let Some(event) = self.windows.note(key, event, now) {
                            group.push((event, None));
                        }
                    }
                    Msg::Tick => {}
                    Msg::Flush { done } => {
                        group.extend(self.windows.drain().into_iter().map(|e| (e, None)));
                        flushed.push(done);
                    }
                    Msg::Prune { done } => {
                        prune = Some(done);
                        break;
                    }
                }
                if group.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            // Windows closed by now are written with the group: by the timer, not by the next
            // refusal of their key.
            let now = self.clock.now_ms();
            group.extend(self.windows.due(now).into_iter().map(|e| (e, None)));
            if group.is_empty() && self.status.get().failing_since.is_some() {
                self.retry();
            }
            if !group.is_empty() {
                let result = self.append_counted(&group);
                for (_, done) in group.drain(..) {
                    if let Some(done) = done {
                        let _ = done.send(match &result {
                            Ok(()) => Ok(()),
                            Err(_) => Err(AuditError::WriteFailed),
                        });
                    }
                }
            }
            for done in flushed {
                let _ = done.send(());
            }
            if let Some(done) = prune {
                let result = self.prune();
                if let Err(e) = &result {
                    error!(error = %e, "audit retention could not be applied");
                }
                let _ = done.send(result);
            }
        }
        // Every handle is gone: what the open windows counted is written before the end.
        let rest: Vec<Pending> = self
            .windows
            .drain()
            .into_iter()
            .map(|e| (e, None))
            .collect();
        if !rest.is_empty() {
            let _ = self.append_counted(&rest);
        }
    }

    /// After failed appends: tries to write an `audit.resumed` record saying how many records
    /// were lost and since when. Once it is written the trail is healthy again.
    fn retry(&mut self) {
        let status = self.status.get();
        let Some(since) = status.failing_since else {
            return;
        };
        let event = AuditEvent::new("audit.resumed", Outcome::Success)
            .detail("failed_records", status.failed_records)
            .detail("failing_since", rfc3339(since));
        if self.append(&[&event]).is_ok() {
            metrics::counter!(crate::metrics::AUDIT_RECORDS).increment(1);
            self.status.recovered();
            tracing::info!(
                failed_records = status.failed_records,
                "the audit log is written again"
            );
        }
    }

    /// Appends a group and counts it in the metrics.
    fn append_counted(&mut self, group: &[Pending]) -> Result<(), AuditError> {
        // A failing trail says what it lost before anything new.
        self.retry();
        let events: Vec<&AuditEvent> = group.iter().map(|(e, _)| e).collect();
        let result = if self.status.get().failing_since.is_some() {
            Err(AuditError::WriteFailed)
        } else {
            self.append(&events)
        };
        match &result {
            Ok(()) => {
                metrics::counter!(crate::metrics::AUDIT_RECORDS).increment(group.len() as u64)
            }
            Err(e) => {
                metrics::counter!(crate::metrics::AUDIT_WRITE_FAILURES)
                    .increment(group.len() as u64);
                self.status.failed(self.clock.now_ms(), group.len() as u64);
                error!(error = %e, records = group.len(), "audit append failed");
            }
        }
        result
    }

    /// Removes the records older than the retention period from the front of the log, behind a
    /// signed checkpoint, and records that it did. The new log is written beside the old one and
    /// renamed over it, so a crash leaves one or the other, both verifiable.
    fn prune(&mut self) -> Result<u64, AuditError> {
        let Some(retention) = self.retention else {
            return Ok(0);
        };
        if self.broken {
            return Err(AuditError::WriteFailed);
        }
        let io = |what: &str, e: std::io::Error| {
            AuditError::Log(format!("{what} {}: {e}", self.log_file.display()))
        };
        // Only a regular file can be rewritten (a log on a device or pipe is kept whole).
        if !std::fs::metadata(&self.log_file).is_ok_and(|m| m.is_file()) {
            return Ok(0);
        }
        let now = self.clock.now_ms();
        let cutoff = now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let reader =
            std::io::BufReader::new(File::open(&self.log_file).map_err(|e| io("cannot read", e))?);
        let Some(cut) =
            retention::find_cut(&self.key, reader, cutoff).map_err(|e| io("cannot read", e))?
        else {
            return Ok(0);
        };
        let tmp = self.log_file.with_extension("pruning");
        let written = (|| -> std::io::Result<File> {
            let mut source = File::open(&self.log_file)?;
            source.seek(SeekFrom::Start(cut.offset))?;
            let mut out = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            out.write_all(cut.checkpoint.line().as_bytes())?;
            std::io::copy(&mut source, &mut out)?;
            out.sync_all()?;
            std::fs::rename(&tmp, &self.log_file)?;
            if let Some(dir) = self.log_file.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            OpenOptions::new()
                .read(true)
                .append(true)
                .open(&self.log_file)
        })();
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("cannot prune", e));
            }
        };
        self.file = file;
        self.len = self
            .file
            .metadata()
            .map_err(|e| io("cannot stat", e))?
            .len();
        if let Some(store) = &self.store {
            // Offsets moved: describe the new log. A failure here is repaired at the next start.
            let rebuilt = std::fs::read(&self.log_file)
                .map_err(|e| io("cannot read", e))
                .and_then(|log| {
                    index::replace(store, &index::summaries_after(&log, 0))
                        .map_err(|e| AuditError::Log(e.to_string()))
                });
            if let Err(e) = rebuilt {
                error!(error = %e, "audit index update after pruning failed");
            }
        }
        let event = AuditEvent::new("audit.pruned", Outcome::Success)
            .detail("removed", cut.removed)
            .detail("through_seq", cut.checkpoint.seq)
            .detail("retention_days", retention.as_secs() / 86_400)
            .detail("cutoff", rfc3339(cutoff));
        self.append_counted(&[(event, None)])?;
        tracing::info!(
            removed = cut.removed,
            through_seq = cut.checkpoint.seq,
            "audit records past retention pruned"
        );
        Ok(cut.removed)
    }

    fn append(&mut self, group: &[&AuditEvent]) -> Result<(), AuditError> {
        if self.broken {
            return Err(AuditError::WriteFailed);
        }
        let timestamp = rfc3339(self.clock.now_ms());
        let mut bytes = String::new();
        let mut seq = self.seq;
        let mut chain = self.chain.clone();
        for event in group {
            seq += 1;
            let (line, next) = record::seal(&self.key, &chain, event.to_unchained(seq, &timestamp));
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
