//! Table definitions. Keys are fixed-width where possible; values are [`super::codec`] records.

use redb::TableDefinition;

/// Job records by job id (`u128` of the UUID). Written only by the queue actor.
pub const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");

/// API key records by public key id. Written only by the auth store (and the offline CLI).
pub const API_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");

/// Audit record summaries by sequence number (where the record sits in the log, and what to
/// filter on). Written only by the audit writer; rebuilt from the log when behind.
pub const AUDIT_INDEX: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_index");

/// Audit sequence numbers by `type:<event type>`, `principal:<id>` and `tenant:<tenant>`.
pub const AUDIT_BY: redb::MultimapTableDefinition<&str, u64> =
    redb::MultimapTableDefinition::new("audit_by");

/// Admin user records by username. Written by the accounts service (and the offline CLI).
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");

/// Refresh token records by the SHA-256 digest of the token (the token itself is never stored).
/// Written by the accounts service (and the offline CLI, which revokes them).
pub const REFRESH_TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("refresh_tokens");

/// Queue bounds set through the admin API, by `<tenant>/<queue>` (`queue::bounds::table_key`).
/// Written only by the queue actor.
pub const QUEUE_CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("queue_config");
