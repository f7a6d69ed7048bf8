//! The start-up schema check on both backends: a schema that is ahead, dirty (a migration
//! failed part-way) or whose applied migrations were edited is refused with its own error.
#![allow(clippy::unwrap_used)]

use meridian_store::sqlx::{self, PgPool, SqlitePool};
use meridian_store::{Store, StoreError};

async fn execute(store: &Store, sql: &str) {
    match store {
        Store::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop).unwrap(),
        Store::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop).unwrap(),
    }
}

/// A one-byte blob literal in the backend's dialect.
fn zero_byte(store: &Store) -> &'static str {
    match store {
        Store::Postgres(_) => "'\\x00'::bytea",
        Store::Sqlite(_) => "x'00'",
    }
}

async fn applied_versions(store: &Store) -> Vec<i64> {
    let sql = "SELECT version FROM _sqlx_migrations ORDER BY version";
    match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
    }
}

async fn every_known_migration_is_applied_including_the_outbox(store: Store) {
    store.migrate().await.unwrap();
    let latest = store.latest_known_migration().unwrap();
    assert!(latest >= 3, "0003_outbox is embedded");
    assert_eq!(applied_versions(&store).await.last(), Some(&latest));
    for table in [
        "outbox_events",
        "bus_processed",
        "bus_dead_letters",
        "bus_retries",
        "bus_consumer_offsets",
    ] {
        execute(&store, &format!("SELECT COUNT(*) FROM {table}")).await;
    }
    store.migrate().await.unwrap();
}

async fn a_dirty_schema_is_refused(store: Store) {
    store.migrate().await.unwrap();
    let latest = store.latest_known_migration().unwrap();
    execute(
        &store,
        &format!("UPDATE _sqlx_migrations SET success = FALSE WHERE version = {latest}"),
    )
    .await;
    let err = store.migrate().await.unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaDirty(v) if v == latest),
        "{err}"
    );
    assert!(err.to_string().contains("meridian migrate"), "{err}");
}

async fn an_edited_migration_is_refused(store: Store) {
    store.migrate().await.unwrap();
    execute(
        &store,
        &format!(
            "UPDATE _sqlx_migrations SET checksum = {} WHERE version = 1",
            zero_byte(&store)
        ),
    )
    .await;
    let err = store.migrate().await.unwrap_err();
    assert!(matches!(err, StoreError::MigrationEdited(1)), "{err}");
}

async fn a_schema_ahead_is_refused(store: Store) {
    store.migrate().await.unwrap();
    execute(
        &store,
        &format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99999, 'from the future', TRUE, {}, 0)",
            zero_byte(&store)
        ),
    )
    .await;
    let err = store.migrate().await.unwrap_err();
    assert!(matches!(err, StoreError::SchemaAhead(99999)), "{err}");
}

macro_rules! both_backends {
    ($($check:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[sqlx::test(migrations = false)]
                async fn $check(pool: PgPool) {
                    super::$check(Store::Postgres(pool)).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[sqlx::test(migrations = false)]
                async fn $check(pool: SqlitePool) {
                    super::$check(Store::Sqlite(pool)).await;
                }
            )*
        }
    };
}

both_backends!(
    every_known_migration_is_applied_including_the_outbox,
    a_dirty_schema_is_refused,
    an_edited_migration_is_refused,
    a_schema_ahead_is_refused,
);
