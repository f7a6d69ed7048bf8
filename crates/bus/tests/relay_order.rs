//! The in-process relay on PostgreSQL gives stream positions in `seq` order even when the
//! rows' physical order differs (after updates and concurrent inserts, as in production):
//! consumers read by stream position, so anything else reorders a key's events.
#![allow(clippy::unwrap_used)]

use meridian_bus::{Bus, LocalBus, OutboxEvent, enqueue_all};
use meridian_store::Store;
use meridian_store::sqlx::{self, PgPool};

#[sqlx::test(migrations = "../../migrations/postgres")]
async fn stream_positions_follow_seq_whatever_the_physical_order(pool: PgPool) {
    let events: Vec<OutboxEvent> = (0..4000)
        .map(|i| {
            OutboxEvent::new(
                "acme".parse().unwrap(),
                "relay-order".parse().unwrap(),
                format!("key-{}", i % 7),
                vec![7u8; 200],
            )
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    enqueue_all(&mut *tx, &events).await.unwrap();
    tx.commit().await.unwrap();
    // Move every other row to the end of the heap (full pages: the new versions cannot stay
    // on their page), then give the planner statistics under which a large relay batch was
    // planned as a hash join over a scan in physical order. The relay now plans its claim by
    // index (`relay_plan.rs`); positions must follow `seq` whatever the plan.
    sqlx::query("UPDATE outbox_events SET payload = payload WHERE seq % 2 = 0")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("ANALYZE outbox_events")
        .execute(&pool)
        .await
        .unwrap();
    let out_of_place: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (ORDER BY ctid) AS before FROM outbox_events) t \
         WHERE seq < before",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        out_of_place > 0,
        "the heap order must differ from seq order for this test"
    );

    let bus = LocalBus::new(Store::Postgres(pool.clone()));
    let mut relayed = 0;
    while relayed < events.len() {
        let n = bus.relay_batch(3000).await.unwrap();
        assert!(n > 0, "the relay stopped with events unsent");
        relayed += n;
    }

    let inversions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT stream_seq, lag(stream_seq) OVER (ORDER BY seq) AS before \
         FROM outbox_events) t WHERE stream_seq <= before",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(inversions, 0, "stream positions out of seq order");
}
