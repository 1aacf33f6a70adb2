//! Aggregation of repeated refusals, so a flood cannot flood the audit trail and the trail still
//! accounts for every refusal.
//!
//! A refusal that may repeat fast (a throttled credential, a refused client certificate, a
//! failed handshake, a request over a rate limit) is handed to the writer with a key (its event
//! type plus what the caller groups by: address and reason, scope and key, principal and code).
//! The first one of a key is written at once with `count: 1` and opens a window of
//! `[audit] aggregate_window_secs`. Later ones of the same key inside the window are only
//! counted; when the window closes (the writer's timer, not the next refusal) one record with
//! their `count` and the `first_at` / `last_at` times of what it covers is written, and the key
//! starts afresh. At shutdown every open window is written. So the sum of `count` over the
//! records of a kind equals the number of refusals the metrics counted, exactly.
//!
//! Pure: time is passed in, nothing is written here.

use std::collections::HashMap;

use serde_json::Value;

use super::record::AuditEvent;
use crate::clock::{rfc3339, Millis};

/// Keys tracked at once; beyond that new keys share one overflow window per event type.
const MAX_KEYS: usize = 10_000;
/// The key of the overflow window.
const OVERFLOW: &str = "*";

/// The occurrences counted since a window's first record.
struct Open {
    opened_at: Millis,
    /// Counted in the window after its first record (not yet written).
    count: u64,
    first_at: Millis,
    last_at: Millis,
    /// The latest occurrence: the flushed record describes it (with the count).
    latest: Option<AuditEvent>,
}

/// The open windows, keyed by event type and the caller's key.
pub struct Windows {
    window_ms: Millis,
    open: HashMap<(&'static str, String), Open>,
}

fn counted(mut event: AuditEvent, count: u64, window_ms: Millis) -> AuditEvent {
    event.detail.insert("count".into(), Value::from(count));
    event
        .detail
        .insert("window_secs".into(), Value::from(window_ms / 1000));
    event
}

impl Windows {
    /// Windows of `window_ms` milliseconds (at least one second).
    #[must_use]
    pub fn new(window_ms: Millis) -> Self {
        Self {
            window_ms: window_ms.max(1000),
            open: HashMap::new(),
        }
    }

    /// Notes one occurrence at `now`. Returns the record to write now (the first of a window,
    /// with `count: 1`), or `None` when it is counted in an open window.
    pub fn note(&mut self, key: String, event: AuditEvent, now: Millis) -> Option<AuditEvent> {
        let mut key = (event.event_type, key);
        if !self.open.contains_key(&key) && self.open.len() >= MAX_KEYS {
            key.1 = OVERFLOW.to_string();
        }
        let overflow = key.1 == OVERFLOW;
        match self.open.get_mut(&key) {
            Some(w) => {
                if w.count == 0 {
                    w.first_at = now;
                }
                w.count += 1;
                w.last_at = now;
                let mut event = event;
                if overflow {
                    event.source_ip = None;
                    event.correlation_id = None;
                    event.detail.insert("overflow".into(), Value::Bool(true));
                }
                w.latest = Some(event);
                None
            }
            None => {
                self.open.insert(
                    key,
                    Open {
                        opened_at: now,
                        count: 0,
                        first_at: now,
                        last_at: now,
                        latest: None,
                    },
                );
                Some(counted(event, 1, self.window_ms))
            }
        }
    }

    /// The records of every window closed by `now` (those that counted anything); the closed
    /// windows are forgotten.
    pub fn due(&mut self, now: Millis) -> Vec<AuditEvent> {
        let window = self.window_ms;
        self.take(|w| now.saturating_sub(w.opened_at) >= window)
    }

    /// The records of every open window (shutdown).
    pub fn drain(&mut self) -> Vec<AuditEvent> {
        self.take(|_| true)
    }

    /// Windows open now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// No window is open.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    fn take(&mut self, closed: impl Fn(&Open) -> bool) -> Vec<AuditEvent> {
        let keys: Vec<_> = self
            .open
            .iter()
            .filter(|(_, w)| closed(w))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in keys {
            let Some(w) = self.open.remove(&key) else {
                continue;
            };
            if let Some(latest) = w.latest.filter(|_| w.count > 0) {
                let mut event = counted(latest, w.count, self.window_ms);
                event
                    .detail
                    .insert("first_at".into(), Value::from(rfc3339(w.first_at)));
                event
                    .detail
                    .insert("last_at".into(), Value::from(rfc3339(w.last_at)));
                out.push(event);
            }
        }
        // A stable order for the log (and the tests): by when each window's last one came.
        out.sort_by(|a, b| {
            a.detail
                .get("last_at")
                .and_then(Value::as_str)
                .cmp(&b.detail.get("last_at").and_then(Value::as_str))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome;

    const T0: Millis = 1_780_000_000_000;

    fn refusal(ip: &str) -> AuditEvent {
        let mut e = AuditEvent::new("auth.failure", Outcome::Failure).detail("reason", "throttled");
        e.source_ip = Some(ip.into());
        e
    }

    fn count(e: &AuditEvent) -> u64 {
        e.detail["count"].as_u64().unwrap()
    }

    #[test]
    fn fifteen_refusals_are_two_records_whose_counts_add_up_to_fifteen() {
        let mut w = Windows::new(60_000);
        let mut written = Vec::new();
        for i in 0..15 {
            written.extend(w.note("a".into(), refusal("192.0.2.1"), T0 + i * 1000));
        }
        assert_eq!(written.len(), 1, "only the first is written at once");
        assert_eq!(count(&written[0]), 1);
        assert!(w.due(T0 + 59_999).is_empty(), "the window is still open");
        let flushed = w.due(T0 + 60_000);
        assert_eq!(flushed.len(), 1);
        assert_eq!(count(&flushed[0]), 14);
        assert_eq!(flushed[0].detail["first_at"], rfc3339(T0 + 1000));
        assert_eq!(flushed[0].detail["last_at"], rfc3339(T0 + 14_000));
        assert_eq!(flushed[0].source_ip.as_deref(), Some("192.0.2.1"));
        assert!(w.is_empty(), "the key starts afresh");
        // The next one opens a new window and is written at once.
        let again = w
            .note("a".into(), refusal("192.0.2.1"), T0 + 61_000)
            .unwrap();
        assert_eq!(count(&again), 1);
    }

    #[test]
    fn a_lone_refusal_leaves_nothing_to_flush_and_keys_are_apart() {
        let mut w = Windows::new(60_000);
        assert!(w.note("a".into(), refusal("192.0.2.1"), T0).is_some());
        assert!(w.note("b".into(), refusal("192.0.2.2"), T0).is_some());
        assert!(w.note("b".into(), refusal("192.0.2.2"), T0 + 1).is_none());
        assert!(w.due(T0 + 60_000).iter().map(count).eq([1]));
        assert!(w.is_empty());
    }

    #[test]
    fn shutdown_writes_every_open_window_and_overflow_still_counts() {
        let mut w = Windows::new(60_000);
        let mut total = 0;
        for i in 0..(MAX_KEYS as i64 + 50) {
            for _ in 0..2 {
                if let Some(e) = w.note(format!("k{i}"), refusal("192.0.2.9"), T0) {
                    total += count(&e);
                }
            }
        }
        assert_eq!(w.len(), MAX_KEYS + 1, "new keys share one overflow window");
        total += w.drain().iter().map(count).sum::<u64>();
        assert_eq!(total, 2 * (MAX_KEYS as u64 + 50));
        assert!(w.is_empty());
    }
}
