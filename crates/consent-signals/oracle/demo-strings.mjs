// Encodes the consent strings `meridian demo` records, with the IAB reference
// implementations, so the demo sends what a real CMP would. Prints one line per
// string: `<name> <string>`. Rerun and paste into services/meridian/src/demo/consent.rs
// when the models change.
//
// usage: node demo-strings.mjs
import { TCModel, SegmentEncoder, Segment } from '@iabtcf/core';
import { GppModel } from '@iabgpp/cmpapi';

const created = new Date(Date.UTC(2026, 10, 2, 9, 30));

function tc(purposes, specialFeatures, country) {
  const m = new TCModel();
  m.cmpId = 300;
  m.cmpVersion = 2;
  m.consentScreen = 1;
  m.consentLanguage = 'EN';
  m.vendorListVersion = 150;
  m.policyVersion = 4;
  m.isServiceSpecific = true;
  m.publisherCountryCode = country;
  m.created = created;
  m.lastUpdated = created;
  m.purposeConsents.set(purposes);
  m.purposeLegitimateInterests.set([2, 7, 8, 9, 10].filter((p) => !purposes.includes(p)));
  m.specialFeatureOptins.set(specialFeatures);
  m.vendorConsents.set([1, 2, 3, 755, 793]);
  return SegmentEncoder.encode(m, Segment.CORE);
}

function gpp(section, optedOut) {
  const g = new GppModel();
  const v = optedOut ? 1 : 2; // 1 = opted out, 2 = did not opt out
  g.setFieldValue(section, 'SaleOptOutNotice', 1);
  g.setFieldValue(section, 'SharingOptOutNotice', 1);
  if (section === 'usnat') {
    g.setFieldValue(section, 'SharingNotice', 1);
    g.setFieldValue(section, 'TargetedAdvertisingOptOutNotice', 1);
    g.setFieldValue(section, 'TargetedAdvertisingOptOut', v);
  }
  g.setFieldValue(section, 'SaleOptOut', v);
  g.setFieldValue(section, 'SharingOptOut', v);
  g.setFieldValue(section, 'MspaCoveredTransaction', 2);
  return g.encode();
}

const all = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
console.log('tcf_accept_all_de', tc(all, [1, 2], 'DE'));
console.log('tcf_no_ads_fr', tc([1, 8, 9, 10], [], 'FR'));
console.log('tcf_accept_all_gb', tc(all, [1], 'GB'));
console.log('tcf_reject_all_de', tc([1], [], 'DE'));
console.log('gpp_usca_no_opt_out', gpp('usca', false));
console.log('gpp_usca_opted_out', gpp('usca', true));
console.log('gpp_usnat_no_opt_out', gpp('usnat', false));
