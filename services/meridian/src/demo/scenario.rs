//! The demo's storefront: shoppers in the EU (DE, FR), the UK, California, Brazil and China,
//! each with a couple of devices, their consent, and 30 days of page views, product views,
//! carts and orders — as the public API's messages, generated from a seed.

use chrono::{DateTime, Duration, Utc};
use meridian_proto::JsonObject;
use meridian_proto::v1;
use meridian_test_support::rng::Rng;
use prost_types::Timestamp;
use serde_json::Value;

use super::consent_strings::{
    GPP_USCA_NO_OPT_OUT, GPP_USCA_OPTED_OUT, TCF_ACCEPT_ALL_DE, TCF_ACCEPT_ALL_GB, TCF_NO_ADS_FR,
    TCF_REJECT_ALL_DE,
};

/// The purpose the demo audience is used for, and the one consent is asked for.
pub(super) const TARGETED_ADS: &str = "marketing.advertising.third_party.targeted";

/// Where shoppers come from: jurisdiction, storefront country, time zone, currency, locale,
/// phone region, and the share of shoppers.
pub(super) struct Market {
    pub(super) jurisdiction: &'static str,
    pub(super) country: &'static str,
    pub(super) time_zone: &'static str,
    pub(super) currency: &'static str,
    pub(super) locale: &'static str,
    weight: u64,
}

pub(super) const MARKETS: [Market; 6] = [
    Market {
        jurisdiction: "DE",
        country: "DE",
        time_zone: "Europe/Berlin",
        currency: "EUR",
        locale: "de-DE",
        weight: 25,
    },
    Market {
        jurisdiction: "FR",
        country: "FR",
        time_zone: "Europe/Paris",
        currency: "EUR",
        locale: "fr-FR",
        weight: 15,
    },
    Market {
        jurisdiction: "GB",
        country: "GB",
        time_zone: "Europe/London",
        currency: "GBP",
        locale: "en-GB",
        weight: 15,
    },
    Market {
        jurisdiction: "US-CA",
        country: "US",
        time_zone: "America/Los_Angeles",
        currency: "USD",
        locale: "en-US",
        weight: 20,
    },
    Market {
        jurisdiction: "BR",
        country: "BR",
        time_zone: "America/Sao_Paulo",
        currency: "BRL",
        locale: "pt-BR",
        weight: 15,
    },
    Market {
        jurisdiction: "CN",
        country: "CN",
        time_zone: "Asia/Shanghai",
        currency: "CNY",
        locale: "zh-CN",
        weight: 10,
    },
];

/// How a shopper told us their choices.
#[derive(Debug, Clone)]
pub(super) enum ConsentSource {
    /// A TC string from the cookie banner (EU, UK).
    Tcf(&'static str),
    /// A GPP string (California).
    Gpp(&'static str),
    /// The browser's Global Privacy Control (California).
    Gpc,
    /// Explicit choices at checkout (Brazil, China).
    Explicit { targeted_ads: bool },
}

pub(super) struct Shopper {
    pub(super) market: &'static Market,
    pub(super) email: String,
    pub(super) phone: String,
    pub(super) user_id: String,
    pub(super) shopify_id: String,
    /// Anonymous ids of the shopper's browsers and app installs.
    pub(super) devices: Vec<String>,
    pub(super) first_name: &'static str,
    pub(super) consent: ConsentSource,
}

pub(super) struct Storefront {
    pub(super) shoppers: Vec<Shopper>,
    pub(super) events: Vec<v1::Event>,
}

const FIRST_NAMES: [&str; 12] = [
    "Ana", "Lukas", "Chloé", "Oliver", "María", "Wei", "João", "Emma", "Noah", "Li", "Léa",
    "Sophia",
];
const PRODUCTS: [(&str, i64); 6] = [
    ("silk-scarf", 8_900),
    ("leather-tote", 24_900),
    ("linen-shirt", 6_900),
    ("travel-mug", 2_400),
    ("wool-coat", 39_900),
    ("sneakers", 12_900),
];

/// Phone numbers in each market's national format (the platform normalizes them).
fn phone(rng: &mut Rng, country: &str) -> String {
    match country {
        "DE" => format!("0151 {} {}", rng.digits(4), rng.digits(4)),
        // 06 12: an assigned mobile block (libphonenumber refuses unassigned ones like 06 39)
        "FR" => format!(
            "06 12 {} {} {}",
            rng.digits(2),
            rng.digits(2),
            rng.digits(2)
        ),
        // (Ofcom's 07700 900xxx drama range would be safer, but libphonenumber and the
        // ingest validation reject it as unassigned)
        "GB" => format!("07911 1{}", rng.digits(5)),
        "US" => format!("(415) 555-{}", rng.digits(4)),
        "BR" => format!("(11) 9{}-{}", rng.digits(4), rng.digits(4)),
        _ => format!("139 {} {}", rng.digits(4), rng.digits(4)),
    }
}

fn consent_for(rng: &mut Rng, market: &Market) -> ConsentSource {
    let roll = rng.unit();
    match market.jurisdiction {
        "DE" => ConsentSource::Tcf(if roll < 0.6 {
            TCF_ACCEPT_ALL_DE
        } else {
            TCF_REJECT_ALL_DE
        }),
        "FR" => ConsentSource::Tcf(if roll < 0.55 {
            TCF_ACCEPT_ALL_DE
        } else {
            TCF_NO_ADS_FR
        }),
        "GB" => ConsentSource::Tcf(if roll < 0.7 {
            TCF_ACCEPT_ALL_GB
        } else {
            TCF_REJECT_ALL_DE
        }),
        "US-CA" if roll < 0.6 => ConsentSource::Gpp(GPP_USCA_NO_OPT_OUT),
        "US-CA" if roll < 0.8 => ConsentSource::Gpp(GPP_USCA_OPTED_OUT),
        "US-CA" => ConsentSource::Gpc,
        _ => ConsentSource::Explicit {
            targeted_ads: roll < 0.6,
        },
    }
}

fn ts(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn fields(pairs: &[(&str, Value)]) -> JsonObject {
    JsonObject(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

fn text(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn amount(units: f64) -> Value {
    serde_json::Number::from_f64(units).map_or(Value::Null, Value::Number)
}

impl Storefront {
    /// `shoppers` shoppers and their last 30 days, ending at `now`.
    pub(super) fn generate(seed: u64, shoppers: usize, now: DateTime<Utc>) -> Storefront {
        let mut rng = Rng::new(seed);
        let total: u64 = MARKETS.iter().map(|m| m.weight).sum();
        let mut out = Vec::with_capacity(shoppers);
        for i in 0..shoppers {
            let mut pick = rng.below(total);
            let market = MARKETS
                .iter()
                .find(|m| {
                    if pick < m.weight {
                        true
                    } else {
                        pick -= m.weight;
                        false
                    }
                })
                .unwrap_or(&MARKETS[0]);
            let first_name = *rng.pick(&FIRST_NAMES);
            let devices = (0..rng.range(1, 3)).map(|_| rng.uuid(false)).collect();
            out.push(Shopper {
                market,
                email: format!(
                    "{}.{}{}@example.{}",
                    first_name.to_lowercase(),
                    rng.string(b"abcdefghijklmnopqrstuvwxyz", 5),
                    i,
                    market.country.to_lowercase()
                ),
                phone: phone(&mut rng, market.country),
                user_id: format!("u-{}", rng.digits(8)),
                shopify_id: rng.digits(10),
                devices,
                first_name,
                consent: consent_for(&mut rng, market),
            });
        }
        let mut events = Vec::new();
        for (i, s) in out.iter().enumerate() {
            shopper_journey(&mut rng, i, s, now, &mut events);
        }
        Storefront {
            shoppers: out,
            events,
        }
    }
}

/// One to four sessions over 30 days: browsing, sometimes a cart, sometimes an order
/// (checkout identifies the shopper). About a third of shoppers cart in the last week
/// without buying: the demo audience.
fn shopper_journey(
    rng: &mut Rng,
    i: usize,
    s: &Shopper,
    now: DateTime<Utc>,
    out: &mut Vec<v1::Event>,
) {
    let sessions = rng.range(1, 4);
    let abandons_recently = rng.chance(0.35);
    for session in 0..sessions {
        let last = session + 1 == sessions;
        let days_ago = if last && abandons_recently {
            i64::try_from(rng.range(0, 6)).unwrap_or(0)
        } else {
            i64::try_from(rng.range(8, 29)).unwrap_or(8)
        };
        let start = now
            - Duration::days(days_ago)
            - Duration::minutes(i64::try_from(rng.range(0, 600)).unwrap_or(0));
        let device = rng.pick(&s.devices).clone();
        let product = *rng.pick(&PRODUCTS);
        let mut step = 0i64;
        let mut event =
            |kind: v1::EventType, name: &str, properties: Option<JsonObject>, identified: bool| {
                step += 1;
                let at = start + Duration::seconds(step * 40);
                let mut identifiers = Vec::new();
                if identified {
                    identifiers.push(v1::Identifier {
                        r#type: v1::IdentifierType::Email as i32,
                        value: s.email.clone(),
                        ..Default::default()
                    });
                    identifiers.push(v1::Identifier {
                        r#type: v1::IdentifierType::Phone as i32,
                        value: s.phone.clone(),
                        default_region: s.market.country.to_owned(),
                        ..Default::default()
                    });
                    identifiers.push(v1::Identifier {
                        r#type: v1::IdentifierType::StorefrontCustomerId as i32,
                        value: s.shopify_id.clone(),
                        source: "shopify".into(),
                        ..Default::default()
                    });
                }
                let (event, page_name) = match kind {
                    v1::EventType::Page => (String::new(), name.to_owned()),
                    _ => (name.to_owned(), String::new()),
                };
                out.push(v1::Event {
                    message_id: format!("demo-{i}-{session}-{step}"),
                    r#type: kind as i32,
                    anonymous_id: device.clone(),
                    user_id: if identified {
                        s.user_id.clone()
                    } else {
                        String::new()
                    },
                    identifiers,
                    event,
                    name: page_name,
                    properties,
                    traits: identified.then(|| {
                        fields(&[
                            ("first_name", text(s.first_name)),
                            ("email", text(&s.email)),
                            ("locale", text(s.market.locale)),
                        ])
                    }),
                    context: Some(v1::Context {
                        locale: s.market.locale.into(),
                        timezone: s.market.time_zone.into(),
                        storefront: Some(v1::Storefront {
                            id: "demo-shop".into(),
                            platform: "shopify".into(),
                            country: s.market.country.into(),
                            currency: s.market.currency.into(),
                        }),
                        ..Default::default()
                    }),
                    timestamp: Some(ts(at)),
                    jurisdiction: s.market.jurisdiction.into(),
                    consent: Some(v1::ConsentSignals {
                        gpc: matches!(s.consent, ConsentSource::Gpc),
                        ..Default::default()
                    }),
                    age_band: v1::AgeBand::Adult as i32,
                    ..Default::default()
                });
            };
        let product_props = || {
            fields(&[
                ("product_id", text(product.0)),
                ("price", amount(product.1 as f64 / 100.0)),
                ("currency", text(s.market.currency)),
            ])
        };
        event(v1::EventType::Page, "Home", None, false);
        event(
            v1::EventType::Track,
            "Product Viewed",
            Some(product_props()),
            false,
        );
        if last && abandons_recently {
            event(
                v1::EventType::Track,
                "Product Added",
                Some(product_props()),
                false,
            );
            continue;
        }
        if rng.chance(0.6) {
            event(
                v1::EventType::Track,
                "Product Added",
                Some(product_props()),
                false,
            );
            if rng.chance(0.7) {
                event(v1::EventType::Identify, "", None, true);
                event(
                    v1::EventType::Track,
                    "Order Completed",
                    Some(fields(&[
                        ("order_id", text(&format!("o-{i}-{session}"))),
                        ("revenue", amount(product.1 as f64 / 100.0)),
                        ("currency", text(s.market.currency)),
                    ])),
                    true,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_covers_every_market() {
        let now = Utc::now();
        let a = Storefront::generate(7, 300, now);
        let b = Storefront::generate(7, 300, now);
        assert_eq!(a.events.len(), b.events.len());
        assert_eq!(a.events[10].message_id, b.events[10].message_id);
        for m in &MARKETS {
            assert!(
                a.shoppers
                    .iter()
                    .any(|s| s.market.jurisdiction == m.jurisdiction),
                "{}",
                m.jurisdiction
            );
        }
        let ids: std::collections::BTreeSet<_> = a.events.iter().map(|e| &e.message_id).collect();
        assert_eq!(ids.len(), a.events.len(), "message ids are unique");
        let carts_last_week = a
            .events
            .iter()
            .filter(|e| {
                e.event == "Product Added"
                    && e.timestamp
                        .as_ref()
                        .is_some_and(|t| t.seconds > (now - Duration::days(7)).timestamp())
            })
            .count();
        assert!(carts_last_week > 0);
        assert!(a.events.iter().any(|e| e.event == "Order Completed"));
    }
}
