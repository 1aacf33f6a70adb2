//! The `bulwark` binary: parse the command line, load the config, run.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use secrecy::ExposeSecret;

use bulwark::audit::{AuditEvent, Outcome};
use bulwark::auth::records::{self, KeySpec};
use bulwark::auth::{Permission, QueuePattern};
use bulwark::cli::{
    AuditCommand, Cli, Command, ConfigCommand, KeysCommand, PolicyTokenCommand, UsersCommand,
    VaultCommand,
};
use bulwark::clock::{parse_rfc3339, parse_time_spec, rfc3339, Clock, Millis};
use bulwark::config::Config;
use bulwark::services::keys::{KeyFilter, Rotated};
use bulwark::services::offline::Offline;
use bulwark::services::users::Totp;
use bulwark::services::Caller;
use bulwark::store::Store;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for position in bulwark::cli::secret_looking_args(&args) {
        // The value is not repeated: it is already where it should not be.
        eprintln!(
            "bulwark: warning: command-line argument {position} looks like a secret; command \
             lines are visible to other users and kept in shell history: pass secrets in files \
             or OJS_SECRET_* variables"
        );
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwark: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, addr_file } => {
            let config = Config::load(config.as_deref())?;
            bulwark::telemetry::init(&config.log);
            // One crypto provider for the process (ring), before anything uses rustls.
            bulwark::tls::install_default_provider();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("bulwark-main")
                .enable_all()
                .build()?;
            runtime.block_on(bulwark::app::serve(config, addr_file))
        }
        Command::Keys { command } => keys(command),
        Command::Users { command } => users_command(command),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    head,
                    anchor,
                    config,
                },
        } => audit_verify(file, head, anchor.as_deref(), config),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let config = Config::load(config.as_deref())?;
            // The JSON Schemas are files of their own: compile them as a start would.
            bulwark::rules::Rules::load(&config)?;
            println!("{config:#?}");
            Ok(())
        }
        Command::PolicyToken {
            command:
                PolicyTokenCommand::Sign {
                    config,
                    tenant,
                    actor,
                    action,
                    ttl_secs,
                    scopes,
                },
        } => policy_token_sign(config, tenant, actor, action, ttl_secs, scopes),
        Command::Init { config, new_keys } => init(config, new_keys),
        Command::Vault { command } => vault_command(command),
    }
}

fn init(config: Option<std::path::PathBuf>, new_keys: bool) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    let report = bulwark::secrets::keys::init(&config, new_keys, &Clock::system())?;
    for path in &report.set_aside {
        println!("set aside (its key is gone): {}", path.display());
    }
    for key in &report.created {
        println!("created: {key}");
    }
    println!(
        "secrets folder {} ready; key-encryption keys: {} (active: {})",
        config.secrets.dir.display(),
        report.keys,
        report
            .active
            .as_deref()
            .map_or_else(|| "none".into(), bulwark::vault::keyring::short_id)
    );
    Ok(())
}

fn vault_command(command: VaultCommand) -> anyhow::Result<()> {
    use bulwark::vault::keyring::short_id;
    match command {
        VaultCommand::Status { config } => {
            let config = Config::load(config.as_deref())?;
            let store = Store::open(&config.storage.data_dir).context(
                "the database is in use: on a running server use GET /ojs/v1/admin/vault",
            )?;
            let (_, keys) = bulwark::app::load_keys(
                &config,
                &Clock::system(),
                &store,
                bulwark::vault::NewKeys::Never,
            )?;
            let status = bulwark::vault::scan(&store, &keys)?;
            println!(
                "{:<40} {:>10} {:>14} {:>8}  state",
                "kek", "jobs", "wrapped keys", "age (d)"
            );
            for k in &status.keys {
                let state = match (k.active, k.loaded) {
                    (true, _) => "active",
                    (false, true) => "loaded",
                    (false, false) => "MISSING (jobs unreadable)",
                };
                let due = if k.rotation_due.is_empty() {
                    String::new()
                } else {
                    format!(", ROTATION DUE ({})", k.rotation_due.join(", "))
                };
                println!(
                    "{:<40} {:>10} {:>14} {:>8}  {state}{due}",
                    short_id(&k.id),
                    k.jobs,
                    k.wrapped_keys,
                    k.age_days
                );
            }
            println!(
                "total jobs {}, unreadable {}, stored before encryption {}",
                status.total_jobs, status.unreadable_jobs, status.clear_jobs
            );
            Ok(())
        }
        VaultCommand::Rotate { config } => {
            let config = Config::load(config.as_deref())?;
            let dir = config.vault_config().kek_dir;
            let clock = Clock::system();
            let id = bulwark::vault::keyring::generate(&dir, clock.now_ms())?;
            println!(
                "created key-encryption key {id} in {}; a running server picks it up within \
                 seconds (or on SIGHUP); then run a re-wrap to retire the old keys",
                dir.display()
            );
            Ok(())
        }
        VaultCommand::Rewrap { config, batch } => {
            if !(1..=10_000).contains(&batch) {
                bail!("--batch must be from 1 to 10000");
            }
            let config = Config::load(config.as_deref())?;
            let store = Store::open(&config.storage.data_dir).context(
                "the database is in use: on a running server use POST /ojs/v1/admin/vault/rewrap",
            )?;
            let (_, keys) = bulwark::app::load_keys(
                &config,
                &Clock::system(),
                &store,
                bulwark::vault::NewKeys::Never,
            )?;
            let ring = keys.ring();
            let total = bulwark::vault::scan(&store, &keys)?.total_jobs;
            let target = ring.active_id().map(short_id).unwrap_or_default();
            audit_offline(
                &config,
                &store,
                AuditEvent::new("vault.rewrap", Outcome::Success)
                    .detail("target", target.clone())
                    .detail("batch", batch),
            )?;
            let done = bulwark::vault::rewrap_offline(&store, &keys, batch, |_, examined| {
                eprint!("\rre-wrapping: {examined}/{total} records");
            })?;
            eprintln!();
            println!(
                "re-wrapped {} of {} records with {target}; {} could not be opened",
                done.rewrapped, done.examined, done.failed
            );
            audit_offline(
                &config,
                &store,
                AuditEvent::new(
                    "vault.rewrap_finished",
                    if done.failed == 0 {
                        Outcome::Success
                    } else {
                        Outcome::Failure
                    },
                )
                .detail("examined", done.examined)
                .detail("rewrapped", done.rewrapped)
                .detail("failed", done.failed)
                .detail("target", target),
            )?;
            Ok(())
        }
    }
}

fn policy_token_sign(
    config: Option<std::path::PathBuf>,
    tenant: Option<String>,
    actor: String,
    action: String,
    ttl_secs: Option<u64>,
    scopes: Vec<String>,
) -> anyhow::Result<()> {
    use bulwark::auth::actions;
    use bulwark::auth::policy_token::{self, Claims};

    let config = Config::load(config.as_deref())?;
    let settings = &config.auth.actions;
    let max = settings.max_lifetime_secs;
    let ttl = ttl_secs.unwrap_or(max);
    if ttl == 0 || ttl > max {
        bail!("--ttl-secs must be from 1 to {max} ([auth.actions] max_lifetime_secs)");
    }
    if !bulwark::job::envelope::is_valid_job_type(&action) {
        bail!("--action must be a job type such as ops.apply");
    }
    if tenant
        .as_deref()
        .is_some_and(|t| !records::is_valid_tenant(t))
    {
        bail!("--tenant must be 1 to 64 lowercase letters, digits, _ or -");
    }
    if actor.is_empty() {
        bail!("--actor must name the principal that will enqueue the job");
    }
    if !settings.types.iter().any(|t| t.matches(&action)) {
        eprintln!("note: {action} is not an action type in this configuration; the server does not ask for a token for it");
    }
    let secret = actions::load_secret(
        settings,
        &config.secrets.dir,
        bulwark::app::policy_token_secret_env(),
    )?;
    let iat = u64::try_from(Clock::system().now_secs()).context("the clock is before 1970")?;
    let claims = Claims {
        tenant,
        actor,
        action,
        scopes,
        iat,
        exp: iat.saturating_add(ttl),
        jti: Some(uuid::Uuid::now_v7().to_string()),
    };
    let token = policy_token::sign(&claims, &secret)?;
    println!("{token}");
    Ok(())
}

fn audit_verify(
    file: Option<std::path::PathBuf>,
    head: Option<std::path::PathBuf>,
    anchor: Option<&str>,
    config: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    let configured = config.audit_config();
    let (log_path, head_path) = match (file, head) {
        (Some(f), Some(h)) => (f, h),
        (Some(f), None) => {
            let h = f.with_extension("head");
            (f, h)
        }
        (None, h) => (configured.log_file, h.unwrap_or(configured.head_file)),
    };
    let key = bulwark::audit::load_key(&config.secrets.dir)?;
    // The head first: a running server appends, then rewrites the head, so a log read after
    // its head can only be ahead of it.
    let head: Option<bulwark::audit::record::Head> = match std::fs::read(&head_path) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not an audit head", head_path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "warning: no head file at {}: a cut tail cannot be detected",
                head_path.display()
            );
            None
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", head_path.display())),
    };
    let log =
        std::fs::read(&log_path).with_context(|| format!("cannot read {}", log_path.display()))?;
    match bulwark::audit::record::verify(&key, &log, head.as_ref()) {
        Ok(v) => {
            println!(
                "ok: {} records, chain intact{}{}",
                v.records,
                v.checkpoint
                    .map(|cp| format!(
                        " from the checkpoint after record {cp} (older records pruned)"
                    ))
                    .unwrap_or_default(),
                if head.is_some() { ", head matches" } else { "" }
            );
            // The value to keep elsewhere (a ticket, another host): a later verify that prints
            // the same line at this seq proves nothing up to here was rewritten.
            println!("head: seq {} chain {}", v.last_seq, v.last_chain);
            match anchor {
                Some(anchor) => bulwark::audit::record::check_anchor(&log, anchor)
                    .map(|seq| println!("anchor at record {seq} matches"))
                    .map_err(|reason| anyhow::anyhow!("{}: {reason}", log_path.display())),
                None => Ok(()),
            }
        }
        Err(broken) if broken.line == 0 => bail!("{}: {}", log_path.display(), broken.reason),
        Err(broken) => bail!(
            "{}: first broken record at line {}: {}",
            log_path.display(),
            broken.line,
            broken.reason
        ),
    }
}

/// Appends one record to the audit trail while the server is stopped (the writer takes the log
/// for itself, as the server does). The change is refused if it cannot be recorded.
fn audit_offline(config: &Config, store: &Store, event: AuditEvent) -> anyhow::Result<()> {
    let key = bulwark::audit::load_or_create_key(&config.secrets.dir, &config.audit_config())?;
    let (audit, thread) = bulwark::audit::AuditHandle::spawn(
        &config.audit_config(),
        key,
        Some(store.clone()),
        Clock::system(),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(audit.record(event.detail("via", "cli")));
    drop(audit);
    let _ = thread.join();
    result.context("the audit trail could not be written; nothing was changed")
}

/// `--expires`: a duration from `now` or an absolute time.
fn parse_expiry(text: &str, now: Millis) -> anyhow::Result<i64> {
    let at = if text.starts_with('P') {
        parse_time_spec(&format!("+{text}"), now)
    } else {
        parse_rfc3339(text)
    };
    at.ok_or_else(|| {
        anyhow::anyhow!("--expires must be an ISO 8601 duration (P90D) or an RFC 3339 time")
    })
}

fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            config,
            name,
            roles,
            tenant,
            queues,
            scopes,
            expires,
        } => {
            let config = Config::load(config.as_deref())?;
            let queues = queues
                .map(|qs| {
                    qs.iter()
                        .map(|q| {
                            QueuePattern::parse(q).ok_or_else(|| {
                                anyhow::anyhow!("--queues: {q:?} is not a queue pattern")
                            })
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                })
                .transpose()?;
            let scopes = scopes
                .map(|ss| {
                    ss.iter()
                        .map(|s| {
                            Permission::parse(s).ok_or_else(|| {
                                anyhow::anyhow!("--scopes: {s:?} is not a permission")
                            })
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                })
                .transpose()?;
            let now = Clock::system().now_ms();
            let spec = KeySpec {
                name,
                roles,
                tenant,
                scopes,
                queues,
                expires_at: expires
                    .as_deref()
                    .map(|text| parse_expiry(text, now))
                    .transpose()?,
            };
            // Refused before any file is touched.
            spec.validate(&config.policy()?, now)?;
            let offline = Offline::open(config)?;
            let caller = offline.caller("keys create");
            let created = offline.run(offline.keys()?.create(&caller, spec));
            drop(caller);
            offline.close();
            println!("{}", created?.secret.expose_secret());
            Ok(())
        }
        KeysCommand::List { config } => {
            let offline = Offline::open(Config::load(config.as_deref())?)?;
            let caller = offline.caller("keys list");
            let keys = offline.run(offline.keys()?.list(&caller, None));
            let now = offline.clock.now_ms();
            drop(caller);
            offline.close();
            println!(
                "{:<18} {:<20} {:<12} {:<18} {:<26} {:<26} status",
                "id", "name", "tenant", "roles", "expires", "last used"
            );
            for k in keys? {
                println!(
                    "{:<18} {:<20} {:<12} {:<18} {:<26} {:<26} {}",
                    k.id,
                    k.name,
                    k.tenant.as_deref().unwrap_or("-"),
                    k.roles.join(","),
                    k.expires_at.map_or_else(|| "never".into(), rfc3339),
                    k.last_used_at.map_or_else(|| "never".into(), rfc3339),
                    k.status(now),
                );
            }
            Ok(())
        }
        KeysCommand::Revoke {
            config,
            id,
            tenant,
            name,
        } => {
            let config = Config::load(config.as_deref())?;
            if id.is_none() && tenant.is_none() && name.is_none() {
                bail!("give a key id, --tenant or --name");
            }
            let offline = Offline::open(config)?;
            let caller = offline.caller("keys revoke");
            let service = offline.keys()?;
            // One key by id is the HTTP API's DELETE; filters are its bulk revocation.
            let revoked = match (id, tenant, name) {
                (Some(id), None, None) => {
                    offline.run(service.revoke(&caller, &id)).map(|k| vec![k])
                }
                (id, tenant, name) => {
                    let filter = KeyFilter {
                        ids: id.map(|id| vec![id]),
                        name,
                        tenant,
                    };
                    offline.run(service.revoke_many(&caller, filter))
                }
            };
            drop(caller);
            offline.close();
            let revoked = revoked?;
            if revoked.is_empty() {
                bail!("no unrevoked key matches");
            }
            for r in revoked {
                println!("revoked {}", r.id);
            }
            Ok(())
        }
        KeysCommand::Rotate {
            config,
            id,
            grace_secs,
        } => {
            let offline = Offline::open(Config::load(config.as_deref())?)?;
            let caller = offline.caller("keys rotate");
            let rotated = offline.run(offline.keys()?.rotate(&caller, &id, grace_secs));
            drop(caller);
            offline.close();
            let Rotated { new, secret, old } = rotated?;
            eprintln!(
                "rotated {} -> {}; the old key works until {}",
                old.id,
                new.id,
                old.expires_at.map_or_else(|| "never".into(), rfc3339)
            );
            println!("{}", secret.expose_secret());
            Ok(())
        }
    }
}

/// Reads one line (a password) from standard input; the line end is not part of it.
fn read_password() -> anyhow::Result<secrecy::SecretString> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password (one line; input is shown, so prefer piping it in): ");
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!("no password on standard input");
    }
    Ok(secrecy::SecretString::from(password.to_string()))
}

/// `bulwark users disable|enable NAME`.
fn set_disabled(offline: Offline, name: &str, disabled: bool) -> anyhow::Result<()> {
    let (command, done) = if disabled {
        ("users disable", "disabled")
    } else {
        ("users enable", "enabled")
    };
    let users = offline.users()?;
    let caller = offline.caller(command);
    let result = offline.run(users.set_disabled(&caller, name, disabled));
    drop(caller);
    offline.close();
    result?;
    println!("{name} {done}");
    Ok(())
}

fn users_command(command: UsersCommand) -> anyhow::Result<()> {
    let open = |config: Option<std::path::PathBuf>| -> anyhow::Result<Offline> {
        Offline::open(Config::load(config.as_deref())?)
    };
    // Each command runs one service call as the local operator, then closes the trail.
    fn finish<T>(offline: Offline, caller: Caller, result: anyhow::Result<T>) -> anyhow::Result<T> {
        drop(caller);
        offline.close();
        result
    }
    match command {
        UsersCommand::Create { config, name } => {
            let offline = open(config)?;
            let users = offline.users()?;
            let caller = offline.caller("users create");
            let result = read_password().and_then(|password| {
                offline.run(users.create(&caller, &name, password, Totp::Later))
            });
            finish(offline, caller, result)?;
            println!("created user {name}; enrol its TOTP with: bulwark users totp {name}");
            Ok(())
        }
        UsersCommand::Passwd { config, name } => {
            let offline = open(config)?;
            let users = offline.users()?;
            let caller = offline.caller("users passwd");
            let result = read_password().and_then(|password| {
                offline.run(users.change_password(&caller, &name, None, password))
            });
            finish(offline, caller, result)?;
            println!("password of {name} changed; its sessions have ended");
            Ok(())
        }
        UsersCommand::Totp { config, name } => {
            let offline = open(config)?;
            let users = offline.users()?;
            let caller = offline.caller("users totp");
            let result = offline.run(users.enrol_totp(&caller, &name));
            let uri = finish(offline, caller, result)?;
            println!("{}", uri.expose_secret());
            Ok(())
        }
        UsersCommand::List { config } => {
            let offline = open(config)?;
            let users = offline.users()?;
            let caller = offline.caller("users list");
            let result = offline.run(users.list());
            let list = finish(offline, caller, result)?;
            println!(
                "{:<24} {:<8} {:<10} {:<9} {:<26} updated",
                "username", "totp", "confirmed", "disabled", "created"
            );
            for s in list {
                println!(
                    "{:<24} {:<8} {:<10} {:<9} {:<26} {}",
                    s.username,
                    if s.totp_enrolled { "enrolled" } else { "none" },
                    s.totp_confirmed,
                    s.disabled,
                    s.created_at,
                    s.updated_at
                );
            }
            Ok(())
        }
        UsersCommand::Disable { config, name } => set_disabled(open(config)?, &name, true),
        UsersCommand::Enable { config, name } => set_disabled(open(config)?, &name, false),
    }
}
