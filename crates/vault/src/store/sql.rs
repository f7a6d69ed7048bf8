//! The SQL both relational backends share, written once in PostgreSQL syntax and adapted for
//! SQLite (`?N` placeholders, its clock expression), and the backend-generic implementation.

pub(super) struct Queries {
    pub(super) select_subject: String,
    pub(super) insert_subject: String,
    pub(super) forget_update: String,
    pub(super) forget_insert: String,
    pub(super) select_ws_key: String,
    pub(super) insert_ws_key: String,
    pub(super) subject_page: String,
    pub(super) replace_subject: String,
    pub(super) ws_page: String,
    pub(super) replace_ws: String,
    pub(super) in_use: String,
    pub(super) delete_identifier: String,
    /// Run on the same connection before a forget (SQLite: overwrite freed content).
    pub(super) before_forget: Option<&'static str>,
    dialect: Dialect,
}

#[derive(Clone, Copy)]
pub(super) enum Dialect {
    Postgres,
    Sqlite,
}

/// Rows per statement in the batch calls: within both backends' bind-parameter limits.
pub(super) const BATCH_ROWS: usize = 1_000;

/// Subject key rows of the subjects in one array (`$1` workspace, `$2` `text[]`): PostgreSQL
/// plans and binds one parameter however many subjects, where an `IN` list is a new
/// statement text (parsed and planned again) for every length and 1000 binds a call.
pub(super) const SELECT_SUBJECTS_ANY_PG: &str = "SELECT subject_id, key_id, kek_version, wrapped_key FROM vault_subject_keys \
     WHERE workspace_id = $1 AND subject_id = ANY($2)";

/// Identifier subjects of the blind indexes in one array (`$1` workspace, `$2` `bytea[]`).
pub(super) const SELECT_IDENTIFIERS_ANY_PG: &str = "SELECT blind_index, subject_id FROM vault_identifier_subjects \
     WHERE workspace_id = $1 AND blind_index = ANY($2)";

/// Inserts subject keys from one array per column (`$1` workspace; `$2` subjects, `$3` key
/// ids, `$4` KEK versions, `$5` wrapped keys): one statement text however many keys. A
/// `VALUES` list was a new text for every length: 43 of them in one `bench ingest` run,
/// each parsed and planned again, and each taking a place in the connection's statement
/// cache from statements that run on every call.
pub(super) const INSERT_SUBJECTS_UNNEST_PG: &str = "INSERT INTO vault_subject_keys \
     (workspace_id, subject_id, key_id, kek_version, wrapped_key) \
     SELECT $1, * FROM UNNEST($2::text[], $3::uuid[], $4::int8[], $5::bytea[]) \
     ON CONFLICT (workspace_id, subject_id) DO NOTHING";

/// Records identifier subjects from one array per column (`$1` workspace; `$2` blind
/// indexes, `$3` subjects).
pub(super) const INSERT_IDENTIFIERS_UNNEST_PG: &str = "INSERT INTO vault_identifier_subjects \
     (workspace_id, blind_index, subject_id) \
     SELECT $1, * FROM UNNEST($2::bytea[], $3::text[]) \
     ON CONFLICT (workspace_id, blind_index) DO NOTHING";

impl Dialect {
    fn adapt(self, sql: &str) -> String {
        match self {
            Dialect::Postgres => sql.to_owned(),
            Dialect::Sqlite => sql
                .replace('$', "?")
                .replace("now()", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"),
        }
    }
}

/// `($2, $3, …)`: an `IN` list of `n` placeholders after the workspace's `$1`.
fn in_list(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| format!("${}", i + 2)).collect();
    format!("({})", items.join(", "))
}

/// `($1, $2, …), ($1, …)`: `rows` value rows, each the workspace's `$1` then `width`
/// placeholders of its own.
fn workspace_rows(rows: usize, width: usize) -> String {
    let rows: Vec<String> = (0..rows)
        .map(|r| {
            let own: Vec<String> = (0..width)
                .map(|c| format!("${}", 2 + r * width + c))
                .collect();
            format!("($1, {})", own.join(", "))
        })
        .collect();
    rows.join(", ")
}

impl Queries {
    /// Subject key rows of `n` subjects (`$1` workspace, `$2…` subjects): SQLite's form.
    pub(super) fn select_subjects(&self, n: usize) -> String {
        self.dialect.adapt(&format!(
            "SELECT subject_id, key_id, kek_version, wrapped_key FROM vault_subject_keys \
             WHERE workspace_id = $1 AND subject_id IN {}",
            in_list(n)
        ))
    }

    /// Inserts `n` subject keys (`$1` workspace, then subject, key id, KEK version, wrapped
    /// key): SQLite's form.
    pub(super) fn insert_subjects(&self, n: usize) -> String {
        let values = workspace_rows(n, 4);
        self.dialect.adapt(&format!(
            "INSERT INTO vault_subject_keys (workspace_id, subject_id, key_id, kek_version, wrapped_key) \
             VALUES {values} ON CONFLICT (workspace_id, subject_id) DO NOTHING"
        ))
    }

    /// Identifier subjects of `n` blind indexes (`$1` workspace, `$2…` indexes): SQLite's
    /// form.
    pub(super) fn select_identifiers(&self, n: usize) -> String {
        self.dialect.adapt(&format!(
            "SELECT blind_index, subject_id FROM vault_identifier_subjects \
             WHERE workspace_id = $1 AND blind_index IN {}",
            in_list(n)
        ))
    }

    /// Records `n` identifier subjects (`$1` workspace, then blind index, subject): SQLite's
    /// form.
    pub(super) fn insert_identifiers(&self, n: usize) -> String {
        let values = workspace_rows(n, 2);
        self.dialect.adapt(&format!(
            "INSERT INTO vault_identifier_subjects (workspace_id, blind_index, subject_id) \
             VALUES {values} ON CONFLICT (workspace_id, blind_index) DO NOTHING"
        ))
    }

    pub(super) fn new(dialect: Dialect) -> Self {
        let adapt = |sql: &str| dialect.adapt(sql);
        Queries {
            dialect,
            delete_identifier: adapt(
                "DELETE FROM vault_identifier_subjects \
                 WHERE workspace_id = $1 AND blind_index = $2 AND subject_id = $3",
            ),
            select_subject: adapt(
                "SELECT key_id, kek_version, wrapped_key FROM vault_subject_keys \
                 WHERE workspace_id = $1 AND subject_id = $2",
            ),
            insert_subject: adapt(
                "INSERT INTO vault_subject_keys (workspace_id, subject_id, key_id, kek_version, wrapped_key) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workspace_id, subject_id) DO NOTHING",
            ),
            forget_update: adapt(
                "UPDATE vault_subject_keys SET key_id = NULL, kek_version = NULL, wrapped_key = NULL, forgotten_at = now() \
                 WHERE workspace_id = $1 AND subject_id = $2 AND forgotten_at IS NULL",
            ),
            forget_insert: adapt(
                "INSERT INTO vault_subject_keys (workspace_id, subject_id, forgotten_at) VALUES ($1, $2, now()) \
                 ON CONFLICT (workspace_id, subject_id) DO NOTHING",
            ),
            select_ws_key: adapt(
                "SELECT key_version, kek_version, wrapped_key, public_key FROM vault_workspace_keys \
                 WHERE workspace_id = $1 AND purpose = $2 ORDER BY key_version DESC LIMIT 1",
            ),
            insert_ws_key: adapt(
                "INSERT INTO vault_workspace_keys (workspace_id, purpose, key_version, kek_version, wrapped_key, public_key) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workspace_id, purpose, key_version) DO NOTHING",
            ),
            subject_page: adapt(
                "SELECT workspace_id, subject_id, key_id, kek_version, wrapped_key FROM vault_subject_keys \
                 WHERE kek_version <> $1 AND (workspace_id > $2 OR (workspace_id = $2 AND subject_id > $3)) \
                 ORDER BY workspace_id, subject_id LIMIT $4",
            ),
            replace_subject: adapt(
                "UPDATE vault_subject_keys SET kek_version = $1, wrapped_key = $2 \
                 WHERE workspace_id = $3 AND subject_id = $4 AND key_id = $5 AND kek_version = $6",
            ),
            ws_page: adapt(
                "SELECT workspace_id, purpose, key_version, kek_version, wrapped_key, public_key FROM vault_workspace_keys \
                 WHERE kek_version <> $1 AND (workspace_id > $2 OR (workspace_id = $2 AND (purpose > $3 \
                 OR (purpose = $3 AND key_version > $4)))) \
                 ORDER BY workspace_id, purpose, key_version LIMIT $5",
            ),
            replace_ws: adapt(
                "UPDATE vault_workspace_keys SET kek_version = $1, wrapped_key = $2 \
                 WHERE workspace_id = $3 AND purpose = $4 AND key_version = $5 AND kek_version = $6",
            ),
            in_use: adapt(
                "SELECT kek_version, COUNT(*) AS n FROM vault_subject_keys WHERE kek_version IS NOT NULL GROUP BY kek_version \
                 UNION ALL SELECT kek_version, COUNT(*) AS n FROM vault_workspace_keys GROUP BY kek_version",
            ),
            before_forget: match dialect {
                Dialect::Postgres => None,
                Dialect::Sqlite => Some("PRAGMA secure_delete = ON"),
            },
        }
    }
}

/// Implements [`super::KeyStore`] for a struct with `pool: sqlx::Pool<$db>` and `q: Queries`,
/// and the backend's own batched statements: `LOOKUP_ROWS` (keys per lookup),
/// `subject_key_rows` and `identifier_subject_rows` (the rows of one chunk of keys),
/// `INSERT_ROWS` (rows per insert), `insert_subject_key_rows` and
/// `insert_identifier_subject_rows` (one chunk's insert; returns the rows inserted), and
/// `check_workspace` (refuses an unknown workspace before a write to the subject key and
/// identifier subject tables, where no foreign key does on PostgreSQL).
macro_rules! sql_key_store {
    ($store:ty, $db:ty) => {
        impl $crate::store::KeyStore for $store {
            fn subject_key<'a>(
                &'a self,
                workspace: &'a str,
                subject: &'a str,
            ) -> $crate::kek::BoxFuture<
                'a,
                Result<$crate::store::SubjectKeyState, $crate::error::StoreError>,
            > {
                Box::pin(async move {
                    let row = sqlx::query(&self.q.select_subject)
                        .bind(workspace)
                        .bind(subject)
                        .fetch_optional(&self.pool)
                        .await?;
                    match row {
                        None => Ok($crate::store::SubjectKeyState::Absent),
                        Some(row) => $crate::store::sql::subject_state(&row),
                    }
                })
            }

            fn insert_subject_key<'a>(
                &'a self,
                workspace: &'a str,
                subject: &'a str,
                key: &'a $crate::store::StoredSubjectKey,
            ) -> $crate::kek::BoxFuture<
                'a,
                Result<$crate::store::SubjectKeyState, $crate::error::StoreError>,
            > {
                Box::pin(async move {
                    self.check_workspace(workspace).await?;
                    sqlx::query(&self.q.insert_subject)
                        .bind(workspace)
                        .bind(subject)
                        .bind(key.key_id)
                        .bind($crate::store::version_to_db(key.wrapped.kek_version))
                        .bind(&key.wrapped.bytes)
                        .execute(&self.pool)
                        .await?;
                    self.subject_key(workspace, subject).await
                })
            }

            fn subject_keys<'a>(
                &'a self,
                workspace: &'a str,
                subjects: &'a [&'a str],
            ) -> $crate::kek::BoxFuture<
                'a,
                Result<Vec<(String, $crate::store::SubjectKeyState)>, $crate::error::StoreError>,
            > {
                Box::pin(async move {
                    use sqlx::Row as _;
                    let mut out = Vec::with_capacity(subjects.len());
                    for chunk in subjects.chunks(Self::LOOKUP_ROWS) {
                        for row in self.subject_key_rows(workspace, chunk).await? {
                            let subject: String = row.try_get("subject_id")?;
                            out.push((subject, $crate::store::sql::subject_state(&row)?));
                        }
                    }
                    Ok(out)
                })
            }

            fn insert_subject_keys<'a>(
                &'a self,
                workspace: &'a str,
                keys: &'a [(&'a str, $crate::store::StoredSubjectKey)],
            ) -> $crate::kek::BoxFuture<'a, Result<u64, $crate::error::StoreError>> {
                Box::pin(async move {
                    self.check_workspace(workspace).await?;
                    let mut stored = 0;
                    for chunk in keys.chunks(Self::INSERT_ROWS) {
                        stored += self.insert_subject_key_rows(workspace, chunk).await?;
                    }
                    Ok(stored)
                })
            }

            fn identifier_subjects<'a>(
                &'a self,
                workspace: &'a str,
                indexes: &'a [[u8; 32]],
            ) -> $crate::kek::BoxFuture<
                'a,
                Result<Vec<$crate::store::IdentifierSubject>, $crate::error::StoreError>,
            > {
                Box::pin(async move {
                    use sqlx::Row as _;
                    let mut out = Vec::with_capacity(indexes.len());
                    for chunk in indexes.chunks(Self::LOOKUP_ROWS) {
                        for row in self.identifier_subject_rows(workspace, chunk).await? {
                            let bytes: Vec<u8> = row.try_get("blind_index")?;
                            let index = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                                $crate::error::StoreError::Corrupt("blind index is not 32 bytes")
                            })?;
                            out.push((index, row.try_get("subject_id")?));
                        }
                    }
                    Ok(out)
                })
            }

            fn insert_identifier_subjects<'a>(
                &'a self,
                workspace: &'a str,
                rows: &'a [$crate::store::IdentifierSubject],
            ) -> $crate::kek::BoxFuture<'a, Result<u64, $crate::error::StoreError>> {
                Box::pin(async move {
                    self.check_workspace(workspace).await?;
                    let mut stored = 0;
                    for chunk in rows.chunks(Self::INSERT_ROWS) {
                        stored += self
                            .insert_identifier_subject_rows(workspace, chunk)
                            .await?;
                    }
                    Ok(stored)
                })
            }

            fn delete_identifier_subject<'a>(
                &'a self,
                workspace: &'a str,
                index: &'a [u8; 32],
                subject: &'a str,
            ) -> $crate::kek::BoxFuture<'a, Result<bool, $crate::error::StoreError>> {
                Box::pin(async move {
                    let n = sqlx::query(&self.q.delete_identifier)
                        .bind(workspace)
                        .bind(index.as_slice())
                        .bind(subject)
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                    Ok(n > 0)
                })
            }

            fn forget_subject<'a>(
                &'a self,
                workspace: &'a str,
                subject: &'a str,
            ) -> $crate::kek::BoxFuture<
                'a,
                Result<$crate::store::ForgetOutcome, $crate::error::StoreError>,
            > {
                Box::pin(async move {
                    let mut conn = self.pool.acquire().await?;
                    if let Some(sql) = self.q.before_forget {
                        sqlx::query(sql).execute(&mut *conn).await?;
                    }
                    // Destroy an active key; else leave a tombstone; if a key appeared in
                    // between (a concurrent first seal), destroy it. Rows never go from
                    // forgotten back to active, so this ends with the subject forgotten.
                    let destroyed = sqlx::query(&self.q.forget_update)
                        .bind(workspace)
                        .bind(subject)
                        .execute(&mut *conn)
                        .await?
                        .rows_affected();
                    if destroyed > 0 {
                        return Ok($crate::store::ForgetOutcome {
                            keys_destroyed: destroyed,
                            already_forgotten: false,
                        });
                    }
                    self.check_workspace(workspace).await?;
                    let tombstoned = sqlx::query(&self.q.forget_insert)
                        .bind(workspace)
                        .bind(subject)
                        .execute(&mut *conn)
                        .await?
                        .rows_affected();
                    if tombstoned > 0 {
                        return Ok($crate::store::ForgetOutcome {
                            keys_destroyed: 0,
                            already_forgotten: false,
                        });
                    }
                    let destroyed = sqlx::query(&self.q.forget_update)
                        .bind(workspace)
                        .bind(subject)
                        .execute(&mut *conn)
                        .await?
                        .rows_affected();
                    Ok($crate::store::ForgetOutcome {
                        keys_destroyed: destroyed,
                        already_forgotten: destroyed == 0,
                    })
                })
            }

            fn workspace_key<'a>(
                &'a self,
                workspace: &'a str,
                purpose: $crate::store::WorkspaceKeyPurpose,
            ) -> $crate::kek::BoxFuture<
                'a,
                Result<Option<$crate::store::StoredWorkspaceKey>, $crate::error::StoreError>,
            > {
                Box::pin(async move {
                    let row = sqlx::query(&self.q.select_ws_key)
                        .bind(workspace)
                        .bind(purpose.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                    row.map(|row| $crate::store::sql::workspace_key(&row))
                        .transpose()
                })
            }

            fn insert_workspace_key<'a>(
                &'a self,
                workspace: &'a str,
                purpose: $crate::store::WorkspaceKeyPurpose,
                key: &'a $crate::store::StoredWorkspaceKey,
            ) -> $crate::kek::BoxFuture<
                'a,
                Result<$crate::store::StoredWorkspaceKey, $crate::error::StoreError>,
            > {
                Box::pin(async move {
                    sqlx::query(&self.q.insert_ws_key)
                        .bind(workspace)
                        .bind(purpose.as_str())
                        .bind($crate::store::version_to_db(key.key_version))
                        .bind($crate::store::version_to_db(key.wrapped.kek_version))
                        .bind(&key.wrapped.bytes)
                        .bind(key.public_key.as_deref())
                        .execute(&self.pool)
                        .await?;
                    self.workspace_key(workspace, purpose).await?.ok_or(
                        $crate::error::StoreError::Corrupt("workspace key vanished after insert"),
                    )
                })
            }

            fn subject_keys_to_rewrap<'a>(
                &'a self,
                current: $crate::kek::KekVersion,
                after: (&'a str, &'a str),
                limit: u32,
            ) -> $crate::kek::BoxFuture<
                'a,
                Result<Vec<$crate::store::SubjectKeyRow>, $crate::error::StoreError>,
            > {
                Box::pin(async move {
                    let rows = sqlx::query(&self.q.subject_page)
                        .bind($crate::store::version_to_db(current))
                        .bind(after.0)
                        .bind(after.1)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map($crate::store::sql::subject_row).collect()
                })
            }

            fn replace_subject_wrapping<'a>(
                &'a self,
                row: &'a $crate::store::SubjectKeyRow,
                new: &'a $crate::kek::WrappedKey,
            ) -> $crate::kek::BoxFuture<'a, Result<bool, $crate::error::StoreError>> {
                Box::pin(async move {
                    let n = sqlx::query(&self.q.replace_subject)
                        .bind($crate::store::version_to_db(new.kek_version))
                        .bind(&new.bytes)
                        .bind(&row.workspace_id)
                        .bind(&row.subject_id)
                        .bind(row.key.key_id)
                        .bind($crate::store::version_to_db(row.key.wrapped.kek_version))
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                    Ok(n == 1)
                })
            }

            fn workspace_keys_to_rewrap<'a>(
                &'a self,
                current: $crate::kek::KekVersion,
                after: (&'a str, &'a str, u32),
                limit: u32,
            ) -> $crate::kek::BoxFuture<
                'a,
                Result<Vec<$crate::store::WorkspaceKeyRow>, $crate::error::StoreError>,
            > {
                Box::pin(async move {
                    let rows = sqlx::query(&self.q.ws_page)
                        .bind($crate::store::version_to_db(current))
                        .bind(after.0)
                        .bind(after.1)
                        .bind($crate::store::version_to_db(after.2))
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map($crate::store::sql::workspace_row).collect()
                })
            }

            fn replace_workspace_wrapping<'a>(
                &'a self,
                row: &'a $crate::store::WorkspaceKeyRow,
                new: &'a $crate::kek::WrappedKey,
            ) -> $crate::kek::BoxFuture<'a, Result<bool, $crate::error::StoreError>> {
                Box::pin(async move {
                    let n = sqlx::query(&self.q.replace_ws)
                        .bind($crate::store::version_to_db(new.kek_version))
                        .bind(&new.bytes)
                        .bind(&row.workspace_id)
                        .bind(row.purpose.as_str())
                        .bind($crate::store::version_to_db(row.key.key_version))
                        .bind($crate::store::version_to_db(row.key.wrapped.kek_version))
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                    Ok(n == 1)
                })
            }

            fn kek_versions_in_use(
                &self,
            ) -> $crate::kek::BoxFuture<
                '_,
                Result<
                    std::collections::BTreeMap<$crate::kek::KekVersion, u64>,
                    $crate::error::StoreError,
                >,
            > {
                Box::pin(async move {
                    let rows = sqlx::query(&self.q.in_use).fetch_all(&self.pool).await?;
                    let mut counts = std::collections::BTreeMap::new();
                    for row in &rows {
                        use sqlx::Row as _;
                        let version =
                            $crate::store::version_from_db(row.try_get::<i64, _>("kek_version")?)?;
                        let n = u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
                        *counts.entry(version).or_insert(0) += n;
                    }
                    Ok(counts)
                })
            }
        }
    };
}

use sqlx::Row;
use uuid::Uuid;

use super::{
    StoredSubjectKey, StoredWorkspaceKey, SubjectKeyRow, SubjectKeyState, WorkspaceKeyPurpose,
    WorkspaceKeyRow, version_from_db,
};
use crate::error::StoreError;
use crate::kek::WrappedKey;

pub(super) fn subject_state<R: Row>(row: &R) -> Result<SubjectKeyState, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> Option<Uuid>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let key_id: Option<Uuid> = row.try_get("key_id")?;
    let kek_version: Option<i64> = row.try_get("kek_version")?;
    let wrapped: Option<Vec<u8>> = row.try_get("wrapped_key")?;
    match (key_id, kek_version, wrapped) {
        (None, None, None) => Ok(SubjectKeyState::Forgotten),
        (Some(key_id), Some(v), Some(bytes)) => Ok(SubjectKeyState::Active(StoredSubjectKey {
            key_id,
            wrapped: WrappedKey {
                kek_version: version_from_db(v)?,
                bytes,
            },
        })),
        _ => Err(StoreError::Corrupt("subject key row is half forgotten")),
    }
}

pub(super) fn subject_row<R: Row>(row: &R) -> Result<SubjectKeyRow, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Uuid>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let key = match subject_state(row)? {
        SubjectKeyState::Active(key) => key,
        _ => {
            return Err(StoreError::Corrupt(
                "forgotten subject listed for re-wrapping",
            ));
        }
    };
    Ok(SubjectKeyRow {
        workspace_id: row.try_get("workspace_id")?,
        subject_id: row.try_get("subject_id")?,
        key,
    })
}

pub(super) fn workspace_key<R: Row>(row: &R) -> Result<StoredWorkspaceKey, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StoredWorkspaceKey {
        key_version: version_from_db(row.try_get("key_version")?)?,
        wrapped: WrappedKey {
            kek_version: version_from_db(row.try_get("kek_version")?)?,
            bytes: row.try_get("wrapped_key")?,
        },
        public_key: row.try_get("public_key")?,
    })
}

pub(super) fn workspace_row<R: Row>(row: &R) -> Result<WorkspaceKeyRow, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let purpose: String = row.try_get("purpose")?;
    Ok(WorkspaceKeyRow {
        workspace_id: row.try_get("workspace_id")?,
        purpose: WorkspaceKeyPurpose::parse(&purpose)
            .ok_or(StoreError::Corrupt("unknown workspace key purpose"))?,
        key: workspace_key(row)?,
    })
}
