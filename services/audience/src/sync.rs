//! Sending segments to destinations, with the policy asked per member × destination at
//! send time, and taking members back exactly.
//!
//! - [`MemberDirectory`] (identity, adapted in the binary): a member's identifiers in clear,
//!   only to normalize and hash them here; and which profile holds a blind index.
//! - [`ConsentLookup`] (consent): the member's current consent per purpose and the
//!   jurisdiction it was recorded under.
//! - [`AudienceRoom::sync_now`]: members of the segment → policy (purpose consent in the
//!   member's jurisdiction, transfer to the destination's region under its mechanism, age)
//!   → adds for new members, removals for members who left or may no longer be sent, both
//!   through the destination's connector; every outcome in the membership ledger.
//! - [`AudienceRoom::remove_no_longer_allowed`]: the consent consumer's removal;
//!   [`AudienceRoom::remove_everywhere`]: the erasure saga's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use meridian_bus::{EventHandler, HandlerError, OutboxEvent, RetryPolicy, Subscription, Tx};
use meridian_destinations::connector::Direction;
use meridian_destinations::transport::Transport;
use meridian_policy::{Action, ConsentState, PolicyEngine, Question};
use meridian_proto::bus::v1::ConsentChanged;
use meridian_vault::Vault;
use prost::Message;

use crate::connectors::{Connector, MemberIdentifier, Payload};
use crate::destination::{self, Credentials, DestinationInput, DestinationRow};
use crate::error::AudienceError;
use crate::ledger::{HeldMember, HeldStatus, LedgerEntry, SyncRow, SyncState};
use crate::profiles::SourceError;
use crate::room::AudienceRoom;
use crate::store::ProfileRow;

/// Vault field of the identifiers sent, sealed per destination × segment × profile.
const SENT_FIELD: &str = "destination_identifiers";
/// Exclusion reasons that are not policy rules.
pub const NO_JURISDICTION: &str = "jurisdiction_unknown";
pub const NO_IDENTIFIER: &str = "no_matching_identifier";
pub const PROFILE_GONE: &str = "profile_gone";

/// A member's identifiers, in clear (never stored, never logged: `Debug` prints kinds).
#[derive(Debug, Clone, Default)]
pub struct MemberContact {
    pub identifiers: Vec<MemberIdentifier>,
}

/// Where members' identifiers come from (the identity room).
#[async_trait]
pub trait MemberDirectory: Send + Sync {
    /// The profile's identifiers now; `None` when the profile no longer exists.
    async fn contact(
        &self,
        workspace: &str,
        profile_id: &str,
    ) -> Result<Option<MemberContact>, SourceError>;
    /// The profile holding the identifier with this blind index, if any.
    async fn profile_of(
        &self,
        workspace: &str,
        blind_index: &[u8],
    ) -> Result<Option<String>, SourceError>;
}

/// One purpose's current consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurposeConsent {
    /// fideslang data-use key.
    pub purpose: String,
    pub state: ConsentState,
    /// The ledger entry that decided it.
    pub entry_id: String,
    /// The jurisdiction that entry was recorded under.
    pub jurisdiction: String,
}

/// A subject's current consent, as the consent room knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectConsent {
    pub purposes: Vec<PurposeConsent>,
    /// The jurisdiction of the subject's latest ledger entry ("" when none).
    pub jurisdiction: String,
}

impl SubjectConsent {
    /// The most specific recorded purpose that is `purpose` or an ancestor of it (a refusal
    /// of `marketing` covers `marketing.advertising`).
    pub fn for_purpose(&self, purpose: &str) -> Option<&PurposeConsent> {
        self.purposes
            .iter()
            .filter(|p| {
                purpose == p.purpose
                    || (purpose.starts_with(p.purpose.as_str())
                        && purpose.as_bytes().get(p.purpose.len()) == Some(&b'.'))
            })
            .max_by_key(|p| p.purpose.len())
    }
}

/// Current consent of the subject known by these identifiers (the consent room).
#[async_trait]
pub trait ConsentLookup: Send + Sync {
    async fn consent(
        &self,
        workspace: &str,
        identifiers: &[MemberIdentifier],
    ) -> Result<SubjectConsent, SourceError>;
}

/// What the destination half of the room needs besides its store.
#[derive(Clone)]
pub struct DestinationDeps {
    pub policies: Arc<PolicyEngine>,
    pub vault: Arc<Vault>,
    pub credentials: Credentials,
    pub directory: Arc<dyn MemberDirectory>,
    pub consent: Arc<dyn ConsentLookup>,
    pub transport: Arc<Transport>,
}

impl std::fmt::Debug for DestinationDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationDeps")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// The policy's answer for one member × destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    Allowed {
        consent_entry_id: String,
        policy_version: String,
    },
    /// The rule id (or local reason) that excluded the member.
    Excluded(String),
}

/// The age the policy is asked about, from the read model's age band (`13_15`, `16_17`,
/// `adult`, …): the band's upper bound, so a band straddling a threshold counts as under it.
fn age_of(band: &str) -> Option<u8> {
    match band {
        "" | "unknown" => None,
        "adult" | "18_plus" | "18+" => Some(18),
        "child" | "under_13" => Some(12),
        other => other
            .rsplit(['_', '-'])
            .next()
            .and_then(|n| n.parse::<u8>().ok()),
    }
}

fn record_id(member: &HeldMember) -> String {
    format!(
        "{}/{}/{}",
        member.destination_id, member.segment_id, member.profile_id
    )
}

/// Meta's upload session and the webhook/file batch names: from the sync id, so a retried
/// send of the same sync is recognised.
fn session_of(sync_id: &str) -> u64 {
    uuid::Uuid::parse_str(sync_id)
        .map(|u| u.as_u64_pair().1 & (i64::MAX as u64))
        .unwrap_or(1)
        .max(1)
}

/// Now, to the microsecond the stores keep (what a sync returns is what it reads back).
fn now_micros() -> chrono::DateTime<Utc> {
    chrono::SubsecRound::trunc_subsecs(Utc::now(), 6)
}

/// Counts and error of one send.
#[derive(Debug, Default)]
struct Sent {
    accepted: u64,
    failed: u64,
    error: String,
}

/// A removal to make: the held row and what it was sent as.
struct Removal {
    held: HeldMember,
    payload: Payload,
}

impl AudienceRoom {
    fn deps(&self) -> Result<&DestinationDeps, AudienceError> {
        self.destination_deps()
            .ok_or(AudienceError::NotConfigured("destinations"))
    }

    /// Validates and saves a destination.
    pub async fn create_destination(
        &self,
        workspace: &str,
        input: DestinationInput,
    ) -> Result<DestinationRow, AudienceError> {
        let deps = self.deps()?;
        let row = destination::validate(input, &deps.policies, &deps.credentials, Utc::now())?;
        self.store().insert_destination(workspace, &row).await?;
        Ok(row)
    }

    /// A page of destinations after `page_token` (an id), and the next token.
    pub async fn list_destinations(
        &self,
        workspace: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<DestinationRow>, String), AudienceError> {
        if page_size > 1000 {
            return Err(AudienceError::invalid("page_size", "must be at most 1000"));
        }
        if page_token.len() > 64 {
            return Err(AudienceError::invalid(
                "page_token",
                "not a token this service issued",
            ));
        }
        let size = if page_size == 0 { 100 } else { page_size };
        let rows = self
            .store()
            .destinations(workspace, page_token, size)
            .await?;
        let next = if rows.len() == size as usize {
            rows.last()
                .map(|d| d.destination_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((rows, next))
    }

    pub async fn sync_status(
        &self,
        workspace: &str,
        sync_id: &str,
    ) -> Result<SyncRow, AudienceError> {
        if sync_id.is_empty() {
            return Err(AudienceError::invalid("sync_id", "is required"));
        }
        self.store()
            .sync(workspace, sync_id)
            .await?
            .ok_or(AudienceError::NotFound("sync"))
    }

    /// Asks the policy whether `profile` may be sent to `destination` for `purpose`.
    pub async fn judge(
        &self,
        workspace: &str,
        destination: &DestinationRow,
        purpose: &str,
        profile: &ProfileRow,
        identifiers: &[MemberIdentifier],
    ) -> Result<Judgement, AudienceError> {
        let deps = self.deps()?;
        let consent = deps.consent.consent(workspace, identifiers).await?;
        let decided = consent.for_purpose(purpose);
        let jurisdiction = [
            decided.map(|d| d.jurisdiction.as_str()).unwrap_or_default(),
            consent.jurisdiction.as_str(),
            profile.jurisdiction.as_str(),
        ]
        .into_iter()
        .find(|j| !j.is_empty());
        let Some(jurisdiction) = jurisdiction else {
            return Ok(Judgement::Excluded(NO_JURISDICTION.to_owned()));
        };
        let mechanisms: Vec<&str> = if destination.transfer_mechanism.is_empty() {
            Vec::new()
        } else {
            vec![destination.transfer_mechanism.as_str()]
        };
        let mut question = Question::new(Action::Export, jurisdiction, purpose)
            .with_consent(decided.map_or(ConsentState::None, |d| d.state))
            .with_destination_region(&destination.region)
            .with_transfer_mechanisms(&mechanisms);
        if let Some(key) = destination.platform.policy_key() {
            question = question.with_destination(key);
        }
        if let Some(age) = age_of(&profile.age_band) {
            question = question.with_age(age);
        }
        let decision = deps.policies.decide(&question);
        Ok(if decision.allowed {
            Judgement::Allowed {
                consent_entry_id: decided.map(|d| d.entry_id.clone()).unwrap_or_default(),
                policy_version: decision.policy_version.clone(),
            }
        } else {
            Judgement::Excluded(decision.rule_id.clone())
        })
    }

    async fn open_payload(
        &self,
        workspace: &str,
        held: &HeldMember,
    ) -> Result<Option<Payload>, AudienceError> {
        let deps = self.deps()?;
        let Some(sealed) = &held.sealed_identifiers else {
            return Ok(None);
        };
        match deps
            .vault
            .open(
                workspace,
                &held.vault_subject,
                &record_id(held),
                SENT_FIELD,
                sealed,
            )
            .await
        {
            Ok(plain) => Ok(Payload::from_bytes(&plain)),
            Err(meridian_vault::VaultError::SubjectForgotten) => Ok(None),
            Err(e) => Err(AudienceError::Vault(e.to_string())),
        }
    }

    /// Syncs a segment to a destination now: adds the members the policy allows that the
    /// destination does not hold, removes those it holds that left or may no longer be sent.
    /// A repeated sync sends nothing new.
    pub async fn sync_now(
        &self,
        workspace: &str,
        segment_id: &str,
        destination_id: &str,
    ) -> Result<SyncRow, AudienceError> {
        if segment_id.is_empty() {
            return Err(AudienceError::invalid("segment_id", "is required"));
        }
        if destination_id.is_empty() {
            return Err(AudienceError::invalid("destination_id", "is required"));
        }
        let deps = self.deps()?.clone();
        let store = self.store();
        let segment = store
            .segment(workspace, segment_id)
            .await?
            .ok_or(AudienceError::NotFound("segment"))?;
        let destination = store
            .destination(workspace, destination_id)
            .await?
            .ok_or(AudienceError::NotFound("destination"))?;
        let mut sync = SyncRow {
            sync_id: uuid::Uuid::now_v7().to_string(),
            segment_id: segment_id.to_owned(),
            destination_id: destination_id.to_owned(),
            state: SyncState::Running,
            members_sent: 0,
            members_removed: 0,
            members_failed: 0,
            excluded: BTreeMap::new(),
            policy_version: deps.policies.policy_version().to_owned(),
            started_at: now_micros(),
            finished_at: None,
            last_error: String::new(),
        };
        // A sync holds its pair for at most this long; one older was abandoned.
        let stale_before = sync.started_at - chrono::Duration::minutes(30);
        if !store.start_sync(workspace, &sync, stale_before).await? {
            return Err(AudienceError::Busy(
                "a sync of this segment to this destination is running",
            ));
        }
        let connector =
            match Connector::build(&destination, &deps.credentials, deps.transport.clone()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, destination_id, "destination connector not usable");
                    return self.finish(workspace, sync, "connector_unusable").await;
                }
            };

        // Whatever fails from here, the sync's row says so and frees its pair.
        let error = match self
            .send_segment(
                workspace,
                &deps,
                &segment,
                &destination,
                &connector,
                &mut sync,
            )
            .await
        {
            Ok(error) => error,
            Err(e) => {
                self.finish(workspace, sync, "internal").await?;
                return Err(e);
            }
        };
        let platform = destination.platform.as_str();
        crate::metrics::count(platform, "sent", sync.members_sent);
        crate::metrics::count(platform, "removed", sync.members_removed);
        crate::metrics::count(platform, "failed", sync.members_failed);
        crate::metrics::count(platform, "excluded", sync.excluded.values().sum());
        self.finish(workspace, sync, &error).await
    }

    /// The body of a sync: judges every member, sends adds and removals, records each;
    /// returns the sync-level error code ("" when none).
    async fn send_segment(
        &self,
        workspace: &str,
        deps: &DestinationDeps,
        segment: &crate::store::SegmentRow,
        destination: &DestinationRow,
        connector: &Connector,
        sync: &mut SyncRow,
    ) -> Result<String, AudienceError> {
        let store = self.store();
        let segment_id = segment.segment_id.as_str();
        let destination_id = destination.destination_id.as_str();
        let mut held: HashMap<String, HeldMember> = store
            .held(workspace, destination_id, segment_id)
            .await?
            .into_iter()
            .map(|h| (h.profile_id.clone(), h))
            .collect();
        let mut adds: Vec<(HeldMember, Payload)> = Vec::new();
        let mut removals: Vec<Removal> = Vec::new();
        let mut allowed = 0u64;
        let mut seen = HashSet::new();
        let mut after = String::new();
        loop {
            let page = store.members(workspace, segment_id, &after, 500).await?;
            let Some(last) = page.last() else { break };
            after = last.profile.profile_id.clone();
            let full = page.len() == 500;
            for member in page {
                let profile_id = member.profile.profile_id.clone();
                seen.insert(profile_id.clone());
                let previous = held.remove(&profile_id);
                let verdict = match deps.directory.contact(workspace, &profile_id).await? {
                    None => Err(PROFILE_GONE.to_owned()),
                    Some(contact) => match self
                        .judge(
                            workspace,
                            destination,
                            &segment.purpose,
                            &member.profile,
                            &contact.identifiers,
                        )
                        .await?
                    {
                        Judgement::Excluded(rule) => Err(rule),
                        Judgement::Allowed {
                            consent_entry_id,
                            policy_version,
                        } => {
                            let region = member.profile.home_region.clone();
                            let default_region = (region.len() == 2).then_some(region.as_str());
                            match connector.payload(&contact.identifiers, default_region) {
                                None => Err(NO_IDENTIFIER.to_owned()),
                                Some(payload) => Ok((payload, consent_entry_id, policy_version)),
                            }
                        }
                    },
                };
                let held_now = previous.filter(|p| p.status == HeldStatus::Sent);
                match verdict {
                    Err(reason) => {
                        *sync.excluded.entry(reason).or_default() += 1;
                        if let Some(h) = held_now {
                            self.queue_removal(workspace, h, &mut removals).await?;
                        }
                    }
                    Ok((payload, consent_entry_id, policy_version)) => {
                        allowed += 1;
                        if let Some(h) = held_now {
                            match self.open_payload(workspace, &h).await? {
                                Some(sent) if sent == payload => continue,
                                Some(sent) => removals.push(Removal {
                                    held: h,
                                    payload: sent,
                                }),
                                None => {}
                            }
                        }
                        let now = Utc::now();
                        adds.push((
                            HeldMember {
                                destination_id: destination_id.to_owned(),
                                segment_id: segment_id.to_owned(),
                                profile_id: profile_id.clone(),
                                status: HeldStatus::Sent,
                                purpose: segment.purpose.clone(),
                                vault_subject: profile_id,
                                sealed_identifiers: None,
                                consent_entry_id,
                                policy_version,
                                last_sync_id: sync.sync_id.clone(),
                                last_error: String::new(),
                                sent_at: Some(now),
                                removed_at: None,
                                updated_at: now,
                            },
                            payload,
                        ));
                    }
                }
            }
            if !full {
                break;
            }
        }
        // Members the destination holds that left the segment.
        for (profile_id, h) in held {
            if h.status == HeldStatus::Sent && !seen.contains(&profile_id) {
                self.queue_removal(workspace, h, &mut removals).await?;
            }
        }

        let session = session_of(&sync.sync_id);
        let removed = self
            .send_removals(
                workspace,
                connector,
                removals,
                "sync",
                &sync.sync_id,
                session ^ 1,
            )
            .await?;
        sync.members_removed = removed.accepted;
        sync.members_failed += removed.failed;
        let mut error = removed.error;
        if allowed < u64::from(destination.min_audience_size) {
            // Too few to send without singling people out; removals above still went.
            error = "audience_below_minimum".to_owned();
            sync.members_failed += adds.len() as u64;
        } else {
            let added = self
                .send_adds(workspace, connector, adds, &sync.sync_id, session)
                .await?;
            sync.members_sent = added.accepted;
            sync.members_failed += added.failed;
            if error.is_empty() {
                error = added.error;
            }
        }
        Ok(error)
    }

    async fn finish(
        &self,
        workspace: &str,
        mut sync: SyncRow,
        error: &str,
    ) -> Result<SyncRow, AudienceError> {
        let nothing_done = sync.members_sent == 0 && sync.members_removed == 0;
        let fatal = matches!(
            error,
            "audience_below_minimum" | "connector_unusable" | "internal"
        );
        let failed = sync.members_failed > 0;
        sync.state = if fatal || (failed && nothing_done) || (!failed && !error.is_empty()) {
            SyncState::Failed
        } else if failed {
            SyncState::PartiallyFailed
        } else {
            SyncState::Succeeded
        };
        sync.last_error = error.to_owned();
        sync.finished_at = Some(now_micros());
        self.store().put_sync(workspace, &sync).await?;
        tracing::info!(
            sync_id = %sync.sync_id,
            state = sync.state.as_str(),
            sent = sync.members_sent,
            removed = sync.members_removed,
            failed = sync.members_failed,
            excluded = sync.excluded.values().sum::<u64>(),
            "destination sync finished"
        );
        Ok(sync)
    }

    async fn queue_removal(
        &self,
        workspace: &str,
        held: HeldMember,
        removals: &mut Vec<Removal>,
    ) -> Result<(), AudienceError> {
        match self.open_payload(workspace, &held).await? {
            Some(payload) => removals.push(Removal { held, payload }),
            None => {
                // The sealed identifiers are gone (the subject was erased and its key
                // destroyed): nothing exact can be sent. The erasure step removes before the
                // keys go, so this is only reached for rows written before that.
                tracing::warn!(
                    destination_id = %held.destination_id,
                    "held member without readable identifiers; not removable"
                );
            }
        }
        Ok(())
    }

    /// Seals, sends and records adds.
    async fn send_adds(
        &self,
        workspace: &str,
        connector: &Connector,
        adds: Vec<(HeldMember, Payload)>,
        sync_id: &str,
        session: u64,
    ) -> Result<Sent, AudienceError> {
        let deps = self.deps()?;
        let mut sealed = Vec::with_capacity(adds.len());
        let mut result = Sent::default();
        for (mut held, payload) in adds {
            // Sealed before sending: what cannot be recorded is never sent.
            match deps
                .vault
                .seal(
                    workspace,
                    &held.vault_subject,
                    &record_id(&held),
                    SENT_FIELD,
                    &payload.to_bytes(),
                )
                .await
            {
                Ok(bytes) => {
                    held.sealed_identifiers = Some(bytes);
                    sealed.push((held, payload));
                }
                Err(meridian_vault::VaultError::SubjectForgotten) => continue,
                Err(e) => return Err(AudienceError::Vault(e.to_string())),
            }
        }
        if sealed.is_empty() {
            return Ok(result);
        }
        let wire: Vec<(String, Payload)> = sealed
            .iter()
            .map(|(h, p)| (h.profile_id.clone(), p.clone()))
            .collect();
        let outcome = match connector.send(Direction::Add, &wire, session).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "destination refused the sync");
                result.failed = sealed.len() as u64;
                result.error = "destination_refused".to_owned();
                return Ok(result);
            }
        };
        for (mut held, _) in sealed {
            let failure = outcome.failed.get(&held.profile_id).cloned();
            let now = Utc::now();
            let entry = LedgerEntry {
                entry_id: uuid::Uuid::now_v7().to_string(),
                destination_id: held.destination_id.clone(),
                segment_id: held.segment_id.clone(),
                profile_id: held.profile_id.clone(),
                action: if failure.is_some() {
                    HeldStatus::Failed
                } else {
                    HeldStatus::Sent
                },
                cause: "sync".to_owned(),
                sync_id: sync_id.to_owned(),
                consent_entry_id: held.consent_entry_id.clone(),
                policy_version: held.policy_version.clone(),
                detail: failure.clone().map(|f| error_code(&f)).unwrap_or_default(),
                recorded_at: now,
            };
            if let Some(reason) = failure {
                result.failed += 1;
                held.status = HeldStatus::Failed;
                held.sent_at = None;
                held.sealed_identifiers = None;
                held.last_error = error_code(&reason);
            } else {
                result.accepted += 1;
            }
            held.updated_at = now;
            self.store().record_member(workspace, &held, &entry).await?;
        }
        Ok(result)
    }

    /// Sends removals of exactly what was sent, and records them.
    async fn send_removals(
        &self,
        workspace: &str,
        connector: &Connector,
        removals: Vec<Removal>,
        cause: &str,
        sync_id: &str,
        session: u64,
    ) -> Result<Sent, AudienceError> {
        let mut result = Sent::default();
        if removals.is_empty() {
            return Ok(result);
        }
        let wire: Vec<(String, Payload)> = removals
            .iter()
            .map(|r| (r.held.profile_id.clone(), r.payload.clone()))
            .collect();
        let outcome = match connector.send(Direction::Remove, &wire, session).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "destination refused the removals");
                result.failed = removals.len() as u64;
                result.error = "destination_refused".to_owned();
                return Ok(result);
            }
        };
        for Removal { mut held, .. } in removals {
            let failure = outcome.failed.get(&held.profile_id).cloned();
            let now = Utc::now();
            let entry = LedgerEntry {
                entry_id: uuid::Uuid::now_v7().to_string(),
                destination_id: held.destination_id.clone(),
                segment_id: held.segment_id.clone(),
                profile_id: held.profile_id.clone(),
                action: if failure.is_some() {
                    HeldStatus::Failed
                } else {
                    HeldStatus::Removed
                },
                cause: cause.to_owned(),
                sync_id: sync_id.to_owned(),
                consent_entry_id: held.consent_entry_id.clone(),
                policy_version: held.policy_version.clone(),
                detail: failure
                    .clone()
                    .map(|f| format!("remove: {}", error_code(&f)))
                    .unwrap_or_default(),
                recorded_at: now,
            };
            match failure {
                // Still held: the next sync, consent change or saga retry removes it.
                Some(reason) => {
                    result.failed += 1;
                    held.last_error = error_code(&reason);
                }
                None => {
                    result.accepted += 1;
                    held.status = HeldStatus::Removed;
                    held.removed_at = Some(now);
                    held.last_error = String::new();
                }
            }
            held.last_sync_id = sync_id.to_owned();
            held.updated_at = now;
            self.store().record_member(workspace, &held, &entry).await?;
        }
        Ok(result)
    }

    /// Removes `held` (all sent, any destinations) from their destinations, one destination
    /// at a time. Returns (removed, failed).
    async fn remove_held(
        &self,
        workspace: &str,
        held: Vec<HeldMember>,
        cause: &str,
    ) -> Result<(u64, u64), AudienceError> {
        let deps = self.deps()?.clone();
        let mut by_destination: BTreeMap<String, Vec<HeldMember>> = BTreeMap::new();
        for h in held {
            by_destination
                .entry(h.destination_id.clone())
                .or_default()
                .push(h);
        }
        let (mut removed, mut failed) = (0, 0);
        for (destination_id, rows) in by_destination {
            let Some(destination) = self.store().destination(workspace, &destination_id).await?
            else {
                continue;
            };
            let connector =
                Connector::build(&destination, &deps.credentials, deps.transport.clone())?;
            let mut removals = Vec::new();
            for h in rows {
                self.queue_removal(workspace, h, &mut removals).await?;
            }
            let session = session_of(&uuid::Uuid::now_v7().to_string());
            let sent = self
                .send_removals(workspace, &connector, removals, cause, "", session)
                .await?;
            crate::metrics::count(destination.platform.as_str(), "removed", sent.accepted);
            crate::metrics::count(destination.platform.as_str(), "failed", sent.failed);
            removed += sent.accepted;
            failed += sent.failed;
        }
        Ok((removed, failed))
    }

    /// After a consent change: removes the profile from every destination that holds it
    /// and may no longer be sent it (the policy asked again with the current consent).
    /// Returns how many removals were made.
    pub async fn remove_no_longer_allowed(
        &self,
        workspace: &str,
        profile_id: &str,
    ) -> Result<u64, AudienceError> {
        let deps = self.deps()?.clone();
        let held: Vec<HeldMember> = self
            .store()
            .held_by_profile(workspace, profile_id)
            .await?
            .into_iter()
            .filter(|h| h.status == HeldStatus::Sent)
            .collect();
        if held.is_empty() {
            return Ok(0);
        }
        let contact = deps
            .directory
            .contact(workspace, profile_id)
            .await?
            .unwrap_or_default();
        let profile = self
            .store()
            .profile(workspace, profile_id)
            .await?
            .unwrap_or(ProfileRow {
                profile_id: profile_id.to_owned(),
                ..ProfileRow::default()
            });
        let mut to_remove = Vec::new();
        let mut destinations: HashMap<String, Option<DestinationRow>> = HashMap::new();
        for h in held {
            if !destinations.contains_key(&h.destination_id) {
                let d = self
                    .store()
                    .destination(workspace, &h.destination_id)
                    .await?;
                destinations.insert(h.destination_id.clone(), d);
            }
            let Some(Some(destination)) = destinations.get(&h.destination_id) else {
                continue;
            };
            let verdict = self
                .judge(
                    workspace,
                    destination,
                    &h.purpose,
                    &profile,
                    &contact.identifiers,
                )
                .await?;
            if let Judgement::Excluded(rule) = verdict {
                tracing::info!(
                    destination_id = %h.destination_id,
                    rule = %rule,
                    "consent changed: removing a member from a destination"
                );
                to_remove.push(h);
            }
        }
        let (removed, failed) = self
            .remove_held(workspace, to_remove, "consent_withdrawn")
            .await?;
        if failed > 0 {
            return Err(AudienceError::Connector(format!(
                "{failed} removals failed; retried on redelivery"
            )));
        }
        Ok(removed)
    }

    /// The erasure saga's step: removes the profile from every destination that holds it.
    /// Returns (removed, vault subjects its sent identifiers were sealed under). Fails while
    /// any removal fails, so the saga retries.
    pub async fn remove_everywhere(
        &self,
        workspace: &str,
        profile_id: &str,
    ) -> Result<(u64, Vec<String>), AudienceError> {
        let rows = self.store().held_by_profile(workspace, profile_id).await?;
        let mut subjects: Vec<String> = rows.iter().map(|h| h.vault_subject.clone()).collect();
        subjects.sort();
        subjects.dedup();
        let held: Vec<HeldMember> = rows
            .into_iter()
            .filter(|h| h.status == HeldStatus::Sent)
            .collect();
        let (removed, failed) = self.remove_held(workspace, held, "erasure").await?;
        if failed > 0 {
            return Err(AudienceError::Connector(format!(
                "{failed} destination removals failed"
            )));
        }
        Ok((removed, subjects))
    }

    /// A profile's destination history (access requests): what each destination holds or
    /// held, and every ledger line.
    pub async fn destinations_of(
        &self,
        workspace: &str,
        profile_id: &str,
    ) -> Result<(Vec<HeldMember>, Vec<LedgerEntry>), AudienceError> {
        let held = self.store().held_by_profile(workspace, profile_id).await?;
        let ledger = self.store().ledger_of(workspace, profile_id).await?;
        Ok((held, ledger))
    }
}

/// The platform's code from a failure reason (`meta:190: message` → `meta:190`): stored
/// and logged without the platform's free text.
fn error_code(reason: &str) -> String {
    reason
        .split(": ")
        .next()
        .unwrap_or_default()
        .chars()
        .take(80)
        .collect()
}

/// Consumes `ConsentChanged` (family `consent`): when a purpose moved away from given, the
/// subject's profiles are removed from every destination that may no longer hold them.
pub struct ConsentWithdrawals {
    pub room: AudienceRoom,
}

/// The subscription [`ConsentWithdrawals`] runs under (consumer `audience-consent`, family
/// `consent`). A withdrawal must reach the platforms within seconds, so a failed attempt
/// (a store hiccup under load) is retried after a quarter of a second, not the bus
/// default's one second doubling to minutes. A platform that refuses a removal fails the
/// event too: twelve attempts span about three minutes of outage before it becomes a dead
/// letter (replayable with `meridian outbox replay`).
pub fn withdrawal_subscription() -> Subscription {
    let mut subscription = Subscription::new(
        "audience-consent".parse().expect("a valid consumer name"),
        "consent".parse().expect("a valid event family"),
    );
    subscription.retry = RetryPolicy {
        max_attempts: 12,
        initial_backoff: std::time::Duration::from_millis(250),
        max_backoff: std::time::Duration::from_secs(30),
    };
    subscription
}

impl ConsentWithdrawals {
    /// Applies one change; returns the removals made.
    pub async fn apply(
        &self,
        change: &ConsentChanged,
        fallback_workspace: &str,
    ) -> Result<u64, AudienceError> {
        if !change.restricted {
            return Ok(0);
        }
        let workspace = if change.workspace_id.is_empty() {
            fallback_workspace
        } else {
            change.workspace_id.as_str()
        };
        let deps = self.room.deps()?.clone();
        let mut profiles = Vec::new();
        for index in &change.blind_indexes {
            if let Some(profile) = deps.directory.profile_of(workspace, index).await?
                && !profiles.contains(&profile)
            {
                profiles.push(profile);
            }
        }
        let mut removed = 0;
        for profile in profiles {
            removed += self
                .room
                .remove_no_longer_allowed(workspace, &profile)
                .await?;
        }
        Ok(removed)
    }
}

#[async_trait]
impl EventHandler for ConsentWithdrawals {
    async fn handle(&self, _tx: &mut Tx<'_>, event: &OutboxEvent) -> Result<(), HandlerError> {
        let change = ConsentChanged::decode(event.payload.as_slice())
            .map_err(|_| HandlerError::Failed("ConsentChanged payload does not decode".into()))?;
        self.apply(&change, event.workspace_id.as_str())
            .await
            .map(|_| ())
            .map_err(|e| HandlerError::Failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_bands_give_their_upper_bound() {
        assert_eq!(age_of("13_15"), Some(15));
        assert_eq!(age_of("16-17"), Some(17));
        assert_eq!(age_of("adult"), Some(18));
        assert_eq!(age_of(""), None);
    }

    #[test]
    fn the_most_specific_purpose_decides() {
        let consent = SubjectConsent {
            purposes: vec![
                PurposeConsent {
                    purpose: "marketing".into(),
                    state: ConsentState::Refused,
                    entry_id: "e1".into(),
                    jurisdiction: "EU-DE".into(),
                },
                PurposeConsent {
                    purpose: "marketing.advertising".into(),
                    state: ConsentState::Given,
                    entry_id: "e2".into(),
                    jurisdiction: "EU-DE".into(),
                },
            ],
            jurisdiction: "EU-DE".into(),
        };
        let p = consent
            .for_purpose("marketing.advertising.third_party.targeted")
            .unwrap();
        assert_eq!(p.entry_id, "e2");
        assert_eq!(consent.for_purpose("marketingx"), None);
        assert_eq!(error_code("meta:190: token expired"), "meta:190");
    }
}
