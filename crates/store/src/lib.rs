//! Where state lives: a PostgreSQL database (production) or a SQLite file in
//! the data directory (the embedded default), with the migrations of
//! `migrations/postgres` and `migrations/sqlite`.
//!
//! Rooms keep their own storage traits with one implementation per backend;
//! this crate only opens the database, applies migrations and refuses a schema
//! this binary does not know.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

pub use copy::{BinaryCopy, COPY_MIN_ROWS, CopyDataError};
pub use scratch::ScratchDatabase;
pub use spare::{SPARE_CONNECTION_WAIT, spare_connection};
pub use sqlx;

pub mod backend_states;
mod copy;
pub mod cpu;
mod scratch;
mod spare;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// The SQLite file inside the data directory.
pub const SQLITE_FILE: &str = "meridian.db";

/// Where the store is: chosen by `DATABASE_URL` (PostgreSQL) or `--data-dir` (embedded).
#[derive(Clone)]
pub enum StoreLocation {
    Embedded { data_dir: PathBuf },
    Postgres { url: String, max_connections: u32 },
}

impl std::fmt::Debug for StoreLocation {
    // The URL may carry a password: print only the backend and the data directory.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Embedded { data_dir } => f
                .debug_struct("Embedded")
                .field("data_dir", data_dir)
                .finish(),
            StoreLocation::Postgres { .. } => f.write_str("Postgres { .. }"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(String),
    #[error("cannot connect to {backend}: {source}")]
    Connect {
        backend: &'static str,
        source: sqlx::Error,
    },
    #[error(
        "the database schema is ahead of this binary (migration {0} is applied but unknown here): run a newer meridian"
    )]
    SchemaAhead(i64),
    #[error(
        "the database schema is dirty: migration {0} failed part-way; fix it by hand, then run `meridian migrate`"
    )]
    SchemaDirty(i64),
    #[error("migration {0} was changed after it was applied; restore the original file")]
    MigrationEdited(i64),
    #[error("migration failed: {0}")]
    Migrate(String),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// An open store: a pool for one of the two backends.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Store {
    /// Opens the store, creating the data directory and SQLite file when embedded.
    pub async fn connect(location: &StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Embedded { data_dir } => {
                create_private_dir(data_dir)?;
                let options = sqlite_options(&data_dir.join(SQLITE_FILE));
                let pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    .connect_with(options)
                    .await
                    .map_err(|source| StoreError::Connect {
                        backend: "sqlite",
                        source,
                    })?;
                Ok(Store::Sqlite(pool))
            }
            StoreLocation::Postgres {
                url,
                max_connections,
            } => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(|err| StoreError::BadUrl(redact_url_error(&err)))?;
                let pool = PgPoolOptions::new()
                    .max_connections(*max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .map_err(|source| StoreError::Connect {
                        backend: "postgres",
                        source,
                    })?;
                Ok(Store::Postgres(pool))
            }
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Store::Postgres(_) => Backend::Postgres,
            Store::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Applies every pending migration. Refuses a schema that is ahead of this
    /// binary, dirty, or whose applied migrations were edited.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let result = match self {
            Store::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
            Store::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
        };
        result.map_err(|err| match err {
            MigrateError::VersionMissing(version) => StoreError::SchemaAhead(version),
            MigrateError::Dirty(version) => StoreError::SchemaDirty(version),
            MigrateError::VersionMismatch(version) => StoreError::MigrationEdited(version),
            other => StoreError::Migrate(other.to_string()),
        })
    }

    /// The newest migration version this binary knows.
    pub fn latest_known_migration(&self) -> Option<i64> {
        let migrator = match self {
            Store::Postgres(_) => &POSTGRES_MIGRATIONS,
            Store::Sqlite(_) => &SQLITE_MIGRATIONS,
        };
        migrator.iter().map(|migration| migration.version).max()
    }

    /// A cheap round trip, for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
            Store::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
        }
        Ok(())
    }

    pub async fn close(&self) {
        match self {
            Store::Postgres(pool) => pool.close().await,
            Store::Sqlite(pool) => pool.close().await,
        }
    }
}

/// SQLite settings for the embedded store: WAL for concurrent readers,
/// `synchronous = FULL` so an acknowledged write survives a crash.
pub fn sqlite_options(file: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10))
}

fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    let to_error = |source| StoreError::DataDir {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(to_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(to_error)?;
    }
    Ok(())
}

/// sqlx's URL parse errors can echo the URL, password included: keep the kind only.
fn redact_url_error(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Configuration(_) => {
            "expected postgres://user[:password]@host[:port]/database".into()
        }
        _ => "unreadable URL".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_store_migrates_twice_without_harm_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let store = Store::connect(&StoreLocation::Embedded {
            data_dir: data_dir.clone(),
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        store.ping().await.unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&data_dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[tokio::test]
    async fn a_schema_ahead_of_the_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&StoreLocation::Embedded {
            data_dir: dir.path().to_owned(),
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let Store::Sqlite(pool) = &store else {
            unreachable!()
        };
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99999, 'from the future', 1, x'00', 0)",
        )
        .execute(pool)
        .await
        .unwrap();
        let err = store.migrate().await.unwrap_err();
        assert!(matches!(err, StoreError::SchemaAhead(99999)), "{err}");
    }

    #[tokio::test]
    async fn scratch_databases_are_created_migrated_and_dropped() {
        let admin = std::env::var("DATABASE_URL").expect("DATABASE_URL must point at PostgreSQL");
        let scratch = ScratchDatabase::create(&admin, "meridian_test_scratch")
            .await
            .unwrap();
        let name = scratch.name().to_owned();
        let store = Store::connect(&StoreLocation::Postgres {
            url: scratch.url(),
            max_connections: 2,
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        // Dropping works even with the pool still open (FORCE).
        scratch.drop_now().await.unwrap();
        let Store::Postgres(_) = store else {
            unreachable!()
        };
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }

    #[tokio::test]
    async fn a_bad_database_url_does_not_echo_the_password() {
        let err = Store::connect(&StoreLocation::Postgres {
            url: "postgres://user:hunter2@/?sslmode=bogus".into(),
            max_connections: 1,
        })
        .await
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
