//! Taxonomy mappings, field classification, legal parameters, the CLI
//! helpers and thread-safety of the memo.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use meridian_policy::cli::{self, ExplainArgs};
use meridian_policy::{
    Action, ConsentState, FieldKind, GppSection, Jurisdiction, Period, PolicyEngine, Question,
};

fn engine() -> PolicyEngine {
    PolicyEngine::builtin().unwrap()
}

#[test]
fn tcf_purposes_1_to_11_map_to_known_fideslang_purposes() {
    let e = engine();
    let t = e.taxonomy();
    for id in 1..=11u8 {
        let m = t
            .tcf_purpose(id)
            .unwrap_or_else(|| panic!("TCF purpose {id} missing"));
        assert!(!m.purposes.is_empty(), "TCF purpose {id} maps to nothing");
        for p in &m.purposes {
            assert!(t.is_purpose(p), "{p}");
        }
    }
    assert!(t.tcf_purpose(12).is_none());
    assert_eq!(t.tcf_purpose(1).unwrap().purposes, ["functional.storage"]);
    assert_eq!(
        t.tcf_purpose(3).unwrap().purposes,
        ["marketing.advertising.profiling"]
    );
    assert!(
        t.tcf_purpose(4)
            .unwrap()
            .purposes
            .iter()
            .any(|p| p == "marketing.advertising.third_party.targeted")
    );
    assert_eq!(
        t.tcf_purposes_for("marketing.advertising.third_party.targeted"),
        [4]
    );
    assert_eq!(
        t.tcf_special_feature(1).unwrap().data_categories,
        ["user.location.precise"]
    );
    assert!(
        t.tcf_special_purpose(1)
            .unwrap()
            .purposes
            .iter()
            .any(|p| p == "essential.fraud_detection")
    );
}

#[test]
fn gpp_opt_outs_map_to_purposes_and_categories() {
    let e = engine();
    let t = e.taxonomy();
    for section in [GppSection::UsNat, GppSection::UsCa] {
        let sale = t.gpp(section, "SaleOptOut").unwrap();
        assert_eq!(sale.purposes, ["third_party_sharing"]);
        let share = t.gpp(section, "SharingOptOut").unwrap();
        assert!(t.purpose_is_under(
            "marketing.advertising.third_party.targeted",
            &share.purposes[0]
        ));
        let sensitive = t.gpp(section, "SensitiveDataProcessing").unwrap();
        assert!(
            sensitive
                .data_categories
                .iter()
                .any(|c| c == "user.health_and_medical")
        );
    }
    assert!(
        t.gpp(GppSection::UsNat, "TargetedAdvertisingOptOut")
            .is_some()
    );
    assert!(
        t.gpp(GppSection::UsCa, "TargetedAdvertisingOptOut")
            .is_none(),
        "usca has no such field"
    );
}

#[test]
fn fields_are_classified_with_defaults_for_unlisted_ones() {
    let e = engine();
    assert_eq!(
        e.classify_field(FieldKind::Trait, "email"),
        "user.contact.email"
    );
    assert_eq!(
        e.classify_field(FieldKind::Context, "ip"),
        "user.device.ip_address"
    );
    assert_eq!(
        e.classify_field(FieldKind::Event, "anonymousId"),
        "user.device.cookie_id"
    );
    assert_eq!(
        e.classify_field(FieldKind::Context, "location.latitude"),
        "user.location.precise"
    );
    assert_eq!(
        e.classify_field(FieldKind::Trait, "favouriteColour"),
        "user"
    );
    assert!(!e.fields().is_listed(FieldKind::Trait, "favouriteColour"));
    // every classification is a category the taxonomy knows
    for kind in [FieldKind::Event, FieldKind::Trait, FieldKind::Context] {
        assert!(e.taxonomy().is_category(e.classify_field(kind, "unlisted")));
    }
}

#[test]
fn legal_parameters_carry_values_and_articles() {
    let e = engine();
    let gdpr = e.regime("GDPR").unwrap();
    assert_eq!(gdpr.dsr.deadline.value, Period::Months(1));
    assert_eq!(
        gdpr.dsr.extension.as_ref().unwrap().value,
        Period::Months(2)
    );
    assert!(gdpr.dsr.deadline.article.contains("12(3)"));
    let ccpa = e.regime("CCPA").unwrap();
    assert_eq!(ccpa.dsr.deadline.value, Period::Days(45));
    assert_eq!(ccpa.dsr.extension.as_ref().unwrap().value, Period::Days(45));
    assert_eq!(
        ccpa.dsr.receipt_confirmation.as_ref().unwrap().value,
        Period::BusinessDays(10)
    );
    assert_eq!(ccpa.children.opt_in_age.value, 16);
    assert_eq!(
        e.regime("LGPD").unwrap().dsr.deadline.value,
        Period::Days(15)
    );
    assert_eq!(e.regime("LGPD").unwrap().children.guardian_age.value, 12);
    assert_eq!(e.regime("UK_GDPR").unwrap().children.guardian_age.value, 13);
    assert_eq!(e.regime("PIPL").unwrap().children.guardian_age.value, 14);
    assert_eq!(gdpr.consent.reprompt_after_refusal.value, Period::Months(6));
    assert_eq!(gdpr.consent.validity.value, Period::Months(13));
    // member-state override
    assert_eq!(e.jurisdiction("EU-DE").unwrap().guardian_age.value, 16);
    assert_eq!(e.jurisdiction("EU-FR").unwrap().guardian_age.value, 15);
    assert_eq!(e.jurisdiction("de").unwrap().code, "EU-DE");
    assert_eq!(e.regime_for("US-CA").unwrap().id, "CCPA");
    assert_eq!(e.jurisdiction("EU-DE").unwrap().time_zone, "Europe/Berlin");
    for r in e.regimes().values() {
        assert!(!r.dsr.deadline.article.trim().is_empty(), "{}", r.id);
    }
}

#[test]
fn retention_uses_the_nearest_listed_category() {
    let e = engine();
    assert_eq!(
        e.retention("EU-DE", "user.device.cookie_id").unwrap().value,
        Period::Months(13)
    );
    assert_eq!(
        e.retention("EU-DE", "user.financial.bank_account")
            .unwrap()
            .value,
        Period::Years(10)
    );
    assert_eq!(
        e.retention("EU-DE", "user.contact.email").unwrap().value,
        Period::Months(25)
    );
    assert_eq!(
        e.retention("GB", "user.financial").unwrap().value,
        Period::Years(6)
    );
    assert!(e.retention("JP", "user").is_err());
    assert!(e.retention("EU-DE", "user.nope").is_err());
}

#[test]
fn jurisdiction_parsing() {
    assert_eq!(Jurisdiction::parse("eu-de").unwrap().as_str(), "EU-DE");
    assert_eq!(Jurisdiction::parse("US-CA").unwrap().country(), "US");
    assert!(Jurisdiction::parse("Germany").is_err());
}

#[test]
fn check_reports_the_builtin_and_a_directory() {
    let report = cli::check(None).unwrap();
    assert_eq!(report.regimes, ["CCPA", "GDPR", "LGPD", "PIPL", "UK_GDPR"]);
    assert!(report.rules >= 30, "{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let from_dir = cli::check(Some(&dir)).unwrap();
    assert_eq!(from_dir.policy_version, report.policy_version);
    let err = cli::check(Some(std::path::Path::new("/nonexistent/policies"))).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/policies"), "{err}");
}

#[test]
fn explain_prints_allowed_rule_reason_and_version() {
    let e = engine();
    let mut args = ExplainArgs::new(
        "export",
        "EU-DE",
        "marketing.advertising.third_party.targeted",
    )
    .unwrap();
    args.consent = cli::parse_consent("none").unwrap();
    args.destination_region = Some("US".to_owned());
    args.transfer_mechanisms = vec!["dpf".to_owned()];
    let v = cli::explain(&e, &args);
    assert_eq!(v["allowed"], false);
    assert_eq!(v["rule"], "gdpr.art6_1_a.consent_required");
    assert!(v["reason"].as_str().unwrap().contains("Art. 6(1)(a)"));
    assert_eq!(v["policy_version"], e.policy_version());
    assert_eq!(v["regime"], "GDPR");
    assert!(v["retention"].is_null(), "no category, no retention");

    args.consent = cli::parse_consent("given").unwrap();
    let v = cli::explain(&e, &args);
    assert_eq!(v["allowed"], true);
    assert_eq!(v["rule"], "gdpr.art6_1_a.consent");
    assert!(
        v["obligations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "record_transfer")
    );

    args.category = Some("user.device.cookie_id".to_owned());
    let v = cli::explain(&e, &args);
    assert_eq!(v["retention"]["period"], "13 months");

    args.transfer_mechanisms.clear();
    let v = cli::explain(&e, &args);
    assert_eq!(v["allowed"], false, "US without DPF or SCCs");
    assert_eq!(v["rule"], "gdpr.art44.no_transfer_basis");
}

#[test]
fn explain_argument_helpers_reject_bad_input() {
    assert!(
        ExplainArgs::new("share", "EU-DE", "analytics")
            .unwrap_err()
            .to_string()
            .contains("collect, process, export")
    );
    assert!(ExplainArgs::new("collect", "", "analytics").is_err());
    assert!(cli::parse_consent("maybe").is_err());
    assert_eq!(cli::parse_age("15").unwrap(), 15);
    assert!(cli::parse_age("-1").is_err());
    assert!(cli::parse_age("fifteen").is_err());
    assert!(cli::parse_age("200").is_err());
}

#[test]
fn memo_is_shared_safely_across_threads() {
    let e = Arc::new(engine());
    let questions = meridian_policy::bench::sample_questions();
    let expected: Vec<bool> = questions
        .iter()
        .map(|q| e.decide_uncached(q).allowed)
        .collect();
    e.clear_memo();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let e = Arc::clone(&e);
            let questions = questions.clone();
            let expected = expected.clone();
            std::thread::spawn(move || {
                for round in 0..20 {
                    for (i, q) in questions.iter().enumerate().skip((t + round) % 3) {
                        assert_eq!(e.decide(q).allowed, expected[i]);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let distinct: std::collections::HashSet<_> =
        questions.iter().map(|q| e.resolve(q).unwrap()).collect();
    assert_eq!(
        e.memoized(),
        distinct.len(),
        "each tuple evaluated and stored once"
    );
}

#[test]
fn memoized_decision_is_the_same_allocation() {
    let e = engine();
    let q = Question::new(Action::Collect, "BR", "analytics.reporting")
        .with_consent(ConsentState::Given);
    let a = e.decide(&q);
    let b = e.decide(&q);
    assert!(Arc::ptr_eq(&a, &b));
}

#[test]
fn bench_runs_and_reports_units() {
    let e = engine();
    let report = meridian_policy::bench::run(
        &e,
        &meridian_policy::bench::BenchOptions {
            memoized_duration: std::time::Duration::from_millis(50),
            uncached_samples: 50,
        },
    );
    assert!(report.memoized_decisions_per_sec_per_core > 0.0);
    assert!(report.uncached_eval_p50_us > 0.0);
    assert!(report.uncached_eval_p99_us >= report.uncached_eval_p50_us);
    let json = serde_json::to_value(&report).unwrap();
    for key in [
        "memoized_decisions_per_sec_per_core",
        "uncached_eval_p50_us",
        "uncached_eval_p99_us",
    ] {
        assert!(json.get(key).is_some(), "{key}");
    }
}

#[test]
fn dsr_deadlines_follow_each_regime_in_local_time() {
    use chrono::{TimeZone, Utc};
    let e = engine();
    // received Tuesday 2025-03-25 10:00 UTC
    let received = Utc.with_ymd_and_hms(2025, 3, 25, 10, 0, 0).unwrap();

    // GDPR Art. 12(3): one month, extendable by two (Berlin, UTC+2 in April)
    let de = e.dsr_deadline("EU-DE", received).unwrap();
    assert_eq!(de.regime, "GDPR");
    assert_eq!(de.due, Utc.with_ymd_and_hms(2025, 4, 25, 22, 0, 0).unwrap());
    assert_eq!(
        de.extended_due,
        Some(Utc.with_ymd_and_hms(2025, 6, 25, 22, 0, 0).unwrap())
    );
    assert_eq!(de.confirm_receipt_by, None);

    // CCPA §1798.130: 45 days + 45; 11 CCR §7021(a): confirm within 10 business days (Los Angeles)
    let ca = e.dsr_deadline("US-CA", received).unwrap();
    assert_eq!(ca.due, Utc.with_ymd_and_hms(2025, 5, 10, 7, 0, 0).unwrap());
    assert_eq!(
        ca.extended_due,
        Some(Utc.with_ymd_and_hms(2025, 6, 24, 7, 0, 0).unwrap())
    );
    assert_eq!(
        ca.confirm_receipt_by,
        Some(Utc.with_ymd_and_hms(2025, 4, 9, 7, 0, 0).unwrap())
    );

    // LGPD Art. 19, II: 15 days, no extension (São Paulo, UTC-3)
    let br = e.dsr_deadline("BR", received).unwrap();
    assert_eq!(br.due, Utc.with_ymd_and_hms(2025, 4, 10, 3, 0, 0).unwrap());
    assert_eq!(br.extended_due, None);

    assert!(e.dsr_deadline("JP", received).is_err());
}

#[test]
fn invalid_time_zone_is_rejected_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    for sub in ["", "taxonomy", "regimes", "rules"] {
        std::fs::create_dir_all(tmp.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(src.join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), tmp.path().join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
    let path = tmp.path().join("jurisdictions.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("Europe/Berlin", "Europe/Bonn")).unwrap();
    let e = PolicyEngine::load_dir(tmp.path()).unwrap_err();
    assert_eq!(e.file(), "jurisdictions.toml");
    assert!(e.to_string().contains("Europe/Bonn"), "{e}");
}
