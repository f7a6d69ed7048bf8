//! IAB GPP strings: the header (Fibonacci-coded section ids) and the
//! `tcfeuv2` (id 2), `usnat` (id 7) and `usca` (id 8) sections, decoded as
//! `@iabgpp/cmpapi` 3.x decodes them. Other sections are reported as present
//! but undecoded.

use serde_json::{Map, Value, json};

use crate::bits::{BitReader, base64url_bits};
use crate::error::SignalError;
use crate::tcf::{self, Flavor, TcString};

/// GPP section ids and their `@iabgpp/cmpapi` names.
const SECTION_NAMES: &[(u16, &str)] = &[
    (2, "tcfeuv2"),
    (5, "tcfcav1"),
    (6, "uspv1"),
    (7, "usnat"),
    (8, "usca"),
    (9, "usva"),
    (10, "usco"),
    (11, "usut"),
    (12, "usct"),
    (13, "usfl"),
    (14, "usmt"),
    (15, "usor"),
    (16, "ustx"),
    (17, "usde"),
    (18, "usia"),
    (19, "usne"),
    (20, "usnh"),
    (21, "usnj"),
    (22, "ustn"),
    (23, "usmn"),
    (24, "usmd"),
    (25, "usin"),
    (26, "usky"),
    (27, "usri"),
];

/// The `@iabgpp/cmpapi` name of section `id`, when the id is assigned.
pub fn section_name(id: u16) -> Option<&'static str> {
    SECTION_NAMES
        .iter()
        .find(|(known, _)| *known == id)
        .map(|(_, name)| *name)
}

/// A three-valued MSPA choice field (`0` not applicable, `1`, `2`; `3` is
/// reserved), read as an opt-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptOut {
    /// 0: not applicable.
    NotApplicable,
    /// 1: the consumer opted out.
    OptedOut,
    /// 2: the consumer did not opt out.
    DidNotOptOut,
    /// 3: reserved, not a valid value.
    Reserved,
}

impl OptOut {
    /// From the 2-bit wire value.
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => Self::NotApplicable,
            1 => Self::OptedOut,
            2 => Self::DidNotOptOut,
            _ => Self::Reserved,
        }
    }
}

/// A three-valued MSPA consent field (known-child and personal-data
/// consents: `1` no consent, `2` consent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    /// 0: not applicable.
    NotApplicable,
    /// 1: no consent.
    NoConsent,
    /// 2: consent.
    Consent,
    /// 3: reserved, not a valid value.
    Reserved,
}

impl Consent {
    /// From the 2-bit wire value.
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => Self::NotApplicable,
            1 => Self::NoConsent,
            2 => Self::Consent,
            _ => Self::Reserved,
        }
    }
}

/// The GPC sub-segment of a US section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpcSegment {
    /// Sub-segment type (1).
    pub segment_type: u8,
    /// The Global Privacy Control flag.
    pub gpc: bool,
}

/// The `usnat` section (US national privacy, id 7), version 1 or 2. Values
/// are the raw 2-bit codes; the methods interpret them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsNat {
    /// Section version (1 or 2).
    pub version: u8,
    /// SharingNotice.
    pub sharing_notice: u8,
    /// SaleOptOutNotice.
    pub sale_opt_out_notice: u8,
    /// SharingOptOutNotice.
    pub sharing_opt_out_notice: u8,
    /// TargetedAdvertisingOptOutNotice.
    pub targeted_advertising_opt_out_notice: u8,
    /// SensitiveDataProcessingOptOutNotice.
    pub sensitive_data_processing_opt_out_notice: u8,
    /// SensitiveDataLimitUseNotice.
    pub sensitive_data_limit_use_notice: u8,
    /// SaleOptOut.
    pub sale_opt_out: u8,
    /// SharingOptOut.
    pub sharing_opt_out: u8,
    /// TargetedAdvertisingOptOut.
    pub targeted_advertising_opt_out: u8,
    /// SensitiveDataProcessing: 12 categories in version 1, 16 in version 2.
    pub sensitive_data_processing: Vec<u8>,
    /// KnownChildSensitiveDataConsents: 2 in version 1, 3 in version 2.
    pub known_child_sensitive_data_consents: Vec<u8>,
    /// PersonalDataConsents.
    pub personal_data_consents: u8,
    /// MspaCoveredTransaction.
    pub mspa_covered_transaction: u8,
    /// MspaOptOutOptionMode.
    pub mspa_opt_out_option_mode: u8,
    /// MspaServiceProviderMode.
    pub mspa_service_provider_mode: u8,
    /// The GPC sub-segment, when included.
    pub gpc_segment: Option<GpcSegment>,
}

impl UsNat {
    /// SaleOptOut.
    pub fn sale(&self) -> OptOut {
        OptOut::from_code(self.sale_opt_out)
    }
    /// SharingOptOut.
    pub fn sharing(&self) -> OptOut {
        OptOut::from_code(self.sharing_opt_out)
    }
    /// TargetedAdvertisingOptOut.
    pub fn targeted_advertising(&self) -> OptOut {
        OptOut::from_code(self.targeted_advertising_opt_out)
    }
    /// SensitiveDataProcessing for category `index` (0-based), if present.
    pub fn sensitive_data_processing(&self, index: usize) -> Option<OptOut> {
        self.sensitive_data_processing
            .get(index)
            .map(|c| OptOut::from_code(*c))
    }
    /// KnownChildSensitiveDataConsents for `index` (0-based), if present.
    pub fn known_child_sensitive_data_consent(&self, index: usize) -> Option<Consent> {
        self.known_child_sensitive_data_consents
            .get(index)
            .map(|c| Consent::from_code(*c))
    }
    /// PersonalDataConsents.
    pub fn personal_data(&self) -> Consent {
        Consent::from_code(self.personal_data_consents)
    }
    /// The GPC flag of the section (false when the sub-segment is absent).
    pub fn gpc(&self) -> bool {
        self.gpc_segment.is_some_and(|g| g.gpc)
    }

    /// Fields with `@iabgpp/cmpapi` names.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("Version".into(), json!(self.version));
        m.insert("SharingNotice".into(), json!(self.sharing_notice));
        m.insert("SaleOptOutNotice".into(), json!(self.sale_opt_out_notice));
        m.insert(
            "SharingOptOutNotice".into(),
            json!(self.sharing_opt_out_notice),
        );
        m.insert(
            "TargetedAdvertisingOptOutNotice".into(),
            json!(self.targeted_advertising_opt_out_notice),
        );
        m.insert(
            "SensitiveDataProcessingOptOutNotice".into(),
            json!(self.sensitive_data_processing_opt_out_notice),
        );
        m.insert(
            "SensitiveDataLimitUseNotice".into(),
            json!(self.sensitive_data_limit_use_notice),
        );
        m.insert("SaleOptOut".into(), json!(self.sale_opt_out));
        m.insert("SharingOptOut".into(), json!(self.sharing_opt_out));
        m.insert(
            "TargetedAdvertisingOptOut".into(),
            json!(self.targeted_advertising_opt_out),
        );
        m.insert(
            "SensitiveDataProcessing".into(),
            json!(self.sensitive_data_processing),
        );
        m.insert(
            "KnownChildSensitiveDataConsents".into(),
            json!(self.known_child_sensitive_data_consents),
        );
        m.insert(
            "PersonalDataConsents".into(),
            json!(self.personal_data_consents),
        );
        mspa_json(
            &mut m,
            self.mspa_covered_transaction,
            self.mspa_opt_out_option_mode,
            self.mspa_service_provider_mode,
            self.gpc_segment,
        );
        Value::Object(m)
    }
}

/// The `usca` section (California, id 8), version 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsCa {
    /// Section version (1).
    pub version: u8,
    /// SaleOptOutNotice.
    pub sale_opt_out_notice: u8,
    /// SharingOptOutNotice.
    pub sharing_opt_out_notice: u8,
    /// SensitiveDataLimitUseNotice.
    pub sensitive_data_limit_use_notice: u8,
    /// SaleOptOut.
    pub sale_opt_out: u8,
    /// SharingOptOut.
    pub sharing_opt_out: u8,
    /// SensitiveDataProcessing: 9 categories (1 = limit use opted out).
    pub sensitive_data_processing: Vec<u8>,
    /// KnownChildSensitiveDataConsents: 2 entries.
    pub known_child_sensitive_data_consents: Vec<u8>,
    /// PersonalDataConsents.
    pub personal_data_consents: u8,
    /// MspaCoveredTransaction.
    pub mspa_covered_transaction: u8,
    /// MspaOptOutOptionMode.
    pub mspa_opt_out_option_mode: u8,
    /// MspaServiceProviderMode.
    pub mspa_service_provider_mode: u8,
    /// The GPC sub-segment, when included.
    pub gpc_segment: Option<GpcSegment>,
}

impl UsCa {
    /// SaleOptOut.
    pub fn sale(&self) -> OptOut {
        OptOut::from_code(self.sale_opt_out)
    }
    /// SharingOptOut.
    pub fn sharing(&self) -> OptOut {
        OptOut::from_code(self.sharing_opt_out)
    }
    /// SensitiveDataProcessing (limit use) for category `index` (0-based).
    pub fn sensitive_data_processing(&self, index: usize) -> Option<OptOut> {
        self.sensitive_data_processing
            .get(index)
            .map(|c| OptOut::from_code(*c))
    }
    /// KnownChildSensitiveDataConsents for `index` (0-based), if present.
    pub fn known_child_sensitive_data_consent(&self, index: usize) -> Option<Consent> {
        self.known_child_sensitive_data_consents
            .get(index)
            .map(|c| Consent::from_code(*c))
    }
    /// PersonalDataConsents.
    pub fn personal_data(&self) -> Consent {
        Consent::from_code(self.personal_data_consents)
    }
    /// The GPC flag of the section (false when the sub-segment is absent).
    pub fn gpc(&self) -> bool {
        self.gpc_segment.is_some_and(|g| g.gpc)
    }

    /// Fields with `@iabgpp/cmpapi` names.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("Version".into(), json!(self.version));
        m.insert("SaleOptOutNotice".into(), json!(self.sale_opt_out_notice));
        m.insert(
            "SharingOptOutNotice".into(),
            json!(self.sharing_opt_out_notice),
        );
        m.insert(
            "SensitiveDataLimitUseNotice".into(),
            json!(self.sensitive_data_limit_use_notice),
        );
        m.insert("SaleOptOut".into(), json!(self.sale_opt_out));
        m.insert("SharingOptOut".into(), json!(self.sharing_opt_out));
        m.insert(
            "SensitiveDataProcessing".into(),
            json!(self.sensitive_data_processing),
        );
        m.insert(
            "KnownChildSensitiveDataConsents".into(),
            json!(self.known_child_sensitive_data_consents),
        );
        m.insert(
            "PersonalDataConsents".into(),
            json!(self.personal_data_consents),
        );
        mspa_json(
            &mut m,
            self.mspa_covered_transaction,
            self.mspa_opt_out_option_mode,
            self.mspa_service_provider_mode,
            self.gpc_segment,
        );
        Value::Object(m)
    }
}

fn mspa_json(
    m: &mut Map<String, Value>,
    covered: u8,
    opt_out_mode: u8,
    provider_mode: u8,
    gpc: Option<GpcSegment>,
) {
    m.insert("MspaCoveredTransaction".into(), json!(covered));
    m.insert("MspaOptOutOptionMode".into(), json!(opt_out_mode));
    m.insert("MspaServiceProviderMode".into(), json!(provider_mode));
    // cmpapi reports the sub-segment's defaults when it is absent.
    m.insert(
        "GpcSegmentType".into(),
        json!(gpc.map_or(1, |g| g.segment_type)),
    );
    m.insert("GpcSegmentIncluded".into(), json!(gpc.is_some()));
    m.insert("Gpc".into(), json!(gpc.is_some_and(|g| g.gpc)));
}

/// A section listed in the header that this crate does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndecodedSection {
    /// Section id from the header.
    pub id: u16,
    /// Its `@iabgpp/cmpapi` name, when the id is assigned.
    pub name: Option<&'static str>,
}

/// A decoded GPP string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GppString {
    /// Section ids in header order.
    pub section_ids: Vec<u16>,
    /// The `tcfeuv2` section.
    pub tcfeuv2: Option<TcString>,
    /// The `usnat` section.
    pub usnat: Option<UsNat>,
    /// The `usca` section.
    pub usca: Option<UsCa>,
    /// Sections present but not decoded here.
    pub undecoded: Vec<UndecodedSection>,
}

impl GppString {
    /// Decodes a GPP string (`DB…~section~section…`).
    pub fn decode(text: &str) -> Result<Self, SignalError> {
        decode(text)
    }

    /// Whether any decoded US section carries the GPC flag.
    pub fn gpc(&self) -> bool {
        self.usnat.as_ref().is_some_and(UsNat::gpc) || self.usca.as_ref().is_some_and(UsCa::gpc)
    }

    /// `{"applicableSections": [...], "sections": {...}, "undecodedSections": [...]}`
    /// with `@iabgpp/cmpapi` field names. Like cmpapi, `applicableSections`
    /// lists the assigned section ids in ascending order; ids no section is
    /// assigned to are listed under `unassignedSectionIds` (only when any).
    pub fn to_json(&self) -> Value {
        let mut sections = Map::new();
        if let Some(tc) = &self.tcfeuv2 {
            sections.insert("tcfeuv2".into(), tc.to_gpp_json());
        }
        if let Some(s) = &self.usnat {
            sections.insert("usnat".into(), s.to_json());
        }
        if let Some(s) = &self.usca {
            sections.insert("usca".into(), s.to_json());
        }
        // As cmpapi: assigned ids only, in its section order (ascending id).
        let mut applicable: Vec<u16> = self
            .section_ids
            .iter()
            .copied()
            .filter(|id| section_name(*id).is_some())
            .collect();
        applicable.sort_unstable();
        let mut undecoded: Vec<&UndecodedSection> =
            self.undecoded.iter().filter(|u| u.name.is_some()).collect();
        undecoded.sort_by_key(|u| u.id);
        let mut out = json!({
            "applicableSections": applicable,
            "sections": sections,
            "undecodedSections": undecoded.iter().filter_map(|u| u.name).collect::<Vec<_>>(),
        });
        let unassigned: Vec<u16> = self
            .undecoded
            .iter()
            .filter(|u| u.name.is_none())
            .map(|u| u.id)
            .collect();
        if !unassigned.is_empty() {
            out["unassignedSectionIds"] = json!(unassigned);
        }
        out
    }
}

pub(crate) fn decode(text: &str) -> Result<GppString, SignalError> {
    let parts: Vec<&str> = text.split('~').collect();
    let header_text = parts.first().copied().unwrap_or_default();
    let section_ids = header(header_text, parts.len().saturating_sub(1))?;
    let mut gpp = GppString {
        section_ids: section_ids.clone(),
        tcfeuv2: None,
        usnat: None,
        usca: None,
        undecoded: Vec::new(),
    };
    for (index, id) in section_ids.iter().enumerate() {
        let body = parts.get(index + 1).copied().unwrap_or_default();
        let label = format!(
            "GPP section {} ({})",
            index + 1,
            section_name(*id).unwrap_or("unassigned id")
        );
        if body.trim().is_empty() {
            return Err(SignalError::structure(label, "section is blank"));
        }
        match id {
            2 => gpp.tcfeuv2 = Some(tcf::decode(body, Flavor::Gpp)?),
            7 => gpp.usnat = Some(usnat(body)?),
            8 => gpp.usca = Some(usca(body)?),
            _ => gpp.undecoded.push(UndecodedSection {
                id: *id,
                name: section_name(*id),
            }),
        }
    }
    Ok(gpp)
}

fn header(text: &str, sections: usize) -> Result<Vec<u16>, SignalError> {
    const NAME: &str = "GPP header";
    if text.is_empty() {
        return Err(SignalError::structure(NAME, "header is empty"));
    }
    let bits = base64url_bits(NAME, text)?;
    let mut r = BitReader::new(NAME, &bits);
    let kind = r.u8(6, "Id")?;
    if kind != 3 {
        return Err(r.invalid(
            "Id",
            0,
            format!("header type {kind} is not 3 (a GPP string starts with \"DB\")"),
        ));
    }
    let version = r.u8(6, "Version")?;
    if version != 1 {
        return Err(r.invalid(
            "Version",
            6,
            format!("header version {version} is not supported (only 1)"),
        ));
    }
    let count = r.uint(12, "SectionIds")?;
    let mut ids: Vec<u16> = Vec::new();
    let mut last: u64 = 0;
    let too_many = |n: usize| {
        SignalError::structure(
            NAME,
            format!(
                "the header lists at least {n} section ids but the string has {sections} sections"
            ),
        )
    };
    for _ in 0..count {
        let offset = r.pos();
        let is_range = r.bool("SectionIds")?;
        let first = last
            .checked_add(r.fibonacci("SectionIds")?)
            .ok_or_else(|| r.invalid("SectionIds", offset, "section id overflows".into()))?;
        let end = if is_range {
            first
                .checked_add(r.fibonacci("SectionIds")?)
                .ok_or_else(|| r.invalid("SectionIds", offset, "section id overflows".into()))?
        } else {
            first
        };
        if end.saturating_sub(first) >= sections as u64 {
            return Err(r.invalid(
                "SectionIds",
                offset,
                format!(
                    "range {first}-{end} lists more section ids than the string's {sections} sections"
                ),
            ));
        }
        for id in first..=end {
            let id = u16::try_from(id).map_err(|_| {
                r.invalid(
                    "SectionIds",
                    offset,
                    format!("section id {id} is too large"),
                )
            })?;
            if ids.contains(&id) {
                return Err(r.invalid(
                    "SectionIds",
                    offset,
                    format!("section id {id} is listed twice"),
                ));
            }
            ids.push(id);
            if ids.len() > sections {
                return Err(too_many(ids.len()));
            }
        }
        last = end;
    }
    if ids.len() != sections {
        return Err(SignalError::structure(
            NAME,
            format!(
                "the header lists {} section ids but the string has {sections} sections",
                ids.len()
            ),
        ));
    }
    Ok(ids)
}

/// Splits a US section into its core and optional GPC sub-segment.
fn us_parts<'a>(section: &str, text: &'a str) -> Result<(&'a str, Option<&'a str>), SignalError> {
    let mut parts = text.split('.');
    let core = parts.next().unwrap_or_default();
    let gpc = parts.next();
    if parts.next().is_some() {
        return Err(SignalError::structure(
            format!("GPP {section} section"),
            "more than two sub-segments (core and GPC)",
        ));
    }
    if core.is_empty() {
        return Err(SignalError::structure(
            format!("GPP {section} section"),
            "core sub-segment is empty",
        ));
    }
    Ok((core, gpc))
}

fn gpc_segment(section: &str, text: Option<&str>) -> Result<Option<GpcSegment>, SignalError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let name = format!("GPP {section} GPC sub-segment");
    if text.is_empty() {
        return Err(SignalError::structure(name, "sub-segment is empty"));
    }
    let bits = base64url_bits(&name, text)?;
    let mut r = BitReader::new(&name, &bits);
    let segment_type = r.u8(2, "GpcSegmentType")?;
    let gpc = r.bool("Gpc")?;
    Ok(Some(GpcSegment { segment_type, gpc }))
}

fn list(r: &mut BitReader<'_>, n: usize, field: &'static str) -> Result<Vec<u8>, SignalError> {
    (0..n).map(|_| r.u8(2, field)).collect()
}

fn usnat(text: &str) -> Result<UsNat, SignalError> {
    const NAME: &str = "GPP usnat core sub-segment";
    let (core, gpc) = us_parts("usnat", text)?;
    let mut bits = base64url_bits(NAME, core)?;
    // Version 1 layout (12 sensitive categories, 2 child consents): cmpapi
    // recognises it by length and widens it to the version 2 layout.
    if bits.len() == 60 || bits.len() == 66 {
        let mut widened = Vec::with_capacity(72);
        widened.extend(bits.iter().take(48));
        widened.extend([0u8; 8]);
        widened.extend(bits.iter().skip(48).take(4));
        widened.extend([0u8; 2]);
        widened.extend(bits.iter().skip(52).take(10));
        widened.resize(72, 0);
        bits = widened;
    }
    let mut r = BitReader::new(NAME, &bits);
    let version = r.u8(6, "Version")?;
    let mut s = UsNat {
        version,
        sharing_notice: r.u8(2, "SharingNotice")?,
        sale_opt_out_notice: r.u8(2, "SaleOptOutNotice")?,
        sharing_opt_out_notice: r.u8(2, "SharingOptOutNotice")?,
        targeted_advertising_opt_out_notice: r.u8(2, "TargetedAdvertisingOptOutNotice")?,
        sensitive_data_processing_opt_out_notice: r.u8(2, "SensitiveDataProcessingOptOutNotice")?,
        sensitive_data_limit_use_notice: r.u8(2, "SensitiveDataLimitUseNotice")?,
        sale_opt_out: r.u8(2, "SaleOptOut")?,
        sharing_opt_out: r.u8(2, "SharingOptOut")?,
        targeted_advertising_opt_out: r.u8(2, "TargetedAdvertisingOptOut")?,
        sensitive_data_processing: list(&mut r, 16, "SensitiveDataProcessing")?,
        known_child_sensitive_data_consents: list(&mut r, 3, "KnownChildSensitiveDataConsents")?,
        personal_data_consents: r.u8(2, "PersonalDataConsents")?,
        mspa_covered_transaction: r.u8(2, "MspaCoveredTransaction")?,
        mspa_opt_out_option_mode: r.u8(2, "MspaOptOutOptionMode")?,
        mspa_service_provider_mode: r.u8(2, "MspaServiceProviderMode")?,
        gpc_segment: gpc_segment("usnat", gpc)?,
    };
    if version == 1 {
        s.sensitive_data_processing.truncate(12);
        s.known_child_sensitive_data_consents.truncate(2);
    }
    Ok(s)
}

fn usca(text: &str) -> Result<UsCa, SignalError> {
    const NAME: &str = "GPP usca core sub-segment";
    let (core, gpc) = us_parts("usca", text)?;
    let bits = base64url_bits(NAME, core)?;
    let mut r = BitReader::new(NAME, &bits);
    Ok(UsCa {
        version: r.u8(6, "Version")?,
        sale_opt_out_notice: r.u8(2, "SaleOptOutNotice")?,
        sharing_opt_out_notice: r.u8(2, "SharingOptOutNotice")?,
        sensitive_data_limit_use_notice: r.u8(2, "SensitiveDataLimitUseNotice")?,
        sale_opt_out: r.u8(2, "SaleOptOut")?,
        sharing_opt_out: r.u8(2, "SharingOptOut")?,
        sensitive_data_processing: list(&mut r, 9, "SensitiveDataProcessing")?,
        known_child_sensitive_data_consents: list(&mut r, 2, "KnownChildSensitiveDataConsents")?,
        personal_data_consents: r.u8(2, "PersonalDataConsents")?,
        mspa_covered_transaction: r.u8(2, "MspaCoveredTransaction")?,
        mspa_opt_out_option_mode: r.u8(2, "MspaOptOutOptionMode")?,
        mspa_service_provider_mode: r.u8(2, "MspaServiceProviderMode")?,
        gpc_segment: gpc_segment("usca", gpc)?,
    })
}
