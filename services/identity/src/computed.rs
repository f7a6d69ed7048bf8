//! Computed traits: the AIPL stage (awareness, interest, purchase, loyalty) from
//! configurable event definitions, and RFM quintile scores per workspace and currency.
//! No I/O: the store keeps the activity rows ([`Activity`]) and the boundaries, the room
//! recomputes a profile's traits from its rows with [`summarize`] and [`score`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::error::IdentityError;

/// The AIPL stage of a profile; ordered, it never goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum AiplStage {
    #[default]
    None = 0,
    Awareness = 1,
    Interest = 2,
    Purchase = 3,
    Loyalty = 4,
}

impl AiplStage {
    pub fn code(self) -> i16 {
        self as i16
    }
    pub fn from_code(code: i64) -> Self {
        match code {
            1 => AiplStage::Awareness,
            2 => AiplStage::Interest,
            3 => AiplStage::Purchase,
            4 => AiplStage::Loyalty,
            _ => AiplStage::None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            AiplStage::None => "none",
            AiplStage::Awareness => "awareness",
            AiplStage::Interest => "interest",
            AiplStage::Purchase => "purchase",
            AiplStage::Loyalty => "loyalty",
        }
    }
}

/// The kind of an ingested event, as the stage definitions match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

/// Which events reach which stage, from configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AiplRules {
    /// Event types that make a profile aware (any page or screen by default).
    pub awareness_types: Vec<EventKind>,
    /// Track events (by name) that show interest.
    pub interest_events: Vec<String>,
    /// The track event that is an order (its `revenue` feeds RFM); one order = purchase.
    pub order_event: String,
    /// Loyalty: at least this many orders…
    pub loyalty_min_orders: u32,
    /// …or a repeat order within this many days of the previous one (0 disables).
    pub loyalty_repeat_within_days: u32,
}

impl Default for AiplRules {
    fn default() -> Self {
        AiplRules {
            awareness_types: vec![EventKind::Page, EventKind::Screen],
            interest_events: [
                "Product Viewed",
                "Product Added",
                "Product List Viewed",
                "Cart Viewed",
                "Checkout Started",
            ]
            .map(String::from)
            .to_vec(),
            order_event: "Order Completed".into(),
            loyalty_min_orders: 3,
            loyalty_repeat_within_days: 90,
        }
    }
}

impl AiplRules {
    pub fn validate(self) -> Result<Self, IdentityError> {
        if self.order_event.trim().is_empty() {
            return Err(IdentityError::InvalidRules(
                "aipl.order_event must name an event".into(),
            ));
        }
        if self.loyalty_min_orders < 2 {
            return Err(IdentityError::InvalidRules(
                "aipl.loyalty_min_orders must be at least 2".into(),
            ));
        }
        Ok(self)
    }

    /// Whether a track event is the order event.
    pub fn is_order(&self, kind: EventKind, event: &str) -> bool {
        kind == EventKind::Track && event == self.order_event
    }

    /// The stage one event shows on its own (purchase for an order; loyalty needs history).
    pub fn stage_of(&self, kind: EventKind, event: &str) -> AiplStage {
        if self.is_order(kind, event) {
            AiplStage::Purchase
        } else if kind == EventKind::Track && self.interest_events.iter().any(|e| e == event) {
            AiplStage::Interest
        } else if self.awareness_types.contains(&kind) {
            AiplStage::Awareness
        } else {
            AiplStage::None
        }
    }
}

/// One recorded activity of a profile (an order, or the first event of a stage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub occurred_at: DateTime<Utc>,
    pub stage: AiplStage,
    /// `Some((currency, minor units))` for orders.
    pub order: Option<(String, i64)>,
}

/// Order figures of a profile in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RfmFigures {
    pub currency: String,
    pub orders: u64,
    pub monetary_minor: i64,
    pub last_order_micros: i64,
}

/// What a profile's activity adds up to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    pub stage: AiplStage,
    pub orders: u64,
    pub last_order_micros: Option<i64>,
    /// One entry per currency, by currency.
    pub rfm: Vec<RfmFigures>,
}

/// Adds up a profile's activity: the highest stage seen, loyalty from the order history
/// (at least `loyalty_min_orders` orders, or two orders within the repeat window), and
/// the order figures per currency.
pub fn summarize(rules: &AiplRules, activity: &[Activity]) -> Summary {
    let mut stage = activity
        .iter()
        .map(|a| a.stage)
        .max()
        .unwrap_or(AiplStage::None);
    let mut order_times: Vec<i64> = activity
        .iter()
        .filter(|a| a.order.is_some())
        .map(|a| a.occurred_at.timestamp_micros())
        .collect();
    order_times.sort_unstable();
    let window = i64::from(rules.loyalty_repeat_within_days) * 86_400 * 1_000_000;
    let repeat = rules.loyalty_repeat_within_days > 0
        && order_times.windows(2).any(|w| w[1] - w[0] <= window);
    if !order_times.is_empty() {
        stage = stage.max(AiplStage::Purchase);
    }
    if order_times.len() >= rules.loyalty_min_orders as usize || repeat {
        stage = AiplStage::Loyalty;
    }
    let mut per_currency: BTreeMap<&str, RfmFigures> = BTreeMap::new();
    for a in activity {
        // Orders without a revenue count as orders but not in any currency's RFM.
        if let Some((currency, minor)) = &a.order
            && !currency.is_empty()
        {
            let f = per_currency
                .entry(currency.as_str())
                .or_insert_with(|| RfmFigures {
                    currency: currency.clone(),
                    orders: 0,
                    monetary_minor: 0,
                    last_order_micros: i64::MIN,
                });
            f.orders += 1;
            f.monetary_minor = f.monetary_minor.saturating_add(*minor);
            f.last_order_micros = f.last_order_micros.max(a.occurred_at.timestamp_micros());
        }
    }
    Summary {
        stage,
        orders: order_times.len() as u64,
        last_order_micros: order_times.last().copied(),
        rfm: per_currency.into_values().collect(),
    }
}

/// Quintile cut points of one measure: the largest value of each of the first four
/// fifths of the sorted population. A value scores 1 + the number of cuts it exceeds, so
/// the top fifth scores 5 and ties share a score (a population of equal values scores 1).
pub fn quintile_cuts(values: &mut [i64]) -> [i64; 4] {
    if values.is_empty() {
        return [i64::MAX; 4];
    }
    values.sort_unstable();
    let n = values.len();
    std::array::from_fn(|k| {
        // ceil((k + 1) · n / 5) − 1, at least 0.
        let rank = ((k + 1) * n).div_ceil(5).saturating_sub(1);
        values[rank.min(n - 1)]
    })
}

/// The quintile score (1..=5) of a value against cuts.
pub fn score(value: i64, cuts: &[i64; 4]) -> u8 {
    1 + cuts.iter().filter(|c| value > **c).count() as u8
}

/// RFM cut points of one workspace and currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RfmBoundaries {
    pub recency: [i64; 4],
    pub frequency: [i64; 4],
    pub monetary: [i64; 4],
    pub population: u64,
    pub computed_at: DateTime<Utc>,
}

impl RfmBoundaries {
    /// Cut points over a population of (last order micros, orders, monetary) figures.
    pub fn compute(population: &[(i64, i64, i64)], at: DateTime<Utc>) -> Self {
        let mut r: Vec<i64> = population.iter().map(|p| p.0).collect();
        let mut f: Vec<i64> = population.iter().map(|p| p.1).collect();
        let mut m: Vec<i64> = population.iter().map(|p| p.2).collect();
        RfmBoundaries {
            recency: quintile_cuts(&mut r),
            frequency: quintile_cuts(&mut f),
            monetary: quintile_cuts(&mut m),
            population: population.len() as u64,
            computed_at: at,
        }
    }

    /// Scores (recency, frequency, monetary) of one profile's figures.
    pub fn scores(&self, f: &RfmFigures) -> (u8, u8, u8) {
        (
            score(f.last_order_micros, &self.recency),
            score(i64::try_from(f.orders).unwrap_or(i64::MAX), &self.frequency),
            score(f.monetary_minor, &self.monetary),
        )
    }

    /// Whether the cut points should be recomputed for a population of `now_population`:
    /// it grew or shrank by a quarter, or is small (< 100) and changed, or an hour passed.
    /// Amortized, each profile's first order costs O(1) recomputation work.
    pub fn stale(&self, now_population: u64, now: DateTime<Utc>) -> bool {
        let old = self.population;
        let changed_by_quarter = now_population.saturating_mul(4) >= old.saturating_mul(5)
            || now_population.saturating_mul(5) <= old.saturating_mul(4);
        (now_population != old && (old < 100 || changed_by_quarter))
            || (now - self.computed_at) > chrono::Duration::hours(1)
    }

    pub fn encode(cuts: &[i64; 4]) -> String {
        cuts.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn decode(text: &str) -> Option<[i64; 4]> {
        let v: Vec<i64> = text
            .split(',')
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        v.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + day * 86_400, 0).unwrap()
    }

    fn order(day: i64, currency: &str, minor: i64) -> Activity {
        Activity {
            occurred_at: at(day),
            stage: AiplStage::Purchase,
            order: Some((currency.into(), minor)),
        }
    }

    #[test]
    fn quintiles_split_a_population_in_fifths() {
        let mut v: Vec<i64> = (1..=10).collect();
        let cuts = quintile_cuts(&mut v);
        assert_eq!(cuts, [2, 4, 6, 8]);
        let scores: Vec<u8> = (1..=10).map(|x| score(x, &cuts)).collect();
        assert_eq!(scores, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
        // Equal values share the lowest score; nothing exceeds the cuts.
        let mut same = vec![7; 50];
        let cuts = quintile_cuts(&mut same);
        assert_eq!(score(7, &cuts), 1);
        assert_eq!(score(8, &cuts), 5);
        // Unsorted input, 100 values: 20 per score.
        let mut v: Vec<i64> = (0..100).rev().collect();
        let cuts = quintile_cuts(&mut v);
        let mut per = [0; 6];
        for x in 0..100 {
            per[score(x, &cuts) as usize] += 1;
        }
        assert_eq!(per, [0, 20, 20, 20, 20, 20]);
        // No population: everything scores 1.
        assert_eq!(score(1_000, &quintile_cuts(&mut [])), 1);
    }

    #[test]
    fn boundaries_round_trip_and_go_stale_by_growth() {
        let b = RfmBoundaries::compute(&[(1, 1, 100), (2, 2, 200)], at(0));
        assert_eq!(
            RfmBoundaries::decode(&RfmBoundaries::encode(&b.recency)),
            Some(b.recency)
        );
        assert_eq!(RfmBoundaries::decode("1,2,3"), None);
        assert!(!b.stale(2, at(0)));
        assert!(b.stale(3, at(0)), "small populations recompute on change");
        let big = RfmBoundaries {
            population: 1_000,
            ..b.clone()
        };
        assert!(!big.stale(1_100, at(0)));
        assert!(big.stale(1_250, at(0)));
        assert!(big.stale(1_000, at(1)), "an hour passed");
    }

    #[test]
    fn aipl_stages_follow_the_configured_events() {
        let r = AiplRules::default().validate().unwrap();
        assert_eq!(r.stage_of(EventKind::Page, ""), AiplStage::Awareness);
        assert_eq!(r.stage_of(EventKind::Screen, "Home"), AiplStage::Awareness);
        assert_eq!(
            r.stage_of(EventKind::Track, "Product Viewed"),
            AiplStage::Interest
        );
        assert_eq!(
            r.stage_of(EventKind::Track, "Order Completed"),
            AiplStage::Purchase
        );
        assert_eq!(r.stage_of(EventKind::Track, "Signed Up"), AiplStage::None);
        assert_eq!(r.stage_of(EventKind::Identify, ""), AiplStage::None);
        let custom = AiplRules {
            interest_events: vec!["Wishlist Added".into()],
            ..AiplRules::default()
        };
        assert_eq!(
            custom.stage_of(EventKind::Track, "Wishlist Added"),
            AiplStage::Interest
        );
        assert_eq!(
            custom.stage_of(EventKind::Track, "Product Viewed"),
            AiplStage::None
        );
        assert!(
            AiplRules {
                loyalty_min_orders: 1,
                ..AiplRules::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn loyalty_needs_enough_orders_or_a_repeat_within_the_window() {
        let r = AiplRules::default();
        let aware = Activity {
            occurred_at: at(0),
            stage: AiplStage::Awareness,
            order: None,
        };
        assert_eq!(
            summarize(&r, std::slice::from_ref(&aware)).stage,
            AiplStage::Awareness
        );
        assert_eq!(summarize(&r, &[]).stage, AiplStage::None);
        // One order: purchase.
        let s = summarize(&r, &[aware.clone(), order(1, "EUR", 1_000)]);
        assert_eq!(s.stage, AiplStage::Purchase);
        assert_eq!(s.orders, 1);
        // Two orders 200 days apart: still purchase; 60 days apart: loyalty.
        let far = summarize(&r, &[order(0, "EUR", 1), order(200, "EUR", 1)]);
        assert_eq!(far.stage, AiplStage::Purchase);
        let near = summarize(&r, &[order(200, "EUR", 1), order(140, "EUR", 1)]);
        assert_eq!(near.stage, AiplStage::Loyalty);
        // Three orders, far apart: loyalty by count.
        let many = summarize(
            &r,
            &[
                order(0, "EUR", 1),
                order(200, "EUR", 1),
                order(400, "EUR", 1),
            ],
        );
        assert_eq!(many.stage, AiplStage::Loyalty);
        // Window disabled.
        let no_window = AiplRules {
            loyalty_repeat_within_days: 0,
            ..AiplRules::default()
        };
        assert_eq!(
            summarize(&no_window, &[order(0, "EUR", 1), order(1, "EUR", 1)]).stage,
            AiplStage::Purchase
        );
    }

    #[test]
    fn order_figures_are_kept_per_currency() {
        let r = AiplRules::default();
        let s = summarize(
            &r,
            &[
                order(3, "EUR", 1_500),
                order(1, "EUR", 500),
                order(2, "GBP", 900),
            ],
        );
        assert_eq!(s.orders, 3);
        assert_eq!(s.last_order_micros, Some(at(3).timestamp_micros()));
        assert_eq!(s.rfm.len(), 2);
        assert_eq!(s.rfm[0].currency, "EUR");
        assert_eq!(s.rfm[0].orders, 2);
        assert_eq!(s.rfm[0].monetary_minor, 2_000);
        assert_eq!(s.rfm[0].last_order_micros, at(3).timestamp_micros());
        assert_eq!(s.rfm[1].currency, "GBP");
        assert_eq!(s.rfm[1].monetary_minor, 900);
    }
}
