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
    // Every reference-encoded string, cut and corrupted at pseudo-random
    // points, must give Ok or a clean error (no panic).
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut mutants = 0usize;
    for (encoded, _) in &models {
        let bytes = encoded.as_bytes();
        for _ in 0..4 {
            let at = (next() % bytes.len() as u64) as usize;
            let cut = String::from_utf8_lossy(&bytes[..at]).into_owned();
            let mut flipped = bytes.to_vec();
            flipped[at] = b"AZaz09-_.~"[(next() % 10) as usize];
            for candidate in [cut, String::from_utf8_lossy(&flipped).into_owned()] {
                if let Err(err) = decode(&candidate) {
                    assert!(!err.to_string().is_empty());
                }
                mutants += 1;
            }
        }
    }
    println!(
        "{kind} oracle: {} models, {agreed} agreed; {mutants} mutants decoded without panic",
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

#[test]
fn tc_strings_agree_with_iabtcf_core() {
    check("tcf", false);
}

#[test]
fn gpp_strings_agree_with_iabgpp_cmpapi() {
    check("gpp", true);
}
