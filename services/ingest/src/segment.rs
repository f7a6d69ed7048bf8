//! The Segment-compatible HTTP Tracking API: `POST /v1/{track,identify,page,screen,group,
//! alias,batch}` with Segment's field names, the write key (an API key with the `ingest`
//! scope) as the HTTP Basic username (or `writeKey` in the body), and Segment's limits:
//! 32 KB per message, 500 KB per batch.
//!
//! Answers as Segment does: `200 {"success":true}` once the batch is stored; `400` for
//! invalid JSON and for payloads over the limits; `401` for a missing or unknown write key.
//! Beyond Segment, the body also carries the per-event results and the summary (the same as
//! gRPC), so nothing is dropped silently; a single-event call whose event is rejected
//! answers `400` with the field at fault.
//!
//! Extensions to Segment's spec, all optional: top-level `jurisdiction` (`DE`, `US-CA`),
//! `consent` (`{"choices":[{"purpose":"analytics","decision":"given"}],"gpc":true}`),
//! `context.gpc`, the `Sec-GPC: 1` request header (GPC for every event of the request), and
//! `context.storefront` (`{"id","platform","country","currency"}`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use meridian_access::Authenticator;
use meridian_domain::{Scope, WorkspaceId};
use serde_json::{Map, Value, json};

use crate::event::{DeliveredChoice, EventKind, MAX_EVENT_BYTES, RawEvent, Violation};
use crate::room::{IngestReport, IngestRoom, Outcome};

/// Largest `/v1/batch` body (Segment's limit).
pub const MAX_BATCH_BODY: usize = 500 * 1024;

#[derive(Clone)]
struct SegmentState {
    room: IngestRoom,
    authenticator: Arc<Authenticator>,
}

/// The routes, to merge into the HTTP listener's router.
pub fn router(room: IngestRoom, authenticator: Arc<Authenticator>) -> Router {
    Router::new()
        .route("/v1/{call}", post(ingest))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BODY + 64 * 1024))
        .with_state(SegmentState {
            room,
            authenticator,
        })
}

fn answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn failure(status: StatusCode, message: impl Into<String>, field: Option<&str>) -> Response {
    let mut body = json!({ "success": false, "message": message.into() });
    if let Some(f) = field {
        body["field"] = Value::String(f.to_owned());
    }
    answer(status, body)
}

/// The write key: HTTP Basic username (Segment's SDKs), else `writeKey` in the body.
fn write_key(headers: &HeaderMap, body: &Map<String, Value>) -> Option<String> {
    let from_header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .map(|userpass| userpass.split(':').next().unwrap_or("").to_owned())
        .filter(|k| !k.is_empty());
    from_header.or_else(|| {
        body.get("writeKey")
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

async fn ingest(
    State(state): State<SegmentState>,
    Path(call): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let single = match call.as_str() {
        "batch" | "import" => None,
        other => match EventKind::from_name(other) {
            Some(kind) => Some(kind),
            None => {
                return failure(
                    StatusCode::NOT_FOUND,
                    format!("no such call /v1/{other}"),
                    None,
                );
            }
        },
    };
    let limit = if single.is_some() {
        MAX_EVENT_BYTES
    } else {
        MAX_BATCH_BODY
    };
    if body.len() > limit {
        return failure(
            StatusCode::BAD_REQUEST,
            format!("the payload is larger than {} KB", limit / 1024),
            None,
        );
    }
    let Ok(Value::Object(payload)) = serde_json::from_slice::<Value>(&body) else {
        return failure(StatusCode::BAD_REQUEST, "Invalid JSON", None);
    };
    let Some(key) = write_key(&headers, &payload) else {
        return failure(StatusCode::UNAUTHORIZED, "missing write key", None);
    };
    let workspace: WorkspaceId = match state.authenticator.authenticate(&key).await {
        Ok(principal) => match principal.authorize_scope(Scope::Ingest) {
            Ok(()) => principal.workspace_id,
            Err(_) => {
                return failure(
                    StatusCode::FORBIDDEN,
                    "the write key lacks the ingest scope",
                    None,
                );
            }
        },
        Err(_) => return failure(StatusCode::UNAUTHORIZED, "invalid write key", None),
    };
    let header_gpc = headers
        .get("sec-gpc")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "1");

    let (messages, sent_at, path) = match single {
        Some(_) => (vec![Value::Object(payload.clone())], None, "".to_owned()),
        None => {
            let Some(Value::Array(batch)) = payload.get("batch") else {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "`batch` must be an array of messages",
                    Some("batch"),
                );
            };
            if batch.is_empty() {
                return failure(StatusCode::BAD_REQUEST, "`batch` is empty", Some("batch"));
            }
            if batch.len() > crate::event::MAX_BATCH_EVENTS {
                return failure(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "at most {} messages per batch",
                        crate::event::MAX_BATCH_EVENTS
                    ),
                    Some("batch"),
                );
            }
            let sent_at = payload
                .get("sentAt")
                .and_then(Value::as_str)
                .and_then(parse_time);
            (batch.clone(), sent_at, "batch".to_owned())
        }
    };
    let mut events = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let len = serde_json::to_vec(&m)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if len > MAX_EVENT_BYTES {
            return failure(
                StatusCode::BAD_REQUEST,
                format!("message {i} is larger than {} KB", MAX_EVENT_BYTES / 1024),
                Some(&format!("batch[{i}]")),
            );
        }
        let Value::Object(m) = m else {
            events.push(RawEvent {
                decode_error: Some(Violation::new("", "a message must be a JSON object")),
                ..Default::default()
            });
            continue;
        };
        let mut raw = raw_event(&m, single, header_gpc);
        raw.encoded_len = len;
        events.push(raw);
    }
    let sent_at = sent_at.or_else(|| {
        single.and_then(|_| {
            payload
                .get("sentAt")
                .and_then(Value::as_str)
                .and_then(parse_time)
        })
    });
    match state.room.ingest(&workspace, events, sent_at).await {
        Ok(report) => respond(report, single.is_some(), &path),
        Err(err) => {
            // The full chain goes to the log under a reference; the caller gets the reference.
            let status = meridian_edge::status::internal(&err);
            failure(StatusCode::INTERNAL_SERVER_ERROR, status.message(), None)
        }
    }
}

fn respond(report: IngestReport, single: bool, path: &str) -> Response {
    let field = |r: &crate::room::EventResult| -> String {
        let base = if path.is_empty() {
            String::new()
        } else {
            format!("{path}[{}]", r.index)
        };
        match (base.is_empty(), r.field.is_empty()) {
            (true, _) => r.field.clone(),
            (false, true) => base,
            (false, false) => format!("{base}.{}", r.field),
        }
    };
    if single
        && let Some(r) = report.results.first()
        && r.outcome == Outcome::Rejected
    {
        return failure(StatusCode::BAD_REQUEST, r.reason.clone(), Some(&field(r)));
    }
    let results: Vec<Value> = report
        .results
        .iter()
        .map(|r| {
            let mut v = json!({
                "index": r.index,
                "messageId": r.message_id,
                "outcome": r.outcome.as_str(),
            });
            if !r.reason.is_empty() {
                v["reason"] = json!(r.reason);
            }
            if r.outcome == Outcome::Rejected {
                v["field"] = json!(field(r));
            }
            if !r.stripped_fields.is_empty() {
                v["strippedFields"] = json!(r.stripped_fields);
            }
            if !r.rule.is_empty() {
                v["rule"] = json!(r.rule);
            }
            v
        })
        .collect();
    let s = report.summary;
    answer(
        StatusCode::OK,
        json!({
            "success": true,
            "summary": {
                "accepted": s.accepted,
                "duplicate": s.duplicate,
                "rejected": s.rejected,
                "dropped": s.dropped,
                "strippedFields": s.stripped_fields,
            },
            "results": results,
        }),
    )
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn text(m: &Map<String, Value>, key: &str) -> String {
    match m.get(key) {
        Some(Value::String(s)) => s.clone(),
        // Segment accepts numeric ids.
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn object(m: &Map<String, Value>, key: &str) -> Map<String, Value> {
    m.get(key)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// A Segment message as the room's [`RawEvent`].
fn raw_event(m: &Map<String, Value>, call: Option<EventKind>, header_gpc: bool) -> RawEvent {
    let kind = call.or_else(|| {
        m.get("type")
            .and_then(Value::as_str)
            .and_then(EventKind::from_name)
    });
    let mut decode_error = None;
    let mut time = |key: &str| match m.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => parse_time(s).or_else(|| {
            decode_error.get_or_insert(Violation::new(key, "not an ISO-8601 date-time"));
            None
        }),
        Some(_) => {
            decode_error.get_or_insert(Violation::new(key, "not an ISO-8601 date-time"));
            None
        }
    };
    let timestamp = time("timestamp");
    let sent_at = time("sentAt");
    let context = object(m, "context");
    let consent = object(m, "consent");
    let choices = consent
        .get("choices")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_object)
                .map(|c| DeliveredChoice {
                    purpose: text(c, "purpose"),
                    decision: match c.get("decision").and_then(Value::as_str).unwrap_or("") {
                        "given" => 1,
                        "refused" => 2,
                        "withdrawn" => 3,
                        "expired" => 4,
                        _ => 0,
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    let gpc = header_gpc
        || consent.get("gpc").and_then(Value::as_bool).unwrap_or(false)
        || context.get("gpc").and_then(Value::as_bool).unwrap_or(false);
    // Segment adds a message id when the caller did not; so do we (such an event cannot be
    // deduplicated on retry, exactly as with Segment).
    let mut message_id = text(m, "messageId");
    if message_id.trim().is_empty() {
        message_id = format!("srv-{}", uuid::Uuid::new_v4());
    }
    RawEvent {
        message_id,
        type_code: kind.map_or(0, |k| i32::from(k.code())),
        anonymous_id: text(m, "anonymousId"),
        user_id: text(m, "userId"),
        identifiers: Vec::new(),
        event: text(m, "event"),
        name: text(m, "name"),
        group_id: text(m, "groupId"),
        previous_id: text(m, "previousId"),
        properties: object(m, "properties"),
        traits: object(m, "traits"),
        context,
        timestamp,
        sent_at,
        jurisdiction: text(m, "jurisdiction"),
        choices,
        gpc,
        age_band: 0,
        encoded_len: 0,
        decode_error,
    }
}
