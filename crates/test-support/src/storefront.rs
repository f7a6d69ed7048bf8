//! A synthetic cross-border storefront with ground truth.
//!
//! Shoppers live in DE, FR, GB, US-CA, BR and CN. Each has one to three devices (web
//! browsers with anonymous ids that are sometimes reset, phone apps with an IDFA or GAID),
//! an email (sometimes a second one, sometimes typed with a typo), often a phone written the
//! local way, and — when registered — a user id and a storefront customer id
//! (`shopify:123`). Sessions arrive from ads with click ids (gclid, fbclid, ttclid).
//! Noise: households share a family tablet; some couples re-use one email; junk values
//! (`test@test.com`, all-zero IDFAs from limited ad tracking, `undefined` anonymous ids)
//! appear across many shoppers.
//!
//! The generator knows who is who: every identifier carries its canonical value, and
//! [`Storefront::owners`] says which shoppers used it. [`QualityReport::measure`] gives the
//! pairwise precision and recall of a stitching over the identifiers with exactly one owner
//! (shared and junk values have no single truth and are left out of the pairs).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::rng::Rng;

/// Identifier types, mirroring `meridian.v1.IdentifierType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum IdKind {
    AnonymousId,
    UserId,
    Email,
    Phone,
    Idfa,
    Gaid,
    DeviceId,
    StorefrontCustomerId,
    Fbclid,
    Gclid,
    Ttclid,
}

/// One identifier as a storefront would send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticIdentifier {
    pub kind: IdKind,
    /// As sent (phones in local format, emails in mixed case, ...).
    pub value: String,
    /// For storefront customer ids, empty: the value reads `shopify:123`.
    pub source: String,
    /// ISO 3166-1 alpha-2 region for phones.
    pub default_region: String,
    /// The generator's canonical form: equal for values that are the same identifier.
    pub canonical: String,
}

/// One event: identifiers seen together, and who really sent it.
#[derive(Debug, Clone)]
pub struct SyntheticEvent {
    pub event_id: String,
    pub at: DateTime<Utc>,
    pub region: &'static str,
    pub identifiers: Vec<SyntheticIdentifier>,
    /// Ground truth: the shopper behind the event.
    pub shopper: usize,
}

/// A shopper's region and whether they have an account.
#[derive(Debug, Clone)]
pub struct Shopper {
    pub id: usize,
    pub region: &'static str,
    pub registered: bool,
    pub household: Option<usize>,
}

/// Knobs of the generator. Rates are per shopper unless said otherwise.
#[derive(Debug, Clone)]
pub struct StorefrontConfig {
    pub seed: u64,
    pub shoppers: usize,
    /// Share of shoppers with an account (user id and storefront customer id).
    pub registered_rate: f64,
    /// Share of shoppers living in a household of 2–4 that shares a family tablet.
    pub household_rate: f64,
    /// Share of households whose couple checks out with one re-used email.
    pub reused_email_rate: f64,
    /// Share of emails typed once with a typo (a distinct, real value of the shopper).
    pub typo_rate: f64,
    /// Share of events carrying a junk value.
    pub junk_rate: f64,
    /// Sessions per device, inclusive range.
    pub sessions_per_device: (u64, u64),
}

impl Default for StorefrontConfig {
    fn default() -> Self {
        StorefrontConfig {
            seed: 42,
            shoppers: 2_000,
            registered_rate: 0.6,
            household_rate: 0.15,
            reused_email_rate: 0.1,
            typo_rate: 0.05,
            junk_rate: 0.03,
            sessions_per_device: (2, 6),
        }
    }
}

/// The generated storefront: shoppers and their events in time order.
#[derive(Debug, Clone)]
pub struct Storefront {
    pub shoppers: Vec<Shopper>,
    pub events: Vec<SyntheticEvent>,
}

pub const REGIONS: [&str; 6] = ["DE", "FR", "GB", "US-CA", "BR", "CN"];

const FIRST: [&str; 24] = [
    "lukas", "anna", "leon", "marie", "hugo", "chloe", "louis", "emma", "oliver", "amelia",
    "george", "isla", "liam", "olivia", "noah", "sofia", "miguel", "helena", "arthur", "alice",
    "wei", "fang", "jing", "lei",
];
const LAST: [&str; 18] = [
    "mueller", "schmidt", "martin", "bernard", "smith", "jones", "taylor", "garcia", "johnson",
    "silva", "santos", "oliveira", "wang", "li", "zhang", "liu", "dubois", "weber",
];

fn email_domains(region: &str) -> &'static [&'static str] {
    match region {
        "DE" => &["gmx.de", "web.de", "gmail.com", "t-online.de"],
        "FR" => &["orange.fr", "free.fr", "gmail.com", "laposte.net"],
        "GB" => &["btinternet.com", "gmail.com", "outlook.com", "sky.com"],
        "US-CA" => &["gmail.com", "yahoo.com", "outlook.com", "icloud.com"],
        "BR" => &["uol.com.br", "gmail.com", "bol.com.br", "hotmail.com"],
        _ => &["qq.com", "163.com", "126.com", "sina.com"],
    }
}

/// A valid mobile number in local format, and its E.164 form.
fn phone(rng: &mut Rng, region: &str) -> (String, String, &'static str) {
    match region {
        "DE" => {
            let rest = rng.digits(8);
            (format!("0151 {rest}"), format!("+49151{rest}"), "DE")
        }
        "FR" => {
            let rest = format!("{}{}", rng.range(0, 2), rng.digits(7));
            (
                format!(
                    "06 {} {} {} {}",
                    &rest[0..2],
                    &rest[2..4],
                    &rest[4..6],
                    &rest[6..8]
                ),
                format!("+336{rest}"),
                "FR",
            )
        }
        "GB" => {
            let rest = rng.digits(6);
            (format!("07400 {rest}"), format!("+447400{rest}"), "GB")
        }
        "US-CA" => {
            let (x, line) = (rng.range(200, 999), rng.digits(4));
            (format!("(415) {x}-{line}"), format!("+1415{x}{line}"), "US")
        }
        "BR" => {
            let rest = rng.digits(8);
            (
                format!("(11) 9{}-{}", &rest[0..4], &rest[4..8]),
                format!("+55119{rest}"),
                "BR",
            )
        }
        _ => {
            let rest = rng.digits(8);
            (
                format!("138 {} {}", &rest[0..4], &rest[4..8]),
                format!("+86138{rest}"),
                "CN",
            )
        }
    }
}

fn id(kind: IdKind, value: String, canonical: String) -> SyntheticIdentifier {
    SyntheticIdentifier {
        kind,
        value,
        source: String::new(),
        default_region: String::new(),
        canonical,
    }
}

fn typo(rng: &mut Rng, email: &str) -> String {
    let Some((local, domain)) = email.split_once('@') else {
        return email.to_owned();
    };
    let mut chars: Vec<char> = local.chars().collect();
    if chars.len() >= 2 {
        let i = rng.below(chars.len() as u64 - 1) as usize;
        chars.swap(i, i + 1);
    }
    if chars.iter().collect::<String>() == local {
        chars.push('x');
    }
    let domain = match domain {
        "gmail.com" => "gmial.com",
        other => other,
    };
    format!("{}@{domain}", chars.into_iter().collect::<String>())
}

#[derive(Debug, Clone)]
enum DeviceKind {
    Web,
    Ios,
    Android,
}

#[derive(Debug, Clone)]
struct Device {
    kind: DeviceKind,
    anon: String,
    ad_id: String,
    /// Limited ad tracking: the IDFA reads all zeros.
    lat: bool,
}

struct Person {
    region: &'static str,
    user_id: Option<String>,
    shop_id: Option<String>,
    emails: Vec<String>,
    phone: Option<(String, String, &'static str)>,
    devices: Vec<Device>,
}

impl Storefront {
    /// Generates the storefront; the same config gives the same storefront.
    ///
    /// Assumptions that make the truth reachable by deterministic stitching (documented,
    /// not hidden): every device is identified at least once (its first session, and the
    /// first session after a browser's cookie is reset); registered shoppers log in on a
    /// shared family tablet before doing anything that identifies them there, while guests
    /// only browse on it; couples who re-use one email are registered and use it signed in.
    pub fn generate(config: &StorefrontConfig) -> Storefront {
        let mut rng = Rng::new(config.seed);
        let n = config.shoppers;
        // Households first: runs of consecutive shoppers share a family tablet.
        let mut household_of: Vec<Option<usize>> = vec![None; n];
        let mut reused_household: Vec<bool> = Vec::new();
        let mut i = 0;
        while i < n {
            if rng.chance(config.household_rate / 2.5) {
                let size = (rng.range(2, 4) as usize).min(n - i);
                if size >= 2 {
                    let h = reused_household.len();
                    reused_household.push(rng.chance(config.reused_email_rate));
                    for slot in household_of.iter_mut().skip(i).take(size) {
                        *slot = Some(h);
                    }
                    i += size;
                    continue;
                }
            }
            i += 1;
        }
        let mut shoppers = Vec::with_capacity(n);
        let mut people = Vec::with_capacity(n);
        for (i, household) in household_of.iter().copied().enumerate() {
            let region = *rng.pick(&REGIONS);
            let registered = rng.chance(config.registered_rate)
                || household.is_some_and(|h| reused_household[h]);
            let (first, last) = (*rng.pick(&FIRST), *rng.pick(&LAST));
            let domain = *rng.pick(email_domains(region));
            let mut emails = vec![format!("{first}.{last}{i}@{domain}")];
            if rng.chance(0.15) {
                emails.push(format!(
                    "{first}{}{i}@{}",
                    &last[..1],
                    rng.pick(email_domains(region))
                ));
            }
            let phone = rng.chance(0.6).then(|| phone(&mut rng, region));
            let device_count = rng.range(1, 3) as usize;
            let devices = (0..device_count)
                .map(|_| {
                    let kind = match rng.below(3) {
                        0 => DeviceKind::Web,
                        1 => DeviceKind::Ios,
                        _ => DeviceKind::Android,
                    };
                    let upper = matches!(kind, DeviceKind::Ios);
                    Device {
                        ad_id: rng.uuid(upper),
                        anon: rng.uuid(false),
                        lat: matches!(kind, DeviceKind::Ios) && rng.chance(0.3),
                        kind,
                    }
                })
                .collect();
            shoppers.push(Shopper {
                id: i,
                region,
                registered,
                household,
            });
            people.push(Person {
                region,
                user_id: registered.then(|| format!("u-{}-{i}", rng.digits(6))),
                shop_id: registered.then(|| format!("shopify:{}", 7_000_000 + i)),
                emails,
                phone,
                devices,
            });
        }
        let tablets: Vec<Device> = (0..reused_household.len())
            .map(|_| Device {
                kind: DeviceKind::Android,
                anon: rng.uuid(false),
                ad_id: rng.uuid(false),
                lat: false,
            })
            .collect();
        let reused: Vec<Option<String>> = reused_household
            .iter()
            .enumerate()
            .map(|(h, r)| r.then(|| format!("family{h}@{}", rng.pick(email_domains("DE")))))
            .collect();

        let start = DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(); // 2026-01-01
        const CLICK: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
        let mut events = Vec::new();
        let mut seq = 0u64;
        for (s, p) in people.iter().enumerate() {
            let hh = shoppers[s].household;
            let family_email = hh.and_then(|h| reused[h].clone());
            let mut devices: Vec<(Device, bool)> =
                p.devices.iter().cloned().map(|d| (d, false)).collect();
            if let Some(t) = hh.and_then(|h| tablets.get(h)) {
                devices.push((t.clone(), true));
            }
            let mut typo_used = false;
            for (device, shared) in devices.iter_mut() {
                let sessions =
                    rng.range(config.sessions_per_device.0, config.sessions_per_device.1);
                for k in 0..sessions {
                    let mut ids = Vec::new();
                    // A browser's cookie is sometimes cleared: a new anonymous id.
                    let reset = matches!(device.kind, DeviceKind::Web) && k > 0 && rng.chance(0.1);
                    if reset {
                        device.anon = rng.uuid(false);
                    }
                    ids.push(id(
                        IdKind::AnonymousId,
                        device.anon.clone(),
                        format!("anon:{}", device.anon),
                    ));
                    match device.kind {
                        DeviceKind::Ios if device.lat => {
                            let zero = "00000000-0000-0000-0000-000000000000".to_owned();
                            ids.push(id(IdKind::Idfa, zero.clone(), format!("idfa:{zero}")));
                        }
                        DeviceKind::Ios => ids.push(id(
                            IdKind::Idfa,
                            device.ad_id.clone(),
                            format!("idfa:{}", device.ad_id.to_lowercase()),
                        )),
                        DeviceKind::Android => ids.push(id(
                            IdKind::Gaid,
                            device.ad_id.clone(),
                            format!("gaid:{}", device.ad_id),
                        )),
                        DeviceKind::Web => {}
                    }
                    let guest_on_shared = *shared && p.user_id.is_none();
                    if !guest_on_shared && rng.chance(0.2) {
                        let (kind, prefix, v) = match rng.below(3) {
                            0 => (
                                IdKind::Gclid,
                                "gclid",
                                format!("Cj0K{}", rng.string(CLICK, 36)),
                            ),
                            1 => (
                                IdKind::Fbclid,
                                "fbclid",
                                format!("IwAR{}", rng.string(CLICK, 40)),
                            ),
                            _ => (
                                IdKind::Ttclid,
                                "ttclid",
                                format!("E.C.P.{}", rng.string(&CLICK[..62], 30)),
                            ),
                        };
                        ids.push(id(kind, v.clone(), format!("{prefix}:{v}")));
                    }
                    let identify =
                        !guest_on_shared && (k == 0 || reset || *shared || rng.chance(0.35));
                    if identify {
                        // A guest always types their main email (a second one, never seen with the
                        // first, could not be tied to them); signed-in shoppers use any.
                        let pick = if p.user_id.is_some() {
                            rng.below(p.emails.len() as u64) as usize
                        } else {
                            0
                        };
                        let mut email = p.emails[pick].clone();
                        if let Some(f) = &family_email
                            && rng.chance(0.5)
                        {
                            email = f.clone();
                        }
                        let mut canonical = email.to_lowercase();
                        if !typo_used && family_email.is_none() && rng.chance(config.typo_rate) {
                            typo_used = true;
                            email = typo(&mut rng, &email);
                            canonical = email.to_lowercase();
                        }
                        let shown = if rng.chance(0.3) {
                            email.to_uppercase()
                        } else {
                            email
                        };
                        let checkout = p.user_id.is_none() || rng.chance(0.5);
                        if let Some(u) = &p.user_id {
                            // Signed in: an identify call (user id, usually with the email
                            // trait) or a checkout as a customer.
                            ids.push(id(IdKind::UserId, u.clone(), format!("user:{u}")));
                        }
                        if checkout || rng.chance(0.7) {
                            ids.push(id(IdKind::Email, shown, format!("email:{canonical}")));
                        }
                        if checkout {
                            if let Some((local, e164, region)) = &p.phone
                                && rng.chance(0.5)
                            {
                                let mut ph =
                                    id(IdKind::Phone, local.clone(), format!("phone:{e164}"));
                                ph.default_region = (*region).to_owned();
                                ids.push(ph);
                            }
                            if let Some(shop) = &p.shop_id {
                                ids.push(id(
                                    IdKind::StorefrontCustomerId,
                                    shop.clone(),
                                    format!("shop:{shop}"),
                                ));
                            }
                        }
                    }
                    if rng.chance(config.junk_rate) {
                        let junk = match rng.below(3) {
                            0 => id(
                                IdKind::Email,
                                "test@test.com".into(),
                                "email:test@test.com".into(),
                            ),
                            1 => id(
                                IdKind::AnonymousId,
                                "undefined".into(),
                                "anon:undefined".into(),
                            ),
                            _ => id(
                                IdKind::Idfa,
                                "00000000-0000-0000-0000-000000000000".into(),
                                "idfa:00000000-0000-0000-0000-000000000000".into(),
                            ),
                        };
                        ids.push(junk);
                    }
                    seq += 1;
                    let at = start + Duration::seconds(rng.below(90 * 86_400) as i64);
                    events.push(SyntheticEvent {
                        event_id: format!("evt-{seq:08}"),
                        at,
                        region: p.region,
                        identifiers: ids,
                        shopper: s,
                    });
                }
            }
        }
        // Shoppers interleave in time.
        events.sort_by(|a, b| (a.at, &a.event_id).cmp(&(b.at, &b.event_id)));
        Storefront { shoppers, events }
    }

    /// Ground truth: who used each canonical identifier.
    pub fn owners(&self) -> BTreeMap<String, BTreeSet<usize>> {
        let mut owners: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for e in &self.events {
            for i in &e.identifiers {
                owners
                    .entry(i.canonical.clone())
                    .or_default()
                    .insert(e.shopper);
            }
        }
        owners
    }

    /// One representative identifier per canonical value.
    pub fn identifiers(&self) -> BTreeMap<String, SyntheticIdentifier> {
        let mut out = BTreeMap::new();
        for e in &self.events {
            for i in &e.identifiers {
                out.entry(i.canonical.clone()).or_insert_with(|| i.clone());
            }
        }
        out
    }

    /// Total identifier occurrences over all events.
    pub fn identifier_occurrences(&self) -> usize {
        self.events.iter().map(|e| e.identifiers.len()).sum()
    }
}

/// Pairwise precision and recall of a stitching against the ground truth.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QualityReport {
    /// Identifiers with exactly one owner (the ones measured).
    pub identifiers: usize,
    /// Identifiers left out: shared by several shoppers, junk, or blocked.
    pub excluded_identifiers: usize,
    pub true_pairs: u64,
    pub predicted_pairs: u64,
    pub correct_pairs: u64,
    pub precision: f64,
    pub recall: f64,
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

impl QualityReport {
    /// Measures a stitching: `profile_of` gives the profile holding an identifier (`None`
    /// when it is in none, e.g. blocked: then it pairs with nothing).
    pub fn measure(
        storefront: &Storefront,
        mut profile_of: impl FnMut(&SyntheticIdentifier) -> Option<String>,
    ) -> QualityReport {
        let owners = storefront.owners();
        let ids = storefront.identifiers();
        let mut by_owner: HashMap<usize, u64> = HashMap::new();
        let mut by_profile: HashMap<String, u64> = HashMap::new();
        let mut by_cell: HashMap<(String, usize), u64> = HashMap::new();
        let (mut measured, mut excluded) = (0, 0);
        for (canonical, who) in &owners {
            let (Some(owner), 1) = (who.iter().next(), who.len()) else {
                excluded += 1;
                continue;
            };
            let Some(ident) = ids.get(canonical) else {
                continue;
            };
            measured += 1;
            *by_owner.entry(*owner).or_default() += 1;
            if let Some(p) = profile_of(ident) {
                *by_profile.entry(p.clone()).or_default() += 1;
                *by_cell.entry((p, *owner)).or_default() += 1;
            }
        }
        let true_pairs: u64 = by_owner.values().map(|n| pairs(*n)).sum();
        let predicted_pairs: u64 = by_profile.values().map(|n| pairs(*n)).sum();
        let correct_pairs: u64 = by_cell.values().map(|n| pairs(*n)).sum();
        let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        QualityReport {
            identifiers: measured,
            excluded_identifiers: excluded,
            true_pairs,
            predicted_pairs,
            correct_pairs,
            precision: ratio(correct_pairs, predicted_pairs),
            recall: ratio(correct_pairs, true_pairs),
        }
    }
}

impl std::fmt::Display for QualityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pairwise precision {:.5} recall {:.5} ({} correct of {} predicted, {} true pairs; {} identifiers measured, {} shared/junk left out)",
            self.precision,
            self.recall,
            self.correct_pairs,
            self.predicted_pairs,
            self.true_pairs,
            self.identifiers,
            self.excluded_identifiers
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Storefront {
        Storefront::generate(&StorefrontConfig {
            shoppers: 300,
            ..StorefrontConfig::default()
        })
    }

    #[test]
    fn deterministic_by_seed() {
        let (a, b) = (small(), small());
        assert_eq!(a.events.len(), b.events.len());
        for (x, y) in a.events.iter().zip(&b.events) {
            assert_eq!(x.identifiers, y.identifiers);
            assert_eq!((x.at, x.shopper), (y.at, y.shopper));
        }
        let c = Storefront::generate(&StorefrontConfig {
            shoppers: 300,
            seed: 43,
            ..StorefrontConfig::default()
        });
        assert_ne!(a.events[0].identifiers, c.events[0].identifiers);
    }

    #[test]
    fn the_storefront_has_its_noise_and_every_region() {
        let s = small();
        let regions: BTreeSet<&str> = s.shoppers.iter().map(|p| p.region).collect();
        assert_eq!(regions.len(), REGIONS.len());
        let owners = s.owners();
        let shared = owners.values().filter(|o| o.len() > 1).count();
        assert!(shared > 0, "shared values exist");
        assert!(owners.contains_key("email:test@test.com"));
        assert!(owners.keys().any(|k| k.starts_with("shop:shopify:")));
        assert!(owners.keys().any(|k| k.starts_with("gclid:")));
        assert!(owners.keys().any(|k| k.starts_with("phone:+86")));
        assert!(s.shoppers.iter().any(|p| p.household.is_some()));
        assert!(s.events.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn quality_report_counts_pairs() {
        let s = small();
        // Perfect stitching: the owner is the profile.
        let owners = s.owners();
        let perfect = QualityReport::measure(&s, |i| {
            owners
                .get(&i.canonical)
                .and_then(|o| o.iter().next())
                .map(|o| o.to_string())
        });
        assert_eq!(perfect.precision, 1.0);
        assert_eq!(perfect.recall, 1.0);
        assert!(perfect.true_pairs > 0);
        // Nothing stitched: perfect precision, no recall.
        let none = QualityReport::measure(&s, |_| None);
        assert_eq!(none.recall, 0.0);
        // Everything in one profile: recall 1, precision low.
        let all = QualityReport::measure(&s, |_| Some("one".into()));
        assert_eq!(all.recall, 1.0);
        assert!(all.precision < 0.05);
        assert!(all.to_string().contains("precision"));
    }
}
