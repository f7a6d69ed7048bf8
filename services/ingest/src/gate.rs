//! The consent gate: where the subject is (jurisdiction), what they consented to (the
//! consent projection through [`ConsentLookup`], cached per identifier set and invalidated
//! by `ConsentChanged` events), and what the policy lets ingestion collect, per purpose and
//! per field category.
//!
//! Unknown jurisdiction (none given, none derivable, or one the policies do not list):
//! the event is judged under every loaded regime at once (one jurisdiction per regime) and
//! only what all of them allow is kept. GDPR's opt-in rules then apply, so without consent
//! nothing but essential processing passes: the strictest reading, never the loosest.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use meridian_identity::IdentifierType;
use meridian_policy::{Action, ConsentState, FieldKind, PolicyEngine, Question};
use meridian_vault::BlindIndex;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::error::IngestError;

/// Jurisdiction recorded for events judged conservatively.
pub const UNKNOWN_JURISDICTION: &str = "unknown";

/// One identifier of a subject, normalized, with its blind index. `Debug` prints no value.
#[derive(Clone)]
pub struct SubjectIdentifier {
    pub kind: IdentifierType,
    /// Issuer of a storefront customer id.
    pub source: String,
    /// The normalized value (storefront customer ids: the id alone).
    pub value: Zeroizing<String>,
    pub blind_index: BlindIndex,
}

impl std::fmt::Debug for SubjectIdentifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectIdentifier")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A subject's current consent per purpose (fideslang keys), as recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsentSnapshot {
    pub purposes: Vec<(String, ConsentState)>,
}

impl ConsentSnapshot {
    /// The state for `purpose`: the most specific recorded purpose that is `purpose` or one
    /// of its ancestors (a refusal of `marketing` covers `marketing.communications.email`).
    pub fn state_for(&self, purpose: &str) -> ConsentState {
        self.purposes
            .iter()
            .filter(|(p, _)| {
                purpose == p
                    || (purpose.starts_with(p.as_str())
                        && purpose.as_bytes().get(p.len()) == Some(&b'.'))
            })
            .max_by_key(|(p, _)| p.len())
            .map_or(ConsentState::None, |(_, s)| *s)
    }
}

/// "Current consent per purpose of the subject known by these identifiers", answered by the
/// consent room (adapter in [`crate::consent_adapter`]) or a test double.
#[async_trait]
pub trait ConsentLookup: Send + Sync {
    /// One snapshot per subject, in order; an empty snapshot for a subject nobody recorded
    /// consent for.
    async fn current(
        &self,
        workspace: &str,
        subjects: &[Vec<SubjectIdentifier>],
    ) -> Result<Vec<ConsentSnapshot>, IngestError>;
}

/// A lookup that knows no consent for anyone (benchmarks of the pipeline without the
/// consent room, and tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRecordedConsent;

#[async_trait]
impl ConsentLookup for NoRecordedConsent {
    async fn current(
        &self,
        _workspace: &str,
        subjects: &[Vec<SubjectIdentifier>],
    ) -> Result<Vec<ConsentSnapshot>, IngestError> {
        Ok(vec![ConsentSnapshot::default(); subjects.len()])
    }
}

type CacheKey = (String, Vec<BlindIndex>);

struct CacheEntry {
    snapshot: Arc<ConsentSnapshot>,
    fetched: Instant,
    generation: u64,
}

/// Consent snapshots by (workspace, sorted blind indexes of the event's identifiers), for
/// `ttl`. A `ConsentChanged` event bumps the workspace's generation, which retires every
/// cached snapshot of that workspace at once: the consent room indexes opaque ids
/// (`user_id`, `anonymous_id`) in its own namespace, so its blind indexes cannot be matched
/// to ours one by one.
pub struct ConsentCache {
    lookup: Arc<dyn ConsentLookup>,
    ttl: Duration,
    capacity: usize,
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    entries: HashMap<CacheKey, CacheEntry>,
    generations: HashMap<String, u64>,
}

/// What a batch of lookups did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: usize,
    pub misses: usize,
}

impl ConsentCache {
    pub fn new(lookup: Arc<dyn ConsentLookup>, ttl: Duration, capacity: usize) -> Self {
        ConsentCache {
            lookup,
            ttl,
            capacity,
            state: Mutex::new(CacheState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // A panic while holding the lock leaves only a cache behind: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Retires every cached snapshot of `workspace` (a consent of one of its subjects changed).
    pub fn invalidate_workspace(&self, workspace: &str) {
        let mut state = self.lock();
        *state.generations.entry(workspace.to_owned()).or_default() += 1;
        state.entries.retain(|(ws, _), _| ws != workspace);
    }

    /// Snapshots for each subject, from the cache or (for the misses, in one call) the lookup.
    pub async fn current(
        &self,
        workspace: &str,
        subjects: &[Vec<SubjectIdentifier>],
    ) -> Result<(Vec<Arc<ConsentSnapshot>>, CacheStats), IngestError> {
        let now = Instant::now();
        let keys: Vec<CacheKey> = subjects
            .iter()
            .map(|ids| {
                let mut idx: Vec<BlindIndex> = ids.iter().map(|i| i.blind_index).collect();
                idx.sort_unstable();
                idx.dedup();
                (workspace.to_owned(), idx)
            })
            .collect();
        let mut out: Vec<Option<Arc<ConsentSnapshot>>> = vec![None; subjects.len()];
        let generation;
        {
            let state = self.lock();
            generation = state.generations.get(workspace).copied().unwrap_or(0);
            for (slot, key) in out.iter_mut().zip(&keys) {
                if let Some(e) = state.entries.get(key)
                    && e.generation == generation
                    && now.duration_since(e.fetched) < self.ttl
                {
                    *slot = Some(e.snapshot.clone());
                }
            }
        }
        // Misses, each distinct identifier set once.
        let mut miss_keys: Vec<usize> = Vec::new();
        let mut first_of: HashMap<&CacheKey, usize> = HashMap::new();
        for (i, slot) in out.iter().enumerate() {
            if slot.is_none() && !first_of.contains_key(&keys[i]) {
                first_of.insert(&keys[i], i);
                miss_keys.push(i);
            }
        }
        let stats = CacheStats {
            hits: out.iter().filter(|s| s.is_some()).count(),
            misses: miss_keys.len(),
        };
        if !miss_keys.is_empty() {
            let asked: Vec<Vec<SubjectIdentifier>> =
                miss_keys.iter().map(|i| subjects[*i].clone()).collect();
            let answers = self.lookup.current(workspace, &asked).await?;
            if answers.len() != asked.len() {
                return Err(IngestError::Consent(
                    "the consent lookup answered for a different number of subjects".into(),
                ));
            }
            let answers: Vec<Arc<ConsentSnapshot>> = answers.into_iter().map(Arc::new).collect();
            let mut by_key: HashMap<&CacheKey, Arc<ConsentSnapshot>> = HashMap::new();
            for (i, snap) in miss_keys.iter().zip(&answers) {
                by_key.insert(&keys[*i], snap.clone());
            }
            for (slot, key) in out.iter_mut().zip(&keys) {
                if slot.is_none() {
                    *slot = by_key.get(key).cloned();
                }
            }
            let mut state = self.lock();
            if state.entries.len() + answers.len() > self.capacity {
                state.entries.clear();
            }
            for (i, snap) in miss_keys.iter().zip(answers) {
                state.entries.insert(
                    keys[*i].clone(),
                    CacheEntry {
                        snapshot: snap,
                        fetched: now,
                        generation,
                    },
                );
            }
        }
        Ok((
            out.into_iter().map(|s| s.unwrap_or_default()).collect(),
            stats,
        ))
    }
}

/// Where the jurisdiction of an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JurisdictionSource {
    Event,
    Storefront,
    TimeZone,
    Locale,
    Unknown,
}

/// An event's jurisdiction as the policies know it (`EU-DE`), or unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedJurisdiction {
    /// The policies' code; `None` when unknown.
    pub code: Option<String>,
    pub source: JurisdictionSource,
}

impl ResolvedJurisdiction {
    /// What is recorded with the event.
    pub fn recorded(&self) -> &str {
        self.code.as_deref().unwrap_or(UNKNOWN_JURISDICTION)
    }
}

fn context_str<'a>(context: &'a Map<String, Value>, path: &[&str]) -> Option<&'a str> {
    let (last, parents) = path.split_last()?;
    let mut cur = context;
    for p in parents {
        cur = cur.get(*p)?.as_object()?;
    }
    cur.get(*last)?
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The event's jurisdiction: explicit on the event, else the storefront's country, else
/// the context's time zone (matched against the jurisdictions' zones), else the locale's
/// region. Anything the policies do not list is unknown.
pub fn resolve_jurisdiction(
    policies: &PolicyEngine,
    explicit: &str,
    context: &Map<String, Value>,
) -> ResolvedJurisdiction {
    let known = |code: &str| policies.jurisdiction(code).map(|j| j.code.clone());
    if !explicit.is_empty() {
        return ResolvedJurisdiction {
            code: known(explicit),
            source: if known(explicit).is_some() {
                JurisdictionSource::Event
            } else {
                JurisdictionSource::Unknown
            },
        };
    }
    if let Some(country) = context_str(context, &["storefront", "country"])
        && let Some(code) = known(country)
    {
        return ResolvedJurisdiction {
            code: Some(code),
            source: JurisdictionSource::Storefront,
        };
    }
    if let Some(tz) = context_str(context, &["timezone"])
        && let Some(j) = policies.jurisdictions().iter().find(|j| j.time_zone == tz)
    {
        return ResolvedJurisdiction {
            code: Some(j.code.clone()),
            source: JurisdictionSource::TimeZone,
        };
    }
    if let Some(locale) = context_str(context, &["locale"])
        && let Some(region) = locale
            .split(['-', '_'])
            .skip(1)
            .find(|s| s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic()))
        && let Some(code) = known(&region.to_ascii_uppercase())
    {
        return ResolvedJurisdiction {
            code: Some(code),
            source: JurisdictionSource::Locale,
        };
    }
    ResolvedJurisdiction {
        code: None,
        source: JurisdictionSource::Unknown,
    }
}

/// A policy denial: the rule that denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub rule: String,
}

/// The collection questions for one event: its jurisdictions (one, or one per regime when
/// unknown), consent per purpose, GPC and age.
pub struct CollectionContext<'a> {
    pub policies: &'a PolicyEngine,
    pub jurisdictions: &'a [String],
    pub gpc: bool,
    pub age: Option<u8>,
    /// Consent per purpose, already merged (event choices over the recorded state).
    pub consent: &'a [(String, ConsentState)],
    /// Answers already given in this context, shared by the events of a call that are
    /// judged alike; `None` asks the policy engine every time.
    pub answers: Option<&'a Answers>,
}

/// The answers of one judging context (jurisdictions, GPC, age, merged consent) per
/// (purpose index, category), kept for one call: the events of a batch mostly share their
/// context, and each asks the same questions field after field (resolving a question in
/// the policy engine costs string lookups and allocations every time).
#[derive(Debug, Default)]
pub struct Answers {
    by_purpose: RefCell<Vec<HashMap<String, Result<(), Denied>>>>,
}

impl CollectionContext<'_> {
    /// Whether collecting data of `category` for `purpose` is allowed in every jurisdiction.
    pub fn allows(
        &self,
        purpose: &str,
        consent: ConsentState,
        category: &str,
    ) -> Result<(), Denied> {
        for j in self.jurisdictions {
            let mut q = Question::new(Action::Collect, j, purpose)
                .with_consent(consent)
                .with_gpc(self.gpc)
                .with_category(category);
            if let Some(age) = self.age {
                q = q.with_age(age);
            }
            let d = self.policies.decide(&q);
            if !d.allowed {
                return Err(Denied {
                    rule: d.rule_id.clone(),
                });
            }
        }
        Ok(())
    }

    /// [`Self::allows`] for the purpose at `index` of `consent`, remembered in `answers`.
    fn allows_at(&self, index: usize, category: &str) -> Result<(), Denied> {
        let Some((purpose, state)) = self.consent.get(index) else {
            return Err(Denied {
                rule: meridian_policy::DEFAULT_DENY.to_owned(),
            });
        };
        let Some(answers) = self.answers else {
            return self.allows(purpose, *state, category);
        };
        if let Some(known) = answers
            .by_purpose
            .borrow()
            .get(index)
            .and_then(|m| m.get(category))
        {
            return known.clone();
        }
        let answer = self.allows(purpose, *state, category);
        let mut by_purpose = answers.by_purpose.borrow_mut();
        if by_purpose.len() <= index {
            by_purpose.resize_with(index + 1, HashMap::new);
        }
        by_purpose[index].insert(category.to_owned(), answer.clone());
        answer
    }

    /// The purposes (of `consent`, in order) that allow `category`; else the first denial.
    pub fn allowed_purposes(&self, category: &str) -> Result<Vec<usize>, Denied> {
        let mut allowed = Vec::new();
        let mut first_denial = None;
        for i in 0..self.consent.len() {
            match self.allows_at(i, category) {
                Ok(()) => allowed.push(i),
                Err(d) => {
                    first_denial.get_or_insert(d);
                }
            }
        }
        if allowed.is_empty() {
            Err(first_denial.unwrap_or(Denied {
                rule: meridian_policy::DEFAULT_DENY.to_owned(),
            }))
        } else {
            Ok(allowed)
        }
    }

    /// Whether any of the `purposes` (indexes into `consent`) allows `category`.
    pub fn any_allows(&self, purposes: &[usize], category: &str) -> Result<(), Denied> {
        let mut first_denial = None;
        for &i in purposes {
            if i >= self.consent.len() {
                continue;
            }
            match self.allows_at(i, category) {
                Ok(()) => return Ok(()),
                Err(d) => {
                    first_denial.get_or_insert(d);
                }
            }
        }
        Err(first_denial.unwrap_or(Denied {
            rule: meridian_policy::DEFAULT_DENY.to_owned(),
        }))
    }
}

/// The jurisdictions an event is judged in: its own, or one per regime when unknown.
pub fn judged_in(policies: &PolicyEngine, resolved: &ResolvedJurisdiction) -> Vec<String> {
    match &resolved.code {
        Some(code) => vec![code.clone()],
        None => {
            let mut seen = std::collections::BTreeSet::new();
            policies
                .jurisdictions()
                .iter()
                .filter(|j| seen.insert(j.regime.clone()))
                .map(|j| j.code.clone())
                .collect()
        }
    }
}

/// The data category of an identifier, from the field classification.
pub fn identifier_category(policies: &PolicyEngine, kind: IdentifierType) -> &str {
    match kind {
        IdentifierType::AnonymousId => policies.classify_field(FieldKind::Event, "anonymousId"),
        IdentifierType::UserId | IdentifierType::StorefrontCustomerId => {
            policies.classify_field(FieldKind::Event, "userId")
        }
        IdentifierType::Email => policies.classify_field(FieldKind::Trait, "email"),
        IdentifierType::Phone => policies.classify_field(FieldKind::Trait, "phone"),
        IdentifierType::Idfa | IdentifierType::Gaid => {
            policies.classify_field(FieldKind::Context, "device.advertisingId")
        }
        IdentifierType::DeviceId => policies.classify_field(FieldKind::Context, "device.id"),
        IdentifierType::Fbclid | IdentifierType::Gclid | IdentifierType::Ttclid => {
            policies.classify_field(FieldKind::Context, "page.url")
        }
    }
}

/// Removes from `map` every field whose category no allowed purpose covers. Fields are
/// classified by their Segment path (`properties.revenue`, `traits.address.city`); an object
/// whose children are classified one by one is walked one level down. Returns the stripped
/// paths with the rule that denied each.
pub fn strip_fields(
    ctx: &CollectionContext<'_>,
    purposes: &[usize],
    kind: FieldKind,
    prefix: &str,
    map: &mut Map<String, Value>,
) -> Vec<(String, String)> {
    let policies = ctx.policies;
    // Judged first without copying a key (most events lose nothing), then removed in the
    // order they were judged, exactly as when each was removed on the spot.
    let mut removals: Vec<(&str, Option<&str>, String)> = Vec::new();
    // Sized once for the usual field path: grown from empty they were reallocated on most
    // events (a percent of the server's CPU at `bench ingest`'s rate).
    let mut path = String::with_capacity(prefix.len() + 64);
    let mut child_path = String::with_capacity(prefix.len() + 96);
    for (key, value) in map.iter() {
        // `properties.*` are listed with their prefix; traits and context without.
        path.clear();
        if kind == FieldKind::Event {
            path.push_str(prefix);
            path.push('.');
        }
        path.push_str(key);
        let children = value.as_object().filter(|obj| {
            obj.keys().any(|c| {
                join(&mut child_path, &path, c);
                policies.fields().is_listed(kind, &child_path)
            })
        });
        if let Some(obj) = children {
            for c in obj.keys() {
                join(&mut child_path, &path, c);
                let category = policies.classify_field(kind, &child_path);
                if let Err(d) = ctx.any_allows(purposes, category) {
                    removals.push((key, Some(c), d.rule));
                }
            }
            continue;
        }
        let category = policies.classify_field(kind, &path);
        if let Err(d) = ctx.any_allows(purposes, category) {
            removals.push((key, None, d.rule));
        }
    }
    if removals.is_empty() {
        return Vec::new();
    }
    let removals: Vec<(String, Option<String>, String)> = removals
        .into_iter()
        .map(|(k, c, rule)| (k.to_owned(), c.map(str::to_owned), rule))
        .collect();
    let mut stripped = Vec::with_capacity(removals.len());
    for (key, child, rule) in removals {
        match child {
            Some(c) => {
                if let Some(Value::Object(obj)) = map.get_mut(&key) {
                    obj.remove(&c);
                }
                stripped.push((format!("{prefix}.{key}.{c}"), rule));
            }
            None => {
                map.remove(&key);
                stripped.push((format!("{prefix}.{key}"), rule));
            }
        }
    }
    stripped
}

/// `out` = `path.child`, reusing `out`'s buffer.
fn join(out: &mut String, path: &str, child: &str) {
    out.clear();
    out.push_str(path);
    out.push('.');
    out.push_str(child);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> PolicyEngine {
        PolicyEngine::builtin().unwrap()
    }

    #[test]
    fn consent_of_an_ancestor_purpose_covers_its_children() {
        let snap = ConsentSnapshot {
            purposes: vec![
                ("marketing".into(), ConsentState::Refused),
                ("marketing.communications".into(), ConsentState::Given),
            ],
        };
        assert_eq!(
            snap.state_for("marketing.advertising"),
            ConsentState::Refused
        );
        assert_eq!(
            snap.state_for("marketing.communications.email"),
            ConsentState::Given
        );
        assert_eq!(snap.state_for("marketingx"), ConsentState::None);
        assert_eq!(snap.state_for("analytics"), ConsentState::None);
    }

    #[test]
    fn jurisdiction_comes_from_the_event_the_storefront_then_the_context() {
        let p = engine();
        let ctx: Map<String, Value> = serde_json::from_str(
            r#"{"storefront":{"country":"FR"},"timezone":"America/Los_Angeles","locale":"pt-BR"}"#,
        )
        .unwrap();
        let r = resolve_jurisdiction(&p, "DE", &ctx);
        assert_eq!(
            (r.code.as_deref(), r.source),
            (Some("EU-DE"), JurisdictionSource::Event)
        );
        let r = resolve_jurisdiction(&p, "", &ctx);
        assert_eq!(
            (r.code.as_deref(), r.source),
            (Some("EU-FR"), JurisdictionSource::Storefront)
        );
        let mut ctx2 = ctx.clone();
        ctx2.remove("storefront");
        let r = resolve_jurisdiction(&p, "", &ctx2);
        assert_eq!(
            (r.code.as_deref(), r.source),
            (Some("US-CA"), JurisdictionSource::TimeZone)
        );
        ctx2.remove("timezone");
        let r = resolve_jurisdiction(&p, "", &ctx2);
        assert_eq!(
            (r.code.as_deref(), r.source),
            (Some("BR"), JurisdictionSource::Locale)
        );
        let r = resolve_jurisdiction(&p, "US-NY", &ctx2);
        assert_eq!(r.code, None);
        assert_eq!(r.recorded(), UNKNOWN_JURISDICTION);
        let r = resolve_jurisdiction(&p, "", &Map::new());
        assert_eq!(r.source, JurisdictionSource::Unknown);
        // Unknown: judged under every regime.
        assert!(judged_in(&p, &r).len() >= 5);
    }

    #[test]
    fn unknown_jurisdiction_is_judged_by_the_strictest_rules() {
        let p = engine();
        let unknown = judged_in(
            &p,
            &ResolvedJurisdiction {
                code: None,
                source: JurisdictionSource::Unknown,
            },
        );
        let consent = vec![("analytics.reporting".to_owned(), ConsentState::None)];
        let strict = CollectionContext {
            policies: &p,
            jurisdictions: &unknown,
            gpc: false,
            age: None,
            consent: &consent,
            answers: None,
        };
        assert!(strict.allowed_purposes("user.behavior").is_err());
        let ca = vec!["US-CA".to_owned()];
        let loose = CollectionContext {
            policies: &p,
            jurisdictions: &ca,
            gpc: false,
            age: None,
            consent: &consent,
            answers: None,
        };
        assert!(loose.allowed_purposes("user.behavior").is_ok());
    }

    /// The strip as it was written before judging and removing were split: keys copied,
    /// each removed on the spot.
    fn strip_fields_one_by_one(
        ctx: &CollectionContext<'_>,
        purposes: &[usize],
        kind: FieldKind,
        prefix: &str,
        map: &mut Map<String, Value>,
    ) -> Vec<(String, String)> {
        let policies = ctx.policies;
        let mut stripped = Vec::new();
        let keys: Vec<String> = map.keys().cloned().collect();
        for key in keys {
            let path = match kind {
                FieldKind::Event => format!("{prefix}.{key}"),
                _ => key.clone(),
            };
            let children_listed = map.get(&key).and_then(Value::as_object).is_some_and(|obj| {
                obj.keys()
                    .any(|c| policies.fields().is_listed(kind, &format!("{path}.{c}")))
            });
            if children_listed {
                if let Some(Value::Object(child)) = map.get_mut(&key) {
                    let child_keys: Vec<String> = child.keys().cloned().collect();
                    for c in child_keys {
                        let category = policies.classify_field(kind, &format!("{path}.{c}"));
                        if let Err(d) = ctx.any_allows(purposes, category) {
                            child.remove(&c);
                            stripped.push((format!("{prefix}.{key}.{c}"), d.rule));
                        }
                    }
                }
                continue;
            }
            let category = policies.classify_field(kind, &path);
            if let Err(d) = ctx.any_allows(purposes, category) {
                map.remove(&key);
                stripped.push((format!("{prefix}.{key}"), d.rule));
            }
        }
        stripped
    }

    #[test]
    fn fields_are_stripped_as_when_removed_one_by_one() {
        let p = engine();
        let properties: Map<String, Value> = serde_json::from_str(
            r#"{"revenue":1,"email":"a@example.com","order_id":"o","phone":"+331","address":{"city":"Paris","street":"1 rue"},"ssn":"x","health":"y","url":"u","ip":"1.2.3.4"}"#,
        )
        .unwrap();
        let traits: Map<String, Value> = serde_json::from_str(
            r#"{"email":"a@example.com","firstName":"A","address":{"city":"Paris","street":"1 rue","postalCode":"75001"},"birthday":"2000-01-01","phone":"+331","plan":"pro","age":12}"#,
        )
        .unwrap();
        let context: Map<String, Value> = serde_json::from_str(
            r#"{"ip":"203.0.113.1","userAgent":"UA","device":{"id":"d","advertisingId":"ad","model":"m"},"location":{"latitude":1.5,"city":"Paris"},"page":{"url":"u","title":"t"},"storefront":{"id":"s"}}"#,
        )
        .unwrap();
        let mut stripped_any = 0;
        for jurisdiction in ["US-CA", "EU-FR", "BR"] {
            for (state, gpc, age) in [
                (ConsentState::Given, false, None),
                (ConsentState::None, false, None),
                (ConsentState::None, true, Some(13)),
                (ConsentState::Refused, true, None),
            ] {
                let consent: Vec<(String, ConsentState)> = [
                    "analytics.reporting",
                    "personalize.content.profiled",
                    "marketing.advertising.first_party.targeted",
                ]
                .iter()
                .map(|p| ((*p).to_owned(), state))
                .collect();
                let jurisdictions = vec![jurisdiction.to_owned()];
                let answers = Answers::default();
                for remembered in [None, Some(&answers)] {
                    let ctx = CollectionContext {
                        policies: &p,
                        jurisdictions: &jurisdictions,
                        gpc,
                        age,
                        consent: &consent,
                        answers: remembered,
                    };
                    let purposes: Vec<usize> = (0..consent.len()).collect();
                    for (kind, prefix, map) in [
                        (FieldKind::Event, "properties", &properties),
                        (FieldKind::Trait, "traits", &traits),
                        (FieldKind::Context, "context", &context),
                    ] {
                        let (mut old, mut new) = (map.clone(), map.clone());
                        let expected =
                            strip_fields_one_by_one(&ctx, &purposes, kind, prefix, &mut old);
                        let got = strip_fields(&ctx, &purposes, kind, prefix, &mut new);
                        assert_eq!(got, expected, "{jurisdiction} {state:?} {prefix}");
                        // Same keys in the same order.
                        assert_eq!(
                            serde_json::to_string(&new).unwrap(),
                            serde_json::to_string(&old).unwrap()
                        );
                        stripped_any += got.len();
                    }
                }
            }
        }
        assert!(stripped_any > 0, "the contexts must strip something");
    }
}
