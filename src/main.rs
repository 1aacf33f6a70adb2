//! The `bulwark` binary: parse the command line, load the config, run.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use secrecy::ExposeSecret;

use bulwark::auth::{records, Role};
use bulwark::cli::{Cli, Command, ConfigCommand, KeysCommand};
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
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let config = Config::load(config.as_deref())?;
            println!("{config:#?}");
            Ok(())
        }
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
