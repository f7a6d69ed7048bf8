//! [`IdentityRoom`]: the identity graph behind a store and the vault.
//!
//! Writes ([`IdentityRoom::ingest`], [`IdentityRoom::remove_identifier`]) go through the
//! in-memory graph of the workspace (loaded from the store on first use) and persist each
//! batch's changes in one transaction. Reads (profile, lookup, explain) go to the store, so
//! any replica answers them. One writer per workspace is assumed (the bus partitions
//! observations by workspace); if a write fails, the cached graph is dropped and reloaded.
//!
//! Sealed copies: each new identifier is sealed under the vault subject named by the profile
//! id it first joined (`sealed_subject`); erasing a profile means forgetting every subject
//! its identifiers name, and removing the identifiers ([`IdentityRoom::remove_identifier`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use meridian_vault::{SubjectKey, Vault, VaultError};
use zeroize::Zeroizing;

use crate::error::IdentityError;
use crate::explain::{MergeTree, merge_tree};
use crate::graph::{Changes, Conflict, Edge, Graph, ProfileId};
use crate::identifier::{
    CompiledRules, IdentifierObservation, Intake, NodeKey, Normalized, RawIdentifier, intake,
    prepare,
};
use crate::store::{ChangeBatch, IdentifierRow, IdentityStore, ProfileRow, SealedValue};

/// Data keys loaded or created at once while sealing a batch.
const KEY_LOAD_CONCURRENCY: usize = 32;

/// The field name sealed values are bound to.
const SEALED_FIELD: &str = "value";

/// The record id a sealed identifier is bound to (type and blind index).
fn record_id(key: &NodeKey) -> String {
    format!("identity:{}:{}", key.kind.code(), key.index.to_hex())
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

/// A profile and its identifiers.
#[derive(Debug, Clone)]
pub struct ProfileView {
    pub profile: ProfileRow,
    pub identifiers: Vec<IdentifierView>,
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

type GraphSlot = Arc<tokio::sync::Mutex<Option<Graph>>>;

struct Inner {
    store: Arc<dyn IdentityStore>,
    vault: Arc<Vault>,
    rules: CompiledRules,
    graphs: Mutex<HashMap<String, GraphSlot>>,
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

impl IdentityRoom {
    /// A room over a store (see [`crate::identity_store`]), the vault and validated rules.
    pub fn new(store: Arc<dyn IdentityStore>, vault: Arc<Vault>, rules: CompiledRules) -> Self {
        IdentityRoom {
            inner: Arc::new(Inner {
                store,
                vault,
                rules,
                graphs: Mutex::new(HashMap::new()),
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

    pub fn rules(&self) -> &CompiledRules {
        &self.inner.rules
    }

    fn slot(&self, workspace: &str) -> GraphSlot {
        let mut graphs = self.inner.graphs.lock().unwrap_or_else(|e| e.into_inner());
        graphs
            .entry(workspace.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(None)))
            .clone()
    }

    async fn load(&self, workspace: &str) -> Result<Graph, IdentityError> {
        let (nodes, edges) = self.inner.store.load_graph(workspace).await?;
        let mut graph = Graph::new(self.inner.rules.clone());
        for n in nodes {
            graph.restore_node(n);
        }
        for e in edges {
            graph.restore_edge(e);
        }
        Ok(graph)
    }

    /// Runs `f` on the workspace's graph and persists what it changed; on a failed write the
    /// cached graph is dropped (the next call reloads it from the store).
    async fn write<T>(
        &self,
        workspace: &str,
        new_values: impl FnOnce(&mut Graph, &mut Changes) -> (T, HashMap<NodeKey, Normalized>),
    ) -> Result<(T, Timings), IdentityError> {
        let slot = self.slot(workspace);
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(self.load(workspace).await?);
        }
        let Some(graph) = guard.as_mut() else {
            return Err(IdentityError::Corrupt("graph not loaded".into()));
        };
        let mut timings = Timings::default();
        let started = Instant::now();
        let mut changes = Changes::default();
        let (out, values) = new_values(graph, &mut changes);
        timings.graph_micros = micros(started);
        let started = Instant::now();
        let batch = self.batch(workspace, graph, &changes, values).await;
        timings.seal_micros = micros(started);
        let started = Instant::now();
        let result = match batch {
            Ok(batch) => self.inner.store.apply(workspace, &batch).await,
            Err(e) => Err(e),
        };
        timings.store_micros = micros(started);
        if let Err(e) = result {
            *guard = None;
            return Err(e);
        }
        Ok((out, timings))
    }

    /// Applies identifier observations (one batch, one transaction).
    pub async fn ingest(
        &self,
        workspace: &str,
        observations: &[IdentifierObservation],
    ) -> Result<IngestReport, IdentityError> {
        let indexer = self.inner.vault.blind_indexer(workspace).await?;
        let rules = &self.inner.rules;
        self.write(workspace, |graph, changes| {
            let mut report = IngestReport::default();
            let mut values: HashMap<NodeKey, Normalized> = HashMap::new();
            for obs in observations {
                let p = prepare(rules, &indexer, obs);
                report.observations += 1;
                report.invalid += p.invalid;
                report.identifiers += p.normalized.len() as u64;
                for (key, n) in p.normalized {
                    if graph.profile_of(&key).is_none() {
                        values.entry(key).or_insert(n);
                    }
                }
                let out = graph.observe(&p.observation, changes);
                report.links += out.links;
                report.conflicts += out.conflicts;
            }
            report.identifiers_written = changes.nodes.len() as u64;
            (report, values)
        })
        .await
        .map(|(mut report, timings)| {
            report.timings = timings;
            report
        })
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
        self.write(workspace, |graph, changes| {
            let parts = graph.remove(&key, at, changes).unwrap_or_default();
            (parts, HashMap::new())
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

    /// Turns graph changes into a store batch, sealing new identifiers.
    async fn batch(
        &self,
        workspace: &str,
        graph: &Graph,
        changes: &Changes,
        mut values: HashMap<NodeKey, Normalized>,
    ) -> Result<ChangeBatch, IdentityError> {
        let now = Utc::now();
        // Data keys of the profiles receiving new identifiers, loaded (or created) with
        // bounded concurrency: creating a key is a store round trip with its own commit.
        let mut wanted: Vec<ProfileId> = values
            .keys()
            .filter_map(|k| graph.profile_of(k))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        wanted.sort_unstable();
        let vault = &self.inner.vault;
        let loaded: Vec<Result<(ProfileId, SubjectKey), VaultError>> =
            futures::stream::iter(wanted)
                .map(|p| async move {
                    vault
                        .subject_key(workspace, &p.to_string())
                        .await
                        .map(|k| (p, k))
                })
                .buffer_unordered(KEY_LOAD_CONCURRENCY)
                .collect()
                .await;
        let mut keys: HashMap<ProfileId, SubjectKey> = HashMap::with_capacity(loaded.len());
        for entry in loaded {
            let (p, k) = entry?;
            keys.insert(p, k);
        }
        let mut identifiers = Vec::with_capacity(changes.nodes.len());
        let mut touched: HashSet<ProfileId> = HashSet::new();
        for key in &changes.nodes {
            let Some(state) = graph.node_state(key) else {
                continue;
            };
            touched.insert(state.profile);
            let (source, sealed) = match values.remove(key) {
                Some(n) => {
                    let subject = keys.get(&state.profile).ok_or_else(|| {
                        IdentityError::Corrupt("no data key loaded for a new identifier".into())
                    })?;
                    let bytes = subject.seal(
                        &record_id(key),
                        SEALED_FIELD,
                        n.display_value().as_bytes(),
                    )?;
                    (
                        n.source.clone(),
                        Some(SealedValue {
                            subject: state.profile.to_string(),
                            bytes,
                        }),
                    )
                }
                None => (String::new(), None),
            };
            identifiers.push(IdentifierRow {
                state,
                source,
                sealed,
            });
        }
        // Profiles born and absorbed within this batch were never visible: skip them.
        let absorbed: HashSet<ProfileId> = changes.merged_profiles.iter().map(|m| m.0).collect();
        let created: HashSet<ProfileId> = changes.created_profiles.iter().map(|c| c.0).collect();
        Ok(ChangeBatch {
            identifiers,
            removed_identifiers: changes.removed_nodes.clone(),
            new_edges: changes.new_edges.clone(),
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
                .copied()
                .collect(),
            touched_profiles: touched.into_iter().collect(),
            at: now,
        })
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
                        &record_id(&row.state.key),
                        SEALED_FIELD,
                        &sealed.bytes,
                    )
                    .await
                {
                    Ok(plain) => {
                        value = Zeroizing::new(String::from_utf8_lossy(&plain).into_owned());
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

    /// A profile (following merges) with its identifiers opened.
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
        guard.as_ref().and_then(|g| g.profile_of(key))
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
