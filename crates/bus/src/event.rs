//! The typed outbox event and the names the bus routes by.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use meridian_domain::{InvalidValue, WorkspaceId};
use uuid::Uuid;

/// Whether `value` is a lowercase token: `a-z`, `0-9` and inner `-`, within `max` bytes.
/// Tokens are safe in NATS subjects, stream and consumer names, and SQL text.
fn is_token(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

macro_rules! token_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                if is_token(value, Self::MAX_LEN) {
                    Ok(Self(value.to_owned()))
                } else {
                    Err(InvalidValue {
                        reason: format!(
                            concat!($what, " must be 1 to {} characters of a-z, 0-9 and inner '-'"),
                            Self::MAX_LEN
                        ),
                    })
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

token_type!(
    /// A family of events (`consent`, `profile`, `ingest-event`, …): one JetStream stream
    /// per family, and the last token of the subject `meridian.<workspace>.<family>`.
    EventFamily,
    "event family",
    40
);

token_type!(
    /// A durable consumer (`identity`, `audience-sync`, …). Each consumer sees every event
    /// of the families it subscribes to and applies each at most once.
    ConsumerName,
    "consumer name",
    60
);

/// An event announcing a committed state change. Written to the outbox in the same
/// transaction as the change; the payload may carry (sealed) personal data, so it is
/// never logged and `Debug` prints only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// UUID v7: unique, time-ordered; the JetStream `Nats-Msg-Id` and the idempotency key.
    pub event_id: Uuid,
    pub workspace_id: WorkspaceId,
    pub family: EventFamily,
    /// What the event is about (a profile id, a request id…): an opaque id, not personal data.
    pub key: String,
    pub payload: Vec<u8>,
    pub occurred_at: DateTime<Utc>,
}

impl OutboxEvent {
    /// A new event with a fresh v7 id, occurring now.
    pub fn new(
        workspace_id: WorkspaceId,
        family: EventFamily,
        key: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            workspace_id,
            family,
            key: key.into(),
            payload: payload.into(),
            occurred_at: Utc::now(),
        }
    }

    /// `meridian.<workspace>.<family>`.
    pub fn subject(&self) -> String {
        subject(&self.workspace_id, &self.family)
    }
}

impl fmt::Debug for OutboxEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxEvent")
            .field("event_id", &self.event_id)
            .field("workspace_id", &self.workspace_id)
            .field("family", &self.family)
            .field("payload_len", &self.payload.len())
            .field("occurred_at", &self.occurred_at)
            .finish_non_exhaustive()
    }
}

/// The NATS subject of a workspace's events of one family.
pub fn subject(workspace: &WorkspaceId, family: &EventFamily) -> String {
    format!("meridian.{workspace}.{family}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_tokens() {
        assert!("consent".parse::<EventFamily>().is_ok());
        assert!("ingest-event".parse::<EventFamily>().is_ok());
        for bad in [
            "",
            "a.b",
            "a*",
            ">",
            "Upper",
            "-x",
            "x-",
            "a b",
            &"x".repeat(41),
        ] {
            assert!(bad.parse::<EventFamily>().is_err(), "{bad:?}");
        }
        assert!("audience-sync".parse::<ConsumerName>().is_ok());
        assert!("a_b".parse::<ConsumerName>().is_err());
    }

    #[test]
    fn debug_does_not_print_the_payload_or_key() {
        let event = OutboxEvent::new(
            "acme".parse().unwrap(),
            "profile".parse().unwrap(),
            "subject-key-123",
            b"alice@example.com".to_vec(),
        );
        let shown = format!("{event:?}");
        assert!(!shown.contains("alice"), "{shown}");
        assert!(!shown.contains("subject-key-123"), "{shown}");
        assert!(shown.contains("payload_len: 17"), "{shown}");
        assert_eq!(event.subject(), "meridian.acme.profile");
        assert_eq!(event.event_id.get_version_num(), 7);
    }
}
