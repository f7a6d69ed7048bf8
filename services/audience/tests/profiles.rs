//! The read model follows bus events: profile changes update membership of every segment
//! incrementally, accepted events count once on the workspace's local day, merges move
//! events to the survivor. Same checks on PostgreSQL and SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{TimeZone, Utc};
use meridian_audience::AudienceRoom;
use meridian_audience::profiles::{ProfileSource, ProfileView, SourceError};
use meridian_audience::room::SegmentInput;
use meridian_audience::store::{AudienceStore, ProfileRow, TraitValue};
use meridian_proto::bus::v1::{EventAccepted, ProfileChanged, SealedIdentifier};
use meridian_proto::v1::EventType;
use meridian_store::Store;
use sqlx::{PgPool, SqlitePool};

const WS: &str = "ws_profiles";

#[derive(Default)]
struct Profiles {
    views: Mutex<HashMap<String, ProfileView>>,
    /// blind index → profile
    identifiers: Mutex<HashMap<Vec<u8>, String>>,
}

impl Profiles {
    fn set(&self, id: &str, region: &str, rfm: f64) {
        self.views.lock().unwrap().insert(
            id.into(),
            ProfileView {
                profile: ProfileRow {
                    profile_id: id.into(),
                    home_region: region.into(),
                    jurisdiction: region.into(),
                    age_band: "adult".into(),
                },
                identifier_types: vec!["email".into()],
                computed_traits: vec![("rfm_score".into(), TraitValue::Number(rfm))],
            },
        );
    }
}

#[async_trait::async_trait]
impl ProfileSource for Profiles {
    async fn profile(&self, _: &str, id: &str) -> Result<Option<ProfileView>, SourceError> {
        Ok(self.views.lock().unwrap().get(id).cloned())
    }
    async fn profile_of(&self, _: &str, index: &[u8]) -> Result<Option<String>, SourceError> {
        Ok(self.identifiers.lock().unwrap().get(index).cloned())
    }
}

fn changed(id: &str, merged: &[&str]) -> ProfileChanged {
    ProfileChanged {
        workspace_id: WS.into(),
        profile_id: id.into(),
        merged_profile_ids: merged.iter().map(|m| (*m).to_owned()).collect(),
        changed: vec!["computed_traits".into()],
        ..Default::default()
    }
}

fn viewed(event_id: &str, index: u8, at: chrono::DateTime<Utc>) -> EventAccepted {
    EventAccepted {
        workspace_id: WS.into(),
        event_id: event_id.into(),
        r#type: EventType::Track as i32,
        event: "Product Viewed".into(),
        timestamp: Some(prost_types::Timestamp {
            seconds: at.timestamp(),
            nanos: 0,
        }),
        identifiers: vec![SealedIdentifier {
            blind_index: vec![index; 32],
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn read_model_follows_the_bus(store: Store) {
    // The workspace counts days in Paris.
    let sql = "INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ($1, 'eu', 'Europe/Paris')";
    match &store {
        Store::Postgres(p) => sqlx::query(sql)
            .bind(WS)
            .execute(p)
            .await
            .map(|_| ())
            .unwrap(),
        Store::Sqlite(p) => sqlx::query(sql)
            .bind(WS)
            .execute(p)
            .await
            .map(|_| ())
            .unwrap(),
    }
    let room = AudienceRoom::new(AudienceStore::new(store));
    let loyal = room
        .create_segment(
            WS,
            SegmentInput {
                name: "loyal".into(),
                definition: r#"{"trait": {"name": "rfm_score", "gte": 4}}"#.into(),
                purpose: "marketing.advertising.third_party.targeted".into(),
                recompute_schedule: String::new(),
            },
        )
        .await
        .unwrap();
    let members = |room: AudienceRoom, id: String| async move {
        room.list_members(WS, &id, 100, "")
            .await
            .unwrap()
            .0
            .into_iter()
            .map(|m| m.profile.profile_id)
            .collect::<Vec<_>>()
    };
    let source = Profiles::default();
    source.set("pa", "DE", 5.0);
    source.set("pb", "FR", 1.0);
    let now = Utc::now();
    room.apply_profile_changed(&source, &changed("pa", &[]), now)
        .await
        .unwrap();
    room.apply_profile_changed(&source, &changed("pb", &[]), now)
        .await
        .unwrap();
    assert_eq!(
        members(room.clone(), loyal.segment_id.clone()).await,
        ["pa"]
    );

    // pb's score rises: it joins; pa's falls: it leaves. Incrementally, per profile.
    source.set("pb", "FR", 4.5);
    room.apply_profile_changed(&source, &changed("pb", &[]), now)
        .await
        .unwrap();
    source.set("pa", "DE", 2.0);
    room.apply_profile_changed(&source, &changed("pa", &[]), now)
        .await
        .unwrap();
    assert_eq!(
        members(room.clone(), loyal.segment_id.clone()).await,
        ["pb"]
    );

    // Events: 23:30 UTC is the next day in Paris; a redelivery counts once.
    source
        .identifiers
        .lock()
        .unwrap()
        .insert(vec![1; 32], "pa".into());
    source
        .identifiers
        .lock()
        .unwrap()
        .insert(vec![2; 32], "pb".into());
    let late = Utc.with_ymd_and_hms(2026, 3, 1, 23, 30, 0).unwrap();
    assert!(
        room.apply_event_accepted(&source, &viewed("e1", 1, late))
            .await
            .unwrap()
    );
    assert!(
        !room
            .apply_event_accepted(&source, &viewed("e1", 1, late))
            .await
            .unwrap()
    );
    assert!(
        room.apply_event_accepted(&source, &viewed("e2", 2, late))
            .await
            .unwrap()
    );
    assert!(
        !room
            .apply_event_accepted(&source, &viewed("e3", 9, late))
            .await
            .unwrap(),
        "unknown identifier"
    );
    let paris_day = meridian_audience::segment::local_day(late, chrono_tz::Europe::Paris);
    assert_eq!(
        paris_day,
        meridian_audience::segment::local_day(late, chrono_tz::UTC) + 1
    );
    let rule = meridian_audience::segment::parse(
        r#"{"event": {"name": "Product Viewed", "within_days": 1, "min_count": 2}}"#,
    )
    .unwrap();
    let preview = room
        .store()
        .preview(WS, &rule, paris_day, 10)
        .await
        .unwrap();
    assert_eq!(preview.count, 0, "one view each so far");

    // pb merges into pa: pb's view moves to pa (2 views that day), pb leaves every segment.
    source.views.lock().unwrap().remove("pb");
    room.apply_profile_changed(&source, &changed("pa", &["pb"]), now)
        .await
        .unwrap();
    let preview = room
        .store()
        .preview(WS, &rule, paris_day, 10)
        .await
        .unwrap();
    assert_eq!(
        preview
            .sample
            .iter()
            .map(|p| p.profile_id.as_str())
            .collect::<Vec<_>>(),
        ["pa"]
    );
    assert!(
        members(room.clone(), loyal.segment_id.clone())
            .await
            .is_empty()
    );
}

#[sqlx::test(migrations = "../../migrations/postgres")]
async fn postgres_read_model_follows_the_bus(pool: PgPool) {
    read_model_follows_the_bus(Store::Postgres(pool)).await;
}

#[sqlx::test(migrations = "../../migrations/sqlite")]
async fn sqlite_read_model_follows_the_bus(pool: SqlitePool) {
    read_model_follows_the_bus(Store::Sqlite(pool)).await;
}
