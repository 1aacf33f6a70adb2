//! The request rules the HTTP layer applies before the queue sees a job: payload limits, JSON
//! strictness, envelope rules, the job-type allowlist, quotas and the default queue bound. They
//! are built from the config at start and published through `arc-swap`, so [`RulesHandle::reload`]
//! swaps them for every later request without a restart; requests in flight keep the snapshot
//! they started with.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use serde_json::Value;

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

    /// How many names and globs the list holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len() + usize::from(self.any)
    }

    /// Whether the list allows nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where `args` broke a job type's schema: JSON pointers into the args and into the schema.
/// The offending value itself is never reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaViolation {
    pub instance_path: String,
    pub schema_path: String,
}

/// The compiled JSON Schemas of `args`, by job type.
#[derive(Clone, Default)]
pub struct Schemas(HashMap<String, Arc<jsonschema::Validator>>);

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Schemas {
    /// Reads and compiles every configured schema; any unreadable or invalid one is an error
    /// naming its file.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let mut out = HashMap::new();
        for (job_type, path) in &config.validation.schemas {
            let path = config.base_dir.join(path);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the schema {}", path.display()))?;
            let schema: Value = serde_json::from_str(&text)
                .with_context(|| format!("the schema {} is not JSON", path.display()))?;
            let validator = jsonschema::validator_for(&schema).map_err(|e| {
                anyhow::anyhow!(
                    "the schema {} is not a valid JSON Schema: {e}",
                    path.display()
                )
            })?;
            out.insert(job_type.clone(), Arc::new(validator));
        }
        Ok(Self(out))
    }

    /// Checks `args` against the schema of `job_type`, if it has one.
    pub fn check(&self, job_type: &str, args: &Value) -> Result<(), SchemaViolation> {
        let Some(validator) = self.0.get(job_type) else {
            return Ok(());
        };
        match validator.iter_errors(args).next() {
            None => Ok(()),
            Some(e) => Err(SchemaViolation {
                instance_path: e.instance_path().to_string(),
                schema_path: e.schema_path().to_string(),
            }),
        }
    }

    /// How many job types have a schema.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no job type has a schema.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One snapshot of the rules.
#[derive(Clone, Debug)]
pub struct Rules {
    pub envelope: EnvelopeRules,
    pub max_body_bytes: usize,
    pub payload: PayloadConfig,
    pub allowlist: Allowlist,
    pub schemas: Schemas,
    pub quotas: QuotaConfig,
    pub backpressure: BackpressureConfig,
}

impl Rules {
    /// The rules a config asks for, without schemas (they need files: see [`Rules::load`]).
    #[must_use]
    pub fn from_config(config: &Config) -> Self {
        Self {
            envelope: config.envelope_rules(),
            max_body_bytes: config.server.max_body_bytes,
            payload: config.payload.clone(),
            allowlist: Allowlist::new(&config.validation.job_types),
            schemas: Schemas::default(),
            quotas: config.quotas.clone(),
            backpressure: config.backpressure.clone(),
        }
    }

    /// The rules a config asks for, with its schemas read and compiled.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            schemas: Schemas::load(config)?,
            ..Self::from_config(config)
        })
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
            max_active_per_tenant: self.quotas.max_active_jobs_per_tenant,
            max_scheduled_per_tenant: self.quotas.max_scheduled_jobs_per_tenant,
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
    /// Publishes the rules of a validated config; an unreadable or invalid schema is an error.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        Ok(Self(Arc::new(ArcSwap::from_pointee(Rules::load(config)?))))
    }

    /// The current snapshot.
    #[must_use]
    pub fn current(&self) -> Arc<Rules> {
        self.0.load_full()
    }

    /// Publishes rules already built (and so validated) from a config.
    pub fn publish(&self, rules: Rules) {
        if !rules.allowlist.is_open() {
            tracing::info!(
                entries = rules.allowlist.len(),
                "job-type allowlist in force"
            );
        }
        self.0.store(Arc::new(rules));
    }

    /// Validates `config` and, only if it is valid, swaps its rules in for every later request.
    /// An invalid config leaves the running rules untouched.
    pub fn reload(&self, config: &Config) -> anyhow::Result<()> {
        config.validate()?;
        self.publish(Rules::load(config)?);
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
        let handle = RulesHandle::new(&Config::default()).unwrap();
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

    fn config_with_schema(dir: &std::path::Path, schema: &str) -> Config {
        std::fs::write(dir.join("email.json"), schema).unwrap();
        let mut c =
            Config::parse("[validation.schemas]\n\"email.send\" = \"email.json\"\n").unwrap();
        c.base_dir = dir.to_path_buf();
        c
    }

    #[test]
    fn schemas_check_args_and_name_the_failing_path() {
        let dir = tempfile::tempdir().unwrap();
        let schema = r#"{"type": "array", "prefixItems": [{"type": "object",
            "properties": {"to": {"type": "string", "format": "email"}}, "required": ["to"]}],
            "items": false}"#;
        let handle = RulesHandle::new(&config_with_schema(dir.path(), schema)).unwrap();
        let rules = handle.current();
        assert_eq!(rules.schemas.len(), 1);
        let ok = serde_json::json!([{"to": "a@example.com"}]);
        rules.schemas.check("email.send", &ok).unwrap();
        let bad = serde_json::json!([{"to": 5}]);
        let err = rules.schemas.check("email.send", &bad).unwrap_err();
        assert_eq!(err.instance_path, "/0/to");
        assert!(rules
            .schemas
            .check("email.send", &serde_json::json!([{"to": "x"}, 2]))
            .is_err());
        // Types without a schema are not checked.
        rules.schemas.check("other.type", &bad).unwrap();
    }

    #[test]
    fn a_bad_schema_is_an_error_at_start_and_a_reload_keeps_the_old_rules() {
        let dir = tempfile::tempdir().unwrap();
        assert!(RulesHandle::new(&config_with_schema(dir.path(), "{not json")).is_err());
        assert!(RulesHandle::new(&config_with_schema(dir.path(), r#"{"type": 5}"#)).is_err());
        // A remote reference is never fetched: the schema does not compile.
        let remote = r#"{"$ref": "https://example.com/schema.json"}"#;
        assert!(RulesHandle::new(&config_with_schema(dir.path(), remote)).is_err());

        let handle =
            RulesHandle::new(&config_with_schema(dir.path(), r#"{"type": "array"}"#)).unwrap();
        assert_eq!(handle.current().schemas.len(), 1);
        assert!(handle
            .reload(&config_with_schema(dir.path(), "{broken"))
            .is_err());
        assert_eq!(handle.current().schemas.len(), 1);
        handle.reload(&Config::default()).unwrap();
        assert!(handle.current().schemas.is_empty());
    }
}
