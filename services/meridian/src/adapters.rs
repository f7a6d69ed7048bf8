//! Where one room calls another. Each room owns the small trait it needs (identity's
//! `ProfileEventSource`, consent's `SubjectLocator`, `ErasureTarget` and `AccessSource`);
//! the adapters here implement them over the other rooms' libraries, which share the
//! region's store, so any process can run them.

use async_trait::async_trait;
use meridian_audience::profiles::SourceError;
use meridian_audience::store::TraitValue;
use meridian_consent::erasure::{
    AccessSource, ErasureSubject, ErasureTarget, Found, StepError, StepReport, SubjectLocator,
};
use meridian_identity::{IdentityError, IdentityRoom, ProfileEvent, ProfileEventPage, ProfileId};
use meridian_ingest::IngestRoom;
use meridian_vault::BlindIndex;
use serde_json::{Map, Value, json};

/// A step error that names the room and the kind of failure, never personal data (the
/// rooms' errors carry none: they name fields and codes).
fn step_error(room: &str, err: impl std::fmt::Display) -> StepError {
    StepError::new(format!("{room}: {err}"))
}

fn profile_ids(subject: &ErasureSubject) -> Vec<ProfileId> {
    subject
        .profile_ids
        .iter()
        .filter_map(|p| p.parse::<ProfileId>().ok())
        .collect()
}

// ---- identity ← ingest -------------------------------------------------------------------

/// `ListProfileEvents` reads the events the ingestion room stored for a profile's identifiers.
pub(crate) struct IngestedEvents(pub(crate) IngestRoom);

#[async_trait]
impl meridian_identity::ProfileEventSource for IngestedEvents {
    async fn events(
        &self,
        workspace: &str,
        anchors: &[BlindIndex],
        page_size: u32,
        page_token: &str,
    ) -> Result<ProfileEventPage, IdentityError> {
        let page = self
            .0
            .events_of(workspace, anchors, page_token, page_size)
            .await
            .map_err(|e| IdentityError::Collaborator(format!("ingest: {e}")))?;
        Ok(ProfileEventPage {
            events: page
                .events
                .into_iter()
                .map(|e| {
                    let body = e.body.unwrap_or(Value::Null);
                    ProfileEvent {
                        message_id: e.message_id,
                        event_type: e.kind.map(|k| k.name().to_owned()).unwrap_or_default(),
                        event: e.event_name,
                        name: body["name"].as_str().unwrap_or_default().to_owned(),
                        properties: match &body["properties"] {
                            Value::Object(map) => map.clone(),
                            _ => Map::new(),
                        },
                        timestamp: e.occurred_at,
                        received_at: e.received_at,
                    }
                })
                .collect(),
            next_page_token: page.next_page_token,
        })
    }
}

// ---- consent (erasure saga, access requests) ← identity, ingest, vault ------------------

/// Finds the profile of the subject's identifiers, and every identifier of that profile.
pub(crate) struct ProfileLocator(pub(crate) IdentityRoom);

#[async_trait]
impl SubjectLocator for ProfileLocator {
    async fn locate(
        &self,
        workspace: &str,
        blind_indexes: &[BlindIndex],
    ) -> Result<Found, StepError> {
        let profile = self
            .0
            .subject_profile(
                workspace,
                &meridian_identity::room::SubjectRef::BlindIndexes(blind_indexes.to_vec()),
            )
            .await
            .map_err(|e| step_error("identity", e))?;
        Ok(match profile {
            None => Found::default(),
            Some(view) => Found {
                profile_ids: vec![view.profile.profile.to_string()],
                blind_indexes: view.identifiers.iter().map(|i| i.key.index).collect(),
                vault_subjects: Vec::new(),
            },
        })
    }
}

/// Deletes the subject's profiles from the identity graph: nodes, edges, blind-index rows,
/// sealed copies, traits and computed traits. Reports the vault subjects to shred.
pub(crate) struct IdentityErasure(pub(crate) IdentityRoom);

#[async_trait]
impl ErasureTarget for IdentityErasure {
    fn name(&self) -> &str {
        "delete_identity_graph"
    }

    async fn erase(
        &self,
        workspace: &str,
        subject: &ErasureSubject,
    ) -> Result<StepReport, StepError> {
        let mut found = Found::default();
        let mut profiles = 0;
        let mut identifiers = 0;
        for id in profile_ids(subject) {
            let erased = self
                .0
                .erase_profile(workspace, id)
                .await
                .map_err(|e| step_error("identity", e))?;
            profiles += erased.profile_ids.len();
            identifiers += erased.identifiers.len();
            found
                .profile_ids
                .extend(erased.profile_ids.iter().map(ToString::to_string));
            found
                .blind_indexes
                .extend(erased.identifiers.iter().map(|k| k.index));
            found.vault_subjects.extend(erased.vault_subjects);
        }
        Ok(StepReport {
            summary: json!({"profiles_deleted": profiles, "identifiers_deleted": identifiers}),
            found,
        })
    }
}

/// Deletes every event stored under the subject's identifiers.
pub(crate) struct EventPurge(pub(crate) IngestRoom);

#[async_trait]
impl ErasureTarget for EventPurge {
    fn name(&self) -> &str {
        "delete_events"
    }

    async fn erase(
        &self,
        workspace: &str,
        subject: &ErasureSubject,
    ) -> Result<StepReport, StepError> {
        let deleted = self
            .0
            .purge(workspace, &subject.blind_indexes)
            .await
            .map_err(|e| step_error("ingest", e))?;
        Ok(StepReport::counts(json!({"events_deleted": deleted})))
    }
}

/// The subject's profiles, opened, for the `profile` and `identifiers` sections.
async fn profiles_of(
    room: &IdentityRoom,
    workspace: &str,
    subject: &ErasureSubject,
) -> Result<Vec<meridian_identity::ProfileView>, StepError> {
    let mut out = Vec::new();
    for id in profile_ids(subject) {
        match room.profile(workspace, id).await {
            Ok(view) => out.push(view),
            Err(IdentityError::ProfileNotFound) => continue,
            Err(e) => return Err(step_error("identity", e)),
        }
    }
    Ok(out)
}

/// The `profile` section of an access bundle: traits and computed traits per profile.
pub(crate) struct ProfileAccess(pub(crate) IdentityRoom);

#[async_trait]
impl AccessSource for ProfileAccess {
    fn section(&self) -> &str {
        "profile"
    }

    async fn collect(&self, workspace: &str, subject: &ErasureSubject) -> Result<Value, StepError> {
        let profiles = profiles_of(&self.0, workspace, subject).await?;
        Ok(Value::Array(
            profiles
                .iter()
                .map(|view| {
                    let computed = view.computed.as_ref().map(|c| {
                        json!({
                            "aipl_stage": format!("{:?}", c.stage).to_lowercase(),
                            "orders": c.orders,
                            "rfm": c.rfm.iter().map(|r| json!({
                                "recency_score": r.recency_score,
                                "frequency_score": r.frequency_score,
                                "monetary_score": r.monetary_score,
                            })).collect::<Vec<_>>(),
                        })
                    });
                    json!({
                        "profile_id": view.profile.profile.to_string(),
                        "created_at": view.profile.created_at.to_rfc3339(),
                        "traits": Value::Object(view.traits.0.clone()),
                        "computed_traits": computed,
                    })
                })
                .collect(),
        ))
    }
}

/// The `identifiers` section of an access bundle: every identifier of the subject's
/// profiles, opened from its sealed copy.
pub(crate) struct IdentifiersAccess(pub(crate) IdentityRoom);

#[async_trait]
impl AccessSource for IdentifiersAccess {
    fn section(&self) -> &str {
        "identifiers"
    }

    async fn collect(&self, workspace: &str, subject: &ErasureSubject) -> Result<Value, StepError> {
        let profiles = profiles_of(&self.0, workspace, subject).await?;
        Ok(Value::Array(
            profiles
                .iter()
                .flat_map(|view| {
                    view.identifiers.iter().map(|i| {
                        json!({
                            "profile_id": view.profile.profile.to_string(),
                            "type": i.key.kind.name(),
                            "value": i.value.as_str(),
                            "source": i.source,
                            "first_seen": i.first_seen.to_rfc3339(),
                        })
                    })
                })
                .collect(),
        ))
    }
}

/// The `events` section of an access bundle: every stored event of the subject, opened.
pub(crate) struct EventsAccess(pub(crate) IngestRoom);

/// Events per access bundle at most; a portability export of a heavy user stays bounded.
const ACCESS_EVENTS_LIMIT: usize = 100_000;

#[async_trait]
impl AccessSource for EventsAccess {
    fn section(&self) -> &str {
        "events"
    }

    async fn collect(&self, workspace: &str, subject: &ErasureSubject) -> Result<Value, StepError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .0
                .events_of(workspace, &subject.blind_indexes, &token, 1_000)
                .await
                .map_err(|e| step_error("ingest", e))?;
            for e in page.events {
                out.push(json!({
                    "message_id": e.message_id,
                    "type": e.kind.map(|k| k.name()),
                    "event": e.event_name,
                    "timestamp": e.occurred_at.to_rfc3339(),
                    "received_at": e.received_at.to_rfc3339(),
                    "jurisdiction": e.jurisdiction,
                    "purposes": e.purposes,
                    "data": e.body,
                }));
            }
            if page.next_page_token.is_empty() || out.len() >= ACCESS_EVENTS_LIMIT {
                break;
            }
            token = page.next_page_token;
        }
        Ok(Value::Array(out))
    }
}

/// The `audience_memberships` section of an access bundle: the segments each of the
/// subject's profiles is in.
pub(crate) struct MembershipsAccess(pub(crate) meridian_audience::AudienceRoom);

#[async_trait]
impl AccessSource for MembershipsAccess {
    fn section(&self) -> &str {
        "audience_memberships"
    }

    async fn collect(&self, workspace: &str, subject: &ErasureSubject) -> Result<Value, StepError> {
        let mut out = Vec::new();
        for profile_id in &subject.profile_ids {
            for (segment_id, name, joined_at) in self
                .0
                .memberships_of(workspace, profile_id)
                .await
                .map_err(|e| step_error("audience", e))?
            {
                out.push(json!({
                    "profile_id": profile_id,
                    "segment_id": segment_id,
                    "segment": name,
                    "joined_at": joined_at.to_rfc3339(),
                }));
            }
        }
        Ok(Value::Array(out))
    }
}

/// The `destinations` section of an access bundle: every destination that received one
/// of the subject's profiles, from the membership ledger: what it holds now and each send
/// and removal with the consent entry and policy version behind it.
pub(crate) struct DestinationsAccess(pub(crate) meridian_audience::AudienceRoom);

#[async_trait]
impl AccessSource for DestinationsAccess {
    fn section(&self) -> &str {
        "destinations"
    }

    async fn collect(&self, workspace: &str, subject: &ErasureSubject) -> Result<Value, StepError> {
        let ts = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339());
        let mut out = Vec::new();
        for profile_id in &subject.profile_ids {
            let (held, ledger) = self
                .0
                .destinations_of(workspace, profile_id)
                .await
                .map_err(|e| step_error("audience", e))?;
            for h in held {
                let history: Vec<Value> = ledger
                    .iter()
                    .filter(|l| {
                        l.destination_id == h.destination_id && l.segment_id == h.segment_id
                    })
                    .map(|l| {
                        json!({
                            "action": l.action.as_str(),
                            "cause": l.cause,
                            "sync_id": l.sync_id,
                            "consent_entry_id": l.consent_entry_id,
                            "policy_version": l.policy_version,
                            "at": l.recorded_at.to_rfc3339(),
                        })
                    })
                    .collect();
                let destination = self
                    .0
                    .store()
                    .destination(workspace, &h.destination_id)
                    .await
                    .map_err(|e| step_error("audience", e))?;
                out.push(json!({
                    "profile_id": profile_id,
                    "destination_id": h.destination_id,
                    "destination": destination.as_ref().map(|d| d.name.clone()),
                    "platform": destination.as_ref().map(|d| d.platform.as_str()),
                    "region": destination.as_ref().map(|d| d.region.clone()),
                    "segment_id": h.segment_id,
                    "purpose": h.purpose,
                    "status": h.status.as_str(),
                    "consent_entry_id": h.consent_entry_id,
                    "policy_version": h.policy_version,
                    "sent_at": ts(h.sent_at),
                    "removed_at": ts(h.removed_at),
                    "history": history,
                }));
            }
        }
        Ok(Value::Array(out))
    }
}

/// The erasure saga's `remove_from_destinations` step: every destination holding one of the
/// subject's profiles gets a removal of exactly the identifiers it was sent (opened from the
/// ledger before the keys are shredded); the subjects they were sealed under are reported for
/// the shred step.
pub(crate) struct DestinationRemoval(pub(crate) meridian_audience::AudienceRoom);

#[async_trait]
impl ErasureTarget for DestinationRemoval {
    fn name(&self) -> &str {
        "remove_from_destinations"
    }

    async fn erase(
        &self,
        workspace: &str,
        subject: &ErasureSubject,
    ) -> Result<StepReport, StepError> {
        let mut found = Found::default();
        let mut removed = 0;
        for profile_id in &subject.profile_ids {
            let (n, subjects) = self
                .0
                .remove_everywhere(workspace, profile_id)
                .await
                .map_err(|e| step_error("audience", e))?;
            removed += n;
            found.vault_subjects.extend(subjects);
        }
        Ok(StepReport {
            summary: json!({"destination_removals": removed}),
            found,
        })
    }
}

// ---- audience (destinations) ← identity, consent ----------------------------------------

/// A member's identifiers for destinations, opened by the identity room.
pub(crate) struct IdentityDirectory(pub(crate) IdentityRoom);

#[async_trait]
impl meridian_audience::sync::MemberDirectory for IdentityDirectory {
    async fn contact(
        &self,
        workspace: &str,
        profile_id: &str,
    ) -> Result<Option<meridian_audience::sync::MemberContact>, SourceError> {
        let Ok(id) = profile_id.parse::<ProfileId>() else {
            return Ok(None);
        };
        let view = match self.0.profile(workspace, id).await {
            Ok(view) => view,
            Err(IdentityError::ProfileNotFound) => return Ok(None),
            Err(e) => return Err(SourceError(format!("identity: {e}"))),
        };
        let identifiers = view
            .identifiers
            .iter()
            .filter(|i| !i.value.is_empty())
            .map(|i| {
                // Storefront customer ids read back as `source:id` (`source ‖ 0x00 ‖ id` in
                // ingest's copies).
                let storefront =
                    i.key.kind == meridian_identity::IdentifierType::StorefrontCustomerId;
                let (source, value) = match i.value.split_once(['\u{0}', ':']) {
                    Some((source, id)) if storefront => (source.to_owned(), id.to_owned()),
                    _ => (i.source.clone(), i.value.to_string()),
                };
                meridian_audience::connectors::MemberIdentifier {
                    kind: i.key.kind.name().to_owned(),
                    source,
                    value,
                }
            })
            .collect();
        Ok(Some(meridian_audience::sync::MemberContact { identifiers }))
    }

    async fn profile_of(
        &self,
        workspace: &str,
        blind_index: &[u8],
    ) -> Result<Option<String>, SourceError> {
        let Some(index) = BlindIndex::from_slice(blind_index) else {
            return Ok(None);
        };
        let found = self
            .0
            .subject_profile(
                workspace,
                &meridian_identity::room::SubjectRef::BlindIndexes(vec![index]),
            )
            .await
            .map_err(|e| SourceError(format!("identity: {e}")))?;
        Ok(found.map(|view| view.profile.profile.to_string()))
    }
}

/// Current consent of a member for destinations, from the consent room's projection, with
/// the jurisdiction each deciding entry was recorded under.
pub(crate) struct ConsentForDestinations(pub(crate) meridian_consent::ConsentRoom);

fn consent_subject_id(
    id: &meridian_audience::connectors::MemberIdentifier,
) -> meridian_consent::SubjectId {
    use meridian_consent::IdKind;
    let kind = match id.kind.as_str() {
        "email" => IdKind::Email,
        "phone" => IdKind::Phone,
        "idfa" | "gaid" | "device_id" => IdKind::DeviceId,
        "storefront_customer_id" => IdKind::Scoped(format!("storefront.{}", id.source)),
        other => IdKind::Scoped(other.to_owned()),
    };
    meridian_consent::SubjectId {
        kind,
        value: id.value.clone(),
        default_region: None,
    }
}

#[async_trait]
impl meridian_audience::sync::ConsentLookup for ConsentForDestinations {
    async fn consent(
        &self,
        workspace: &str,
        identifiers: &[meridian_audience::connectors::MemberIdentifier],
    ) -> Result<meridian_audience::sync::SubjectConsent, SourceError> {
        use meridian_audience::sync::{PurposeConsent, SubjectConsent};
        use meridian_consent::ledger::Decision;
        use meridian_policy::ConsentState;
        if identifiers.is_empty() {
            return Ok(SubjectConsent::default());
        }
        let query = meridian_consent::SubjectQuery {
            identifiers: identifiers.iter().map(consent_subject_id).collect(),
        };
        let failed = |e: meridian_consent::ConsentError| SourceError(format!("consent: {e}"));
        let states = match self
            .0
            .current(workspace, &query, &[], chrono::Utc::now())
            .await
        {
            Ok(states) => states,
            Err(meridian_consent::ConsentError::SubjectErased) => {
                return Ok(SubjectConsent::default());
            }
            Err(e) => return Err(failed(e)),
        };
        // The jurisdiction of each entry, and of the latest.
        let mut jurisdictions = std::collections::HashMap::new();
        let mut latest = String::new();
        let mut token = String::new();
        loop {
            let page = self
                .0
                .history(workspace, &query, 200, &token)
                .await
                .map_err(failed)?;
            for entry in &page.entries {
                jurisdictions.insert(
                    entry.stored.entry_id.clone(),
                    entry.body.jurisdiction.clone(),
                );
                latest.clone_from(&entry.body.jurisdiction);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        Ok(SubjectConsent {
            purposes: states
                .into_iter()
                .map(|s| PurposeConsent {
                    state: match s.decision {
                        Decision::Given => ConsentState::Given,
                        Decision::Refused | Decision::Withdrawn => ConsentState::Refused,
                        Decision::Expired => ConsentState::None,
                    },
                    jurisdiction: jurisdictions.get(&s.entry_id).cloned().unwrap_or_default(),
                    entry_id: s.entry_id,
                    purpose: s.purpose,
                })
                .collect(),
            jurisdiction: latest,
        })
    }
}

// ---- audience ← identity -----------------------------------------------------------------

/// The audience read model's view of a profile: which identifier types it holds and its
/// computed traits (`aipl_stage`, `orders`, and per currency the RFM scores, `rfm_score`
/// being their rounded mean). No identifier values.
pub(crate) struct IdentityProfiles(pub(crate) IdentityRoom);

#[async_trait]
impl meridian_audience::profiles::ProfileSource for IdentityProfiles {
    async fn profile(
        &self,
        workspace: &str,
        profile_id: &str,
    ) -> Result<Option<meridian_audience::profiles::ProfileView>, SourceError> {
        let Ok(id) = profile_id.parse::<ProfileId>() else {
            return Ok(None);
        };
        let view = match self.0.profile(workspace, id).await {
            Ok(view) => view,
            Err(IdentityError::ProfileNotFound) => return Ok(None),
            Err(e) => return Err(SourceError(format!("identity: {e}"))),
        };
        let mut identifier_types: Vec<String> = view
            .identifiers
            .iter()
            .map(|i| i.key.kind.name().to_owned())
            .collect();
        identifier_types.sort();
        identifier_types.dedup();
        let mut computed_traits = Vec::new();
        if let Some(c) = &view.computed {
            computed_traits.push((
                "aipl_stage".to_owned(),
                TraitValue::Text(c.stage.name().into()),
            ));
            computed_traits.push(("orders".to_owned(), TraitValue::Number(c.orders as f64)));
            // The best-scoring currency stands for the profile.
            if let Some(r) = c.rfm.iter().max_by_key(|r| {
                u16::from(r.recency_score)
                    + u16::from(r.frequency_score)
                    + u16::from(r.monetary_score)
            }) {
                let mean = f64::from(
                    u16::from(r.recency_score)
                        + u16::from(r.frequency_score)
                        + u16::from(r.monetary_score),
                ) / 3.0;
                computed_traits.push((
                    "rfm_recency".to_owned(),
                    TraitValue::Number(f64::from(r.recency_score)),
                ));
                computed_traits.push((
                    "rfm_frequency".to_owned(),
                    TraitValue::Number(f64::from(r.frequency_score)),
                ));
                computed_traits.push((
                    "rfm_monetary".to_owned(),
                    TraitValue::Number(f64::from(r.monetary_score)),
                ));
                computed_traits.push(("rfm_score".to_owned(), TraitValue::Number(mean.round())));
            }
        }
        Ok(Some(meridian_audience::profiles::ProfileView {
            profile: meridian_audience::store::ProfileRow {
                profile_id: view.profile.profile.to_string(),
                // The identity room keeps no jurisdiction per profile yet.
                home_region: String::new(),
                jurisdiction: String::new(),
                age_band: String::new(),
            },
            identifier_types,
            computed_traits,
        }))
    }

    async fn profile_of(
        &self,
        workspace: &str,
        blind_index: &[u8],
    ) -> Result<Option<String>, SourceError> {
        let Some(index) = BlindIndex::from_slice(blind_index) else {
            return Ok(None);
        };
        let found = self
            .0
            .subject_profile(
                workspace,
                &meridian_identity::room::SubjectRef::BlindIndexes(vec![index]),
            )
            .await
            .map_err(|e| SourceError(format!("identity: {e}")))?;
        Ok(found.map(|view| view.profile.profile.to_string()))
    }
}
