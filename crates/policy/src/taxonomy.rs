//! The fideslang taxonomy (purposes, data categories), its mappings to TCF
//! v2.2 and GPP, and the classification of event, trait and context fields.

use std::collections::BTreeMap;

use serde::Serialize;
use toml::Spanned;

use crate::error::PolicyLoadError;
use crate::fasthash::FastMap;
use crate::params::{
    RawCategoriesFile, RawFieldsFile, RawGppEntry, RawGppFile, RawPurposesFile, RawTcfEntry,
    RawTcfFile, invalid_at, parse_toml,
};
use crate::source::SourceFile;

/// A dotted hierarchy of keys (fideslang): each key's parent is the key without
/// its last segment.
#[derive(Debug, Clone)]
pub(crate) struct Hierarchy {
    keys: Vec<String>,
    names: Vec<String>,
    index: FastMap<String, u16>,
    parent: Vec<Option<u16>>,
}

impl Hierarchy {
    fn load(
        file: &SourceFile,
        entries: BTreeMap<Spanned<String>, String>,
        what: &str,
    ) -> Result<Self, PolicyLoadError> {
        let mut h = Self {
            keys: Vec::new(),
            names: Vec::new(),
            index: FastMap::default(),
            parent: Vec::new(),
        };
        // BTreeMap order puts every parent before its children.
        for (key, name) in entries {
            let k = key.get_ref();
            let valid = !k.is_empty()
                && k.split('.').all(|seg| {
                    !seg.is_empty()
                        && seg
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                });
            if !valid {
                return Err(invalid_at(
                    file,
                    &key,
                    format!("invalid {what} key {k:?}: dotted lower-case segments expected"),
                ));
            }
            let parent = match k.rsplit_once('.') {
                None => None,
                Some((p, _)) => match h.index.get(p) {
                    Some(id) => Some(*id),
                    None => {
                        return Err(invalid_at(
                            file,
                            &key,
                            format!("{what} {k:?} has no parent {p:?} in this file"),
                        ));
                    }
                },
            };
            let id = u16::try_from(h.keys.len())
                .ok()
                .filter(|id| *id < 4000)
                .ok_or_else(|| {
                    invalid_at(file, &key, format!("too many {what} keys (at most 4000)"))
                })?;
            h.index.insert(k.clone(), id);
            h.keys.push(key.into_inner());
            h.names.push(name);
            h.parent.push(parent);
        }
        Ok(h)
    }

    pub(crate) fn id(&self, key: &str) -> Option<u16> {
        self.index.get(key).copied()
    }

    pub(crate) fn key(&self, id: u16) -> &str {
        self.keys.get(usize::from(id)).map_or("", String::as_str)
    }

    pub(crate) fn name(&self, id: u16) -> &str {
        self.names.get(usize::from(id)).map_or("", String::as_str)
    }

    pub(crate) fn parent(&self, id: u16) -> Option<u16> {
        self.parent.get(usize::from(id)).copied().flatten()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether `id` is `ancestor` or below it.
    pub(crate) fn is_under(&self, id: u16, ancestor: u16) -> bool {
        let mut cur = Some(id);
        while let Some(c) = cur {
            if c == ancestor {
                return true;
            }
            cur = self.parent(c);
        }
        false
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(String::as_str)
    }

    /// Resolves a spanned reference to a key of this hierarchy.
    pub(crate) fn resolve(
        &self,
        file: &SourceFile,
        key: &Spanned<String>,
        what: &str,
    ) -> Result<u16, PolicyLoadError> {
        self.id(key.get_ref())
            .ok_or_else(|| invalid_at(file, key, format!("unknown {what} {:?}", key.get_ref())))
    }
}

/// A TCF purpose, special purpose or special feature and what it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcfMapping {
    /// TCF id (1-11 for purposes)
    pub id: u8,
    /// TCF name
    pub name: String,
    /// fideslang purposes (data uses)
    pub purposes: Vec<String>,
    /// fideslang data categories (special features)
    pub data_categories: Vec<String>,
}

/// What a GPP opt-out field covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GppMapping {
    /// GPP field name, e.g. "SaleOptOut"
    pub field: String,
    /// fideslang purposes refused when the subject opted out
    pub purposes: Vec<String>,
    /// fideslang data categories limited when the subject opted out
    pub data_categories: Vec<String>,
}

/// GPP sections the taxonomy maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GppSection {
    /// US National (section id 7)
    UsNat,
    /// California (section id 8)
    UsCa,
}

/// The purposes and data categories the policies speak of, with their mappings.
#[derive(Debug, Clone)]
pub struct Taxonomy {
    pub(crate) purposes: Hierarchy,
    pub(crate) categories: Hierarchy,
    tcf_purposes: BTreeMap<u8, TcfMapping>,
    tcf_special_purposes: BTreeMap<u8, TcfMapping>,
    tcf_special_features: BTreeMap<u8, TcfMapping>,
    usnat: BTreeMap<String, GppMapping>,
    usca: BTreeMap<String, GppMapping>,
}

impl Taxonomy {
    /// Whether `key` is a known purpose (fideslang data use).
    pub fn is_purpose(&self, key: &str) -> bool {
        self.purposes.id(key).is_some()
    }

    /// Whether `key` is a known data category.
    pub fn is_category(&self, key: &str) -> bool {
        self.categories.id(key).is_some()
    }

    /// Human name of a purpose.
    pub fn purpose_name(&self, key: &str) -> Option<&str> {
        self.purposes.id(key).map(|id| self.purposes.name(id))
    }

    /// Whether purpose `key` is `ancestor` or below it (`marketing.advertising` is under `marketing`).
    pub fn purpose_is_under(&self, key: &str, ancestor: &str) -> bool {
        matches!((self.purposes.id(key), self.purposes.id(ancestor)), (Some(k), Some(a)) if self.purposes.is_under(k, a))
    }

    /// Whether category `key` is `ancestor` or below it.
    pub fn category_is_under(&self, key: &str, ancestor: &str) -> bool {
        matches!((self.categories.id(key), self.categories.id(ancestor)), (Some(k), Some(a)) if self.categories.is_under(k, a))
    }

    /// Every purpose key, parents first.
    pub fn purposes(&self) -> impl Iterator<Item = &str> {
        self.purposes.keys()
    }

    /// Every data category key, parents first.
    pub fn categories(&self) -> impl Iterator<Item = &str> {
        self.categories.keys()
    }

    /// TCF v2.2 purpose 1-11 → fideslang purposes.
    pub fn tcf_purpose(&self, id: u8) -> Option<&TcfMapping> {
        self.tcf_purposes.get(&id)
    }

    /// TCF v2.2 special purpose → fideslang purposes.
    pub fn tcf_special_purpose(&self, id: u8) -> Option<&TcfMapping> {
        self.tcf_special_purposes.get(&id)
    }

    /// TCF v2.2 special feature → fideslang data categories.
    pub fn tcf_special_feature(&self, id: u8) -> Option<&TcfMapping> {
        self.tcf_special_features.get(&id)
    }

    /// The TCF purposes whose mapped fideslang purposes cover `purpose` (the
    /// purpose itself or one of its ancestors is mapped).
    pub fn tcf_purposes_for(&self, purpose: &str) -> Vec<u8> {
        self.tcf_purposes
            .values()
            .filter(|m| m.purposes.iter().any(|p| self.purpose_is_under(purpose, p)))
            .map(|m| m.id)
            .collect()
    }

    /// A GPP opt-out field → purposes / categories.
    pub fn gpp(&self, section: GppSection, field: &str) -> Option<&GppMapping> {
        match section {
            GppSection::UsNat => self.usnat.get(field),
            GppSection::UsCa => self.usca.get(field),
        }
    }

    /// Every mapped field of a GPP section.
    pub fn gpp_fields(&self, section: GppSection) -> impl Iterator<Item = &GppMapping> {
        match section {
            GppSection::UsNat => self.usnat.values(),
            GppSection::UsCa => self.usca.values(),
        }
    }

    pub(crate) fn load(
        purposes: &SourceFile,
        categories: &SourceFile,
        tcf: &SourceFile,
        gpp: &SourceFile,
    ) -> Result<Self, PolicyLoadError> {
        let raw: RawPurposesFile = parse_toml(purposes)?;
        let purposes_h = Hierarchy::load(purposes, raw.purposes, "purpose")?;
        let raw: RawCategoriesFile = parse_toml(categories)?;
        let categories_h = Hierarchy::load(categories, raw.data_categories, "data category")?;
        let mut t = Self {
            purposes: purposes_h,
            categories: categories_h,
            tcf_purposes: BTreeMap::new(),
            tcf_special_purposes: BTreeMap::new(),
            tcf_special_features: BTreeMap::new(),
            usnat: BTreeMap::new(),
            usca: BTreeMap::new(),
        };
        let raw: RawTcfFile = parse_toml(tcf)?;
        t.tcf_purposes = t.tcf_section(tcf, raw.purposes)?;
        t.tcf_special_purposes = t.tcf_section(tcf, raw.special_purposes)?;
        t.tcf_special_features = t.tcf_section(tcf, raw.special_features)?;
        let raw: RawGppFile = parse_toml(gpp)?;
        t.usnat = t.gpp_section(gpp, raw.usnat)?;
        t.usca = t.gpp_section(gpp, raw.usca)?;
        Ok(t)
    }

    fn tcf_section(
        &self,
        file: &SourceFile,
        raw: BTreeMap<Spanned<String>, RawTcfEntry>,
    ) -> Result<BTreeMap<u8, TcfMapping>, PolicyLoadError> {
        let mut out = BTreeMap::new();
        for (id, entry) in raw {
            let n: u8 = id.get_ref().parse().map_err(|_| {
                invalid_at(
                    file,
                    &id,
                    format!("TCF id {:?} is not a number 1-255", id.get_ref()),
                )
            })?;
            let purposes = self.resolve_all(file, &entry.purposes, true)?;
            let data_categories = self.resolve_all(file, &entry.data_categories, false)?;
            out.insert(
                n,
                TcfMapping {
                    id: n,
                    name: entry.name,
                    purposes,
                    data_categories,
                },
            );
        }
        Ok(out)
    }

    fn gpp_section(
        &self,
        file: &SourceFile,
        raw: BTreeMap<String, RawGppEntry>,
    ) -> Result<BTreeMap<String, GppMapping>, PolicyLoadError> {
        let mut out = BTreeMap::new();
        for (field, entry) in raw {
            let purposes = self.resolve_all(file, &entry.purposes, true)?;
            let data_categories = self.resolve_all(file, &entry.data_categories, false)?;
            out.insert(
                field.clone(),
                GppMapping {
                    field,
                    purposes,
                    data_categories,
                },
            );
        }
        Ok(out)
    }

    pub(crate) fn resolve_all(
        &self,
        file: &SourceFile,
        keys: &[Spanned<String>],
        purposes: bool,
    ) -> Result<Vec<String>, PolicyLoadError> {
        keys.iter()
            .map(|k| {
                if purposes {
                    self.purposes.resolve(file, k, "purpose")?;
                } else {
                    self.categories.resolve(file, k, "data category")?;
                }
                Ok(k.get_ref().clone())
            })
            .collect()
    }
}

/// Which part of an incoming message a field is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// event body and `properties.*`
    Event,
    /// `traits.*` of identify/group calls
    Trait,
    /// `context.*`
    Context,
}

/// Field name → data category, from `fields.toml`.
#[derive(Debug, Clone)]
pub struct FieldClassification {
    defaults: [String; 3],
    maps: [BTreeMap<String, String>; 3],
}

impl FieldClassification {
    fn slot(kind: FieldKind) -> usize {
        match kind {
            FieldKind::Event => 0,
            FieldKind::Trait => 1,
            FieldKind::Context => 2,
        }
    }

    /// The data category of a field (Segment-spec path, dots for nesting).
    /// Unlisted fields get the default category of their kind.
    pub fn classify(&self, kind: FieldKind, field: &str) -> &str {
        let slot = Self::slot(kind);
        self.maps[slot]
            .get(field)
            .map_or(self.defaults[slot].as_str(), String::as_str)
    }

    /// Whether the field is listed explicitly (not defaulted).
    pub fn is_listed(&self, kind: FieldKind, field: &str) -> bool {
        self.maps[Self::slot(kind)].contains_key(field)
    }

    pub(crate) fn load(file: &SourceFile, taxonomy: &Taxonomy) -> Result<Self, PolicyLoadError> {
        let raw: RawFieldsFile = parse_toml(file)?;
        let check = |v: Spanned<String>| -> Result<String, PolicyLoadError> {
            taxonomy.categories.resolve(file, &v, "data category")?;
            Ok(v.into_inner())
        };
        let map = |m: BTreeMap<String, Spanned<String>>| -> Result<BTreeMap<String, String>, PolicyLoadError> {
            m.into_iter().map(|(k, v)| Ok((k, check(v)?))).collect()
        };
        Ok(Self {
            defaults: [
                check(raw.default.event)?,
                check(raw.default.trait_)?,
                check(raw.default.context)?,
            ],
            maps: [map(raw.event)?, map(raw.trait_)?, map(raw.context)?],
        })
    }
}
