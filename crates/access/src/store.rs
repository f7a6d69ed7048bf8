//! Storage of workspaces and API keys, behind [`AccessStore`], with one
//! implementation per backend. Both pass `tests/conformance.rs`.

use std::sync::Arc;

use async_trait::async_trait;
use meridian_domain::{Region, Scopes, TimeZone, WorkspaceId};
use meridian_store::Store;
use meridian_store::sqlx::{self, PgPool, Row, SqlitePool};

use crate::AccessError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub workspace_id: WorkspaceId,
    pub home_region: Region,
    pub time_zone: TimeZone,
}

/// A stored API key: the public key id and the peppered hash of the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub key_id: String,
    pub workspace_id: WorkspaceId,
    pub secret_hash: Vec<u8>,
    pub scopes: Scopes,
}

impl std::fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("key_id", &self.key_id)
            .field("workspace_id", &self.workspace_id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

#[async_trait]
pub trait AccessStore: Send + Sync {
    /// Fails with [`AccessError::WorkspaceExists`] when the id is taken.
    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), AccessError>;
    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>, AccessError>;
    async fn insert_api_key(&self, record: &ApiKeyRecord) -> Result<(), AccessError>;
    /// The key, unless it is unknown or revoked.
    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, AccessError>;
    /// Returns whether a live key was revoked.
    async fn revoke_api_key(&self, key_id: &str) -> Result<bool, AccessError>;
}

/// The access store of an open [`Store`].
pub fn access_store(store: &Store) -> Arc<dyn AccessStore> {
    match store {
        Store::Postgres(pool) => Arc::new(StoreAccess::Postgres(pool.clone())),
        Store::Sqlite(pool) => Arc::new(StoreAccess::Sqlite(pool.clone())),
    }
}

/// [`AccessStore`] over either backend; the SQL is the same text for both.
pub enum StoreAccess {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

fn workspace_from_row(
    workspace_id: String,
    home_region: String,
    time_zone: String,
) -> Result<Workspace, AccessError> {
    Ok(Workspace {
        workspace_id: workspace_id
            .parse()
            .map_err(|err| AccessError::Corrupt(format!("workspace id: {err}")))?,
        home_region: home_region
            .parse()
            .map_err(|err| AccessError::Corrupt(format!("home region: {err}")))?,
        time_zone: time_zone
            .parse()
            .map_err(|err| AccessError::Corrupt(format!("time zone: {err}")))?,
    })
}

fn key_from_row(
    key_id: String,
    workspace_id: String,
    secret_hash: Vec<u8>,
    scopes: String,
) -> Result<ApiKeyRecord, AccessError> {
    Ok(ApiKeyRecord {
        key_id,
        workspace_id: workspace_id
            .parse()
            .map_err(|err| AccessError::Corrupt(format!("workspace id: {err}")))?,
        secret_hash,
        scopes: scopes
            .parse()
            .map_err(|err| AccessError::Corrupt(format!("scopes: {err}")))?,
    })
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

const INSERT_WORKSPACE: &str =
    "INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ($1, $2, $3)";
const SELECT_WORKSPACE: &str =
    "SELECT workspace_id, home_region, time_zone FROM workspaces WHERE workspace_id = $1";
const INSERT_KEY: &str =
    "INSERT INTO api_keys (key_id, workspace_id, secret_hash, scopes) VALUES ($1, $2, $3, $4)";
const SELECT_KEY: &str = "SELECT key_id, workspace_id, secret_hash, scopes FROM api_keys \
     WHERE key_id = $1 AND revoked_at IS NULL";
const REVOKE_KEY_PG: &str =
    "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL";
const REVOKE_KEY_SQLITE: &str = "UPDATE api_keys SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
     WHERE key_id = $1 AND revoked_at IS NULL";

/// Runs the same query text on whichever pool the store holds.
macro_rules! on_pool {
    ($self:expr, $pool:ident => $body:expr) => {
        match $self {
            StoreAccess::Postgres($pool) => $body,
            StoreAccess::Sqlite($pool) => $body,
        }
    };
}

#[async_trait]
impl AccessStore for StoreAccess {
    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), AccessError> {
        let result = on_pool!(self, pool => sqlx::query(INSERT_WORKSPACE)
            .bind(workspace.workspace_id.as_str())
            .bind(workspace.home_region.as_str())
            .bind(workspace.time_zone.to_string())
            .execute(pool)
            .await
            .map(drop));
        match result {
            Err(err) if is_unique_violation(&err) => Err(AccessError::WorkspaceExists(
                workspace.workspace_id.clone(),
                workspace.home_region.clone(),
            )),
            other => Ok(other?),
        }
    }

    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>, AccessError> {
        let row: Option<(String, String, String)> = on_pool!(self, pool =>
            sqlx::query_as(SELECT_WORKSPACE).bind(id.as_str()).fetch_optional(pool).await)?;
        row.map(|(id, region, zone)| workspace_from_row(id, region, zone))
            .transpose()
    }

    async fn insert_api_key(&self, record: &ApiKeyRecord) -> Result<(), AccessError> {
        on_pool!(self, pool => sqlx::query(INSERT_KEY)
            .bind(&record.key_id)
            .bind(record.workspace_id.as_str())
            .bind(&record.secret_hash)
            .bind(record.scopes.to_string())
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }

    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, AccessError> {
        let row = on_pool!(self, pool => sqlx::query(SELECT_KEY)
            .bind(key_id)
            .fetch_optional(pool)
            .await?
            .map(|row| -> Result<_, sqlx::Error> {
                Ok((
                    row.try_get::<String, _>(0)?,
                    row.try_get::<String, _>(1)?,
                    row.try_get::<Vec<u8>, _>(2)?,
                    row.try_get::<String, _>(3)?,
                ))
            })
            .transpose()?);
        row.map(|(key_id, workspace_id, hash, scopes)| {
            key_from_row(key_id, workspace_id, hash, scopes)
        })
        .transpose()
    }

    async fn revoke_api_key(&self, key_id: &str) -> Result<bool, AccessError> {
        let affected = match self {
            StoreAccess::Postgres(pool) => sqlx::query(REVOKE_KEY_PG)
                .bind(key_id)
                .execute(pool)
                .await?
                .rows_affected(),
            StoreAccess::Sqlite(pool) => sqlx::query(REVOKE_KEY_SQLITE)
                .bind(key_id)
                .execute(pool)
                .await?
                .rows_affected(),
        };
        Ok(affected > 0)
    }
}
