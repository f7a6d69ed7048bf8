//! The read model follows bus events: profile changes update membership of every segment
//! incrementally, accepted events count once on the workspace's local day, merges move
//! events to the survivor. Same checks on PostgreSQL and SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{TimeZone, Utc};
use meridian_audience::AudienceRoom;
use meridian_audience::profiles::{EventCounted, ProfileSource, ProfileView, SourceError};
use meridian_audience::room::SegmentInput;
use meridian_audience::store::{AudienceStore, ProfileRow, TraitValue, WriteVia};
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
    room.apply_profile_changed(WriteVia::Pool, &source, &changed("pa", &[]), now)
        .await
        .unwrap();
    room.apply_profile_changed(WriteVia::Pool, &source, &changed("pb", &[]), now)
        .await
        .unwrap();
    assert_eq!(
        members(room.clone(), loyal.segment_id.clone()).await,
        ["pa"]
    );

    // pb's score rises: it joins; pa's falls: it leaves. Incrementally, per profile.
    source.set("pb", "FR", 4.5);
    room.apply_profile_changed(WriteVia::Pool, &source, &changed("pb", &[]), now)
        .await
        .unwrap();
    source.set("pa", "DE", 2.0);
    room.apply_profile_changed(WriteVia::Pool, &source, &changed("pa", &[]), now)
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
    let apply = |event: EventAccepted| {
        let room = room.clone();
        let source = &source;
        async move {
            room.apply_event_accepted(WriteVia::Pool, source, &event)
                .await
                .unwrap()
        }
    };
    assert_eq!(apply(viewed("e1", 1, late)).await, EventCounted::Counted);
    assert_eq!(
        apply(viewed("e1", 1, late)).await,
        EventCounted::Skipped,
        "a redelivery"
    );
    assert_eq!(apply(viewed("e2", 2, late)).await, EventCounted::Counted);
    assert_eq!(
        apply(viewed("e3", 9, late)).await,
        EventCounted::ProfileNotYetKnown,
        "an identifier identity has not stitched (yet)"
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
    room.apply_profile_changed(WriteVia::Pool, &source, &changed("pa", &["pb"]), now)
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

/// The consumer through the in-process bus: its updates commit in the bus's transaction,
/// so on SQLite (one write lock, held by that transaction) they neither wait nor deadlock,
/// and a redelivered event changes nothing.
async fn consumer_applies_profile_changes_through_the_bus(store: Store) {
    use std::sync::Arc;

    use meridian_audience::profiles::ReadModelConsumer;
    use meridian_bus::{Bus, LocalBus, OutboxEvent, Subscription};
    use prost::Message;

    // a workspace id the bus accepts as a subject token
    const WS: &str = "ws-bus";
    let room = AudienceRoom::new(AudienceStore::new(store.clone()));
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
    let source = Arc::new(Profiles::default());
    source.set("pa", "DE", 5.0);
    source.set("pb", "FR", 1.0);
    let event = |id: &str| {
        OutboxEvent::new(
            WS.parse().unwrap(),
            "profile".parse().unwrap(),
            id,
            ProfileChanged {
                workspace_id: WS.into(),
                ..changed(id, &[])
            }
            .encode_to_vec(),
        )
    };
    let events = [event("pa"), event("pb")];
    match &store {
        Store::Postgres(p) => {
            let mut tx = p.begin().await.unwrap();
            meridian_bus::enqueue_all(&mut *tx, &events).await.unwrap();
            tx.commit().await.unwrap();
        }
        Store::Sqlite(p) => {
            let mut tx = p.begin().await.unwrap();
            meridian_bus::enqueue_all(&mut *tx, &events).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
    let bus = LocalBus::new(store.clone());
    assert_eq!(bus.relay_batch(100).await.unwrap(), 2);
    let consumer = ReadModelConsumer {
        room: room.clone(),
        source: source.clone(),
    };
    let subscription = Subscription::new(
        "audience-profiles".parse().unwrap(),
        "profile".parse().unwrap(),
    );
    let stats = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        bus.consume_batch(&subscription, &consumer),
    )
    .await
    .expect("the consumer finished without waiting on a lock")
    .unwrap();
    assert_eq!(stats.applied, 2, "{stats:?}");
    let members = room
        .list_members(WS, &loyal.segment_id, 100, "")
        .await
        .unwrap()
        .0;
    assert_eq!(
        members
            .iter()
            .map(|m| m.profile.profile_id.as_str())
            .collect::<Vec<_>>(),
        ["pa"]
    );
    // nothing left to do: the position moved in the same transaction as the effect
    let again = bus.consume_batch(&subscription, &consumer).await.unwrap();
    assert!(again.is_idle(), "{again:?}");
}

#[sqlx::test(migrations = "../../migrations/postgres")]
async fn postgres_consumer_applies_profile_changes_through_the_bus(pool: PgPool) {
    consumer_applies_profile_changes_through_the_bus(Store::Postgres(pool)).await;
}

#[sqlx::test(migrations = "../../migrations/sqlite")]
async fn sqlite_consumer_applies_profile_changes_through_the_bus(pool: SqlitePool) {
    consumer_applies_profile_changes_through_the_bus(Store::Sqlite(pool)).await;
}

/// Identity keeps no jurisdiction per profile: the read model takes it from the latest
/// event, and a profile change that knows none keeps it.
async fn events_place_profiles_in_their_jurisdiction(store: Store) {
    let room = AudienceRoom::new(AudienceStore::new(store));
    let source = Profiles::default();
    source.set("pc", "", 1.0);
    source
        .identifiers
        .lock()
        .unwrap()
        .insert(vec![7; 32], "pc".into());
    let now = Utc::now();
    room.apply_profile_changed(WriteVia::Pool, &source, &changed("pc", &[]), now)
        .await
        .unwrap();
    let in_california = meridian_audience::segment::parse(
        r#"{"all": [{"region": ["US"]}, {"jurisdiction": ["US-CA"]}]}"#,
    )
    .unwrap();
    let today = meridian_audience::segment::local_day(now, chrono_tz::UTC);
    let count = |room: AudienceRoom, rule: meridian_audience::segment::Rule| async move {
        room.store()
            .preview(WS, &rule, today, 10)
            .await
            .unwrap()
            .count
    };
    assert_eq!(count(room.clone(), in_california.clone()).await, 0);
    let event = EventAccepted {
        jurisdiction: "US-CA".into(),
        ..viewed("e-ca", 7, now)
    };
    assert_eq!(
        room.apply_event_accepted(WriteVia::Pool, &source, &event)
            .await
            .unwrap(),
        EventCounted::Counted
    );
    assert_eq!(count(room.clone(), in_california.clone()).await, 1);
    room.apply_profile_changed(WriteVia::Pool, &source, &changed("pc", &[]), now)
        .await
        .unwrap();
    assert_eq!(
        count(room.clone(), in_california).await,
        1,
        "a profile change without a jurisdiction keeps the one events gave"
    );
}

#[sqlx::test(migrations = "../../migrations/postgres")]
async fn postgres_events_place_profiles_in_their_jurisdiction(pool: PgPool) {
    events_place_profiles_in_their_jurisdiction(Store::Postgres(pool)).await;
}

#[sqlx::test(migrations = "../../migrations/sqlite")]
async fn sqlite_events_place_profiles_in_their_jurisdiction(pool: SqlitePool) {
    events_place_profiles_in_their_jurisdiction(Store::Sqlite(pool)).await;
}
