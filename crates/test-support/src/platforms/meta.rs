//! Fake of Meta's Custom Audience users edge (Marketing API reference, "Custom Audience
//! Users"): `POST` / `DELETE /{version}/{custom_audience_id}/users`, form-encoded `payload`
//! (JSON: `schema`, `data`) and optional `session` (JSON: `session_id`, `batch_seq`,
//! `last_batch_flag`, `estimated_num_total`), at most 10,000 rows per request, an access
//! token (`Authorization: Bearer` or `access_token`). Errors are Graph API error objects
//! (`{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}`): code 190 for a
//! bad token, 100 for invalid parameters, 80003 (custom audience throttling) with HTTP 429.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};

use super::{Failure, FailureQueue, Running, is_sha256_hex, json_response, lock, serve};

/// Meta's documented maximum rows per request.
pub const MAX_ROWS_PER_REQUEST: usize = 10_000;

const KNOWN_KEYS: &[&str] = &[
    "EXTERN_ID",
    "EMAIL",
    "PHONE",
    "GEN",
    "DOBY",
    "DOBM",
    "DOBD",
    "LN",
    "FN",
    "FI",
    "CT",
    "ST",
    "ZIP",
    "MADID",
    "COUNTRY",
];

/// One accepted request, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub audience_id: String,
    pub removal: bool,
    pub schema: Vec<String>,
    pub rows: usize,
    pub session_id: Option<u64>,
    pub batch_seq: Option<u64>,
    pub last_batch: bool,
}

#[derive(Debug, Default)]
struct Audience {
    /// Rows (one string per schema key, in schema order) — only when members are kept.
    members: HashSet<Vec<String>>,
    received: u64,
    /// (session, batch_seq) already applied: a retried batch is acknowledged, not re-applied.
    applied: HashSet<(u64, u64)>,
}

#[derive(Debug)]
struct Inner {
    token: String,
    keep_members: bool,
    audiences: Mutex<HashMap<String, Audience>>,
    batches: Mutex<Vec<Batch>>,
    /// (audience, row) of every removal row applied, in order, repeats included.
    removed: Mutex<Vec<(String, Vec<String>)>>,
    failures: FailureQueue,
}

/// A fake Meta Graph API holding custom audiences.
#[derive(Debug, Clone)]
pub struct MetaFake {
    inner: Arc<Inner>,
}

impl MetaFake {
    /// A fake accepting `token`; `keep_members: false` only counts rows (for benchmarks).
    pub fn new(token: &str, keep_members: bool) -> Self {
        MetaFake {
            inner: Arc::new(Inner {
                token: token.to_owned(),
                keep_members,
                audiences: Mutex::default(),
                batches: Mutex::default(),
                removed: Mutex::default(),
                failures: FailureQueue::default(),
            }),
        }
    }

    pub async fn start(&self) -> std::io::Result<Running> {
        let router = Router::new()
            .route(
                "/{version}/{audience_id}/users",
                post(handle).delete(handle),
            )
            .with_state(self.clone());
        serve(router).await
    }

    /// Answers the next `times` requests with `failure`.
    pub fn fail_next(&self, failure: Failure, times: usize) {
        self.inner.failures.push(failure, times);
    }

    /// Every request fails with `failure` until [`MetaFake::recover`].
    pub fn fail_until_recovered(&self, failure: Failure) {
        self.inner.failures.set_outage(Some(failure));
    }

    /// Ends an outage started by [`MetaFake::fail_until_recovered`].
    pub fn recover(&self) {
        self.inner.failures.set_outage(None);
    }

    /// Every row a removal (`DELETE`) applied to the audience, in order: a row removed
    /// twice appears twice (removing a row the audience no longer holds changes nothing, as
    /// on Meta). A replayed batch of a session is not applied again, so not listed.
    pub fn removed_rows(&self, audience_id: &str) -> Vec<Vec<String>> {
        lock(&self.inner.removed)
            .iter()
            .filter(|(a, _)| a == audience_id)
            .map(|(_, row)| row.clone())
            .collect()
    }

    /// The rows the audience holds now (schema order of the requests that added them).
    pub fn members(&self, audience_id: &str) -> HashSet<Vec<String>> {
        lock(&self.inner.audiences)
            .get(audience_id)
            .map(|a| a.members.clone())
            .unwrap_or_default()
    }

    /// Rows received by `POST` for the audience (counted once per applied batch).
    pub fn received(&self, audience_id: &str) -> u64 {
        lock(&self.inner.audiences)
            .get(audience_id)
            .map_or(0, |a| a.received)
    }

    pub fn batches(&self) -> Vec<Batch> {
        lock(&self.inner.batches).clone()
    }
}

fn graph_error(status: StatusCode, code: u32, subcode: Option<u32>, message: &str) -> Response {
    let mut error = json!({
        "message": message,
        "type": if code == 190 { "OAuthException" } else { "GraphMethodException" },
        "code": code,
        "fbtrace_id": "AFakeTraceId",
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = json!(subcode);
    }
    json_response(status, &json!({ "error": error }))
}

fn invalid(message: &str) -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        100,
        None,
        &format!("(#100) {message}"),
    )
}

async fn handle(
    State(fake): State<MetaFake>,
    Path((version, audience_id)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match fake.inner.failures.next() {
        Some(Failure::Throttle {
            retry_after_seconds,
        }) => {
            let mut response = graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                80003,
                Some(2446079),
                "There have been too many calls to this ad-account. Wait a bit and try again.",
            );
            response.headers_mut().insert(
                "retry-after",
                retry_after_seconds
                    .to_string()
                    .parse()
                    .unwrap_or(axum::http::HeaderValue::from_static("1")),
            );
            return response;
        }
        Some(Failure::Unavailable) => {
            return graph_error(
                StatusCode::SERVICE_UNAVAILABLE,
                2,
                None,
                "An unexpected error has occurred. Please retry your request later.",
            );
        }
        None => {}
    }
    let version_ok = version
        .strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && (a.to_owned() + b).bytes().all(|c| c.is_ascii_digit())
        });
    if !version_ok {
        return graph_error(StatusCode::BAD_REQUEST, 2635, None, "Unknown API version");
    }
    if audience_id.is_empty() || !audience_id.bytes().all(|b| b.is_ascii_digit()) {
        return graph_error(
            StatusCode::NOT_FOUND,
            803,
            None,
            "(#803) Some of the aliases you requested do not exist",
        );
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or_else(|| form.get("access_token").cloned());
    if bearer.as_deref() != Some(fake.inner.token.as_str()) {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            190,
            None,
            "Invalid OAuth access token - Cannot parse access token",
        );
    }
    let is_form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return invalid("The parameter payload is required");
    }
    let Some(payload) = form.get("payload") else {
        return invalid("The parameter payload is required");
    };
    let Ok(payload) = serde_json::from_str::<Value>(payload) else {
        return invalid("Param payload must be a JSON object");
    };
    let schema: Vec<String> = match &payload["schema"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(keys) => keys
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        _ => return invalid("Param payload[schema] is required"),
    };
    if schema.is_empty() || schema.iter().any(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return invalid("Invalid schema key in payload[schema]");
    }
    let unique: HashSet<&String> = schema.iter().collect();
    if unique.len() != schema.len() {
        return invalid("Duplicate key in payload[schema]");
    }
    let Some(data) = payload["data"].as_array() else {
        return invalid("Param payload[data] must be an array");
    };
    if data.is_empty() {
        return invalid("Param payload[data] must not be empty");
    }
    if data.len() > MAX_ROWS_PER_REQUEST {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            Some(1870145),
            "(#100) The number of users in the payload exceeds 10000",
        );
    }
    let mut rows = Vec::with_capacity(data.len());
    let mut invalid_entries = 0u64;
    for row in data {
        let Some(values) = row.as_array() else {
            return invalid("Each row of payload[data] must be an array");
        };
        if values.len() != schema.len() {
            return invalid("Number of keys in each row must match payload[schema]");
        }
        let mut out = Vec::with_capacity(values.len());
        let mut usable = false;
        for (key, value) in schema.iter().zip(values) {
            let Some(value) = value.as_str() else {
                return invalid("Values in payload[data] must be strings");
            };
            if key != "EXTERN_ID" && !value.is_empty() && !is_sha256_hex(value) {
                return invalid("Data must be hashed with SHA-256 (64 lowercase hex characters)");
            }
            usable |= !value.is_empty();
            out.push(value.to_owned());
        }
        if usable {
            rows.push(out);
        } else {
            invalid_entries += 1;
        }
    }
    let session = match form.get("session") {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(s) => {
                let id = s["session_id"].as_u64();
                let seq = s["batch_seq"].as_u64();
                let last = s["last_batch_flag"].as_bool();
                match (id, seq, last) {
                    (Some(id), Some(seq), Some(last)) if seq >= 1 => Some((id, seq, last)),
                    _ => {
                        return invalid(
                            "session must have session_id, batch_seq >= 1 and last_batch_flag",
                        );
                    }
                }
            }
            Err(_) => return invalid("Param session must be a JSON object"),
        },
        None => None,
    };
    let removal = method == Method::DELETE;
    let received = rows.len() as u64;
    {
        let mut audiences = lock(&fake.inner.audiences);
        let audience = audiences.entry(audience_id.clone()).or_default();
        let replay = session.is_some_and(|(id, seq, _)| !audience.applied.insert((id, seq)));
        if !replay {
            if !removal {
                audience.received += received;
            } else {
                lock(&fake.inner.removed)
                    .extend(rows.iter().map(|row| (audience_id.clone(), row.clone())));
            }
            if fake.inner.keep_members {
                for row in rows {
                    if removal {
                        audience.members.remove(&row);
                    } else {
                        audience.members.insert(row);
                    }
                }
            }
        }
    }
    lock(&fake.inner.batches).push(Batch {
        audience_id: audience_id.clone(),
        removal,
        schema,
        rows: data.len(),
        session_id: session.map(|s| s.0),
        batch_seq: session.map(|s| s.1),
        last_batch: session.is_some_and(|s| s.2),
    });
    let mut answer = json!({
        "audience_id": audience_id,
        "num_received": received,
        "num_invalid_entries": invalid_entries,
        "invalid_entry_samples": {},
    });
    if let Some((id, _, _)) = session {
        answer["session_id"] = json!(id.to_string());
    }
    json_response(StatusCode::OK, &answer)
}
