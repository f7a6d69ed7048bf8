//! `meridian demo` at a small size: the whole loop on the embedded default, checked
//! through the summary it prints (its figures must add up, and each stage must have done
//! something).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::harness::{Backend, Environment};

fn counts(v: &Value) -> BTreeMap<String, u64> {
    v.as_object()
        .unwrap_or_else(|| panic!("an object of counts: {v}"))
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

#[tokio::test]
async fn demo_runs_the_whole_loop_and_its_summary_adds_up() {
    let env = Environment::new(Backend::Sqlite).await;
    // enough shoppers that every market shows up, and with it drops, strips and exclusions
    let (ok, stdout, stderr) = env.run(&["demo", "--shoppers", "120", "--json"]).await;
    assert!(ok, "the demo failed: {stderr}\n{stdout}");
    let json = &stdout[stdout
        .find("\n{")
        .unwrap_or_else(|| panic!("no JSON summary in {stdout}"))..];
    let s: Value = serde_json::from_str(json).unwrap();
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));

    assert_eq!(n("shoppers"), 120);
    assert_eq!(
        n("consents_recorded"),
        120,
        "one consent record per shopper"
    );
    // every event sent is accounted for, and every drop names its rule
    assert_eq!(
        n("events_accepted") + n("events_duplicate") + n("events_rejected") + n("events_dropped"),
        n("events_sent")
    );
    assert!(n("events_accepted") > 0);
    assert_eq!(
        n("events_rejected"),
        0,
        "the generator sends valid events: {}",
        s["rejections_by_field"]
    );
    // stripped fields are counted by the rule that stripped them
    assert_eq!(
        counts(&s["strips_by_rule"]).values().sum::<u64>(),
        n("fields_stripped")
    );
    let drops = counts(&s["drops_by_rule"]);
    assert_eq!(drops.values().sum::<u64>(), n("events_dropped"));
    // shoppers without consent in opt-in regimes lose their events, by the regime's rule
    assert!(
        drops.keys().any(|rule| rule.starts_with("gdpr.")),
        "{drops:?}"
    );
    assert!(
        drops.keys().any(|rule| rule.starts_with("pipl.")),
        "{drops:?}"
    );

    // stitching joined devices, emails and customer ids into fewer profiles than shoppers'
    // identifiers, and every profile has an AIPL stage
    assert!(n("profiles") > 0 && n("profiles") <= 120, "{s}");
    assert!(n("merges") > 0);
    assert_eq!(
        counts(&s["aipl_stages"]).values().sum::<u64>(),
        n("profiles")
    );

    // the audience counts by region add up, in the storefront's markets
    let by_region = counts(&s["audience_by_region"]);
    assert!(n("audience_size") > 0, "{s}");
    assert_eq!(by_region.values().sum::<u64>(), n("audience_size"));
    for region in by_region.keys() {
        assert!(
            ["DE", "FR", "GB", "US", "BR", "CN"].contains(&region.as_str()),
            "{region}"
        );
    }

    // the audience went to the file destination: each member sent or excluded by a rule
    assert_eq!(s["audience_synced"], Value::Bool(true), "{s}");
    let exclusions = counts(&s["exclusions_by_rule"]);
    assert_eq!(
        n("audience_sent") + exclusions.values().sum::<u64>(),
        n("audience_size"),
        "{s}"
    );
    assert!(n("audience_sent") > 0, "{s}");

    // the requests were answered: a bundle, and an erasure receipt listing every step
    assert!(n("access_bundle_bytes") > 100);
    assert!(
        n("erasure_receipt_steps") >= 7,
        "remove_from_destinations included"
    );
    assert!(s["erasure_seconds"].as_f64().unwrap() > 0.0);
}
