//! Table definitions. Keys are fixed-width where possible; values are [`super::codec`] records.

use redb::TableDefinition;

/// Job records by job id (`u128` of the UUID). Written only by the queue actor.
pub const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");

/// API key records by public key id. Written only by the auth store (and the offline CLI).
pub const API_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");
