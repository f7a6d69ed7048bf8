//! Consuming accepted events (family `ingest-event`, payload
//! `meridian.bus.v1.EventAccepted`): [`IngestConsumer`] is the bus handler, a whole
//! delivery at a time; [`decode_batch`] turns payloads into graph observations, the sealed copies of its identifiers, its
//! sealed traits and its activity.
//!
//! Identifiers arrive as type + blind index (ingest ran this crate's `normalize` and
//! `blind_index`) + the normalized value sealed under the event's `sealed_subject` (record
//! = event id, field `identifiers.<position>`). Blocked values are matched by blind index
//! (the configured values, indexed under the workspace key) and, for patterns such as
//! all-zero device ids, on the opened value.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use meridian_bus::{
    ConsumerName, EventFamily, EventHandler, HandlerError, OutboxEvent, Tx, UpcomingEvent,
};
use meridian_proto::bus::v1::EventAccepted;
use meridian_proto::v1::EventType;
use meridian_vault::{BlindIndex, SubjectKey};
use prost::Message;

use crate::computed::{Activity, AiplStage, EventKind};
use crate::error::IdentityError;
use crate::graph::{LinkRule, Observation};
use crate::identifier::{IdentifierType, NodeKey};
use crate::look_ahead::PreparedEvents;
use crate::room::IdentityRoom;
use crate::store::SealedValue;

/// The field ingest seals an identify event's traits as.
pub const TRAITS_FIELD: &str = "traits";

/// The family the consumer reads and its durable name.
pub const FAMILY: &str = "ingest-event";
pub const CONSUMER: &str = "identity";

/// Events per delivery of the consumer (`Subscription::batch_size`). `bench identity`
/// (PostgreSQL): 2000 against 1000, links/s ×1.056 (median of 6 alternated pairs, all 6
/// higher; the bus's own time per run 2.5 s → 2.2 s, the store's 10.6 s → 9.9 s); 4000 was
/// no better than 2000 and less steady.
pub const CONSUMER_BATCH: usize = 2000;

/// The field ingest seals the identifier at `position` as.
pub fn identifier_field(position: usize) -> String {
    format!("identifiers.{position}")
}

/// An accepted event, decoded for the graph.
pub(crate) struct Decoded {
    pub(crate) observation: Observation,
    /// Ingest's sealed copies of the usable identifiers, with their source.
    pub(crate) sealed: HashMap<NodeKey, (SealedValue, String)>,
    /// (subject, sealed JSON) of an identify event's traits.
    pub(crate) sealed_traits: Option<(String, Vec<u8>)>,
    pub(crate) activity: Option<Activity>,
    pub(crate) at: DateTime<Utc>,
}

fn bad(field: &'static str, reason: &'static str) -> IdentityError {
    IdentityError::InvalidArgument { field, reason }
}

fn time(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

fn event_kind(t: i32) -> Option<EventKind> {
    Some(match EventType::try_from(t).ok()? {
        EventType::Track => EventKind::Track,
        EventType::Identify => EventKind::Identify,
        EventType::Page => EventKind::Page,
        EventType::Screen => EventKind::Screen,
        EventType::Group => EventKind::Group,
        EventType::Alias => EventKind::Alias,
        EventType::Unspecified => return None,
    })
}

/// Checks what every accepted event must carry: the workspace, event id, type and time.
fn header(e: &EventAccepted) -> Result<(EventKind, DateTime<Utc>), IdentityError> {
    if e.workspace_id.is_empty() {
        return Err(bad("workspace_id", "required"));
    }
    if e.event_id.is_empty() {
        return Err(bad("event_id", "required"));
    }
    let kind = event_kind(e.r#type).ok_or(bad("type", "must name an event type"))?;
    let at = time(e.timestamp.as_ref())
        .or_else(|| time(e.received_at.as_ref()))
        .ok_or(bad("timestamp", "required"))?;
    Ok((kind, at))
}

/// Decodes the payloads of one workspace, in order; `None` for an event whose subject was
/// forgotten since (erased: nothing of it is kept). Malformed payloads are refused (the bus
/// dead-letters them after retries). The data keys of the sealed subjects are fetched
/// together: one vault round trip for those not cached. `ahead` holds, for each event,
/// what decoding it made if it was decoded ahead ([`crate::look_ahead`]): taken as it is.
pub(crate) async fn decode_batch(
    room: &IdentityRoom,
    workspace: &str,
    events: &[&EventAccepted],
    mut ahead: Vec<Option<Option<Decoded>>>,
) -> Result<Vec<Option<Decoded>>, IdentityError> {
    // Validate every header first: a malformed payload fails the batch before any vault call
    // (the bus then applies the events one by one, and only that one fails).
    let mut headers = Vec::with_capacity(events.len());
    for e in events {
        if e.workspace_id != workspace {
            return Err(bad("workspace_id", "differs within the batch"));
        }
        headers.push(header(e)?);
    }
    ahead.resize_with(events.len(), || None);
    let todo: Vec<usize> = (0..events.len()).filter(|i| ahead[*i].is_none()).collect();
    if !todo.is_empty() {
        let blocked_keys = room.blocked_keys(workspace).await?;
        let sealed = todo
            .iter()
            .map(|i| events[*i])
            .filter(|e| e.identifiers.iter().any(|i| !i.sealed_value.is_empty()))
            .map(|e| e.sealed_subject.as_str());
        let keys = data_keys(room, workspace, sealed).await?;
        for i in todo {
            let (kind, at) = headers[i];
            ahead[i] = Some(decode_one(room, events[i], kind, at, &blocked_keys, &keys)?);
        }
    }
    Ok(ahead.into_iter().flatten().collect())
}

/// The existing data keys of `subjects` (empty names skipped, repeats fetched once; one
/// vault round trip for those not cached).
async fn data_keys<'a>(
    room: &IdentityRoom,
    workspace: &str,
    subjects: impl Iterator<Item = &'a str>,
) -> Result<HashMap<&'a str, Option<SubjectKey>>, IdentityError> {
    let mut subjects: Vec<&str> = subjects.filter(|s| !s.is_empty()).collect();
    subjects.sort_unstable();
    subjects.dedup();
    if subjects.is_empty() {
        return Ok(HashMap::new());
    }
    let keys = room
        .vault()
        .existing_subject_keys(workspace, &subjects)
        .await?;
    Ok(subjects.into_iter().zip(keys).collect())
}

/// How many events [`decode_ahead`] decodes before it yields (about 0.2 ms of work).
const DECODED_AHEAD_BETWEEN_YIELDS: usize = 32;

/// Decodes the events the bus named as coming next in `workspace` ([`crate::look_ahead`]),
/// as [`decode_batch`] would: their data keys are loaded into the vault's cache (also for
/// hints without a payload, by their key, the sealed subject), and each payload that
/// decodes is kept with what decoding made of it. `None` when nothing could be prepared:
/// the delivery then decodes everything itself and reports any failure.
pub(crate) async fn decode_ahead(
    room: &IdentityRoom,
    workspace: &str,
    upcoming: &[UpcomingEvent],
) -> Option<PreparedEvents> {
    // Read before the keys are: a key forgotten from here on makes this stale.
    let forget_generation = room.vault().forget_generation();
    // Those of `workspace` whose payload decodes (the others are left to their delivery,
    // which reports them), with their outbox ids. This work, and the opening below, yields
    // every few events: it runs beside the current delivery's store write, whose task must
    // not wait for a whole delivery's decoding to be polled again.
    let mut payloads: Vec<(uuid::Uuid, EventAccepted)> = Vec::with_capacity(upcoming.len());
    for chunk in upcoming.chunks(DECODED_AHEAD_BETWEEN_YIELDS) {
        payloads.extend(
            chunk
                .iter()
                .filter_map(|u| {
                    Some((
                        u.event_id,
                        EventAccepted::decode(u.payload.as_slice()).ok()?,
                    ))
                })
                .filter(|(_, e)| e.workspace_id == workspace),
        );
        tokio::task::yield_now().await;
    }
    let blocked = match room.blocked_keys(workspace).await {
        Ok(blocked) => blocked,
        Err(err) => {
            tracing::debug!(error = %err, "look-ahead: blocked values not loaded");
            return None;
        }
    };
    let subjects = upcoming
        .iter()
        .map(|u| u.key.as_str())
        .chain(payloads.iter().map(|(_, e)| e.sealed_subject.as_str()));
    let keys = match data_keys(room, workspace, subjects).await {
        Ok(keys) => keys,
        Err(err) => {
            tracing::debug!(error = %err, "look-ahead: data keys not loaded");
            return None;
        }
    };
    // An event that does not decode is left to its delivery, which reports it.
    let mut decoded: Vec<Option<Option<Decoded>>> = Vec::with_capacity(payloads.len());
    for chunk in payloads.chunks(DECODED_AHEAD_BETWEEN_YIELDS) {
        decoded.extend(chunk.iter().map(|(_, e)| {
            let (kind, at) = header(e).ok()?;
            decode_one(room, e, kind, at, &blocked, &keys).ok()
        }));
        tokio::task::yield_now().await;
    }
    let events = payloads
        .into_iter()
        .zip(decoded)
        .filter_map(|((id, e), d)| Some((id, (e, d?))))
        .collect();
    Some(PreparedEvents {
        named: upcoming.iter().map(|u| u.event_id).collect(),
        forget_generation,
        blocked,
        events,
    })
}

fn decode_one(
    room: &IdentityRoom,
    e: &EventAccepted,
    kind: EventKind,
    at: DateTime<Utc>,
    blocked_keys: &HashSet<NodeKey>,
    keys: &HashMap<&str, Option<SubjectKey>>,
) -> Result<Option<Decoded>, IdentityError> {
    let rules = room.rules();
    let mut identifiers = Vec::with_capacity(e.identifiers.len());
    let mut blocked = Vec::new();
    let mut sealed = HashMap::new();
    for (position, id) in e.identifiers.iter().enumerate() {
        let (Some(kind), Some(index)) = (
            IdentifierType::from_code(id.r#type),
            BlindIndex::from_slice(&id.blind_index),
        ) else {
            // An identifier this room does not know is skipped, not fatal.
            continue;
        };
        let key = NodeKey { kind, index };
        if blocked_keys.contains(&key) {
            blocked.push(key);
            continue;
        }
        if !id.sealed_value.is_empty() && !e.sealed_subject.is_empty() {
            let field = identifier_field(position);
            let data_key = match keys.get(e.sealed_subject.as_str()) {
                Some(Some(data_key)) => data_key,
                // Forgotten (or never created): the event's subject was erased.
                Some(None) => return Ok(None),
                None => return Err(IdentityError::Corrupt("subject key not fetched".into())),
            };
            let plain = data_key.open(&e.event_id, &field, &id.sealed_value)?;
            let value = String::from_utf8_lossy(&plain);
            // Borrowed from the zeroized plaintext: no unzeroized copy of the value is made.
            let plain_id: &str = match kind {
                IdentifierType::StorefrontCustomerId => {
                    value.split(['\u{0}', ':']).nth(1).unwrap_or(value.as_ref())
                }
                _ => value.as_ref(),
            };
            if rules.is_blocked(kind, plain_id) || rules.is_blocked(kind, &value) {
                blocked.push(key);
                continue;
            }
            sealed.insert(
                key,
                (
                    SealedValue {
                        subject: e.sealed_subject.clone(),
                        record: e.event_id.clone(),
                        field,
                        bytes: id.sealed_value.clone(),
                    },
                    id.source.clone(),
                ),
            );
        }
        identifiers.push(key);
    }
    let aipl = &room.profile_rules().aipl;
    let activity = if aipl.is_order(kind, &e.event) {
        let (currency, minor) = e
            .revenue
            .as_ref()
            .map(|m| (m.currency.trim().to_ascii_uppercase(), m.minor_units))
            .unwrap_or_default();
        Some(Activity {
            occurred_at: at,
            stage: AiplStage::Purchase,
            order: Some((currency, minor)),
        })
    } else {
        match aipl.stage_of(kind, &e.event) {
            AiplStage::None => None,
            stage => Some(Activity {
                occurred_at: at,
                stage,
                order: None,
            }),
        }
    };
    let sealed_traits = (kind == EventKind::Identify
        && !e.sealed_traits.is_empty()
        && !e.sealed_subject.is_empty())
    .then(|| (e.sealed_subject.clone(), e.sealed_traits.clone()));
    Ok(Some(Decoded {
        observation: Observation {
            event_id: e.event_id.clone(),
            at,
            rule: if kind == EventKind::Alias {
                LinkRule::Alias
            } else {
                LinkRule::SameEvent
            },
            identifiers,
            blocked,
        },
        sealed,
        sealed_traits,
        activity,
        at,
    }))
}

/// The bus handler: applies each `EventAccepted` through [`IdentityRoom::apply_accepted`]
/// in the consumer's transaction.
#[derive(Debug, Clone)]
pub struct IngestConsumer {
    room: IdentityRoom,
}

impl IngestConsumer {
    pub fn new(room: IdentityRoom) -> Arc<Self> {
        Arc::new(IngestConsumer { room })
    }

    /// Prepares the events [`EventHandler::look_ahead`] noted and not yet prepared, and
    /// waits until no preparing runs (tests, and a shutdown that leaves no task behind).
    pub async fn look_ahead_settled(&self) {
        self.room.settle_look_ahead().await;
    }

    /// The durable subscription (consumer `identity`, family `ingest-event`).
    pub fn subscription() -> meridian_bus::Subscription {
        // Both names are valid tokens by construction (checked by a test).
        let consumer: ConsumerName = CONSUMER
            .parse()
            .unwrap_or_else(|_| unreachable!("`identity` is a token"));
        let family: EventFamily = FAMILY
            .parse()
            .unwrap_or_else(|_| unreachable!("`ingest-event` is a token"));
        let mut subscription = meridian_bus::Subscription::new(consumer, family);
        // A delivery is applied as one unit (one graph pass, one write): larger deliveries
        // amortize the transaction's fixed round trips and its commit; 2000 events keep it
        // under 100 ms on PostgreSQL in `bench identity`.
        subscription.batch_size = CONSUMER_BATCH;
        subscription
    }
}

/// The payload of a bus event, checked against the bus event's workspace.
fn payload_of(event: &OutboxEvent) -> Result<EventAccepted, HandlerError> {
    let payload = EventAccepted::decode(event.payload.as_slice())
        .map_err(|_| HandlerError::Failed("EventAccepted payload does not decode".into()))?;
    if payload.workspace_id != event.workspace_id.as_str() {
        return Err(HandlerError::Failed(
            "EventAccepted workspace differs from the bus event's".into(),
        ));
    }
    Ok(payload)
}

/// The one field of an `EventAccepted` payload its idempotency key needs; decoding it
/// skips the others without building them.
#[derive(Clone, PartialEq, Message)]
struct AcceptedEventId {
    #[prost(string, tag = "1")]
    workspace_id: String,
    #[prost(string, tag = "2")]
    event_id: String,
}

/// The key the bus records an accepted event as processed under: the ingested event's id,
/// so the same ingested event applies once even if it is published again as a new outbox
/// row. Ingest's ids are hyphenated UUIDs, unique across workspaces, and are the key as
/// they are (migration 0022 moved the ids recorded before in that form); any other id is
/// unique within its workspace only and is hashed with it into one. A payload without an
/// id keeps the bus event's id; the handler refuses such a payload anyway.
pub(crate) fn accepted_event_key(event: &OutboxEvent) -> uuid::Uuid {
    match AcceptedEventId::decode(event.payload.as_slice()) {
        Ok(p) if p.event_id.is_empty() => event.event_id,
        Ok(p) => {
            hyphenated_uuid(&p.event_id).unwrap_or_else(|| hashed_key(&p.workspace_id, &p.event_id))
        }
        Err(_) => event.event_id,
    }
}

fn hyphenated_uuid(id: &str) -> Option<uuid::Uuid> {
    (id.len() == 36)
        .then(|| uuid::Uuid::try_parse(id).ok())
        .flatten()
}

/// A UUID (version 8) from the first half of SHA-256 over a domain tag, the workspace and
/// the id (a workspace id is a token: it holds no NUL).
fn hashed_key(workspace: &str, id: &str) -> uuid::Uuid {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"meridian identity: ingested event id\0");
    context.update(workspace.as_bytes());
    context.update(b"\0");
    context.update(id.as_bytes());
    let digest = context.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn handler_error(e: IdentityError) -> HandlerError {
    match e {
        IdentityError::Database(e) => HandlerError::Database(e),
        // The text names kinds and fields only, never values.
        e => {
            tracing::warn!(error = %e, "identity could not apply an accepted event");
            HandlerError::Failed(e.to_string())
        }
    }
}

#[async_trait]
impl EventHandler for IngestConsumer {
    fn idempotency_key(&self, event: &OutboxEvent) -> uuid::Uuid {
        accepted_event_key(event)
    }

    fn looks_ahead(&self) -> bool {
        true
    }

    /// Notes the upcoming events: their data keys are loaded into the vault's cache and
    /// their payloads decoded while the current delivery's store write runs (see
    /// [`crate::look_ahead`]).
    fn look_ahead(&self, upcoming: &[UpcomingEvent]) {
        self.room.note_upcoming(upcoming);
    }

    async fn handle(&self, tx: &mut Tx<'_>, event: &OutboxEvent) -> Result<(), HandlerError> {
        let payload = payload_of(event)?;
        self.room
            .apply_accepted(tx, &payload)
            .await
            .map(|_| ())
            .map_err(handler_error)
    }

    /// The whole delivery as one unit: one decode pass (data keys fetched together) of the
    /// events not decoded ahead, one graph pass, one store write
    /// ([`IdentityRoom::apply_accepted_batch`]).
    async fn handle_batch(
        &self,
        tx: &mut Tx<'_>,
        events: &[&OutboxEvent],
    ) -> Result<(), HandlerError> {
        // Events decoded ahead are taken as they are; the others are decoded here.
        let delivered: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
        let (mut prepared, stitched) = self.room.take_prepared(&delivered).await;
        // A delivery stitched ahead is taken only if its workspace's events here are
        // exactly those it stitched, in that order (a retry, a replay or a duplicate the
        // bus skipped makes it another delivery).
        let mut stitched = stitched.filter(|s| {
            events
                .iter()
                .filter(|e| e.workspace_id.as_str() == s.workspace)
                .map(|e| e.event_id)
                .eq(s.outbox_ids.iter().copied())
        });
        let mut stitched_payloads = stitched
            .as_mut()
            .map(|s| std::mem::take(&mut s.payloads))
            .unwrap_or_default()
            .into_iter();
        let stitched_workspace = stitched.as_ref().map(|s| s.workspace.clone());
        let mut payloads = Vec::with_capacity(events.len());
        let mut ahead = Vec::with_capacity(events.len());
        for e in events {
            if stitched_workspace.as_deref() == Some(e.workspace_id.as_str())
                && let Some(payload) = stitched_payloads.next()
            {
                payloads.push(payload);
                ahead.push(None);
                continue;
            }
            let decoded = prepared
                .get_mut(e.workspace_id.as_str())
                .and_then(|p| p.events.remove(&e.event_id));
            match decoded {
                Some((payload, decoded)) => {
                    payloads.push(payload);
                    ahead.push(Some(decoded));
                }
                None => {
                    payloads.push(payload_of(e)?);
                    ahead.push(None);
                }
            }
        }
        let refs: Vec<&EventAccepted> = payloads.iter().collect();
        self.room
            .apply_accepted_batch_decoded(tx, &refs, ahead, stitched)
            .await
            .map(|_| ())
            .map_err(handler_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox_event(event_id: &str) -> OutboxEvent {
        outbox_event_in("acme", event_id)
    }

    fn outbox_event_in(workspace: &str, event_id: &str) -> OutboxEvent {
        let payload = EventAccepted {
            workspace_id: workspace.into(),
            event_id: event_id.into(),
            message_id: "m-1".into(),
            ..EventAccepted::default()
        };
        OutboxEvent::new(
            workspace.parse().unwrap(),
            FAMILY.parse().unwrap(),
            "subject",
            payload.encode_to_vec(),
        )
    }

    #[test]
    fn the_key_is_the_ingested_event_id_whatever_outbox_row_carries_it() {
        let id = uuid::Uuid::now_v7();
        let (a, b) = (outbox_event(&id.to_string()), outbox_event(&id.to_string()));
        assert_ne!(a.event_id, b.event_id);
        assert_eq!(accepted_event_key(&a), id);
        assert_eq!(accepted_event_key(&b), id);
        // Hyphenated in upper case too: the same UUID.
        let upper = outbox_event(&id.to_string().to_uppercase());
        assert_eq!(accepted_event_key(&upper), id);
    }

    #[test]
    fn other_ids_are_hashed_with_their_workspace_into_stable_keys() {
        let e4 = accepted_event_key(&outbox_event("e4"));
        assert_eq!(e4, accepted_event_key(&outbox_event("e4")));
        assert_ne!(e4, accepted_event_key(&outbox_event("e5")));
        assert_ne!(e4, accepted_event_key(&outbox_event_in("acme-2", "e4")));
        assert_eq!(e4.get_version_num(), 8);
        // A simple (unhyphenated) UUID is not ingest's form: hashed, not parsed.
        let simple = uuid::Uuid::now_v7();
        let key = accepted_event_key(&outbox_event(&simple.simple().to_string()));
        assert_ne!(key, simple);
        assert_eq!(key.get_version_num(), 8);
    }

    #[test]
    fn a_payload_without_a_readable_id_keeps_the_bus_event_id() {
        let missing = outbox_event("");
        assert_eq!(accepted_event_key(&missing), missing.event_id);
        let garbage = OutboxEvent::new(
            "acme".parse().unwrap(),
            FAMILY.parse().unwrap(),
            "subject",
            vec![0xff, 0xff, 0xff],
        );
        assert_eq!(accepted_event_key(&garbage), garbage.event_id);
    }
}
