//! `enqueue_packed`: on PostgreSQL a transaction's events of one workspace and family share
//! one outbox row; every bus still delivers, retries, dead-letters and erases single events.
//! On both buses, over PostgreSQL and SQLite (which writes one row per event).
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use common::{Harness, Kind, Recorder, effects, eventually, scalar};
use meridian_bus::{
    Bus, BusKind, ConsumerName, DeadLetterFilter, EventHandler, HandlerError, OutboxEvent,
    RetryPolicy, Subscription, Tx, enqueue, enqueue_packed, forget_keyed_events, list_dead_letters,
    outbox_stats,
};
use meridian_store::Store;
use meridian_store::sqlx::{PgPool, SqlitePool};

const LIMIT: Duration = Duration::from_secs(60);

fn subscription(h: &Harness, batch_size: usize) -> Subscription {
    Subscription {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(80),
        },
        batch_size,
        ..Subscription::new(
            "identity".parse::<ConsumerName>().unwrap(),
            h.family.clone(),
        )
    }
}

/// Events of `workspace` keyed by `keys`, with payloads of several sizes.
fn events(h: &Harness, workspace: &str, keys: &[&str]) -> Vec<OutboxEvent> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            let mut event = OutboxEvent::new(
                workspace.parse().unwrap(),
                h.family.clone(),
                *key,
                vec![u8::try_from(i % 251).unwrap(); (i * 53) % 900],
            );
            // The outbox keeps microseconds.
            event.occurred_at =
                DateTime::from_timestamp_micros(event.occurred_at.timestamp_micros()).unwrap();
            event
        })
        .collect()
}

fn keyed(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("subject-{}", i % 7)).collect()
}

/// `enqueue_packed` of `events` in one transaction, or, `single`, `enqueue` of the first.
async fn commit(store: &Store, events: &[OutboxEvent], single: bool) {
    macro_rules! write {
        ($tx:expr) => {
            if single {
                enqueue(&mut *$tx, &events[0]).await.unwrap();
            } else {
                enqueue_packed(&mut *$tx, events).await.unwrap();
            }
        };
    }
    match store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            write!(tx);
            tx.commit().await.unwrap();
        }
        Store::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            write!(tx);
            tx.commit().await.unwrap();
        }
    }
}

async fn relay_all(bus: &dyn Bus) {
    while bus.relay_batch(100).await.unwrap() > 0 {}
}

/// Keeps every event it is given.
#[derive(Default)]
struct Capture {
    events: Mutex<Vec<OutboxEvent>>,
}

#[async_trait]
impl EventHandler for Capture {
    async fn handle(&self, _tx: &mut Tx<'_>, event: &OutboxEvent) -> Result<(), HandlerError> {
        self.events.lock().unwrap().push(event.clone());
        Ok(())
    }
}

async fn consume_all(h: &Harness, n: usize) -> Vec<OutboxEvent> {
    let capture = Capture::default();
    let sub = subscription(h, 64);
    eventually(LIMIT, "every event at the consumer", || async {
        h.bus.consume_batch(&sub, &capture).await.unwrap();
        capture.events.lock().unwrap().len() >= n
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = h.bus.consume_batch(&sub, &capture).await.unwrap();
    assert!(stats.is_idle(), "{stats:?}");
    capture.events.lock().unwrap().clone()
}

fn postgres(h: &Harness) -> bool {
    matches!(h.store, Store::Postgres(_))
}

async fn packed_rows_reach_consumers_as_single_events(h: Harness) {
    let keys = keyed(700);
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let before = events(&h, "acme", &["lone-1"]);
    let mut packed = events(&h, "acme", &key_refs[..600]);
    packed.extend(events(&h, "globex", &key_refs[..40]));
    packed.extend(events(&h, "acme", &key_refs[..60]));
    let after = events(&h, "globex", &["lone-2"]);
    commit(&h.store, &before, true).await;
    commit(&h.store, &packed, false).await;
    commit(&h.store, &after, true).await;

    let rows = scalar(&h.store, "SELECT COUNT(*) FROM outbox_events").await;
    if postgres(&h) {
        // The two single events, two packs for 600 events of up to 900 bytes (256 KiB
        // each at most), one for each of the other two runs.
        assert_eq!(rows, 6);
    } else {
        assert_eq!(rows, 702);
    }
    assert_eq!(outbox_stats(&h.store).await.unwrap().unsent, 702);

    // A relay round returns events. The in-process relay takes about `limit` events (the
    // single event, then the first pack whole), the JetStream relay `limit` rows (here all
    // six), and on SQLite rows are events.
    let first_round = h.bus.relay_batch(100).await.unwrap();
    match (postgres(&h), h.bus.kind()) {
        (true, BusKind::InProcess) => assert!((101..700).contains(&first_round), "{first_round}"),
        (true, BusKind::JetStream) => assert_eq!(first_round, 702),
        (false, _) => assert_eq!(first_round, 100),
    }
    relay_all(&*h.bus).await;
    assert_eq!(outbox_stats(&h.store).await.unwrap().unsent, 0);
    let got = consume_all(&h, 702).await;
    assert_eq!(got, [before, packed, after].concat());
    h.cleanup().await;
}

async fn an_event_of_a_pack_retries_and_dead_letters_alone(h: Harness) {
    let keys = keyed(30);
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let sent = events(&h, "acme", &key_refs);
    commit(&h.store, &sent, false).await;
    relay_all(&*h.bus).await;

    let recorder = Recorder::new("identity");
    let (failing, flaky) = (sent[11].event_id, sent[25].event_id);
    recorder.always_fail.lock().unwrap().insert(failing);
    recorder.fail_times.lock().unwrap().insert(flaky, 1);
    let sub = subscription(&h, 8);
    eventually(LIMIT, "the failing event dead-lettered", || async {
        h.bus.consume_batch(&sub, &*recorder).await.unwrap();
        let dead = list_dead_letters(&h.store, &DeadLetterFilter::default())
            .await
            .unwrap();
        !dead.is_empty() && effects(&h.store, "identity").await.len() == 29
    })
    .await;
    let dead = list_dead_letters(&h.store, &DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, failing);
    assert_eq!(dead[0].payload_len, sent[11].payload.len() as u64);
    let applied = effects(&h.store, "identity").await;
    assert!(!applied.contains_key(&failing));
    assert!(applied.values().all(|&n| n == 1));
    assert!(recorder.calls.lock().unwrap()[&flaky] >= 2);
    h.cleanup().await;
}

async fn erasure_takes_keyed_events_out_of_unsent_packs(h: Harness) {
    let a = events(&h, "acme", &["a", "b", "a", "c", "b", "a"]);
    let b = events(&h, "acme", &["b", "b"]);
    let c = events(&h, "acme", &["c", "d", "c"]);
    let other = events(&h, "globex", &["b", "b"]);
    for pack in [&a, &b, &c, &other] {
        commit(&h.store, pack, false).await;
    }
    let forget = |keys: Vec<String>| {
        let store = h.store.clone();
        let family = h.family.clone();
        async move {
            match &store {
                Store::Postgres(pool) => {
                    let mut tx = pool.begin().await.unwrap();
                    let gone =
                        forget_keyed_events(&mut Tx::Postgres(&mut tx), "acme", &family, &keys)
                            .await
                            .unwrap();
                    tx.commit().await.unwrap();
                    gone
                }
                Store::Sqlite(pool) => {
                    let mut tx = pool.begin().await.unwrap();
                    let gone =
                        forget_keyed_events(&mut Tx::Sqlite(&mut tx), "acme", &family, &keys)
                            .await
                            .unwrap();
                    tx.commit().await.unwrap();
                    gone
                }
            }
        }
    };
    assert_eq!(forget(vec!["b".into(), "d".into()]).await, 5);
    assert_eq!(forget(vec!["b".into()]).await, 0);
    assert_eq!(outbox_stats(&h.store).await.unwrap().unsent, 8);
    if postgres(&h) {
        // Pack a keeps 4 events, b is gone, c keeps its two `c`s, globex's pack is untouched.
        assert_eq!(
            scalar(&h.store, "SELECT COUNT(*) FROM outbox_events").await,
            3
        );
    }

    relay_all(&*h.bus).await;
    let got = consume_all(&h, 8).await;
    let expected: Vec<OutboxEvent> = a
        .iter()
        .chain(&c)
        .filter(|e| e.key != "b" && e.key != "d")
        .chain(&other)
        .cloned()
        .collect();
    assert_eq!(got, expected);
    h.cleanup().await;
}

every_bus!(
    packed_rows_reach_consumers_as_single_events,
    an_event_of_a_pack_retries_and_dead_letters_alone,
    erasure_takes_keyed_events_out_of_unsent_packs,
);

/// A relay allowed smaller messages than the stored packs (a server with a small
/// `max_payload`, or a lowered setting) splits them; with packing off, every event is a
/// message of its own.
#[sqlx::test(migrations = "../../migrations/postgres")]
async fn a_stored_pack_goes_out_in_messages_the_relay_may_send(pool: PgPool) {
    let h = Harness::new(Store::Postgres(pool), Kind::JetStream).await;
    let keys = keyed(300);
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let sent = events(&h, "acme", &key_refs);
    let total: usize = sent.iter().map(|e| e.payload.len()).sum();
    commit(&h.store, &sent, false).await;
    let more = events(&h, "acme", &key_refs[..5]);
    commit(&h.store, &more, false).await;
    assert_eq!(
        scalar(&h.store, "SELECT COUNT(*) FROM outbox_events").await,
        2
    );
    let small = common::jetstream_bus(&h, 16 * 1024).await;
    assert_eq!(small.relay_batch(1).await.unwrap(), 300);
    let messages = common::messages_in_stream(&small, &h.family).await;
    // At most 16 KiB of entries each: at least total / 16 KiB messages.
    assert!(
        messages as usize > total / (16 * 1024),
        "{messages} messages for {total} bytes"
    );
    let off = common::jetstream_bus(&h, 0).await;
    assert_eq!(off.relay_batch(1).await.unwrap(), 5);
    assert_eq!(
        common::messages_in_stream(&small, &h.family).await,
        messages + 5
    );
    let got = consume_all(&h, 305).await;
    assert_eq!(got, [sent, more].concat());
    h.cleanup().await;
}
