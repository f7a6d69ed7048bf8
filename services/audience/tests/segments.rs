//! Segment rules compiled to SQL give the same members on PostgreSQL and SQLite: windows in
//! the workspace's local days, spend per currency, computed traits, regions, identifier
//! presence, NOT and OR; full recomputes add and drop exactly the right profiles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use meridian_audience::segment::parse;
use meridian_audience::store::{AudienceStore, ProfileRow, SegmentRow, TraitValue, WriteVia};
use meridian_store::Store;
use sqlx::{PgPool, SqlitePool};

const WS: &str = "ws_segments";
const TODAY: i64 = 20_500;

fn profile(id: &str, region: &str) -> ProfileRow {
    ProfileRow {
        profile_id: id.into(),
        home_region: region.into(),
        jurisdiction: region.into(),
        age_band: "adult".into(),
    }
}

/// p1 DE viewed 2 days ago, did not buy; p2 FR viewed and bought today (250 EUR);
/// p3 DE viewed 8 days ago only; p4 US bought 210 EUR over 60 and 100 days ago (only 110
/// within 90); p5 DE no events, champion, email.
async fn seed(store: &AudienceStore) {
    let now = Utc::now();
    let email = vec!["email".to_owned()];
    store
        .put_profile(
            WriteVia::Pool,
            WS,
            &profile("p1", "DE"),
            &[("aipl_stage".into(), TraitValue::Text("interest".into()))],
            &email,
            now,
        )
        .await
        .unwrap();
    store
        .put_profile(WriteVia::Pool, WS, &profile("p2", "FR"), &[], &[], now)
        .await
        .unwrap();
    store
        .put_profile(
            WriteVia::Pool,
            WS,
            &profile("p3", "DE"),
            &[("rfm_score".into(), TraitValue::Number(2.0))],
            &[],
            now,
        )
        .await
        .unwrap();
    store
        .put_profile(
            WriteVia::Pool,
            WS,
            &profile("p4", "US"),
            &[("rfm_score".into(), TraitValue::Number(4.0))],
            &email,
            now,
        )
        .await
        .unwrap();
    store
        .put_profile(
            WriteVia::Pool,
            WS,
            &profile("p5", "DE"),
            &[
                ("rfm_score".into(), TraitValue::Number(5.0)),
                ("rfm_segment".into(), TraitValue::Text("champions".into())),
            ],
            &email,
            now,
        )
        .await
        .unwrap();
    // Another workspace's profile that matches everything must never show up.
    store
        .put_profile(
            WriteVia::Pool,
            "ws_other",
            &profile("p1", "DE"),
            &[],
            &email,
            now,
        )
        .await
        .unwrap();
    store
        .add_event_day("ws_other", "p1", "Product Viewed", TODAY, "", 1, 0)
        .await
        .unwrap();

    store
        .add_event_day(WS, "p1", "Product Viewed", TODAY - 2, "", 3, 0)
        .await
        .unwrap();
    store
        .add_event_day(WS, "p2", "Product Viewed", TODAY, "", 1, 0)
        .await
        .unwrap();
    store
        .add_event_day(WS, "p2", "Order Completed", TODAY, "EUR", 1, 25_000)
        .await
        .unwrap();
    store
        .add_event_day(WS, "p3", "Product Viewed", TODAY - 7, "", 1, 0)
        .await
        .unwrap();
    store
        .add_event_day(WS, "p4", "Order Completed", TODAY - 60, "EUR", 1, 11_000)
        .await
        .unwrap();
    store
        .add_event_day(WS, "p4", "Order Completed", TODAY - 100, "EUR", 1, 10_000)
        .await
        .unwrap();
    // Same day twice: counts add up.
    store
        .add_event_day(WS, "p4", "Order Completed", TODAY - 60, "USD", 1, 99_999)
        .await
        .unwrap();
}

async fn ids(store: &AudienceStore, definition: &str) -> Vec<String> {
    let rule = parse(definition).unwrap();
    let preview = store.preview(WS, &rule, TODAY, 100).await.unwrap();
    assert_eq!(preview.count as usize, preview.sample.len());
    preview.sample.into_iter().map(|p| p.profile_id).collect()
}

async fn rules_select_the_right_profiles(store: AudienceStore) {
    seed(&store).await;
    let carted_not_bought = r#"{"all": [
        {"event": {"name": "Product Viewed", "within_days": 7}},
        {"not": {"event": {"name": "Order Completed", "within_days": 7}}}]}"#;
    assert_eq!(ids(&store, carted_not_bought).await, ["p1"]);
    // The 7-day window is today and the 6 days before: p3 (7 days ago) is out, in at 8.
    assert_eq!(
        ids(
            &store,
            r#"{"event": {"name": "Product Viewed", "within_days": 8}}"#
        )
        .await,
        ["p1", "p2", "p3"]
    );
    assert_eq!(
        ids(
            &store,
            r#"{"event": {"name": "Product Viewed", "within_days": 7, "min_count": 2}}"#
        )
        .await,
        ["p1"]
    );
    assert_eq!(
        ids(
            &store,
            r#"{"spend": {"currency": "EUR", "at_least": "200", "within_days": 90}}"#
        )
        .await,
        ["p2"]
    );
    assert_eq!(
        ids(
            &store,
            r#"{"spend": {"currency": "EUR", "at_least": "200", "within_days": 101}}"#
        )
        .await,
        ["p2", "p4"]
    );
    assert_eq!(
        ids(&store, r#"{"trait": {"name": "rfm_score", "gte": 4}}"#).await,
        ["p4", "p5"]
    );
    assert_eq!(
        ids(
            &store,
            r#"{"trait": {"name": "rfm_segment", "ne": "champions"}}"#
        )
        .await,
        ["p1", "p2", "p3", "p4"]
    );
    assert_eq!(
        ids(
            &store,
            r#"{"trait": {"name": "aipl_stage", "eq": "interest"}}"#
        )
        .await,
        ["p1"]
    );
    assert_eq!(
        ids(&store, r#"{"any": [{"region": ["FR"]}, {"all": [{"region": ["DE"]}, {"has_identifier": "email"}]}]}"#).await,
        ["p1", "p2", "p5"]
    );
    let rule = parse(r#"{"region": ["DE", "US"]}"#).unwrap();
    let preview = store.preview(WS, &rule, TODAY, 1).await.unwrap();
    assert_eq!(preview.count, 4);
    assert_eq!(preview.sample.len(), 1);
    assert_eq!(
        preview.count_by_region,
        vec![("DE".to_owned(), 3), ("US".to_owned(), 1)]
    );
}

async fn recompute_adds_and_drops_members(store: AudienceStore) {
    seed(&store).await;
    let now = Utc::now();
    let definition = r#"{"trait": {"name": "rfm_score", "gte": 4}}"#;
    store
        .insert_segment(
            WS,
            &SegmentRow {
                segment_id: "s1".into(),
                name: "loyal".into(),
                definition: definition.into(),
                purpose: "marketing.advertising.third_party.targeted".into(),
                recompute_schedule: "0 2 * * *".into(),
                version: 1,
                created_at: now,
                updated_at: now,
            },
        )
        .await
        .unwrap();
    let rule = parse(definition).unwrap();
    let (joined, left) = store
        .recompute_members(WS, "s1", &rule, TODAY, now)
        .await
        .unwrap();
    assert_eq!(
        (joined, left),
        (vec!["p4".to_owned(), "p5".to_owned()], vec![])
    );
    // Idempotent.
    let (joined, left) = store
        .recompute_members(WS, "s1", &rule, TODAY, now)
        .await
        .unwrap();
    assert!(joined.is_empty() && left.is_empty());
    // p4's score drops, p3's rises.
    store
        .put_profile(
            WriteVia::Pool,
            WS,
            &profile("p4", "US"),
            &[("rfm_score".into(), TraitValue::Number(1.0))],
            &[],
            now,
        )
        .await
        .unwrap();
    store
        .put_profile(
            WriteVia::Pool,
            WS,
            &profile("p3", "DE"),
            &[("rfm_score".into(), TraitValue::Number(4.5))],
            &[],
            now,
        )
        .await
        .unwrap();
    let (joined, left) = store
        .recompute_members(WS, "s1", &rule, TODAY, now)
        .await
        .unwrap();
    assert_eq!(
        (joined, left),
        (vec!["p3".to_owned()], vec!["p4".to_owned()])
    );
    let members = store.members(WS, "s1", "", 10).await.unwrap();
    let ids: Vec<&str> = members
        .iter()
        .map(|m| m.profile.profile_id.as_str())
        .collect();
    assert_eq!(ids, ["p3", "p5"]);
    let page = store.members(WS, "s1", "p3", 10).await.unwrap();
    assert_eq!(page.len(), 1);
    let segment = store.segment(WS, "s1").await.unwrap().unwrap();
    assert_eq!(segment.version, 1);
    let mut next = segment.clone();
    next.version = 2;
    assert!(store.update_segment(WS, &next, 1).await.unwrap());
    assert!(
        !store.update_segment(WS, &next, 1).await.unwrap(),
        "stale version refused"
    );
}

macro_rules! per_backend {
    ($($check:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/postgres")]
                async fn $check(pool: PgPool) {
                    super::$check(AudienceStore::new(Store::Postgres(pool))).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/sqlite")]
                async fn $check(pool: SqlitePool) {
                    super::$check(AudienceStore::new(Store::Sqlite(pool))).await;
                }
            )*
        }
    };
}

per_backend!(
    rules_select_the_right_profiles,
    recompute_adds_and_drops_members
);
