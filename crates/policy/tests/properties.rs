//! Properties over generated questions: the memo never changes an answer,
//! and a few legal invariants hold for every combination.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use meridian_policy::{Action, ConsentState, PolicyEngine, Question};
use proptest::prelude::*;

fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PolicyEngine::builtin().unwrap())
}

const JURISDICTIONS: &[&str] = &[
    "EU-DE", "EU-FR", "EU-BE", "EU-IE", "GB", "US-CA", "CN", "BR",
];
const REGIONS: &[&str] = &["US", "JP", "IN", "DE", "IE", "CN", "BR", "GB", "CH"];
const MECHANISMS: &[&[&str]] = &[
    &[],
    &["scc"],
    &["dpf"],
    &["idta"],
    &["standard_contract"],
    &["scc", "dpf"],
];

fn purposes() -> Vec<&'static str> {
    // every purpose the policies know
    let e = engine();
    let all: Vec<String> = e.taxonomy().purposes().map(str::to_owned).collect();
    all.into_iter()
        .map(|s| &*Box::leak(s.into_boxed_str()))
        .collect()
}

fn categories() -> Vec<Option<&'static str>> {
    let e = engine();
    let mut out: Vec<Option<&'static str>> = e
        .taxonomy()
        .categories()
        .map(|s| Some(&*Box::leak(s.to_owned().into_boxed_str())))
        .collect();
    out.push(None);
    out
}

fn question() -> impl Strategy<Value = Question<'static>> {
    let purposes = purposes();
    let categories = categories();
    (
        prop_oneof![
            Just(Action::Collect),
            Just(Action::Process),
            Just(Action::Export)
        ],
        prop::sample::select(JURISDICTIONS),
        prop::sample::select(purposes),
        prop::sample::select(categories),
        prop_oneof![
            Just(ConsentState::None),
            Just(ConsentState::Given),
            Just(ConsentState::Guardian),
            Just(ConsentState::Refused)
        ],
        any::<bool>(),
        prop::option::of(0u8..40),
        any::<bool>(),
        prop::sample::select(REGIONS),
        prop::sample::select(MECHANISMS),
    )
        .prop_map(
            |(action, j, p, c, consent, gpc, age, separate, region, mechs)| {
                let mut q = Question::new(action, j, p)
                    .with_consent(consent)
                    .with_gpc(gpc)
                    .with_separate_consent(separate);
                q.category = c;
                q.age = age;
                if action == Action::Export {
                    q = q
                        .with_destination_region(region)
                        .with_transfer_mechanisms(mechs);
                }
                q
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn memo_agrees_with_cedar(q in question()) {
        let e = engine();
        let memo = e.decide(&q);
        let again = e.decide(&q);
        let fresh = e.decide_uncached(&q);
        prop_assert_eq!(&*memo, &fresh);
        prop_assert_eq!(&*again, &fresh);
        prop_assert!(memo.rule_id != meridian_policy::EVALUATION_ERROR, "{}", memo.reason);
    }

    #[test]
    fn refusal_always_wins_outside_essential_purposes(mut q in question()) {
        let e = engine();
        q.consent = ConsentState::Refused;
        let d = e.decide(&q);
        if !e.taxonomy().purpose_is_under(q.purpose, "essential") {
            prop_assert!(!d.allowed, "{:?} allowed by {}", q, d.rule_id);
        }
    }

    #[test]
    fn gpc_blocks_sale_and_sharing_in_california(mut q in question(), pick in 0usize..64) {
        let e = engine();
        let ccpa = e.regime("CCPA").unwrap();
        let sale_share: Vec<&str> = e
            .taxonomy()
            .purposes()
            .filter(|p| ccpa.sale_share.value.iter().any(|s| e.taxonomy().purpose_is_under(p, s)))
            .collect();
        q.jurisdiction = "US-CA";
        q.gpc = true;
        let purpose = sale_share[pick % sale_share.len()].to_owned();
        let q = Question { purpose: &purpose, ..q };
        prop_assert!(!e.decide(&q).allowed, "{:?}", q);
    }

    #[test]
    fn eu_transfers_outside_the_eea_need_a_basis(
        q in question(),
        region in prop::sample::select(REGIONS),
        mechs in prop::sample::select(MECHANISMS),
        member in prop::sample::select(&["EU-DE", "EU-FR", "EU-BE", "EU-IE"][..]),
    ) {
        let e = engine();
        let q = Question { action: Action::Export, jurisdiction: member, destination_region: Some(region), transfer_mechanisms: mechs, destination: None, ..q };
        let gdpr = e.regime("GDPR").unwrap();
        let free = gdpr.transfers.home.value.iter().chain(&gdpr.transfers.adequate.value).any(|c| c == region);
        let dpf = region == "US" && mechs.contains(&"dpf");
        let scc = mechs.contains(&"scc");
        if !(free || dpf || scc) {
            prop_assert!(!e.decide(&q).allowed, "{:?}", q);
        }
    }

    #[test]
    fn allowed_decisions_name_a_permit_and_denials_carry_no_obligations(q in question()) {
        let d = engine().decide(&q);
        prop_assert!(!d.rule_id.is_empty() && !d.reason.is_empty());
        prop_assert!(d.rules.contains(&d.rule_id));
        if d.allowed {
            prop_assert!(d.rule_id != meridian_policy::DEFAULT_DENY);
        } else {
            prop_assert!(d.obligations.is_empty());
        }
    }
}
