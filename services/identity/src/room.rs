//! [`IdentityRoom`]: the identity graph behind a store and the vault.
//!
//! Writes ([`IdentityRoom::ingest`], [`IdentityRoom::remove_identifier`],
//! [`IdentityRoom::erase_profile`], and consumed events through
//! [`IdentityRoom::apply_accepted`]) go through the in-memory graph of the workspace
//! (loaded from the store on first use) and persist each batch's changes in one
//! transaction, which also bumps the workspace's graph version: a cached graph not at the
//! version before the write is reloaded (another replica wrote, or a consumer transaction
//! it wrote in rolled back), so several writers stay correct. Reads (profile, lookup,
//! explain) go to the store, so any replica answers them.
//!
//! Sealed copies: an identifier the room itself seals (direct ingest) is sealed under its
//! own vault subject (`Vault::identifier_subjects`, keys by `Vault::subject_keys`, two
//! round trips per batch); a consumed event's identifiers keep the copy ingest sealed under
//! the event's subject (no vault write in the consumer's transaction). Trait payloads stay
//! sealed as ingest sealed them. Erasure returns every subject and identifier to forget.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use meridian_bus::{EventFamily, OutboxEvent, Tx};
use meridian_vault::{BlindIndex, Vault, VaultError};
use prost::Message;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::computed::AiplRules;
use crate::error::IdentityError;
use crate::events::{ProfileEventPage, ProfileEventSource};
use crate::explain::{MergeTree, merge_tree};
use crate::graph::{Changes, Conflict, Edge, Graph, ProfileId};
use crate::identifier::{
    CompiledRules, IdentifierObservation, Intake, NodeKey, Normalized, RawIdentifier, intake,
    prepare,
};
use crate::look_ahead::{LookAhead, StitchedAhead};
use crate::store::{
    ChangeBatch, ComputedRow, IdentifierRow, IdentityStore, ProfileRow, SealedValue,
};
use crate::traits::{TraitPayload, TraitRules, merge_traits, parse_traits};

/// The field name the room's own sealed copies are bound to.
pub(crate) const OWN_SEALED_FIELD: &str = "value";

/// The record id the room's own sealed copy of an identifier is bound to.
pub(crate) fn own_record_id(key: &NodeKey) -> String {
    format!("identity:{}:{}", key.kind.code(), key.index.to_hex())
}

/// Write attempts when another writer moved the graph meanwhile.
const STALE_RETRIES: usize = 3;

/// Profile rules from configuration: trait source priorities and the AIPL definitions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileRules {
    pub traits: TraitRules,
    pub aipl: AiplRules,
}

impl ProfileRules {
    pub fn validate(self) -> Result<Self, IdentityError> {
        Ok(ProfileRules {
            traits: self.traits,
            aipl: self.aipl.validate()?,
        })
    }
}

/// What an ingest batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IngestReport {
    pub observations: u64,
    /// Identifiers accepted (normalized, not blocked).
    pub identifiers: u64,
    /// Identifiers dropped because they could not be normalized.
    pub invalid: u64,
    /// Links applied (edges written).
    pub links: u64,
    /// Links refused and recorded.
    pub conflicts: u64,
    /// Identifiers written (new or changed).
    pub identifiers_written: u64,
    pub timings: Timings,
}

/// Where a write spent its time, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Timings {
    /// Intake (normalize, block, blind-index) and the graph.
    pub graph_micros: u64,
    /// Building the store batch, sealing new identifiers (data keys from the vault).
    pub seal_micros: u64,
    /// The store transaction.
    pub store_micros: u64,
}

impl std::ops::AddAssign for Timings {
    fn add_assign(&mut self, o: Timings) {
        self.graph_micros += o.graph_micros;
        self.seal_micros += o.seal_micros;
        self.store_micros += o.store_micros;
    }
}

/// Where the bus consumer spent its time ([`IdentityRoom::apply_accepted_batch`]), in
/// microseconds, summed since the room started or [`IdentityRoom::reset_consumer_timings`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerTimings {
    /// Calls (one per workspace of a delivery).
    pub batches: u64,
    pub events: u64,
    /// Events whose decoding was prepared ahead, during the previous delivery's store
    /// write (see [`crate::look_ahead`]), and taken as prepared.
    pub prepared_events: u64,
    /// Events taken stitched ahead: also run through the graph during the previous
    /// delivery's store write ([`crate::look_ahead::StitchedAhead`]).
    pub stitched_events: u64,
    /// Data keys of the sealed subjects (vault) and opening the sealed identifiers, of the
    /// events not prepared ahead; checking and taking those that were.
    pub decode_micros: u64,
    /// The graph and assembling the store batch (CPU only).
    pub graph_micros: u64,
    /// Statements in the consumer's transaction: the version bump, stored stages, and the
    /// batch write (graph, anchored rows, computed traits, outbox); and any wait below.
    pub store_micros: u64,
    /// Of `store_micros`, the wait after the batch write ended for the next delivery's
    /// stitching ahead to end.
    pub stitch_wait_micros: u64,
}

impl std::ops::AddAssign for ConsumerTimings {
    fn add_assign(&mut self, o: ConsumerTimings) {
        self.batches += o.batches;
        self.events += o.events;
        self.prepared_events += o.prepared_events;
        self.stitched_events += o.stitched_events;
        self.decode_micros += o.decode_micros;
        self.graph_micros += o.graph_micros;
        self.store_micros += o.store_micros;
        self.stitch_wait_micros += o.stitch_wait_micros;
    }
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// An identifier of a profile, opened for display. `Debug` prints no value.
#[derive(Clone)]
pub struct IdentifierView {
    pub key: NodeKey,
    /// The normalized value; empty when its subject was forgotten.
    pub value: Zeroizing<String>,
    pub source: String,
    pub first_seen: DateTime<Utc>,
}

impl std::fmt::Debug for IdentifierView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentifierView")
            .field("kind", &self.key.kind)
            .field("source", &self.source)
            .field("first_seen", &self.first_seen)
            .finish_non_exhaustive()
    }
}

/// A profile: its identifiers (opened), traits (opened, merged) and computed traits.
#[derive(Debug, Clone)]
pub struct ProfileView {
    pub profile: ProfileRow,
    pub identifiers: Vec<IdentifierView>,
    /// Merged traits; `Debug` of a JSON map would print values, so it is skipped below.
    pub traits: TraitsView,
    pub computed: Option<ComputedRow>,
}

/// A profile's merged traits. `Debug` prints the names only.
#[derive(Clone, Default)]
pub struct TraitsView(pub serde_json::Map<String, serde_json::Value>);

impl std::fmt::Debug for TraitsView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// Why a profile is what it is.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub profile: ProfileView,
    /// Applied links in order.
    pub edges: Vec<Edge>,
    /// The merge tree (one for a connected profile).
    pub trees: Vec<MergeTree>,
    /// Refused links touching the profile.
    pub conflicts: Vec<Conflict>,
}

impl Explanation {
    /// The display value of an identifier of the profile (None for identifiers outside it:
    /// another profile's values are never shown).
    pub fn value_of(&self, key: &NodeKey) -> Option<&IdentifierView> {
        self.profile.identifiers.iter().find(|i| i.key == *key)
    }
}

/// How the erasure saga names a subject.
#[derive(Debug, Clone)]
pub enum SubjectRef {
    Profile(ProfileId),
    /// Raw identifiers (normalized and blind-indexed here).
    Identifiers(Vec<RawIdentifier>),
    /// Blind indexes, of any identifier type.
    BlindIndexes(Vec<BlindIndex>),
}

/// What [`IdentityRoom::erase_profile`] deleted: what the saga must forget in the vault
/// (last, once every room deleted its rows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErasedProfile {
    /// The live profile erased (and the id asked for, if it had been merged into it).
    pub profile_ids: Vec<ProfileId>,
    /// Its identifiers: `Vault::forget_identifier` on each.
    pub identifiers: Vec<NodeKey>,
    /// Vault subjects its sealed copies and trait payloads were sealed under:
    /// `Vault::forget` on each.
    pub vault_subjects: Vec<String>,
}

/// What applying one consumed event did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedEvent {
    /// False for an event named again in the same call, or whose subject was erased
    /// meanwhile (the bus skips one it applied before without calling the room).
    pub applied: bool,
    pub links: u64,
    pub conflicts: u64,
}

struct CachedGraph {
    graph: Graph,
    /// The stored version the graph reflects.
    version: i64,
    /// The token of a delivery stitched ahead ([`StitchedAhead`]) the graph holds beyond
    /// `version`: only that delivery takes the graph as it is; any other write reloads it.
    stitched_ahead: Option<u64>,
}

impl CachedGraph {
    /// Whether the graph holds what is not stored: a delivery stitched ahead, or a write
    /// that did not finish (its call was dropped).
    fn holds_unstored(&self) -> bool {
        self.stitched_ahead.is_some() || self.version == AHEAD_OF_THE_STORE
    }
}

/// The version of a cached graph while a write runs on it (none the store hands out): a
/// write whose call is dropped half-way (a client cancelling its RPC, a shutdown) leaves
/// the graph ahead of the store, and it is reloaded rather than served.
const AHEAD_OF_THE_STORE: i64 = i64::MIN;

/// Tokens of deliveries stitched ahead, unique within the process.
static NEXT_STITCH_TOKEN: AtomicU64 = AtomicU64::new(1);

/// How many events [`IdentityRoom::stitch_ahead`] stitches before it yields (well under a
/// millisecond of work): it runs in the task of the current delivery's store write, whose
/// statements must not wait for a whole delivery's pass to be sent.
const STITCHED_AHEAD_BETWEEN_YIELDS: usize = 64;

/// What the events of a delivery did to the graph, in order: the first part of
/// [`IdentityRoom::apply_accepted_batch`], also run ahead ([`IdentityRoom::stitch_ahead`]).
#[derive(Default)]
pub(crate) struct GraphPass {
    changes: Changes,
    /// What each event did, by its position in the delivery's events of the workspace.
    applied: Vec<(usize, AppliedEvent)>,
    sealed: HashMap<NodeKey, (SealedValue, String)>,
    trait_payloads: Vec<crate::store::TraitPayloadRow>,
    activities: Vec<crate::store::ActivityRow>,
}

impl GraphPass {
    /// Runs the event at `position` through `graph`.
    fn observe(
        &mut self,
        graph: &mut Graph,
        position: usize,
        event: &meridian_proto::bus::v1::EventAccepted,
        decoded: crate::accepted::Decoded,
    ) {
        let o = graph.observe(&decoded.observation, &mut self.changes);
        self.applied.push((
            position,
            AppliedEvent {
                applied: true,
                links: o.links,
                conflicts: o.conflicts,
            },
        ));
        let (Some(anchor), Some(profile)) = (o.anchor, o.profile) else {
            return;
        };
        for (key, copy) in decoded.sealed {
            if graph.profile_of(&key) == Some(profile) {
                // The first copy wins, as the store keeps the first one written.
                self.sealed.entry(key).or_insert(copy);
            }
        }
        if let Some((subject, bytes)) = decoded.sealed_traits {
            self.trait_payloads.push(crate::store::TraitPayloadRow {
                event_id: event.event_id.clone(),
                profile,
                anchor,
                source: event.storefront_id.clone(),
                observed_micros: decoded.at.timestamp_micros(),
                sealed_subject: subject,
                sealed_traits: bytes,
            });
        }
        if let Some(activity) = decoded.activity {
            self.activities.push(crate::store::ActivityRow {
                event_id: event.event_id.clone(),
                profile,
                anchor,
                activity,
            });
        }
    }
}

/// The events of one workspace a delivery applies: decoded, each with its position, or
/// stitched ahead.
enum Stitching {
    Decoded(Vec<(usize, crate::accepted::Decoded)>),
    Ahead(Box<StitchedAhead>),
}

type GraphSlot = Arc<tokio::sync::Mutex<Option<CachedGraph>>>;

struct Inner {
    store: Arc<dyn IdentityStore>,
    vault: Arc<Vault>,
    rules: CompiledRules,
    profile_rules: ProfileRules,
    graphs: Mutex<HashMap<String, GraphSlot>>,
    blocked_keys: Mutex<HashMap<String, Arc<HashSet<NodeKey>>>>,
    event_source: Option<Arc<dyn ProfileEventSource>>,
    consumer_timings: Mutex<ConsumerTimings>,
    statistics: StatisticsRefresh,
    look_ahead: LookAhead,
}

/// Graph size (identifiers of a workspace) from which the room keeps the planner's
/// statistics in step with the graph it writes; they are refreshed again whenever a
/// workspace's graph has doubled since.
const STATISTICS_FROM_NODES: usize = 4_096;

/// When this room last refreshed the store's statistics, per workspace (its graph size
/// then), and whether a refresh is running.
#[derive(Default)]
struct StatisticsRefresh {
    nodes: Mutex<HashMap<String, usize>>,
    running: Arc<std::sync::atomic::AtomicBool>,
}

/// The identity room. Cheap to clone.
#[derive(Clone)]
pub struct IdentityRoom {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IdentityRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityRoom").finish_non_exhaustive()
    }
}

/// The graph changes, sealed copies and profile rows one write produces.
struct Draft {
    changes: Changes,
    /// Sealed copies of identifiers, with their source.
    sealed: HashMap<NodeKey, (SealedValue, String)>,
    trait_payloads: Vec<crate::store::TraitPayloadRow>,
    activity: Vec<crate::store::ActivityRow>,
    deleted_profiles: Vec<ProfileId>,
}

impl Draft {
    fn new(changes: Changes) -> Self {
        Draft {
            changes,
            sealed: HashMap::new(),
            trait_payloads: Vec::new(),
            activity: Vec::new(),
            deleted_profiles: Vec::new(),
        }
    }
}

impl IdentityRoom {
    /// A room over a store (see [`crate::identity_store`]), the vault and validated rules,
    /// with the default [`ProfileRules`] and no event source.
    pub fn new(store: Arc<dyn IdentityStore>, vault: Arc<Vault>, rules: CompiledRules) -> Self {
        Self::with_profile_rules(store, vault, rules, ProfileRules::default(), None)
    }

    /// A room with explicit profile rules and (optionally) where `ListProfileEvents` reads.
    pub fn with_profile_rules(
        store: Arc<dyn IdentityStore>,
        vault: Arc<Vault>,
        rules: CompiledRules,
        profile_rules: ProfileRules,
        event_source: Option<Arc<dyn ProfileEventSource>>,
    ) -> Self {
        IdentityRoom {
            inner: Arc::new(Inner {
                store,
                vault,
                rules,
                profile_rules,
                graphs: Mutex::new(HashMap::new()),
                blocked_keys: Mutex::new(HashMap::new()),
                event_source,
                consumer_timings: Mutex::new(ConsumerTimings::default()),
                statistics: StatisticsRefresh::default(),
                look_ahead: LookAhead::default(),
            }),
        }
    }

    /// A room over an open [`meridian_store::Store`].
    pub fn from_store(
        store: &meridian_store::Store,
        vault: Arc<Vault>,
        rules: CompiledRules,
    ) -> Self {
        Self::new(crate::store::identity_store(store), vault, rules)
    }

    /// The same room reading profile events from `source`.
    pub fn with_event_source(self, source: Arc<dyn ProfileEventSource>) -> Self {
        let inner = &self.inner;
        IdentityRoom {
            inner: Arc::new(Inner {
                store: inner.store.clone(),
                vault: inner.vault.clone(),
                rules: inner.rules.clone(),
                profile_rules: inner.profile_rules.clone(),
                graphs: Mutex::new(HashMap::new()),
                blocked_keys: Mutex::new(HashMap::new()),
                event_source: Some(source),
                consumer_timings: Mutex::new(ConsumerTimings::default()),
                statistics: StatisticsRefresh::default(),
                look_ahead: LookAhead::default(),
            }),
        }
    }

    pub fn rules(&self) -> &CompiledRules {
        &self.inner.rules
    }

    /// Where the bus consumer spent its time so far (for benchmarks).
    pub fn consumer_timings(&self) -> ConsumerTimings {
        *self
            .inner
            .consumer_timings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn reset_consumer_timings(&self) {
        *self
            .inner
            .consumer_timings
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = ConsumerTimings::default();
    }

    fn add_consumer_timings(&self, t: ConsumerTimings) {
        *self
            .inner
            .consumer_timings
            .lock()
            .unwrap_or_else(|e| e.into_inner()) += t;
    }

    /// Refreshes the store's statistics in the background once a workspace's graph reached
    /// [`STATISTICS_FROM_NODES`] identifiers, and again each time it doubled. A workspace
    /// loading fast outgrows PostgreSQL's estimates in seconds (autovacuum analyzes a
    /// database at most once a minute): plans made for the small tables then read every
    /// row of the workspace where an index lookup per profile was meant.
    fn refresh_statistics_after_growth(&self, workspace: &str, nodes: usize) {
        use std::sync::atomic::Ordering;
        let stats = &self.inner.statistics;
        {
            let mut seen = stats.nodes.lock().unwrap_or_else(|e| e.into_inner());
            let last = seen.get(workspace).copied().unwrap_or(0);
            if nodes < last.saturating_mul(2).max(STATISTICS_FROM_NODES)
                || stats.running.swap(true, Ordering::AcqRel)
            {
                return;
            }
            seen.insert(workspace.to_owned(), nodes);
        }
        let store = self.inner.store.clone();
        let running = stats.running.clone();
        tokio::spawn(async move {
            if let Err(e) = store.refresh_statistics().await {
                tracing::warn!(error = %e, "refreshing the identity tables' statistics failed");
            }
            running.store(false, Ordering::Release);
        });
    }

    pub fn profile_rules(&self) -> &ProfileRules {
        &self.inner.profile_rules
    }

    pub(crate) fn vault(&self) -> &Arc<Vault> {
        &self.inner.vault
    }

    /// Notes the events the bus will deliver next (see [`crate::look_ahead`]).
    pub(crate) fn note_upcoming(&self, upcoming: &[meridian_bus::UpcomingEvent]) {
        self.inner.look_ahead.note(self, upcoming);
    }

    /// What was prepared for the delivery of the outbox events `delivered`, about to be
    /// applied ([`crate::look_ahead`]), by workspace: only what still holds (this replica
    /// forgot no data key since, and the workspace's blocked values are the ones matched).
    /// The delivery stitched ahead, if any, is held to the same test.
    pub(crate) async fn take_prepared(
        &self,
        delivered: &[uuid::Uuid],
    ) -> (crate::look_ahead::Prepared, Option<StitchedAhead>) {
        let (prepared, stitched) = self.inner.look_ahead.take(delivered).await;
        let mut holding = crate::look_ahead::Prepared::with_capacity(prepared.len());
        for (workspace, events) in prepared {
            if self
                .still_holds(&workspace, events.forget_generation, &events.blocked)
                .await
            {
                holding.insert(workspace, events);
            }
        }
        let stitched = match stitched {
            Some(s)
                if self
                    .still_holds(&s.workspace, s.forget_generation, &s.blocked)
                    .await =>
            {
                Some(s)
            }
            _ => None,
        };
        (holding, stitched)
    }

    /// Whether what was decoded ahead in `workspace` still holds: this replica forgot no
    /// data key since `forget_generation`, and the workspace's blocked values are `blocked`.
    async fn still_holds(
        &self,
        workspace: &str,
        forget_generation: u64,
        blocked: &Arc<HashSet<NodeKey>>,
    ) -> bool {
        forget_generation == self.inner.vault.forget_generation()
            && self
                .blocked_keys(workspace)
                .await
                .is_ok_and(|now| Arc::ptr_eq(&now, blocked))
    }

    /// Prepares what [`IdentityRoom::note_upcoming`] noted and waits for it.
    pub(crate) async fn settle_look_ahead(&self) {
        self.inner.look_ahead.settle(self).await;
    }

    fn slot(&self, workspace: &str) -> GraphSlot {
        let mut graphs = self.inner.graphs.lock().unwrap_or_else(|e| e.into_inner());
        graphs
            .entry(workspace.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(None)))
            .clone()
    }

    fn build_graph(&self, stored: crate::store::StoredGraph) -> CachedGraph {
        let (nodes, edges, version) = stored;
        let mut graph = Graph::new(self.inner.rules.clone());
        for n in nodes {
            graph.restore_node(n);
        }
        for e in edges {
            graph.restore_edge(e);
        }
        CachedGraph {
            graph,
            version,
            stitched_ahead: None,
        }
    }

    /// Blind indexes of the values blocked outright, per workspace (consumed events carry
    /// blind indexes, so blocked values are matched by index too).
    pub(crate) async fn blocked_keys(
        &self,
        workspace: &str,
    ) -> Result<Arc<HashSet<NodeKey>>, IdentityError> {
        if let Some(keys) = self
            .inner
            .blocked_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(workspace)
        {
            return Ok(keys.clone());
        }
        let indexer = self.inner.vault.blind_indexer(workspace).await?;
        let keys: HashSet<NodeKey> = self
            .inner
            .rules
            .blocked_values()
            .filter_map(|(kind, value)| {
                crate::identifier::normalize(kind, value, "", "")
                    .ok()
                    .map(|n| crate::identifier::blind_index(&indexer, &n))
            })
            .collect();
        let keys = Arc::new(keys);
        self.inner
            .blocked_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(workspace.to_owned(), keys.clone());
        Ok(keys)
    }

    /// Runs `draft` on the workspace's graph, seals the new values it returns, and persists
    /// everything in one transaction at the cached graph's version; when another writer
    /// moved the graph, reloads it and runs `draft` again.
    async fn write<T>(
        &self,
        workspace: &str,
        mut draft: impl FnMut(&mut Graph) -> (T, Draft, HashMap<NodeKey, Normalized>),
    ) -> Result<(T, Timings), IdentityError> {
        let slot = self.slot(workspace);
        let mut guard = slot.lock().await;
        forget_unstored(&mut guard);
        for _ in 0..STALE_RETRIES {
            if guard.is_none() {
                *guard = Some(self.build_graph(self.inner.store.load_graph(workspace).await?));
            }
            let Some(cached) = guard.as_mut() else {
                return Err(IdentityError::Corrupt("graph not loaded".into()));
            };
            let mut timings = Timings::default();
            let started = Instant::now();
            // Ahead of the store until the write succeeds.
            let stored_version = std::mem::replace(&mut cached.version, AHEAD_OF_THE_STORE);
            let (out, mut d, values) = draft(&mut cached.graph);
            timings.graph_micros = micros(started);
            let started = Instant::now();
            let sealed = self.seal(workspace, &cached.graph, values).await;
            timings.seal_micros = micros(started);
            let batch = match sealed {
                Ok(sealed) => {
                    d.sealed.extend(sealed);
                    self.assemble(workspace, &cached.graph, d)
                }
                Err(e) => Err(e),
            };
            let started = Instant::now();
            let result = match batch {
                Ok(batch) => {
                    self.inner
                        .store
                        .apply(
                            workspace,
                            &batch,
                            &self.inner.profile_rules.aipl,
                            stored_version,
                        )
                        .await
                }
                Err(e) => Err(e),
            };
            timings.store_micros = micros(started);
            match result {
                Ok(version) => {
                    cached.version = version;
                    self.refresh_statistics_after_growth(workspace, cached.graph.len());
                    return Ok((out, timings));
                }
                Err(IdentityError::StaleGraph) => {
                    tracing::debug!(workspace, "identity graph moved; reloading");
                    *guard = None;
                }
                Err(e) => {
                    *guard = None;
                    return Err(e);
                }
            }
        }
        Err(IdentityError::StaleGraph)
    }

    /// Applies identifier observations (one batch, one transaction).
    pub async fn ingest(
        &self,
        workspace: &str,
        observations: &[IdentifierObservation],
    ) -> Result<IngestReport, IdentityError> {
        let indexer = self.inner.vault.blind_indexer(workspace).await?;
        let rules = &self.inner.rules;
        self.write(workspace, |graph| {
            draft_ingest(rules, &indexer, graph, observations)
        })
        .await
        .map(|(mut report, timings)| {
            report.timings = timings;
            report
        })
    }

    /// Applies batches of observations in order, one transaction each, as a two-stage
    /// pipeline: while batch N is written to the store, batch N + 1 goes through the graph
    /// and the vault (its new identifiers' subjects and data keys). For bulk loads (the
    /// benchmark, backfills). Another writer moving the graph meanwhile fails the call
    /// (nothing of the failed batch is written; the cached graph is reloaded next time).
    pub async fn ingest_pipelined(
        &self,
        workspace: &str,
        batches: &[&[IdentifierObservation]],
    ) -> Result<Vec<IngestReport>, IdentityError> {
        let indexer = self.inner.vault.blind_indexer(workspace).await?;
        let slot = self.slot(workspace);
        let mut guard = slot.lock().await;
        forget_unstored(&mut guard);
        if guard.is_none() {
            *guard = Some(self.build_graph(self.inner.store.load_graph(workspace).await?));
        }
        let Some(cached) = guard.as_mut() else {
            return Err(IdentityError::Corrupt("graph not loaded".into()));
        };
        let result = self.pipeline(workspace, &indexer, cached, batches).await;
        match &result {
            Ok(_) => self.refresh_statistics_after_growth(workspace, cached.graph.len()),
            Err(_) => *guard = None,
        }
        result
    }

    async fn pipeline(
        &self,
        workspace: &str,
        indexer: &meridian_vault::BlindIndexer,
        cached: &mut CachedGraph,
        batches: &[&[IdentifierObservation]],
    ) -> Result<Vec<IngestReport>, IdentityError> {
        let aipl = &self.inner.profile_rules.aipl;
        let mut reports: Vec<IngestReport> = Vec::with_capacity(batches.len());
        let mut pending: Option<ChangeBatch> = None;
        // The graph is ahead of the store until the last batch is written.
        let mut stored_version = std::mem::replace(&mut cached.version, AHEAD_OF_THE_STORE);
        for observations in batches {
            let started = Instant::now();
            let (mut report, mut draft, values) =
                draft_ingest(&self.inner.rules, indexer, &mut cached.graph, observations);
            report.timings.graph_micros = micros(started);
            let version = stored_version;
            let graph = &cached.graph;
            let seal = async {
                let started = Instant::now();
                let sealed = self.seal(workspace, graph, values).await;
                (sealed, micros(started))
            };
            let apply = async {
                let started = Instant::now();
                let applied = match &pending {
                    Some(batch) => self
                        .inner
                        .store
                        .apply(workspace, batch, aipl, version)
                        .await
                        .map(Some),
                    None => Ok(None),
                };
                (applied, micros(started))
            };
            let ((sealed, seal_micros), (applied, store_micros)) = tokio::join!(seal, apply);
            report.timings.seal_micros = seal_micros;
            if let Some(previous) = reports.last_mut() {
                previous.timings.store_micros = store_micros;
            }
            if let Some(version) = applied? {
                stored_version = version;
            }
            draft.sealed.extend(sealed?);
            pending = Some(self.assemble(workspace, &cached.graph, draft)?);
            reports.push(report);
        }
        if let Some(batch) = pending {
            let started = Instant::now();
            stored_version = self
                .inner
                .store
                .apply(workspace, &batch, aipl, stored_version)
                .await?;
            if let Some(last) = reports.last_mut() {
                last.timings.store_micros = micros(started);
            }
        }
        cached.version = stored_version;
        Ok(reports)
    }

    /// Removes an identifier (erasure, correction): deletes it, its edges and the conflicts
    /// naming it, and recomputes its profile, splitting where it was the only bridge.
    /// Returns the profiles its former profile became (empty when it was unknown).
    pub async fn remove_identifier(
        &self,
        workspace: &str,
        identifier: &RawIdentifier,
        at: DateTime<Utc>,
    ) -> Result<Vec<ProfileId>, IdentityError> {
        let key = self.key_of(workspace, identifier).await?;
        self.write(workspace, |graph| {
            let mut changes = Changes::default();
            let parts = graph.remove(&key, at, &mut changes).unwrap_or_default();
            (parts, Draft::new(changes), HashMap::new())
        })
        .await
        .map(|(parts, _)| parts)
    }

    async fn key_of(
        &self,
        workspace: &str,
        identifier: &RawIdentifier,
    ) -> Result<NodeKey, IdentityError> {
        let indexer = self.inner.vault.blind_indexer(workspace).await?;
        Ok(match intake(&self.inner.rules, &indexer, identifier)? {
            Intake::Key(key, _) | Intake::Blocked(key) => key,
        })
    }

    /// Seals new identifiers' normalized values, each under its own vault subject (the
    /// vault's subject of its blind index), with batched vault round trips.
    async fn seal(
        &self,
        workspace: &str,
        graph: &Graph,
        values: HashMap<NodeKey, Normalized>,
    ) -> Result<HashMap<NodeKey, (SealedValue, String)>, IdentityError> {
        let values: Vec<(NodeKey, Normalized)> = values
            .into_iter()
            .filter(|(k, _)| graph.profile_of(k).is_some())
            .collect();
        if values.is_empty() {
            return Ok(HashMap::new());
        }
        let vault = &self.inner.vault;
        let indexes: Vec<BlindIndex> = values.iter().map(|(k, _)| k.index).collect();
        let keys = vault.identifier_subject_keys(workspace, &indexes).await?;
        let mut out = HashMap::with_capacity(values.len());
        for ((key, n), (subject, data_key)) in values.into_iter().zip(keys) {
            let record = own_record_id(&key);
            let bytes = data_key.seal(&record, OWN_SEALED_FIELD, n.display_value().as_bytes())?;
            out.insert(
                key,
                (
                    SealedValue {
                        subject,
                        record,
                        field: OWN_SEALED_FIELD.to_owned(),
                        bytes,
                    },
                    n.source.clone(),
                ),
            );
        }
        Ok(out)
    }

    /// Turns a draft into a store batch, with the `ProfileChanged` events it announces.
    fn assemble(
        &self,
        workspace: &str,
        graph: &Graph,
        d: Draft,
    ) -> Result<ChangeBatch, IdentityError> {
        let Draft {
            changes,
            mut sealed,
            trait_payloads,
            activity,
            deleted_profiles,
        } = d;
        let now = Utc::now();
        let mut identifiers = Vec::new();
        let mut new_identifiers = Vec::with_capacity(changes.created_nodes.len());
        let mut touched: HashSet<ProfileId> = HashSet::new();
        for key in &changes.nodes {
            let Some(state) = graph.node_state(key) else {
                continue;
            };
            touched.insert(state.profile);
            let (sealed, source) = match sealed.remove(key) {
                Some((s, source)) => (Some(s), source),
                None => (None, String::new()),
            };
            let row = IdentifierRow {
                state,
                source,
                sealed,
            };
            if changes.created_nodes.contains(key) {
                new_identifiers.push(row);
            } else {
                identifiers.push(row);
            }
        }
        // Profiles born and absorbed within this batch were never visible: skip them.
        let absorbed: HashSet<ProfileId> = changes.merged_profiles.iter().map(|m| m.0).collect();
        let created: HashSet<ProfileId> = changes.created_profiles.iter().map(|c| c.0).collect();
        let mut rehome: BTreeSet<ProfileId> = absorbed.iter().copied().collect();
        rehome.extend(changes.split_profiles.iter().map(|s| s.0));
        rehome.extend(changes.shrunk_profiles.iter().copied());
        // A profile born in this batch has no stored rows to re-home: the batch's own
        // anchored rows are written with the profile their anchor ended the batch in.
        rehome.retain(|p| !created.contains(p));
        // Within one batch a profile may be absorbed by one that is absorbed in turn: each
        // absorbed profile points at the live one, whose row exists.
        let into: HashMap<ProfileId, ProfileId> = changes
            .merged_profiles
            .iter()
            .map(|(a, i, _)| (*a, *i))
            .collect();
        let live = |mut p: ProfileId| {
            for _ in 0..=into.len() {
                match into.get(&p) {
                    Some(next) => p = *next,
                    None => break,
                }
            }
            p
        };
        // An edge applied and removed again within the batch (a value found shared) is not
        // written: the deletes run before the inserts.
        let removed_edges: HashSet<u64> = changes.removed_edges.iter().copied().collect();
        let mut batch = ChangeBatch {
            identifiers,
            new_identifiers,
            removed_identifiers: changes.removed_nodes.clone(),
            new_edges: changes
                .new_edges
                .iter()
                .filter(|e| !removed_edges.contains(&e.seq))
                .cloned()
                .collect(),
            removed_edges: changes.removed_edges.clone(),
            conflicts: changes.conflicts.clone(),
            created_profiles: changes
                .created_profiles
                .iter()
                .filter(|(p, _)| !absorbed.contains(p))
                .copied()
                .collect(),
            merged_profiles: changes
                .merged_profiles
                .iter()
                .filter(|(a, _, _)| !created.contains(a))
                .map(|(a, i, at)| (*a, live(*i), *at))
                .collect(),
            touched_profiles: touched.into_iter().collect(),
            at: now,
            trait_payloads,
            activity,
            rehome: rehome.into_iter().collect(),
            deleted_profiles,
            events: Vec::new(),
        };
        batch.events = profile_changed_events(workspace, graph, &changes, &batch)?;
        Ok(batch)
    }

    // ---- consumed events --------------------------------------------------------------

    /// Applies one accepted event inside the consumer's transaction `tx`: stitches its
    /// identifiers (alias events with rule `alias`), keeps its sealed traits (identify) and
    /// activity (orders, AIPL stages), and writes `ProfileChanged` to the outbox, all in
    /// `tx`. Applying an event twice is the bus's to prevent: it records the event as
    /// processed in the same transaction, under the ingested event's id
    /// ([`crate::accepted::IngestConsumer`]'s idempotency key). Never writes to the vault (on SQLite,
    /// the consumer's transaction holds the only write lock).
    pub async fn apply_accepted(
        &self,
        tx: &mut Tx<'_>,
        event: &meridian_proto::bus::v1::EventAccepted,
    ) -> Result<AppliedEvent, IdentityError> {
        let mut out = self.apply_accepted_batch(tx, &[event]).await?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Applies a delivery of accepted events, in order, inside `tx`, as
    /// [`IdentityRoom::apply_accepted`] would one by one, but per workspace as one unit: the
    /// data keys of their subjects in one vault round trip, one version bump, the graph in
    /// memory, then one store write (multi-row statements on PostgreSQL) with one
    /// `ProfileChanged` per profile the delivery changed.
    /// Returns what each event did, in the order given.
    pub async fn apply_accepted_batch(
        &self,
        tx: &mut Tx<'_>,
        events: &[&meridian_proto::bus::v1::EventAccepted],
    ) -> Result<Vec<AppliedEvent>, IdentityError> {
        let ahead = events.iter().map(|_| None).collect();
        self.apply_accepted_batch_decoded(tx, events, ahead, None)
            .await
    }

    /// [`IdentityRoom::apply_accepted_batch`], where `ahead` holds, for each event, what
    /// decoding made of it if it was decoded ahead ([`IdentityRoom::take_prepared`]), and
    /// `stitched` the events of its workspace stitched ahead: exactly those `events` holds
    /// of that workspace, in that order (the caller checks).
    pub(crate) async fn apply_accepted_batch_decoded(
        &self,
        tx: &mut Tx<'_>,
        events: &[&meridian_proto::bus::v1::EventAccepted],
        mut ahead: Vec<Option<Option<crate::accepted::Decoded>>>,
        mut stitched: Option<StitchedAhead>,
    ) -> Result<Vec<AppliedEvent>, IdentityError> {
        let mut out = vec![AppliedEvent::default(); events.len()];
        ahead.resize_with(events.len(), || None);
        // Workspaces in order of first appearance, each with its events in delivery order.
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let ws = e.workspace_id.as_str();
            match groups.iter_mut().find(|(w, _)| *w == ws) {
                Some((_, members)) => members.push(i),
                None => groups.push((ws, vec![i])),
            }
        }
        for (workspace, members) in groups {
            let batch: Vec<&meridian_proto::bus::v1::EventAccepted> =
                members.iter().map(|i| events[*i]).collect();
            let decoded = members.iter().map(|i| ahead[*i].take()).collect();
            let stitched = stitched.take_if(|s| s.workspace == workspace);
            let applied = self
                .apply_workspace_batch(tx, workspace, &batch, decoded, stitched)
                .await?;
            for (i, a) in members.into_iter().zip(applied) {
                out[i] = a;
            }
        }
        Ok(out)
    }

    async fn apply_workspace_batch(
        &self,
        tx: &mut Tx<'_>,
        workspace: &str,
        events: &[&meridian_proto::bus::v1::EventAccepted],
        ahead: Vec<Option<Option<crate::accepted::Decoded>>>,
        stitched: Option<StitchedAhead>,
    ) -> Result<Vec<AppliedEvent>, IdentityError> {
        if workspace.is_empty() {
            return Err(IdentityError::InvalidArgument {
                field: "workspace_id",
                reason: "required",
            });
        }
        let mut timings = ConsumerTimings {
            batches: 1,
            events: events.len() as u64,
            ..ConsumerTimings::default()
        };
        let mut out = vec![AppliedEvent::default(); events.len()];
        let started = Instant::now();
        let mut stitching = match stitched {
            Some(stitched) => Stitching::Ahead(Box::new(stitched)),
            None => {
                timings.prepared_events = ahead.iter().filter(|d| d.is_some()).count() as u64;
                let todo = self.decode_todo(workspace, events, ahead).await?;
                if todo.is_empty() {
                    timings.decode_micros = micros(started);
                    self.add_consumer_timings(timings);
                    return Ok(out);
                }
                Stitching::Decoded(todo)
            }
        };
        timings.decode_micros = micros(started);
        let started = Instant::now();
        let slot = self.slot(workspace);
        let mut guard = slot.lock().await;
        let version = self.inner.store.bump_version(tx, workspace).await?;
        // The graph as cached serves if it is at the version before this write and holds
        // exactly what this delivery takes as done: its pass stitched ahead, or nothing.
        let taken_ahead = match &stitching {
            Stitching::Ahead(s) => Some(s.token),
            Stitching::Decoded(_) => None,
        };
        let serves = |c: &CachedGraph| c.version == version - 1 && c.stitched_ahead == taken_ahead;
        if guard.as_ref().is_none_or(|c| !serves(c)) {
            *guard = None;
            if let Stitching::Ahead(_) = stitching {
                // The pass is not in the graph reloaded below: the events are decoded again.
                let none_ahead = events.iter().map(|_| None).collect();
                stitching =
                    Stitching::Decoded(self.decode_todo(workspace, events, none_ahead).await?);
            }
            match self.inner.store.load_graph_in(tx, workspace).await {
                Ok(stored) => {
                    let mut cached = self.build_graph(stored);
                    cached.version = version - 1;
                    *guard = Some(cached);
                }
                Err(e) => {
                    *guard = None;
                    return Err(e);
                }
            }
        }
        let Some(cached) = guard.as_mut() else {
            return Err(IdentityError::Corrupt("graph not loaded".into()));
        };
        // From here the cached graph is ahead of the store: any failure drops it, and it
        // is at no stored version until the write succeeds (a call dropped half-way, as
        // at shutdown, leaves it to be reloaded).
        cached.stitched_ahead = None;
        cached.version = AHEAD_OF_THE_STORE;
        timings.store_micros = micros(started);
        let result = self
            .stitch_accepted(
                tx,
                workspace,
                events,
                stitching,
                &mut cached.graph,
                &mut out,
                &mut timings,
            )
            .await;
        match result {
            Ok(stitched_ahead) => {
                cached.version = version;
                cached.stitched_ahead = stitched_ahead;
                self.add_consumer_timings(timings);
                self.refresh_statistics_after_growth(workspace, cached.graph.len());
                Ok(out)
            }
            Err(e) => {
                *guard = None;
                Err(e)
            }
        }
    }

    /// The events of a workspace's delivery to apply ([`to_apply`]), decoded (those decoded
    /// ahead taken as they are), each with its position.
    async fn decode_todo(
        &self,
        workspace: &str,
        events: &[&meridian_proto::bus::v1::EventAccepted],
        ahead: Vec<Option<Option<crate::accepted::Decoded>>>,
    ) -> Result<Vec<(usize, crate::accepted::Decoded)>, IdentityError> {
        let decoded = crate::accepted::decode_batch(self, workspace, events, ahead).await?;
        Ok(to_apply(events.iter().copied(), decoded))
    }

    /// The graph pass and the store write of [`IdentityRoom::apply_accepted_batch`]; while
    /// the store write runs, the next delivery of the workspace is stitched ahead if its
    /// events were decoded ahead ([`IdentityRoom::stitch_ahead`]). Returns the token of
    /// the pass stitched ahead that `graph` now holds.
    #[allow(clippy::too_many_arguments)]
    async fn stitch_accepted(
        &self,
        tx: &mut Tx<'_>,
        workspace: &str,
        events: &[&meridian_proto::bus::v1::EventAccepted],
        stitching: Stitching,
        graph: &mut Graph,
        out: &mut [AppliedEvent],
        timings: &mut ConsumerTimings,
    ) -> Result<Option<u64>, IdentityError> {
        let started = Instant::now();
        let pass = match stitching {
            Stitching::Ahead(stitched) => {
                timings.prepared_events = events.len() as u64;
                timings.stitched_events = events.len() as u64;
                stitched.pass
            }
            Stitching::Decoded(todo) => {
                let mut pass = GraphPass::default();
                for (i, decoded) in todo {
                    pass.observe(graph, i, events[i], decoded);
                }
                pass
            }
        };
        let GraphPass {
            changes,
            applied,
            sealed,
            mut trait_payloads,
            mut activities,
        } = pass;
        for (i, a) in applied {
            out[i] = a;
        }
        // Rows follow their anchor to the profile it ended the batch in (a later event of
        // the batch may have merged its profile into another).
        for p in &mut trait_payloads {
            p.profile = graph.profile_of(&p.anchor).unwrap_or(p.profile);
        }
        for a in &mut activities {
            a.profile = graph.profile_of(&a.anchor).unwrap_or(a.profile);
        }
        // Activity below a stage the profile already reached adds nothing: orders always
        // count; a stage counts once per profile, when above the stored one.
        // A profile born in this delivery has no stored stage to read.
        let born: HashSet<ProfileId> = changes.created_profiles.iter().map(|c| c.0).collect();
        let staged: Vec<ProfileId> = activities
            .iter()
            .filter(|a| a.activity.order.is_none() && !born.contains(&a.profile))
            .map(|a| a.profile)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        timings.graph_micros += micros(started);
        let started = Instant::now();
        let mut reached = if staged.is_empty() {
            HashMap::new()
        } else {
            self.inner.store.stages_in(tx, workspace, &staged).await?
        };
        timings.store_micros += micros(started);
        let started = Instant::now();
        activities.retain(|a| {
            let at = reached
                .entry(a.profile)
                .or_insert(crate::computed::AiplStage::None);
            if a.activity.order.is_some() {
                *at = (*at).max(crate::computed::AiplStage::Purchase);
                return true;
            }
            if *at < a.activity.stage {
                *at = a.activity.stage;
                return true;
            }
            false
        });
        let mut draft = Draft::new(changes);
        draft.sealed = sealed;
        draft.trait_payloads = trait_payloads;
        draft.activity = activities;
        let batch = self.assemble(workspace, graph, draft)?;
        timings.graph_micros += micros(started);
        // The consumer waits on the database from here: the next delivery is prepared now,
        // and stitched as soon as it is.
        self.inner.look_ahead.start(self);
        let started = Instant::now();
        let write =
            self.inner
                .store
                .apply_in(tx, workspace, &batch, &self.inner.profile_rules.aipl);
        let write = async { (write.await, Instant::now()) };
        let ((written, written_at), stitched_ahead) =
            tokio::join!(write, self.stitch_ahead(workspace, graph));
        self.inner.look_ahead.stop();
        timings.store_micros += micros(started);
        timings.stitch_wait_micros += micros(written_at);
        written.map(|()| stitched_ahead)
    }

    /// Stitches the next delivery of `workspace` ahead, on `graph` as the current delivery
    /// left it, if every event the bus named for it was decoded ahead (waiting for that
    /// preparing); keeps the pass for that delivery ([`crate::look_ahead::StitchedAhead`])
    /// and returns its token. The pass is what the delivery's own would be: the same
    /// events, decoded the same way, through the same graph, in the same order. If the
    /// current delivery does not commit, or the next one is not exactly these events,
    /// the graph is reloaded instead.
    async fn stitch_ahead(&self, workspace: &str, graph: &mut Graph) -> Option<u64> {
        let prepared = self.inner.look_ahead.take_complete(workspace).await?;
        let crate::look_ahead::PreparedEvents {
            named,
            forget_generation,
            blocked,
            mut events,
        } = prepared;
        let mut payloads = Vec::with_capacity(named.len());
        let mut decoded = Vec::with_capacity(named.len());
        for id in &named {
            // Every id named is there (`take_complete`): the graph is not touched before.
            let (payload, d) = events.remove(id)?;
            payloads.push(payload);
            decoded.push(d);
        }
        let mut pass = GraphPass::default();
        for (n, (i, d)) in to_apply(payloads.iter(), decoded).into_iter().enumerate() {
            pass.observe(graph, i, &payloads[i], d);
            if n % STITCHED_AHEAD_BETWEEN_YIELDS == STITCHED_AHEAD_BETWEEN_YIELDS - 1 {
                tokio::task::yield_now().await;
            }
        }
        let token = NEXT_STITCH_TOKEN.fetch_add(1, Ordering::Relaxed);
        self.inner.look_ahead.keep_stitched(StitchedAhead {
            workspace: workspace.to_owned(),
            token,
            forget_generation,
            blocked,
            outbox_ids: named,
            payloads,
            pass,
        });
        Some(token)
    }

    // ---- reads ----------------------------------------------------------------------------

    /// Follows merges to the live profile.
    async fn resolve(&self, workspace: &str, id: ProfileId) -> Result<ProfileRow, IdentityError> {
        let mut id = id;
        for _ in 0..64 {
            let row = self
                .inner
                .store
                .profile(workspace, id)
                .await?
                .ok_or(IdentityError::ProfileNotFound)?;
            match row.merged_into {
                Some(next) if next != id => id = next,
                _ => return Ok(row),
            }
        }
        Err(IdentityError::Corrupt(
            "profile merge chain too long".into(),
        ))
    }

    async fn open(
        &self,
        workspace: &str,
        rows: Vec<IdentifierRow>,
    ) -> Result<Vec<IdentifierView>, IdentityError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut value = Zeroizing::new(String::new());
            if let Some(sealed) = &row.sealed {
                match self
                    .inner
                    .vault
                    .open(
                        workspace,
                        &sealed.subject,
                        &sealed.record,
                        &sealed.field,
                        &sealed.bytes,
                    )
                    .await
                {
                    Ok(plain) => {
                        // Ingest's copies of storefront ids may hold `source ‖ 0x00 ‖ id`.
                        value = Zeroizing::new(
                            String::from_utf8_lossy(&plain).replacen('\u{0}', ":", 1),
                        );
                    }
                    // Crypto-shredded: the value is gone for good.
                    Err(VaultError::SubjectForgotten | VaultError::NoSubjectKey) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            out.push(IdentifierView {
                key: row.state.key,
                value,
                source: row.source,
                first_seen: row.state.first_seen,
            });
        }
        Ok(out)
    }

    /// A profile's traits: its identify payloads opened and merged.
    async fn traits(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<TraitsView, IdentityError> {
        let rows = self
            .inner
            .store
            .trait_payloads_of(workspace, profile)
            .await?;
        let mut payloads = Vec::with_capacity(rows.len());
        for row in rows {
            let plain = match self
                .inner
                .vault
                .open(
                    workspace,
                    &row.sealed_subject,
                    &row.event_id,
                    crate::accepted::TRAITS_FIELD,
                    &row.sealed_traits,
                )
                .await
            {
                Ok(plain) => plain,
                Err(VaultError::SubjectForgotten | VaultError::NoSubjectKey) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(traits) = parse_traits(&plain) {
                payloads.push(TraitPayload {
                    event_id: row.event_id,
                    source: row.source,
                    observed_micros: row.observed_micros,
                    traits,
                });
            }
        }
        Ok(TraitsView(merge_traits(
            &self.inner.profile_rules.traits,
            payloads,
        )))
    }

    /// A profile (following merges) with its identifiers and traits opened.
    pub async fn profile(
        &self,
        workspace: &str,
        id: ProfileId,
    ) -> Result<ProfileView, IdentityError> {
        let row = self.resolve(workspace, id).await?;
        let rows = self
            .inner
            .store
            .identifiers_of(workspace, row.profile)
            .await?;
        if rows.is_empty() {
            return Err(IdentityError::ProfileNotFound);
        }
        Ok(ProfileView {
            identifiers: self.open(workspace, rows).await?,
            traits: self.traits(workspace, row.profile).await?,
            computed: self.inner.store.computed_of(workspace, row.profile).await?,
            profile: row,
        })
    }

    /// The profile holding an identifier.
    pub async fn lookup(
        &self,
        workspace: &str,
        identifier: &RawIdentifier,
    ) -> Result<ProfileView, IdentityError> {
        let key = self.key_of(workspace, identifier).await?;
        let row = self
            .inner
            .store
            .identifier(workspace, &key)
            .await?
            .ok_or(IdentityError::ProfileNotFound)?;
        self.profile(workspace, row.state.profile).await
    }

    /// The profile of a subject (for access requests and the erasure saga): named by
    /// profile id, raw identifiers or blind indexes; the first identifier that resolves
    /// names it. `None` when nothing is known.
    pub async fn subject_profile(
        &self,
        workspace: &str,
        subject: &SubjectRef,
    ) -> Result<Option<ProfileView>, IdentityError> {
        let candidates: Vec<ProfileId> = match subject {
            SubjectRef::Profile(id) => vec![*id],
            SubjectRef::Identifiers(raws) => {
                let mut out = Vec::new();
                for raw in raws {
                    let Ok(key) = self.key_of(workspace, raw).await else {
                        continue;
                    };
                    if let Some(row) = self.inner.store.identifier(workspace, &key).await? {
                        out.push(row.state.profile);
                    }
                }
                out
            }
            SubjectRef::BlindIndexes(indexes) => {
                let mut out = Vec::new();
                for index in indexes {
                    for row in self
                        .inner
                        .store
                        .identifiers_by_index(workspace, index)
                        .await?
                    {
                        out.push(row.state.profile);
                    }
                }
                out
            }
        };
        for id in candidates {
            match self.profile(workspace, id).await {
                Ok(view) => return Ok(Some(view)),
                Err(IdentityError::ProfileNotFound) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Erases a profile: deletes its identifiers (nodes, edges, conflicts, sealed copies),
    /// trait payloads, activity, computed traits and profile rows, in one transaction with
    /// a `ProfileChanged` for it. Returns what the saga must then forget in the vault.
    /// Idempotent: a profile already erased (or unknown) returns an empty receipt.
    pub async fn erase_profile(
        &self,
        workspace: &str,
        profile: ProfileId,
    ) -> Result<ErasedProfile, IdentityError> {
        let row = match self.resolve(workspace, profile).await {
            Ok(row) => row,
            Err(IdentityError::ProfileNotFound) => return Ok(ErasedProfile::default()),
            Err(e) => return Err(e),
        };
        let live = row.profile;
        let rows = self.inner.store.identifiers_of(workspace, live).await?;
        let payloads = self.inner.store.trait_payloads_of(workspace, live).await?;
        let mut subjects: BTreeSet<String> = rows
            .iter()
            .filter_map(|r| r.sealed.as_ref().map(|s| s.subject.clone()))
            .collect();
        subjects.extend(payloads.into_iter().map(|p| p.sealed_subject));
        let keys: Vec<NodeKey> = rows.iter().map(|r| r.state.key).collect();
        let mut deleted = vec![live];
        if profile != live {
            deleted.push(profile);
        }
        let at = Utc::now();
        self.write(workspace, |graph| {
            let mut changes = Changes::default();
            for key in &keys {
                graph.remove(key, at, &mut changes);
            }
            let mut draft = Draft::new(changes);
            draft.deleted_profiles = deleted.clone();
            ((), draft, HashMap::new())
        })
        .await?;
        Ok(ErasedProfile {
            profile_ids: deleted,
            identifiers: keys,
            vault_subjects: subjects.into_iter().collect(),
        })
    }

    /// A page of a profile's events, from the configured [`ProfileEventSource`].
    pub async fn profile_events(
        &self,
        workspace: &str,
        id: ProfileId,
        page_size: u32,
        page_token: &str,
    ) -> Result<ProfileEventPage, IdentityError> {
        let page_size = crate::events::page_size(page_size)?;
        let source = self
            .inner
            .event_source
            .as_ref()
            .ok_or(IdentityError::NotConfigured("the profile event source"))?;
        let row = self.resolve(workspace, id).await?;
        let rows = self
            .inner
            .store
            .identifiers_of(workspace, row.profile)
            .await?;
        if rows.is_empty() {
            return Err(IdentityError::ProfileNotFound);
        }
        let anchors: Vec<BlindIndex> = rows.iter().map(|r| r.state.key.index).collect();
        source
            .events(workspace, &anchors, page_size, page_token)
            .await
    }

    /// The merge tree, applied links and refused links of a profile.
    pub async fn explain(
        &self,
        workspace: &str,
        id: ProfileId,
    ) -> Result<Explanation, IdentityError> {
        let profile = self.profile(workspace, id).await?;
        let pid = profile.profile.profile;
        let edges = self.inner.store.edges_of(workspace, pid).await?;
        let conflicts = self.inner.store.conflicts_of(workspace, pid).await?;
        let members: Vec<NodeKey> = profile.identifiers.iter().map(|i| i.key).collect();
        let trees = merge_tree(&members, &edges);
        Ok(Explanation {
            profile,
            edges,
            trees,
            conflicts,
        })
    }

    /// The profile of an identifier key in the cached graph of a workspace (for benchmarks
    /// and tests; `None` when the graph is not loaded).
    pub async fn cached_profile_of(&self, workspace: &str, key: &NodeKey) -> Option<ProfileId> {
        let slot = self.slot(workspace);
        let guard = slot.lock().await;
        guard
            .as_ref()
            .filter(|g| !g.holds_unstored())
            .and_then(|g| g.graph.profile_of(key))
    }

    /// Graph keys of raw identifiers in a workspace (normalized and blind-indexed).
    pub async fn keys_of(
        &self,
        workspace: &str,
        identifiers: &[RawIdentifier],
    ) -> Result<Vec<Option<NodeKey>>, IdentityError> {
        let indexer = self.inner.vault.blind_indexer(workspace).await?;
        Ok(identifiers
            .iter()
            .map(|raw| match intake(&self.inner.rules, &indexer, raw) {
                Ok(Intake::Key(k, _)) => Some(k),
                _ => None,
            })
            .collect())
    }

    /// Drops the cached graph of a workspace (the next write reloads it from the store).
    pub fn evict(&self, workspace: &str) {
        self.inner
            .graphs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(workspace);
    }
}

/// Of a delivery's events and what decoding made of each, those to apply, with their
/// positions: an event id seen before in the delivery applies once; an erased subject's
/// event (decoded as `None`) is skipped, not kept. One rule for the delivery decoded in
/// place and the one stitched ahead.
fn to_apply<'a>(
    events: impl Iterator<Item = &'a meridian_proto::bus::v1::EventAccepted>,
    decoded: impl IntoIterator<Item = Option<crate::accepted::Decoded>>,
) -> Vec<(usize, crate::accepted::Decoded)> {
    let mut seen: HashSet<&str> = HashSet::with_capacity(events.size_hint().0);
    events
        .zip(decoded)
        .enumerate()
        .filter_map(|(i, (e, d))| seen.insert(e.event_id.as_str()).then_some((i, d?)))
        .collect()
}

/// Drops a cached graph that holds what is not stored ([`CachedGraph::holds_unstored`]):
/// a write must start from what is stored.
fn forget_unstored(cached: &mut Option<CachedGraph>) {
    if cached.as_ref().is_some_and(CachedGraph::holds_unstored) {
        *cached = None;
    }
}

/// Intake and the graph for a batch of observations: the report, the draft, and the
/// normalized values of identifiers new to the graph (to seal).
fn draft_ingest(
    rules: &CompiledRules,
    indexer: &meridian_vault::BlindIndexer,
    graph: &mut Graph,
    observations: &[IdentifierObservation],
) -> (IngestReport, Draft, HashMap<NodeKey, Normalized>) {
    let mut changes = Changes::default();
    let mut report = IngestReport::default();
    let mut values: HashMap<NodeKey, Normalized> = HashMap::new();
    for obs in observations {
        let p = prepare(rules, indexer, obs);
        report.observations += 1;
        report.invalid += p.invalid;
        report.identifiers += p.normalized.len() as u64;
        for (key, n) in p.normalized {
            if graph.profile_of(&key).is_none() {
                values.entry(key).or_insert(n);
            }
        }
        let out = graph.observe(&p.observation, &mut changes);
        report.links += out.links;
        report.conflicts += out.conflicts;
    }
    report.identifiers_written = changes.nodes.len() as u64;
    (report, Draft::new(changes), values)
}

/// The `ProfileChanged` events of a batch: one per live profile it changed, naming the
/// profiles merged into it and split off it.
fn profile_changed_events(
    workspace: &str,
    graph: &Graph,
    changes: &Changes,
    batch: &ChangeBatch,
) -> Result<Vec<OutboxEvent>, IdentityError> {
    #[derive(Default)]
    struct Entry {
        merged: BTreeSet<ProfileId>,
        split: BTreeSet<ProfileId>,
        changed: BTreeSet<&'static str>,
    }
    // Where each absorbed profile ended up (merges chain within a batch).
    let into: HashMap<ProfileId, ProfileId> = changes
        .merged_profiles
        .iter()
        .map(|(a, i, _)| (*a, *i))
        .collect();
    let live = |mut p: ProfileId| {
        for _ in 0..into.len() + 1 {
            match into.get(&p) {
                Some(next) => p = *next,
                None => break,
            }
        }
        p
    };
    let mut entries: BTreeMap<ProfileId, Entry> = BTreeMap::new();
    for p in &batch.touched_profiles {
        entries
            .entry(live(*p))
            .or_default()
            .changed
            .insert("identifiers");
    }
    for (absorbed, _, _) in &batch.merged_profiles {
        let e = entries.entry(live(*absorbed)).or_default();
        e.merged.insert(*absorbed);
        e.changed
            .extend(["identifiers", "traits", "computed_traits"]);
    }
    for (old, parts) in &changes.split_profiles {
        let e = entries.entry(live(*old)).or_default();
        e.split.extend(parts.iter().map(|p| live(*p)));
        e.changed
            .extend(["identifiers", "traits", "computed_traits"]);
        for p in parts {
            entries.entry(live(*p)).or_default().changed.extend([
                "identifiers",
                "traits",
                "computed_traits",
            ]);
        }
    }
    for p in &changes.shrunk_profiles {
        entries.entry(live(*p)).or_default().changed.extend([
            "identifiers",
            "traits",
            "computed_traits",
        ]);
    }
    for p in &batch.trait_payloads {
        entries
            .entry(live(p.profile))
            .or_default()
            .changed
            .insert("traits");
    }
    for a in &batch.activity {
        entries
            .entry(live(a.profile))
            .or_default()
            .changed
            .insert("computed_traits");
    }
    for p in &batch.deleted_profiles {
        entries
            .entry(*p)
            .or_default()
            .changed
            .extend(["identifiers", "traits", "computed_traits"]);
    }
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let workspace_id: meridian_domain::WorkspaceId =
        workspace
            .parse()
            .map_err(|_| IdentityError::InvalidArgument {
                field: "workspace_id",
                reason: "not a workspace id",
            })?;
    let family: EventFamily = "profile"
        .parse()
        .map_err(|_| IdentityError::Corrupt("event family".into()))?;
    let at = prost_types::Timestamp {
        seconds: batch.at.timestamp(),
        nanos: i32::try_from(batch.at.timestamp_subsec_nanos()).unwrap_or(0),
    };
    // A profile erased or emptied in this batch still gets its event (its members left).
    let _ = graph;
    Ok(entries
        .into_iter()
        .map(|(profile, e)| {
            let payload = meridian_proto::bus::v1::ProfileChanged {
                workspace_id: workspace.to_owned(),
                profile_id: profile.to_string(),
                merged_profile_ids: e.merged.iter().map(ToString::to_string).collect(),
                split_profile_ids: e.split.iter().map(ToString::to_string).collect(),
                changed: e.changed.iter().map(|c| (*c).to_owned()).collect(),
                changed_at: Some(at),
            };
            OutboxEvent::new(
                workspace_id.clone(),
                family.clone(),
                profile.to_string(),
                payload.encode_to_vec(),
            )
        })
        .collect())
}
