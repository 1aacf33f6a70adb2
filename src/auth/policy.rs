//! The access model, as pure functions: permissions, queue patterns, roles (built-in and from
//! config), and the decision whether a principal may do something on a queue.
//!
//! A role is a list of allow rules and deny rules; a rule names permissions and queue patterns.
//! A principal's [`Grants`] are the union of its roles' rules, narrowed by its credential's
//! scopes (a subset of permissions) and queue patterns. Deny rules win over allow rules, and
//! anything no rule allows is denied.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::job::envelope::is_valid_queue;

/// What an operation needs (OJS security §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Enqueue,
    /// Fetch, ack, nack, heartbeat.
    Dequeue,
    Cancel,
    Inspect,
    Admin,
}

impl Permission {
    /// Every permission, in a fixed order.
    pub const ALL: [Self; 5] = [
        Self::Enqueue,
        Self::Dequeue,
        Self::Cancel,
        Self::Inspect,
        Self::Admin,
    ];

    /// The name used in errors, logs and config.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enqueue => "enqueue",
            Self::Dequeue => "dequeue",
            Self::Cancel => "cancel",
            Self::Inspect => "inspect",
            Self::Admin => "admin",
        }
    }

    /// Parses a permission name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Queues whose names start with this belong to the server itself.
pub const RESERVED_QUEUE_PREFIX: &str = "_ojs_";

/// A queue pattern: `*` (every queue), `prefix.*` (the queues under `prefix.`), or an exact name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueuePattern(String);

impl QueuePattern {
    /// Every queue.
    #[must_use]
    pub fn any() -> Self {
        Self("*".into())
    }

    /// Parses a pattern; `None` if it is neither `*`, a queue name, nor a queue name followed by
    /// `.*`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let valid = text == "*"
            || is_valid_queue(text)
            || text.strip_suffix(".*").is_some_and(is_valid_queue);
        valid.then(|| Self(text.to_string()))
    }

    /// Whether `queue` matches. Reserved `_ojs_` queues match only an exact pattern.
    #[must_use]
    pub fn matches(&self, queue: &str) -> bool {
        if self.0 == "*" {
            return !queue.starts_with(RESERVED_QUEUE_PREFIX);
        }
        match self.0.strip_suffix(".*") {
            Some(prefix) => queue
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
            None => self.0 == queue,
        }
    }

    /// The pattern as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for QueuePattern {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text).ok_or_else(|| {
            "a queue pattern is `*`, a queue name, or a queue name followed by `.*`".to_string()
        })
    }
}

impl From<QueuePattern> for String {
    fn from(p: QueuePattern) -> Self {
        p.0
    }
}

fn any_queue() -> Vec<QueuePattern> {
    vec![QueuePattern::any()]
}

/// One allow or deny rule of a role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub permissions: Vec<Permission>,
    /// Queues the rule covers; every queue when left out.
    #[serde(default = "any_queue")]
    pub queues: Vec<QueuePattern>,
    /// For an allow rule: by-id operations (inspect, cancel) reach only jobs the principal
    /// submitted itself.
    #[serde(default)]
    pub own_jobs_only: bool,
}

impl Rule {
    fn new(permissions: &[Permission]) -> Self {
        Self {
            permissions: permissions.to_vec(),
            queues: any_queue(),
            own_jobs_only: false,
        }
    }

    fn covers(&self, permission: Permission, queue: Option<&str>) -> bool {
        self.permissions.contains(&permission)
            && queue.is_none_or(|q| self.queues.iter().any(|p| p.matches(q)))
    }
}

/// A role: a name and its rules. `[[roles]]` in the config adds custom ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleDef {
    pub name: String,
    #[serde(default)]
    pub allow: Vec<Rule>,
    #[serde(default)]
    pub deny: Vec<Rule>,
}

/// The built-in roles: OJS §7.5's producer, worker, operator and admin, plus observer
/// (read-only) and submitter (enqueue, and inspect/cancel of its own jobs).
#[must_use]
pub fn builtin_roles() -> Vec<RoleDef> {
    use Permission::{Admin, Cancel, Dequeue, Enqueue, Inspect};
    let role = |name: &str, allow: Vec<Rule>| RoleDef {
        name: name.into(),
        allow,
        deny: Vec::new(),
    };
    vec![
        role("producer", vec![Rule::new(&[Enqueue])]),
        role("worker", vec![Rule::new(&[Dequeue])]),
        role("operator", vec![Rule::new(&[Enqueue, Cancel, Inspect])]),
        role(
            "admin",
            vec![Rule::new(&[Enqueue, Dequeue, Cancel, Inspect, Admin])],
        ),
        role("observer", vec![Rule::new(&[Inspect])]),
        role(
            "submitter",
            vec![
                Rule::new(&[Enqueue]),
                Rule {
                    own_jobs_only: true,
                    ..Rule::new(&[Inspect, Cancel])
                },
            ],
        ),
    ]
}

/// Why a role set or a role definition is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("unknown role `{0}`")]
    UnknownRole(String),
    #[error("role `{0}` is defined twice (built-in roles cannot be redefined)")]
    DuplicateRole(String),
    #[error("role name `{0}` must match ^[a-z][a-z0-9_-]{{0,63}}$")]
    BadRoleName(String),
    #[error("role `{0}` has a rule without permissions or without queues")]
    EmptyRule(String),
    #[error(
        "a credential may not both enqueue and dequeue unless it is an admin credential \
         (producer and worker credentials are distinct)"
    )]
    ProducerAndWorker,
    #[error("at least one role is required")]
    NoRoles,
}

fn valid_role_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 64
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Every role the server knows.
#[derive(Clone, Debug)]
pub struct Policy {
    roles: BTreeMap<String, RoleDef>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            roles: builtin_roles()
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect(),
        }
    }
}

impl Policy {
    /// The built-in roles only, made once (for principals whose roles are fixed built-ins, such
    /// as admin sessions).
    #[must_use]
    pub fn builtin() -> &'static Self {
        static BUILTIN: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
        BUILTIN.get_or_init(Self::default)
    }

    /// The built-in roles plus `custom` ones.
    pub fn new(custom: &[RoleDef]) -> Result<Self, PolicyError> {
        let mut policy = Self::default();
        for role in custom {
            if !valid_role_name(&role.name) {
                return Err(PolicyError::BadRoleName(role.name.clone()));
            }
            if role
                .allow
                .iter()
                .chain(&role.deny)
                .any(|r| r.permissions.is_empty() || r.queues.is_empty())
            {
                return Err(PolicyError::EmptyRule(role.name.clone()));
            }
            if policy
                .roles
                .insert(role.name.clone(), role.clone())
                .is_some()
            {
                return Err(PolicyError::DuplicateRole(role.name.clone()));
            }
        }
        Ok(policy)
    }

    /// Role names, sorted.
    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }

    /// Checks a credential's role set: every role known, and not producer and worker at once
    /// unless it is an admin credential (OJS security §6.2–6.3).
    pub fn check_roles(&self, roles: &[String]) -> Result<(), PolicyError> {
        if roles.is_empty() {
            return Err(PolicyError::NoRoles);
        }
        if let Some(unknown) = roles.iter().find(|r| !self.roles.contains_key(*r)) {
            return Err(PolicyError::UnknownRole(unknown.clone()));
        }
        let grants = self.grants(roles, None, None);
        if grants.has(Permission::Enqueue)
            && grants.has(Permission::Dequeue)
            && !grants.has(Permission::Admin)
        {
            return Err(PolicyError::ProducerAndWorker);
        }
        Ok(())
    }

    /// What a principal with `roles` may do, narrowed to `scopes` (permissions) and `queues`
    /// when its credential carries them. Unknown role names grant nothing.
    #[must_use]
    pub fn grants(
        &self,
        roles: &[String],
        scopes: Option<&[Permission]>,
        queues: Option<&[QueuePattern]>,
    ) -> Grants {
        let mut grants = Grants {
            scopes: scopes.map(<[Permission]>::to_vec),
            queues: queues.map(<[QueuePattern]>::to_vec),
            ..Grants::default()
        };
        for role in roles.iter().filter_map(|r| self.roles.get(r)) {
            grants.allow.extend(role.allow.iter().cloned());
            grants.deny.extend(role.deny.iter().cloned());
        }
        grants
    }
}

/// Why access was refused; the reason goes to the audit record, not to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// No role grants the permission (on that queue).
    NotGranted,
    /// A deny rule matches.
    DeniedByRule,
    /// The credential's scopes leave the permission out.
    OutOfScope,
    /// The credential's queue patterns leave the queue out.
    QueueNotAllowed,
    /// A reserved `_ojs_` queue and not a system administrator.
    ReservedQueue,
}

impl DenyReason {
    /// A short label for audit records and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotGranted => "not_granted",
            Self::DeniedByRule => "denied_by_rule",
            Self::OutOfScope => "out_of_scope",
            Self::QueueNotAllowed => "queue_not_allowed",
            Self::ReservedQueue => "reserved_queue",
        }
    }
}

/// What one principal may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    scopes: Option<Vec<Permission>>,
    queues: Option<Vec<QueuePattern>>,
}

/// How far an allowed permission reaches on by-id operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Every job of the tenant (in the allowed queues).
    All,
    /// Only jobs the principal submitted.
    OwnJobs,
}

impl Grants {
    /// Whether `permission` is granted on at least one queue.
    #[must_use]
    pub fn has(&self, permission: Permission) -> bool {
        self.decide(permission, None).is_ok()
    }

    /// Decides `permission` on `queue` (or on some queue when `None`). Deny rules win; a deny
    /// rule on every queue refuses the permission even without a queue.
    pub fn decide(&self, permission: Permission, queue: Option<&str>) -> Result<Reach, DenyReason> {
        if queue.is_some_and(|q| q.starts_with(RESERVED_QUEUE_PREFIX)) {
            return Err(DenyReason::ReservedQueue);
        }
        if self
            .scopes
            .as_ref()
            .is_some_and(|s| !s.contains(&permission))
        {
            return Err(DenyReason::OutOfScope);
        }
        if let (Some(patterns), Some(q)) = (&self.queues, queue) {
            if !patterns.iter().any(|p| p.matches(q)) {
                return Err(DenyReason::QueueNotAllowed);
            }
        }
        let denied = self.deny.iter().any(|rule| match queue {
            Some(q) => rule.covers(permission, Some(q)),
            None => {
                rule.permissions.contains(&permission) && rule.queues.contains(&QueuePattern::any())
            }
        });
        if denied {
            return Err(DenyReason::DeniedByRule);
        }
        let mut reach = None;
        for rule in self.allow.iter().filter(|r| r.covers(permission, queue)) {
            if !rule.own_jobs_only {
                return Ok(Reach::All);
            }
            reach = Some(Reach::OwnJobs);
        }
        reach.ok_or(DenyReason::NotGranted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Permission::*;

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_string()).collect()
    }

    fn grants(names: &[&str]) -> Grants {
        Policy::default().grants(&roles(names), None, None)
    }

    #[test]
    fn builtin_roles_follow_the_ojs_matrix() {
        let table = [
            ("producer", [true, false, false, false, false]),
            ("worker", [false, true, false, false, false]),
            ("operator", [true, false, true, true, false]),
            ("admin", [true, true, true, true, true]),
            ("observer", [false, false, false, true, false]),
            ("submitter", [true, false, true, true, false]),
        ];
        for (role, expected) in table {
            let g = grants(&[role]);
            for (p, want) in Permission::ALL.into_iter().zip(expected) {
                assert_eq!(g.has(p), want, "{role} {p}");
            }
        }
        assert_eq!(
            grants(&["submitter"]).decide(Inspect, Some("q")),
            Ok(Reach::OwnJobs)
        );
        assert_eq!(
            grants(&["submitter"]).decide(Enqueue, Some("q")),
            Ok(Reach::All)
        );
        assert_eq!(
            grants(&["submitter", "observer"]).decide(Inspect, Some("q")),
            Ok(Reach::All)
        );
        assert_eq!(
            grants(&["nonexistent"]).decide(Inspect, None),
            Err(DenyReason::NotGranted)
        );
    }

    #[test]
    fn patterns_match_exact_prefix_and_any_but_never_reserved_queues_by_wildcard() {
        let p = |s: &str| QueuePattern::parse(s).unwrap();
        assert!(p("*").matches("emails"));
        assert!(!p("*").matches("_ojs_internal"));
        assert!(p("billing.*").matches("billing.invoices"));
        assert!(!p("billing.*").matches("billing"));
        assert!(!p("billing.*").matches("billingx.a"));
        assert!(!p("billing.*").matches("billing."));
        assert!(p("emails").matches("emails"));
        assert!(!p("emails").matches("emails2"));
        for bad in ["", "Emails", "a*", "*.a", "a.**", "../x", "a b"] {
            assert!(QueuePattern::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn reserved_queues_are_refused_even_to_admins() {
        assert_eq!(
            grants(&["admin"]).decide(Enqueue, Some("_ojs_internal")),
            Err(DenyReason::ReservedQueue)
        );
    }

    #[test]
    fn deny_wins_over_allow_and_credentials_narrow_their_roles() {
        let custom = RoleDef {
            name: "billing".into(),
            allow: vec![Rule {
                queues: vec![QueuePattern::parse("billing.*").unwrap()],
                ..Rule::new(&[Enqueue, Inspect])
            }],
            deny: vec![Rule {
                queues: vec![QueuePattern::parse("billing.secret").unwrap()],
                ..Rule::new(&[Inspect])
            }],
        };
        let policy = Policy::new(&[custom]).unwrap();
        let g = policy.grants(&roles(&["billing"]), None, None);
        assert_eq!(g.decide(Enqueue, Some("billing.a")), Ok(Reach::All));
        assert_eq!(
            g.decide(Enqueue, Some("emails")),
            Err(DenyReason::NotGranted)
        );
        assert_eq!(
            g.decide(Inspect, Some("billing.secret")),
            Err(DenyReason::DeniedByRule)
        );
        assert!(g.has(Inspect), "a deny on one queue leaves the others");

        // An admin role with a deny rule on every queue loses the permission outright.
        let no_cancel = RoleDef {
            name: "no-cancel".into(),
            allow: vec![],
            deny: vec![Rule::new(&[Cancel])],
        };
        let policy = Policy::new(&[no_cancel]).unwrap();
        let g = policy.grants(&roles(&["admin", "no-cancel"]), None, None);
        assert!(!g.has(Cancel));
        assert!(g.has(Enqueue));

        let scoped = Policy::default().grants(
            &roles(&["admin"]),
            Some(&[Inspect]),
            Some(&[QueuePattern::parse("emails").unwrap()]),
        );
        assert_eq!(
            scoped.decide(Enqueue, Some("emails")),
            Err(DenyReason::OutOfScope)
        );
        assert_eq!(
            scoped.decide(Inspect, Some("other")),
            Err(DenyReason::QueueNotAllowed)
        );
        assert_eq!(scoped.decide(Inspect, Some("emails")), Ok(Reach::All));
    }

    #[test]
    fn role_sets_keep_producer_and_worker_credentials_apart() {
        let policy = Policy::default();
        assert_eq!(
            policy.check_roles(&roles(&["producer", "worker"])),
            Err(PolicyError::ProducerAndWorker)
        );
        assert_eq!(
            policy.check_roles(&roles(&["operator", "worker"])),
            Err(PolicyError::ProducerAndWorker)
        );
        assert!(policy.check_roles(&roles(&["admin"])).is_ok());
        assert!(policy.check_roles(&roles(&["admin", "worker"])).is_ok());
        assert_eq!(
            policy.check_roles(&roles(&["root"])),
            Err(PolicyError::UnknownRole("root".into()))
        );
        assert_eq!(policy.check_roles(&[]), Err(PolicyError::NoRoles));
    }

    #[test]
    fn custom_roles_cannot_shadow_builtins_or_be_empty() {
        let admin = RoleDef {
            name: "admin".into(),
            allow: vec![],
            deny: vec![],
        };
        assert_eq!(
            Policy::new(&[admin]).unwrap_err(),
            PolicyError::DuplicateRole("admin".into())
        );
        let empty = RoleDef {
            name: "x".into(),
            allow: vec![Rule {
                permissions: vec![],
                queues: any_queue(),
                own_jobs_only: false,
            }],
            deny: vec![],
        };
        assert!(matches!(
            Policy::new(&[empty]),
            Err(PolicyError::EmptyRule(_))
        ));
        let bad = RoleDef {
            name: "Bad Name".into(),
            allow: vec![],
            deny: vec![],
        };
        assert!(matches!(
            Policy::new(&[bad]),
            Err(PolicyError::BadRoleName(_))
        ));
    }
}
