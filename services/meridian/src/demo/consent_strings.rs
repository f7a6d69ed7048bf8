//! The consent strings the demo records: encoded by the IAB reference implementations
//! (`@iabtcf/core` 1.5.6, `@iabgpp/cmpapi` 3.2.0) with
//! `crates/consent-signals/oracle/demo-strings.mjs`, so the demo sends exactly what a real
//! consent management platform would. Rerun the script to change them.

/// TCF v2.2: every purpose (1–11) and special feature consented; publisher country DE.
pub(super) const TCF_ACCEPT_ALL_DE: &str =
    "CQtE3DwQtE3DwEsACBENCWEsAP_gAAAAAAYgGMwA4AAgAGAvMBjIAAAAAAAA";
/// TCF v2.2: storage and measurement only (purposes 1, 8, 9, 10), no advertising; FR.
pub(super) const TCF_NO_ADS_FR: &str =
    "CQtE3DwQtE3DwEsACBENCWEgAIHAAEIAAAqIGMwA4AAgAGAvMBjIAAAAAAAA";
/// TCF v2.2: every purpose consented; publisher country GB.
pub(super) const TCF_ACCEPT_ALL_GB: &str =
    "CQtE3DwQtE3DwEsACBENCWEoAP_gAAAAAAwIGMwA4AAgAGAvMBjIAAAAAAAA";
/// TCF v2.2: "reject all" (storage only); DE.
pub(super) const TCF_REJECT_ALL_DE: &str =
    "CQtE3DwQtE3DwEsACBENCWEgAIAAAEPAAAYgGMwA4AAgAGAvMBjIAAAAAAAA";
/// GPP with the `usca` section: notices given, no opt-out of sale or sharing.
pub(super) const GPP_USCA_NO_OPT_OUT: &str = "DBABBg~BUoAAACA.QA";
/// GPP with the `usca` section: opted out of sale and sharing.
pub(super) const GPP_USCA_OPTED_OUT: &str = "DBABBg~BUUAAACA.QA";

#[cfg(test)]
mod tests {
    use super::*;

    /// The strings decode with our own decoders to what the script encoded.
    #[test]
    fn strings_decode_to_the_intended_choices() {
        let all = meridian_consent_signals::decode_tc_string(TCF_ACCEPT_ALL_DE).unwrap();
        let json = all.to_json();
        assert_eq!(
            json["purposeConsents"],
            serde_json::json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
        );
        assert_eq!(json["publisherCountryCode"], "DE");
        let gb = meridian_consent_signals::decode_tc_string(TCF_ACCEPT_ALL_GB).unwrap();
        assert_eq!(gb.to_json()["publisherCountryCode"], "GB");
        let no_ads = meridian_consent_signals::decode_tc_string(TCF_NO_ADS_FR).unwrap();
        assert_eq!(
            no_ads.to_json()["purposeConsents"],
            serde_json::json!([1, 8, 9, 10])
        );
        let reject = meridian_consent_signals::decode_tc_string(TCF_REJECT_ALL_DE).unwrap();
        assert_eq!(reject.to_json()["purposeConsents"], serde_json::json!([1]));
        let ok = meridian_consent_signals::decode_gpp_string(GPP_USCA_NO_OPT_OUT).unwrap();
        assert_eq!(ok.to_json()["sections"]["usca"]["SaleOptOut"], 2);
        let out = meridian_consent_signals::decode_gpp_string(GPP_USCA_OPTED_OUT).unwrap();
        assert_eq!(out.to_json()["sections"]["usca"]["SaleOptOut"], 1);
        assert_eq!(out.to_json()["sections"]["usca"]["SharingOptOut"], 1);
    }
}
