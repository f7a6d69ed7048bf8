//! `meridian bench outbox`: events per second from commit to consumer, next to plain
//! `INSERT`s of the same rows measured in the same run.
//!
//! Self-contained: with `database_url` it creates a scratch database on that server
//! (`meridian_bench_<id>`, dropped afterwards), otherwise an embedded SQLite file in a
//! temporary directory; with `nats_url` it publishes to a scratch JetStream stream
//! (deleted afterwards), otherwise it uses the in-process bus.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use meridian_store::{ScratchDatabase, Store, StoreLocation};
use sqlx::postgres::PgConnectOptions;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::bus::{Bus, LocalBus, LoopSettings, run_consumer, run_relay};
use crate::consume::{EventHandler, Subscription};
use crate::error::{BusError, HandlerError};
use crate::event::{EventFamily, OutboxEvent};
use crate::jetstream::{JetStreamBus, JetStreamSettings, StreamLayout};
use crate::outbox::{Tx, enqueue_all, sqlite_time};

/// What to measure.
#[derive(Clone)]
pub struct BenchOptions {
    /// PostgreSQL server to create the scratch database on; embedded SQLite when `None`.
    pub database_url: Option<String>,
    /// NATS server; the in-process bus when `None`.
    pub nats_url: Option<String>,
    pub events: usize,
    pub payload_bytes: usize,
    /// Events committed per transaction (an ingest batch).
    pub events_per_transaction: usize,
    /// Concurrent writers.
    pub writers: usize,
    /// Concurrent relays.
    pub relays: usize,
    /// Concurrent instances of the (one) durable consumer.
    pub consumers: usize,
    /// Give up after this long.
    pub timeout: Duration,
}

impl std::fmt::Debug for BenchOptions {
    // URLs may carry passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchOptions")
            .field("postgres", &self.database_url.is_some())
            .field("nats", &self.nats_url.is_some())
            .field("events", &self.events)
            .field("payload_bytes", &self.payload_bytes)
            .field("events_per_transaction", &self.events_per_transaction)
            .field("writers", &self.writers)
            .field("relays", &self.relays)
            .field("consumers", &self.consumers)
            .finish()
    }
}

impl BenchOptions {
    /// Defaults, with `DATABASE_URL` and `NATS_URL` from the environment.
    pub fn from_env() -> Self {
        let database_url = std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty());
        let nats_url = std::env::var("NATS_URL").ok().filter(|v| !v.is_empty());
        let embedded = database_url.is_none();
        Self {
            database_url,
            nats_url,
            events: if embedded { 5_000 } else { 20_000 },
            payload_bytes: 256,
            events_per_transaction: 10,
            writers: if embedded { 1 } else { 4 },
            relays: if embedded { 1 } else { 2 },
            consumers: if embedded { 1 } else { 2 },
            timeout: Duration::from_secs(300),
        }
    }
}

/// The figures, with units in the key names.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub backend: &'static str,
    pub bus: &'static str,
    pub events: usize,
    pub payload_bytes: usize,
    pub events_per_transaction: usize,
    pub writers: usize,
    pub relays: usize,
    pub consumers: usize,
    /// Events committed (state + outbox), relayed and applied by the consumer, per second.
    pub events_per_sec: f64,
    /// The same rows, same transactions and writers, as plain `INSERT`s into a table of
    /// the same shape, per second.
    pub baseline_insert_rows_per_sec: f64,
    /// `events_per_sec / baseline_insert_rows_per_sec`.
    pub ratio_vs_baseline: f64,
    /// Commit → consumer latency percentiles.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub elapsed_sec: f64,
}

/// Runs the benchmark and cleans up after itself.
pub async fn run(options: BenchOptions) -> Result<BenchReport, BusError> {
    let scratch = Scratch::create(&options).await?;
    let result = tokio::time::timeout(options.timeout, measure(&options, &scratch.store)).await;
    scratch.drop_all().await;
    match result {
        Ok(report) => report,
        Err(_) => Err(BusError::Mismatch("the benchmark did not finish in time")),
    }
}

struct Scratch {
    store: Store,
    database: Option<ScratchDatabase>,
    data_dir: Option<PathBuf>,
}

impl Scratch {
    async fn create(options: &BenchOptions) -> Result<Scratch, BusError> {
        let suffix = Uuid::now_v7().simple().to_string();
        match &options.database_url {
            Some(url) => {
                let database = ScratchDatabase::create(url, "meridian_bench_outbox")
                    .await
                    .map_err(|err| BusError::Mismatch(store_error(&err)))?;
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(
                        u32::try_from(options.writers + options.relays + options.consumers + 4)
                            .unwrap_or(16),
                    )
                    .connect_with(PgConnectOptions::from_str(&database.url())?)
                    .await?;
                let store = Store::Postgres(pool);
                migrate(&store).await?;
                Ok(Scratch {
                    store,
                    database: Some(database),
                    data_dir: None,
                })
            }
            None => {
                let data_dir = std::env::temp_dir().join(format!("meridian-bench-{suffix}"));
                let store = Store::connect(&StoreLocation::Embedded {
                    data_dir: data_dir.clone(),
                })
                .await
                .map_err(|err| BusError::Mismatch(store_error(&err)))?;
                migrate(&store).await?;
                Ok(Scratch {
                    store,
                    database: None,
                    data_dir: Some(data_dir),
                })
            }
        }
    }

    async fn drop_all(self) {
        self.store.close().await;
        if let Some(database) = self.database {
            let name = database.name().to_owned();
            if let Err(err) = database.drop_now().await {
                tracing::warn!(error = %err, database = name, "could not drop the benchmark database");
            }
        }
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn store_error(_err: &meridian_store::StoreError) -> &'static str {
    "cannot open the benchmark store"
}

async fn migrate(store: &Store) -> Result<(), BusError> {
    store
        .migrate()
        .await
        .map_err(|_| BusError::Mismatch("cannot migrate the benchmark store"))?;
    let sql = match store {
        Store::Postgres(_) => {
            "CREATE TABLE bench_plain_events (seq BIGSERIAL PRIMARY KEY, event_id UUID NOT NULL UNIQUE, \
             workspace_id TEXT NOT NULL, family TEXT NOT NULL, event_key TEXT NOT NULL, \
             payload BYTEA NOT NULL, occurred_at TIMESTAMPTZ NOT NULL, \
             enqueued_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        }
        Store::Sqlite(_) => {
            "CREATE TABLE bench_plain_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, \
             workspace_id TEXT NOT NULL, family TEXT NOT NULL, event_key TEXT NOT NULL, \
             payload BLOB NOT NULL, occurred_at TEXT NOT NULL, enqueued_at TEXT NOT NULL)"
        }
    };
    match store {
        Store::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop)?,
        Store::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop)?,
    }
    Ok(())
}

fn make_batches(
    options: &BenchOptions,
    family: &EventFamily,
) -> Result<Vec<Vec<Vec<OutboxEvent>>>, BusError> {
    let workspace: meridian_domain::WorkspaceId = "bench"
        .parse()
        .map_err(|_| BusError::Mismatch("bench workspace id"))?;
    let payload = vec![0x5au8; options.payload_bytes];
    let per_tx = options.events_per_transaction.max(1);
    let writers = options.writers.max(1);
    let mut per_writer: Vec<Vec<Vec<OutboxEvent>>> = vec![Vec::new(); writers];
    let mut made = 0;
    let mut writer = 0;
    while made < options.events {
        let size = per_tx.min(options.events - made);
        let batch = (0..size)
            .map(|i| {
                OutboxEvent::new(
                    workspace.clone(),
                    family.clone(),
                    format!("key-{}", made + i),
                    payload.clone(),
                )
            })
            .collect();
        per_writer[writer].push(batch);
        made += size;
        writer = (writer + 1) % writers;
    }
    Ok(per_writer)
}

async fn measure(options: &BenchOptions, store: &Store) -> Result<BenchReport, BusError> {
    let family: EventFamily = format!("bench-{}", &Uuid::new_v4().simple().to_string()[..8])
        .parse()
        .map_err(|_| BusError::Mismatch("bench family"))?;

    // Baseline: the same rows, same transactions and writers, plain INSERTs.
    let baseline_batches = make_batches(options, &family)?;
    let started = Instant::now();
    let mut writers = Vec::new();
    for batches in baseline_batches {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for batch in batches {
                plain_insert(&store, &batch).await?;
            }
            Ok::<(), BusError>(())
        }));
    }
    for writer in writers {
        writer
            .await
            .map_err(|_| BusError::Mismatch("baseline writer panicked"))??;
    }
    let baseline_secs = started.elapsed().as_secs_f64();

    // The outbox path: commit, relay, consume.
    let (bus, jetstream): (Arc<dyn Bus>, Option<Arc<JetStreamBus>>) = match &options.nats_url {
        Some(url) => {
            let settings = JetStreamSettings {
                layout: StreamLayout::PerFamily {
                    prefix: "MERIDIAN_BENCH".into(),
                },
                fetch_wait: Duration::from_millis(200),
                max_age: Duration::from_secs(3600),
                ..Default::default()
            };
            let bus = Arc::new(JetStreamBus::connect(url, store.clone(), settings).await?);
            (bus.clone(), Some(bus))
        }
        None => (Arc::new(LocalBus::new(store.clone())), None),
    };
    let result = pipeline(options, store, bus.clone(), &family).await;
    if let Some(bus) = jetstream
        && let Err(err) = bus.delete_stream(&family).await
    {
        tracing::warn!(error = %err, "could not delete the benchmark stream");
    }
    let (elapsed, mut latencies) = result?;

    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1]
    };
    let events_per_sec = options.events as f64 / elapsed;
    let baseline = options.events as f64 / baseline_secs;
    Ok(BenchReport {
        backend: store.backend().as_str(),
        bus: bus.kind().as_str(),
        events: options.events,
        payload_bytes: options.payload_bytes,
        events_per_transaction: options.events_per_transaction,
        writers: options.writers,
        relays: options.relays,
        consumers: options.consumers,
        events_per_sec: round(events_per_sec),
        baseline_insert_rows_per_sec: round(baseline),
        ratio_vs_baseline: (events_per_sec / baseline * 1000.0).round() / 1000.0,
        p50_ms: round(percentile(0.50)),
        p99_ms: round(percentile(0.99)),
        max_ms: round(percentile(1.0)),
        elapsed_sec: round(elapsed),
    })
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

async fn plain_insert(store: &Store, batch: &[OutboxEvent]) -> Result<(), BusError> {
    match store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
            let workspaces: Vec<&str> = batch.iter().map(|e| e.workspace_id.as_str()).collect();
            let families: Vec<&str> = batch.iter().map(|e| e.family.as_str()).collect();
            let keys: Vec<&str> = batch.iter().map(|e| e.key.as_str()).collect();
            let payloads: Vec<&[u8]> = batch.iter().map(|e| e.payload.as_slice()).collect();
            let occurred: Vec<DateTime<Utc>> = batch.iter().map(|e| e.occurred_at).collect();
            sqlx::query(
                "INSERT INTO bench_plain_events (event_id, workspace_id, family, event_key, payload, occurred_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[])",
            )
            .bind(ids)
            .bind(workspaces)
            .bind(families)
            .bind(keys)
            .bind(payloads)
            .bind(occurred)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Store::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let enqueued_at = sqlite_time(Utc::now());
            let mut builder = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO bench_plain_events (event_id, workspace_id, family, event_key, payload, occurred_at, enqueued_at) ",
            );
            builder.push_values(batch, |mut row, event| {
                row.push_bind(event.event_id.to_string())
                    .push_bind(event.workspace_id.as_str())
                    .push_bind(event.family.as_str())
                    .push_bind(event.key.as_str())
                    .push_bind(event.payload.as_slice())
                    .push_bind(sqlite_time(event.occurred_at))
                    .push_bind(enqueued_at.as_str());
            });
            builder.build().execute(&mut *tx).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Records when each event reached the consumer.
struct Stopwatch {
    seen: Mutex<HashMap<Uuid, Instant>>,
    applied: AtomicUsize,
    target: usize,
    done: Notify,
}

#[async_trait]
impl EventHandler for Stopwatch {
    async fn handle(&self, _tx: &mut Tx<'_>, event: &OutboxEvent) -> Result<(), HandlerError> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(event.event_id, Instant::now());
        }
        if self.applied.fetch_add(1, Ordering::SeqCst) + 1 >= self.target {
            self.done.notify_one();
        }
        Ok(())
    }
}

async fn pipeline(
    options: &BenchOptions,
    store: &Store,
    bus: Arc<dyn Bus>,
    family: &EventFamily,
) -> Result<(f64, Vec<f64>), BusError> {
    let batches = make_batches(options, family)?;
    let stopwatch = Arc::new(Stopwatch {
        seen: Mutex::new(HashMap::with_capacity(options.events)),
        applied: AtomicUsize::new(0),
        target: options.events,
        done: Notify::new(),
    });
    let loops = LoopSettings {
        relay_batch: 256,
        idle: Duration::from_millis(2),
        ..Default::default()
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let subscription = Subscription {
        batch_size: 256,
        ..Subscription::new(
            "bench"
                .parse()
                .map_err(|_| BusError::Mismatch("bench consumer"))?,
            family.clone(),
        )
    };
    // Create the stream and consumer before the clock starts.
    bus.consume_batch(&subscription, &*stopwatch).await?;
    for _ in 0..options.consumers.max(1) {
        tasks.push(tokio::spawn(run_consumer(
            bus.clone(),
            subscription.clone(),
            stopwatch.clone(),
            loops,
            shutdown.clone(),
        )));
    }
    for _ in 0..options.relays.max(1) {
        tasks.push(tokio::spawn(run_relay(
            bus.clone(),
            loops,
            shutdown.clone(),
        )));
    }

    let started = Instant::now();
    let committed = Arc::new(Mutex::new(HashMap::with_capacity(options.events)));
    let mut writers = Vec::new();
    for batches in batches {
        let store = store.clone();
        let committed = committed.clone();
        writers.push(tokio::spawn(async move {
            for batch in batches {
                commit_batch(&store, &batch).await?;
                let at = Instant::now();
                if let Ok(mut committed) = committed.lock() {
                    committed.extend(batch.iter().map(|e| (e.event_id, at)));
                }
            }
            Ok::<(), BusError>(())
        }));
    }
    for writer in writers {
        writer
            .await
            .map_err(|_| BusError::Mismatch("writer panicked"))??;
    }
    while stopwatch.applied.load(Ordering::SeqCst) < options.events {
        let _ = tokio::time::timeout(Duration::from_millis(50), stopwatch.done.notified()).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }

    let committed = committed
        .lock()
        .map_err(|_| BusError::Mismatch("poisoned"))?
        .clone();
    let seen = stopwatch
        .seen
        .lock()
        .map_err(|_| BusError::Mismatch("poisoned"))?
        .clone();
    let latencies = seen
        .iter()
        .filter_map(|(id, consumed)| {
            committed
                .get(id)
                .map(|at| consumed.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    Ok((elapsed, latencies))
}

/// One writer transaction: a state change and its events (the outbox path).
async fn commit_batch(store: &Store, batch: &[OutboxEvent]) -> Result<(), BusError> {
    match store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            enqueue_all(&mut tx, batch).await?;
            tx.commit().await?;
        }
        Store::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            enqueue_all(&mut tx, batch).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}
