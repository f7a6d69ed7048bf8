//! Identifier kinds, the stitching rules, and turning raw identifiers into graph keys
//! (normalized, checked against the blocked values, then blind-indexed). No I/O.

use std::collections::{BTreeMap, HashSet};

use meridian_vault::{BlindIndex, BlindIndexer, IdentifierKind};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::IdentityError;

/// What an identifier is. The numbers are the `meridian.v1.IdentifierType` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifierType {
    AnonymousId = 1,
    UserId = 2,
    Email = 3,
    Phone = 4,
    Idfa = 5,
    Gaid = 6,
    DeviceId = 7,
    StorefrontCustomerId = 8,
    Fbclid = 9,
    Gclid = 10,
    Ttclid = 11,
}

/// Number of identifier types.
pub const TYPE_COUNT: usize = 11;

impl IdentifierType {
    pub const ALL: [IdentifierType; TYPE_COUNT] = [
        IdentifierType::AnonymousId,
        IdentifierType::UserId,
        IdentifierType::Email,
        IdentifierType::Phone,
        IdentifierType::Idfa,
        IdentifierType::Gaid,
        IdentifierType::DeviceId,
        IdentifierType::StorefrontCustomerId,
        IdentifierType::Fbclid,
        IdentifierType::Gclid,
        IdentifierType::Ttclid,
    ];

    /// The protobuf enum number (also the stored code).
    pub fn code(self) -> i16 {
        self as i16
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| i32::from(t.code()) == code)
    }

    /// Dense index, `0..TYPE_COUNT`.
    pub fn slot(self) -> usize {
        (self as usize) - 1
    }

    pub fn name(self) -> &'static str {
        match self {
            IdentifierType::AnonymousId => "anonymous_id",
            IdentifierType::UserId => "user_id",
            IdentifierType::Email => "email",
            IdentifierType::Phone => "phone",
            IdentifierType::Idfa => "idfa",
            IdentifierType::Gaid => "gaid",
            IdentifierType::DeviceId => "device_id",
            IdentifierType::StorefrontCustomerId => "storefront_customer_id",
            IdentifierType::Fbclid => "fbclid",
            IdentifierType::Gclid => "gclid",
            IdentifierType::Ttclid => "ttclid",
        }
    }

    fn is_device(self) -> bool {
        matches!(
            self,
            IdentifierType::Idfa | IdentifierType::Gaid | IdentifierType::DeviceId
        )
    }
}

/// An identifier as it arrives, before normalization. Its `Debug` prints no value.
#[derive(Clone, PartialEq, Eq)]
pub struct RawIdentifier {
    pub kind: IdentifierType,
    pub value: String,
    /// The issuing system for storefront customer ids (`shopify`); `shopify:123` in `value`
    /// with an empty source is read as source `shopify`, id `123`.
    pub source: String,
    /// ISO 3166-1 alpha-2 region for national phone numbers.
    pub default_region: String,
}

impl std::fmt::Debug for RawIdentifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawIdentifier")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl RawIdentifier {
    pub fn new(kind: IdentifierType, value: impl Into<String>) -> Self {
        RawIdentifier {
            kind,
            value: value.into(),
            source: String::new(),
            default_region: String::new(),
        }
    }
}

/// A graph node: an identifier's type and blind index. Holds no plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    pub kind: IdentifierType,
    pub index: BlindIndex,
}

/// The stitching rules, from configuration. Validate with [`Rules::validate`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// Types from highest to lowest priority; the highest-priority identifier of an event
    /// anchors its links. Types not listed rank after the listed ones, in enum order.
    pub priority: Vec<IdentifierType>,
    /// Most identifiers of a type one profile may hold; a merge that would exceed it is
    /// refused and recorded. Types not listed are unlimited.
    pub max_per_profile: BTreeMap<IdentifierType, u32>,
    /// Values never linked (normalized the same way as the identifiers), per type.
    pub blocked_values: BTreeMap<IdentifierType, Vec<String>>,
    /// Device ids (IDFA, GAID, other) made only of zeros and separators are never linked
    /// (an advertising id with tracking limited reads all zeros).
    pub block_zero_device_ids: bool,
    /// A non-user-id value seen with more than this many distinct user ids is shared (a
    /// family tablet, an office email): it is detached from every profile and never linked
    /// again. 0 disables the rule.
    pub shared_value_max_user_ids: u32,
}

impl Default for Rules {
    fn default() -> Self {
        use IdentifierType::*;
        Rules {
            priority: vec![
                UserId,
                StorefrontCustomerId,
                Email,
                Phone,
                Idfa,
                Gaid,
                DeviceId,
                AnonymousId,
                Gclid,
                Fbclid,
                Ttclid,
            ],
            max_per_profile: BTreeMap::from([
                (UserId, 1),
                (StorefrontCustomerId, 3),
                (Email, 5),
                (Phone, 3),
                (Idfa, 10),
                (Gaid, 10),
                (DeviceId, 10),
                (AnonymousId, 50),
            ]),
            blocked_values: BTreeMap::from([
                (
                    Email,
                    [
                        "test@test.com",
                        "test@example.com",
                        "noreply@example.com",
                        "no-reply@example.com",
                        "email@example.com",
                        "a@a.com",
                    ]
                    .map(String::from)
                    .to_vec(),
                ),
                (
                    AnonymousId,
                    ["undefined", "null", "none", "0", "anonymous"]
                        .map(String::from)
                        .to_vec(),
                ),
                (
                    UserId,
                    ["undefined", "null", "none", "0", "guest", "anonymous"]
                        .map(String::from)
                        .to_vec(),
                ),
            ]),
            block_zero_device_ids: true,
            shared_value_max_user_ids: 1,
        }
    }
}

impl Rules {
    /// Checks the rules and precomputes what stitching needs.
    pub fn validate(self) -> Result<CompiledRules, IdentityError> {
        let mut seen = HashSet::new();
        for t in &self.priority {
            if !seen.insert(*t) {
                return Err(IdentityError::InvalidRules(format!(
                    "{} is listed twice in priority",
                    t.name()
                )));
            }
        }
        if self.max_per_profile.get(&IdentifierType::UserId) != Some(&1) {
            return Err(IdentityError::InvalidRules(
                "max_per_profile.user_id must be 1 (merge protection)".into(),
            ));
        }
        if let Some((t, _)) = self.max_per_profile.iter().find(|(_, max)| **max == 0) {
            return Err(IdentityError::InvalidRules(format!(
                "max_per_profile.{} must be at least 1",
                t.name()
            )));
        }
        let mut rank = [u8::MAX; TYPE_COUNT];
        let mut next = 0u8;
        for t in self.priority.iter().copied().chain(IdentifierType::ALL) {
            if rank[t.slot()] == u8::MAX {
                rank[t.slot()] = next;
                next += 1;
            }
        }
        let mut max = [u32::MAX; TYPE_COUNT];
        for (t, m) in &self.max_per_profile {
            max[t.slot()] = *m;
        }
        let mut blocked: Vec<HashSet<String>> = vec![HashSet::new(); TYPE_COUNT];
        for (t, values) in &self.blocked_values {
            for v in values {
                let normalized = normalize(*t, v, "", "").map_err(|_| {
                    IdentityError::InvalidRules(format!(
                        "a blocked {} value does not normalize",
                        t.name()
                    ))
                })?;
                blocked[t.slot()].insert(normalized.value.to_string());
            }
        }
        Ok(CompiledRules {
            rank,
            max,
            blocked,
            block_zero_device_ids: self.block_zero_device_ids,
            shared_value_max_user_ids: self.shared_value_max_user_ids,
        })
    }
}

/// Validated rules, ready for stitching.
#[derive(Debug, Clone)]
pub struct CompiledRules {
    rank: [u8; TYPE_COUNT],
    max: [u32; TYPE_COUNT],
    blocked: Vec<HashSet<String>>,
    block_zero_device_ids: bool,
    shared_value_max_user_ids: u32,
}

impl Default for CompiledRules {
    fn default() -> Self {
        // The defaults are valid by construction (checked by a test).
        Rules::default()
            .validate()
            .unwrap_or_else(|_| CompiledRules {
                rank: [0; TYPE_COUNT],
                max: [1; TYPE_COUNT],
                blocked: vec![HashSet::new(); TYPE_COUNT],
                block_zero_device_ids: true,
                shared_value_max_user_ids: 1,
            })
    }
}

impl CompiledRules {
    /// Lower ranks first (0 is the highest priority).
    pub fn rank(&self, t: IdentifierType) -> u8 {
        self.rank[t.slot()]
    }
    pub fn max_per_profile(&self, t: IdentifierType) -> u32 {
        self.max[t.slot()]
    }
    pub fn shared_value_max_user_ids(&self) -> u32 {
        self.shared_value_max_user_ids
    }

    /// The values blocked outright, normalized, per type.
    pub fn blocked_values(&self) -> impl Iterator<Item = (IdentifierType, &str)> {
        IdentifierType::ALL
            .into_iter()
            .flat_map(move |t| self.blocked[t.slot()].iter().map(move |v| (t, v.as_str())))
    }

    /// Whether a normalized value is blocked outright.
    pub fn is_blocked(&self, t: IdentifierType, normalized: &str) -> bool {
        if self.blocked[t.slot()].contains(normalized) {
            return true;
        }
        self.block_zero_device_ids
            && t.is_device()
            && normalized.bytes().any(|b| b == b'0')
            && normalized.bytes().all(|b| b == b'0' || b == b'-')
    }
}

/// A normalized identifier: the exact string that is blind-indexed and sealed.
pub struct Normalized {
    pub kind: IdentifierType,
    /// Normalized value; for storefront customer ids `source ‖ 0x00 ‖ id`.
    pub value: Zeroizing<String>,
    /// The issuing system of a storefront customer id, in clear (not personal data).
    pub source: String,
}

impl std::fmt::Debug for Normalized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Normalized")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Normalized {
    /// The value as shown to the subject (`shopify:123` for storefront customer ids).
    pub fn display_value(&self) -> Zeroizing<String> {
        Zeroizing::new(self.value.replacen('\u{0}', ":", 1))
    }
}

/// The vault's customer-id kind carries the types the vault does not know, under reserved
/// source names (`:` cannot appear in a storefront source, so they never collide; the graph
/// key also includes the type).
fn vault_kind<'a>(t: IdentifierType, source: &'a str) -> IdentifierKind<'a> {
    match t {
        IdentifierType::Email => IdentifierKind::Email,
        IdentifierType::Phone => IdentifierKind::Phone,
        IdentifierType::Idfa | IdentifierType::Gaid | IdentifierType::DeviceId => {
            IdentifierKind::DeviceId
        }
        IdentifierType::StorefrontCustomerId => IdentifierKind::CustomerId { source },
        IdentifierType::AnonymousId => IdentifierKind::CustomerId {
            source: "meridian:anonymous_id",
        },
        IdentifierType::UserId => IdentifierKind::CustomerId {
            source: "meridian:user_id",
        },
        IdentifierType::Fbclid => IdentifierKind::CustomerId {
            source: "meridian:fbclid",
        },
        IdentifierType::Gclid => IdentifierKind::CustomerId {
            source: "meridian:gclid",
        },
        IdentifierType::Ttclid => IdentifierKind::CustomerId {
            source: "meridian:ttclid",
        },
    }
}

/// Normalizes an identifier. Storefront customer ids need a source (or `source:id`).
pub fn normalize(
    kind: IdentifierType,
    value: &str,
    source: &str,
    default_region: &str,
) -> Result<Normalized, IdentityError> {
    if value.contains('\u{0}') || source.contains('\u{0}') {
        return Err(IdentityError::InvalidIdentifier {
            kind: kind.name(),
            reason: "contains NUL",
        });
    }
    let region = Some(default_region).filter(|r| !r.trim().is_empty());
    match kind {
        IdentifierType::StorefrontCustomerId => {
            let (source, id) = match source.trim() {
                "" => value
                    .split_once(':')
                    .filter(|(s, _)| !s.starts_with("gid"))
                    .ok_or(IdentityError::InvalidIdentifier {
                        kind: kind.name(),
                        reason: "needs a source (`shopify`) or a `source:id` value",
                    })?,
                s => (s, value),
            };
            let source_norm = source.trim().to_ascii_lowercase();
            let v = meridian_vault::normalize(
                IdentifierKind::CustomerId {
                    source: &source_norm,
                },
                id,
                None,
            )
            .map_err(|e| invalid(kind, &e))?;
            Ok(Normalized {
                kind,
                value: v,
                source: source_norm,
            })
        }
        IdentifierType::Idfa | IdentifierType::Gaid | IdentifierType::DeviceId => {
            let v = meridian_vault::normalize(IdentifierKind::DeviceId, value, None)
                .map_err(|e| invalid(kind, &e))?;
            Ok(Normalized {
                kind,
                value: v,
                source: String::new(),
            })
        }
        IdentifierType::Email | IdentifierType::Phone => {
            let v = meridian_vault::normalize(vault_kind(kind, ""), value, region)
                .map_err(|e| invalid(kind, &e))?;
            Ok(Normalized {
                kind,
                value: v,
                source: String::new(),
            })
        }
        _ => {
            // Opaque ids: trimmed, case kept (click ids and user ids are case-sensitive).
            let v = value.trim();
            if v.is_empty() {
                return Err(IdentityError::InvalidIdentifier {
                    kind: kind.name(),
                    reason: "empty",
                });
            }
            Ok(Normalized {
                kind,
                value: Zeroizing::new(v.to_owned()),
                source: String::new(),
            })
        }
    }
}

fn invalid(kind: IdentifierType, err: &meridian_vault::VaultError) -> IdentityError {
    match err {
        meridian_vault::VaultError::InvalidIdentifier { reason, .. } => {
            IdentityError::InvalidIdentifier {
                kind: kind.name(),
                reason,
            }
        }
        _ => IdentityError::InvalidIdentifier {
            kind: kind.name(),
            reason: "cannot be normalized",
        },
    }
}

/// The blind index of a normalized identifier under the workspace's indexer.
pub fn blind_index(indexer: &BlindIndexer, n: &Normalized) -> NodeKey {
    let index: BlindIndex = match n.kind {
        IdentifierType::StorefrontCustomerId => {
            indexer.index_normalized(IdentifierKind::CustomerId { source: &n.source }, &n.value)
        }
        IdentifierType::Email
        | IdentifierType::Phone
        | IdentifierType::Idfa
        | IdentifierType::Gaid
        | IdentifierType::DeviceId => indexer.index_normalized(vault_kind(n.kind, ""), &n.value),
        opaque => {
            // Namespaced like a customer id of a reserved source, so ids of different
            // opaque types never share an index.
            let namespaced = Zeroizing::new(format!(
                "meridian:{}\u{0}{}",
                opaque.name(),
                n.value.as_str()
            ));
            indexer.index_normalized(vault_kind(opaque, ""), &namespaced)
        }
    };
    NodeKey {
        kind: n.kind,
        index,
    }
}

/// What happened to one raw identifier at intake.
#[derive(Debug)]
pub enum Intake {
    /// Usable: its key and normalized form.
    Key(NodeKey, Normalized),
    /// Blocked outright (the key is still computed, so the refusal can be recorded).
    Blocked(NodeKey),
}

/// Normalizes, checks against the blocked values, and blind-indexes one identifier.
pub fn intake(
    rules: &CompiledRules,
    indexer: &BlindIndexer,
    raw: &RawIdentifier,
) -> Result<Intake, IdentityError> {
    let n = normalize(raw.kind, &raw.value, &raw.source, &raw.default_region)?;
    let key = blind_index(indexer, &n);
    let plain_id = match n.kind {
        IdentifierType::StorefrontCustomerId => n.value.split('\u{0}').nth(1).unwrap_or(""),
        _ => n.value.as_str(),
    };
    if rules.is_blocked(n.kind, plain_id) || rules.is_blocked(n.kind, &n.value) {
        return Ok(Intake::Blocked(key));
    }
    Ok(Intake::Key(key, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_are_valid_and_ordered() {
        let r = Rules::default().validate().unwrap();
        assert_eq!(r.rank(IdentifierType::UserId), 0);
        assert!(r.rank(IdentifierType::Email) < r.rank(IdentifierType::AnonymousId));
        assert_eq!(r.max_per_profile(IdentifierType::UserId), 1);
        assert_eq!(r.max_per_profile(IdentifierType::Email), 5);
        assert_eq!(r.max_per_profile(IdentifierType::DeviceId), 10);
        assert_eq!(r.max_per_profile(IdentifierType::Gclid), u32::MAX);
        for t in IdentifierType::ALL {
            assert_eq!(IdentifierType::from_code(i32::from(t.code())), Some(t));
        }
    }

    #[test]
    fn rules_are_checked() {
        let mut r = Rules::default();
        r.priority.push(IdentifierType::Email);
        assert!(r.validate().is_err());
        let mut r = Rules::default();
        r.max_per_profile.insert(IdentifierType::UserId, 2);
        assert!(r.validate().is_err());
        let mut r = Rules::default();
        r.blocked_values
            .insert(IdentifierType::Email, vec!["not-an-email".into()]);
        assert!(r.validate().is_err());
        let parsed: Rules = serde_json::from_str(
            r#"{"max_per_profile": {"user_id": 1, "email": 2}, "shared_value_max_user_ids": 3}"#,
        )
        .unwrap();
        let c = parsed.validate().unwrap();
        assert_eq!(c.max_per_profile(IdentifierType::Email), 2);
        assert_eq!(c.shared_value_max_user_ids(), 3);
    }

    #[test]
    fn blocked_values_are_matched_after_normalization() {
        let r = CompiledRules::default();
        let ix = meridian_vault_test_indexer();
        let blocked = |kind, v: &str| {
            matches!(
                intake(&r, &ix, &RawIdentifier::new(kind, v)).unwrap(),
                Intake::Blocked(_)
            )
        };
        assert!(blocked(IdentifierType::Email, " TEST@test.com "));
        assert!(!blocked(IdentifierType::Email, "ana@test.com"));
        assert!(blocked(
            IdentifierType::Idfa,
            "00000000-0000-0000-0000-000000000000"
        ));
        assert!(blocked(IdentifierType::Gaid, "0000"));
        assert!(!blocked(
            IdentifierType::Gaid,
            "00000000-0000-0000-0000-000000000001"
        ));
        assert!(blocked(IdentifierType::UserId, "undefined"));
        assert!(!blocked(IdentifierType::UserId, "u-1"));
    }

    #[test]
    fn storefront_ids_take_their_source_and_kinds_do_not_collide() {
        let r = CompiledRules::default();
        let ix = meridian_vault_test_indexer();
        let key = |raw: RawIdentifier| match intake(&r, &ix, &raw).unwrap() {
            Intake::Key(k, _) => k,
            Intake::Blocked(_) => panic!("blocked"),
        };
        let a = key(RawIdentifier::new(
            IdentifierType::StorefrontCustomerId,
            "shopify:123",
        ));
        let mut raw = RawIdentifier::new(
            IdentifierType::StorefrontCustomerId,
            "gid://shopify/Customer/123",
        );
        raw.source = "Shopify".into();
        assert_eq!(a, key(raw));
        let b = key(RawIdentifier::new(
            IdentifierType::StorefrontCustomerId,
            "woo:123",
        ));
        assert_ne!(a, b);
        let gclid = key(RawIdentifier::new(IdentifierType::Gclid, "abc"));
        let fbclid = key(RawIdentifier::new(IdentifierType::Fbclid, "abc"));
        assert_ne!(gclid.index, fbclid.index);
        assert!(
            intake(
                &r,
                &ix,
                &RawIdentifier::new(IdentifierType::StorefrontCustomerId, "123")
            )
            .is_err()
        );
        let n = normalize(IdentifierType::StorefrontCustomerId, "shopify:42", "", "").unwrap();
        assert_eq!(n.display_value().as_str(), "shopify:42");
        // Debug prints no value.
        let raw = RawIdentifier::new(IdentifierType::Email, "ana@example.com");
        assert!(!format!("{raw:?}").contains("ana"));
    }

    pub(crate) fn meridian_vault_test_indexer() -> BlindIndexer {
        crate::testing::indexer()
    }
}

/// The room's input: identifiers seen together on one event (from the bus, later).
#[derive(Debug, Clone)]
pub struct IdentifierObservation {
    pub event_id: String,
    pub at: chrono::DateTime<chrono::Utc>,
    pub rule: crate::graph::LinkRule,
    pub identifiers: Vec<RawIdentifier>,
}

/// An observation after intake: graph keys, the normalized values (to seal new ones), and
/// how many identifiers could not be normalized (dropped).
#[derive(Debug)]
pub struct Prepared {
    pub observation: crate::graph::Observation,
    pub normalized: Vec<(NodeKey, Normalized)>,
    pub invalid: u64,
}

/// Normalizes, filters and blind-indexes an observation's identifiers.
pub fn prepare(
    rules: &CompiledRules,
    indexer: &BlindIndexer,
    obs: &IdentifierObservation,
) -> Prepared {
    let mut identifiers = Vec::with_capacity(obs.identifiers.len());
    let mut normalized = Vec::with_capacity(obs.identifiers.len());
    let mut blocked = Vec::new();
    let mut invalid = 0;
    for raw in &obs.identifiers {
        match intake(rules, indexer, raw) {
            Ok(Intake::Key(key, n)) => {
                identifiers.push(key);
                normalized.push((key, n));
            }
            Ok(Intake::Blocked(key)) => blocked.push(key),
            Err(_) => invalid += 1,
        }
    }
    Prepared {
        observation: crate::graph::Observation {
            event_id: obs.event_id.clone(),
            at: obs.at,
            rule: obs.rule,
            identifiers,
            blocked,
        },
        normalized,
        invalid,
    }
}
