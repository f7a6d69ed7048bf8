//! PostgreSQL key store (production backend).

use std::collections::HashSet;
use std::sync::{PoisonError, RwLock};

use sqlx::PgPool;
use sqlx::postgres::PgRow;

use super::sql::{
    Dialect, INSERT_IDENTIFIERS_UNNEST_PG, INSERT_SUBJECTS_UNNEST_PG, Queries,
    SELECT_IDENTIFIERS_ANY_PG, SELECT_SUBJECTS_ANY_PG,
};
use super::{IdentifierSubject, StoredSubjectKey, version_to_db};
use crate::error::StoreError;

/// Wrapped keys in PostgreSQL (`vault_subject_keys`, `vault_workspace_keys`).
pub struct PgKeyStore {
    pool: PgPool,
    q: Queries,
    /// Workspaces this store has seen in `workspaces`. Since migration 0023 the tables of
    /// subject keys and identifier subjects no longer check their workspace row by row (a
    /// trigger, a lookup and a shared row lock per new key, on ingest's path); the store
    /// checks it once per workspace instead, before its first write there. Workspaces are
    /// never deleted, so one seen stays valid; one not found is asked again next time.
    known_workspaces: RwLock<HashSet<String>>,
}

impl PgKeyStore {
    /// A store over `pool`; the vault migration must have run.
    pub fn new(pool: PgPool) -> Self {
        PgKeyStore {
            pool,
            q: Queries::new(Dialect::Postgres),
            known_workspaces: RwLock::new(HashSet::new()),
        }
    }

    /// Fails with [`StoreError::UnknownWorkspace`] unless `workspace` exists: called before
    /// a write to the tables without a foreign key to `workspaces`.
    async fn check_workspace(&self, workspace: &str) -> Result<(), StoreError> {
        let known = self
            .known_workspaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(workspace);
        if known {
            return Ok(());
        }
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM workspaces WHERE workspace_id = $1)")
                .bind(workspace)
                .fetch_one(&self.pool)
                .await?;
        if !exists {
            return Err(StoreError::UnknownWorkspace);
        }
        self.known_workspaces
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(workspace.to_owned());
        Ok(())
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

    /// One array per column holds any number of rows: a batch is one statement.
    const INSERT_ROWS: usize = usize::MAX;

    async fn insert_subject_key_rows(
        &self,
        workspace: &str,
        keys: &[(&str, StoredSubjectKey)],
    ) -> Result<u64, StoreError> {
        let subjects: Vec<&str> = keys.iter().map(|(s, _)| *s).collect();
        let key_ids: Vec<uuid::Uuid> = keys.iter().map(|(_, k)| k.key_id).collect();
        let versions: Vec<i64> = keys
            .iter()
            .map(|(_, k)| version_to_db(k.wrapped.kek_version))
            .collect();
        let wrapped: Vec<&[u8]> = keys
            .iter()
            .map(|(_, k)| k.wrapped.bytes.as_slice())
            .collect();
        Ok(sqlx::query(INSERT_SUBJECTS_UNNEST_PG)
            .bind(workspace)
            .bind(subjects)
            .bind(key_ids)
            .bind(versions)
            .bind(wrapped)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn insert_identifier_subject_rows(
        &self,
        workspace: &str,
        rows: &[IdentifierSubject],
    ) -> Result<u64, StoreError> {
        let indexes: Vec<&[u8]> = rows.iter().map(|(i, _)| i.as_slice()).collect();
        let subjects: Vec<&str> = rows.iter().map(|(_, s)| s.as_str()).collect();
        Ok(sqlx::query(INSERT_IDENTIFIERS_UNNEST_PG)
            .bind(workspace)
            .bind(indexes)
            .bind(subjects)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

sql_key_store!(PgKeyStore, sqlx::Postgres);
