//! Every audit event type Bulwark writes, with what writes it. `docs/audit.md` is generated
//! from this table, and tests check both ways that the sources emit exactly these types and that
//! an integration test looks for each one.

/// One kind of audit record.
pub struct EventType {
    pub name: &'static str,
    /// The route, command or action that writes it.
    pub emitted_by: &'static str,
    /// Whether the operation waits for the record to be durable and is refused (503) if it
    /// cannot be written.
    pub fail_closed: bool,
}

const fn ev(name: &'static str, emitted_by: &'static str, fail_closed: bool) -> EventType {
    EventType {
        name,
        emitted_by,
        fail_closed,
    }
}

/// The catalogue, grouped by subject.
pub const EVENTS: &[EventType] = &[
    ev("server.started", "server start (listen address, security switches, retention)", false),
    ev("server.stopped", "orderly shutdown (SIGTERM / SIGINT)", false),
    ev("http.panic", "any request whose handling panicked (a bug; answered 500, the worker keeps serving)", false),
    ev("auth.success", "first successful use of an API key in this process", false),
    ev("auth.failure", "any request whose credential is missing, malformed, unknown, wrong, expired, revoked or throttled (with the reason; throttled ones aggregated per address with a count)", false),
    ev("authz.denied", "any request refused by the route table, a queue ACL, a tenant rule or a job rule (with the reason); reads of hidden jobs", false),
    ev("auth.login", "`POST /ojs/v1/auth/login` (success and failure, with the reason; a session is issued only once its record is durable)", true),
    ev("auth.login_throttled", "`POST /ojs/v1/auth/login` over the per-address or per-user budget (aggregated per source and limit, with a count)", false),
    ev("auth.refresh", "`POST /ojs/v1/auth/refresh` (new tokens are issued only once the record is durable)", true),
    ev("auth.refresh_reuse", "`POST /ojs/v1/auth/refresh` with a refresh token already used (the family is revoked)", false),
    ev("auth.logout", "`POST /ojs/v1/auth/logout`", false),
    ev("key.created", "`POST /ojs/v1/admin/keys`, `bulwark keys create`", true),
    ev("key.revoked", "`DELETE /ojs/v1/admin/keys/{id}`, `bulwark keys revoke ID`", true),
    ev("key.bulk_revoked", "`POST /ojs/v1/admin/keys/revoke`, `bulwark keys revoke --tenant|--name`", true),
    ev("key.rotated", "`POST /ojs/v1/admin/keys/{id}/rotate`, `bulwark keys rotate`", true),
    ev("user.created", "`POST /ojs/v1/admin/users`, `bulwark users create`", true),
    ev("user.password_changed", "`POST /ojs/v1/admin/users/{name}/password`, `bulwark users passwd`", true),
    ev("user.totp_enrolled", "`bulwark users totp`", true),
    ev("user.disabled", "`bulwark users disable`", true),
    ev("user.enabled", "`bulwark users enable`", true),
    ev("job.cancelled", "`DELETE /ojs/v1/jobs/{id}` (who cancelled it, the previous state)", false),
    ev("job.dry_run", "`POST /ojs/v1/jobs` with `dry_run: true`", true),
    ev("job.type_refused", "`POST /ojs/v1/jobs` and `/jobs/batch` with a job type outside `[validation] job_types`", false),
    ev("job.batch_enqueued", "`POST /ojs/v1/jobs/batch` (how many jobs)", false),
    ev("backpressure.dropped", "`POST /ojs/v1/jobs` into a full `drop_oldest` queue (which job was dropped for which)", false),
    ev("queue.config_changed", "`PUT /ojs/v1/admin/queues/{name}/config` (bound and strategy)", true),
    ev("policy_token.used", "`POST /ojs/v1/jobs` of an action job type with `X-OJS-Policy-Token`", true),
    ev("dead_letter.retried", "`POST /ojs/v1/dead-letter/{id}/retry`", true),
    ev("dead_letter.deleted", "`DELETE /ojs/v1/dead-letter/{id}`", true),
    ev("tls.handshake_failure", "a failed TLS handshake (protocol, cipher, timeout; aggregated per address and reason, with a count)", false),
    ev("tls.certificate_rejected", "a client certificate refused at the handshake (expired, revoked, untrusted, missing when required; aggregated per address and reason, with a count)", false),
    ev("tls.certificate_reloaded", "a new server certificate/key or client CA/CRL going live (secret watcher, poll, SIGHUP)", false),
    ev("tls.reload_failed", "a certificate reload refused (mismatched pair, half-written or exposed key; the old one stays)", false),
    ev("secret.rotated", "the secret watcher (file change, SIGHUP, 60 s timer) swapping in new KEKs, JWT verification keys, the policy-token secret or the session signing key (key ids only)", false),
    ev("secret.reload_failed", "the secret watcher refusing a malformed, half-written or exposed secret (the old one stays)", false),
    ev("secret.keys_created", "`bulwark init --new-keys`: keys made anew over data whose keys are missing (which, what they protected, where the old audit log went; the first record of the new trail)", true),
    ev("vault.rewrap", "`POST /ojs/v1/admin/vault/rewrap`, `bulwark vault rewrap`", true),
    ev("vault.rewrap_finished", "the end of a re-wrap (how many data keys were re-wrapped)", false),
    ev("vault.rotation_due", "a key-encryption key past `[vault] rotate_after_wraps` or `rotate_after_days` (its wrap count and age; once per key per process, checked every minute)", false),
    ev("admin.reset", "`POST /ojs/v1/admin/reset` (conformance runs only)", true),
    ev("request.refused", "any request refused for its form before authentication: a security header sent twice, a Content-Encoding, a request head over its bounds, malformed or with an ambiguous body length, a head timeout (with the reason; aggregated per address and reason, with a count)", false),
    ev("rate_limit.exceeded", "any request over a rate limit (per address, global, tenant or principal; aggregated per scope and key, with a count)", false),
    ev("limit.refused", "`POST /ojs/v1/jobs`, `/jobs/batch`, `/workers/fetch` refused by a quota, a tenant limit, a full queue or the long-poll cap (aggregated per principal and code, with a count)", false),
    ev("abuse.spike", "enqueues over 10x the principal's baseline (throttled for the cool-down)", false),
    ev("abuse.large_payloads", "a flood of large enqueues from one principal (throttled)", false),
    ev("abuse.priority_flood", "a principal submitting only top priorities (demoted)", false),
    ev("abuse.retry_storm", "many nacks from one principal in a window (reported)", false),
    ev("config.reloaded", "SIGHUP: the config file re-read and its limits applied", false),
    ev("config.reload_failed", "SIGHUP with an invalid config file (the old settings stay)", false),
    ev("audit.queried", "`GET /ojs/v1/admin/audit`", false),
    ev("audit.pruned", "the audit writer applying `[audit] retention_days` (start, hourly)", false),
    ev("audit.resumed", "the audit writer writing again after failed appends (how many records were lost, since when)", false),
];

/// Whether `name` is a catalogued event type.
#[must_use]
pub fn is_known(name: &str) -> bool {
    EVENTS.iter().any(|e| e.name == name)
}

/// The catalogue as the Markdown table published in `docs/audit.md`.
#[must_use]
pub fn markdown_table() -> String {
    let mut out = String::from("| event type | written by | fail-closed |\n|---|---|---|\n");
    for e in EVENTS {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            e.name,
            e.emitted_by,
            if e.fail_closed { "yes" } else { "no" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::*;

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Whether a string literal's contents look like an event type (`subject.action`).
    fn looks_like_event_type(word: &str) -> bool {
        let mut parts = word.split('.');
        matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None)
            if !a.is_empty() && !b.is_empty()
                && a.chars().chain(b.chars()).all(|c| c.is_ascii_lowercase() || c == '_'))
    }

    /// `"subject.action"` literals in the files under `dir` that deal with the audit trail.
    fn literals_in(dir: &str) -> BTreeSet<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        let mut found = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let builds_events = [
                "AuditEvent",
                "audit::event",
                "fn event_type",
                "fn events(&self) -> (",
                "Outcome::",
            ]
            .iter()
            .any(|marker| text.contains(marker));
            if file.ends_with("catalog.rs") || !builds_events {
                continue;
            }
            // Every other piece between quotes is a literal's contents; the shape check keeps
            // the rest out.
            for piece in text.split('"') {
                if looks_like_event_type(piece) {
                    found.insert(piece.to_string());
                }
            }
        }
        found
    }

    /// Literals of that shape that are not event types.
    const NOT_EVENTS: &[&str] = &[
        "meta.tenant_id",
        "test.event",
        "options.dry_run",
        "options.priority",
        "options.timeout_ms",
        "backpressure.max_depth",
        "backpressure.max_size_bytes",
        "backpressure.strategy",
        "backpressure.warning_threshold",
        "server.crt",
        "server.key",
        // The fuzz harness (`src/fuzzing.rs`): a job type, a file name, its own log's type.
        "email.send",
        "fuzz.job",
        "hs.key",
        "fuzz.event",
    ];

    #[test]
    fn the_sources_emit_exactly_the_catalogued_event_types() {
        let emitted: BTreeSet<String> = literals_in("src")
            .into_iter()
            .filter(|l| !NOT_EVENTS.contains(&l.as_str()))
            .collect();
        let catalogued: BTreeSet<String> = EVENTS.iter().map(|e| e.name.to_string()).collect();
        let missing: Vec<_> = emitted.difference(&catalogued).collect();
        assert!(
            missing.is_empty(),
            "emitted but not catalogued: {missing:?}"
        );
        let stale: Vec<_> = catalogued.difference(&emitted).collect();
        assert!(stale.is_empty(), "catalogued but never emitted: {stale:?}");
        assert_eq!(catalogued.len(), EVENTS.len(), "a type is listed twice");
    }

    #[test]
    fn an_integration_test_looks_for_every_event_type() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        let text: String = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        let untested: Vec<&str> = EVENTS
            .iter()
            .map(|e| e.name)
            .filter(|name| {
                !text.contains(&format!("\"{name}\""))
                    && !text.contains(&format!("\\\"{name}\\\""))
                    && !text.contains(&format!("event_type={name}"))
            })
            .collect();
        assert!(
            untested.is_empty(),
            "no integration test checks {untested:?}"
        );
    }

    #[test]
    fn the_published_catalogue_matches_the_code() {
        let doc =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/audit.md"))
                .unwrap();
        assert!(
            doc.contains(&markdown_table()),
            "docs/audit.md is out of date; its table must be:\n{}",
            markdown_table()
        );
    }
}
