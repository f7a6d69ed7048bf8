//! `ListProfileEvents` through a seam: the room asks a [`ProfileEventSource`] (the ingest
//! room, adapted in the binary) for the opened events of a profile's identifiers.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use meridian_vault::BlindIndex;

use crate::error::IdentityError;

/// Page sizes: 0 means [`DEFAULT_PAGE_SIZE`], more than [`MAX_PAGE_SIZE`] is refused.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1_000;

/// One stored event, opened. `Debug` prints no properties.
#[derive(Clone)]
pub struct ProfileEvent {
    pub message_id: String,
    /// `track`, `identify`, `page`, `screen`, `group`, `alias`.
    pub event_type: String,
    pub event: String,
    pub name: String,
    /// The kept properties (opened), a JSON object.
    pub properties: serde_json::Map<String, serde_json::Value>,
    pub timestamp: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

impl std::fmt::Debug for ProfileEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileEvent")
            .field("message_id", &self.message_id)
            .field("event_type", &self.event_type)
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

/// A page of events, newest first by the source's order.
#[derive(Debug, Clone, Default)]
pub struct ProfileEventPage {
    pub events: Vec<ProfileEvent>,
    /// Empty on the last page.
    pub next_page_token: String,
}

/// Where a profile's events come from: the events any of `anchors` (blind indexes of the
/// profile's identifiers) carried, opened, paginated by an opaque token the source issues.
#[async_trait]
pub trait ProfileEventSource: Send + Sync {
    async fn events(
        &self,
        workspace: &str,
        anchors: &[BlindIndex],
        page_size: u32,
        page_token: &str,
    ) -> Result<ProfileEventPage, IdentityError>;
}

/// The page size a request asks for, validated.
pub fn page_size(requested: u32) -> Result<u32, IdentityError> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > MAX_PAGE_SIZE => Err(IdentityError::InvalidArgument {
            field: "page_size",
            reason: "at most 1000",
        }),
        n => Ok(n),
    }
}
