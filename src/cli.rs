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
    /// Manage admin user accounts (password + TOTP). Works while the server is stopped;
    /// passwords are read from standard input, never from the command line.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
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
    /// Policy tokens for action job types (`[auth.actions]`).
    PolicyToken {
        #[command(subcommand)]
        command: PolicyTokenCommand,
    },
    /// Prepare the secrets folder and create a key-encryption key if there is none (the server
    /// also does this on first start). Refuses when stored data is protected by keys that are
    /// missing (restore them from the secrets backup).
    Init {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Make the missing keys anew on purpose: jobs sealed with a lost KEK stay unreadable,
        /// an audit log whose key is lost is set aside and a new trail starts. Audited
        /// (`secret.keys_created`).
        #[arg(long)]
        new_keys: bool,
    },
    /// The key vault: key-encryption keys and the data keys they wrap. These commands open the
    /// database, so they run while the server is stopped; on a running server use
    /// `GET /ojs/v1/admin/vault` and `POST /ojs/v1/admin/vault/rewrap`.
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
}

/// `bulwark vault ...`
#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Each KEK with the number of jobs whose data key it wraps, and unreadable jobs.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create a new KEK file; as the newest key it becomes active at the next (re)load unless
    /// `[vault] active_kek` names another.
    Rotate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Re-wrap every data key that is not under the active KEK (payloads are not
    /// re-encrypted), so old KEKs can be retired.
    Rewrap {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Records per write transaction.
        #[arg(long, default_value_t = 256)]
        batch: usize,
    },
}

/// `bulwark policy-token ...`
#[derive(Debug, Subcommand)]
pub enum PolicyTokenCommand {
    /// Sign a policy token and print it (only it) on stdout. The secret is read as the server
    /// reads it: `OJS_SECRET_POLICY_TOKEN`, else `[auth.actions] secret_file`.
    Sign {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The tenant the job will be enqueued for; system scope when left out.
        #[arg(long)]
        tenant: Option<String>,
        /// The principal name that will enqueue the job.
        #[arg(long)]
        actor: String,
        /// The job type (an action type).
        #[arg(long)]
        action: String,
        /// Seconds the token stays valid (default and maximum: `[auth.actions]
        /// max_lifetime_secs`).
        #[arg(long)]
        ttl_secs: Option<u64>,
        /// Scopes; comma-separated. Enqueueing needs `enqueue`.
        #[arg(long = "scope", value_delimiter = ',', default_value = "enqueue")]
        scopes: Vec<String>,
    },
}

/// `bulwark keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (only it) on stdout, once.
    Create {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The principal the key authenticates (rotated keys keep it).
        #[arg(long)]
        name: String,
        /// Role(s): producer, worker, operator, admin, observer, submitter, or a custom role
        /// from the config. Repeat or separate with commas.
        #[arg(long = "role", required = true, value_delimiter = ',')]
        roles: Vec<String>,
        /// The tenant the key belongs to; system scope when left out.
        #[arg(long)]
        tenant: Option<String>,
        /// Queue patterns the key may touch (`emails`, `billing.*`); comma-separated.
        #[arg(long, value_delimiter = ',')]
        queues: Option<Vec<String>>,
        /// The subset of its roles' permissions the key may use; comma-separated.
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// When the key stops working: an ISO 8601 duration from now (`P90D`, `PT12H`) or an
        /// RFC 3339 time.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Revoke a key by its id, or every key of a tenant or principal.
    Revoke {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The key id (the 16 hex digits after `bwk_<env>_`).
        id: Option<String>,
        /// Revoke every key of this tenant.
        #[arg(long, conflicts_with = "id")]
        tenant: Option<String>,
        /// Revoke every key of this principal.
        #[arg(long, conflicts_with = "id")]
        name: Option<String>,
    },
    /// Replace a key with a new one; the old one keeps working for the grace period.
    Rotate {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The key id.
        id: String,
        /// Seconds the old key keeps working (default: `[auth] rotation_grace_secs`).
        #[arg(long)]
        grace_secs: Option<u64>,
    },
}

/// `bulwark users ...`
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user; its password is read from standard input (one line). Enrol its TOTP
    /// next with `bulwark users totp NAME`: a user without TOTP cannot log in.
    Create {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The username: 3 to 64 of a-z, 0-9, '_', '.', '-', starting with a letter.
        name: String,
    },
    /// Set a user's password, read from standard input. Ends every session of the user.
    Passwd {
        #[arg(long)]
        config: Option<PathBuf>,
        name: String,
    },
    /// Enrol a new TOTP secret and print its otpauth:// URI (only it) on stdout, once. Ends
    /// every session of the user; the next login with a valid code confirms the enrolment.
    Totp {
        #[arg(long)]
        config: Option<PathBuf>,
        name: String,
    },
    /// List users (never their secrets).
    List {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Disable a user: it can no longer log in, and its sessions end.
    Disable {
        #[arg(long)]
        config: Option<PathBuf>,
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        #[arg(long)]
        config: Option<PathBuf>,
        name: String,
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
        /// A `SEQ:CHAIN` printed by an earlier verify (the `head:` line) and kept elsewhere: the
        /// record at SEQ must still have that chain value.
        #[arg(long)]
        anchor: Option<String>,
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

/// The positions (1-based, after the program name) of command-line arguments that look like
/// secrets: Bulwark credentials and tokens (`bwk_`, `bws_`, `bwr_`, `bpt_`), JWTs, `…=value`
/// pairs named like a secret, and long runs of hex or base64 (keys). Command lines are visible
/// to other users (`ps`) and kept in shell history; the caller warns without echoing the value.
#[must_use]
pub fn secret_looking_args(args: &[String]) -> Vec<usize> {
    fn looks_secret(arg: &str) -> bool {
        let pair = arg
            .split_once('=')
            .filter(|(_, v)| !v.is_empty() && !v.starts_with('='));
        let value = pair.map_or(arg, |(name, value)| {
            let name = name.to_ascii_lowercase();
            if ["password", "secret", "token", "key"]
                .iter()
                .any(|w| name.contains(w))
            {
                return "bwk_";
            }
            value
        });
        if ["bwk_", "bws_", "bwr_", "bpt_"]
            .iter()
            .any(|p| value.starts_with(p))
        {
            return true;
        }
        if value.starts_with("eyJ") && value.matches('.').count() == 2 {
            return true;
        }
        let keyish = value.len() >= 32
            && value.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
            })
            && value.bytes().any(|b| b.is_ascii_digit())
            && !value.contains('/');
        keyish
    }
    args.iter()
        .enumerate()
        .filter(|(_, a)| looks_secret(a))
        .map(|(i, _)| i + 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_on_the_command_line_are_spotted() {
        let args: Vec<String> = [
            "serve",
            "--config",
            "config/bulwark.toml",
            "bwk_live_abcd_efgh",
            "--password=hunter2",
            "q6Vb1k3yTT0aTfQ2o3n6mJ7a8vP9dW1xZ2cY4eR5tU0=",
            "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln",
            "--name",
            "billing-producer",
            "/var/lib/bulwark/a/very/long/path/that/is/not/a/key/at/all",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        assert_eq!(secret_looking_args(&args), vec![4, 5, 6, 7]);
    }
}
