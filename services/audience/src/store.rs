//! Storage of the audience room, one implementation per backend (same SQL where the
//! dialects agree): the profile read model, segments and their members.

use chrono::{DateTime, Utc};
use meridian_bus::Tx;
use meridian_store::Store;
use meridian_store::sqlx::{self, Row};

use crate::error::AudienceError;
use crate::segment::{CompiledRule, Dialect, Param, Rule, compile};

/// A profile as the read model knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfileRow {
    pub profile_id: String,
    pub home_region: String,
    pub jurisdiction: String,
    pub age_band: String,
}

/// A trait value kept for segments.
#[derive(Debug, Clone, PartialEq)]
pub enum TraitValue {
    Text(String),
    Number(f64),
}

/// A segment definition as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRow {
    pub segment_id: String,
    pub name: String,
    pub definition: String,
    pub purpose: String,
    pub recompute_schedule: String,
    pub version: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A segment with a recompute schedule, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSegment {
    pub workspace_id: String,
    pub segment_id: String,
    pub definition: String,
    pub recompute_schedule: String,
    /// The slot to run next; `None` until the scheduler first saw the segment (or since
    /// its schedule changed).
    pub next_recompute_at: Option<DateTime<Utc>>,
}

/// A member of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    pub profile: ProfileRow,
    pub joined_at: Option<DateTime<Utc>>,
}

/// What a preview returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Preview {
    pub count: u64,
    pub sample: Vec<ProfileRow>,
    pub count_by_region: Vec<(String, u64)>,
}

/// The audience room's tables in one store.
#[derive(Debug, Clone)]
pub struct AudienceStore {
    store: Store,
}

pub(crate) fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Where a read-model write goes.
pub enum WriteVia<'a, 'c> {
    /// A transaction of its own on the room's pool (on SQLite it takes the write lock up
    /// front, so a transaction that reads first never fails to upgrade).
    Pool,
    /// A savepoint in a bus consumer's transaction: the update commits with the record of
    /// the event it applies, and on SQLite it does not wait for the write lock that
    /// transaction already holds.
    Consumer(&'a mut Tx<'c>),
}

impl<'c> WriteVia<'_, 'c> {
    /// The same target for one more write.
    pub fn reborrow(&mut self) -> WriteVia<'_, 'c> {
        match self {
            WriteVia::Pool => WriteVia::Pool,
            WriteVia::Consumer(tx) => WriteVia::Consumer(tx),
        }
    }
}

/// Runs `$body` in a write transaction chosen by `$via`, commits, and yields the body's
/// value; `$tx` names the transaction inside the body. (A macro: the body's queries are
/// typed per backend.)
macro_rules! in_write_tx {
    ($self:expr, $via:expr, |$tx:ident| $body:expr) => {{
        match $via {
            WriteVia::Consumer(Tx::Postgres(conn)) => {
                let mut $tx = sqlx::Connection::begin(&mut **conn).await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            WriteVia::Consumer(Tx::Sqlite(conn)) => {
                let mut $tx = sqlx::Connection::begin(&mut **conn).await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            WriteVia::Pool => match &$self.store {
                Store::Postgres(pool) => {
                    let mut $tx = pool.begin().await?;
                    let out = $body;
                    $tx.commit().await?;
                    out
                }
                Store::Sqlite(pool) => {
                    let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    let out = $body;
                    $tx.commit().await?;
                    out
                }
            },
        }
    }};
}

/// The country of a jurisdiction code (`EU-FR` → `FR`, `US-CA` → `US`, `GB` → `GB`; see
/// `policies/jurisdictions.toml`).
pub fn country_of(jurisdiction: &str) -> &str {
    match jurisdiction.split_once('-') {
        Some(("EU", country)) => country,
        Some((country, _)) => country,
        None => jurisdiction,
    }
}

/// How a write transaction starts: on SQLite it takes the write lock up front, so a
/// transaction that reads first never fails to upgrade while the bus consumers write.
pub(crate) fn write_begin(store: &Store) -> &'static str {
    match store {
        Store::Postgres(_) => "BEGIN",
        Store::Sqlite(_) => "BEGIN IMMEDIATE",
    }
}

pub(crate) fn parse_ts(text: &str) -> Result<DateTime<Utc>, AudienceError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| AudienceError::Corrupt("timestamp"))
}

/// Binds one compiled parameter to either backend's query.
macro_rules! bind_params {
    ($query:expr, $params:expr) => {{
        let mut query = $query;
        for param in $params {
            query = match param {
                Param::Text(t) => query.bind(t.clone()),
                Param::Int(i) => query.bind(*i),
                Param::Float(f) => query.bind(*f),
            };
        }
        query
    }};
}

impl AudienceStore {
    pub fn new(store: Store) -> Self {
        AudienceStore { store }
    }

    pub fn backend(&self) -> &Store {
        &self.store
    }

    pub fn dialect(&self) -> Dialect {
        match self.store {
            Store::Postgres(_) => Dialect::Postgres,
            Store::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// Inserts or replaces a profile's read model: region, traits and identifier types. An
    /// empty region, jurisdiction or age band keeps what the read model knew (from events).
    pub async fn put_profile(
        &self,
        via: WriteVia<'_, '_>,
        workspace: &str,
        profile: &ProfileRow,
        traits: &[(String, TraitValue)],
        identifier_types: &[String],
        at: DateTime<Utc>,
    ) -> Result<(), AudienceError> {
        const UPSERT: &str = "INSERT INTO audience_profiles (workspace_id, profile_id, home_region, jurisdiction, age_band, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workspace_id, profile_id) DO UPDATE SET \
             home_region = CASE WHEN excluded.home_region = '' THEN audience_profiles.home_region ELSE excluded.home_region END, \
             jurisdiction = CASE WHEN excluded.jurisdiction = '' THEN audience_profiles.jurisdiction ELSE excluded.jurisdiction END, \
             age_band = CASE WHEN excluded.age_band = '' THEN audience_profiles.age_band ELSE excluded.age_band END, \
             updated_at = excluded.updated_at";
        const DELETE_TRAITS: &str =
            "DELETE FROM audience_profile_traits WHERE workspace_id = $1 AND profile_id = $2";
        const DELETE_IDS: &str =
            "DELETE FROM audience_profile_identifiers WHERE workspace_id = $1 AND profile_id = $2";
        const INSERT_TRAIT: &str = "INSERT INTO audience_profile_traits (workspace_id, profile_id, name, text_value, number_value) VALUES ($1, $2, $3, $4, $5)";
        const INSERT_ID: &str = "INSERT INTO audience_profile_identifiers (workspace_id, profile_id, identifier_type) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
        in_write_tx!(self, via, |tx| {
            sqlx::query(UPSERT)
                .bind(workspace)
                .bind(&profile.profile_id)
                .bind(&profile.home_region)
                .bind(&profile.jurisdiction)
                .bind(&profile.age_band)
                .bind(ts(at))
                .execute(&mut *tx)
                .await?;
            sqlx::query(DELETE_TRAITS)
                .bind(workspace)
                .bind(&profile.profile_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(DELETE_IDS)
                .bind(workspace)
                .bind(&profile.profile_id)
                .execute(&mut *tx)
                .await?;
            for (name, value) in traits {
                let (text, number) = match value {
                    TraitValue::Text(t) => (Some(t.clone()), None),
                    TraitValue::Number(n) => (None, Some(*n)),
                };
                sqlx::query(INSERT_TRAIT)
                    .bind(workspace)
                    .bind(&profile.profile_id)
                    .bind(name)
                    .bind(text)
                    .bind(number)
                    .execute(&mut *tx)
                    .await?;
            }
            for kind in identifier_types {
                sqlx::query(INSERT_ID)
                    .bind(workspace)
                    .bind(&profile.profile_id)
                    .bind(kind)
                    .execute(&mut *tx)
                    .await?;
            }
        });
        Ok(())
    }

    /// Adds `count` events (and `revenue_minor` in `currency`, empty when none) to a
    /// profile's local day. (One column per argument: the aggregate's key and values.)
    #[allow(clippy::too_many_arguments)]
    pub async fn add_event_day(
        &self,
        workspace: &str,
        profile_id: &str,
        event_name: &str,
        local_day: i64,
        currency: &str,
        count: i64,
        revenue_minor: i64,
    ) -> Result<(), AudienceError> {
        const ADD: &str = "INSERT INTO audience_event_days (workspace_id, profile_id, event_name, local_day, currency, event_count, revenue_minor) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (workspace_id, profile_id, event_name, local_day, currency) DO UPDATE SET \
             event_count = audience_event_days.event_count + excluded.event_count, revenue_minor = audience_event_days.revenue_minor + excluded.revenue_minor";
        macro_rules! run {
            ($pool:expr) => {
                sqlx::query(ADD)
                    .bind(workspace)
                    .bind(profile_id)
                    .bind(event_name)
                    .bind(local_day)
                    .bind(currency)
                    .bind(count)
                    .bind(revenue_minor)
                    .execute($pool)
                    .await?
                    .rows_affected()
            };
        }
        match &self.store {
            Store::Postgres(pool) => run!(pool),
            Store::Sqlite(pool) => run!(pool),
        };
        Ok(())
    }

    /// Records where a profile's latest event placed it (jurisdiction code and its country
    /// as home region), creating the read-model row if the profile is not known here yet.
    pub async fn note_jurisdiction(
        &self,
        via: WriteVia<'_, '_>,
        workspace: &str,
        profile_id: &str,
        jurisdiction: &str,
        at: DateTime<Utc>,
    ) -> Result<(), AudienceError> {
        const UPSERT: &str = "INSERT INTO audience_profiles (workspace_id, profile_id, home_region, jurisdiction, age_band, updated_at) \
             VALUES ($1, $2, $3, $4, '', $5) ON CONFLICT (workspace_id, profile_id) DO UPDATE SET \
             home_region = excluded.home_region, jurisdiction = excluded.jurisdiction, updated_at = excluded.updated_at \
             WHERE audience_profiles.jurisdiction <> excluded.jurisdiction OR audience_profiles.home_region <> excluded.home_region";
        let home_region = country_of(jurisdiction);
        in_write_tx!(self, via, |tx| {
            sqlx::query(UPSERT)
                .bind(workspace)
                .bind(profile_id)
                .bind(home_region)
                .bind(jurisdiction)
                .bind(ts(at))
                .execute(&mut *tx)
                .await?;
        });
        Ok(())
    }

    /// Counts one accepted event into its profile's local day, once per `event_id`
    /// (redeliveries are ignored). Returns whether it was counted now.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_event(
        &self,
        via: WriteVia<'_, '_>,
        workspace: &str,
        event_id: &str,
        profile_id: &str,
        event_name: &str,
        local_day: i64,
        currency: &str,
        revenue_minor: i64,
    ) -> Result<bool, AudienceError> {
        const CLAIM: &str = "INSERT INTO audience_events_applied (workspace_id, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING";
        const ADD: &str = "INSERT INTO audience_event_days (workspace_id, profile_id, event_name, local_day, currency, event_count, revenue_minor) \
             VALUES ($1, $2, $3, $4, $5, 1, $6) ON CONFLICT (workspace_id, profile_id, event_name, local_day, currency) DO UPDATE SET \
             event_count = audience_event_days.event_count + 1, revenue_minor = audience_event_days.revenue_minor + excluded.revenue_minor";
        let out = in_write_tx!(self, via, |tx| {
            let claimed = sqlx::query(CLAIM)
                .bind(workspace)
                .bind(event_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if claimed {
                sqlx::query(ADD)
                    .bind(workspace)
                    .bind(profile_id)
                    .bind(event_name)
                    .bind(local_day)
                    .bind(currency)
                    .bind(revenue_minor)
                    .execute(&mut *tx)
                    .await?;
            }
            claimed
        });
        Ok(out)
    }

    /// Forgets a profile (erased or merged away): its read model and memberships. When it
    /// was merged into `survivor`, its event aggregates move there first.
    pub async fn remove_profile(
        &self,
        via: WriteVia<'_, '_>,
        workspace: &str,
        profile_id: &str,
        survivor: Option<&str>,
    ) -> Result<(), AudienceError> {
        const MOVE: &str = "INSERT INTO audience_event_days (workspace_id, profile_id, event_name, local_day, currency, event_count, revenue_minor) \
             SELECT workspace_id, $3, event_name, local_day, currency, event_count, revenue_minor FROM audience_event_days \
             WHERE workspace_id = $1 AND profile_id = $2 \
             ON CONFLICT (workspace_id, profile_id, event_name, local_day, currency) DO UPDATE SET \
             event_count = audience_event_days.event_count + excluded.event_count, revenue_minor = audience_event_days.revenue_minor + excluded.revenue_minor";
        const DELETES: [&str; 5] = [
            "DELETE FROM audience_event_days WHERE workspace_id = $1 AND profile_id = $2",
            "DELETE FROM audience_profile_traits WHERE workspace_id = $1 AND profile_id = $2",
            "DELETE FROM audience_profile_identifiers WHERE workspace_id = $1 AND profile_id = $2",
            "DELETE FROM audience_segment_members WHERE workspace_id = $1 AND profile_id = $2",
            "DELETE FROM audience_profiles WHERE workspace_id = $1 AND profile_id = $2",
        ];
        in_write_tx!(self, via, |tx| {
            if let Some(survivor) = survivor {
                sqlx::query(MOVE)
                    .bind(workspace)
                    .bind(profile_id)
                    .bind(survivor)
                    .execute(&mut *tx)
                    .await?;
            }
            for delete in DELETES {
                sqlx::query(delete)
                    .bind(workspace)
                    .bind(profile_id)
                    .execute(&mut *tx)
                    .await?;
            }
        });
        Ok(())
    }

    /// Counts and samples the profiles matching `rule` today (`today`: local day number).
    pub async fn preview(
        &self,
        workspace: &str,
        rule: &Rule,
        today: i64,
        sample_size: u32,
    ) -> Result<Preview, AudienceError> {
        let dialect = self.dialect();
        let CompiledRule { condition, params } = compile(rule, dialect, today, 2);
        let first = match dialect {
            Dialect::Postgres => "$1",
            Dialect::Sqlite => "?1",
        };
        let filter = format!("p.workspace_id = {first} AND {condition}");
        let by_region = format!(
            "SELECT p.home_region, COUNT(*) AS n FROM audience_profiles p WHERE {filter} GROUP BY p.home_region ORDER BY p.home_region"
        );
        let sample = format!(
            "SELECT p.profile_id, p.home_region, p.jurisdiction, p.age_band FROM audience_profiles p WHERE {filter} \
             ORDER BY p.profile_id LIMIT {}",
            sample_size.min(100)
        );
        macro_rules! run {
            ($pool:expr) => {{
                let regions = bind_params!(sqlx::query(&by_region).bind(workspace), &params)
                    .fetch_all($pool)
                    .await?;
                let rows = bind_params!(sqlx::query(&sample).bind(workspace), &params)
                    .fetch_all($pool)
                    .await?;
                let mut preview = Preview::default();
                for row in regions {
                    let n: i64 = row.try_get("n")?;
                    preview.count += n as u64;
                    preview
                        .count_by_region
                        .push((row.try_get("home_region")?, n as u64));
                }
                for row in rows {
                    preview.sample.push(ProfileRow {
                        profile_id: row.try_get("profile_id")?,
                        home_region: row.try_get("home_region")?,
                        jurisdiction: row.try_get("jurisdiction")?,
                        age_band: row.try_get("age_band")?,
                    });
                }
                preview
            }};
        }
        Ok(match &self.store {
            Store::Postgres(pool) => run!(pool),
            Store::Sqlite(pool) => run!(pool),
        })
    }

    /// Recomputes a segment's members in full: adds the new ones (joined now), drops the
    /// ones that no longer match. Returns (joined, left) profile ids.
    pub async fn recompute_members(
        &self,
        workspace: &str,
        segment_id: &str,
        rule: &Rule,
        today: i64,
        at: DateTime<Utc>,
    ) -> Result<(Vec<String>, Vec<String>), AudienceError> {
        self.recompute_members_of(WriteVia::Pool, workspace, segment_id, rule, today, at, None)
            .await
    }

    /// Like [`Self::recompute_members`], limited to one profile when `only` is given (the
    /// incremental update after a profile changed). (One argument per part of the job.)
    #[allow(clippy::too_many_arguments)]
    pub async fn recompute_members_of(
        &self,
        via: WriteVia<'_, '_>,
        workspace: &str,
        segment_id: &str,
        rule: &Rule,
        today: i64,
        at: DateTime<Utc>,
        only: Option<&str>,
    ) -> Result<(Vec<String>, Vec<String>), AudienceError> {
        let dialect = self.dialect();
        let CompiledRule {
            condition,
            mut params,
        } = compile(rule, dialect, today, 4);
        let (w, s, t) = match dialect {
            Dialect::Postgres => ("$1", "$2", "$3"),
            Dialect::Sqlite => ("?1", "?2", "?3"),
        };
        let (scope_p, scope_m) = match only {
            Some(profile) => {
                let n = 4 + params.len();
                params.push(Param::Text(profile.to_owned()));
                let placeholder = match dialect {
                    Dialect::Postgres => format!("${n}"),
                    Dialect::Sqlite => format!("?{n}"),
                };
                (
                    format!(" AND p.profile_id = {placeholder}"),
                    format!(" AND profile_id = {placeholder}"),
                )
            }
            None => (String::new(), String::new()),
        };
        let joined = format!(
            "INSERT INTO audience_segment_members (workspace_id, segment_id, profile_id, joined_at) \
             SELECT p.workspace_id, {s}, p.profile_id, {t} FROM audience_profiles p WHERE p.workspace_id = {w} AND {condition}{scope_p} \
             AND NOT EXISTS (SELECT 1 FROM audience_segment_members m WHERE m.workspace_id = p.workspace_id AND m.segment_id = {s} AND m.profile_id = p.profile_id) \
             RETURNING profile_id"
        );
        let left = format!(
            "DELETE FROM audience_segment_members WHERE workspace_id = {w} AND segment_id = {s} AND {t} = {t}{scope_m} AND profile_id NOT IN \
             (SELECT p.profile_id FROM audience_profiles p WHERE p.workspace_id = {w} AND {condition}) RETURNING profile_id"
        );
        let out = in_write_tx!(self, via, |tx| {
            let gone = bind_params!(
                sqlx::query(&left)
                    .bind(workspace)
                    .bind(segment_id)
                    .bind(ts(at)),
                &params
            )
            .fetch_all(&mut *tx)
            .await?;
            let new = bind_params!(
                sqlx::query(&joined)
                    .bind(workspace)
                    .bind(segment_id)
                    .bind(ts(at)),
                &params
            )
            .fetch_all(&mut *tx)
            .await?;
            let ids = |rows: Vec<_>| -> Result<Vec<String>, sqlx::Error> {
                rows.into_iter()
                    .map(|r: _| Row::try_get::<String, _>(&r, "profile_id"))
                    .collect()
            };
            (ids(new)?, ids(gone)?)
        });
        Ok(out)
    }

    /// The workspace's time zone (segment windows and schedules count in it); UTC when the
    /// workspace is unknown here.
    pub async fn workspace_time_zone(
        &self,
        workspace: &str,
    ) -> Result<chrono_tz::Tz, AudienceError> {
        const SELECT: &str = "SELECT time_zone FROM workspaces WHERE workspace_id = $1";
        let zone: Option<String> = match &self.store {
            Store::Postgres(pool) => {
                sqlx::query_scalar(SELECT)
                    .bind(workspace)
                    .fetch_optional(pool)
                    .await?
            }
            Store::Sqlite(pool) => {
                sqlx::query_scalar(SELECT)
                    .bind(workspace)
                    .fetch_optional(pool)
                    .await?
            }
        };
        Ok(zone.and_then(|z| z.parse().ok()).unwrap_or(chrono_tz::UTC))
    }

    /// A profile of the read model.
    pub async fn profile(
        &self,
        workspace: &str,
        profile_id: &str,
    ) -> Result<Option<ProfileRow>, AudienceError> {
        const SELECT: &str = "SELECT profile_id, home_region, jurisdiction, age_band FROM audience_profiles \
             WHERE workspace_id = $1 AND profile_id = $2";
        macro_rules! run {
            ($pool:expr) => {
                sqlx::query(SELECT)
                    .bind(workspace)
                    .bind(profile_id)
                    .fetch_optional($pool)
                    .await?
                    .map(|row| -> Result<ProfileRow, AudienceError> {
                        Ok(ProfileRow {
                            profile_id: row.try_get("profile_id")?,
                            home_region: row.try_get("home_region")?,
                            jurisdiction: row.try_get("jurisdiction")?,
                            age_band: row.try_get("age_band")?,
                        })
                    })
                    .transpose()
            };
        }
        match &self.store {
            Store::Postgres(pool) => run!(pool),
            Store::Sqlite(pool) => run!(pool),
        }
    }

    /// Every segment of a workspace.
    pub async fn segments(&self, workspace: &str) -> Result<Vec<SegmentRow>, AudienceError> {
        const SELECT: &str = "SELECT segment_id, name, definition, purpose, recompute_schedule, version, created_at, updated_at \
             FROM audience_segments WHERE workspace_id = $1 ORDER BY segment_id";
        match &self.store {
            Store::Postgres(pool) => sqlx::query(SELECT)
                .bind(workspace)
                .fetch_all(pool)
                .await?
                .iter()
                .map(segment_row)
                .collect(),
            Store::Sqlite(pool) => sqlx::query(SELECT)
                .bind(workspace)
                .fetch_all(pool)
                .await?
                .iter()
                .map(segment_row)
                .collect(),
        }
    }

    pub async fn insert_segment(
        &self,
        workspace: &str,
        segment: &SegmentRow,
    ) -> Result<(), AudienceError> {
        const INSERT: &str = "INSERT INTO audience_segments (workspace_id, segment_id, name, definition, purpose, recompute_schedule, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        macro_rules! run {
            ($pool:expr) => {
                sqlx::query(INSERT)
                    .bind(workspace)
                    .bind(&segment.segment_id)
                    .bind(&segment.name)
                    .bind(&segment.definition)
                    .bind(&segment.purpose)
                    .bind(&segment.recompute_schedule)
                    .bind(i64::from(segment.version))
                    .bind(ts(segment.created_at))
                    .bind(ts(segment.updated_at))
                    .execute($pool)
                    .await?
                    .rows_affected()
            };
        }
        match &self.store {
            Store::Postgres(pool) => run!(pool),
            Store::Sqlite(pool) => run!(pool),
        };
        Ok(())
    }

    /// Replaces a segment when its stored version is `expected_version` (optimistic
    /// concurrency); false when someone else changed it first.
    pub async fn update_segment(
        &self,
        workspace: &str,
        segment: &SegmentRow,
        expected_version: u32,
    ) -> Result<bool, AudienceError> {
        // A changed schedule forgets its next slot: the scheduler plans it afresh.
        const UPDATE: &str = "UPDATE audience_segments SET name = $1, definition = $2, purpose = $3, recompute_schedule = $4, version = $5, updated_at = $6, \
             next_recompute_at = CASE WHEN recompute_schedule = $4 THEN next_recompute_at ELSE NULL END \
             WHERE workspace_id = $7 AND segment_id = $8 AND version = $9";
        macro_rules! run {
            ($pool:expr) => {
                sqlx::query(UPDATE)
                    .bind(&segment.name)
                    .bind(&segment.definition)
                    .bind(&segment.purpose)
                    .bind(&segment.recompute_schedule)
                    .bind(i64::from(segment.version))
                    .bind(ts(segment.updated_at))
                    .bind(workspace)
                    .bind(&segment.segment_id)
                    .bind(i64::from(expected_version))
                    .execute($pool)
                    .await?
                    .rows_affected()
            };
        }
        let n = match &self.store {
            Store::Postgres(pool) => run!(pool),
            Store::Sqlite(pool) => run!(pool),
        };
        Ok(n == 1)
    }

    pub async fn segment(
        &self,
        workspace: &str,
        segment_id: &str,
    ) -> Result<Option<SegmentRow>, AudienceError> {
        const SELECT: &str = "SELECT segment_id, name, definition, purpose, recompute_schedule, version, created_at, updated_at \
             FROM audience_segments WHERE workspace_id = $1 AND segment_id = $2";
        macro_rules! run {
            ($pool:expr) => {
                sqlx::query(SELECT)
                    .bind(workspace)
                    .bind(segment_id)
                    .fetch_optional($pool)
                    .await?
            };
        }
        let row = match &self.store {
            Store::Postgres(pool) => run!(pool).map(|r| segment_row(&r)),
            Store::Sqlite(pool) => run!(pool).map(|r| segment_row(&r)),
        };
        row.transpose()
    }

    /// Members of a segment after `after` (profile id), in profile id order.
    pub async fn members(
        &self,
        workspace: &str,
        segment_id: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<MemberRow>, AudienceError> {
        const SELECT: &str = "SELECT p.profile_id, p.home_region, p.jurisdiction, p.age_band, m.joined_at \
             FROM audience_segment_members m JOIN audience_profiles p ON p.workspace_id = m.workspace_id AND p.profile_id = m.profile_id \
             WHERE m.workspace_id = $1 AND m.segment_id = $2 AND m.profile_id > $3 ORDER BY m.profile_id LIMIT $4";
        macro_rules! run {
            ($pool:expr) => {{
                let rows = sqlx::query(SELECT)
                    .bind(workspace)
                    .bind(segment_id)
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all($pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        let joined: String = row.try_get("joined_at")?;
                        Ok(MemberRow {
                            profile: ProfileRow {
                                profile_id: row.try_get("profile_id")?,
                                home_region: row.try_get("home_region")?,
                                jurisdiction: row.try_get("jurisdiction")?,
                                age_band: row.try_get("age_band")?,
                            },
                            joined_at: Some(parse_ts(&joined)?),
                        })
                    })
                    .collect::<Result<Vec<_>, AudienceError>>()
            }};
        }
        match &self.store {
            Store::Postgres(pool) => run!(pool),
            Store::Sqlite(pool) => run!(pool),
        }
    }
    /// Segments of every workspace whose scheduled recompute is due at `now`, or not yet
    /// planned (no next slot).
    pub async fn due_segments(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<ScheduledSegment>, AudienceError> {
        // Timestamps are fixed-width RFC 3339 UTC text, so text order is time order.
        const SELECT: &str = "SELECT workspace_id, segment_id, definition, recompute_schedule, next_recompute_at \
             FROM audience_segments WHERE recompute_schedule <> '' AND (next_recompute_at IS NULL OR next_recompute_at <= $1) \
             ORDER BY workspace_id, segment_id";
        macro_rules! run {
            ($pool:expr) => {{
                let rows = sqlx::query(SELECT).bind(ts(now)).fetch_all($pool).await?;
                rows.iter()
                    .map(|row| {
                        let next: Option<String> = row.try_get("next_recompute_at")?;
                        Ok(ScheduledSegment {
                            workspace_id: row.try_get("workspace_id")?,
                            segment_id: row.try_get("segment_id")?,
                            definition: row.try_get("definition")?,
                            recompute_schedule: row.try_get("recompute_schedule")?,
                            next_recompute_at: next.as_deref().map(parse_ts).transpose()?,
                        })
                    })
                    .collect::<Result<Vec<_>, AudienceError>>()
            }};
        }
        match &self.store {
            Store::Postgres(pool) => run!(pool),
            Store::Sqlite(pool) => run!(pool),
        }
    }

    /// Moves a segment's next recompute slot from `expected` to `next` if no one else
    /// moved it first (another replica, or this one before a restart). True when this
    /// caller won the slot.
    pub async fn claim_recompute_slot(
        &self,
        workspace: &str,
        segment_id: &str,
        schedule: &str,
        expected: Option<DateTime<Utc>>,
        next: DateTime<Utc>,
    ) -> Result<bool, AudienceError> {
        // The schedule is part of the condition: a slot planned for an old schedule is not
        // claimed once the schedule changed.
        const FROM_SLOT: &str = "UPDATE audience_segments SET next_recompute_at = $1 \
             WHERE workspace_id = $2 AND segment_id = $3 AND recompute_schedule = $4 AND next_recompute_at = $5";
        const FROM_NONE: &str = "UPDATE audience_segments SET next_recompute_at = $1 \
             WHERE workspace_id = $2 AND segment_id = $3 AND recompute_schedule = $4 AND next_recompute_at IS NULL";
        let (sql, expected) = match expected {
            Some(at) => (FROM_SLOT, Some(ts(at))),
            None => (FROM_NONE, None),
        };
        macro_rules! run {
            ($pool:expr) => {{
                let mut query = sqlx::query(sql)
                    .bind(ts(next))
                    .bind(workspace)
                    .bind(segment_id)
                    .bind(schedule);
                if let Some(expected) = expected {
                    query = query.bind(expected);
                }
                query.execute($pool).await?.rows_affected()
            }};
        }
        let n = match &self.store {
            Store::Postgres(pool) => run!(pool),
            Store::Sqlite(pool) => run!(pool),
        };
        Ok(n == 1)
    }

    /// The segments a profile is a member of: id, name and when it joined (access requests).
    pub async fn memberships_of(
        &self,
        workspace: &str,
        profile_id: &str,
    ) -> Result<Vec<(String, String, DateTime<Utc>)>, AudienceError> {
        const SELECT: &str = "SELECT m.segment_id, s.name, m.joined_at \
             FROM audience_segment_members m JOIN audience_segments s \
             ON s.workspace_id = m.workspace_id AND s.segment_id = m.segment_id \
             WHERE m.workspace_id = $1 AND m.profile_id = $2 ORDER BY m.segment_id";
        macro_rules! run {
            ($pool:expr) => {{
                let rows = sqlx::query(SELECT)
                    .bind(workspace)
                    .bind(profile_id)
                    .fetch_all($pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        let joined: String = row.try_get("joined_at")?;
                        Ok((
                            row.try_get("segment_id")?,
                            row.try_get("name")?,
                            parse_ts(&joined)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, AudienceError>>()
            }};
        }
        match &self.store {
            Store::Postgres(pool) => run!(pool),
            Store::Sqlite(pool) => run!(pool),
        }
    }
}

fn segment_row<R: Row>(row: &R) -> Result<SegmentRow, AudienceError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let version: i64 = row.try_get("version")?;
    let created: String = row.try_get("created_at")?;
    let updated: String = row.try_get("updated_at")?;
    Ok(SegmentRow {
        segment_id: row.try_get("segment_id")?,
        name: row.try_get("name")?,
        definition: row.try_get("definition")?,
        purpose: row.try_get("purpose")?,
        recompute_schedule: row.try_get("recompute_schedule")?,
        version: u32::try_from(version).map_err(|_| AudienceError::Corrupt("version"))?,
        created_at: parse_ts(&created)?,
        updated_at: parse_ts(&updated)?,
    })
}
