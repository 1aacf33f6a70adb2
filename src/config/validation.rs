//! `[payload]`, `[validation]`, `[quotas]` and `[backpressure]`: what a request body and a job may
//! be, and how much one principal or tenant may hold. All of it is reloadable (see
//! [`crate::rules`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use serde::Deserialize;

use crate::http::strict_json::DEPTH_CEILING;
use crate::job::envelope::is_valid_job_type;

/// `[payload]`: sizes and shapes of request bodies (OJS payload limits, security SEC-013..017).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PayloadConfig {
    /// Largest `args` of one job, serialized, in bytes.
    pub max_args_bytes: usize,
    /// Largest `meta` of one job, serialized, in bytes.
    pub max_meta_bytes: usize,
    /// Largest body of a batch enqueue, in bytes.
    pub max_batch_bytes: usize,
    /// Deepest JSON nesting a body may have (containers; `{}` is 1). At most 100.
    pub max_json_depth: usize,
    /// Seconds a client has to send the whole body once the head is in (at most 60).
    pub body_read_timeout_secs: u64,
}

impl Default for PayloadConfig {
    fn default() -> Self {
        Self {
            max_args_bytes: 1024 * 1024,
            max_meta_bytes: 64 * 1024,
            max_batch_bytes: 10 * 1024 * 1024,
            max_json_depth: 32,
            body_read_timeout_secs: 30,
        }
    }
}

/// `[validation]`: which job types exist.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// The job-type allowlist (OJS security SEC-008): exact names, `prefix.*` globs, or `*` for
    /// every type that matches the pattern.
    pub job_types: Vec<String>,
    /// A JSON Schema for the `args` of a job type (`[validation.schemas]`, type = file path,
    /// relative to the config file's folder). Compiled at start and on reload; remote `$ref`s
    /// are never fetched.
    pub schemas: BTreeMap<String, PathBuf>,
    /// How far ahead a job may be scheduled (`delay_until`, `scheduled_at`), in seconds; a
    /// later time is refused 400 `invalid_request`. One year by default, a hundred years at
    /// most (the OJS conformance suites schedule jobs for 2099).
    pub max_schedule_ahead_secs: u64,
}

/// One year, the default scheduling horizon.
pub const DEFAULT_SCHEDULE_HORIZON_SECS: u64 = 365 * 86_400;

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            job_types: vec!["*".into()],
            schemas: BTreeMap::new(),
            max_schedule_ahead_secs: DEFAULT_SCHEDULE_HORIZON_SECS,
        }
    }
}

impl ValidationConfig {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        // Entries are named by position, never by value (config errors do not echo values).
        for (i, entry) in self.job_types.iter().enumerate() {
            let ok = entry == "*"
                || is_valid_job_type(entry)
                || entry.strip_suffix(".*").is_some_and(is_valid_job_type);
            if !ok {
                bail!(
                    "validation.job_types entry #{}: neither a job type, a \"prefix.*\" glob nor \
                     \"*\"",
                    i + 1
                );
            }
        }
        if let Some(i) = self.schemas.keys().position(|t| !is_valid_job_type(t)) {
            bail!(
                "validation.schemas: key #{} (in sorted order) is not a job type",
                i + 1
            );
        }
        if !(1..=100 * DEFAULT_SCHEDULE_HORIZON_SECS).contains(&self.max_schedule_ahead_secs) {
            bail!(
                "validation.max_schedule_ahead_secs must be from 1 to 3153600000 (a hundred years)"
            );
        }
        Ok(())
    }
}

/// `[quotas]`: how much one principal may hold and ask for (GopherQueue §5), and how much one
/// tenant may hold (OJS multi-tenancy §8). Zero means no limit for the counts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Non-terminal jobs (scheduled, available, pending, retryable, active) one principal owns.
    pub max_pending_jobs_per_principal: u64,
    /// Jobs one principal holds active (fetched and not yet acked or nacked).
    pub max_running_jobs_per_principal: u64,
    /// Highest `options.priority` a job may ask for (the wire range is -100..=100).
    pub max_priority: i32,
    /// Longest `options.timeout_ms` a job may ask for, in ms.
    pub max_timeout_ms: u64,
    /// Non-terminal jobs one tenant holds.
    pub max_pending_jobs_per_tenant: u64,
    /// Distinct queues one tenant may have jobs in.
    pub max_queues_per_tenant: u64,
    /// Jobs of one tenant active at once, over all its queues (multi-tenancy
    /// `max_concurrency`; fetch claims no more).
    pub max_active_jobs_per_tenant: u64,
    /// Scheduled (future) jobs of one tenant.
    pub max_scheduled_jobs_per_tenant: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            max_pending_jobs_per_principal: 100_000,
            max_running_jobs_per_principal: 10_000,
            max_priority: 100,
            max_timeout_ms: 3_600_000,
            max_pending_jobs_per_tenant: 1_000_000,
            max_queues_per_tenant: 1_000,
            max_active_jobs_per_tenant: 100_000,
            max_scheduled_jobs_per_tenant: 100_000,
        }
    }
}

/// `[backpressure]`: the bound of queues that have none set through the admin API.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackpressureConfig {
    /// Non-terminal jobs a queue may hold; 0 means unbounded.
    pub default_max_depth: u64,
    /// Longest a `block` queue makes an enqueue wait for room (`OJS-Block-Timeout` is capped
    /// at this), in seconds.
    pub max_block_secs: u64,
    /// Seconds a refused producer is told to wait (`Retry-After`).
    pub retry_after_secs: u64,
}

impl Default for BackpressureConfig {
    fn default() -> Self {
        Self {
            default_max_depth: 1_000_000,
            max_block_secs: 30,
            retry_after_secs: 5,
        }
    }
}

impl PayloadConfig {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if !(1..=DEPTH_CEILING).contains(&self.max_json_depth) {
            bail!("payload.max_json_depth must be from 1 to {DEPTH_CEILING}");
        }
        if !(1..=60).contains(&self.body_read_timeout_secs) {
            bail!("payload.body_read_timeout_secs must be from 1 to 60");
        }
        if self.max_args_bytes == 0 || self.max_meta_bytes == 0 || self.max_batch_bytes < 1024 {
            bail!("payload limits must be positive (max_batch_bytes at least 1024)");
        }
        Ok(())
    }
}

impl QuotaConfig {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if !(-100..=100).contains(&self.max_priority) {
            bail!("quotas.max_priority must be from -100 to 100");
        }
        if self.max_timeout_ms == 0 {
            bail!("quotas.max_timeout_ms must be positive");
        }
        Ok(())
    }
}

impl BackpressureConfig {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if self.max_block_secs > 60 {
            bail!("backpressure.max_block_secs must be at most 60");
        }
        if self.retry_after_secs == 0 {
            bail!("backpressure.retry_after_secs must be positive");
        }
        Ok(())
    }
}
