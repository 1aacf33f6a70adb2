//! The pre-authentication budget: how many argon2 verifications one source address may cause.
//!
//! A key that verified is cached, so a legitimate client spends from this budget once per key per
//! process; a client presenting wrong keys spends on every attempt. Over the budget the answer
//! is 429 before any argon2 work. IPv6 sources are counted per /64, the block one host usually
//! controls. The limiter's map is bounded: the auth store prunes idle addresses every minute,
//! and when more than [`ThrottleConfig::max_tracked`] addresses are busy at once, new ones share
//! one overflow budget rather than growing the map.
//!
//! The GCRA budgets run on `governor`'s own monotonic clock, not the server's [`crate::clock`]:
//! they measure intervals between attempts, never dates, and stay as they are.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use super::AuthError;

/// `[auth.throttle]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Key verifications (cache misses) one address may cause per minute.
    pub verifications_per_minute: u32,
    /// How many of them may come at once.
    pub burst: u32,
    /// Most addresses tracked before new ones share one overflow budget.
    pub max_tracked: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            verifications_per_minute: 30,
            burst: 20,
            max_tracked: 100_000,
        }
    }
}

/// The per-address budget.
pub struct Throttle {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    max_tracked: usize,
}

/// Stands for every address once the map is full.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Throttle {
    /// A throttle with `config`'s budget (zero values are raised to one).
    #[must_use]
    pub fn new(config: &ThrottleConfig) -> Self {
        let per_minute =
            NonZeroU32::new(config.verifications_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            max_tracked: config.max_tracked.max(1),
        }
    }

    /// Spends one verification of `ip`'s budget, or says how long to wait.
    pub fn spend(&self, ip: IpAddr) -> Result<(), AuthError> {
        let mut key = bucket(ip);
        if self.limiter.len() >= self.max_tracked {
            key = OVERFLOW;
        }
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            metrics::counter!(crate::metrics::AUTH_THROTTLED).increment(1);
            AuthError::Throttled {
                retry_after: wait.max(Duration::from_secs(1)),
            }
        })
    }

    /// Forgets addresses whose budget is full again.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Addresses tracked now.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_budget_and_ipv6_counts_per_64() {
        let t = Throttle::new(&ThrottleConfig {
            verifications_per_minute: 1,
            burst: 3,
            max_tracked: 100,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            t.spend(a).unwrap();
        }
        match t.spend(a) {
            Err(AuthError::Throttled { retry_after }) => {
                assert!(retry_after >= Duration::from_secs(1));
            }
            other => panic!("expected throttling, got {other:?}"),
        }
        assert!(matches!(t.spend(a), Err(AuthError::Throttled { .. })));
        t.spend(b).unwrap();
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        for _ in 0..3 {
            t.spend(v6a).unwrap();
        }
        assert!(t.spend(v6b).is_err(), "same /64, same budget");
        assert!(t.spend("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn a_full_map_sends_new_addresses_to_one_shared_budget() {
        let t = Throttle::new(&ThrottleConfig {
            verifications_per_minute: 1,
            burst: 1,
            max_tracked: 2,
        });
        t.spend("192.0.2.1".parse().unwrap()).unwrap();
        t.spend("192.0.2.2".parse().unwrap()).unwrap();
        t.spend("192.0.2.3".parse().unwrap()).unwrap();
        assert!(t.spend("192.0.2.4".parse().unwrap()).is_err());
        assert!(t.tracked() <= 3);
    }
}
