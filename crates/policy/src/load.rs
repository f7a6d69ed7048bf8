//! Loading and validating a policy set: TOML parameters, Cedar schema and
//! rules, and the Cedar entities generated from the parameters.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

use crate::error::PolicyLoadError;
use crate::params::{
    ChildParams, ConsentParams, DestinationInfo, DsrParams, Framework, JurisdictionInfo,
    RawDestinationsFile, RawJurisdictionsFile, RawObligationsFile, RawRegime, Regime,
    TransferParams, cited, invalid_at, is_country_code, parse_toml, period,
};
use crate::source::{self, SourceFile};
use crate::taxonomy::{FieldClassification, Taxonomy};

/// Namespace of every Cedar type in the schema.
pub(crate) const NS: &str = "Meridian";

/// What an obligation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObligationKind {
    /// encrypt the field under the subject's data key
    Seal,
    /// normalise and SHA-256 the value before it leaves
    Hash,
    /// remove the field
    StripField,
    /// record the transfer and its basis with the export
    RecordTransfer,
}

impl FromStr for ObligationKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "seal" => Ok(Self::Seal),
            "hash" => Ok(Self::Hash),
            "strip_field" => Ok(Self::StripField),
            "record_transfer" => Ok(Self::RecordTransfer),
            _ => Err(()),
        }
    }
}

/// An entry of `obligations.toml`.
#[derive(Debug, Clone)]
pub(crate) struct ObligationRule {
    pub(crate) id: String,
    pub(crate) kind: ObligationKind,
    /// bit per action (collect=1, process=2, export=4)
    pub(crate) actions: u8,
    pub(crate) categories: Vec<u16>,
    pub(crate) cross_border_only: bool,
    pub(crate) article: String,
}

/// A Cedar rule's metadata.
#[derive(Debug, Clone)]
pub(crate) struct RuleMeta {
    pub(crate) id: String,
    pub(crate) reason: String,
    /// load order (file order, then position in the file)
    pub(crate) order: usize,
    pub(crate) file: String,
    pub(crate) line: usize,
}

/// Everything loaded from `policies/`, validated.
pub(crate) struct Loaded {
    pub(crate) taxonomy: Taxonomy,
    pub(crate) fields: FieldClassification,
    pub(crate) regimes: BTreeMap<String, Regime>,
    pub(crate) jurisdictions: Vec<JurisdictionInfo>,
    pub(crate) destinations: BTreeMap<String, DestinationInfo>,
    pub(crate) mechanisms: Vec<String>,
    pub(crate) obligations: Vec<ObligationRule>,
    pub(crate) policies: PolicySet,
    pub(crate) rules: HashMap<PolicyId, RuleMeta>,
    pub(crate) entities: Entities,
    pub(crate) file_count: usize,
}

fn find<'a>(files: &'a [SourceFile], path: &str) -> Result<&'a SourceFile, PolicyLoadError> {
    files
        .iter()
        .find(|f| f.path == path)
        .ok_or_else(|| PolicyLoadError::Missing {
            file: path.to_owned(),
            line: 1,
        })
}

pub(crate) fn type_name(name: &str) -> EntityTypeName {
    // The names are constants of this crate; they always parse.
    #[allow(clippy::expect_used)]
    EntityTypeName::from_str(&format!("{NS}::{name}")).expect("constant Cedar type name")
}

pub(crate) fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

/// Loads and validates a full policy set.
pub(crate) fn load(files: &[SourceFile]) -> Result<Loaded, PolicyLoadError> {
    let taxonomy = Taxonomy::load(
        find(files, source::PURPOSES)?,
        find(files, source::CATEGORIES)?,
        find(files, source::TCF)?,
        find(files, source::GPP)?,
    )?;
    let fields = FieldClassification::load(find(files, source::FIELDS)?, &taxonomy)?;

    let mut regimes = BTreeMap::new();
    let mut mechanisms = BTreeSet::new();
    let regime_files: Vec<&SourceFile> = files
        .iter()
        .filter(|f| f.path.starts_with("regimes/"))
        .collect();
    if regime_files.is_empty() {
        return Err(PolicyLoadError::Missing {
            file: "regimes/*.toml".to_owned(),
            line: 1,
        });
    }
    for file in regime_files {
        let regime = load_regime(file, &taxonomy, &mut mechanisms)?;
        if regimes.contains_key(&regime.id) {
            return Err(PolicyLoadError::Invalid {
                file: file.path.clone(),
                line: 1,
                reason: format!("regime {:?} is defined twice", regime.id),
            });
        }
        regimes.insert(regime.id.clone(), regime);
    }

    let jurisdictions = load_jurisdictions(find(files, source::JURISDICTIONS)?, &regimes)?;
    let destinations = load_destinations(find(files, source::DESTINATIONS)?, &mut mechanisms)?;
    if mechanisms.len() > 32 {
        return Err(PolicyLoadError::Invalid {
            file: source::DESTINATIONS.to_owned(),
            line: 1,
            reason: "more than 32 distinct transfer mechanisms".to_owned(),
        });
    }
    let obligations = load_obligations(find(files, source::OBLIGATIONS)?, &taxonomy)?;

    let schema_file = find(files, source::SCHEMA)?;
    let schema = match Schema::from_cedarschema_str(&schema_file.text) {
        Ok((schema, _warnings)) => schema,
        Err(e) => {
            return Err(PolicyLoadError::Schema {
                file: schema_file.path.clone(),
                line: first_offset(&e).map_or(1, |o| schema_file.line_of(o)),
                reason: diagnostic_text(&e),
            });
        }
    };

    let (policies, rules) = load_rules(files, &schema, &taxonomy, &regimes)?;
    let entities = build_entities(&taxonomy, &regimes, &jurisdictions, &schema)?;

    Ok(Loaded {
        taxonomy,
        fields,
        regimes,
        jurisdictions,
        destinations,
        mechanisms: mechanisms.into_iter().collect(),
        obligations,
        policies,
        rules,
        entities,
        file_count: files.len(),
    })
}

fn load_regime(
    file: &SourceFile,
    taxonomy: &Taxonomy,
    mechanisms: &mut BTreeSet<String>,
) -> Result<Regime, PolicyLoadError> {
    let raw: RawRegime = parse_toml(file)?;
    let id_ok = !raw.id.get_ref().is_empty()
        && raw
            .id
            .get_ref()
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'_');
    if !id_ok {
        return Err(invalid_at(
            file,
            &raw.id,
            "regime id must be upper-case letters and '_'",
        ));
    }
    let purposes = |v: toml::Spanned<Vec<toml::Spanned<String>>>| {
        taxonomy.resolve_all(file, v.get_ref(), true)
    };
    let categories = |v: toml::Spanned<Vec<toml::Spanned<String>>>| {
        taxonomy.resolve_all(file, v.get_ref(), false)
    };
    let countries =
        |v: toml::Spanned<Vec<toml::Spanned<String>>>| -> Result<Vec<String>, PolicyLoadError> {
            v.into_inner()
                .into_iter()
                .map(|c| {
                    if is_country_code(c.get_ref()) {
                        Ok(c.into_inner())
                    } else {
                        Err(invalid_at(
                            file,
                            &c,
                            format!("{:?} is not an ISO 3166-1 alpha-2 code", c.get_ref()),
                        ))
                    }
                })
                .collect()
        };
    let periodf = |v| period(file, v);
    let age = |v: toml::Spanned<u8>| Ok(v.into_inner());

    let framework = match raw.transfers.framework {
        None => None,
        Some(f) => {
            check_mechanism(file, &f.mechanism)?;
            if f.article.get_ref().trim().is_empty() {
                return Err(invalid_at(file, &f.article, "article must not be empty"));
            }
            let mut cs = Vec::new();
            for c in f.value {
                if !is_country_code(c.get_ref()) {
                    return Err(invalid_at(
                        file,
                        &c,
                        format!("{:?} is not an ISO 3166-1 alpha-2 code", c.get_ref()),
                    ));
                }
                cs.push(c.into_inner());
            }
            mechanisms.insert(f.mechanism.get_ref().clone());
            Some(Framework {
                countries: cs,
                mechanism: f.mechanism.into_inner(),
                article: f.article.into_inner(),
            })
        }
    };
    let mut mechs =
        |v: toml::Spanned<Vec<toml::Spanned<String>>>| -> Result<Vec<String>, PolicyLoadError> {
            v.into_inner()
                .into_iter()
                .map(|m| {
                    check_mechanism(file, &m)?;
                    mechanisms.insert(m.get_ref().clone());
                    Ok(m.into_inner())
                })
                .collect()
        };
    let mut thresholds = BTreeMap::new();
    for (k, v) in raw.transfers.thresholds {
        thresholds.insert(k, cited(file, v, |v| Ok(v.into_inner()))?);
    }
    let mut retention = BTreeMap::new();
    for (k, v) in raw.retention {
        if k != "default" && !taxonomy.is_category(&k) {
            return Err(invalid_at(
                file,
                &v.value,
                format!("retention key {k:?} is neither \"default\" nor a data category"),
            ));
        }
        retention.insert(k, cited(file, v, periodf)?);
    }
    if !retention.contains_key("default") {
        return Err(PolicyLoadError::Invalid {
            file: file.path.clone(),
            line: 1,
            reason: "[retention] needs a \"default\" entry".to_owned(),
        });
    }
    Ok(Regime {
        id: raw.id.into_inner(),
        name: raw.name,
        dsr: DsrParams {
            deadline: cited(file, raw.dsr.deadline, periodf)?,
            extension: raw
                .dsr
                .extension
                .map(|e| cited(file, e, periodf))
                .transpose()?,
            receipt_confirmation: raw
                .dsr
                .receipt_confirmation
                .map(|e| cited(file, e, periodf))
                .transpose()?,
        },
        children: ChildParams {
            guardian_age: cited(file, raw.children.guardian_age, age)?,
            opt_in_age: cited(file, raw.children.opt_in_age, age)?,
        },
        opt_in: cited(file, raw.purposes.opt_in, purposes)?,
        opt_out: cited(file, raw.purposes.opt_out, purposes)?,
        sale_share: cited(file, raw.purposes.sale_share, purposes)?,
        sensitive: cited(file, raw.sensitive.categories, categories)?,
        consent: ConsentParams {
            reprompt_after_refusal: cited(file, raw.consent.reprompt_after_refusal, periodf)?,
            validity: cited(file, raw.consent.validity, periodf)?,
        },
        transfers: TransferParams {
            home: cited(file, raw.transfers.home, countries)?,
            adequate: cited(file, raw.transfers.adequate, countries)?,
            framework,
            mechanisms: cited(file, raw.transfers.mechanisms, &mut mechs)?,
            thresholds,
        },
        retention,
    })
}

fn check_mechanism(file: &SourceFile, m: &toml::Spanned<String>) -> Result<(), PolicyLoadError> {
    let ok = !m.get_ref().is_empty()
        && m.get_ref()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid_at(
            file,
            m,
            format!(
                "transfer mechanism {:?} must be lower_snake_case",
                m.get_ref()
            ),
        ))
    }
}

fn load_jurisdictions(
    file: &SourceFile,
    regimes: &BTreeMap<String, Regime>,
) -> Result<Vec<JurisdictionInfo>, PolicyLoadError> {
    let raw: RawJurisdictionsFile = parse_toml(file)?;
    let mut out = Vec::new();
    for (code, j) in raw.jurisdictions {
        let parsed = crate::Jurisdiction::parse(code.get_ref())
            .map_err(|e| invalid_at(file, &code, e.to_string()))?;
        if parsed.as_str() != code.get_ref() {
            return Err(invalid_at(
                file,
                &code,
                format!("write the code in upper case: {parsed}"),
            ));
        }
        let Some(regime) = regimes.get(j.regime.get_ref()) else {
            return Err(invalid_at(
                file,
                &j.regime,
                format!("unknown regime {:?}", j.regime.get_ref()),
            ));
        };
        if !is_country_code(j.country.get_ref()) || j.country.get_ref() != parsed.country() {
            return Err(invalid_at(
                file,
                &j.country,
                format!(
                    "country must be {:?} for {code}",
                    parsed.country(),
                    code = code.get_ref()
                ),
            ));
        }
        let tz = j.time_zone.get_ref();
        let tz_ok = tz.parse::<chrono_tz::Tz>().is_ok();
        if !tz_ok {
            return Err(invalid_at(
                file,
                &j.time_zone,
                format!("{tz:?} is not an IANA time zone name"),
            ));
        }
        let guardian_age = match j.guardian_age {
            Some(raw) => cited(file, raw, |v| Ok(v.into_inner()))?,
            None => regime.children.guardian_age.clone(),
        };
        out.push(JurisdictionInfo {
            code: code.into_inner(),
            regime: j.regime.into_inner(),
            country: j.country.into_inner(),
            time_zone: j.time_zone.into_inner(),
            guardian_age,
        });
    }
    if out.len() >= 4000 {
        return Err(PolicyLoadError::Invalid {
            file: file.path.clone(),
            line: 1,
            reason: "too many jurisdictions (at most 4000)".to_owned(),
        });
    }
    Ok(out)
}

fn load_destinations(
    file: &SourceFile,
    mechanisms: &mut BTreeSet<String>,
) -> Result<BTreeMap<String, DestinationInfo>, PolicyLoadError> {
    let raw: RawDestinationsFile = parse_toml(file)?;
    let mut out = BTreeMap::new();
    for (key, d) in raw.destinations {
        if !is_country_code(d.region.get_ref()) {
            return Err(invalid_at(
                file,
                &d.region,
                format!("{:?} is not an ISO 3166-1 alpha-2 code", d.region.get_ref()),
            ));
        }
        let mut ms = Vec::new();
        for m in d.mechanisms {
            check_mechanism(file, &m)?;
            if !mechanisms.contains(m.get_ref()) {
                return Err(invalid_at(
                    file,
                    &m,
                    format!(
                        "transfer mechanism {:?} is not used by any regime",
                        m.get_ref()
                    ),
                ));
            }
            ms.push(m.into_inner());
        }
        out.insert(
            key.get_ref().clone(),
            DestinationInfo {
                key: key.into_inner(),
                name: d.name,
                region: d.region.into_inner(),
                mechanisms: ms,
            },
        );
    }
    Ok(out)
}

fn load_obligations(
    file: &SourceFile,
    taxonomy: &Taxonomy,
) -> Result<Vec<ObligationRule>, PolicyLoadError> {
    let raw: RawObligationsFile = parse_toml(file)?;
    let mut out = Vec::new();
    for o in raw.obligation {
        let kind = o.kind.get_ref().parse::<ObligationKind>().map_err(|()| {
            invalid_at(
                file,
                &o.kind,
                format!(
                    "unknown obligation kind {:?} (seal, hash, strip_field, record_transfer)",
                    o.kind.get_ref()
                ),
            )
        })?;
        let mut actions = 0u8;
        for a in &o.actions {
            actions |= match a.get_ref().as_str() {
                "collect" => 1,
                "process" => 2,
                "export" => 4,
                other => {
                    return Err(invalid_at(
                        file,
                        a,
                        format!("unknown action {other:?} (collect, process, export)"),
                    ));
                }
            };
        }
        let mut categories = Vec::new();
        for c in &o.categories {
            categories.push(taxonomy.categories.resolve(file, c, "data category")?);
        }
        if o.article.get_ref().trim().is_empty() {
            return Err(invalid_at(file, &o.article, "article must not be empty"));
        }
        out.push(ObligationRule {
            id: o.id.into_inner(),
            kind,
            actions,
            categories,
            cross_border_only: o.cross_border_only,
            article: o.article.into_inner(),
        });
    }
    Ok(out)
}

/// The first source offset a Cedar diagnostic points at.
fn first_offset(d: &dyn Diagnostic) -> Option<usize> {
    if let Some(l) = d.labels().and_then(|mut labels| labels.next()) {
        return Some(l.offset());
    }
    if let Some(related) = d.related() {
        for r in related {
            if let Some(o) = first_offset(r) {
                return Some(o);
            }
        }
    }
    None
}

/// A Cedar error with its first related message and help, on one line.
fn diagnostic_text(d: &dyn Diagnostic) -> String {
    let mut s = d.to_string();
    if let Some(related) = d.related() {
        for r in related.take(1) {
            let t = r.to_string();
            if !s.contains(&t) {
                s.push_str(": ");
                s.push_str(&t);
            }
        }
    }
    if let Some(help) = d.help() {
        s.push_str(" (help: ");
        s.push_str(&help.to_string());
        s.push(')');
    }
    s.replace('\n', " ")
}

fn load_rules(
    files: &[SourceFile],
    schema: &Schema,
    taxonomy: &Taxonomy,
    regimes: &BTreeMap<String, Regime>,
) -> Result<(PolicySet, HashMap<PolicyId, RuleMeta>), PolicyLoadError> {
    let mut set = PolicySet::new();
    let mut rules: HashMap<PolicyId, RuleMeta> = HashMap::new();
    let mut texts: HashMap<PolicyId, (&SourceFile, usize)> = HashMap::new();
    let rule_files: Vec<&SourceFile> = files
        .iter()
        .filter(|f| f.path.starts_with("rules/"))
        .collect();
    if rule_files.is_empty() {
        return Err(PolicyLoadError::Missing {
            file: "rules/*.cedar".to_owned(),
            line: 1,
        });
    }
    let regime_ty = type_name("Regime");
    let purpose_ty = type_name("Purpose");
    let category_ty = type_name("DataCategory");
    for file in rule_files {
        let parsed = PolicySet::from_str(&file.text).map_err(|e| PolicyLoadError::Cedar {
            file: file.path.clone(),
            line: first_offset(&e).map_or(1, |o| file.line_of(o)),
            reason: diagnostic_text(&e),
        })?;
        if parsed.templates().next().is_some() {
            return Err(PolicyLoadError::Cedar {
                file: file.path.clone(),
                line: 1,
                reason: "templates are not supported".to_owned(),
            });
        }
        let mut policies: Vec<_> = parsed.policies().cloned().collect();
        // from_str names policies policy0, policy1, ... in source order
        policies.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        let mut search_from = 0;
        for policy in policies {
            let offset = policy.to_cedar().and_then(|t| {
                file.text
                    .get(search_from..)
                    .and_then(|rest| rest.find(&t))
                    .map(|o| (o + search_from, t.len()))
            });
            let start = offset.map_or(search_from, |(o, _)| o);
            let line = file.line_of(start);
            if let Some((o, len)) = offset {
                search_from = o + len;
            }
            let err = |reason: String| PolicyLoadError::Cedar {
                file: file.path.clone(),
                line,
                reason,
            };
            let Some(id) = policy.annotation("id").map(str::to_owned) else {
                return Err(err("rule has no @id(\"...\") annotation".to_owned()));
            };
            let Some(reason) = policy.annotation("reason").map(str::to_owned) else {
                return Err(err(format!(
                    "rule {id:?} has no @reason(\"...\") annotation"
                )));
            };
            if id.trim().is_empty() || reason.trim().is_empty() {
                return Err(err("@id and @reason must not be empty".to_owned()));
            }
            for lit in policy.entity_literals() {
                let key = lit.id().unescaped();
                let t = lit.type_name();
                let known = if *t == regime_ty {
                    regimes.contains_key(key)
                } else if *t == purpose_ty {
                    taxonomy.is_purpose(key)
                } else if *t == category_ty {
                    taxonomy.is_category(key)
                } else {
                    true
                };
                if !known {
                    let needle = format!("::\"{key}\"");
                    let at = file
                        .text
                        .get(start..)
                        .and_then(|t| t.find(&needle))
                        .map_or(line, |o| file.line_of(start + o));
                    return Err(PolicyLoadError::Cedar {
                        file: file.path.clone(),
                        line: at,
                        reason: format!("rule {id:?} refers to unknown entity {lit}"),
                    });
                }
            }
            let pid = PolicyId::new(&id);
            if let Some(prev) = rules.get(&pid) {
                return Err(err(format!(
                    "duplicate rule id {id:?} (first at {}:{})",
                    prev.file, prev.line
                )));
            }
            let order = rules.len();
            set.add(policy.new_id(pid.clone()))
                .map_err(|e| err(e.to_string()))?;
            texts.insert(pid.clone(), (file, line));
            rules.insert(
                pid,
                RuleMeta {
                    id,
                    reason,
                    order,
                    file: file.path.clone(),
                    line,
                },
            );
        }
    }

    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if let Some(e) = result.validation_errors().next() {
        let (file, line) = match texts.get(e.policy_id()) {
            Some((file, line)) => (
                file.path.clone(),
                first_offset(e).map_or(*line, |o| file.line_of(o)),
            ),
            None => (source::SCHEMA.to_owned(), 1),
        };
        return Err(PolicyLoadError::Validation {
            file,
            line,
            reason: diagnostic_text(e),
        });
    }
    Ok((set, rules))
}

fn build_entities(
    taxonomy: &Taxonomy,
    regimes: &BTreeMap<String, Regime>,
    jurisdictions: &[JurisdictionInfo],
    schema: &Schema,
) -> Result<Entities, PolicyLoadError> {
    let regime_ty = type_name("Regime");
    let zone_ty = type_name("Zone");
    let country_ty = type_name("Country");
    let purpose_ty = type_name("Purpose");
    let category_ty = type_name("DataCategory");
    let jur_ty = type_name("Jurisdiction");
    let mut entities = Vec::new();
    let internal = |file: &str, reason: String| PolicyLoadError::Invalid {
        file: file.to_owned(),
        line: 1,
        reason,
    };

    for (h, ty) in [
        (&taxonomy.purposes, &purpose_ty),
        (&taxonomy.categories, &category_ty),
    ] {
        for id in 0..h.len() {
            let id = u16::try_from(id).unwrap_or(u16::MAX);
            let parents: HashSet<EntityUid> = h
                .parent(id)
                .map(|p| uid(ty, h.key(p)))
                .into_iter()
                .collect();
            entities.push(Entity::new_no_attrs(uid(ty, h.key(id)), parents));
        }
    }

    let mut country_zones: BTreeMap<String, HashSet<EntityUid>> = BTreeMap::new();
    for j in jurisdictions {
        country_zones.entry(j.country.clone()).or_default();
    }
    for r in regimes.values() {
        entities.push(Entity::new_no_attrs(uid(&regime_ty, &r.id), HashSet::new()));
        let framework: &[String] = r.transfers.framework.as_ref().map_or(&[], |f| &f.countries);
        for (zone, countries) in [
            ("home", &r.transfers.home.value[..]),
            ("adequate", &r.transfers.adequate.value[..]),
            ("framework", framework),
        ] {
            let zuid = uid(&zone_ty, &format!("{}.{zone}", r.id));
            entities.push(Entity::new_no_attrs(zuid.clone(), HashSet::new()));
            for c in countries {
                country_zones
                    .entry(c.clone())
                    .or_default()
                    .insert(zuid.clone());
            }
        }
    }
    for (c, zones) in country_zones {
        entities.push(Entity::new_no_attrs(uid(&country_ty, &c), zones));
    }

    let set_of = |ty: &EntityTypeName, keys: &[String]| {
        RestrictedExpression::new_set(
            keys.iter()
                .map(|k| RestrictedExpression::new_entity_uid(uid(ty, k))),
        )
    };
    for j in jurisdictions {
        let Some(r) = regimes.get(&j.regime) else {
            return Err(internal(
                source::JURISDICTIONS,
                format!("unknown regime {:?}", j.regime),
            ));
        };
        let zone =
            |z: &str| RestrictedExpression::new_entity_uid(uid(&zone_ty, &format!("{}.{z}", r.id)));
        let attrs: HashMap<String, RestrictedExpression> = [
            (
                "country",
                RestrictedExpression::new_entity_uid(uid(&country_ty, &j.country)),
            ),
            (
                "guardian_age",
                RestrictedExpression::new_long(i64::from(j.guardian_age.value)),
            ),
            (
                "opt_in_age",
                RestrictedExpression::new_long(i64::from(r.children.opt_in_age.value)),
            ),
            ("opt_in", set_of(&purpose_ty, &r.opt_in.value)),
            ("opt_out", set_of(&purpose_ty, &r.opt_out.value)),
            ("sale_share", set_of(&purpose_ty, &r.sale_share.value)),
            ("sensitive", set_of(&category_ty, &r.sensitive.value)),
            ("home_zone", zone("home")),
            ("adequate_zone", zone("adequate")),
            ("framework_zone", zone("framework")),
            (
                "framework_mechanism",
                RestrictedExpression::new_string(
                    r.transfers
                        .framework
                        .as_ref()
                        .map_or(String::new(), |f| f.mechanism.clone()),
                ),
            ),
            (
                "transfer_mechanisms",
                RestrictedExpression::new_set(
                    r.transfers
                        .mechanisms
                        .value
                        .iter()
                        .map(|m| RestrictedExpression::new_string(m.clone())),
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let parents: HashSet<EntityUid> = [uid(&regime_ty, &r.id)].into_iter().collect();
        let e = Entity::new(uid(&jur_ty, &j.code), attrs, parents)
            .map_err(|e| internal(source::JURISDICTIONS, format!("{}: {e}", j.code)))?;
        entities.push(e);
    }
    Entities::from_entities(entities, Some(schema)).map_err(|e| {
        internal(
            source::SCHEMA,
            format!(
                "generated entities do not match the schema: {}",
                diagnostic_text(&e)
            ),
        )
    })
}
