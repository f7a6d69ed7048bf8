//! IAB TCF v2.2 TC strings: the core segment and the optional
//! disclosed-vendors, allowed-vendors and publisher-TC segments. The same
//! decoder serves the GPP `tcfeuv2` section, whose bits are identical; the
//! small differences in leniency between `@iabtcf/core` and `@iabgpp/cmpapi`
//! are selected by [`Flavor`].

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::bits::{BitReader, base64url_bits};
use crate::error::SignalError;
use crate::idset::IdSet;

/// Which reference implementation's rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// A stand-alone TC string, as `@iabtcf/core` decodes it.
    TcString,
    /// The `tcfeuv2` section of a GPP string, as `@iabgpp/cmpapi` decodes it.
    Gpp,
}

/// A publisher restriction type (TCF "restrictionType").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RestrictionType {
    /// 0: the purpose is flatly not allowed for the vendors.
    NotAllowed,
    /// 1: the vendors must rely on consent for the purpose.
    RequireConsent,
    /// 2: the vendors must rely on legitimate interest for the purpose.
    RequireLegitimateInterest,
}

impl RestrictionType {
    /// The wire value (0, 1 or 2).
    pub fn code(self) -> u8 {
        match self {
            Self::NotAllowed => 0,
            Self::RequireConsent => 1,
            Self::RequireLegitimateInterest => 2,
        }
    }
}

/// One publisher restriction: a purpose, a restriction type and the vendors
/// it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherRestriction {
    /// TCF purpose id (1-based).
    pub purpose_id: u8,
    /// What the restriction does.
    pub restriction_type: RestrictionType,
    /// The vendors restricted.
    pub vendors: IdSet,
}

/// The publisher-TC segment: the publisher's own purposes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublisherTc {
    /// Publisher purpose consents (TCF purpose ids 1-24).
    pub purpose_consents: IdSet,
    /// Publisher purpose legitimate-interest establishment (ids 1-24).
    pub purpose_legitimate_interests: IdSet,
    /// Number of custom purposes.
    pub num_custom_purposes: u8,
    /// Custom purpose consents (ids 1..=num_custom_purposes).
    pub custom_purpose_consents: IdSet,
    /// Custom purpose legitimate interests (ids 1..=num_custom_purposes).
    pub custom_purpose_legitimate_interests: IdSet,
}

/// A decoded TCF v2 TC string (or GPP `tcfeuv2` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcString {
    /// Encoding version (2).
    pub version: u8,
    /// When the string was first created (decisecond precision).
    pub created: DateTime<Utc>,
    /// When the string was last updated.
    pub last_updated: DateTime<Utc>,
    /// Consent management platform id.
    pub cmp_id: u16,
    /// CMP version.
    pub cmp_version: u16,
    /// CMP screen the consent was given on.
    pub consent_screen: u8,
    /// Two-letter language of the consent UI (upper case).
    pub consent_language: String,
    /// Global Vendor List version.
    pub vendor_list_version: u16,
    /// TCF policy version (4 for TCF v2.2).
    pub policy_version: u8,
    /// Whether the string is service-specific.
    pub is_service_specific: bool,
    /// Whether non-standard texts (formerly "stacks") were shown.
    pub use_non_standard_texts: bool,
    /// Special feature opt-ins (ids 1-12).
    pub special_feature_optins: IdSet,
    /// Purpose consents (ids 1-24).
    pub purpose_consents: IdSet,
    /// Purpose legitimate-interest transparency (ids 1-24).
    pub purpose_legitimate_interests: IdSet,
    /// Purpose one was not disclosed (publisher country handles it).
    pub purpose_one_treatment: bool,
    /// Publisher country (ISO 3166-1 alpha-2, upper case).
    pub publisher_country_code: String,
    /// Vendor consents.
    pub vendor_consents: IdSet,
    /// Vendor legitimate interests.
    pub vendor_legitimate_interests: IdSet,
    /// Publisher restrictions, in string order, one per (purpose, type).
    pub publisher_restrictions: Vec<PublisherRestriction>,
    /// The disclosed-vendors segment, when present.
    pub disclosed_vendors: Option<IdSet>,
    /// The allowed-vendors segment, when present.
    pub allowed_vendors: Option<IdSet>,
    /// The publisher-TC segment, when present.
    pub publisher_tc: Option<PublisherTc>,
}

impl TcString {
    /// Decodes a TC string as `@iabtcf/core` does (version 2 only).
    pub fn decode(text: &str) -> Result<Self, SignalError> {
        decode(text, Flavor::TcString)
    }

    /// Whether the user consented to TCF purpose `purpose_id` (1-based).
    pub fn purpose_consent(&self, purpose_id: u8) -> bool {
        self.purpose_consents.contains(u16::from(purpose_id))
    }

    /// Whether legitimate interest for `purpose_id` was disclosed and not
    /// objected to.
    pub fn purpose_legitimate_interest(&self, purpose_id: u8) -> bool {
        self.purpose_legitimate_interests
            .contains(u16::from(purpose_id))
    }

    /// Whether special feature `feature_id` (1-based) was opted in.
    pub fn special_feature_optin(&self, feature_id: u8) -> bool {
        self.special_feature_optins.contains(u16::from(feature_id))
    }

    /// Whether vendor `vendor_id` has consent.
    pub fn vendor_consent(&self, vendor_id: u16) -> bool {
        self.vendor_consents.contains(vendor_id)
    }

    /// Whether vendor `vendor_id` has legitimate-interest transparency.
    pub fn vendor_legitimate_interest(&self, vendor_id: u16) -> bool {
        self.vendor_legitimate_interests.contains(vendor_id)
    }

    /// The publisher restrictions that apply to `vendor_id`, as
    /// (purpose id, restriction type).
    pub fn restrictions_for_vendor(
        &self,
        vendor_id: u16,
    ) -> impl Iterator<Item = (u8, RestrictionType)> + '_ {
        self.publisher_restrictions
            .iter()
            .filter(move |r| r.vendors.contains(vendor_id))
            .map(|r| (r.purpose_id, r.restriction_type))
    }

    /// The names of the segments present, in canonical order.
    pub fn segments(&self) -> Vec<&'static str> {
        let mut out = vec!["core"];
        if self.disclosed_vendors.is_some() {
            out.push("vendorsDisclosed");
        }
        if self.allowed_vendors.is_some() {
            out.push("vendorsAllowed");
        }
        if self.publisher_tc.is_some() {
            out.push("publisherTC");
        }
        out
    }

    /// The decoded fields with `@iabtcf/core` `TCModel` names; id sets as
    /// sorted arrays, dates as RFC 3339, absent segments as empty values.
    pub fn to_json(&self) -> Value {
        // A restriction with no vendors does not exist in iabtcf's model.
        let mut restrictions: Vec<&PublisherRestriction> = self
            .publisher_restrictions
            .iter()
            .filter(|r| !r.vendors.is_empty())
            .collect();
        restrictions.sort_by_key(|r| (r.purpose_id, r.restriction_type));
        let publisher = self.publisher_tc.clone().unwrap_or_default();
        json!({
            "version": self.version,
            "created": rfc3339(&self.created),
            "lastUpdated": rfc3339(&self.last_updated),
            "cmpId": self.cmp_id,
            "cmpVersion": self.cmp_version,
            "consentScreen": self.consent_screen,
            "consentLanguage": self.consent_language,
            "vendorListVersion": self.vendor_list_version,
            "policyVersion": self.policy_version,
            "isServiceSpecific": self.is_service_specific,
            "useNonStandardTexts": self.use_non_standard_texts,
            "purposeOneTreatment": self.purpose_one_treatment,
            "publisherCountryCode": self.publisher_country_code,
            "purposeConsents": self.purpose_consents,
            "purposeLegitimateInterests": self.purpose_legitimate_interests,
            "specialFeatureOptins": self.special_feature_optins,
            "vendorConsents": self.vendor_consents,
            "vendorLegitimateInterests": self.vendor_legitimate_interests,
            "publisherRestrictions": restrictions.iter().map(|r| json!({
                "purposeId": r.purpose_id,
                "restrictionType": r.restriction_type.code(),
                "vendors": r.vendors,
            })).collect::<Vec<_>>(),
            "publisherConsents": publisher.purpose_consents,
            "publisherLegitimateInterests": publisher.purpose_legitimate_interests,
            "numCustomPurposes": publisher.num_custom_purposes,
            "publisherCustomConsents": publisher.custom_purpose_consents,
            "publisherCustomLegitimateInterests": publisher.custom_purpose_legitimate_interests,
            "vendorsDisclosed": self.disclosed_vendors.clone().unwrap_or_default(),
            "vendorsAllowed": self.allowed_vendors.clone().unwrap_or_default(),
            "segments": self.segments(),
        })
    }

    /// The fields with `@iabgpp/cmpapi` `tcfeuv2` names and value shapes
    /// (purpose vectors as fixed-length boolean arrays, absent segments as
    /// the library's defaults).
    pub fn to_gpp_json(&self) -> Value {
        let publisher = self.publisher_tc.clone().unwrap_or_default();
        let n = usize::from(publisher.num_custom_purposes);
        json!({
            "Version": self.version,
            "Created": rfc3339(&self.created),
            "LastUpdated": rfc3339(&self.last_updated),
            "CmpId": self.cmp_id,
            "CmpVersion": self.cmp_version,
            "ConsentScreen": self.consent_screen,
            "ConsentLanguage": self.consent_language,
            "VendorListVersion": self.vendor_list_version,
            "PolicyVersion": self.policy_version,
            "IsServiceSpecific": self.is_service_specific,
            "UseNonStandardStacks": self.use_non_standard_texts,
            "SpecialFeatureOptins": flags(&self.special_feature_optins, 12),
            "PurposeConsents": flags(&self.purpose_consents, 24),
            "PurposeLegitimateInterests": flags(&self.purpose_legitimate_interests, 24),
            "PurposeOneTreatment": self.purpose_one_treatment,
            "PublisherCountryCode": self.publisher_country_code,
            "VendorConsents": self.vendor_consents,
            "VendorLegitimateInterests": self.vendor_legitimate_interests,
            "PublisherRestrictions": self.publisher_restrictions.iter().map(|r| json!({
                "key": r.purpose_id,
                "type": r.restriction_type.code(),
                "ids": r.vendors,
            })).collect::<Vec<_>>(),
            "PublisherPurposesSegmentType": 3,
            "PublisherConsents": flags(&publisher.purpose_consents, 24),
            "PublisherLegitimateInterests": flags(&publisher.purpose_legitimate_interests, 24),
            "NumCustomPurposes": publisher.num_custom_purposes,
            "PublisherCustomConsents": flags(&publisher.custom_purpose_consents, n),
            "PublisherCustomLegitimateInterests": flags(&publisher.custom_purpose_legitimate_interests, n),
            "VendorsAllowedSegmentType": 2,
            "VendorsAllowed": self.allowed_vendors.clone().unwrap_or_default(),
            "VendorsDisclosedSegmentType": 1,
            "VendorsDisclosed": self.disclosed_vendors.clone().unwrap_or_default(),
        })
    }
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn flags(set: &IdSet, len: usize) -> Vec<bool> {
    (1..=len)
        .map(|i| u16::try_from(i).is_ok_and(|id| set.contains(id)))
        .collect()
}

/// Segment type (first 3 bits) to name.
fn segment_name(kind: u64) -> &'static str {
    match kind {
        0 => "core",
        1 => "vendorsDisclosed",
        2 => "vendorsAllowed",
        3 => "publisherTC",
        _ => "unknown",
    }
}

pub(crate) fn decode(text: &str, flavor: Flavor) -> Result<TcString, SignalError> {
    let what = match flavor {
        Flavor::TcString => "TC string",
        Flavor::Gpp => "GPP tcfeuv2 section",
    };
    let mut core: Option<TcString> = None;
    let mut disclosed = None;
    let mut allowed = None;
    let mut publisher = None;
    for (index, part) in text.split('.').enumerate() {
        if part.is_empty() {
            match flavor {
                // cmpapi skips empty segments; iabtcf rejects them.
                Flavor::Gpp => continue,
                Flavor::TcString => {
                    return Err(SignalError::structure(
                        what,
                        format!("segment {} is empty", index + 1),
                    ));
                }
            }
        }
        let provisional = format!("{what} segment {}", index + 1);
        let bits = base64url_bits(&provisional, part)?;
        let mut peek = BitReader::new(&provisional, &bits);
        let kind = peek.uint(3, "segmentType")?;
        let name = format!("{what} {} segment", segment_name(kind));
        let duplicate = || {
            SignalError::structure(
                what,
                format!(
                    "segment {} repeats the {} segment",
                    index + 1,
                    segment_name(kind)
                ),
            )
        };
        match kind {
            0 => {
                if core.is_some() {
                    return Err(duplicate());
                }
                core = Some(decode_core(&name, &bits, flavor)?);
            }
            1 | 2 => {
                let mut r = BitReader::new(&name, &bits);
                r.skip(3, "segmentType")?;
                let field = if kind == 1 {
                    "vendorsDisclosed"
                } else {
                    "vendorsAllowed"
                };
                let set = vendor_vector(&mut r, field)?;
                let slot = if kind == 1 {
                    &mut disclosed
                } else {
                    &mut allowed
                };
                if slot.is_some() {
                    return Err(duplicate());
                }
                *slot = Some(set);
            }
            3 => {
                if publisher.is_some() {
                    return Err(duplicate());
                }
                publisher = Some(decode_publisher_tc(&name, &bits)?);
            }
            other => {
                return Err(SignalError::InvalidField {
                    segment: provisional,
                    field: "segmentType",
                    offset: 0,
                    reason: format!(
                        "segment type {other} is not defined (0 core, 1 vendorsDisclosed, 2 vendorsAllowed, 3 publisherTC)"
                    ),
                });
            }
        }
    }
    let mut tc = core.ok_or_else(|| SignalError::structure(what, "the core segment is missing"))?;
    tc.disclosed_vendors = disclosed;
    tc.allowed_vendors = allowed;
    tc.publisher_tc = publisher;
    Ok(tc)
}

fn decode_core(name: &str, bits: &[u8], flavor: Flavor) -> Result<TcString, SignalError> {
    let mut r = BitReader::new(name, bits);
    let version = r.u8(6, "version")?;
    if flavor == Flavor::TcString && version != 2 {
        return Err(r.invalid(
            "version",
            0,
            format!("version {version} is not supported (only TCF v2 strings, version 2)"),
        ));
    }
    let created = date(&mut r, "created")?;
    let last_updated = date(&mut r, "lastUpdated")?;
    let cmp_offset = r.pos();
    let cmp_id = r.u16(12, "cmpId")?;
    if flavor == Flavor::TcString && cmp_id <= 1 {
        return Err(r.invalid(
            "cmpId",
            cmp_offset,
            format!("CMP id {cmp_id} is not valid (must be greater than 1)"),
        ));
    }
    let cmp_version = r.u16(12, "cmpVersion")?;
    let consent_screen = r.u8(6, "consentScreen")?;
    let consent_language = r.letters("consentLanguage")?;
    let vendor_list_version = r.u16(12, "vendorListVersion")?;
    let policy_version = r.u8(6, "policyVersion")?;
    let is_service_specific = r.bool("isServiceSpecific")?;
    let use_non_standard_texts = r.bool("useNonStandardTexts")?;
    let special_feature_optins = IdSet::from_flags(&r.flags(12, "specialFeatureOptins")?);
    let purpose_consents = IdSet::from_flags(&r.flags(24, "purposeConsents")?);
    let purpose_legitimate_interests =
        IdSet::from_flags(&r.flags(24, "purposeLegitimateInterests")?);
    let purpose_one_treatment = r.bool("purposeOneTreatment")?;
    let publisher_country_code = r.letters("publisherCountryCode")?;
    let vendor_consents = vendor_vector(&mut r, "vendorConsents")?;
    let vendor_legitimate_interests = vendor_vector(&mut r, "vendorLegitimateInterests")?;
    // cmpapi does not insist on the restrictions field; iabtcf does.
    let publisher_restrictions = if flavor == Flavor::Gpp && r.remaining() < 12 {
        Vec::new()
    } else {
        restrictions(&mut r)?
    };
    Ok(TcString {
        version,
        created,
        last_updated,
        cmp_id,
        cmp_version,
        consent_screen,
        consent_language,
        vendor_list_version,
        policy_version,
        is_service_specific,
        use_non_standard_texts,
        special_feature_optins,
        purpose_consents,
        purpose_legitimate_interests,
        purpose_one_treatment,
        publisher_country_code,
        vendor_consents,
        vendor_legitimate_interests,
        publisher_restrictions,
        disclosed_vendors: None,
        allowed_vendors: None,
        publisher_tc: None,
    })
}

fn date(r: &mut BitReader<'_>, field: &'static str) -> Result<DateTime<Utc>, SignalError> {
    let offset = r.pos();
    let deciseconds = r.uint(36, field)?;
    i64::try_from(deciseconds)
        .ok()
        .and_then(|d| d.checked_mul(100))
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .ok_or_else(|| {
            r.invalid(
                field,
                offset,
                format!("{deciseconds} ds is not a valid time"),
            )
        })
}

/// A vendor vector: 16-bit max id, 1-bit encoding type, then a bitfield of
/// max-id bits or a list of single ids and ranges.
fn vendor_vector(r: &mut BitReader<'_>, field: &'static str) -> Result<IdSet, SignalError> {
    let max_id = r.u16(16, field)?;
    let is_range = r.bool(field)?;
    if is_range {
        range_entries(r, field)
    } else {
        Ok(IdSet::from_flags(&r.flags(usize::from(max_id), field)?))
    }
}

/// 12-bit count, then entries of (is-range bit, 16-bit id[, 16-bit end id]).
fn range_entries(r: &mut BitReader<'_>, field: &'static str) -> Result<IdSet, SignalError> {
    let count = r.uint(12, field)?;
    let mut set = IdSet::new();
    for _ in 0..count {
        let offset = r.pos();
        let is_range = r.bool(field)?;
        let first = r.u16(16, field)?;
        let last = if is_range { r.u16(16, field)? } else { first };
        if first == 0 {
            return Err(r.invalid(field, offset, "vendor id 0 is not valid".into()));
        }
        if last < first {
            return Err(r.invalid(
                field,
                offset,
                format!("range end {last} is less than its start {first}"),
            ));
        }
        set.insert_range(first, last);
    }
    Ok(set)
}

fn restrictions(r: &mut BitReader<'_>) -> Result<Vec<PublisherRestriction>, SignalError> {
    const FIELD: &str = "publisherRestrictions";
    let count = r.uint(12, FIELD)?;
    let mut out: Vec<PublisherRestriction> = Vec::new();
    for _ in 0..count {
        let offset = r.pos();
        let purpose_id = r.u8(6, FIELD)?;
        let kind = r.u8(2, FIELD)?;
        let restriction_type = match kind {
            0 => RestrictionType::NotAllowed,
            1 => RestrictionType::RequireConsent,
            2 => RestrictionType::RequireLegitimateInterest,
            _ => {
                return Err(r.invalid(
                    FIELD,
                    offset,
                    format!("restriction type {kind} is undefined (0, 1 or 2)"),
                ));
            }
        };
        if purpose_id == 0 {
            return Err(r.invalid(FIELD, offset, "purpose id 0 is not valid".into()));
        }
        let vendors = range_entries(r, FIELD)?;
        if let Some(existing) = out
            .iter_mut()
            .find(|e| e.purpose_id == purpose_id && e.restriction_type == restriction_type)
        {
            existing.vendors.union_with(&vendors);
        } else {
            out.push(PublisherRestriction {
                purpose_id,
                restriction_type,
                vendors,
            });
        }
    }
    Ok(out)
}

fn decode_publisher_tc(name: &str, bits: &[u8]) -> Result<PublisherTc, SignalError> {
    let mut r = BitReader::new(name, bits);
    r.skip(3, "segmentType")?;
    let purpose_consents = IdSet::from_flags(&r.flags(24, "publisherConsents")?);
    let purpose_legitimate_interests =
        IdSet::from_flags(&r.flags(24, "publisherLegitimateInterests")?);
    let num_custom_purposes = r.u8(6, "numCustomPurposes")?;
    let n = usize::from(num_custom_purposes);
    let custom_purpose_consents = IdSet::from_flags(&r.flags(n, "publisherCustomConsents")?);
    let custom_purpose_legitimate_interests =
        IdSet::from_flags(&r.flags(n, "publisherCustomLegitimateInterests")?);
    Ok(PublisherTc {
        purpose_consents,
        purpose_legitimate_interests,
        num_custom_purposes,
        custom_purpose_consents,
        custom_purpose_legitimate_interests,
    })
}
