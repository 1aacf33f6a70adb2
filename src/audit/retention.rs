//! Retention: records older than the retention period are removed from the front of the log and
//! replaced by a signed checkpoint ([`Checkpoint`]), so the rest still verifies from there.
//!
//! Timestamps only grow along the log (the writer stamps records), so the records to remove are
//! a prefix: scanning stops at the first record that is young enough.

use std::io::BufRead;

use ring::hmac;
use serde_json::Value;

use super::record::Checkpoint;
use crate::clock::{parse_rfc3339, Millis};

/// Where a log is cut: everything before `offset` goes, replaced by `checkpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Byte offset of the first record kept.
    pub offset: u64,
    /// Records removed.
    pub removed: u64,
    /// The checkpoint that resumes the chain after the last removed record.
    pub checkpoint: Checkpoint,
}

/// Finds where to cut a verified log so that no record older than `cutoff` stays. `None` when
/// no record is that old. An existing checkpoint line is replaced, not counted.
pub fn find_cut(
    key: &hmac::Key,
    log: impl BufRead,
    cutoff: Millis,
) -> std::io::Result<Option<Cut>> {
    let mut offset = 0u64;
    let mut removed = 0u64;
    let mut last: Option<(u64, String)> = None;
    for line in log.split(b'\n') {
        let line = line?;
        let Ok(value) = serde_json::from_slice::<Value>(&line) else {
            break;
        };
        if value.get("checkpoint").is_none() {
            let stamped = value
                .get("timestamp")
                .and_then(Value::as_str)
                .and_then(parse_rfc3339);
            let (Some(at), Some(seq), Some(chain)) = (
                stamped,
                value.get("seq").and_then(Value::as_u64),
                value.get("chain").and_then(Value::as_str),
            ) else {
                break;
            };
            if at >= cutoff {
                break;
            }
            removed += 1;
            last = Some((seq, chain.to_string()));
        }
        offset += line.len() as u64 + 1;
    }
    Ok(last.map(|(seq, chain)| Cut {
        offset,
        removed,
        checkpoint: Checkpoint::new(key, seq, &chain),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{seal, verify, AuditEvent, Head, Outcome, GENESIS};
    use crate::clock::rfc3339;

    const DAY: Millis = 86_400_000;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[9u8; 32])
    }

    /// A log of records stamped at the given times (ms).
    fn log_at(times: &[Millis]) -> (Vec<u8>, Head) {
        let key = key();
        let mut previous = GENESIS.to_string();
        let mut out = Vec::new();
        for (i, at) in times.iter().enumerate() {
            let seq = i as u64 + 1;
            let event = AuditEvent::new("test.event", Outcome::Success).detail("n", seq);
            let (line, chain) = seal(&key, &previous, event.to_unchained(seq, &rfc3339(*at)));
            out.extend_from_slice(line.as_bytes());
            previous = chain;
        }
        let head = Head::new(&key, times.len() as u64, &previous);
        (out, head)
    }

    fn apply(log: &[u8], cut: &Cut) -> Vec<u8> {
        let mut out = cut.checkpoint.line().into_bytes();
        out.extend_from_slice(&log[cut.offset as usize..]);
        out
    }

    #[test]
    fn old_records_are_cut_and_the_rest_still_verifies_against_the_head() {
        let now = 400 * DAY;
        let times: Vec<Millis> = (0..10).map(|i| i * 40 * DAY).collect();
        let (log, head) = log_at(&times);
        let cutoff = now - 365 * DAY; // day 35: records at day 0 only
        let cut = find_cut(&key(), log.as_slice(), cutoff).unwrap().unwrap();
        assert_eq!(cut.removed, 1);
        assert_eq!(cut.checkpoint.seq, 1);
        let pruned = apply(&log, &cut);
        let v = verify(&key(), &pruned, Some(&head)).unwrap();
        assert_eq!((v.records, v.last_seq, v.checkpoint), (9, 10, Some(1)));

        // Pruning again, later, replaces the checkpoint.
        let cut2 = find_cut(&key(), pruned.as_slice(), 250 * DAY)
            .unwrap()
            .unwrap();
        assert_eq!((cut2.removed, cut2.checkpoint.seq), (6, 7));
        let twice = apply(&pruned, &cut2);
        let v = verify(&key(), &twice, Some(&head)).unwrap();
        assert_eq!((v.records, v.last_seq, v.checkpoint), (3, 10, Some(7)));

        // Nothing old enough: no cut.
        assert!(find_cut(&key(), twice.as_slice(), 0).unwrap().is_none());
        // Everything old: only the checkpoint stays, and it still matches the head.
        let all = find_cut(&key(), log.as_slice(), 1000 * DAY)
            .unwrap()
            .unwrap();
        let only = apply(&log, &all);
        let v = verify(&key(), &only, Some(&head)).unwrap();
        assert_eq!((v.records, v.last_seq), (0, 10));
    }

    #[test]
    fn a_pruned_log_still_catches_every_tampering() {
        let times: Vec<Millis> = (0..30).map(|i| i * DAY).collect();
        let (log, head) = log_at(&times);
        let cut = find_cut(&key(), log.as_slice(), 10 * DAY).unwrap().unwrap();
        let pruned = apply(&log, &cut);
        let lines: Vec<&[u8]> = pruned.split_inclusive(|b| *b == b'\n').collect();
        let checks: Vec<(&str, Vec<u8>)> = vec![
            ("checkpoint removed", lines[1..].concat()),
            (
                "record after the checkpoint removed",
                [lines[0], &lines[2..].concat()].concat(),
            ),
            (
                "checkpoint forged with another key",
                [
                    Checkpoint::new(
                        &hmac::Key::new(hmac::HMAC_SHA256, &[1u8; 32]),
                        cut.checkpoint.seq,
                        &cut.checkpoint.chain,
                    )
                    .line()
                    .as_bytes(),
                    &lines[1..].concat(),
                ]
                .concat(),
            ),
            ("checkpoint moved further (records after it cut)", {
                let (l2, _) = log_at(&times);
                let c2 = find_cut(&key(), l2.as_slice(), 12 * DAY).unwrap().unwrap();
                // A genuine later checkpoint in front of records it does not precede.
                [c2.checkpoint.line().as_bytes(), &lines[1..].concat()].concat()
            }),
            ("stale (earlier) checkpoint in front of the kept records", {
                let c0 = find_cut(&key(), log.as_slice(), 5 * DAY).unwrap().unwrap();
                [c0.checkpoint.line().as_bytes(), &lines[1..].concat()].concat()
            }),
            ("checkpoint moved to the middle", {
                let mut v = lines.clone();
                let cp = v.remove(0);
                v.insert(5, cp);
                v.concat()
            }),
        ];
        for (what, mutated) in checks {
            assert!(
                verify(&key(), &mutated, Some(&head)).is_err(),
                "undetected: {what}"
            );
        }
        // Random single-byte edits of the checkpoint line are all caught.
        let cp_len = lines[0].len();
        for at in 0..cp_len {
            for flip in [1u8, 0x20, 0x80] {
                let mut m = pruned.clone();
                m[at] ^= flip;
                assert!(
                    verify(&key(), &m, Some(&head)).is_err(),
                    "undetected edit at byte {at}"
                );
            }
        }
    }
}
