//! TikTok custom audiences through the Business API audience segment mapping (v1.3):
//! `POST /open_api/v1.3/segment/mapping/`, header `Access-Token`, JSON with
//! `advertiser_ids`, `action` (`add`/`delete`), `id_schema` (`EMAIL_SHA256`,
//! `PHONE_SHA256`) and `batch_data` (one array per user, aligned with `id_schema`, each
//! entry `{"id": sha256, "audience_ids": [...]}`), at most 10,000 users per request.
//! TikTok reports errors in the body (`code` ≠ 0) with HTTP 200.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use serde_json::{Value, json};

use crate::connector::{ConnectorError, Direction, MemberRow, SyncOutcome};
use crate::normalize::Field;
use crate::transport::Transport;

pub const USERS_PER_REQUEST: usize = 10_000;

#[derive(Clone)]
pub struct TikTokConfig {
    /// `https://business-api.tiktok.com` in production.
    pub base_url: String,
    pub advertiser_id: String,
    pub audience_id: String,
    pub access_token: String,
    /// `Field::Email` / `Field::Phone`.
    pub schema: Vec<Field>,
}

impl std::fmt::Debug for TikTokConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TikTokConfig")
            .field("base_url", &self.base_url)
            .field("advertiser_id", &self.advertiser_id)
            .field("audience_id", &self.audience_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct TikTokAudience {
    config: Arc<TikTokConfig>,
    transport: Arc<Transport>,
}

impl TikTokAudience {
    pub fn new(config: TikTokConfig, transport: Arc<Transport>) -> Result<Self, ConnectorError> {
        if config.advertiser_id.is_empty() {
            return Err(ConnectorError::Setting("advertiser_id"));
        }
        if config.audience_id.is_empty() {
            return Err(ConnectorError::Setting("audience_id"));
        }
        if config.schema.is_empty()
            || config
                .schema
                .iter()
                .any(|f| !matches!(f, Field::Email | Field::Phone))
        {
            return Err(ConnectorError::Setting("schema"));
        }
        if config.access_token.is_empty() {
            return Err(ConnectorError::Setting("access_token"));
        }
        Ok(TikTokAudience {
            config: Arc::new(config),
            transport,
        })
    }

    pub async fn sync(
        &self,
        direction: Direction,
        rows: &[MemberRow],
    ) -> Result<SyncOutcome, ConnectorError> {
        let mut outcome = SyncOutcome::default();
        let url = format!(
            "{}/open_api/v1.3/segment/mapping/",
            self.config.base_url.trim_end_matches('/')
        );
        let token = HeaderValue::from_str(&self.config.access_token)
            .map_err(|_| ConnectorError::Setting("access_token"))?;
        let headers = [(HeaderName::from_static("access-token"), token)];
        let schema: Vec<&str> = self
            .config
            .schema
            .iter()
            .map(|f| {
                if *f == Field::Email {
                    "EMAIL_SHA256"
                } else {
                    "PHONE_SHA256"
                }
            })
            .collect();
        for chunk in rows.chunks(USERS_PER_REQUEST) {
            let mut users = Vec::with_capacity(chunk.len());
            let mut members = Vec::with_capacity(chunk.len());
            for row in chunk {
                if row.values.iter().all(Option::is_none) {
                    outcome
                        .failed
                        .insert(row.member.clone(), "no identifier TikTok matches on".into());
                    continue;
                }
                let entries: Vec<Value> = (0..schema.len())
                    .map(|i| {
                        let id = row
                            .values
                            .get(i)
                            .copied()
                            .flatten()
                            .map(|h| h.as_str().to_owned())
                            .unwrap_or_default();
                        json!({"id": id, "audience_ids": [self.config.audience_id]})
                    })
                    .collect();
                users.push(Value::Array(entries));
                members.push(row.member.clone());
            }
            if users.is_empty() {
                continue;
            }
            let body = json!({
                "advertiser_ids": [self.config.advertiser_id],
                "action": if direction == Direction::Add { "add" } else { "delete" },
                "id_schema": schema,
                "batch_data": users,
            });
            let answer = self
                .transport
                .send(
                    Method::POST,
                    &url,
                    &headers,
                    "application/json",
                    Bytes::from(body.to_string()),
                )
                .await;
            let reason = match answer {
                Ok(answer) => {
                    outcome.requests += u64::from(answer.attempts);
                    let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
                    match value["code"].as_i64() {
                        Some(0) => None,
                        Some(code) => {
                            let reason = format!(
                                "tiktok:{code}: {}",
                                value["message"].as_str().unwrap_or("")
                            );
                            if code == 40105 || code == 40001 {
                                return Err(ConnectorError::Unauthorized(reason));
                            }
                            Some(reason)
                        }
                        None => Some(format!("tiktok: HTTP {}", answer.status)),
                    }
                }
                Err(error) => Some(format!("tiktok:{error}")),
            };
            match reason {
                None => outcome.accepted += members.len() as u64,
                Some(reason) => {
                    for member in members {
                        outcome.failed.insert(member, reason.clone());
                    }
                }
            }
        }
        Ok(outcome)
    }
}
