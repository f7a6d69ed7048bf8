//! [`ConsentLookup`] over the consent room's projection (`ConsentRoom::current`), and the
//! bus handler that invalidates the consent cache on `ConsentChanged` (family `consent`).

use std::sync::Arc;

use async_trait::async_trait;
use meridian_bus::{EventHandler, HandlerError, OutboxEvent, Tx};
use meridian_consent::{ConsentError, ConsentRoom, IdKind, SubjectId, SubjectQuery};
use meridian_identity::IdentifierType;
use meridian_policy::ConsentState;
use meridian_proto::bus::v1::ConsentChanged;
use prost::Message;

use crate::error::IngestError;
use crate::gate::{ConsentCache, ConsentLookup, ConsentSnapshot, SubjectIdentifier};

/// The consent room as the gate's [`ConsentLookup`].
#[derive(Clone)]
pub struct ConsentRoomLookup {
    room: ConsentRoom,
}

impl ConsentRoomLookup {
    pub fn new(room: ConsentRoom) -> Self {
        ConsentRoomLookup { room }
    }
}

/// How the consent room names an identifier (its `SubjectQuery` kinds).
fn subject_id(id: &SubjectIdentifier) -> SubjectId {
    let kind = match id.kind {
        IdentifierType::Email => IdKind::Email,
        IdentifierType::Phone => IdKind::Phone,
        IdentifierType::Idfa | IdentifierType::Gaid | IdentifierType::DeviceId => IdKind::DeviceId,
        IdentifierType::StorefrontCustomerId => IdKind::Scoped(id.source.clone()),
        other => IdKind::Scoped(other.name().to_owned()),
    };
    SubjectId {
        kind,
        value: id.value.to_string(),
        default_region: None,
    }
}

#[async_trait]
impl ConsentLookup for ConsentRoomLookup {
    async fn current(
        &self,
        workspace: &str,
        subjects: &[Vec<SubjectIdentifier>],
    ) -> Result<Vec<ConsentSnapshot>, IngestError> {
        let now = chrono::Utc::now();
        let queries: Vec<SubjectQuery> = subjects
            .iter()
            .map(|ids| SubjectQuery {
                identifiers: ids.iter().map(subject_id).collect(),
            })
            .collect();
        // One batched lookup per Ingest call: the consent room finds every subject of the
        // batch in one round trip (most shoppers never recorded consent).
        let answers = self
            .room
            .current_many(workspace, &queries, now)
            .await
            .map_err(|e| IngestError::Consent(e.to_string()))?;
        answers
            .into_iter()
            .map(|answer| match answer {
                Ok(states) => Ok(ConsentSnapshot {
                    purposes: states
                        .into_iter()
                        .map(|s| {
                            let state = match s.decision {
                                meridian_consent::ledger::Decision::Given => ConsentState::Given,
                                meridian_consent::ledger::Decision::Refused
                                | meridian_consent::ledger::Decision::Withdrawn => {
                                    ConsentState::Refused
                                }
                                meridian_consent::ledger::Decision::Expired => ConsentState::None,
                            };
                            (s.purpose, state)
                        })
                        .collect(),
                }),
                // An erased subject has no consent any more.
                Err(ConsentError::SubjectErased) => Ok(ConsentSnapshot::default()),
                Err(e) => Err(IngestError::Consent(e.to_string())),
            })
            .collect()
    }
}

/// Consumes `ConsentChanged` (family `consent`) and retires the cached consent of the
/// event's workspace on this replica.
pub struct ConsentInvalidation {
    cache: Arc<ConsentCache>,
}

impl ConsentInvalidation {
    pub fn new(cache: Arc<ConsentCache>) -> Self {
        ConsentInvalidation { cache }
    }
}

#[async_trait]
impl EventHandler for ConsentInvalidation {
    async fn handle(&self, _tx: &mut Tx<'_>, event: &OutboxEvent) -> Result<(), HandlerError> {
        let changed = ConsentChanged::decode(event.payload.as_slice())
            .map_err(|_| HandlerError::Failed("ConsentChanged payload does not decode".into()))?;
        let workspace = if changed.workspace_id.is_empty() {
            event.workspace_id.as_str()
        } else {
            changed.workspace_id.as_str()
        };
        self.cache.invalidate_workspace(workspace);
        tracing::debug!(workspace, "consent changed: cache invalidated");
        Ok(())
    }
}
