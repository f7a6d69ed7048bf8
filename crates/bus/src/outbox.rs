//! Writing events into the outbox, inside the caller's transaction, and the relay's
//! queries over it.

use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::BoxFuture;
use meridian_store::{BinaryCopy, COPY_MIN_ROWS, CopyDataError, Store};
use sqlx::{PgConnection, Postgres, Row, Sqlite, SqliteConnection, Transaction};
use uuid::Uuid;

use crate::error::BusError;
use crate::event::{EventFamily, OutboxEvent};
use crate::pack;

/// A connection inside a transaction, on either backend: what a consumer's handler gets
/// to apply its effect in the transaction that records the event as processed.
pub enum Tx<'c> {
    Postgres(&'c mut PgConnection),
    Sqlite(&'c mut SqliteConnection),
}

/// Something the outbox can be written through: a room's own sqlx transaction (or its
/// connection) on either backend, or the [`Tx`] a handler is given. Write the state change
/// and [`enqueue`] the event through the same transaction, then commit.
pub trait OutboxConnection: Send {
    fn enqueue_events<'a>(
        &'a mut self,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), BusError>>;

    /// [`enqueue_packed`]'s writer; one row per event unless the backend packs.
    fn enqueue_packed_events<'a>(
        &'a mut self,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        self.enqueue_events(events)
    }
}

/// Writes `event` to the outbox through `conn`, in the caller's transaction: it is
/// published only if that transaction commits.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool, event: meridian_bus::OutboxEvent)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// let mut tx = pool.begin().await?; // PostgreSQL or SQLite, the room's own transaction
/// sqlx::query("UPDATE profiles SET traits = $1 WHERE profile_id = $2")
///     .bind("…")
///     .bind("…")
///     .execute(&mut *tx)
///     .await?;
/// meridian_bus::enqueue(&mut tx, &event).await?;
/// tx.commit().await?; // the event exists if and only if the change does
/// # Ok(())
/// # }
/// ```
pub async fn enqueue<C: OutboxConnection + ?Sized>(
    conn: &mut C,
    event: &OutboxEvent,
) -> Result<(), BusError> {
    conn.enqueue_events(std::slice::from_ref(event)).await
}

/// Writes many events in one statement (PostgreSQL: `UNNEST` arrays; SQLite: multi-row
/// `VALUES`), in the caller's transaction.
pub async fn enqueue_all<C: OutboxConnection + ?Sized>(
    conn: &mut C,
    events: &[OutboxEvent],
) -> Result<(), BusError> {
    if events.is_empty() {
        return Ok(());
    }
    conn.enqueue_events(events).await
}

/// Writes `events` like [`enqueue_all`], but on PostgreSQL each run of consecutive events of
/// one workspace and family goes in one outbox row, a *pack* (up to [`pack::MAX_BYTES`] and
/// [`pack::MAX_EVENTS`]; the format is [`crate::pack`]'s). For writers of many events per
/// transaction, such as ingest: one row, one set of index entries and one relay claim per
/// pack instead of per event. Consumers still get the events one by one: the JetStream
/// relay publishes a pack as one message, which consumers unpack, and the in-process relay
/// replaces it by its events before giving them stream positions. On SQLite it is
/// [`enqueue_all`].
pub async fn enqueue_packed<C: OutboxConnection + ?Sized>(
    conn: &mut C,
    events: &[OutboxEvent],
) -> Result<(), BusError> {
    if events.is_empty() {
        return Ok(());
    }
    conn.enqueue_packed_events(events).await
}

impl OutboxConnection for PgConnection {
    fn enqueue_events<'a>(
        &'a mut self,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(insert_pg(self, events))
    }

    fn enqueue_packed_events<'a>(
        &'a mut self,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(insert_packed_pg(self, events))
    }
}

impl OutboxConnection for SqliteConnection {
    fn enqueue_events<'a>(
        &'a mut self,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(insert_sqlite(self, events))
    }
}

impl OutboxConnection for Transaction<'_, Postgres> {
    fn enqueue_events<'a>(
        &'a mut self,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(insert_pg(self, events))
    }

    fn enqueue_packed_events<'a>(
        &'a mut self,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(insert_packed_pg(self, events))
    }
}

impl OutboxConnection for Transaction<'_, Sqlite> {
    fn enqueue_events<'a>(
        &'a mut self,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(insert_sqlite(self, events))
    }
}

impl OutboxConnection for Tx<'_> {
    fn enqueue_events<'a>(
        &'a mut self,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        match self {
            Tx::Postgres(conn) => Box::pin(insert_pg(conn, events)),
            Tx::Sqlite(conn) => Box::pin(insert_sqlite(conn, events)),
        }
    }

    fn enqueue_packed_events<'a>(
        &'a mut self,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        match self {
            Tx::Postgres(conn) => Box::pin(insert_packed_pg(conn, events)),
            Tx::Sqlite(conn) => Box::pin(insert_sqlite(conn, events)),
        }
    }
}

/// A pack's event count as stored in `packed_events`.
fn packed_count(events: usize) -> i32 {
    i32::try_from(events).unwrap_or(i32::MAX)
}

/// [`enqueue_packed`] on PostgreSQL: packs and single events in one `UNNEST` insert, in
/// order (their `seq` follows it).
async fn insert_packed_pg(conn: &mut PgConnection, events: &[OutboxEvent]) -> Result<(), BusError> {
    let runs = pack::runs(events, pack::MAX_BYTES, pack::MAX_EVENTS);
    if runs.iter().all(|run| run.len() == 1) {
        return insert_pg(conn, events).await;
    }
    if let [run] = runs.as_slice() {
        // The usual case, one pack: bound as it is, not copied into arrays.
        let first = run[0];
        sqlx::query(
            "INSERT INTO outbox_events (event_id, workspace_id, family, event_key, payload, occurred_at, packed_events) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(first.event_id)
        .bind(first.workspace_id.as_str())
        .bind(first.family.as_str())
        .bind(&first.key)
        .bind(pack::encode(run))
        .bind(first.occurred_at)
        .bind(packed_count(run.len()))
        .execute(conn)
        .await?;
        return Ok(());
    }
    let encoded: Vec<Option<Vec<u8>>> = runs
        .iter()
        .map(|run| (run.len() > 1).then(|| pack::encode(run)))
        .collect();
    let firsts: Vec<&OutboxEvent> = runs.iter().filter_map(|run| run.first().copied()).collect();
    let ids: Vec<Uuid> = firsts.iter().map(|e| e.event_id).collect();
    let workspaces: Vec<&str> = firsts.iter().map(|e| e.workspace_id.as_str()).collect();
    let families: Vec<&str> = firsts.iter().map(|e| e.family.as_str()).collect();
    let keys: Vec<&str> = firsts.iter().map(|e| e.key.as_str()).collect();
    let payloads: Vec<&[u8]> = firsts
        .iter()
        .zip(&encoded)
        .map(|(e, packed)| packed.as_deref().unwrap_or(&e.payload))
        .collect();
    let occurred: Vec<DateTime<Utc>> = firsts.iter().map(|e| e.occurred_at).collect();
    let packed: Vec<Option<i32>> = runs
        .iter()
        .map(|run| (run.len() > 1).then(|| packed_count(run.len())))
        .collect();
    sqlx::query(
        "INSERT INTO outbox_events (event_id, workspace_id, family, event_key, payload, occurred_at, packed_events) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[], $7::int4[])",
    )
    .bind(ids)
    .bind(workspaces)
    .bind(families)
    .bind(keys)
    .bind(payloads)
    .bind(occurred)
    .bind(packed)
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_pg(conn: &mut PgConnection, events: &[OutboxEvent]) -> Result<(), BusError> {
    if let [event] = events {
        sqlx::query(
            "INSERT INTO outbox_events (event_id, workspace_id, family, event_key, payload, occurred_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(event.event_id)
        .bind(event.workspace_id.as_str())
        .bind(event.family.as_str())
        .bind(&event.key)
        .bind(&event.payload)
        .bind(event.occurred_at)
        .execute(conn)
        .await?;
        return Ok(());
    }
    if events.len() >= COPY_MIN_ROWS {
        return copy_pg(conn, events).await;
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let workspaces: Vec<&str> = events.iter().map(|e| e.workspace_id.as_str()).collect();
    let families: Vec<&str> = events.iter().map(|e| e.family.as_str()).collect();
    let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
    let occurred: Vec<DateTime<Utc>> = events.iter().map(|e| e.occurred_at).collect();
    sqlx::query(
        "INSERT INTO outbox_events (event_id, workspace_id, family, event_key, payload, occurred_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[])",
    )
    .bind(ids)
    .bind(workspaces)
    .bind(families)
    .bind(keys)
    .bind(payloads)
    .bind(occurred)
    .execute(conn)
    .await?;
    Ok(())
}

async fn copy_pg(conn: &mut PgConnection, events: &[OutboxEvent]) -> Result<(), BusError> {
    let encode = |e: CopyDataError| BusError::Database(sqlx::Error::Encode(e.into()));
    let size: usize = events
        .iter()
        .map(|e| {
            // 6 length words, a UUID, a timestamp.
            50 + e.workspace_id.as_str().len()
                + e.family.as_str().len()
                + e.key.len()
                + e.payload.len()
        })
        .sum();
    let mut data = BinaryCopy::with_capacity(size);
    for e in events {
        data.row(6);
        data.bytes(e.event_id.as_bytes()).map_err(encode)?;
        data.bytes(e.workspace_id.as_str().as_bytes())
            .map_err(encode)?;
        data.bytes(e.family.as_str().as_bytes()).map_err(encode)?;
        data.bytes(e.key.as_bytes()).map_err(encode)?;
        data.bytes(&e.payload).map_err(encode)?;
        data.timestamptz(e.occurred_at).map_err(encode)?;
    }
    data.send(
        conn,
        "COPY outbox_events (event_id, workspace_id, family, event_key, payload, occurred_at) \
         FROM STDIN (FORMAT binary)",
    )
    .await?;
    Ok(())
}

/// SQLite allows 32766 bound parameters; 6 per row.
const SQLITE_ROWS_PER_INSERT: usize = 500;

async fn insert_sqlite(
    conn: &mut SqliteConnection,
    events: &[OutboxEvent],
) -> Result<(), BusError> {
    let enqueued_at = sqlite_time(Utc::now());
    for chunk in events.chunks(SQLITE_ROWS_PER_INSERT) {
        let mut builder = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO outbox_events (event_id, workspace_id, family, event_key, payload, occurred_at, enqueued_at) ",
        );
        builder.push_values(chunk, |mut row, event| {
            row.push_bind(event.event_id.to_string())
                .push_bind(event.workspace_id.as_str())
                .push_bind(event.family.as_str())
                .push_bind(event.key.as_str())
                .push_bind(event.payload.as_slice())
                .push_bind(sqlite_time(event.occurred_at))
                .push_bind(enqueued_at.as_str());
        });
        builder.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// An outbox row as the relay and the in-process bus read it.
#[derive(Debug, Clone)]
pub(crate) struct StoredEvent {
    pub(crate) seq: i64,
    /// A pack's row (see [`enqueue_packed`]): `event` is its first event with the pack as
    /// its payload, and this many events in all. `None`: a single event.
    pub(crate) packed_events: Option<i32>,
    pub(crate) event: OutboxEvent,
}

impl StoredEvent {
    /// The events of this row: its event, or a pack's events.
    pub(crate) fn events(&self) -> Result<Vec<OutboxEvent>, BusError> {
        let Some(count) = self.packed_events else {
            return Ok(vec![self.event.clone()]);
        };
        let e = &self.event;
        let count = usize::try_from(count).unwrap_or(0);
        pack::decode(&e.workspace_id, &e.family, &e.payload, count).map_err(|err| {
            BusError::MalformedRow {
                seq: self.seq,
                reason: err.to_string(),
            }
        })
    }
}

pub(crate) const EVENT_COLUMNS: &str =
    "seq, event_id, workspace_id, family, event_key, payload, occurred_at, packed_events";

pub(crate) fn event_from_pg_row(row: &sqlx::postgres::PgRow) -> Result<StoredEvent, BusError> {
    let seq: i64 = row.try_get("seq")?;
    let malformed = |reason: String| BusError::MalformedRow { seq, reason };
    let workspace: String = row.try_get("workspace_id")?;
    let family: String = row.try_get("family")?;
    Ok(StoredEvent {
        seq,
        packed_events: row.try_get("packed_events")?,
        event: OutboxEvent {
            event_id: row.try_get("event_id")?,
            workspace_id: workspace
                .parse()
                .map_err(|e: meridian_domain::InvalidValue| malformed(e.reason))?,
            family: family
                .parse()
                .map_err(|e: meridian_domain::InvalidValue| malformed(e.reason))?,
            key: row.try_get("event_key")?,
            payload: row.try_get("payload")?,
            occurred_at: row.try_get("occurred_at")?,
        },
    })
}

pub(crate) fn event_from_sqlite_row(
    row: &sqlx::sqlite::SqliteRow,
) -> Result<StoredEvent, BusError> {
    let seq: i64 = row.try_get("seq")?;
    let malformed = |reason: String| BusError::MalformedRow { seq, reason };
    let event_id: String = row.try_get("event_id")?;
    let workspace: String = row.try_get("workspace_id")?;
    let family: String = row.try_get("family")?;
    let occurred: String = row.try_get("occurred_at")?;
    Ok(StoredEvent {
        seq,
        packed_events: row.try_get("packed_events")?,
        event: OutboxEvent {
            event_id: Uuid::parse_str(&event_id).map_err(|e| malformed(e.to_string()))?,
            workspace_id: workspace
                .parse()
                .map_err(|e: meridian_domain::InvalidValue| malformed(e.reason))?,
            family: family
                .parse()
                .map_err(|e: meridian_domain::InvalidValue| malformed(e.reason))?,
            key: row.try_get("event_key")?,
            payload: row.try_get("payload")?,
            occurred_at: parse_sqlite_time(&occurred).map_err(malformed)?,
        },
    })
}

/// Instants in SQLite: RFC 3339 UTC with microseconds, fixed width so text order is time order.
pub(crate) fn sqlite_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(crate) fn parse_sqlite_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| format!("bad instant: {e}"))
}

/// Makes the rest of the caller's transaction read the outbox by index, whatever the
/// outbox's statistics say: the relays' claims and the in-process consumers' reads.
///
/// The outbox is often empty (the relay keeps up) and then suddenly large (a burst, a
/// stopped relay; the in-process bus also keeps sent rows until they are pruned). Planned
/// on an empty or small table, the relay's claim is a sequential scan that tests every row
/// against the claimed list (`ctid = ANY(...)`, a linear search), and a consumer's read is
/// a sequential scan and a sort; a connection keeps that plan while the table grows, until
/// autovacuum next analyzes it. `bench ingest` caught it: with 100,000 events in the
/// outbox, 83 % of the relay backend's CPU was `tideq` and `ExecEvalScalarArrayOp`, the
/// relay fell behind ingest, and every claim grew slower as the backlog grew. These
/// statements read a bounded number of rows through `outbox_events_unsent`, the stream
/// position indexes and the row addresses taken, so an index or TID scan is right at
/// every size. `SET LOCAL` ends with the transaction; [`plan_by_cost`] ends it sooner.
pub(crate) async fn plan_outbox_reads_by_index(conn: &mut PgConnection) -> Result<(), BusError> {
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(conn)
        .await?;
    Ok(())
}

/// Undoes [`plan_outbox_reads_by_index`] for the rest of the transaction: a consumer's
/// handler runs in it, and its own statements are planned as configured, as anywhere else.
pub(crate) async fn plan_by_cost(conn: &mut PgConnection) -> Result<(), BusError> {
    sqlx::query("SET LOCAL enable_seqscan TO DEFAULT")
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the oldest unsent rows out of the outbox, oldest first: deleted in this
/// transaction, which the caller commits only once the bus holds them (a rollback puts them
/// back). Rows another relay has claimed are skipped.
///
/// Deleted, not marked sent: JetStream keeps the published copy, and a `sent_at` update
/// rewrote every row and its index entries (the partial index on unsent rows rules out a
/// HOT update). `bench ingest` measured the claim and the update at 24 µs of PostgreSQL
/// time per event, this statement at 10.
pub(crate) async fn take_unsent_pg(
    conn: &mut PgConnection,
    limit: usize,
) -> Result<Vec<StoredEvent>, BusError> {
    plan_outbox_reads_by_index(&mut *conn).await?;
    // Deleted by row address (a TID scan; locked rows cannot move): a third cheaper than
    // joining back on `seq`.
    let rows = sqlx::query(&format!(
        "DELETE FROM outbox_events WHERE ctid = ANY(ARRAY(SELECT ctid FROM outbox_events \
         WHERE sent_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED)) RETURNING {EVENT_COLUMNS}"
    ))
    .bind(limit_i64(limit))
    .fetch_all(conn)
    .await?;
    let mut events = rows
        .iter()
        .map(event_from_pg_row)
        .collect::<Result<Vec<_>, _>>()?;
    // RETURNING follows the delete's scan order, not the subquery's.
    events.sort_unstable_by_key(|e| e.seq);
    Ok(events)
}

/// The in-process bus's relay step on PostgreSQL: gives the oldest unsent rows their stream
/// positions and marks them sent, in the caller's transaction (which holds the relay's
/// advisory lock, so positions become visible in commit order). Returns the row count.
pub(crate) async fn assign_stream_positions_pg(
    conn: &mut PgConnection,
    limit: usize,
) -> Result<u64, BusError> {
    plan_outbox_reads_by_index(&mut *conn).await?;
    let packs: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM outbox_events WHERE sent_at IS NULL AND packed_events IS NOT NULL)",
    )
    .fetch_one(&mut *conn)
    .await?;
    if packs {
        return unpack_and_position_pg(conn, limit).await;
    }
    // Stream positions follow `seq`: `nextval` is taken in the sorted subquery. Taken in the
    // UPDATE itself, it followed the join's scan order, which is the rows' physical order:
    // once updates and concurrent inserts had moved rows, a batch reached consumers out of
    // order.
    Ok(sqlx::query(
        "UPDATE outbox_events o SET sent_at = now(), stream_seq = n.stream_seq \
         FROM (SELECT seq, nextval('outbox_stream_seq') AS stream_seq \
         FROM (SELECT seq FROM outbox_events WHERE sent_at IS NULL \
         ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) AS claimed ORDER BY seq) AS n \
         WHERE o.seq = n.seq",
    )
    .bind(limit_i64(limit))
    .execute(conn)
    .await?
    .rows_affected())
}

/// [`assign_stream_positions_pg`] when packs are among the unsent rows: each pack is
/// replaced by its events, each a row of its own, so the log, the consumers' reads, retries
/// and erasure deal in single events as before. Positions are handed out in row order, a
/// pack's events taking consecutive ones where the pack stood. Returns the event count.
async fn unpack_and_position_pg(conn: &mut PgConnection, limit: usize) -> Result<u64, BusError> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM outbox_events WHERE sent_at IS NULL \
         ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(limit_i64(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut rows = rows
        .iter()
        .map(event_from_pg_row)
        .collect::<Result<Vec<_>, _>>()?;
    rows.sort_unstable_by_key(|r| r.seq);
    // About `limit` events, not rows: packs hold up to a thousand each. The rows left out
    // stay unsent for the next round (their locks end with this transaction).
    let mut row_events = Vec::with_capacity(rows.len());
    let mut taken = 0;
    for row in &rows {
        if taken >= limit {
            break;
        }
        let events = row.events()?;
        taken += events.len();
        row_events.push(events);
    }
    rows.truncate(row_events.len());
    let total: usize = row_events.iter().map(Vec::len).sum();
    let mut positions: Vec<i64> =
        sqlx::query_scalar("SELECT nextval('outbox_stream_seq') FROM generate_series(1, $1)")
            .bind(limit_i64(total))
            .fetch_all(&mut *conn)
            .await?;
    positions.sort_unstable();
    let mut positions = positions.into_iter();
    let (mut single_seqs, mut single_positions) = (Vec::new(), Vec::new());
    let (mut pack_seqs, mut unpacked, mut unpacked_positions) =
        (Vec::new(), Vec::new(), Vec::new());
    for (row, events) in rows.iter().zip(row_events) {
        if row.packed_events.is_none() {
            single_seqs.push(row.seq);
            single_positions.push(positions.next());
            continue;
        }
        pack_seqs.push(row.seq);
        for event in events {
            unpacked.push(event);
            unpacked_positions.push(positions.next());
        }
    }
    sqlx::query("DELETE FROM outbox_events WHERE seq = ANY($1)")
        .bind(&pack_seqs)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE outbox_events o SET sent_at = now(), stream_seq = u.position \
         FROM UNNEST($1::int8[], $2::int8[]) AS u(seq, position) WHERE o.seq = u.seq",
    )
    .bind(&single_seqs)
    .bind(&single_positions)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO outbox_events (event_id, workspace_id, family, event_key, payload, occurred_at, sent_at, stream_seq) \
         SELECT e, w, f, k, p, o, now(), s \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[], $7::int8[]) \
         AS u(e, w, f, k, p, o, s)",
    )
    .bind(unpacked.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .bind(unpacked.iter().map(|e| e.workspace_id.as_str()).collect::<Vec<_>>())
    .bind(unpacked.iter().map(|e| e.family.as_str()).collect::<Vec<_>>())
    .bind(unpacked.iter().map(|e| e.key.as_str()).collect::<Vec<_>>())
    .bind(unpacked.iter().map(|e| e.payload.as_slice()).collect::<Vec<_>>())
    .bind(unpacked.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(&unpacked_positions)
    .execute(&mut *conn)
    .await?;
    Ok(total as u64)
}

/// Unsent rows, oldest first (SQLite has one writer; see the JetStream relay for why no lock
/// is held while publishing).
pub(crate) async fn unsent_sqlite(
    conn: &mut SqliteConnection,
    limit: usize,
) -> Result<Vec<StoredEvent>, BusError> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM outbox_events WHERE sent_at IS NULL ORDER BY seq LIMIT ?1"
    ))
    .bind(limit_i64(limit))
    .fetch_all(conn)
    .await?;
    rows.iter().map(event_from_sqlite_row).collect()
}

pub(crate) fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Outbox figures, for the CLI and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OutboxStats {
    /// Events not yet published (an unsent pack row counts its events).
    pub unsent: u64,
    /// Rows published and kept: the in-process bus reads its log from them until they are
    /// pruned. The JetStream relay deletes rows once JetStream holds them.
    pub sent: u64,
}

/// Deletes the outbox copies (sent or not, packed or not) and dead letters of a workspace's
/// events of one family whose key is in `keys`, in the caller's transaction: an erasure
/// must not leave a subject's blind indexes in the outbox, nor let a not yet relayed event
/// re-create what it deletes. Returns how many outbox events went. (JetStream keeps its
/// copy until the stream's `max_age`.)
pub async fn forget_keyed_events(
    tx: &mut Tx<'_>,
    workspace: &str,
    family: &EventFamily,
    keys: &[String],
) -> Result<u64, BusError> {
    if keys.is_empty() {
        return Ok(0);
    }
    Ok(match tx {
        Tx::Postgres(conn) => {
            let mut gone = sqlx::query(
                "DELETE FROM outbox_events WHERE workspace_id = $1 AND family = $2 AND event_key = ANY($3) \
                 AND packed_events IS NULL",
            )
            .bind(workspace)
            .bind(family.as_str())
            .bind(keys)
            .execute(&mut **conn)
            .await?
            .rows_affected();
            gone += forget_in_packs_pg(conn, workspace, family, keys).await?;
            sqlx::query(
                "DELETE FROM bus_dead_letters WHERE workspace_id = $1 AND family = $2 AND event_key = ANY($3)",
            )
            .bind(workspace)
            .bind(family.as_str())
            .bind(keys)
            .execute(&mut **conn)
            .await?;
            gone
        }
        Tx::Sqlite(conn) => {
            let mut gone = 0;
            for key in keys {
                gone += sqlx::query(
                    "DELETE FROM outbox_events WHERE workspace_id = ?1 AND family = ?2 AND event_key = ?3",
                )
                .bind(workspace)
                .bind(family.as_str())
                .bind(key)
                .execute(&mut **conn)
                .await?
                .rows_affected();
                sqlx::query(
                    "DELETE FROM bus_dead_letters WHERE workspace_id = ?1 AND family = ?2 AND event_key = ?3",
                )
                .bind(workspace)
                .bind(family.as_str())
                .bind(key)
                .execute(&mut **conn)
                .await?;
            }
            gone
        }
    })
}

/// Takes the events with any of `keys` out of the workspace's unsent packs of `family`
/// (packs are only ever unsent: the relays replace or delete them): a pack left with no
/// event is deleted, one left with events is rewritten in place, keeping its position.
/// Returns how many events went.
async fn forget_in_packs_pg(
    conn: &mut PgConnection,
    workspace: &str,
    family: &EventFamily,
    keys: &[String],
) -> Result<u64, BusError> {
    plan_outbox_reads_by_index(&mut *conn).await?;
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM outbox_events WHERE sent_at IS NULL AND packed_events IS NOT NULL \
         AND workspace_id = $1 AND family = $2 FOR UPDATE"
    ))
    .bind(workspace)
    .bind(family.as_str())
    .fetch_all(&mut *conn)
    .await?;
    plan_by_cost(&mut *conn).await?;
    let mut gone = 0;
    for row in &rows {
        let row = event_from_pg_row(row)?;
        let events = row.events()?;
        let kept: Vec<&OutboxEvent> = events.iter().filter(|e| !keys.contains(&e.key)).collect();
        if kept.len() == events.len() {
            continue;
        }
        gone += (events.len() - kept.len()) as u64;
        let (first, payload, packed) = match kept.as_slice() {
            [] => {
                sqlx::query("DELETE FROM outbox_events WHERE seq = $1")
                    .bind(row.seq)
                    .execute(&mut *conn)
                    .await?;
                continue;
            }
            [only] => (*only, only.payload.clone(), None),
            [first, ..] => (*first, pack::encode(&kept), Some(packed_count(kept.len()))),
        };
        sqlx::query(
            "UPDATE outbox_events SET event_id = $2, event_key = $3, payload = $4, \
             occurred_at = $5, packed_events = $6 WHERE seq = $1",
        )
        .bind(row.seq)
        .bind(first.event_id)
        .bind(&first.key)
        .bind(payload)
        .bind(first.occurred_at)
        .bind(packed)
        .execute(&mut *conn)
        .await?;
    }
    Ok(gone)
}

/// Every event of `family` in the outbox, unsent or kept, packs unpacked, in outbox order:
/// for tests and inspection (what the relays will publish or have published).
pub async fn outbox_events_of(
    store: &Store,
    family: &EventFamily,
) -> Result<Vec<OutboxEvent>, BusError> {
    let rows = match store {
        Store::Postgres(pool) => sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM outbox_events WHERE family = $1 ORDER BY seq"
        ))
        .bind(family.as_str())
        .fetch_all(pool)
        .await?
        .iter()
        .map(event_from_pg_row)
        .collect::<Result<Vec<_>, _>>()?,
        Store::Sqlite(pool) => sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM outbox_events WHERE family = ?1 ORDER BY seq"
        ))
        .bind(family.as_str())
        .fetch_all(pool)
        .await?
        .iter()
        .map(event_from_sqlite_row)
        .collect::<Result<Vec<_>, _>>()?,
    };
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        events.extend(row.events()?);
    }
    Ok(events)
}

/// How many outbox events are waiting for the relay (a pack counts its events), and how
/// many published rows are kept.
pub async fn outbox_stats(store: &Store) -> Result<OutboxStats, BusError> {
    // Events, not rows: an unsent pack counts its events.
    const SQL: &str = "SELECT COALESCE(SUM(CASE WHEN sent_at IS NULL THEN COALESCE(packed_events, 1) ELSE 0 END), 0) AS unsent, \
                       COALESCE(SUM(CASE WHEN sent_at IS NULL THEN 0 ELSE 1 END), 0) AS sent FROM outbox_events";
    let (unsent, sent): (i64, i64) = match store {
        Store::Postgres(pool) => {
            let row = sqlx::query(SQL).fetch_one(pool).await?;
            (row.try_get("unsent")?, row.try_get("sent")?)
        }
        Store::Sqlite(pool) => {
            let row = sqlx::query(SQL).fetch_one(pool).await?;
            (row.try_get("unsent")?, row.try_get("sent")?)
        }
    };
    Ok(OutboxStats {
        unsent: u64::try_from(unsent).unwrap_or(0),
        sent: u64::try_from(sent).unwrap_or(0),
    })
}

/// What [`prune`] may delete.
#[derive(Debug, Clone, Copy)]
pub struct PruneSettings {
    /// Delete published outbox rows sent before this instant (in-process bus: only rows
    /// every consumer of their family has passed, and none waiting for a retry).
    pub sent_before: DateTime<Utc>,
    /// Delete processed-event records older than this. Keep them longer than the stream's
    /// `max_age`: a redelivery after its record is gone would be applied again.
    pub processed_before: DateTime<Utc>,
}

/// What [`prune`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    pub outbox_rows: u64,
    pub processed_rows: u64,
}

/// Deletes outbox rows and processed-event records that can no longer matter.
pub async fn prune(store: &Store, settings: PruneSettings) -> Result<PruneReport, BusError> {
    const OUTBOX: &str = "DELETE FROM outbox_events WHERE sent_at IS NOT NULL AND sent_at < $1 \
        AND (stream_seq IS NULL OR stream_seq <= COALESCE((SELECT MIN(o.position) \
             FROM bus_consumer_offsets o WHERE o.family = outbox_events.family), 0)) \
        AND NOT EXISTS (SELECT 1 FROM bus_retries r WHERE r.event_id = outbox_events.event_id)";
    const PROCESSED: &str = "DELETE FROM bus_processed WHERE processed_at < $1";
    let (outbox_rows, processed_rows) = match store {
        Store::Postgres(pool) => (
            sqlx::query(OUTBOX)
                .bind(settings.sent_before)
                .execute(pool)
                .await?
                .rows_affected(),
            sqlx::query(PROCESSED)
                .bind(settings.processed_before)
                .execute(pool)
                .await?
                .rows_affected(),
        ),
        Store::Sqlite(pool) => (
            sqlx::query(OUTBOX)
                .bind(sqlite_time(settings.sent_before))
                .execute(pool)
                .await?
                .rows_affected(),
            sqlx::query(PROCESSED)
                .bind(sqlite_time(settings.processed_before))
                .execute(pool)
                .await?
                .rows_affected(),
        ),
    };
    if outbox_rows + processed_rows > 0 {
        tracing::info!(outbox_rows, processed_rows, "pruned the outbox");
    }
    Ok(PruneReport {
        outbox_rows,
        processed_rows,
    })
}
