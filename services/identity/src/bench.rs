//! `meridian bench identity`: identifier links per second **through the service**: the
//! synthetic storefront's events are built the way ingest publishes them (`EventAccepted`:
//! blind indexes, values sealed under the vault subject of the event's anchor), written
//! to the outbox and relayed (not timed: that is ingest's and the bus's work), then the
//! production consumer path is timed: `Bus::consume_batch` with
//! [`IngestConsumer::subscription`] and the [`IngestConsumer`] handler: the bus's
//! idempotency records, decoding (data keys from a vault with a cold cache, as on another
//! replica; the consumer's look-ahead loads a delivery's keys and decodes its events while
//! the previous delivery's store write runs: `timings.prepared_events`, and runs them
//! through the graph then too: `timings.stitched_events`), the graph, and one
//! store transaction per delivery with its `ProfileChanged` outbox rows. The run also
//! reports the pairwise precision/recall of the stitching against
//! the storefront's ground truth (shared family devices and re-used emails included).
//!
//! A *link* is one identifier carried by one event and joined to that event's profile (or
//! refused and recorded): the unit of work of identity resolution. Each run uses a fresh
//! workspace; right after each, the same store takes a **baseline**: plain multi-row
//! inserts of as many edge-shaped rows as the run had links, in transactions of the same
//! size, into a table shaped and indexed like `identity_edges`. The machine is shared, so
//! the ratio to that baseline is the comparable figure. The baseline table is an ordinary
//! one, written ahead and committed like the service's (as `bench ingest`'s `COPY`
//! baseline): a temporary table, as before stop 23, skips the write-ahead log and the
//! shared buffers, which no table of the service can. On PostgreSQL on this host, the run
//! also reports CPU per link (this process and the database's backends) next to the
//! baseline's CPU per row: a cost ratio that a busy neighbour on the machine moves far
//! less than it moves rates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_bus::{Bus, EventHandler, LocalBus, OutboxEvent};
use meridian_proto::bus::v1::{EventAccepted, Money, SealedIdentifier};
use meridian_proto::v1::EventType;
use meridian_store::Store;
use meridian_store::backend_states::{BackendStateSampler, BackendStates, SAMPLE_EVERY};
use meridian_store::cpu::{ConnectionCpu, ProcessAndBackendCpu};
use meridian_store::sqlx;
use meridian_test_support::storefront::{QualityReport, Storefront, StorefrontConfig};
use meridian_vault::{BlindIndex, KeyRing, Vault};
use prost::Message;
use serde::Serialize;

use crate::accepted::IngestConsumer;
use crate::error::IdentityError;
use crate::identifier::{CompiledRules, IdentifierType, Rules, blind_index, normalize};
use crate::quality::{identifier_type, raw_identifier};
use crate::room::{ConsumerTimings, IdentityRoom};

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Shoppers generated (events and identifiers scale with it).
    pub shoppers: usize,
    /// Events per consumer delivery (one transaction each); the production consumer's
    /// [`crate::accepted::CONSUMER_BATCH`] by default.
    pub batch: usize,
    /// Generator seed.
    pub seed: u64,
    /// Timed runs, each on a fresh workspace (min and median are reported).
    pub runs: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            shoppers: 30_000,
            batch: crate::accepted::CONSUMER_BATCH,
            seed: 42,
            runs: 3,
        }
    }
}

/// One timed run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub seconds: f64,
    /// Identifier links per second through the consumer.
    pub links_per_sec: f64,
    pub events_per_sec: f64,
    /// First half of the stream (mostly new shoppers).
    pub first_half_links_per_sec: f64,
    /// Second half (steady state: most shoppers known).
    pub second_half_links_per_sec: f64,
    /// The baseline right after: plain inserts of `links` edge-shaped rows per second.
    pub baseline_rows_per_sec: f64,
    /// `links_per_sec / baseline_rows_per_sec`.
    pub ratio_to_baseline: f64,
    /// Where the consumer's time went (microseconds, summed over deliveries).
    pub timings: ConsumerTimings,
    /// Wall time of the deliveries outside the identity handler (bus reads, idempotency
    /// records, offsets, commit), in microseconds.
    pub bus_micros: u64,
    /// CPU per link of this process while it consumed (the consumer: bus, decoding, graph,
    /// statements), in microseconds (Linux, PostgreSQL on this host).
    pub consumer_cpu_us_per_link: Option<f64>,
    /// CPU per link of the PostgreSQL backends of the database while it consumed.
    pub postgres_cpu_us_per_link: Option<f64>,
    /// CPU per row of the PostgreSQL backend that ran the baseline.
    pub baseline_postgres_cpu_us_per_row: Option<f64>,
    /// `baseline_postgres_cpu_us_per_row / (consumer + postgres CPU per link)`: the share of
    /// a link's CPU that inserting one edge-shaped row needs. A cost ratio, not a rate
    /// ratio: it moves little with the load of a shared machine, so it shows whether a
    /// change made the consumer cheaper when rates are too noisy to tell.
    pub cpu_cost_ratio_to_baseline: Option<f64>,
    /// While it consumed (PostgreSQL only): the mean number of the database's backends
    /// executing, waiting inside a transaction for the consumer, flushing the write-ahead
    /// log, and so on, sampled every [`SAMPLE_EVERY`]. With one delivery in flight, its
    /// backend is always in one of these states: the shares say where a delivery's wall
    /// time went on the database's side.
    pub postgres_backends: Option<BackendStates>,
}

/// Results.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `postgres` or `sqlite`.
    pub backend: &'static str,
    /// `release` or `debug` (debug figures are not meaningful).
    pub build_profile: &'static str,
    /// What is timed.
    pub path: &'static str,
    pub shoppers: usize,
    /// Events published (those with at least one identifier that normalizes).
    pub events: u64,
    /// Identifiers carried by those events (each one is a link attempt).
    pub links: u64,
    /// Edges written (links that joined or reinforced a profile with a new pair).
    pub edges_written: u64,
    /// Links refused and recorded (blocked, shared, merge protection, limits).
    pub conflicts: u64,
    /// Identifiers ingest would have rejected (not normalizable): not published.
    pub invalid_identifiers: u64,
    /// `ProfileChanged` events written to the outbox.
    pub profile_changed_events: u64,
    pub batch_size: usize,
    pub runs: Vec<RunReport>,
    /// Over the runs.
    pub links_per_sec_min: f64,
    pub links_per_sec_median: f64,
    pub ratio_to_baseline_median: f64,
    /// Median of the runs' `cpu_cost_ratio_to_baseline` (when every run measured one).
    pub cpu_cost_ratio_to_baseline_median: Option<f64>,
    /// Median links/s of the run with the median; kept under the old name.
    pub links_per_sec: f64,
    /// The goal: at least 100,000 links per second on PostgreSQL.
    pub links_per_sec_goal: f64,
    /// Pairwise quality against the generator's ground truth (last run).
    pub quality: QualityReport,
    /// Goals: precision ≥ 0.999, recall ≥ 0.99.
    pub precision_goal: f64,
    pub recall_goal: f64,
    /// Sampled lookups through the store agreed with the in-memory graph (every run).
    pub store_agrees_with_graph: bool,
    /// Seconds spent building and sealing the payloads, and enqueuing and relaying them
    /// (ingest's and the bus's share; not in the figures above).
    pub publish_seconds: f64,
}

/// What one run produced besides its figures.
struct RunOutcome {
    report: RunReport,
    edges: u64,
    conflicts: u64,
    profile_changed: u64,
    quality: QualityReport,
    agrees: bool,
}

/// The event types of the mix, by event position: mostly page views, some product views
/// and carts (interest), identifies with traits, orders with revenue.
fn event_shape(i: usize) -> (EventType, &'static str) {
    match i % 20 {
        0 => (EventType::Track, "Order Completed"),
        1 | 2 => (EventType::Identify, ""),
        3..=5 => (EventType::Track, "Product Added"),
        6..=8 => (EventType::Track, "Product Viewed"),
        _ => (EventType::Page, ""),
    }
}

/// The storefront as ingest would publish it into `workspace`, sealed with `vault`.
async fn publish_payloads(
    vault: &Vault,
    rules: &CompiledRules,
    workspace: &str,
    storefront: &Storefront,
) -> Result<(Vec<OutboxEvent>, u64, u64), IdentityError> {
    let indexer = vault.blind_indexer(workspace).await?;
    let ws_id: meridian_domain::WorkspaceId = workspace
        .parse()
        .map_err(|e| IdentityError::Setup(format!("workspace id: {e}")))?;
    let family: meridian_bus::EventFamily = crate::accepted::FAMILY
        .parse()
        .map_err(|e| IdentityError::Setup(format!("family: {e}")))?;
    let mut invalid = 0u64;
    let mut links = 0u64;
    // (event position, its identifiers: kind, index, normalized value, source).
    type Ids = Vec<(IdentifierType, BlindIndex, String, String)>;
    let mut normalized: Vec<(usize, Ids)> = Vec::with_capacity(storefront.events.len());
    for (i, e) in storefront.events.iter().enumerate() {
        let mut ids: Ids = Vec::with_capacity(e.identifiers.len());
        for s in &e.identifiers {
            let raw = raw_identifier(s);
            match normalize(
                identifier_type(s.kind),
                &raw.value,
                &raw.source,
                &raw.default_region,
            ) {
                Ok(n) => {
                    let key = blind_index(&indexer, &n);
                    ids.push((key.kind, key.index, n.value.to_string(), n.source.clone()));
                }
                Err(_) => invalid += 1,
            }
        }
        if !ids.is_empty() {
            links += ids.len() as u64;
            normalized.push((i, ids));
        }
    }
    // Ingest seals each event under the vault subject of its highest-priority identifier.
    let anchors: Vec<BlindIndex> = normalized
        .iter()
        .map(|(_, ids)| {
            ids.iter()
                .min_by_key(|(k, ..)| rules.rank(*k))
                .map(|(_, index, ..)| *index)
                .unwrap_or(BlindIndex([0; 32]))
        })
        .collect();
    let mut keys = Vec::with_capacity(anchors.len());
    for chunk in anchors.chunks(5_000) {
        keys.extend(vault.identifier_subject_keys(workspace, chunk).await?);
    }
    let mut out = Vec::with_capacity(normalized.len());
    for ((i, ids), (subject, key)) in normalized.into_iter().zip(keys) {
        let e = &storefront.events[i];
        let event_id = uuid::Uuid::now_v7().to_string();
        let (kind, name) = event_shape(i);
        let at = prost_types::Timestamp {
            seconds: e.at.timestamp(),
            nanos: 0,
        };
        let mut identifiers = Vec::with_capacity(ids.len());
        for (pos, (kind, index, value, source)) in ids.into_iter().enumerate() {
            identifiers.push(SealedIdentifier {
                r#type: i32::from(kind.code()),
                source,
                blind_index: index.0.to_vec(),
                sealed_value: key.seal(
                    &event_id,
                    &crate::accepted::identifier_field(pos),
                    value.as_bytes(),
                )?,
            });
        }
        let sealed_traits = if kind == EventType::Identify {
            let traits = format!(
                r#"{{"first_name":"shopper {}","plan":"{}"}}"#,
                e.shopper,
                i % 3
            );
            key.seal(&event_id, crate::accepted::TRAITS_FIELD, traits.as_bytes())?
        } else {
            Vec::new()
        };
        let payload = EventAccepted {
            workspace_id: workspace.to_owned(),
            event_id: event_id.clone(),
            message_id: format!("m-{}", e.event_id),
            r#type: kind as i32,
            event: name.to_owned(),
            name: String::new(),
            timestamp: Some(at),
            received_at: Some(at),
            jurisdiction: e.region.to_owned(),
            sealed_subject: subject.clone(),
            identifiers,
            sealed_traits,
            revenue: (name == "Order Completed").then(|| Money {
                currency: if i % 3 == 0 { "USD" } else { "EUR" }.into(),
                minor_units: 1_000 + i64::try_from(i % 9_000).unwrap_or(0),
            }),
            storefront_id: "web".into(),
            age_band: 0,
        };
        out.push(OutboxEvent::new(
            ws_id.clone(),
            family.clone(),
            subject,
            payload.encode_to_vec(),
        ));
    }
    Ok((out, links, invalid))
}

async fn enqueue(store: &Store, events: &[OutboxEvent]) -> Result<(), IdentityError> {
    for chunk in events.chunks(5_000) {
        let result = match store {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                meridian_bus::enqueue_all(&mut tx, chunk)
                    .await
                    .map_err(bus_error)?;
                tx.commit().await
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                meridian_bus::enqueue_all(&mut tx, chunk)
                    .await
                    .map_err(bus_error)?;
                tx.commit().await
            }
        };
        result?;
    }
    Ok(())
}

/// Refreshes PostgreSQL's statistics of the outbox after the untimed setup put a whole
/// half of the stream into it at once. A bench database is seconds old and autovacuum (a
/// minute between rounds) has not analyzed it: the planner would take the backlog for the
/// few rows the table held and have each relay and each delivery read and sort all of it. A
/// running deployment's outbox grows past autovacuum's thresholds, not in one jump.
/// Only the outbox: the identity tables are the consumer's, timed, and left as they are.
async fn analyze(store: &Store) -> Result<(), IdentityError> {
    if let Store::Postgres(pool) = store {
        sqlx::query("ANALYZE outbox_events").execute(pool).await?;
    }
    Ok(())
}

fn bus_error(e: meridian_bus::BusError) -> IdentityError {
    IdentityError::Setup(format!("bus: {e}"))
}

/// Runs the consumer until `expected` events were applied; returns the wall time. A failed
/// event ends the run with the handler's error: the bus keeps it with the retry, in a
/// scratch database that is dropped with the run.
async fn consume(
    store: &Store,
    bus: &LocalBus,
    subscription: &meridian_bus::Subscription,
    handler: &dyn EventHandler,
    expected: usize,
) -> Result<Duration, IdentityError> {
    let started = Instant::now();
    let mut applied = 0;
    while applied < expected {
        let stats = bus
            .consume_batch(subscription, handler)
            .await
            .map_err(bus_error)?;
        if stats.retried + stats.dead_lettered > 0 {
            let error = match last_error(store, subscription.consumer.as_str()).await {
                Ok(Some(error)) => error,
                Ok(None) => "not kept".to_owned(),
                Err(e) => format!("unread ({e})"),
            };
            return Err(IdentityError::Setup(format!(
                "the consumer failed {} events; the handler's error: {error}",
                stats.retried + stats.dead_lettered
            )));
        }
        if stats.is_idle() {
            return Err(IdentityError::Setup(format!(
                "the consumer stopped after {applied} of {expected} events"
            )));
        }
        applied += stats.applied + stats.duplicates;
    }
    Ok(started.elapsed().max(Duration::from_micros(1)))
}

/// An error the bus kept for one of `consumer`'s failed events.
async fn last_error(store: &Store, consumer: &str) -> Result<Option<String>, IdentityError> {
    const SQL: &str = "SELECT last_error FROM bus_retries WHERE consumer = $1 \
         UNION ALL SELECT last_error FROM bus_dead_letters WHERE consumer = $1 LIMIT 1";
    Ok(match store {
        Store::Postgres(pool) => {
            sqlx::query_scalar(SQL)
                .bind(consumer)
                .fetch_optional(pool)
                .await?
        }
        Store::Sqlite(pool) => {
            sqlx::query_scalar(SQL)
                .bind(consumer)
                .fetch_optional(pool)
                .await?
        }
    })
}

/// Runs the benchmark on `store` (migrated).
pub async fn run(store: &Store, opts: &BenchOptions) -> Result<BenchReport, IdentityError> {
    let rules = Rules::default().validate()?;
    let storefront = Storefront::generate(&StorefrontConfig {
        seed: opts.seed,
        shoppers: opts.shoppers,
        ..StorefrontConfig::default()
    });
    let batch = opts.batch.max(1);
    let mut runs = Vec::new();
    let mut last: Option<RunOutcome> = None;
    let mut agrees = true;
    let (mut events, mut links, mut invalid, mut publish) = (0, 0, 0, 0.0);
    for _ in 0..opts.runs.max(1) {
        let (outcome, published) = run_once(store, &rules, &storefront, batch).await?;
        (events, links, invalid) = (published.events, published.links, published.invalid);
        publish += published.seconds;
        agrees &= outcome.agrees;
        runs.push(outcome.report.clone());
        last = Some(outcome);
    }
    let Some(last) = last else {
        return Err(IdentityError::Setup("no run".into()));
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let rates: Vec<f64> = runs.iter().map(|r| r.links_per_sec).collect();
    let links_per_sec_median = median(rates.clone());
    Ok(BenchReport {
        backend: match store {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        },
        build_profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        path: "outbox -> relay (untimed) -> LocalBus::consume_batch -> IngestConsumer (timed)",
        shoppers: opts.shoppers,
        events,
        links,
        edges_written: last.edges,
        conflicts: last.conflicts,
        invalid_identifiers: invalid,
        profile_changed_events: last.profile_changed,
        batch_size: batch,
        links_per_sec_min: rates.iter().copied().fold(f64::INFINITY, f64::min),
        links_per_sec_median,
        ratio_to_baseline_median: median(runs.iter().map(|r| r.ratio_to_baseline).collect()),
        cpu_cost_ratio_to_baseline_median: runs
            .iter()
            .map(|r| r.cpu_cost_ratio_to_baseline)
            .collect::<Option<Vec<f64>>>()
            .map(median),
        links_per_sec: links_per_sec_median,
        runs,
        links_per_sec_goal: 100_000.0,
        quality: last.quality,
        precision_goal: 0.999,
        recall_goal: 0.99,
        store_agrees_with_graph: agrees,
        publish_seconds: publish,
    })
}

struct Published {
    events: u64,
    links: u64,
    invalid: u64,
    seconds: f64,
}

async fn run_once(
    store: &Store,
    rules: &CompiledRules,
    storefront: &Storefront,
    batch: usize,
) -> Result<(RunOutcome, Published), IdentityError> {
    let workspace = format!("bench-identity-{}", uuid::Uuid::new_v4().simple());
    let access = meridian_access::access_store(store);
    let ws_id: meridian_domain::WorkspaceId = workspace
        .parse()
        .map_err(|e| IdentityError::Setup(format!("workspace id: {e}")))?;
    let region: meridian_domain::Region = "eu"
        .parse()
        .map_err(|e| IdentityError::Setup(format!("region: {e}")))?;
    let tz: meridian_domain::TimeZone = "UTC"
        .parse()
        .map_err(|e| IdentityError::Setup(format!("time zone: {e}")))?;
    meridian_access::ensure_workspace(&*access, &ws_id, &region, tz)
        .await
        .map_err(|e| IdentityError::Setup(format!("workspace: {e}")))?;
    let ring =
        Arc::new(KeyRing::generate(1).map_err(|e| IdentityError::Setup(format!("key ring: {e}")))?);
    // Ingest's vault and the consumer's: one key store, separate caches (two replicas).
    let ingest_vault = Vault::new(ring.clone(), meridian_vault::key_store_for(store));
    let vault = Arc::new(Vault::new(ring, meridian_vault::key_store_for(store)));
    let room = IdentityRoom::from_store(store, vault, rules.clone());
    let handler = IngestConsumer::new(room.clone());
    let mut subscription = IngestConsumer::subscription();
    subscription.batch_size = batch;
    let bus = LocalBus::new(store.clone());

    let started = Instant::now();
    let (payloads, links, invalid) =
        publish_payloads(&ingest_vault, rules, &workspace, storefront).await?;
    let published_seconds = started.elapsed().as_secs_f64();
    // Two timed halves: the first meets mostly new shoppers, the second is the steady state
    // of a running storefront, where most shoppers are known.
    let half = payloads.len() / 2;
    let links_of = |events: &[OutboxEvent]| -> Result<u64, IdentityError> {
        let mut n = 0;
        for e in events {
            n += EventAccepted::decode(e.payload.as_slice())
                .map_err(|_| IdentityError::Corrupt("bench payload".into()))?
                .identifiers
                .len() as u64;
        }
        Ok(n)
    };
    let mut halves = Vec::new();
    let mut publish_seconds = published_seconds;
    // CPU seconds of (this process, the database's backends) while consuming.
    let mut cpu = Some((0.0, 0.0));
    let mut backends: Option<BackendStates> = None;
    room.reset_consumer_timings();
    for part in [&payloads[..half], &payloads[half..]] {
        let started = Instant::now();
        enqueue(store, part).await?;
        analyze(store).await?;
        while bus.relay_batch(10_000).await.map_err(bus_error)? > 0 {}
        analyze(store).await?;
        publish_seconds += started.elapsed().as_secs_f64();
        // Only on PostgreSQL on this host (Linux).
        let (meter, sampler) = match store {
            Store::Postgres(pool) => (
                ProcessAndBackendCpu::start(pool).await?,
                Some(BackendStateSampler::start(pool, SAMPLE_EVERY).await?),
            ),
            Store::Sqlite(_) => (None, None),
        };
        let took = consume(store, &bus, &subscription, &*handler, part.len()).await?;
        if let Some(sampler) = sampler {
            let states = sampler.finish().await?;
            backends = Some(backends.map_or(states, |before| before.merge(states)));
        }
        cpu = match (cpu, meter, store) {
            (Some((own, postgres)), Some(meter), Store::Postgres(pool)) => {
                let (o, p) = meter.seconds_since_start(pool).await?;
                Some((own + o, postgres + p))
            }
            _ => None,
        };
        halves.push((links_of(part)?, took));
    }
    let seconds: f64 = halves.iter().map(|(_, d)| d.as_secs_f64()).sum();
    let timings = room.consumer_timings();
    let handler_micros = timings.decode_micros + timings.graph_micros + timings.store_micros;
    let links_per_sec = links as f64 / seconds;

    let (baseline_rows_per_sec, baseline_cpu_seconds) =
        baseline(store, links, batch_rows(links, payloads.len(), batch)).await?;
    #[allow(clippy::cast_precision_loss)]
    let per_link = |seconds: f64| seconds * 1e6 / links.max(1) as f64;
    let consumer_cpu_us_per_link = cpu.map(|(own, _)| per_link(own));
    let postgres_cpu_us_per_link = cpu.map(|(_, postgres)| per_link(postgres));
    // The baseline inserts as many rows as the run had links.
    let baseline_postgres_cpu_us_per_row = baseline_cpu_seconds.map(per_link);
    let cpu_cost_ratio_to_baseline = match (cpu, baseline_cpu_seconds) {
        (Some((own, postgres)), Some(baseline)) => Some(baseline / (own + postgres).max(1e-9)),
        _ => None,
    };

    // Quality and agreement: every canonical identifier's profile in the consumer's graph,
    // and a sample of lookups through the store.
    let ids = storefront.identifiers();
    let raws: Vec<_> = ids.values().map(raw_identifier).collect();
    let keys = room.keys_of(&workspace, &raws).await?;
    let mut profile_of = std::collections::HashMap::new();
    for ((canonical, _), key) in ids.iter().zip(&keys) {
        if let Some(key) = key
            && let Some(p) = room.cached_profile_of(&workspace, key).await
        {
            profile_of.insert(canonical.clone(), p.to_string());
        }
    }
    let quality = QualityReport::measure(storefront, |s| profile_of.get(&s.canonical).cloned());
    let mut agrees = !profile_of.is_empty();
    for (i, (canonical, raw)) in ids.keys().zip(&raws).enumerate() {
        if i % 97 != 0 {
            continue;
        }
        let stored = match room.lookup(&workspace, raw).await {
            Ok(view) => Some(view.profile.profile.to_string()),
            Err(IdentityError::ProfileNotFound) => None,
            Err(e) => return Err(e),
        };
        if stored.as_ref() != profile_of.get(canonical) {
            agrees = false;
        }
    }
    let edges = count(store, "identity_edges", &workspace, "").await?;
    let conflicts = count(store, "identity_conflicts", &workspace, "").await?;
    let profile_changed = count(
        store,
        "outbox_events",
        &workspace,
        " AND family = 'profile'",
    )
    .await?;
    cleanup(store, &workspace).await?;
    room.evict(&workspace);
    let wall_micros = u64::try_from((seconds * 1e6) as u128).unwrap_or(u64::MAX);
    let report = RunReport {
        seconds,
        links_per_sec,
        events_per_sec: payloads.len() as f64 / seconds,
        first_half_links_per_sec: halves[0].0 as f64 / halves[0].1.as_secs_f64(),
        second_half_links_per_sec: halves[1].0 as f64 / halves[1].1.as_secs_f64(),
        baseline_rows_per_sec,
        ratio_to_baseline: links_per_sec / baseline_rows_per_sec,
        timings,
        bus_micros: wall_micros.saturating_sub(handler_micros),
        consumer_cpu_us_per_link,
        postgres_cpu_us_per_link,
        baseline_postgres_cpu_us_per_row,
        cpu_cost_ratio_to_baseline,
        postgres_backends: backends,
    };
    Ok((
        RunOutcome {
            report,
            edges,
            conflicts,
            profile_changed,
            quality,
            agrees,
        },
        Published {
            events: payloads.len() as u64,
            links,
            invalid,
            seconds: publish_seconds,
        },
    ))
}

/// Rows per baseline transaction: the links of one delivery, on average.
fn batch_rows(links: u64, events: usize, batch: usize) -> usize {
    let per_event = links as f64 / events.max(1) as f64;
    ((per_event * batch as f64).round() as usize).max(1)
}

/// Plain inserts of `rows` edge-shaped rows, `per_tx` a transaction (PostgreSQL: one
/// `UNNEST` statement each; SQLite: a prepared statement a row), into an ordinary table
/// shaped and indexed like `identity_edges`, dropped after. Returns rows per second and,
/// on PostgreSQL on this host, the CPU seconds of the backend that ran them.
async fn baseline(
    store: &Store,
    rows: u64,
    per_tx: usize,
) -> Result<(f64, Option<f64>), IdentityError> {
    // Its own name: a failed earlier run may have left its table behind.
    let table = format!("bench_baseline_edges_{}", uuid::Uuid::new_v4().simple());
    let index = |i: u64, salt: u8| {
        let mut b = [salt; 32];
        b[..8].copy_from_slice(&i.to_le_bytes());
        b.to_vec()
    };
    let at = chrono::Utc::now();
    let started;
    match store {
        Store::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            sqlx::query(&format!(
                "CREATE TABLE {table} (LIKE identity_edges INCLUDING INDEXES)"
            ))
            .execute(&mut *conn)
            .await?;
            let cpu = ConnectionCpu::start(&mut conn).await?;
            let insert = format!(
                "INSERT INTO {table} \
                 (workspace_id, seq, from_kind, from_index, to_kind, to_index, rule, event_id, linked_at) \
                 SELECT 'baseline', * FROM UNNEST($1::int8[], $2::int2[], $3::bytea[], $4::int2[], $5::bytea[], $6::text[], $7::text[], $8::timestamptz[])"
            );
            started = Instant::now();
            let mut next = 0u64;
            while next < rows {
                let end = (next + per_tx as u64).min(rows);
                let n = usize::try_from(end - next).unwrap_or(0);
                let (mut seqs, mut fk, mut fi, mut tk, mut ti, mut rule, mut ev, mut ats) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                for i in next..end {
                    seqs.push(i64::try_from(i).unwrap_or(i64::MAX));
                    fk.push(3i16);
                    fi.push(index(i, 1));
                    tk.push(1i16);
                    ti.push(index(i, 2));
                    rule.push("same_event");
                    ev.push(format!("e{i}"));
                    ats.push(at);
                }
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                sqlx::query(&insert)
                    .bind(seqs)
                    .bind(fk)
                    .bind(fi)
                    .bind(tk)
                    .bind(ti)
                    .bind(rule)
                    .bind(ev)
                    .bind(ats)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                next = end;
            }
            let took = started.elapsed();
            let cpu = cpu.and_then(|cpu| cpu.seconds_since_start());
            sqlx::query(&format!("DROP TABLE {table}"))
                .execute(&mut *conn)
                .await?;
            Ok((
                rows as f64 / took.max(Duration::from_micros(1)).as_secs_f64(),
                cpu,
            ))
        }
        Store::Sqlite(pool) => {
            let mut conn = pool.acquire().await?;
            sqlx::query(&format!(
                "CREATE TABLE {table} AS SELECT * FROM identity_edges WHERE 0"
            ))
            .execute(&mut *conn)
            .await?;
            sqlx::query(&format!(
                "CREATE UNIQUE INDEX {table}_pk ON {table} (workspace_id, seq)"
            ))
            .execute(&mut *conn)
            .await?;
            let insert = format!(
                "INSERT INTO {table} \
                 (workspace_id, seq, from_kind, from_index, to_kind, to_index, rule, event_id, linked_at) \
                 VALUES ('baseline', $1, 3, $2, 1, $3, 'same_event', $4, $5)"
            );
            started = Instant::now();
            let mut next = 0u64;
            while next < rows {
                let end = (next + per_tx as u64).min(rows);
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                for i in next..end {
                    sqlx::query(&insert)
                        .bind(i64::try_from(i).unwrap_or(i64::MAX))
                        .bind(index(i, 1))
                        .bind(index(i, 2))
                        .bind(format!("e{i}"))
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                next = end;
            }
            let took = started.elapsed();
            sqlx::query(&format!("DROP TABLE {table}"))
                .execute(&mut *conn)
                .await?;
            Ok((
                rows as f64 / took.max(Duration::from_micros(1)).as_secs_f64(),
                None,
            ))
        }
    }
}

async fn count(
    store: &Store,
    table: &str,
    workspace: &str,
    filter: &str,
) -> Result<u64, IdentityError> {
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE workspace_id = $1{filter}");
    let n: i64 = match store {
        Store::Postgres(pool) => {
            sqlx::query_scalar(&sql)
                .bind(workspace)
                .fetch_one(pool)
                .await?
        }
        Store::Sqlite(pool) => {
            sqlx::query_scalar(&sql)
                .bind(workspace)
                .fetch_one(pool)
                .await?
        }
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

async fn cleanup(store: &Store, workspace: &str) -> Result<(), IdentityError> {
    for table in [
        "outbox_events",
        "bus_processed",
        "identity_graph_versions",
        "identity_conflicts",
        "identity_edges",
        "identity_identifiers",
        "identity_trait_payloads",
        "identity_activity",
        "identity_computed_traits",
        "identity_rfm",
        "identity_rfm_boundaries",
        "identity_profiles",
    ] {
        let sql = format!("DELETE FROM {table} WHERE workspace_id = $1");
        match store {
            Store::Postgres(pool) => sqlx::query(&sql).bind(workspace).execute(pool).await?,
            Store::Sqlite(pool) => {
                sqlx::query(&sql).bind(workspace).execute(pool).await?;
                continue;
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bench_runs_on_sqlite_and_reports_quality() {
        let (store, dir) = embedded_store().await;
        let report = run(
            &store,
            &BenchOptions {
                shoppers: 200,
                batch: 200,
                seed: 7,
                runs: 2,
            },
        )
        .await
        .unwrap();
        assert!(report.links > 0 && report.links_per_sec > 0.0);
        assert_eq!(report.runs.len(), 2);
        assert!(report.runs.iter().all(|r| r.baseline_rows_per_sec > 0.0));
        // CPU is measured on PostgreSQL only.
        assert!(
            report
                .runs
                .iter()
                .all(|r| r.cpu_cost_ratio_to_baseline.is_none())
        );
        assert!(report.cpu_cost_ratio_to_baseline_median.is_none());
        assert!(report.runs.iter().all(|r| r.postgres_backends.is_none()));
        assert!(report.edges_written > 0);
        assert!(report.profile_changed_events > 0);
        assert!(report.store_agrees_with_graph);
        assert!(report.quality.precision >= 0.99, "{}", report.quality);
        assert!(report.quality.recall >= 0.98, "{}", report.quality);
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["links_per_sec"].as_f64().unwrap() > 0.0);
        assert!(json["quality"]["precision"].as_f64().is_some());
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[sqlx::test(migrations = "../../migrations/postgres")]
    async fn bench_on_postgres_reports_cpu_and_backend_states(pool: sqlx::PgPool) {
        let report = run(
            &Store::Postgres(pool),
            &BenchOptions {
                shoppers: 200,
                batch: 200,
                seed: 7,
                runs: 1,
            },
        )
        .await
        .unwrap();
        assert!(report.store_agrees_with_graph);
        let run = &report.runs[0];
        assert!(
            run.postgres_cpu_us_per_link.is_some_and(|c| c > 0.0),
            "{run:?}"
        );
        // Sampled once as each half starts, then every SAMPLE_EVERY.
        let states = run.postgres_backends.expect("sampled on PostgreSQL");
        assert!(states.samples >= 2, "{states:?}");
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["runs"][0]["postgres_backends"]["executing"].is_number());
    }

    /// Fails every event.
    struct Failing;

    #[async_trait::async_trait]
    impl EventHandler for Failing {
        async fn handle(
            &self,
            _tx: &mut meridian_bus::Tx<'_>,
            _event: &OutboxEvent,
        ) -> Result<(), meridian_bus::HandlerError> {
            Err(meridian_bus::HandlerError::Failed(
                "the graph is on fire".into(),
            ))
        }
    }

    /// On a migrated `store`: a failed event ends `consume` with the handler's error.
    async fn a_failed_event_ends_the_bench_on(store: &Store) {
        let workspace: meridian_domain::WorkspaceId = "acme".parse().unwrap();
        meridian_access::ensure_workspace(
            &*meridian_access::access_store(store),
            &workspace,
            &"eu".parse().unwrap(),
            "UTC".parse().unwrap(),
        )
        .await
        .unwrap();
        let subscription = IngestConsumer::subscription();
        let event = OutboxEvent::new(workspace, subscription.family.clone(), "key", vec![1]);
        enqueue(store, &[event]).await.unwrap();
        let bus = LocalBus::new(store.clone());
        while bus.relay_batch(100).await.unwrap() > 0 {}

        let err = consume(store, &bus, &subscription, &Failing, 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed 1 events"), "{err}");
        assert!(err.contains("the graph is on fire"), "{err}");
    }

    #[tokio::test]
    async fn a_failed_event_ends_the_bench_with_the_handlers_error_on_sqlite() {
        let (store, dir) = embedded_store().await;
        a_failed_event_ends_the_bench_on(&store).await;
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[sqlx::test(migrations = "../../migrations/postgres")]
    async fn a_failed_event_ends_the_bench_with_the_handlers_error_on_postgres(pool: sqlx::PgPool) {
        a_failed_event_ends_the_bench_on(&Store::Postgres(pool)).await;
    }

    /// A migrated embedded store in a fresh directory (removed by the caller).
    async fn embedded_store() -> (Store, std::path::PathBuf) {
        let dir = tempfile_dir();
        let store = Store::connect(&meridian_store::StoreLocation::Embedded {
            data_dir: dir.clone(),
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        (store, dir)
    }

    fn tempfile_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("meridian-identity-bench-{}", uuid::Uuid::new_v4()))
    }
}
