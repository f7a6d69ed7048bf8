//! The policy engine: answers collect / process / export questions from the
//! loaded Cedar rules, memoized per decision tuple.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use cedar_policy::{Authorizer, Context, EntityUid, PolicyId, Request, RestrictedExpression};
use serde::Serialize;

use crate::error::PolicyLoadError;
use crate::fasthash::{FastHasher, FastMap};
use crate::load::{self, Loaded, ObligationKind, ObligationRule, RuleMeta, type_name, uid};
use crate::params::{Cited, DestinationInfo, JurisdictionInfo, Period, Regime};
use crate::source::{self, SourceFile};
use crate::taxonomy::{FieldClassification, FieldKind, Taxonomy};

/// What the asking room wants to do with personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// accept a field into the platform (ingest)
    Collect,
    /// use data for a purpose (identity, segments)
    Process,
    /// send data to a destination (audience export)
    Export,
}

impl Action {
    /// The Cedar action name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Collect => "collect",
            Self::Process => "process",
            Self::Export => "export",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Collect => 1,
            Self::Process => 2,
            Self::Export => 4,
        }
    }

    fn index(self) -> u128 {
        match self {
            Self::Collect => 0,
            Self::Process => 1,
            Self::Export => 2,
        }
    }
}

/// A value that is not one of the accepted words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {got:?}: expected one of {expected}")]
pub struct ParseWordError {
    /// what was being parsed
    pub what: &'static str,
    /// the input
    pub got: String,
    /// accepted words
    pub expected: &'static str,
}

impl FromStr for Action {
    type Err = ParseWordError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "collect" => Ok(Self::Collect),
            "process" => Ok(Self::Process),
            "export" => Ok(Self::Export),
            _ => Err(ParseWordError {
                what: "action",
                got: s.to_owned(),
                expected: "collect, process, export",
            }),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The subject's consent to the purpose, as the consent ledger knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentState {
    /// no decision recorded
    #[default]
    None,
    /// the subject consented
    Given,
    /// the holder of parental responsibility consented for the subject
    Guardian,
    /// the subject refused, objected or opted out
    Refused,
}

impl ConsentState {
    /// The word used in the Cedar context.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Given => "given",
            Self::Guardian => "guardian",
            Self::Refused => "refused",
        }
    }

    fn index(self) -> u128 {
        match self {
            Self::None => 0,
            Self::Given => 1,
            Self::Guardian => 2,
            Self::Refused => 3,
        }
    }
}

impl FromStr for ConsentState {
    type Err = ParseWordError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "given" => Ok(Self::Given),
            "guardian" => Ok(Self::Guardian),
            "refused" => Ok(Self::Refused),
            _ => Err(ParseWordError {
                what: "consent state",
                got: s.to_owned(),
                expected: "given, guardian, refused, none",
            }),
        }
    }
}

/// A question a room asks before it touches personal data.
///
/// Build one with [`Question::new`] and the `with_*` methods. Strings are
/// borrowed, so asking allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question<'a> {
    /// collect, process or export
    pub action: Action,
    /// where the subject is: "EU-DE", "GB", "US-CA", "CN", "BR", ...
    pub jurisdiction: &'a str,
    /// fideslang purpose key
    pub purpose: &'a str,
    /// fideslang data category of the field, if the question is about one
    pub category: Option<&'a str>,
    /// consent to the purpose
    pub consent: ConsentState,
    /// a Global Privacy Control signal was received
    pub gpc: bool,
    /// the subject's age in years, if known
    pub age: Option<u8>,
    /// separate consent (PIPL Art. 29, 39) was given
    pub separate_consent: bool,
    /// destination platform key from `destinations.toml` (export)
    pub destination: Option<&'a str>,
    /// ISO country where the recipient processes the data; overrides the destination's
    pub destination_region: Option<&'a str>,
    /// transfer mechanisms in place; when empty, the destination's are used
    pub transfer_mechanisms: &'a [&'a str],
}

impl<'a> Question<'a> {
    /// A question with no category, no consent, no GPC, unknown age, no destination.
    pub fn new(action: Action, jurisdiction: &'a str, purpose: &'a str) -> Self {
        Self {
            action,
            jurisdiction,
            purpose,
            category: None,
            consent: ConsentState::None,
            gpc: false,
            age: None,
            separate_consent: false,
            destination: None,
            destination_region: None,
            transfer_mechanisms: &[],
        }
    }
    /// Sets the data category.
    pub fn with_category(mut self, category: &'a str) -> Self {
        self.category = Some(category);
        self
    }
    /// Sets the consent state.
    pub fn with_consent(mut self, consent: ConsentState) -> Self {
        self.consent = consent;
        self
    }
    /// Sets the GPC signal.
    pub fn with_gpc(mut self, gpc: bool) -> Self {
        self.gpc = gpc;
        self
    }
    /// Sets the age.
    pub fn with_age(mut self, age: u8) -> Self {
        self.age = Some(age);
        self
    }
    /// Sets separate consent (PIPL).
    pub fn with_separate_consent(mut self, separate: bool) -> Self {
        self.separate_consent = separate;
        self
    }
    /// Sets the destination platform.
    pub fn with_destination(mut self, destination: &'a str) -> Self {
        self.destination = Some(destination);
        self
    }
    /// Sets the destination region (ISO country).
    pub fn with_destination_region(mut self, region: &'a str) -> Self {
        self.destination_region = Some(region);
        self
    }
    /// Sets the transfer mechanisms in place.
    pub fn with_transfer_mechanisms(mut self, mechanisms: &'a [&'a str]) -> Self {
        self.transfer_mechanisms = mechanisms;
        self
    }
}

/// A question that names something the policies do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuestionError {
    /// not in `jurisdictions.toml`
    #[error("unknown jurisdiction {0:?}")]
    UnknownJurisdiction(String),
    /// not in `taxonomy/purposes.toml`
    #[error("unknown purpose {0:?}")]
    UnknownPurpose(String),
    /// not in `taxonomy/data_categories.toml`
    #[error("unknown data category {0:?}")]
    UnknownCategory(String),
    /// not in `destinations.toml`
    #[error("unknown destination {0:?}")]
    UnknownDestination(String),
    /// not an ISO 3166-1 alpha-2 code
    #[error("invalid destination region {0:?}: expected an ISO 3166-1 alpha-2 code such as US")]
    InvalidRegion(String),
    /// not used by any regime
    #[error("unknown transfer mechanism {0:?}")]
    UnknownMechanism(String),
    /// an export must say where the data goes
    #[error("an export question needs a destination or a destination region")]
    MissingDestination,
}

/// An obligation attached to an allowed decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Obligation {
    /// what must happen
    pub kind: ObligationKind,
    /// the obligation's id in `obligations.toml`
    pub rule_id: String,
    /// its legal source
    pub article: String,
}

/// The answer to a [`Question`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// whether the action is allowed
    pub allowed: bool,
    /// the rule that decided (for a denial, the rule that denied)
    pub rule_id: String,
    /// why, with the article
    pub reason: String,
    /// every rule that determined the decision, in load order
    pub rules: Vec<String>,
    /// what must happen if allowed (empty when denied)
    pub obligations: Vec<Obligation>,
    /// hash of the loaded policy set
    pub policy_version: String,
}

impl Decision {
    /// Whether the decision carries an obligation of this kind.
    pub fn requires(&self, kind: ObligationKind) -> bool {
        self.obligations.iter().any(|o| o.kind == kind)
    }
}

/// Rule id of a denial no rule permitted.
pub const DEFAULT_DENY: &str = "default_deny";
/// Rule id of a denial for a question naming unknown terms.
pub const INVALID_QUESTION: &str = "invalid_question";
/// Rule id of a denial because evaluation failed.
pub const EVALUATION_ERROR: &str = "evaluation_error";

/// A resolved question packed into an integer; the memo key.
///
/// Get one from [`PolicyEngine::resolve`] and reuse it with
/// [`PolicyEngine::decide_key`] to skip string lookups on hot paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecisionKey(u128);

const SHARDS: usize = 16;
/// Memo entries beyond this are evaluated but not stored.
const MEMO_CAPACITY: usize = 1 << 20;

struct Memo {
    shards: Vec<RwLock<FastMap<u128, Arc<Decision>>>>,
    len: AtomicUsize,
}

impl Memo {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(FastMap::default()))
                .collect(),
            len: AtomicUsize::new(0),
        }
    }

    #[inline]
    fn shard(&self, key: u128) -> &RwLock<FastMap<u128, Arc<Decision>>> {
        use std::hash::Hasher;
        let mut h = FastHasher::default();
        h.write_u128(key);
        // SHARDS is a power of two; the index is always in range
        &self.shards[(h.finish() as usize) & (SHARDS - 1)]
    }

    #[inline]
    fn get(&self, key: u128) -> Option<Arc<Decision>> {
        self.shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
    }

    fn insert(&self, key: u128, d: Arc<Decision>) -> Arc<Decision> {
        if self.len.load(Ordering::Relaxed) >= MEMO_CAPACITY {
            return d;
        }
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.entry(key).or_insert_with(|| {
            self.len.fetch_add(1, Ordering::Relaxed);
            d
        });
        entry.clone()
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn clear(&self) {
        for s in &self.shards {
            s.write().unwrap_or_else(PoisonError::into_inner).clear();
        }
        self.len.store(0, Ordering::Relaxed);
    }
}

/// The decision tuple, unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resolved {
    action: Action,
    jurisdiction: u16,
    purpose: u16,
    category: Option<u16>,
    consent: ConsentState,
    gpc: bool,
    separate_consent: bool,
    age: Option<u8>,
    destination: Option<[u8; 2]>,
    mechanisms: u32,
}

impl Resolved {
    fn pack(&self) -> u128 {
        let mut k = self.action.index();
        k |= u128::from(self.jurisdiction) << 2;
        k |= u128::from(self.purpose) << 14;
        k |= u128::from(self.category.map_or(0, |c| c + 1)) << 26;
        k |= self.consent.index() << 38;
        k |= u128::from(self.gpc) << 40;
        k |= u128::from(self.separate_consent) << 41;
        k |= u128::from(self.age.map_or(0, |a| u16::from(a) + 1)) << 42;
        let dest = self.destination.map_or(0u128, |[a, b]| {
            u128::from(a - b'A') * 26 + u128::from(b - b'A') + 1
        });
        k |= dest << 51;
        k |= u128::from(self.mechanisms) << 61;
        k
    }

    fn unpack(k: u128) -> Self {
        // each field was packed from a value that fits its width
        let bits = |shift: u32, width: u32| ((k >> shift) & ((1u128 << width) - 1)) as u32;
        let action = match bits(0, 2) {
            0 => Action::Collect,
            1 => Action::Process,
            _ => Action::Export,
        };
        let consent = match bits(38, 2) {
            0 => ConsentState::None,
            1 => ConsentState::Given,
            2 => ConsentState::Guardian,
            _ => ConsentState::Refused,
        };
        let cat = bits(26, 12);
        let age = bits(42, 9);
        let dest = bits(51, 10);
        Self {
            action,
            jurisdiction: bits(2, 12) as u16,
            purpose: bits(14, 12) as u16,
            category: (cat > 0).then(|| (cat - 1) as u16),
            consent,
            gpc: bits(40, 1) == 1,
            separate_consent: bits(41, 1) == 1,
            age: (age > 0).then(|| (age - 1) as u8),
            destination: (dest > 0).then(|| {
                [
                    b'A' + ((dest - 1) / 26) as u8,
                    b'A' + ((dest - 1) % 26) as u8,
                ]
            }),
            mechanisms: bits(61, 32),
        }
    }
}

/// The loaded policy set and its decision memo. `Send + Sync`: share one
/// (in an `Arc`) across every task.
pub struct PolicyEngine {
    version: String,
    taxonomy: Taxonomy,
    fields: FieldClassification,
    regimes: BTreeMap<String, Regime>,
    jurisdictions: Vec<JurisdictionInfo>,
    jurisdiction_index: FastMap<String, u16>,
    destinations: BTreeMap<String, DestinationInfo>,
    /// destination key → (region, mechanism mask), resolved at load
    destination_index: FastMap<String, ([u8; 2], u32)>,
    mechanisms: Vec<String>,
    mechanism_index: FastMap<String, u8>,
    obligations: Vec<ObligationRule>,
    policies: cedar_policy::PolicySet,
    entities: cedar_policy::Entities,
    rules: HashMap<PolicyId, RuleMeta>,
    authorizer: Authorizer,
    jurisdiction_uids: Vec<EntityUid>,
    purpose_uids: Vec<EntityUid>,
    category_uids: Vec<EntityUid>,
    action_uids: [EntityUid; 3],
    country_ty: cedar_policy::EntityTypeName,
    age_cap: u8,
    file_count: usize,
    memo: Memo,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policy_version", &self.version)
            .field("rules", &self.rules.len())
            .field("memoized", &self.memo.len())
            .finish_non_exhaustive()
    }
}

fn policy_version(files: &[SourceFile]) -> String {
    let mut sorted: Vec<&SourceFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for f in sorted {
        ctx.update(f.path.as_bytes());
        ctx.update(&[0]);
        ctx.update(&(f.text.len() as u64).to_le_bytes());
        ctx.update(f.text.as_bytes());
    }
    let digest = ctx.finish();
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl PolicyEngine {
    /// Loads and validates every file under `dir` (the layout of `policies/`).
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self, PolicyLoadError> {
        Self::from_files(source::read_dir(dir.as_ref())?)
    }

    /// The policy set embedded in the binary at build time.
    pub fn builtin() -> Result<Self, PolicyLoadError> {
        Self::from_files(source::builtin_files())
    }

    fn from_files(files: Vec<SourceFile>) -> Result<Self, PolicyLoadError> {
        let version = policy_version(&files);
        let Loaded {
            taxonomy,
            fields,
            regimes,
            jurisdictions,
            destinations,
            mechanisms,
            obligations,
            policies,
            rules,
            entities,
            file_count,
        } = load::load(&files)?;
        let jur_ty = type_name("Jurisdiction");
        let purpose_ty = type_name("Purpose");
        let category_ty = type_name("DataCategory");
        let action_ty = type_name("Action");
        let mut age_cap = 0u8;
        for j in &jurisdictions {
            age_cap = age_cap.max(j.guardian_age.value);
        }
        for r in regimes.values() {
            age_cap = age_cap
                .max(r.children.guardian_age.value)
                .max(r.children.opt_in_age.value);
        }
        let jurisdiction_index = jurisdictions
            .iter()
            .enumerate()
            .map(|(i, j)| (j.code.clone(), u16::try_from(i).unwrap_or(u16::MAX)))
            .collect();
        let mechanism_index = mechanisms
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone(), u8::try_from(i).unwrap_or(u8::MAX)))
            .collect();
        let mut destination_index = FastMap::default();
        for (key, d) in &destinations {
            let mut mask = 0u32;
            for m in &d.mechanisms {
                if let Some(i) = mechanisms.iter().position(|x| x == m) {
                    mask |= 1 << i;
                }
            }
            if let [a, b] = d.region.as_bytes() {
                destination_index.insert(key.clone(), ([*a, *b], mask));
            }
        }
        Ok(Self {
            version,
            destination_index,
            jurisdiction_uids: jurisdictions
                .iter()
                .map(|j| uid(&jur_ty, &j.code))
                .collect(),
            purpose_uids: taxonomy.purposes().map(|p| uid(&purpose_ty, p)).collect(),
            category_uids: taxonomy
                .categories()
                .map(|c| uid(&category_ty, c))
                .collect(),
            action_uids: [
                uid(&action_ty, "collect"),
                uid(&action_ty, "process"),
                uid(&action_ty, "export"),
            ],
            country_ty: type_name("Country"),
            taxonomy,
            fields,
            regimes,
            jurisdictions,
            jurisdiction_index,
            destinations,
            mechanisms,
            mechanism_index,
            obligations,
            policies,
            entities,
            rules,
            authorizer: Authorizer::new(),
            age_cap,
            file_count,
            memo: Memo::new(),
        })
    }

    /// Hash of the loaded policy set (`sha256:<hex>` over every file's path and
    /// text). Record it with everything that acts on a decision.
    pub fn policy_version(&self) -> &str {
        &self.version
    }

    /// Number of Cedar rules loaded.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Number of policy files loaded.
    pub fn file_count(&self) -> usize {
        self.file_count
    }

    /// Number of memoized decisions.
    pub fn memoized(&self) -> usize {
        self.memo.len()
    }

    /// Drops every memoized decision (for measurements).
    pub fn clear_memo(&self) {
        self.memo.clear();
    }

    /// Purposes, categories, TCF and GPP mappings.
    pub fn taxonomy(&self) -> &Taxonomy {
        &self.taxonomy
    }

    /// Event / trait / context field → data category.
    pub fn fields(&self) -> &FieldClassification {
        &self.fields
    }

    /// Shorthand for `fields().classify(kind, field)`.
    pub fn classify_field(&self, kind: FieldKind, field: &str) -> &str {
        self.fields.classify(kind, field)
    }

    /// Every regime's parameters, by id.
    pub fn regimes(&self) -> &BTreeMap<String, Regime> {
        &self.regimes
    }

    /// One regime's parameters ("GDPR", "UK_GDPR", "CCPA", "PIPL", "LGPD").
    pub fn regime(&self, id: &str) -> Option<&Regime> {
        self.regimes.get(id)
    }

    /// Every known jurisdiction.
    pub fn jurisdictions(&self) -> &[JurisdictionInfo] {
        &self.jurisdictions
    }

    /// A jurisdiction by code; `DE` finds `EU-DE`. Case-insensitive.
    pub fn jurisdiction(&self, code: &str) -> Option<&JurisdictionInfo> {
        self.jurisdiction_id(code)
            .and_then(|i| self.jurisdictions.get(usize::from(i)))
    }

    /// The regime a jurisdiction falls under.
    pub fn regime_for(&self, jurisdiction: &str) -> Option<&Regime> {
        self.jurisdiction(jurisdiction)
            .and_then(|j| self.regimes.get(&j.regime))
    }

    /// Destination platforms by key.
    pub fn destinations(&self) -> &BTreeMap<String, DestinationInfo> {
        &self.destinations
    }

    /// How long data of `category` may be kept for a subject in `jurisdiction`:
    /// the entry for the category or its nearest listed ancestor, else the
    /// regime's default.
    pub fn retention(
        &self,
        jurisdiction: &str,
        category: &str,
    ) -> Result<&Cited<Period>, QuestionError> {
        let regime = self
            .regime_for(jurisdiction)
            .ok_or_else(|| QuestionError::UnknownJurisdiction(jurisdiction.to_owned()))?;
        let cats = &self.taxonomy.categories;
        let mut cur = Some(
            cats.id(category)
                .ok_or_else(|| QuestionError::UnknownCategory(category.to_owned()))?,
        );
        while let Some(c) = cur {
            if let Some(r) = regime.retention.get(cats.key(c)) {
                return Ok(r);
            }
            cur = cats.parent(c);
        }
        regime
            .retention
            .get("default")
            .ok_or_else(|| QuestionError::UnknownCategory(category.to_owned()))
    }

    /// When a data-subject request received at `received` is due for a subject
    /// in `jurisdiction`: the regime's deadline (and extension, and receipt
    /// confirmation where required) counted in the jurisdiction's time zone.
    pub fn dsr_deadline(
        &self,
        jurisdiction: &str,
        received: chrono::DateTime<chrono::Utc>,
    ) -> Result<crate::DsrDeadline, QuestionError> {
        let unknown = || QuestionError::UnknownJurisdiction(jurisdiction.to_owned());
        let j = self.jurisdiction(jurisdiction).ok_or_else(unknown)?;
        let regime = self.regimes.get(&j.regime).ok_or_else(unknown)?;
        // validated at load; a failure here means an unknown zone, so refuse
        let tz: chrono_tz::Tz = j.time_zone.parse().map_err(|_| unknown())?;
        let dsr = &regime.dsr;
        let due = dsr.deadline.value.due(received, tz).ok_or_else(unknown)?;
        let extended_due = match &dsr.extension {
            None => None,
            Some(ext) => {
                let last_day = dsr
                    .deadline
                    .value
                    .end_date(received.with_timezone(&tz).date_naive())
                    .and_then(|d| ext.value.end_date(d))
                    .ok_or_else(unknown)?;
                Some(crate::deadline::end_of_day(last_day, tz).ok_or_else(unknown)?)
            }
        };
        let confirm_receipt_by = match &dsr.receipt_confirmation {
            None => None,
            Some(c) => Some(c.value.due(received, tz).ok_or_else(unknown)?),
        };
        let articles = std::iter::once(&dsr.deadline)
            .chain(dsr.extension.as_ref())
            .chain(dsr.receipt_confirmation.as_ref())
            .map(|c| c.article.clone())
            .collect();
        Ok(crate::DsrDeadline {
            regime: regime.id.clone(),
            time_zone: j.time_zone.clone(),
            confirm_receipt_by,
            due,
            extended_due,
            articles,
        })
    }

    fn jurisdiction_id(&self, code: &str) -> Option<u16> {
        if let Some(id) = self.jurisdiction_index.get(code) {
            return Some(*id);
        }
        let upper = code.trim().to_ascii_uppercase();
        self.jurisdiction_index
            .get(&upper)
            .or_else(|| self.jurisdiction_index.get(&format!("EU-{upper}")))
            .copied()
    }

    fn mechanism_mask<S: AsRef<str>>(&self, names: &[S]) -> Result<u32, QuestionError> {
        let mut mask = 0u32;
        for m in names {
            let i = self
                .mechanism_index
                .get(m.as_ref())
                .ok_or_else(|| QuestionError::UnknownMechanism(m.as_ref().to_owned()))?;
            mask |= 1 << i;
        }
        Ok(mask)
    }

    /// Resolves a question's names to the packed decision tuple.
    pub fn resolve(&self, q: &Question<'_>) -> Result<DecisionKey, QuestionError> {
        let jurisdiction = self
            .jurisdiction_id(q.jurisdiction)
            .ok_or_else(|| QuestionError::UnknownJurisdiction(q.jurisdiction.to_owned()))?;
        let purpose = self
            .taxonomy
            .purposes
            .id(q.purpose)
            .ok_or_else(|| QuestionError::UnknownPurpose(q.purpose.to_owned()))?;
        let category = match q.category {
            None => None,
            Some(c) => Some(
                self.taxonomy
                    .categories
                    .id(c)
                    .ok_or_else(|| QuestionError::UnknownCategory(c.to_owned()))?,
            ),
        };
        let (destination, mechanisms) = if q.action == Action::Export {
            let platform = match q.destination {
                None => None,
                Some(d) => Some(
                    *self
                        .destination_index
                        .get(d)
                        .ok_or_else(|| QuestionError::UnknownDestination(d.to_owned()))?,
                ),
            };
            let code: [u8; 2] = match (q.destination_region, platform) {
                (Some(region), _) => match region.as_bytes() {
                    [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => [*a, *b],
                    _ => return Err(QuestionError::InvalidRegion(region.to_owned())),
                },
                (None, Some((code, _))) => code,
                (None, None) => return Err(QuestionError::MissingDestination),
            };
            let mask = if q.transfer_mechanisms.is_empty() {
                platform.map_or(0, |(_, mask)| mask)
            } else {
                self.mechanism_mask(q.transfer_mechanisms)?
            };
            (Some(code), mask)
        } else {
            (None, 0)
        };
        let r = Resolved {
            action: q.action,
            jurisdiction,
            purpose,
            category,
            consent: q.consent,
            gpc: q.gpc,
            separate_consent: q.separate_consent,
            age: q.age.map(|a| a.min(self.age_cap)),
            destination,
            mechanisms,
        };
        Ok(DecisionKey(r.pack()))
    }

    /// Decides a question. Memoized per decision tuple; a question that names
    /// unknown terms is denied with rule [`INVALID_QUESTION`].
    #[inline]
    pub fn decide(&self, q: &Question<'_>) -> Arc<Decision> {
        match self.resolve(q) {
            Ok(key) => self.decide_key(key),
            Err(e) => Arc::new(self.denial(INVALID_QUESTION, e.to_string())),
        }
    }

    /// Decides a resolved question (see [`PolicyEngine::resolve`]).
    #[inline]
    pub fn decide_key(&self, key: DecisionKey) -> Arc<Decision> {
        if let Some(d) = self.memo.get(key.0) {
            return d;
        }
        let d = Arc::new(self.evaluate(Resolved::unpack(key.0)));
        self.memo.insert(key.0, d)
    }

    /// Evaluates a question with Cedar, bypassing the memo.
    pub fn decide_uncached(&self, q: &Question<'_>) -> Decision {
        match self.resolve(q) {
            Ok(key) => self.evaluate(Resolved::unpack(key.0)),
            Err(e) => self.denial(INVALID_QUESTION, e.to_string()),
        }
    }

    fn denial(&self, rule: &str, reason: String) -> Decision {
        Decision {
            allowed: false,
            rule_id: rule.to_owned(),
            reason,
            rules: vec![rule.to_owned()],
            obligations: Vec::new(),
            policy_version: self.version.clone(),
        }
    }

    fn evaluate(&self, r: Resolved) -> Decision {
        match self.evaluate_cedar(&r) {
            Ok(d) => d,
            Err(reason) => self.denial(EVALUATION_ERROR, reason),
        }
    }

    fn evaluate_cedar(&self, r: &Resolved) -> Result<Decision, String> {
        let idx = |v: &[EntityUid], i: u16| {
            v.get(usize::from(i))
                .cloned()
                .ok_or_else(|| "internal: id out of range".to_owned())
        };
        let principal = idx(&self.jurisdiction_uids, r.jurisdiction)?;
        let resource = idx(&self.purpose_uids, r.purpose)?;
        let action = self.action_uids[r.action.index() as usize].clone();
        let mut pairs: Vec<(String, RestrictedExpression)> = vec![
            (
                "consent".to_owned(),
                RestrictedExpression::new_string(r.consent.as_str().to_owned()),
            ),
            ("gpc".to_owned(), RestrictedExpression::new_bool(r.gpc)),
            (
                "separate_consent".to_owned(),
                RestrictedExpression::new_bool(r.separate_consent),
            ),
            (
                "mechanisms".to_owned(),
                RestrictedExpression::new_set(
                    self.mechanisms
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| r.mechanisms & (1 << i) != 0)
                        .map(|(_, m)| RestrictedExpression::new_string(m.clone())),
                ),
            ),
        ];
        if let Some(c) = r.category {
            pairs.push((
                "category".to_owned(),
                RestrictedExpression::new_entity_uid(idx(&self.category_uids, c)?),
            ));
        }
        if let Some(a) = r.age {
            pairs.push((
                "age".to_owned(),
                RestrictedExpression::new_long(i64::from(a)),
            ));
        }
        if let Some(d) = r.destination {
            let code = String::from_utf8_lossy(&d).into_owned();
            pairs.push((
                "destination".to_owned(),
                RestrictedExpression::new_entity_uid(uid(&self.country_ty, &code)),
            ));
        }
        let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
        let request =
            Request::new(principal, action, resource, context, None).map_err(|e| e.to_string())?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &self.entities);
        let diagnostics = response.diagnostics();
        if let Some(e) = diagnostics.errors().next() {
            // A failing forbid must never turn into an allow.
            return Err(format!("policy evaluation failed, denying: {e}"));
        }
        let mut determining: Vec<&RuleMeta> = diagnostics
            .reason()
            .filter_map(|id| self.rules.get(id))
            .collect();
        determining.sort_by_key(|m| m.order);
        let allowed = response.decision() == cedar_policy::Decision::Allow;
        let Some(primary) = determining.first() else {
            return Ok(self.denial(
                DEFAULT_DENY,
                "no rule permits this purpose for this jurisdiction (deny by default)".to_owned(),
            ));
        };
        let obligations = if allowed {
            self.obligations_for(r)
        } else {
            Vec::new()
        };
        Ok(Decision {
            allowed,
            rule_id: primary.id.clone(),
            reason: primary.reason.clone(),
            rules: determining.iter().map(|m| m.id.clone()).collect(),
            obligations,
            policy_version: self.version.clone(),
        })
    }

    fn obligations_for(&self, r: &Resolved) -> Vec<Obligation> {
        let cats = &self.taxonomy.categories;
        // a question without a category is about personal data in general
        let category = r.category.or_else(|| cats.id("user"));
        let cross_border = match (
            r.destination,
            self.jurisdictions.get(usize::from(r.jurisdiction)),
        ) {
            (Some(d), Some(j)) => {
                let dest = String::from_utf8_lossy(&d);
                let home = self
                    .regimes
                    .get(&j.regime)
                    .map(|reg| &reg.transfers.home.value);
                dest != j.country && !home.is_some_and(|h| h.iter().any(|c| *c == dest))
            }
            _ => false,
        };
        self.obligations
            .iter()
            .filter(|o| o.actions & r.action.bit() != 0)
            .filter(|o| category.is_some_and(|c| o.categories.iter().any(|a| cats.is_under(c, *a))))
            .filter(|o| !o.cross_border_only || cross_border)
            .map(|o| Obligation {
                kind: o.kind,
                rule_id: o.id.clone(),
                article: o.article.clone(),
            })
            .collect()
    }

    /// Every rule id with its file and line, in load order.
    pub fn rules(&self) -> Vec<(String, String, usize)> {
        let mut metas: Vec<&RuleMeta> = self.rules.values().collect();
        metas.sort_by_key(|m| m.order);
        metas
            .into_iter()
            .map(|m| (m.id.clone(), m.file.clone(), m.line))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let r = Resolved {
            action: Action::Export,
            jurisdiction: 4095,
            purpose: 3999,
            category: Some(3998),
            consent: ConsentState::Refused,
            gpc: true,
            separate_consent: true,
            age: Some(255),
            destination: Some(*b"ZZ"),
            mechanisms: u32::MAX,
        };
        assert_eq!(Resolved::unpack(r.pack()), r);
        let r2 = Resolved {
            action: Action::Collect,
            jurisdiction: 0,
            purpose: 0,
            category: None,
            consent: ConsentState::None,
            gpc: false,
            separate_consent: false,
            age: None,
            destination: Some(*b"AA"),
            mechanisms: 0,
        };
        assert_eq!(Resolved::unpack(r2.pack()), r2);
        assert_ne!(r.pack(), r2.pack());
    }

    #[test]
    fn engine_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PolicyEngine>();
        assert_send_sync::<Arc<Decision>>();
    }
}
