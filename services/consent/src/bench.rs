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
}

impl BenchOptions {
    pub fn new(database_url: impl Into<String>) -> Self {
        BenchOptions {
            database_url: database_url.into(),
            entries: 200_000,
            batch: 1_000,
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
    /// Read from PostgreSQL, re-hashed, signatures checked.
    pub verify_seconds: f64,
    pub verified_per_sec: f64,
    pub goal_verified_per_sec: f64,
    pub verify_goal_met: bool,
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

    let start = Instant::now();
    let report = verify_with(ledger.clone(), &vault, workspace).await?;
    let verify_seconds = start.elapsed().as_secs_f64();

    let rows = ledger.scan(workspace, 0, u32::MAX).await?;
    let public = vault.signing_public_key(workspace).await?;
    let start = Instant::now();
    let mut v = ChainVerifier::new(workspace, public);
    for r in &rows {
        v.push(r);
    }
    let mem = v.finish(None);
    let mem_seconds = start.elapsed().as_secs_f64();

    let appends_per_sec = measured as f64 / append_seconds.max(1e-9);
    let verified_per_sec = report.entries_checked as f64 / verify_seconds.max(1e-9);
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
        goal_verified_per_sec: GOAL_VERIFIED_PER_SEC,
        verify_goal_met: verified_per_sec >= GOAL_VERIFIED_PER_SEC,
        verified_in_memory_per_sec: mem.entries_checked as f64 / mem_seconds.max(1e-9),
        valid: report.valid && mem.valid,
        body_bytes,
    })
}

fn entry(i: u64) -> NewEntry {
    NewEntry {
        entry_id: uuid::Uuid::now_v7().to_string(),
        subject_ref: format!("sr_{:032x}", i % 50_000),
        recorded_at: 1_760_000_000_000_000 + i64::try_from(i).unwrap_or(0),
        body: sample_body(i),
    }
}
