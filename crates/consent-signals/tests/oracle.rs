//! Agreement with the IAB reference implementations. `oracle/generate.mjs`
//! builds thousands of random models from a seed, encodes them with
//! `@iabtcf/core` / `@iabgpp/cmpapi`, decodes them back with the same
//! libraries and prints the expected fields; every line must decode here to
//! exactly the same JSON.
//!
//! Seed and size: `MERIDIAN_ORACLE_SEED` (default fixed) and
//! `MERIDIAN_ORACLE_COUNT` (default 3000 per oracle).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use meridian_consent_signals::{ConsentSignal, decode};
use serde_json::Value;

fn oracle_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oracle")
}

fn run_oracle(kind: &str) -> Vec<(String, Value)> {
    let dir = oracle_dir();
    for package in ["@iabtcf/core", "@iabgpp/cmpapi"] {
        assert!(
            dir.join("node_modules").join(package).is_dir(),
            "the oracle's reference libraries are not installed ({package} missing): \
             run `npm ci --prefix crates/consent-signals/oracle` \
             (or crates/consent-signals/oracle/setup.sh)"
        );
    }
    let seed = std::env::var("MERIDIAN_ORACLE_SEED").unwrap_or_else(|_| "20261124".into());
    let count = std::env::var("MERIDIAN_ORACLE_COUNT").unwrap_or_else(|_| "3000".into());
    let output = Command::new("node")
        .current_dir(&dir)
        .args(["generate.mjs", kind, &seed, &count])
        .output()
        .expect("`node` must be on PATH to run the oracle tests");
    assert!(
        output.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<(String, Value)> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (
                v["encoded"].as_str().unwrap().to_owned(),
                v["expected"].clone(),
            )
        })
        .collect();
    assert_eq!(
        lines.len().to_string(),
        count,
        "oracle printed fewer models than asked"
    );
    lines
}

fn check(kind: &str, want_gpp: bool) {
    let models = run_oracle(kind);
    let mut agreed = 0usize;
    let mut failures = Vec::new();
    for (encoded, expected) in &models {
        match decode(encoded) {
            Ok(signal) => {
                let is_gpp = matches!(signal, ConsentSignal::Gpp(_));
                let got = signal.to_json();
                if is_gpp == want_gpp && got == *expected {
                    agreed += 1;
                } else if failures.len() < 3 {
                    failures.push(format!(
                        "{encoded}\n  expected {expected}\n  got      {got}"
                    ));
                }
            }
            Err(err) => {
                if failures.len() < 3 {
                    failures.push(format!("{encoded}\n  rejected: {err}"));
                }
            }
        }
    }
    let diff = differential(kind, &models);
    println!(
        "{kind} oracle: {} models, {agreed} agreed; {diff}",
        models.len()
    );
    assert!(
        agreed == models.len(),
        "{kind} oracle: {} of {} models disagree; first:\n{}",
        models.len() - agreed,
        models.len(),
        failures.join("\n")
    );
}

/// Differential fuzzing: every reference-encoded string, cut or corrupted at
/// pseudo-random points, is decoded by both the reference and us. We must
/// never panic; where both accept, the fields must be identical; where the
/// reference rejects, we must reject too. We may reject what the reference
/// tolerates (reversed ranges, letters outside A-Z, repeated segments,
/// truncated restriction lists): those are counted, not failures.
fn differential(kind: &str, models: &[(String, Value)]) -> String {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Cuts keep the reference's work bounded by the original model. Flips can
    // turn a field into thousands of huge ranges, and iabtcf's unbalanced
    // tree makes restriction ranges quadratic, so flipped strings go to the
    // reference only when we accept them with modest sizes (the cases where
    // fields must then be identical); the rest are checked for no-panic only.
    let mut mutants = Vec::new();
    let mut not_sent = 0usize;
    for (encoded, _) in models {
        let bytes = encoded.as_bytes();
        for _ in 0..2 {
            let at = (next() % bytes.len() as u64) as usize;
            mutants.push(String::from_utf8_lossy(&bytes[..at]).into_owned());
            let mut flipped = bytes.to_vec();
            flipped[at] = b"AZaz09-_.~"[(next() % 10) as usize];
            let flipped = String::from_utf8_lossy(&flipped).into_owned();
            match decode(&flipped) {
                Ok(signal) if reference_cost(&signal) <= 3_000 => mutants.push(flipped),
                Ok(_) => not_sent += 1,
                Err(err) => {
                    assert!(!err.to_string().is_empty());
                    not_sent += 1;
                }
            }
        }
    }
    mutants.retain(|m| !m.trim().is_empty() && !m.contains('\n'));
    let mut child = Command::new("node")
        .current_dir(oracle_dir())
        .args(["generate.mjs", kind, "decode"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("`node` must be on PATH to run the oracle tests");
    let input = mutants.join("\n") + "\n";
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(input.as_bytes()).unwrap();
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success(), "oracle decode mode failed");
    let verdicts: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), mutants.len());
    let (mut both_ok, mut both_err, mut stricter, mut undecoded_only) = (0, 0, 0, 0);
    let mut problems = Vec::new();
    for (mutant, verdict) in mutants.iter().zip(&verdicts) {
        let reference_ok = verdict["ok"].as_bool().unwrap();
        match (reference_ok, decode(mutant)) {
            (true, Ok(ours)) => {
                let mut ours_json = ours.to_json();
                // cmpapi silently ignores ids no section is assigned to.
                if let Some(o) = ours_json.as_object_mut() {
                    o.remove("unassignedSectionIds");
                }
                if ours_json == id_sets_normalized(&verdict["expected"]) {
                    both_ok += 1;
                } else {
                    problems.push(format!(
                        "{mutant}\n  differs at {}",
                        json_diff("", &verdict["expected"], &ours_json).join("; ")
                    ));
                }
            }
            (true, Err(err)) => {
                assert!(!err.to_string().is_empty());
                stricter += 1;
            }
            (false, Err(_)) => both_err += 1,
            // We do not decode sections other than tcfeuv2/usnat/usca, so a
            // corrupted one of those is reported as present, not rejected.
            (false, Ok(ConsentSignal::Gpp(gpp)))
                if gpp.undecoded.iter().filter_map(|u| u.name).any(|name| {
                    verdict["error"]
                        .as_str()
                        .is_some_and(|e| e.to_lowercase().contains(name))
                }) =>
            {
                undecoded_only += 1;
            }
            (false, Ok(ours)) => problems.push(format!(
                "{mutant}\n  reference rejects: {}\n  ours accepts: {}",
                verdict["error"],
                ours.to_json()
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "{kind} differential: {} disagreements on mutated strings; first:\n{}",
        problems.len(),
        problems
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    format!(
        "{} mutants: {both_ok} accepted by both with identical fields, {both_err} rejected by both, \
         {stricter} rejected only by us, {undecoded_only} rejected only by the reference \
         for a corrupted section we do not decode ({not_sent} more flipped mutants checked \
         for no panic only)",
        mutants.len()
    )
}

/// cmpapi reports the ids of a GPP range list in string order, repeats
/// included, and keeps repeated restriction keys apart; we decode them as
/// sets (sorted, merged). Reference-encoded strings are always in canonical
/// order, so the strict comparison above needs none of this; corrupted ones
/// are compared with set semantics.
fn id_sets_normalized(value: &Value) -> Value {
    fn sort_ids(v: &mut Value) {
        if let Value::Array(ids) = v {
            let mut n: Vec<u64> = ids.iter().filter_map(Value::as_u64).collect();
            n.sort_unstable();
            n.dedup();
            *ids = n.into_iter().map(Value::from).collect();
        }
    }
    let mut value = value.clone();
    if let Some(tc) = value.pointer_mut("/sections/tcfeuv2") {
        for key in [
            "VendorConsents",
            "VendorLegitimateInterests",
            "VendorsAllowed",
            "VendorsDisclosed",
        ] {
            if let Some(v) = tc.get_mut(key) {
                sort_ids(v);
            }
        }
        if let Some(Value::Array(entries)) = tc.get_mut("PublisherRestrictions") {
            let mut merged: Vec<Value> = Vec::new();
            for entry in entries.iter() {
                let same = merged
                    .iter_mut()
                    .find(|m| m["key"] == entry["key"] && m["type"] == entry["type"]);
                match same {
                    Some(m) => {
                        let extra = entry["ids"].as_array().cloned().unwrap_or_default();
                        if let Some(ids) = m["ids"].as_array_mut() {
                            ids.extend(extra);
                        }
                    }
                    None => merged.push(entry.clone()),
                }
            }
            for m in &mut merged {
                sort_ids(&mut m["ids"]);
            }
            *entries = merged;
        }
    }
    value
}

/// Paths where two JSON values differ, with both values (shortened).
fn json_diff(path: &str, reference: &Value, ours: &Value) -> Vec<String> {
    match (reference, ours) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    json_diff(
                        &format!("{path}.{k}"),
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                    )
                })
                .collect()
        }
        _ if reference == ours => Vec::new(),
        _ => {
            let short = |v: &Value| v.to_string().chars().take(160).collect::<String>();
            vec![format!(
                "{path}: reference {} ours {}",
                short(reference),
                short(ours)
            )]
        }
    }
}

/// How many ids the reference would insert into its restriction trees.
fn reference_cost(signal: &ConsentSignal) -> usize {
    let tc = match signal {
        ConsentSignal::Tcf(tc) => Some(tc),
        ConsentSignal::Gpp(gpp) => gpp.tcfeuv2.as_ref(),
    };
    tc.map_or(0, |tc| {
        tc.publisher_restrictions
            .iter()
            .map(|r| r.vendors.len())
            .sum::<usize>()
            + tc.vendor_consents.len() / 100
            + tc.vendor_legitimate_interests.len() / 100
    })
}

#[test]
fn tc_strings_agree_with_iabtcf_core() {
    check("tcf", false);
}

#[test]
fn gpp_strings_agree_with_iabgpp_cmpapi() {
    check("gpp", true);
}
