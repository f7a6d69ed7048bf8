//! The access-store conformance suite: the same checks against PostgreSQL
//! (a fresh database per test) and SQLite.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use meridian_access::{
    AccessError, AccessStore, ApiKeyPepper, AuthenticationError, Authenticator, StoreAccess,
    create_api_key, ensure_workspace,
};
use meridian_domain::{Region, Scope, TimeZone, WorkspaceId};
use meridian_store::sqlx::{PgPool, SqlitePool};

fn ws(id: &str) -> WorkspaceId {
    id.parse().unwrap()
}

fn region(id: &str) -> Region {
    id.parse().unwrap()
}

fn paris() -> TimeZone {
    "Europe/Paris".parse().unwrap()
}

async fn workspaces_are_created_once_per_region(store: Arc<dyn AccessStore>) {
    let first = ensure_workspace(&*store, &ws("acme"), &region("eu"), paris())
        .await
        .unwrap();
    assert_eq!(first.time_zone, paris());
    // Same region again: the existing workspace, unchanged.
    let again = ensure_workspace(&*store, &ws("acme"), &region("eu"), "UTC".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(again, first);
    // Another region: refused, the data would not be where it was promised.
    let err = ensure_workspace(&*store, &ws("acme"), &region("us"), paris())
        .await
        .unwrap_err();
    assert!(matches!(err, AccessError::WorkspaceExists(_, _)), "{err}");
    let err = store.create_workspace(&first).await.unwrap_err();
    assert!(matches!(err, AccessError::WorkspaceExists(_, _)), "{err}");
    assert!(store.get_workspace(&ws("nobody")).await.unwrap().is_none());
}

async fn keys_authenticate_only_with_the_right_secret(store: Arc<dyn AccessStore>) {
    let pepper = || ApiKeyPepper::from_bytes(&[9u8; 32]);
    ensure_workspace(&*store, &ws("acme"), &region("eu"), paris())
        .await
        .unwrap();
    let key = create_api_key(
        &*store,
        &pepper(),
        &ws("acme"),
        "ingest,consent".parse().unwrap(),
    )
    .await
    .unwrap();
    let auth = Authenticator::new(store.clone(), pepper());

    let principal = auth.authenticate(&key.to_string()).await.unwrap();
    assert_eq!(principal.workspace_id, ws("acme"));
    assert!(principal.scopes.allows(Scope::Consent));
    assert!(!principal.scopes.allows(Scope::Audience));
    let bearer = format!("Bearer {key}");
    assert_eq!(
        auth.authenticate_bearer(Some(&bearer)).await.unwrap(),
        principal
    );

    // The stored row holds no usable secret.
    let record = store.find_api_key(key.key_id()).await.unwrap().unwrap();
    assert!(!key.to_string().contains(&hex::encode(&record.secret_hash)));

    // A key with the right id but another secret is unknown.
    let forged = format!("{}_{}", &key.to_string()[..19], "A".repeat(43));
    assert_eq!(
        auth.authenticate(&forged).await.unwrap_err(),
        AuthenticationError::Unknown
    );
    // The same key under another pepper does not verify.
    let other = Authenticator::new(store.clone(), ApiKeyPepper::from_bytes(&[1u8; 32]));
    assert_eq!(
        other.authenticate(&key.to_string()).await.unwrap_err(),
        AuthenticationError::Unknown
    );
    assert_eq!(
        auth.authenticate_bearer(None).await.unwrap_err(),
        AuthenticationError::Missing
    );
    assert_eq!(
        auth.authenticate_bearer(Some("Basic abc"))
            .await
            .unwrap_err(),
        AuthenticationError::Malformed
    );
}

async fn keys_need_an_existing_workspace_and_can_be_revoked(store: Arc<dyn AccessStore>) {
    let pepper = ApiKeyPepper::from_bytes(&[9u8; 32]);
    let err = create_api_key(&*store, &pepper, &ws("ghost"), "admin".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, AccessError::UnknownWorkspace(_)), "{err}");

    ensure_workspace(&*store, &ws("acme"), &region("eu"), paris())
        .await
        .unwrap();
    let key = create_api_key(&*store, &pepper, &ws("acme"), "admin".parse().unwrap())
        .await
        .unwrap();
    assert!(store.revoke_api_key(key.key_id()).await.unwrap());
    assert!(!store.revoke_api_key(key.key_id()).await.unwrap());
    let auth = Authenticator::new(store, pepper);
    assert_eq!(
        auth.authenticate(&key.to_string()).await.unwrap_err(),
        AuthenticationError::Unknown
    );
}

/// Instantiates each conformance check once per backend.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/postgres")]
                async fn $check(pool: PgPool) {
                    super::$check(Arc::new(StoreAccess::Postgres(pool))).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/sqlite")]
                async fn $check(pool: SqlitePool) {
                    super::$check(Arc::new(StoreAccess::Sqlite(pool))).await;
                }
            )*
        }
    };
}

conformance!(
    workspaces_are_created_once_per_region,
    keys_authenticate_only_with_the_right_secret,
    keys_need_an_existing_workspace_and_can_be_revoked,
);
