//! Who may call what: one table maps every route to the permission it needs, and the
//! [`Authenticated`](super::auth::Authenticated) extractor enforces it before any handler runs.
//! A route missing from the table is refused (deny by default). Handlers then narrow the check
//! to the queue or job they touch. `docs/access.md` publishes the same table; a test keeps the
//! two equal.

use actix_web::http::Method;
use actix_web::web;

use super::routes::{admin, dead_letter, jobs, keys, queues, sessions, system, vault, workers};
use crate::auth::Permission;
use crate::limiter::rates::Class;

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

/// One row of the table: everything the server knows about a route, declared once. The actix
/// routing ([`register`]), the permission check, the rate class and `docs/access.md` are all
/// made from it.
#[derive(Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    /// The actix resource pattern.
    pub path: &'static str,
    pub need: Need,
    /// Which per-principal rate budget the route spends.
    pub rate: Class,
    /// When the route is served at all.
    pub gate: Gate,
    /// What the route does, for the published table.
    pub what: &'static str,
    /// The handler, as an actix route without its method guard.
    handler: fn() -> actix_web::Route,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// When a route is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Always,
    /// Only with `[testing] allow_reset` (conformance runs).
    Testing,
}

/// One row: method, path, need, rate class, gate, handler, description.
macro_rules! route {
    ($method:ident $path:literal, $need:expr, $rate:ident, $gate:ident, $handler:path, $what:literal) => {
        Route {
            method: stringify!($method),
            path: $path,
            need: $need,
            rate: Class::$rate,
            gate: Gate::$gate,
            what: $what,
            handler: || web::to($handler),
        }
    };
}

use Need::{Public, System, Tenant};
use Permission::{Admin, Cancel, Dequeue, Enqueue, Inspect};

/// Every route the server serves. A literal path comes before a pattern that would also match
/// it (`/jobs/batch` before `/jobs/{id}`): resources match in this order.
pub const ROUTES: &[Route] = &[
    route!(GET "/ojs/manifest", Public, Other, Always, system::manifest, "server manifest"),
    route!(GET "/ojs/v1/health", Public, Other, Always, system::health, "health"),
    route!(GET "/metrics", System(Inspect), Other, Always, system::metrics, "Prometheus metrics"),
    route!(GET "/ojs/v1/queues", Tenant(Inspect), Other, Always, system::list_queues, "list queues"),
    route!(GET "/ojs/v1/queues/{name}/stats", Tenant(Inspect), Other, Always, queues::stats, "a queue's depth and bound"),
    route!(GET "/ojs/v1/events", Tenant(Inspect), Other, Always, system::list_events, "recent job events"),
    route!(POST "/ojs/v1/jobs", Tenant(Enqueue), Enqueue, Always, jobs::enqueue, "enqueue a job"),
    route!(POST "/ojs/v1/jobs/batch", Tenant(Enqueue), Other, Always, jobs::enqueue_batch, "enqueue jobs, all or none"),
    route!(GET "/ojs/v1/jobs/{id}", Tenant(Inspect), Other, Always, jobs::info, "read a job"),
    route!(DELETE "/ojs/v1/jobs/{id}", Tenant(Cancel), Other, Always, jobs::cancel, "cancel a job"),
    route!(POST "/ojs/v1/jobs/{id}/activate", Tenant(Enqueue), Other, Always, jobs::activate, "activate a pending job"),
    route!(POST "/ojs/v1/workers/fetch", Tenant(Dequeue), Worker, Always, workers::fetch, "fetch jobs"),
    route!(POST "/ojs/v1/workers/ack", Tenant(Dequeue), Worker, Always, workers::ack, "complete a job"),
    route!(POST "/ojs/v1/workers/nack", Tenant(Dequeue), Worker, Always, workers::nack, "fail a job"),
    route!(POST "/ojs/v1/workers/heartbeat", Tenant(Dequeue), Worker, Always, workers::heartbeat, "extend leases"),
    route!(GET "/ojs/v1/dead-letter", Tenant(Inspect), Other, Always, dead_letter::list, "list dead letters"),
    route!(DELETE "/ojs/v1/dead-letter/{id}", Tenant(Admin), Other, Always, dead_letter::delete, "purge a dead letter"),
    route!(POST "/ojs/v1/dead-letter/{id}/retry", Tenant(Admin), Other, Always, dead_letter::retry, "retry a dead letter"),
    route!(GET "/ojs/v1/admin/keys", Tenant(Admin), Other, Always, keys::list, "list API keys"),
    route!(POST "/ojs/v1/admin/keys", Tenant(Admin), Other, Always, keys::create, "create an API key"),
    route!(POST "/ojs/v1/admin/keys/revoke", Tenant(Admin), Other, Always, keys::revoke_many, "revoke API keys in bulk"),
    route!(DELETE "/ojs/v1/admin/keys/{id}", Tenant(Admin), Other, Always, keys::revoke, "revoke an API key"),
    route!(POST "/ojs/v1/admin/keys/{id}/rotate", Tenant(Admin), Other, Always, keys::rotate, "rotate an API key"),
    route!(POST "/ojs/v1/auth/login", Public, Other, Always, sessions::login, "admin login (password + TOTP)"),
    route!(POST "/ojs/v1/auth/refresh", Public, Other, Always, sessions::refresh, "exchange a refresh token"),
    route!(POST "/ojs/v1/auth/logout", Public, Other, Always, sessions::logout, "end a session family"),
    route!(GET "/ojs/v1/admin/users", System(Admin), Other, Always, sessions::list_users, "list admin users"),
    route!(POST "/ojs/v1/admin/users", System(Admin), Other, Always, sessions::create_user, "create an admin user"),
    route!(POST "/ojs/v1/admin/users/{name}/password", System(Admin), Other, Always, sessions::change_password, "change a password"),
    route!(GET "/ojs/v1/admin/audit", System(Admin), Other, Always, admin::audit, "query the audit trail"),
    route!(GET "/ojs/v1/admin/queues/{name}/config", System(Admin), Other, Always, queues::config, "read a queue's backpressure bound"),
    route!(PUT "/ojs/v1/admin/queues/{name}/config", System(Admin), Other, Always, queues::set_config, "set a queue's backpressure bound"),
    route!(GET "/ojs/v1/admin/vault", System(Admin), Other, Always, vault::status, "key vault status (jobs per KEK, unreadable jobs, re-wrap progress)"),
    route!(POST "/ojs/v1/admin/vault/rewrap", System(Admin), Other, Always, vault::rewrap, "re-wrap data keys with the active KEK"),
    route!(POST "/ojs/v1/admin/reset", System(Admin), Other, Testing, admin::reset, "delete every job (testing mode only)"),
];

/// Registers every route of [`ROUTES`] on `cfg`, one actix resource per path (in table order)
/// with a route per method; other methods on a known path answer 405.
pub fn register(cfg: &mut web::ServiceConfig, testing: bool) {
    let mut paths: Vec<&'static str> = Vec::new();
    for route in ROUTES {
        if !paths.contains(&route.path) {
            paths.push(route.path);
        }
    }
    for path in paths {
        let served: Vec<&Route> = ROUTES
            .iter()
            .filter(|r| r.path == path && (r.gate == Gate::Always || testing))
            .collect();
        // A path with nothing served is not there at all (404, not 405).
        if served.is_empty() {
            continue;
        }
        let mut resource =
            web::resource(path).default_service(web::to(super::routes::method_not_allowed));
        for route in served {
            resource = resource.route((route.handler)().method(route.method()));
        }
        // Inside the resource (after routing), so a panic is answered with the request at hand.
        cfg.service(resource.wrap(actix_web::middleware::from_fn(
            super::middleware::catch_panics,
        )));
    }
}

impl Route {
    /// The method as actix knows it.
    #[must_use]
    pub fn method(&self) -> Method {
        Method::from_bytes(self.method.as_bytes()).unwrap_or(Method::GET)
    }
}

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
    let mut out = String::from("| route | needs | rate budget |");
    for r in roles {
        out.push_str(&format!(" {r} |"));
    }
    out.push_str("\n|---|---|---|");
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
        let rate = match route.rate {
            Class::Enqueue => "enqueue",
            Class::Worker => "worker",
            Class::Other => "other",
        };
        out.push_str(&format!(
            "| `{} {}` | {needs} | {rate} |",
            route.method, route.path
        ));
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
    fn every_method_is_one_actix_knows_and_no_literal_path_is_shadowed() {
        for (i, route) in ROUTES.iter().enumerate() {
            assert_eq!(route.method().as_str(), route.method, "{route:?}");
            // A pattern row listed earlier would swallow this literal path.
            for earlier in &ROUTES[..i] {
                if earlier.path != route.path && earlier.path.contains('{') {
                    let re = regex_lite(earlier.path);
                    assert!(!re(route.path), "{route:?} is shadowed by {earlier:?}");
                }
            }
        }
    }

    /// Whether a concrete path matches an actix pattern of `{name}` segments.
    fn regex_lite(pattern: &'static str) -> impl Fn(&str) -> bool {
        move |path: &str| {
            let a: Vec<&str> = pattern.split('/').collect();
            let b: Vec<&str> = path.split('/').collect();
            a.len() == b.len()
                && a.iter()
                    .zip(&b)
                    .all(|(p, s)| p == s || (p.starts_with('{') && !s.starts_with('{')))
        }
    }

    #[test]
    fn rate_classes_follow_the_table() {
        let class = |m: &str, p: &str| lookup(m, p).map(|r| r.rate);
        assert_eq!(class("POST", "/ojs/v1/jobs"), Some(Class::Enqueue));
        assert_eq!(class("POST", "/ojs/v1/workers/fetch"), Some(Class::Worker));
        assert_eq!(class("POST", "/ojs/v1/workers/nack"), Some(Class::Worker));
        assert_eq!(class("GET", "/ojs/v1/jobs/{id}"), Some(Class::Other));
        assert_eq!(class("POST", "/ojs/v1/jobs/batch"), Some(Class::Other));
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
