//! Behaviour on hand-built strings: accessors, detection, and a clean,
//! specific error for each kind of malformed input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use meridian_consent_signals::{
    ConsentSignal, Gpc, OptOut, RestrictionType, SignalError, decode, decode_gpp_string,
    decode_tc_string,
};
use support::*;

fn tc_err(s: &str) -> String {
    decode_tc_string(s).unwrap_err().to_string()
}

#[test]
fn tc_string_accessors() {
    let c = Core {
        restrictions: vec![(2, 1, vec![(10, 12)]), (7, 0, vec![(755, 755)])],
        ..Core::default()
    };
    let tc = decode_tc_string(&core(&c)).unwrap();
    assert!(tc.purpose_consent(1) && tc.purpose_consent(3) && !tc.purpose_consent(2));
    assert!(tc.purpose_legitimate_interest(7) && !tc.purpose_legitimate_interest(1));
    assert!(tc.special_feature_optin(1) && !tc.special_feature_optin(2));
    assert!(tc.vendor_consent(755) && tc.vendor_consent(5) && !tc.vendor_consent(6));
    assert_eq!(tc.cmp_id, 300);
    assert_eq!(tc.consent_language, "EN");
    assert_eq!(tc.publisher_country_code, "DE");
    assert_eq!(tc.created.timestamp_millis(), 17_000_000_000 * 100);
    let r: Vec<_> = tc.restrictions_for_vendor(11).collect();
    assert_eq!(r, vec![(2, RestrictionType::RequireConsent)]);
    let json = tc.to_json();
    assert_eq!(json["purposeConsents"], serde_json::json!([1, 3, 4]));
    assert_eq!(json["vendorConsents"], serde_json::json!([5, 10, 755]));
    assert_eq!(json["created"], "2023-11-14T22:13:20.000Z");
    assert_eq!(json["segments"], serde_json::json!(["core"]));
}

#[test]
fn range_encoded_vendors_and_optional_segments() {
    let mut b = core_bits(&Core::default());
    // Replace nothing: append segments after the core.
    b = Bits(b.0);
    let core = b.encode();
    let disclosed = vendor_ranges(Bits::new().int(1, 3), &[(1, 3), (100, 100)]).encode();
    let allowed = vendor_bitfield(Bits::new().int(2, 3), &[2, 4]).encode();
    let publisher = Bits::new()
        .int(3, 3)
        .flags(&[1, 2], 24)
        .flags(&[3], 24)
        .int(2, 6)
        .flags(&[2], 2)
        .flags(&[1], 2)
        .encode();
    let tc = decode_tc_string(&format!("{core}.{disclosed}.{allowed}.{publisher}")).unwrap();
    assert_eq!(tc.disclosed_vendors.unwrap().to_vec(), vec![1, 2, 3, 100]);
    assert_eq!(tc.allowed_vendors.unwrap().to_vec(), vec![2, 4]);
    let p = tc.publisher_tc.unwrap();
    assert_eq!(p.purpose_consents.to_vec(), vec![1, 2]);
    assert_eq!(p.num_custom_purposes, 2);
    assert_eq!(p.custom_purpose_consents.to_vec(), vec![2]);
    assert_eq!(p.custom_purpose_legitimate_interests.to_vec(), vec![1]);
}

#[test]
fn malformed_tc_strings_say_what_is_wrong() {
    let ok = Core::default();
    let cases: Vec<(String, &str)> = vec![
        (
            core(&Core {
                version: 1,
                ..ok.clone()
            }),
            "version 1 is not supported",
        ),
        (
            core(&Core {
                cmp_id: 1,
                ..ok.clone()
            }),
            "CMP id 1 is not valid",
        ),
        (
            core(&Core {
                restrictions: vec![(1, 3, vec![(1, 1)])],
                ..ok.clone()
            }),
            "restriction type 3 is undefined",
        ),
        (
            core(&Core {
                restrictions: vec![(0, 1, vec![(1, 1)])],
                ..ok.clone()
            }),
            "purpose id 0 is not valid",
        ),
        (
            core(&Core {
                restrictions: vec![(1, 1, vec![(9, 3)])],
                ..ok.clone()
            }),
            "range end 3 is less than its start 9",
        ),
        (
            core(&Core {
                restrictions: vec![(1, 1, vec![(0, 0)])],
                ..ok.clone()
            }),
            "vendor id 0 is not valid",
        ),
        (format!("{}.", core(&ok)), "segment 2 is empty"),
        (format!("{0}.{0}", core(&ok)), "repeats the core segment"),
        (
            Bits::new().int(5, 3).int(0, 21).encode(),
            "segment type 5 is not defined",
        ),
        (
            vendor_bitfield(Bits::new().int(1, 3), &[1]).encode(),
            "core segment is missing",
        ),
        (
            "CO$a".into(),
            "character '$' at position 2 is not base64url",
        ),
        (
            "CPXxRfAPXxRf".into(),
            "field lastUpdated at bit 42 needs 36 bits but only 30 remain",
        ),
    ];
    for (input, needle) in cases {
        let msg = tc_err(&input);
        assert!(msg.contains(needle), "{input}: {msg:?} lacks {needle:?}");
    }
    // A truncated core names the field and bit offset.
    let full = core(&ok);
    let msg = tc_err(&full[..20]);
    assert!(msg.contains("TC string core segment: field"), "{msg}");
    assert!(msg.contains("at bit"), "{msg}");
    // Language letters beyond Z.
    let mut b = Bits::new()
        .int(2, 6)
        .int(1, 36)
        .int(1, 36)
        .int(300, 12)
        .int(1, 12)
        .int(1, 6);
    b = b.int(30, 6).int(1, 6).int(0, 200);
    assert!(tc_err(&b.encode()).contains("letter value 30 is not in A-Z"));
    assert_eq!(decode("").unwrap_err(), SignalError::Empty);
    assert!(matches!(
        decode(&"C".repeat(70_000)),
        Err(SignalError::TooLong { .. })
    ));
}

#[test]
fn gpp_usnat_and_detection() {
    let mut sensitive = [0u64; 16];
    sensitive[3] = 1;
    let s = format!(
        "{}~{}.{}",
        gpp_header(&[7]),
        usnat_core(1, 2, 1, &sensitive),
        gpc_segment(true)
    );
    assert!(s.starts_with("DB"));
    let ConsentSignal::Gpp(gpp) = decode(&s).unwrap() else {
        panic!("not detected as GPP")
    };
    let usnat = gpp.usnat.as_ref().unwrap();
    assert_eq!(usnat.sale(), OptOut::OptedOut);
    assert_eq!(usnat.sharing(), OptOut::DidNotOptOut);
    assert_eq!(usnat.targeted_advertising(), OptOut::OptedOut);
    assert_eq!(usnat.sensitive_data_processing(3), Some(OptOut::OptedOut));
    assert_eq!(usnat.sensitive_data_processing(16), None);
    assert!(usnat.gpc() && gpp.gpc());
    let json = gpp.to_json();
    assert_eq!(json["applicableSections"], serde_json::json!([7]));
    assert_eq!(json["sections"]["usnat"]["SaleOptOut"], 1);
    assert_eq!(json["sections"]["usnat"]["Gpc"], true);

    // Undecoded sections are reported by name.
    let s = format!(
        "{}~{}~BVVVVVVVVWA",
        gpp_header(&[7, 9]),
        usnat_core(0, 0, 0, &[0; 16])
    );
    let gpp = decode_gpp_string(&s).unwrap();
    assert_eq!(
        gpp.to_json()["undecodedSections"],
        serde_json::json!(["usva"])
    );
    assert!(!gpp.gpc());

    // TC strings are detected as TC.
    assert!(matches!(
        decode(&core(&Core::default())).unwrap(),
        ConsentSignal::Tcf(_)
    ));
}

#[test]
fn malformed_gpp_strings_say_what_is_wrong() {
    let usnat = usnat_core(1, 1, 1, &[0; 16]);
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{}~{usnat}~{usnat}", gpp_header(&[7])),
            "lists 1 section ids but the string has 2",
        ),
        (format!("{}~", gpp_header(&[7])), "section is blank"),
        (
            format!("{}~{usnat}.{}.AA", gpp_header(&[7]), gpc_segment(false)),
            "more than two sub-segments",
        ),
        (
            format!("{}~{usnat}.", gpp_header(&[7])),
            "GPC sub-segment: sub-segment is empty",
        ),
        (
            format!("{}~{}", gpp_header(&[7]), &usnat[..5]),
            "GPP usnat core sub-segment: field",
        ),
        ("DCABMA~x".into(), "header version 2 is not supported"),
        ("CBABMA~x".into(), "header type 2 is not 3"),
        (
            format!(
                "{}~{usnat}",
                Bits::new()
                    .int(3, 6)
                    .int(1, 6)
                    .int(1, 12)
                    .bit(false)
                    .int(0, 30)
                    .encode()
            ),
            "SectionIds",
        ),
        (
            format!("{}~{usnat}~{usnat}", {
                Bits::new()
                    .int(3, 6)
                    .int(1, 6)
                    .int(2, 12)
                    .bit(false)
                    .fib(7)
                    .bit(false)
                    .fib(0x1_0000)
                    .encode()
            }),
            "is too large",
        ),
        (
            format!("{}~a~b", {
                Bits::new()
                    .int(3, 6)
                    .int(1, 6)
                    .int(1, 12)
                    .bit(true)
                    .fib(7)
                    .fib(1_000_000)
                    .encode()
            }),
            "lists more section ids",
        ),
        (format!("{}~{}", gpp_header(&[2]), "C!AA"), "not base64url"),
        (
            format!(
                "{}~{}",
                gpp_header(&[2]),
                vendor_bitfield(Bits::new().int(1, 3), &[1]).encode()
            ),
            "core segment is missing",
        ),
    ];
    for (input, needle) in cases {
        let msg = decode(&input).unwrap_err().to_string();
        assert!(msg.contains(needle), "{input}: {msg:?} lacks {needle:?}");
    }
}

#[test]
fn gpc_header() {
    assert!(
        Gpc::from_header("1")
            .unwrap()
            .opts_out_of_sale_and_sharing()
    );
    assert!(Gpc::from_header("0").is_err());
}
