//! The `bulwark` binary: parse the command line, load the config, run.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use secrecy::ExposeSecret;

use bulwark::auth::{records, Role};
use bulwark::cli::{AuditCommand, Cli, Command, ConfigCommand, KeysCommand};
use bulwark::clock::rfc3339;
use bulwark::config::Config;
use bulwark::store::Store;

fn main() -> ExitCode {
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
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("bulwark-main")
                .enable_all()
                .build()?;
            runtime.block_on(bulwark::app::serve(config, addr_file))
        }
        Command::Keys { command } => keys(command),
        Command::Audit {
            command: AuditCommand::Verify { file, head, config },
        } => audit_verify(file, head, config),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let config = Config::load(config.as_deref())?;
            println!("{config:#?}");
            Ok(())
        }
    }
}

fn audit_verify(
    file: Option<std::path::PathBuf>,
    head: Option<std::path::PathBuf>,
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
    let log =
        std::fs::read(&log_path).with_context(|| format!("cannot read {}", log_path.display()))?;
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
    match bulwark::audit::record::verify(&key, &log, head.as_ref()) {
        Ok(v) => {
            println!(
                "ok: {} records, chain intact{}",
                v.records,
                if head.is_some() { ", head matches" } else { "" }
            );
            Ok(())
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

fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.storage.data_dir).context("stop the server first: keys are managed offline")
}

fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { config, role, name } => {
            let config = Config::load(config.as_deref())?;
            let Some(role) = Role::parse(&role) else {
                bail!(
                    "unknown role {role:?}: only \"admin\" exists until the identity model lands"
                );
            };
            if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                bail!("--name must be 1 to 128 printable characters");
            }
            bulwark::app::prepare_secrets_dir(&config.secrets.dir)?;
            let store = open_store(&config)?;
            let (_, token) = records::create(&store, &name, vec![role], &config.secrets.key_env)?;
            println!("{}", token.expose_secret());
            Ok(())
        }
        KeysCommand::List { config } => {
            let config = Config::load(config.as_deref())?;
            let store = open_store(&config)?;
            println!(
                "{:<18} {:<24} {:<8} {:<26} status",
                "id", "name", "roles", "created"
            );
            for k in records::list(&store)? {
                let roles: Vec<&str> = k
                    .roles
                    .iter()
                    .map(|r| match r {
                        Role::Admin => "admin",
                    })
                    .collect();
                let status = match k.revoked_at {
                    Some(t) => format!("revoked {}", rfc3339(t)),
                    None => "active".into(),
                };
                println!(
                    "{:<18} {:<24} {:<8} {:<26} {status}",
                    k.id,
                    k.name,
                    roles.join(","),
                    rfc3339(k.created_at)
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { config, id } => {
            let config = Config::load(config.as_deref())?;
            let store = open_store(&config)?;
            if records::revoke(&store, &id)? {
                println!("revoked {id}");
                Ok(())
            } else {
                bail!("no key with id {id}")
            }
        }
    }
}
