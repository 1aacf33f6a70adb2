//! Start-up and shutdown: open the store, create the bootstrap key on first start, spawn the
//! actors, serve HTTP, and stop in order (HTTP first, then the queue, whose last commit is
//! awaited).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use secrecy::ExposeSecret;
use tracing::{info, warn};

use crate::audit::{self, AuditEvent, AuditHandle, Outcome};
use crate::auth::accounts::Accounts;
use crate::auth::actions::{self, ActionGuard};
use crate::auth::records::{self, KeySpec};
use crate::auth::{users, AuthHandle};
use crate::clock::Clock;
use crate::config::Config;
use crate::http;
use crate::limiter::LimiterHandle;
use crate::queue::QueueHandle;
use crate::secrets::watch::SecretWatcher;
use crate::store::Store;
use crate::vault::{KekReloader, KeySource, VaultHandle, VaultKeys};

/// The file the bootstrap admin key is written to, inside the secrets folder.
pub const BOOTSTRAP_KEY_FILE: &str = "bootstrap-admin.key";
/// The environment variable that sets the first admin user's password.
pub const ADMIN_PASSWORD_ENV: &str = "OJS_SECRET_ADMIN_PASSWORD";
/// The file the first admin user's TOTP enrolment URI is written to, inside the secrets folder.
pub const BOOTSTRAP_TOTP_FILE: &str = "bootstrap-admin-totp.uri";

/// Creates the secrets folder with mode 0700, or checks an existing one is not open to others.
pub fn prepare_secrets_dir(dir: &Path) -> anyhow::Result<()> {
    crate::secrets::prepare_dir(dir)
}

/// On first start (no key in the database), creates an admin key, writes it to the secrets
/// folder and prints it once.
fn bootstrap(store: &Store, config: &Config, clock: &Clock) -> anyhow::Result<()> {
    if records::any(store)? {
        return Ok(());
    }
    let spec = KeySpec {
        name: "bootstrap-admin".into(),
        roles: vec!["admin".into()],
        tenant: None,
        scopes: None,
        queues: None,
        expires_at: None,
    };
    let (record, token) = records::create(
        store,
        &config.policy()?,
        &spec,
        &config.secrets.key_env,
        clock.now_ms(),
    )?;
    let path = config.secrets.dir.join(BOOTSTRAP_KEY_FILE);
    crate::secrets::write_private(&path, format!("{}\n", token.expose_secret()).as_bytes())?;
    println!(
        "Bootstrap admin key (shown once; also in {}):\n{}",
        path.display(),
        token.expose_secret()
    );
    info!(key = %crate::auth::key::display_id(&record.id), path = %path.display(), "bootstrap admin key created");
    Ok(())
}

/// On a start with no user and `OJS_SECRET_ADMIN_PASSWORD` set, creates the user `admin` with
/// that password (which must meet the policy; the server refuses to start otherwise) and a
/// fresh TOTP secret, whose enrolment URI is printed once and written to the secrets folder.
/// There is never a default password: without the variable, no user is created.
fn bootstrap_admin_user(
    store: &Store,
    config: &Config,
    password: Option<secrecy::SecretString>,
    clock: &Clock,
) -> anyhow::Result<()> {
    let Some(password) = password else {
        return Ok(());
    };
    if users::any(store)? {
        warn!("{ADMIN_PASSWORD_ENV} is set but users exist, so it is ignored; unset it");
        return Ok(());
    }
    let policy = users::PasswordPolicy::from(&config.sessions);
    if let Err(violation) = policy.check("admin", &password) {
        bail!(
            "{ADMIN_PASSWORD_ENV} does not meet the password policy ({}); set a stronger one or \
             unset it",
            violation.missing.join("; ")
        );
    }
    let hash = crate::auth::key::hash(&password)
        .map_err(|e| anyhow::anyhow!("cannot hash the admin password: {e}"))?;
    drop(password);
    let secret = users::new_totp_secret()?;
    let uri = users::otpauth_uri(&secret, "admin")?;
    users::insert(
        store,
        &users::new_record("admin", hash, Some(secret), clock.now_ms()),
    )?;
    let path = config.secrets.dir.join(BOOTSTRAP_TOTP_FILE);
    crate::secrets::write_private(&path, format!("{}\n", uri.expose_secret()).as_bytes())?;
    println!(
        "Admin user \"admin\" created from {ADMIN_PASSWORD_ENV}. Enrol its TOTP (shown once; \
         also in {}, delete it once enrolled):\n{}",
        path.display(),
        uri.expose_secret()
    );
    info!(path = %path.display(), "admin user created from the environment");
    Ok(())
}

fn write_addr_file(path: &Path, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received, shutting down"),
    }
}

/// The value of `OJS_SECRET_POLICY_TOKEN`, if set (any bytes).
#[must_use]
pub fn policy_token_secret_env() -> Option<zeroize::Zeroizing<Vec<u8>>> {
    use std::os::unix::ffi::OsStringExt;
    std::env::var_os(actions::SECRET_ENV).map(|v| zeroize::Zeroizing::new(v.into_vec()))
}

/// The action-job guard for `config`, with its policy-token secret (read the way
/// `bulwark policy-token sign` reads it).
pub fn load_action_guard(config: &Config) -> anyhow::Result<ActionGuard> {
    let guard = ActionGuard::load(
        &config.auth.actions,
        &config.secrets.dir,
        policy_token_secret_env(),
    )?;
    if config.auth.actions.enabled() {
        let types: Vec<&str> = config
            .auth
            .actions
            .types
            .iter()
            .map(|t| t.as_str())
            .collect();
        info!(types = ?types, "action job types need a policy token");
    }
    Ok(guard)
}

/// Loads the key-encryption keys from the configured folder and the `OJS_SECRET_KEK_*`
/// variables, creating one (named for `clock`'s time) as `new_keys` allows, and their usage
/// counts from `store`.
pub fn load_keys(
    config: &Config,
    clock: &Clock,
    store: &Store,
    new_keys: crate::vault::NewKeys,
) -> anyhow::Result<(Arc<KekReloader>, VaultKeys)> {
    let vault = config.vault_config();
    let source = KeySource {
        dir: vault.kek_dir,
        active: vault.active,
    };
    KekReloader::load(
        source,
        crate::vault::keyring::env_keys(),
        store,
        new_keys,
        vault.rotation,
        clock.clone(),
    )
    .context("cannot load the key-encryption keys ([vault])")
}

/// `bulwark serve`: runs until SIGINT or SIGTERM.
pub async fn serve(config: Config, addr_file: Option<PathBuf>) -> anyhow::Result<()> {
    serve_until(config, addr_file, shutdown_signal()).await
}

/// Runs the server until `shutdown` completes, then stops it in stages: stop accepting, drain
/// HTTP, stop the queue after its last commit, stop the audit writer last. The integration
/// tests run it in process this way; `bulwark serve` runs it until a signal.
pub async fn serve_until(
    config: Config,
    addr_file: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if config.testing.allow_reset || config.testing.honour_test_directives {
        warn!("[testing] switches are on: this server is for conformance runs, not production");
    }
    // Before anything is created or opened: with action job types configured and no usable
    // policy-token secret, refuse to start rather than run with the guard off.
    let actions = Arc::new(load_action_guard(&config)?);
    // Opening the file, the first-start key (argon2) and the index rebuild all block: keep them
    // off the async threads.
    let setup = config.clone();
    // The one clock of the server: every component that reads the time holds a clone.
    let clock = Clock::system();
    let setup_clock = clock.clone();
    let admin_password = std::env::var(ADMIN_PASSWORD_ENV)
        .ok()
        .map(secrecy::SecretString::from);
    let (store, queue, queue_thread, audit, audit_thread, accounts, kek_reloader, keys) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            prepare_secrets_dir(&setup.secrets.dir)?;
            let store = Store::open(&setup.storage.data_dir)?;
            info!(jobs = %store.jobs_path().display(), control = %store.control_path().display(), "database open");
            // Before any key is created: data sealed or chained by keys that are missing
            // refuses the start, naming them all.
            crate::secrets::keys::refuse_missing(&setup, &store)?;
            // The KEKs next: without them no job can be written or read.
            let (kek_reloader, keys) = load_keys(
                &setup,
                &setup_clock,
                &store,
                crate::vault::NewKeys::IfNothingSealed,
            )?;
            bootstrap(&store, &setup, &setup_clock)?;
            bootstrap_admin_user(&store, &setup, admin_password, &setup_clock)?;
            let accounts = Accounts::open(
                store.clone(),
                &setup.sessions,
                &setup.secrets.dir,
                setup_clock.clone(),
            )?;
            let key = audit::load_or_create_key(&setup.secrets.dir, &setup.audit_config())?;
            let (audit, audit_thread) = AuditHandle::spawn(
                &setup.audit_config(),
                key,
                Some(store.clone()),
                setup_clock.clone(),
            )?;
            let (queue, thread) =
                QueueHandle::spawn(store.clone(), keys.clone(), {
                    let mut queue = setup.queue_config();
                    queue.clock = setup_clock.clone();
                    queue
                })?;
            Ok((
                store,
                queue,
                thread,
                audit,
                audit_thread,
                accounts,
                kek_reloader,
                keys,
            ))
        })
        .await??;
    let vault = VaultHandle::spawn(
        &config.vault_config(),
        keys,
        store.clone(),
        queue.clone(),
        Some(audit.clone()),
    );
    let watcher = SecretWatcher::spawn(config.watch_config(), Some(audit.clone()));
    watcher
        .register(Arc::new(crate::vault::KekWatch {
            reloader: kek_reloader,
            vault: vault.clone(),
        }))
        .await;
    match crate::auth::session::SessionKeyReload::new(accounts.sessions(), &config.secrets.dir) {
        Ok(reload) => watcher.register(Arc::new(reload)).await,
        Err(e) => warn!(error = %e, "the session signing key will not be reloaded"),
    }
    if config.auth.actions.enabled() {
        watcher
            .register(Arc::new(actions::PolicySecretReload {
                guard: actions.clone(),
                config: config.auth.actions.clone(),
                secrets_dir: config.secrets.dir.clone(),
                clock: clock.clone(),
            }))
            .await;
    }
    accounts.start_maintenance();
    let jwt = match &config.auth.jwt {
        Some(jwt) => Some(
            crate::auth::jwt::JwtVerifier::load(jwt, &config.secrets.dir)
                .context("cannot load the JWT verification keys ([auth.jwt])")?,
        ),
        None => None,
    };
    let auth = AuthHandle::spawn(
        store.clone(),
        Arc::new(config.policy()?),
        config.auth.throttle.clone(),
        jwt,
        Some(audit.clone()),
        clock.clone(),
    )?;

    if let (Some(slot), Some(jwt)) = (auth.jwt_slot(), &config.auth.jwt) {
        watcher
            .register(Arc::new(crate::auth::jwt::JwtReload::new(
                slot,
                jwt.clone(),
                config.secrets.dir.clone(),
                clock.clone(),
            )))
            .await;
    }
    let tls = if config.tls.enabled {
        let runtime = crate::tls::TlsRuntime::load(
            &config.tls,
            &config.secrets.dir,
            Arc::new(config.policy()?),
            clock.clone(),
        )
        .context(
            "cannot load the TLS certificate ([tls]); scripts/dev-certs.sh makes a development set",
        )?;
        Some(Arc::new(runtime))
    } else {
        None
    };
    let listener = TcpListener::bind(config.server.listen)
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let insecure_public = tls.is_none() && !addr.ip().is_loopback();
    if insecure_public {
        warn!(
            %addr,
            "INSECURE: plain HTTP on a non-loopback address (server.allow_insecure_plaintext_non_loopback); \
             credentials and job payloads cross the network unencrypted. Configure [tls]"
        );
    }
    audit
        .emit(
            AuditEvent::new("server.started", Outcome::Success)
                .detail("listen", addr.to_string())
                .detail(
                    "unknown_fields",
                    format!("{:?}", config.api.unknown_fields).to_lowercase(),
                )
                .detail("testing_reset", config.testing.allow_reset)
                .detail("testing_directives", config.testing.honour_test_directives)
                .detail("action_types", config.auth.actions.types.len())
                .detail("audit_retention_days", config.audit.retention_days)
                .detail("tls", tls.is_some())
                .detail(
                    "client_auth",
                    format!("{:?}", config.tls.client_auth).to_lowercase(),
                )
                .detail("insecure_plaintext_non_loopback", insecure_public),
        )
        .await;
    let audit_log = config.audit_config().log_file;
    let retention = tokio::spawn(apply_audit_retention(audit.clone()));
    let limiter = LimiterHandle::spawn(&config.limits, clock.clone());
    let rules = crate::rules::RulesHandle::new(&config)?;
    let reloadable = crate::config::reload::Reloadable {
        limiter: limiter.clone(),
        rules: rules.clone(),
    };
    let reloads = config
        .source
        .clone()
        .and_then(|path| crate::config::reload::spawn_on_sighup(path, reloadable, audit.clone()));
    if rules.current().allowlist.is_open() {
        warn!(
            "no job-type allowlist: every well-formed job type is accepted; list the types in \
             [validation] job_types (OJS security SEC-008)"
        );
    }
    // Every service, built once from engines that are all present.
    let abuse = crate::services::abuse::Abuse::new(limiter.clone());
    let services = crate::services::Services {
        jobs: crate::services::jobs::Jobs::new(
            queue.clone(),
            rules.clone(),
            actions.clone(),
            abuse.clone(),
        ),
        workers: crate::services::workers::Workers::new(
            queue.clone(),
            rules.clone(),
            limiter.clone(),
            abuse,
            config.queue.max_fetch_count,
        ),
        keys: crate::services::keys::Keys::new(
            auth.clone(),
            config.secrets.key_env.clone(),
            config.auth.rotation_grace_secs,
        ),
        users: crate::services::users::Users::new(accounts.clone()),
        sessions: crate::services::sessions::Sessions::new(
            accounts.clone(),
            crate::services::Trail::new(audit.clone()),
            &config.sessions,
        ),
        queues: crate::services::queues::Queues::new(queue.clone(), rules.clone()),
        dead_letters: crate::services::dead_letters::DeadLetters::new(queue.clone()),
        vault: crate::services::vault::Vault::new(vault.clone()),
        audit: crate::services::audit_queries::AuditQueries::new(store.clone(), audit_log.clone()),
        trail: crate::services::Trail::new(audit.clone()),
    };
    let shared = http::Shared {
        services,
        rules,
        config: Arc::new(config),
        queue: queue.clone(),
        auth,
        audit: audit.clone(),
        metrics: crate::metrics::install(),
        store,
        audit_log,
        started: Instant::now(),
        accounts,
        actions,
        limiter,
        vault,
        watcher: watcher.clone(),
        tls: tls.clone(),
        clock,
    };
    let server = http::server(shared, listener)?;
    let handle = server.handle();
    let mut running = tokio::spawn(server);
    let mut reloader = None;
    match &tls {
        Some(runtime) => {
            crate::tls::publish_expiry(runtime);
            watcher
                .register(Arc::new(crate::tls::TlsReload(runtime.clone())))
                .await;
            reloader = Some(crate::tls::spawn_reloader(runtime.clone(), watcher.clone()));
            let expiry = runtime.expiry_now();
            if expiry.status != "ok" {
                warn!(status = expiry.status, not_after = %crate::clock::rfc3339(expiry.not_after * 1000), "the TLS certificate expires soon");
            }
            info!(%addr, client_auth = ?runtime.settings.client_auth, "listening (HTTPS: TLS 1.3 and 1.2)");
        }
        None if insecure_public => info!(%addr, "listening (plain HTTP, insecure)"),
        None => info!(%addr, "listening (plain HTTP on loopback)"),
    }
    if let Some(path) = addr_file {
        write_addr_file(&path, addr)?;
    }

    tokio::select! {
        () = shutdown => {}
        result = &mut running => {
            result??;
            bail!("the HTTP server stopped unexpectedly");
        }
    }
    // The reload task holds an audit handle: stop it so the audit writer can finish.
    if let Some(task) = reloads {
        task.abort();
        let _ = task.await;
    }
    queue.drain().await;
    handle.stop(true).await;
    if let Some(reloader) = reloader {
        reloader.abort();
        let _ = reloader.await;
    }
    let _ = running.await;
    // The watcher's reloaders hold the vault, which holds a queue handle: let them go so the
    // queue thread can end.
    drop(watcher);
    drop(queue);
    // The queue thread ends once the last handle (held by the stopped HTTP workers) is gone.
    match tokio::task::spawn_blocking(move || queue_thread.join()).await {
        Ok(Ok(exit)) if exit.failed_turns == 0 && !exit.never_started => info!(
            turns = exit.turns,
            commits = exit.commits,
            released = exit.released,
            "queue stopped after its last commit"
        ),
        Ok(Ok(exit)) => warn!(
            turns = exit.turns,
            commits = exit.commits,
            failed_turns = exit.failed_turns,
            never_started = exit.never_started,
            "queue stopped; some turns failed and were answered 503"
        ),
        _ => warn!("the queue thread ended abnormally"),
    }
    // The audit writer stops last, after everything that could still emit.
    retention.abort();
    let _ = retention.await;
    // What the aggregation windows counted is written before the last record.
    audit.flush_windows().await;
    audit
        .emit(AuditEvent::new("server.stopped", Outcome::Success))
        .await;
    drop(audit);
    tokio::task::spawn_blocking(move || audit_thread.join())
        .await
        .ok();
    info!("stopped");
    Ok(())
}

/// Applies the audit retention period every hour (the writer also applies it at start).
async fn apply_audit_retention(audit: AuditHandle) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    every.tick().await;
    loop {
        every.tick().await;
        // Failures are logged by the writer and retried at the next tick.
        let _ = audit.prune().await;
    }
}
