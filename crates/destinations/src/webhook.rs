//! Webhook and file destinations, for everything without a dedicated connector.
//!
//! - **Webhook**: `POST` of JSON `{"action": "add"|"remove", "schema": [...], "members":
//!   [{"member", "identifiers": [sha256 | null, ...]}]}` signed with HMAC-SHA256 over
//!   `"{timestamp}.{body}"` under the destination's secret: headers
//!   `X-Meridian-Timestamp` (Unix seconds) and `X-Meridian-Signature: v1=<hex>` (the receiver
//!   recomputes and compares, and refuses old timestamps against replays);
//!   `Idempotency-Key: <session>-<batch>` so a retried batch is recognised.
//! - **File**: one file per batch in a directory, CSV (`member,<field>_sha256,…`) or NDJSON,
//!   written to a temporary name and renamed, so a reader never sees half a file.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use ring::hmac;
use serde_json::{Value, json};

use crate::connector::{ConnectorError, Direction, MemberRow, SyncOutcome};
use crate::normalize::Field;
use crate::transport::Transport;

pub const MEMBERS_PER_BATCH: usize = 1_000;

fn schema_names(schema: &[Field]) -> Vec<String> {
    schema
        .iter()
        .map(|f| format!("{}_sha256", f.as_str()))
        .collect()
}

fn direction_word(direction: Direction) -> &'static str {
    match direction {
        Direction::Add => "add",
        Direction::Remove => "remove",
    }
}

/// `v1=<hex>` of HMAC-SHA256(secret, "{timestamp}.{body}").
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

#[derive(Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: Vec<u8>,
    pub schema: Vec<Field>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Webhook {
    config: Arc<WebhookConfig>,
    transport: Arc<Transport>,
}

impl Webhook {
    pub fn new(config: WebhookConfig, transport: Arc<Transport>) -> Result<Self, ConnectorError> {
        if config.secret.len() < 16 {
            return Err(ConnectorError::Setting("secret"));
        }
        if config.url.is_empty() {
            return Err(ConnectorError::Setting("url"));
        }
        Ok(Webhook {
            config: Arc::new(config),
            transport,
        })
    }

    /// Sends `rows` in signed batches; `session` makes the idempotency keys.
    pub async fn sync(
        &self,
        direction: Direction,
        rows: &[MemberRow],
        session: u64,
        now_unix: i64,
    ) -> Result<SyncOutcome, ConnectorError> {
        let mut outcome = SyncOutcome::default();
        for (seq, chunk) in rows.chunks(MEMBERS_PER_BATCH).enumerate() {
            let body = json!({
                "action": direction_word(direction),
                "schema": schema_names(&self.config.schema),
                "members": chunk.iter().map(|r| json!({
                    "member": r.member,
                    "identifiers": r.values.iter().map(|v| v.map_or(Value::Null, |h| Value::String(h.as_str().to_owned()))).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
            .to_string();
            let header = |v: String| {
                HeaderValue::from_str(&v).map_err(|_| ConnectorError::Setting("secret"))
            };
            let headers = [
                (
                    HeaderName::from_static("x-meridian-timestamp"),
                    header(now_unix.to_string())?,
                ),
                (
                    HeaderName::from_static("x-meridian-signature"),
                    header(signature(&self.config.secret, now_unix, body.as_bytes()))?,
                ),
                (
                    HeaderName::from_static("idempotency-key"),
                    header(format!("{session}-{}", seq + 1))?,
                ),
            ];
            let answer = self
                .transport
                .send(
                    Method::POST,
                    &self.config.url,
                    &headers,
                    "application/json",
                    Bytes::from(body),
                )
                .await;
            let failure = match answer {
                Ok(a) if a.status.is_success() => {
                    outcome.requests += u64::from(a.attempts);
                    None
                }
                Ok(a) => {
                    outcome.requests += u64::from(a.attempts);
                    if a.status == http::StatusCode::UNAUTHORIZED
                        || a.status == http::StatusCode::FORBIDDEN
                    {
                        return Err(ConnectorError::Unauthorized(format!(
                            "webhook: HTTP {}",
                            a.status
                        )));
                    }
                    Some(format!("webhook: HTTP {}", a.status))
                }
                Err(e) => Some(format!("webhook:{e}")),
            };
            match failure {
                None => outcome.accepted += chunk.len() as u64,
                Some(reason) => {
                    for row in chunk {
                        outcome.failed.insert(row.member.clone(), reason.clone());
                    }
                }
            }
        }
        Ok(outcome)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Csv,
    Ndjson,
}

/// Batches as files in a directory.
#[derive(Debug, Clone)]
pub struct FileDrop {
    pub directory: PathBuf,
    pub prefix: String,
    pub format: FileFormat,
    pub schema: Vec<Field>,
}

impl FileDrop {
    /// Writes `rows` as files `{prefix}-{session}-{batch}-{action}.{csv|ndjson}` (creating
    /// the directory on first use); returns the paths written.
    pub fn write(
        &self,
        direction: Direction,
        rows: &[MemberRow],
        session: u64,
    ) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(&self.directory)?;
        let names = schema_names(&self.schema);
        let mut written = Vec::new();
        for (seq, chunk) in rows.chunks(MEMBERS_PER_BATCH).enumerate() {
            let extension = match self.format {
                FileFormat::Csv => "csv",
                FileFormat::Ndjson => "ndjson",
            };
            let name = format!(
                "{}-{session}-{}-{}.{extension}",
                self.prefix,
                seq + 1,
                direction_word(direction)
            );
            let path = self.directory.join(&name);
            let temporary = self.directory.join(format!(".{name}.tmp"));
            let mut file = std::io::BufWriter::new(std::fs::File::create(&temporary)?);
            if self.format == FileFormat::Csv {
                writeln!(file, "member,{}", names.join(","))?;
            }
            for row in chunk {
                let values: Vec<&str> = (0..names.len())
                    .map(|i| {
                        row.values
                            .get(i)
                            .and_then(Option::as_ref)
                            .map_or("", |h| h.as_str())
                    })
                    .collect();
                match self.format {
                    // Member references are Meridian ids (no commas or quotes).
                    FileFormat::Csv => writeln!(file, "{},{}", row.member, values.join(","))?,
                    FileFormat::Ndjson => {
                        let mut object = serde_json::Map::new();
                        object.insert("member".into(), Value::String(row.member.clone()));
                        for (name, value) in names.iter().zip(values) {
                            object.insert(
                                name.clone(),
                                if value.is_empty() {
                                    Value::Null
                                } else {
                                    Value::String(value.to_owned())
                                },
                            );
                        }
                        writeln!(file, "{}", Value::Object(object))?;
                    }
                }
            }
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            written.push(path);
        }
        Ok(written)
    }
}
