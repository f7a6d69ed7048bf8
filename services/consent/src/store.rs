//! Storage of the consent room: one trait, [`ConsentStore`], with a PostgreSQL and a SQLite
//! implementation ([`SqlConsentStore`]). Both pass `tests/conformance.rs`.

use async_trait::async_trait;
use meridian_store::Store;
use meridian_store::sqlx::{self, Row};
use meridian_vault::LedgerSignature;

use crate::error::ConsentError;
use crate::ledger::{self, EntryChunk, EntryView, Hash, NewEntry, StoredEntry};

/// Signs a batch head (the vault, in production).
#[async_trait]
pub trait BatchSigner: Send + Sync {
    /// Called before the append transaction opens (load or create the key there, not
    /// inside the transaction: on SQLite that would wait on the transaction's own lock).
    async fn prepare(&self, _workspace: &str) -> Result<(), ConsentError> {
        Ok(())
    }
    async fn sign_hash(
        &self,
        workspace: &str,
        hash: &Hash,
    ) -> Result<LedgerSignature, ConsentError>;
}

/// A projection update carried by an append: entry `entry_index` of the batch decides `purpose`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateUpdate {
    pub entry_index: usize,
    pub subject_ref: String,
    pub purpose: String,
    pub decision: String,
    pub lawful_basis: String,
    pub decided_at: i64,
    pub expires_at: Option<i64>,
    pub time_zone: String,
}

/// One current decision from the projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    pub purpose: String,
    pub decision: String,
    pub lawful_basis: String,
    pub entry_id: String,
    pub sequence: u64,
    pub decided_at: i64,
    pub expires_at: Option<i64>,
    pub time_zone: String,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// New entries, chained and (last one) signed.
    Appended(Vec<StoredEntry>),
    /// The idempotency key was seen: the entries it appended then (sequence range).
    Replayed { first: u64, last: u64 },
}

/// What a ledger append changed, for the `ConsentChanged` event written with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeNotice {
    /// The subject's pseudonymous ledger ref.
    pub subject_ref: String,
    /// Blind indexes of every identifier linked to the subject.
    pub blind_indexes: Vec<Vec<u8>>,
    pub purposes: Vec<String>,
    /// Some purpose moved away from a given consent: downstream copies must go.
    pub restricted: bool,
}

/// The bus family of consent changes.
pub const CONSENT_FAMILY: &str = "consent";

impl ChangeNotice {
    /// The outbox event announcing the change whose last entry is `last_sequence`.
    pub fn event(
        &self,
        workspace: &str,
        last_sequence: u64,
    ) -> Result<meridian_bus::OutboxEvent, ConsentError> {
        use prost::Message as _;
        let now = chrono::Utc::now();
        let payload = meridian_proto::bus::v1::ConsentChanged {
            workspace_id: workspace.to_owned(),
            subject_ref: self.subject_ref.clone(),
            blind_indexes: self.blind_indexes.clone(),
            purposes: self.purposes.clone(),
            restricted: self.restricted,
            ledger_sequence: last_sequence,
            changed_at: Some(prost_types::Timestamp {
                seconds: now.timestamp(),
                nanos: i32::try_from(now.timestamp_subsec_nanos()).unwrap_or(0),
            }),
        }
        .encode_to_vec();
        outbox_event(workspace, CONSENT_FAMILY, &self.subject_ref, payload)
    }
}

/// An outbox event of this room.
pub(crate) fn outbox_event(
    workspace: &str,
    family: &str,
    key: &str,
    payload: Vec<u8>,
) -> Result<meridian_bus::OutboxEvent, ConsentError> {
    let workspace_id = workspace
        .parse()
        .map_err(|_| ConsentError::invalid("workspace_id", "not a valid workspace id"))?;
    let family = family
        .parse()
        .map_err(|_| ConsentError::Corrupt(format!("event family {family}")))?;
    Ok(meridian_bus::OutboxEvent::new(
        workspace_id,
        family,
        key,
        payload,
    ))
}

/// An identifier's subject (the identity seam).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectRow {
    pub blind_index: Vec<u8>,
    pub subject_id: String,
    pub sealed_ref: Vec<u8>,
}

/// A stored data-subject request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsrRow {
    pub request_id: String,
    pub kind: String,
    pub status: String,
    pub jurisdiction: String,
    pub regime: String,
    pub time_zone: String,
    pub subject_id: String,
    pub submitted_at: i64,
    pub due_at: i64,
    pub idempotency_key: Option<String>,
    /// JSON: extensions and steps.
    pub detail: String,
    pub sealed_corrections: Option<Vec<u8>>,
}

/// One status change of a request (append-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsrHistoryRow {
    pub status: String,
    pub reason: String,
    pub changed_at: i64,
}

/// Filters of `list_requests`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsrFilter {
    pub statuses: Vec<String>,
    pub due_before: Option<i64>,
    /// Resume after `(due_at, request_id)`.
    pub after: Option<(i64, String)>,
    pub limit: u32,
}

#[async_trait]
pub trait ConsentStore: Send + Sync {
    // ---- the identity seam ----
    async fn find_subjects(
        &self,
        workspace: &str,
        blind_indexes: &[Vec<u8>],
    ) -> Result<Vec<SubjectRow>, ConsentError>;
    /// Any identifier row of a subject (to reach its sealed ledger ref).
    async fn subject_by_id(
        &self,
        workspace: &str,
        subject_id: &str,
    ) -> Result<Option<SubjectRow>, ConsentError>;
    /// Links identifiers to a subject; an identifier already linked keeps its subject.
    async fn link_subject(&self, workspace: &str, rows: &[SubjectRow]) -> Result<(), ConsentError>;
    /// Every subject with a linked identifier in the workspace.
    async fn workspace_subject_ids(&self, workspace: &str) -> Result<Vec<String>, ConsentError>;
    /// Blind indexes of every identifier linked to a subject.
    async fn subject_blind_indexes(
        &self,
        workspace: &str,
        subject_id: &str,
    ) -> Result<Vec<Vec<u8>>, ConsentError>;
    /// Erasure: removes the subject's identifier links and its consent projection (the
    /// ledger keeps its entries under the pseudonymous ref). Returns the rows removed.
    async fn unlink_subject(
        &self,
        workspace: &str,
        subject_id: &str,
        subject_ref: &str,
    ) -> Result<u64, ConsentError>;
    /// Given consents whose validity ended at or before `now` (`workspace`, `subject_ref`,
    /// state), oldest expiry first.
    async fn due_expiries(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, String, StateRow)>, ConsentError>;

    // ---- the ledger ----
    /// Chains `batch` after the workspace head, signs its last entry, applies the projection
    /// updates and records the idempotency key, in one transaction.
    ///
    /// With `change`, a `ConsentChanged` event (family `consent`) naming the batch's last
    /// sequence is written to the outbox in the same transaction: it is published if and
    /// only if the entries exist.
    async fn append(
        &self,
        workspace: &str,
        batch: Vec<NewEntry>,
        updates: Vec<StateUpdate>,
        idempotency_key: Option<&str>,
        signer: &dyn BatchSigner,
        change: Option<&ChangeNotice>,
    ) -> Result<AppendOutcome, ConsentError>;
    /// Entries with `first <= sequence <= last`, in order.
    async fn entries_between(
        &self,
        workspace: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<StoredEntry>, ConsentError>;
    /// Streams the workspace's entries with `first <= sequence <= last` (no upper bound
    /// with `None`), in sequence order, to `sink` as chunks of about [`STREAM_CHUNK_BYTES`]
    /// (PostgreSQL: one binary COPY, read as it arrives). Stops early, without error, when
    /// the receiver is dropped.
    async fn stream_ledger(
        &self,
        workspace: &str,
        first: u64,
        last: Option<u64>,
        sink: tokio::sync::mpsc::Sender<EntryChunk>,
    ) -> Result<(), ConsentError>;
    /// Up to `limit` entries after `after_sequence`, in order.
    async fn scan(
        &self,
        workspace: &str,
        after_sequence: u64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, ConsentError>;
    /// A subject's entries recorded at or before `until` (µs), ordered by
    /// `(recorded_at, sequence)`, after `after` = `(recorded_at, sequence)`.
    async fn subject_entries(
        &self,
        workspace: &str,
        subject_ref: &str,
        until: Option<i64>,
        after: Option<(i64, u64)>,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, ConsentError>;
    async fn head(&self, workspace: &str) -> Result<Option<(u64, Vec<u8>)>, ConsentError>;
    /// The highest sequence stored (0 for an empty ledger).
    async fn max_sequence(&self, workspace: &str) -> Result<u64, ConsentError>;
    /// Workspaces that have a ledger.
    async fn ledger_workspaces(&self) -> Result<Vec<String>, ConsentError>;
    async fn current_states(
        &self,
        workspace: &str,
        subject_ref: &str,
    ) -> Result<Vec<StateRow>, ConsentError>;

    // ---- data-subject requests ----
    /// Inserts a request and its first status; with an idempotency key already used, the
    /// request stored then (nothing inserted).
    async fn insert_request(
        &self,
        workspace: &str,
        row: &DsrRow,
        first: &DsrHistoryRow,
    ) -> Result<Option<DsrRow>, ConsentError>;
    async fn get_request(
        &self,
        workspace: &str,
        request_id: &str,
    ) -> Result<Option<(DsrRow, Vec<DsrHistoryRow>)>, ConsentError>;
    /// The request submitted earlier with this idempotency key, if any.
    async fn request_by_idempotency_key(
        &self,
        workspace: &str,
        idempotency_key: &str,
    ) -> Result<Option<DsrRow>, ConsentError>;
    /// Saves status, deadline and detail; appends `change` to the audit trail.
    async fn update_request(
        &self,
        workspace: &str,
        row: &DsrRow,
        change: Option<&DsrHistoryRow>,
    ) -> Result<(), ConsentError>;
    async fn list_requests(
        &self,
        workspace: &str,
        filter: &DsrFilter,
    ) -> Result<Vec<(DsrRow, Vec<DsrHistoryRow>)>, ConsentError>;
    /// Open requests (every workspace): `(open, due in [now, horizon), due before now)`.
    async fn deadline_counts(
        &self,
        now: i64,
        horizon: i64,
    ) -> Result<(u64, u64, u64), ConsentError>;
}

impl From<sqlx::Error> for ConsentError {
    fn from(e: sqlx::Error) -> Self {
        ConsentError::Storage(Box::new(e))
    }
}

/// [`ConsentStore`] on the process's [`Store`].
#[derive(Debug, Clone)]
pub struct SqlConsentStore(pub Store);

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn entry_from_row<R>(row: &R) -> Result<StoredEntry, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<Vec<u8>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let key_version: Option<i64> = row.try_get("key_version")?;
    let signature: Option<Vec<u8>> = row.try_get("signature")?;
    let signature = match (key_version, signature) {
        (Some(v), Some(bytes)) => Some(stored_signature(v, &bytes)),
        _ => None,
    };
    Ok(StoredEntry {
        sequence: to_u64(row.try_get("sequence")?),
        entry_id: row.try_get("entry_id")?,
        subject_ref: row.try_get("subject_ref")?,
        recorded_at: row.try_get("recorded_at")?,
        body: row.try_get("body")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
        signature,
    })
}

fn state_from_row<R>(row: &R) -> Result<StateRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StateRow {
        purpose: row.try_get("purpose")?,
        decision: row.try_get("decision")?,
        lawful_basis: row.try_get("lawful_basis")?,
        entry_id: row.try_get("entry_id")?,
        sequence: to_u64(row.try_get("sequence")?),
        decided_at: row.try_get("decided_at")?,
        expires_at: row.try_get("expires_at")?,
        time_zone: row.try_get("time_zone")?,
    })
}

fn dsr_from_row<R>(row: &R) -> Result<DsrRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<Vec<u8>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(DsrRow {
        request_id: row.try_get("request_id")?,
        kind: row.try_get("kind")?,
        status: row.try_get("status")?,
        jurisdiction: row.try_get("jurisdiction")?,
        regime: row.try_get("regime")?,
        time_zone: row.try_get("time_zone")?,
        subject_id: row.try_get("subject_id")?,
        submitted_at: row.try_get("submitted_at")?,
        due_at: row.try_get("due_at")?,
        idempotency_key: row.try_get("idempotency_key")?,
        detail: row.try_get("detail")?,
        sealed_corrections: row.try_get("sealed_corrections")?,
    })
}

fn history_from_row<R>(row: &R) -> Result<DsrHistoryRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(DsrHistoryRow {
        status: row.try_get("status")?,
        reason: row.try_get("reason")?,
        changed_at: row.try_get("changed_at")?,
    })
}

const ENTRY_COLUMNS: &str =
    "sequence, entry_id, subject_ref, recorded_at, body, prev_hash, hash, key_version, signature";

/// Runs the same query text on either pool (placeholders `$n` work on both backends).
/// Identifiers per `find_subjects` query (bound parameters stay under SQLite's limit).
const FIND_SUBJECTS_CHUNK: usize = 500;

macro_rules! on_pool {
    ($self:ident, $pool:ident => $body:expr) => {
        match &$self.0 {
            Store::Postgres($pool) => $body,
            Store::Sqlite($pool) => $body,
        }
    };
}

/// The body of `append` for one backend (a transaction type and a bulk insert).
macro_rules! append_tx {
    ($pool:expr, $workspace:expr, $batch:expr, $updates:expr, $key:expr, $signer:expr, $change:expr, $lock:expr, $insert:ident) => {{
        $signer.prepare($workspace).await?;
        let mut tx = $pool.begin().await?;
        // A write first: takes the workspace's append lock (row lock on PostgreSQL, the
        // database write lock on SQLite) before the head is read.
        sqlx::query($lock).bind($workspace).execute(&mut *tx).await?;
        let head_row = sqlx::query(
            "SELECT sequence, hash FROM consent_ledger_heads WHERE workspace_id = $1",
        )
        .bind($workspace)
        .fetch_one(&mut *tx)
        .await?;
        let head_seq: i64 = head_row.try_get("sequence")?;
        let head_hash: Vec<u8> = head_row.try_get("hash")?;
        if let Some(key) = $key {
            let seen = sqlx::query(
                "SELECT first_sequence, last_sequence FROM consent_idempotency WHERE workspace_id = $1 AND idempotency_key = $2",
            )
            .bind($workspace)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(seen) = seen {
                let first: i64 = seen.try_get("first_sequence")?;
                let last: i64 = seen.try_get("last_sequence")?;
                tx.rollback().await?;
                return Ok(AppendOutcome::Replayed {
                    first: to_u64(first),
                    last: to_u64(last),
                });
            }
        }
        let head_hash: Hash = head_hash
            .as_slice()
            .try_into()
            .map_err(|_| ConsentError::Corrupt("ledger head hash is not 32 bytes".into()))?;
        let mut chained = ledger::chain($workspace, (to_u64(head_seq), head_hash), $batch);
        let Some(last) = chained.last_mut() else {
            tx.rollback().await?;
            return Ok(AppendOutcome::Appended(Vec::new()));
        };
        let last_hash: Hash = last
            .hash
            .as_slice()
            .try_into()
            .map_err(|_| ConsentError::Corrupt("hash length".into()))?;
        last.signature = Some($signer.sign_hash($workspace, &last_hash).await?);
        let (last_seq, first_seq) = (last.sequence, chained[0].sequence);
        $insert(&mut tx, $workspace, &chained).await?;
        for u in &$updates {
            let Some(e) = chained.get(u.entry_index) else {
                continue;
            };
            sqlx::query(
                "INSERT INTO consent_state (workspace_id, subject_ref, purpose, decision, lawful_basis, entry_id, sequence, decided_at, expires_at, time_zone)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (workspace_id, subject_ref, purpose) DO UPDATE SET
                   decision = excluded.decision, lawful_basis = excluded.lawful_basis,
                   entry_id = excluded.entry_id, sequence = excluded.sequence,
                   decided_at = excluded.decided_at, expires_at = excluded.expires_at,
                   time_zone = excluded.time_zone
                 WHERE excluded.decided_at >= consent_state.decided_at",
            )
            .bind($workspace)
            .bind(&u.subject_ref)
            .bind(&u.purpose)
            .bind(&u.decision)
            .bind(&u.lawful_basis)
            .bind(&e.entry_id)
            .bind(to_i64(e.sequence))
            .bind(u.decided_at)
            .bind(u.expires_at)
            .bind(&u.time_zone)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(key) = $key {
            sqlx::query(
                "INSERT INTO consent_idempotency (workspace_id, idempotency_key, first_sequence, last_sequence) VALUES ($1, $2, $3, $4)",
            )
            .bind($workspace)
            .bind(key)
            .bind(to_i64(first_seq))
            .bind(to_i64(last_seq))
            .execute(&mut *tx)
            .await?;
        }
        if let Some(change) = $change {
            let event = change.event($workspace, last_seq)?;
            meridian_bus::enqueue(&mut tx, &event)
                .await
                .map_err(|e| ConsentError::Storage(Box::new(e)))?;
        }
        let new_head = chained.last().map(|e| e.hash.clone()).unwrap_or_default();
        sqlx::query("UPDATE consent_ledger_heads SET sequence = $2, hash = $3 WHERE workspace_id = $1")
            .bind($workspace)
            .bind(to_i64(last_seq))
            .bind(new_head)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(AppendOutcome::Appended(chained))
    }};
}

const LOCK_PG: &str = "INSERT INTO consent_ledger_heads (workspace_id, sequence, hash)
     VALUES ($1, 0, decode(repeat('00', 32), 'hex'))
     ON CONFLICT (workspace_id) DO UPDATE SET sequence = consent_ledger_heads.sequence";
const LOCK_SQLITE: &str = "INSERT INTO consent_ledger_heads (workspace_id, sequence, hash)
     VALUES ($1, 0, zeroblob(32))
     ON CONFLICT (workspace_id) DO UPDATE SET sequence = consent_ledger_heads.sequence";

async fn insert_pg(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    workspace: &str,
    entries: &[StoredEntry],
) -> Result<(), sqlx::Error> {
    // One statement per batch: arrays unnested server-side.
    let mut seqs = Vec::with_capacity(entries.len());
    let mut ids = Vec::with_capacity(entries.len());
    let mut refs = Vec::with_capacity(entries.len());
    let mut times = Vec::with_capacity(entries.len());
    let mut bodies = Vec::with_capacity(entries.len());
    let mut prevs = Vec::with_capacity(entries.len());
    let mut hashes = Vec::with_capacity(entries.len());
    let mut versions: Vec<Option<i64>> = Vec::with_capacity(entries.len());
    let mut sigs: Vec<Option<Vec<u8>>> = Vec::with_capacity(entries.len());
    for e in entries {
        seqs.push(to_i64(e.sequence));
        ids.push(e.entry_id.as_str());
        refs.push(e.subject_ref.as_str());
        times.push(e.recorded_at);
        bodies.push(e.body.as_str());
        prevs.push(e.prev_hash.as_slice());
        hashes.push(e.hash.as_slice());
        versions.push(e.signature.map(|s| i64::from(s.key_version)));
        sigs.push(e.signature.map(|s| s.bytes.to_vec()));
    }
    sqlx::query(
        "INSERT INTO consent_ledger (workspace_id, sequence, entry_id, subject_ref, recorded_at, body, prev_hash, hash, key_version, signature)
         SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bytea[], $8::bytea[], $9::bigint[], $10::bytea[])",
    )
    .bind(workspace)
    .bind(seqs)
    .bind(ids)
    .bind(refs)
    .bind(times)
    .bind(bodies)
    .bind(prevs)
    .bind(hashes)
    .bind(versions)
    .bind(sigs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    workspace: &str,
    entries: &[StoredEntry],
) -> Result<(), sqlx::Error> {
    for e in entries {
        sqlx::query(
            "INSERT INTO consent_ledger (workspace_id, sequence, entry_id, subject_ref, recorded_at, body, prev_hash, hash, key_version, signature)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(workspace)
        .bind(to_i64(e.sequence))
        .bind(&e.entry_id)
        .bind(&e.subject_ref)
        .bind(e.recorded_at)
        .bind(&e.body)
        .bind(&e.prev_hash)
        .bind(&e.hash)
        .bind(e.signature.map(|s| i64::from(s.key_version)))
        .bind(e.signature.map(|s| s.bytes.to_vec()))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Bytes of entry fields per chunk streamed to verification: large enough that passing a
/// chunk between tasks costs nothing next to hashing it, small enough that the few chunks in
/// flight stay a few MiB.
pub const STREAM_CHUNK_BYTES: usize = 1 << 20;
/// Chunks a ledger stream may run ahead of its reader.
pub const STREAM_CHUNKS_AHEAD: usize = 4;

fn new_chunk() -> EntryChunk {
    EntryChunk::with_capacity(STREAM_CHUNK_BYTES + 64 * 1024, STREAM_CHUNK_BYTES / 512)
}

/// Incremental parser of PostgreSQL binary COPY output of [`ENTRY_COLUMNS`]: fed the
/// CopyData messages as they arrive (a tuple may span messages), it packs each tuple into an
/// [`EntryChunk`] without allocating per entry.
#[derive(Debug, Default)]
struct CopyParser {
    /// Bytes of an incomplete tuple (or header) carried to the next message.
    carry: Vec<u8>,
    header_done: bool,
    /// The trailer was read.
    done: bool,
}

/// What the COPY output holds that it should not.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CopyFormatError(&'static str);

/// The outcome of parsing at the front of a buffer.
enum Parsed<T> {
    /// Parsed, consuming that many bytes.
    Item(T, usize),
    /// More bytes are needed.
    Incomplete,
}

impl CopyParser {
    const SIGNATURE: &'static [u8] = b"PGCOPY\n\xff\r\n\0";

    /// Parses what `data` completes; whole tuples go into `out`.
    fn feed(&mut self, data: &[u8], out: &mut EntryChunk) -> Result<(), CopyFormatError> {
        if self.carry.is_empty() {
            let used = self.parse(data, out)?;
            self.carry.extend_from_slice(&data[used..]);
        } else {
            let mut carry = std::mem::take(&mut self.carry);
            carry.extend_from_slice(data);
            let used = self.parse(&carry, out)?;
            carry.drain(..used);
            self.carry = carry;
        }
        if self.done && !self.carry.is_empty() {
            return Err(CopyFormatError("bytes after the COPY trailer"));
        }
        Ok(())
    }

    /// Checks the stream ended where it should.
    fn finish(&self) -> Result<(), CopyFormatError> {
        if self.done {
            Ok(())
        } else {
            Err(CopyFormatError("the COPY output ends before its trailer"))
        }
    }

    /// Parses complete items at the front of `buf`; returns the bytes consumed.
    fn parse(&mut self, buf: &[u8], out: &mut EntryChunk) -> Result<usize, CopyFormatError> {
        let mut pos = 0;
        if !self.header_done {
            match parse_copy_header(buf)? {
                Parsed::Item((), used) => {
                    pos = used;
                    self.header_done = true;
                }
                Parsed::Incomplete => return Ok(0),
            }
        }
        while !self.done {
            match parse_copy_tuple(&buf[pos..])? {
                Parsed::Item(Some(e), used) => {
                    out.push(&e);
                    pos += used;
                }
                Parsed::Item(None, used) => {
                    self.done = true;
                    pos += used;
                }
                Parsed::Incomplete => break,
            }
        }
        Ok(pos)
    }
}

fn parse_copy_header(buf: &[u8]) -> Result<Parsed<()>, CopyFormatError> {
    let fixed = CopyParser::SIGNATURE.len() + 8;
    if buf.len() < fixed {
        return if CopyParser::SIGNATURE
            .starts_with(&buf[..buf.len().min(CopyParser::SIGNATURE.len())])
        {
            Ok(Parsed::Incomplete)
        } else {
            Err(CopyFormatError("not binary COPY output"))
        };
    }
    if !buf.starts_with(CopyParser::SIGNATURE) {
        return Err(CopyFormatError("not binary COPY output"));
    }
    let at = CopyParser::SIGNATURE.len() + 4; // flags
    let ext = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
    let used = fixed
        .checked_add(ext)
        .ok_or(CopyFormatError("header extension length"))?;
    Ok(if buf.len() < used {
        Parsed::Incomplete
    } else {
        Parsed::Item((), used)
    })
}

/// One tuple of [`ENTRY_COLUMNS`] (`None` for the trailer).
fn parse_copy_tuple(buf: &[u8]) -> Result<Parsed<Option<EntryView<'_>>>, CopyFormatError> {
    let Some(count) = buf.get(..2) else {
        return Ok(Parsed::Incomplete);
    };
    let count = i16::from_be_bytes([count[0], count[1]]);
    if count == -1 {
        return Ok(Parsed::Item(None, 2));
    }
    if count != 9 {
        return Err(CopyFormatError("a tuple without the 9 ledger columns"));
    }
    let mut pos = 2usize;
    let mut cols: [Option<&[u8]>; 9] = [None; 9];
    for col in &mut cols {
        let Some(len) = buf.get(pos..pos + 4) else {
            return Ok(Parsed::Incomplete);
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        pos += 4;
        if len >= 0 {
            let len = len as usize;
            let Some(value) = buf.get(pos..pos + len) else {
                return Ok(Parsed::Incomplete);
            };
            *col = Some(value);
            pos += len;
        } else if len != -1 {
            return Err(CopyFormatError("a negative field length"));
        }
    }
    let int = |b: Option<&[u8]>, what: &'static str| -> Result<i64, CopyFormatError> {
        b.and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_be_bytes)
            .ok_or(CopyFormatError(what))
    };
    fn field(b: Option<&[u8]>) -> Result<&[u8], CopyFormatError> {
        b.ok_or(CopyFormatError("a NULL in a NOT NULL column"))
    }
    let signature = match (cols[7], cols[8]) {
        (Some(_), Some(bytes)) => Some(stored_signature(int(cols[7], "key_version")?, bytes)),
        _ => None,
    };
    let view = EntryView {
        sequence: to_u64(int(cols[0], "sequence")?),
        entry_id: field(cols[1])?,
        subject_ref: field(cols[2])?,
        recorded_at: int(cols[3], "recorded_at")?,
        body: field(cols[4])?,
        prev_hash: field(cols[5])?,
        hash: field(cols[6])?,
        signature,
    };
    Ok(Parsed::Item(Some(view), pos))
}

/// A stored signature; one of the wrong length must fail verification, not vanish.
fn stored_signature(key_version: i64, bytes: &[u8]) -> LedgerSignature {
    LedgerSignature::from_slice(u32::try_from(key_version).unwrap_or(u32::MAX), bytes).unwrap_or(
        LedgerSignature {
            key_version: u32::MAX,
            bytes: [0u8; 64],
        },
    )
}

/// Sends `chunk` if it is full (or `last`); false when the receiver is gone.
async fn flush_chunk(
    sink: &tokio::sync::mpsc::Sender<EntryChunk>,
    chunk: &mut EntryChunk,
    last: bool,
) -> bool {
    if chunk.is_empty() || (!last && chunk.byte_len() < STREAM_CHUNK_BYTES) {
        return true;
    }
    let full = std::mem::replace(chunk, new_chunk());
    sink.send(full).await.is_ok()
}

/// The binary COPY of a workspace's entries `first..=last` that
/// [`ConsentStore::stream_ledger`] reads on PostgreSQL (the benchmark's baseline reads the
/// same).
pub fn ledger_copy_statement(workspace: &str, (first, last): (i64, i64)) -> String {
    // COPY takes no parameters: the workspace goes in as a quoted literal.
    format!(
        "COPY (SELECT {ENTRY_COLUMNS} FROM consent_ledger WHERE workspace_id = '{}' AND sequence >= {first} AND sequence <= {last} ORDER BY sequence) TO STDOUT (FORMAT binary)",
        workspace.replace('\'', "''"),
    )
}

async fn stream_ledger_pg(
    pool: &sqlx::PgPool,
    workspace: &str,
    range: (i64, i64),
    sink: tokio::sync::mpsc::Sender<EntryChunk>,
) -> Result<(), ConsentError> {
    use futures::StreamExt as _;
    // One COPY reads the range in one snapshot; PostgreSQL streams it while the caller
    // hashes.
    let sql = ledger_copy_statement(workspace, range);
    let mut conn = pool.acquire().await?;
    let mut parser = CopyParser::default();
    let mut chunk = new_chunk();
    let mut receiver_gone = false;
    {
        let mut stream = conn.copy_out_raw(&sql).await?;
        while let Some(data) = stream.next().await {
            parser
                .feed(&data?, &mut chunk)
                .map_err(|e| ConsentError::Corrupt(format!("ledger COPY output: {}", e.0)))?;
            if !flush_chunk(&sink, &mut chunk, false).await {
                receiver_gone = true;
                break;
            }
        }
    }
    if receiver_gone {
        // The COPY was left half read: this connection cannot serve another query.
        conn.close().await?;
        return Ok(());
    }
    parser
        .finish()
        .map_err(|e| ConsentError::Corrupt(format!("ledger COPY output: {}", e.0)))?;
    flush_chunk(&sink, &mut chunk, true).await;
    Ok(())
}

async fn stream_ledger_sqlite(
    pool: &sqlx::SqlitePool,
    workspace: &str,
    (first, last): (i64, i64),
    sink: tokio::sync::mpsc::Sender<EntryChunk>,
) -> Result<(), ConsentError> {
    use futures::TryStreamExt as _;
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM consent_ledger WHERE workspace_id = $1 AND sequence >= $2 AND sequence <= $3 ORDER BY sequence"
    );
    let mut rows = sqlx::query(&sql)
        .bind(workspace)
        .bind(first)
        .bind(last)
        .fetch(pool);
    let mut chunk = new_chunk();
    while let Some(row) = rows.try_next().await? {
        let key_version: Option<i64> = row.try_get("key_version")?;
        let signature: Option<&[u8]> = row.try_get("signature")?;
        chunk.push(&EntryView {
            sequence: to_u64(row.try_get("sequence")?),
            entry_id: row.try_get::<&str, _>("entry_id")?.as_bytes(),
            subject_ref: row.try_get::<&str, _>("subject_ref")?.as_bytes(),
            recorded_at: row.try_get("recorded_at")?,
            body: row.try_get::<&str, _>("body")?.as_bytes(),
            prev_hash: row.try_get("prev_hash")?,
            hash: row.try_get("hash")?,
            signature: match (key_version, signature) {
                (Some(v), Some(bytes)) => Some(stored_signature(v, bytes)),
                _ => None,
            },
        });
        if !flush_chunk(&sink, &mut chunk, false).await {
            return Ok(());
        }
    }
    flush_chunk(&sink, &mut chunk, true).await;
    Ok(())
}

fn statuses_clause(n: usize, first_param: usize) -> String {
    if n == 0 {
        return String::new();
    }
    let params: Vec<String> = (0..n).map(|i| format!("${}", first_param + i)).collect();
    format!(" AND status IN ({})", params.join(", "))
}

#[async_trait]
impl ConsentStore for SqlConsentStore {
    async fn find_subjects(
        &self,
        workspace: &str,
        blind_indexes: &[Vec<u8>],
    ) -> Result<Vec<SubjectRow>, ConsentError> {
        if let Store::Postgres(pool) = &self.0 {
            // One round trip for every identifier: the indexes go as one array parameter.
            let rows = sqlx::query(
                "SELECT blind_index, subject_id, sealed_ref FROM consent_subjects WHERE workspace_id = $1 AND blind_index = ANY($2)",
            )
            .bind(workspace)
            .bind(blind_indexes)
            .fetch_all(pool)
            .await?;
            let mut found = std::collections::HashMap::with_capacity(rows.len());
            for r in &rows {
                let row = SubjectRow {
                    blind_index: r.try_get("blind_index")?,
                    subject_id: r.try_get("subject_id")?,
                    sealed_ref: r.try_get("sealed_ref")?,
                };
                found.insert(row.blind_index.clone(), row);
            }
            // in the order asked: the caller takes the first identifier's subject
            return Ok(blind_indexes
                .iter()
                .filter_map(|bi| found.get(bi).cloned())
                .collect());
        }
        // SQLite: one query per chunk of identifiers (ingestion asks for hundreds at once),
        // answered in the order asked.
        let mut found: std::collections::HashMap<Vec<u8>, (String, Vec<u8>)> =
            std::collections::HashMap::new();
        for chunk in blind_indexes.chunks(FIND_SUBJECTS_CHUNK) {
            let params: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT blind_index, subject_id, sealed_ref FROM consent_subjects \
                 WHERE workspace_id = $1 AND blind_index IN ({})",
                params.join(", ")
            );
            on_pool!(self, pool => {
                let mut query = sqlx::query(&sql).bind(workspace);
                for bi in chunk {
                    query = query.bind(bi.as_slice());
                }
                for r in query.fetch_all(pool).await? {
                    found.insert(
                        r.try_get("blind_index")?,
                        (r.try_get("subject_id")?, r.try_get("sealed_ref")?),
                    );
                }
            });
        }
        Ok(blind_indexes
            .iter()
            .filter_map(|bi| {
                found.get(bi).map(|(subject_id, sealed_ref)| SubjectRow {
                    blind_index: bi.clone(),
                    subject_id: subject_id.clone(),
                    sealed_ref: sealed_ref.clone(),
                })
            })
            .collect())
    }

    async fn subject_by_id(
        &self,
        workspace: &str,
        subject_id: &str,
    ) -> Result<Option<SubjectRow>, ConsentError> {
        let row = on_pool!(self, pool => match sqlx::query(
            "SELECT blind_index, subject_id, sealed_ref FROM consent_subjects WHERE workspace_id = $1 AND subject_id = $2 LIMIT 1",
        )
        .bind(workspace)
        .bind(subject_id)
        .fetch_optional(pool)
        .await?
        {
            Some(r) => Some(SubjectRow {
                blind_index: r.try_get("blind_index")?,
                subject_id: r.try_get("subject_id")?,
                sealed_ref: r.try_get("sealed_ref")?,
            }),
            None => None,
        });
        Ok(row)
    }

    async fn link_subject(&self, workspace: &str, rows: &[SubjectRow]) -> Result<(), ConsentError> {
        for r in rows {
            on_pool!(self, pool => sqlx::query(
                "INSERT INTO consent_subjects (workspace_id, blind_index, subject_id, sealed_ref) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (workspace_id, blind_index) DO NOTHING",
            )
            .bind(workspace)
            .bind(&r.blind_index)
            .bind(&r.subject_id)
            .bind(&r.sealed_ref)
            .execute(pool)
            .await
            .map(drop)?);
        }
        Ok(())
    }

    async fn workspace_subject_ids(&self, workspace: &str) -> Result<Vec<String>, ConsentError> {
        let out = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT DISTINCT subject_id FROM consent_subjects WHERE workspace_id = $1 ORDER BY subject_id",
        )
        .bind(workspace)
        .fetch_all(pool)
        .await?);
        Ok(out)
    }

    async fn subject_blind_indexes(
        &self,
        workspace: &str,
        subject_id: &str,
    ) -> Result<Vec<Vec<u8>>, ConsentError> {
        let out = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT blind_index FROM consent_subjects WHERE workspace_id = $1 AND subject_id = $2 ORDER BY blind_index",
        )
        .bind(workspace)
        .bind(subject_id)
        .fetch_all(pool)
        .await?);
        Ok(out)
    }

    async fn unlink_subject(
        &self,
        workspace: &str,
        subject_id: &str,
        subject_ref: &str,
    ) -> Result<u64, ConsentError> {
        let family: meridian_bus::EventFamily = CONSENT_FAMILY
            .parse()
            .map_err(|_| ConsentError::Corrupt(format!("event family {CONSENT_FAMILY}")))?;
        macro_rules! unlink {
            ($pool:expr, $tx:path) => {{
                let mut tx = $pool.begin().await?;
                let links = sqlx::query(
                    "DELETE FROM consent_subjects WHERE workspace_id = $1 AND subject_id = $2",
                )
                .bind(workspace)
                .bind(subject_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let states = sqlx::query(
                    "DELETE FROM consent_state WHERE workspace_id = $1 AND subject_ref = $2",
                )
                .bind(workspace)
                .bind(subject_ref)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                // The subject's `ConsentChanged` events carry its blind indexes: their
                // outbox copies go too (consumers have had them: this step runs after the
                // destinations and the other rooms let go of the subject).
                let events = meridian_bus::forget_keyed_events(
                    &mut $tx(&mut tx),
                    workspace,
                    &family,
                    &[subject_ref.to_owned()],
                )
                .await
                .map_err(|e| ConsentError::Storage(Box::new(e)))?;
                tx.commit().await?;
                Ok(links + states + events)
            }};
        }
        match &self.0 {
            Store::Postgres(pool) => unlink!(pool, meridian_bus::Tx::Postgres),
            Store::Sqlite(pool) => unlink!(pool, meridian_bus::Tx::Sqlite),
        }
    }

    async fn due_expiries(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, String, StateRow)>, ConsentError> {
        let out = on_pool!(self, pool => sqlx::query(
            "SELECT workspace_id, subject_ref, purpose, decision, lawful_basis, entry_id, sequence, decided_at, expires_at, time_zone
             FROM consent_state WHERE decision = 'given' AND expires_at <= $1
             ORDER BY expires_at, workspace_id, subject_ref, purpose LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("workspace_id")?, r.try_get("subject_ref")?, state_from_row(r)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?);
        Ok(out)
    }

    async fn append(
        &self,
        workspace: &str,
        batch: Vec<NewEntry>,
        updates: Vec<StateUpdate>,
        idempotency_key: Option<&str>,
        signer: &dyn BatchSigner,
        change: Option<&ChangeNotice>,
    ) -> Result<AppendOutcome, ConsentError> {
        match &self.0 {
            Store::Postgres(pool) => append_tx!(
                pool,
                workspace,
                batch,
                updates,
                idempotency_key,
                signer,
                change,
                LOCK_PG,
                insert_pg
            ),
            Store::Sqlite(pool) => append_tx!(
                pool,
                workspace,
                batch,
                updates,
                idempotency_key,
                signer,
                change,
                LOCK_SQLITE,
                insert_sqlite
            ),
        }
    }

    async fn entries_between(
        &self,
        workspace: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<StoredEntry>, ConsentError> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM consent_ledger WHERE workspace_id = $1 AND sequence >= $2 AND sequence <= $3 ORDER BY sequence"
        );
        let out = on_pool!(self, pool => sqlx::query(&sql)
            .bind(workspace)
            .bind(to_i64(first))
            .bind(to_i64(last))
            .fetch_all(pool)
            .await?
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?);
        Ok(out)
    }

    async fn stream_ledger(
        &self,
        workspace: &str,
        first: u64,
        last: Option<u64>,
        sink: tokio::sync::mpsc::Sender<EntryChunk>,
    ) -> Result<(), ConsentError> {
        let range = (to_i64(first), last.map_or(i64::MAX, to_i64));
        match &self.0 {
            Store::Postgres(pool) => stream_ledger_pg(pool, workspace, range, sink).await,
            Store::Sqlite(pool) => stream_ledger_sqlite(pool, workspace, range, sink).await,
        }
    }

    async fn scan(
        &self,
        workspace: &str,
        after_sequence: u64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, ConsentError> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM consent_ledger WHERE workspace_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3"
        );
        let out = on_pool!(self, pool => sqlx::query(&sql)
            .bind(workspace)
            .bind(to_i64(after_sequence))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?);
        Ok(out)
    }

    async fn subject_entries(
        &self,
        workspace: &str,
        subject_ref: &str,
        until: Option<i64>,
        after: Option<(i64, u64)>,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, ConsentError> {
        let (after_t, after_s) = after.unwrap_or((i64::MIN, 0));
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM consent_ledger
             WHERE workspace_id = $1 AND subject_ref = $2 AND recorded_at <= $3
               AND (recorded_at > $4 OR (recorded_at = $4 AND sequence > $5))
             ORDER BY recorded_at, sequence LIMIT $6"
        );
        let out = on_pool!(self, pool => sqlx::query(&sql)
            .bind(workspace)
            .bind(subject_ref)
            .bind(until.unwrap_or(i64::MAX))
            .bind(after_t)
            .bind(to_i64(after_s))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?);
        Ok(out)
    }

    async fn head(&self, workspace: &str) -> Result<Option<(u64, Vec<u8>)>, ConsentError> {
        let row = on_pool!(self, pool => match sqlx::query(
            "SELECT sequence, hash FROM consent_ledger_heads WHERE workspace_id = $1",
        )
        .bind(workspace)
        .fetch_optional(pool)
        .await?
        {
            Some(r) => Some((to_u64(r.try_get("sequence")?), r.try_get::<Vec<u8>, _>("hash")?)),
            None => None,
        });
        Ok(row)
    }

    async fn max_sequence(&self, workspace: &str) -> Result<u64, ConsentError> {
        let max: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT MAX(sequence) FROM consent_ledger WHERE workspace_id = $1",
        )
        .bind(workspace)
        .fetch_one(pool)
        .await?);
        Ok(max.map(to_u64).unwrap_or(0))
    }

    async fn ledger_workspaces(&self) -> Result<Vec<String>, ConsentError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT workspace_id FROM consent_ledger_heads UNION SELECT DISTINCT workspace_id FROM consent_ledger ORDER BY 1",
        )
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    async fn current_states(
        &self,
        workspace: &str,
        subject_ref: &str,
    ) -> Result<Vec<StateRow>, ConsentError> {
        let out = on_pool!(self, pool => sqlx::query(
            "SELECT purpose, decision, lawful_basis, entry_id, sequence, decided_at, expires_at, time_zone
             FROM consent_state WHERE workspace_id = $1 AND subject_ref = $2 ORDER BY purpose",
        )
        .bind(workspace)
        .bind(subject_ref)
        .fetch_all(pool)
        .await?
        .iter()
        .map(state_from_row)
        .collect::<Result<Vec<_>, _>>()?);
        Ok(out)
    }

    async fn insert_request(
        &self,
        workspace: &str,
        row: &DsrRow,
        first: &DsrHistoryRow,
    ) -> Result<Option<DsrRow>, ConsentError> {
        macro_rules! insert {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO dsr_requests (workspace_id, request_id, kind, status, jurisdiction, regime, time_zone, subject_id, submitted_at, due_at, idempotency_key, detail, sealed_corrections)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                     ON CONFLICT DO NOTHING",
                )
                .bind(workspace)
                .bind(&row.request_id)
                .bind(&row.kind)
                .bind(&row.status)
                .bind(&row.jurisdiction)
                .bind(&row.regime)
                .bind(&row.time_zone)
                .bind(&row.subject_id)
                .bind(row.submitted_at)
                .bind(row.due_at)
                .bind(&row.idempotency_key)
                .bind(&row.detail)
                .bind(&row.sealed_corrections)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    let existing = sqlx::query(
                        "SELECT * FROM dsr_requests WHERE workspace_id = $1 AND idempotency_key = $2",
                    )
                    .bind(workspace)
                    .bind(&row.idempotency_key)
                    .fetch_optional(&mut *tx)
                    .await?;
                    tx.rollback().await?;
                    return match existing {
                        Some(r) => Ok(Some(dsr_from_row(&r)?)),
                        None => Err(ConsentError::Conflict("request id already used".into())),
                    };
                }
                sqlx::query(
                    "INSERT INTO dsr_request_history (workspace_id, request_id, position, status, reason, changed_at) VALUES ($1, $2, 0, $3, $4, $5)",
                )
                .bind(workspace)
                .bind(&row.request_id)
                .bind(&first.status)
                .bind(&first.reason)
                .bind(first.changed_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(None)
            }};
        }
        match &self.0 {
            Store::Postgres(pool) => insert!(pool),
            Store::Sqlite(pool) => insert!(pool),
        }
    }

    async fn request_by_idempotency_key(
        &self,
        workspace: &str,
        idempotency_key: &str,
    ) -> Result<Option<DsrRow>, ConsentError> {
        const SELECT: &str =
            "SELECT * FROM dsr_requests WHERE workspace_id = $1 AND idempotency_key = $2";
        let row = match &self.0 {
            Store::Postgres(pool) => sqlx::query(SELECT)
                .bind(workspace)
                .bind(idempotency_key)
                .fetch_optional(pool)
                .await?
                .map(|r| dsr_from_row(&r))
                .transpose()?,
            Store::Sqlite(pool) => sqlx::query(SELECT)
                .bind(workspace)
                .bind(idempotency_key)
                .fetch_optional(pool)
                .await?
                .map(|r| dsr_from_row(&r))
                .transpose()?,
        };
        Ok(row)
    }

    async fn get_request(
        &self,
        workspace: &str,
        request_id: &str,
    ) -> Result<Option<(DsrRow, Vec<DsrHistoryRow>)>, ConsentError> {
        let row = on_pool!(self, pool => match sqlx::query(
            "SELECT * FROM dsr_requests WHERE workspace_id = $1 AND request_id = $2",
        )
        .bind(workspace)
        .bind(request_id)
        .fetch_optional(pool)
        .await?
        {
            Some(r) => Some(dsr_from_row(&r)?),
            None => None,
        });
        let Some(row) = row else {
            return Ok(None);
        };
        let history = self.history(workspace, request_id).await?;
        Ok(Some((row, history)))
    }

    async fn update_request(
        &self,
        workspace: &str,
        row: &DsrRow,
        change: Option<&DsrHistoryRow>,
    ) -> Result<(), ConsentError> {
        macro_rules! update {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                let n = sqlx::query(
                    "UPDATE dsr_requests SET status = $3, due_at = $4, detail = $5 WHERE workspace_id = $1 AND request_id = $2",
                )
                .bind(workspace)
                .bind(&row.request_id)
                .bind(&row.status)
                .bind(row.due_at)
                .bind(&row.detail)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n == 0 {
                    tx.rollback().await?;
                    return Err(ConsentError::NotFound("request".into()));
                }
                if let Some(c) = change {
                    sqlx::query(
                        "INSERT INTO dsr_request_history (workspace_id, request_id, position, status, reason, changed_at)
                         SELECT $1, $2, COALESCE(MAX(position) + 1, 0), $3, $4, $5 FROM dsr_request_history WHERE workspace_id = $1 AND request_id = $2",
                    )
                    .bind(workspace)
                    .bind(&row.request_id)
                    .bind(&c.status)
                    .bind(&c.reason)
                    .bind(c.changed_at)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }};
        }
        match &self.0 {
            Store::Postgres(pool) => update!(pool),
            Store::Sqlite(pool) => update!(pool),
        }
    }

    async fn deadline_counts(
        &self,
        now: i64,
        horizon: i64,
    ) -> Result<(u64, u64, u64), ConsentError> {
        self.deadline_counts_impl(now, horizon).await
    }

    async fn list_requests(
        &self,
        workspace: &str,
        filter: &DsrFilter,
    ) -> Result<Vec<(DsrRow, Vec<DsrHistoryRow>)>, ConsentError> {
        let (after_due, after_id) = filter.after.clone().unwrap_or((i64::MIN, String::new()));
        let sql = format!(
            "SELECT * FROM dsr_requests WHERE workspace_id = $1 AND due_at < $2
               AND (due_at > $3 OR (due_at = $3 AND request_id > $4)){}
             ORDER BY due_at, request_id LIMIT $5",
            statuses_clause(filter.statuses.len(), 6)
        );
        let rows = on_pool!(self, pool => {
            let mut q = sqlx::query(&sql)
                .bind(workspace)
                .bind(filter.due_before.unwrap_or(i64::MAX))
                .bind(after_due)
                .bind(&after_id)
                .bind(i64::from(filter.limit));
            for s in &filter.statuses {
                q = q.bind(s);
            }
            q.fetch_all(pool)
                .await?
                .iter()
                .map(dsr_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let h = self.history(workspace, &r.request_id).await?;
            out.push((r, h));
        }
        Ok(out)
    }
}

impl SqlConsentStore {
    async fn deadline_counts_impl(
        &self,
        now: i64,
        horizon: i64,
    ) -> Result<(u64, u64, u64), ConsentError> {
        let row = on_pool!(self, pool => {
            let r = sqlx::query(
                "SELECT COUNT(*) AS open,
                        COALESCE(SUM(CASE WHEN due_at >= $1 AND due_at < $2 THEN 1 ELSE 0 END), 0) AS nearing,
                        COALESCE(SUM(CASE WHEN due_at < $1 THEN 1 ELSE 0 END), 0) AS overdue
                 FROM dsr_requests WHERE status IN ('received', 'in_progress')",
            )
            .bind(now)
            .bind(horizon)
            .fetch_one(pool)
            .await?;
            (r.try_get::<i64, _>("open")?, r.try_get::<i64, _>("nearing")?, r.try_get::<i64, _>("overdue")?)
        });
        Ok((to_u64(row.0), to_u64(row.1), to_u64(row.2)))
    }

    async fn history(
        &self,
        workspace: &str,
        request_id: &str,
    ) -> Result<Vec<DsrHistoryRow>, ConsentError> {
        let out = on_pool!(self, pool => sqlx::query(
            "SELECT status, reason, changed_at FROM dsr_request_history WHERE workspace_id = $1 AND request_id = $2 ORDER BY position",
        )
        .bind(workspace)
        .bind(request_id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(history_from_row)
        .collect::<Result<Vec<_>, _>>()?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
    const TRAILER: &[u8] = &[0xff, 0xff];

    /// One tuple of `ENTRY_COLUMNS` as PostgreSQL writes it.
    fn tuple(sequence: i64, body: &str, signature: Option<&[u8]>) -> Vec<u8> {
        let mut out = 9i16.to_be_bytes().to_vec();
        let mut field = |value: Option<&[u8]>| match value {
            Some(v) => {
                out.extend_from_slice(&i32::try_from(v.len()).unwrap().to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        };
        field(Some(&sequence.to_be_bytes()));
        field(Some(format!("e{sequence}").as_bytes()));
        field(Some(b"sr_1"));
        field(Some(&(1_700_000_000_000_000i64 + sequence).to_be_bytes()));
        field(Some(body.as_bytes()));
        field(Some(&[1u8; 32]));
        field(Some(&[2u8; 32]));
        let key_version = 7i64.to_be_bytes();
        field(signature.map(|_| &key_version[..]));
        field(signature);
        out
    }

    fn copy_output() -> Vec<u8> {
        let mut all = HEADER.to_vec();
        all.extend(tuple(1, "{\"a\":1}", None));
        all.extend(tuple(2, "{}", Some(&[9u8; 64])));
        all.extend(tuple(3, "", Some(&[9u8; 3])));
        all.extend_from_slice(TRAILER);
        all
    }

    fn parse_in_pieces(all: &[u8], piece: usize) -> Result<EntryChunk, CopyFormatError> {
        let mut parser = CopyParser::default();
        let mut chunk = EntryChunk::default();
        for part in all.chunks(piece) {
            parser.feed(part, &mut chunk)?;
        }
        parser.finish()?;
        Ok(chunk)
    }

    #[test]
    fn copy_tuples_split_anywhere_parse_the_same() {
        let all = copy_output();
        let whole = parse_in_pieces(&all, all.len()).unwrap();
        let entries: Vec<EntryView<'_>> = whole.iter().collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].entry_id, b"e1");
        assert_eq!(entries[0].body, b"{\"a\":1}");
        assert_eq!(entries[0].recorded_at, 1_700_000_000_000_001);
        assert_eq!(entries[0].prev_hash, &[1u8; 32]);
        assert_eq!(entries[0].hash, &[2u8; 32]);
        assert_eq!(entries[0].signature, None);
        assert_eq!(
            entries[1].signature,
            Some(LedgerSignature {
                key_version: 7,
                bytes: [9u8; 64]
            })
        );
        // a signature of the wrong length is kept as one that cannot verify
        assert_eq!(entries[2].signature.map(|s| s.key_version), Some(u32::MAX));
        assert_eq!(entries[2].body, b"");
        for piece in [1, 2, 3, 7, 19, 64] {
            let parsed = parse_in_pieces(&all, piece).unwrap();
            assert_eq!(
                parsed.iter().collect::<Vec<_>>(),
                entries,
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn copy_parsing_refuses_truncated_or_foreign_input() {
        let all = copy_output();
        // cut anywhere before the trailer's end: never a silent success
        for cut in [0, 5, HEADER.len(), HEADER.len() + 10, all.len() - 1] {
            assert!(parse_in_pieces(&all[..cut], 4).is_err(), "cut at {cut}");
        }
        assert!(parse_in_pieces(b"COPY 12\n", 4).is_err());
        let mut extra = all.clone();
        extra.push(0);
        assert!(parse_in_pieces(&extra, 4).is_err());
        let mut wrong_width = HEADER.to_vec();
        wrong_width.extend_from_slice(&8i16.to_be_bytes());
        assert!(parse_in_pieces(&wrong_width, 4).is_err());
        let mut null_body = HEADER.to_vec();
        let mut t = tuple(1, "", None);
        // the body (5th column) becomes NULL: sequence, entry id, subject ref, recorded at
        let body_at = 2 + (4 + 8) + (4 + 2) + (4 + 4) + (4 + 8);
        t.splice(body_at..body_at + 4, (-1i32).to_be_bytes());
        null_body.extend(t);
        null_body.extend_from_slice(TRAILER);
        assert!(parse_in_pieces(&null_body, 1000).is_err());
        let empty = [HEADER, TRAILER].concat();
        assert!(parse_in_pieces(&empty, 3).unwrap().is_empty());
    }
}
