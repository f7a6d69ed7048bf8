//! Profile traits: the kept traits of identify events, merged per trait with source
//! priority first and the latest event second. No I/O: the room opens the sealed payloads
//! and hands them to [`merge_traits`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

/// Source priorities, from configuration: a trait set by a higher-priority source (the
/// storefront that sent the identify event) is not overwritten by a lower one; within one
/// priority the later event wins. Sources not listed have priority 0.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraitRules {
    pub source_priority: BTreeMap<String, i32>,
}

impl TraitRules {
    pub fn priority(&self, source: &str) -> i32 {
        self.source_priority.get(source).copied().unwrap_or(0)
    }
}

/// The opened traits of one identify event. `Debug` prints no values.
#[derive(Clone)]
pub struct TraitPayload {
    pub event_id: String,
    pub source: String,
    pub observed_micros: i64,
    pub traits: Map<String, Value>,
}

impl std::fmt::Debug for TraitPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraitPayload")
            .field("event_id", &self.event_id)
            .field("source", &self.source)
            .field("observed_micros", &self.observed_micros)
            .field("names", &self.traits.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Merges payloads into a profile's traits: per trait, the value of the payload with the
/// highest (source priority, event time, event id).
pub fn merge_traits(rules: &TraitRules, mut payloads: Vec<TraitPayload>) -> Map<String, Value> {
    payloads.sort_by(|a, b| {
        (rules.priority(&a.source), a.observed_micros, &a.event_id).cmp(&(
            rules.priority(&b.source),
            b.observed_micros,
            &b.event_id,
        ))
    });
    let mut out = Map::new();
    for p in payloads {
        for (name, value) in p.traits {
            out.insert(name, value);
        }
    }
    out
}

/// Parses the JSON object of an identify event's traits (`None` if it is not an object).
pub fn parse_traits(json: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(json).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(event: &str, source: &str, at: i64, traits: Value) -> TraitPayload {
        let Value::Object(traits) = traits else {
            panic!("object")
        };
        TraitPayload {
            event_id: event.into(),
            source: source.into(),
            observed_micros: at,
            traits,
        }
    }

    #[test]
    fn the_latest_event_wins_per_trait() {
        let rules = TraitRules::default();
        let merged = merge_traits(
            &rules,
            vec![
                payload("e2", "web", 20, json!({"plan": "pro", "city": "Lyon"})),
                payload("e1", "web", 10, json!({"plan": "free", "name": "Ana"})),
            ],
        );
        assert_eq!(merged["plan"], json!("pro"));
        assert_eq!(merged["city"], json!("Lyon"));
        assert_eq!(
            merged["name"],
            json!("Ana"),
            "older traits not overwritten stay"
        );
    }

    #[test]
    fn a_higher_priority_source_beats_a_later_event() {
        let rules = TraitRules {
            source_priority: BTreeMap::from([("shopify-eu".into(), 10), ("web".into(), 1)]),
        };
        let merged = merge_traits(
            &rules,
            vec![
                payload("e1", "shopify-eu", 10, json!({"name": "Ana Silva"})),
                payload("e2", "web", 30, json!({"name": "ana", "plan": "pro"})),
                payload("e3", "other", 40, json!({"plan": "free"})),
            ],
        );
        assert_eq!(merged["name"], json!("Ana Silva"));
        // `web` (1) beats the unlisted `other` (0) even though `other` is later.
        assert_eq!(merged["plan"], json!("pro"));
        // Same priority and time: the event id breaks the tie, deterministically.
        let tie = merge_traits(
            &TraitRules::default(),
            vec![
                payload("b", "", 5, json!({"x": 2})),
                payload("a", "", 5, json!({"x": 1})),
            ],
        );
        assert_eq!(tie["x"], json!(2));
    }

    #[test]
    fn only_objects_are_traits_and_debug_hides_values() {
        assert!(parse_traits(br#"{"a": 1}"#).is_some());
        assert!(parse_traits(b"[1]").is_none());
        assert!(parse_traits(b"not json").is_none());
        let p = payload("e", "web", 1, json!({"email": "ana@example.com"}));
        assert!(!format!("{p:?}").contains("ana@"));
    }
}
