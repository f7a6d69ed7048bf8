//! The bus conformance suite: the same checks for the in-process bus and JetStream, over
//! SQLite and PostgreSQL (a fresh database per test).
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, Kind, Recorder, effects, eventually, scalar};
use meridian_bus::{
    Bus, BusError, BusKind, ConsumerName, DeadLetterFilter, EventHandler, LoopSettings,
    PruneSettings, RetryPolicy, Subscription, UpcomingEvent, enqueue, enqueue_all,
    list_dead_letters, outbox_stats, prune, replay_dead_letter, run_consumer, run_relay,
};
use meridian_store::Store;
use meridian_store::sqlx::{PgPool, SqlitePool};
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);

fn subscription(h: &Harness, consumer: &str) -> Subscription {
    Subscription {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(80),
        },
        batch_size: 64,
        ..Subscription::new(consumer.parse::<ConsumerName>().unwrap(), h.family.clone())
    }
}

/// Deliveries of at most two events, so a few events make several.
fn two_per_delivery(h: &Harness, consumer: &str) -> Subscription {
    Subscription {
        batch_size: 2,
        ..subscription(h, consumer)
    }
}

/// One relay round and one consume round.
async fn pump(h: &Harness, sub: &Subscription, handler: &dyn EventHandler) {
    h.bus.relay_batch(256).await.unwrap();
    h.bus.consume_batch(sub, handler).await.unwrap();
}

async fn commit_state_and_events(h: &Harness, events: &[meridian_bus::OutboxEvent]) {
    match &h.store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("INSERT INTO test_state (workspace_id, name) VALUES ('acme', 'x')")
                .execute(&mut *tx)
                .await
                .unwrap();
            enqueue(&mut tx, &events[0]).await.unwrap();
            enqueue_all(&mut *tx, &events[1..]).await.unwrap();
            tx.commit().await.unwrap();
        }
        Store::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("INSERT INTO test_state (workspace_id, name) VALUES ('acme', 'x')")
                .execute(&mut *tx)
                .await
                .unwrap();
            enqueue(&mut tx, &events[0]).await.unwrap();
            enqueue_all(&mut *tx, &events[1..]).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
}

async fn rolled_back_event(h: &Harness) -> Uuid {
    let event = h.event("acme", "never");
    match &h.store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            enqueue(&mut tx, &event).await.unwrap();
            tx.rollback().await.unwrap();
        }
        Store::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            enqueue(&mut tx, &event).await.unwrap();
            tx.rollback().await.unwrap();
        }
    }
    event.event_id
}

async fn committed_events_are_applied_once_and_rolled_back_ones_never_sent(h: Harness) {
    let events: Vec<_> = (0..3)
        .map(|i| h.event(if i == 2 { "globex" } else { "acme" }, &format!("e{i}")))
        .collect();
    commit_state_and_events(&h, &events).await;
    let ghost = rolled_back_event(&h).await;
    let stats = outbox_stats(&h.store).await.unwrap();
    assert_eq!((stats.unsent, stats.sent), (3, 0));

    let identity = Recorder::new("identity");
    let audit = Recorder::new("audit");
    let sub_identity = subscription(&h, "identity");
    let sub_audit = subscription(&h, "audit");
    eventually(LIMIT, "both consumers to apply 3 events", || async {
        pump(&h, &sub_identity, &*identity).await;
        h.bus.consume_batch(&sub_audit, &*audit).await.unwrap();
        effects(&h.store, "identity").await.len() == 3
            && effects(&h.store, "audit").await.len() == 3
    })
    .await;
    // The in-process bus keeps published rows (they are its log) until pruned; the
    // JetStream relay deletes them once JetStream holds them.
    let in_process = h.bus.kind() == BusKind::InProcess;
    let stats = outbox_stats(&h.store).await.unwrap();
    let published_rows = if in_process { 3 } else { 0 };
    assert_eq!((stats.unsent, stats.sent), (0, published_rows));
    for consumer in ["identity", "audit"] {
        let applied = effects(&h.store, consumer).await;
        assert!(applied.values().all(|&n| n == 1), "{consumer}: {applied:?}");
        assert!(!applied.contains_key(&ghost));
        for event in &events {
            assert!(applied.contains_key(&event.event_id));
        }
    }

    // A relay that crashed after publishing but before marking the rows sent (in-process)
    // or committing their deletion (JetStream) finds them again and publishes again: every
    // event is delivered a second time (or dropped by JetStream's duplicate window), and
    // applied no second time.
    if in_process {
        match &h.store {
            Store::Postgres(pool) => {
                sqlx::query("UPDATE outbox_events SET sent_at = NULL, stream_seq = NULL")
                    .execute(pool)
                    .await
                    .map(drop)
                    .unwrap()
            }
            Store::Sqlite(pool) => {
                sqlx::query("UPDATE outbox_events SET sent_at = NULL, stream_seq = NULL")
                    .execute(pool)
                    .await
                    .map(drop)
                    .unwrap()
            }
        }
    } else {
        commit_state_and_events(&h, &events).await;
    }
    assert_eq!(h.bus.relay_batch(256).await.unwrap(), 3);
    for _ in 0..3 {
        h.bus
            .consume_batch(&sub_identity, &*identity)
            .await
            .unwrap();
    }
    let applied = effects(&h.store, "identity").await;
    assert_eq!(applied.len(), 3);
    assert!(applied.values().all(|&n| n == 1), "{applied:?}");
    assert_eq!(
        scalar(
            &h.store,
            "SELECT COUNT(*) FROM bus_processed WHERE consumer = 'identity'"
        )
        .await,
        3
    );

    // Published rows every consumer has passed can go; processed records are kept longer.
    for _ in 0..3 {
        h.bus.consume_batch(&sub_audit, &*audit).await.unwrap();
    }
    assert!(effects(&h.store, "audit").await.values().all(|&n| n == 1));
    let now = chrono::Utc::now();
    let kept = prune(
        &h.store,
        PruneSettings {
            sent_before: now - chrono::Duration::hours(1),
            processed_before: now - chrono::Duration::days(8),
        },
    )
    .await
    .unwrap();
    assert_eq!((kept.outbox_rows, kept.processed_rows), (0, 0));
    let pruned = prune(
        &h.store,
        PruneSettings {
            sent_before: now + chrono::Duration::seconds(5),
            processed_before: now - chrono::Duration::days(8),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (pruned.outbox_rows, pruned.processed_rows),
        (published_rows, 0)
    );
    assert_eq!(outbox_stats(&h.store).await.unwrap().sent, 0);
    h.cleanup().await;
}

async fn failures_retry_with_backoff_then_dead_letter_and_replay(h: Harness) {
    let doomed = h.event("acme", "doomed");
    let flaky = h.event("acme", "flaky");
    let fine = h.event("acme", "fine");
    commit_state_and_events(&h, &[doomed.clone(), flaky.clone(), fine.clone()]).await;
    let handler = Recorder::new("identity");
    handler.always_fail.lock().unwrap().insert(doomed.event_id);
    handler.fail_times.lock().unwrap().insert(flaky.event_id, 2);
    let sub = subscription(&h, "identity");

    eventually(LIMIT, "a dead letter and two applied events", || async {
        pump(&h, &sub, &*handler).await;
        let dead = list_dead_letters(&h.store, &DeadLetterFilter::default())
            .await
            .unwrap();
        dead.len() == 1 && effects(&h.store, "identity").await.len() == 2
    })
    .await;
    let applied = effects(&h.store, "identity").await;
    assert_eq!(applied.get(&flaky.event_id), Some(&1));
    assert_eq!(applied.get(&fine.event_id), Some(&1));
    assert!(
        !applied.contains_key(&doomed.event_id),
        "a failed attempt left its effect"
    );
    // Handlers of a failing batch may run more than once in a round (rolled back), so
    // count attempts by what stuck: the dead letter says 3 = max_attempts.
    let calls = handler.calls.lock().unwrap().clone();
    assert!(calls.get(&flaky.event_id).copied().unwrap_or(0) >= 3);

    let dead = list_dead_letters(&h.store, &DeadLetterFilter::default())
        .await
        .unwrap();
    let letter = &dead[0];
    assert_eq!(letter.event_id, doomed.event_id);
    assert_eq!(letter.consumer, "identity");
    assert_eq!(letter.workspace_id, "acme");
    assert_eq!(letter.family, h.family.as_str());
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.payload_len, 6);
    assert_eq!(letter.last_error, "always failing");
    assert!(letter.resolved_at.is_none() && letter.replay_requested_at.is_none());
    let other_workspace = DeadLetterFilter {
        workspace_id: Some("globex".into()),
        ..Default::default()
    };
    assert!(
        list_dead_letters(&h.store, &other_workspace)
            .await
            .unwrap()
            .is_empty()
    );

    // Nothing more happens until a replay is asked for.
    for _ in 0..3 {
        pump(&h, &sub, &*handler).await;
    }
    assert!(
        !effects(&h.store, "identity")
            .await
            .contains_key(&doomed.event_id)
    );

    // A replay that fails again leaves the letter dead, one attempt more.
    replay_dead_letter(&h.store, letter.dead_letter_id)
        .await
        .unwrap();
    eventually(LIMIT, "the failed replay", || async {
        pump(&h, &sub, &*handler).await;
        let dead = list_dead_letters(&h.store, &DeadLetterFilter::default())
            .await
            .unwrap();
        dead[0].attempts == 4 && dead[0].replay_requested_at.is_none()
    })
    .await;

    // Fixed handler: the replay applies it once and resolves the letter.
    handler.always_fail.lock().unwrap().clear();
    let requested = replay_dead_letter(&h.store, letter.dead_letter_id)
        .await
        .unwrap();
    assert!(requested.replay_requested_at.is_some());
    eventually(LIMIT, "the replayed event to be applied", || async {
        pump(&h, &sub, &*handler).await;
        effects(&h.store, "identity")
            .await
            .contains_key(&doomed.event_id)
    })
    .await;
    assert!(
        list_dead_letters(&h.store, &DeadLetterFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    let all = DeadLetterFilter {
        include_resolved: true,
        ..Default::default()
    };
    let resolved = list_dead_letters(&h.store, &all).await.unwrap();
    assert!(resolved[0].resolved_at.is_some());
    for _ in 0..3 {
        pump(&h, &sub, &*handler).await;
    }
    assert!(
        effects(&h.store, "identity")
            .await
            .values()
            .all(|&n| n == 1)
    );

    let missing = Uuid::now_v7();
    assert!(matches!(
        replay_dead_letter(&h.store, missing).await,
        Err(BusError::UnknownDeadLetter(id)) if id == missing
    ));
    h.cleanup().await;
}

async fn concurrent_writers_relays_and_consumers_apply_every_event_once(h: Harness) {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 50;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let settings = LoopSettings {
        relay_batch: 16,
        idle: Duration::from_millis(5),
        ..Default::default()
    };
    let handler = Recorder::new("identity");
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(tokio::spawn(run_relay(
            h.bus.clone(),
            settings,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(run_consumer(
            h.bus.clone(),
            Subscription {
                batch_size: 8,
                ..subscription(&h, "identity")
            },
            handler.clone() as Arc<dyn EventHandler>,
            settings,
            shutdown.clone(),
        )));
    }
    let h = Arc::new(h);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let h = h.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let event = h.event("acme", &format!("w{w}-{i}"));
                commit_state_and_events(&h, &[event]).await;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    eventually(LIMIT, "every event applied", || async {
        effects(&h.store, "identity").await.len() == WRITERS * PER_WRITER
    })
    .await;
    stop.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let applied = effects(&h.store, "identity").await;
    assert!(
        applied.values().all(|&n| n == 1),
        "an event was applied twice"
    );
    assert_eq!(outbox_stats(&h.store).await.unwrap().unsent, 0);
    h.cleanup().await;
}

/// Applies each event through a [`Recorder`], recording the deliveries that reach
/// `handle_batch` (a handler that batches its work overrides it).
struct Batched {
    recorder: Arc<Recorder>,
    batches: std::sync::Mutex<Vec<Vec<Uuid>>>,
}

#[async_trait::async_trait]
impl EventHandler for Batched {
    async fn handle(
        &self,
        tx: &mut meridian_bus::Tx<'_>,
        event: &meridian_bus::OutboxEvent,
    ) -> Result<(), meridian_bus::HandlerError> {
        self.recorder.handle(tx, event).await
    }

    async fn handle_batch(
        &self,
        tx: &mut meridian_bus::Tx<'_>,
        events: &[&meridian_bus::OutboxEvent],
    ) -> Result<(), meridian_bus::HandlerError> {
        self.batches
            .lock()
            .unwrap()
            .push(events.iter().map(|e| e.event_id).collect());
        for event in events {
            self.recorder.handle(tx, event).await?;
        }
        Ok(())
    }
}

async fn a_delivery_reaches_handle_batch_and_a_failure_falls_back_to_each_event(h: Harness) {
    let events: Vec<_> = (0..3).map(|i| h.event("acme", &format!("b{i}"))).collect();
    commit_state_and_events(&h, &events).await;
    let failing = events[1].event_id;
    let recorder = Recorder::new("batched");
    recorder.always_fail.lock().unwrap().insert(failing);
    let handler = Batched {
        recorder: recorder.clone(),
        batches: std::sync::Mutex::new(Vec::new()),
    };
    let sub = subscription(&h, "batched");
    eventually(LIMIT, "the two good events to be applied", || async {
        pump(&h, &sub, &handler).await;
        effects(&h.store, "batched").await.len() == 2
    })
    .await;
    let applied = effects(&h.store, "batched").await;
    assert!(applied.values().all(|&n| n == 1), "{applied:?}");
    assert!(!applied.contains_key(&failing));
    let batches = handler.batches.lock().unwrap().clone();
    if h.bus.kind() == meridian_bus::BusKind::InProcess {
        // One delivery of all three; its failure rolled it back, then each event was
        // applied on its own (the good ones committed, the failing one scheduled a retry).
        let all: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(batches, vec![all]);
        let calls = recorder.calls.lock().unwrap().clone();
        assert_eq!(calls.get(&events[0].event_id), Some(&2), "{calls:?}");
    }
    h.cleanup().await;
}

/// Records `event_id` as processed by `consumer` (the bus's own record), as a replica that
/// applied the event would have.
async fn record_processed(store: &Store, consumer: &str, event_id: Uuid) {
    match store {
        Store::Postgres(pool) => sqlx::query(
            "INSERT INTO bus_processed (consumer, event_id, workspace_id) VALUES ($1, $2, 'acme')",
        )
        .bind(consumer)
        .bind(event_id)
        .execute(pool)
        .await
        .map(drop)
        .unwrap(),
        Store::Sqlite(pool) => sqlx::query(
            "INSERT INTO bus_processed (consumer, event_id, workspace_id, processed_at) \
             VALUES (?1, ?2, 'acme', ?3)",
        )
        .bind(consumer)
        .bind(event_id.to_string())
        .bind(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .execute(pool)
        .await
        .map(drop)
        .unwrap(),
    }
}

/// A delivery of many events, some of which the consumer recorded before (redelivered
/// after a crash between commit and ack): those are duplicates and the rest are applied
/// once. On PostgreSQL, another replica holds the record of one more event uncommitted
/// while the delivery is applied: the delivery's record waits for it, and once it commits
/// that event is a duplicate too.
async fn a_large_delivery_applies_only_what_no_replica_recorded(h: Harness) {
    let events: Vec<_> = (0..40).map(|i| h.event("acme", &format!("l{i}"))).collect();
    commit_state_and_events(&h, &events).await;
    let mut recorded = vec![events[3].event_id, events[17].event_id];
    for id in &recorded {
        record_processed(&h.store, "bulk", *id).await;
    }
    let recorder = Recorder::new("bulk");
    let sub = subscription(&h, "bulk");
    assert_eq!(h.bus.relay_batch(256).await.unwrap(), 40);
    if let Store::Postgres(pool) = &h.store {
        let taken = events[29].event_id;
        let mut other_replica = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO bus_processed (consumer, event_id, workspace_id) VALUES ('bulk', $1, 'acme')",
        )
        .bind(taken)
        .execute(&mut *other_replica)
        .await
        .unwrap();
        let commit_once_waited_on = async {
            eventually(
                LIMIT,
                "the delivery to wait on the other replica's record",
                || async {
                    scalar(
                        &h.store,
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                         AND wait_event_type = 'Lock' AND query LIKE '%INTO bus_processed%'",
                    )
                    .await
                        == 1
                },
            )
            .await;
            other_replica.commit().await.unwrap();
        };
        let (consumed, ()) =
            tokio::join!(h.bus.consume_batch(&sub, &*recorder), commit_once_waited_on);
        consumed.unwrap();
        recorded.push(taken);
    }
    eventually(
        LIMIT,
        "the events no replica recorded to be applied",
        || async {
            h.bus.consume_batch(&sub, &*recorder).await.unwrap();
            effects(&h.store, "bulk").await.len() == events.len() - recorded.len()
        },
    )
    .await;
    let applied = effects(&h.store, "bulk").await;
    assert!(applied.values().all(|&n| n == 1), "{applied:?}");
    for id in &recorded {
        assert!(!applied.contains_key(id), "{id} was recorded before");
    }
    assert_eq!(
        scalar(
            &h.store,
            "SELECT COUNT(*) FROM bus_processed WHERE consumer = 'bulk'"
        )
        .await,
        40
    );
    h.cleanup().await;
}

/// A consumer keyed by its payload (a UUID): [`EventHandler::idempotency_key`].
struct KeyedByPayload(Arc<Recorder>);

#[async_trait::async_trait]
impl EventHandler for KeyedByPayload {
    async fn handle(
        &self,
        tx: &mut meridian_bus::Tx<'_>,
        event: &meridian_bus::OutboxEvent,
    ) -> Result<(), meridian_bus::HandlerError> {
        self.0.handle(tx, event).await
    }

    fn idempotency_key(&self, event: &meridian_bus::OutboxEvent) -> Uuid {
        std::str::from_utf8(&event.payload)
            .ok()
            .and_then(|s| Uuid::parse_str(s).ok())
            .unwrap_or(event.event_id)
    }
}

/// A handler that names its own idempotency key sees an event published again as a new
/// outbox row as a duplicate: in the same delivery (the fast path) and in later
/// deliveries of one event each (the path of one savepoint an event). The bus records the
/// key, once, in place of the bus event's id.
async fn a_handler_key_applies_an_event_published_twice_once(h: Harness) {
    let (k1, k2) = (Uuid::new_v4(), Uuid::new_v4());
    let first = vec![
        h.event("acme", &k1.to_string()),
        h.event("acme", &k1.to_string()),
        h.event("acme", &k2.to_string()),
    ];
    commit_state_and_events(&h, &first).await;
    let handler = KeyedByPayload(Recorder::new("keyed"));
    let sub = subscription(&h, "keyed");
    let one_at_a_time = Subscription {
        batch_size: 1,
        ..sub.clone()
    };
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let consume_until = |sub: Subscription, total: usize| {
        let (seen, handler, h) = (&seen, &handler, &h);
        async move {
            eventually(LIMIT, "every delivery to be consumed", || async {
                h.bus.relay_batch(256).await.unwrap();
                let stats = h.bus.consume_batch(&sub, handler).await.unwrap();
                assert_eq!(stats.retried + stats.dead_lettered, 0, "{stats:?}");
                let n = stats.applied + stats.duplicates;
                seen.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n == total
            })
            .await;
        }
    };
    consume_until(sub.clone(), 3).await;
    let again = vec![
        h.event("acme", &k2.to_string()),
        h.event("acme", &k1.to_string()),
    ];
    commit_state_and_events(&h, &again).await;
    consume_until(one_at_a_time, 5).await;
    let applied = effects(&h.store, "keyed").await;
    assert_eq!(applied.len(), 2, "{applied:?}");
    assert!(applied.values().all(|&n| n == 1), "{applied:?}");
    assert!(applied.contains_key(&first[0].event_id) && applied.contains_key(&first[2].event_id));
    let recorded = |key: Uuid| {
        let sql = format!(
            "SELECT COUNT(*) FROM bus_processed WHERE consumer = 'keyed' AND event_id = '{key}'"
        );
        let store = h.store.clone();
        async move { scalar(&store, &sql).await }
    };
    assert_eq!((recorded(k1).await, recorded(k2).await), (1, 1));
    assert_eq!(
        scalar(
            &h.store,
            "SELECT COUNT(*) FROM bus_processed WHERE consumer = 'keyed'"
        )
        .await,
        2
    );
    h.cleanup().await;
}

/// Applies each event through a [`Recorder`] and records the look-ahead hints it is given.
struct LookingAhead {
    recorder: Arc<Recorder>,
    hints: std::sync::Mutex<Vec<Vec<UpcomingEvent>>>,
}

#[async_trait::async_trait]
impl EventHandler for LookingAhead {
    async fn handle(
        &self,
        tx: &mut meridian_bus::Tx<'_>,
        event: &meridian_bus::OutboxEvent,
    ) -> Result<(), meridian_bus::HandlerError> {
        self.recorder.handle(tx, event).await
    }

    fn looks_ahead(&self) -> bool {
        true
    }

    fn look_ahead(&self, upcoming: &[UpcomingEvent]) {
        self.hints.lock().unwrap().push(upcoming.to_vec());
    }
}

async fn a_full_delivery_names_the_events_after_it_to_a_handler_that_looks_ahead(h: Harness) {
    let events: Vec<_> = (0..5)
        .map(|i| {
            meridian_bus::OutboxEvent::new(
                "acme".parse().unwrap(),
                h.family.clone(),
                format!("subject-{i}"),
                format!("ahead-{i}").into_bytes(),
            )
        })
        .collect();
    commit_state_and_events(&h, &events).await;
    let handler = LookingAhead {
        recorder: Recorder::new("ahead"),
        hints: std::sync::Mutex::new(Vec::new()),
    };
    let sub = two_per_delivery(&h, "ahead");
    eventually(LIMIT, "every event to be applied", || async {
        pump(&h, &sub, &handler).await;
        effects(&h.store, "ahead").await.len() == 5
    })
    .await;
    let hints = handler.hints.lock().unwrap().clone();
    if h.bus.kind() == BusKind::InProcess {
        let upcoming = |keys: &[usize]| -> Vec<UpcomingEvent> {
            keys.iter()
                .map(|i| UpcomingEvent {
                    event_id: events[*i].event_id,
                    workspace_id: "acme".into(),
                    key: format!("subject-{i}"),
                    payload: format!("ahead-{i}").into_bytes(),
                })
                .collect()
        };
        // Deliveries [0, 1], [2, 3], [4]: each full one names the next up to a delivery's
        // size; the last, not full, names nothing.
        assert_eq!(hints, vec![upcoming(&[2, 3]), upcoming(&[4])]);
    } else {
        assert!(hints.is_empty(), "{hints:?}");
    }
    h.cleanup().await;
}

/// Commits and relays `events` events of `h`'s family (`first`, `first + 1`, …).
async fn publish_numbered(h: &Harness, first: usize, events: usize) {
    let events: Vec<_> = (first..first + events)
        .map(|i| h.event("acme", &format!("n{i}")))
        .collect();
    commit_state_and_events(h, &events).await;
    while h.bus.relay_batch(256).await.unwrap() > 0 {}
}

/// One consume round of `bus`.
async fn deliver(
    bus: &dyn Bus,
    sub: &Subscription,
    handler: &Recorder,
) -> meridian_bus::ConsumeStats {
    bus.consume_batch(sub, handler).await.unwrap()
}

/// `consumer` applied `events` events, each once.
async fn assert_each_applied_once(h: &Harness, consumer: &str, events: usize) {
    let applied = effects(&h.store, consumer).await;
    assert_eq!(applied.len(), events, "{applied:?}");
    assert!(applied.values().all(|&n| n == 1), "{applied:?}");
}

fn consumed(applied: usize) -> meridian_bus::ConsumeStats {
    meridian_bus::ConsumeStats {
        applied,
        ..Default::default()
    }
}

/// On PostgreSQL a full delivery reads the next one's events ahead, on a connection of its
/// own. Another replica of the consumer may take those events first: the read-ahead then no
/// longer follows the consumer's position and is dropped, never delivered again.
async fn events_read_ahead_are_dropped_once_another_replica_consumed_them(h: Harness) {
    publish_numbered(&h, 0, 6).await;
    let replica = meridian_bus::LocalBus::new(h.store.clone());
    let handler = Recorder::new("ahead");
    let sub = two_per_delivery(&h, "ahead");
    // This replica delivers [0, 1] (on PostgreSQL reading [2, 3] ahead); the other one
    // delivers [2, 3].
    assert_eq!(deliver(&*h.bus, &sub, &handler).await, consumed(2));
    assert_eq!(deliver(&replica, &sub, &handler).await, consumed(2));
    // [4, 5], not [2, 3] again (which the bus's idempotency records would count as
    // duplicates).
    assert_eq!(deliver(&*h.bus, &sub, &handler).await, consumed(2));
    assert!(deliver(&*h.bus, &sub, &handler).await.is_idle());
    assert_each_applied_once(&h, "ahead", 6).await;
    h.cleanup().await;
}

/// Events read ahead before a relay published more are the next delivery's (a gap-free
/// stretch of the stream, only shorter); the ones published after come in the delivery after.
async fn events_read_ahead_before_a_relay_are_delivered_and_the_later_ones_after(h: Harness) {
    publish_numbered(&h, 0, 3).await;
    let handler = Recorder::new("ahead");
    let sub = two_per_delivery(&h, "ahead");
    assert_eq!(deliver(&*h.bus, &sub, &handler).await, consumed(2));
    publish_numbered(&h, 3, 2).await;
    let mut deliveries = Vec::new();
    loop {
        let stats = deliver(&*h.bus, &sub, &handler).await;
        if stats.is_idle() {
            break;
        }
        assert_eq!(stats, consumed(stats.applied), "nothing delivered twice");
        deliveries.push(stats.applied);
    }
    match h.store {
        // [2], read ahead during [0, 1], then [3, 4].
        Store::Postgres(_) => assert_eq!(deliveries, [1, 2]),
        // Nothing read ahead: [2, 3], then [4].
        Store::Sqlite(_) => assert_eq!(deliveries, [2, 1]),
    }
    assert_each_applied_once(&h, "ahead", 5).await;
    h.cleanup().await;
}

/// A full delivery that took the last events reads nothing ahead: the next delivery reads
/// for itself and finds what was published in between.
async fn a_delivery_after_one_that_emptied_the_stream_finds_the_newer_events(h: Harness) {
    publish_numbered(&h, 0, 2).await;
    let handler = Recorder::new("ahead");
    let sub = two_per_delivery(&h, "ahead");
    assert_eq!(deliver(&*h.bus, &sub, &handler).await, consumed(2));
    publish_numbered(&h, 2, 1).await;
    assert_eq!(deliver(&*h.bus, &sub, &handler).await, consumed(1));
    assert!(deliver(&*h.bus, &sub, &handler).await.is_idle());
    assert_each_applied_once(&h, "ahead", 3).await;
    h.cleanup().await;
}

local_on_both_stores!(
    events_read_ahead_are_dropped_once_another_replica_consumed_them,
    events_read_ahead_before_a_relay_are_delivered_and_the_later_ones_after,
    a_delivery_after_one_that_emptied_the_stream_finds_the_newer_events,
);

every_bus!(
    committed_events_are_applied_once_and_rolled_back_ones_never_sent,
    a_delivery_reaches_handle_batch_and_a_failure_falls_back_to_each_event,
    failures_retry_with_backoff_then_dead_letter_and_replay,
    concurrent_writers_relays_and_consumers_apply_every_event_once,
    a_large_delivery_applies_only_what_no_replica_recorded,
    a_handler_key_applies_an_event_published_twice_once,
    a_full_delivery_names_the_events_after_it_to_a_handler_that_looks_ahead,
);
