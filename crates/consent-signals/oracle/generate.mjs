// Oracle for meridian-consent-signals: builds many random models from a seed,
// encodes them with the IAB reference implementations, decodes them back with
// the same libraries, and prints one JSON line per model:
//   {"encoded": "<string>", "expected": <the reference's decoded fields in our JSON names>}
//
// usage: node generate.mjs tcf|gpp SEED COUNT
//        node generate.mjs tcf|gpp decode < strings   (reference decoding of each line)
import { readFileSync } from 'node:fs';
import {
  TCModel, TCString, SegmentEncoder, Segment, PurposeRestriction,
} from '@iabtcf/core';
import { GppModel, RangeEntry } from '@iabgpp/cmpapi';

const [kind, seedArg, countArg] = process.argv.slice(2);
const mode = seedArg === 'decode' ? 'decode' : 'generate';
if (!['tcf', 'gpp'].includes(kind)) {
  console.error('usage: node generate.mjs tcf|gpp SEED COUNT | node generate.mjs tcf|gpp decode');
  process.exit(2);
}
let seed = Number(seedArg ?? 1) >>> 0;
const count = Number(countArg ?? 1000);

// mulberry32: small, seedable, good enough for test data.
function random() {
  seed = (seed + 0x6D2B79F5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const int = (lo, hi) => lo + Math.floor(random() * (hi - lo + 1));
const bool = (p = 0.5) => random() < p;
const pick = (xs) => xs[int(0, xs.length - 1)];
const letters = () => String.fromCharCode(65 + int(0, 25), 65 + int(0, 25));
const subset = (n, p = random()) => {
  const out = [];
  for (let i = 1; i <= n; i++) if (bool(p)) out.push(i);
  return out;
};
const flags = (n, p = random()) => Array.from({ length: n }, () => bool(p));
// Dates between 2000 and 2100, millisecond precision (the encoders round to 100 ms).
const date = () => new Date(Date.UTC(2000, 0, 1) + Math.floor(random() * 100 * 365.25 * 864e5));

// Vendor id sets shaped to exercise both encodings: empty, sparse (bitfield
// or short range list), dense (bitfield), clustered runs (range encoding).
function vendorIds() {
  switch (int(0, 4)) {
    case 0: return [];
    case 1: { // sparse
      const max = int(1, 3000);
      const k = int(1, 12);
      return [...new Set(Array.from({ length: k }, () => int(1, max)))].sort((a, b) => a - b);
    }
    case 2: return subset(int(1, 1200), random()); // dense-ish bitfield
    case 3: { // clustered runs
      const out = [];
      let id = int(1, 200);
      const runs = int(1, 8);
      for (let r = 0; r < runs && id < 60000; r++) {
        const len = int(1, 400);
        for (let i = 0; i < len; i++) out.push(id + i);
        id += len + int(1, 2000);
      }
      return out;
    }
    default: return subset(int(1, 60), 0.5); // small (< 45: always bitfield)
  }
}
const ids = (vector) => {
  const out = [];
  vector.forEach((has, id) => { if (has) out.push(id); });
  return out;
};

function tcfModel() {
  const m = new TCModel();
  m.version = 2;
  m.cmpId = int(2, 4095);
  m.cmpVersion = int(0, 4095);
  m.consentScreen = int(0, 63);
  m.consentLanguage = letters();
  m.vendorListVersion = int(0, 4095);
  m.policyVersion = pick([2, 4, 5, int(0, 63)]);
  m.isServiceSpecific = bool();
  m.useNonStandardStacks = bool();
  m.purposeOneTreatment = bool();
  m.publisherCountryCode = letters();
  m.created = date();
  m.lastUpdated = bool() ? m.created : date();
  m.purposeConsents.set(subset(24));
  m.purposeLegitimateInterests.set(subset(24));
  m.specialFeatureOptins.set(subset(12));
  m.vendorConsents.set(vendorIds());
  m.vendorLegitimateInterests.set(vendorIds());
  let maxRestricted = 0;
  if (bool(0.6)) {
    const n = int(1, 6);
    for (let i = 0; i < n; i++) {
      const pr = new PurposeRestriction(pick([int(1, 11), int(1, 63)]), int(0, 2));
      for (const v of vendorIds().slice(0, 500)) {
        m.publisherRestrictions.add(v, pr);
        maxRestricted = Math.max(maxRestricted, v);
      }
    }
  }
  // The restriction encoder merges runs across ids missing from the GVL: give
  // it a GVL-like id set with random holes so both shapes are produced.
  const holes = bool() ? 0 : random() * 0.2;
  const gvlIds = new Set();
  for (let v = 1; v <= maxRestricted; v++) if (!bool(holes)) gvlIds.add(v);
  m.publisherRestrictions.gvl_ = { vendorIds: gvlIds };
  m.publisherConsents.set(subset(24));
  m.publisherLegitimateInterests.set(subset(24));
  const custom = int(0, 20);
  m.numCustomPurposes = custom;
  m.publisherCustomConsents.set(subset(custom));
  m.publisherCustomLegitimateInterests.set(subset(custom));
  m.vendorsDisclosed.set(vendorIds());
  m.vendorsAllowed.set(vendorIds());

  const optional = [Segment.VENDORS_DISCLOSED, Segment.VENDORS_ALLOWED, Segment.PUBLISHER_TC]
    .filter(() => bool());
  optional.sort(() => random() - 0.5);
  const encoded = [Segment.CORE, ...optional].map((s) => SegmentEncoder.encode(m, s)).join('.');
  return { encoded, expected: tcfExpected(encoded) };
}

// The reference's decoding of a TC string, in our JSON names.
function tcfExpected(encoded) {
  const d = TCString.decode(encoded);
  const present = new Set(encoded.split('.').slice(1).map((seg) => {
    const type = ('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'.indexOf(seg[0]) >> 3);
    return [null, Segment.VENDORS_DISCLOSED, Segment.VENDORS_ALLOWED, Segment.PUBLISHER_TC][type];
  }));
  const restrictions = d.publisherRestrictions.getRestrictions()
    .map((pr) => ({
      purposeId: pr.purposeId,
      restrictionType: pr.restrictionType,
      vendors: d.publisherRestrictions.getVendors(pr),
    }))
    .sort((a, b) => a.purposeId - b.purposeId || a.restrictionType - b.restrictionType);
  const canonical = ['core', Segment.VENDORS_DISCLOSED, Segment.VENDORS_ALLOWED, Segment.PUBLISHER_TC];
  const expected = {
    version: d.version,
    created: d.created.toISOString(),
    lastUpdated: d.lastUpdated.toISOString(),
    cmpId: d.cmpId,
    cmpVersion: d.cmpVersion,
    consentScreen: d.consentScreen,
    consentLanguage: d.consentLanguage,
    vendorListVersion: d.vendorListVersion,
    policyVersion: d.policyVersion,
    isServiceSpecific: d.isServiceSpecific,
    // @iabtcf/core 1.5 still calls this field useNonStandardStacks.
    useNonStandardTexts: d.useNonStandardStacks,
    purposeOneTreatment: d.purposeOneTreatment,
    publisherCountryCode: d.publisherCountryCode,
    purposeConsents: ids(d.purposeConsents),
    purposeLegitimateInterests: ids(d.purposeLegitimateInterests),
    specialFeatureOptins: ids(d.specialFeatureOptins),
    vendorConsents: ids(d.vendorConsents),
    vendorLegitimateInterests: ids(d.vendorLegitimateInterests),
    publisherRestrictions: restrictions,
    publisherConsents: ids(d.publisherConsents),
    publisherLegitimateInterests: ids(d.publisherLegitimateInterests),
    numCustomPurposes: d.numCustomPurposes,
    publisherCustomConsents: ids(d.publisherCustomConsents),
    publisherCustomLegitimateInterests: ids(d.publisherCustomLegitimateInterests),
    vendorsDisclosed: ids(d.vendorsDisclosed),
    vendorsAllowed: ids(d.vendorsAllowed),
    segments: canonical.filter((s) => s === 'core' || present.has(s)),
  };
  return expected;
}

const tri = () => int(0, 2);
function usFields(g, section, { notices, optOuts, sdp, kcsdc }) {
  for (const f of notices) g.setFieldValue(section, f, tri());
  for (const f of optOuts) g.setFieldValue(section, f, tri());
  g.setFieldValue(section, 'SensitiveDataProcessing', Array.from({ length: sdp }, tri));
  g.setFieldValue(section, 'KnownChildSensitiveDataConsents', Array.from({ length: kcsdc }, tri));
  g.setFieldValue(section, 'PersonalDataConsents', tri());
  g.setFieldValue(section, 'MspaCoveredTransaction', int(1, 2));
  g.setFieldValue(section, 'MspaOptOutOptionMode', tri());
  g.setFieldValue(section, 'MspaServiceProviderMode', tri());
  g.setFieldValue(section, 'GpcSegmentIncluded', bool());
  g.setFieldValue(section, 'Gpc', bool());
}

function gppModel() {
  const g = new GppModel();
  const present = [];
  if (bool(0.6)) {
    present.push('tcfeuv2');
    const s = 'tcfeuv2';
    g.setFieldValue(s, 'CmpId', int(0, 4095));
    g.setFieldValue(s, 'CmpVersion', int(0, 4095));
    g.setFieldValue(s, 'ConsentScreen', int(0, 63));
    g.setFieldValue(s, 'ConsentLanguage', letters());
    g.setFieldValue(s, 'VendorListVersion', int(0, 4095));
    g.setFieldValue(s, 'PolicyVersion', int(0, 63));
    g.setFieldValue(s, 'IsServiceSpecific', true); // cmpapi refuses to encode false
    g.setFieldValue(s, 'UseNonStandardStacks', bool());
    g.setFieldValue(s, 'SpecialFeatureOptins', flags(12));
    g.setFieldValue(s, 'PurposeConsents', flags(24));
    g.setFieldValue(s, 'PurposeLegitimateInterests', flags(24));
    g.setFieldValue(s, 'PurposeOneTreatment', bool());
    g.setFieldValue(s, 'PublisherCountryCode', letters());
    g.setFieldValue(s, 'VendorConsents', vendorIds());
    g.setFieldValue(s, 'VendorLegitimateInterests', vendorIds());
    const restrictions = [];
    const used = new Set();
    for (let i = int(0, 4); i > 0; i--) {
      const key = int(1, 24);
      const type = int(0, 2);
      if (used.has(`${key}-${type}`)) continue;
      used.add(`${key}-${type}`);
      restrictions.push(new RangeEntry(key, type, vendorIds().slice(0, 300)));
    }
    g.setFieldValue(s, 'PublisherRestrictions', restrictions);
    g.setFieldValue(s, 'PublisherConsents', flags(24));
    g.setFieldValue(s, 'PublisherLegitimateInterests', flags(24));
    const custom = int(0, 20);
    g.setFieldValue(s, 'NumCustomPurposes', custom);
    g.setFieldValue(s, 'PublisherCustomConsents', flags(custom));
    g.setFieldValue(s, 'PublisherCustomLegitimateInterests', flags(custom));
    g.setFieldValue(s, 'VendorsDisclosed', vendorIds());
    g.setFieldValue(s, 'Created', date()); // also sets LastUpdated
    if (bool()) g.setFieldValue(s, 'LastUpdated', date());
  }
  if (bool(0.6)) {
    present.push('usnat');
    const version = bool(0.3) ? 1 : 2;
    usFields(g, 'usnat', {
      notices: ['SharingNotice', 'SaleOptOutNotice', 'SharingOptOutNotice',
        'TargetedAdvertisingOptOutNotice', 'SensitiveDataProcessingOptOutNotice',
        'SensitiveDataLimitUseNotice'],
      optOuts: ['SaleOptOut', 'SharingOptOut', 'TargetedAdvertisingOptOut'],
      sdp: version === 1 ? 12 : 16,
      kcsdc: version === 1 ? 2 : 3,
    });
    g.setFieldValue('usnat', 'Version', version);
  }
  if (bool(0.6)) {
    present.push('usca');
    usFields(g, 'usca', {
      notices: ['SaleOptOutNotice', 'SharingOptOutNotice', 'SensitiveDataLimitUseNotice'],
      optOuts: ['SaleOptOut', 'SharingOptOut'],
      sdp: 9,
      kcsdc: 2,
    });
  }
  // Sections this crate reports as present but does not decode.
  if (bool(0.2)) g.setFieldValue('usva', 'SaleOptOut', int(0, 2));
  if (bool(0.2)) g.setFieldValue('uspv1', 'Notice', pick(['Y', 'N', '-']));
  if (bool(0.2)) g.setFieldValue('usco', 'SaleOptOut', int(0, 2));
  if (g.getSectionIds().length === 0) {
    g.setFieldValue('usca', 'SaleOptOut', 1);
    g.setFieldValue('usca', 'MspaCoveredTransaction', 1);
  }

  const encoded = g.encode();
  return { encoded, expected: gppExpected(encoded) };
}

const names = new Map([
  [2, 'tcfeuv2'], [5, 'tcfcav1'], [6, 'uspv1'], [7, 'usnat'], [8, 'usca'], [9, 'usva'],
  [10, 'usco'], [11, 'usut'], [12, 'usct'], [13, 'usfl'], [14, 'usmt'], [15, 'usor'],
  [16, 'ustx'], [17, 'usde'], [18, 'usia'], [19, 'usne'], [20, 'usnh'], [21, 'usnj'],
  [22, 'ustn'], [23, 'usmn'], [24, 'usmd'], [25, 'usin'], [26, 'usky'], [27, 'usri'],
]);

// The reference's decoding of a GPP string, in our JSON names.
function gppExpected(encoded) {
  const d = new GppModel(encoded);
  const sectionIds = d.getSectionIds();
  const sections = {};
  const undecodedSections = [];
  for (const id of sectionIds) {
    const name = names.get(id);
    if (['tcfeuv2', 'usnat', 'usca'].includes(name)) {
      const obj = JSON.parse(JSON.stringify(d.getSection(name)));
      if (name !== 'tcfeuv2') obj.GpcSegmentIncluded = d.getFieldValue(name, 'GpcSegmentIncluded');
      sections[name] = obj;
    } else {
      undecodedSections.push(name);
    }
  }
  return { applicableSections: sectionIds, sections, undecodedSections };
}

if (mode === 'decode') {
  // Differential mode: decode each line of standard input with the reference
  // and print {"ok": true, "expected": ...} or {"ok": false, "error": ...}.
  const input = readFileSync(0, 'utf8').split('\n');
  if (input.length && input[input.length - 1] === '') input.pop();
  const out = input.map((line) => {
    try {
      return JSON.stringify({ ok: true, expected: kind === 'tcf' ? tcfExpected(line) : gppExpected(line) });
    } catch (err) {
      return JSON.stringify({ ok: false, error: String(err && err.message) });
    }
  });
  process.stdout.write(out.join('\n') + '\n');
} else {
  const lines = [];
  for (let i = 0; i < count; i++) {
    lines.push(JSON.stringify(kind === 'tcf' ? tcfModel() : gppModel()));
  }
  process.stdout.write(lines.join('\n') + '\n');
}
