//! Event storage on PostgreSQL (monthly range partitions of `received_at`, multi-row
//! `UNNEST` inserts) and SQLite (one table). The same conformance suite runs on both
//! (`tests/conformance.rs`).
//!
//! Idempotency lives in `ingest_message_ids` (non-partitioned, primary key (workspace,
//! message_id)): a batch claims its message ids, then writes the events whose ids it
//! claimed and their outbox events (packed: `meridian_bus::enqueue_packed`), in the same
//! transaction. On PostgreSQL the claims go in by `COPY`, which fails the whole batch when
//! one id is taken; the batch is then written again claiming with `ON CONFLICT DO
//! NOTHING`, keeping only what it claimed. A concurrent batch with the same id waits on
//! the row lock and finds it taken.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, TimeZone, Utc};
use meridian_bus::OutboxEvent;
use meridian_store::{BinaryCopy, CopyDataError, Store};
use meridian_vault::BlindIndex;
use sqlx::{PgPool, QueryBuilder, Row, Sqlite, SqlitePool};
use uuid::Uuid;

use crate::error::IngestError;

/// One stored event. Holds no plaintext personal data: identifiers are blind indexes and
/// `body` is sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct EventRow {
    pub event_id: Uuid,
    pub message_id: String,
    pub kind: i16,
    pub event_name: String,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub jurisdiction: String,
    pub anchor_kind: i16,
    pub anchor_index: BlindIndex,
    pub sealed_subject: String,
    /// (kind: 1 byte ‖ blind index: 32 bytes) per identifier.
    pub identifiers: Vec<u8>,
    pub body: Vec<u8>,
    /// Purposes with a basis, comma-separated.
    pub purposes: String,
}

impl std::fmt::Debug for EventRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRow")
            .field("event_id", &self.event_id)
            .field("kind", &self.kind)
            .field("received_at", &self.received_at)
            .finish_non_exhaustive()
    }
}

/// Where the next page starts: after this (received_at, event_id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    pub received_at: DateTime<Utc>,
    pub event_id: Uuid,
}

/// The event store of either backend.
#[derive(Clone)]
pub enum EventStore {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventStore::Postgres(_) => "EventStore::Postgres",
            EventStore::Sqlite(_) => "EventStore::Sqlite",
        })
    }
}

/// Rows per SQLite statement (bound parameters stay under SQLite's limit).
const SQLITE_ROWS_PER_INSERT: usize = 60;

fn sqlite_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_sqlite_time(s: &str) -> Result<DateTime<Utc>, IngestError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| IngestError::Corrupt("stored time".into()))
}

/// The month partition holding `t`: (name, from, to).
pub fn partition_for(t: DateTime<Utc>) -> (String, DateTime<Utc>, DateTime<Utc>) {
    let (y, m) = (t.year(), t.month());
    let start = Utc.from_utc_datetime(
        &NaiveDate::from_ymd_opt(y, m, 1)
            .unwrap_or_default()
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default(),
    );
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let end = Utc.from_utc_datetime(
        &NaiveDate::from_ymd_opt(ny, nm, 1)
            .unwrap_or_default()
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default(),
    );
    (format!("ingest_events_y{y:04}m{m:02}"), start, end)
}

/// The upper bound of a partition named by [`partition_for`].
fn partition_end(name: &str) -> Option<DateTime<Utc>> {
    let rest = name.strip_prefix("ingest_events_y")?;
    let (y, m) = rest.split_once('m')?;
    let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
    let start = Utc.from_utc_datetime(&NaiveDate::from_ymd_opt(y, m, 1)?.and_hms_opt(0, 0, 0)?);
    Some(partition_for(start).2)
}

fn decode_index(bytes: &[u8]) -> Result<BlindIndex, IngestError> {
    BlindIndex::from_slice(bytes).ok_or_else(|| IngestError::Corrupt("blind index".into()))
}

/// `pg_advisory_xact_lock` key serializing partition creation ("INGESTPT").
const PARTITION_LOCK: i64 = 0x494e_4745_5354_5054;

impl EventStore {
    /// Whether transactions of this store write side by side (PostgreSQL) rather than one
    /// at a time (SQLite's single writer), so that splitting a batch gains time.
    pub fn takes_concurrent_writers(&self) -> bool {
        matches!(self, EventStore::Postgres(_))
    }

    pub fn from_store(store: &Store) -> Self {
        match store {
            Store::Postgres(pool) => EventStore::Postgres(pool.clone()),
            Store::Sqlite(pool) => EventStore::Sqlite(pool.clone()),
        }
    }

    /// Creates the month partitions holding each of `times` (PostgreSQL; a no-op on SQLite).
    pub async fn ensure_partitions(&self, times: &[DateTime<Utc>]) -> Result<(), IngestError> {
        let EventStore::Postgres(pool) = self else {
            return Ok(());
        };
        let mut parts: Vec<_> = times.iter().map(|t| partition_for(*t)).collect();
        parts.sort_by(|a, b| a.0.cmp(&b.0));
        parts.dedup_by(|a, b| a.0 == b.0);
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PARTITION_LOCK)
            .execute(&mut *tx)
            .await?;
        for (name, from, to) in parts {
            let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
                .bind(&name)
                .fetch_one(&mut *tx)
                .await?;
            if exists.is_none() {
                // The name is built from two numbers, and the bounds are formatted instants.
                let sql = format!(
                    "CREATE TABLE {name} PARTITION OF ingest_events FOR VALUES FROM ('{}') TO ('{}')",
                    from.to_rfc3339(),
                    to.to_rfc3339()
                );
                sqlx::query(&sql).execute(&mut *tx).await?;
                tracing::info!(partition = %name, "created event partition");
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes every row whose message id is new in the workspace, with its outbox event
    /// (`outbox[i]` announces `rows[i]`), in one transaction. Returns, per row, whether it
    /// was written (false: the message id was already stored).
    pub async fn insert(
        &self,
        workspace: &str,
        rows: &[EventRow],
        outbox: &[OutboxEvent],
    ) -> Result<Vec<bool>, IngestError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if rows.len() != outbox.len() {
            return Err(IngestError::Corrupt("one outbox event per row".into()));
        }
        match self {
            EventStore::Postgres(pool) => insert_pg(pool, workspace, rows, outbox).await,
            EventStore::Sqlite(pool) => insert_sqlite(pool, workspace, rows, outbox).await,
        }
    }

    /// Events anchored at any of `indexes`, oldest first, after `cursor`.
    pub async fn events_of(
        &self,
        workspace: &str,
        indexes: &[BlindIndex],
        cursor: Option<PageCursor>,
        limit: u32,
    ) -> Result<Vec<EventRow>, IngestError> {
        if indexes.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        const COLUMNS: &str = "event_id, message_id, kind, event_name, occurred_at, received_at, \
            jurisdiction, anchor_kind, anchor_index, sealed_subject, identifiers, body, purposes";
        match self {
            EventStore::Postgres(pool) => {
                let idx: Vec<Vec<u8>> = indexes.iter().map(|i| i.as_bytes().to_vec()).collect();
                let (after_t, after_id) = cursor
                    .map_or((DateTime::<Utc>::UNIX_EPOCH, Uuid::nil()), |c| {
                        (c.received_at, c.event_id)
                    });
                let rows = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM ingest_events WHERE workspace_id = $1 AND anchor_index = ANY($2) \
                     AND (received_at, event_id) > ($3, $4) ORDER BY received_at, event_id LIMIT $5"
                ))
                .bind(workspace)
                .bind(idx)
                .bind(after_t)
                .bind(after_id)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(EventRow {
                            event_id: r.try_get("event_id")?,
                            message_id: r.try_get("message_id")?,
                            kind: r.try_get("kind")?,
                            event_name: r.try_get("event_name")?,
                            occurred_at: r.try_get("occurred_at")?,
                            received_at: r.try_get("received_at")?,
                            jurisdiction: r.try_get("jurisdiction")?,
                            anchor_kind: r.try_get("anchor_kind")?,
                            anchor_index: decode_index(r.try_get::<&[u8], _>("anchor_index")?)?,
                            sealed_subject: r.try_get("sealed_subject")?,
                            identifiers: r.try_get("identifiers")?,
                            body: r.try_get("body")?,
                            purposes: r.try_get("purposes")?,
                        })
                    })
                    .collect()
            }
            EventStore::Sqlite(pool) => {
                let mut q = QueryBuilder::<Sqlite>::new(format!(
                    "SELECT {COLUMNS} FROM ingest_events WHERE workspace_id = "
                ));
                q.push_bind(workspace);
                q.push(" AND anchor_index IN (");
                let mut sep = q.separated(", ");
                for i in indexes {
                    sep.push_bind(i.as_bytes().to_vec());
                }
                q.push(")");
                if let Some(c) = cursor {
                    q.push(" AND (received_at > ");
                    q.push_bind(sqlite_time(c.received_at));
                    q.push(" OR (received_at = ");
                    q.push_bind(sqlite_time(c.received_at));
                    q.push(" AND event_id > ");
                    q.push_bind(c.event_id.to_string());
                    q.push("))");
                }
                q.push(" ORDER BY received_at, event_id LIMIT ");
                q.push_bind(i64::from(limit));
                let rows = q.build().fetch_all(pool).await?;
                rows.iter()
                    .map(|r| {
                        let id: String = r.try_get("event_id")?;
                        Ok(EventRow {
                            event_id: id
                                .parse()
                                .map_err(|_| IngestError::Corrupt("event id".into()))?,
                            message_id: r.try_get("message_id")?,
                            kind: r.try_get("kind")?,
                            event_name: r.try_get("event_name")?,
                            occurred_at: parse_sqlite_time(r.try_get("occurred_at")?)?,
                            received_at: parse_sqlite_time(r.try_get("received_at")?)?,
                            jurisdiction: r.try_get("jurisdiction")?,
                            anchor_kind: r.try_get("anchor_kind")?,
                            anchor_index: decode_index(r.try_get::<&[u8], _>("anchor_index")?)?,
                            sealed_subject: r.try_get("sealed_subject")?,
                            identifiers: r.try_get("identifiers")?,
                            body: r.try_get("body")?,
                            purposes: r.try_get("purposes")?,
                        })
                    })
                    .collect()
            }
        }
    }

    /// Deletes every event anchored at any of `indexes`. Idempotent; returns the count.
    pub async fn purge(
        &self,
        workspace: &str,
        indexes: &[BlindIndex],
        family: &meridian_bus::EventFamily,
    ) -> Result<u64, IngestError> {
        if indexes.is_empty() {
            return Ok(0);
        }
        // The events' outbox copies go in the same transaction: they carry the same
        // blind indexes (their key is the event's sealing subject).
        match self {
            EventStore::Postgres(pool) => {
                let idx: Vec<Vec<u8>> = indexes.iter().map(|i| i.as_bytes().to_vec()).collect();
                let mut tx = pool.begin().await?;
                let subjects: Vec<String> = sqlx::query_scalar(
                    "DELETE FROM ingest_events WHERE workspace_id = $1 AND anchor_index = ANY($2) \
                     RETURNING sealed_subject",
                )
                .bind(workspace)
                .bind(idx)
                .fetch_all(&mut *tx)
                .await?;
                let count = subjects.len() as u64;
                let mut subjects = subjects;
                subjects.sort();
                subjects.dedup();
                meridian_bus::forget_keyed_events(
                    &mut meridian_bus::Tx::Postgres(&mut tx),
                    workspace,
                    family,
                    &subjects,
                )
                .await?;
                tx.commit().await?;
                Ok(count)
            }
            EventStore::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let mut subjects = Vec::new();
                for chunk in indexes.chunks(500) {
                    let mut q = QueryBuilder::<Sqlite>::new(
                        "DELETE FROM ingest_events WHERE workspace_id = ",
                    );
                    q.push_bind(workspace);
                    q.push(" AND anchor_index IN (");
                    let mut sep = q.separated(", ");
                    for i in chunk {
                        sep.push_bind(i.as_bytes().to_vec());
                    }
                    q.push(") RETURNING sealed_subject");
                    let gone: Vec<String> = q.build_query_scalar().fetch_all(&mut *tx).await?;
                    subjects.extend(gone);
                }
                let count = subjects.len() as u64;
                subjects.sort();
                subjects.dedup();
                meridian_bus::forget_keyed_events(
                    &mut meridian_bus::Tx::Sqlite(&mut tx),
                    workspace,
                    family,
                    &subjects,
                )
                .await?;
                tx.commit().await?;
                Ok(count)
            }
        }
    }

    /// Drops every month partition that ends at or before `cutoff` (PostgreSQL), and the
    /// message ids received before it. Returns the dropped partitions' names.
    pub async fn drop_partitions_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<String>, IngestError> {
        match self {
            EventStore::Postgres(pool) => {
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                     JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'ingest_events'",
                )
                .fetch_all(pool)
                .await?;
                let mut dropped = Vec::new();
                for name in names {
                    if partition_end(&name).is_some_and(|end| end <= cutoff) {
                        // The name was checked to be one of ours by `partition_end`.
                        sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
                            .execute(pool)
                            .await?;
                        tracing::info!(partition = %name, "dropped expired event partition");
                        dropped.push(name);
                    }
                }
                sqlx::query("DELETE FROM ingest_message_ids WHERE received_at < $1")
                    .bind(cutoff)
                    .execute(pool)
                    .await?;
                Ok(dropped)
            }
            EventStore::Sqlite(pool) => {
                sqlx::query("DELETE FROM ingest_message_ids WHERE received_at < $1")
                    .bind(sqlite_time(cutoff))
                    .execute(pool)
                    .await?;
                Ok(Vec::new())
            }
        }
    }

    /// Deletes events of `jurisdiction` received before `cutoff` (retention shorter than a
    /// whole partition's, and the SQLite store). Returns the count.
    pub async fn delete_before(
        &self,
        jurisdiction: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, IngestError> {
        let done = match self {
            EventStore::Postgres(pool) => sqlx::query(
                "DELETE FROM ingest_events WHERE jurisdiction = $1 AND received_at < $2",
            )
            .bind(jurisdiction)
            .bind(cutoff)
            .execute(pool)
            .await?
            .rows_affected(),
            EventStore::Sqlite(pool) => sqlx::query(
                "DELETE FROM ingest_events WHERE jurisdiction = $1 AND received_at < $2",
            )
            .bind(jurisdiction)
            .bind(sqlite_time(cutoff))
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(done)
    }

    /// The jurisdictions that have stored events.
    pub async fn jurisdictions(&self) -> Result<Vec<String>, IngestError> {
        let sql = "SELECT DISTINCT jurisdiction FROM ingest_events";
        Ok(match self {
            EventStore::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await?,
            EventStore::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await?,
        })
    }

    /// How many events of the workspace carry each of `message_ids` (tests and the fault
    /// test: every acknowledged id must be stored exactly once).
    pub async fn count_message_ids(
        &self,
        workspace: &str,
        message_ids: &[String],
    ) -> Result<Vec<(String, i64)>, IngestError> {
        let mut out = Vec::new();
        for chunk in message_ids.chunks(500) {
            let rows = match self {
                EventStore::Postgres(pool) => sqlx::query(
                    "SELECT message_id, COUNT(*) AS n FROM ingest_events WHERE workspace_id = $1 \
                         AND message_id = ANY($2) GROUP BY message_id",
                )
                .bind(workspace)
                .bind(chunk)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("message_id")?, r.try_get("n")?)))
                .collect::<Result<Vec<(String, i64)>, sqlx::Error>>()?,
                EventStore::Sqlite(pool) => {
                    let mut q = QueryBuilder::<Sqlite>::new(
                        "SELECT message_id, COUNT(*) AS n FROM ingest_events WHERE workspace_id = ",
                    );
                    q.push_bind(workspace);
                    q.push(" AND message_id IN (");
                    let mut sep = q.separated(", ");
                    for m in chunk {
                        sep.push_bind(m.as_str());
                    }
                    q.push(") GROUP BY message_id");
                    q.build()
                        .fetch_all(pool)
                        .await?
                        .iter()
                        .map(|r| Ok((r.try_get("message_id")?, r.try_get("n")?)))
                        .collect::<Result<Vec<(String, i64)>, sqlx::Error>>()?
                }
            };
            out.extend(rows);
        }
        Ok(out)
    }
}

async fn insert_pg(
    pool: &PgPool,
    workspace: &str,
    rows: &[EventRow],
    outbox: &[OutboxEvent],
) -> Result<Vec<bool>, IngestError> {
    // Message ids are claimed in byte order, on both paths, so two batches sharing ids
    // never wait on each other in opposite orders.
    let mut claim_order: Vec<usize> = (0..rows.len()).collect();
    claim_order.sort_unstable_by(|a, b| rows[*a].message_id.cmp(&rows[*b].message_id));
    match insert_all_new_pg(pool, workspace, rows, outbox, &claim_order).await {
        Err(IngestError::Database(sqlx::Error::Database(err)))
            if err.is_unique_violation() && err.constraint() == Some(MESSAGE_ID_CONSTRAINT) =>
        {
            insert_new_of_pg(pool, workspace, rows, outbox, &claim_order).await
        }
        done => done,
    }
}

/// The primary key of `ingest_message_ids`: a message id already claimed.
const MESSAGE_ID_CONSTRAINT: &str = "ingest_message_ids_pkey";

/// The usual case, every message id new: the claims go in by `COPY`, which refuses the
/// whole batch when one is taken (the caller then takes [`insert_new_of_pg`]). An
/// `INSERT … ON CONFLICT DO NOTHING` of the same claims cost PostgreSQL about twice as
/// much per event: the executor per row and a speculative insertion per index entry.
async fn insert_all_new_pg(
    pool: &PgPool,
    workspace: &str,
    rows: &[EventRow],
    outbox: &[OutboxEvent],
    claim_order: &[usize],
) -> Result<Vec<bool>, IngestError> {
    let claims =
        copy_claims(workspace, rows, claim_order).map_err(|e| sqlx::Error::Encode(e.into()))?;
    let mut tx = pool.begin().await?;
    copy_exactly(
        &mut tx,
        claims,
        "COPY ingest_message_ids (workspace_id, message_id, event_id, received_at) \
         FROM STDIN (FORMAT binary)",
        rows.len(),
        "message ids",
    )
    .await?;
    let all: Vec<&EventRow> = rows.iter().collect();
    copy_events(&mut tx, workspace, &all).await?;
    meridian_bus::enqueue_packed(&mut tx, outbox).await?;
    tx.commit().await?;
    Ok(vec![true; rows.len()])
}

/// A batch holding message ids already stored (a retried batch, or one racing a retry):
/// claims only what is free, then writes the events whose ids it claimed.
async fn insert_new_of_pg(
    pool: &PgPool,
    workspace: &str,
    rows: &[EventRow],
    outbox: &[OutboxEvent],
    claim_order: &[usize],
) -> Result<Vec<bool>, IngestError> {
    let mut tx = pool.begin().await?;
    let message_ids: Vec<&str> = claim_order
        .iter()
        .map(|&i| rows[i].message_id.as_str())
        .collect();
    let event_ids: Vec<Uuid> = claim_order.iter().map(|&i| rows[i].event_id).collect();
    let received: Vec<DateTime<Utc>> = claim_order.iter().map(|&i| rows[i].received_at).collect();
    // `WITH ORDINALITY`: inserted in the order given, which is the COPY path's.
    sqlx::query(
        "INSERT INTO ingest_message_ids (workspace_id, message_id, event_id, received_at) \
         SELECT $1, m, e, r FROM UNNEST($2::text[], $3::uuid[], $4::timestamptz[]) \
         WITH ORDINALITY AS t(m, e, r, n) ORDER BY n \
         ON CONFLICT DO NOTHING",
    )
    .bind(workspace)
    .bind(&message_ids)
    .bind(&event_ids)
    .bind(&received)
    .execute(&mut *tx)
    .await?;
    // The claimed ids are those stored with this batch's event ids (fresh v7 UUIDs: no
    // other batch has them).
    let mine: Vec<Uuid> = sqlx::query_scalar(
        "SELECT i.event_id FROM ingest_message_ids i \
         WHERE i.workspace_id = $1 AND i.message_id = ANY($2) AND i.event_id = ANY($3)",
    )
    .bind(workspace)
    .bind(&message_ids)
    .bind(&event_ids)
    .fetch_all(&mut *tx)
    .await?;
    let mine: HashSet<Uuid> = mine.into_iter().collect();
    let written: Vec<bool> = rows.iter().map(|r| mine.contains(&r.event_id)).collect();
    let new_rows: Vec<&EventRow> = rows
        .iter()
        .zip(&written)
        .filter_map(|(r, w)| w.then_some(r))
        .collect();
    if !new_rows.is_empty() {
        copy_events(&mut tx, workspace, &new_rows).await?;
        let events: Vec<OutboxEvent> = outbox
            .iter()
            .zip(&written)
            .filter(|(_, w)| **w)
            .map(|(e, _)| e.clone())
            .collect();
        meridian_bus::enqueue_packed(&mut tx, &events).await?;
    }
    tx.commit().await?;
    Ok(written)
}

/// The claims of `rows`' message ids, in `claim_order`, as the data of a binary
/// `COPY ingest_message_ids (workspace_id, message_id, event_id, received_at)`.
fn copy_claims(
    workspace: &str,
    rows: &[EventRow],
    claim_order: &[usize],
) -> Result<BinaryCopy, CopyDataError> {
    // 4 length words, a UUID, a timestamp; a message id is usually a UUID's 36 characters.
    const CLAIM_BYTES: usize = 4 * 4 + 16 + 8 + 36;
    let mut copy = BinaryCopy::with_capacity(claim_order.len() * (CLAIM_BYTES + workspace.len()));
    for &i in claim_order {
        let row = &rows[i];
        copy.row(4);
        copy.bytes(workspace.as_bytes())?;
        copy.bytes(row.message_id.as_bytes())?;
        copy.bytes(row.event_id.as_bytes())?;
        copy.timestamptz(row.received_at)?;
    }
    Ok(copy)
}

/// Stores `rows` by binary `COPY`: PostgreSQL parses no arrays and runs no executor per
/// row, as a multi-row `INSERT` would make it.
async fn copy_events(
    tx: &mut sqlx::PgConnection,
    workspace: &str,
    rows: &[&EventRow],
) -> Result<(), IngestError> {
    let data = copy_rows(workspace, rows).map_err(|e| sqlx::Error::Encode(e.into()))?;
    copy_exactly(
        tx,
        data,
        "COPY ingest_events (workspace_id, received_at, event_id, message_id, kind, event_name, \
         occurred_at, jurisdiction, anchor_kind, anchor_index, sealed_subject, identifiers, body, purposes) \
         FROM STDIN (FORMAT binary)",
        rows.len(),
        "events",
    )
    .await
}

/// Runs `statement` (a `COPY … FROM STDIN`) with `data`, which holds `expected` rows of
/// `what`; a different count stored means the data was malformed.
async fn copy_exactly(
    tx: &mut sqlx::PgConnection,
    data: BinaryCopy,
    statement: &str,
    expected: usize,
    what: &str,
) -> Result<(), IngestError> {
    let copied = data.send(tx, statement).await?;
    if copied != expected as u64 {
        return Err(IngestError::Corrupt(format!(
            "COPY stored {copied} of {expected} {what}"
        )));
    }
    Ok(())
}

/// `rows` as the data of a binary `COPY ingest_events (...)`, in the column order of
/// [`copy_events`].
fn copy_rows(workspace: &str, rows: &[&EventRow]) -> Result<BinaryCopy, CopyDataError> {
    let size: usize = rows
        .iter()
        .map(|r| {
            // 14 length words, 2 timestamps, 2 int2, a UUID, a blind index.
            130 + r.message_id.len()
                + r.event_name.len()
                + r.jurisdiction.len()
                + r.sealed_subject.len()
                + r.identifiers.len()
                + r.body.len()
                + r.purposes.len()
                + workspace.len()
        })
        .sum();
    let mut copy = BinaryCopy::with_capacity(size);
    for r in rows {
        copy.row(14);
        copy.bytes(workspace.as_bytes())?;
        copy.timestamptz(r.received_at)?;
        copy.bytes(r.event_id.as_bytes())?;
        copy.bytes(r.message_id.as_bytes())?;
        copy.int2(r.kind);
        copy.bytes(r.event_name.as_bytes())?;
        copy.timestamptz(r.occurred_at)?;
        copy.bytes(r.jurisdiction.as_bytes())?;
        copy.int2(r.anchor_kind);
        copy.bytes(r.anchor_index.as_bytes())?;
        copy.bytes(r.sealed_subject.as_bytes())?;
        copy.bytes(&r.identifiers)?;
        copy.bytes(&r.body)?;
        copy.bytes(r.purposes.as_bytes())?;
    }
    Ok(copy)
}

async fn insert_sqlite(
    pool: &SqlitePool,
    workspace: &str,
    rows: &[EventRow],
    outbox: &[OutboxEvent],
) -> Result<Vec<bool>, IngestError> {
    // BEGIN IMMEDIATE: take the write lock up front, so the claim and the writes never
    // have to upgrade a read transaction (SQLITE_BUSY under concurrency).
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let result = async {
        let mut claimed = HashSet::new();
        for chunk in rows.chunks(SQLITE_ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO ingest_message_ids (workspace_id, message_id, event_id, received_at) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(workspace)
                    .push_bind(r.message_id.as_str())
                    .push_bind(r.event_id.to_string())
                    .push_bind(sqlite_time(r.received_at));
            });
            q.push(" ON CONFLICT DO NOTHING RETURNING message_id");
            let got: Vec<String> = q.build_query_scalar().fetch_all(&mut *conn).await?;
            claimed.extend(got);
        }
        let written: Vec<bool> = rows.iter().map(|r| claimed.contains(&r.message_id)).collect();
        let new_rows: Vec<&EventRow> = rows
            .iter()
            .zip(&written)
            .filter_map(|(r, w)| w.then_some(r))
            .collect();
        for chunk in new_rows.chunks(SQLITE_ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO ingest_events (workspace_id, received_at, event_id, message_id, kind, event_name, \
                 occurred_at, jurisdiction, anchor_kind, anchor_index, sealed_subject, identifiers, body, purposes) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(workspace)
                    .push_bind(sqlite_time(r.received_at))
                    .push_bind(r.event_id.to_string())
                    .push_bind(r.message_id.as_str())
                    .push_bind(r.kind)
                    .push_bind(r.event_name.as_str())
                    .push_bind(sqlite_time(r.occurred_at))
                    .push_bind(r.jurisdiction.as_str())
                    .push_bind(r.anchor_kind)
                    .push_bind(r.anchor_index.as_bytes().to_vec())
                    .push_bind(r.sealed_subject.as_str())
                    .push_bind(r.identifiers.as_slice())
                    .push_bind(r.body.as_slice())
                    .push_bind(r.purposes.as_str());
            });
            q.build().execute(&mut *conn).await?;
        }
        let events: Vec<OutboxEvent> = outbox
            .iter()
            .zip(&written)
            .filter(|(_, w)| **w).map(|(e, _)| e.clone())
            .collect();
        meridian_bus::enqueue_all(&mut *conn, &events).await?;
        Ok::<_, IngestError>(written)
    }
    .await;
    match result {
        Ok(written) => {
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(written)
        }
        Err(err) => {
            // The connection goes back to the pool: never leave a transaction open on it.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_months() {
        let t = DateTime::parse_from_rfc3339("2026-12-25T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let (name, from, to) = partition_for(t);
        assert_eq!(name, "ingest_events_y2026m12");
        assert_eq!(from.to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(to.to_rfc3339(), "2027-01-01T00:00:00+00:00");
        assert_eq!(partition_end(&name), Some(to));
        assert_eq!(partition_end("ingest_events_default"), None);
    }
}
