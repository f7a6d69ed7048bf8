//! Table-driven cases per regime. Each case cites the article it checks and
//! asserts the decision and the rule that made it.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use meridian_policy::{Action, ConsentState, ObligationKind, PolicyEngine, Question};

fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE
        .get_or_init(|| PolicyEngine::builtin().unwrap_or_else(|e| panic!("builtin policies: {e}")))
}

struct Case {
    article: &'static str,
    question: Question<'static>,
    allowed: bool,
    rule: &'static str,
}

use Action::{Collect, Export, Process};
use ConsentState::{Given, Guardian, Refused};

const TARGETED: &str = "marketing.advertising.third_party.targeted";

fn q(action: Action, jurisdiction: &'static str, purpose: &'static str) -> Question<'static> {
    Question::new(action, jurisdiction, purpose)
}

fn run(cases: &[Case]) {
    let e = engine();
    let mut failures = Vec::new();
    for c in cases {
        let d = e.decide(&c.question);
        // the uncached Cedar path must agree with the memoized one
        let fresh = e.decide_uncached(&c.question);
        assert_eq!(*d, fresh, "memo and Cedar disagree for {}", c.article);
        if d.allowed != c.allowed || d.rule_id != c.rule {
            failures.push(format!(
                "{}: expected allowed={} rule={}, got allowed={} rule={} ({})",
                c.article, c.allowed, c.rule, d.allowed, d.rule_id, d.reason
            ));
        }
        assert_eq!(d.policy_version, e.policy_version());
        if !d.allowed {
            assert!(
                d.obligations.is_empty(),
                "{}: a denial carries no obligations",
                c.article
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn gdpr() {
    run(&[
        Case {
            article: "GDPR Art. 6(1)(a): EU subject, no consent, targeted ads → denied",
            question: q(Process, "EU-DE", TARGETED),
            allowed: false,
            rule: "gdpr.art6_1_a.consent_required",
        },
        Case {
            article: "GDPR Art. 6(1)(a): same with consent → allowed",
            question: q(Process, "EU-DE", TARGETED).with_consent(Given),
            allowed: true,
            rule: "gdpr.art6_1_a.consent",
        },
        Case {
            article: "GDPR Art. 6(1)(a): collecting the cookie id for targeted ads without consent → denied",
            question: q(Collect, "EU-FR", TARGETED).with_category("user.device.cookie_id"),
            allowed: false,
            rule: "gdpr.art6_1_a.consent_required",
        },
        Case {
            article: "GDPR Art. 21: refused targeted ads → denied",
            question: q(Process, "EU-IT", TARGETED).with_consent(Refused),
            allowed: false,
            rule: "gdpr.art6_1_a.consent_required",
        },
        Case {
            article: "GDPR Art. 6(1)(b): essential service without consent → allowed",
            question: q(Collect, "EU-DE", "essential.service").with_category("user.contact.email"),
            allowed: true,
            rule: "gdpr.art6_1_b.contract",
        },
        Case {
            article: "GDPR Art. 6(1)(f): fraud detection is essential → allowed even when other consent refused",
            question: q(Process, "EU-NL", "essential.fraud_detection").with_consent(Refused),
            allowed: true,
            rule: "gdpr.art6_1_b.contract",
        },
        Case {
            article: "GDPR Art. 6(1)(f), Art. 21: ad serving on legitimate interest → allowed",
            question: q(Process, "EU-DE", "marketing.advertising.serving"),
            allowed: true,
            rule: "gdpr.art6_1_f.legitimate_interest",
        },
        Case {
            article: "GDPR Art. 21: objection to ad serving → denied",
            question: q(Process, "EU-DE", "marketing.advertising.serving").with_consent(Refused),
            allowed: false,
            rule: "gdpr.art21.objection",
        },
        Case {
            article: "ePrivacy Art. 5(3): analytics cookies need consent → denied",
            question: q(Collect, "EU-DE", "analytics.reporting")
                .with_category("user.device.cookie_id"),
            allowed: false,
            rule: "gdpr.art6_1_a.consent_required",
        },
        Case {
            article: "GDPR Art. 8(1): 15-year-old in Germany (16) consenting alone → needs guardian consent",
            question: q(Process, "EU-DE", TARGETED)
                .with_consent(Given)
                .with_age(15),
            allowed: false,
            rule: "gdpr.art8.guardian_consent",
        },
        Case {
            article: "GDPR Art. 8(1): 15-year-old in Germany with guardian consent → allowed",
            question: q(Process, "EU-DE", TARGETED)
                .with_consent(Guardian)
                .with_age(15),
            allowed: true,
            rule: "gdpr.art6_1_a.consent",
        },
        Case {
            article: "GDPR Art. 8(1): 16-year-old in Germany consents alone → allowed",
            question: q(Process, "EU-DE", TARGETED)
                .with_consent(Given)
                .with_age(16),
            allowed: true,
            rule: "gdpr.art6_1_a.consent",
        },
        Case {
            article: "GDPR Art. 8(1) + Loi Informatique et Libertés art. 45: 15-year-old in France (15) → allowed alone",
            question: q(Process, "EU-FR", TARGETED)
                .with_consent(Given)
                .with_age(15),
            allowed: true,
            rule: "gdpr.art6_1_a.consent",
        },
        Case {
            article: "GDPR Art. 8(1) + Belgian law (13): 12-year-old in Belgium → needs guardian",
            question: q(Process, "EU-BE", TARGETED)
                .with_consent(Given)
                .with_age(12),
            allowed: false,
            rule: "gdpr.art8.guardian_consent",
        },
        Case {
            article: "GDPR Art. 9(1): health data without explicit consent, even for the service → denied",
            question: q(Collect, "EU-DE", "essential.service")
                .with_category("user.health_and_medical"),
            allowed: false,
            rule: "gdpr.art9.special_category",
        },
        Case {
            article: "GDPR Art. 9(2)(a): health data with explicit consent → allowed",
            question: q(Collect, "EU-DE", "essential.service")
                .with_category("user.health_and_medical")
                .with_consent(Given),
            allowed: true,
            rule: "gdpr.art6_1_b.contract",
        },
        Case {
            article: "GDPR Art. 45: transfer to Japan (adequate) → allowed",
            question: q(Export, "EU-DE", TARGETED)
                .with_consent(Given)
                .with_destination_region("JP"),
            allowed: true,
            rule: "gdpr.art6_1_a.consent",
        },
        Case {
            article: "GDPR Art. 44: transfer within the EEA (Ireland) → allowed",
            question: q(Export, "EU-DE", TARGETED)
                .with_consent(Given)
                .with_destination("tiktok"),
            allowed: true,
            rule: "gdpr.art6_1_a.consent",
        },
        Case {
            article: "GDPR Art. 45 + Decision (EU) 2023/1795: to Meta, US, DPF-certified → allowed",
            question: q(Export, "EU-DE", TARGETED)
                .with_consent(Given)
                .with_destination("meta"),
            allowed: true,
            rule: "gdpr.art6_1_a.consent",
        },
        Case {
            article: "GDPR Art. 45: US recipient without DPF certification and no SCCs → denied",
            question: q(Export, "EU-DE", TARGETED)
                .with_consent(Given)
                .with_destination_region("US")
                .with_transfer_mechanisms(&["idta"]),
            allowed: false,
            rule: "gdpr.art44.no_transfer_basis",
        },
        Case {
            article: "GDPR Art. 44-46: transfer to India (not adequate) without SCCs → denied",
            question: q(Export, "EU-DE", TARGETED)
                .with_consent(Given)
                .with_destination_region("IN"),
            allowed: false,
            rule: "gdpr.art44.no_transfer_basis",
        },
        Case {
            article: "GDPR Art. 46(2)(c): transfer to India with SCCs → allowed",
            question: q(Export, "EU-DE", TARGETED)
                .with_consent(Given)
                .with_destination_region("IN")
                .with_transfer_mechanisms(&["scc"]),
            allowed: true,
            rule: "gdpr.art6_1_a.consent",
        },
        Case {
            article: "GPC is not a GDPR rule: consented targeted ads with GPC stay allowed (GPC is honoured as an opt-out only where the law says so)",
            question: q(Process, "EU-DE", TARGETED)
                .with_consent(Given)
                .with_gpc(true),
            allowed: true,
            rule: "gdpr.art6_1_a.consent",
        },
    ]);
}

#[test]
fn uk_gdpr() {
    run(&[
        Case {
            article: "UK GDPR Art. 6(1)(a), PECR reg. 6: no consent, targeted ads → denied",
            question: q(Process, "GB", TARGETED),
            allowed: false,
            rule: "uk_gdpr.art6_1_a.consent_required",
        },
        Case {
            article: "UK GDPR Art. 6(1)(a): with consent → allowed",
            question: q(Process, "GB", TARGETED).with_consent(Given),
            allowed: true,
            rule: "uk_gdpr.art6_1_a.consent",
        },
        Case {
            article: "UK GDPR Art. 8 + DPA 2018 s.9: 12-year-old → needs guardian consent",
            question: q(Process, "GB", TARGETED).with_consent(Given).with_age(12),
            allowed: false,
            rule: "uk_gdpr.art8.guardian_consent",
        },
        Case {
            article: "UK GDPR Art. 8 + DPA 2018 s.9: 13-year-old consents alone → allowed",
            question: q(Process, "GB", TARGETED).with_consent(Given).with_age(13),
            allowed: true,
            rule: "uk_gdpr.art6_1_a.consent",
        },
        Case {
            article: "UK GDPR Art. 8: 15-year-old (allowed in the UK, unlike Germany) → allowed",
            question: q(Process, "GB", TARGETED).with_consent(Given).with_age(15),
            allowed: true,
            rule: "uk_gdpr.art6_1_a.consent",
        },
        Case {
            article: "DPA 2018 s.17A: transfer to Germany (UK adequacy regulations) → allowed",
            question: q(Export, "GB", TARGETED)
                .with_consent(Given)
                .with_destination_region("DE"),
            allowed: true,
            rule: "uk_gdpr.art6_1_a.consent",
        },
        Case {
            article: "UK-US data bridge: Meta (UK Extension certified) → allowed",
            question: q(Export, "GB", TARGETED)
                .with_consent(Given)
                .with_destination("meta"),
            allowed: true,
            rule: "uk_gdpr.art6_1_a.consent",
        },
        Case {
            article: "UK GDPR Art. 46: EU SCCs alone are not a UK mechanism; to India → denied",
            question: q(Export, "GB", TARGETED)
                .with_consent(Given)
                .with_destination_region("IN")
                .with_transfer_mechanisms(&["scc"]),
            allowed: false,
            rule: "uk_gdpr.art44.no_transfer_basis",
        },
        Case {
            article: "UK GDPR Art. 46(2)(d), DPA 2018 s.119A: to India with the IDTA → allowed",
            question: q(Export, "GB", TARGETED)
                .with_consent(Given)
                .with_destination_region("IN")
                .with_transfer_mechanisms(&["idta"]),
            allowed: true,
            rule: "uk_gdpr.art6_1_a.consent",
        },
        Case {
            article: "UK GDPR Art. 9: biometrics without explicit consent → denied",
            question: q(Collect, "GB", "essential.service.authentication")
                .with_category("user.biometrics"),
            allowed: false,
            rule: "uk_gdpr.art9.special_category",
        },
    ]);
}

#[test]
fn ccpa() {
    run(&[
        Case {
            article: "CCPA §1798.135(b), 11 CCR §7025: California with GPC → sharing (cross-context ads) denied",
            question: q(Export, "US-CA", TARGETED)
                .with_gpc(true)
                .with_destination("meta"),
            allowed: false,
            rule: "ccpa.7025.gpc_opt_out",
        },
        Case {
            article: "CCPA §1798.135(b), 11 CCR §7025: GPC → sale denied",
            question: q(Process, "US-CA", "third_party_sharing").with_gpc(true),
            allowed: false,
            rule: "ccpa.7025.gpc_opt_out",
        },
        Case {
            article: "CCPA §1798.100: GPC does not stop analytics → allowed",
            question: q(Process, "US-CA", "analytics.reporting").with_gpc(true),
            allowed: true,
            rule: "ccpa.1798_100.notice_at_collection",
        },
        Case {
            article: "CCPA §1798.120: opt-out regime, no signal → targeted ads allowed",
            question: q(Export, "US-CA", TARGETED).with_destination("meta"),
            allowed: true,
            rule: "ccpa.1798_100.notice_at_collection",
        },
        Case {
            article: "CCPA §1798.120: consumer opted out → denied",
            question: q(Process, "US-CA", TARGETED).with_consent(Refused),
            allowed: false,
            rule: "ccpa.1798_120.opted_out",
        },
        Case {
            article: "CCPA §1798.105(d): service continues after opt-out → allowed",
            question: q(Process, "US-CA", "essential.service").with_consent(Refused),
            allowed: true,
            rule: "ccpa.1798_105d.service",
        },
        Case {
            article: "CCPA §1798.120(c): 15-year-old, no opt-in → sale denied",
            question: q(Process, "US-CA", "third_party_sharing").with_age(15),
            allowed: false,
            rule: "ccpa.1798_120c.minor_opt_in",
        },
        Case {
            article: "CCPA §1798.120(c): 15-year-old opted in → allowed",
            question: q(Process, "US-CA", "third_party_sharing")
                .with_age(15)
                .with_consent(Given),
            allowed: true,
            rule: "ccpa.1798_100.notice_at_collection",
        },
        Case {
            article: "CCPA §1798.120(c): 12-year-old opted in alone → needs parent",
            question: q(Process, "US-CA", "third_party_sharing")
                .with_age(12)
                .with_consent(Given),
            allowed: false,
            rule: "ccpa.1798_120c.parent_consent",
        },
        Case {
            article: "CCPA §1798.120(c): 12-year-old with parent's authorisation → allowed",
            question: q(Process, "US-CA", "third_party_sharing")
                .with_age(12)
                .with_consent(Guardian),
            allowed: true,
            rule: "ccpa.1798_100.notice_at_collection",
        },
        Case {
            article: "CCPA §1798.120(c) is about sale/share only: 15-year-old analytics → allowed",
            question: q(Process, "US-CA", "analytics.reporting").with_age(15),
            allowed: true,
            rule: "ccpa.1798_100.notice_at_collection",
        },
        Case {
            article: "CCPA has no transfer restriction: export to India → allowed",
            question: q(Export, "US-CA", "analytics.reporting").with_destination_region("IN"),
            allowed: true,
            rule: "ccpa.1798_100.notice_at_collection",
        },
    ]);
}

#[test]
fn pipl() {
    run(&[
        Case {
            article: "PIPL Art. 39: exported abroad without separate consent → denied",
            question: q(Export, "CN", TARGETED)
                .with_consent(Given)
                .with_destination_region("US")
                .with_transfer_mechanisms(&["standard_contract"]),
            allowed: false,
            rule: "pipl.art39.transfer_separate_consent",
        },
        Case {
            article: "PIPL Art. 38, 39: separate consent and standard contract → allowed",
            question: q(Export, "CN", TARGETED)
                .with_consent(Given)
                .with_separate_consent(true)
                .with_destination_region("US")
                .with_transfer_mechanisms(&["standard_contract"]),
            allowed: true,
            rule: "pipl.art13_1.consent",
        },
        Case {
            article: "PIPL Art. 38: separate consent but no mechanism (DPF is not a PIPL mechanism) → denied",
            question: q(Export, "CN", TARGETED)
                .with_consent(Given)
                .with_separate_consent(true)
                .with_destination("meta"),
            allowed: false,
            rule: "pipl.art38.transfer_mechanism",
        },
        Case {
            article: "PIPL Art. 38: domestic recipient needs no transfer basis → allowed",
            question: q(Export, "CN", TARGETED)
                .with_consent(Given)
                .with_destination_region("CN"),
            allowed: true,
            rule: "pipl.art13_1.consent",
        },
        Case {
            article: "PIPL Art. 13: analytics without consent (no legitimate-interest basis) → denied",
            question: q(Process, "CN", "analytics.reporting"),
            allowed: false,
            rule: "pipl.art13.consent_required",
        },
        Case {
            article: "PIPL Art. 13(2): contract necessity → allowed",
            question: q(Process, "CN", "essential.service.payment_processing"),
            allowed: true,
            rule: "pipl.art13_2.contract",
        },
        Case {
            article: "PIPL Art. 31: 13-year-old consenting alone → needs guardian",
            question: q(Process, "CN", "analytics.reporting")
                .with_consent(Given)
                .with_separate_consent(true)
                .with_age(13),
            allowed: false,
            rule: "pipl.art31.guardian_consent",
        },
        Case {
            article: "PIPL Art. 28, 29: 13-year-old with guardian consent but no separate consent → denied (minors' data is sensitive)",
            question: q(Process, "CN", "analytics.reporting")
                .with_consent(Guardian)
                .with_age(13),
            allowed: false,
            rule: "pipl.art28.minor_is_sensitive",
        },
        Case {
            article: "PIPL Art. 28, 29, 31: 13-year-old with guardian and separate consent → allowed",
            question: q(Process, "CN", "analytics.reporting")
                .with_consent(Guardian)
                .with_separate_consent(true)
                .with_age(13),
            allowed: true,
            rule: "pipl.art13_1.consent",
        },
        Case {
            article: "PIPL Art. 28: 14-year-old is not a minor under 14 → allowed with consent",
            question: q(Process, "CN", "analytics.reporting")
                .with_consent(Given)
                .with_age(14),
            allowed: true,
            rule: "pipl.art13_1.consent",
        },
        Case {
            article: "PIPL Art. 29: precise location (sensitive) without separate consent → denied",
            question: q(Collect, "CN", "analytics.reporting")
                .with_category("user.location.precise")
                .with_consent(Given),
            allowed: false,
            rule: "pipl.art29.sensitive_separate_consent",
        },
    ]);
}

#[test]
fn lgpd() {
    run(&[
        Case {
            article: "LGPD Art. 7, I and Art. 8: targeted ads without consent → denied",
            question: q(Process, "BR", TARGETED),
            allowed: false,
            rule: "lgpd.art8.consent_required",
        },
        Case {
            article: "LGPD Art. 7, I: with consent → allowed",
            question: q(Process, "BR", TARGETED).with_consent(Given),
            allowed: true,
            rule: "lgpd.art7_i.consent",
        },
        Case {
            article: "LGPD Art. 7, IX, Art. 10: analytics on legitimate interest → allowed",
            question: q(Process, "BR", "analytics.reporting"),
            allowed: true,
            rule: "lgpd.art7_ix.legitimate_interest",
        },
        Case {
            article: "LGPD Art. 18, §2: opposition to analytics → denied",
            question: q(Process, "BR", "analytics.reporting").with_consent(Refused),
            allowed: false,
            rule: "lgpd.art18.opposition",
        },
        Case {
            article: "LGPD Art. 14, §1: 11-year-old consenting alone → needs parent",
            question: q(Process, "BR", TARGETED).with_consent(Given).with_age(11),
            allowed: false,
            rule: "lgpd.art14.parent_consent",
        },
        Case {
            article: "LGPD Art. 14, §1: 11-year-old with parent's consent → allowed",
            question: q(Process, "BR", TARGETED)
                .with_consent(Guardian)
                .with_age(11),
            allowed: true,
            rule: "lgpd.art7_i.consent",
        },
        Case {
            article: "LGPD Art. 14: 12-year-old (adolescent) consents → allowed",
            question: q(Process, "BR", TARGETED).with_consent(Given).with_age(12),
            allowed: true,
            rule: "lgpd.art7_i.consent",
        },
        Case {
            article: "LGPD Art. 11, I: religious belief without consent → denied",
            question: q(Collect, "BR", "analytics.reporting")
                .with_category("user.demographic.religious_belief"),
            allowed: false,
            rule: "lgpd.art11.sensitive",
        },
        Case {
            article: "LGPD Art. 33: transfer to the US without SCCs (no ANPD adequacy) → denied",
            question: q(Export, "BR", TARGETED)
                .with_consent(Given)
                .with_destination_region("US")
                .with_transfer_mechanisms(&["dpf"]),
            allowed: false,
            rule: "lgpd.art33.no_transfer_basis",
        },
        Case {
            article: "LGPD Art. 33, II (Res. CD/ANPD 19/2024): to Meta with SCCs → allowed",
            question: q(Export, "BR", TARGETED)
                .with_consent(Given)
                .with_destination("meta"),
            allowed: true,
            rule: "lgpd.art7_i.consent",
        },
    ]);
}

#[test]
fn questions_naming_unknown_terms_are_denied() {
    let e = engine();
    for (question, needle) in [
        (
            q(Process, "JP", "analytics.reporting"),
            "unknown jurisdiction",
        ),
        (q(Process, "EU-DE", "analytics.nonsense"), "unknown purpose"),
        (
            q(Collect, "EU-DE", "analytics.reporting").with_category("user.shoe_size"),
            "unknown data category",
        ),
        (
            q(Export, "EU-DE", "analytics.reporting").with_consent(Given),
            "needs a destination",
        ),
        (
            q(Export, "EU-DE", "analytics.reporting").with_destination("myspace"),
            "unknown destination",
        ),
        (
            q(Export, "EU-DE", "analytics.reporting").with_destination_region("usa"),
            "invalid destination region",
        ),
        (
            q(Export, "EU-DE", "analytics.reporting")
                .with_destination_region("US")
                .with_transfer_mechanisms(&["handshake"]),
            "unknown transfer mechanism",
        ),
    ] {
        let d = e.decide(&question);
        assert!(!d.allowed, "{question:?}");
        assert_eq!(d.rule_id, meridian_policy::INVALID_QUESTION);
        assert!(
            d.reason.contains(needle),
            "{} should mention {needle}",
            d.reason
        );
    }
}

#[test]
fn obligations_follow_the_action_and_category() {
    let e = engine();
    let collect =
        e.decide(&q(Collect, "EU-DE", "essential.service").with_category("user.contact.email"));
    assert!(collect.allowed);
    assert!(collect.requires(ObligationKind::Seal));
    assert!(!collect.requires(ObligationKind::Hash));

    let export_email = e.decide(
        &q(Export, "EU-DE", TARGETED)
            .with_consent(Given)
            .with_category("user.contact.email")
            .with_destination("meta"),
    );
    assert!(export_email.allowed);
    assert!(export_email.requires(ObligationKind::Hash));
    assert!(
        export_email.requires(ObligationKind::RecordTransfer),
        "DE → US is cross-border"
    );
    assert!(!export_email.requires(ObligationKind::Seal));

    let export_ip = e.decide(
        &q(Export, "EU-DE", TARGETED)
            .with_consent(Given)
            .with_category("user.device.ip_address")
            .with_destination("tiktok"),
    );
    assert!(export_ip.allowed);
    assert!(export_ip.requires(ObligationKind::StripField));
    assert!(
        !export_ip.requires(ObligationKind::RecordTransfer),
        "DE → IE stays in the EEA"
    );
}

#[test]
fn age_is_clamped_without_changing_decisions() {
    let e = engine();
    let a = e.decide(
        &q(Process, "EU-DE", TARGETED)
            .with_consent(Given)
            .with_age(30),
    );
    let b = e.decide(
        &q(Process, "EU-DE", TARGETED)
            .with_consent(Given)
            .with_age(90),
    );
    assert!(a.allowed && b.allowed);
    assert_eq!(
        e.resolve(&q(Process, "EU-DE", TARGETED).with_age(30))
            .unwrap(),
        e.resolve(&q(Process, "EU-DE", TARGETED).with_age(90))
            .unwrap()
    );
    assert_ne!(
        e.resolve(&q(Process, "EU-DE", TARGETED).with_age(15))
            .unwrap(),
        e.resolve(&q(Process, "EU-DE", TARGETED).with_age(16))
            .unwrap()
    );
}
