//! Google Ads Customer Match through `OfflineUserDataJobService` (Google Ads API REST):
//! `offlineUserDataJobs:create` (type `CUSTOMER_MATCH_USER_LIST`, the user list, and the
//! EU user consent `adUserData` / `adPersonalization`), `…:addOperations` with `create` or
//! `remove` operations of `userIdentifiers` (`hashedEmail`, `hashedPhoneNumber`), then
//! `…:run`. Google allows at most 100,000 identifiers per `addOperations` request and 20
//! per user; we send 10,000 users per request as Google recommends. Headers:
//! `Authorization: Bearer`, `developer-token`, optional `login-customer-id`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{Value, json};

use crate::connector::{ConnectorError, Direction, MemberRow, SyncOutcome};
use crate::normalize::Field;
use crate::transport::Transport;

pub const USERS_PER_REQUEST: usize = 10_000;

#[derive(Clone)]
pub struct GoogleAdsConfig {
    /// `https://googleads.googleapis.com` in production.
    pub base_url: String,
    /// `v21`.
    pub api_version: String,
    pub customer_id: String,
    pub user_list_id: String,
    pub access_token: String,
    pub developer_token: String,
    pub login_customer_id: Option<String>,
    /// `hashedEmail` / `hashedPhoneNumber` per row position: `Field::Email` / `Field::Phone`.
    pub schema: Vec<Field>,
}

impl std::fmt::Debug for GoogleAdsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleAdsConfig")
            .field("base_url", &self.base_url)
            .field("customer_id", &self.customer_id)
            .field("user_list_id", &self.user_list_id)
            .finish_non_exhaustive()
    }
}

/// The consent Google asks for with every Customer Match job (EU user consent policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoogleConsent {
    pub ad_user_data: bool,
    pub ad_personalization: bool,
}

#[derive(Debug, Clone)]
pub struct GoogleCustomerMatch {
    config: Arc<GoogleAdsConfig>,
    transport: Arc<Transport>,
}

impl GoogleCustomerMatch {
    pub fn new(config: GoogleAdsConfig, transport: Arc<Transport>) -> Result<Self, ConnectorError> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(&config.customer_id) {
            return Err(ConnectorError::Setting("customer_id"));
        }
        if !digits(&config.user_list_id) {
            return Err(ConnectorError::Setting("user_list_id"));
        }
        if config.schema.is_empty()
            || config
                .schema
                .iter()
                .any(|f| !matches!(f, Field::Email | Field::Phone))
        {
            return Err(ConnectorError::Setting("schema"));
        }
        if config.access_token.is_empty() || config.developer_token.is_empty() {
            return Err(ConnectorError::Setting("access_token"));
        }
        Ok(GoogleCustomerMatch {
            config: Arc::new(config),
            transport,
        })
    }

    fn headers(&self) -> Result<Vec<(HeaderName, HeaderValue)>, ConnectorError> {
        let value =
            |s: &str, name| HeaderValue::from_str(s).map_err(|_| ConnectorError::Setting(name));
        let mut headers = vec![
            (
                HeaderName::from_static("authorization"),
                value(
                    &format!("Bearer {}", self.config.access_token),
                    "access_token",
                )?,
            ),
            (
                HeaderName::from_static("developer-token"),
                value(&self.config.developer_token, "developer_token")?,
            ),
        ];
        if let Some(login) = &self.config.login_customer_id {
            headers.push((
                HeaderName::from_static("login-customer-id"),
                value(login, "login_customer_id")?,
            ));
        }
        Ok(headers)
    }

    async fn call(&self, path: &str, body: Value) -> Result<Result<Value, String>, ConnectorError> {
        let url = format!(
            "{}/{}/customers/{}/{path}",
            self.config.base_url.trim_end_matches('/'),
            self.config.api_version,
            self.config.customer_id
        );
        let answer = self
            .transport
            .send(
                Method::POST,
                &url,
                &self.headers()?,
                "application/json",
                Bytes::from(body.to_string()),
            )
            .await?;
        let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        if answer.status == StatusCode::OK {
            return Ok(Ok(value));
        }
        let status = value["error"]["status"]
            .as_str()
            .unwrap_or("UNKNOWN")
            .to_owned();
        let reason = format!(
            "google:{status}: {}",
            value["error"]["message"]
                .as_str()
                .unwrap_or("unreadable error body")
        );
        if answer.status == StatusCode::UNAUTHORIZED || answer.status == StatusCode::FORBIDDEN {
            return Err(ConnectorError::Unauthorized(reason));
        }
        Ok(Err(reason))
    }

    /// One job: create (with consent), add every member's operations, run.
    pub async fn sync(
        &self,
        direction: Direction,
        rows: &[MemberRow],
        consent: GoogleConsent,
    ) -> Result<SyncOutcome, ConnectorError> {
        let mut outcome = SyncOutcome::default();
        let word = |b: bool| if b { "GRANTED" } else { "DENIED" };
        let user_list = format!(
            "customers/{}/userLists/{}",
            self.config.customer_id, self.config.user_list_id
        );
        let created = self
            .call(
                "offlineUserDataJobs:create",
                json!({"job": {
                    "type": "CUSTOMER_MATCH_USER_LIST",
                    "customerMatchUserListMetadata": {
                        "userList": user_list,
                        "consent": {
                            "adUserData": word(consent.ad_user_data),
                            "adPersonalization": word(consent.ad_personalization),
                        },
                    },
                }}),
            )
            .await?;
        outcome.requests += 1;
        let job = match created {
            Ok(v) => v["resourceName"].as_str().unwrap_or_default().to_owned(),
            Err(reason) => {
                for row in rows {
                    outcome.failed.insert(row.member.clone(), reason.clone());
                }
                return Ok(outcome);
            }
        };
        let job_path = job
            .rsplit_once("/offlineUserDataJobs/")
            .map(|(_, id)| format!("offlineUserDataJobs/{id}"))
            .unwrap_or_default();
        let op = match direction {
            Direction::Add => "create",
            Direction::Remove => "remove",
        };
        let mut added = Vec::new();
        for chunk in rows.chunks(USERS_PER_REQUEST) {
            let mut operations = Vec::with_capacity(chunk.len());
            let mut members = Vec::with_capacity(chunk.len());
            for row in chunk {
                let identifiers: Vec<Value> = self
                    .config
                    .schema
                    .iter()
                    .zip(&row.values)
                    .filter_map(|(field, value)| {
                        let hash = value.as_ref()?.as_str().to_owned();
                        Some(match field {
                            Field::Email => json!({"hashedEmail": hash}),
                            _ => json!({"hashedPhoneNumber": hash}),
                        })
                    })
                    .collect();
                if identifiers.is_empty() {
                    outcome
                        .failed
                        .insert(row.member.clone(), "no identifier Google matches on".into());
                    continue;
                }
                operations.push(json!({ op: {"userIdentifiers": identifiers} }));
                members.push(row.member.clone());
            }
            if operations.is_empty() {
                continue;
            }
            let result = self
                .call(
                    &format!("{job_path}:addOperations"),
                    json!({"enablePartialFailure": true, "operations": operations}),
                )
                .await?;
            outcome.requests += 1;
            match result {
                Ok(_) => added.extend(members),
                Err(reason) => {
                    for member in members {
                        outcome.failed.insert(member, reason.clone());
                    }
                }
            }
        }
        if added.is_empty() {
            return Ok(outcome);
        }
        let ran = self.call(&format!("{job_path}:run"), json!({})).await?;
        outcome.requests += 1;
        match ran {
            Ok(_) => outcome.accepted += added.len() as u64,
            Err(reason) => {
                for member in added {
                    outcome.failed.insert(member, reason.clone());
                }
            }
        }
        Ok(outcome)
    }
}
