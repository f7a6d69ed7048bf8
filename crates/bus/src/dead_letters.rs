//! Dead letters: events a consumer gave up on. Listed by `meridian outbox dead-letters`,
//! re-delivered to their consumer by `meridian outbox replay ID` (the running consumer
//! picks the request up on its next round, on either bus).

use chrono::{DateTime, Utc};
use meridian_store::Store;
use sqlx::Row;
use uuid::Uuid;

use crate::error::BusError;
use crate::outbox::{parse_sqlite_time, sqlite_time};

/// A dead letter as listed: ids and counts, never the payload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub dead_letter_id: Uuid,
    pub consumer: String,
    pub event_id: Uuid,
    pub workspace_id: String,
    pub family: String,
    pub payload_len: u64,
    pub attempts: u32,
    /// The handler's last error (handlers keep personal data out of their errors).
    pub last_error: String,
    pub occurred_at: DateTime<Utc>,
    pub dead_at: DateTime<Utc>,
    /// Set by `replay` until the consumer has tried again.
    pub replay_requested_at: Option<DateTime<Utc>>,
    /// Set once a replay applied the event.
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub workspace_id: Option<String>,
    pub consumer: Option<String>,
    /// Include dead letters a replay has resolved.
    pub include_resolved: bool,
    /// At most this many (newest first); 0 means 1000.
    pub limit: usize,
}

const COLUMNS: &str = "dead_letter_id, consumer, event_id, workspace_id, family, \
    LENGTH(payload) AS payload_len, attempts, last_error, occurred_at, dead_at, \
    replay_requested_at, resolved_at";

/// Dead letters, newest first.
pub async fn list_dead_letters(
    store: &Store,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetter>, BusError> {
    select(store, filter, None).await
}

async fn select(
    store: &Store,
    filter: &DeadLetterFilter,
    id: Option<Uuid>,
) -> Result<Vec<DeadLetter>, BusError> {
    let limit = crate::outbox::limit_i64(if filter.limit == 0 {
        1000
    } else {
        filter.limit
    });
    match store {
        Store::Postgres(pool) => {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM bus_dead_letters \
                 WHERE ($1::TEXT IS NULL OR workspace_id = $1) AND ($2::TEXT IS NULL OR consumer = $2) \
                 AND ($3 OR resolved_at IS NULL) AND ($5::UUID IS NULL OR dead_letter_id = $5) \
                 ORDER BY dead_at DESC LIMIT $4"
            ))
            .bind(filter.workspace_id.as_deref())
            .bind(filter.consumer.as_deref())
            .bind(filter.include_resolved)
            .bind(limit)
            .bind(id)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(DeadLetter {
                        dead_letter_id: row.try_get("dead_letter_id")?,
                        consumer: row.try_get("consumer")?,
                        event_id: row.try_get("event_id")?,
                        workspace_id: row.try_get("workspace_id")?,
                        family: row.try_get("family")?,
                        payload_len: u64::try_from(row.try_get::<i32, _>("payload_len")?)
                            .unwrap_or(0),
                        attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
                        last_error: row.try_get("last_error")?,
                        occurred_at: row.try_get("occurred_at")?,
                        dead_at: row.try_get("dead_at")?,
                        replay_requested_at: row.try_get("replay_requested_at")?,
                        resolved_at: row.try_get("resolved_at")?,
                    })
                })
                .collect()
        }
        Store::Sqlite(pool) => {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM bus_dead_letters \
                 WHERE (?1 IS NULL OR workspace_id = ?1) AND (?2 IS NULL OR consumer = ?2) \
                 AND (?3 OR resolved_at IS NULL) AND (?5 IS NULL OR dead_letter_id = ?5) \
                 ORDER BY dead_at DESC LIMIT ?4"
            ))
            .bind(filter.workspace_id.as_deref())
            .bind(filter.consumer.as_deref())
            .bind(filter.include_resolved)
            .bind(limit)
            .bind(id.map(|id| id.to_string()))
            .fetch_all(pool)
            .await?;
            rows.iter().map(sqlite_dead_letter).collect()
        }
    }
}

fn sqlite_dead_letter(row: &sqlx::sqlite::SqliteRow) -> Result<DeadLetter, BusError> {
    let bad = |reason: String| BusError::MalformedRow { seq: 0, reason };
    let uuid = |column: &str| -> Result<Uuid, BusError> {
        let text: String = row.try_get(column)?;
        Uuid::parse_str(&text).map_err(|e| bad(e.to_string()))
    };
    let time = |column: &str| -> Result<DateTime<Utc>, BusError> {
        let text: String = row.try_get(column)?;
        parse_sqlite_time(&text).map_err(bad)
    };
    let optional_time = |column: &str| -> Result<Option<DateTime<Utc>>, BusError> {
        let text: Option<String> = row.try_get(column)?;
        text.map(|t| parse_sqlite_time(&t).map_err(bad)).transpose()
    };
    Ok(DeadLetter {
        dead_letter_id: uuid("dead_letter_id")?,
        consumer: row.try_get("consumer")?,
        event_id: uuid("event_id")?,
        workspace_id: row.try_get("workspace_id")?,
        family: row.try_get("family")?,
        payload_len: u64::try_from(row.try_get::<i64, _>("payload_len")?).unwrap_or(0),
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
        last_error: row.try_get("last_error")?,
        occurred_at: time("occurred_at")?,
        dead_at: time("dead_at")?,
        replay_requested_at: optional_time("replay_requested_at")?,
        resolved_at: optional_time("resolved_at")?,
    })
}

/// Asks the dead letter's consumer to apply it again: its next round re-delivers the stored
/// event once (idempotently); success resolves the dead letter, failure leaves it dead with
/// one more attempt counted. Returns the dead letter as it now stands.
pub async fn replay_dead_letter(store: &Store, id: Uuid) -> Result<DeadLetter, BusError> {
    let updated = match store {
        Store::Postgres(pool) => sqlx::query(
            "UPDATE bus_dead_letters SET replay_requested_at = now() \
             WHERE dead_letter_id = $1 AND resolved_at IS NULL",
        )
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected(),
        Store::Sqlite(pool) => sqlx::query(
            "UPDATE bus_dead_letters SET replay_requested_at = ?1 \
             WHERE dead_letter_id = ?2 AND resolved_at IS NULL",
        )
        .bind(sqlite_time(Utc::now()))
        .bind(id.to_string())
        .execute(pool)
        .await?
        .rows_affected(),
    };
    let found = find_dead_letter(store, id).await?;
    match found {
        Some(dead_letter) if updated > 0 || dead_letter.resolved_at.is_some() => Ok(dead_letter),
        _ => Err(BusError::UnknownDeadLetter(id)),
    }
}

/// One dead letter by id.
pub async fn find_dead_letter(store: &Store, id: Uuid) -> Result<Option<DeadLetter>, BusError> {
    let all = DeadLetterFilter {
        include_resolved: true,
        limit: 1,
        ..Default::default()
    };
    Ok(select(store, &all, Some(id)).await?.into_iter().next())
}
