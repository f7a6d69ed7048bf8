//! Storage of the identity graph behind [`IdentityStore`], one implementation per backend
//! ([`StoreIdentity`]); both pass `tests/conformance.rs`. Identifiers are stored only as
//! blind indexes plus a sealed copy. PostgreSQL writes a batch with a handful of `UNNEST`
//! statements in one transaction; SQLite loops over prepared statements in one transaction.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use meridian_store::Store;
use meridian_store::sqlx::{self, PgPool, Row, SqlitePool};
use meridian_vault::BlindIndex;
use uuid::Uuid;

use crate::error::IdentityError;
use crate::graph::{Conflict, ConflictReason, Edge, LinkRule, NodeState, ProfileId};
use crate::identifier::{IdentifierType, NodeKey};

/// A copy of the normalized value sealed by the vault under `subject`.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedValue {
    pub subject: String,
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
    /// Identifiers created or changed (unique keys).
    pub identifiers: Vec<IdentifierRow>,
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
}

#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// Writes a batch atomically.
    async fn apply(&self, workspace: &str, batch: &ChangeBatch) -> Result<(), IdentityError>;
    /// The whole graph of a workspace: nodes and edges (edges in `seq` order).
    async fn load_graph(
        &self,
        workspace: &str,
    ) -> Result<(Vec<NodeState>, Vec<Edge>), IdentityError>;
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
        Ok::<_, IdentityError>(IdentifierRow {
            state: NodeState {
                key: key_of(kind, &index)?,
                profile: ProfileId(profile),
                first_seen: row.try_get(6)?,
                shared: row.try_get(7)?,
                seen_user_ids: users_from_bytes(&row.try_get::<Vec<u8>, _>(8)?)?,
            },
            source: row.try_get(3)?,
            sealed: match (subject, sealed) {
                (Some(subject), Some(bytes)) => Some(SealedValue { subject, bytes }),
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

const SELECT_IDENTIFIER: &str = "SELECT kind, blind_index, profile_id, source, sealed_subject, sealed_value, first_seen_at, shared, seen_user_ids \
     FROM identity_identifiers WHERE workspace_id = $1 AND kind = $2 AND blind_index = $3";
const SELECT_IDENTIFIERS_OF: &str = "SELECT kind, blind_index, profile_id, source, sealed_subject, sealed_value, first_seen_at, shared, seen_user_ids \
     FROM identity_identifiers WHERE workspace_id = $1 AND profile_id = $2 ORDER BY first_seen_at, kind, blind_index";
const SELECT_ALL_IDENTIFIERS: &str = "SELECT kind, blind_index, profile_id, source, sealed_subject, sealed_value, first_seen_at, shared, seen_user_ids \
     FROM identity_identifiers WHERE workspace_id = $1";
const EDGE_COLUMNS: &str =
    "e.seq, e.from_kind, e.from_index, e.to_kind, e.to_index, e.rule, e.event_id, e.linked_at";
const SELECT_PROFILE: &str = "SELECT profile_id, created_at, updated_at, merged_into FROM identity_profiles \
     WHERE workspace_id = $1 AND profile_id = $2";

fn select_edges_of() -> String {
    format!(
        "SELECT {EDGE_COLUMNS} FROM identity_edges e JOIN identity_identifiers i \
         ON i.workspace_id = e.workspace_id AND i.kind = e.from_kind AND i.blind_index = e.from_index \
         WHERE e.workspace_id = $1 AND i.profile_id = $2 ORDER BY e.seq"
    )
}

fn select_all_edges() -> String {
    format!("SELECT {EDGE_COLUMNS} FROM identity_edges e WHERE e.workspace_id = $1 ORDER BY e.seq")
}

const SELECT_CONFLICTS_OF: &str = "SELECT c.from_kind, c.from_index, c.to_kind, c.to_index, c.rule, c.event_id, c.seen_at, c.reason, c.conflict_id \
     FROM identity_conflicts c WHERE c.workspace_id = $1 AND (EXISTS (SELECT 1 FROM identity_identifiers i \
       WHERE i.workspace_id = c.workspace_id AND i.profile_id = $2 AND i.kind = c.from_kind AND i.blind_index = c.from_index) \
     OR EXISTS (SELECT 1 FROM identity_identifiers i \
       WHERE i.workspace_id = c.workspace_id AND i.profile_id = $2 AND i.kind = c.to_kind AND i.blind_index = c.to_index)) \
     ORDER BY c.conflict_id";

const UPSERT_IDENTIFIER_SQLITE: &str = "INSERT INTO identity_identifiers \
     (workspace_id, kind, blind_index, profile_id, source, sealed_subject, sealed_value, first_seen_at, shared, seen_user_ids) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
     ON CONFLICT (workspace_id, kind, blind_index) DO UPDATE SET profile_id = excluded.profile_id, \
       shared = excluded.shared, seen_user_ids = excluded.seen_user_ids, \
       sealed_subject = COALESCE(identity_identifiers.sealed_subject, excluded.sealed_subject), \
       sealed_value = COALESCE(identity_identifiers.sealed_value, excluded.sealed_value)";
const UPSERT_IDENTIFIERS_PG: &str = "INSERT INTO identity_identifiers \
     (workspace_id, kind, blind_index, profile_id, source, sealed_subject, sealed_value, first_seen_at, shared, seen_user_ids) \
     SELECT $1, * FROM UNNEST($2::int2[], $3::bytea[], $4::uuid[], $5::text[], $6::text[], $7::bytea[], $8::timestamptz[], $9::bool[], $10::bytea[]) \
     ON CONFLICT (workspace_id, kind, blind_index) DO UPDATE SET profile_id = excluded.profile_id, \
       shared = excluded.shared, seen_user_ids = excluded.seen_user_ids, \
       sealed_subject = COALESCE(identity_identifiers.sealed_subject, excluded.sealed_subject), \
       sealed_value = COALESCE(identity_identifiers.sealed_value, excluded.sealed_value)";
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
     SELECT $1, p, t, t FROM UNNEST($2::uuid[], $3::timestamptz[]) AS u(p, t) ON CONFLICT DO NOTHING";
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

impl StoreIdentity {
    async fn apply_postgres(pool: &PgPool, ws: &str, b: &ChangeBatch) -> Result<(), IdentityError> {
        let mut tx = pool.begin().await?;
        if !b.created_profiles.is_empty() {
            let (ids, ats): (Vec<Uuid>, Vec<DateTime<Utc>>) =
                b.created_profiles.iter().map(|(p, t)| (p.0, *t)).unzip();
            sqlx::query(INSERT_PROFILES_PG)
                .bind(ws)
                .bind(ids)
                .bind(ats)
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
        if !b.identifiers.is_empty() {
            let n = b.identifiers.len();
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
            for r in &b.identifiers {
                kinds.push(r.state.key.kind.code());
                idx.push(r.state.key.index.0.to_vec());
                profiles.push(r.state.profile.0);
                sources.push(r.source.clone());
                subjects.push(r.sealed.as_ref().map(|s| s.subject.clone()));
                sealed.push(r.sealed.as_ref().map(|s| s.bytes.clone()));
                firsts.push(r.state.first_seen);
                shared.push(r.state.shared);
                users.push(users_to_bytes(&r.state.seen_user_ids));
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
                .execute(&mut *tx)
                .await?;
        }
        if !b.new_edges.is_empty() {
            let mut seqs = Vec::with_capacity(b.new_edges.len());
            let (mut fk, mut fi, mut tk, mut ti, mut rules, mut events, mut ats) =
                (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
            for e in &b.new_edges {
                seqs.push(seq_i64(e.seq)?);
                fk.push(e.from.kind.code());
                fi.push(e.from.index.0.to_vec());
                tk.push(e.to.kind.code());
                ti.push(e.to.index.0.to_vec());
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
        if !b.conflicts.is_empty() {
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
                fi.push(c.from.index.0.to_vec());
                tk.push(c.to.kind.code());
                ti.push(c.to.index.0.to_vec());
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
        if !b.touched_profiles.is_empty() {
            let ids: Vec<Uuid> = b.touched_profiles.iter().map(|p| p.0).collect();
            sqlx::query(TOUCH_PROFILES_PG)
                .bind(ws)
                .bind(ids)
                .bind(b.at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn apply_sqlite(
        pool: &SqlitePool,
        ws: &str,
        b: &ChangeBatch,
    ) -> Result<(), IdentityError> {
        let mut tx = pool.begin().await?;
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
        for r in &b.identifiers {
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
        tx.commit().await?;
        Ok(())
    }
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
    async fn apply(&self, workspace: &str, batch: &ChangeBatch) -> Result<(), IdentityError> {
        match self {
            StoreIdentity::Postgres(pool) => Self::apply_postgres(pool, workspace, batch).await,
            StoreIdentity::Sqlite(pool) => Self::apply_sqlite(pool, workspace, batch).await,
        }
    }

    async fn load_graph(
        &self,
        workspace: &str,
    ) -> Result<(Vec<NodeState>, Vec<Edge>), IdentityError> {
        let edges_sql = select_all_edges();
        on_pool!(self, pool => {
            let rows = sqlx::query(SELECT_ALL_IDENTIFIERS).bind(workspace).fetch_all(pool).await?;
            let nodes = rows.iter().map(|r| identifier_from_row!(r).map(|i| i.state)).collect::<Result<Vec<_>, _>>()?;
            let rows = sqlx::query(&edges_sql).bind(workspace).fetch_all(pool).await?;
            let edges = rows.iter().map(|r| edge_from_row!(r)).collect::<Result<Vec<_>, _>>()?;
            Ok((nodes, edges))
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
