//! Keeping the read model in step with the identity room, from bus events: family `profile`
//! (`ProfileChanged`: fetch the profile through [`ProfileSource`], update membership of
//! every segment for that profile) and family `ingest-event` (`EventAccepted`: count the
//! event into its profile's local day in the workspace's time zone, once per event id).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use meridian_bus::{
    ConsumerName, EventFamily, EventHandler, HandlerError, OutboxEvent, RetryPolicy, Subscription,
    Tx,
};
use meridian_proto::bus::v1::{EventAccepted, ProfileChanged};
use meridian_proto::v1::EventType;
use prost::Message;

use crate::error::AudienceError;
use crate::room::AudienceRoom;
use crate::segment::{self, local_day};
use crate::store::{ProfileRow, TraitValue, WriteVia};

/// What the audience room needs to know about a profile (no personal values: regions,
/// age band, which identifier types it has, computed traits).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProfileView {
    pub profile: ProfileRow,
    /// `email`, `phone`, `device_id`, `customer_id`, …
    pub identifier_types: Vec<String>,
    /// Computed traits (`rfm_score`, `rfm_segment`, `aipl_stage`, …).
    pub computed_traits: Vec<(String, TraitValue)>,
}

#[derive(Debug, thiserror::Error)]
#[error("profile source: {0}")]
pub struct SourceError(pub String);

/// Where profiles come from (the identity room, adapted in the binary).
#[async_trait::async_trait]
pub trait ProfileSource: Send + Sync {
    /// The profile now; `None` when it no longer exists (merged away, erased).
    async fn profile(
        &self,
        workspace: &str,
        profile_id: &str,
    ) -> Result<Option<ProfileView>, SourceError>;
    /// The profile holding the identifier with this blind index, if any.
    async fn profile_of(
        &self,
        workspace: &str,
        blind_index: &[u8],
    ) -> Result<Option<String>, SourceError>;
}

impl From<SourceError> for AudienceError {
    fn from(e: SourceError) -> Self {
        AudienceError::Upstream(e.0)
    }
}

/// What became of an accepted event in the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventCounted {
    /// Counted into its profile's day now.
    Counted,
    /// Already counted (a redelivery), or not an event segments count (identify, alias…).
    Skipped,
    /// None of its identifiers belongs to a profile yet: the identity room consumes the
    /// same event and may not have stitched it. Worth trying again shortly.
    ProfileNotYetKnown,
}

impl AudienceRoom {
    /// Applies a `ProfileChanged`: merged-away profiles hand their events to the survivor
    /// and leave every segment; the profile (and any split off it) is read again and its
    /// membership of every segment updated. Idempotent.
    pub async fn apply_profile_changed(
        &self,
        mut via: WriteVia<'_, '_>,
        source: &dyn ProfileSource,
        change: &ProfileChanged,
        at: DateTime<Utc>,
    ) -> Result<(), AudienceError> {
        let workspace = change.workspace_id.as_str();
        let store = self.store();
        for merged in &change.merged_profile_ids {
            store
                .remove_profile(via.reborrow(), workspace, merged, Some(&change.profile_id))
                .await?;
        }
        let zone = store.workspace_time_zone(workspace).await?;
        let today = local_day(at, zone);
        let segments = store.segments(workspace).await?;
        for profile_id in std::iter::once(&change.profile_id).chain(&change.split_profile_ids) {
            match source.profile(workspace, profile_id).await? {
                None => {
                    store
                        .remove_profile(via.reborrow(), workspace, profile_id, None)
                        .await?
                }
                Some(view) => {
                    store
                        .put_profile(
                            via.reborrow(),
                            workspace,
                            &ProfileRow {
                                profile_id: profile_id.clone(),
                                ..view.profile
                            },
                            &view.computed_traits,
                            &view.identifier_types,
                            at,
                        )
                        .await?;
                    for row in &segments {
                        let rule = segment::parse(&row.definition)?;
                        store
                            .recompute_members_of(
                                via.reborrow(),
                                workspace,
                                &row.segment_id,
                                &rule,
                                today,
                                at,
                                Some(profile_id),
                            )
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies an `EventAccepted`: the event counts for the profile of its first identifier
    /// that resolves, on the local day of its timestamp.
    pub async fn apply_event_accepted(
        &self,
        mut via: WriteVia<'_, '_>,
        source: &dyn ProfileSource,
        event: &EventAccepted,
    ) -> Result<EventCounted, AudienceError> {
        let workspace = event.workspace_id.as_str();
        let name = match event.r#type() {
            EventType::Track => event.event.clone(),
            EventType::Page => "Page Viewed".to_owned(),
            EventType::Screen => "Screen Viewed".to_owned(),
            _ => return Ok(EventCounted::Skipped),
        };
        if name.is_empty() {
            return Ok(EventCounted::Skipped);
        }
        let mut profile = None;
        for identifier in &event.identifiers {
            if let Some(found) = source
                .profile_of(workspace, &identifier.blind_index)
                .await?
            {
                profile = Some(found);
                break;
            }
        }
        let Some(profile) = profile else {
            return Ok(EventCounted::ProfileNotYetKnown);
        };
        let at = event
            .timestamp
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
            .unwrap_or_else(Utc::now);
        let zone = self.store().workspace_time_zone(workspace).await?;
        let (currency, revenue) = match &event.revenue {
            Some(money) if money.minor_units > 0 && money.currency.len() == 3 => {
                (money.currency.to_ascii_uppercase(), money.minor_units)
            }
            _ => (String::new(), 0),
        };
        let counted = self
            .store()
            .apply_event(
                via.reborrow(),
                workspace,
                &event.event_id,
                &profile,
                &name,
                local_day(at, zone),
                &currency,
                revenue,
            )
            .await?;
        if !counted {
            return Ok(EventCounted::Skipped);
        }
        let now = Utc::now();
        if !event.jurisdiction.is_empty() {
            self.store()
                .note_jurisdiction(
                    via.reborrow(),
                    workspace,
                    &profile,
                    &event.jurisdiction,
                    now,
                )
                .await?;
        }
        // The profile's event counts changed: so may its membership of segments over them
        // (and of those over its region).
        let today = local_day(now, zone);
        for row in self.store().segments(workspace).await? {
            let rule = segment::parse(&row.definition)?;
            if rule.counts_events() || !event.jurisdiction.is_empty() {
                self.store()
                    .recompute_members_of(
                        via.reborrow(),
                        workspace,
                        &row.segment_id,
                        &rule,
                        today,
                        now,
                        Some(&profile),
                    )
                    .await?;
            }
        }
        Ok(EventCounted::Counted)
    }
}

/// The subscriptions [`ReadModelConsumer`] runs under. Events retry quickly and for about
/// half a minute: the identity room consumes the same events, and an event's profile
/// usually exists a few hundred milliseconds after the event does.
pub fn subscriptions() -> [Subscription; 2] {
    let subscription = |consumer: &str, family: &str| {
        Subscription::new(
            consumer
                .parse::<ConsumerName>()
                .expect("a valid consumer name"),
            family.parse::<EventFamily>().expect("a valid event family"),
        )
    };
    let profiles = subscription("audience-profiles", "profile");
    let mut events = subscription("audience-events", "ingest-event");
    events.retry = RetryPolicy {
        max_attempts: 10,
        initial_backoff: Duration::from_millis(250),
        max_backoff: Duration::from_secs(5),
    };
    [profiles, events]
}

/// The bus consumer of families `profile` and `ingest-event`.
pub struct ReadModelConsumer {
    pub room: AudienceRoom,
    pub source: Arc<dyn ProfileSource>,
}

#[async_trait::async_trait]
impl EventHandler for ReadModelConsumer {
    async fn handle(&self, tx: &mut Tx<'_>, event: &OutboxEvent) -> Result<(), HandlerError> {
        let failed = |e: AudienceError| HandlerError::Failed(e.to_string());
        match event.family.as_str() {
            "profile" => {
                let change = ProfileChanged::decode(event.payload.as_slice())
                    .map_err(|e| HandlerError::Failed(format!("ProfileChanged: {e}")))?;
                self.room
                    .apply_profile_changed(
                        WriteVia::Consumer(tx),
                        &*self.source,
                        &change,
                        Utc::now(),
                    )
                    .await
                    .map_err(failed)
            }
            "ingest-event" => {
                let accepted = EventAccepted::decode(event.payload.as_slice())
                    .map_err(|e| HandlerError::Failed(format!("EventAccepted: {e}")))?;
                match self
                    .room
                    .apply_event_accepted(WriteVia::Consumer(tx), &*self.source, &accepted)
                    .await
                    .map_err(failed)?
                {
                    EventCounted::Counted | EventCounted::Skipped => Ok(()),
                    // The bus retries with backoff (see `subscriptions`); an event
                    // whose identifiers never stitch ends in the dead letters, visible.
                    EventCounted::ProfileNotYetKnown => Err(HandlerError::Failed(
                        "no profile holds the event's identifiers yet".into(),
                    )),
                }
            }
            _ => Ok(()),
        }
    }
}
