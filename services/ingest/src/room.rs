//! [`IngestRoom`]: validates a batch, runs the consent gate, seals, and stores each
//! accepted event with its `EventAccepted` outbox event in one transaction (a large batch
//! in a few, side by side, when cores are free); serves the stored events to other rooms
//! (per identifier, opened) and purges them for erasure.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Months, Utc};
use meridian_bus::{EventFamily, OutboxEvent};
use meridian_domain::WorkspaceId;
use meridian_identity::IdentifierType;
use meridian_identity::identifier::{self, CompiledRules, Intake};
use meridian_policy::{ConsentState, FieldKind, Period, PolicyEngine};
use meridian_proto::bus::v1 as bus;
use meridian_store::Store;
use meridian_vault::{BlindIndex, SubjectKey, Vault, VaultError};
use prost::Message;
use serde_json::Value;
use uuid::Uuid;

use crate::error::IngestError;
use crate::event::{EventKind, RawEvent, ValidEvent, Violation, corrected_timestamp, validate};
use crate::gate::{
    Answers, CollectionContext, ConsentCache, ConsentLookup, ConsentSnapshot, ResolvedJurisdiction,
    SubjectIdentifier, identifier_category, judged_in, resolve_jurisdiction, strip_fields,
};
use crate::metrics::metrics;
use crate::store::{EventRow, EventStore, PageCursor};

/// The bus family of accepted events.
pub const EVENT_FAMILY: &str = "ingest-event";
/// Rule named when a placeholder identifier (`null`, `undefined`, an all-zero device id) is
/// removed: identity's blocked values.
pub const BLOCKED_IDENTIFIER_RULE: &str = "identity.blocked_value";

/// Tuning and the collection purposes.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The purposes events are collected for (fideslang keys). An event is kept when at
    /// least one of them has a basis; a field when one of those covers its category.
    pub purposes: Vec<String>,
    pub consent_cache_ttl: Duration,
    pub consent_cache_capacity: usize,
    /// At most this many parts of one large batch are sealed and stored concurrently, each
    /// in its own transaction (PostgreSQL only; see [`MIN_EVENTS_PER_PART`]). Default: the
    /// cores this process may use.
    pub max_parts_per_batch: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            purposes: vec![
                "analytics.reporting".into(),
                "personalize.content.profiled".into(),
                "marketing.advertising.first_party.targeted".into(),
                "marketing.advertising.third_party.targeted".into(),
            ],
            consent_cache_ttl: Duration::from_secs(30),
            consent_cache_capacity: 200_000,
            max_parts_per_batch: std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get),
        }
    }
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Rejected,
    Dropped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected => "rejected",
            Outcome::Dropped => "dropped",
        }
    }
}

/// The result of one event, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventResult {
    pub index: usize,
    pub message_id: String,
    pub outcome: Outcome,
    pub reason: String,
    /// Path relative to the event (`timestamp`); the API prefixes the event's path.
    pub field: String,
    pub stripped_fields: Vec<String>,
    pub rule: String,
}

/// Counts per outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub accepted: u32,
    pub duplicate: u32,
    pub rejected: u32,
    pub dropped: u32,
    pub stripped_fields: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestReport {
    pub results: Vec<EventResult>,
    pub summary: Summary,
}

/// A stored event, opened for its subject (access requests, profile timelines).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenedEvent {
    pub event_id: Uuid,
    pub message_id: String,
    pub kind: Option<EventKind>,
    pub event_name: String,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub jurisdiction: String,
    pub purposes: Vec<String>,
    pub anchor: BlindIndex,
    /// The sealed body, opened: `properties`, `traits`, `context`, `identifiers`, ...
    /// `None` when the subject's key was forgotten (erased).
    pub body: Option<Value>,
}

/// A page of events.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    pub events: Vec<OpenedEvent>,
    /// Empty on the last page.
    pub next_page_token: String,
}

/// What retention removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub partitions_dropped: Vec<String>,
    pub rows_deleted: u64,
}

/// The ingestion room. Cheap to clone.
#[derive(Clone)]
pub struct IngestRoom {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IngestRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestRoom")
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: EventStore,
    vault: Arc<Vault>,
    policies: Arc<PolicyEngine>,
    rules: CompiledRules,
    consent: Arc<ConsentCache>,
    config: IngestConfig,
    family: EventFamily,
    partitions: Mutex<HashSet<String>>,
    /// Batches between validation and acknowledgement, for [`parts_of`].
    batches_in_flight: AtomicUsize,
}

/// A batch counted in [`Inner::batches_in_flight`] until dropped (cancelled calls too).
struct InFlight<'a> {
    counter: &'a AtomicUsize,
    /// The other batches in flight when this one entered.
    others: usize,
}

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        let others = counter.fetch_add(1, Ordering::Relaxed);
        InFlight { counter, others }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One event on its way through the pipeline.
struct Work {
    index: usize,
    event: ValidEvent,
    ids: Vec<(SubjectIdentifier, String)>,
    stripped: Vec<(String, String)>,
    jurisdiction: ResolvedJurisdiction,
}

/// The fewest events a part of a batch is given: below this, a second transaction (its
/// commit, its outbox pack, its vault round trips) costs more than the cores it frees.
pub const MIN_EVENTS_PER_PART: usize = 128;

/// How many parts `events` validated events are stored in, with `others` batches in
/// flight: one when `max_parts` batches are; otherwise one per core the others leave,
/// and at least two, while each part keeps [`MIN_EVENTS_PER_PART`] events.
///
/// At least two because a batch spends about half its time waiting on PostgreSQL, so a
/// core taken by another batch is still half free: beside one other batch on 2 cores, two
/// parts cut the ack time at half the maximum rate (`bench ingest`).
fn parts_of(events: usize, max_parts: usize, others: usize) -> usize {
    let Some(free) = max_parts.checked_sub(others).filter(|f| *f > 0) else {
        return 1;
    };
    (events / MIN_EVENTS_PER_PART).clamp(1, free.max(2).min(max_parts))
}

/// How many of the latest distinct judging contexts of a call an event is compared with.
const JUDGED_CONTEXTS_SEARCHED: usize = 8;

/// A judging context met in a call, and the policy answers given in it.
struct Judged {
    jurisdictions: Vec<String>,
    gpc: bool,
    age: Option<u8>,
    consent: Vec<(String, ConsentState)>,
    answers: Answers,
}

/// One event ready to store.
struct Prepared {
    index: usize,
    row: EventRow,
    outbox: OutboxEvent,
    stripped: Vec<(String, String)>,
}

impl IngestRoom {
    pub fn new(
        store: &Store,
        vault: Arc<Vault>,
        policies: Arc<PolicyEngine>,
        consent: Arc<dyn ConsentLookup>,
        config: IngestConfig,
    ) -> Result<Self, IngestError> {
        for p in &config.purposes {
            if !policies.taxonomy().is_purpose(p) {
                return Err(IngestError::invalid(
                    "purposes",
                    format!("{p} is not a purpose of the policies' taxonomy"),
                ));
            }
        }
        let cache = Arc::new(ConsentCache::new(
            consent,
            config.consent_cache_ttl,
            config.consent_cache_capacity,
        ));
        Ok(IngestRoom {
            inner: Arc::new(Inner {
                store: EventStore::from_store(store),
                vault,
                policies,
                rules: CompiledRules::default(),
                consent: cache,
                config,
                family: EVENT_FAMILY
                    .parse()
                    .map_err(|_| IngestError::Corrupt("event family".into()))?,
                partitions: Mutex::new(HashSet::new()),
                batches_in_flight: AtomicUsize::new(0),
            }),
        })
    }

    /// The consent cache, for the `ConsentChanged` consumer ([`crate::ConsentInvalidation`]).
    pub fn consent_cache(&self) -> Arc<ConsentCache> {
        self.inner.consent.clone()
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    pub fn policies(&self) -> &PolicyEngine {
        &self.inner.policies
    }

    /// Accepts a batch of decoded events (a decoding failure travels in `decode_error`).
    /// Every event gets a result; the call fails only when events could not be stored
    /// (database, vault), and then nothing was acknowledged: a large batch's parts that
    /// did commit are reported as duplicates when the client retries.
    pub async fn ingest(
        &self,
        workspace: &WorkspaceId,
        events: Vec<RawEvent>,
        batch_sent_at: Option<DateTime<Utc>>,
    ) -> Result<IngestReport, IngestError> {
        let inner = &*self.inner;
        let ws = workspace.as_str();
        let received_at = Utc::now();
        let mut results: Vec<Option<EventResult>> = vec![None; events.len()];
        let taxonomy = inner.policies.taxonomy();

        // 1. validate; duplicates inside the batch
        let mut valid: Vec<(usize, ValidEvent)> = Vec::with_capacity(events.len());
        let mut seen: HashSet<String> = HashSet::new();
        for (index, raw) in events.into_iter().enumerate() {
            let message_id = raw.message_id.trim().to_owned();
            match validate(raw, |p| taxonomy.is_purpose(p)) {
                Ok(ev) => {
                    if !seen.insert(ev.message_id.clone()) {
                        results[index] = Some(result(index, &ev.message_id, Outcome::Duplicate));
                        continue;
                    }
                    valid.push((index, ev));
                }
                Err(v) => {
                    results[index] = Some(EventResult {
                        reason: v.reason,
                        field: v.field,
                        ..result(index, &message_id, Outcome::Rejected)
                    });
                }
            }
        }

        // 2.–6., on PostgreSQL in parts stored concurrently: a large batch is acknowledged
        // sooner when cores are free, and costs the same when they are not.
        let outcomes = self
            .protect_and_store_in_parts(workspace, valid, batch_sent_at, received_at)
            .await?;
        for (index, outcome) in outcomes {
            results[index] = Some(outcome);
        }

        let results: Vec<EventResult> = results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| EventResult {
                    reason: "not processed".into(),
                    ..result(i, "", Outcome::Rejected)
                })
            })
            .collect();
        let mut summary = Summary::default();
        for r in &results {
            match r.outcome {
                Outcome::Accepted => summary.accepted += 1,
                Outcome::Duplicate => summary.duplicate += 1,
                Outcome::Rejected => summary.rejected += 1,
                Outcome::Dropped => {
                    summary.dropped += 1;
                    metrics().dropped(&r.rule);
                }
            }
            summary.stripped_fields += u32::try_from(r.stripped_fields.len()).unwrap_or(u32::MAX);
        }
        metrics().outcomes(&summary);
        tracing::debug!(
            workspace = ws,
            accepted = summary.accepted,
            duplicate = summary.duplicate,
            rejected = summary.rejected,
            dropped = summary.dropped,
            stripped_fields = summary.stripped_fields,
            "ingested batch"
        );
        Ok(IngestReport { results, summary })
    }

    /// Steps 2 to 6 of [`IngestRoom::ingest`] for `valid`, split into parts stored by
    /// concurrent tasks when the store takes concurrent writers, the batch is large and
    /// fewer batches are in flight than `max_parts_per_batch` (under full load every core
    /// is busy already, and more transactions only cost more): into as many parts as
    /// cores not taken by other batches, and at least two. Each part is its own
    /// transaction; the call succeeds only when every part did, so a failure acknowledges
    /// nothing and a retry finds the committed parts' ids taken.
    async fn protect_and_store_in_parts(
        &self,
        workspace: &WorkspaceId,
        mut valid: Vec<(usize, ValidEvent)>,
        batch_sent_at: Option<DateTime<Utc>>,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<(usize, EventResult)>, IngestError> {
        let in_flight = InFlight::enter(&self.inner.batches_in_flight);
        let parts = if self.inner.store.takes_concurrent_writers() {
            parts_of(
                valid.len(),
                self.inner.config.max_parts_per_batch,
                in_flight.others,
            )
        } else {
            1
        };
        if parts <= 1 {
            return self
                .protect_and_store(workspace, valid, batch_sent_at, received_at)
                .await;
        }
        let part_len = valid.len().div_ceil(parts);
        let mut tasks = Vec::with_capacity(parts);
        while !valid.is_empty() {
            let rest = valid.split_off(part_len.min(valid.len()));
            let part = std::mem::replace(&mut valid, rest);
            let (room, workspace) = (self.clone(), workspace.clone());
            tasks.push(tokio::spawn(async move {
                room.protect_and_store(&workspace, part, batch_sent_at, received_at)
                    .await
            }));
        }
        let mut outcomes = Vec::new();
        let mut failed = None;
        // Every task is awaited, even after a failure: none is left running unobserved.
        for task in tasks {
            match task.await {
                Ok(Ok(part)) => outcomes.extend(part),
                Ok(Err(err)) => failed = failed.or(Some(err)),
                Err(join) => failed = failed.or(Some(IngestError::PartLost(join.to_string()))),
            }
        }
        match failed {
            Some(err) => Err(err),
            None => Ok(outcomes),
        }
    }

    /// Identifiers, consent, policy, sealing and storage of validated events (steps 2 to 6
    /// of [`IngestRoom::ingest`]): the outcome of each, by its index in the request.
    async fn protect_and_store(
        &self,
        workspace: &WorkspaceId,
        valid: Vec<(usize, ValidEvent)>,
        batch_sent_at: Option<DateTime<Utc>>,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<(usize, EventResult)>, IngestError> {
        let inner = &*self.inner;
        let ws = workspace.as_str();
        let mut outcomes: Vec<(usize, EventResult)> = Vec::with_capacity(valid.len());
        // 2. identifiers: normalize, drop placeholders, blind-index (identity's functions)
        let indexer = if valid.is_empty() {
            None
        } else {
            Some(inner.vault.blind_indexer(ws).await?)
        };
        let mut work: Vec<Work> = Vec::with_capacity(valid.len());
        for (index, event) in valid {
            let Some(indexer) = indexer.as_ref() else {
                break;
            };
            let mut ids = Vec::with_capacity(event.identifiers.len());
            let mut stripped = Vec::new();
            let mut bad = None;
            let mut seen_ids = HashSet::new();
            for id in &event.identifiers {
                match identifier::intake(&inner.rules, indexer, &id.raw) {
                    Ok(Intake::Key(key, normalized)) => {
                        if !seen_ids.insert((key.kind, key.index)) {
                            continue;
                        }
                        let value = match key.kind {
                            IdentifierType::StorefrontCustomerId => zeroize::Zeroizing::new(
                                normalized
                                    .value
                                    .split('\u{0}')
                                    .nth(1)
                                    .unwrap_or("")
                                    .to_owned(),
                            ),
                            _ => normalized.value.clone(),
                        };
                        ids.push((
                            SubjectIdentifier {
                                kind: key.kind,
                                source: normalized.source.clone(),
                                value,
                                blind_index: key.index,
                            },
                            id.field.clone(),
                        ));
                    }
                    Err(_) if id.soft => {}
                    Ok(Intake::Blocked(_)) => {
                        stripped.push((id.field.clone(), BLOCKED_IDENTIFIER_RULE.to_owned()))
                    }
                    Err(meridian_identity::IdentityError::InvalidIdentifier { kind, reason }) => {
                        let field = if id.field.starts_with("identifiers[") {
                            format!("{}.value", id.field)
                        } else {
                            id.field.clone()
                        };
                        bad = Some(Violation::new(field, format!("invalid {kind}: {reason}")));
                        break;
                    }
                    Err(_) => {
                        bad = Some(Violation::new(id.field.clone(), "cannot be normalized"));
                        break;
                    }
                }
            }
            if let Some(v) = bad {
                outcomes.push((
                    index,
                    EventResult {
                        reason: v.reason,
                        field: v.field,
                        ..result(index, &event.message_id, Outcome::Rejected)
                    },
                ));
                continue;
            }
            if ids.is_empty() {
                outcomes.push((
                    index,
                    EventResult {
                        reason:
                            "every identifier is a placeholder value (`null`, `undefined`, ...)"
                                .into(),
                        field: event
                            .identifiers
                            .first()
                            .map(|i| i.field.clone())
                            .unwrap_or_default(),
                        ..result(index, &event.message_id, Outcome::Rejected)
                    },
                ));
                continue;
            }
            let jurisdiction =
                resolve_jurisdiction(&inner.policies, &event.jurisdiction, &event.context);
            work.push(Work {
                index,
                event,
                ids,
                stripped,
                jurisdiction,
            });
        }

        // 3. consent: recorded state per subject (cached), merged with the event's choices
        let subjects: Vec<Vec<SubjectIdentifier>> = work
            .iter()
            .map(|w| w.ids.iter().map(|(s, _)| s.clone()).collect())
            .collect();
        let (snapshots, cache_stats) = if subjects.is_empty() {
            (Vec::new(), Default::default())
        } else {
            inner.consent.current(ws, &subjects).await?
        };
        metrics().consent_cache(cache_stats.hits, cache_stats.misses);

        // 4. policy: drop or strip
        let mut kept: Vec<(Work, Vec<String>)> = Vec::with_capacity(work.len());
        let mut contexts: Vec<Judged> = Vec::new();
        for (mut w, snapshot) in work.into_iter().zip(snapshots) {
            let consent = merged_consent(&inner.config.purposes, &w.event, &snapshot);
            let jurisdictions = judged_in(&inner.policies, &w.jurisdiction);
            // The latest contexts only: a batch of many distinct contexts stays linear.
            let known = contexts
                .iter()
                .enumerate()
                .rev()
                .take(JUDGED_CONTEXTS_SEARCHED)
                .find(|(_, j)| {
                    j.gpc == w.event.gpc
                        && j.age == w.event.age
                        && j.jurisdictions == jurisdictions
                        && j.consent == consent
                })
                .map(|(k, _)| k);
            let k = match known {
                Some(k) => k,
                None => {
                    contexts.push(Judged {
                        jurisdictions,
                        gpc: w.event.gpc,
                        age: w.event.age,
                        consent,
                        answers: Answers::default(),
                    });
                    contexts.len() - 1
                }
            };
            let judged = &contexts[k];
            let consent = &judged.consent;
            let ctx = CollectionContext {
                policies: &inner.policies,
                jurisdictions: &judged.jurisdictions,
                gpc: judged.gpc,
                age: judged.age,
                consent,
                answers: Some(&judged.answers),
            };
            let base = inner
                .policies
                .classify_field(FieldKind::Event, w.event.kind.name());
            let purposes = match ctx.allowed_purposes(base) {
                Ok(p) => p,
                Err(denied) => {
                    outcomes.push((
                        w.index,
                        EventResult {
                            reason: "no lawful basis to collect this event".into(),
                            rule: denied.rule,
                            ..result(w.index, &w.event.message_id, Outcome::Dropped)
                        },
                    ));
                    continue;
                }
            };
            let mut ids = Vec::with_capacity(w.ids.len());
            for (id, field) in std::mem::take(&mut w.ids) {
                match ctx.any_allows(&purposes, identifier_category(&inner.policies, id.kind)) {
                    Ok(()) => ids.push((id, field)),
                    Err(d) => w.stripped.push((field, d.rule)),
                }
            }
            if ids.is_empty() {
                let rule = w
                    .stripped
                    .last()
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default();
                outcomes.push((
                    w.index,
                    EventResult {
                        reason: "no lawful basis to collect any identifier of this event".into(),
                        rule,
                        ..result(w.index, &w.event.message_id, Outcome::Dropped)
                    },
                ));
                continue;
            }
            w.ids = ids;
            let mut s = strip_fields(
                &ctx,
                &purposes,
                FieldKind::Event,
                "properties",
                &mut w.event.properties,
            );
            s.extend(strip_fields(
                &ctx,
                &purposes,
                FieldKind::Trait,
                "traits",
                &mut w.event.traits,
            ));
            s.extend(strip_fields(
                &ctx,
                &purposes,
                FieldKind::Context,
                "context",
                &mut w.event.context,
            ));
            w.stripped.extend(s);
            let names: Vec<String> = purposes.iter().map(|i| consent[*i].0.clone()).collect();
            kept.push((w, names));
        }
        drop(contexts);

        // 5. protect: anchor, subject keys, seal; rows and outbox events
        let mut prepared = Vec::with_capacity(kept.len());
        if !kept.is_empty() {
            let anchors: Vec<SubjectIdentifier> = kept
                .iter()
                .map(|(w, _)| anchor(&inner.rules, &w.ids).clone())
                .collect();
            let anchor_indexes: Vec<BlindIndex> = anchors.iter().map(|a| a.blind_index).collect();
            // Batched: a few round trips per request at most, none when every anchor was
            // seen within the vault's cache lifetime.
            let keys = inner
                .vault
                .identifier_subject_keys(ws, &anchor_indexes)
                .await?;
            for (((w, purposes), anchor), (subject, key)) in kept.into_iter().zip(anchors).zip(keys)
            {
                prepared.push(prepare(
                    inner,
                    workspace,
                    w,
                    purposes,
                    &anchor,
                    &subject,
                    &key,
                    batch_sent_at,
                    received_at,
                )?);
            }
        }

        // 6. store: events + outbox in one transaction, then acknowledge
        if !prepared.is_empty() {
            self.ensure_partition(received_at).await?;
            // Moved, not cloned: the rows and outbox events go to the store as they are.
            let mut rows: Vec<EventRow> = Vec::with_capacity(prepared.len());
            let mut outbox: Vec<OutboxEvent> = Vec::with_capacity(prepared.len());
            let mut meta: Vec<(usize, Vec<(String, String)>)> = Vec::with_capacity(prepared.len());
            for p in prepared {
                rows.push(p.row);
                outbox.push(p.outbox);
                meta.push((p.index, p.stripped));
            }
            let written = inner.store.insert(ws, &rows, &outbox).await?;
            for ((row, (index, stripped)), w) in rows.iter().zip(meta).zip(written) {
                let outcome = if w {
                    Outcome::Accepted
                } else {
                    Outcome::Duplicate
                };
                for (_, rule) in &stripped {
                    metrics().stripped(rule);
                }
                outcomes.push((
                    index,
                    EventResult {
                        rule: stripped.first().map(|(_, r)| r.clone()).unwrap_or_default(),
                        stripped_fields: stripped.into_iter().map(|(f, _)| f).collect(),
                        ..result(index, &row.message_id, outcome)
                    },
                ));
            }
        }

        Ok(outcomes)
    }

    async fn ensure_partition(&self, at: DateTime<Utc>) -> Result<(), IngestError> {
        let (name, _, _) = crate::store::partition_for(at);
        let known = self
            .inner
            .partitions
            .lock()
            .map(|p| p.contains(&name))
            .unwrap_or(false);
        if known {
            return Ok(());
        }
        // This month's and next month's, so the turn of the month never waits.
        let next = at.checked_add_months(Months::new(1)).unwrap_or(at);
        self.inner.store.ensure_partitions(&[at, next]).await?;
        if let Ok(mut p) = self.inner.partitions.lock() {
            p.insert(name);
        }
        Ok(())
    }

    /// Creates the partitions for this month and the next (call at start-up and daily).
    pub async fn prepare_partitions(&self, now: DateTime<Utc>) -> Result<(), IngestError> {
        self.ensure_partition(now).await
    }

    /// Events anchored at any of `indexes` (a profile's identifiers), oldest first, opened.
    /// `page_token` is empty for the first page.
    pub async fn events_of(
        &self,
        workspace: &str,
        indexes: &[BlindIndex],
        page_token: &str,
        page_size: u32,
    ) -> Result<EventPage, IngestError> {
        let cursor = parse_page_token(page_token)?;
        let limit = page_size.clamp(1, 1000);
        let rows = self
            .inner
            .store
            .events_of(workspace, indexes, cursor, limit)
            .await?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() == limit as usize => {
                format!("{}:{}", last.received_at.timestamp_micros(), last.event_id)
            }
            _ => String::new(),
        };
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let body = match self
                .inner
                .vault
                .open(
                    workspace,
                    &row.sealed_subject,
                    &row.event_id.to_string(),
                    "body",
                    &row.body,
                )
                .await
            {
                Ok(plain) => Some(
                    serde_json::from_slice(&plain)
                        .map_err(|_| IngestError::Corrupt("event body".into()))?,
                ),
                Err(VaultError::SubjectForgotten) | Err(VaultError::NoSubjectKey) => None,
                Err(e) => return Err(e.into()),
            };
            events.push(OpenedEvent {
                event_id: row.event_id,
                message_id: row.message_id,
                kind: EventKind::from_code(i32::from(row.kind)),
                event_name: row.event_name,
                occurred_at: row.occurred_at,
                received_at: row.received_at,
                jurisdiction: row.jurisdiction,
                purposes: row
                    .purposes
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect(),
                anchor: row.anchor_index,
                body,
            });
        }
        Ok(EventPage {
            events,
            next_page_token,
        })
    }

    /// Deletes every event anchored at any of `indexes` (the erasure saga). Idempotent;
    /// returns how many were deleted.
    pub async fn purge(&self, workspace: &str, indexes: &[BlindIndex]) -> Result<u64, IngestError> {
        let count = self
            .inner
            .store
            .purge(workspace, indexes, &self.inner.family)
            .await?;
        tracing::info!(workspace, count, "purged events");
        Ok(count)
    }

    /// Applies the retention policy (`user.behavior` per jurisdiction): drops whole
    /// partitions older than the longest retention of any jurisdiction, then deletes the
    /// older events of jurisdictions with a shorter one. Unknown jurisdictions keep the
    /// shortest retention of any regime.
    pub async fn apply_retention(
        &self,
        now: DateTime<Utc>,
    ) -> Result<RetentionReport, IngestError> {
        let policies = &self.inner.policies;
        let category = policies.classify_field(FieldKind::Event, "track");
        let mut per_jurisdiction: HashMap<String, DateTime<Utc>> = HashMap::new();
        for j in policies.jurisdictions() {
            let period = policies
                .retention(&j.code, category)
                .map_err(|e| IngestError::Corrupt(format!("retention: {e}")))?;
            per_jurisdiction.insert(j.code.clone(), before(now, period.value));
        }
        let Some(oldest_kept) = per_jurisdiction.values().min().copied() else {
            return Ok(RetentionReport::default());
        };
        let newest_cutoff = per_jurisdiction
            .values()
            .max()
            .copied()
            .unwrap_or(oldest_kept);
        let partitions_dropped = self.inner.store.drop_partitions_before(oldest_kept).await?;
        let mut rows_deleted = 0;
        for j in self.inner.store.jurisdictions().await? {
            let cutoff = per_jurisdiction.get(&j).copied().unwrap_or(newest_cutoff);
            rows_deleted += self.inner.store.delete_before(&j, cutoff).await?;
        }
        Ok(RetentionReport {
            partitions_dropped,
            rows_deleted,
        })
    }
}

fn before(now: DateTime<Utc>, period: Period) -> DateTime<Utc> {
    match period {
        Period::Days(n) => now - chrono::Duration::days(i64::from(n)),
        Period::BusinessDays(n) => now - chrono::Duration::days(i64::from(n) * 7 / 5),
        Period::Months(n) => now.checked_sub_months(Months::new(n)).unwrap_or(now),
        Period::Years(n) => now
            .checked_sub_months(Months::new(n.saturating_mul(12)))
            .unwrap_or(now),
    }
}

fn parse_page_token(token: &str) -> Result<Option<PageCursor>, IngestError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || IngestError::invalid("page_token", "not a token this API returned");
    let (micros, id) = token.split_once(':').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    Ok(Some(PageCursor {
        received_at: DateTime::from_timestamp_micros(micros).ok_or_else(bad)?,
        event_id: id.parse().map_err(|_| bad())?,
    }))
}

fn result(index: usize, message_id: &str, outcome: Outcome) -> EventResult {
    EventResult {
        index,
        message_id: message_id.to_owned(),
        outcome,
        reason: String::new(),
        field: String::new(),
        stripped_fields: Vec::new(),
        rule: String::new(),
    }
}

/// Consent per collection purpose: the event's own choice when it carries one for the
/// purpose (or an ancestor), else the recorded state. GPC is passed to the policy as is.
fn merged_consent(
    purposes: &[String],
    event: &ValidEvent,
    recorded: &ConsentSnapshot,
) -> Vec<(String, ConsentState)> {
    let carried = ConsentSnapshot {
        purposes: event.choices.clone(),
    };
    purposes
        .iter()
        .map(|p| {
            let state = match carried.state_for(p) {
                ConsentState::None => recorded.state_for(p),
                s => s,
            };
            (p.clone(), state)
        })
        .collect()
}

/// The highest-priority identifier (identity's default priority).
fn anchor<'a>(
    rules: &CompiledRules,
    ids: &'a [(SubjectIdentifier, String)],
) -> &'a SubjectIdentifier {
    // `ids` is never empty here (events without identifiers were rejected or dropped).
    let mut best = &ids[0].0;
    for (id, _) in ids {
        if rules.rank(id.kind) < rules.rank(best.kind) {
            best = id;
        }
    }
    best
}

#[allow(clippy::too_many_arguments)]
fn prepare(
    inner: &Inner,
    workspace: &WorkspaceId,
    w: Work,
    purposes: Vec<String>,
    anchor: &SubjectIdentifier,
    subject: &str,
    key: &SubjectKey,
    batch_sent_at: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
) -> Result<Prepared, IngestError> {
    let ev = w.event;
    let event_id = Uuid::now_v7();
    let record = event_id.to_string();
    let occurred_at = corrected_timestamp(
        ev.original_timestamp,
        ev.sent_at.or(batch_sent_at),
        received_at,
    );
    let mut identifiers = Vec::with_capacity(w.ids.len() * 33);
    let mut sealed_ids = Vec::with_capacity(w.ids.len());
    let mut body_ids = Vec::with_capacity(w.ids.len());
    for (pos, (id, _)) in w.ids.iter().enumerate() {
        identifiers.push(u8::try_from(id.kind.code()).unwrap_or(0));
        identifiers.extend_from_slice(id.blind_index.as_bytes());
        // Identity's normalized form: storefront customer ids as `source ‖ NUL ‖ id`.
        let normalized = match id.kind {
            IdentifierType::StorefrontCustomerId => {
                zeroize::Zeroizing::new(format!("{}\u{0}{}", id.source, id.value.as_str()))
            }
            _ => id.value.clone(),
        };
        sealed_ids.push(bus::SealedIdentifier {
            r#type: i32::from(id.kind.code()),
            source: id.source.clone(),
            blind_index: id.blind_index.as_bytes().to_vec(),
            sealed_value: key.seal(&record, &identifier_field(pos), normalized.as_bytes())?,
        });
        body_ids.push(BodyIdentifier {
            r#type: id.kind.name(),
            source: &id.source,
            value: id.value.as_str(),
        });
    }
    let stripped: Vec<&str> = w.stripped.iter().map(|(f, _)| f.as_str()).collect();
    let original_timestamp = ev.original_timestamp.map(|t| t.to_rfc3339());
    let body = Body {
        name: &ev.name,
        group_id: &ev.group_id,
        properties: &ev.properties,
        traits: &ev.traits,
        context: &ev.context,
        identifiers: &body_ids,
        original_timestamp: original_timestamp.as_deref(),
        stripped: &stripped,
    };
    // Serialized straight into the sealed buffer. Its JSON is about the size the event was
    // delivered at (protobuf or JSON), plus the identifiers' names.
    let body_size = ev.encoded_len + ev.encoded_len / 2 + 256;
    let sealed_body = key.seal_json(&record, "body", &body, body_size)?;
    let sealed_traits = if ev.kind == EventKind::Identify && !ev.traits.is_empty() {
        key.seal_json(&record, "traits", &ev.traits, ev.encoded_len)?
    } else {
        Vec::new()
    };
    let storefront_id = ev
        .context
        .get("storefront")
        .and_then(|s| s.get("id"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let payload = bus::EventAccepted {
        workspace_id: workspace.to_string(),
        event_id: record.clone(),
        message_id: ev.message_id.clone(),
        r#type: i32::from(ev.kind.code()),
        event: ev.event.clone(),
        name: String::new(),
        timestamp: Some(timestamp(occurred_at)),
        received_at: Some(timestamp(received_at)),
        jurisdiction: w.jurisdiction.recorded().to_owned(),
        sealed_subject: subject.to_owned(),
        identifiers: sealed_ids,
        sealed_traits,
        revenue: revenue(&ev),
        storefront_id,
        age_band: ev.age_band,
    };
    let outbox = OutboxEvent::new(
        workspace.clone(),
        inner.family.clone(),
        subject,
        payload.encode_to_vec(),
    );
    Ok(Prepared {
        index: w.index,
        row: EventRow {
            event_id,
            message_id: ev.message_id,
            kind: ev.kind.code(),
            event_name: ev.event,
            occurred_at,
            received_at,
            jurisdiction: w.jurisdiction.recorded().to_owned(),
            anchor_kind: anchor.kind.code(),
            anchor_index: anchor.blind_index,
            sealed_subject: subject.to_owned(),
            identifiers,
            body: sealed_body,
            purposes: purposes.join(","),
        },
        outbox,
        stripped: w.stripped,
    })
}

/// The sealed body's JSON, serialized straight from the event: building a
/// `serde_json::Value` first deep-copied every property, trait and context field (the
/// largest allocation cost of a call). Field order is the stored format's.
#[derive(serde::Serialize)]
struct Body<'a> {
    name: &'a str,
    group_id: &'a str,
    properties: &'a serde_json::Map<String, Value>,
    traits: &'a serde_json::Map<String, Value>,
    context: &'a serde_json::Map<String, Value>,
    identifiers: &'a [BodyIdentifier<'a>],
    original_timestamp: Option<&'a str>,
    stripped: &'a [&'a str],
}

#[derive(serde::Serialize)]
struct BodyIdentifier<'a> {
    r#type: &'a str,
    source: &'a str,
    value: &'a str,
}

/// The sealing field of the identifier at `pos` (`identifiers.0`, ...).
fn identifier_field(pos: usize) -> std::borrow::Cow<'static, str> {
    const FIELDS: [&str; 8] = [
        "identifiers.0",
        "identifiers.1",
        "identifiers.2",
        "identifiers.3",
        "identifiers.4",
        "identifiers.5",
        "identifiers.6",
        "identifiers.7",
    ];
    match FIELDS.get(pos) {
        Some(f) => std::borrow::Cow::Borrowed(f),
        None => std::borrow::Cow::Owned(format!("identifiers.{pos}")),
    }
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// ISO 4217 currencies without minor units (the rest have two, except the three-decimal
/// dinars listed below).
const ZERO_DECIMAL: [&str; 8] = ["JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF"];
const THREE_DECIMAL: [&str; 5] = ["BHD", "KWD", "OMR", "JOD", "TND"];

/// `Order Completed` (Segment e-commerce spec): `properties.revenue`, else `total`, in
/// `properties.currency` (else the storefront's), as minor units.
fn revenue(ev: &ValidEvent) -> Option<bus::Money> {
    if ev.kind != EventKind::Track || ev.event != "Order Completed" {
        return None;
    }
    let amount = ev
        .properties
        .get("revenue")
        .or_else(|| ev.properties.get("total"))
        .and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })?;
    let currency = ev
        .properties
        .get("currency")
        .and_then(Value::as_str)
        .or_else(|| {
            ev.context
                .get("storefront")
                .and_then(|s| s.get("currency"))
                .and_then(Value::as_str)
        })
        .unwrap_or("USD")
        .to_ascii_uppercase();
    let exponent = if ZERO_DECIMAL.contains(&currency.as_str()) {
        0
    } else if THREE_DECIMAL.contains(&currency.as_str()) {
        3
    } else {
        2
    };
    let minor = (amount * 10f64.powi(exponent)).round();
    if !minor.is_finite() || minor.abs() > 9.0e15 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    Some(bus::Money {
        currency,
        minor_units: minor as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A batch is split only into parts of at least `MIN_EVENTS_PER_PART` events, into
    /// the cores other batches leave (at least two, at most `max_parts`), and not at all
    /// when `max_parts` batches are in flight already.
    #[test]
    fn a_batch_is_split_into_the_free_cores_in_parts_of_at_least_the_minimum() {
        let min = MIN_EVENTS_PER_PART;
        assert_eq!(parts_of(min - 1, 4, 0), 1);
        assert_eq!(parts_of(2 * min - 1, 4, 0), 1);
        assert_eq!(parts_of(2 * min, 4, 0), 2);
        assert_eq!(parts_of(1000, 4, 0), 4);
        assert_eq!(parts_of(1000, 4, 1), 3);
        assert_eq!(parts_of(1000, 4, 3), 2);
        assert_eq!(parts_of(1000, 4, 4), 1);
        assert_eq!(parts_of(1000, 4, 9), 1);
        assert_eq!(parts_of(1000, 2, 1), 2);
        assert_eq!(parts_of(1000, 2, 2), 1);
        assert_eq!(parts_of(1000, 1, 0), 1);
        assert_eq!(parts_of(1000, 0, 0), 1);
        assert_eq!(parts_of(0, 4, 0), 1);
    }

    #[test]
    fn a_batch_in_flight_is_counted_until_dropped() {
        let counter = AtomicUsize::new(0);
        let first = InFlight::enter(&counter);
        let second = InFlight::enter(&counter);
        assert_eq!((first.others, second.others), (0, 1));
        drop(first);
        assert_eq!(InFlight::enter(&counter).others, 1);
        drop(second);
        assert_eq!(counter.load(Ordering::Relaxed), 0);
    }

    /// The body serialized from borrowed parts is byte for byte the JSON of the `json!`
    /// value it replaced (the stored format, opened by `events_of`).
    #[test]
    fn the_body_is_serialized_as_the_stored_format() {
        let properties: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"z":1,"a":{"y":[1,2.5,"x"],"b":null},"price":39.9,"name":"Linen \"shirt\"\n"}"#,
        )
        .unwrap();
        let traits: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"email":"a@example.com","age":41}"#).unwrap();
        let context: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"storefront":{"id":"s-1"},"ip":"203.0.113.1"}"#).unwrap();
        let ids = [
            ("email", "", "a@example.com"),
            ("storefront_customer_id", "shop", "42"),
        ];
        let stripped = ["properties.ssn", "traits.phone"];
        for timestamp in [None, Some(Utc::now().to_rfc3339())] {
            let old = json!({
                "name": "Ana",
                "group_id": "",
                "properties": properties,
                "traits": traits,
                "context": context,
                "identifiers": ids.iter().map(|(t, s, v)| json!({
                    "type": t,
                    "source": s,
                    "value": v,
                })).collect::<Vec<_>>(),
                "original_timestamp": timestamp,
                "stripped": stripped,
            });
            let body_ids: Vec<BodyIdentifier<'_>> = ids
                .iter()
                .map(|(t, s, v)| BodyIdentifier {
                    r#type: t,
                    source: s,
                    value: v,
                })
                .collect();
            let new = Body {
                name: "Ana",
                group_id: "",
                properties: &properties,
                traits: &traits,
                context: &context,
                identifiers: &body_ids,
                original_timestamp: timestamp.as_deref(),
                stripped: &stripped,
            };
            assert_eq!(
                String::from_utf8(serde_json::to_vec(&new).unwrap()).unwrap(),
                String::from_utf8(serde_json::to_vec(&old).unwrap()).unwrap()
            );
        }
    }

    #[test]
    fn identifier_fields_are_numbered() {
        for pos in [0, 1, 7, 8, 12] {
            assert_eq!(identifier_field(pos), format!("identifiers.{pos}"));
        }
    }
}
