//! Who may call what: one table maps every route to the permission it needs, and the
//! [`Authenticated`](super::auth::Authenticated) extractor enforces it before any handler runs.
//! A route missing from the table is refused (deny by default). Handlers then narrow the check
//! to the queue or job they touch. `docs/access.md` publishes the same table; a test keeps the
//! two equal.

use crate::auth::Permission;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Anyone, without credentials.
    Public,
    /// The permission, within the caller's tenant (system-scoped callers act on the system
    /// scope, or on a tenant they select with `X-OJS-Tenant` if they are administrators).
    Tenant(Permission),
    /// The permission, and a system-scoped credential: server-wide data or operations.
    System(Permission),
}

impl Need {
    /// The permission, if any.
    #[must_use]
    pub fn permission(self) -> Option<Permission> {
        match self {
            Self::Public => None,
            Self::Tenant(p) | Self::System(p) => Some(p),
        }
    }
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: &'static str,
    /// The actix resource pattern.
    pub path: &'static str,
    pub need: Need,
    /// What the route does, for the published table.
    pub what: &'static str,
}

const fn route(method: &'static str, path: &'static str, need: Need, what: &'static str) -> Route {
    Route {
        method,
        path,
        need,
        what,
    }
}

use Need::{Public, System, Tenant};
use Permission::{Admin, Cancel, Dequeue, Enqueue, Inspect};

/// Every route the server serves.
pub const ROUTES: &[Route] = &[
    route("GET", "/ojs/manifest", Public, "server manifest"),
    route("GET", "/ojs/v1/health", Public, "health"),
    route("GET", "/metrics", System(Inspect), "Prometheus metrics"),
    route("GET", "/ojs/v1/queues", Tenant(Inspect), "list queues"),
    route(
        "GET",
        "/ojs/v1/queues/{name}/stats",
        Tenant(Inspect),
        "a queue's depth and bound",
    ),
    route(
        "GET",
        "/ojs/v1/events",
        Tenant(Inspect),
        "recent job events",
    ),
    route("POST", "/ojs/v1/jobs", Tenant(Enqueue), "enqueue a job"),
    route(
        "POST",
        "/ojs/v1/jobs/batch",
        Tenant(Enqueue),
        "enqueue jobs, all or none",
    ),
    route("GET", "/ojs/v1/jobs/{id}", Tenant(Inspect), "read a job"),
    route(
        "DELETE",
        "/ojs/v1/jobs/{id}",
        Tenant(Cancel),
        "cancel a job",
    ),
    route(
        "POST",
        "/ojs/v1/jobs/{id}/activate",
        Tenant(Enqueue),
        "activate a pending job",
    ),
    route(
        "POST",
        "/ojs/v1/workers/fetch",
        Tenant(Dequeue),
        "fetch jobs",
    ),
    route(
        "POST",
        "/ojs/v1/workers/ack",
        Tenant(Dequeue),
        "complete a job",
    ),
    route(
        "POST",
        "/ojs/v1/workers/nack",
        Tenant(Dequeue),
        "fail a job",
    ),
    route(
        "POST",
        "/ojs/v1/workers/heartbeat",
        Tenant(Dequeue),
        "extend leases",
    ),
    route(
        "GET",
        "/ojs/v1/dead-letter",
        Tenant(Inspect),
        "list dead letters",
    ),
    route(
        "DELETE",
        "/ojs/v1/dead-letter/{id}",
        Tenant(Admin),
        "purge a dead letter",
    ),
    route(
        "POST",
        "/ojs/v1/dead-letter/{id}/retry",
        Tenant(Admin),
        "retry a dead letter",
    ),
    route("GET", "/ojs/v1/admin/keys", Tenant(Admin), "list API keys"),
    route(
        "POST",
        "/ojs/v1/admin/keys",
        Tenant(Admin),
        "create an API key",
    ),
    route(
        "POST",
        "/ojs/v1/admin/keys/revoke",
        Tenant(Admin),
        "revoke API keys in bulk",
    ),
    route(
        "DELETE",
        "/ojs/v1/admin/keys/{id}",
        Tenant(Admin),
        "revoke an API key",
    ),
    route(
        "POST",
        "/ojs/v1/admin/keys/{id}/rotate",
        Tenant(Admin),
        "rotate an API key",
    ),
    route(
        "POST",
        "/ojs/v1/auth/login",
        Public,
        "admin login (password + TOTP)",
    ),
    route(
        "POST",
        "/ojs/v1/auth/refresh",
        Public,
        "exchange a refresh token",
    ),
    route(
        "POST",
        "/ojs/v1/auth/logout",
        Public,
        "end a session family",
    ),
    route(
        "GET",
        "/ojs/v1/admin/users",
        System(Admin),
        "list admin users",
    ),
    route(
        "POST",
        "/ojs/v1/admin/users",
        System(Admin),
        "create an admin user",
    ),
    route(
        "POST",
        "/ojs/v1/admin/users/{name}/password",
        System(Admin),
        "change a password",
    ),
    route(
        "GET",
        "/ojs/v1/admin/audit",
        System(Admin),
        "query the audit trail",
    ),
    route(
        "GET",
        "/ojs/v1/admin/queues/{name}/config",
        System(Admin),
        "read a queue's backpressure bound",
    ),
    route(
        "PUT",
        "/ojs/v1/admin/queues/{name}/config",
        System(Admin),
        "set a queue's backpressure bound",
    ),
    route(
        "GET",
        "/ojs/v1/admin/vault",
        System(Admin),
        "key vault status (jobs per KEK, unreadable jobs, re-wrap progress)",
    ),
    route(
        "POST",
        "/ojs/v1/admin/vault/rewrap",
        System(Admin),
        "re-wrap data keys with the active KEK",
    ),
    route(
        "POST",
        "/ojs/v1/admin/reset",
        System(Admin),
        "delete every job (testing mode only)",
    ),
];

/// The row for a matched resource pattern and method.
#[must_use]
pub fn lookup(method: &str, path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.method == method && r.path == path)
}

/// The table as Markdown, as `docs/access.md` publishes it: one row per route, one column per
/// built-in role, for a credential of the caller's own tenant.
#[must_use]
pub fn markdown_table() -> String {
    let policy = crate::auth::Policy::default();
    let roles = [
        "producer",
        "worker",
        "operator",
        "admin",
        "observer",
        "submitter",
    ];
    let mut out = String::from("| route | needs |");
    for r in roles {
        out.push_str(&format!(" {r} |"));
    }
    out.push_str("\n|---|---|");
    for _ in roles {
        out.push_str("---|");
    }
    out.push('\n');
    for route in ROUTES {
        let needs = match route.need {
            Public => "public".to_string(),
            Tenant(p) => p.as_str().to_string(),
            System(p) => format!("{p}, system scope"),
        };
        out.push_str(&format!("| `{} {}` | {needs} |", route.method, route.path));
        for role in roles {
            let grants = policy.grants(&[role.to_string()], None, None);
            let cell = match route.need.permission() {
                None => "yes".to_string(),
                Some(p) => match grants.decide(p, None) {
                    Ok(crate::auth::Reach::All) => "yes".to_string(),
                    Ok(crate::auth::Reach::OwnJobs) if route.path.contains("{id}") => {
                        "own jobs".to_string()
                    }
                    Ok(crate::auth::Reach::OwnJobs) => "no".to_string(),
                    Err(_) => "no".to_string(),
                },
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_table_matches_the_code() {
        let doc = include_str!("../../docs/access.md");
        let table = markdown_table();
        assert!(
            doc.contains(&table),
            "docs/access.md is out of date; its table must read:\n{table}"
        );
    }

    #[test]
    fn every_route_appears_once() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {}",
                    a.method,
                    a.path
                );
            }
        }
    }
}
