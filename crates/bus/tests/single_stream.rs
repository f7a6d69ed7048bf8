//! The single-stream layout the Kubernetes manifests create (`MERIDIAN` on `meridian.>`):
//! on a private nats-server, since that stream's subjects overlap every other test's.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Recorder, client_url, create_test_tables, effects, eventually, nats_server};
use meridian_bus::{
    Bus, EventFamily, JetStreamBus, JetStreamSettings, OutboxEvent, StreamLayout, Subscription,
    enqueue_all,
};
use meridian_store::Store;
use meridian_store::sqlx::SqlitePool;

#[sqlx::test(migrations = "../../migrations/sqlite")]
async fn families_share_one_stream_and_each_consumer_sees_its_own(pool: SqlitePool) {
    let dir = tempfile::tempdir().unwrap();
    let server = nats_server(dir.path(), None);
    let url = client_url(dir.path(), &server).await;
    let store = Store::Sqlite(pool.clone());
    create_test_tables(&store).await;
    let settings = JetStreamSettings {
        layout: StreamLayout::Single {
            name: "MERIDIAN".into(),
        },
        fetch_wait: Duration::from_millis(100),
        ..Default::default()
    };
    let bus = JetStreamBus::connect(&url, store.clone(), settings)
        .await
        .unwrap();

    let consent: EventFamily = "consent".parse().unwrap();
    let profile: EventFamily = "profile".parse().unwrap();
    let events: Vec<OutboxEvent> = (0..6)
        .map(|i| {
            OutboxEvent::new(
                if i % 2 == 0 { "acme" } else { "globex" }.parse().unwrap(),
                if i < 4 { &consent } else { &profile }.clone(),
                format!("k{i}"),
                vec![i],
            )
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    enqueue_all(&mut tx, &events).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(bus.relay_batch(100).await.unwrap(), 6);

    let consent_handler = Recorder::new("audience");
    let profile_handler = Recorder::new("identity");
    let on_consent = Subscription::new("audience".parse().unwrap(), consent);
    let on_profile = Subscription::new("identity".parse().unwrap(), profile);
    eventually(
        Duration::from_secs(30),
        "each family at its consumer",
        || async {
            bus.consume_batch(&on_consent, &*consent_handler)
                .await
                .unwrap();
            bus.consume_batch(&on_profile, &*profile_handler)
                .await
                .unwrap();
            effects(&store, "audience").await.len() == 4
                && effects(&store, "identity").await.len() == 2
        },
    )
    .await;

    let mut stream = bus.context().get_stream("MERIDIAN").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.subjects, vec!["meridian.>".to_owned()]);
    assert_eq!(info.state.messages, 6);

    // A replica configured for one stream per family next to that stream is told why
    // it cannot create its streams.
    let per_family = JetStreamBus::connect(&url, store.clone(), JetStreamSettings::default())
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let another = OutboxEvent::new(
        "acme".parse().unwrap(),
        "consent".parse().unwrap(),
        "k",
        vec![],
    );
    enqueue_all(&mut tx, &[another]).await.unwrap();
    tx.commit().await.unwrap();
    let err = per_family.relay_batch(10).await.unwrap_err().to_string();
    assert!(err.contains("stream layout"), "{err}");
    drop(server);
}
