//! The synthetic storefront (`meridian-test-support`) as identity input, and the pairwise
//! quality of the stitching against its ground truth.

use meridian_test_support::storefront::{
    IdKind, QualityReport, Storefront, SyntheticEvent, SyntheticIdentifier,
};
use meridian_vault::BlindIndexer;

use crate::graph::{Changes, Graph, LinkRule};
use crate::identifier::{
    CompiledRules, IdentifierObservation, IdentifierType, Intake, RawIdentifier, intake, prepare,
};

pub fn identifier_type(kind: IdKind) -> IdentifierType {
    match kind {
        IdKind::AnonymousId => IdentifierType::AnonymousId,
        IdKind::UserId => IdentifierType::UserId,
        IdKind::Email => IdentifierType::Email,
        IdKind::Phone => IdentifierType::Phone,
        IdKind::Idfa => IdentifierType::Idfa,
        IdKind::Gaid => IdentifierType::Gaid,
        IdKind::DeviceId => IdentifierType::DeviceId,
        IdKind::StorefrontCustomerId => IdentifierType::StorefrontCustomerId,
        IdKind::Fbclid => IdentifierType::Fbclid,
        IdKind::Gclid => IdentifierType::Gclid,
        IdKind::Ttclid => IdentifierType::Ttclid,
    }
}

pub fn raw_identifier(s: &SyntheticIdentifier) -> RawIdentifier {
    RawIdentifier {
        kind: identifier_type(s.kind),
        value: s.value.clone(),
        source: s.source.clone(),
        default_region: s.default_region.clone(),
    }
}

pub fn observation(e: &SyntheticEvent) -> IdentifierObservation {
    IdentifierObservation {
        event_id: e.event_id.clone(),
        at: e.at,
        rule: LinkRule::SameEvent,
        identifiers: e.identifiers.iter().map(raw_identifier).collect(),
    }
}

/// Stitches the storefront in memory (domain only) and returns the graph and counts.
pub fn stitch(
    storefront: &Storefront,
    rules: &CompiledRules,
    indexer: &BlindIndexer,
) -> (Graph, Changes, u64) {
    let mut graph = Graph::new(rules.clone());
    let mut changes = Changes::default();
    let mut invalid = 0;
    for e in &storefront.events {
        let p = prepare(rules, indexer, &observation(e));
        invalid += p.invalid;
        graph.observe(&p.observation, &mut changes);
    }
    (graph, changes, invalid)
}

/// The pairwise quality of a graph against the storefront's ground truth.
pub fn measure(
    storefront: &Storefront,
    graph: &Graph,
    rules: &CompiledRules,
    indexer: &BlindIndexer,
) -> QualityReport {
    QualityReport::measure(storefront, |s| {
        match intake(rules, indexer, &raw_identifier(s)) {
            Ok(Intake::Key(key, _)) => graph.profile_of(&key).map(|p| p.to_string()),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_test_support::storefront::StorefrontConfig;

    #[test]
    fn the_storefront_stitches_with_high_precision_and_recall() {
        let storefront = Storefront::generate(&StorefrontConfig {
            shoppers: 1_500,
            ..StorefrontConfig::default()
        });
        let rules = CompiledRules::default();
        let indexer = crate::testing::indexer();
        let (graph, changes, invalid) = stitch(&storefront, &rules, &indexer);
        assert_eq!(invalid, 0, "every generated identifier normalizes");
        let report = measure(&storefront, &graph, &rules, &indexer);
        println!("{report}");
        assert!(
            changes
                .conflicts
                .iter()
                .any(|c| c.reason == crate::ConflictReason::BlockedValue)
        );
        assert!(report.precision >= 0.999, "{report}");
        assert!(report.recall >= 0.99, "{report}");
    }
}
