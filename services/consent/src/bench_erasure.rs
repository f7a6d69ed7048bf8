//! `meridian bench erasure --json`: request → signed receipt latency (p50/p99) over many
//! erasures, each removing the subject from four destinations.
//!
//! The consent room runs for real (PostgreSQL scratch database, ledger appends, saga tables,
//! leases, vault key destruction, signed receipts, the worker loop). The other rooms are
//! stand-ins: four destinations are HTTP servers on loopback that answer after a set
//! latency and count the removals they receive; locating the profile and purging events
//! are in-memory targets. Wall-clock figures come from the stored timestamps (request
//! submitted → saga finished), so the load generator's own polling does not count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use meridian_policy::PolicyEngine;
use meridian_store::{ScratchDatabase, Store, StoreLocation, sqlx};
use meridian_vault::{BlindIndex, KeyRing, MemoryKeyStore, Vault};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dsr::{RequestKind, RequestStatus, SubmitRequest};
use crate::erasure::{
    ErasurePlan, ErasureSubject, ErasureTarget, Found, SagaSettings, StepError, StepReport,
    SubjectLocator,
};
use crate::error::ConsentError;
use crate::ledger::{Actor, Decision, LawfulBasis, Notice};
use crate::room::{ConsentRoom, IdKind, RecordRequest, SubjectId, SubjectQuery};
use crate::signals::{Choice, Signals};

/// Goal of issue 11.
pub const GOAL_P99_MS: f64 = 5_000.0;

#[derive(Debug, Clone)]
pub struct ErasureBenchOptions {
    pub database_url: String,
    pub erasures: usize,
    pub destinations: usize,
    /// How long each fake destination takes to answer a removal.
    pub destination_latency: Duration,
    /// Erasure requests in flight at once (closed loop).
    pub concurrency: usize,
}

impl ErasureBenchOptions {
    pub fn new(database_url: impl Into<String>) -> Self {
        ErasureBenchOptions {
            database_url: database_url.into(),
            erasures: 1_000,
            destinations: 4,
            destination_latency: Duration::from_millis(25),
            concurrency: 16,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ErasureBenchReport {
    pub backend: &'static str,
    pub erasures: usize,
    pub destinations: usize,
    pub destination_latency_ms: f64,
    pub concurrency: usize,
    pub seconds: f64,
    pub erasures_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub goal_p99_ms: f64,
    pub goal_met: bool,
    /// Removal calls the fake destinations answered (= erasures × destinations when every
    /// removal happened exactly once).
    pub removals_received: u64,
    /// Every receipt verified with the workspace's public key.
    pub receipts_verified: bool,
    /// What stood in for the other rooms.
    pub stand_ins: &'static str,
}

fn err(e: impl std::error::Error + Send + Sync + 'static) -> ConsentError {
    ConsentError::Storage(Box::new(e))
}

/// A destination on loopback: answers `POST /remove` after `latency`, counting calls.
async fn fake_destination(
    latency: Duration,
    calls: Arc<AtomicU64>,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), ConsentError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let app = axum::Router::new().route(
        "/remove",
        axum::routing::post(move |body: axum::body::Bytes| {
            let calls = calls.clone();
            async move {
                tokio::time::sleep(latency).await;
                if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
                    return axum::http::StatusCode::BAD_REQUEST;
                }
                calls.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// One POST over a fresh connection; the status code.
async fn post(addr: std::net::SocketAddr, body: &str) -> Result<u16, StepError> {
    let io = |_| StepError::new("destination unreachable");
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    let request = format!(
        "POST /remove HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.map_err(io)?;
    std::str::from_utf8(response.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StepError::new("destination answered garbage"))
}

struct Destinations(Vec<std::net::SocketAddr>);

#[async_trait]
impl ErasureTarget for Destinations {
    fn name(&self) -> &str {
        "remove_from_destinations"
    }
    async fn erase(&self, _ws: &str, s: &ErasureSubject) -> Result<StepReport, StepError> {
        let body = serde_json::json!({ "request_id": s.request_id, "profile_ids": s.profile_ids })
            .to_string();
        let calls = self.0.iter().map(|a| post(*a, &body));
        for status in futures::future::join_all(calls).await {
            let status = status?;
            if status != 200 {
                return Err(StepError::new(format!("destination answered {status}")));
            }
        }
        Ok(StepReport::counts(
            serde_json::json!({ "destinations": self.0.len() }),
        ))
    }
}

struct Locator;

#[async_trait]
impl SubjectLocator for Locator {
    async fn locate(&self, _ws: &str, indexes: &[BlindIndex]) -> Result<Found, StepError> {
        Ok(Found {
            profile_ids: indexes.first().map(|b| b.to_hex()).into_iter().collect(),
            ..Found::default()
        })
    }
}

struct Events;

#[async_trait]
impl ErasureTarget for Events {
    fn name(&self) -> &str {
        "purge_events"
    }
    async fn erase(&self, _ws: &str, _s: &ErasureSubject) -> Result<StepReport, StepError> {
        Ok(StepReport::counts(serde_json::json!({ "events": 0 })))
    }
}

fn shopper(i: usize) -> SubjectQuery {
    SubjectQuery {
        identifiers: vec![
            SubjectId {
                kind: IdKind::Email,
                value: format!("shopper{i}@bench.example"),
                default_region: None,
            },
            SubjectId {
                kind: IdKind::Scoped("storefront.shopify".into()),
                value: format!("{}", 100_000 + i),
                default_region: None,
            },
        ],
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the benchmark in a scratch database next to `opts.database_url`.
pub async fn run(opts: &ErasureBenchOptions) -> Result<ErasureBenchReport, ConsentError> {
    let scratch = ScratchDatabase::create(&opts.database_url, "meridian_bench_erasure")
        .await
        .map_err(err)?;
    let result = run_in(opts, &scratch.url()).await;
    if let Err(e) = scratch.drop_now().await {
        tracing::warn!(error = %e, "could not drop the erasure benchmark database");
    }
    result
}

async fn run_in(opts: &ErasureBenchOptions, url: &str) -> Result<ErasureBenchReport, ConsentError> {
    let store = Store::connect(&StoreLocation::Postgres {
        url: url.to_owned(),
        max_connections: 24,
    })
    .await
    .map_err(err)?;
    store.migrate().await.map_err(err)?;
    let Store::Postgres(pool) = &store else {
        return Err(ConsentError::Policy("bench needs PostgreSQL".into()));
    };
    let ws = "bench";
    sqlx::query("INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ($1, 'eu', 'Europe/Paris')")
        .bind(ws)
        .execute(pool)
        .await?;
    let calls = Arc::new(AtomicU64::new(0));
    let mut addrs = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..opts.destinations {
        let (addr, task) = fake_destination(opts.destination_latency, calls.clone()).await?;
        addrs.push(addr);
        servers.push(task);
    }
    let vault = Arc::new(Vault::new(
        Arc::new(KeyRing::generate(1).map_err(err)?),
        Arc::new(MemoryKeyStore::new()),
    ));
    let policies =
        Arc::new(PolicyEngine::builtin().map_err(|e| ConsentError::Policy(e.to_string()))?);
    let room = ConsentRoom::new(store.clone(), vault.clone(), policies).with_erasure_plan(
        ErasurePlan {
            locator: Some(Arc::new(Locator)),
            targets: vec![Arc::new(Destinations(addrs)), Arc::new(Events)],
            shredder: None,
        },
        SagaSettings {
            concurrency: u32::try_from(opts.concurrency.max(1) * 2).unwrap_or(32),
            poll_interval: Duration::from_millis(100),
            ..SagaSettings::default()
        },
    );
    // every shopper has a consent on the ledger
    for i in 0..opts.erasures {
        room.record(
            ws,
            RecordRequest {
                subject: shopper(i),
                jurisdiction: "EU-FR".into(),
                signals: Signals {
                    choices: vec![Choice {
                        purpose: "marketing.advertising.third_party.targeted".into(),
                        decision: Decision::Given,
                        lawful_basis: LawfulBasis::Consent,
                    }],
                    ..Signals::default()
                },
                notice: Notice::default(),
                collection_point: "checkout".into(),
                actor: Actor::Subject,
                time_zone: None,
                collected_at: None,
                idempotency_key: None,
            },
        )
        .await?;
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = {
        let room = room.clone();
        tokio::spawn(async move { room.run_erasure_worker(stopped).await })
    };

    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let clients = (0..opts.concurrency.max(1)).map(|_| {
        let room = room.clone();
        let next = next.clone();
        let total = opts.erasures as u64;
        async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, ConsentError>(ids);
                }
                let r = room
                    .submit_request(
                        ws,
                        SubmitRequest {
                            kind: RequestKind::Erasure,
                            subject: shopper(usize::try_from(i).unwrap_or(0)),
                            jurisdiction: "EU-FR".into(),
                            corrections: None,
                            idempotency_key: None,
                        },
                        Utc::now(),
                    )
                    .await?;
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let got = room.get_request(ws, &r.request_id).await?;
                    if got.status == RequestStatus::Completed {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(ConsentError::Conflict(
                            "an erasure did not complete within 120 s".into(),
                        ));
                    }
                    room.wait_for_a_completion(Duration::from_millis(100)).await;
                }
                ids.push(r.request_id);
            }
        }
    });
    let results = futures::future::join_all(clients).await;
    let seconds = start.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let _ = worker.await;
    for s in servers {
        s.abort();
    }
    let mut ids = Vec::new();
    for r in results {
        ids.extend(r?);
    }
    let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
        "SELECT r.submitted_at, s.finished_at, s.receipt_json, s.receipt_signature
         FROM dsr_requests r JOIN erasure_sagas s USING (workspace_id, request_id)
         WHERE s.state = 'completed'",
    )
    .fetch_all(pool)
    .await?;
    let public = crate::room::public_key_b64(&vault.signing_public_key(ws).await?);
    let receipts_verified = rows.len() == ids.len()
        && rows
            .iter()
            .all(|(_, _, json, sig)| crate::room::verify_receipt(json, sig, &public));
    let mut latencies: Vec<f64> = rows
        .iter()
        .map(|(submitted, finished, _, _)| (finished - submitted) as f64 / 1_000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let p99 = percentile(&latencies, 99.0);
    pool.close().await;
    Ok(ErasureBenchReport {
        backend: "postgres",
        erasures: ids.len(),
        destinations: opts.destinations,
        destination_latency_ms: opts.destination_latency.as_secs_f64() * 1_000.0,
        concurrency: opts.concurrency,
        seconds,
        erasures_per_sec: ids.len() as f64 / seconds.max(1e-9),
        latency_p50_ms: percentile(&latencies, 50.0),
        latency_p99_ms: p99,
        latency_max_ms: latencies.last().copied().unwrap_or(0.0),
        goal_p99_ms: GOAL_P99_MS,
        goal_met: p99 <= GOAL_P99_MS && receipts_verified,
        removals_received: calls.load(Ordering::Relaxed),
        receipts_verified,
        stand_ins: "identity (locate), ingest (purge events) in memory; destinations are HTTP servers on loopback; the consent room, ledger, saga store, vault and receipts are real",
    })
}
