//! Client job envelopes (`POST /ojs/v1/jobs`) turned into a validated [`NewJob`]. Everything a
//! client can get wrong is caught here, before the queue sees the job, so a rejected request
//! changes nothing. Error messages name the field, never echo the client's value.

use std::borrow::Cow;

use serde_json::{json, Map, Value};

use super::{JobId, JobSecurity, Payload, RetryPolicy, Visibility};
use crate::clock::{parse_time_spec, Millis};
use crate::error::{field_details, Code, ErrorCode};

/// Why an envelope was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvalidKind {
    /// Structurally wrong: missing or mistyped required fields, bad patterns (400).
    Request,
    /// A semantically invalid retry policy (422).
    Policy,
    /// Attributes the server does not know, in `reject` mode (422).
    UnknownFields,
    /// `args` or `meta` larger than its limit (413).
    TooLarge,
}

/// A validation failure with the field it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub kind: InvalidKind,
    pub message: String,
    pub field: Option<String>,
    pub unknown: Vec<String>,
}

impl Invalid {
    pub(crate) fn request(message: impl Into<String>, field: &str) -> Self {
        Self {
            kind: InvalidKind::Request,
            message: message.into(),
            field: Some(field.to_string()),
            unknown: Vec::new(),
        }
    }

    pub(crate) fn policy(message: impl Into<String>, field: &str) -> Self {
        Self {
            kind: InvalidKind::Policy,
            message: message.into(),
            field: Some(format!("options.retry.{field}")),
            unknown: Vec::new(),
        }
    }

    fn too_large(field: &str, limit: usize) -> Self {
        Self {
            kind: InvalidKind::TooLarge,
            message: format!("{field} exceeds {limit} bytes"),
            field: Some(field.to_string()),
            unknown: Vec::new(),
        }
    }

    pub(crate) fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_string());
        self
    }
}

/// The refused envelope's answer: the code of its kind, its message and the field it concerns.
impl ErrorCode for Invalid {
    fn code(&self) -> Code {
        match self.kind {
            InvalidKind::Request => Code::InvalidRequest,
            InvalidKind::Policy => Code::InvalidRetryPolicy,
            InvalidKind::UnknownFields => Code::Unprocessable,
            InvalidKind::TooLarge => Code::PayloadTooLarge,
        }
    }

    fn message(&self) -> Cow<'static, str> {
        self.message.clone().into()
    }

    fn details(&self) -> Option<Value> {
        match self.kind {
            InvalidKind::Request => self.field.as_deref().map(field_details),
            InvalidKind::Policy | InvalidKind::TooLarge => Some(json!({ "field": self.field })),
            InvalidKind::UnknownFields => Some(json!({ "unknown_fields": self.unknown })),
        }
    }

    fn hint(&self) -> Option<&'static str> {
        match self.kind {
            InvalidKind::UnknownFields => Some(
                "remove the attributes, or set [api] unknown_fields = \"preserve\" on the server",
            ),
            _ => self.code().row().hint,
        }
    }
}

/// How strictly envelopes are read; from the `[api]` and `[testing]` config.
#[derive(Clone, Debug)]
pub struct EnvelopeRules {
    /// Keep unknown top-level attributes and echo them (the suites' forward compatibility)
    /// instead of refusing them (OJS security SEC-012).
    pub preserve_unknown: bool,
    /// Honour `options.metadata.test_directive` (conformance runs only).
    pub honour_test_directives: bool,
    pub default_timeout_ms: u64,
    pub default_visibility_timeout_ms: u64,
    /// Largest serialized `args`, in bytes (413 above it).
    pub max_args_bytes: usize,
    /// Largest serialized `meta`, in bytes (413 above it).
    pub max_meta_bytes: usize,
    /// How far ahead of now a job may be scheduled, in ms (`[validation]
    /// max_schedule_ahead_secs`).
    pub max_schedule_ahead_ms: u64,
}

impl Default for EnvelopeRules {
    fn default() -> Self {
        Self {
            preserve_unknown: false,
            honour_test_directives: false,
            default_timeout_ms: 30_000,
            default_visibility_timeout_ms: 30_000,
            max_args_bytes: 1024 * 1024,
            max_meta_bytes: 64 * 1024,
            max_schedule_ahead_ms: crate::config::validation::DEFAULT_SCHEDULE_HORIZON_SECS * 1000,
        }
    }
}

/// A validated job as the client asked for it; the queue adds the system-managed fields.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: Option<JobId>,
    pub job_type: String,
    pub queue: String,
    pub priority: i32,
    pub args: Payload,
    pub meta: Option<Payload>,
    pub extra: Option<Payload>,
    pub tags: Vec<String>,
    pub schema: Option<String>,
    pub unique: Option<Payload>,
    pub retry: RetryPolicy,
    pub timeout_ms: u64,
    pub visibility_timeout_ms: u64,
    pub run_at: Option<Millis>,
    pub expires_at: Option<Millis>,
    pub pending: bool,
    pub test_directive: Option<String>,
    /// Job-level access rules (`options.security`).
    pub security: Option<JobSecurity>,
    /// The owner the client named in `options.security.owner`, if any (the HTTP layer checks
    /// it against the caller).
    pub requested_owner: Option<String>,
    /// `meta.tenant_id`, which may only repeat the caller's tenant.
    pub meta_tenant: Option<String>,
    /// Check everything, store nothing.
    pub dry_run: bool,
}

/// Longest job type and queue name.
pub const NAME_MAX: usize = 255;
const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -100..=100;
const TIMEOUT_MAX_MS: u64 = 24 * 3_600_000;
const TAGS_MAX: usize = 64;

/// Top-level attributes an envelope may carry.
const KNOWN_TOP: &[&str] = &[
    "specversion",
    "id",
    "type",
    "args",
    "meta",
    "options",
    "schema",
    // The JSON wire format's flat attributes, accepted as aliases of the options.
    "queue",
    "priority",
    "timeout",
    "scheduled_at",
    "expires_at",
    "retry",
    "unique",
    "visibility_timeout",
    "tags",
    "dry_run",
];

/// System-managed attributes: a client can neither set them nor smuggle them in as "unknown"
/// attributes that would shadow the real ones in responses.
const SYSTEM_MANAGED: &[&str] = &[
    "state",
    "attempt",
    "max_attempts",
    "created_at",
    "enqueued_at",
    "started_at",
    "completed_at",
    "cancelled_at",
    "discarded_at",
    "result",
    "error",
    "errors",
    "retry_delay_ms",
    "next_attempt_at",
    "timeout_ms",
    "visibility_timeout_ms",
    "job",
    "tenant_id",
    "lease",
    "worker_id",
];

const KNOWN_OPTIONS: &[&str] = &[
    "queue",
    "priority",
    "timeout_ms",
    "delay_until",
    "scheduled_at",
    "expires_at",
    "retry",
    "unique",
    "tags",
    "visibility_timeout_ms",
    "pending",
    "metadata",
    "security",
    "dry_run",
];

/// `segment(.segment)*` with segments `[a-z][a-z0-9_-]*`: the suites' job type pattern.
#[must_use]
pub fn is_valid_job_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= NAME_MAX
        && t.split('.').all(|seg| {
            let mut bytes = seg.bytes();
            bytes.next().is_some_and(|b| b.is_ascii_lowercase())
                && bytes
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
}

/// `^[a-z0-9][a-z0-9.-]*$`, at most 255 bytes, and not the reserved `_ojs_` prefix (which the
/// pattern already excludes).
#[must_use]
pub fn is_valid_queue(q: &str) -> bool {
    let mut bytes = q.bytes();
    q.len() <= NAME_MAX
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

/// How an unknown attribute is named back to the client: its name when plain (letters, digits,
/// `_.-`, at most 64), otherwise a placeholder, so a refusal never reflects arbitrary input.
pub(crate) fn attribute_name(prefix: &str, key: &str) -> String {
    let plain = (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if plain {
        format!("{prefix}{key}")
    } else {
        format!("{prefix}<unprintable attribute name>")
    }
}

/// Meta keys: `^[a-zA-Z0-9_.-]{1,128}$` (OJS security §8).
#[must_use]
pub fn is_valid_meta_key(key: &str) -> bool {
    (1..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether a string carries a line break that could split a log line or a header.
fn has_line_break(s: &str) -> bool {
    s.bytes().any(|b| b == b'\r' || b == b'\n')
}

/// Meta keys match the key pattern and no string in a meta value carries CR or LF (log and
/// header injection, OJS security §8). The error names the key when it is valid, never the value.
fn check_meta(meta: &Map<String, Value>) -> Result<(), Invalid> {
    fn clean(v: &Value) -> bool {
        match v {
            Value::String(s) => !has_line_break(s),
            Value::Array(items) => items.iter().all(clean),
            Value::Object(map) => map.iter().all(|(k, v)| !has_line_break(k) && clean(v)),
            _ => true,
        }
    }
    for (key, value) in meta {
        if !is_valid_meta_key(key) {
            return Err(Invalid::request(
                "meta keys must match ^[a-zA-Z0-9_.-]{1,128}$",
                "meta",
            ));
        }
        if !clean(value) {
            return Err(Invalid::request(
                "meta values must not contain carriage returns or line feeds",
                &format!("meta.{key}"),
            ));
        }
    }
    Ok(())
}

fn json_text(v: &Value) -> Payload {
    Payload(v.to_string())
}

fn positive_ms(v: &Value, field: &str, max: u64) -> Result<u64, Invalid> {
    v.as_u64().filter(|n| *n > 0 && *n <= max).ok_or_else(|| {
        Invalid::request(
            format!("{field} must be a positive integer of milliseconds"),
            field,
        )
    })
}

/// Reads an enqueue request body.
pub fn parse_new_job(body: &Value, rules: &EnvelopeRules, now: Millis) -> Result<NewJob, Invalid> {
    let obj = body
        .as_object()
        .ok_or_else(|| Invalid::request("the request body must be a JSON object", "body"))?;

    let mut unknown = Vec::new();
    let mut extra = Map::new();
    for (key, value) in obj {
        if KNOWN_TOP.contains(&key.as_str()) {
            continue;
        }
        if rules.preserve_unknown && !SYSTEM_MANAGED.contains(&key.as_str()) {
            extra.insert(key.clone(), value.clone());
        } else {
            unknown.push(attribute_name("", key));
        }
    }

    if let Some(v) = obj.get("specversion") {
        if v.as_str() != Some("1.0") {
            return Err(Invalid::request(
                "specversion must be \"1.0\"",
                "specversion",
            ));
        }
    }

    let job_type = match obj.get("type") {
        None | Some(Value::Null) => return Err(Invalid::request("type is required", "type")),
        Some(Value::String(t)) if is_valid_job_type(t) => t.clone(),
        Some(Value::String(_)) => {
            return Err(Invalid::request(
                "type must be dot-separated lowercase segments ([a-z][a-z0-9_-]*), at most 255 characters",
                "type",
            ))
        }
        Some(_) => return Err(Invalid::request("type must be a string", "type")),
    };

    let args = match obj.get("args") {
        None => return Err(Invalid::request("args is required", "args")),
        Some(v @ Value::Array(_)) => json_text(v),
        Some(_) => return Err(Invalid::request("args must be a JSON array", "args")),
    };
    if args.0.len() > rules.max_args_bytes {
        return Err(Invalid::too_large("args", rules.max_args_bytes));
    }

    let id =
        match obj.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(JobId::parse(s).ok_or_else(|| {
                Invalid::request("id must be a lowercase hyphenated UUIDv7", "id")
            })?),
            Some(_) => return Err(Invalid::request("id must be a string", "id")),
        };

    let meta = match obj.get("meta") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(m)) => {
            check_meta(m)?;
            Some(json_text(v))
        }
        Some(_) => return Err(Invalid::request("meta must be a JSON object", "meta")),
    };
    if meta
        .as_ref()
        .is_some_and(|m| m.0.len() > rules.max_meta_bytes)
    {
        return Err(Invalid::too_large("meta", rules.max_meta_bytes));
    }

    let schema = match obj.get("schema") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 => Some(s.clone()),
        Some(_) => return Err(Invalid::request("schema must be a URI string", "schema")),
    };

    let empty = Map::new();
    let options = match obj.get("options") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(_) => return Err(Invalid::request("options must be a JSON object", "options")),
    };
    for key in options.keys() {
        if !KNOWN_OPTIONS.contains(&key.as_str()) {
            unknown.push(attribute_name("options.", key));
        }
    }
    // An option may come from `options` or, per the JSON wire format, the top level.
    let opt = |name: &str| {
        options
            .get(name)
            .or_else(|| obj.get(name))
            .filter(|v| !v.is_null())
    };

    let queue = match opt("queue") {
        None => "default".to_string(),
        Some(Value::String(q)) if is_valid_queue(q) => q.clone(),
        Some(_) => {
            return Err(Invalid::request(
                "queue must match ^[a-z0-9][a-z0-9.-]*$ and be at most 255 characters",
                "options.queue",
            ))
        }
    };

    let priority = match opt("priority") {
        None => 0,
        Some(v) => v
            .as_i64()
            .filter(|p| PRIORITY_RANGE.contains(p))
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| {
                Invalid::request(
                    "priority must be an integer from -100 to 100",
                    "options.priority",
                )
            })?,
    };

    let timeout_ms = match (options.get("timeout_ms"), obj.get("timeout")) {
        (Some(v), _) if !v.is_null() => positive_ms(v, "options.timeout_ms", TIMEOUT_MAX_MS)?,
        (_, Some(v)) if !v.is_null() => positive_ms(v, "timeout", TIMEOUT_MAX_MS / 1000)? * 1000,
        _ => rules.default_timeout_ms,
    };

    let visibility_timeout_ms = match (
        options.get("visibility_timeout_ms"),
        obj.get("visibility_timeout"),
    ) {
        (Some(v), _) if !v.is_null() => {
            positive_ms(v, "options.visibility_timeout_ms", TIMEOUT_MAX_MS)?
        }
        (_, Some(v)) if !v.is_null() => {
            positive_ms(v, "visibility_timeout", TIMEOUT_MAX_MS / 1000)? * 1000
        }
        _ => rules.default_visibility_timeout_ms,
    };

    let time_field = |name: &str| -> Result<Option<Millis>, Invalid> {
        match opt(name) {
            None => Ok(None),
            Some(Value::String(s)) => parse_time_spec(s, now).map(Some).ok_or_else(|| {
                Invalid::request(
                    format!(
                        "{name} must be an RFC 3339 timestamp or a relative duration such as +PT5S"
                    ),
                    &format!("options.{name}"),
                )
            }),
            Some(_) => Err(Invalid::request(
                format!("{name} must be a string"),
                &format!("options.{name}"),
            )),
        }
    };
    let run_at = match time_field("delay_until")? {
        Some(t) => Some(("delay_until", t)),
        None => time_field("scheduled_at")?.map(|t| ("scheduled_at", t)),
    };
    // A schedule years ahead is a job nobody will see run, held (and counted against the
    // tenant's scheduled-job quota) for ever: the horizon bounds it.
    let horizon =
        now.saturating_add(i64::try_from(rules.max_schedule_ahead_ms).unwrap_or(i64::MAX));
    if let Some((name, at)) = run_at {
        if at > horizon {
            return Err(Invalid::request(
                format!(
                    "{name} is more than {} seconds ahead; the scheduling horizon is \
                     [validation] max_schedule_ahead_secs",
                    rules.max_schedule_ahead_ms / 1000
                ),
                &format!("options.{name}"),
            ));
        }
    }
    let run_at = run_at.map(|(_, at)| at);
    let expires_at = time_field("expires_at")?;

    let retry = match opt("retry") {
        None => RetryPolicy::default(),
        Some(v) => RetryPolicy::parse(v, &mut unknown)?,
    };

    let unique = match opt("unique") {
        None => None,
        Some(v @ Value::Object(_)) => Some(json_text(v)),
        Some(_) => {
            return Err(Invalid::request(
                "unique must be a JSON object",
                "options.unique",
            ))
        }
    };

    let tags = match opt("tags") {
        None => Vec::new(),
        Some(Value::Array(items)) if items.len() <= TAGS_MAX => items
            .iter()
            .map(|t| match t {
                Value::String(s) if !s.is_empty() && s.len() <= 255 => Ok(s.clone()),
                _ => Err(Invalid::request(
                    "tags must be non-empty strings of at most 255 characters",
                    "options.tags",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(Invalid::request(
                "tags must be an array of at most 64 strings",
                "options.tags",
            ))
        }
    };

    let pending = match options.get("pending") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Invalid::request(
                "pending must be a boolean",
                "options.pending",
            ))
        }
    };

    let test_directive = if rules.honour_test_directives {
        options
            .get("metadata")
            .and_then(|m| m.get("test_directive"))
            .and_then(Value::as_str)
            .filter(|d| matches!(*d, "quiet" | "terminate"))
            .map(str::to_string)
    } else {
        None
    };

    let (security, requested_owner) = match opt("security") {
        None => (None, None),
        Some(v) => parse_security(v)?,
    };

    let meta_tenant = match obj.get("meta").and_then(|m| m.get("tenant_id")) {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => {
            return Err(Invalid::request(
                "meta.tenant_id must be a string",
                "meta.tenant_id",
            ))
        }
    };

    let dry_run = match opt("dry_run") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Invalid::request(
                "dry_run must be a boolean",
                "options.dry_run",
            ))
        }
    };

    if !unknown.is_empty() {
        unknown.sort();
        return Err(Invalid {
            kind: InvalidKind::UnknownFields,
            message: format!("unknown attributes: {}", unknown.join(", ")),
            field: None,
            unknown,
        });
    }

    Ok(NewJob {
        id,
        job_type,
        queue,
        priority,
        args,
        meta,
        extra: (!extra.is_empty()).then(|| Payload(Value::Object(extra).to_string())),
        tags,
        schema,
        unique,
        retry,
        timeout_ms,
        visibility_timeout_ms,
        run_at,
        expires_at,
        pending,
        test_directive,
        security,
        requested_owner,
        meta_tenant,
        dry_run,
    })
}

/// `options.security`: `{"owner": "<principal>", "visibility": "owner" | "tenant",
/// "cancellable_by": ["owner", "<role>", ...]}` (GopherQueue's resource-level rules).
fn parse_security(v: &Value) -> Result<(Option<JobSecurity>, Option<String>), Invalid> {
    let field = "options.security";
    let obj = v
        .as_object()
        .ok_or_else(|| Invalid::request("security must be a JSON object", field))?;
    if let Some(key) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "owner" | "visibility" | "cancellable_by"))
    {
        return Err(Invalid::request(
            format!(
                "security accepts owner, visibility and cancellable_by, not {}",
                attribute_name("", key)
            ),
            field,
        ));
    }
    let name_ok = |n: &str| {
        (1..=128).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
    };
    let owner = match obj.get("owner") {
        None | Some(Value::Null) => None,
        Some(Value::String(o)) if name_ok(o) => Some(o.clone()),
        Some(_) => {
            return Err(Invalid::request(
                "security.owner must be a principal name",
                "options.security.owner",
            ))
        }
    };
    let visibility = match obj.get("visibility").and_then(Value::as_str) {
        None if obj.get("visibility").is_none_or(Value::is_null) => Visibility::Tenant,
        Some("owner") => Visibility::Owner,
        Some("tenant" | "all") => Visibility::Tenant,
        _ => {
            return Err(Invalid::request(
                "security.visibility must be \"owner\" or \"tenant\"",
                "options.security.visibility",
            ))
        }
    };
    let cancellable_by = match obj.get("cancellable_by") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.len() <= 16 => Some(
            items
                .iter()
                .map(|i| match i {
                    Value::String(s) if name_ok(s) => Ok(s.clone()),
                    _ => Err(Invalid::request(
                        "security.cancellable_by must list \"owner\" or role names",
                        "options.security.cancellable_by",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(Invalid::request(
                "security.cancellable_by must be an array of at most 16 names",
                "options.security.cancellable_by",
            ))
        }
    };
    Ok((
        Some(JobSecurity {
            visibility,
            cancellable_by,
        }),
        owner,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strict() -> EnvelopeRules {
        EnvelopeRules::default()
    }

    fn preserve() -> EnvelopeRules {
        EnvelopeRules {
            preserve_unknown: true,
            ..EnvelopeRules::default()
        }
    }

    #[test]
    fn minimal_job_gets_defaults() {
        let job =
            parse_new_job(&json!({"type": "email.send", "args": ["a"]}), &strict(), 0).unwrap();
        assert_eq!(job.queue, "default");
        assert_eq!(job.priority, 0);
        assert_eq!(job.args.0, "[\"a\"]");
        assert_eq!(job.retry, RetryPolicy::default());
        assert!(job.id.is_none());
    }

    #[test]
    fn type_and_queue_patterns() {
        for good in ["email.send", "retry.test.max-attempts", "a", "a1_b.c-d"] {
            assert!(is_valid_job_type(good), "{good}");
        }
        for bad in [
            "",
            "Email.Send",
            "1email.send",
            "email send",
            "email@send!",
            "a..b",
            ".a",
            "a.",
        ] {
            assert!(!is_valid_job_type(bad), "{bad}");
        }
        for good in ["default", "dlq-test", "a.b", "0queue"] {
            assert!(is_valid_queue(good), "{good}");
        }
        for bad in [
            "",
            "Default",
            "my_queue!",
            "-invalid",
            "my queue",
            "_ojs_internal",
        ] {
            assert!(!is_valid_queue(bad), "{bad}");
        }
        assert!(!is_valid_queue(&"a".repeat(256)));
    }

    #[test]
    fn unknown_attributes_rejected_by_default_and_listed() {
        let body = json!({"type": "a.b", "args": [], "x_custom": 1, "options": {"bogus": true}});
        let err = parse_new_job(&body, &strict(), 0).unwrap_err();
        assert_eq!(err.kind, InvalidKind::UnknownFields);
        assert_eq!(
            err.unknown,
            vec!["options.bogus".to_string(), "x_custom".to_string()]
        );
    }

    #[test]
    fn preserve_mode_keeps_unknown_but_never_system_fields() {
        let body = json!({"type": "a.b", "args": [], "x_custom": 1, "state": "completed"});
        let err = parse_new_job(&body, &preserve(), 0).unwrap_err();
        assert_eq!(err.unknown, vec!["state".to_string()]);
        let body = json!({"type": "a.b", "args": [], "x_custom": 1});
        let job = parse_new_job(&body, &preserve(), 0).unwrap();
        assert_eq!(job.extra.unwrap().0, "{\"x_custom\":1}");
    }

    #[test]
    fn wrong_shapes_are_request_errors() {
        for body in [
            json!([]),
            json!({"args": []}),
            json!({"type": "a.b"}),
            json!({"type": "a.b", "args": {}}),
            json!({"type": "a.b", "args": null}),
            json!({"type": 5, "args": []}),
            json!({"type": "a.b", "args": [], "id": "550e8400-e29b-41d4-a716-446655440000"}),
            json!({"type": "a.b", "args": [], "options": {"priority": 101}}),
            json!({"type": "a.b", "args": [], "options": {"priority": "high"}}),
            json!({"type": "a.b", "args": [], "options": {"queue": "Default"}}),
            json!({"type": "a.b", "args": [], "options": {"timeout_ms": 0}}),
            json!({"type": "a.b", "args": [], "options": {"delay_until": "tomorrow"}}),
            json!({"type": "a.b", "args": [], "meta": "x"}),
        ] {
            let err = parse_new_job(&body, &strict(), 0).unwrap_err();
            assert_eq!(err.kind, InvalidKind::Request, "{body}");
        }
    }

    #[test]
    fn schedules_beyond_the_horizon_are_refused_at_the_horizon_they_pass() {
        // The review's story: `"delay_until": "9999-12-31T23:59:59Z"` was accepted and held a
        // job (and a scheduled-job quota slot) for eight thousand years.
        let rules = EnvelopeRules {
            max_schedule_ahead_ms: 60_000,
            ..EnvelopeRules::default()
        };
        let now = 1_700_000_000_000;
        for (field, value) in [
            ("delay_until", "9999-12-31T23:59:59Z"),
            ("scheduled_at", "9999-12-31T23:59:59Z"),
            ("delay_until", "+PT61S"),
            ("scheduled_at", "+P3650D"),
        ] {
            let body = json!({"type": "a.b", "args": [], "options": {field: value}});
            let err = parse_new_job(&body, &rules, now).unwrap_err();
            assert_eq!(err.kind, InvalidKind::Request, "{body}");
            assert_eq!(err.field.as_deref(), Some(&*format!("options.{field}")));
            assert!(err.message.contains("horizon"), "{}", err.message);
        }
        let at_horizon = json!({"type": "a.b", "args": [], "options": {"delay_until": "+PT60S"}});
        let job = parse_new_job(&at_horizon, &rules, now).unwrap();
        assert_eq!(job.run_at, Some(now + 60_000));
        let default = EnvelopeRules::default();
        let far =
            json!({"type": "a.b", "args": [], "options": {"delay_until": "9999-12-31T23:59:59Z"}});
        assert!(parse_new_job(&far, &default, now).is_err());
        let in_a_month = json!({"type": "a.b", "args": [], "options": {"delay_until": "+P30D"}});
        parse_new_job(&in_a_month, &default, now).unwrap();
    }

    #[test]
    fn args_and_meta_limits_at_the_limit_and_one_over() {
        let rules = EnvelopeRules {
            max_args_bytes: 10,
            max_meta_bytes: 12,
            ..EnvelopeRules::default()
        };
        // `["abcdef"]` is 10 bytes, `{"k":"abcd"}` is 12.
        let ok = json!({"type": "a.b", "args": ["abcdef"], "meta": {"k": "abcd"}});
        parse_new_job(&ok, &rules, 0).unwrap();
        let big_args = json!({"type": "a.b", "args": ["abcdefg"]});
        let err = parse_new_job(&big_args, &rules, 0).unwrap_err();
        assert_eq!(
            (err.kind, err.field.as_deref()),
            (InvalidKind::TooLarge, Some("args"))
        );
        let big_meta = json!({"type": "a.b", "args": [], "meta": {"k": "abcde"}});
        let err = parse_new_job(&big_meta, &rules, 0).unwrap_err();
        assert_eq!(
            (err.kind, err.field.as_deref()),
            (InvalidKind::TooLarge, Some("meta"))
        );
    }

    #[test]
    fn meta_keys_and_line_breaks() {
        let key128 = "k".repeat(128);
        for good in ["a", "trace.id", "X-Request_1", key128.as_str()] {
            assert!(is_valid_meta_key(good), "{good}");
            let body = json!({"type": "a.b", "args": [], "meta": {good: "v"}});
            parse_new_job(&body, &strict(), 0).unwrap();
        }
        let key129 = "k".repeat(129);
        for bad in ["", "a b", "a/b", "é", "a:b", key129.as_str()] {
            assert!(!is_valid_meta_key(bad), "{bad}");
            let body = json!({"type": "a.b", "args": [], "meta": {bad: "v"}});
            let err = parse_new_job(&body, &strict(), 0).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("meta"));
        }
        for value in [
            json!("a\nb"),
            json!("a\rb"),
            json!(["ok", "x\ny"]),
            json!({"inner": "x\r\n"}),
            json!({"in\nner": "x"}),
        ] {
            let body = json!({"type": "a.b", "args": [], "meta": {"note": value}});
            let err = parse_new_job(&body, &strict(), 0).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("meta.note"), "{body}");
            assert!(!err.message.contains('x'));
        }
        // Line breaks in args are the job's business.
        parse_new_job(&json!({"type": "a.b", "args": ["a\nb"]}), &strict(), 0).unwrap();
    }

    #[test]
    fn messages_do_not_echo_client_values() {
        let body = json!({"type": "EVIL<script>", "args": []});
        let err = parse_new_job(&body, &strict(), 0).unwrap_err();
        assert!(!err.message.contains("EVIL"));
    }

    #[test]
    fn schedule_and_directives() {
        let body = json!({"type": "a.b", "args": [], "options": {"delay_until": "+PT2S", "metadata": {"test_directive": "quiet"}}});
        let job = parse_new_job(&body, &strict(), 1000).unwrap();
        assert_eq!(job.run_at, Some(3000));
        assert_eq!(
            job.test_directive, None,
            "directives are ignored outside testing mode"
        );
        let rules = EnvelopeRules {
            honour_test_directives: true,
            ..EnvelopeRules::default()
        };
        let job = parse_new_job(&body, &rules, 1000).unwrap();
        assert_eq!(job.test_directive.as_deref(), Some("quiet"));
    }
}
