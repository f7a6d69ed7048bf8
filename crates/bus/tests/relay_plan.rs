//! The relay's claim, and the in-process consumer's read, stay index scans when their
//! plans were made on an empty or small outbox.
//!
//! A connection keeps a prepared statement's plan: made while the outbox was empty (the
//! relay idles most of the time), the claim scanned the whole table on every batch once a
//! burst had filled it, so the relay fell further behind as the backlog grew. Each test
//! runs the bus on one connection, first on the empty, analyzed table (and, for the
//! consumer, a few one-event deliveries) so that its plans are made and cached there, then
//! moves a few thousand rows and counts the sequential scans PostgreSQL recorded on
//! `outbox_events` meanwhile.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Harness, Kind, Recorder};
use meridian_bus::{ConsumerName, OutboxEvent, Subscription, enqueue_all};
use meridian_store::Store;
use meridian_store::sqlx::{self, PgPool, postgres::PgPoolOptions};

const BACKLOG: usize = 3000;

/// Sequential scans of `outbox_events` so far, as the statistics system has them. The
/// pool's one backend flushes its pending counts when it next goes idle.
async fn outbox_seq_scans(pool: &PgPool) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'outbox_events'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A bus of `kind` over one connection to the test database (its statements are prepared,
/// and their plans cached, on that connection), and the connection's pool. The outbox is
/// empty and analyzed, as autovacuum leaves it once the relay has drained it.
async fn one_connection_harness(pool: &PgPool, kind: Kind) -> (Harness, PgPool) {
    let one = PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let harness = Harness::new(Store::Postgres(one.clone()), kind).await;
    sqlx::query("ANALYZE outbox_events")
        .execute(&one)
        .await
        .unwrap();
    (harness, one)
}

/// Writes `BACKLOG` events to the outbox in one transaction.
async fn enqueue_burst(harness: &Harness, one: &PgPool) {
    let events: Vec<OutboxEvent> = (0..BACKLOG)
        .map(|i| harness.event("acme", &format!("event {i}")))
        .collect();
    let mut tx = one.begin().await.unwrap();
    enqueue_all(&mut *tx, &events).await.unwrap();
    tx.commit().await.unwrap();
}

async fn relay_a_burst_after_idling(pool: PgPool, kind: Kind) {
    let (harness, one) = one_connection_harness(&pool, kind).await;
    // PostgreSQL plans a prepared statement afresh five times, then keeps a generic plan.
    for _ in 0..8 {
        assert_eq!(harness.bus.relay_batch(256).await.unwrap(), 0);
    }
    enqueue_burst(&harness, &one).await;

    let before = outbox_seq_scans(&one).await;
    let mut relayed = 0;
    while relayed < BACKLOG {
        let n = harness.bus.relay_batch(256).await.unwrap();
        assert!(n > 0, "the relay stopped with events unsent");
        relayed += n;
    }
    let after = outbox_seq_scans(&one).await;
    harness.cleanup().await;
    assert_eq!(
        after - before,
        0,
        "the relay scanned the whole outbox while relaying {BACKLOG} events"
    );
}

#[sqlx::test(migrations = "../../migrations/postgres")]
async fn the_in_process_relay_claims_by_index_after_idling(pool: PgPool) {
    relay_a_burst_after_idling(pool, Kind::Local).await;
}

#[sqlx::test(migrations = "../../migrations/postgres")]
async fn the_jetstream_relay_claims_by_index_after_idling(pool: PgPool) {
    relay_a_burst_after_idling(pool, Kind::JetStream).await;
}

/// The in-process bus keeps relayed rows until they are pruned, and its consumers read
/// their family's log by position: the first reads (and every idle check) run while the
/// outbox is small; the same plans must serve it once a burst has filled it.
#[sqlx::test(migrations = "../../migrations/postgres")]
async fn the_in_process_consumer_reads_by_index_after_a_small_start(pool: PgPool) {
    let (harness, one) = one_connection_harness(&pool, Kind::Local).await;
    let recorder = Recorder::new("reader");
    let subscription = Subscription {
        batch_size: 500,
        ..Subscription::new(
            "reader".parse::<ConsumerName>().unwrap(),
            harness.family.clone(),
        )
    };
    // Idle checks on the empty outbox, then a few one-event deliveries: each statement
    // runs more than five times on a tiny table, so its generic plan is the one kept.
    for _ in 0..8 {
        harness
            .bus
            .consume_batch(&subscription, &*recorder)
            .await
            .unwrap();
    }
    for i in 0..8 {
        let mut tx = one.begin().await.unwrap();
        enqueue_all(&mut *tx, &[harness.event("acme", &format!("early {i}"))])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(harness.bus.relay_batch(256).await.unwrap(), 1);
        harness
            .bus
            .consume_batch(&subscription, &*recorder)
            .await
            .unwrap();
    }
    enqueue_burst(&harness, &one).await;
    let mut relayed = 0;
    while relayed < BACKLOG {
        relayed += harness.bus.relay_batch(256).await.unwrap();
    }

    let before = outbox_seq_scans(&one).await;
    let mut consumed = 0;
    while consumed < BACKLOG {
        let stats = harness
            .bus
            .consume_batch(&subscription, &*recorder)
            .await
            .unwrap();
        assert!(!stats.is_idle(), "the consumer stopped with events unread");
        consumed += stats.applied;
    }
    // And one idle check on the full outbox.
    harness
        .bus
        .consume_batch(&subscription, &*recorder)
        .await
        .unwrap();
    let after = outbox_seq_scans(&one).await;
    assert_eq!(recorder.calls.lock().unwrap().len(), BACKLOG + 8);
    assert_eq!(
        after - before,
        0,
        "the consumer scanned the whole outbox while reading {BACKLOG} events"
    );
}
