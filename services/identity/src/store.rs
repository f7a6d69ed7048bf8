//! Storage of the identity graph behind [`IdentityStore`], one implementation per backend
//! ([`StoreIdentity`]); both pass `tests/conformance.rs`. Identifiers are stored only as
//! blind indexes plus a sealed copy. PostgreSQL writes a batch with a handful of `UNNEST`
//! statements in one transaction; SQLite loops over prepared statements in one transaction.
//! One exception: a consumer delivery's new edges are committed on a second PostgreSQL
//! connection just before the delivery's transaction, and are read only once that
//! transaction has raised `edges_through` over them (`copy_edges_beside`): readers still
//! see a delivery's changes all at once or not at all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use meridian_bus::Tx;
use meridian_store::sqlx::pool::PoolConnection;
use meridian_store::sqlx::{
    self, Connection as _, PgConnection, PgPool, Postgres, Row, SqliteConnection, SqlitePool,
};
use meridian_store::{BinaryCopy, COPY_MIN_ROWS, Store};
use meridian_vault::BlindIndex;
use uuid::Uuid;

use crate::computed::{Activity, AiplRules, AiplStage, RfmBoundaries, RfmFigures, summarize};
use crate::error::IdentityError;
use crate::graph::{Conflict, ConflictReason, Edge, LinkRule, NodeState, ProfileId};
use crate::identifier::{IdentifierType, NodeKey};

/// A copy of the normalized value sealed by the vault under `subject`, bound to `record`
/// and `field` (the room's own copies: `identity:<kind>:<index hex>` / `value`; copies
/// ingest sealed: the event id / `identifiers.<position>`).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedValue {
    pub subject: String,
    pub record: String,
    pub field: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedValue")
            .field("subject", &self.subject)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// A stored identifier (graph node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifierRow {
    pub state: NodeState,
    /// Issuing system of a storefront customer id.
    pub source: String,
    /// Set when the node is first written; later upserts keep the stored copy.
    pub sealed: Option<SealedValue>,
}

/// A stored profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileRow {
    pub profile: ProfileId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub merged_into: Option<ProfileId>,
}

/// One atomic write of graph changes.
#[derive(Debug, Default, Clone)]
pub struct ChangeBatch {
    /// Identifiers changed or created (unique keys): upserted.
    pub identifiers: Vec<IdentifierRow>,
    /// Identifiers this batch created, not stored before it (unique keys, none of them in
    /// `identifiers`): inserted, PostgreSQL by binary `COPY` from [`COPY_MIN_ROWS`] on. A
    /// key already stored fails the write (the graph and the store disagree).
    pub new_identifiers: Vec<IdentifierRow>,
    /// Identifiers removed (applied before the upserts).
    pub removed_identifiers: Vec<NodeKey>,
    pub new_edges: Vec<Edge>,
    pub removed_edges: Vec<u64>,
    pub conflicts: Vec<Conflict>,
    pub created_profiles: Vec<(ProfileId, DateTime<Utc>)>,
    /// (absorbed, into, when).
    pub merged_profiles: Vec<(ProfileId, ProfileId, DateTime<Utc>)>,
    /// Profiles whose membership changed, stamped `updated_at`.
    pub touched_profiles: Vec<ProfileId>,
    /// When the batch was applied.
    pub at: DateTime<Utc>,
    /// Sealed identify payloads to keep (traits).
    pub trait_payloads: Vec<TraitPayloadRow>,
    /// Activity rows to keep (computed traits).
    pub activity: Vec<ActivityRow>,
    /// Profiles whose anchored rows (trait payloads, activity) must follow their anchors
    /// (absorbed, split or shrunk profiles); rows whose anchor is gone are deleted.
    pub rehome: Vec<ProfileId>,
    /// Profile rows to delete (erasure).
    pub deleted_profiles: Vec<ProfileId>,
    /// Events announcing the change (`ProfileChanged`), written to the outbox.
    pub events: Vec<meridian_bus::OutboxEvent>,
}

/// The sealed traits of one identify event, anchored at the identifier that carried it.
#[derive(Clone, PartialEq, Eq)]
pub struct TraitPayloadRow {
    pub event_id: String,
    pub profile: ProfileId,
    pub anchor: NodeKey,
    /// The storefront (source) that sent the event, for source priority.
    pub source: String,
    pub observed_micros: i64,
    pub sealed_subject: String,
    pub sealed_traits: Vec<u8>,
}

impl std::fmt::Debug for TraitPayloadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraitPayloadRow")
            .field("event_id", &self.event_id)
            .field("profile", &self.profile)
            .field("source", &self.source)
            .field("observed_micros", &self.observed_micros)
            .finish_non_exhaustive()
    }
}

/// One activity of a profile (an order, or the first event of an AIPL stage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityRow {
    pub event_id: String,
    pub profile: ProfileId,
    pub anchor: NodeKey,
    pub activity: Activity,
}

/// RFM of a profile in one currency, with its scores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RfmRow {
    pub figures: RfmFigures,
    pub recency_score: u8,
    pub frequency_score: u8,
    pub monetary_score: u8,
}

/// A profile's computed traits, as stored (the audience read model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputedRow {
    pub profile: ProfileId,
    pub stage: AiplStage,
    pub orders: u64,
    pub last_order_micros: Option<i64>,
    pub rfm: Vec<RfmRow>,
}

/// The whole graph of a workspace: nodes, edges in `seq` order, and its version.
pub type StoredGraph = (Vec<NodeState>, Vec<Edge>, i64);

#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// Writes a batch atomically in its own transaction if the workspace's graph is still at
    /// `expected_version`; returns the new version, or [`IdentityError::StaleGraph`] (nothing
    /// written) when another writer moved it.
    async fn apply(
        &self,
        workspace: &str,
        batch: &ChangeBatch,
        rules: &AiplRules,
        expected_version: i64,
    ) -> Result<i64, IdentityError>;
    /// Writes a batch inside the caller's transaction (a bus consumer's); bump the version
    /// first with [`IdentityStore::bump_version`].
    async fn apply_in(
        &self,
        tx: &mut Tx<'_>,
        workspace: &str,
        batch: &ChangeBatch,
        rules: &AiplRules,
    ) -> Result<(), IdentityError>;
    /// Bumps the workspace's graph version inside `tx` (locking it until commit) and
    /// returns the new version.
    async fn bump_version(&self, tx: &mut Tx<'_>, workspace: &str) -> Result<i64, IdentityError>;
    /// The AIPL stage stored for each of `profiles` that has computed traits, read in `tx`.
    async fn stages_in(
        &self,
        tx: &mut Tx<'_>,
        workspace: &str,
        profiles: &[ProfileId],
    ) -> Result<HashMap<ProfileId, AiplStage>, IdentityError>;
    /// The whole graph of a workspace.
    async fn load_graph(&self, workspace: &str) -> Result<StoredGraph, IdentityError>;
    /// The whole graph of a workspace, read inside `tx` (sees its uncommitted writes).
    async fn load_graph_in(
        &self,
        tx: &mut Tx<'_>,
        workspace: &str,
    ) -> Result<StoredGraph, IdentityError>;
    /// The identifiers (of any type) with this blind index.
    async fn identifiers_by_index(
        &self,
        workspace: &str,
        index: &BlindIndex,
    ) -> Result<Vec<IdentifierRow>, IdentityError>;
    /// The sealed identify payloads a profile's traits are read from.
    async fn trait_payloads_of(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<Vec<TraitPayloadRow>, IdentityError>;
    /// A profile's computed traits (`None` before any counted activity).
    async fn computed_of(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<Option<ComputedRow>, IdentityError>;
    async fn identifier(
        &self,
        workspace: &str,
        key: &NodeKey,
    ) -> Result<Option<IdentifierRow>, IdentityError>;
    async fn profile(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<Option<ProfileRow>, IdentityError>;
    /// A profile's identifiers, in order of first sight.
    async fn identifiers_of(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<Vec<IdentifierRow>, IdentityError>;
    /// A profile's edges, in `seq` order.
    async fn edges_of(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<Vec<Edge>, IdentityError>;
    /// Conflicts touching any identifier of a profile, oldest first.
    async fn conflicts_of(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<Vec<Conflict>, IdentityError>;
    /// Refreshes the planner's statistics of the identity tables (PostgreSQL `ANALYZE`),
    /// after a workspace's graph outgrew them. Nothing to do by default.
    async fn refresh_statistics(&self) -> Result<(), IdentityError> {
        Ok(())
    }
}

/// The identity store of an open [`Store`].
pub fn identity_store(store: &Store) -> Arc<dyn IdentityStore> {
    match store {
        Store::Postgres(pool) => Arc::new(StoreIdentity::Postgres(pool.clone())),
        Store::Sqlite(pool) => Arc::new(StoreIdentity::Sqlite(pool.clone())),
    }
}

/// [`IdentityStore`] over either backend.
#[derive(Debug, Clone)]
pub enum StoreIdentity {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

fn kind_of(code: i16) -> Result<IdentifierType, IdentityError> {
    IdentifierType::from_code(i32::from(code))
        .ok_or_else(|| IdentityError::Corrupt(format!("unknown identifier kind {code}")))
}

fn index_of(bytes: &[u8]) -> Result<BlindIndex, IdentityError> {
    BlindIndex::from_slice(bytes).ok_or_else(|| IdentityError::Corrupt("blind index length".into()))
}

fn key_of(kind: i16, index: &[u8]) -> Result<NodeKey, IdentityError> {
    Ok(NodeKey {
        kind: kind_of(kind)?,
        index: index_of(index)?,
    })
}

fn users_to_bytes(users: &[BlindIndex]) -> Vec<u8> {
    users.iter().flat_map(|u| u.0).collect()
}

fn users_from_bytes(bytes: &[u8]) -> Result<Vec<BlindIndex>, IdentityError> {
    if !bytes.len().is_multiple_of(32) {
        return Err(IdentityError::Corrupt("seen user ids length".into()));
    }
    bytes.chunks_exact(32).map(index_of).collect()
}

macro_rules! identifier_from_row {
    ($row:expr) => {{
        let row = $row;
        let kind: i16 = row.try_get(0)?;
        let index: Vec<u8> = row.try_get(1)?;
        let profile: Uuid = row.try_get(2)?;
        let subject: Option<String> = row.try_get(4)?;
        let sealed: Option<Vec<u8>> = row.try_get(5)?;
        let record: Option<String> = row.try_get(9)?;
        let field: Option<String> = row.try_get(10)?;
        let key = key_of(kind, &index)?;
        Ok::<_, IdentityError>(IdentifierRow {
            state: NodeState {
                key,
                profile: ProfileId(profile),
                first_seen: row.try_get(6)?,
                shared: row.try_get(7)?,
                seen_user_ids: users_from_bytes(&row.try_get::<Vec<u8>, _>(8)?)?,
            },
            source: row.try_get(3)?,
            sealed: match (subject, sealed) {
                (Some(subject), Some(bytes)) => Some(SealedValue {
                    subject,
                    record: record.unwrap_or_else(|| crate::room::own_record_id(&key)),
                    field: field.unwrap_or_else(|| crate::room::OWN_SEALED_FIELD.to_owned()),
                    bytes,
                }),
                _ => None,
            },
        })
    }};
}

fn edge_from_parts(
    seq: i64,
    from: NodeKey,
    to: NodeKey,
    rule: &str,
    event_id: String,
    at: DateTime<Utc>,
) -> Result<Edge, IdentityError> {
    Ok(Edge {
        seq: u64::try_from(seq).map_err(|_| IdentityError::Corrupt("edge seq".into()))?,
        from,
        to,
        rule: LinkRule::parse(rule)
            .ok_or_else(|| IdentityError::Corrupt(format!("unknown rule {rule}")))?,
        event_id,
        at,
    })
}

macro_rules! edge_from_row {
    ($row:expr) => {{
        let row = $row;
        edge_from_parts(
            row.try_get::<i64, _>(0)?,
            key_of(row.try_get::<i16, _>(1)?, &row.try_get::<Vec<u8>, _>(2)?)?,
            key_of(row.try_get::<i16, _>(3)?, &row.try_get::<Vec<u8>, _>(4)?)?,
            &row.try_get::<String, _>(5)?,
            row.try_get::<String, _>(6)?,
            row.try_get::<DateTime<Utc>, _>(7)?,
        )
    }};
}

macro_rules! conflict_from_row {
    ($row:expr) => {{
        let row = $row;
        let rule: String = row.try_get(4)?;
        let reason: String = row.try_get(7)?;
        Ok::<_, IdentityError>(Conflict {
            from: key_of(row.try_get::<i16, _>(0)?, &row.try_get::<Vec<u8>, _>(1)?)?,
            to: key_of(row.try_get::<i16, _>(2)?, &row.try_get::<Vec<u8>, _>(3)?)?,
            rule: LinkRule::parse(&rule)
                .ok_or_else(|| IdentityError::Corrupt(format!("unknown rule {rule}")))?,
            event_id: row.try_get(5)?,
            at: row.try_get(6)?,
            reason: ConflictReason::from_stored(&reason)
                .ok_or_else(|| IdentityError::Corrupt(format!("unknown reason {reason}")))?,
        })
    }};
}

const SELECT_IDENTIFIER: &str = "SELECT kind, blind_index, profile_id, source, sealed_subject, sealed_value, first_seen_at, shared, seen_user_ids, sealed_record, sealed_field \
     FROM identity_identifiers WHERE workspace_id = $1 AND kind = $2 AND blind_index = $3";
const SELECT_IDENTIFIERS_OF: &str = "SELECT kind, blind_index, profile_id, source, sealed_subject, sealed_value, first_seen_at, shared, seen_user_ids, sealed_record, sealed_field \
     FROM identity_identifiers WHERE workspace_id = $1 AND profile_id = $2 ORDER BY first_seen_at, kind, blind_index";
const SELECT_ALL_IDENTIFIERS: &str = "SELECT kind, blind_index, profile_id, source, sealed_subject, sealed_value, first_seen_at, shared, seen_user_ids, sealed_record, sealed_field \
     FROM identity_identifiers WHERE workspace_id = $1";
const EDGE_COLUMNS: &str =
    "e.seq, e.from_kind, e.from_index, e.to_kind, e.to_index, e.rule, e.event_id, e.linked_at";
const SELECT_PROFILE: &str = "SELECT profile_id, created_at, updated_at, merged_into FROM identity_profiles \
     WHERE workspace_id = $1 AND profile_id = $2";

/// The highest edge `seq` of the committed graph of workspace `$1`: an edge above it was
/// copied beside a delivery that has not committed (see [`copy_edges_beside`]).
const EDGES_THROUGH: &str =
    "COALESCE((SELECT edges_through FROM identity_graph_versions WHERE workspace_id = $1), -1)";

fn select_edges_of() -> String {
    format!(
        "SELECT {EDGE_COLUMNS} FROM identity_edges e JOIN identity_identifiers i \
         ON i.workspace_id = e.workspace_id AND i.kind = e.from_kind AND i.blind_index = e.from_index \
         WHERE e.workspace_id = $1 AND i.profile_id = $2 AND e.seq <= {EDGES_THROUGH} ORDER BY e.seq"
    )
}

fn select_all_edges() -> String {
    format!(
        "SELECT {EDGE_COLUMNS} FROM identity_edges e \
         WHERE e.workspace_id = $1 AND e.seq <= {EDGES_THROUGH} ORDER BY e.seq"
    )
}

/// Edges above the committed graph's: left by a delivery whose transaction rolled back
/// after its edges were copied beside it. Deleted before a workspace's edges are written
/// (their `seq`s are handed out again) and when identifiers are removed.
fn delete_uncommitted_edges() -> String {
    format!("DELETE FROM identity_edges WHERE workspace_id = $1 AND seq > {EDGES_THROUGH}")
}

/// Raises the committed graph's highest edge `seq` (in the writing transaction, whose
/// version bump holds the row).
const RAISE_EDGES_THROUGH: &str = "UPDATE identity_graph_versions SET edges_through = $2 \
     WHERE workspace_id = $1 AND (edges_through IS NULL OR edges_through < $2)";

const SELECT_CONFLICTS_OF: &str = "SELECT c.from_kind, c.from_index, c.to_kind, c.to_index, c.rule, c.event_id, c.seen_at, c.reason, c.conflict_id \
     FROM identity_conflicts c WHERE c.workspace_id = $1 AND (EXISTS (SELECT 1 FROM identity_identifiers i \
       WHERE i.workspace_id = c.workspace_id AND i.profile_id = $2 AND i.kind = c.from_kind AND i.blind_index = c.from_index) \
     OR EXISTS (SELECT 1 FROM identity_identifiers i \
       WHERE i.workspace_id = c.workspace_id AND i.profile_id = $2 AND i.kind = c.to_kind AND i.blind_index = c.to_index)) \
     ORDER BY c.conflict_id";

const UPSERT_IDENTIFIER_SQLITE: &str = "INSERT INTO identity_identifiers \
     (workspace_id, kind, blind_index, profile_id, source, sealed_subject, sealed_value, first_seen_at, shared, seen_user_ids, sealed_record, sealed_field) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (workspace_id, kind, blind_index) DO UPDATE SET profile_id = excluded.profile_id, \
       shared = excluded.shared, seen_user_ids = excluded.seen_user_ids, \
       sealed_subject = COALESCE(identity_identifiers.sealed_subject, excluded.sealed_subject), \
       sealed_value = COALESCE(identity_identifiers.sealed_value, excluded.sealed_value), \
       sealed_record = CASE WHEN identity_identifiers.sealed_value IS NULL THEN excluded.sealed_record ELSE identity_identifiers.sealed_record END, \
       sealed_field = CASE WHEN identity_identifiers.sealed_value IS NULL THEN excluded.sealed_field ELSE identity_identifiers.sealed_field END";
const UPSERT_IDENTIFIERS_PG: &str = "INSERT INTO identity_identifiers \
     (workspace_id, kind, blind_index, profile_id, source, sealed_subject, sealed_value, first_seen_at, shared, seen_user_ids, sealed_record, sealed_field) \
     SELECT $1, * FROM UNNEST($2::int2[], $3::bytea[], $4::uuid[], $5::text[], $6::text[], $7::bytea[], $8::timestamptz[], $9::bool[], $10::bytea[], $11::text[], $12::text[]) \
     ON CONFLICT (workspace_id, kind, blind_index) DO UPDATE SET profile_id = excluded.profile_id, \
       shared = excluded.shared, seen_user_ids = excluded.seen_user_ids, \
       sealed_subject = COALESCE(identity_identifiers.sealed_subject, excluded.sealed_subject), \
       sealed_value = COALESCE(identity_identifiers.sealed_value, excluded.sealed_value), \
       sealed_record = CASE WHEN identity_identifiers.sealed_value IS NULL THEN excluded.sealed_record ELSE identity_identifiers.sealed_record END, \
       sealed_field = CASE WHEN identity_identifiers.sealed_value IS NULL THEN excluded.sealed_field ELSE identity_identifiers.sealed_field END";
const INSERT_EDGE_SQLITE: &str = "INSERT INTO identity_edges \
     (workspace_id, seq, from_kind, from_index, to_kind, to_index, rule, event_id, linked_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const INSERT_EDGES_PG: &str = "INSERT INTO identity_edges \
     (workspace_id, seq, from_kind, from_index, to_kind, to_index, rule, event_id, linked_at) \
     SELECT $1, * FROM UNNEST($2::int8[], $3::int2[], $4::bytea[], $5::int2[], $6::bytea[], $7::text[], $8::text[], $9::timestamptz[])";
const INSERT_CONFLICT_SQLITE: &str = "INSERT INTO identity_conflicts \
     (workspace_id, from_kind, from_index, to_kind, to_index, rule, event_id, seen_at, reason) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const INSERT_CONFLICTS_PG: &str = "INSERT INTO identity_conflicts \
     (workspace_id, from_kind, from_index, to_kind, to_index, rule, event_id, seen_at, reason) \
     SELECT $1, * FROM UNNEST($2::int2[], $3::bytea[], $4::int2[], $5::bytea[], $6::text[], $7::text[], $8::timestamptz[], $9::text[])";
const INSERT_PROFILE_SQLITE: &str = "INSERT INTO identity_profiles (workspace_id, profile_id, created_at, updated_at) \
     VALUES ($1, $2, $3, $3) ON CONFLICT DO NOTHING";
const INSERT_PROFILES_PG: &str = "INSERT INTO identity_profiles (workspace_id, profile_id, created_at, updated_at) \
     SELECT $1, * FROM UNNEST($2::uuid[], $3::timestamptz[], $4::timestamptz[]) ON CONFLICT DO NOTHING";
const MERGE_PROFILE_SQLITE: &str = "UPDATE identity_profiles SET merged_into = $3, updated_at = $4 \
     WHERE workspace_id = $1 AND profile_id = $2";
const MERGE_PROFILES_PG: &str = "UPDATE identity_profiles p SET merged_into = u.i, updated_at = u.t \
     FROM UNNEST($2::uuid[], $3::uuid[], $4::timestamptz[]) AS u(a, i, t) \
     WHERE p.workspace_id = $1 AND p.profile_id = u.a";
const TOUCH_PROFILE_SQLITE: &str = "UPDATE identity_profiles SET updated_at = $3, merged_into = NULL \
     WHERE workspace_id = $1 AND profile_id = $2";
const TOUCH_PROFILES_PG: &str = "UPDATE identity_profiles SET updated_at = $3, merged_into = NULL \
     WHERE workspace_id = $1 AND profile_id = ANY($2::uuid[])";
const DELETE_IDENTIFIER: &str =
    "DELETE FROM identity_identifiers WHERE workspace_id = $1 AND kind = $2 AND blind_index = $3";
const DELETE_CONFLICTS_OF: &str = "DELETE FROM identity_conflicts WHERE workspace_id = $1 \
     AND ((from_kind = $2 AND from_index = $3) OR (to_kind = $2 AND to_index = $3))";
const DELETE_EDGE: &str = "DELETE FROM identity_edges WHERE workspace_id = $1 AND seq = $2";
const DELETE_EDGES_PG: &str =
    "DELETE FROM identity_edges WHERE workspace_id = $1 AND seq = ANY($2::int8[])";

fn seq_i64(seq: u64) -> Result<i64, IdentityError> {
    i64::try_from(seq).map_err(|_| IdentityError::Corrupt("edge seq overflow".into()))
}

const COPY_PROFILES: &str = "COPY identity_profiles (workspace_id, profile_id, created_at, updated_at) FROM STDIN (FORMAT binary)";
const COPY_IDENTIFIERS: &str = "COPY identity_identifiers \
     (workspace_id, kind, blind_index, profile_id, source, sealed_subject, sealed_value, first_seen_at, shared, seen_user_ids, sealed_record, sealed_field) \
     FROM STDIN (FORMAT binary)";
const COPY_EDGES: &str = "COPY identity_edges \
     (workspace_id, seq, from_kind, from_index, to_kind, to_index, rule, event_id, linked_at) \
     FROM STDIN (FORMAT binary)";
const COPY_CONFLICTS: &str = "COPY identity_conflicts \
     (workspace_id, from_kind, from_index, to_kind, to_index, rule, event_id, seen_at, reason) \
     FROM STDIN (FORMAT binary)";

fn copy_error(e: meridian_store::CopyDataError) -> IdentityError {
    IdentityError::Database(sqlx::Error::Encode(e.into()))
}

/// A nullable text or bytea field.
fn copy_opt(data: &mut BinaryCopy, value: Option<&[u8]>) -> Result<(), IdentityError> {
    match value {
        Some(v) => data.bytes(v).map_err(copy_error),
        None => {
            data.null();
            Ok(())
        }
    }
}

fn copy_identifiers(ws: &str, rows: &[IdentifierRow]) -> Result<BinaryCopy, IdentityError> {
    let mut data = BinaryCopy::with_capacity(rows.len() * (200 + ws.len()));
    for r in rows {
        let sealed = r.sealed.as_ref();
        data.row(12);
        data.bytes(ws.as_bytes()).map_err(copy_error)?;
        data.int2(r.state.key.kind.code());
        data.bytes(&r.state.key.index.0).map_err(copy_error)?;
        data.bytes(r.state.profile.0.as_bytes())
            .map_err(copy_error)?;
        data.bytes(r.source.as_bytes()).map_err(copy_error)?;
        copy_opt(&mut data, sealed.map(|s| s.subject.as_bytes()))?;
        copy_opt(&mut data, sealed.map(|s| s.bytes.as_slice()))?;
        data.timestamptz(r.state.first_seen).map_err(copy_error)?;
        data.bool(r.state.shared);
        data.bytes(&users_to_bytes(&r.state.seen_user_ids))
            .map_err(copy_error)?;
        copy_opt(&mut data, sealed.map(|s| s.record.as_bytes()))?;
        copy_opt(&mut data, sealed.map(|s| s.field.as_bytes()))?;
    }
    Ok(data)
}

fn copy_edges(ws: &str, edges: &[Edge]) -> Result<BinaryCopy, IdentityError> {
    let mut data = BinaryCopy::with_capacity(edges.len() * (150 + ws.len()));
    for e in edges {
        data.row(9);
        data.bytes(ws.as_bytes()).map_err(copy_error)?;
        data.int8(seq_i64(e.seq)?);
        data.int2(e.from.kind.code());
        data.bytes(&e.from.index.0).map_err(copy_error)?;
        data.int2(e.to.kind.code());
        data.bytes(&e.to.index.0).map_err(copy_error)?;
        data.bytes(e.rule.as_str().as_bytes()).map_err(copy_error)?;
        data.bytes(e.event_id.as_bytes()).map_err(copy_error)?;
        data.timestamptz(e.at).map_err(copy_error)?;
    }
    Ok(data)
}

fn copy_conflicts(ws: &str, conflicts: &[Conflict]) -> Result<BinaryCopy, IdentityError> {
    let mut data = BinaryCopy::with_capacity(conflicts.len() * (160 + ws.len()));
    for c in conflicts {
        data.row(9);
        data.bytes(ws.as_bytes()).map_err(copy_error)?;
        data.int2(c.from.kind.code());
        data.bytes(&c.from.index.0).map_err(copy_error)?;
        data.int2(c.to.kind.code());
        data.bytes(&c.to.index.0).map_err(copy_error)?;
        data.bytes(c.rule.as_str().as_bytes()).map_err(copy_error)?;
        data.bytes(c.event_id.as_bytes()).map_err(copy_error)?;
        data.timestamptz(c.at).map_err(copy_error)?;
        data.bytes(c.reason.to_stored().as_bytes())
            .map_err(copy_error)?;
    }
    Ok(data)
}

/// Profile rows: (profile, created_at, updated_at).
fn copy_profiles(
    ws: &str,
    profiles: &[(ProfileId, DateTime<Utc>, DateTime<Utc>)],
) -> Result<BinaryCopy, IdentityError> {
    let mut data = BinaryCopy::with_capacity(profiles.len() * (60 + ws.len()));
    for (p, created_at, updated_at) in profiles {
        data.row(4);
        data.bytes(ws.as_bytes()).map_err(copy_error)?;
        data.bytes(p.0.as_bytes()).map_err(copy_error)?;
        data.timestamptz(*created_at).map_err(copy_error)?;
        data.timestamptz(*updated_at).map_err(copy_error)?;
    }
    Ok(data)
}

/// Upserts identifier rows with one `UNNEST` statement (PostgreSQL).
async fn upsert_identifiers_pg(
    tx: &mut PgConnection,
    ws: &str,
    rows: &[&IdentifierRow],
) -> Result<(), IdentityError> {
    let n = rows.len();
    let (mut kinds, mut idx, mut profiles, mut sources) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut subjects, mut sealed, mut firsts, mut shared, mut users) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut records, mut fields) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for r in rows {
        kinds.push(r.state.key.kind.code());
        idx.push(r.state.key.index.0.as_slice());
        profiles.push(r.state.profile.0);
        sources.push(r.source.as_str());
        subjects.push(r.sealed.as_ref().map(|s| s.subject.as_str()));
        sealed.push(r.sealed.as_ref().map(|s| s.bytes.as_slice()));
        firsts.push(r.state.first_seen);
        shared.push(r.state.shared);
        users.push(users_to_bytes(&r.state.seen_user_ids));
        records.push(r.sealed.as_ref().map(|s| s.record.as_str()));
        fields.push(r.sealed.as_ref().map(|s| s.field.as_str()));
    }
    sqlx::query(UPSERT_IDENTIFIERS_PG)
        .bind(ws)
        .bind(kinds)
        .bind(idx)
        .bind(profiles)
        .bind(sources)
        .bind(subjects)
        .bind(sealed)
        .bind(firsts)
        .bind(shared)
        .bind(users)
        .bind(records)
        .bind(fields)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

impl StoreIdentity {
    /// `edges_copied`: the batch's new edges were committed beside this transaction
    /// ([`copy_edges_beside`]).
    async fn apply_postgres(
        tx: &mut PgConnection,
        ws: &str,
        b: &ChangeBatch,
        edges_copied: bool,
    ) -> Result<(), IdentityError> {
        // A created profile that is also touched is written touched (`updated_at` = the
        // batch's time) rather than inserted and then updated.
        let created: HashSet<ProfileId> = b.created_profiles.iter().map(|(p, _)| *p).collect();
        let touched: HashSet<ProfileId> = b.touched_profiles.iter().copied().collect();
        let created_rows: Vec<(ProfileId, DateTime<Utc>, DateTime<Utc>)> = b
            .created_profiles
            .iter()
            .map(|(p, t)| (*p, *t, if touched.contains(p) { b.at } else { *t }))
            .collect();
        if created_rows.len() >= COPY_MIN_ROWS {
            copy_profiles(ws, &created_rows)?
                .send(tx, COPY_PROFILES)
                .await?;
        } else if !created_rows.is_empty() {
            let (mut ids, mut created_at, mut updated_at) = (vec![], vec![], vec![]);
            for (p, c, u) in &created_rows {
                ids.push(p.0);
                created_at.push(*c);
                updated_at.push(*u);
            }
            sqlx::query(INSERT_PROFILES_PG)
                .bind(ws)
                .bind(ids)
                .bind(created_at)
                .bind(updated_at)
                .execute(&mut *tx)
                .await?;
        }
        for k in &b.removed_identifiers {
            sqlx::query(DELETE_IDENTIFIER)
                .bind(ws)
                .bind(k.kind.code())
                .bind(k.index.0.as_slice())
                .execute(&mut *tx)
                .await?;
            sqlx::query(DELETE_CONFLICTS_OF)
                .bind(ws)
                .bind(k.kind.code())
                .bind(k.index.0.as_slice())
                .execute(&mut *tx)
                .await?;
        }
        if !b.removed_edges.is_empty() {
            let seqs = b
                .removed_edges
                .iter()
                .map(|s| seq_i64(*s))
                .collect::<Result<Vec<_>, _>>()?;
            sqlx::query(DELETE_EDGES_PG)
                .bind(ws)
                .bind(seqs)
                .execute(&mut *tx)
                .await?;
        }
        // New identifiers by COPY when there are enough of them; the rest (and a few new
        // ones) in one upsert.
        let mut upserts: Vec<&IdentifierRow> = b.identifiers.iter().collect();
        if b.new_identifiers.len() >= COPY_MIN_ROWS {
            copy_identifiers(ws, &b.new_identifiers)?
                .send(tx, COPY_IDENTIFIERS)
                .await?;
        } else {
            upserts.extend(&b.new_identifiers);
        }
        if !upserts.is_empty() {
            upsert_identifiers_pg(tx, ws, &upserts).await?;
        }
        // Before writing edges (their `seq`s are handed out again), and before an erasure
        // or correction completes (a leftover may hold the removed identifier).
        if (!b.new_edges.is_empty() || !b.removed_identifiers.is_empty()) && !edges_copied {
            sqlx::query(&delete_uncommitted_edges())
                .bind(ws)
                .execute(&mut *tx)
                .await?;
        }
        if edges_copied {
            // Committed beside this transaction, just now.
        } else if b.new_edges.len() >= COPY_MIN_ROWS {
            copy_edges(ws, &b.new_edges)?.send(tx, COPY_EDGES).await?;
        } else if !b.new_edges.is_empty() {
            let mut seqs = Vec::with_capacity(b.new_edges.len());
            let (mut fk, mut fi, mut tk, mut ti, mut rules, mut events, mut ats) =
                (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
            for e in &b.new_edges {
                seqs.push(seq_i64(e.seq)?);
                fk.push(e.from.kind.code());
                fi.push(e.from.index.0.as_slice());
                tk.push(e.to.kind.code());
                ti.push(e.to.index.0.as_slice());
                rules.push(e.rule.as_str());
                events.push(e.event_id.as_str());
                ats.push(e.at);
            }
            sqlx::query(INSERT_EDGES_PG)
                .bind(ws)
                .bind(seqs)
                .bind(fk)
                .bind(fi)
                .bind(tk)
                .bind(ti)
                .bind(rules)
                .bind(events)
                .bind(ats)
                .execute(&mut *tx)
                .await?;
        }
        if b.conflicts.len() >= COPY_MIN_ROWS {
            copy_conflicts(ws, &b.conflicts)?
                .send(tx, COPY_CONFLICTS)
                .await?;
        } else if !b.conflicts.is_empty() {
            let (mut fk, mut fi, mut tk, mut ti, mut rules, mut events, mut ats, mut reasons) = (
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
            );
            for c in &b.conflicts {
                fk.push(c.from.kind.code());
                fi.push(c.from.index.0.as_slice());
                tk.push(c.to.kind.code());
                ti.push(c.to.index.0.as_slice());
                rules.push(c.rule.as_str());
                events.push(c.event_id.as_str());
                ats.push(c.at);
                reasons.push(c.reason.to_stored());
            }
            sqlx::query(INSERT_CONFLICTS_PG)
                .bind(ws)
                .bind(fk)
                .bind(fi)
                .bind(tk)
                .bind(ti)
                .bind(rules)
                .bind(events)
                .bind(ats)
                .bind(reasons)
                .execute(&mut *tx)
                .await?;
        }
        if !b.merged_profiles.is_empty() {
            let (mut a, mut i, mut t) = (vec![], vec![], vec![]);
            for (absorbed, into, at) in &b.merged_profiles {
                a.push(absorbed.0);
                i.push(into.0);
                t.push(*at);
            }
            sqlx::query(MERGE_PROFILES_PG)
                .bind(ws)
                .bind(a)
                .bind(i)
                .bind(t)
                .execute(&mut *tx)
                .await?;
        }
        let ids: Vec<Uuid> = b
            .touched_profiles
            .iter()
            .filter(|p| !created.contains(p))
            .map(|p| p.0)
            .collect();
        if !ids.is_empty() {
            sqlx::query(TOUCH_PROFILES_PG)
                .bind(ws)
                .bind(ids)
                .bind(b.at)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    async fn apply_sqlite(
        tx: &mut SqliteConnection,
        ws: &str,
        b: &ChangeBatch,
    ) -> Result<(), IdentityError> {
        for (p, at) in &b.created_profiles {
            sqlx::query(INSERT_PROFILE_SQLITE)
                .bind(ws)
                .bind(p.0)
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        for k in &b.removed_identifiers {
            sqlx::query(DELETE_IDENTIFIER)
                .bind(ws)
                .bind(k.kind.code())
                .bind(k.index.0.as_slice())
                .execute(&mut *tx)
                .await?;
            sqlx::query(DELETE_CONFLICTS_OF)
                .bind(ws)
                .bind(k.kind.code())
                .bind(k.index.0.as_slice())
                .execute(&mut *tx)
                .await?;
        }
        for s in &b.removed_edges {
            sqlx::query(DELETE_EDGE)
                .bind(ws)
                .bind(seq_i64(*s)?)
                .execute(&mut *tx)
                .await?;
        }
        for r in b.identifiers.iter().chain(&b.new_identifiers) {
            sqlx::query(UPSERT_IDENTIFIER_SQLITE)
                .bind(ws)
                .bind(r.state.key.kind.code())
                .bind(r.state.key.index.0.as_slice())
                .bind(r.state.profile.0)
                .bind(&r.source)
                .bind(r.sealed.as_ref().map(|s| s.subject.as_str()))
                .bind(r.sealed.as_ref().map(|s| s.bytes.as_slice()))
                .bind(r.state.first_seen)
                .bind(r.state.shared)
                .bind(users_to_bytes(&r.state.seen_user_ids))
                .bind(r.sealed.as_ref().map(|s| s.record.as_str()))
                .bind(r.sealed.as_ref().map(|s| s.field.as_str()))
                .execute(&mut *tx)
                .await?;
        }
        for e in &b.new_edges {
            sqlx::query(INSERT_EDGE_SQLITE)
                .bind(ws)
                .bind(seq_i64(e.seq)?)
                .bind(e.from.kind.code())
                .bind(e.from.index.0.as_slice())
                .bind(e.to.kind.code())
                .bind(e.to.index.0.as_slice())
                .bind(e.rule.as_str())
                .bind(&e.event_id)
                .bind(e.at)
                .execute(&mut *tx)
                .await?;
        }
        for c in &b.conflicts {
            sqlx::query(INSERT_CONFLICT_SQLITE)
                .bind(ws)
                .bind(c.from.kind.code())
                .bind(c.from.index.0.as_slice())
                .bind(c.to.kind.code())
                .bind(c.to.index.0.as_slice())
                .bind(c.rule.as_str())
                .bind(&c.event_id)
                .bind(c.at)
                .bind(c.reason.to_stored())
                .execute(&mut *tx)
                .await?;
        }
        for (absorbed, into, at) in &b.merged_profiles {
            sqlx::query(MERGE_PROFILE_SQLITE)
                .bind(ws)
                .bind(absorbed.0)
                .bind(into.0)
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        for p in &b.touched_profiles {
            sqlx::query(TOUCH_PROFILE_SQLITE)
                .bind(ws)
                .bind(p.0)
                .bind(b.at)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

/// Runs the same query text on whichever connection a transaction holds (`$conn` is a
/// `&mut PgConnection` or `&mut SqliteConnection`).
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            Tx::Postgres(c) => {
                let $conn: &mut PgConnection = &mut **c;
                $body
            }
            Tx::Sqlite(c) => {
                let $conn: &mut SqliteConnection = &mut **c;
                $body
            }
        }
    };
}

macro_rules! trait_payload_from_row {
    ($row:expr) => {{
        let row = $row;
        Ok::<_, IdentityError>(TraitPayloadRow {
            event_id: row.try_get(0)?,
            profile: ProfileId(row.try_get(1)?),
            anchor: key_of(row.try_get::<i16, _>(2)?, &row.try_get::<Vec<u8>, _>(3)?)?,
            source: row.try_get(4)?,
            observed_micros: row.try_get(5)?,
            sealed_subject: row.try_get(6)?,
            sealed_traits: row.try_get(7)?,
        })
    }};
}

macro_rules! rfm_from_row {
    ($row:expr) => {{
        let row = $row;
        let score = |v: i16| u8::try_from(v).unwrap_or(0);
        Ok::<_, IdentityError>(RfmRow {
            figures: RfmFigures {
                currency: row.try_get(0)?,
                orders: u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0),
                monetary_minor: row.try_get(2)?,
                last_order_micros: row.try_get(3)?,
            },
            recency_score: score(row.try_get(4)?),
            frequency_score: score(row.try_get(5)?),
            monetary_score: score(row.try_get(6)?),
        })
    }};
}

macro_rules! activity_from_row {
    ($row:expr) => {{
        let row = $row;
        let micros: i64 = row.try_get(1)?;
        let is_order: bool = row.try_get(3)?;
        Ok::<_, IdentityError>((
            ProfileId(row.try_get(0)?),
            Activity {
                occurred_at: DateTime::from_timestamp_micros(micros)
                    .ok_or_else(|| IdentityError::Corrupt("activity time".into()))?,
                stage: AiplStage::from_code(i64::from(row.try_get::<i16, _>(2)?)),
                order: if is_order {
                    Some((row.try_get(4)?, row.try_get(5)?))
                } else {
                    None
                },
            },
        ))
    }};
}

/// Runs the same query text on whichever pool the store holds.
macro_rules! on_pool {
    ($self:expr, $pool:ident => $body:expr) => {
        match $self {
            StoreIdentity::Postgres($pool) => $body,
            StoreIdentity::Sqlite($pool) => $body,
        }
    };
}

#[async_trait]
impl IdentityStore for StoreIdentity {
    async fn apply(
        &self,
        workspace: &str,
        batch: &ChangeBatch,
        rules: &AiplRules,
        expected_version: i64,
    ) -> Result<i64, IdentityError> {
        match self {
            StoreIdentity::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let mut conn = Tx::Postgres(&mut tx);
                let version = bump_version(&mut conn, workspace).await?;
                if version != expected_version + 1 {
                    return Err(IdentityError::StaleGraph);
                }
                apply_in(&mut conn, workspace, batch, rules, false).await?;
                tx.commit().await?;
                Ok(version)
            }
            StoreIdentity::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let mut conn = Tx::Sqlite(&mut tx);
                let version = bump_version(&mut conn, workspace).await?;
                if version != expected_version + 1 {
                    return Err(IdentityError::StaleGraph);
                }
                apply_in(&mut conn, workspace, batch, rules, false).await?;
                tx.commit().await?;
                Ok(version)
            }
        }
    }

    async fn apply_in(
        &self,
        tx: &mut Tx<'_>,
        workspace: &str,
        batch: &ChangeBatch,
        rules: &AiplRules,
    ) -> Result<(), IdentityError> {
        let free = match self {
            StoreIdentity::Postgres(pool) if batch.new_edges.len() >= COPY_MIN_ROWS => {
                meridian_store::spare_connection(pool).await
            }
            _ => None,
        };
        match free {
            Some(conn) => {
                let beside = copy_edges_beside(conn, workspace, &batch.new_edges)?;
                let (beside, written) =
                    tokio::join!(beside, apply_in(tx, workspace, batch, rules, true));
                // Both must succeed: the caller then commits, after the edges. An error
                // rolls the caller back; edges already committed stay above the graph's
                // `edges_through`, unread, until the next write deletes them.
                beside?;
                written
            }
            None => apply_in(tx, workspace, batch, rules, false).await,
        }
    }

    async fn bump_version(&self, tx: &mut Tx<'_>, workspace: &str) -> Result<i64, IdentityError> {
        bump_version(tx, workspace).await
    }

    async fn stages_in(
        &self,
        tx: &mut Tx<'_>,
        workspace: &str,
        profiles: &[ProfileId],
    ) -> Result<HashMap<ProfileId, AiplStage>, IdentityError> {
        stages_in(tx, workspace, profiles).await
    }

    async fn load_graph(&self, workspace: &str) -> Result<StoredGraph, IdentityError> {
        match self {
            StoreIdentity::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                load_graph_in(&mut Tx::Postgres(&mut conn), workspace).await
            }
            StoreIdentity::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                load_graph_in(&mut Tx::Sqlite(&mut conn), workspace).await
            }
        }
    }

    async fn load_graph_in(
        &self,
        tx: &mut Tx<'_>,
        workspace: &str,
    ) -> Result<StoredGraph, IdentityError> {
        load_graph_in(tx, workspace).await
    }

    async fn identifiers_by_index(
        &self,
        workspace: &str,
        index: &BlindIndex,
    ) -> Result<Vec<IdentifierRow>, IdentityError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(SELECT_IDENTIFIERS_BY_INDEX)
                .bind(workspace)
                .bind(index.0.as_slice())
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| identifier_from_row!(r)).collect()
        })
    }

    async fn trait_payloads_of(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<Vec<TraitPayloadRow>, IdentityError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(SELECT_TRAIT_PAYLOADS_OF)
                .bind(workspace)
                .bind(profile.0)
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| trait_payload_from_row!(r)).collect()
        })
    }

    async fn computed_of(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<Option<ComputedRow>, IdentityError> {
        on_pool!(self, pool => {
            let Some(row) = sqlx::query(SELECT_COMPUTED_OF)
                .bind(workspace)
                .bind(profile.0)
                .fetch_optional(pool)
                .await?
            else {
                return Ok(None);
            };
            let rfm = sqlx::query(SELECT_RFM_OF)
                .bind(workspace)
                .bind(profile.0)
                .fetch_all(pool)
                .await?;
            Ok(Some(ComputedRow {
                profile,
                stage: AiplStage::from_code(i64::from(row.try_get::<i16, _>(0)?)),
                orders: u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0),
                last_order_micros: row.try_get(2)?,
                rfm: rfm.iter().map(|r| rfm_from_row!(r)).collect::<Result<Vec<_>, _>>()?,
            }))
        })
    }

    async fn identifier(
        &self,
        workspace: &str,
        key: &NodeKey,
    ) -> Result<Option<IdentifierRow>, IdentityError> {
        on_pool!(self, pool => {
            let row = sqlx::query(SELECT_IDENTIFIER)
                .bind(workspace)
                .bind(key.kind.code())
                .bind(key.index.0.as_slice())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(|r| identifier_from_row!(r)).transpose()
        })
    }

    async fn profile(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<Option<ProfileRow>, IdentityError> {
        on_pool!(self, pool => {
            let row = sqlx::query(SELECT_PROFILE)
                .bind(workspace)
                .bind(profile.0)
                .fetch_optional(pool)
                .await?;
            row.map(|r| -> Result<ProfileRow, IdentityError> {
                Ok(ProfileRow {
                    profile: ProfileId(r.try_get(0)?),
                    created_at: r.try_get(1)?,
                    updated_at: r.try_get(2)?,
                    merged_into: r.try_get::<Option<Uuid>, _>(3)?.map(ProfileId),
                })
            })
            .transpose()
        })
    }

    async fn identifiers_of(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<Vec<IdentifierRow>, IdentityError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(SELECT_IDENTIFIERS_OF)
                .bind(workspace)
                .bind(profile.0)
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| identifier_from_row!(r)).collect()
        })
    }

    async fn edges_of(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<Vec<Edge>, IdentityError> {
        let sql = select_edges_of();
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql).bind(workspace).bind(profile.0).fetch_all(pool).await?;
            rows.iter().map(|r| edge_from_row!(r)).collect()
        })
    }

    async fn conflicts_of(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<Vec<Conflict>, IdentityError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(SELECT_CONFLICTS_OF)
                .bind(workspace)
                .bind(profile.0)
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| conflict_from_row!(r)).collect()
        })
    }

    async fn refresh_statistics(&self) -> Result<(), IdentityError> {
        if let StoreIdentity::Postgres(pool) = self {
            sqlx::query(
                // The tables a write reads by key or profile set (edges and conflicts are
                // only appended to there).
                "ANALYZE identity_identifiers, identity_profiles, \
                 identity_trait_payloads, identity_activity, identity_computed_traits, identity_rfm",
            )
            .execute(pool)
            .await?;
        }
        Ok(())
    }
}

const SELECT_IDENTIFIERS_BY_INDEX: &str = "SELECT kind, blind_index, profile_id, source, sealed_subject, sealed_value, first_seen_at, shared, seen_user_ids, sealed_record, sealed_field \
     FROM identity_identifiers WHERE workspace_id = $1 AND kind IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11) AND blind_index = $2 ORDER BY kind";
const SELECT_TRAIT_PAYLOADS_OF: &str = "SELECT event_id, profile_id, anchor_kind, anchor_index, source, observed_micros, sealed_subject, sealed_traits \
     FROM identity_trait_payloads WHERE workspace_id = $1 AND profile_id = $2 ORDER BY observed_micros, event_id";
const SELECT_COMPUTED_OF: &str = "SELECT aipl_stage, orders, last_order_micros FROM identity_computed_traits \
     WHERE workspace_id = $1 AND profile_id = $2";
const SELECT_RFM_OF: &str = "SELECT currency, orders, monetary_minor, last_order_micros, recency_score, frequency_score, monetary_score \
     FROM identity_rfm WHERE workspace_id = $1 AND profile_id = $2 ORDER BY orders DESC, currency";
const BUMP_VERSION: &str = "INSERT INTO identity_graph_versions (workspace_id, version) VALUES ($1, 1) \
     ON CONFLICT (workspace_id) DO UPDATE SET version = identity_graph_versions.version + 1 RETURNING version";
const INSERT_TRAIT_PAYLOAD: &str = "INSERT INTO identity_trait_payloads \
     (workspace_id, event_id, profile_id, anchor_kind, anchor_index, source, observed_micros, sealed_subject, sealed_traits) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING";
const INSERT_TRAIT_PAYLOADS_PG: &str = "INSERT INTO identity_trait_payloads \
     (workspace_id, event_id, profile_id, anchor_kind, anchor_index, source, observed_micros, sealed_subject, sealed_traits) \
     SELECT $1, * FROM UNNEST($2::text[], $3::uuid[], $4::int2[], $5::bytea[], $6::text[], $7::int8[], $8::text[], $9::bytea[]) \
     ON CONFLICT DO NOTHING";
const INSERT_ACTIVITIES_PG: &str = "INSERT INTO identity_activity \
     (workspace_id, event_id, profile_id, anchor_kind, anchor_index, occurred_micros, stage, is_order, currency, minor_units) \
     SELECT $1, * FROM UNNEST($2::text[], $3::uuid[], $4::int2[], $5::bytea[], $6::int8[], $7::int2[], $8::bool[], $9::text[], $10::int8[]) \
     ON CONFLICT DO NOTHING";
const INSERT_COMPUTED_PG: &str = "INSERT INTO identity_computed_traits \
     (workspace_id, profile_id, aipl_stage, orders, last_order_micros, updated_at) \
     SELECT $1, p, s, o, l, $6 FROM UNNEST($2::uuid[], $3::int2[], $4::int8[], $5::int8[]) AS u(p, s, o, l)";
const INSERT_RFMS_PG: &str = "INSERT INTO identity_rfm (workspace_id, profile_id, currency, orders, monetary_minor, \
     last_order_micros, recency_score, frequency_score, monetary_score) \
     SELECT $1, * FROM UNNEST($2::uuid[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int2[], $8::int2[], $9::int2[])";
const INSERT_ACTIVITY: &str = "INSERT INTO identity_activity \
     (workspace_id, event_id, profile_id, anchor_kind, anchor_index, occurred_micros, stage, is_order, currency, minor_units) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING";
const INSERT_COMPUTED: &str = "INSERT INTO identity_computed_traits \
     (workspace_id, profile_id, aipl_stage, orders, last_order_micros, updated_at) VALUES ($1, $2, $3, $4, $5, $6)";
const INSERT_RFM: &str = "INSERT INTO identity_rfm (workspace_id, profile_id, currency, orders, monetary_minor, \
     last_order_micros, recency_score, frequency_score, monetary_score) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const SELECT_BOUNDARIES: &str = "SELECT recency_cuts, frequency_cuts, monetary_cuts, population, computed_at, members \
     FROM identity_rfm_boundaries WHERE workspace_id = $1 AND currency = $2";
const UPSERT_BOUNDARIES: &str = "INSERT INTO identity_rfm_boundaries \
     (workspace_id, currency, recency_cuts, frequency_cuts, monetary_cuts, population, computed_at, members) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $6) ON CONFLICT (workspace_id, currency) DO UPDATE SET \
     recency_cuts = excluded.recency_cuts, frequency_cuts = excluded.frequency_cuts, \
     monetary_cuts = excluded.monetary_cuts, population = excluded.population, computed_at = excluded.computed_at, \
     members = excluded.members";
const UPDATE_MEMBERS: &str =
    "UPDATE identity_rfm_boundaries SET members = $3 WHERE workspace_id = $1 AND currency = $2";
const SELECT_POPULATION: &str = "SELECT last_order_micros, orders, monetary_minor FROM identity_rfm \
     WHERE workspace_id = $1 AND currency = $2";
const COUNT_POPULATION: &str =
    "SELECT COUNT(*) FROM identity_rfm WHERE workspace_id = $1 AND currency = $2";
/// Rescores a whole workspace and currency in one statement: 1 + the cuts exceeded.
const RESCORE: &str = "UPDATE identity_rfm SET \
     recency_score = 1 + CASE WHEN last_order_micros > $3 THEN 1 ELSE 0 END + CASE WHEN last_order_micros > $4 THEN 1 ELSE 0 END \
       + CASE WHEN last_order_micros > $5 THEN 1 ELSE 0 END + CASE WHEN last_order_micros > $6 THEN 1 ELSE 0 END, \
     frequency_score = 1 + CASE WHEN orders > $7 THEN 1 ELSE 0 END + CASE WHEN orders > $8 THEN 1 ELSE 0 END \
       + CASE WHEN orders > $9 THEN 1 ELSE 0 END + CASE WHEN orders > $10 THEN 1 ELSE 0 END, \
     monetary_score = 1 + CASE WHEN monetary_minor > $11 THEN 1 ELSE 0 END + CASE WHEN monetary_minor > $12 THEN 1 ELSE 0 END \
       + CASE WHEN monetary_minor > $13 THEN 1 ELSE 0 END + CASE WHEN monetary_minor > $14 THEN 1 ELSE 0 END \
     WHERE workspace_id = $1 AND currency = $2";

async fn bump_version(tx: &mut Tx<'_>, ws: &str) -> Result<i64, IdentityError> {
    on_tx!(tx, conn => Ok(sqlx::query_scalar::<_, i64>(BUMP_VERSION)
        .bind(ws)
        .fetch_one(&mut *conn)
        .await?))
}

async fn load_graph_in(tx: &mut Tx<'_>, ws: &str) -> Result<StoredGraph, IdentityError> {
    let edges_sql = select_all_edges();
    on_tx!(tx, conn => {
        let rows = sqlx::query(SELECT_ALL_IDENTIFIERS).bind(ws).fetch_all(&mut *conn).await?;
        let nodes = rows
            .iter()
            .map(|r| identifier_from_row!(r).map(|i| i.state))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = sqlx::query(&edges_sql).bind(ws).fetch_all(&mut *conn).await?;
        let edges = rows.iter().map(|r| edge_from_row!(r)).collect::<Result<Vec<_>, _>>()?;
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM identity_graph_versions WHERE workspace_id = $1")
                .bind(ws)
                .fetch_optional(&mut *conn)
                .await?;
        Ok((nodes, edges, version.unwrap_or(0)))
    })
}

/// Profiles per statement when a query names a set of profiles: PostgreSQL binds one
/// array; SQLite binds each id (at most 32766 parameters a statement).
fn chunk_size(tx: &Tx<'_>) -> usize {
    match tx {
        Tx::Postgres(_) => usize::MAX,
        Tx::Sqlite(_) => 500,
    }
}

/// Runs `$template`, with `{IDS}` standing for "is one of `$ids`" (bound from `$2` on), in
/// chunks, and runs `$each` on every returned row as `$row`: written once, it compiles for
/// both backends' row types.
macro_rules! each_profile_row {
    ($tx:expr, $template:expr, $ws:expr, $ids:expr, |$row:ident| $each:block) => {
        for chunk in $ids.chunks(chunk_size($tx)) {
            match $tx {
                Tx::Postgres(conn) => {
                    let sql = $template.replace("{IDS}", "= ANY($2::uuid[])");
                    let v: Vec<Uuid> = chunk.iter().map(|p| p.0).collect();
                    let rows = sqlx::query(&sql)
                        .bind($ws)
                        .bind(v)
                        .fetch_all(&mut **conn)
                        .await?;
                    for $row in &rows $each
                }
                Tx::Sqlite(conn) => {
                    let list = (0..chunk.len())
                        .map(|i| format!("${}", i + 2))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let sql = $template.replace("{IDS}", &format!("IN ({list})"));
                    let mut q = sqlx::query(&sql).bind($ws);
                    for p in chunk {
                        q = q.bind(p.0);
                    }
                    for $row in &q.fetch_all(&mut **conn).await? $each
                }
            }
        }
    };
}

/// Runs `template` with `{IDS}` standing for "is one of `ids`"; returns the first column
/// of returned rows (for `RETURNING profile_id`).
async fn for_profiles(
    tx: &mut Tx<'_>,
    template: &str,
    ws: &str,
    ids: &[ProfileId],
) -> Result<Vec<ProfileId>, IdentityError> {
    let mut out = Vec::new();
    each_profile_row!(tx, template, ws, ids, |r| {
        out.push(ProfileId(r.try_get(0)?));
    });
    Ok(out)
}

/// Activity rows of a set of profiles.
async fn activity_of(
    tx: &mut Tx<'_>,
    ws: &str,
    ids: &[ProfileId],
) -> Result<Vec<(ProfileId, Activity)>, IdentityError> {
    const TEMPLATE: &str = "SELECT profile_id, occurred_micros, stage, is_order, currency, minor_units \
         FROM identity_activity WHERE workspace_id = $1 AND profile_id {IDS}";
    let mut out = Vec::new();
    each_profile_row!(tx, TEMPLATE, ws, ids, |r| {
        out.push(activity_from_row!(r)?);
    });
    Ok(out)
}

/// Stored AIPL stages of a set of profiles (those with computed traits).
async fn stages_in(
    tx: &mut Tx<'_>,
    ws: &str,
    ids: &[ProfileId],
) -> Result<HashMap<ProfileId, AiplStage>, IdentityError> {
    const TEMPLATE: &str = "SELECT profile_id, aipl_stage FROM identity_computed_traits \
         WHERE workspace_id = $1 AND profile_id {IDS}";
    let mut out = HashMap::new();
    each_profile_row!(tx, TEMPLATE, ws, ids, |r| {
        let stage: i16 = r.try_get(1)?;
        out.insert(
            ProfileId(r.try_get(0)?),
            AiplStage::from_code(i64::from(stage)),
        );
    });
    Ok(out)
}

/// Writes a batch inside `tx`: the graph, the anchored rows, the computed traits of every
/// profile whose activity or membership changed, and the outbox events.
async fn apply_in(
    tx: &mut Tx<'_>,
    ws: &str,
    b: &ChangeBatch,
    rules: &AiplRules,
    edges_copied: bool,
) -> Result<(), IdentityError> {
    match tx {
        Tx::Postgres(conn) => StoreIdentity::apply_postgres(conn, ws, b, edges_copied).await?,
        Tx::Sqlite(conn) => StoreIdentity::apply_sqlite(conn, ws, b).await?,
    }
    if let Some(highest) = b.new_edges.iter().map(|e| e.seq).max() {
        let highest = seq_i64(highest)?;
        on_tx!(tx, conn => sqlx::query(RAISE_EDGES_THROUGH)
            .bind(ws)
            .bind(highest)
            .execute(&mut *conn)
            .await
            .map(drop)?);
    }
    insert_anchored(tx, ws, b).await?;
    upkeep(tx, ws, b, rules).await?;
    if !b.deleted_profiles.is_empty() {
        for_profiles(
            tx,
            "DELETE FROM identity_profiles WHERE workspace_id = $1 AND (profile_id {IDS} OR merged_into {IDS})",
            ws,
            &b.deleted_profiles,
        )
        .await?;
    }
    meridian_bus::enqueue_packed(tx, &b.events).await?;
    Ok(())
}

/// Inserts a batch's trait payloads and activity rows: PostgreSQL one `UNNEST` statement
/// each, SQLite one prepared statement a row.
async fn insert_anchored(tx: &mut Tx<'_>, ws: &str, b: &ChangeBatch) -> Result<(), IdentityError> {
    match tx {
        Tx::Postgres(conn) => {
            if !b.trait_payloads.is_empty() {
                let n = b.trait_payloads.len();
                let (mut ids, mut profiles, mut kinds, mut idx) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                let (mut sources, mut micros, mut subjects, mut sealed) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                for p in &b.trait_payloads {
                    ids.push(p.event_id.as_str());
                    profiles.push(p.profile.0);
                    kinds.push(p.anchor.kind.code());
                    idx.push(p.anchor.index.0.as_slice());
                    sources.push(p.source.as_str());
                    micros.push(p.observed_micros);
                    subjects.push(p.sealed_subject.as_str());
                    sealed.push(p.sealed_traits.as_slice());
                }
                sqlx::query(INSERT_TRAIT_PAYLOADS_PG)
                    .bind(ws)
                    .bind(ids)
                    .bind(profiles)
                    .bind(kinds)
                    .bind(idx)
                    .bind(sources)
                    .bind(micros)
                    .bind(subjects)
                    .bind(sealed)
                    .execute(&mut **conn)
                    .await?;
            }
            if !b.activity.is_empty() {
                let n = b.activity.len();
                let (mut ids, mut profiles, mut kinds, mut idx, mut micros) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                let (mut stages, mut orders, mut currencies, mut minors) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                for a in &b.activity {
                    let (is_order, currency, minor) = match &a.activity.order {
                        Some((c, m)) => (true, c.as_str(), *m),
                        None => (false, "", 0),
                    };
                    ids.push(a.event_id.as_str());
                    profiles.push(a.profile.0);
                    kinds.push(a.anchor.kind.code());
                    idx.push(a.anchor.index.0.as_slice());
                    micros.push(a.activity.occurred_at.timestamp_micros());
                    stages.push(a.activity.stage.code());
                    orders.push(is_order);
                    currencies.push(currency);
                    minors.push(minor);
                }
                sqlx::query(INSERT_ACTIVITIES_PG)
                    .bind(ws)
                    .bind(ids)
                    .bind(profiles)
                    .bind(kinds)
                    .bind(idx)
                    .bind(micros)
                    .bind(stages)
                    .bind(orders)
                    .bind(currencies)
                    .bind(minors)
                    .execute(&mut **conn)
                    .await?;
            }
        }
        Tx::Sqlite(conn) => {
            for p in &b.trait_payloads {
                sqlx::query(INSERT_TRAIT_PAYLOAD)
                    .bind(ws)
                    .bind(&p.event_id)
                    .bind(p.profile.0)
                    .bind(p.anchor.kind.code())
                    .bind(p.anchor.index.0.as_slice())
                    .bind(&p.source)
                    .bind(p.observed_micros)
                    .bind(&p.sealed_subject)
                    .bind(p.sealed_traits.as_slice())
                    .execute(&mut **conn)
                    .await?;
            }
            for a in &b.activity {
                let (is_order, currency, minor) = match &a.activity.order {
                    Some((c, m)) => (true, c.as_str(), *m),
                    None => (false, "", 0),
                };
                sqlx::query(INSERT_ACTIVITY)
                    .bind(ws)
                    .bind(&a.event_id)
                    .bind(a.profile.0)
                    .bind(a.anchor.kind.code())
                    .bind(a.anchor.index.0.as_slice())
                    .bind(a.activity.occurred_at.timestamp_micros())
                    .bind(a.activity.stage.code())
                    .bind(is_order)
                    .bind(currency)
                    .bind(minor)
                    .execute(&mut **conn)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Commits a delivery's new edges on a connection of their own, while the delivery's
/// transaction writes the rest: PostgreSQL then works on both at once, on two backends
/// (`bench identity`: links/s +7 %, median of 10 alternated pairs, 8 higher). The delivery's
/// transaction commits after this returns and raises `edges_through` over the new edges:
/// until then no read returns them (see [`EDGES_THROUGH`]). Edges the workspace's last
/// delivery left uncommitted go first: their `seq`s are handed out again.
///
/// Safe because one delivery of a workspace writes at a time: its version bump holds the
/// workspace's `identity_graph_versions` row, which the next writer must wait for.
///
/// Only the edges. Copying the new identifiers here too was measured, and did not pay. They
/// were tagged, and hidden from reads until the delivery committed by a record of their
/// keys. `bench identity` over 10 alternated pairs gave a median of 1.002 (sd 0.12), with
/// PostgreSQL CPU per link up 4 %. That copy outlasted the delivery's own writes, and
/// splitting it over a third connection slowed both.
fn copy_edges_beside(
    mut conn: PoolConnection<Postgres>,
    ws: &str,
    edges: &[Edge],
) -> Result<impl std::future::Future<Output = Result<(), IdentityError>> + use<>, IdentityError> {
    let copy = copy_edges(ws, edges)?;
    let ws = ws.to_owned();
    Ok(async move {
        let mut beside = conn.begin().await?;
        sqlx::query(&delete_uncommitted_edges())
            .bind(&ws)
            .execute(&mut *beside)
            .await?;
        copy.send(&mut beside, COPY_EDGES).await?;
        beside.commit().await?;
        Ok(())
    })
}

/// Re-homes anchored rows of changed profiles and recomputes computed traits.
async fn upkeep(
    tx: &mut Tx<'_>,
    ws: &str,
    b: &ChangeBatch,
    rules: &AiplRules,
) -> Result<(), IdentityError> {
    let mut recompute: BTreeSet<ProfileId> = b.activity.iter().map(|a| a.profile).collect();
    if !b.rehome.is_empty() {
        recompute.extend(b.rehome.iter().copied());
        for table in ["identity_trait_payloads", "identity_activity"] {
            let anchor_exists = format!(
                "SELECT 1 FROM identity_identifiers i WHERE i.workspace_id = {table}.workspace_id \
                 AND i.kind = {table}.anchor_kind AND i.blind_index = {table}.anchor_index"
            );
            // An anchor vanishes only when its identifier is removed (erasure, correction):
            // a batch that removed none (every consumed delivery) has no orphans to delete.
            if !b.removed_identifiers.is_empty() {
                for_profiles(
                    tx,
                    &format!(
                        "DELETE FROM {table} WHERE workspace_id = $1 AND profile_id {{IDS}} \
                         AND NOT EXISTS ({anchor_exists}) RETURNING profile_id"
                    ),
                    ws,
                    &b.rehome,
                )
                .await?;
            }
            let moved = for_profiles(
                tx,
                &format!(
                    "UPDATE {table} SET profile_id = i.profile_id FROM identity_identifiers i \
                     WHERE {table}.workspace_id = $1 AND {table}.profile_id {{IDS}} \
                     AND i.workspace_id = {table}.workspace_id AND i.kind = {table}.anchor_kind \
                     AND i.blind_index = {table}.anchor_index AND i.profile_id <> {table}.profile_id \
                     RETURNING {table}.profile_id"
                ),
                ws,
                &b.rehome,
            )
            .await?;
            if table == "identity_activity" {
                recompute.extend(moved);
            }
        }
    }
    if recompute.is_empty() {
        return Ok(());
    }
    let ids: Vec<ProfileId> = recompute.into_iter().collect();
    let mut per_profile: BTreeMap<ProfileId, Vec<Activity>> = BTreeMap::new();
    for (p, a) in activity_of(tx, ws, &ids).await? {
        per_profile.entry(p).or_default().push(a);
    }
    for_profiles(
        tx,
        "DELETE FROM identity_computed_traits WHERE workspace_id = $1 AND profile_id {IDS} \
         RETURNING profile_id",
        ws,
        &ids,
    )
    .await?;
    // Each currency's member count moves by what is deleted here and inserted below.
    let mut members_change: BTreeMap<String, i64> = BTreeMap::new();
    each_profile_row!(
        tx,
        "DELETE FROM identity_rfm WHERE workspace_id = $1 AND profile_id {IDS} RETURNING currency",
        ws,
        &ids,
        |r| {
            *members_change.entry(r.try_get(0)?).or_default() -= 1;
        }
    );
    let mut currencies: BTreeMap<String, Vec<(ProfileId, RfmFigures)>> = BTreeMap::new();
    let mut computed = Vec::with_capacity(per_profile.len());
    for (p, activity) in &per_profile {
        let s = summarize(rules, activity);
        if s.stage == AiplStage::None && s.orders == 0 {
            continue;
        }
        computed.push((
            *p,
            s.stage.code(),
            i64::try_from(s.orders).unwrap_or(i64::MAX),
            s.last_order_micros,
        ));
        for f in s.rfm {
            currencies
                .entry(f.currency.clone())
                .or_default()
                .push((*p, f));
        }
    }
    match tx {
        Tx::Postgres(conn) if !computed.is_empty() => {
            let (mut ids, mut stages, mut orders, mut last) = (vec![], vec![], vec![], vec![]);
            for (p, stage, o, l) in &computed {
                ids.push(p.0);
                stages.push(*stage);
                orders.push(*o);
                last.push(*l);
            }
            sqlx::query(INSERT_COMPUTED_PG)
                .bind(ws)
                .bind(ids)
                .bind(stages)
                .bind(orders)
                .bind(last)
                .bind(b.at)
                .execute(&mut **conn)
                .await?;
        }
        Tx::Postgres(_) => {}
        Tx::Sqlite(conn) => {
            for (p, stage, o, l) in &computed {
                sqlx::query(INSERT_COMPUTED)
                    .bind(ws)
                    .bind(p.0)
                    .bind(*stage)
                    .bind(*o)
                    .bind(*l)
                    .bind(b.at)
                    .execute(&mut **conn)
                    .await?;
            }
        }
    }
    for (currency, figures) in &currencies {
        *members_change.entry(currency.clone()).or_default() +=
            i64::try_from(figures.len()).unwrap_or(i64::MAX);
    }
    for (currency, change) in members_change {
        let stored = load_boundaries(tx, ws, &currency).await?;
        let figures = currencies.remove(&currency).unwrap_or_default();
        let bounds = stored.as_ref().map(|(b, _)| b);
        let scored: Vec<(&ProfileId, &RfmFigures, (u8, u8, u8))> = figures
            .iter()
            .map(|(p, f)| (p, f, bounds.map_or((1, 1, 1), |b| b.scores(f))))
            .collect();
        match tx {
            Tx::Postgres(_) if scored.is_empty() => {}
            Tx::Postgres(conn) => {
                let n = scored.len();
                let (mut ids, mut cur, mut orders, mut money, mut last) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                let (mut r, mut fr, mut m) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                for (p, f, (rs, fs, ms)) in &scored {
                    ids.push(p.0);
                    cur.push(f.currency.as_str());
                    orders.push(i64::try_from(f.orders).unwrap_or(i64::MAX));
                    money.push(f.monetary_minor);
                    last.push(f.last_order_micros);
                    r.push(i16::from(*rs));
                    fr.push(i16::from(*fs));
                    m.push(i16::from(*ms));
                }
                sqlx::query(INSERT_RFMS_PG)
                    .bind(ws)
                    .bind(ids)
                    .bind(cur)
                    .bind(orders)
                    .bind(money)
                    .bind(last)
                    .bind(r)
                    .bind(fr)
                    .bind(m)
                    .execute(&mut **conn)
                    .await?;
            }
            Tx::Sqlite(conn) => {
                for (p, f, (r, fr, m)) in &scored {
                    sqlx::query(INSERT_RFM)
                        .bind(ws)
                        .bind(p.0)
                        .bind(&f.currency)
                        .bind(i64::try_from(f.orders).unwrap_or(i64::MAX))
                        .bind(f.monetary_minor)
                        .bind(f.last_order_micros)
                        .bind(i16::from(*r))
                        .bind(i16::from(*fr))
                        .bind(i16::from(*m))
                        .execute(&mut **conn)
                        .await?;
                }
            }
        }
        let kept = stored.as_ref().and_then(|(_, members)| *members);
        let members = match kept {
            Some(members) => members.saturating_add_signed(change),
            None => {
                let counted: i64 = on_tx!(tx, conn => sqlx::query_scalar(COUNT_POPULATION)
                    .bind(ws)
                    .bind(&currency)
                    .fetch_one(&mut *conn)
                    .await?);
                u64::try_from(counted).unwrap_or(0)
            }
        };
        match stored {
            Some((old, _)) if !old.stale(members, b.at) => {
                if kept != Some(members) {
                    on_tx!(tx, conn => sqlx::query(UPDATE_MEMBERS)
                        .bind(ws)
                        .bind(&currency)
                        .bind(i64::try_from(members).unwrap_or(i64::MAX))
                        .execute(&mut *conn)
                        .await
                        .map(drop)?);
                }
            }
            // Sets the member count to the population it scores.
            _ => rescore(tx, ws, &currency, b.at).await?,
        }
    }
    Ok(())
}

/// The stored cut points of a workspace and currency, with its member count (`None` when
/// not kept yet).
async fn load_boundaries(
    tx: &mut Tx<'_>,
    ws: &str,
    currency: &str,
) -> Result<Option<(RfmBoundaries, Option<u64>)>, IdentityError> {
    let row = on_tx!(tx, conn => {
        let row = sqlx::query(SELECT_BOUNDARIES)
            .bind(ws)
            .bind(currency)
            .fetch_optional(&mut *conn)
            .await?;
        match row {
            Some(r) => Some((
                r.try_get::<String, _>(0)?,
                r.try_get::<String, _>(1)?,
                r.try_get::<String, _>(2)?,
                r.try_get::<i64, _>(3)?,
                r.try_get::<DateTime<Utc>, _>(4)?,
                r.try_get::<Option<i64>, _>(5)?,
            )),
            None => None,
        }
    });
    let Some((r, f, m, population, computed_at, members)) = row else {
        return Ok(None);
    };
    let cuts = |t: &str| {
        RfmBoundaries::decode(t).ok_or_else(|| IdentityError::Corrupt("rfm cut points".into()))
    };
    let bounds = RfmBoundaries {
        recency: cuts(&r)?,
        frequency: cuts(&f)?,
        monetary: cuts(&m)?,
        population: u64::try_from(population).unwrap_or(0),
        computed_at,
    };
    Ok(Some((bounds, members.and_then(|m| u64::try_from(m).ok()))))
}

/// Recomputes the cut points of a workspace and currency and rescores all its profiles.
async fn rescore(
    tx: &mut Tx<'_>,
    ws: &str,
    currency: &str,
    at: DateTime<Utc>,
) -> Result<(), IdentityError> {
    let population: Vec<(i64, i64, i64)> = on_tx!(tx, conn => {
        let rows = sqlx::query(SELECT_POPULATION)
            .bind(ws)
            .bind(currency)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|r| Ok::<_, IdentityError>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<_>, _>>()?
    });
    let b = RfmBoundaries::compute(&population, at);
    on_tx!(tx, conn => {
        let mut q = sqlx::query(RESCORE).bind(ws).bind(currency);
        for c in b.recency.iter().chain(&b.frequency).chain(&b.monetary) {
            q = q.bind(*c);
        }
        q.execute(&mut *conn).await?;
        sqlx::query(UPSERT_BOUNDARIES)
            .bind(ws)
            .bind(currency)
            .bind(RfmBoundaries::encode(&b.recency))
            .bind(RfmBoundaries::encode(&b.frequency))
            .bind(RfmBoundaries::encode(&b.monetary))
            .bind(i64::try_from(b.population).unwrap_or(i64::MAX))
            .bind(b.computed_at)
            .execute(&mut *conn)
            .await?;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_user_ids_round_trip() {
        let users = vec![BlindIndex([1; 32]), BlindIndex([2; 32])];
        assert_eq!(users_from_bytes(&users_to_bytes(&users)).unwrap(), users);
        assert!(users_from_bytes(&[0; 31]).is_err());
    }
}
