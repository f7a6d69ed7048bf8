//! `meridian.v1.IngestService` over [`IngestRoom`]: decode → validate → call the room → map
//! the typed error (one `From` impl below). Per-event problems are results, not errors.

use chrono::{DateTime, Utc};
use meridian_edge::{status, workspace};
use meridian_proto::{JsonObject, v1};
use prost::Message;
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use crate::error::IngestError;
use crate::event::{
    DeliveredChoice, DeliveredIdentifier, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, RawEvent, Violation,
};
use crate::room::{IngestReport, IngestRoom, Outcome};

impl From<IngestError> for Status {
    fn from(err: IngestError) -> Status {
        match &err {
            IngestError::InvalidArgument { field, reason } => {
                status::invalid_argument(field.clone(), reason.clone())
            }
            IngestError::Consent(_)
            | IngestError::Vault(_)
            | IngestError::Database(_)
            | IngestError::Outbox(_)
            | IngestError::Corrupt(_)
            | IngestError::PartLost(_) => status::internal(&err),
        }
    }
}

/// The gRPC service. Get one with [`IngestRoom::into_server`].
#[derive(Debug, Clone)]
pub struct IngestGrpc {
    room: IngestRoom,
}

impl IngestGrpc {
    pub fn new(room: IngestRoom) -> Self {
        IngestGrpc { room }
    }
}

impl IngestRoom {
    pub fn into_server(self) -> v1::ingest_service_server::IngestServiceServer<IngestGrpc> {
        v1::ingest_service_server::IngestServiceServer::new(IngestGrpc { room: self })
            .max_decoding_message_size(MAX_BATCH_BYTES + 64 * 1024)
    }
}

/// A protobuf timestamp as a UTC instant, or why not.
pub(crate) fn instant(ts: &prost_types::Timestamp) -> Result<DateTime<Utc>, &'static str> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err("nanos out of range");
    }
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0)).ok_or("out of range")
}

fn put(map: &mut Map<String, Value>, key: &str, value: String) {
    if !value.is_empty() {
        map.insert(key.to_owned(), Value::String(value));
    }
}

/// `meridian.v1.Context` in Segment's field names.
fn context_map(c: v1::Context) -> Map<String, Value> {
    let mut m = Map::new();
    put(&mut m, "ip", c.ip);
    put(&mut m, "userAgent", c.user_agent);
    put(&mut m, "locale", c.locale);
    put(&mut m, "timezone", c.timezone);
    put(&mut m, "referrer", c.referrer);
    if let Some(p) = c.page {
        let mut o = Map::new();
        put(&mut o, "path", p.path);
        put(&mut o, "referrer", p.referrer);
        put(&mut o, "search", p.search);
        put(&mut o, "title", p.title);
        put(&mut o, "url", p.url);
        m.insert("page".into(), Value::Object(o));
    }
    if let Some(p) = c.campaign {
        let mut o = Map::new();
        put(&mut o, "name", p.name);
        put(&mut o, "source", p.source);
        put(&mut o, "medium", p.medium);
        put(&mut o, "term", p.term);
        put(&mut o, "content", p.content);
        m.insert("campaign".into(), Value::Object(o));
    }
    if let Some(s) = c.storefront {
        let mut o = Map::new();
        put(&mut o, "id", s.id);
        put(&mut o, "platform", s.platform);
        put(&mut o, "country", s.country);
        put(&mut o, "currency", s.currency);
        m.insert("storefront".into(), Value::Object(o));
    }
    if let Some(d) = c.device {
        let mut o = Map::new();
        put(&mut o, "id", d.id);
        put(&mut o, "manufacturer", d.manufacturer);
        put(&mut o, "model", d.model);
        put(&mut o, "type", d.r#type);
        put(&mut o, "advertisingId", d.advertising_id);
        o.insert(
            "adTrackingEnabled".into(),
            Value::Bool(d.ad_tracking_enabled),
        );
        m.insert("device".into(), Value::Object(o));
    }
    m
}

/// A protobuf event as the room's [`RawEvent`].
pub fn raw_event(e: v1::Event) -> RawEvent {
    let encoded_len = e.encoded_len();
    let mut decode_error = None;
    let mut time = |ts: &Option<prost_types::Timestamp>, field: &str| match ts {
        None => None,
        Some(ts) => match instant(ts) {
            Ok(t) => Some(t),
            Err(reason) => {
                decode_error.get_or_insert(Violation::new(field, reason));
                None
            }
        },
    };
    let timestamp = time(&e.timestamp, "timestamp");
    let sent_at = time(&e.sent_at, "sent_at");
    let gpc = e.consent.as_ref().is_some_and(|c| c.gpc);
    RawEvent {
        message_id: e.message_id,
        type_code: e.r#type,
        anonymous_id: e.anonymous_id,
        user_id: e.user_id,
        identifiers: e
            .identifiers
            .into_iter()
            .map(|i| DeliveredIdentifier {
                type_code: i.r#type,
                value: i.value,
                source: i.source,
                default_region: i.default_region,
            })
            .collect(),
        event: e.event,
        name: e.name,
        group_id: e.group_id,
        previous_id: e.previous_id,
        properties: e.properties.map(JsonObject::into_inner).unwrap_or_default(),
        traits: e.traits.map(JsonObject::into_inner).unwrap_or_default(),
        context: e.context.map(context_map).unwrap_or_default(),
        timestamp,
        sent_at,
        jurisdiction: e.jurisdiction,
        choices: e
            .consent
            .map(|c| {
                c.choices
                    .into_iter()
                    .map(|c| DeliveredChoice {
                        purpose: c.purpose,
                        decision: c.decision,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        gpc,
        age_band: e.age_band,
        encoded_len,
        decode_error,
    }
}

fn to_proto(report: IngestReport, path: &str) -> v1::IngestResponse {
    let results = report
        .results
        .into_iter()
        .map(|r| v1::EventResult {
            index: u32::try_from(r.index).unwrap_or(u32::MAX),
            message_id: r.message_id,
            outcome: match r.outcome {
                Outcome::Accepted => v1::EventOutcome::Accepted,
                Outcome::Duplicate => v1::EventOutcome::Duplicate,
                Outcome::Rejected => v1::EventOutcome::Rejected,
                Outcome::Dropped => v1::EventOutcome::Dropped,
            } as i32,
            reason: r.reason,
            field: match (r.outcome, r.field.as_str()) {
                (Outcome::Rejected, "") => format!("{path}[{}]", r.index),
                (Outcome::Rejected, f) => format!("{path}[{}].{f}", r.index),
                _ => String::new(),
            },
            stripped_fields: r.stripped_fields,
            rule: r.rule,
        })
        .collect();
    let s = report.summary;
    v1::IngestResponse {
        results,
        summary: Some(v1::IngestSummary {
            accepted: s.accepted,
            duplicate: s.duplicate,
            rejected: s.rejected,
            dropped: s.dropped,
            stripped_fields: s.stripped_fields,
        }),
    }
}

#[tonic::async_trait]
impl v1::ingest_service_server::IngestService for IngestGrpc {
    async fn ingest(
        &self,
        request: Request<v1::IngestRequest>,
    ) -> Result<Response<v1::IngestResponse>, Status> {
        let workspace = workspace(&request)?;
        let body = request.into_inner();
        if body.events.is_empty() {
            return Err(status::invalid_argument("events", "at least one event"));
        }
        if body.events.len() > MAX_BATCH_EVENTS {
            return Err(status::invalid_argument(
                "events",
                format!("at most {MAX_BATCH_EVENTS} events per batch"),
            ));
        }
        if body.encoded_len() > MAX_BATCH_BYTES {
            return Err(status::invalid_argument(
                "events",
                format!("a batch is at most {MAX_BATCH_BYTES} bytes"),
            ));
        }
        let sent_at = match &body.sent_at {
            None => None,
            Some(ts) => Some(instant(ts).map_err(|r| status::invalid_argument("sent_at", r))?),
        };
        let events: Vec<RawEvent> = body.events.into_iter().map(raw_event).collect();
        let report = self.room.ingest(&workspace, events, sent_at).await?;
        Ok(Response::new(to_proto(report, "events")))
    }
}
