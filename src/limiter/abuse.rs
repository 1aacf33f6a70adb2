//! Abuse detection (GopherQueue §5), per principal: submission spikes over a multiple of the
//! principal's own baseline (throttled for a cool-down), floods of large payloads (large
//! enqueues refused for a cool-down), all-top-priority submissions (demoted for a cool-down)
//! and retry storms (reported). Pure logic over an explicit clock in milliseconds; the HTTP
//! layer calls it and audits what it reports, the limiter actor prunes it.
//!
//! Reports are rate-limited: one per principal and pattern a minute, carrying how many
//! detections it stands for, so an attack does not become a flood of audit records.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::config::limits::AbuseConfig;

/// How often one principal's pattern is reported, in ms.
const REPORT_EVERY_MS: u64 = 60_000;

/// The patterns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    Spike,
    LargePayloads,
    PriorityFlood,
    RetryStorm,
}

impl Pattern {
    /// The audit event type.
    #[must_use]
    pub fn event_type(self) -> &'static str {
        match self {
            Self::Spike => "abuse.spike",
            Self::LargePayloads => "abuse.large_payloads",
            Self::PriorityFlood => "abuse.priority_flood",
            Self::RetryStorm => "abuse.retry_storm",
        }
    }

    /// The metric label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spike => "spike",
            Self::LargePayloads => "large_payloads",
            Self::PriorityFlood => "priority_flood",
            Self::RetryStorm => "retry_storm",
        }
    }
}

/// A detection due for the audit log.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub pattern: Pattern,
    /// Detections since the previous report of this pattern for this principal (≥ 1).
    pub count: u64,
    /// What was measured (enqueues this second, large enqueues or nacks in the window, or the
    /// top-priority streak).
    pub observed: u64,
    /// The baseline, for spikes.
    pub baseline: Option<f64>,
}

/// What to do with one enqueue.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnqueueVerdict {
    /// Refuse it (429) for this pattern, retrying after this many seconds.
    pub refuse: Option<(Pattern, u64)>,
    /// Store it with this priority instead of the requested one.
    pub demote_to: Option<i32>,
    /// Detections to audit.
    pub reports: Vec<Report>,
}

#[derive(Default)]
struct Window {
    start_ms: u64,
    count: u64,
}

impl Window {
    fn hit(&mut self, now: u64, len_ms: u64) -> u64 {
        if now.saturating_sub(self.start_ms) >= len_ms {
            self.start_ms = now;
            self.count = 0;
        }
        self.count += 1;
        self.count
    }
}

#[derive(Default)]
struct ReportState {
    last_ms: Option<u64>,
    pending: u64,
}

#[derive(Default)]
struct Principal {
    /// The current second and the enqueues accepted in it.
    second: u64,
    this_second: u64,
    /// Enqueues per second, exponentially weighted.
    baseline: f64,
    throttled_until_ms: u64,
    large: Window,
    large_refused_until_ms: u64,
    top_streak: u64,
    demote_until_ms: u64,
    nacks: Window,
    last_seen_ms: u64,
    reports: HashMap<Pattern, ReportState>,
}

impl Principal {
    /// Records a detection; returns a report when one is due.
    fn detected(
        &mut self,
        pattern: Pattern,
        now: u64,
        observed: u64,
        baseline: Option<f64>,
    ) -> Option<Report> {
        metrics::counter!(crate::metrics::ABUSE_EVENTS, "pattern" => pattern.as_str()).increment(1);
        let r = self.reports.entry(pattern).or_default();
        r.pending += 1;
        let due = r
            .last_ms
            .is_none_or(|last| now.saturating_sub(last) >= REPORT_EVERY_MS);
        if !due {
            return None;
        }
        r.last_ms = Some(now);
        let count = std::mem::take(&mut r.pending);
        Some(Report {
            pattern,
            count,
            observed,
            baseline,
        })
    }

    /// Folds the finished seconds into the baseline.
    fn roll(&mut self, second: u64, decay: f64) {
        if second <= self.second {
            return;
        }
        #[allow(clippy::cast_precision_loss)]
        let last = self.this_second as f64;
        self.baseline = self.baseline * decay + last * (1.0 - decay);
        let idle = second - self.second - 1;
        if idle > 0 {
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
            let idle = idle.min(1_000_000) as i32;
            self.baseline *= decay.powi(idle);
        }
        self.second = second;
        self.this_second = 0;
    }
}

/// Abuse state of every active principal.
pub struct Abuse {
    principals: Mutex<HashMap<String, Principal>>,
}

impl Default for Abuse {
    fn default() -> Self {
        Self::new()
    }
}

fn secs_until(until_ms: u64, now: u64) -> u64 {
    until_ms.saturating_sub(now).div_ceil(1000).max(1)
}

impl Abuse {
    /// No principal tracked yet.
    #[must_use]
    pub fn new() -> Self {
        Self {
            principals: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(
        &self,
        principal: &str,
        now: u64,
        max_tracked: usize,
        f: impl FnOnce(&mut Principal) -> T,
    ) -> Option<T> {
        let mut map = self
            .principals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(principal) {
            if map.len() >= max_tracked {
                return None;
            }
            map.insert(principal.to_string(), Principal::default());
        }
        let p = map.get_mut(principal)?;
        p.last_seen_ms = now;
        Some(f(p))
    }

    /// Judges one enqueue of `payload_bytes` (args and meta) at `priority` by `principal`.
    pub fn on_enqueue(
        &self,
        config: &AbuseConfig,
        max_tracked: usize,
        principal: &str,
        payload_bytes: usize,
        priority: i32,
        now_ms: u64,
    ) -> EnqueueVerdict {
        if !config.enabled {
            return EnqueueVerdict::default();
        }
        let cooldown_ms = config.cooldown_secs.saturating_mul(1000);
        let window_ms = config.window_secs.saturating_mul(1000);
        #[allow(clippy::cast_precision_loss)]
        let decay = 0.5f64.powf(1.0 / config.baseline_half_life_secs as f64);
        self.with(principal, now_ms, max_tracked, |p| {
            let mut v = EnqueueVerdict::default();
            if p.throttled_until_ms > now_ms {
                v.refuse = Some((Pattern::Spike, secs_until(p.throttled_until_ms, now_ms)));
                return v;
            }
            let large = payload_bytes >= config.large_payload_bytes;
            if large && p.large_refused_until_ms > now_ms {
                v.refuse = Some((
                    Pattern::LargePayloads,
                    secs_until(p.large_refused_until_ms, now_ms),
                ));
                return v;
            }
            p.roll(now_ms / 1000, decay);
            p.this_second += 1;
            let floor = f64::from(config.spike_floor_per_sec);
            #[allow(clippy::cast_precision_loss)]
            let rate = p.this_second as f64;
            if rate > floor.max(config.spike_factor * p.baseline) {
                p.throttled_until_ms = now_ms.saturating_add(cooldown_ms);
                // The refused enqueue is not part of the principal's normal rate.
                p.this_second -= 1;
                let baseline = p.baseline;
                v.reports.extend(p.detected(
                    Pattern::Spike,
                    now_ms,
                    p.this_second + 1,
                    Some(baseline),
                ));
                v.refuse = Some((Pattern::Spike, secs_until(p.throttled_until_ms, now_ms)));
                return v;
            }
            if large {
                let n = p.large.hit(now_ms, window_ms);
                if n >= u64::from(config.large_payload_count) {
                    p.large_refused_until_ms = now_ms.saturating_add(cooldown_ms);
                    p.large = Window::default();
                    v.reports
                        .extend(p.detected(Pattern::LargePayloads, now_ms, n, None));
                }
            }
            if priority >= config.top_priority {
                if p.demote_until_ms > now_ms {
                    v.demote_to = Some(config.demote_to);
                } else {
                    p.top_streak += 1;
                    if p.top_streak >= u64::from(config.priority_flood_count) {
                        let streak = p.top_streak;
                        p.top_streak = 0;
                        p.demote_until_ms = now_ms.saturating_add(cooldown_ms);
                        v.demote_to = Some(config.demote_to);
                        v.reports
                            .extend(p.detected(Pattern::PriorityFlood, now_ms, streak, None));
                    }
                }
            } else {
                p.top_streak = 0;
            }
            v
        })
        .unwrap_or_default()
    }

    /// Counts one nack by `principal`; reports a retry storm when the window fills.
    pub fn on_nack(
        &self,
        config: &AbuseConfig,
        max_tracked: usize,
        principal: &str,
        now_ms: u64,
    ) -> Option<Report> {
        if !config.enabled {
            return None;
        }
        let window_ms = config.window_secs.saturating_mul(1000);
        self.with(principal, now_ms, max_tracked, |p| {
            let n = p.nacks.hit(now_ms, window_ms);
            if n >= u64::from(config.retry_storm_count) {
                p.detected(Pattern::RetryStorm, now_ms, n, None)
            } else {
                None
            }
        })
        .flatten()
    }

    /// Forgets principals idle for `idle_ms` whose cool-downs are over.
    pub fn prune(&self, now_ms: u64, idle_ms: u64) {
        let mut map = self
            .principals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, p| {
            now_ms.saturating_sub(p.last_seen_ms) < idle_ms
                || p.throttled_until_ms > now_ms
                || p.large_refused_until_ms > now_ms
                || p.demote_until_ms > now_ms
        });
        map.shrink_to_fit();
    }

    /// Principals tracked now.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.principals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AbuseConfig {
        AbuseConfig {
            spike_floor_per_sec: 5,
            spike_factor: 10.0,
            baseline_half_life_secs: 10,
            cooldown_secs: 30,
            large_payload_bytes: 1000,
            large_payload_count: 3,
            window_secs: 60,
            top_priority: 100,
            priority_flood_count: 3,
            demote_to: 0,
            retry_storm_count: 4,
            ..AbuseConfig::default()
        }
    }

    #[test]
    fn a_new_principal_bursting_up_to_the_floor_is_not_a_spike() {
        let a = Abuse::new();
        let c = config();
        for i in 0..5 {
            let v = a.on_enqueue(&c, 10, "p", 10, 0, 1_000 + i);
            assert_eq!(v, EnqueueVerdict::default());
        }
        let v = a.on_enqueue(&c, 10, "p", 10, 0, 1_010);
        assert_eq!(v.refuse, Some((Pattern::Spike, 30)));
        assert_eq!(v.reports.len(), 1);
        assert_eq!(v.reports[0].observed, 6);
        // Throttled for the cool-down, then free again.
        assert!(a.on_enqueue(&c, 10, "p", 10, 0, 30_000).refuse.is_some());
        assert!(a.on_enqueue(&c, 10, "p", 10, 0, 31_011).refuse.is_none());
        // Another principal was never affected.
        assert!(a.on_enqueue(&c, 10, "q", 10, 0, 1_011).refuse.is_none());
    }

    #[test]
    fn a_spike_is_ten_times_the_principals_own_baseline() {
        let a = Abuse::new();
        let mut c = config();
        c.spike_floor_per_sec = 4;
        // A steady 4 per second for a minute: the baseline approaches 4, so 40 pass and the
        // 41st in one second is a spike.
        let mut now = 0;
        for _ in 0..60 {
            for k in 0..4 {
                assert!(a.on_enqueue(&c, 10, "p", 10, 0, now + k).refuse.is_none());
            }
            now += 1000;
        }
        let mut passed = 0;
        loop {
            let v = a.on_enqueue(&c, 10, "p", 10, 0, now + passed);
            if v.refuse.is_some() {
                assert_eq!(v.reports[0].pattern, Pattern::Spike);
                let baseline = v.reports[0].baseline.unwrap();
                assert!((3.5..=4.0).contains(&baseline), "{baseline}");
                break;
            }
            passed += 1;
            assert!(passed < 100);
        }
        assert!((35..=40).contains(&passed), "{passed}");
    }

    #[test]
    fn a_flood_of_large_payloads_refuses_large_ones_for_the_cooldown() {
        let a = Abuse::new();
        let mut c = config();
        c.spike_floor_per_sec = 1000;
        assert!(a.on_enqueue(&c, 10, "p", 2000, 0, 0).reports.is_empty());
        assert!(a.on_enqueue(&c, 10, "p", 2000, 0, 1).reports.is_empty());
        let v = a.on_enqueue(&c, 10, "p", 2000, 0, 2);
        assert_eq!(v.refuse, None, "the third is stored and reported");
        assert_eq!(v.reports[0].pattern, Pattern::LargePayloads);
        let v = a.on_enqueue(&c, 10, "p", 2000, 0, 3);
        assert_eq!(v.refuse.map(|r| r.0), Some(Pattern::LargePayloads));
        assert!(
            a.on_enqueue(&c, 10, "p", 10, 0, 4).refuse.is_none(),
            "small ones pass"
        );
        assert!(a.on_enqueue(&c, 10, "p", 2000, 0, 40_000).refuse.is_none());
    }

    #[test]
    fn all_top_priority_submissions_are_demoted_and_reported_once_a_minute() {
        let a = Abuse::new();
        let mut c = config();
        c.spike_floor_per_sec = 1000;
        c.cooldown_secs = 1;
        assert_eq!(a.on_enqueue(&c, 10, "p", 1, 100, 0).demote_to, None);
        assert_eq!(a.on_enqueue(&c, 10, "p", 1, 100, 1).demote_to, None);
        let v = a.on_enqueue(&c, 10, "p", 1, 100, 2);
        assert_eq!(v.demote_to, Some(0));
        assert_eq!(v.reports[0].pattern, Pattern::PriorityFlood);
        assert_eq!(a.on_enqueue(&c, 10, "p", 1, 100, 3).demote_to, Some(0));
        assert_eq!(a.on_enqueue(&c, 10, "p", 1, 5, 4).demote_to, None);
        // After the cool-down, a second flood is demoted again but reported only after a
        // minute, with the count of detections it stands for.
        for t in 2_000..2_002 {
            a.on_enqueue(&c, 10, "p", 1, 100, t);
        }
        let v = a.on_enqueue(&c, 10, "p", 1, 100, 2_002);
        assert_eq!(v.demote_to, Some(0));
        assert!(v.reports.is_empty());
        for t in 70_000..70_002 {
            a.on_enqueue(&c, 10, "p", 1, 100, t);
        }
        let v = a.on_enqueue(&c, 10, "p", 1, 100, 70_002);
        assert_eq!(v.reports[0].count, 2);
        // A mixed stream is never demoted.
        for t in 0..20 {
            let prio = if t % 2 == 0 { 100 } else { 0 };
            assert_eq!(a.on_enqueue(&c, 10, "q", 1, prio, t).demote_to, None);
        }
    }

    #[test]
    fn a_retry_storm_is_reported_and_idle_principals_are_pruned() {
        let a = Abuse::new();
        let c = config();
        for t in 0..3 {
            assert!(a.on_nack(&c, 10, "w", t).is_none());
        }
        let r = a.on_nack(&c, 10, "w", 3).unwrap();
        assert_eq!((r.pattern, r.observed), (Pattern::RetryStorm, 4));
        assert!(
            a.on_nack(&c, 10, "w", 4).is_none(),
            "reported once a minute"
        );
        assert!(
            a.on_nack(&c, 1, "other", 4).is_none(),
            "a full map tracks no one new"
        );
        assert_eq!(a.tracked(), 1);
        a.prune(1_000_000, 60_000);
        assert_eq!(a.tracked(), 0);
        let off = AbuseConfig {
            enabled: false,
            ..config()
        };
        for t in 0..10 {
            assert!(a.on_nack(&off, 10, "w", t).is_none());
        }
    }
}
