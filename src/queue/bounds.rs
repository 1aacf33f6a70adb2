//! Queue depth bounds and their strategies (`ojs-backpressure.md`), and the per-principal and
//! per-tenant quotas the queue enforces on enqueue and fetch. Pure types and decisions; the actor
//! keeps the counts and the configured bounds (persisted in the `queue_config` table).

use serde::{Deserialize, Serialize};

/// What happens to an enqueue when the queue is at its bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Refuse at once: 429 `queue_full` with `Retry-After` (the default).
    #[default]
    Reject,
    /// Hold the request until there is room or the block timeout passes, then refuse.
    Block,
    /// Accept, and discard the oldest `available` job of the queue.
    DropOldest,
}

impl Strategy {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Block => "block",
            Self::DropOldest => "drop_oldest",
        }
    }
}

/// The bound of one queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueBound {
    /// Non-terminal jobs the queue may hold; 0 means unbounded.
    pub max_depth: u64,
    pub strategy: Strategy,
    /// Fraction of the bound from which successful enqueues carry pressure headers.
    pub warning_threshold: f64,
}

impl QueueBound {
    /// The bound of queues nobody configured.
    #[must_use]
    pub fn default_with(max_depth: u64) -> Self {
        Self {
            max_depth,
            strategy: Strategy::Reject,
            warning_threshold: 0.8,
        }
    }

    /// Whether a queue of `depth` jobs has no room for one more.
    #[must_use]
    pub fn is_full(&self, depth: u64) -> bool {
        self.max_depth > 0 && depth >= self.max_depth
    }

    /// `depth / max_depth` when at or past the warning threshold (and bounded).
    #[must_use]
    pub fn pressure(&self, depth: u64) -> Option<f64> {
        if self.max_depth == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let p = (depth as f64 / self.max_depth as f64).min(1.0);
        (p >= self.warning_threshold).then_some(p)
    }
}

/// The limits in force for one enqueue or fetch, from the current rules (so a reload applies to
/// the next request). Zero means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// The bound of queues with none configured.
    pub default_max_depth: u64,
    pub max_pending_per_principal: u64,
    pub max_running_per_principal: u64,
    pub max_pending_per_tenant: u64,
    pub max_queues_per_tenant: u64,
    pub max_active_per_tenant: u64,
    pub max_scheduled_per_tenant: u64,
}

/// Which quota refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    PrincipalPending,
    PrincipalRunning,
    TenantPending,
    TenantQueues,
    TenantActive,
    TenantScheduled,
}

impl Quota {
    /// The name in error details and audit records.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrincipalPending => "max_pending_jobs_per_principal",
            Self::PrincipalRunning => "max_running_jobs_per_principal",
            Self::TenantPending => "max_pending_jobs_per_tenant",
            Self::TenantQueues => "max_queues_per_tenant",
            Self::TenantActive => "max_active_jobs_per_tenant",
            Self::TenantScheduled => "max_scheduled_jobs_per_tenant",
        }
    }

    /// Whether the limit is the tenant's (OJS multi-tenancy §8.2: `tenant_limit_exceeded`).
    #[must_use]
    pub fn is_tenant(self) -> bool {
        !matches!(self, Self::PrincipalPending | Self::PrincipalRunning)
    }
}

/// How a queue's bound is keyed in the `queue_config` table: tenants cannot contain `/`.
#[must_use]
pub fn table_key(tenant: Option<&str>, queue: &str) -> String {
    format!("{}/{queue}", tenant.unwrap_or(""))
}

/// The inverse of [`table_key`].
#[must_use]
pub fn parse_table_key(key: &str) -> Option<(Option<String>, String)> {
    let (tenant, queue) = key.split_once('/')?;
    Some((
        (!tenant.is_empty()).then(|| tenant.to_string()),
        queue.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_pressure() {
        let b = QueueBound {
            max_depth: 10,
            strategy: Strategy::Reject,
            warning_threshold: 0.5,
        };
        assert!(!b.is_full(9));
        assert!(b.is_full(10));
        assert_eq!(b.pressure(4), None);
        assert_eq!(b.pressure(5), Some(0.5));
        assert_eq!(b.pressure(7), Some(0.7));
        let unbounded = QueueBound::default_with(0);
        assert!(!unbounded.is_full(u64::MAX));
        assert_eq!(unbounded.pressure(5), None);
    }

    #[test]
    fn table_keys_round_trip() {
        for (t, q) in [(None, "default"), (Some("acme"), "emails.eu")] {
            let key = table_key(t, q);
            assert_eq!(
                parse_table_key(&key),
                Some((t.map(str::to_string), q.to_string()))
            );
        }
    }
}
