//! Events as both APIs deliver them ([`RawEvent`]), their validation into [`ValidEvent`],
//! and the batch limits. Pure: no I/O.

use chrono::{DateTime, Utc};
use meridian_identity::{IdentifierType, RawIdentifier};
use meridian_policy::ConsentState;
use serde_json::{Map, Value};

/// Most events in one batch (gRPC).
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Largest gRPC batch, encoded.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Largest single event (Segment's limit per message, applied to both APIs).
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Longest message id.
pub const MAX_MESSAGE_ID_LEN: usize = 255;
/// Longest event / page / screen name.
pub const MAX_NAME_LEN: usize = 512;
/// Most identifiers on one event.
pub const MAX_IDENTIFIERS: usize = 32;

/// The Segment call types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Track = 1,
    Identify = 2,
    Page = 3,
    Screen = 4,
    Group = 5,
    Alias = 6,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Track,
        EventKind::Identify,
        EventKind::Page,
        EventKind::Screen,
        EventKind::Group,
        EventKind::Alias,
    ];

    /// The `meridian.v1.EventType` number (also the stored code).
    pub fn code(self) -> i16 {
        self as i16
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| i32::from(k.code()) == code)
    }

    /// Segment's `type` word.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Track => "track",
            EventKind::Identify => "identify",
            EventKind::Page => "page",
            EventKind::Screen => "screen",
            EventKind::Group => "group",
            EventKind::Alias => "alias",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A field at fault and why, with the path relative to the event (`timestamp`,
/// `identifiers[2].value`); the API prefixes the event's own path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub reason: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Violation {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One identifier as delivered (`meridian.v1.Identifier`): type number, value, source,
/// default region.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DeliveredIdentifier {
    pub type_code: i32,
    pub value: String,
    pub source: String,
    pub default_region: String,
}

/// One explicit choice carried by the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredChoice {
    pub purpose: String,
    /// `meridian.v1.ConsentDecision` number.
    pub decision: i32,
}

/// An event as decoded from gRPC or HTTP, not validated yet. Its `Debug` prints no
/// personal data.
#[derive(Clone, Default)]
pub struct RawEvent {
    pub message_id: String,
    /// `meridian.v1.EventType` number; 0 when absent.
    pub type_code: i32,
    pub anonymous_id: String,
    pub user_id: String,
    pub identifiers: Vec<DeliveredIdentifier>,
    pub event: String,
    pub name: String,
    pub group_id: String,
    pub previous_id: String,
    pub properties: Map<String, Value>,
    pub traits: Map<String, Value>,
    /// Segment-spec context (`ip`, `userAgent`, `locale`, `timezone`, `page`, `campaign`,
    /// `device`, `storefront`, ...).
    pub context: Map<String, Value>,
    pub timestamp: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub jurisdiction: String,
    pub choices: Vec<DeliveredChoice>,
    pub gpc: bool,
    /// `meridian.v1.AgeBand` number.
    pub age_band: i32,
    /// The event's encoded size, for the per-event limit.
    pub encoded_len: usize,
    /// Why the API could not decode part of the event (a malformed timestamp); the event is
    /// rejected with this.
    pub decode_error: Option<Violation>,
}

impl std::fmt::Debug for RawEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawEvent")
            .field("type_code", &self.type_code)
            .field("encoded_len", &self.encoded_len)
            .finish_non_exhaustive()
    }
}

/// One identifier of a valid event, with where it came from (for errors and strips).
#[derive(Debug, Clone)]
pub struct EventIdentifier {
    pub raw: RawIdentifier,
    /// Path in the event (`user_id`, `identifiers[1]`).
    pub field: String,
    /// Taken from traits (`traits.email`): skipped, not rejected, when it does not normalize.
    pub soft: bool,
}

/// A validated event: its shape is right; identifiers are not normalized yet and the
/// consent gate has not run.
#[derive(Clone)]
pub struct ValidEvent {
    pub message_id: String,
    pub kind: EventKind,
    pub event: String,
    pub name: String,
    pub group_id: String,
    pub identifiers: Vec<EventIdentifier>,
    pub properties: Map<String, Value>,
    pub traits: Map<String, Value>,
    pub context: Map<String, Value>,
    pub original_timestamp: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub jurisdiction: String,
    /// Explicit choices carried by the event, per purpose.
    pub choices: Vec<(String, ConsentState)>,
    pub gpc: bool,
    /// The lowest age of the event's age band (conservative), when known.
    pub age: Option<u8>,
    /// `meridian.v1.AgeBand` number, passed on to the bus.
    pub age_band: i32,
    /// The event's size as delivered (protobuf or JSON): sizes the buffer its sealed body
    /// is written into.
    pub encoded_len: usize,
}

impl std::fmt::Debug for ValidEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidEvent")
            .field("kind", &self.kind)
            .field("identifiers", &self.identifiers.len())
            .finish_non_exhaustive()
    }
}

fn check_text(value: &str, field: &str, max: usize) -> Result<(), Violation> {
    if value.len() > max {
        return Err(Violation::new(field, format!("longer than {max} bytes")));
    }
    if value.contains('\u{0}') {
        return Err(Violation::new(field, "contains NUL"));
    }
    Ok(())
}

/// Validates a decoded event. `is_purpose` says whether a fideslang purpose is known.
pub fn validate(raw: RawEvent, is_purpose: impl Fn(&str) -> bool) -> Result<ValidEvent, Violation> {
    if let Some(v) = raw.decode_error {
        return Err(v);
    }
    if raw.encoded_len > MAX_EVENT_BYTES {
        return Err(Violation::new(
            "",
            format!("the event is larger than {MAX_EVENT_BYTES} bytes"),
        ));
    }
    let message_id = raw.message_id.trim().to_owned();
    if message_id.is_empty() {
        return Err(Violation::new("message_id", "required"));
    }
    check_text(&message_id, "message_id", MAX_MESSAGE_ID_LEN)?;
    let kind = EventKind::from_code(raw.type_code).ok_or_else(|| {
        Violation::new(
            "type",
            "must be track, identify, page, screen, group or alias",
        )
    })?;
    check_text(&raw.event, "event", MAX_NAME_LEN)?;
    check_text(&raw.name, "name", MAX_NAME_LEN)?;
    check_text(&raw.group_id, "group_id", MAX_NAME_LEN)?;
    check_text(&raw.previous_id, "previous_id", MAX_NAME_LEN)?;
    match kind {
        EventKind::Track if raw.event.trim().is_empty() => {
            return Err(Violation::new("event", "required for track events"));
        }
        EventKind::Group if raw.group_id.trim().is_empty() => {
            return Err(Violation::new("group_id", "required for group events"));
        }
        EventKind::Alias if raw.previous_id.trim().is_empty() => {
            return Err(Violation::new("previous_id", "required for alias events"));
        }
        EventKind::Alias if raw.user_id.trim().is_empty() => {
            return Err(Violation::new("user_id", "required for alias events"));
        }
        _ => {}
    }
    if raw.identifiers.len() > MAX_IDENTIFIERS {
        return Err(Violation::new(
            "identifiers",
            format!("at most {MAX_IDENTIFIERS} identifiers"),
        ));
    }

    // Alias: previous_id first, then user_id (the order the bus contract names).
    let mut identifiers = Vec::new();
    let mut push_opaque = |kind: IdentifierType, value: &str, field: &str| {
        if !value.trim().is_empty() {
            identifiers.push(EventIdentifier {
                raw: RawIdentifier::new(kind, value),
                field: field.to_owned(),
                soft: false,
            });
        }
    };
    if kind == EventKind::Alias {
        // The previous id is a user id when the subject was known, else an anonymous id;
        // Segment does not say which, so it is linked as a user id of the old identity.
        push_opaque(IdentifierType::UserId, &raw.previous_id, "previous_id");
    }
    push_opaque(IdentifierType::UserId, &raw.user_id, "user_id");
    push_opaque(
        IdentifierType::AnonymousId,
        &raw.anonymous_id,
        "anonymous_id",
    );
    check_text(&raw.user_id, "user_id", MAX_NAME_LEN)?;
    check_text(&raw.anonymous_id, "anonymous_id", MAX_NAME_LEN)?;
    for (j, id) in raw.identifiers.iter().enumerate() {
        let field = format!("identifiers[{j}]");
        let kind = IdentifierType::from_code(id.type_code).ok_or_else(|| {
            Violation::new(format!("{field}.type"), "must name an identifier type")
        })?;
        if id.value.trim().is_empty() {
            return Err(Violation::new(format!("{field}.value"), "required"));
        }
        check_text(&id.value, &format!("{field}.value"), MAX_NAME_LEN)?;
        identifiers.push(EventIdentifier {
            raw: RawIdentifier {
                kind,
                value: id.value.clone(),
                source: id.source.clone(),
                default_region: id.default_region.clone(),
            },
            field,
            soft: false,
        });
    }
    // Segment carries the email and phone of identify calls in traits: they identify the
    // subject too (kept in the traits as well, sealed like every trait).
    for (key, kind) in [
        ("email", IdentifierType::Email),
        ("phone", IdentifierType::Phone),
    ] {
        if let Some(Value::String(v)) = raw.traits.get(key)
            && !v.trim().is_empty()
            && v.len() <= MAX_NAME_LEN
            && !identifiers.iter().any(|i| i.raw.kind == kind)
        {
            identifiers.push(EventIdentifier {
                raw: RawIdentifier::new(kind, v.clone()),
                field: format!("traits.{key}"),
                soft: true,
            });
        }
    }
    if identifiers.is_empty() {
        return Err(Violation::new(
            "anonymous_id",
            "an event needs an anonymous_id, a user_id or another identifier",
        ));
    }

    let jurisdiction = raw.jurisdiction.trim().to_owned();
    if !jurisdiction.is_empty() && meridian_policy::Jurisdiction::parse(&jurisdiction).is_err() {
        return Err(Violation::new(
            "jurisdiction",
            "must be an ISO 3166-1 alpha-2 code, optionally with a subdivision (`DE`, `US-CA`)",
        ));
    }
    let mut choices = Vec::with_capacity(raw.choices.len());
    for (j, c) in raw.choices.iter().enumerate() {
        if !is_purpose(&c.purpose) {
            return Err(Violation::new(
                format!("consent.choices[{j}].purpose"),
                "not a purpose of the policies' taxonomy",
            ));
        }
        let state = match c.decision {
            1 => ConsentState::Given,
            2 | 3 => ConsentState::Refused,
            4 => ConsentState::None,
            _ => {
                return Err(Violation::new(
                    format!("consent.choices[{j}].decision"),
                    "must be given, refused, withdrawn or expired",
                ));
            }
        };
        choices.push((c.purpose.clone(), state));
    }
    let age = match raw.age_band {
        0 => None,
        1 => Some(12),
        2 => Some(13),
        3 => Some(16),
        4 => Some(18),
        _ => return Err(Violation::new("age_band", "not an age band")),
    };
    Ok(ValidEvent {
        message_id,
        kind,
        event: raw.event.trim().to_owned(),
        name: raw.name,
        group_id: raw.group_id,
        identifiers,
        properties: raw.properties,
        traits: raw.traits,
        context: raw.context,
        original_timestamp: raw.timestamp,
        sent_at: raw.sent_at,
        jurisdiction,
        choices,
        gpc: raw.gpc,
        age,
        age_band: raw.age_band,
        encoded_len: raw.encoded_len,
    })
}

/// Segment's clock-skew correction: the client's clock is off by `sent_at - received_at`,
/// so the event happened at `received_at - (sent_at - original_timestamp)`. Without
/// `sent_at` the client's timestamp is taken as is; without a timestamp, `received_at`.
pub fn corrected_timestamp(
    original: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
) -> DateTime<Utc> {
    match (original, sent_at) {
        (Some(original), Some(sent)) => {
            let delay = sent.signed_duration_since(original);
            received_at.checked_sub_signed(delay).unwrap_or(received_at)
        }
        (Some(original), None) => original,
        (None, _) => received_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track() -> RawEvent {
        RawEvent {
            message_id: "m-1".into(),
            type_code: 1,
            anonymous_id: "anon-1".into(),
            event: "Order Completed".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_track_event_passes() {
        let v = validate(track(), |_| true).unwrap();
        assert_eq!(v.kind, EventKind::Track);
        assert_eq!(v.identifiers.len(), 1);
        assert_eq!(v.identifiers[0].field, "anonymous_id");
    }

    #[test]
    fn violations_name_the_field() {
        let cases: Vec<(RawEvent, &str)> = vec![
            (
                RawEvent {
                    message_id: " ".into(),
                    ..track()
                },
                "message_id",
            ),
            (
                RawEvent {
                    type_code: 9,
                    ..track()
                },
                "type",
            ),
            (
                RawEvent {
                    event: String::new(),
                    ..track()
                },
                "event",
            ),
            (
                RawEvent {
                    anonymous_id: String::new(),
                    ..track()
                },
                "anonymous_id",
            ),
            (
                RawEvent {
                    type_code: 5,
                    ..track()
                },
                "group_id",
            ),
            (
                RawEvent {
                    type_code: 6,
                    previous_id: "old".into(),
                    ..track()
                },
                "user_id",
            ),
            (
                RawEvent {
                    jurisdiction: "germany".into(),
                    ..track()
                },
                "jurisdiction",
            ),
            (
                RawEvent {
                    age_band: 7,
                    ..track()
                },
                "age_band",
            ),
            (
                RawEvent {
                    identifiers: vec![DeliveredIdentifier {
                        type_code: 42,
                        value: "x".into(),
                        ..Default::default()
                    }],
                    ..track()
                },
                "identifiers[0].type",
            ),
            (
                RawEvent {
                    choices: vec![DeliveredChoice {
                        purpose: "nope".into(),
                        decision: 1,
                    }],
                    ..track()
                },
                "consent.choices[0].purpose",
            ),
            (
                RawEvent {
                    encoded_len: MAX_EVENT_BYTES + 1,
                    ..track()
                },
                "",
            ),
        ];
        for (raw, field) in cases {
            let err = validate(raw, |p| p == "analytics").unwrap_err();
            assert_eq!(err.field, field, "{err:?}");
        }
    }

    #[test]
    fn clock_skew_is_corrected_like_segment() {
        let t = |s: i64| DateTime::from_timestamp(1_767_225_600 + s, 0).unwrap();
        // The client clock is 100 s behind: it stamped the event at 0 and sent it at 10;
        // the server received it at 110, so the event happened at 100.
        assert_eq!(corrected_timestamp(Some(t(0)), Some(t(10)), t(110)), t(100));
        assert_eq!(corrected_timestamp(Some(t(5)), None, t(110)), t(5));
        assert_eq!(corrected_timestamp(None, Some(t(10)), t(110)), t(110));
    }
}
