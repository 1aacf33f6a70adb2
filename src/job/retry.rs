//! Retry policy (`ojs-retry.md`): parsing with the spec's defaults, backoff with jitter, and
//! matching of non-retryable error types. Pure functions; the queue actor applies them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::envelope::Invalid;
use crate::clock::parse_iso_duration;

/// How the delay grows from one attempt to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    Exponential,
    Linear,
    Constant,
}

/// What happens to a job that has no attempts left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExhaustion {
    Discard,
    DeadLetter,
}

/// A job's effective retry policy: the submitted fields merged over the spec's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_interval_ms: u64,
    pub backoff_coefficient: f64,
    pub max_interval_ms: u64,
    pub jitter: bool,
    pub backoff: Backoff,
    pub non_retryable_errors: Vec<String>,
    pub on_exhaustion: OnExhaustion,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_interval_ms: 1000,
            backoff_coefficient: 2.0,
            max_interval_ms: 300_000,
            jitter: true,
            backoff: Backoff::Exponential,
            non_retryable_errors: Vec::new(),
            on_exhaustion: OnExhaustion::Discard,
        }
    }
}

/// Upper bounds that keep a policy from scheduling absurd work.
const MAX_ATTEMPTS_LIMIT: u64 = 1000;
const MAX_INTERVAL_LIMIT_MS: u64 = 7 * 24 * 3_600_000;
const MAX_NON_RETRYABLE: usize = 64;

fn invalid(field: &str, why: &str) -> Invalid {
    Invalid::policy(format!("retry.{field} {why}"), field)
}

fn interval(obj: &Map<String, Value>, name: &str) -> Result<Option<u64>, Invalid> {
    if let Some(v) = obj.get(name) {
        let text = v
            .as_str()
            .ok_or_else(|| invalid(name, "must be an ISO 8601 duration"))?;
        let ms = parse_iso_duration(text)
            .ok_or_else(|| invalid(name, "must be an ISO 8601 duration such as PT1S"))?;
        return Ok(Some(ms));
    }
    let ms_name = format!("{name}_ms");
    if let Some(v) = obj.get(&ms_name) {
        let ms = v
            .as_u64()
            .ok_or_else(|| invalid(&ms_name, "must be a non-negative integer"))?;
        return Ok(Some(ms));
    }
    Ok(None)
}

impl RetryPolicy {
    /// Parses the `retry` object of a job's options, merging it over the defaults. Unknown keys
    /// are reported through `unknown` (the envelope decides whether they are an error).
    pub fn parse(value: &Value, unknown: &mut Vec<String>) -> Result<Self, Invalid> {
        let obj = value
            .as_object()
            .ok_or_else(|| invalid("", "must be an object").with_field("retry"))?;
        let mut policy = Self::default();
        for key in obj.keys() {
            if !matches!(
                key.as_str(),
                "max_attempts"
                    | "initial_interval"
                    | "initial_interval_ms"
                    | "backoff_coefficient"
                    | "max_interval"
                    | "max_interval_ms"
                    | "jitter"
                    | "backoff_strategy"
                    | "non_retryable_errors"
                    | "on_exhaustion"
            ) {
                unknown.push(super::envelope::attribute_name("options.retry.", key));
            }
        }
        if let Some(v) = obj.get("max_attempts") {
            let n = v
                .as_u64()
                .filter(|n| *n <= MAX_ATTEMPTS_LIMIT)
                .ok_or_else(|| invalid("max_attempts", "must be an integer between 0 and 1000"))?;
            policy.max_attempts = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(ms) = interval(obj, "initial_interval")? {
            if ms == 0 {
                return Err(invalid("initial_interval", "must be greater than zero"));
            }
            policy.initial_interval_ms = ms;
        }
        if let Some(v) = obj.get("backoff_coefficient") {
            let c = v
                .as_f64()
                .filter(|c| c.is_finite() && *c >= 1.0 && *c <= 100.0)
                .ok_or_else(|| {
                    invalid("backoff_coefficient", "must be a number from 1.0 to 100.0")
                })?;
            policy.backoff_coefficient = c;
        }
        if let Some(ms) = interval(obj, "max_interval")? {
            policy.max_interval_ms = ms;
        }
        if policy.max_interval_ms > MAX_INTERVAL_LIMIT_MS {
            return Err(invalid("max_interval", "must be at most seven days"));
        }
        if policy.max_interval_ms < policy.initial_interval_ms {
            return Err(invalid(
                "max_interval",
                "must be greater than or equal to initial_interval",
            ));
        }
        if let Some(v) = obj.get("jitter") {
            policy.jitter = v
                .as_bool()
                .ok_or_else(|| invalid("jitter", "must be a boolean"))?;
        }
        if let Some(v) = obj.get("backoff_strategy") {
            policy.backoff = match v.as_str() {
                Some("exponential") => Backoff::Exponential,
                Some("linear") => Backoff::Linear,
                Some("constant") => Backoff::Constant,
                _ => {
                    return Err(invalid(
                        "backoff_strategy",
                        "must be exponential, linear or constant",
                    ))
                }
            };
        }
        if let Some(v) = obj.get("non_retryable_errors") {
            let list = v
                .as_array()
                .filter(|a| a.len() <= MAX_NON_RETRYABLE)
                .ok_or_else(|| {
                    invalid(
                        "non_retryable_errors",
                        "must be an array of at most 64 strings",
                    )
                })?;
            policy.non_retryable_errors = list
                .iter()
                .map(|e| {
                    e.as_str()
                        .filter(|s| !s.is_empty() && s.len() <= 255)
                        .map(str::to_string)
                        .ok_or_else(|| {
                            invalid("non_retryable_errors", "must hold non-empty strings")
                        })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = obj.get("on_exhaustion") {
            policy.on_exhaustion = match v.as_str() {
                Some("discard") => OnExhaustion::Discard,
                Some("dead_letter") => OnExhaustion::DeadLetter,
                _ => return Err(invalid("on_exhaustion", "must be discard or dead_letter")),
            };
        }
        Ok(policy)
    }

    /// Whether another attempt is allowed after `attempt` attempts have run.
    #[must_use]
    pub fn has_attempts_left(&self, attempt: u32) -> bool {
        attempt < self.max_attempts.max(1)
    }

    /// The delay before the attempt after `attempt` (1-indexed), before jitter, capped at
    /// `max_interval`.
    #[must_use]
    pub fn base_delay_ms(&self, attempt: u32) -> u64 {
        let n = f64::from(attempt.max(1));
        #[allow(clippy::cast_precision_loss)]
        let initial = self.initial_interval_ms as f64;
        let raw = match self.backoff {
            Backoff::Exponential => initial * self.backoff_coefficient.powf(n - 1.0),
            Backoff::Linear => initial * n,
            Backoff::Constant => initial,
        };
        #[allow(clippy::cast_precision_loss)]
        let capped = raw.min(self.max_interval_ms as f64);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = capped.max(0.0) as u64;
        ms
    }

    /// The delay with jitter applied: `unit` is a uniform random number in `[0, 1)` that scales
    /// the delay into `[0.5, 1.5)` of the base (the spec's bounds).
    #[must_use]
    pub fn delay_ms(&self, attempt: u32, unit: f64) -> u64 {
        let base = self.base_delay_ms(attempt);
        if !self.jitter {
            return base;
        }
        #[allow(clippy::cast_precision_loss)]
        let jittered = base as f64 * (0.5 + unit.clamp(0.0, 1.0));
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = jittered as u64;
        ms
    }

    /// Whether an error type is listed as non-retryable. An entry ending in `.*` or `*` matches
    /// by prefix (`Auth.*` matches `AuthenticationError` and `Auth.TokenExpired`); any other
    /// entry matches exactly.
    #[must_use]
    pub fn is_non_retryable(&self, error_type: &str) -> bool {
        self.non_retryable_errors.iter().any(|pattern| {
            if let Some(prefix) = pattern
                .strip_suffix(".*")
                .or_else(|| pattern.strip_suffix('*'))
            {
                error_type.starts_with(prefix)
            } else {
                pattern == error_type
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<RetryPolicy, Invalid> {
        RetryPolicy::parse(&v, &mut Vec::new())
    }

    #[test]
    fn defaults_fill_missing_fields() {
        let p = parse(json!({"max_attempts": 5})).unwrap();
        assert_eq!(p.max_attempts, 5);
        assert_eq!(p.initial_interval_ms, 1000);
        assert!(p.jitter);
        assert_eq!(p.on_exhaustion, OnExhaustion::Discard);
    }

    #[test]
    fn backoff_shapes() {
        let exp =
            parse(json!({"initial_interval": "PT1S", "backoff_coefficient": 2.0, "jitter": false}))
                .unwrap();
        assert_eq!([1, 2, 3].map(|a| exp.delay_ms(a, 0.9)), [1000, 2000, 4000]);
        let lin = parse(json!({"initial_interval": "PT1S", "backoff_coefficient": 1.0, "backoff_strategy": "linear", "jitter": false})).unwrap();
        assert_eq!([1, 2, 3].map(|a| lin.delay_ms(a, 0.0)), [1000, 2000, 3000]);
        let capped = parse(json!({"initial_interval": "PT1S", "backoff_coefficient": 10.0, "max_interval": "PT2S", "jitter": false})).unwrap();
        assert_eq!(
            [1, 2, 3].map(|a| capped.delay_ms(a, 0.0)),
            [1000, 2000, 2000]
        );
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        let p = parse(json!({"initial_interval": "PT2S", "backoff_coefficient": 1.0})).unwrap();
        assert_eq!(p.delay_ms(1, 0.0), 1000);
        assert!(p.delay_ms(1, 0.999_999) < 3000);
    }

    #[test]
    fn invalid_policies_name_the_field() {
        for (v, field) in [
            (json!({"max_attempts": -1}), "max_attempts"),
            (json!({"backoff_coefficient": 0.5}), "backoff_coefficient"),
            (json!({"initial_interval": "soon"}), "initial_interval"),
            (
                json!({"initial_interval": "PT10S", "max_interval": "PT1S"}),
                "max_interval",
            ),
            (json!({"on_exhaustion": "explode"}), "on_exhaustion"),
            (json!({"jitter": "yes"}), "jitter"),
        ] {
            let err = parse(v).unwrap_err();
            assert!(
                err.message.contains(field),
                "{} should name {field}",
                err.message
            );
        }
    }

    #[test]
    fn non_retryable_matching() {
        let p = parse(json!({"non_retryable_errors": ["FatalError", "Auth.*"]})).unwrap();
        assert!(p.is_non_retryable("FatalError"));
        assert!(!p.is_non_retryable("FatalErrorX"));
        assert!(p.is_non_retryable("AuthenticationError"));
        assert!(p.is_non_retryable("Auth.TokenExpired"));
        assert!(!p.is_non_retryable("NetworkError"));
    }
}
