//! SQLite key store (embedded backend). Forgets run with `PRAGMA secure_delete = ON`, so the
//! destroyed wrapped key is overwritten in the database file rather than left in a free page.

use sqlx::SqlitePool;

use super::sql::{Dialect, Queries};

/// Wrapped keys in SQLite (`vault_subject_keys`, `vault_workspace_keys`).
pub struct SqliteKeyStore {
    pool: SqlitePool,
    q: Queries,
}

impl SqliteKeyStore {
    /// A store over `pool`; the vault migration must have run.
    pub fn new(pool: SqlitePool) -> Self {
        SqliteKeyStore {
            pool,
            q: Queries::new(Dialect::Sqlite),
        }
    }
}

sql_key_store!(SqliteKeyStore, sqlx::Sqlite);
