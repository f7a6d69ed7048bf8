//! SQLite key store (embedded backend). Forgets run with `PRAGMA secure_delete = ON`, so the
//! destroyed wrapped key is overwritten in the database file rather than left in a free page.

use sqlx::SqlitePool;
use sqlx::sqlite::SqliteRow;

use super::sql::{BATCH_ROWS, Dialect, Queries};
use super::{IdentifierSubject, StoredSubjectKey, version_to_db};
use crate::error::StoreError;

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

    /// Nothing to do: SQLite keeps the foreign keys to `workspaces`, which refuse a write
    /// for an unknown workspace with one index probe in process.
    async fn check_workspace(&self, _workspace: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// SQLite has no array parameter: a chunk is an `IN` list, one bind a key.
    const LOOKUP_ROWS: usize = BATCH_ROWS;

    async fn subject_key_rows(
        &self,
        workspace: &str,
        subjects: &[&str],
    ) -> Result<Vec<SqliteRow>, StoreError> {
        let sql = self.q.select_subjects(subjects.len());
        let mut query = sqlx::query(&sql).bind(workspace);
        for subject in subjects {
            query = query.bind(*subject);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    async fn identifier_subject_rows(
        &self,
        workspace: &str,
        indexes: &[[u8; 32]],
    ) -> Result<Vec<SqliteRow>, StoreError> {
        let sql = self.q.select_identifiers(indexes.len());
        let mut query = sqlx::query(&sql).bind(workspace);
        for index in indexes {
            query = query.bind(index.as_slice());
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    /// A chunk is a `VALUES` list, four binds a key.
    const INSERT_ROWS: usize = BATCH_ROWS;

    async fn insert_subject_key_rows(
        &self,
        workspace: &str,
        keys: &[(&str, StoredSubjectKey)],
    ) -> Result<u64, StoreError> {
        let sql = self.q.insert_subjects(keys.len());
        let mut query = sqlx::query(&sql).bind(workspace);
        for (subject, key) in keys {
            query = query
                .bind(*subject)
                .bind(key.key_id)
                .bind(version_to_db(key.wrapped.kek_version))
                .bind(&key.wrapped.bytes);
        }
        Ok(query.execute(&self.pool).await?.rows_affected())
    }

    async fn insert_identifier_subject_rows(
        &self,
        workspace: &str,
        rows: &[IdentifierSubject],
    ) -> Result<u64, StoreError> {
        let sql = self.q.insert_identifiers(rows.len());
        let mut query = sqlx::query(&sql).bind(workspace);
        for (index, subject) in rows {
            query = query.bind(index.as_slice()).bind(subject.as_str());
        }
        Ok(query.execute(&self.pool).await?.rows_affected())
    }
}

sql_key_store!(SqliteKeyStore, sqlx::Sqlite);
