//! Fuzzing with proptest (cargo-fuzz needs a nightly toolchain, which this
//! project does not use): random bytes, random base64url with separators,
//! and valid strings that are truncated, bit-flipped, spliced and cut. Every
//! input must produce `Ok` or a `SignalError` with a message, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use meridian_consent_signals::{
    ConsentSignal, Gpc, SignalError, decode, decode_gpp_string, decode_tc_string,
};
use proptest::prelude::*;
use support::*;

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn clean<T>(r: Result<T, SignalError>) {
    if let Err(e) = r {
        assert!(!e.to_string().is_empty());
    }
}

fn all_decoders(s: &str) {
    clean(decode(s));
    clean(decode_tc_string(s));
    clean(decode_gpp_string(s));
    clean(Gpc::from_header(s));
}

fn ids(max: u16) -> impl Strategy<Value = Vec<u16>> {
    proptest::collection::btree_set(1..=max, 0..40).prop_map(|s| s.into_iter().collect())
}

prop_compose! {
    fn arb_core()(
        created_ds in 0u64..(1 << 36),
        cmp_id in 2u64..4096,
        language in "[A-Z]{2}",
        country in "[A-Z]{2}",
        purposes in ids(24),
        purposes_li in ids(24),
        special_features in ids(12),
        vendors in ids(3000),
        vendors_li in ids(200),
        restrictions in proptest::collection::vec(
            (1u64..64, 0u64..3, proptest::collection::vec((1u16..500, 0u16..50), 0..5)),
            0..4,
        ),
        flags in any::<(bool, bool, bool)>(),
    ) -> Core {
        Core {
            created_ds,
            updated_ds: created_ds,
            cmp_id,
            language,
            country,
            purposes,
            purposes_li,
            special_features,
            vendors,
            vendors_li,
            restrictions: restrictions
                .into_iter()
                .map(|(p, t, r)| (p, t, r.into_iter().map(|(a, len)| (a, a + len)).collect()))
                .collect(),
            service_specific: flags.0,
            non_standard: flags.1,
            purpose_one_treatment: flags.2,
            ..Core::default()
        }
    }
}

fn arb_gpp() -> impl Strategy<Value = String> {
    (arb_core(), any::<bool>(), 0u64..3, 0u64..3, any::<bool>()).prop_map(
        |(core_fields, with_tcf, sale, sharing, gpc)| {
            let usnat = format!(
                "{}.{}",
                usnat_core(sale, sharing, 1, &[2; 16]),
                gpc_segment(gpc)
            );
            if with_tcf {
                format!("{}~{}~{usnat}", gpp_header(&[2, 7]), core(&core_fields))
            } else {
                format!("{}~{usnat}", gpp_header(&[7]))
            }
        },
    )
}

/// Cut, flip, splice: `op` picks the mutation, `at` and `with` its position
/// and replacement.
fn mutate(s: &str, op: u8, at: usize, with: u8) -> String {
    let mut bytes = s.as_bytes().to_vec();
    if bytes.is_empty() {
        return String::new();
    }
    let i = at % bytes.len();
    match op % 6 {
        0 => bytes.truncate(i),
        1 => bytes[i] = B64[usize::from(with) % 64],
        2 => {
            // flip one bit of one base64url character
            if let Some(v) = B64.iter().position(|c| *c == bytes[i]) {
                bytes[i] = B64[v ^ (1 << (with % 6))];
            }
        }
        3 => {
            bytes.remove(i);
        }
        4 => bytes.insert(i, [b'.', b'~', b'A', b'_'][usize::from(with) % 4]),
        _ => {
            let tail = bytes[i..].to_vec();
            bytes.extend_from_slice(&tail);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        all_decoders(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn random_base64url_never_panics(
        prefix in prop_oneof![Just(""), Just("C"), Just("DB"), Just("DBA")],
        body in "[A-Za-z0-9_.~-]{0,400}",
    ) {
        all_decoders(&format!("{prefix}{body}"));
    }

    #[test]
    fn valid_tc_strings_decode_to_what_was_encoded(c in arb_core()) {
        let tc = decode_tc_string(&core(&c)).unwrap();
        prop_assert_eq!(tc.purpose_consents.to_vec(), c.purposes.clone());
        prop_assert_eq!(tc.vendor_consents.to_vec(), c.vendors.clone());
        prop_assert_eq!(tc.special_feature_optins.to_vec(), c.special_features.clone());
        prop_assert_eq!(tc.cmp_id as u64, c.cmp_id);
        prop_assert_eq!(&tc.consent_language, &c.language);
        let mut want = std::collections::BTreeSet::new();
        for (purpose, _, ranges) in &c.restrictions {
            for (a, b) in ranges {
                for v in *a..=*b {
                    want.insert((*purpose as u8, v));
                }
            }
        }
        let mut got = std::collections::BTreeSet::new();
        for r in &tc.publisher_restrictions {
            for v in r.vendors.iter() {
                got.insert((r.purpose_id, v));
            }
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn mutated_tc_strings_never_panic(c in arb_core(), ops in proptest::collection::vec(any::<(u8, usize, u8)>(), 1..4)) {
        let mut s = core(&c);
        for (op, at, with) in ops {
            s = mutate(&s, op, at, with);
            all_decoders(&s);
        }
    }

    #[test]
    fn valid_gpp_strings_decode(s in arb_gpp()) {
        let signal = decode(&s).unwrap();
        prop_assert!(matches!(signal, ConsentSignal::Gpp(_)));
    }

    #[test]
    fn mutated_gpp_strings_never_panic(s in arb_gpp(), ops in proptest::collection::vec(any::<(u8, usize, u8)>(), 1..4)) {
        let mut s = s;
        for (op, at, with) in ops {
            s = mutate(&s, op, at, with);
            all_decoders(&s);
        }
    }
}

/// Worst cases for time and memory: thousands of full-width ranges, a huge
/// Fibonacci run, the longest accepted input.
#[test]
fn adversarial_inputs_are_cheap() {
    let start = std::time::Instant::now();
    let c = Core {
        restrictions: (0..60)
            .map(|p| (p % 63 + 1, 0, vec![(1, 65535); 60]))
            .collect(),
        ..Core::default()
    };
    let tc = decode_tc_string(&core(&c)).unwrap();
    assert_eq!(tc.publisher_restrictions[0].vendors.len(), 65535);
    let ranges = vendor_ranges(Bits::new().int(1, 3), &vec![(1, 65535); 4095]).encode();
    let tc = decode_tc_string(&format!("{}.{ranges}", core(&Core::default()))).unwrap();
    assert_eq!(tc.disclosed_vendors.unwrap().len(), 65535);
    // The same (purpose, type) repeated in every restriction entry.
    let c = Core {
        restrictions: vec![(1, 1, vec![(1, 65535)]); 4000],
        ..Core::default()
    };
    let tc = decode_tc_string(&core(&c)).unwrap();
    assert_eq!(tc.publisher_restrictions.len(), 1);
    // A header whose Fibonacci code never terminates.
    clean(decode(&format!("DBAB{}", "A".repeat(60_000))));
    clean(decode(
        &"_".repeat(meridian_consent_signals::MAX_SIGNAL_LEN),
    ));
    clean(decode(&format!("DB{}", "_".repeat(60_000))));
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}
