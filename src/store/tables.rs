//! Table definitions, and which file each lives in. Keys are fixed-width where possible; values
//! are [`super::codec`] records.
//!
//! Two files, so that each has one writer that matters for latency (see [`super`] and
//! `docs/storage.md`):
//! - the jobs file (`bulwark.redb`): [`JOBS`], [`QUEUE_CONFIG`], [`KEK_USAGE`], written by the
//!   queue actor;
//! - the control file (`control.redb`): [`API_KEYS`], [`AUDIT_INDEX`], [`AUDIT_BY`], [`USERS`],
//!   [`REFRESH_TOKENS`], written by the auth store, the audit writer and the accounts service.

use redb::TableDefinition;

/// Job records by job id (`u128` of the UUID). Jobs file. Written only by the queue actor (and
/// the offline vault re-wrap).
pub const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");

/// API key records by public key id. Control file. Written only by the auth store (and the
/// offline CLI).
pub const API_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");

/// Audit record summaries by sequence number (where the record sits in the log, and what to
/// filter on). Control file. Written only by the audit writer; rebuilt from the log when behind.
pub const AUDIT_INDEX: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_index");

/// Audit sequence numbers by `type:<event type>`, `principal:<id>` and `tenant:<tenant>`.
/// Control file, written with [`AUDIT_INDEX`].
pub const AUDIT_BY: redb::MultimapTableDefinition<&str, u64> =
    redb::MultimapTableDefinition::new("audit_by");

/// Admin user records by username. Control file. Written by the accounts service (and the
/// offline CLI).
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");

/// Refresh token records by the SHA-256 digest of the token (the token itself is never stored).
/// Control file. Written by the accounts service (and the offline CLI, which revokes them).
pub const REFRESH_TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("refresh_tokens");

/// Queue bounds set through the admin API, by `<tenant>/<queue>` (`queue::bounds::table_key`).
/// Jobs file (for now). Written only by the queue actor.
pub const QUEUE_CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("queue_config");

/// Data keys wrapped per key-encryption key, by KEK id (`vault::usage::KekUsage`). Jobs file:
/// counted in the same transaction as the job records they seal (the queue actor's commit, a
/// re-wrap step), so the count is exact and durable.
pub const KEK_USAGE: TableDefinition<&str, &[u8]> = TableDefinition::new("kek_usage");
