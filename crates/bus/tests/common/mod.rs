//! Shared test support: a recording handler, buses over fresh stores, polling helpers.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub, unused_macros)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use meridian_bus::{
    Bus, EventFamily, EventHandler, HandlerError, JetStreamBus, JetStreamSettings, LocalBus,
    OutboxEvent, StreamLayout, Tx,
};
use meridian_store::Store;
use tokio::process::{Child, Command};
use uuid::Uuid;

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A family (and so a stream and subjects) no other test uses.
pub fn unique_family() -> EventFamily {
    format!("t{}", &Uuid::new_v4().simple().to_string()[..12])
        .parse()
        .unwrap()
}

pub fn test_settings() -> JetStreamSettings {
    JetStreamSettings {
        layout: StreamLayout::PerFamily {
            prefix: "TEST".into(),
        },
        ack_wait: Duration::from_secs(2),
        fetch_wait: Duration::from_millis(100),
        max_age: Duration::from_secs(3600),
        ..Default::default()
    }
}

pub enum Kind {
    Local,
    JetStream,
}

/// A bus over `store`; JetStream ones are cleaned up by `cleanup`.
pub struct Harness {
    pub store: Store,
    pub bus: Arc<dyn Bus>,
    pub family: EventFamily,
    jetstream: Option<Arc<JetStreamBus>>,
}

impl Harness {
    pub async fn new(store: Store, kind: Kind) -> Harness {
        create_test_tables(&store).await;
        let family = unique_family();
        match kind {
            Kind::Local => Harness {
                bus: Arc::new(LocalBus::new(store.clone())),
                store,
                family,
                jetstream: None,
            },
            Kind::JetStream => {
                let bus = Arc::new(
                    JetStreamBus::connect(&nats_url(), store.clone(), test_settings())
                        .await
                        .expect("NATS JetStream must be reachable at NATS_URL"),
                );
                Harness {
                    bus: bus.clone(),
                    store,
                    family,
                    jetstream: Some(bus),
                }
            }
        }
    }

    pub async fn cleanup(&self) {
        if let Some(bus) = &self.jetstream {
            bus.delete_stream(&self.family).await.unwrap();
        }
    }

    pub fn event(&self, workspace: &str, payload: &str) -> OutboxEvent {
        OutboxEvent::new(
            workspace.parse().unwrap(),
            self.family.clone(),
            "key-1",
            payload.as_bytes().to_vec(),
        )
    }
}

pub async fn create_test_tables(store: &Store) {
    for sql in [
        "CREATE TABLE test_state (workspace_id TEXT NOT NULL, name TEXT NOT NULL)",
        // No uniqueness on purpose: a double application would show as two rows.
        "CREATE TABLE test_effects (workspace_id TEXT NOT NULL, consumer TEXT NOT NULL, event_id TEXT NOT NULL)",
    ] {
        match store {
            Store::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop).unwrap(),
            Store::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop).unwrap(),
        }
    }
}

pub async fn scalar(store: &Store, sql: &str) -> i64 {
    match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

/// Effects applied by `consumer`, per event id.
pub async fn effects(store: &Store, consumer: &str) -> HashMap<Uuid, i64> {
    let sql = "SELECT event_id, COUNT(*) FROM test_effects WHERE consumer = $1 GROUP BY event_id";
    let rows: Vec<(String, i64)> = match store {
        Store::Postgres(pool) => sqlx::query_as(sql)
            .bind(consumer)
            .fetch_all(pool)
            .await
            .unwrap(),
        Store::Sqlite(pool) => sqlx::query_as(&sql.replace("$1", "?1"))
            .bind(consumer)
            .fetch_all(pool)
            .await
            .unwrap(),
    };
    rows.into_iter()
        .map(|(id, n)| (Uuid::parse_str(&id).unwrap(), n))
        .collect()
}

/// Records each application in `test_effects` (inside the bus's transaction), failing on
/// chosen events: `always_fail` until removed, `fail_times` a number of times.
#[derive(Default)]
pub struct Recorder {
    pub consumer: String,
    pub always_fail: Mutex<HashSet<Uuid>>,
    pub fail_times: Mutex<HashMap<Uuid, u32>>,
    pub calls: Mutex<HashMap<Uuid, u32>>,
}

impl Recorder {
    pub fn new(consumer: &str) -> Arc<Recorder> {
        Arc::new(Recorder {
            consumer: consumer.into(),
            ..Default::default()
        })
    }
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, tx: &mut Tx<'_>, event: &OutboxEvent) -> Result<(), HandlerError> {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(event.event_id)
            .or_default() += 1;
        insert_effect(tx, &self.consumer, event).await?;
        // Fail after writing: the effect must be rolled back with the attempt.
        if self.always_fail.lock().unwrap().contains(&event.event_id) {
            return Err(HandlerError::Failed("always failing".into()));
        }
        let mut fail_times = self.fail_times.lock().unwrap();
        if let Some(left) = fail_times.get_mut(&event.event_id)
            && *left > 0
        {
            *left -= 1;
            return Err(HandlerError::Failed(format!(
                "failing {} more times",
                *left
            )));
        }
        Ok(())
    }
}

pub async fn insert_effect(
    tx: &mut Tx<'_>,
    consumer: &str,
    event: &OutboxEvent,
) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO test_effects (workspace_id, consumer, event_id) VALUES ($1, $2, $3)";
    match tx {
        Tx::Postgres(conn) => sqlx::query(sql)
            .bind(event.workspace_id.as_str())
            .bind(consumer)
            .bind(event.event_id.to_string())
            .execute(&mut **conn)
            .await
            .map(drop),
        Tx::Sqlite(conn) => sqlx::query(sql)
            .bind(event.workspace_id.as_str())
            .bind(consumer)
            .bind(event.event_id.to_string())
            .execute(&mut **conn)
            .await
            .map(drop),
    }
}

/// Polls `check` until it holds, failing the test after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A private nats-server with JetStream on a free port, storing under `dir`.
pub fn nats_server(dir: &Path, port: Option<u16>) -> Child {
    let port = port.map_or("-1".to_owned(), |p| p.to_string());
    Command::new("/usr/sbin/nats-server")
        .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
        .arg(dir.join("jetstream"))
        .arg("--ports_file_dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server must be installed at /usr/sbin/nats-server")
}

/// The client URL from the server's ports file.
pub async fn client_url(dir: &Path, child: &Child) -> String {
    let file = dir.join(format!("nats-server_{}.ports", child.id().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(url) = ports["nats"][0].as_str()
        {
            return url.to_owned();
        }
        assert!(Instant::now() < deadline, "nats-server did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The stream holding `family`'s events.
async fn stream_of(
    bus: &JetStreamBus,
    family: &EventFamily,
) -> async_nats::jetstream::stream::Stream {
    bus.context()
        .get_stream(bus.settings().stream_name(family))
        .await
        .unwrap()
}

/// Events in the stream of `family`: a pack message counts its `Meridian-Pack-Events`, any
/// other message one. With every event applied, this equal to the event count means no
/// event is stored twice.
pub async fn events_in_stream(bus: &JetStreamBus, family: &EventFamily) -> u64 {
    let mut stream = stream_of(bus, family).await;
    let state = stream.info().await.unwrap().state.clone();
    let mut events = 0;
    for seq in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        let message = stream.get_raw_message(seq).await.unwrap();
        events += message
            .headers
            .get("Meridian-Pack-Events")
            .map_or(1, |n| n.as_str().parse::<u64>().unwrap());
    }
    events
}

/// Messages in the stream of `family`.
pub async fn messages_in_stream(bus: &JetStreamBus, family: &EventFamily) -> u64 {
    let mut stream = stream_of(bus, family).await;
    stream.info().await.unwrap().state.messages
}

/// Another JetStream bus on the harness's store, publishing packs of at most
/// `pack_max_bytes` (0: one message per event).
pub async fn jetstream_bus(h: &Harness, pack_max_bytes: usize) -> JetStreamBus {
    JetStreamBus::connect(
        &nats_url(),
        h.store.clone(),
        JetStreamSettings {
            pack_max_bytes,
            ..test_settings()
        },
    )
    .await
    .unwrap()
}

/// Instantiates each check (`async fn(Harness)`) for every bus × backend, each on a fresh
/// database. The calling module imports `Harness`, `Kind`, `Store`, `PgPool`, `SqlitePool`.
macro_rules! every_bus {
    ($($check:ident),* $(,)?) => {
        mod sqlite_local {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/sqlite")]
                async fn $check(pool: SqlitePool) {
                    super::$check(Harness::new(Store::Sqlite(pool), Kind::Local).await).await;
                }
            )*
        }
        mod postgres_local {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/postgres")]
                async fn $check(pool: PgPool) {
                    super::$check(Harness::new(Store::Postgres(pool), Kind::Local).await).await;
                }
            )*
        }
        mod postgres_jetstream {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/postgres")]
                async fn $check(pool: PgPool) {
                    super::$check(Harness::new(Store::Postgres(pool), Kind::JetStream).await).await;
                }
            )*
        }
        mod sqlite_jetstream {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/sqlite")]
                async fn $check(pool: SqlitePool) {
                    super::$check(Harness::new(Store::Sqlite(pool), Kind::JetStream).await).await;
                }
            )*
        }
    };
}

/// Instantiates each check (`async fn(Harness)`) for the in-process bus over PostgreSQL and
/// SQLite, each on a fresh database. Imports as for `every_bus`.
macro_rules! local_on_both_stores {
    ($($check:ident),* $(,)?) => {
        mod postgres_local_only {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/postgres")]
                async fn $check(pool: PgPool) {
                    super::$check(Harness::new(Store::Postgres(pool), Kind::Local).await).await;
                }
            )*
        }
        mod sqlite_local_only {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/sqlite")]
                async fn $check(pool: SqlitePool) {
                    super::$check(Harness::new(Store::Sqlite(pool), Kind::Local).await).await;
                }
            )*
        }
    };
}

/// Instantiates each check (`async fn(Harness)`) for JetStream over PostgreSQL and SQLite,
/// each on a fresh database. Imports as for `every_bus`.
macro_rules! jetstream_on_both_stores {
    ($($check:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/postgres")]
                async fn $check(pool: PgPool) {
                    super::$check(Harness::new(Store::Postgres(pool), Kind::JetStream).await).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/sqlite")]
                async fn $check(pool: SqlitePool) {
                    super::$check(Harness::new(Store::Sqlite(pool), Kind::JetStream).await).await;
                }
            )*
        }
    };
}
