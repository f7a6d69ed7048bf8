//! `meridian bench ledger --json`: signed, chained, durable appends per second on PostgreSQL,
//! and verified entries per second.
//!
//! Runs in a scratch database it creates next to the one named by `database_url` (the ledger
//! is append-only: bench entries could never be removed from a real database) and drops it
//! afterwards. Keys come from an ephemeral in-memory key ring. Appends go through the
//! production path ([`ConsentStore::append`]: one transaction per batch, chain, one Ed25519
//! signature per batch, `synchronous_commit` as the server has it); verification through
//! [`verify_with`](crate::verify_with) (read from the database, re-hash every entry, check
//! every signature).
//!
//! The machine may be shared, so verification is measured over several rounds, each next to
//! a baseline measured in the same round: the binary COPY that verification reads, drained
//! and discarded. `verify_over_copy` (median verify time / median COPY time) says what
//! checking costs on top of reading, whatever the load.

use std::sync::Arc;
use std::time::Instant;

use meridian_store::sqlx;
use meridian_store::{ScratchDatabase, Store};
use meridian_vault::{KeyRing, MemoryKeyStore, Vault};
use serde::Serialize;

use crate::error::ConsentError;
use crate::ledger::{
    self, Actor, ChainVerifier, Decision, EntryBody, LawfulBasis, NewEntry, Notice,
    PurposeDecision, Source,
};
use crate::room::{VaultSigner, verify_with};
use crate::store::{ConsentStore, SqlConsentStore};

/// Goals of issue 7.
pub const GOAL_APPENDS_PER_SEC: f64 = 20_000.0;
pub const GOAL_VERIFIED_PER_SEC: f64 = 500_000.0;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A PostgreSQL server URL; the scratch database is created on that server.
    pub database_url: String,
    /// Entries to append.
    pub entries: u64,
    /// Entries per transaction (one signature each).
    pub batch: usize,
    /// Verification rounds (each with its COPY baseline).
    pub verify_rounds: usize,
}

impl BenchOptions {
    pub fn new(database_url: impl Into<String>) -> Self {
        BenchOptions {
            database_url: database_url.into(),
            entries: 200_000,
            batch: 1_000,
            verify_rounds: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub backend: &'static str,
    pub entries: u64,
    pub batch_size: usize,
    pub signatures: u64,
    pub synchronous_commit: String,
    pub append_seconds: f64,
    pub appends_per_sec: f64,
    pub goal_appends_per_sec: f64,
    pub appends_goal_met: bool,
    /// Read from PostgreSQL, re-hashed, signatures checked: the median round.
    pub verify_seconds: f64,
    pub verified_per_sec: f64,
    /// The fastest round.
    pub verify_seconds_min: f64,
    pub verified_per_sec_best: f64,
    pub goal_verified_per_sec: f64,
    /// On the median round.
    pub verify_goal_met: bool,
    pub verify_rounds: usize,
    /// Baseline: the same rows by the same binary COPY, drained and discarded (median, min).
    pub copy_seconds: f64,
    pub copy_seconds_min: f64,
    pub copied_per_sec: f64,
    pub copy_bytes: u64,
    /// Median verify time / median COPY time: 1.0 means verifying costs nothing on top of
    /// reading the rows with one COPY. Below 1.0, verification read faster than one COPY
    /// can (it reads several sequence ranges at once).
    pub verify_over_copy: f64,
    /// The same check on entries already in memory (the CPU cost alone).
    pub verified_in_memory_per_sec: f64,
    pub valid: bool,
    pub body_bytes: usize,
}

fn err(e: impl std::error::Error + Send + Sync + 'static) -> ConsentError {
    ConsentError::Storage(Box::new(e))
}

fn sample_body(i: u64) -> String {
    EntryBody {
        schema_version: ledger::SCHEMA_VERSION.into(),
        controller: "bench".into(),
        notice: Notice {
            url: "https://shop.example/privacy".into(),
            version: "12".into(),
            hash: "5f".repeat(32),
            language: "fr".into(),
        },
        purposes: vec![PurposeDecision {
            purpose: if i.is_multiple_of(2) {
                "analytics".into()
            } else {
                "marketing.advertising.third_party.targeted".into()
            },
            decision: if i.is_multiple_of(3) {
                Decision::Refused
            } else {
                Decision::Given
            },
            lawful_basis: LawfulBasis::Consent,
        }],
        jurisdiction: "EU-FR".into(),
        source: Source::Tcf,
        raw_signal: "CQpTbQAQpTbQAAKA1AENBYFgAP_gAEPgAAqIISAB7C5ESSFBYHhnAKMAEAAEQUQAAAgAAAAAAIAAAgAAAAAAAAAAgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        collection_point: "cookie-banner".into(),
        actor: Actor::Subject,
        policy_version: "bench".into(),
        time_zone: "Europe/Paris".into(),
    }
    .to_canonical()
}

/// Runs the benchmark in a scratch database on the server of `opts.database_url`.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, ConsentError> {
    let scratch = ScratchDatabase::create(&opts.database_url, "meridian_bench_ledger")
        .await
        .map_err(err)?;
    let result = run_in(opts, &scratch.url()).await;
    if let Err(e) = scratch.drop_now().await {
        tracing::warn!(error = %e, "could not drop the ledger benchmark database");
    }
    result
}

async fn run_in(opts: &BenchOptions, url: &str) -> Result<BenchReport, ConsentError> {
    let url = url.to_owned();
    let store = Store::connect(&meridian_store::StoreLocation::Postgres {
        url,
        max_connections: 4,
    })
    .await
    .map_err(err)?;
    store.migrate().await.map_err(err)?;
    let Store::Postgres(pool) = &store else {
        return Err(ConsentError::Policy("bench needs PostgreSQL".into()));
    };
    let workspace = "bench";
    sqlx::query("INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ($1, 'eu', 'Europe/Paris')")
        .bind(workspace)
        .execute(pool)
        .await?;
    let synchronous_commit: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(pool)
        .await?;
    let provider = Arc::new(KeyRing::generate(1).map_err(err)?);
    let vault = Vault::new(provider, Arc::new(MemoryKeyStore::new()));
    let signer = VaultSigner(&vault);
    let ledger = Arc::new(SqlConsentStore(store.clone()));
    let batch = opts.batch.max(1);
    let body_bytes = sample_body(0).len();

    // warm up: the signing key, connections, plans
    ledger
        .append(workspace, vec![entry(0)], Vec::new(), None, &signer, None)
        .await?;
    let mut appended = 1u64;
    let mut signatures = 1u64;
    let start = Instant::now();
    while appended < opts.entries + 1 {
        let n = (opts.entries + 1 - appended).min(batch as u64);
        let entries: Vec<NewEntry> = (appended..appended + n).map(entry).collect();
        ledger
            .append(workspace, entries, Vec::new(), None, &signer, None)
            .await?;
        appended += n;
        signatures += 1;
    }
    let append_seconds = start.elapsed().as_secs_f64();
    let measured = opts.entries;

    // Rounds alternate which goes first, so neither always finds the cache warmer.
    let rounds = opts.verify_rounds.max(1);
    let mut verify_times = Vec::with_capacity(rounds);
    let mut copy_times = Vec::with_capacity(rounds);
    let mut copy_bytes = 0;
    let mut valid = true;
    let mut checked = 0;
    for round in 0..rounds {
        for step in 0..2 {
            if (round + step) % 2 == 0 {
                let start = Instant::now();
                copy_bytes = drain_copy(pool, workspace).await?;
                copy_times.push(start.elapsed().as_secs_f64());
            } else {
                let start = Instant::now();
                let report = verify_with(ledger.clone(), &vault, workspace).await?;
                verify_times.push(start.elapsed().as_secs_f64());
                valid &= report.valid;
                checked = report.entries_checked;
            }
        }
    }
    let (verify_seconds, verify_seconds_min) = median_and_min(&mut verify_times);
    let (copy_seconds, copy_seconds_min) = median_and_min(&mut copy_times);

    let (sink, mut chunks) = tokio::sync::mpsc::channel(crate::store::STREAM_CHUNKS_AHEAD);
    let reader = {
        let ledger = ledger.clone();
        tokio::spawn(async move { ledger.stream_ledger(workspace, 1, None, sink).await })
    };
    let mut in_memory = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        in_memory.push(chunk);
    }
    reader.await.map_err(err)??;
    let public = vault.signing_public_key(workspace).await?;
    let start = Instant::now();
    let mut v = ChainVerifier::new(workspace, public);
    for chunk in &in_memory {
        v.push_chunk(chunk);
    }
    let mem = v.finish();
    let mem_seconds = start.elapsed().as_secs_f64();

    let appends_per_sec = measured as f64 / append_seconds.max(1e-9);
    let per_sec = |n: u64, seconds: f64| n as f64 / seconds.max(1e-9);
    let verified_per_sec = per_sec(checked, verify_seconds);
    pool.close().await;
    Ok(BenchReport {
        backend: "postgres",
        entries: measured,
        batch_size: batch,
        signatures,
        synchronous_commit,
        append_seconds,
        appends_per_sec,
        goal_appends_per_sec: GOAL_APPENDS_PER_SEC,
        appends_goal_met: appends_per_sec >= GOAL_APPENDS_PER_SEC,
        verify_seconds,
        verified_per_sec,
        verify_seconds_min,
        verified_per_sec_best: per_sec(checked, verify_seconds_min),
        goal_verified_per_sec: GOAL_VERIFIED_PER_SEC,
        verify_goal_met: verified_per_sec >= GOAL_VERIFIED_PER_SEC,
        verify_rounds: rounds,
        copy_seconds,
        copy_seconds_min,
        copied_per_sec: per_sec(checked, copy_seconds),
        copy_bytes,
        verify_over_copy: verify_seconds / copy_seconds.max(1e-9),
        verified_in_memory_per_sec: per_sec(mem.entries_checked, mem_seconds),
        valid: valid && mem.valid && checked == measured + 1,
        body_bytes,
    })
}

/// The baseline: the binary COPY verification reads, drained without looking at it.
async fn drain_copy(pool: &sqlx::PgPool, workspace: &str) -> Result<u64, ConsentError> {
    use futures::StreamExt as _;
    use sqlx::postgres::PgPoolCopyExt as _;
    let mut stream = pool
        .copy_out_raw(&crate::store::ledger_copy_statement(
            workspace,
            (1, i64::MAX),
        ))
        .await?;
    let mut bytes = 0u64;
    while let Some(data) = stream.next().await {
        bytes += data?.len() as u64;
    }
    Ok(bytes)
}

/// (median, min) of a non-empty list of seconds.
fn median_and_min(times: &mut [f64]) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n == 0 {
        0.0
    } else if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    (median, times.first().copied().unwrap_or(0.0))
}

fn entry(i: u64) -> NewEntry {
    NewEntry {
        entry_id: uuid::Uuid::now_v7().to_string(),
        subject_ref: format!("sr_{:032x}", i % 50_000),
        recorded_at: 1_760_000_000_000_000 + i64::try_from(i).unwrap_or(0),
        body: sample_body(i),
    }
}
