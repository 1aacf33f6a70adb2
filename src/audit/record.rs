//! Audit records, their tamper-evident chain, and verification. Pure functions over bytes.
//!
//! The log is JSON lines. Each line is the record's canonical form: compact JSON with keys in
//! sorted order, ending in `\n`. Its `chain` field is
//! `HMAC-SHA256(key, previous chain || "\n" || canonical JSON of the record without "chain")`,
//! hex-encoded; the first record chains from 64 zeros. The key lives in the secrets folder, not
//! beside the log, so whoever can edit the log cannot recompute the chain.
//!
//! A signed head (last sequence number and chain, MACed with the same key) is kept next to the
//! log and rewritten after every durable append, so a cut tail (lines removed from the end) is
//! detected too.
//!
//! Retention removes old records from the front. The log then starts with a signed checkpoint
//! line, `{"checkpoint":{"chain":…,"mac":…,"seq":N}}`: the sequence number and chain value of the
//! last record removed, MACed with the same key. Verification resumes the chain from it, so a
//! pruned log verifies as strictly as a whole one: records removed after the checkpoint, a forged
//! or stale checkpoint, or a missing one (the log would then have to start at record 1) are all
//! detected.

use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The chain value before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest string kept in a record field; longer values are cut.
const MAX_FIELD: usize = 256;

/// How an audited action ended: the two values the OJS security spec (§11.2) allows. A refusal
/// (denied, throttled, over a limit) is a `Failure`; its `detail.reason` (or `code`, `scope`)
/// says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    /// The value written in a record.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// The `principal` of a record about a request that carried no accepted credential (a failed
/// authentication, a refusal before authentication, a TLS handshake). Never a principal's name:
/// [`crate::auth::records::is_valid_name`] reserves it.
pub const ANONYMOUS: &str = "anonymous";

/// The `principal` of a record about something the server or an offline command did on its own
/// (start, stop, retention, secret and config reloads, offline vault commands). Reserved like
/// [`ANONYMOUS`].
pub const SYSTEM: &str = "system";

/// The `principal` of a change the operator at the machine made from the command line through
/// the services (`bulwark keys ...`, `bulwark users ...`). Reserved like [`ANONYMOUS`].
pub const LOCAL_OPERATOR: &str = "local-operator";

/// Makes a client-supplied value safe to record: no control characters (so no CR/LF), at most
/// 256 characters.
#[must_use]
pub fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_FIELD)
        .collect()
}

/// Sanitizes every string inside a JSON value, and caps collections.
#[must_use]
pub fn sanitize_value(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(sanitize(s)),
        Value::Array(items) => Value::Array(items.iter().take(64).map(sanitize_value).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .take(64)
                .map(|(k, v)| (sanitize(k), sanitize_value(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// One audit event, before it is sequenced and chained.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    /// e.g. `auth.failure`, `job.cancelled`, `admin.reset`.
    pub event_type: &'static str,
    pub outcome: Outcome,
    /// The acting principal's name, if known. A record never says `null`: without one it is
    /// written as [`ANONYMOUS`] when the event concerns a peer (a source address or request id
    /// is set) and as [`SYSTEM`] otherwise.
    pub principal: Option<String>,
    pub tenant: Option<String>,
    pub source_ip: Option<String>,
    /// The request id.
    pub correlation_id: Option<String>,
    /// Event-specific context; never credentials, payloads or key material.
    pub detail: Map<String, Value>,
}

impl AuditEvent {
    /// A new event with empty context.
    #[must_use]
    pub fn new(event_type: &'static str, outcome: Outcome) -> Self {
        Self {
            event_type,
            outcome,
            principal: None,
            tenant: None,
            source_ip: None,
            correlation_id: None,
            detail: Map::new(),
        }
    }

    #[must_use]
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.to_string(), value.into());
        self
    }

    /// The record without its chain value, as a JSON object (every client value sanitized).
    #[must_use]
    pub fn to_unchained(&self, seq: u64, timestamp: &str) -> Map<String, Value> {
        let opt = |v: &Option<String>| {
            v.as_deref()
                .map_or(Value::Null, |s| Value::String(sanitize(s)))
        };
        let mut m = Map::new();
        m.insert("seq".into(), seq.into());
        m.insert("timestamp".into(), timestamp.into());
        m.insert("event_type".into(), self.event_type.into());
        m.insert("outcome".into(), self.outcome.as_str().into());
        let principal = match &self.principal {
            Some(name) => Value::String(sanitize(name)),
            None if self.source_ip.is_some() || self.correlation_id.is_some() => ANONYMOUS.into(),
            None => SYSTEM.into(),
        };
        m.insert("principal".into(), principal);
        m.insert("tenant".into(), opt(&self.tenant));
        m.insert("source_ip".into(), opt(&self.source_ip));
        m.insert("correlation_id".into(), opt(&self.correlation_id));
        m.insert(
            "detail".into(),
            sanitize_value(&Value::Object(self.detail.clone())),
        );
        m
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The chain value of a record whose unchained canonical JSON is `body`.
#[must_use]
pub fn chain_value(key: &hmac::Key, previous: &str, body: &str) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(previous.as_bytes());
    ctx.update(b"\n");
    ctx.update(body.as_bytes());
    hex(ctx.sign().as_ref())
}

/// Chains an unchained record: returns its line (with `\n`) and its chain value.
#[must_use]
pub fn seal(key: &hmac::Key, previous: &str, mut record: Map<String, Value>) -> (String, String) {
    record.remove("chain");
    let body = Value::Object(record.clone()).to_string();
    let chain = chain_value(key, previous, &body);
    record.insert("chain".into(), chain.clone().into());
    (format!("{}\n", Value::Object(record)), chain)
}

/// The signed head: where the log must end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub chain: String,
    pub mac: String,
}

fn head_mac(key: &hmac::Key, seq: u64, chain: &str) -> String {
    hex(hmac::sign(
        key,
        format!("bulwark-audit-head\n{seq}\n{chain}").as_bytes(),
    )
    .as_ref())
}

impl Head {
    /// A signed head for the last record.
    #[must_use]
    pub fn new(key: &hmac::Key, seq: u64, chain: &str) -> Self {
        Self {
            seq,
            chain: chain.to_string(),
            mac: head_mac(key, seq, chain),
        }
    }

    /// Whether the head was signed with `key`.
    #[must_use]
    pub fn is_authentic(&self, key: &hmac::Key) -> bool {
        same_hex(&head_mac(key, self.seq, &self.chain), &self.mac)
    }
}

/// Compares a computed MAC with a stored one as text, in constant time: the stored form must be
/// exactly what was written (a byte changed in case is a change too).
fn same_hex(computed: &str, stored: &str) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(
        computed.as_bytes(),
        stored.as_bytes(),
    ))
}

/// Where a pruned log resumes: the last removed record's sequence number and chain value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub chain: String,
    pub mac: String,
}

fn checkpoint_mac(key: &hmac::Key, seq: u64, chain: &str) -> String {
    hex(hmac::sign(
        key,
        format!("bulwark-audit-checkpoint\n{seq}\n{chain}").as_bytes(),
    )
    .as_ref())
}

impl Checkpoint {
    /// A signed checkpoint after record `seq` whose chain value is `chain`.
    #[must_use]
    pub fn new(key: &hmac::Key, seq: u64, chain: &str) -> Self {
        Self {
            seq,
            chain: chain.to_string(),
            mac: checkpoint_mac(key, seq, chain),
        }
    }

    /// Whether the checkpoint was signed with `key`.
    #[must_use]
    pub fn is_authentic(&self, key: &hmac::Key) -> bool {
        same_hex(&checkpoint_mac(key, self.seq, &self.chain), &self.mac)
    }

    /// The checkpoint as the first line of a log (canonical JSON and `\n`).
    #[must_use]
    pub fn line(&self) -> String {
        let mut inner = Map::new();
        inner.insert("seq".into(), self.seq.into());
        inner.insert("chain".into(), self.chain.clone().into());
        inner.insert("mac".into(), self.mac.clone().into());
        let mut outer = Map::new();
        outer.insert("checkpoint".into(), Value::Object(inner));
        format!("{}\n", Value::Object(outer))
    }

    /// The checkpoint a parsed line holds, if it is one.
    fn of_value(value: &Value) -> Option<Result<Self, ()>> {
        let object = value.as_object()?;
        let inner = object.get("checkpoint")?;
        if object.len() != 1 {
            return Some(Err(()));
        }
        Some(serde_json::from_value(inner.clone()).map_err(|_| ()))
    }
}

/// Why a log failed verification: the first problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    /// 1-based line number (0 for the head or the file as a whole).
    pub line: usize,
    pub reason: String,
}

/// A verified log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Records in the file (after the checkpoint, if any).
    pub records: u64,
    /// The sequence number of the last record (of the checkpoint when no record follows it; 0
    /// for an empty log).
    pub last_seq: u64,
    pub last_chain: String,
    /// The sequence number the checkpoint resumes after, for a pruned log.
    pub checkpoint: Option<u64>,
}

/// Verifies a whole log against its key and, when given, its head. The log may run ahead of
/// the head (records appended after the head was read: they are chained, so genuine), never
/// behind it.
pub fn verify(key: &hmac::Key, log: &[u8], head: Option<&Head>) -> Result<Verified, Broken> {
    let broken = |line: usize, reason: &str| Broken {
        line,
        reason: reason.to_string(),
    };
    if !log.is_empty() && !log.ends_with(b"\n") {
        return Err(broken(
            0,
            "the file does not end with a complete line (cut or appended to)",
        ));
    }
    let mut previous = GENESIS.to_string();
    let mut last_seq = 0u64;
    let mut count = 0u64;
    let mut checkpoint = None;
    // The chain value at the head's record, once passed (the log may run ahead of its head: a
    // reader can look between an append and the head's rewrite; it may never fall behind).
    let head_seq = head.map(|h| h.seq);
    let mut at_head = (head_seq == Some(0)).then(|| GENESIS.to_string());
    // The file ends with a newline (checked above); every piece between newlines is a record.
    let body = log.strip_suffix(b"\n").unwrap_or(log);
    let pieces = if log.is_empty() {
        Vec::new()
    } else {
        body.split(|b| *b == b'\n').collect()
    };
    for (index, raw) in pieces.into_iter().enumerate() {
        let line_no = index + 1;
        if raw.is_empty() {
            return Err(broken(line_no, "empty line"));
        }
        let text = std::str::from_utf8(raw).map_err(|_| broken(line_no, "not UTF-8"))?;
        let value: Value =
            serde_json::from_str(text).map_err(|_| broken(line_no, "not a JSON record"))?;
        // Only the canonical form is accepted: any byte that does not change the parsed value
        // (spacing, key order, escapes) is still a change.
        // (Comparing the re-serialized text, not the value: `Value == str` means something else.)
        #[allow(clippy::cmp_owned)]
        let canonical = value.to_string() == text;
        if !canonical {
            return Err(broken(line_no, "not in canonical form"));
        }
        if let Some(found) = Checkpoint::of_value(&value) {
            let cp = found.map_err(|()| broken(line_no, "malformed checkpoint"))?;
            if index != 0 {
                return Err(broken(line_no, "a checkpoint after the first line"));
            }
            if !cp.is_authentic(key) {
                return Err(broken(
                    line_no,
                    "the checkpoint is not signed with this key (forged or altered)",
                ));
            }
            if head_seq == Some(cp.seq) {
                at_head = Some(cp.chain.clone());
            }
            previous = cp.chain;
            last_seq = cp.seq;
            checkpoint = Some(cp.seq);
            continue;
        }
        let Value::Object(mut record) = value else {
            return Err(broken(line_no, "not a JSON object"));
        };
        let chain = match record.remove("chain") {
            Some(Value::String(c)) => c,
            _ => return Err(broken(line_no, "no chain value")),
        };
        if record.get("seq").and_then(Value::as_u64) != Some(last_seq + 1) {
            return Err(broken(
                line_no,
                "sequence number out of order (a record was removed, inserted or moved)",
            ));
        }
        let body = Value::Object(record).to_string();
        if !same_hex(&chain_value(key, &previous, &body), &chain) {
            return Err(broken(
                line_no,
                "chain value does not match (the record or one before it was altered)",
            ));
        }
        previous = chain;
        last_seq += 1;
        count += 1;
        if head_seq == Some(last_seq) {
            at_head = Some(previous.clone());
        }
    }
    if let Some(head) = head {
        if !head.is_authentic(key) {
            return Err(broken(0, "the head file is not signed with this key"));
        }
        if last_seq < head.seq {
            return Err(broken(
                0,
                &format!("the log ends at record {last_seq} but the signed head says {} (the tail was cut)", head.seq),
            ));
        }
        if at_head.as_deref() != Some(head.chain.as_str()) {
            return Err(broken(
                0,
                &format!(
                    "record {} is not the one the signed head names (the tail was replaced)",
                    head.seq
                ),
            ));
        }
    }
    Ok(Verified {
        records: count,
        last_seq,
        last_chain: previous,
        checkpoint,
    })
}

/// The chain value of record `seq` in a verified log (or of its checkpoint, when the record was
/// pruned behind it).
#[must_use]
pub fn chain_at(log: &[u8], seq: u64) -> Option<String> {
    log.split(|b| *b == b'\n').find_map(|line| {
        let value: Value = serde_json::from_slice(line).ok()?;
        let holder = value.get("checkpoint").unwrap_or(&value);
        (holder.get("seq")?.as_u64()? == seq)
            .then(|| holder.get("chain")?.as_str().map(str::to_string))
            .flatten()
    })
}

/// Checks an anchor `SEQ:CHAIN` (the `head:` line of an earlier verify, kept elsewhere) against a
/// verified log: the record at SEQ must still carry CHAIN. Returns SEQ.
pub fn check_anchor(log: &[u8], anchor: &str) -> Result<u64, String> {
    let (seq, chain) = anchor
        .split_once(':')
        .and_then(|(s, c)| Some((s.trim().parse::<u64>().ok()?, c.trim())))
        .ok_or_else(|| "--anchor must be SEQ:CHAIN, as `audit verify` prints it".to_string())?;
    match chain_at(log, seq) {
        Some(found) if same_hex(&found, chain) => Ok(seq),
        Some(_) => Err(format!(
            "record {seq} does not carry the anchored chain value (the log was rewritten up to it)"
        )),
        None => Err(format!(
            "record {seq} is not in the log (pruned, cut, or the anchor is from another log)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32])
    }

    fn log_of(n: u64) -> (Vec<u8>, Head) {
        let key = key();
        let mut previous = GENESIS.to_string();
        let mut out = Vec::new();
        for seq in 1..=n {
            let event = AuditEvent::new("test.event", Outcome::Success)
                .detail("n", seq)
                .detail("note", "line\r\nbreak");
            let (line, chain) = seal(
                &key,
                &previous,
                event.to_unchained(seq, "2026-01-01T00:00:00.000Z"),
            );
            out.extend_from_slice(line.as_bytes());
            previous = chain;
        }
        (out, Head::new(&key, n, &previous))
    }

    #[test]
    fn outcomes_are_success_or_failure_and_the_principal_is_never_null() {
        let mut refused = AuditEvent::new("auth.failure", Outcome::Failure);
        refused.source_ip = Some("192.0.2.7".into());
        let r = refused.to_unchained(1, "t");
        assert_eq!(r["outcome"], "failure");
        assert_eq!(r["principal"], ANONYMOUS);
        let r = AuditEvent::new("server.started", Outcome::Success).to_unchained(2, "t");
        assert_eq!(r["principal"], SYSTEM);
        let mut named = AuditEvent::new("job.cancelled", Outcome::Success);
        named.principal = Some("svc-ops".into());
        assert_eq!(named.to_unchained(3, "t")["principal"], "svc-ops");
        for name in [ANONYMOUS, SYSTEM] {
            assert!(
                !crate::auth::records::is_valid_name(name),
                "{name} is reserved"
            );
        }
    }

    #[test]
    fn an_intact_log_verifies_and_values_are_sanitized() {
        let (log, head) = log_of(5);
        let v = verify(&key(), &log, Some(&head)).unwrap();
        assert_eq!(v.records, 5);
        assert_eq!(
            log.iter().filter(|b| **b == b'\n').count(),
            5,
            "CR/LF in values never split a line"
        );
        assert!(verify(&key(), b"", Some(&Head::new(&key(), 0, GENESIS))).is_ok());
        let other = hmac::Key::new(hmac::HMAC_SHA256, &[8u8; 32]);
        assert!(
            verify(&other, &log, None).is_err(),
            "another key does not verify"
        );
    }

    #[test]
    fn an_anchor_matches_its_record_and_nothing_else() {
        let (log, head) = log_of(5);
        let anchor = format!("{}:{}", head.seq, head.chain);
        assert_eq!(check_anchor(&log, &anchor), Ok(5));
        let (other, _) = {
            let key = hmac::Key::new(hmac::HMAC_SHA256, &[9u8; 32]);
            let (line, chain) = seal(
                &key,
                GENESIS,
                AuditEvent::new("test.event", Outcome::Success).to_unchained(1, "t"),
            );
            (line.into_bytes(), chain)
        };
        assert!(check_anchor(&other, &format!("1:{}", head.chain)).is_err());
        assert!(check_anchor(&log, "9:00").is_err());
        assert!(check_anchor(&log, "nonsense").is_err());
    }

    #[test]
    fn a_log_may_run_ahead_of_its_head_but_never_behind_or_beside_it() {
        let (log, _) = log_of(5);
        let (shorter, head3) = log_of(3);
        // Read between an append and the head's rewrite: ahead, and genuine.
        assert_eq!(verify(&key(), &log, Some(&head3)).unwrap().last_seq, 5);
        // Behind the head: cut.
        let (_, head5) = log_of(5);
        assert!(verify(&key(), &shorter, Some(&head5)).is_err());
        // A head naming another chain at its record: replaced.
        let forged = Head::new(&key(), 3, &"ab".repeat(32));
        assert!(verify(&key(), &log, Some(&forged)).is_err());
    }

    #[test]
    fn every_random_single_mutation_is_detected() {
        let (log, head) = log_of(40);
        let lines: Vec<&[u8]> = log.split_inclusive(|b| *b == b'\n').collect();
        let rng = ring::rand::SystemRandom::new();
        let random = |bound: usize| -> usize {
            let mut b = [0u8; 8];
            ring::rand::SecureRandom::fill(&rng, &mut b).unwrap();
            (u64::from_le_bytes(b) % bound as u64) as usize
        };
        let mut tried = 0;
        for round in 0..600 {
            let mutated: Vec<u8> = match round % 6 {
                0 => {
                    // Edit one byte.
                    let mut m = log.clone();
                    let at = random(m.len());
                    let old = m[at];
                    let mut new = old;
                    while new == old {
                        new = (random(256)) as u8;
                    }
                    m[at] = new;
                    m
                }
                1 => {
                    // Delete one line.
                    let skip = random(lines.len());
                    lines
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != skip)
                        .flat_map(|(_, l)| l.iter().copied())
                        .collect()
                }
                2 => {
                    // Insert a copy of one line elsewhere.
                    let copy = lines[random(lines.len())];
                    let at = random(lines.len() + 1);
                    let mut m: Vec<u8> = lines[..at].concat();
                    m.extend_from_slice(copy);
                    m.extend_from_slice(&lines[at..].concat());
                    m
                }
                3 => {
                    // Swap two different lines.
                    let a = random(lines.len());
                    let mut b = random(lines.len());
                    while b == a {
                        b = random(lines.len());
                    }
                    let mut v = lines.clone();
                    v.swap(a, b);
                    v.concat()
                }
                4 => {
                    // Move one line to another place.
                    let from = random(lines.len());
                    let mut v = lines.clone();
                    let l = v.remove(from);
                    let mut to = random(v.len() + 1);
                    if to == from {
                        to = (to + 1) % (v.len() + 1);
                    }
                    v.insert(to, l);
                    v.concat()
                }
                _ => {
                    // Truncate anywhere (including exactly at a line boundary).
                    let cut = random(log.len());
                    log[..cut].to_vec()
                }
            };
            if mutated == log {
                continue;
            }
            tried += 1;
            assert!(
                verify(&key(), &mutated, Some(&head)).is_err(),
                "mutation {round} went undetected"
            );
        }
        assert!(tried > 500);
    }
}
