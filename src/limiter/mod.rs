//! The limiter actor: owns the `[limits]` configuration and publishes what the request path
//! checks inline (GCRA rate limiters in an `ArcSwap`, the connection counts, the abuse state).
//! The actor applies reloads and, on a timer, forgets idle keys so memory stays bounded and
//! refreshes the gauges. Nothing on the request path waits for it.
//!
//! Who calls it: `app.rs` spawns it and registers [`connections::on_connect`]; the
//! [`crate::http::limits::limits`] middleware checks connections and the global and per-address budgets
//! before authentication; the auth extractor checks the tenant and principal budgets
//! ([`LimiterHandle::check_caller`]); the job and worker services consult [`abuse`] (`services::abuse`); SIGHUP
//! runs [`crate::config::reload::reload_from_file`].

pub mod abuse;
pub mod connections;
pub mod rates;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use crate::clock::Clock;
use crate::config::limits::LimitsConfig;
use abuse::Abuse;
use connections::Connections;
use rates::Rates;

/// The hint every rate-limit refusal carries (OJS rate limiting §10.4).
pub const RATE_LIMIT_HINT: &str = "Too many requests. Retry after the Retry-After header value, \
                                   or consider adjusting the rate limit configuration.";

/// The limiter's messages.
enum Msg {
    Reload {
        limits: Box<LimitsConfig>,
        reply: oneshot::Sender<()>,
    },
}

struct Published {
    config: ArcSwap<LimitsConfig>,
    rates: ArcSwap<Rates>,
    connections: Arc<Connections>,
    abuse: Abuse,
    /// The wall clock of the abuse windows and the rate-limit reset headers. The GCRA budgets
    /// (`governor`) keep their own monotonic clock: they measure intervals, not dates.
    clock: Clock,
}

/// A cheap handle to the limiter: inline checks on what the actor publishes, and reloads.
#[derive(Clone)]
pub struct LimiterHandle {
    published: Arc<Published>,
    tx: mpsc::Sender<Msg>,
}

/// The limiter is gone (the server is stopping).
#[derive(Debug, thiserror::Error)]
#[error("the limiter is unavailable")]
pub struct Unavailable;

impl LimiterHandle {
    /// Spawns the actor on the current tokio runtime; abuse windows run on `clock`.
    #[must_use]
    pub fn spawn(limits: &LimitsConfig, clock: Clock) -> Self {
        let published = Arc::new(Published {
            config: ArcSwap::from_pointee(limits.clone()),
            rates: ArcSwap::from_pointee(Rates::new(limits)),
            connections: Arc::new(Connections::default()),
            abuse: Abuse::new(),
            clock,
        });
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(run(published.clone(), rx));
        Self { published, tx }
    }

    /// The limits in force.
    #[must_use]
    pub fn config(&self) -> arc_swap::Guard<Arc<LimitsConfig>> {
        self.published.config.load()
    }

    /// The rate limiters in force.
    #[must_use]
    pub fn rates(&self) -> arc_swap::Guard<Arc<Rates>> {
        self.published.rates.load()
    }

    /// The open-connection counts.
    #[must_use]
    pub fn connections(&self) -> &Arc<Connections> {
        &self.published.connections
    }

    /// The abuse detector.
    #[must_use]
    pub fn abuse(&self) -> &Abuse {
        &self.published.abuse
    }

    /// The limiter's clock.
    #[must_use]
    pub fn clock(&self) -> &Clock {
        &self.published.clock
    }

    /// Publishes new limits (already validated); returns once they are in force. Rate
    /// budgets start full again under the new limits.
    pub async fn reload(&self, limits: LimitsConfig) -> Result<(), Unavailable> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Reload {
                limits: Box::new(limits),
                reply,
            })
            .await
            .map_err(|_| Unavailable)?;
        rx.await.map_err(|_| Unavailable)
    }
}

/// Milliseconds since the Unix epoch by `clock`, as the abuse detector counts them.
#[must_use]
pub fn unsigned_ms(clock: &Clock) -> u64 {
    u64::try_from(clock.now_ms()).unwrap_or(0)
}

fn clean_up(published: &Published) {
    let config = published.config.load();
    let rates = published.rates.load();
    rates.prune();
    let idle_ms = config
        .abuse
        .baseline_half_life_secs
        .saturating_mul(4)
        .max(config.abuse.window_secs)
        .saturating_mul(1000);
    published
        .abuse
        .prune(unsigned_ms(&published.clock), idle_ms);
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::gauge!(crate::metrics::RATE_LIMIT_KEYS).set(rates.tracked() as f64);
        metrics::gauge!(crate::metrics::CONNECTIONS_OPEN).set(published.connections.total() as f64);
        metrics::gauge!(crate::metrics::ABUSE_TRACKED).set(published.abuse.tracked() as f64);
    }
    debug!(
        keys = rates.tracked(),
        connections = published.connections.total(),
        "limiter clean-up"
    );
}

fn interval(config: &LimitsConfig) -> tokio::time::Interval {
    let period = Duration::from_secs(config.cleanup_interval_secs.max(1));
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

async fn run(published: Arc<Published>, mut rx: mpsc::Receiver<Msg>) {
    let mut timer = interval(&published.config.load());
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Reload { limits, reply }) => {
                    published.rates.store(Arc::new(Rates::new(&limits)));
                    timer = interval(&limits);
                    published.config.store(Arc::from(limits));
                    info!("limits reloaded");
                    let _ = reply.send(());
                }
                // Every handle is gone.
                None => break,
            },
            _ = timer.tick() => clean_up(&published),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::limits::Rate;

    #[tokio::test]
    async fn a_reload_publishes_new_budgets() {
        let mut limits = LimitsConfig::default();
        limits.rate.enqueue = Rate::new(0.01, 1);
        let h = LimiterHandle::spawn(&limits, Clock::system());
        let check = |h: &LimiterHandle| h.rates().check_caller("p", None, rates::Class::Enqueue);
        assert!(check(&h).is_ok());
        assert!(check(&h).is_err());
        limits.rate.enqueue = Rate::new(0.01, 5);
        h.reload(limits).await.unwrap();
        assert_eq!(h.config().rate.enqueue.burst, 5);
        assert_eq!(check(&h).unwrap().limit, 5);
        clean_up(&h.published);
    }
}
