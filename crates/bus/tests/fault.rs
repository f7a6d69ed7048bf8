//! kill -9 fault test: a worker process commits orders with their outbox events while its
//! relay and consumer run; it is killed with SIGKILL mid-flight (twice), restarted, and
//! then every committed order's event must have been delivered and applied exactly once.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{nats_url, unique_family};
use meridian_bus::{EventFamily, JetStreamBus, JetStreamSettings, StreamLayout};
use meridian_store::Store;
use meridian_store::sqlx::PgPool;
use tokio::process::{Child, Command};

const EVENTS: i64 = 1500;

fn worker(env: &[(&str, String)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outbox-fault-worker"));
    command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("FAULT_EVENTS", EVENTS.to_string())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command.spawn().unwrap()
}

async fn count(store: &Store, sql: &str) -> i64 {
    let result = match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
    };
    // The worker creates its tables; before that, nothing is applied.
    result.unwrap_or(0)
}

/// Waits until the worker has applied at least `applied` events while it still has work
/// in flight (orders not yet applied), then kills it with SIGKILL.
async fn kill_mid_flight(store: &Store, child: &mut Child, applied: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let effects = count(store, "SELECT COUNT(*) FROM fault_effects").await;
        if effects >= applied {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "worker exited early");
        assert!(Instant::now() < deadline, "worker made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().await.unwrap(); // SIGKILL
    let orders = count(store, "SELECT COUNT(*) FROM fault_orders").await;
    let effects = count(store, "SELECT COUNT(*) FROM fault_effects").await;
    assert!(
        orders < EVENTS || effects < orders,
        "killed too late: nothing was in flight ({orders} orders, {effects} effects)"
    );
}

/// `published_rows_kept`: the in-process bus keeps published outbox rows (its log); the
/// JetStream relay deletes them once JetStream holds them.
async fn run_fault_test(store: Store, env: Vec<(&str, String)>, published_rows_kept: i64) {
    let mut child = worker(&env);
    kill_mid_flight(&store, &mut child, 200).await;
    let mut child = worker(&env);
    kill_mid_flight(&store, &mut child, 700).await;
    let mut child = worker(&env);
    let status = tokio::time::timeout(Duration::from_secs(180), child.wait())
        .await
        .expect("the restarted worker did not finish")
        .unwrap();
    assert!(status.success(), "{status}");

    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM fault_orders").await,
        EVENTS
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM outbox_events WHERE sent_at IS NULL"
        )
        .await,
        0
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM outbox_events").await,
        published_rows_kept
    );
    // Delivered at least once and recorded as processed...
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM bus_processed WHERE consumer = 'fault-consumer'"
        )
        .await,
        EVENTS
    );
    // ...and applied exactly once: one effect per committed order, none for anything else.
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM fault_orders o WHERE \
             (SELECT COUNT(*) FROM fault_effects e WHERE e.event_id = o.event_id) <> 1"
        )
        .await,
        0
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM fault_effects").await,
        EVENTS
    );
}

fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL must be set");
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{database}")
}

#[sqlx::test(migrations = "../../migrations/postgres")]
async fn kill_9_on_postgres_and_jetstream_loses_and_doubles_nothing(pool: PgPool) {
    let family = unique_family();
    let env = vec![
        ("FAULT_DATABASE_URL", database_url(&pool)),
        ("FAULT_NATS_URL", nats_url()),
        ("FAULT_FAMILY", family.to_string()),
    ];
    run_fault_test(Store::Postgres(pool.clone()), env, 0).await;
    delete_stream(&Store::Postgres(pool), &family).await;
}

#[sqlx::test(migrations = "../../migrations/postgres")]
async fn kill_9_on_postgres_in_process_loses_and_doubles_nothing(pool: PgPool) {
    let env = vec![
        ("FAULT_DATABASE_URL", database_url(&pool)),
        ("FAULT_FAMILY", unique_family().to_string()),
    ];
    run_fault_test(Store::Postgres(pool), env, EVENTS).await;
}

#[tokio::test]
async fn kill_9_on_embedded_sqlite_in_process_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let env = vec![
        ("FAULT_DATA_DIR", data_dir.display().to_string()),
        ("FAULT_FAMILY", unique_family().to_string()),
    ];
    // The worker creates and migrates the store; the test reads the same file.
    let store = Store::connect(&meridian_store::StoreLocation::Embedded {
        data_dir: data_dir.clone(),
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    run_fault_test(store, env, EVENTS).await;
}

async fn delete_stream(store: &Store, family: &EventFamily) {
    let settings = JetStreamSettings {
        layout: StreamLayout::PerFamily {
            prefix: "FAULT".into(),
        },
        ..Default::default()
    };
    let bus = JetStreamBus::connect(&nats_url(), store.clone(), settings)
        .await
        .unwrap();
    bus.delete_stream(family).await.unwrap();
}
