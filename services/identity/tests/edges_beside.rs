//! A delivery's new edges are committed on a connection of their own, just before the
//! delivery's transaction (PostgreSQL only): until that transaction commits no read
//! returns them, and when it rolls back, the retry writes them again without a clash.
#![allow(clippy::unwrap_used)]

use chrono::{TimeZone, Utc};
use meridian_bus::Tx;
use meridian_identity::{
    AiplRules, ChangeBatch, Edge, IdentifierType, IdentityStore, LinkRule, NodeKey, StoreIdentity,
};
use meridian_store::sqlx::{self, PgPool};
use meridian_vault::BlindIndex;

const WS: &str = "acme";

fn node(n: u64) -> NodeKey {
    let mut index = [0u8; 32];
    index[..8].copy_from_slice(&n.to_be_bytes());
    NodeKey {
        kind: IdentifierType::AnonymousId,
        index: BlindIndex(index),
    }
}

/// A batch of new edges `seqs` (a chain of anonymous ids).
fn edges(seqs: std::ops::RangeInclusive<u64>) -> ChangeBatch {
    ChangeBatch {
        new_edges: seqs
            .map(|seq| Edge {
                seq,
                from: node(seq),
                to: node(seq + 1),
                rule: LinkRule::SameEvent,
                event_id: format!("event-{seq}"),
                at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            })
            .collect(),
        ..ChangeBatch::default()
    }
}

/// Writes `batch` the way the bus consumer does (version bump, then `apply_in`, inside
/// the caller's transaction), then commits or rolls back.
async fn deliver(pool: &PgPool, store: &StoreIdentity, batch: &ChangeBatch, commit: bool) {
    let mut tx = pool.begin().await.unwrap();
    store
        .bump_version(&mut Tx::Postgres(&mut tx), WS)
        .await
        .unwrap();
    store
        .apply_in(&mut Tx::Postgres(&mut tx), WS, batch, &AiplRules::default())
        .await
        .unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

async fn stored_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM identity_edges")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn read_seqs(store: &StoreIdentity) -> Vec<u64> {
    let (_, edges, _) = store.load_graph(WS).await.unwrap();
    edges.iter().map(|e| e.seq).collect()
}

#[sqlx::test(migrations = "../../migrations/postgres")]
async fn edges_copied_beside_a_delivery_are_read_only_once_it_commits(pool: PgPool) {
    sqlx::query("INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ($1, 'eu', 'Europe/Paris')")
        .bind(WS)
        .execute(&pool)
        .await
        .unwrap();
    let store = StoreIdentity::Postgres(pool.clone());
    let first = edges(1..=40);

    // The delivery rolls back after its edges were committed beside it: the rows are
    // there, but no read returns them.
    deliver(&pool, &store, &first, false).await;
    assert_eq!(stored_rows(&pool).await, 40, "the edges were copied beside");
    assert!(read_seqs(&store).await.is_empty());

    // Its retry hands out the same seqs: the leftovers go first, no key clashes.
    deliver(&pool, &store, &first, true).await;
    assert_eq!(stored_rows(&pool).await, 40);
    assert_eq!(read_seqs(&store).await, (1..=40).collect::<Vec<_>>());

    // A large delivery rolls back, then a small one (its edges written in its own
    // transaction) takes its seqs: the leftovers above it are gone, not made readable.
    deliver(&pool, &store, &edges(41..=80), false).await;
    assert_eq!(stored_rows(&pool).await, 80);
    deliver(&pool, &store, &edges(41..=45), true).await;
    assert_eq!(stored_rows(&pool).await, 45);
    assert_eq!(read_seqs(&store).await, (1..=45).collect::<Vec<_>>());
}
