//! The identity graph of one workspace: incremental union-find over edges, with merge
//! protection, per-profile limits, shared-value detection and unmerge. No I/O: every
//! mutation also records what changed in [`Changes`], which the store persists.
//!
//! Union-find here is union by size with eager relabelling: every node points straight at
//! its component's representative, and a union relabels the smaller side (each node is
//! relabelled O(log n) times). Removal recomputes the affected component from its edges.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use meridian_vault::BlindIndex;
use uuid::Uuid;

use crate::identifier::{CompiledRules, IdentifierType, NodeKey, TYPE_COUNT};

/// A profile: one connected component of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileId(pub Uuid);

impl ProfileId {
    pub fn generate() -> Self {
        ProfileId(Uuid::now_v7())
    }
}

impl std::fmt::Display for ProfileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for ProfileId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(ProfileId)
    }
}

/// Why two identifiers were linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkRule {
    /// Both identifiers were carried by the same event.
    SameEvent,
    /// An alias event said the two are the same subject.
    Alias,
}

impl LinkRule {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkRule::SameEvent => "same_event",
            LinkRule::Alias => "alias",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "same_event" => Some(LinkRule::SameEvent),
            "alias" => Some(LinkRule::Alias),
            _ => None,
        }
    }
}

/// Identifiers seen together: the graph's input.
#[derive(Debug, Clone)]
pub struct Observation {
    pub event_id: String,
    pub at: DateTime<Utc>,
    pub rule: LinkRule,
    /// Keys of the usable identifiers (blocked values already removed).
    pub identifiers: Vec<NodeKey>,
    /// Keys of identifiers of the event that were blocked outright, to record the refusal.
    pub blocked: Vec<NodeKey>,
}

/// An applied link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Order of application within the workspace.
    pub seq: u64,
    pub from: NodeKey,
    pub to: NodeKey,
    pub rule: LinkRule,
    pub event_id: String,
    pub at: DateTime<Utc>,
}

impl Edge {
    /// A sentence saying why the link was made (names types, never values).
    pub fn reason(&self) -> String {
        match self.rule {
            LinkRule::SameEvent => format!(
                "{} and {} were carried by the same event {} (rule same_event)",
                self.from.kind.name(),
                self.to.kind.name(),
                self.event_id
            ),
            LinkRule::Alias => format!(
                "event {} aliased the {} to the {} (rule alias)",
                self.event_id,
                self.from.kind.name(),
                self.to.kind.name()
            ),
        }
    }
}

/// Why a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictReason {
    /// Merge protection: both sides hold a user id, and they differ.
    DifferentUserIds,
    /// The merged profile would hold more identifiers of this type than allowed.
    LimitExceeded(IdentifierType),
    /// The value is blocked outright.
    BlockedValue,
    /// The value was seen with too many distinct user ids and is shared.
    SharedValue,
}

impl ConflictReason {
    pub fn code(self) -> &'static str {
        match self {
            ConflictReason::DifferentUserIds => "different_user_ids",
            ConflictReason::LimitExceeded(_) => "limit_exceeded",
            ConflictReason::BlockedValue => "blocked_value",
            ConflictReason::SharedValue => "shared_value",
        }
    }

    /// The stored form (`limit_exceeded:email`).
    pub fn to_stored(self) -> String {
        match self {
            ConflictReason::LimitExceeded(t) => format!("limit_exceeded:{}", t.name()),
            other => other.code().to_owned(),
        }
    }

    pub fn from_stored(s: &str) -> Option<Self> {
        match s {
            "different_user_ids" => Some(ConflictReason::DifferentUserIds),
            "blocked_value" => Some(ConflictReason::BlockedValue),
            "shared_value" => Some(ConflictReason::SharedValue),
            other => {
                let t = other.strip_prefix("limit_exceeded:")?;
                IdentifierType::ALL
                    .into_iter()
                    .find(|k| k.name() == t)
                    .map(ConflictReason::LimitExceeded)
            }
        }
    }

    pub fn describe(self) -> String {
        match self {
            ConflictReason::DifferentUserIds => {
                "merge protection: the two profiles hold different user ids".into()
            }
            ConflictReason::LimitExceeded(t) => format!(
                "the merged profile would exceed the maximum number of {} identifiers",
                t.name()
            ),
            ConflictReason::BlockedValue => "the value is blocked by configuration".into(),
            ConflictReason::SharedValue => {
                "the value was seen with more distinct user ids than allowed (shared)".into()
            }
        }
    }
}

/// A refused link, recorded and reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub from: NodeKey,
    pub to: NodeKey,
    pub rule: LinkRule,
    pub event_id: String,
    pub at: DateTime<Utc>,
    pub reason: ConflictReason,
}

/// A node's state, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub key: NodeKey,
    pub profile: ProfileId,
    pub first_seen: DateTime<Utc>,
    /// Detached for good: seen with too many user ids.
    pub shared: bool,
    /// Distinct user ids (blind indexes) the value was seen with, up to the limit + 1.
    pub seen_user_ids: Vec<BlindIndex>,
}

/// What a mutation changed, for the store. Accumulates across calls; drain with
/// [`Changes::clear`] after persisting.
#[derive(Debug, Default)]
pub struct Changes {
    /// Nodes created or whose profile, shared flag or seen user ids changed.
    pub nodes: HashSet<NodeKey>,
    /// The nodes of `nodes` that were created by these changes (not stored before them).
    pub created_nodes: HashSet<NodeKey>,
    pub new_edges: Vec<Edge>,
    pub removed_edges: Vec<u64>,
    pub removed_nodes: Vec<NodeKey>,
    pub conflicts: Vec<Conflict>,
    /// Profiles created (with their creation time).
    pub created_profiles: Vec<(ProfileId, DateTime<Utc>)>,
    /// Profiles absorbed by a merge: (absorbed, into, when).
    pub merged_profiles: Vec<(ProfileId, ProfileId, DateTime<Utc>)>,
    /// Profiles split by a removal: (the profile that kept its id, the new parts).
    pub split_profiles: Vec<(ProfileId, Vec<ProfileId>)>,
    /// Profiles that lost an identifier (removal, shared value detached).
    pub shrunk_profiles: Vec<ProfileId>,
    /// Links applied (edges that joined or reinforced a profile).
    pub links: u64,
}

impl Changes {
    pub fn clear(&mut self) {
        *self = Changes::default();
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.new_edges.is_empty()
            && self.removed_edges.is_empty()
            && self.removed_nodes.is_empty()
            && self.conflicts.is_empty()
            && self.created_profiles.is_empty()
            && self.merged_profiles.is_empty()
    }
}

/// What one observation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObserveOutcome {
    /// The profile of the event's anchor identifier, if any.
    pub profile: Option<ProfileId>,
    /// The event's anchor: its highest-priority usable identifier.
    pub anchor: Option<NodeKey>,
    pub links: u64,
    pub conflicts: u64,
}

type Ix = u32;

#[derive(Debug, Clone)]
struct Node {
    key: NodeKey,
    first_seen: DateTime<Utc>,
    shared: bool,
    live: bool,
    seen_user_ids: Vec<BlindIndex>,
    edges: Vec<u64>,
}

#[derive(Debug, Clone)]
struct Comp {
    profile: ProfileId,
    counts: [u32; TYPE_COUNT],
    members: Vec<Ix>,
    /// The member holding the component's user id (merge protection keeps it to one).
    user_id: Option<Ix>,
}

#[derive(Debug, Clone)]
struct StoredEdge {
    a: Ix,
    b: Ix,
    edge: Edge,
}

/// The identity graph of one workspace.
#[derive(Debug, Clone)]
pub struct Graph {
    rules: CompiledRules,
    nodes: Vec<Node>,
    by_key: HashMap<NodeKey, Ix>,
    /// Representative of each node's component.
    rep: Vec<Ix>,
    comps: HashMap<Ix, Comp>,
    by_profile: HashMap<ProfileId, Ix>,
    edges: HashMap<u64, StoredEdge>,
    pairs: HashSet<(Ix, Ix)>,
    next_seq: u64,
}

fn pair(a: Ix, b: Ix) -> (Ix, Ix) {
    if a <= b { (a, b) } else { (b, a) }
}

impl Graph {
    pub fn new(rules: CompiledRules) -> Self {
        Graph {
            rules,
            nodes: Vec::new(),
            by_key: HashMap::new(),
            rep: Vec::new(),
            comps: HashMap::new(),
            by_profile: HashMap::new(),
            edges: HashMap::new(),
            pairs: HashSet::new(),
            next_seq: 1,
        }
    }

    pub fn rules(&self) -> &CompiledRules {
        &self.rules
    }

    /// Live identifiers in the graph.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Number of profiles.
    pub fn profile_count(&self) -> usize {
        self.comps.len()
    }

    /// The profile holding an identifier.
    pub fn profile_of(&self, key: &NodeKey) -> Option<ProfileId> {
        let ix = *self.by_key.get(key)?;
        self.comps.get(&self.rep[ix as usize]).map(|c| c.profile)
    }

    /// The identifiers of a profile, in order of first sight.
    pub fn members(&self, profile: ProfileId) -> Vec<NodeKey> {
        let Some(root) = self.by_profile.get(&profile) else {
            return Vec::new();
        };
        let mut m: Vec<Ix> = self
            .comps
            .get(root)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        m.sort_unstable();
        m.into_iter()
            .map(|ix| self.nodes[ix as usize].key)
            .collect()
    }

    /// A node's state, for the store.
    pub fn node_state(&self, key: &NodeKey) -> Option<NodeState> {
        let ix = *self.by_key.get(key)?;
        let n = &self.nodes[ix as usize];
        Some(NodeState {
            key: n.key,
            profile: self.comps.get(&self.rep[ix as usize])?.profile,
            first_seen: n.first_seen,
            shared: n.shared,
            seen_user_ids: n.seen_user_ids.clone(),
        })
    }

    /// The applied edges of a profile, in order of application.
    pub fn edges_of(&self, profile: ProfileId) -> Vec<Edge> {
        let Some(root) = self.by_profile.get(&profile) else {
            return Vec::new();
        };
        let Some(comp) = self.comps.get(root) else {
            return Vec::new();
        };
        let mut seqs: Vec<u64> = comp
            .members
            .iter()
            .flat_map(|m| self.nodes[*m as usize].edges.iter().copied())
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.into_iter()
            .filter_map(|s| self.edges.get(&s).map(|e| e.edge.clone()))
            .collect()
    }

    // ---- restoring from the store -------------------------------------------------------

    /// Adds a stored node (before its edges). Nodes of one profile must share the profile id.
    pub fn restore_node(&mut self, state: NodeState) {
        if self.by_key.contains_key(&state.key) {
            return;
        }
        let ix = self.push_node(state.key, state.first_seen);
        let n = &mut self.nodes[ix as usize];
        n.shared = state.shared;
        n.seen_user_ids = state.seen_user_ids;
        match self.by_profile.get(&state.profile).copied() {
            Some(root) => {
                self.rep[ix as usize] = root;
                if let Some(c) = self.comps.get_mut(&root) {
                    c.members.push(ix);
                    c.counts[state.key.kind.slot()] += 1;
                    if state.key.kind == IdentifierType::UserId {
                        c.user_id = Some(ix);
                    }
                }
            }
            None => {
                self.new_comp(ix, state.profile);
            }
        }
    }

    /// Adds a stored edge between restored nodes (no rule checks: it was applied before).
    pub fn restore_edge(&mut self, edge: Edge) {
        let (Some(&a), Some(&b)) = (self.by_key.get(&edge.from), self.by_key.get(&edge.to)) else {
            return;
        };
        self.next_seq = self.next_seq.max(edge.seq + 1);
        self.pairs.insert(pair(a, b));
        self.nodes[a as usize].edges.push(edge.seq);
        self.nodes[b as usize].edges.push(edge.seq);
        self.edges.insert(edge.seq, StoredEdge { a, b, edge });
    }

    // ---- stitching ----------------------------------------------------------------------

    /// Applies one observation: creates unseen identifiers, tracks user ids per value (the
    /// shared-value rule), then links every identifier to the highest-priority one, refusing
    /// (and recording) links that break merge protection or a limit.
    pub fn observe(&mut self, obs: &Observation, changes: &mut Changes) -> ObserveOutcome {
        let mut out = ObserveOutcome::default();
        let mut ids: Vec<Ix> = Vec::with_capacity(obs.identifiers.len());
        for key in &obs.identifiers {
            let ix = self.get_or_create(*key, obs.at, changes);
            if !ids.contains(&ix) {
                ids.push(ix);
            }
        }
        self.track_user_ids(&ids, obs, changes, &mut out);
        ids.retain(|ix| !self.nodes[*ix as usize].shared);
        ids.sort_by_key(|ix| (self.rules.rank(self.nodes[*ix as usize].key.kind), *ix));
        let Some(&anchor) = ids.first() else {
            for b in &obs.blocked {
                self.refuse(*b, *b, obs, ConflictReason::BlockedValue, changes);
                out.conflicts += 1;
            }
            return out;
        };
        for b in &obs.blocked {
            let from = self.nodes[anchor as usize].key;
            self.refuse(from, *b, obs, ConflictReason::BlockedValue, changes);
            out.conflicts += 1;
        }
        for &other in &ids[1..] {
            match self.link(anchor, other, obs, changes) {
                Ok(true) => out.links += 1,
                Ok(false) => {}
                Err(_) => out.conflicts += 1,
            }
        }
        out.profile = self
            .comps
            .get(&self.rep[anchor as usize])
            .map(|c| c.profile);
        out.anchor = Some(self.nodes[anchor as usize].key);
        out
    }

    fn refuse(
        &mut self,
        from: NodeKey,
        to: NodeKey,
        obs: &Observation,
        reason: ConflictReason,
        changes: &mut Changes,
    ) {
        changes.conflicts.push(Conflict {
            from,
            to,
            rule: obs.rule,
            event_id: obs.event_id.clone(),
            at: obs.at,
            reason,
        });
    }

    fn track_user_ids(
        &mut self,
        ids: &[Ix],
        obs: &Observation,
        changes: &mut Changes,
        out: &mut ObserveOutcome,
    ) {
        let limit = self.rules.shared_value_max_user_ids();
        if limit == 0 {
            return;
        }
        let event_users: Vec<BlindIndex> = ids
            .iter()
            .map(|ix| &self.nodes[*ix as usize])
            .filter(|n| n.key.kind == IdentifierType::UserId)
            .map(|n| n.key.index)
            .collect();
        if event_users.is_empty() {
            return;
        }
        let cap = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        for &ix in ids {
            let node = &self.nodes[ix as usize];
            if node.key.kind == IdentifierType::UserId || node.shared {
                continue;
            }
            // The user ids this value is seen with: those on the event, and the one of the
            // profile it already belongs to.
            let own = self
                .comps
                .get(&self.rep[ix as usize])
                .and_then(|c| c.user_id)
                .map(|u| self.nodes[u as usize].key.index);
            let mut seen = node.seen_user_ids.clone();
            let before = seen.len();
            for u in own.iter().chain(event_users.iter()) {
                if seen.len() < cap && !seen.contains(u) {
                    seen.push(*u);
                }
            }
            if seen.len() == before {
                continue;
            }
            let key = node.key;
            let shared = seen.len() > limit as usize;
            self.nodes[ix as usize].seen_user_ids = seen;
            changes.nodes.insert(key);
            if shared {
                self.detach_shared(ix, obs.at, changes);
                let from = ids
                    .iter()
                    .map(|i| self.nodes[*i as usize].key)
                    .find(|k| k.kind == IdentifierType::UserId)
                    .unwrap_or(key);
                self.refuse(from, key, obs, ConflictReason::SharedValue, changes);
                out.conflicts += 1;
            }
        }
    }

    /// Marks a value shared: its edges are removed and its profile recomputed.
    fn detach_shared(&mut self, ix: Ix, at: DateTime<Utc>, changes: &mut Changes) {
        self.nodes[ix as usize].shared = true;
        changes.nodes.insert(self.nodes[ix as usize].key);
        self.cut(ix, at, changes, false);
    }

    fn get_or_create(&mut self, key: NodeKey, at: DateTime<Utc>, changes: &mut Changes) -> Ix {
        if let Some(&ix) = self.by_key.get(&key) {
            return ix;
        }
        let ix = self.push_node(key, at);
        let profile = ProfileId::generate();
        self.new_comp(ix, profile);
        changes.created_profiles.push((profile, at));
        changes.nodes.insert(key);
        changes.created_nodes.insert(key);
        ix
    }

    fn push_node(&mut self, key: NodeKey, at: DateTime<Utc>) -> Ix {
        let ix = Ix::try_from(self.nodes.len()).unwrap_or(Ix::MAX);
        self.nodes.push(Node {
            key,
            first_seen: at,
            shared: false,
            live: true,
            seen_user_ids: Vec::new(),
            edges: Vec::new(),
        });
        self.rep.push(ix);
        self.by_key.insert(key, ix);
        ix
    }

    fn new_comp(&mut self, ix: Ix, profile: ProfileId) {
        let mut counts = [0; TYPE_COUNT];
        let kind = self.nodes[ix as usize].key.kind;
        counts[kind.slot()] = 1;
        self.rep[ix as usize] = ix;
        self.comps.insert(
            ix,
            Comp {
                profile,
                counts,
                members: vec![ix],
                user_id: (kind == IdentifierType::UserId).then_some(ix),
            },
        );
        self.by_profile.insert(profile, ix);
    }

    /// Whether two components may merge.
    fn check_merge(&self, a: &Comp, b: &Comp) -> Result<(), ConflictReason> {
        if a.user_id.is_some() && b.user_id.is_some() {
            return Err(ConflictReason::DifferentUserIds);
        }
        for t in IdentifierType::ALL {
            let s = t.slot();
            if a.counts[s] + b.counts[s] > self.rules.max_per_profile(t) {
                return Err(ConflictReason::LimitExceeded(t));
            }
        }
        Ok(())
    }

    /// Links two nodes: `Ok(true)` when an edge was added, `Ok(false)` when they were
    /// already linked directly, `Err` when refused (and recorded).
    fn link(
        &mut self,
        a: Ix,
        b: Ix,
        obs: &Observation,
        changes: &mut Changes,
    ) -> Result<bool, ConflictReason> {
        if self.pairs.contains(&pair(a, b)) {
            return Ok(false);
        }
        let (ra, rb) = (self.rep[a as usize], self.rep[b as usize]);
        if ra != rb {
            let (Some(ca), Some(cb)) = (self.comps.get(&ra), self.comps.get(&rb)) else {
                return Ok(false);
            };
            if let Err(reason) = self.check_merge(ca, cb) {
                let (from, to) = (self.nodes[a as usize].key, self.nodes[b as usize].key);
                self.refuse(from, to, obs, reason, changes);
                return Err(reason);
            }
            self.union(ra, rb, obs.at, changes);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let edge = Edge {
            seq,
            from: self.nodes[a as usize].key,
            to: self.nodes[b as usize].key,
            rule: obs.rule,
            event_id: obs.event_id.clone(),
            at: obs.at,
        };
        self.pairs.insert(pair(a, b));
        self.nodes[a as usize].edges.push(seq);
        self.nodes[b as usize].edges.push(seq);
        changes.new_edges.push(edge.clone());
        changes.links += 1;
        self.edges.insert(seq, StoredEdge { a, b, edge });
        Ok(true)
    }

    /// Merges two components; the larger keeps its profile id (ties: the older profile).
    fn union(&mut self, ra: Ix, rb: Ix, at: DateTime<Utc>, changes: &mut Changes) {
        let (Some(ca), Some(cb)) = (self.comps.get(&ra), self.comps.get(&rb)) else {
            return;
        };
        let a_wins = match ca.members.len().cmp(&cb.members.len()) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => ca.profile <= cb.profile,
        };
        let (keep, gone) = if a_wins { (ra, rb) } else { (rb, ra) };
        let Some(absorbed) = self.comps.remove(&gone) else {
            return;
        };
        self.by_profile.remove(&absorbed.profile);
        for &m in &absorbed.members {
            self.rep[m as usize] = keep;
            changes.nodes.insert(self.nodes[m as usize].key);
        }
        if let Some(k) = self.comps.get_mut(&keep) {
            for s in 0..TYPE_COUNT {
                k.counts[s] += absorbed.counts[s];
            }
            k.members.extend_from_slice(&absorbed.members);
            k.user_id = k.user_id.or(absorbed.user_id);
            changes
                .merged_profiles
                .push((absorbed.profile, k.profile, at));
        }
    }

    // ---- unmerge ------------------------------------------------------------------------

    /// Removes an identifier (erasure, correction): its edges go, and its profile is
    /// recomputed from the remaining edges, splitting where it was the only bridge. Returns
    /// the profiles the former members now belong to (the first keeps the old id).
    pub fn remove(
        &mut self,
        key: &NodeKey,
        at: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Option<Vec<ProfileId>> {
        let ix = *self.by_key.get(key)?;
        if key.kind == IdentifierType::UserId {
            // The user id is gone: values of its profile no longer count it.
            let members = self
                .comps
                .get(&self.rep[ix as usize])
                .map(|c| c.members.clone())
                .unwrap_or_default();
            for m in members {
                let n = &mut self.nodes[m as usize];
                let before = n.seen_user_ids.len();
                n.seen_user_ids.retain(|u| *u != key.index);
                if n.seen_user_ids.len() != before {
                    changes.nodes.insert(n.key);
                }
            }
        }
        let parts = self.cut(ix, at, changes, true);
        self.by_key.remove(key);
        self.nodes[ix as usize].live = false;
        changes.nodes.remove(key);
        changes.created_nodes.remove(key);
        changes.removed_nodes.push(*key);
        Some(parts)
    }

    /// Removes a node's edges and recomputes its component. With `drop_node`, the node
    /// leaves the graph; otherwise it stays as a singleton profile.
    fn cut(
        &mut self,
        ix: Ix,
        at: DateTime<Utc>,
        changes: &mut Changes,
        drop_node: bool,
    ) -> Vec<ProfileId> {
        let seqs = std::mem::take(&mut self.nodes[ix as usize].edges);
        for seq in seqs {
            if let Some(e) = self.edges.remove(&seq) {
                let other = if e.a == ix { e.b } else { e.a };
                self.nodes[other as usize].edges.retain(|s| *s != seq);
                self.pairs.remove(&pair(e.a, e.b));
                changes.removed_edges.push(seq);
            }
        }
        let root = self.rep[ix as usize];
        let Some(comp) = self.comps.remove(&root) else {
            return Vec::new();
        };
        self.by_profile.remove(&comp.profile);
        changes.shrunk_profiles.push(comp.profile);
        let members: Vec<Ix> = comp.members.into_iter().filter(|m| *m != ix).collect();
        let mut parts = self.split(&members, comp.profile, at, changes);
        if !drop_node {
            let profile = ProfileId::generate();
            self.new_comp(ix, profile);
            changes.created_profiles.push((profile, at));
            changes.nodes.insert(self.nodes[ix as usize].key);
            parts.push(profile);
        }
        let new_parts: Vec<ProfileId> = parts
            .iter()
            .copied()
            .filter(|p| *p != comp.profile)
            .collect();
        if !new_parts.is_empty() {
            changes.split_profiles.push((comp.profile, new_parts));
        }
        parts
    }

    /// Rebuilds components over `members` from their live edges. The part holding the
    /// earliest-seen member keeps `old`; the others get new profile ids.
    fn split(
        &mut self,
        members: &[Ix],
        old: ProfileId,
        at: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Vec<ProfileId> {
        let set: HashSet<Ix> = members.iter().copied().collect();
        let mut seen: HashSet<Ix> = HashSet::new();
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        let mut parts: Vec<Vec<Ix>> = Vec::new();
        for &start in &sorted {
            if !seen.insert(start) {
                continue;
            }
            let mut part = vec![start];
            let mut queue = VecDeque::from([start]);
            while let Some(n) = queue.pop_front() {
                for seq in &self.nodes[n as usize].edges {
                    if let Some(e) = self.edges.get(seq) {
                        let o = if e.a == n { e.b } else { e.a };
                        if set.contains(&o) && seen.insert(o) {
                            part.push(o);
                            queue.push_back(o);
                        }
                    }
                }
            }
            parts.push(part);
        }
        let mut ids = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            let profile = if i == 0 { old } else { ProfileId::generate() };
            if i > 0 {
                changes.created_profiles.push((profile, at));
            }
            let root = part[0];
            let mut counts = [0; TYPE_COUNT];
            let mut user_id = None;
            for &m in &part {
                let kind = self.nodes[m as usize].key.kind;
                counts[kind.slot()] += 1;
                if kind == IdentifierType::UserId {
                    user_id = Some(m);
                }
                self.rep[m as usize] = root;
                if i > 0 {
                    changes.nodes.insert(self.nodes[m as usize].key);
                }
            }
            self.comps.insert(
                root,
                Comp {
                    profile,
                    counts,
                    members: part,
                    user_id,
                },
            );
            self.by_profile.insert(profile, root);
            ids.push(profile);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::{MergeTree, merge_tree};
    use crate::identifier::Rules;
    use IdentifierType::*;

    fn key(kind: IdentifierType, n: u8) -> NodeKey {
        let mut b = [0u8; 32];
        b[0] = kind as u8;
        b[1] = n;
        NodeKey {
            kind,
            index: BlindIndex(b),
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn obs(event: &str, s: i64, ids: &[NodeKey]) -> Observation {
        Observation {
            event_id: event.into(),
            at: t(s),
            rule: LinkRule::SameEvent,
            identifiers: ids.to_vec(),
            blocked: Vec::new(),
        }
    }

    fn graph() -> Graph {
        Graph::new(Rules::default().validate().unwrap())
    }

    #[test]
    fn identifiers_seen_together_join_one_profile_with_recorded_edges() {
        let mut g = graph();
        let mut ch = Changes::default();
        let (anon, email, dev) = (key(AnonymousId, 1), key(Email, 1), key(DeviceId, 1));
        g.observe(&obs("e1", 0, &[anon, email]), &mut ch);
        g.observe(&obs("e2", 5, &[dev, anon]), &mut ch);
        let p = g.profile_of(&anon).unwrap();
        assert_eq!(g.profile_of(&email), Some(p));
        assert_eq!(g.profile_of(&dev), Some(p));
        assert_eq!(g.profile_count(), 1);
        let edges = g.edges_of(p);
        assert_eq!(edges.len(), 2);
        // The higher-priority identifier anchors: email before anonymous id; device before anon.
        assert_eq!((edges[0].from, edges[0].to), (email, anon));
        assert_eq!((edges[1].from, edges[1].to), (dev, anon));
        assert_eq!(edges[1].event_id, "e2");
        assert_eq!(edges[1].at, t(5));
        assert_eq!(edges[1].rule, LinkRule::SameEvent);
        assert!(edges[0].reason().contains("same event e1"));
        assert_eq!(ch.links, 2);
        assert_eq!(ch.new_edges.len(), 2);
        assert_eq!(ch.created_nodes, HashSet::from([anon, email, dev]));
        // Seeing the same pair again adds nothing.
        let mut ch2 = Changes::default();
        let out = g.observe(&obs("e3", 9, &[anon, email]), &mut ch2);
        assert_eq!(out.links, 0);
        assert!(ch2.new_edges.is_empty());
        assert!(ch2.nodes.is_empty() && ch2.created_nodes.is_empty());
        // A known node relabelled by a merge is changed, not created.
        let mut ch3 = Changes::default();
        let (anon2, email2) = (key(AnonymousId, 2), key(Email, 2));
        g.observe(&obs("e4", 10, &[anon2, email2]), &mut ch3);
        let mut ch4 = Changes::default();
        g.observe(&obs("e5", 11, &[email2, dev]), &mut ch4);
        assert!(ch4.nodes.contains(&email2) && ch4.nodes.contains(&anon2));
        assert!(ch4.created_nodes.is_empty());
    }

    #[test]
    fn merge_protection_refuses_and_records_different_user_ids() {
        let mut g = graph();
        let mut ch = Changes::default();
        let (u1, u2, e1, e2) = (key(UserId, 1), key(UserId, 2), key(Email, 1), key(Email, 2));
        g.observe(&obs("a", 0, &[u1, e1]), &mut ch);
        g.observe(&obs("b", 1, &[u2, e2]), &mut ch);
        ch.clear();
        // An event carrying both emails would join two users: refused.
        let out = g.observe(&obs("c", 2, &[e1, e2]), &mut ch);
        assert_eq!(out.conflicts, 1);
        assert_ne!(g.profile_of(&e1), g.profile_of(&e2));
        assert_eq!(ch.conflicts.len(), 1);
        let c = &ch.conflicts[0];
        assert_eq!(c.reason, ConflictReason::DifferentUserIds);
        assert_eq!(c.event_id, "c");
        assert_eq!((c.from, c.to), (e1, e2));
        // And directly.
        ch.clear();
        g.observe(&obs("d", 3, &[u1, u2]), &mut ch);
        assert_eq!(ch.conflicts[0].reason, ConflictReason::DifferentUserIds);
        assert_ne!(g.profile_of(&u1), g.profile_of(&u2));
    }

    #[test]
    fn per_profile_limits_refuse_the_extra_identifier() {
        let mut g = graph();
        let mut ch = Changes::default();
        let a = key(AnonymousId, 1);
        for i in 0..5 {
            g.observe(
                &obs(&format!("e{i}"), i, &[a, key(Email, i as u8)]),
                &mut ch,
            );
        }
        ch.clear();
        let out = g.observe(&obs("e6", 6, &[a, key(Email, 6)]), &mut ch);
        assert_eq!(out.conflicts, 1);
        assert_eq!(ch.conflicts[0].reason, ConflictReason::LimitExceeded(Email));
        assert_ne!(g.profile_of(&a), g.profile_of(&key(Email, 6)));
        assert_eq!(g.members(g.profile_of(&a).unwrap()).len(), 6);
        // 10 devices allowed, the 11th refused.
        let u = key(UserId, 9);
        for i in 0..10 {
            g.observe(
                &obs(&format!("d{i}"), 10 + i, &[u, key(DeviceId, i as u8)]),
                &mut ch,
            );
        }
        ch.clear();
        g.observe(&obs("d10", 30, &[u, key(DeviceId, 10)]), &mut ch);
        assert_eq!(
            ch.conflicts[0].reason,
            ConflictReason::LimitExceeded(DeviceId)
        );
    }

    #[test]
    fn blocked_values_are_recorded_not_linked() {
        let mut g = graph();
        let mut ch = Changes::default();
        let (a, bad) = (key(AnonymousId, 1), key(Email, 99));
        let mut o = obs("e", 0, &[a]);
        o.blocked.push(bad);
        let out = g.observe(&o, &mut ch);
        assert_eq!(out.conflicts, 1);
        assert_eq!(ch.conflicts[0].reason, ConflictReason::BlockedValue);
        assert_eq!((ch.conflicts[0].from, ch.conflicts[0].to), (a, bad));
        assert!(g.profile_of(&bad).is_none());
    }

    #[test]
    fn a_value_seen_with_two_user_ids_is_shared_and_detached() {
        let mut g = graph();
        let mut ch = Changes::default();
        let (mum, kid, tablet, kid_email) = (
            key(UserId, 1),
            key(UserId, 2),
            key(DeviceId, 1),
            key(Email, 2),
        );
        g.observe(&obs("a", 0, &[mum, tablet]), &mut ch);
        assert_eq!(g.profile_of(&mum), g.profile_of(&tablet));
        ch.clear();
        g.observe(&obs("b", 1, &[kid, tablet]), &mut ch);
        // The tablet left mum's profile and never joins anyone again.
        assert_ne!(g.profile_of(&mum), g.profile_of(&tablet));
        assert_ne!(g.profile_of(&kid), g.profile_of(&tablet));
        assert!(g.node_state(&tablet).unwrap().shared);
        assert!(
            ch.conflicts
                .iter()
                .any(|c| c.reason == ConflictReason::SharedValue && c.to == tablet)
        );
        assert_eq!(ch.removed_edges.len(), 1);
        g.observe(&obs("c", 2, &[tablet, kid_email]), &mut ch);
        assert_ne!(g.profile_of(&tablet), g.profile_of(&kid_email));
        // One user id per value is fine.
        let phone = key(Phone, 1);
        g.observe(&obs("d", 3, &[mum, phone]), &mut ch);
        g.observe(&obs("e", 4, &[mum, phone]), &mut ch);
        assert_eq!(g.profile_of(&mum), g.profile_of(&phone));
    }

    #[test]
    fn with_a_higher_threshold_two_user_ids_are_tolerated() {
        let rules = Rules {
            shared_value_max_user_ids: 2,
            ..Rules::default()
        };
        let mut g = Graph::new(rules.validate().unwrap());
        let mut ch = Changes::default();
        let tablet = key(DeviceId, 1);
        g.observe(&obs("a", 0, &[key(UserId, 1), tablet]), &mut ch);
        g.observe(&obs("b", 1, &[key(UserId, 2), tablet]), &mut ch);
        assert!(!g.node_state(&tablet).unwrap().shared);
        // Merge protection still kept the second user out.
        assert_ne!(g.profile_of(&key(UserId, 2)), g.profile_of(&tablet));
        g.observe(&obs("c", 2, &[key(UserId, 3), tablet]), &mut ch);
        assert!(g.node_state(&tablet).unwrap().shared);
    }

    #[test]
    fn removing_the_only_bridge_splits_the_profile() {
        let mut g = graph();
        let mut ch = Changes::default();
        let (a1, email, a2, dev) = (
            key(AnonymousId, 1),
            key(Email, 1),
            key(AnonymousId, 2),
            key(DeviceId, 1),
        );
        // a1 — email — a2 — dev
        g.observe(&obs("1", 0, &[a1, email]), &mut ch);
        g.observe(&obs("2", 1, &[email, a2]), &mut ch);
        g.observe(&obs("3", 2, &[a2, dev]), &mut ch);
        let p = g.profile_of(&a1).unwrap();
        assert_eq!(g.members(p).len(), 4);
        ch.clear();
        let parts = g.remove(&email, t(10), &mut ch).unwrap();
        assert_eq!(parts.len(), 2);
        assert!(g.profile_of(&email).is_none());
        assert_eq!(g.profile_of(&a1), Some(p), "the oldest part keeps the id");
        let q = g.profile_of(&a2).unwrap();
        assert_ne!(q, p);
        assert_eq!(g.profile_of(&dev), Some(q));
        assert_eq!(ch.removed_edges.len(), 2);
        assert_eq!(ch.removed_nodes, vec![email]);
        assert!(ch.nodes.contains(&a2) && ch.nodes.contains(&dev));
        assert_eq!(ch.created_profiles.len(), 1);
    }

    #[test]
    fn removing_an_identifier_with_another_bridge_keeps_the_profile() {
        let mut g = graph();
        let mut ch = Changes::default();
        let (a, b, c) = (key(AnonymousId, 1), key(Email, 1), key(Phone, 1));
        let d = key(DeviceId, 1);
        g.observe(&obs("1", 0, &[a, b]), &mut ch);
        g.observe(&obs("2", 1, &[b, c]), &mut ch);
        g.observe(&obs("3", 2, &[c, d]), &mut ch);
        g.observe(&obs("4", 3, &[a, d]), &mut ch);
        let p = g.profile_of(&a).unwrap();
        let parts = g.remove(&b, t(5), &mut ch).unwrap();
        assert_eq!(parts, vec![p]);
        for k in [a, c, d] {
            assert_eq!(g.profile_of(&k), Some(p));
        }
        // Protection still applies after a split: a removed user id frees its old profile.
        let u = key(UserId, 1);
        g.observe(&obs("5", 6, &[u, a]), &mut ch);
        assert_eq!(g.profile_of(&u), Some(p));
        g.remove(&u, t(7), &mut ch).unwrap();
        g.observe(&obs("6", 8, &[key(UserId, 2), a]), &mut ch);
        assert_eq!(g.profile_of(&key(UserId, 2)), Some(p));
    }

    #[test]
    fn the_merge_tree_explains_every_join() {
        let mut g = graph();
        let mut ch = Changes::default();
        let (a, e, d, u) = (
            key(AnonymousId, 1),
            key(Email, 1),
            key(DeviceId, 1),
            key(UserId, 1),
        );
        g.observe(&obs("1", 0, &[a, e]), &mut ch);
        g.observe(&obs("2", 1, &[d, u]), &mut ch);
        g.observe(&obs("3", 2, &[e, d]), &mut ch);
        g.observe(&obs("4", 3, &[a, d]), &mut ch); // redundant link: in the edges, not the tree
        let p = g.profile_of(&a).unwrap();
        let members = g.members(p);
        let edges = g.edges_of(p);
        assert_eq!(edges.len(), 4);
        let trees = merge_tree(&members, &edges);
        assert_eq!(trees.len(), 1);
        let MergeTree::Join { edge, left, right } = &trees[0] else {
            panic!("a join at the root")
        };
        assert_eq!(edge.event_id, "3");
        assert_eq!(left.leaves().len() + right.leaves().len(), 4);
        assert_eq!(trees[0].joins(), 3);
        let mut leaves = trees[0].leaves();
        leaves.sort();
        let mut expected = members.clone();
        expected.sort();
        assert_eq!(leaves, expected);
    }

    #[test]
    fn restoring_nodes_and_edges_rebuilds_the_same_graph() {
        let mut g = graph();
        let mut ch = Changes::default();
        let keys: Vec<NodeKey> = (0..6).map(|i| key(AnonymousId, i)).collect();
        g.observe(&obs("1", 0, &[keys[0], keys[1]]), &mut ch);
        g.observe(&obs("2", 0, &[keys[1], keys[2]]), &mut ch);
        g.observe(&obs("3", 0, &[keys[3], keys[4]]), &mut ch);
        g.observe(&obs("4", 0, &[keys[5]]), &mut ch);
        let mut r = graph();
        for k in &keys {
            r.restore_node(g.node_state(k).unwrap());
        }
        for p in [
            g.profile_of(&keys[0]).unwrap(),
            g.profile_of(&keys[3]).unwrap(),
        ] {
            for e in g.edges_of(p) {
                r.restore_edge(e);
            }
        }
        for k in &keys {
            assert_eq!(r.profile_of(k), g.profile_of(k));
        }
        let p = r.profile_of(&keys[1]).unwrap();
        let parts = r.remove(&keys[1], t(1), &mut ch).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(r.profile_of(&keys[0]), Some(p));
        // New edges continue the sequence.
        let mut ch = Changes::default();
        r.observe(&obs("5", 1, &[keys[0], keys[5]]), &mut ch);
        assert_eq!(ch.new_edges[0].seq, 4);
    }
}
