//! Meta Custom Audiences: `POST` (add) and `DELETE` (remove) `/{version}/{audience_id}/users`
//! on the Graph API (Marketing API reference, "Custom Audience Users").
//!
//! The body is form-encoded like the official SDK sends it: `payload` is JSON
//! `{"schema": ["EMAIL", "PHONE", …], "data": [[sha256, sha256, …], …]}` (multi-key rows,
//! `""` for a key the member lacks) and `session` is JSON `{"session_id", "batch_seq",
//! "last_batch_flag", "estimated_num_total"}`. At most 10,000 rows per request. Batches of
//! one sync share a session id derived from the sync, so a retried sync is recognised by
//! Meta (same session, same batch sequence) instead of counted twice; the last batch goes
//! alone, after the others succeeded or failed, with `last_batch_flag`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::connector::{ConnectorError, Direction, MemberRow, SyncOutcome};
use crate::normalize::Field;
use crate::transport::Transport;

/// Meta's documented maximum rows per request.
pub const MAX_ROWS_PER_REQUEST: usize = 10_000;

/// Where and as whom to talk to Meta.
#[derive(Clone)]
pub struct MetaConfig {
    /// `https://graph.facebook.com` in production.
    pub base_url: String,
    /// `v21.0`.
    pub api_version: String,
    pub audience_id: String,
    pub access_token: String,
    /// The multi-key schema of the rows.
    pub schema: Vec<Field>,
    /// Rows per request (≤ 10,000).
    pub batch_size: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl std::fmt::Debug for MetaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaConfig")
            .field("base_url", &self.base_url)
            .field("api_version", &self.api_version)
            .field("audience_id", &self.audience_id)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// A Meta custom audience reached through a [`Transport`].
#[derive(Debug, Clone)]
pub struct MetaCustomAudience {
    config: Arc<MetaConfig>,
    transport: Arc<Transport>,
}

impl MetaCustomAudience {
    pub fn new(config: MetaConfig, transport: Arc<Transport>) -> Result<Self, ConnectorError> {
        if config.audience_id.is_empty() || !config.audience_id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ConnectorError::Setting("audience_id"));
        }
        if !config.api_version.starts_with('v') {
            return Err(ConnectorError::Setting("api_version"));
        }
        if config.schema.is_empty() {
            return Err(ConnectorError::Setting("schema"));
        }
        if config.batch_size == 0 || config.batch_size > MAX_ROWS_PER_REQUEST {
            return Err(ConnectorError::Setting("batch_size"));
        }
        if config.access_token.is_empty() {
            return Err(ConnectorError::Setting("access_token"));
        }
        Ok(MetaCustomAudience {
            config: Arc::new(config),
            transport,
        })
    }

    fn url(&self) -> String {
        format!(
            "{}/{}/{}/users",
            self.config.base_url.trim_end_matches('/'),
            self.config.api_version,
            self.config.audience_id
        )
    }

    /// Sends `rows` (each in `schema` order) in one upload session `session_id`.
    pub async fn sync(
        &self,
        direction: Direction,
        rows: Arc<[MemberRow]>,
        session_id: u64,
    ) -> Result<SyncOutcome, ConnectorError> {
        let mut outcome = SyncOutcome::default();
        // Rows without any identifier would only be counted invalid by Meta.
        let mut ranges = Vec::new();
        let total = rows.len();
        let mut start = 0;
        while start < total {
            let end = (start + self.config.batch_size).min(total);
            ranges.push(start..end);
            start = end;
        }
        let batches = ranges.len();
        let Some(last) = ranges.pop() else {
            return Ok(outcome);
        };
        let mut in_flight = JoinSet::new();
        for (index, range) in ranges.into_iter().enumerate() {
            if in_flight.len() >= self.config.concurrency.max(1)
                && let Some(done) = in_flight.join_next().await
            {
                outcome.merge(done.map_err(join_error)??);
            }
            let this = self.clone();
            let rows = rows.clone();
            let session = Session {
                id: session_id,
                seq: index as u64 + 1,
                last: false,
                total: total as u64,
            };
            in_flight.spawn(async move { this.send_batch(direction, &rows[range], session).await });
        }
        while let Some(done) = in_flight.join_next().await {
            outcome.merge(done.map_err(join_error)??);
        }
        let session = Session {
            id: session_id,
            seq: batches as u64,
            last: true,
            total: total as u64,
        };
        outcome.merge(self.send_batch(direction, &rows[last], session).await?);
        Ok(outcome)
    }

    async fn send_batch(
        &self,
        direction: Direction,
        rows: &[MemberRow],
        session: Session,
    ) -> Result<SyncOutcome, ConnectorError> {
        let body = encode_body(&self.config.schema, rows, session);
        let method = match direction {
            Direction::Add => Method::POST,
            Direction::Remove => Method::DELETE,
        };
        let auth = HeaderValue::from_str(&format!("Bearer {}", self.config.access_token))
            .map_err(|_| ConnectorError::Setting("access_token"))?;
        let answer = self
            .transport
            .send(
                method,
                &self.url(),
                &[(HeaderName::from_static("authorization"), auth)],
                "application/x-www-form-urlencoded",
                body,
            )
            .await;
        let mut outcome = SyncOutcome::default();
        match answer {
            Ok(answer) if answer.status == StatusCode::OK => {
                outcome.requests = u64::from(answer.attempts);
                outcome.accepted = rows.len() as u64;
            }
            Ok(answer) => {
                outcome.requests = u64::from(answer.attempts);
                let reason = graph_error(&answer.body);
                if answer.status == StatusCode::UNAUTHORIZED || reason.starts_with("meta:190") {
                    return Err(ConnectorError::Unauthorized(reason));
                }
                for row in rows {
                    outcome.failed.insert(row.member.clone(), reason.clone());
                }
            }
            Err(error) => {
                let reason = format!("meta:{error}");
                for row in rows {
                    outcome.failed.insert(row.member.clone(), reason.clone());
                }
            }
        }
        Ok(outcome)
    }
}

fn join_error(error: tokio::task::JoinError) -> ConnectorError {
    ConnectorError::Task(error.to_string())
}

#[derive(Debug, Clone, Copy)]
struct Session {
    id: u64,
    seq: u64,
    last: bool,
    total: u64,
}

/// `payload=…&session=…`, form-encoded as the SDK sends it.
fn encode_body(schema: &[Field], rows: &[MemberRow], session: Session) -> Bytes {
    // 64 hex + quotes and comma per value.
    let mut payload = String::with_capacity(64 + rows.len() * (schema.len() * 67 + 3));
    payload.push_str("{\"schema\":[");
    for (i, field) in schema.iter().enumerate() {
        if i > 0 {
            payload.push(',');
        }
        payload.push('"');
        payload.push_str(field.meta_schema());
        payload.push('"');
    }
    payload.push_str("],\"data\":[");
    for (r, row) in rows.iter().enumerate() {
        if r > 0 {
            payload.push(',');
        }
        payload.push('[');
        for i in 0..schema.len() {
            if i > 0 {
                payload.push(',');
            }
            payload.push('"');
            if let Some(Some(hash)) = row.values.get(i) {
                payload.push_str(hash.as_str());
            }
            payload.push('"');
        }
        payload.push(']');
    }
    payload.push_str("]}");
    let session = format!(
        "{{\"session_id\":{},\"batch_seq\":{},\"last_batch_flag\":{},\"estimated_num_total\":{}}}",
        session.id, session.seq, session.last, session.total
    );
    let body = url::form_urlencoded::Serializer::new(String::with_capacity(payload.len() * 3 / 2))
        .append_pair("payload", &payload)
        .append_pair("session", &session)
        .finish();
    Bytes::from(body)
}

/// `meta:<code>[/<subcode>]: <message>` from a Graph API error body.
fn graph_error(body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = &value["error"];
    let code = error["code"].as_i64().unwrap_or(0);
    let message = error["message"].as_str().unwrap_or("unreadable error body");
    match error["error_subcode"].as_i64() {
        Some(sub) => format!("meta:{code}/{sub}: {message}"),
        None => format!("meta:{code}: {message}"),
    }
}
