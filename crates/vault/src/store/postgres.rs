//! PostgreSQL key store (production backend).

use sqlx::PgPool;
use sqlx::postgres::PgRow;

use super::sql::{Dialect, Queries, SELECT_IDENTIFIERS_ANY_PG, SELECT_SUBJECTS_ANY_PG};
use crate::error::StoreError;

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

    /// One array parameter holds any number of keys: a batch is one statement.
    const LOOKUP_ROWS: usize = usize::MAX;

    async fn subject_key_rows(
        &self,
        workspace: &str,
        subjects: &[&str],
    ) -> Result<Vec<PgRow>, StoreError> {
        Ok(sqlx::query(SELECT_SUBJECTS_ANY_PG)
            .bind(workspace)
            .bind(subjects)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn identifier_subject_rows(
        &self,
        workspace: &str,
        indexes: &[[u8; 32]],
    ) -> Result<Vec<PgRow>, StoreError> {
        let indexes: Vec<&[u8]> = indexes.iter().map(|i| i.as_slice()).collect();
        Ok(sqlx::query(SELECT_IDENTIFIERS_ANY_PG)
            .bind(workspace)
            .bind(indexes)
            .fetch_all(&self.pool)
            .await?)
    }
}

sql_key_store!(PgKeyStore, sqlx::Postgres);
