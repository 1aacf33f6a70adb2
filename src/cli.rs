//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Bulwark: a secure, single-binary job server speaking the Open Job Spec.
#[derive(Debug, Parser)]
#[command(name = "bulwark", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (on its embedded defaults unless --config is given).
    Serve {
        /// TOML config file; see config/bulwark.toml for every key and its default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write the bound address to this file once listening (for scripts and tests).
        #[arg(long)]
        addr_file: Option<PathBuf>,
    },
    /// Manage API keys. Works while the server is stopped (the database allows one process).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Check the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

/// `bulwark keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (only it) on stdout, once.
    Create {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Role of the key (`admin`; more roles come with the identity model).
        #[arg(long)]
        role: String,
        /// A human name for the key.
        #[arg(long)]
        name: String,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Revoke a key by its id.
    Revoke {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The key id (the 16 hex digits after `bwk_<env>_`).
        id: String,
    },
}

/// `bulwark audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the audit log's chain and signed head; report the first broken record and exit
    /// non-zero if there is one.
    Verify {
        /// The log to verify (default: the configured one).
        file: Option<PathBuf>,
        /// Its signed head (default: the configured one, or FILE with the extension `.head`).
        #[arg(long)]
        head: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `bulwark config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file and print the effective configuration.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}
