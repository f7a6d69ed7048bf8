//! PostgreSQL key store (production backend).

use sqlx::PgPool;

use super::sql::{Dialect, Queries};

/// Wrapped keys in PostgreSQL (`vault_subject_keys`, `vault_workspace_keys`).
pub struct PgKeyStore {
    pool: PgPool,
    q: Queries,
}

impl PgKeyStore {
    /// A store over `pool`; the vault migration must have run.
    pub fn new(pool: PgPool) -> Self {
        PgKeyStore {
            pool,
            q: Queries::new(Dialect::Postgres),
        }
    }
}

sql_key_store!(PgKeyStore, sqlx::Postgres);
