//! Lifecycle events (`job.enqueued`, `job.started`, `job.completed`, ...) kept in a bounded
//! in-memory log for `GET /ojs/v1/events`. They are observability, not a durable stream: the log
//! starts empty at each start and keeps the newest `capacity` events.

use std::collections::VecDeque;

use serde_json::{json, Value};

use crate::clock::{rfc3339, Millis};
use crate::job::Job;

/// One event.
#[derive(Clone, Debug)]
pub struct Event {
    pub seq: u64,
    pub kind: &'static str,
    pub time: Millis,
    pub job_id: String,
    /// The job's tenant: listings show a caller only its own tenant's events.
    pub tenant: Option<String>,
    pub job_type: String,
    pub queue: String,
    pub state: &'static str,
    pub attempt: u32,
    pub duration_ms: Option<i64>,
    pub error_code: Option<String>,
}

impl Event {
    /// An event about `job` as it is now.
    #[must_use]
    pub fn about(kind: &'static str, job: &Job, time: Millis) -> Self {
        Self {
            seq: 0,
            kind,
            time,
            job_id: job.id.to_string(),
            tenant: job.tenant.clone(),
            job_type: job.job_type.clone(),
            queue: job.queue.clone(),
            state: job.state.as_str(),
            attempt: job.attempt,
            duration_ms: job.started_at.map(|s| (time - s).max(0)),
            error_code: job.error.as_ref().map(|e| e.code.clone()),
        }
    }

    /// The wire form (CloudEvents-like, as `ojs-events.md` describes).
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut data = json!({
            "job_id": self.job_id,
            "job_type": self.job_type,
            "queue": self.queue,
            "state": self.state,
            "attempt": self.attempt,
        });
        if let Some(d) = self.duration_ms {
            data["duration_ms"] = d.into();
        }
        if let Some(c) = &self.error_code {
            data["error_code"] = c.clone().into();
        }
        json!({
            "specversion": "1.0",
            "id": format!("evt_{}", self.seq),
            "seq": self.seq,
            "type": self.kind,
            "source": "bulwark",
            "subject": self.job_id,
            "time": rfc3339(self.time),
            "data": data,
        })
    }
}

/// Which events a listing wants.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// The tenant whose events to list (`None`: the system scope's).
    pub tenant: Option<String>,
    pub types: Vec<String>,
    pub queues: Vec<String>,
    /// Only events with a sequence number greater than this.
    pub after: Option<u64>,
    pub limit: usize,
}

/// The bounded log.
#[derive(Debug)]
pub struct EventLog {
    events: VecDeque<Event>,
    capacity: usize,
    next_seq: u64,
}

impl EventLog {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            next_seq: 1,
        }
    }

    /// Appends committed events, dropping the oldest beyond capacity.
    pub fn extend(&mut self, events: Vec<Event>) {
        for mut e in events {
            e.seq = self.next_seq;
            self.next_seq += 1;
            if self.events.len() == self.capacity {
                self.events.pop_front();
            }
            self.events.push_back(e);
        }
    }

    /// Forgets everything (the testing reset).
    pub fn clear(&mut self) {
        self.events.clear();
    }

    /// Matching events, oldest first: those after the cursor, or else the newest `limit`.
    #[must_use]
    pub fn list(&self, filter: &EventFilter) -> Vec<Event> {
        let matches = |e: &&Event| {
            e.tenant == filter.tenant
                && (filter.types.is_empty() || filter.types.iter().any(|t| t == e.kind))
                && (filter.queues.is_empty() || filter.queues.contains(&e.queue))
                && filter.after.is_none_or(|a| e.seq > a)
        };
        let limit = filter.limit.max(1);
        if filter.after.is_some() {
            return self
                .events
                .iter()
                .filter(matches)
                .take(limit)
                .cloned()
                .collect();
        }
        let mut newest: Vec<Event> = self
            .events
            .iter()
            .rev()
            .filter(matches)
            .take(limit)
            .cloned()
            .collect();
        newest.reverse();
        newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &'static str, queue: &str) -> Event {
        Event {
            seq: 0,
            kind,
            time: 0,
            job_id: "j".into(),
            tenant: None,
            job_type: "t".into(),
            queue: queue.into(),
            state: "available",
            attempt: 0,
            duration_ms: None,
            error_code: None,
        }
    }

    #[test]
    fn bounded_filtered_and_ordered() {
        let mut log = EventLog::new(3);
        log.extend(vec![
            ev("job.enqueued", "a"),
            ev("job.enqueued", "b"),
            ev("job.completed", "a"),
            ev("job.enqueued", "a"),
        ]);
        let all = log.list(&EventFilter {
            limit: 10,
            ..Default::default()
        });
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3, 4]);
        let a = log.list(&EventFilter {
            queues: vec!["a".into()],
            types: vec!["job.enqueued".into()],
            limit: 10,
            ..Default::default()
        });
        assert_eq!(a.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4]);
        let after = log.list(&EventFilter {
            after: Some(2),
            limit: 1,
            ..Default::default()
        });
        assert_eq!(after[0].seq, 3);
    }
}
