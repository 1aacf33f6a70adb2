//! The request rules the HTTP layer applies before the queue sees a job: payload limits, JSON
//! strictness, envelope rules, the job-type allowlist, quotas and the default queue bound. They
//! are built from the config at start and published through `arc-swap`, so [`RulesHandle::reload`]
//! swaps them for every later request without a restart; requests in flight keep the snapshot
//! they started with.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::validation::{BackpressureConfig, PayloadConfig, QuotaConfig};
use crate::config::Config;
use crate::job::envelope::EnvelopeRules;

/// The job types that may be enqueued: exact names and `prefix.*` globs (OJS security SEC-008).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    any: bool,
    exact: HashSet<String>,
    /// Each glob's prefix with its trailing dot (`reports.` for `reports.*`).
    prefixes: Vec<String>,
}

impl Allowlist {
    /// Builds the list from config entries (already checked by the config validation).
    #[must_use]
    pub fn new(entries: &[String]) -> Self {
        let mut list = Self::default();
        for entry in entries {
            if entry == "*" {
                list.any = true;
            } else if let Some(prefix) = entry.strip_suffix('*') {
                list.prefixes.push(prefix.to_string());
            } else {
                list.exact.insert(entry.clone());
            }
        }
        list
    }

    /// Whether `job_type` (already pattern-checked) may be enqueued. `reports.*` allows
    /// `reports.daily` and `reports.daily.eu`, not `reports` itself.
    #[must_use]
    pub fn allows(&self, job_type: &str) -> bool {
        self.any
            || self.exact.contains(job_type)
            || self
                .prefixes
                .iter()
                .any(|p| job_type.len() > p.len() && job_type.starts_with(p.as_str()))
    }

    /// Whether every well-formed type is allowed.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.any
    }
}

/// One snapshot of the rules.
#[derive(Clone, Debug)]
pub struct Rules {
    pub envelope: EnvelopeRules,
    pub max_body_bytes: usize,
    pub payload: PayloadConfig,
    pub allowlist: Allowlist,
    pub quotas: QuotaConfig,
    pub backpressure: BackpressureConfig,
}

impl Rules {
    /// The rules a config asks for.
    #[must_use]
    pub fn from_config(config: &Config) -> Self {
        Self {
            envelope: config.envelope_rules(),
            max_body_bytes: config.server.max_body_bytes,
            payload: config.payload.clone(),
            allowlist: Allowlist::new(&config.validation.job_types),
            quotas: config.quotas.clone(),
            backpressure: config.backpressure.clone(),
        }
    }

    /// The queue's limits for one enqueue or fetch.
    #[must_use]
    pub fn limits(&self) -> crate::queue::bounds::Limits {
        crate::queue::bounds::Limits {
            default_max_depth: self.backpressure.default_max_depth,
            max_pending_per_principal: self.quotas.max_pending_jobs_per_principal,
            max_running_per_principal: self.quotas.max_running_jobs_per_principal,
            max_pending_per_tenant: self.quotas.max_pending_jobs_per_tenant,
            max_queues_per_tenant: self.quotas.max_queues_per_tenant,
        }
    }

    /// How long a body may take to arrive.
    #[must_use]
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.payload.body_read_timeout_secs)
    }
}

/// The published rules; cheap to clone, read without locks.
#[derive(Clone, Debug)]
pub struct RulesHandle(Arc<ArcSwap<Rules>>);

impl RulesHandle {
    /// Publishes the rules of a validated config.
    #[must_use]
    pub fn new(config: &Config) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(Rules::from_config(config))))
    }

    /// The current snapshot.
    #[must_use]
    pub fn current(&self) -> Arc<Rules> {
        self.0.load_full()
    }

    /// Validates `config` and, only if it is valid, swaps its rules in for every later request.
    /// An invalid config leaves the running rules untouched.
    pub fn reload(&self, config: &Config) -> anyhow::Result<()> {
        config.validate()?;
        let rules = Rules::from_config(config);
        if !rules.allowlist.is_open() {
            tracing::info!(
                entries = config.validation.job_types.len(),
                "job-type allowlist in force"
            );
        }
        self.0.store(Arc::new(rules));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_matches_exact_names_and_globs() {
        let list = Allowlist::new(&["email.send".into(), "reports.*".into()]);
        assert!(list.allows("email.send"));
        assert!(!list.allows("email.sendx"));
        assert!(!list.allows("email"));
        assert!(list.allows("reports.daily"));
        assert!(list.allows("reports.daily.eu"));
        assert!(!list.allows("reports"));
        assert!(!list.allows("reportsx.daily"));
        assert!(!list.is_open());
        assert!(Allowlist::new(&["*".into()]).allows("anything.at-all"));
        assert!(!Allowlist::new(&[]).allows("email.send"));
    }

    #[test]
    fn reload_swaps_the_rules_and_a_bad_config_keeps_the_old_ones() {
        let handle = RulesHandle::new(&Config::default());
        let before = handle.current();
        assert!(before.allowlist.allows("email.send"));
        assert_eq!(before.payload.max_json_depth, 32);

        let tight = Config::parse(
            "[validation]\njob_types = [\"reports.*\"]\n[payload]\nmax_json_depth = 8\n\
             [quotas]\nmax_priority = 10\n",
        )
        .unwrap();
        handle.reload(&tight).unwrap();
        let after = handle.current();
        assert!(!after.allowlist.allows("email.send"));
        assert!(after.allowlist.allows("reports.daily"));
        assert_eq!(after.payload.max_json_depth, 8);
        assert_eq!(after.quotas.max_priority, 10);
        // The snapshot taken before the reload is unchanged.
        assert!(before.allowlist.allows("email.send"));

        let bad = Config::parse("[payload]\nmax_json_depth = 1000\n").unwrap();
        assert!(handle.reload(&bad).is_err());
        assert_eq!(handle.current().payload.max_json_depth, 8);
    }
}
