//! Login throttling: GCRA limiters (`governor`) keyed by source IP and by claimed username,
//! checked before any password work. Their maps grow with the keys seen, so the accounts
//! service calls [`LoginThrottle::retain_recent`] every minute.
//!
//! The limiters run on `governor`'s own monotonic clock, not the server's [`crate::clock`]:
//! they measure intervals between attempts, never dates.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Longest username key kept (longer claims are cut; real usernames are at most 64).
const MAX_USER_KEY: usize = 64;

/// Which limit refused an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    SourceIp,
    Username,
}

impl Scope {
    /// The name in audit records.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SourceIp => "source_ip",
            Self::Username => "username",
        }
    }
}

/// A refused attempt: which limit, and whole seconds until the next attempt may pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    pub scope: Scope,
    pub retry_after_secs: u64,
}

/// Per-IP and per-username login limiters.
pub struct LoginThrottle {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_user: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl LoginThrottle {
    /// Limiters allowing `per_ip` and `per_user` attempts a minute (zero is treated as one).
    #[must_use]
    pub fn new(per_ip: u32, per_user: u32) -> Self {
        let quota = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        Self {
            per_ip: RateLimiter::keyed(quota(per_ip)),
            per_user: RateLimiter::keyed(quota(per_user)),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one attempt from `ip` for `username`; refuses it if either limit is spent. The
    /// source IP is checked first, so a refused source does not use up the user's allowance.
    pub fn check(&self, ip: IpAddr, username: &str) -> Result<(), Throttled> {
        let wait = |scope, not_until: governor::NotUntil<_>| Throttled {
            scope,
            retry_after_secs: not_until
                .wait_time_from(self.clock.now())
                .as_secs()
                .saturating_add(1),
        };
        self.per_ip
            .check_key(&ip)
            .map_err(|n| wait(Scope::SourceIp, n))?;
        let key: String = username
            .chars()
            .take(MAX_USER_KEY)
            .collect::<String>()
            .to_lowercase();
        self.per_user
            .check_key(&key)
            .map_err(|n| wait(Scope::Username, n))?;
        Ok(())
    }

    /// Forgets keys whose limits are back to full.
    pub fn retain_recent(&self) {
        self.per_ip.retain_recent();
        self.per_user.retain_recent();
        self.per_ip.shrink_to_fit();
        self.per_user.shrink_to_fit();
    }

    /// Keys currently tracked (for tests and metrics).
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.per_ip.len() + self.per_user.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sixth_attempt_in_a_minute_is_refused_per_ip_and_per_user() {
        let t = LoginThrottle::new(5, 5);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for i in 0..5 {
            t.check(ip, "alice")
                .unwrap_or_else(|e| panic!("attempt {i}: {e:?}"));
        }
        let refused = t.check(ip, "alice").unwrap_err();
        assert_eq!(refused.scope, Scope::SourceIp);
        assert!((1..=13).contains(&refused.retry_after_secs), "{refused:?}");
        // Another source for the same user: the user's own limit is spent too.
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let refused = t.check(other, "ALICE").unwrap_err();
        assert_eq!(refused.scope, Scope::Username);
        // Another user from another source is unaffected.
        t.check(other, "bob").unwrap();
        assert!(t.tracked() >= 3);
        t.retain_recent();
    }
}
