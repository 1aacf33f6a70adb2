//! The rate limiters (GCRA, `governor`): one global budget, and keyed budgets per source
//! address, per tenant and per principal for each operation class. A set of limiters is built
//! from one `[limits]` snapshot and replaced whole on reload. Keyed maps are bounded: past
//! `max_tracked_keys` new keys share one overflow budget, and the limiter actor forgets idle
//! keys on a timer.
//!
//! The limiters run on `governor`'s own monotonic clock (quanta), not the server's
//! [`crate::clock`]: GCRA measures intervals between requests, never dates, so they stay as
//! they are. The wall-clock parts of limiting (abuse windows, reset headers) use the limiter's
//! [`crate::clock::Clock`].

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};

use crate::config::limits::{LimitsConfig, Rate};

type Instant = <DefaultClock as Clock>::Instant;
type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;
type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// Which budget a decision is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Global,
    Ip,
    Tenant,
    Enqueue,
    Worker,
    Other,
    /// The pre-authentication key-verification budget (`[auth.throttle]`).
    FailedAuth,
    /// The login budget (`[sessions]`).
    Login,
}

impl Scope {
    /// The name in metrics and audit records.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Ip => "ip",
            Self::Tenant => "tenant",
            Self::Enqueue => "principal_enqueue",
            Self::Worker => "principal_worker",
            Self::Other => "principal_other",
            Self::FailedAuth => "failed_auth",
            Self::Login => "login",
        }
    }
}

/// The per-principal operation classes (each route's is in the route table,
/// `crate::http::access::ROUTES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `POST /ojs/v1/jobs`
    Enqueue,
    /// `/ojs/v1/workers/*`
    Worker,
    /// Everything else.
    Other,
}

/// What the `X-RateLimit-*` headers say about one budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateInfo {
    pub scope: Scope,
    /// The burst size.
    pub limit: u32,
    /// Requests that may still pass at once.
    pub remaining: u32,
    /// Whole seconds until at least one more request passes (0 when one would pass now).
    pub reset_in_secs: u64,
}

impl RateInfo {
    /// The tighter of two budgets: the one with fewer requests left.
    #[must_use]
    pub fn tighter(self, other: Self) -> Self {
        if other.remaining < self.remaining {
            other
        } else {
            self
        }
    }
}

/// A refused request: which budget, and how long to wait.
#[derive(Clone, Copy, Debug)]
pub struct Limited {
    pub info: RateInfo,
    /// Whole seconds (at least 1) before a retry can pass.
    pub retry_after_secs: u64,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn quota(rate: Rate) -> Quota {
    let period = Duration::from_secs_f64(1.0 / rate.per_second.max(1e-9));
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst)
}

fn allowed(scope: Scope, snap: &StateSnapshot) -> RateInfo {
    let quota = snap.quota();
    let remaining = snap.remaining_burst_capacity();
    RateInfo {
        scope,
        limit: quota.burst_size().get(),
        remaining,
        reset_in_secs: if remaining > 0 {
            0
        } else {
            ceil_secs(quota.replenish_interval())
        },
    }
}

fn refused(scope: Scope, not_until: &NotUntil<Instant>, now: Instant) -> Limited {
    let wait = not_until.wait_time_from(now);
    let retry_after_secs = ceil_secs(wait).max(1);
    metrics::counter!(crate::metrics::RATE_LIMITED, "scope" => scope.as_str()).increment(1);
    Limited {
        info: RateInfo {
            scope,
            limit: not_until.quota().burst_size().get(),
            remaining: 0,
            reset_in_secs: retry_after_secs,
        },
        retry_after_secs,
    }
}

/// The address a connection or request is counted under: IPv4 as is, IPv6 per /64 (the block
/// one host usually controls), IPv4-mapped IPv6 as IPv4.
#[must_use]
pub fn ip_bucket(ip: IpAddr) -> IpAddr {
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

/// Stands for every address once the map is full.
const IP_OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
/// Stands for every principal or tenant once a map is full (not a valid id, so never real).
const KEY_OVERFLOW: &str = "\u{0}overflow";

/// One generation of limiters, built from one `[limits]` snapshot.
pub struct Rates {
    global: Direct,
    ip: Keyed<IpAddr>,
    tenant: Keyed<String>,
    enqueue: Keyed<String>,
    worker: Keyed<String>,
    other: Keyed<String>,
    max_tracked: usize,
    clock: DefaultClock,
}

impl Rates {
    /// Fresh limiters for `config`.
    #[must_use]
    pub fn new(config: &LimitsConfig) -> Self {
        let r = &config.rate;
        fn keyed<K: Clone + std::hash::Hash + Eq>(rate: Rate) -> Keyed<K> {
            RateLimiter::keyed(quota(rate)).with_middleware()
        }
        Self {
            global: RateLimiter::direct(quota(r.global)).with_middleware(),
            ip: keyed(r.ip),
            tenant: keyed(r.tenant),
            enqueue: keyed(r.enqueue),
            worker: keyed(r.worker),
            other: keyed(r.other),
            max_tracked: config.max_tracked_keys.max(1),
            clock: DefaultClock::default(),
        }
    }

    fn keyed_string(
        &self,
        scope: Scope,
        limiter: &Keyed<String>,
        key: &str,
    ) -> Result<RateInfo, Limited> {
        let key = if limiter.len() >= self.max_tracked {
            KEY_OVERFLOW.to_string()
        } else {
            key.to_string()
        };
        limiter
            .check_key(&key)
            .map(|s| allowed(scope, &s))
            .map_err(|n| refused(scope, &n, self.clock.now()))
    }

    /// The checks before authentication: the source address's budget, then the global one.
    /// In that order, so that a flood one address is refused does not spend the budget every
    /// other client shares.
    pub fn check_source(&self, ip: IpAddr) -> Result<RateInfo, Limited> {
        let mut key = ip_bucket(ip);
        if self.ip.len() >= self.max_tracked {
            key = IP_OVERFLOW;
        }
        let ip = self
            .ip
            .check_key(&key)
            .map(|s| allowed(Scope::Ip, &s))
            .map_err(|n| refused(Scope::Ip, &n, self.clock.now()))?;
        let global = self
            .global
            .check()
            .map(|s| allowed(Scope::Global, &s))
            .map_err(|n| refused(Scope::Global, &n, self.clock.now()))?;
        Ok(ip.tighter(global))
    }

    /// The checks after authentication: the tenant's budget, then the principal's for the
    /// operation class.
    pub fn check_caller(
        &self,
        principal: &str,
        tenant: Option<&str>,
        class: Class,
    ) -> Result<RateInfo, Limited> {
        let tenant = match tenant {
            Some(t) => Some(self.keyed_string(Scope::Tenant, &self.tenant, t)?),
            None => None,
        };
        let (scope, limiter) = match class {
            Class::Enqueue => (Scope::Enqueue, &self.enqueue),
            Class::Worker => (Scope::Worker, &self.worker),
            Class::Other => (Scope::Other, &self.other),
        };
        let own = self.keyed_string(scope, limiter, principal)?;
        Ok(tenant.map_or(own, |t| t.tighter(own)))
    }

    /// Forgets keys whose budget is full again.
    pub fn prune(&self) {
        self.ip.retain_recent();
        self.ip.shrink_to_fit();
        for limiter in [&self.tenant, &self.enqueue, &self.worker, &self.other] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys tracked now, over all keyed limiters.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.ip.len()
            + self.tenant.len()
            + self.enqueue.len()
            + self.worker.len()
            + self.other.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(burst: u32) -> LimitsConfig {
        let mut c = LimitsConfig::default();
        c.rate.enqueue = Rate::new(0.01, burst);
        c.rate.tenant = Rate::new(0.01, 100);
        c.rate.ip = Rate::new(0.01, burst);
        c.max_tracked_keys = 3;
        c
    }

    #[test]
    fn a_burst_passes_with_falling_remaining_then_one_over_is_refused() {
        let r = Rates::new(&config(3));
        for left in (0..3).rev() {
            let info = r.check_caller("p1", None, Class::Enqueue).unwrap();
            assert_eq!(info.limit, 3);
            assert_eq!(info.remaining, left);
            assert_eq!(info.scope, Scope::Enqueue);
        }
        let refused = r.check_caller("p1", None, Class::Enqueue).unwrap_err();
        assert_eq!(refused.info.remaining, 0);
        assert!(refused.retry_after_secs >= 1);
        // Other principals and other classes keep their own budgets.
        assert!(r.check_caller("p2", None, Class::Enqueue).is_ok());
        assert!(r.check_caller("p1", None, Class::Worker).is_ok());
    }

    #[test]
    fn the_tenant_budget_is_shared_and_the_tighter_budget_is_reported() {
        let mut c = config(100);
        c.rate.tenant = Rate::new(0.01, 2);
        let r = Rates::new(&c);
        let first = r.check_caller("a", Some("t"), Class::Other).unwrap();
        assert_eq!(first.scope, Scope::Tenant);
        assert_eq!(first.remaining, 1);
        r.check_caller("b", Some("t"), Class::Other).unwrap();
        let refused = r.check_caller("c", Some("t"), Class::Other).unwrap_err();
        assert_eq!(refused.info.scope, Scope::Tenant);
        assert!(r.check_caller("c", Some("u"), Class::Other).is_ok());
    }

    #[test]
    fn addresses_count_per_64_and_a_full_map_shares_one_overflow_budget() {
        let r = Rates::new(&config(1));
        r.check_source("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(r.check_source("2001:db8:1:2::9".parse().unwrap()).is_err());
        r.check_source("192.0.2.1".parse().unwrap()).unwrap();
        r.check_source("192.0.2.2".parse().unwrap()).unwrap();
        // Three tracked: a fourth address lands on the shared overflow budget.
        r.check_source("192.0.2.3".parse().unwrap()).unwrap();
        assert!(r.check_source("192.0.2.4".parse().unwrap()).is_err());
        assert!(r.tracked() <= 4);
    }

    #[test]
    fn an_address_over_its_budget_does_not_spend_the_global_one() {
        let mut c = config(2);
        c.rate.global = Rate::new(0.01, 5);
        let r = Rates::new(&c);
        let flooder: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..50 {
            let _ = r.check_source(flooder);
        }
        // The flooder spent 2 of the 5 global requests; 3 remain for everyone else.
        let other: IpAddr = "192.0.2.10".parse().unwrap();
        let info = r.check_source(other).unwrap();
        assert_eq!((info.scope, info.remaining), (Scope::Ip, 1));
        assert!(r.check_source(other).is_ok());
        let third: IpAddr = "192.0.2.11".parse().unwrap();
        let info = r.check_source(third).unwrap();
        assert_eq!((info.scope, info.remaining), (Scope::Global, 0));
    }
}
