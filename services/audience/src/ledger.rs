//! Storage of destinations, syncs and the destination membership ledger, on either backend
//! (same SQL: the dialects agree here).
//!
//! `audience_destination_members` is what each destination holds now (one row per
//! destination × segment × profile, with the identifiers sent, sealed);
//! `audience_destination_ledger` is the append-only history of every send and removal with
//! the consent entry and policy version behind it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use meridian_store::Store;
use meridian_store::sqlx::{self, Row};

use crate::destination::{DestinationRow, PlatformKind};
use crate::error::AudienceError;
use crate::store::{AudienceStore, parse_ts, ts, write_begin};

/// Where a sync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    Running,
    Succeeded,
    PartiallyFailed,
    Failed,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Running => "running",
            SyncState::Succeeded => "succeeded",
            SyncState::PartiallyFailed => "partially_failed",
            SyncState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            SyncState::Running,
            SyncState::Succeeded,
            SyncState::PartiallyFailed,
            SyncState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One sync of a segment to a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRow {
    pub sync_id: String,
    pub segment_id: String,
    pub destination_id: String,
    pub state: SyncState,
    pub members_sent: u64,
    pub members_removed: u64,
    pub members_failed: u64,
    /// Policy rule id (or local reason) → members excluded by it.
    pub excluded: BTreeMap<String, u64>,
    pub policy_version: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// A code-like reason, never personal data.
    pub last_error: String,
}

/// Whether a destination holds a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldStatus {
    /// The platform accepted the member and holds them.
    Sent,
    /// Taken back.
    Removed,
    /// Never accepted (the last attempt failed).
    Failed,
}

impl HeldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HeldStatus::Sent => "sent",
            HeldStatus::Removed => "removed",
            HeldStatus::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [HeldStatus::Sent, HeldStatus::Removed, HeldStatus::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A destination × segment × profile: what was sent and why it was allowed.
#[derive(Clone, PartialEq, Eq)]
pub struct HeldMember {
    pub destination_id: String,
    pub segment_id: String,
    pub profile_id: String,
    pub status: HeldStatus,
    /// The segment's purpose the member was sent for.
    pub purpose: String,
    /// The vault subject `sealed_identifiers` is sealed under.
    pub vault_subject: String,
    /// The identifiers exactly as sent (hashes, or the storefront's customer id), sealed.
    pub sealed_identifiers: Option<Vec<u8>>,
    pub consent_entry_id: String,
    pub policy_version: String,
    pub last_sync_id: String,
    pub last_error: String,
    pub sent_at: Option<DateTime<Utc>>,
    pub removed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for HeldMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldMember")
            .field("destination_id", &self.destination_id)
            .field("segment_id", &self.segment_id)
            .field("profile_id", &self.profile_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// One line of the membership ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub entry_id: String,
    pub destination_id: String,
    pub segment_id: String,
    pub profile_id: String,
    /// `sent`, `removed`, `failed`.
    pub action: HeldStatus,
    /// `sync`, `consent_withdrawn`, `erasure`.
    pub cause: String,
    pub sync_id: String,
    pub consent_entry_id: String,
    pub policy_version: String,
    /// A code-like detail (the platform's error code), never personal data.
    pub detail: String,
    pub recorded_at: DateTime<Utc>,
}

fn opt_ts(at: Option<DateTime<Utc>>) -> Option<String> {
    at.map(ts)
}

fn parse_opt(text: Option<String>) -> Result<Option<DateTime<Utc>>, AudienceError> {
    text.as_deref().map(parse_ts).transpose()
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

macro_rules! on_pool {
    ($self:expr, $pool:ident => $body:expr) => {
        match $self.backend() {
            Store::Postgres($pool) => $body,
            Store::Sqlite($pool) => $body,
        }
    };
}

fn destination_row<R: Row>(row: &R) -> Result<DestinationRow, AudienceError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let platform: String = row.try_get("platform")?;
    let settings: String = row.try_get("settings")?;
    let credentials: String = row.try_get("credential_names")?;
    let min: i64 = row.try_get("min_audience_size")?;
    let created: String = row.try_get("created_at")?;
    Ok(DestinationRow {
        destination_id: row.try_get("destination_id")?,
        name: row.try_get("name")?,
        platform: PlatformKind::parse(&platform).ok_or(AudienceError::Corrupt("platform"))?,
        region: row.try_get("region")?,
        transfer_mechanism: row.try_get("transfer_mechanism")?,
        settings: serde_json::from_str(&settings)
            .map_err(|_| AudienceError::Corrupt("destination settings"))?,
        credential_names: serde_json::from_str(&credentials)
            .map_err(|_| AudienceError::Corrupt("destination credential names"))?,
        min_audience_size: u32::try_from(min).map_err(|_| AudienceError::Corrupt("minimum"))?,
        created_at: parse_ts(&created)?,
    })
}

fn sync_row<R: Row>(row: &R) -> Result<SyncRow, AudienceError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let state: String = row.try_get("state")?;
    let excluded: String = row.try_get("excluded")?;
    let started: String = row.try_get("started_at")?;
    Ok(SyncRow {
        sync_id: row.try_get("sync_id")?,
        segment_id: row.try_get("segment_id")?,
        destination_id: row.try_get("destination_id")?,
        state: SyncState::parse(&state).ok_or(AudienceError::Corrupt("sync state"))?,
        members_sent: to_u64(row.try_get("members_sent")?),
        members_removed: to_u64(row.try_get("members_removed")?),
        members_failed: to_u64(row.try_get("members_failed")?),
        excluded: serde_json::from_str(&excluded)
            .map_err(|_| AudienceError::Corrupt("sync exclusions"))?,
        policy_version: row.try_get("policy_version")?,
        started_at: parse_ts(&started)?,
        finished_at: parse_opt(row.try_get("finished_at")?)?,
        last_error: row.try_get("last_error")?,
    })
}

fn held_row<R: Row>(row: &R) -> Result<HeldMember, AudienceError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = row.try_get("status")?;
    let updated: String = row.try_get("updated_at")?;
    Ok(HeldMember {
        destination_id: row.try_get("destination_id")?,
        segment_id: row.try_get("segment_id")?,
        profile_id: row.try_get("profile_id")?,
        status: HeldStatus::parse(&status).ok_or(AudienceError::Corrupt("held status"))?,
        purpose: row.try_get("purpose")?,
        vault_subject: row.try_get("vault_subject")?,
        sealed_identifiers: row.try_get("sealed_identifiers")?,
        consent_entry_id: row.try_get("consent_entry_id")?,
        policy_version: row.try_get("policy_version")?,
        last_sync_id: row.try_get("last_sync_id")?,
        last_error: row.try_get("last_error")?,
        sent_at: parse_opt(row.try_get("sent_at")?)?,
        removed_at: parse_opt(row.try_get("removed_at")?)?,
        updated_at: parse_ts(&updated)?,
    })
}

fn ledger_row<R: Row>(row: &R) -> Result<LedgerEntry, AudienceError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let action: String = row.try_get("action")?;
    let at: String = row.try_get("recorded_at")?;
    Ok(LedgerEntry {
        entry_id: row.try_get("entry_id")?,
        destination_id: row.try_get("destination_id")?,
        segment_id: row.try_get("segment_id")?,
        profile_id: row.try_get("profile_id")?,
        action: HeldStatus::parse(&action).ok_or(AudienceError::Corrupt("ledger action"))?,
        cause: row.try_get("cause")?,
        sync_id: row.try_get("sync_id")?,
        consent_entry_id: row.try_get("consent_entry_id")?,
        policy_version: row.try_get("policy_version")?,
        detail: row.try_get("detail")?,
        recorded_at: parse_ts(&at)?,
    })
}

const HELD_COLUMNS: &str = "destination_id, segment_id, profile_id, status, purpose, vault_subject, sealed_identifiers, \
     consent_entry_id, policy_version, last_sync_id, last_error, sent_at, removed_at, updated_at";

impl AudienceStore {
    pub async fn insert_destination(
        &self,
        workspace: &str,
        row: &DestinationRow,
    ) -> Result<(), AudienceError> {
        const INSERT: &str = "INSERT INTO audience_destinations (workspace_id, destination_id, name, platform, region, transfer_mechanism, \
             settings, credential_names, min_audience_size, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
        let settings = serde_json::to_string(&row.settings)
            .map_err(|_| AudienceError::Corrupt("destination settings"))?;
        let credentials = serde_json::to_string(&row.credential_names)
            .map_err(|_| AudienceError::Corrupt("destination credential names"))?;
        on_pool!(self, pool => {
            sqlx::query(INSERT)
            .bind(workspace)
            .bind(&row.destination_id)
            .bind(&row.name)
            .bind(row.platform.as_str())
            .bind(&row.region)
            .bind(&row.transfer_mechanism)
            .bind(&settings)
            .bind(&credentials)
            .bind(i64::from(row.min_audience_size))
            .bind(ts(row.created_at))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn destination(
        &self,
        workspace: &str,
        destination_id: &str,
    ) -> Result<Option<DestinationRow>, AudienceError> {
        const SELECT: &str =
            "SELECT * FROM audience_destinations WHERE workspace_id = $1 AND destination_id = $2";
        on_pool!(self, pool => sqlx::query(SELECT)
            .bind(workspace)
            .bind(destination_id)
            .fetch_optional(pool)
            .await?
            .map(|r| destination_row(&r))
            .transpose())
    }

    /// Destinations after `after` (an id), in id order.
    pub async fn destinations(
        &self,
        workspace: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<DestinationRow>, AudienceError> {
        const SELECT: &str = "SELECT * FROM audience_destinations WHERE workspace_id = $1 AND destination_id > $2 \
             ORDER BY destination_id LIMIT $3";
        on_pool!(self, pool => sqlx::query(SELECT)
            .bind(workspace)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(destination_row)
            .collect())
    }

    /// Inserts or replaces a sync's row.
    pub async fn put_sync(&self, workspace: &str, row: &SyncRow) -> Result<(), AudienceError> {
        const UPSERT: &str = "INSERT INTO audience_syncs (workspace_id, sync_id, segment_id, destination_id, state, members_sent, \
             members_removed, members_failed, excluded, policy_version, started_at, finished_at, last_error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (workspace_id, sync_id) DO UPDATE SET \
             state = excluded.state, members_sent = excluded.members_sent, members_removed = excluded.members_removed, \
             members_failed = excluded.members_failed, excluded = excluded.excluded, policy_version = excluded.policy_version, \
             finished_at = excluded.finished_at, last_error = excluded.last_error";
        let excluded = serde_json::to_string(&row.excluded)
            .map_err(|_| AudienceError::Corrupt("sync exclusions"))?;
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        on_pool!(self, pool => {
            sqlx::query(UPSERT)
            .bind(workspace)
            .bind(&row.sync_id)
            .bind(&row.segment_id)
            .bind(&row.destination_id)
            .bind(row.state.as_str())
            .bind(n(row.members_sent))
            .bind(n(row.members_removed))
            .bind(n(row.members_failed))
            .bind(&excluded)
            .bind(&row.policy_version)
            .bind(ts(row.started_at))
            .bind(opt_ts(row.finished_at))
            .bind(&row.last_error)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Starts a sync: inserts its (running) row unless another sync of the same segment to
    /// the same destination is running. A running one that started before `stale_before`
    /// was abandoned (its process died) and is marked failed first. False when busy.
    pub async fn start_sync(
        &self,
        workspace: &str,
        row: &SyncRow,
        stale_before: DateTime<Utc>,
    ) -> Result<bool, AudienceError> {
        const ABANDON: &str = "UPDATE audience_syncs SET state = 'failed', last_error = 'abandoned', finished_at = $1 \
             WHERE workspace_id = $2 AND segment_id = $3 AND destination_id = $4 AND state = 'running' AND started_at < $5";
        const INSERT: &str = "INSERT INTO audience_syncs (workspace_id, sync_id, segment_id, destination_id, state, policy_version, started_at) \
             VALUES ($1, $2, $3, $4, 'running', $5, $6) ON CONFLICT DO NOTHING";
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin_with(write_begin(self.backend())).await?;
                sqlx::query(ABANDON)
                    .bind(ts(row.started_at))
                    .bind(workspace)
                    .bind(&row.segment_id)
                    .bind(&row.destination_id)
                    .bind(ts(stale_before))
                    .execute(&mut *tx)
                    .await?;
                let inserted = sqlx::query(INSERT)
                    .bind(workspace)
                    .bind(&row.sync_id)
                    .bind(&row.segment_id)
                    .bind(&row.destination_id)
                    .bind(&row.policy_version)
                    .bind(ts(row.started_at))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                inserted == 1
            }};
        }
        Ok(on_pool!(self, pool => run!(pool)))
    }

    pub async fn sync(
        &self,
        workspace: &str,
        sync_id: &str,
    ) -> Result<Option<SyncRow>, AudienceError> {
        const SELECT: &str =
            "SELECT * FROM audience_syncs WHERE workspace_id = $1 AND sync_id = $2";
        on_pool!(self, pool => sqlx::query(SELECT)
            .bind(workspace)
            .bind(sync_id)
            .fetch_optional(pool)
            .await?
            .map(|r| sync_row(&r))
            .transpose())
    }

    /// Every member a destination has held, holds or failed to take for a segment.
    pub async fn held(
        &self,
        workspace: &str,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<Vec<HeldMember>, AudienceError> {
        let select = format!(
            "SELECT {HELD_COLUMNS} FROM audience_destination_members \
             WHERE workspace_id = $1 AND destination_id = $2 AND segment_id = $3 ORDER BY profile_id"
        );
        on_pool!(self, pool => sqlx::query(&select)
            .bind(workspace)
            .bind(destination_id)
            .bind(segment_id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(held_row)
            .collect())
    }

    /// Every destination row of a profile, across destinations and segments.
    pub async fn held_by_profile(
        &self,
        workspace: &str,
        profile_id: &str,
    ) -> Result<Vec<HeldMember>, AudienceError> {
        let select = format!(
            "SELECT {HELD_COLUMNS} FROM audience_destination_members \
             WHERE workspace_id = $1 AND profile_id = $2 ORDER BY destination_id, segment_id"
        );
        on_pool!(self, pool => sqlx::query(&select)
            .bind(workspace)
            .bind(profile_id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(held_row)
            .collect())
    }

    /// Records what happened to a member at a destination: the current row and its ledger
    /// line, in one transaction.
    pub async fn record_member(
        &self,
        workspace: &str,
        member: &HeldMember,
        entry: &LedgerEntry,
    ) -> Result<(), AudienceError> {
        let upsert = format!(
            "INSERT INTO audience_destination_members (workspace_id, {HELD_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (workspace_id, destination_id, segment_id, profile_id) DO UPDATE SET \
             status = excluded.status, purpose = excluded.purpose, vault_subject = excluded.vault_subject, \
             sealed_identifiers = excluded.sealed_identifiers, consent_entry_id = excluded.consent_entry_id, \
             policy_version = excluded.policy_version, last_sync_id = excluded.last_sync_id, \
             last_error = excluded.last_error, sent_at = excluded.sent_at, removed_at = excluded.removed_at, \
             updated_at = excluded.updated_at"
        );
        const LEDGER: &str = "INSERT INTO audience_destination_ledger (workspace_id, entry_id, destination_id, segment_id, profile_id, \
             action, cause, sync_id, consent_entry_id, policy_version, detail, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin_with(write_begin(self.backend())).await?;
                sqlx::query(&upsert)
                    .bind(workspace)
                    .bind(&member.destination_id)
                    .bind(&member.segment_id)
                    .bind(&member.profile_id)
                    .bind(member.status.as_str())
                    .bind(&member.purpose)
                    .bind(&member.vault_subject)
                    .bind(member.sealed_identifiers.as_deref())
                    .bind(&member.consent_entry_id)
                    .bind(&member.policy_version)
                    .bind(&member.last_sync_id)
                    .bind(&member.last_error)
                    .bind(opt_ts(member.sent_at))
                    .bind(opt_ts(member.removed_at))
                    .bind(ts(member.updated_at))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(LEDGER)
                    .bind(workspace)
                    .bind(&entry.entry_id)
                    .bind(&entry.destination_id)
                    .bind(&entry.segment_id)
                    .bind(&entry.profile_id)
                    .bind(entry.action.as_str())
                    .bind(&entry.cause)
                    .bind(&entry.sync_id)
                    .bind(&entry.consent_entry_id)
                    .bind(&entry.policy_version)
                    .bind(&entry.detail)
                    .bind(ts(entry.recorded_at))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }};
        }
        on_pool!(self, pool => run!(pool));
        Ok(())
    }

    /// A profile's ledger lines, oldest first.
    pub async fn ledger_of(
        &self,
        workspace: &str,
        profile_id: &str,
    ) -> Result<Vec<LedgerEntry>, AudienceError> {
        const SELECT: &str = "SELECT * FROM audience_destination_ledger WHERE workspace_id = $1 AND profile_id = $2 \
             ORDER BY recorded_at, entry_id";
        on_pool!(self, pool => sqlx::query(SELECT)
            .bind(workspace)
            .bind(profile_id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(ledger_row)
            .collect())
    }
}
