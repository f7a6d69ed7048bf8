//! Durable state of erasure sagas: [`SagaStore`], implemented for [`SqlConsentStore`] on
//! PostgreSQL (leases taken with `FOR UPDATE SKIP LOCKED`, so replicas share the work) and
//! SQLite (one writer).

use async_trait::async_trait;
use meridian_bus::OutboxEvent;
use meridian_store::Store;
use meridian_store::sqlx::{self, Row};

use crate::error::ConsentError;
use crate::store::SqlConsentStore;

/// One step as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    pub position: u32,
    pub name: String,
    /// `pending`, `running`, `succeeded`, `failed` (failed steps are retried).
    pub state: String,
    pub attempts: u32,
    pub last_error: String,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// JSON of counts.
    pub report: Option<String>,
}

/// A saga as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRow {
    pub workspace: String,
    pub request_id: String,
    /// `running` or `completed`.
    pub state: String,
    /// JSON of the [`ErasureSubject`](super::ErasureSubject); `None` once completed.
    pub subject: Option<String>,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub receipt_json: Option<String>,
    pub receipt_signature: Option<String>,
}

/// A saga a worker holds the lease of.
#[derive(Debug, Clone)]
pub struct ClaimedSaga {
    pub saga: SagaRow,
    pub steps: Vec<StepRow>,
    pub lease_token: String,
}

/// What completing a saga writes.
#[derive(Debug, Clone)]
pub struct Completion {
    pub finished_at: i64,
    pub receipt_json: String,
    pub receipt_signature: String,
    /// The request's status change (`completed`) with its reason.
    pub reason: String,
}

#[async_trait]
pub trait SagaStore: Send + Sync {
    /// Creates the saga and its pending steps (nothing if it exists).
    async fn create_saga(
        &self,
        workspace: &str,
        request_id: &str,
        subject_json: &str,
        steps: &[String],
        now: i64,
    ) -> Result<(), ConsentError>;
    /// Takes the lease of up to `limit` running sagas that are due and not leased.
    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<ClaimedSaga>, ConsentError>;
    /// Renews the lease and marks step `position` running; false when the lease was lost.
    async fn begin_step(
        &self,
        saga: &ClaimedSaga,
        position: u32,
        lease_until: i64,
        now: i64,
    ) -> Result<bool, ConsentError>;
    /// Records a step's success (after its effect happened), the subject as now known, and
    /// `events` in the outbox, in one transaction; false when the lease was lost.
    #[allow(clippy::too_many_arguments)]
    async fn step_succeeded(
        &self,
        saga: &ClaimedSaga,
        position: u32,
        attempts: u32,
        finished_at: i64,
        report: &str,
        subject_json: Option<&str>,
        events: &[OutboxEvent],
    ) -> Result<bool, ConsentError>;
    /// Records a failed attempt and when to try again; releases the lease.
    async fn step_failed(
        &self,
        saga: &ClaimedSaga,
        position: u32,
        attempts: u32,
        error: &str,
        next_attempt_at: i64,
    ) -> Result<(), ConsentError>;
    /// Completes the saga: stores the receipt, forgets the subject, completes the request
    /// (status and audit trail), in one transaction; false when the lease was lost.
    async fn complete_saga(
        &self,
        saga: &ClaimedSaga,
        completion: &Completion,
    ) -> Result<bool, ConsentError>;
    async fn saga(
        &self,
        workspace: &str,
        request_id: &str,
    ) -> Result<Option<(SagaRow, Vec<StepRow>)>, ConsentError>;
    /// Running sagas (for metrics and tests).
    async fn running_sagas(&self) -> Result<u64, ConsentError>;
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn step_from_row<R>(row: &R) -> Result<StepRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StepRow {
        position: to_u32(row.try_get("position")?),
        name: row.try_get("name")?,
        state: row.try_get("state")?,
        attempts: to_u32(row.try_get("attempts")?),
        last_error: row.try_get("last_error")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        report: row.try_get("report")?,
    })
}

fn saga_from_row<R>(row: &R) -> Result<SagaRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(SagaRow {
        workspace: row.try_get("workspace_id")?,
        request_id: row.try_get("request_id")?,
        state: row.try_get("state")?,
        subject: row.try_get("subject")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
        receipt_json: row.try_get("receipt_json")?,
        receipt_signature: row.try_get("receipt_signature")?,
    })
}

const SAGA_COLUMNS: &str = "workspace_id, request_id, state, subject, next_attempt_at, created_at, finished_at, receipt_json, receipt_signature";
const STEP_COLUMNS: &str =
    "position, name, state, attempts, last_error, started_at, finished_at, report";

const CLAIM_PG: &str = "UPDATE erasure_sagas s SET lease_token = $1, lease_until = $2
     FROM (SELECT workspace_id, request_id FROM erasure_sagas
           WHERE state = 'running' AND next_attempt_at <= $3 AND lease_until <= $3
           ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED) due
     WHERE s.workspace_id = due.workspace_id AND s.request_id = due.request_id
     RETURNING s.workspace_id, s.request_id, s.state, s.subject, s.next_attempt_at, s.created_at, s.finished_at, s.receipt_json, s.receipt_signature";
const CLAIM_SQLITE: &str = "UPDATE erasure_sagas SET lease_token = $1, lease_until = $2
     WHERE (workspace_id, request_id) IN (SELECT workspace_id, request_id FROM erasure_sagas
           WHERE state = 'running' AND next_attempt_at <= $3 AND lease_until <= $3
           ORDER BY next_attempt_at LIMIT $4)
     RETURNING workspace_id, request_id, state, subject, next_attempt_at, created_at, finished_at, receipt_json, receipt_signature";

/// Runs the same query text on either pool.
macro_rules! on_pool {
    ($self:ident, $pool:ident => $body:expr) => {
        match &$self.0 {
            Store::Postgres($pool) => $body,
            Store::Sqlite($pool) => $body,
        }
    };
}

/// The same transaction body on either backend.
macro_rules! in_tx {
    ($self:ident, $tx:ident => $body:expr) => {
        match &$self.0 {
            Store::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                $body
            }
            Store::Sqlite(pool) => {
                let mut $tx = pool.begin().await?;
                $body
            }
        }
    };
}

fn bus_err(e: meridian_bus::BusError) -> ConsentError {
    ConsentError::Storage(Box::new(e))
}

impl SqlConsentStore {
    async fn steps_of(
        &self,
        workspace: &str,
        request_id: &str,
    ) -> Result<Vec<StepRow>, ConsentError> {
        let sql = format!(
            "SELECT {STEP_COLUMNS} FROM erasure_saga_steps WHERE workspace_id = $1 AND request_id = $2 ORDER BY position"
        );
        let out = on_pool!(self, pool => sqlx::query(&sql)
            .bind(workspace)
            .bind(request_id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(step_from_row)
            .collect::<Result<Vec<_>, _>>()?);
        Ok(out)
    }
}

#[async_trait]
impl SagaStore for SqlConsentStore {
    async fn create_saga(
        &self,
        workspace: &str,
        request_id: &str,
        subject_json: &str,
        steps: &[String],
        now: i64,
    ) -> Result<(), ConsentError> {
        in_tx!(self, tx => {
            let inserted = sqlx::query(
                "INSERT INTO erasure_sagas (workspace_id, request_id, state, subject, next_attempt_at, created_at)
                 VALUES ($1, $2, 'running', $3, $4, $4) ON CONFLICT DO NOTHING",
            )
            .bind(workspace)
            .bind(request_id)
            .bind(subject_json)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                for (i, name) in steps.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO erasure_saga_steps (workspace_id, request_id, position, name, state) VALUES ($1, $2, $3, $4, 'pending')",
                    )
                    .bind(workspace)
                    .bind(request_id)
                    .bind(i64::try_from(i).unwrap_or(i64::MAX))
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<ClaimedSaga>, ConsentError> {
        let token = uuid::Uuid::new_v4().to_string();
        let sagas = match &self.0 {
            Store::Postgres(pool) => sqlx::query(CLAIM_PG)
                .bind(&token)
                .bind(lease_until)
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(saga_from_row)
                .collect::<Result<Vec<_>, _>>()?,
            Store::Sqlite(pool) => sqlx::query(CLAIM_SQLITE)
                .bind(&token)
                .bind(lease_until)
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(saga_from_row)
                .collect::<Result<Vec<_>, _>>()?,
        };
        let mut out = Vec::with_capacity(sagas.len());
        for saga in sagas {
            let steps = self.steps_of(&saga.workspace, &saga.request_id).await?;
            out.push(ClaimedSaga {
                saga,
                steps,
                lease_token: token.clone(),
            });
        }
        Ok(out)
    }

    async fn begin_step(
        &self,
        saga: &ClaimedSaga,
        position: u32,
        lease_until: i64,
        now: i64,
    ) -> Result<bool, ConsentError> {
        in_tx!(self, tx => {
            let held = sqlx::query(
                "UPDATE erasure_sagas SET lease_until = $4 WHERE workspace_id = $1 AND request_id = $2 AND lease_token = $3 AND state = 'running'",
            )
            .bind(&saga.saga.workspace)
            .bind(&saga.saga.request_id)
            .bind(&saga.lease_token)
            .bind(lease_until)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if held == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(
                "UPDATE erasure_saga_steps SET state = 'running', started_at = COALESCE(started_at, $4)
                 WHERE workspace_id = $1 AND request_id = $2 AND position = $3 AND state <> 'succeeded'",
            )
            .bind(&saga.saga.workspace)
            .bind(&saga.saga.request_id)
            .bind(i64::from(position))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    async fn step_succeeded(
        &self,
        saga: &ClaimedSaga,
        position: u32,
        attempts: u32,
        finished_at: i64,
        report: &str,
        subject_json: Option<&str>,
        events: &[OutboxEvent],
    ) -> Result<bool, ConsentError> {
        in_tx!(self, tx => {
            let held = sqlx::query(
                "UPDATE erasure_sagas SET subject = COALESCE($4, subject) WHERE workspace_id = $1 AND request_id = $2 AND lease_token = $3 AND state = 'running'",
            )
            .bind(&saga.saga.workspace)
            .bind(&saga.saga.request_id)
            .bind(&saga.lease_token)
            .bind(subject_json)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if held == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(
                "UPDATE erasure_saga_steps SET state = 'succeeded', attempts = $4, last_error = '', finished_at = $5, report = $6
                 WHERE workspace_id = $1 AND request_id = $2 AND position = $3",
            )
            .bind(&saga.saga.workspace)
            .bind(&saga.saga.request_id)
            .bind(i64::from(position))
            .bind(i64::from(attempts))
            .bind(finished_at)
            .bind(report)
            .execute(&mut *tx)
            .await?;
            meridian_bus::enqueue_all(&mut tx, events).await.map_err(bus_err)?;
            tx.commit().await?;
            Ok(true)
        })
    }

    async fn step_failed(
        &self,
        saga: &ClaimedSaga,
        position: u32,
        attempts: u32,
        error: &str,
        next_attempt_at: i64,
    ) -> Result<(), ConsentError> {
        in_tx!(self, tx => {
            let held = sqlx::query(
                "UPDATE erasure_sagas SET next_attempt_at = $4, lease_token = NULL, lease_until = 0
                 WHERE workspace_id = $1 AND request_id = $2 AND lease_token = $3 AND state = 'running'",
            )
            .bind(&saga.saga.workspace)
            .bind(&saga.saga.request_id)
            .bind(&saga.lease_token)
            .bind(next_attempt_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if held == 1 {
                sqlx::query(
                    "UPDATE erasure_saga_steps SET state = 'failed', attempts = $4, last_error = $5
                     WHERE workspace_id = $1 AND request_id = $2 AND position = $3",
                )
                .bind(&saga.saga.workspace)
                .bind(&saga.saga.request_id)
                .bind(i64::from(position))
                .bind(i64::from(attempts))
                .bind(error)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn complete_saga(
        &self,
        saga: &ClaimedSaga,
        completion: &Completion,
    ) -> Result<bool, ConsentError> {
        in_tx!(self, tx => {
            let held = sqlx::query(
                "UPDATE erasure_sagas SET state = 'completed', subject = NULL, lease_token = NULL, lease_until = 0,
                   finished_at = $4, receipt_json = $5, receipt_signature = $6
                 WHERE workspace_id = $1 AND request_id = $2 AND lease_token = $3 AND state = 'running'",
            )
            .bind(&saga.saga.workspace)
            .bind(&saga.saga.request_id)
            .bind(&saga.lease_token)
            .bind(completion.finished_at)
            .bind(&completion.receipt_json)
            .bind(&completion.receipt_signature)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if held == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(
                "UPDATE dsr_requests SET status = 'completed' WHERE workspace_id = $1 AND request_id = $2",
            )
            .bind(&saga.saga.workspace)
            .bind(&saga.saga.request_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO dsr_request_history (workspace_id, request_id, position, status, reason, changed_at)
                 SELECT $1, $2, COALESCE(MAX(position) + 1, 0), 'completed', $3, $4 FROM dsr_request_history WHERE workspace_id = $1 AND request_id = $2",
            )
            .bind(&saga.saga.workspace)
            .bind(&saga.saga.request_id)
            .bind(&completion.reason)
            .bind(completion.finished_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    async fn saga(
        &self,
        workspace: &str,
        request_id: &str,
    ) -> Result<Option<(SagaRow, Vec<StepRow>)>, ConsentError> {
        let sql = format!(
            "SELECT {SAGA_COLUMNS} FROM erasure_sagas WHERE workspace_id = $1 AND request_id = $2"
        );
        let row = on_pool!(self, pool => match sqlx::query(&sql)
            .bind(workspace)
            .bind(request_id)
            .fetch_optional(pool)
            .await?
        {
            Some(r) => Some(saga_from_row(&r)?),
            None => None,
        });
        let Some(row) = row else { return Ok(None) };
        let steps = self.steps_of(workspace, request_id).await?;
        Ok(Some((row, steps)))
    }

    async fn running_sagas(&self) -> Result<u64, ConsentError> {
        let n: i64 = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM erasure_sagas WHERE state = 'running'",
        )
        .fetch_one(pool)
        .await?);
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
