//! Idempotent consumption, shared by both buses: each event is applied in a savepoint
//! together with its `bus_processed` row, so an event already applied by this consumer
//! is skipped, and a failed handler leaves no trace but a retry or a dead letter.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{Connection, PgConnection, SqliteConnection};
use uuid::Uuid;

use crate::error::{BusError, HandlerError};
use crate::event::{ConsumerName, EventFamily, OutboxEvent};
use crate::outbox::{Tx, sqlite_time};

/// A consumer's effect. Runs inside the transaction that records the event as processed:
/// write the effect through `tx` (and enqueue follow-up events there), and it commits
/// exactly once per event and consumer. An error rolls the effect back and schedules a
/// retry.
#[async_trait]
pub trait EventHandler: Send + Sync {
    async fn handle(&self, tx: &mut Tx<'_>, event: &OutboxEvent) -> Result<(), HandlerError>;

    /// The id the event is recorded as processed under (`bus_processed.event_id`): two
    /// deliveries with the same key are applied once. The bus event's own id by default. A
    /// handler whose payload carries a durable id of its own (an ingested event's id, which
    /// stays the same if the event is ever published again as a new outbox row) returns a
    /// key derived from it, so the bus's record is the consumer's only idempotency record.
    /// Must not fail: a payload it cannot read keeps the bus event's id, and the handler
    /// then refuses it.
    fn idempotency_key(&self, event: &OutboxEvent) -> Uuid {
        event.event_id
    }

    /// Applies several new events, in delivery order, inside `tx` as one unit: all of them
    /// or (on error) none, since the bus then rolls the batch back and applies each event on
    /// its own through [`EventHandler::handle`], so only the failing ones are retried. The
    /// default calls `handle` for each; a handler whose work is cheaper per batch (one
    /// lookup, one write for many events) overrides it.
    async fn handle_batch(
        &self,
        tx: &mut Tx<'_>,
        events: &[&OutboxEvent],
    ) -> Result<(), HandlerError> {
        for event in events {
            self.handle(tx, event).await?;
        }
        Ok(())
    }

    /// Whether the handler uses [`EventHandler::look_ahead`]: the bus reads the upcoming
    /// events only for handlers that do.
    fn looks_ahead(&self) -> bool {
        false
    }

    /// The events the bus expects to deliver after the current delivery, oldest first,
    /// given before that delivery is applied. Work on them that needs no transaction, such
    /// as loading their keys' data keys into a cache or decoding their payloads, can then
    /// overlap the current delivery's database work. A hint only: they may come later, in
    /// other deliveries, or never (another replica took them, erasure removed them), so
    /// what is made of it must be checked against the delivery that comes. Must return at
    /// once (spawn what takes longer). The in-process bus gives hints when a delivery was
    /// full (more events are waiting); JetStream gives none.
    fn look_ahead(&self, _upcoming: &[UpcomingEvent]) {}
}

/// An event expected in a later delivery (see [`EventHandler::look_ahead`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpcomingEvent {
    /// The outbox event's id ([`OutboxEvent::event_id`]): the event, if it comes, is
    /// delivered under it with this payload (an outbox row's payload never changes).
    pub event_id: Uuid,
    pub workspace_id: String,
    /// The event's key ([`OutboxEvent::key`]).
    pub key: String,
    /// The event's payload ([`OutboxEvent::payload`]).
    pub payload: Vec<u8>,
}

/// Retries with exponential backoff; after `max_attempts` deliveries the event goes to the
/// dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `failed_attempt + 1`: initial × 2^(failed_attempt − 1), capped.
    pub fn backoff(&self, failed_attempt: u32) -> Duration {
        let exponent = failed_attempt.saturating_sub(1).min(30);
        self.initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff)
    }
}

/// A durable consumer of one event family.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub consumer: ConsumerName,
    pub family: EventFamily,
    pub retry: RetryPolicy,
    /// Events applied per transaction.
    pub batch_size: usize,
}

impl Subscription {
    pub fn new(consumer: ConsumerName, family: EventFamily) -> Self {
        Self {
            consumer,
            family,
            retry: RetryPolicy::default(),
            batch_size: 256,
        }
    }
}

/// What one round of consumption did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumeStats {
    /// Events whose effect was committed in this round.
    pub applied: usize,
    /// Redeliveries of events this consumer had already applied.
    pub duplicates: usize,
    /// Failures that will be retried.
    pub retried: usize,
    /// Events moved to (or kept in) the dead letters.
    pub dead_lettered: usize,
}

impl ConsumeStats {
    /// Whether the round saw anything at all.
    pub fn is_idle(&self) -> bool {
        self.applied + self.duplicates + self.retried + self.dead_lettered == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Bus,
    Replay,
}

pub(crate) struct Attempt {
    pub(crate) event: OutboxEvent,
    /// 1 for the first delivery.
    pub(crate) attempt: u32,
    pub(crate) source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Applied,
    Duplicate,
    Retry { delay: Duration, error: String },
    DeadLettered,
}

impl ConsumeStats {
    pub(crate) fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Retry { .. } => self.retried += 1,
            Outcome::DeadLettered => self.dead_lettered += 1,
        }
    }
}

/// Longest error text kept with a retry or dead letter.
const MAX_ERROR_TEXT: usize = 500;

pub(crate) fn error_text(err: &HandlerError) -> String {
    let mut text = err.to_string();
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Applies the attempts inside `tx`; the caller commits, then acks.
///
/// Fast path: one savepoint for the whole batch, the processed-event records written in
/// one statement, then every handler. If any handler fails, that savepoint is rolled back
/// and the batch is applied again one savepoint per event, so only the failing events are
/// retried (their handlers may thus run twice in the round; only committed runs count).
pub(crate) async fn apply_all(
    tx: &mut Tx<'_>,
    subscription: &Subscription,
    handler: &dyn EventHandler,
    attempts: &[Attempt],
) -> Result<Vec<Outcome>, BusError> {
    let fast = if attempts.len() > 1 {
        apply_batch(tx, subscription, handler, attempts).await?
    } else {
        None
    };
    let outcomes = match fast {
        Some(outcomes) => outcomes,
        None => {
            let mut outcomes = Vec::with_capacity(attempts.len());
            for attempt in attempts {
                outcomes.push(match tx {
                    Tx::Postgres(conn) => apply_pg(conn, subscription, handler, attempt).await?,
                    Tx::Sqlite(conn) => apply_sqlite(conn, subscription, handler, attempt).await?,
                });
            }
            outcomes
        }
    };
    for (attempt, outcome) in attempts.iter().zip(&outcomes) {
        match outcome {
            Outcome::Applied | Outcome::Duplicate if attempt.source == Source::Replay => {
                resolve_dead_letter(tx, &subscription.consumer, attempt.event.event_id).await?;
            }
            Outcome::Retry { .. } | Outcome::Applied | Outcome::Duplicate => {}
            Outcome::DeadLettered => {
                tracing::warn!(
                    consumer = %subscription.consumer,
                    family = %subscription.family,
                    event_id = %attempt.event.event_id,
                    attempts = attempt.attempt,
                    "event dead-lettered"
                );
            }
        }
    }
    Ok(outcomes)
}

/// The fast path of [`apply_all`]; `None` when a handler failed (nothing of it is left).
async fn apply_batch(
    tx: &mut Tx<'_>,
    subscription: &Subscription,
    handler: &dyn EventHandler,
    attempts: &[Attempt],
) -> Result<Option<Vec<Outcome>>, BusError> {
    let consumer = subscription.consumer.as_str();
    let keys: Vec<Uuid> = attempts
        .iter()
        .map(|a| handler.idempotency_key(&a.event))
        .collect();
    match tx {
        Tx::Postgres(conn) => {
            let mut savepoint = conn.begin().await?;
            let workspaces: Vec<&str> = attempts
                .iter()
                .map(|a| a.event.workspace_id.as_str())
                .collect();
            let new: Vec<Uuid> = sqlx::query_scalar(
                "INSERT INTO bus_processed (consumer, event_id, workspace_id) \
                 SELECT $1, * FROM UNNEST($2::uuid[], $3::text[]) \
                 ON CONFLICT DO NOTHING RETURNING event_id",
            )
            .bind(consumer)
            .bind(keys.as_slice())
            .bind(workspaces)
            .fetch_all(&mut *savepoint)
            .await?;
            let mut new: HashSet<Uuid> = new.into_iter().collect();
            let (outcomes, fresh) = sort_new(attempts, &keys, |key| new.remove(key));
            let mut db = Tx::Postgres(&mut savepoint);
            if !fresh.is_empty() && handler.handle_batch(&mut db, &fresh).await.is_err() {
                savepoint.rollback().await?;
                return Ok(None);
            }
            savepoint.commit().await?;
            Ok(Some(outcomes))
        }
        Tx::Sqlite(conn) => {
            let mut savepoint = conn.begin().await?;
            let processed_at = sqlite_time(Utc::now());
            let mut new = HashSet::new();
            let rows: Vec<(&Attempt, &Uuid)> = attempts.iter().zip(&keys).collect();
            for chunk in rows.chunks(SQLITE_ROWS_PER_INSERT) {
                let mut builder = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO bus_processed (consumer, event_id, workspace_id, processed_at) ",
                );
                builder.push_values(chunk, |mut row, (attempt, key)| {
                    row.push_bind(consumer)
                        .push_bind(key.to_string())
                        .push_bind(attempt.event.workspace_id.as_str())
                        .push_bind(processed_at.as_str());
                });
                builder.push(" ON CONFLICT DO NOTHING RETURNING event_id");
                let inserted: Vec<String> = builder
                    .build_query_scalar()
                    .fetch_all(&mut *savepoint)
                    .await?;
                new.extend(inserted);
            }
            let (outcomes, fresh) = sort_new(attempts, &keys, |key| new.remove(&key.to_string()));
            let mut db = Tx::Sqlite(&mut savepoint);
            if !fresh.is_empty() && handler.handle_batch(&mut db, &fresh).await.is_err() {
                savepoint.rollback().await?;
                return Ok(None);
            }
            savepoint.commit().await?;
            Ok(Some(outcomes))
        }
    }
}

/// The outcome of each attempt (applied if its idempotency key `is_new`, else a duplicate)
/// and the new events, in delivery order, for [`EventHandler::handle_batch`]. `is_new`
/// takes each key out of the set of inserted ones, so the second attempt with a key is a
/// duplicate of the first.
fn sort_new<'a>(
    attempts: &'a [Attempt],
    keys: &[Uuid],
    mut is_new: impl FnMut(&Uuid) -> bool,
) -> (Vec<Outcome>, Vec<&'a OutboxEvent>) {
    let mut outcomes = Vec::with_capacity(attempts.len());
    let mut fresh = Vec::with_capacity(attempts.len());
    for (attempt, key) in attempts.iter().zip(keys) {
        if is_new(key) {
            outcomes.push(Outcome::Applied);
            fresh.push(&attempt.event);
        } else {
            outcomes.push(Outcome::Duplicate);
        }
    }
    (outcomes, fresh)
}

/// SQLite allows 32766 bound parameters; 4 per row.
const SQLITE_ROWS_PER_INSERT: usize = 1000;

async fn apply_pg(
    conn: &mut PgConnection,
    subscription: &Subscription,
    handler: &dyn EventHandler,
    attempt: &Attempt,
) -> Result<Outcome, BusError> {
    let event = &attempt.event;
    let mut savepoint = conn.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO bus_processed (consumer, event_id, workspace_id) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(subscription.consumer.as_str())
    .bind(handler.idempotency_key(event))
    .bind(event.workspace_id.as_str())
    .execute(&mut *savepoint)
    .await?
    .rows_affected();
    if inserted == 0 {
        savepoint.commit().await?;
        return Ok(Outcome::Duplicate);
    }
    let result = handler
        .handle(&mut Tx::Postgres(&mut savepoint), event)
        .await;
    match result {
        Ok(()) => {
            savepoint.commit().await?;
            Ok(Outcome::Applied)
        }
        Err(err) => {
            savepoint.rollback().await?;
            failed(&mut Tx::Postgres(conn), subscription, attempt, &err).await
        }
    }
}

async fn apply_sqlite(
    conn: &mut SqliteConnection,
    subscription: &Subscription,
    handler: &dyn EventHandler,
    attempt: &Attempt,
) -> Result<Outcome, BusError> {
    let event = &attempt.event;
    let mut savepoint = conn.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO bus_processed (consumer, event_id, workspace_id, processed_at) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
    )
    .bind(subscription.consumer.as_str())
    .bind(handler.idempotency_key(event).to_string())
    .bind(event.workspace_id.as_str())
    .bind(sqlite_time(Utc::now()))
    .execute(&mut *savepoint)
    .await?
    .rows_affected();
    if inserted == 0 {
        savepoint.commit().await?;
        return Ok(Outcome::Duplicate);
    }
    let result = handler.handle(&mut Tx::Sqlite(&mut savepoint), event).await;
    match result {
        Ok(()) => {
            savepoint.commit().await?;
            Ok(Outcome::Applied)
        }
        Err(err) => {
            savepoint.rollback().await?;
            failed(&mut Tx::Sqlite(conn), subscription, attempt, &err).await
        }
    }
}

/// A failed attempt: retry later, or dead-letter once the attempts are spent (a replay
/// gets one attempt and goes back to the dead letters).
async fn failed(
    tx: &mut Tx<'_>,
    subscription: &Subscription,
    attempt: &Attempt,
    err: &HandlerError,
) -> Result<Outcome, BusError> {
    let error = error_text(err);
    tracing::debug!(
        consumer = %subscription.consumer,
        event_id = %attempt.event.event_id,
        attempt = attempt.attempt,
        "handler failed"
    );
    if attempt.source == Source::Replay || attempt.attempt >= subscription.retry.max_attempts {
        insert_dead_letter(tx, &subscription.consumer, &attempt.event, attempt, &error).await?;
        return Ok(Outcome::DeadLettered);
    }
    Ok(Outcome::Retry {
        delay: subscription.retry.backoff(attempt.attempt),
        error,
    })
}

async fn insert_dead_letter(
    tx: &mut Tx<'_>,
    consumer: &ConsumerName,
    event: &OutboxEvent,
    attempt: &Attempt,
    error: &str,
) -> Result<(), BusError> {
    let attempts = i32::try_from(attempt.attempt).unwrap_or(i32::MAX);
    match tx {
        Tx::Postgres(conn) => {
            sqlx::query(
                "INSERT INTO bus_dead_letters (dead_letter_id, consumer, event_id, workspace_id, family, \
                 event_key, payload, occurred_at, attempts, last_error, dead_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now()) \
                 ON CONFLICT (consumer, event_id) DO UPDATE SET \
                 attempts = bus_dead_letters.attempts + 1, last_error = excluded.last_error, \
                 dead_at = excluded.dead_at, replay_requested_at = NULL, resolved_at = NULL",
            )
            .bind(Uuid::now_v7())
            .bind(consumer.as_str())
            .bind(event.event_id)
            .bind(event.workspace_id.as_str())
            .bind(event.family.as_str())
            .bind(&event.key)
            .bind(&event.payload)
            .bind(event.occurred_at)
            .bind(attempts)
            .bind(error)
            .execute(&mut **conn)
            .await?;
        }
        Tx::Sqlite(conn) => {
            sqlx::query(
                "INSERT INTO bus_dead_letters (dead_letter_id, consumer, event_id, workspace_id, family, \
                 event_key, payload, occurred_at, attempts, last_error, dead_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                 ON CONFLICT (consumer, event_id) DO UPDATE SET \
                 attempts = bus_dead_letters.attempts + 1, last_error = excluded.last_error, \
                 dead_at = excluded.dead_at, replay_requested_at = NULL, resolved_at = NULL",
            )
            .bind(Uuid::now_v7().to_string())
            .bind(consumer.as_str())
            .bind(event.event_id.to_string())
            .bind(event.workspace_id.as_str())
            .bind(event.family.as_str())
            .bind(&event.key)
            .bind(&event.payload)
            .bind(sqlite_time(event.occurred_at))
            .bind(attempts)
            .bind(error)
            .bind(sqlite_time(Utc::now()))
            .execute(&mut **conn)
            .await?;
        }
    }
    Ok(())
}

async fn resolve_dead_letter(
    tx: &mut Tx<'_>,
    consumer: &ConsumerName,
    event_id: Uuid,
) -> Result<(), BusError> {
    match tx {
        Tx::Postgres(conn) => {
            sqlx::query(
                "UPDATE bus_dead_letters SET resolved_at = now(), replay_requested_at = NULL \
                 WHERE consumer = $1 AND event_id = $2",
            )
            .bind(consumer.as_str())
            .bind(event_id)
            .execute(&mut **conn)
            .await?;
        }
        Tx::Sqlite(conn) => {
            sqlx::query(
                "UPDATE bus_dead_letters SET resolved_at = ?1, replay_requested_at = NULL \
                 WHERE consumer = ?2 AND event_id = ?3",
            )
            .bind(sqlite_time(Utc::now()))
            .bind(consumer.as_str())
            .bind(event_id.to_string())
            .execute(&mut **conn)
            .await?;
        }
    }
    Ok(())
}

/// Dead letters of this consumer and family whose replay was requested, as attempts.
pub(crate) async fn requested_replays(
    tx: &mut Tx<'_>,
    subscription: &Subscription,
) -> Result<Vec<Attempt>, BusError> {
    let limit = crate::outbox::limit_i64(subscription.batch_size);
    let mut attempts = Vec::new();
    match tx {
        Tx::Postgres(conn) => {
            let rows = sqlx::query(
                "SELECT 0::BIGINT AS seq, event_id, workspace_id, family, event_key, payload, occurred_at, \
                 NULL::INT4 AS packed_events FROM bus_dead_letters WHERE consumer = $1 AND family = $2 \
                 AND replay_requested_at IS NOT NULL AND resolved_at IS NULL LIMIT $3",
            )
            .bind(subscription.consumer.as_str())
            .bind(subscription.family.as_str())
            .bind(limit)
            .fetch_all(&mut **conn)
            .await?;
            for row in &rows {
                attempts.push(crate::outbox::event_from_pg_row(row)?.event);
            }
        }
        Tx::Sqlite(conn) => {
            let rows = sqlx::query(
                "SELECT 0 AS seq, event_id, workspace_id, family, event_key, payload, occurred_at, \
                 NULL AS packed_events FROM bus_dead_letters WHERE consumer = ?1 AND family = ?2 \
                 AND replay_requested_at IS NOT NULL AND resolved_at IS NULL LIMIT ?3",
            )
            .bind(subscription.consumer.as_str())
            .bind(subscription.family.as_str())
            .bind(limit)
            .fetch_all(&mut **conn)
            .await?;
            for row in &rows {
                attempts.push(crate::outbox::event_from_sqlite_row(row)?.event);
            }
        }
    }
    Ok(attempts
        .into_iter()
        .map(|event| Attempt {
            event,
            attempt: 1,
            source: Source::Replay,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_initial_wait_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let waits: Vec<u128> = (1..=6).map(|n| policy.backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(1));
        assert_eq!(policy.backoff(0), Duration::from_millis(100));
    }

    #[test]
    fn error_text_is_bounded_on_a_char_boundary() {
        let long = HandlerError::Failed("é".repeat(400));
        let text = error_text(&long);
        assert!(text.len() <= MAX_ERROR_TEXT);
        assert!(text.chars().all(|c| c == 'é'));
    }
}
