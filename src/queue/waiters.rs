//! Requests waiting inside the engine (long-poll fetches, enqueues held by a full `block`
//! queue), and the caps on how many long-polls may wait.
//!
//! A fetch with `wait_ms` that finds nothing is parked here, per (tenant, queue), instead of
//! polling: after every turn the actor hands newly available jobs to the waiters of their
//! queues in the order they arrived (FIFO), in the same commit as the change that made the job
//! available. A waiter whose time is up is answered with no jobs. [`Waiters`] is plain data
//! (no channels, no clock); [`WaitPermits`] caps concurrent waits per principal and in all,
//! checked before a wait reaches the actor.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use super::sched::QueueKey;
use super::QueueError;
use crate::clock::Millis;

/// The parked waiters, each with the queues it waits on and its deadline.
#[derive(Debug)]
pub struct Waiters<W> {
    next: u64,
    /// By arrival: the lowest number waited longest.
    entries: BTreeMap<u64, Entry<W>>,
    by_queue: HashMap<QueueKey, BTreeSet<u64>>,
    deadlines: BTreeSet<(Millis, u64)>,
}

#[derive(Debug)]
struct Entry<W> {
    queues: Vec<QueueKey>,
    deadline: Millis,
    payload: W,
}

impl<W> Default for Waiters<W> {
    fn default() -> Self {
        Self {
            next: 0,
            entries: BTreeMap::new(),
            by_queue: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }
}

impl<W> Waiters<W> {
    /// Parks a waiter on `queues` until `deadline`; returns its number.
    pub fn park(&mut self, queues: Vec<QueueKey>, deadline: Millis, payload: W) -> u64 {
        let id = self.next;
        self.next += 1;
        for key in &queues {
            self.by_queue.entry(key.clone()).or_default().insert(id);
        }
        self.deadlines.insert((deadline, id));
        self.entries.insert(
            id,
            Entry {
                queues,
                deadline,
                payload,
            },
        );
        id
    }

    /// Takes a waiter out.
    pub fn take(&mut self, id: u64) -> Option<W> {
        let entry = self.entries.remove(&id)?;
        for key in &entry.queues {
            if let Some(set) = self.by_queue.get_mut(key) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_queue.remove(key);
                }
            }
        }
        self.deadlines.remove(&(entry.deadline, id));
        Some(entry.payload)
    }

    /// How many wait.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The earliest deadline.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Takes out every waiter whose deadline is at or before `now`, earliest first.
    pub fn take_expired(&mut self, now: Millis) -> Vec<W> {
        let due: Vec<u64> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        due.into_iter().filter_map(|id| self.take(id)).collect()
    }

    /// The waiters of the queues for which `ready` holds, longest-waiting first.
    pub fn ready(&self, mut ready: impl FnMut(&QueueKey) -> bool) -> Vec<u64> {
        let mut ids: BTreeSet<u64> = BTreeSet::new();
        for (key, waiting) in &self.by_queue {
            if ready(key) {
                ids.extend(waiting.iter().copied());
            }
        }
        ids.into_iter().collect()
    }

    /// Every waiter, longest-waiting first.
    #[must_use]
    pub fn ids(&self) -> Vec<u64> {
        self.entries.keys().copied().collect()
    }

    /// A waiter's payload.
    pub fn get(&self, id: u64) -> Option<&W> {
        self.entries.get(&id).map(|e| &e.payload)
    }

    /// Takes out every waiter for which `keep` is false.
    pub fn take_unless(&mut self, mut keep: impl FnMut(&W) -> bool) -> Vec<W> {
        let gone: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| !keep(&e.payload))
            .map(|(id, _)| *id)
            .collect();
        gone.into_iter().filter_map(|id| self.take(id)).collect()
    }

    /// Takes out every waiter.
    pub fn take_all(&mut self) -> Vec<W> {
        let ids: Vec<u64> = self.entries.keys().copied().collect();
        ids.into_iter().filter_map(|id| self.take(id)).collect()
    }
}

/// Caps on concurrent long-polls: per principal and in all. Cheap to clone; shared by every
/// handle.
#[derive(Clone, Debug)]
pub struct WaitPermits {
    per_principal: usize,
    total: usize,
    counts: Arc<Mutex<(usize, HashMap<String, usize>)>>,
}

/// A held long-poll slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct WaitPermit {
    principal: String,
    counts: Arc<Mutex<(usize, HashMap<String, usize>)>>,
}

impl WaitPermits {
    /// At most `per_principal` concurrent waits per principal and `total` in all (0: none).
    #[must_use]
    pub fn new(per_principal: usize, total: usize) -> Self {
        Self {
            per_principal,
            total,
            counts: Arc::new(Mutex::new((0, HashMap::new()))),
        }
    }

    /// A slot for `principal`, or [`QueueError::TooManyWaits`] when a cap is reached.
    pub fn acquire(&self, principal: &str) -> Result<WaitPermit, QueueError> {
        let mut guard = self.counts.lock().map_err(|_| QueueError::Unavailable)?;
        let (total, per) = &mut *guard;
        let mine = per.get(principal).copied().unwrap_or(0);
        if mine >= self.per_principal {
            return Err(QueueError::TooManyWaits {
                limit: self.per_principal,
                scope: "principal",
            });
        }
        if *total >= self.total {
            return Err(QueueError::TooManyWaits {
                limit: self.total,
                scope: "server",
            });
        }
        *total += 1;
        per.insert(principal.to_string(), mine + 1);
        Ok(WaitPermit {
            principal: principal.to_string(),
            counts: self.counts.clone(),
        })
    }

    /// Long-polls open now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.counts.lock().map(|g| g.0).unwrap_or(0)
    }
}

impl Drop for WaitPermit {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.counts.lock() {
            let (total, per) = &mut *guard;
            *total = total.saturating_sub(1);
            if let Some(n) = per.get_mut(&self.principal) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per.remove(&self.principal);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(q: &str) -> QueueKey {
        (None, q.to_string())
    }

    #[test]
    fn waiters_of_a_ready_queue_come_out_in_arrival_order_once() {
        let mut w = Waiters::default();
        let a = w.park(vec![key("a")], 100, "first");
        let b = w.park(vec![key("b"), key("a")], 50, "second");
        let c = w.park(vec![key("b")], 70, "third");
        assert_eq!(w.ready(|k| k.1 == "a"), vec![a, b]);
        assert_eq!(w.ready(|k| k.1 == "b"), vec![b, c]);
        assert_eq!(w.take(b), Some("second"));
        assert_eq!(w.ready(|_| true), vec![a, c]);
        assert_eq!(w.next_deadline(), Some(70));
        assert_eq!(w.take_expired(99), vec!["third"]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.take_unless(|p| *p != "first"), vec!["first"]);
        assert!(w.is_empty() && w.ready(|_| true).is_empty());
    }

    #[test]
    fn long_poll_permits_cap_each_principal_and_the_total() {
        let permits = WaitPermits::new(2, 3);
        let a1 = permits.acquire("a").unwrap();
        let _a2 = permits.acquire("a").unwrap();
        assert!(matches!(
            permits.acquire("a"),
            Err(QueueError::TooManyWaits {
                scope: "principal",
                ..
            })
        ));
        let _b1 = permits.acquire("b").unwrap();
        assert!(matches!(
            permits.acquire("c"),
            Err(QueueError::TooManyWaits {
                scope: "server",
                ..
            })
        ));
        drop(a1);
        assert_eq!(permits.open(), 2);
        assert!(permits.acquire("c").is_ok());
    }
}
