//! Scheduled full recomputes: profiles whose events age out of a window leave at the next
//! scheduled run (in the workspace's time zone), each slot runs once across replicas and
//! restarts, and schedules are checked when a segment is saved. On PostgreSQL and SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, Utc};
use meridian_audience::AudienceRoom;
use meridian_audience::error::AudienceError;
use meridian_audience::room::{ScheduledPass, SegmentInput};
use meridian_audience::segment::local_day;
use meridian_audience::store::{AudienceStore, ProfileRow, SegmentRow, WriteVia};
use meridian_store::Store;
use sqlx::{PgPool, SqlitePool};

const WS: &str = "ws_schedule";
const CARTED_LAST_7_DAYS: &str = r#"{"event": {"name": "Product Added", "within_days": 7}}"#;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

async fn paris_workspace(store: &AudienceStore) {
    const INSERT: &str = "INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ($1, 'eu', 'Europe/Paris')";
    match store.backend() {
        Store::Postgres(pool) => {
            sqlx::query(INSERT).bind(WS).execute(pool).await.unwrap();
        }
        Store::Sqlite(pool) => {
            sqlx::query(INSERT).bind(WS).execute(pool).await.unwrap();
        }
    }
}

async fn member_ids(store: &AudienceStore, segment_id: &str) -> Vec<String> {
    store
        .members(WS, segment_id, "", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.profile.profile_id)
        .collect()
}

async fn next_slot(
    store: &AudienceStore,
    now: DateTime<Utc>,
) -> Vec<(String, Option<DateTime<Utc>>)> {
    store
        .due_segments(now)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.segment_id, s.next_recompute_at))
        .collect()
}

async fn aged_out_events_leave_at_the_next_scheduled_recompute(store: AudienceStore) {
    paris_workspace(&store).await;
    let zone: chrono_tz::Tz = "Europe/Paris".parse().unwrap();
    // Friday 2026-03-20, 13:00 in Paris.
    let created = at("2026-03-20T12:00:00Z");
    let today = local_day(created, zone);
    for (id, carted_days_ago) in [("p_old", Some(6)), ("p_recent", Some(1)), ("p_never", None)] {
        store
            .put_profile(
                WriteVia::Pool,
                WS,
                &ProfileRow {
                    profile_id: id.into(),
                    home_region: "FR".into(),
                    jurisdiction: "EU-FR".into(),
                    age_band: "adult".into(),
                },
                &[],
                &[],
                created,
            )
            .await
            .unwrap();
        if let Some(days) = carted_days_ago {
            store
                .add_event_day(WS, id, "Product Added", today - days, "", 1, 0)
                .await
                .unwrap();
        }
    }
    store
        .insert_segment(
            WS,
            &SegmentRow {
                segment_id: "s_carted".into(),
                name: "carted this week".into(),
                definition: CARTED_LAST_7_DAYS.into(),
                purpose: "marketing.advertising.third_party.targeted".into(),
                recompute_schedule: "0 3 * * *".into(),
                version: 1,
                created_at: created,
                updated_at: created,
            },
        )
        .await
        .unwrap();
    let rule = meridian_audience::segment::parse(CARTED_LAST_7_DAYS).unwrap();
    store
        .recompute_members(WS, "s_carted", &rule, today, created)
        .await
        .unwrap();
    assert_eq!(member_ids(&store, "s_carted").await, ["p_old", "p_recent"]);

    let room = AudienceRoom::new(store.clone());
    // First sight: the next slot is planned (03:00 in Paris is 02:00 UTC in March), no run.
    assert_eq!(
        room.recompute_due(created).await.unwrap(),
        ScheduledPass {
            planned: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        next_slot(&store, at("2030-01-01T00:00:00Z")).await,
        [("s_carted".to_owned(), Some(at("2026-03-21T02:00:00Z")))]
    );
    // Not due yet: nothing happens.
    assert_eq!(
        room.recompute_due(at("2026-03-21T01:59:59Z"))
            .await
            .unwrap(),
        ScheduledPass::default()
    );
    assert_eq!(member_ids(&store, "s_carted").await, ["p_old", "p_recent"]);

    // Nothing ran for two days: the missed slot runs once, on Sunday 2026-03-22 at 03:30
    // in Paris, when p_old's cart is 8 local days old and out of the 7-day window.
    let late = at("2026-03-22T02:30:00Z");
    assert_eq!(local_day(late, zone) - (today - 6), 8);
    assert_eq!(
        room.recompute_due(late).await.unwrap(),
        ScheduledPass {
            recomputed: 1,
            planned: 0,
            changed: 1,
            failed: 0,
        }
    );
    assert_eq!(member_ids(&store, "s_carted").await, ["p_recent"]);
    // The slot moved to the next 03:00 in Paris, after `late`.
    assert_eq!(
        next_slot(&store, at("2030-01-01T00:00:00Z")).await,
        [("s_carted".to_owned(), Some(at("2026-03-23T02:00:00Z")))]
    );

    // A restart or another replica at the same instant finds nothing left to run.
    let replica = AudienceRoom::new(store.clone());
    assert_eq!(
        replica.recompute_due(late).await.unwrap(),
        ScheduledPass::default()
    );
    // A claim from a stale view of the slot loses.
    assert!(
        !store
            .claim_recompute_slot(
                WS,
                "s_carted",
                "0 3 * * *",
                Some(at("2026-03-21T02:00:00Z")),
                at("2026-03-23T02:00:00Z"),
            )
            .await
            .unwrap()
    );

    // Two replicas racing for the next slot: exactly one recomputes.
    let slot = at("2026-03-23T02:00:00Z") + Duration::seconds(5);
    let (a, b) = tokio::join!(room.recompute_due(slot), replica.recompute_due(slot));
    assert_eq!(a.unwrap().recomputed + b.unwrap().recomputed, 1);

    // A changed schedule is planned afresh, from when the scheduler next looks.
    room.update_segment(
        WS,
        "s_carted",
        SegmentInput {
            recompute_schedule: "30 4 * * 1".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        room.recompute_due(slot).await.unwrap(),
        ScheduledPass {
            planned: 1,
            ..Default::default()
        }
    );
    // Monday 2026-03-23 04:30 in Paris.
    assert_eq!(
        next_slot(&store, at("2030-01-01T00:00:00Z")).await,
        [("s_carted".to_owned(), Some(at("2026-03-23T03:30:00Z")))]
    );
}

async fn schedules_are_checked_when_saved(store: AudienceStore) {
    paris_workspace(&store).await;
    let room = AudienceRoom::new(store.clone());
    let input = |schedule: &str| SegmentInput {
        name: "carted".into(),
        definition: CARTED_LAST_7_DAYS.into(),
        purpose: "marketing.advertising.third_party.targeted".into(),
        recompute_schedule: schedule.into(),
    };
    for bad in ["0 3 * *", "0 25 * * *", "0 0 30 2 *", "every day"] {
        match room.create_segment(WS, input(bad)).await {
            Err(AudienceError::Invalid { field, .. }) => {
                assert_eq!(field, "recompute_schedule", "{bad}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    let saved = room
        .create_segment(WS, input("*/30 8-20 * * 1-5"))
        .await
        .unwrap();
    match room
        .update_segment(
            WS,
            &saved.segment_id,
            SegmentInput {
                recompute_schedule: "61 * * * *".into(),
                ..Default::default()
            },
        )
        .await
    {
        Err(AudienceError::Invalid { field, .. }) => assert_eq!(field, "recompute_schedule"),
        other => panic!("{other:?}"),
    }
    // A segment without a schedule is never due.
    room.create_segment(WS, input("")).await.unwrap();
    let due = store
        .due_segments(at("2100-01-01T00:00:00Z"))
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].segment_id, saved.segment_id);

    // A segment that cannot be recomputed (a definition that no longer reads) fails on
    // its own: the other due segments still run, and its slot moves on.
    let now = Utc::now();
    store
        .insert_segment(
            WS,
            &SegmentRow {
                segment_id: "s_broken".into(),
                name: "broken".into(),
                definition: "{".into(),
                purpose: "marketing.advertising.third_party.targeted".into(),
                recompute_schedule: "0 3 * * *".into(),
                version: 1,
                created_at: now,
                updated_at: now,
            },
        )
        .await
        .unwrap();
    assert_eq!(room.recompute_due(now).await.unwrap().planned, 2);
    let later = at("2100-01-01T00:00:00Z");
    assert_eq!(
        room.recompute_due(later).await.unwrap(),
        ScheduledPass {
            recomputed: 1,
            failed: 1,
            ..Default::default()
        }
    );
    assert!(store.due_segments(later).await.unwrap().is_empty());
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
    aged_out_events_leave_at_the_next_scheduled_recompute,
    schedules_are_checked_when_saved
);
