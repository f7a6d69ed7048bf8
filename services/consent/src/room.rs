//! The consent room's domain: subjects, recording consent, state now and as of any instant,
//! history, receipts and ledger verification. Takes and returns domain types (no tonic, no
//! sqlx).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use meridian_identity::identifier::{
    IdentifierType, blind_index as identity_blind_index, normalize,
};
use meridian_policy::PolicyEngine;
use meridian_store::Store;
use meridian_vault::{IdentifierKind, LedgerSignature, SigningPublicKey, Vault};
use serde::Serialize;

use crate::erasure::Erasure;
use crate::erasure::store::SagaStore;
use crate::error::ConsentError;
use crate::ledger::{
    self, Actor, ChainVerifier, Decision, EntryBody, EntryChunk, Hash, LawfulBasis, NewEntry,
    Notice, StoredEntry, VerifyReport,
};
use crate::signals::{self, Signals};
use crate::store::{
    AppendOutcome, BatchSigner, ChangeNotice, ConsentStore, SqlConsentStore, StateUpdate,
    SubjectRow,
};

/// What kind of identifier a subject is known by.
#[derive(Clone, PartialEq, Eq)]
pub enum IdKind {
    Email,
    Phone,
    DeviceId,
    /// A customer-scoped id issued by `source` (`user_id`, `anonymous_id`, `shopify`, `gclid`, ...).
    Scoped(String),
}

/// One identifier of a subject. `Debug` never prints the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectId {
    pub kind: IdKind,
    pub value: String,
    pub default_region: Option<String>,
}

impl std::fmt::Debug for SubjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectId(<redacted>)")
    }
}

/// A subject by any of their identifiers (profile ids count as `Scoped("meridian_profile")`
/// until the identity room exists).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectQuery {
    pub identifiers: Vec<SubjectId>,
}

/// A resolved consent subject: its internal id (the vault's subject) and its pseudonymous
/// ledger ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub subject_id: String,
    pub subject_ref: String,
}

/// A RecordConsent, validated.
#[derive(Debug, Clone)]
pub struct RecordRequest {
    pub subject: SubjectQuery,
    pub jurisdiction: String,
    pub signals: Signals,
    pub notice: Notice,
    pub collection_point: String,
    pub actor: Actor,
    /// The subject's zone; `None` = the jurisdiction's.
    pub time_zone: Option<Tz>,
    pub collected_at: Option<DateTime<Utc>>,
    pub idempotency_key: Option<String>,
}

/// Decisions ready to append for a resolved subject.
pub(crate) struct Decided {
    pub(crate) jurisdiction: String,
    pub(crate) tz: Tz,
    pub(crate) sources: Vec<signals::SourceDecisions>,
    pub(crate) notice: Notice,
    pub(crate) collection_point: String,
    pub(crate) actor: Actor,
    pub(crate) at: DateTime<Utc>,
    pub(crate) idempotency_key: Option<String>,
}

/// A ledger entry with its content decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub stored: StoredEntry,
    pub body: EntryBody,
}

impl Entry {
    fn decode(stored: StoredEntry) -> Result<Self, ConsentError> {
        let body = EntryBody::from_canonical(&stored.body).ok_or_else(|| {
            ConsentError::Corrupt(format!("entry {} has an unreadable body", stored.entry_id))
        })?;
        Ok(Entry { stored, body })
    }
}

/// Consent for one purpose at some instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurposeState {
    pub purpose: String,
    pub decision: Decision,
    pub lawful_basis: LawfulBasis,
    pub entry_id: String,
    pub sequence: u64,
    pub decided_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub time_zone: String,
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub entries: Vec<Entry>,
    pub next_page_token: String,
}

/// A signed receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Canonical JSON; the signature covers these exact bytes.
    pub json: String,
    /// Base64 Ed25519 signature.
    pub signature: String,
    /// Base64 Ed25519 public key.
    pub public_key: String,
}

/// The consent room: ledger, projection, receipts, DSRs. Cheap to clone.
#[derive(Clone)]
pub struct ConsentRoom {
    pub(crate) store: Arc<dyn ConsentStore>,
    pub(crate) sagas: Arc<dyn SagaStore>,
    pub(crate) vault: Arc<Vault>,
    pub(crate) policies: Arc<PolicyEngine>,
    pub(crate) erasure: Erasure,
}

impl std::fmt::Debug for ConsentRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentRoom").finish_non_exhaustive()
    }
}

/// Signs batch heads with the workspace's Ed25519 key from the vault.
pub struct VaultSigner<'a>(pub &'a Vault);

#[async_trait]
impl BatchSigner for VaultSigner<'_> {
    async fn prepare(&self, workspace: &str) -> Result<(), ConsentError> {
        self.0.signing_public_key(workspace).await?;
        Ok(())
    }
    async fn sign_hash(
        &self,
        workspace: &str,
        hash: &Hash,
    ) -> Result<LedgerSignature, ConsentError> {
        Ok(self.0.sign(workspace, hash).await?)
    }
}

const SUBJECT_REF_FIELD: &str = "consent.subject_ref";
const SUBJECT_REF_RECORD: &str = "consent-subject";
const MAX_PAGE: u32 = 500;
const SCAN_PAGE: u32 = 20_000;

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Base64 of a public key, as published.
pub fn public_key_b64(key: &SigningPublicKey) -> String {
    B64.encode(key.bytes)
}

/// Checks a receipt (or any message) against a base64 signature and public key; `key_version`
/// is the receipt's `key_version`.
pub fn verify_receipt(json: &str, signature_b64: &str, public_key_b64: &str) -> bool {
    let key_version = serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("key_version").and_then(|k| k.as_u64()))
        .and_then(|k| u32::try_from(k).ok());
    let (Some(key_version), Ok(sig), Ok(pk)) = (
        key_version,
        B64.decode(signature_b64),
        B64.decode(public_key_b64),
    ) else {
        return false;
    };
    let (Some(sig), Ok(bytes)) = (
        LedgerSignature::from_slice(key_version, &sig),
        <[u8; 32]>::try_from(pk.as_slice()),
    ) else {
        return false;
    };
    meridian_vault::verify(
        &SigningPublicKey { key_version, bytes },
        json.as_bytes(),
        &sig,
    )
    .is_ok()
}

impl ConsentRoom {
    /// The room on the process's store, vault and policies.
    pub fn new(store: Store, vault: Arc<Vault>, policies: Arc<PolicyEngine>) -> Self {
        Self::with_store(Arc::new(SqlConsentStore(store)), vault, policies)
    }

    /// The room on any store of consent and saga state.
    pub fn with_store<S: ConsentStore + SagaStore + 'static>(
        store: Arc<S>,
        vault: Arc<Vault>,
        policies: Arc<PolicyEngine>,
    ) -> Self {
        ConsentRoom {
            store: store.clone(),
            sagas: store,
            vault,
            policies,
            erasure: Erasure::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn ConsentStore> {
        &self.store
    }

    // ---- subjects (the seam the identity room will replace) ----------------------------

    async fn blind_indexes(
        &self,
        workspace: &str,
        query: &SubjectQuery,
    ) -> Result<Vec<Vec<u8>>, ConsentError> {
        if query.identifiers.is_empty() {
            return Err(ConsentError::invalid(
                "subject",
                "name the subject by at least one identifier or a profile id",
            ));
        }
        let indexer = self.vault.blind_indexer(workspace).await?;
        let mut out = Vec::with_capacity(query.identifiers.len());
        for (i, id) in query.identifiers.iter().enumerate() {
            let field = || format!("subject.identifiers[{i}]");
            // The identity room's normalization and blind index, so the same identifier names
            // the same subject in every room (the erasure saga finds profiles by these).
            let (kind, source) = match &id.kind {
                IdKind::Email => (Some(IdentifierType::Email), ""),
                IdKind::Phone => (Some(IdentifierType::Phone), ""),
                IdKind::DeviceId => (Some(IdentifierType::DeviceId), ""),
                IdKind::Scoped(scope) => match scope.as_str() {
                    "anonymous_id" => (Some(IdentifierType::AnonymousId), ""),
                    "user_id" => (Some(IdentifierType::UserId), ""),
                    "fbclid" => (Some(IdentifierType::Fbclid), ""),
                    "gclid" => (Some(IdentifierType::Gclid), ""),
                    "ttclid" => (Some(IdentifierType::Ttclid), ""),
                    other => match other.strip_prefix("storefront.") {
                        Some(store) => (Some(IdentifierType::StorefrontCustomerId), store),
                        None => (None, other),
                    },
                },
            };
            let bi = match kind {
                Some(kind) => {
                    let n = normalize(
                        kind,
                        &id.value,
                        source,
                        id.default_region.as_deref().unwrap_or(""),
                    )
                    .map_err(|e| ConsentError::invalid(field(), e.to_string()))?;
                    identity_blind_index(&indexer, &n).index
                }
                // Profile ids and other consent-room scopes: not identity-graph identifiers.
                None => indexer
                    .index(IdentifierKind::CustomerId { source }, &id.value, None)
                    .map_err(|e| match e {
                        meridian_vault::VaultError::InvalidIdentifier { kind, reason } => {
                            ConsentError::invalid(field(), format!("invalid {kind}: {reason}"))
                        }
                        other => other.into(),
                    })?,
            };
            out.push(bi.as_bytes().to_vec());
        }
        Ok(out)
    }

    pub(crate) async fn open_ref(
        &self,
        workspace: &str,
        row: &SubjectRow,
    ) -> Result<Subject, ConsentError> {
        let opened = self
            .vault
            .open(
                workspace,
                &row.subject_id,
                SUBJECT_REF_RECORD,
                SUBJECT_REF_FIELD,
                &row.sealed_ref,
            )
            .await?;
        let subject_ref = String::from_utf8(opened.to_vec())
            .map_err(|_| ConsentError::Corrupt("subject ref is not UTF-8".into()))?;
        Ok(Subject {
            subject_id: row.subject_id.clone(),
            subject_ref,
        })
    }

    /// The subject named by any of the identifiers; with `create`, a new subject when none is
    /// known, and every identifier linked. Identifiers of two different subjects resolve to
    /// the first one found (merging is the identity room's job).
    pub async fn resolve_subject(
        &self,
        workspace: &str,
        query: &SubjectQuery,
        create: bool,
    ) -> Result<Option<Subject>, ConsentError> {
        let indexes = self.blind_indexes(workspace, query).await?;
        let found = self.store.find_subjects(workspace, &indexes).await?;
        let row = match found.into_iter().next() {
            Some(row) => row,
            None if !create => return Ok(None),
            None => {
                let subject_id = uuid::Uuid::new_v4().to_string();
                let subject_ref = format!("sr_{}", uuid::Uuid::new_v4().simple());
                let sealed_ref = self
                    .vault
                    .seal(
                        workspace,
                        &subject_id,
                        SUBJECT_REF_RECORD,
                        SUBJECT_REF_FIELD,
                        subject_ref.as_bytes(),
                    )
                    .await?;
                let first = SubjectRow {
                    blind_index: indexes[0].clone(),
                    subject_id,
                    sealed_ref,
                };
                self.store
                    .link_subject(workspace, std::slice::from_ref(&first))
                    .await?;
                // a concurrent request may have linked the identifier first: take theirs
                self.store
                    .find_subjects(workspace, &indexes[..1])
                    .await?
                    .into_iter()
                    .next()
                    .unwrap_or(first)
            }
        };
        let subject = self.open_ref(workspace, &row).await?;
        if create {
            let links: Vec<SubjectRow> = indexes
                .into_iter()
                .filter(|bi| *bi != row.blind_index)
                .map(|blind_index| SubjectRow {
                    blind_index,
                    subject_id: row.subject_id.clone(),
                    sealed_ref: row.sealed_ref.clone(),
                })
                .collect();
            self.store.link_subject(workspace, &links).await?;
        }
        Ok(Some(subject))
    }

    pub(crate) fn time_zone_for(
        &self,
        jurisdiction: &str,
        tz: Option<Tz>,
    ) -> Result<(String, Tz), ConsentError> {
        let info = self.policies.jurisdiction(jurisdiction).ok_or_else(|| {
            ConsentError::invalid("jurisdiction", "not a jurisdiction of the policies")
        })?;
        let tz = match tz {
            Some(tz) => tz,
            None => info
                .time_zone
                .parse()
                .map_err(|_| ConsentError::Policy("jurisdiction time zone".into()))?,
        };
        Ok((info.code.clone(), tz))
    }

    /// When a decision recorded at `at` lapses: the regime's validity period, counted in
    /// the subject's time zone (end of the last local day). Only consents lapse.
    pub fn expiry(
        &self,
        jurisdiction: &str,
        decision: Decision,
        at: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        if decision != Decision::Given {
            return None;
        }
        let regime = self.policies.regime_for(jurisdiction)?;
        regime.consent.validity.value.due(at, tz)
    }

    // ---- recording ---------------------------------------------------------------------

    /// Appends one ledger entry per purpose decided by each source (TCF, GPP, GPC, explicit,
    /// in that order of application).
    pub async fn record(
        &self,
        workspace: &str,
        req: RecordRequest,
    ) -> Result<Vec<Entry>, ConsentError> {
        let (jurisdiction, tz) = self.time_zone_for(&req.jurisdiction, req.time_zone)?;
        let decided = signals::decide(self.policies.taxonomy(), &req.signals)?;
        let now = Utc::now();
        let at = req.collected_at.unwrap_or(now);
        if at > now + chrono::Duration::minutes(5) {
            return Err(ConsentError::invalid("collected_at", "is in the future"));
        }
        let subject = self
            .resolve_subject(workspace, &req.subject, true)
            .await?
            .ok_or_else(|| ConsentError::NotFound("subject".into()))?;
        self.append_decisions(
            workspace,
            &subject,
            Decided {
                jurisdiction,
                tz,
                sources: decided,
                notice: req.notice,
                collection_point: req.collection_point,
                actor: req.actor,
                at,
                idempotency_key: req.idempotency_key,
            },
        )
        .await
    }

    /// Appends the entries of `d` for a resolved subject, updates the projection and writes
    /// `ConsentChanged` to the outbox, in one transaction.
    pub(crate) async fn append_decisions(
        &self,
        workspace: &str,
        subject: &Subject,
        d: Decided,
    ) -> Result<Vec<Entry>, ConsentError> {
        let at_us = micros(d.at);
        let at = ledger::from_micros(at_us);
        let mut batch = Vec::new();
        let mut updates = Vec::new();
        let mut purposes = Vec::new();
        let mut restricted = false;
        for source in d.sources {
            for p in source.purposes {
                let body = EntryBody {
                    schema_version: ledger::SCHEMA_VERSION.into(),
                    controller: workspace.to_owned(),
                    notice: d.notice.clone(),
                    purposes: vec![p.clone()],
                    jurisdiction: d.jurisdiction.clone(),
                    source: source.source,
                    raw_signal: source.raw_signal.clone(),
                    collection_point: d.collection_point.clone(),
                    actor: d.actor,
                    policy_version: self.policies.policy_version().to_owned(),
                    time_zone: d.tz.name().to_owned(),
                };
                restricted |= p.decision != Decision::Given;
                if !purposes.contains(&p.purpose) {
                    purposes.push(p.purpose.clone());
                }
                updates.push(StateUpdate {
                    entry_index: batch.len(),
                    subject_ref: subject.subject_ref.clone(),
                    purpose: p.purpose.clone(),
                    decision: p.decision.as_str().into(),
                    lawful_basis: p.lawful_basis.as_str().into(),
                    decided_at: at_us,
                    expires_at: self
                        .expiry(&d.jurisdiction, p.decision, at, d.tz)
                        .map(micros),
                    time_zone: d.tz.name().to_owned(),
                });
                batch.push(NewEntry {
                    entry_id: uuid::Uuid::now_v7().to_string(),
                    subject_ref: subject.subject_ref.clone(),
                    recorded_at: at_us,
                    body: body.to_canonical(),
                });
            }
        }
        let change = ChangeNotice {
            subject_ref: subject.subject_ref.clone(),
            blind_indexes: self
                .store
                .subject_blind_indexes(workspace, &subject.subject_id)
                .await?,
            purposes,
            restricted,
        };
        let outcome = self
            .store
            .append(
                workspace,
                batch,
                updates,
                d.idempotency_key.as_deref(),
                &VaultSigner(&self.vault),
                Some(&change),
            )
            .await?;
        let stored = match outcome {
            AppendOutcome::Appended(entries) => entries,
            AppendOutcome::Replayed { first, last } => {
                let entries = self.store.entries_between(workspace, first, last).await?;
                if entries.iter().any(|e| e.subject_ref != subject.subject_ref) {
                    return Err(ConsentError::Conflict(
                        "idempotency_key was used for another subject".into(),
                    ));
                }
                entries
            }
        };
        tracing::info!(workspace, entries = stored.len(), "consent recorded");
        stored.into_iter().map(Entry::decode).collect()
    }

    // ---- state -------------------------------------------------------------------------

    /// Current consent per purpose, from the projection; a consent past its validity reads
    /// as expired.
    pub async fn current(
        &self,
        workspace: &str,
        query: &SubjectQuery,
        purposes: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<PurposeState>, ConsentError> {
        let Some(subject) = self.resolve_subject(workspace, query, false).await? else {
            return Ok(Vec::new());
        };
        self.states_of(workspace, &subject, purposes, now).await
    }

    /// [`ConsentRoom::current`] of many subjects at once (ingestion's consent gate): the
    /// identifiers of every query are looked up in one round trip, and only the subjects
    /// that exist cost more. One answer per query, in order; a query whose subject cannot be
    /// read (erased) gets its own error, the others still answer.
    pub async fn current_many(
        &self,
        workspace: &str,
        queries: &[SubjectQuery],
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Vec<PurposeState>, ConsentError>>, ConsentError> {
        let mut per_query = Vec::with_capacity(queries.len());
        let mut all: Vec<Vec<u8>> = Vec::new();
        for query in queries {
            let indexes = self.blind_indexes(workspace, query).await?;
            all.extend(indexes.iter().cloned());
            per_query.push(indexes);
        }
        all.sort_unstable();
        all.dedup();
        let found: std::collections::HashMap<Vec<u8>, SubjectRow> = self
            .store
            .find_subjects(workspace, &all)
            .await?
            .into_iter()
            .map(|row| (row.blind_index.clone(), row))
            .collect();
        let mut out = Vec::with_capacity(queries.len());
        for indexes in per_query {
            // As `resolve_subject`: the subject of the first identifier that has one.
            let Some(row) = indexes.iter().find_map(|bi| found.get(bi)) else {
                out.push(Ok(Vec::new()));
                continue;
            };
            let answer = match self.open_ref(workspace, row).await {
                Ok(subject) => self.states_of(workspace, &subject, &[], now).await,
                Err(e) => Err(e),
            };
            out.push(answer);
        }
        Ok(out)
    }

    async fn states_of(
        &self,
        workspace: &str,
        subject: &Subject,
        purposes: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<PurposeState>, ConsentError> {
        let rows = self
            .store
            .current_states(workspace, &subject.subject_ref)
            .await?;
        let mut out = Vec::new();
        for r in rows {
            if !purposes.is_empty() && !purposes.contains(&r.purpose) {
                continue;
            }
            let decision = Decision::parse(&r.decision)
                .ok_or_else(|| ConsentError::Corrupt("projection decision".into()))?;
            let lawful_basis = LawfulBasis::parse(&r.lawful_basis)
                .ok_or_else(|| ConsentError::Corrupt("projection lawful basis".into()))?;
            let expires_at = r.expires_at.map(ledger::from_micros);
            out.push(PurposeState {
                purpose: r.purpose,
                decision: lapse(decision, expires_at, now),
                lawful_basis,
                entry_id: r.entry_id,
                sequence: r.sequence,
                decided_at: ledger::from_micros(r.decided_at),
                expires_at,
                time_zone: r.time_zone,
            });
        }
        Ok(out)
    }

    /// Consent per purpose as it held at `as_of`, folded from the ledger itself.
    pub async fn as_of(
        &self,
        workspace: &str,
        query: &SubjectQuery,
        purposes: &[String],
        as_of: DateTime<Utc>,
    ) -> Result<Vec<PurposeState>, ConsentError> {
        let Some(subject) = self.resolve_subject(workspace, query, false).await? else {
            return Ok(Vec::new());
        };
        let mut latest: BTreeMap<String, PurposeState> = BTreeMap::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .subject_entries(
                    workspace,
                    &subject.subject_ref,
                    Some(micros(as_of)),
                    after,
                    SCAN_PAGE,
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = Some((last.recorded_at, last.sequence));
            let full = page.len() == SCAN_PAGE as usize;
            for stored in page {
                let e = Entry::decode(stored)?;
                let at = e.stored.recorded_at_utc();
                let tz: Tz = e.body.time_zone.parse().unwrap_or(Tz::UTC);
                for p in &e.body.purposes {
                    if !purposes.is_empty() && !purposes.contains(&p.purpose) {
                        continue;
                    }
                    let expires_at = self.expiry(&e.body.jurisdiction, p.decision, at, tz);
                    latest.insert(
                        p.purpose.clone(),
                        PurposeState {
                            purpose: p.purpose.clone(),
                            decision: p.decision,
                            lawful_basis: p.lawful_basis,
                            entry_id: e.stored.entry_id.clone(),
                            sequence: e.stored.sequence,
                            decided_at: at,
                            expires_at,
                            time_zone: e.body.time_zone.clone(),
                        },
                    );
                }
            }
            if !full {
                break;
            }
        }
        Ok(latest
            .into_values()
            .map(|mut s| {
                s.decision = lapse(s.decision, s.expires_at, as_of);
                s
            })
            .collect())
    }

    /// The subject's entries, oldest first, a page at a time.
    pub async fn history(
        &self,
        workspace: &str,
        query: &SubjectQuery,
        page_size: u32,
        page_token: &str,
    ) -> Result<HistoryPage, ConsentError> {
        let after = if page_token.is_empty() {
            None
        } else {
            let parsed = page_token
                .split_once(':')
                .and_then(|(t, s)| Some((t.parse::<i64>().ok()?, s.parse::<u64>().ok()?)));
            Some(parsed.ok_or_else(|| {
                ConsentError::invalid("page_token", "not a token this service issued")
            })?)
        };
        let size = match page_size {
            0 => 50,
            n => n.min(MAX_PAGE),
        };
        let Some(subject) = self.resolve_subject(workspace, query, false).await? else {
            return Ok(HistoryPage {
                entries: Vec::new(),
                next_page_token: String::new(),
            });
        };
        let page = self
            .store
            .subject_entries(workspace, &subject.subject_ref, None, after, size + 1)
            .await?;
        let more = page.len() > size as usize;
        let entries: Vec<Entry> = page
            .into_iter()
            .take(size as usize)
            .map(Entry::decode)
            .collect::<Result<_, _>>()?;
        let next_page_token = match (more, entries.last()) {
            (true, Some(e)) => format!("{}:{}", e.stored.recorded_at, e.stored.sequence),
            _ => String::new(),
        };
        Ok(HistoryPage {
            entries,
            next_page_token,
        })
    }

    /// Everything the consent room holds about a subject, decrypted where sealed: the
    /// current consent per purpose and every ledger entry (for access/portability bundles).
    pub async fn consent_bundle(
        &self,
        workspace: &str,
        subject_id: &str,
    ) -> Result<serde_json::Value, ConsentError> {
        let row = self
            .store
            .subject_by_id(workspace, subject_id)
            .await?
            .ok_or_else(|| ConsentError::NotFound("subject".into()))?;
        let subject = self.open_ref(workspace, &row).await?;
        let now = Utc::now();
        let mut current = Vec::new();
        for r in self
            .store
            .current_states(workspace, &subject.subject_ref)
            .await?
        {
            let decision = Decision::parse(&r.decision).unwrap_or(Decision::Refused);
            let expires_at = r.expires_at.map(ledger::from_micros);
            current.push(serde_json::json!({
                "purpose": r.purpose,
                "decision": lapse(decision, expires_at, now),
                "lawful_basis": r.lawful_basis,
                "decided_at": ledger::from_micros(r.decided_at),
                "expires_at": expires_at,
                "time_zone": r.time_zone,
                "entry_id": r.entry_id,
            }));
        }
        let mut history = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .subject_entries(workspace, &subject.subject_ref, None, after, SCAN_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some((last.recorded_at, last.sequence));
            let full = page.len() == SCAN_PAGE as usize;
            for stored in page {
                let e = Entry::decode(stored)?;
                history.push(serde_json::json!({
                    "entry_id": e.stored.entry_id,
                    "sequence": e.stored.sequence,
                    "recorded_at": e.stored.recorded_at_utc(),
                    "hash": hex::encode(&e.stored.hash),
                    "entry": e.body,
                }));
            }
            if !full {
                break;
            }
        }
        Ok(serde_json::json!({
            "subject_ref": subject.subject_ref,
            "current": current,
            "history": history,
        }))
    }

    // ---- receipts and verification -----------------------------------------------------

    /// A signed receipt of the subject's current consent: canonical JSON naming the subject
    /// only by its pseudonymous ref, each purpose's decision with the entry (id, sequence,
    /// hash) that proves it, and the ledger head; signed with the workspace's Ed25519 key.
    pub async fn receipt(
        &self,
        workspace: &str,
        query: &SubjectQuery,
    ) -> Result<Receipt, ConsentError> {
        let subject = self
            .resolve_subject(workspace, query, false)
            .await?
            .ok_or_else(|| ConsentError::NotFound("subject".into()))?;
        let now = Utc::now();
        let states = self.current(workspace, query, &[], now).await?;
        if states.is_empty() {
            return Err(ConsentError::NotFound("consent for the subject".into()));
        }
        #[derive(Serialize)]
        struct ReceiptConsent<'a> {
            purpose: &'a str,
            decision: Decision,
            lawful_basis: LawfulBasis,
            decided_at: String,
            expires_at: Option<String>,
            time_zone: &'a str,
            entry_id: &'a str,
            entry_sequence: u64,
            entry_hash: String,
            jurisdiction: String,
            source: Option<ledger::Source>,
            notice: Option<Notice>,
            collection_point: String,
        }
        #[derive(Serialize)]
        struct ReceiptDoc<'a> {
            receipt_version: &'static str,
            receipt_id: String,
            issued_at: String,
            controller: &'a str,
            subject_ref: &'a str,
            policy_version: &'a str,
            key_version: u32,
            public_key: String,
            ledger_head: Option<(u64, String)>,
            consents: Vec<ReceiptConsent<'a>>,
        }
        let public = self.vault.signing_public_key(workspace).await?;
        let mut consents = Vec::with_capacity(states.len());
        for s in &states {
            let entry = self
                .store
                .entries_between(workspace, s.sequence, s.sequence)
                .await?
                .into_iter()
                .next()
                .map(Entry::decode)
                .transpose()?;
            consents.push(ReceiptConsent {
                purpose: &s.purpose,
                decision: s.decision,
                lawful_basis: s.lawful_basis,
                decided_at: s
                    .decided_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                expires_at: s
                    .expires_at
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                time_zone: &s.time_zone,
                entry_id: &s.entry_id,
                entry_sequence: s.sequence,
                entry_hash: entry
                    .as_ref()
                    .map(|e| hex::encode(&e.stored.hash))
                    .unwrap_or_default(),
                jurisdiction: entry
                    .as_ref()
                    .map(|e| e.body.jurisdiction.clone())
                    .unwrap_or_default(),
                source: entry.as_ref().map(|e| e.body.source),
                notice: entry.as_ref().map(|e| e.body.notice.clone()),
                collection_point: entry
                    .as_ref()
                    .map(|e| e.body.collection_point.clone())
                    .unwrap_or_default(),
            });
        }
        let head = self
            .store
            .head(workspace)
            .await?
            .map(|(s, h)| (s, hex::encode(h)));
        let doc = ReceiptDoc {
            receipt_version: "meridian.consent-receipt/1",
            receipt_id: uuid::Uuid::now_v7().to_string(),
            issued_at: now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            controller: workspace,
            subject_ref: &subject.subject_ref,
            policy_version: self.policies.policy_version(),
            key_version: public.key_version,
            public_key: public_key_b64(&public),
            ledger_head: head,
            consents,
        };
        let json = serde_json::to_string(&doc).map_err(|e| ConsentError::Storage(Box::new(e)))?;
        let signature = self.vault.sign(workspace, json.as_bytes()).await?;
        Ok(Receipt {
            json,
            signature: B64.encode(signature.bytes),
            public_key: public_key_b64(&public),
        })
    }

    /// Checks the workspace's whole chain and every signature; names the first bad entry.
    pub async fn verify(&self, workspace: &str) -> Result<VerifyReport, ConsentError> {
        verify_with(self.store.clone(), &self.vault, workspace).await
    }
}

fn lapse(decision: Decision, expires_at: Option<DateTime<Utc>>, at: DateTime<Utc>) -> Decision {
    match (decision, expires_at) {
        (Decision::Given, Some(exp)) if exp <= at => Decision::Expired,
        (d, _) => d,
    }
}

/// Sequences per segment of a verification read.
const VERIFY_SEGMENT: u64 = 16_384;
/// Segments read at once: the one being checked and the next ones. PostgreSQL produces a
/// COPY on one core; a few at once keep the server's cores busy while this process hashes.
const VERIFY_SEGMENTS_AHEAD: usize = 3;
/// Chunks a segment may buffer ahead of the checker (about a segment of ~1 KiB entries).
const VERIFY_SEGMENT_CHUNKS: usize = 24;

/// Verifies one workspace's ledger on any store.
///
/// The ledger is read as consecutive sequence ranges (segments) that together cover every
/// sequence from 1 up, the last one open-ended, several streamed at once; a blocking thread
/// hashes and checks the chunks strictly in sequence order as they arrive. So the checks see
/// exactly what one `ORDER BY sequence` read would, reading overlaps hashing, and no entry
/// is allocated alone.
pub async fn verify_with(
    store: Arc<dyn ConsentStore>,
    vault: &Vault,
    workspace: &str,
) -> Result<VerifyReport, ConsentError> {
    verify_in_segments(store, vault, workspace, VERIFY_SEGMENT).await
}

/// [`verify_with`] reading `segment` sequences per segment (at least 1): the answer must
/// not depend on it, which tests check with segments of a few entries.
pub async fn verify_in_segments(
    store: Arc<dyn ConsentStore>,
    vault: &Vault,
    workspace: &str,
    segment: u64,
) -> Result<VerifyReport, ConsentError> {
    use tokio::sync::mpsc;
    let segment = segment.max(1);
    let public = vault.signing_public_key(workspace).await?;
    let mut verifier = ChainVerifier::new(workspace, public);
    // The head first: entries appended while the stream runs come after it, and after the
    // highest sequence read next, so only the open-ended last segment can meet them.
    verifier.expect_head(store.head(workspace).await?);
    let max = store.max_sequence(workspace).await?;
    let (segment_sink, mut segments) =
        mpsc::channel::<mpsc::Receiver<EntryChunk>>(VERIFY_SEGMENTS_AHEAD - 1);
    let reader = {
        let store = store.clone();
        let workspace = workspace.to_owned();
        tokio::spawn(async move {
            let mut readers = Vec::new();
            let mut first = 1u64;
            loop {
                let last = first.checked_add(segment - 1).filter(|last| *last < max);
                let (sink, chunks) = mpsc::channel(VERIFY_SEGMENT_CHUNKS);
                // waits while enough segments are ahead of the checker
                if segment_sink.send(chunks).await.is_err() {
                    break;
                }
                let store = store.clone();
                let workspace = workspace.clone();
                readers.push(tokio::spawn(async move {
                    store.stream_ledger(&workspace, first, last, sink).await
                }));
                match last {
                    Some(last) => first = last + 1,
                    None => break,
                }
            }
            drop(segment_sink);
            for r in readers {
                r.await.map_err(|e| ConsentError::Storage(Box::new(e)))??;
            }
            Ok::<_, ConsentError>(())
        })
    };
    let checker = tokio::task::spawn_blocking(move || {
        'segments: while let Some(mut chunks) = segments.blocking_recv() {
            while let Some(chunk) = chunks.blocking_recv() {
                if !verifier.push_chunk(&chunk) {
                    // dropping the receivers stops the readers
                    break 'segments;
                }
            }
        }
        verifier
    });
    let verifier = checker
        .await
        .map_err(|e| ConsentError::Storage(Box::new(e)))?;
    // A read that failed must not pass for a ledger that ended there (readers stopped by
    // the checker end without error).
    reader
        .await
        .map_err(|e| ConsentError::Storage(Box::new(e)))??;
    Ok(verifier.finish())
}

/// `meridian ledger verify [--workspace W]`: one report per workspace (every workspace
/// with a ledger when `workspace` is `None`). The command exits non-zero when any report
/// is not `valid`, printing `first_bad`.
pub async fn verify_ledger(
    store: &Store,
    vault: &Vault,
    workspace: Option<&str>,
) -> Result<Vec<VerifyReport>, ConsentError> {
    let store: Arc<dyn ConsentStore> = Arc::new(SqlConsentStore(store.clone()));
    let workspaces = match workspace {
        Some(w) => vec![w.to_owned()],
        None => store.ledger_workspaces().await?,
    };
    let mut out = Vec::with_capacity(workspaces.len());
    for w in workspaces {
        out.push(verify_with(store.clone(), vault, &w).await?);
    }
    Ok(out)
}
