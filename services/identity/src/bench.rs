//! `meridian bench identity`: identifier links per second through the identity room
//! (intake: normalization, blocked values, blind index; the graph; sealing of new values,
//! each under its own vault subject, with batched vault round trips; the store, one
//! transaction per batch with its `ProfileChanged` outbox rows; sealing batch N + 1 while
//! batch N is written, [`IdentityRoom::ingest_pipelined`]) on the store it is given — PostgreSQL for the
//! published figure — and the pairwise precision/recall of the stitching against the
//! synthetic storefront's ground truth, shared family devices and re-used emails included.
//!
//! A *link* is one identifier seen on one event and joined to that event's profile (or
//! refused and recorded): the unit of work of identity resolution. New edges written are
//! reported separately. The run uses its own scratch workspace, a vault whose data keys
//! persist in the same store, and deletes its graph rows at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_store::Store;
use meridian_store::sqlx;
use meridian_test_support::storefront::{QualityReport, Storefront, StorefrontConfig};
use meridian_vault::{KeyRing, Vault};
use serde::Serialize;

use crate::error::IdentityError;
use crate::identifier::{IdentifierObservation, Rules};
use crate::quality::{observation, raw_identifier};
use crate::room::{IdentityRoom, Timings};

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Shoppers generated (events and identifiers scale with it).
    pub shoppers: usize,
    /// Observations per ingest call (one transaction each).
    pub batch: usize,
    /// Generator seed.
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            shoppers: 30_000,
            batch: 10_000,
            seed: 42,
        }
    }
}

/// Results.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `postgres` or `sqlite`.
    pub backend: &'static str,
    /// `release` or `debug` (debug figures are not meaningful).
    pub build_profile: &'static str,
    pub shoppers: usize,
    pub events: u64,
    /// Identifier occurrences over all events (each one is a link attempt).
    pub links: u64,
    /// Edges written (links that joined or reinforced a profile with a new pair).
    pub edges_written: u64,
    /// Links refused and recorded (blocked, shared, merge protection, limits).
    pub conflicts: u64,
    pub invalid_identifiers: u64,
    pub batch_size: usize,
    pub seconds: f64,
    /// Identifier links per second through intake, graph, sealing and store.
    pub links_per_sec: f64,
    pub events_per_sec: f64,
    pub edges_written_per_sec: f64,
    /// The goal: at least 100,000 links per second on PostgreSQL.
    pub links_per_sec_goal: f64,
    /// Pairwise quality against the generator's ground truth.
    pub quality: QualityReport,
    /// Goals: precision ≥ 0.999, recall ≥ 0.99.
    pub precision_goal: f64,
    pub recall_goal: f64,
    /// First half of the stream (mostly new shoppers: one data key created per profile).
    pub first_half_links_per_sec: f64,
    /// Second half (steady state: most shoppers known).
    pub second_half_links_per_sec: f64,
    pub first_half_timings: Timings,
    pub second_half_timings: Timings,
    /// Where the time went, summed over batches (microseconds).
    pub timings: Timings,
    /// Sampled lookups through the store agreed with the in-memory graph.
    pub store_agrees_with_graph: bool,
}

#[derive(Debug, Default)]
struct Phase {
    links: u64,
    edges: u64,
    conflicts: u64,
    invalid: u64,
    events: u64,
    seconds: f64,
    timings: Timings,
}

/// Runs the benchmark on `store` (migrated).
pub async fn run(store: &Store, opts: &BenchOptions) -> Result<BenchReport, IdentityError> {
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
    let key_store = meridian_vault::key_store_for(store);
    let ring = KeyRing::generate(1).map_err(|e| IdentityError::Setup(format!("key ring: {e}")))?;
    let vault = Arc::new(Vault::new(Arc::new(ring), key_store));
    let rules = Rules::default().validate()?;
    let room = IdentityRoom::from_store(store, vault, rules);

    let storefront = Storefront::generate(&StorefrontConfig {
        seed: opts.seed,
        shoppers: opts.shoppers,
        ..StorefrontConfig::default()
    });
    let observations: Vec<IdentifierObservation> =
        storefront.events.iter().map(observation).collect();
    // Warm the workspace's blind-index key and the (empty) graph.
    room.ingest(&workspace, &[]).await?;

    let batch = opts.batch.max(1);
    // Two timed phases: the first half of the stream meets mostly new shoppers (a data key
    // is created per new profile: one store commit each); the second half is the steady
    // state of a running storefront, where most shoppers are known.
    let half = observations.len() / 2;
    let mut phases = [Phase::default(), Phase::default()];
    for (phase, part) in phases
        .iter_mut()
        .zip([&observations[..half], &observations[half..]])
    {
        let started = Instant::now();
        let chunks: Vec<&[IdentifierObservation]> = part.chunks(batch).collect();
        let reports = room.ingest_pipelined(&workspace, &chunks).await?;
        for (chunk, report) in chunks.iter().zip(reports) {
            phase.links += chunk
                .iter()
                .map(|o| o.identifiers.len() as u64)
                .sum::<u64>();
            phase.edges += report.links;
            phase.conflicts += report.conflicts;
            phase.invalid += report.invalid;
            phase.events += chunk.len() as u64;
            phase.timings += report.timings;
        }
        phase.seconds = started
            .elapsed()
            .max(Duration::from_micros(1))
            .as_secs_f64();
    }
    let [cold, warm] = phases;
    let seconds = cold.seconds + warm.seconds;
    let (links, edges, conflicts, invalid) = (
        cold.links + warm.links,
        cold.edges + warm.edges,
        cold.conflicts + warm.conflicts,
        cold.invalid + warm.invalid,
    );
    let mut timings = cold.timings;
    timings += warm.timings;

    // Quality: every canonical identifier's profile, from the graph the store was written from.
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
    let quality = QualityReport::measure(&storefront, |s| profile_of.get(&s.canonical).cloned());
    // The store answers the same as the graph (a sample through real lookups).
    let mut agrees = true;
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
    cleanup(store, &workspace).await?;
    room.evict(&workspace);

    let events = observations.len() as u64;
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
        shoppers: opts.shoppers,
        events,
        links,
        edges_written: edges,
        conflicts,
        invalid_identifiers: invalid,
        batch_size: batch,
        seconds,
        links_per_sec: links as f64 / seconds,
        events_per_sec: events as f64 / seconds,
        edges_written_per_sec: edges as f64 / seconds,
        links_per_sec_goal: 100_000.0,
        quality,
        precision_goal: 0.999,
        recall_goal: 0.99,
        store_agrees_with_graph: agrees,
        timings,
        first_half_links_per_sec: cold.links as f64 / cold.seconds,
        second_half_links_per_sec: warm.links as f64 / warm.seconds,
        first_half_timings: cold.timings,
        second_half_timings: warm.timings,
    })
}

async fn cleanup(store: &Store, workspace: &str) -> Result<(), IdentityError> {
    for table in [
        "outbox_events",
        "identity_graph_versions",
        "identity_conflicts",
        "identity_edges",
        "identity_identifiers",
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
        let dir = tempfile_dir();
        let store = Store::connect(&meridian_store::StoreLocation::Embedded {
            data_dir: dir.clone(),
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let report = run(
            &store,
            &BenchOptions {
                shoppers: 200,
                batch: 500,
                seed: 7,
            },
        )
        .await
        .unwrap();
        assert!(report.links > 0 && report.links_per_sec > 0.0);
        assert!(report.edges_written > 0);
        assert!(report.store_agrees_with_graph);
        assert!(report.quality.precision >= 0.99, "{}", report.quality);
        assert!(report.quality.recall >= 0.98, "{}", report.quality);
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["links_per_sec"].as_f64().unwrap() > 0.0);
        assert!(json["quality"]["precision"].as_f64().is_some());
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("meridian-identity-bench-{}", uuid::Uuid::new_v4()))
    }
}
