//! Fake of TikTok's Business API audience segment mapping (v1.3):
//! `POST /open_api/v1.3/segment/mapping/` with header `Access-Token` and JSON
//! `{"advertiser_ids", "action": "add"|"delete", "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"],
//! "batch_data": [[{"id", "audience_ids"}, …], …]}` — one inner array per user, aligned with
//! `id_schema`. TikTok answers HTTP 200 with `{"code", "message", "request_id", "data"}`;
//! `code` 0 is success, 40105 a bad token, 40002 invalid parameters, 40100 too many
//! requests (also sent as HTTP 429 with `Retry-After` when asked to fail).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};

use super::{Failure, FailureQueue, Running, is_sha256_hex, json_response, lock, serve};

pub const MAX_USERS_PER_REQUEST: usize = 10_000;
const SCHEMAS: &[&str] = &["EMAIL_SHA256", "PHONE_SHA256", "IDFA_SHA256", "GAID_SHA256"];

#[derive(Debug)]
struct Inner {
    token: String,
    advertiser_id: String,
    /// audience id → (schema, hash) pairs.
    audiences: Mutex<HashMap<String, HashSet<(String, String)>>>,
    failures: FailureQueue,
}

#[derive(Debug, Clone)]
pub struct TikTokFake {
    inner: Arc<Inner>,
}

fn answer(code: u32, message: &str) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"code": code, "message": message, "request_id": "fake-request", "data": {}}),
    )
}

impl TikTokFake {
    pub fn new(token: &str, advertiser_id: &str) -> Self {
        TikTokFake {
            inner: Arc::new(Inner {
                token: token.to_owned(),
                advertiser_id: advertiser_id.to_owned(),
                audiences: Mutex::default(),
                failures: FailureQueue::default(),
            }),
        }
    }

    pub async fn start(&self) -> std::io::Result<Running> {
        let router = Router::new()
            .route("/open_api/v1.3/segment/mapping/", post(mapping))
            .with_state(self.clone());
        serve(router).await
    }

    pub fn fail_next(&self, failure: Failure, times: usize) {
        self.inner.failures.push(failure, times);
    }

    /// `(id_schema, sha256)` pairs the audience holds.
    pub fn members(&self, audience_id: &str) -> HashSet<(String, String)> {
        lock(&self.inner.audiences)
            .get(audience_id)
            .cloned()
            .unwrap_or_default()
    }
}

async fn mapping(State(fake): State<TikTokFake>, headers: HeaderMap, body: Bytes) -> Response {
    match fake.inner.failures.next() {
        Some(Failure::Throttle {
            retry_after_seconds,
        }) => {
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"code": 40100, "message": "Too many requests. Please retry in some time.", "request_id": "fake-request", "data": {}}),
            );
            if let Ok(v) = retry_after_seconds.to_string().parse() {
                r.headers_mut().insert("retry-after", v);
            }
            return r;
        }
        Some(Failure::Unavailable) => {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"code": 50002, "message": "Service unavailable", "request_id": "fake-request", "data": {}}),
            );
        }
        None => {}
    }
    let token = headers.get("access-token").and_then(|v| v.to_str().ok());
    if token != Some(fake.inner.token.as_str()) {
        return answer(40105, "The access token is invalid or has been revoked.");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return answer(40002, "Invalid JSON");
    };
    let advertisers: Vec<&str> = body["advertiser_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if advertisers != [fake.inner.advertiser_id.as_str()] {
        return answer(40001, "No permission to operate advertiser_ids");
    }
    let delete = match body["action"].as_str() {
        Some("add") => false,
        Some("delete") => true,
        _ => return answer(40002, "action: must be add or delete"),
    };
    let schema: Vec<&str> = body["id_schema"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if schema.is_empty() || schema.iter().any(|s| !SCHEMAS.contains(s)) {
        return answer(40002, "id_schema: invalid value");
    }
    let Some(batch) = body["batch_data"].as_array() else {
        return answer(40002, "batch_data: required");
    };
    if batch.is_empty() || batch.len() > MAX_USERS_PER_REQUEST {
        return answer(40002, "batch_data: length must be between 1 and 10000");
    }
    let mut staged = Vec::new();
    for user in batch {
        let Some(entries) = user.as_array() else {
            return answer(40002, "batch_data: each user must be an array");
        };
        if entries.len() != schema.len() {
            return answer(40002, "batch_data: each user must match id_schema");
        }
        for (kind, entry) in schema.iter().zip(entries) {
            let id = entry["id"].as_str().unwrap_or("x");
            if id.is_empty() {
                continue;
            }
            if !is_sha256_hex(id) {
                return answer(40002, "batch_data: id must be SHA256 hashed");
            }
            let Some(audiences) = entry["audience_ids"].as_array().filter(|a| !a.is_empty()) else {
                return answer(40002, "batch_data: audience_ids required");
            };
            for audience in audiences {
                let Some(audience) = audience.as_str() else {
                    return answer(40002, "audience_ids: must be strings");
                };
                staged.push((audience.to_owned(), (kind.to_string(), id.to_owned())));
            }
        }
    }
    let mut all = lock(&fake.inner.audiences);
    for (audience, member) in staged {
        let set = all.entry(audience).or_default();
        if delete {
            set.remove(&member);
        } else {
            set.insert(member);
        }
    }
    answer(0, "OK")
}
