//! PostgreSQL writes batches of `COPY_MIN_ROWS` (32) events and more with binary `COPY`,
//! smaller ones with an `UNNEST` insert: both must store the same rows.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use meridian_bus::{OutboxEvent, enqueue_all};
use meridian_store::sqlx::PgPool;
use uuid::Uuid;

type StoredRow = (Uuid, String, String, String, Vec<u8>, DateTime<Utc>);

fn events(batch: &str, n: usize) -> Vec<OutboxEvent> {
    (0..n)
        .map(|i| {
            let mut e = OutboxEvent::new(
                if i % 3 == 0 { "globex" } else { "acme" }.parse().unwrap(),
                "copy-check".parse().unwrap(),
                format!("{batch}-key-{i}"),
                // Every byte value, and an empty payload.
                (0..(i * 37 % 300))
                    .map(|b| (b % 256) as u8)
                    .collect::<Vec<u8>>(),
            );
            // An instant before PostgreSQL's epoch, and one with sub-microsecond digits.
            if i == 1 {
                e.occurred_at = DateTime::parse_from_rfc3339("1999-12-31T23:59:59.123456789Z")
                    .unwrap()
                    .with_timezone(&Utc);
            }
            e
        })
        .collect()
}

async fn write(pool: &PgPool, events: &[OutboxEvent]) {
    let mut tx = pool.begin().await.unwrap();
    enqueue_all(&mut *tx, events).await.unwrap();
    tx.commit().await.unwrap();
}

#[sqlx::test(migrations = "../../migrations/postgres")]
async fn copied_batches_store_the_rows_an_insert_stores(pool: PgPool) {
    let small = events("small", 31);
    let large = events("large", 200);
    write(&pool, &small).await;
    write(&pool, &large).await;

    let stored: Vec<StoredRow> = sqlx::query_as(
        "SELECT event_id, workspace_id, family, event_key, payload, occurred_at \
         FROM outbox_events ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let expected: Vec<StoredRow> = small
        .iter()
        .chain(&large)
        .map(|e| {
            // PostgreSQL keeps microseconds, truncated toward its epoch (as sqlx encodes).
            let pg_epoch = DateTime::from_timestamp(946_684_800, 0).unwrap();
            let micros = (e.occurred_at - pg_epoch).num_microseconds().unwrap();
            (
                e.event_id,
                e.workspace_id.as_str().to_owned(),
                e.family.as_str().to_owned(),
                e.key.clone(),
                e.payload.clone(),
                pg_epoch + chrono::Duration::microseconds(micros),
            )
        })
        .collect();
    assert_eq!(stored, expected);

    // The columns left to their defaults are filled alike: one enqueue time per
    // transaction, unsent, no stream position.
    let per_batch: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT enqueued_at), COUNT(*) FILTER (WHERE sent_at IS NULL AND stream_seq IS NULL) \
         FROM outbox_events GROUP BY split_part(event_key, '-', 1) ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_batch, vec![(31, 1, 31), (200, 1, 200)]);
}
