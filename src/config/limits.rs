//! `[limits]`: request rates, connection caps, the long-poll cap and abuse detection. Everything
//! here is re-read on SIGHUP (see `crate::limiter::reload`); the head and keep-alive timeouts
//! live in `[server]` because actix fixes them when the listener starts.

use anyhow::bail;
use serde::{Deserialize, Deserializer};

/// `[limits]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most keys (addresses, principals, tenants) each rate limiter tracks; beyond that, new
    /// keys share one overflow budget until the clean-up forgets idle ones.
    pub max_tracked_keys: usize,
    /// Seconds between clean-ups of idle rate-limit state.
    pub cleanup_interval_secs: u64,
    /// Longest a long-poll fetch (`wait_ms`) may wait, in ms; then it answers `{"jobs": []}`.
    pub max_fetch_wait_ms: u64,
    /// A 429 for a spent address budget or failed-authentication budget (refusals before
    /// anyone is authenticated) is answered after this many ms (never later than its
    /// Retry-After), so a flooding client gets one answer per connection per delay instead of
    /// as many as the server can write.
    pub refusal_delay_ms: u64,
    /// `[limits.rate]`
    pub rate: RateLimits,
    /// `[limits.connections]`
    pub connections: ConnectionLimits,
    /// `[limits.abuse]`
    pub abuse: AbuseConfig,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_tracked_keys: 100_000,
            cleanup_interval_secs: 60,
            max_fetch_wait_ms: 30_000,
            refusal_delay_ms: 1_000,
            rate: RateLimits::default(),
            connections: ConnectionLimits::default(),
            abuse: AbuseConfig::default(),
        }
    }
}

/// One GCRA budget: a sustained rate and the burst allowed on top of it.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per second, sustained (a fraction is allowed: 0.5 is one every two seconds).
    #[serde(deserialize_with = "number")]
    pub per_second: f64,
    /// Requests allowed at once (the `X-RateLimit-Limit` value).
    pub burst: u32,
}

impl Rate {
    #[must_use]
    pub const fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }
}

/// TOML has integers and floats; a rate may be written either way.
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        I(i64),
        F(f64),
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(match Num::deserialize(d)? {
        Num::I(i) => i as f64,
        Num::F(f) => f,
    })
}

/// `[limits.rate]`: checked on every request. `global` and `ip` run before authentication;
/// `tenant` and the per-principal ones after it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Every request the server answers.
    pub global: Rate,
    /// Per source address (IPv6 per /64), before authentication.
    pub ip: Rate,
    /// Per tenant, across its principals.
    pub tenant: Rate,
    /// Per principal, `POST /ojs/v1/jobs` (OJS security §10.1: at most 1,000/s).
    pub enqueue: Rate,
    /// Per principal, worker operations (fetch, ack, nack, heartbeat).
    pub worker: Rate,
    /// Per principal, every other authenticated route.
    pub other: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            global: Rate::new(20_000.0, 40_000),
            ip: Rate::new(2_000.0, 4_000),
            tenant: Rate::new(5_000.0, 10_000),
            enqueue: Rate::new(1_000.0, 1_000),
            worker: Rate::new(2_000.0, 2_000),
            other: Rate::new(500.0, 1_000),
        }
    }
}

/// `[limits.connections]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Open connections per client address (IPv6 per /64); the next one is answered 429 and
    /// closed (OJS security §10.4).
    pub per_ip: u32,
    /// Open connections in all.
    pub max: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            per_ip: 100,
            max: 10_000,
        }
    }
}

/// `[limits.abuse]`: patterns of GopherQueue §5 (spikes, payload floods, priority abuse, retry
/// storms). Each detection is audited (once per principal a minute, with a count) and counted.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AbuseConfig {
    /// Detection on or off.
    pub enabled: bool,
    /// A principal enqueueing faster than this multiple of its baseline is throttled.
    pub spike_factor: f64,
    /// ... but only above this many enqueues in one second, so a new principal's first burst
    /// is not a spike.
    pub spike_floor_per_sec: u32,
    /// Half-life of the baseline (an exponentially weighted per-second enqueue rate), in s.
    pub baseline_half_life_secs: u64,
    /// How long a principal is throttled after a spike or a payload flood, in s.
    pub cooldown_secs: u64,
    /// An enqueue whose args and meta together exceed this many bytes is "large".
    pub large_payload_bytes: usize,
    /// This many large enqueues from one principal within the window is a flood: its large
    /// enqueues are refused for the cool-down.
    pub large_payload_count: u32,
    /// The window of the payload flood and retry storm counts, in s.
    pub window_secs: u64,
    /// Priorities at or above this are "top".
    pub top_priority: i32,
    /// This many top-priority enqueues in a row from one principal is priority abuse: its
    /// top-priority jobs are demoted for the cool-down.
    pub priority_flood_count: u32,
    /// The priority abusive top-priority jobs are demoted to.
    pub demote_to: i32,
    /// This many nacks from one principal within the window is a retry storm.
    pub retry_storm_count: u32,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            spike_factor: 10.0,
            spike_floor_per_sec: 200,
            baseline_half_life_secs: 300,
            cooldown_secs: 60,
            large_payload_bytes: 256 * 1024,
            large_payload_count: 100,
            window_secs: 60,
            top_priority: 100,
            priority_flood_count: 100,
            demote_to: 0,
            retry_storm_count: 1_000,
        }
    }
}

impl LimitsConfig {
    /// Refuses meaningless values.
    pub fn validate(&self) -> anyhow::Result<()> {
        let r = &self.rate;
        for (name, rate) in [
            ("global", r.global),
            ("ip", r.ip),
            ("tenant", r.tenant),
            ("enqueue", r.enqueue),
            ("worker", r.worker),
            ("other", r.other),
        ] {
            if !(rate.per_second.is_finite() && rate.per_second >= 0.001 && rate.per_second <= 1e9)
            {
                bail!("limits.rate.{name}.per_second must be between 0.001 and 1e9");
            }
            if rate.burst == 0 {
                bail!("limits.rate.{name}.burst must be positive");
            }
        }
        if self.connections.per_ip == 0 || self.connections.max == 0 {
            bail!("limits.connections.per_ip and limits.connections.max must be positive");
        }
        if self.max_tracked_keys == 0 || self.cleanup_interval_secs == 0 {
            bail!("limits.max_tracked_keys and limits.cleanup_interval_secs must be positive");
        }
        if self.refusal_delay_ms > 10_000 {
            bail!("limits.refusal_delay_ms must be at most 10000");
        }
        if self.max_fetch_wait_ms > 30_000 {
            bail!("limits.max_fetch_wait_ms must be at most 30000 (OJS security §10.5)");
        }
        let a = &self.abuse;
        if !(a.spike_factor.is_finite() && a.spike_factor >= 1.0) {
            bail!("limits.abuse.spike_factor must be at least 1");
        }
        if a.baseline_half_life_secs == 0 || a.window_secs == 0 {
            bail!("limits.abuse.baseline_half_life_secs and window_secs must be positive");
        }
        if a.large_payload_count == 0 || a.priority_flood_count == 0 || a.retry_storm_count == 0 {
            bail!("limits.abuse counts must be positive");
        }
        if !(-100..=100).contains(&a.top_priority) || !(-100..=100).contains(&a.demote_to) {
            bail!("limits.abuse.top_priority and demote_to must be from -100 to 100");
        }
        if a.demote_to >= a.top_priority {
            bail!("limits.abuse.demote_to must be below top_priority");
        }
        Ok(())
    }
}
