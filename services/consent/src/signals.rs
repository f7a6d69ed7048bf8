//! From what the subject or their CMP told us to decisions per purpose, through the policy
//! taxonomy (`policies/taxonomy/tcf.toml`, `gpp.toml`). Pure: no I/O.

use std::collections::BTreeMap;

use meridian_consent_signals::{
    Gpc, GppString, OptOut, TcString, decode_gpp_string, decode_tc_string,
};
use meridian_policy::{GppSection, Taxonomy};

use crate::error::ConsentError;
use crate::ledger::{Decision, LawfulBasis, PurposeDecision, Source};

/// An explicit choice, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub purpose: String,
    pub decision: Decision,
    pub lawful_basis: LawfulBasis,
}

/// Signals of one RecordConsent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signals {
    pub choices: Vec<Choice>,
    pub tc_string: Option<String>,
    pub gpp_string: Option<String>,
    pub gpc: bool,
}

/// The decisions one source yields (one ledger entry per purpose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDecisions {
    pub source: Source,
    pub raw_signal: String,
    pub purposes: Vec<PurposeDecision>,
}

type Acc = BTreeMap<String, (Decision, LawfulBasis)>;

fn put(acc: &mut Acc, purpose: &str, decision: Decision, basis: LawfulBasis) {
    match acc.get(purpose) {
        // several TCF purposes may map to one fideslang purpose: a refusal wins
        Some((Decision::Refused, _)) => {}
        _ => {
            acc.insert(purpose.to_owned(), (decision, basis));
        }
    }
}

fn into_decisions(acc: Acc) -> Vec<PurposeDecision> {
    acc.into_iter()
        .map(|(purpose, (decision, lawful_basis))| PurposeDecision {
            purpose,
            decision,
            lawful_basis,
        })
        .collect()
}

/// TCF purposes 1–11: consent bit → given (consent); else legitimate-interest bit → given
/// (legitimate interests, the subject did not object); else refused.
pub fn from_tc(taxonomy: &Taxonomy, tc: &TcString) -> Vec<PurposeDecision> {
    let mut acc = Acc::new();
    for id in 1u8..=24 {
        let Some(mapping) = taxonomy.tcf_purpose(id) else {
            continue;
        };
        let (decision, basis) = if tc.purpose_consents.contains(u16::from(id)) {
            (Decision::Given, LawfulBasis::Consent)
        } else if tc.purpose_legitimate_interests.contains(u16::from(id)) {
            (Decision::Given, LawfulBasis::LegitimateInterests)
        } else {
            (Decision::Refused, LawfulBasis::Consent)
        };
        for p in &mapping.purposes {
            put(&mut acc, p, decision, basis);
        }
    }
    into_decisions(acc)
}

fn opt_out(acc: &mut Acc, taxonomy: &Taxonomy, section: GppSection, field: &str, v: OptOut) {
    let Some(mapping) = taxonomy.gpp(section, field) else {
        return;
    };
    let (decision, basis) = match v {
        OptOut::OptedOut => (Decision::Refused, LawfulBasis::Consent),
        // an opt-out regime: processing stands until the subject objects
        OptOut::DidNotOptOut => (Decision::Given, LawfulBasis::LegitimateInterests),
        OptOut::NotApplicable | OptOut::Reserved => return,
    };
    for p in &mapping.purposes {
        put(acc, p, decision, basis);
    }
}

/// The purposes GPC opts out of: sale and sharing, as the taxonomy maps GPP's
/// `SaleOptOut` and `SharingOptOut`.
pub fn gpc_purposes(taxonomy: &Taxonomy) -> Vec<String> {
    let mut out: Vec<String> = ["SaleOptOut", "SharingOptOut"]
        .iter()
        .filter_map(|f| taxonomy.gpp(GppSection::UsNat, f))
        .flat_map(|m| m.purposes.iter().cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn gpc_decisions(taxonomy: &Taxonomy) -> Vec<PurposeDecision> {
    gpc_purposes(taxonomy)
        .into_iter()
        .map(|purpose| PurposeDecision {
            purpose,
            decision: Decision::Refused,
            lawful_basis: LawfulBasis::Consent,
        })
        .collect()
}

/// GPP: the embedded `tcfeuv2` section as TCF, `usnat`/`usca` opt-outs, and a GPC
/// sub-segment as GPC.
pub fn from_gpp(taxonomy: &Taxonomy, gpp: &GppString) -> Vec<PurposeDecision> {
    let mut acc = Acc::new();
    if let Some(tc) = &gpp.tcfeuv2 {
        for d in from_tc(taxonomy, tc) {
            put(&mut acc, &d.purpose, d.decision, d.lawful_basis);
        }
    }
    if let Some(us) = &gpp.usnat {
        opt_out(
            &mut acc,
            taxonomy,
            GppSection::UsNat,
            "SaleOptOut",
            us.sale(),
        );
        opt_out(
            &mut acc,
            taxonomy,
            GppSection::UsNat,
            "SharingOptOut",
            us.sharing(),
        );
        opt_out(
            &mut acc,
            taxonomy,
            GppSection::UsNat,
            "TargetedAdvertisingOptOut",
            us.targeted_advertising(),
        );
    }
    if let Some(ca) = &gpp.usca {
        opt_out(
            &mut acc,
            taxonomy,
            GppSection::UsCa,
            "SaleOptOut",
            ca.sale(),
        );
        opt_out(
            &mut acc,
            taxonomy,
            GppSection::UsCa,
            "SharingOptOut",
            ca.sharing(),
        );
    }
    if gpp.gpc() {
        for d in gpc_decisions(taxonomy) {
            acc.insert(d.purpose, (d.decision, d.lawful_basis));
        }
    }
    into_decisions(acc)
}

/// Decodes and maps every signal. Order of the result = order of application: TCF, GPP,
/// GPC, then explicit choices (the subject's own words last).
pub fn decide(
    taxonomy: &Taxonomy,
    signals: &Signals,
) -> Result<Vec<SourceDecisions>, ConsentError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    if let Some(raw) = &signals.tc_string {
        match decode_tc_string(raw) {
            Ok(tc) => out.push(SourceDecisions {
                source: Source::Tcf,
                raw_signal: raw.trim().to_owned(),
                purposes: from_tc(taxonomy, &tc),
            }),
            Err(e) => errors.push(("signals.tc_string".to_owned(), e.to_string())),
        }
    }
    if let Some(raw) = &signals.gpp_string {
        match decode_gpp_string(raw) {
            Ok(gpp) => out.push(SourceDecisions {
                source: Source::Gpp,
                raw_signal: raw.trim().to_owned(),
                purposes: from_gpp(taxonomy, &gpp),
            }),
            Err(e) => errors.push(("signals.gpp_string".to_owned(), e.to_string())),
        }
    }
    if signals.gpc && Gpc::from_flag(true).opts_out_of_sale_and_sharing() {
        out.push(SourceDecisions {
            source: Source::Gpc,
            raw_signal: "Sec-GPC: 1".into(),
            purposes: gpc_decisions(taxonomy),
        });
    }
    if !signals.choices.is_empty() {
        let mut acc = Acc::new();
        for (i, c) in signals.choices.iter().enumerate() {
            if !taxonomy.is_purpose(&c.purpose) {
                errors.push((
                    format!("signals.choices[{i}].purpose"),
                    "not a purpose of the policy taxonomy (fideslang data use)".into(),
                ));
                continue;
            }
            acc.insert(c.purpose.clone(), (c.decision, c.lawful_basis));
        }
        out.push(SourceDecisions {
            source: Source::Explicit,
            raw_signal: String::new(),
            purposes: into_decisions(acc),
        });
    }
    if !errors.is_empty() {
        return Err(ConsentError::Invalid(errors));
    }
    out.retain(|s| !s.purposes.is_empty());
    if out.is_empty() {
        return Err(ConsentError::invalid(
            "signals",
            "no purpose decided: give choices, a TC string, a GPP string or GPC",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_policy::PolicyEngine;

    fn taxonomy() -> Taxonomy {
        PolicyEngine::builtin().unwrap().taxonomy().clone()
    }

    #[test]
    fn gpc_refuses_sale_and_sharing() {
        let t = taxonomy();
        let out = decide(
            &t,
            &Signals {
                gpc: true,
                ..Signals::default()
            },
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].source, Source::Gpc);
        let purposes: Vec<&str> = out[0].purposes.iter().map(|p| p.purpose.as_str()).collect();
        assert!(purposes.contains(&"third_party_sharing"), "{purposes:?}");
        assert!(
            out[0]
                .purposes
                .iter()
                .all(|p| p.decision == Decision::Refused)
        );
    }

    #[test]
    fn malformed_strings_name_the_field() {
        let t = taxonomy();
        let err = decide(
            &t,
            &Signals {
                tc_string: Some("not-a-tc-string!".into()),
                gpp_string: Some("DBAB~%%%".into()),
                ..Signals::default()
            },
        )
        .unwrap_err();
        let ConsentError::Invalid(v) = err else {
            panic!("{err:?}")
        };
        let fields: Vec<&str> = v.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["signals.tc_string", "signals.gpp_string"]);
    }

    #[test]
    fn unknown_purposes_and_empty_signals_are_refused() {
        let t = taxonomy();
        let err = decide(
            &t,
            &Signals {
                choices: vec![Choice {
                    purpose: "mind.reading".into(),
                    decision: Decision::Given,
                    lawful_basis: LawfulBasis::Consent,
                }],
                ..Signals::default()
            },
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("signals.choices[0].purpose"),
            "{err}"
        );
        assert!(decide(&t, &Signals::default()).is_err());
    }
}

#[cfg(test)]
mod tc_tests {
    use super::*;
    use meridian_policy::PolicyEngine;

    /// The TC string of the IAB `@iabtcf/core` documentation.
    const TC: &str = "COvFyGBOvFyGBAbAAAENAPCAAOAAAAAAAAAAAEEUACCKAAA";

    #[test]
    fn tc_purposes_map_through_the_taxonomy() {
        let engine = PolicyEngine::builtin().unwrap();
        let t = engine.taxonomy();
        let tc = decode_tc_string(TC).unwrap();
        let out = decide(
            t,
            &Signals {
                tc_string: Some(format!("  {TC} ")),
                ..Signals::default()
            },
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].source, out[0].raw_signal.as_str()),
            (Source::Tcf, TC)
        );
        // every fideslang purpose a TCF purpose maps to is decided as the string says
        for id in 1u8..=11 {
            let Some(m) = t.tcf_purpose(id) else { continue };
            for p in &m.purposes {
                let d = out[0].purposes.iter().find(|d| &d.purpose == p).unwrap();
                let refused_somewhere = (1u8..=11).any(|other| {
                    t.tcf_purpose(other).is_some_and(|o| {
                        o.purposes.contains(p)
                            && !tc.purpose_consents.contains(u16::from(other))
                            && !tc.purpose_legitimate_interests.contains(u16::from(other))
                    })
                });
                assert_eq!(d.decision == Decision::Refused, refused_somewhere, "{p}");
            }
        }
    }
}
