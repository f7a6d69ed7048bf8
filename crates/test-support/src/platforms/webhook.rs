//! A webhook receiver that checks Meridian's signature (HMAC-SHA256 over
//! `"{X-Meridian-Timestamp}.{body}"`, header `X-Meridian-Signature: v1=<hex>`) and keeps the
//! members it was told to add or remove, once per `Idempotency-Key`.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};

use super::{Running, json_response, lock, serve};

#[derive(Debug)]
struct Inner {
    secret: Vec<u8>,
    members: Mutex<BTreeSet<String>>,
    keys: Mutex<HashSet<String>>,
}

#[derive(Debug, Clone)]
pub struct WebhookReceiver {
    inner: Arc<Inner>,
}

impl WebhookReceiver {
    pub fn new(secret: &[u8]) -> Self {
        WebhookReceiver {
            inner: Arc::new(Inner {
                secret: secret.to_vec(),
                members: Mutex::default(),
                keys: Mutex::default(),
            }),
        }
    }

    pub async fn start(&self) -> std::io::Result<Running> {
        serve(
            Router::new()
                .route("/hook", post(receive))
                .with_state(self.clone()),
        )
        .await
    }

    /// Member references currently held.
    pub fn members(&self) -> BTreeSet<String> {
        lock(&self.inner.members).clone()
    }
}

async fn receive(
    State(receiver): State<WebhookReceiver>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let timestamp = header("x-meridian-timestamp");
    let given = header("x-meridian-signature")
        .strip_prefix("v1=")
        .unwrap_or("");
    let tag = (0..given.len() / 2)
        .map(|i| u8::from_str_radix(given.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .unwrap_or_default();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &receiver.inner.secret);
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(&body);
    if timestamp.is_empty() || ring::hmac::verify(&key, &message, &tag).is_err() {
        return json_response(StatusCode::UNAUTHORIZED, &json!({"error": "bad signature"}));
    }
    let idempotency = header("idempotency-key").to_owned();
    if idempotency.is_empty() {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "Idempotency-Key required"}),
        );
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return json_response(StatusCode::BAD_REQUEST, &json!({"error": "invalid JSON"}));
    };
    if !lock(&receiver.inner.keys).insert(idempotency) {
        return json_response(StatusCode::OK, &json!({"replayed": true}));
    }
    let add = body["action"] == "add";
    let mut members = lock(&receiver.inner.members);
    for member in body["members"].as_array().into_iter().flatten() {
        let id = member["member"].as_str().unwrap_or_default().to_owned();
        if add {
            members.insert(id);
        } else {
            members.remove(&id);
        }
    }
    json_response(StatusCode::OK, &json!({"ok": true}))
}
