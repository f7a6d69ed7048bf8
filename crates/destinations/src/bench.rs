//! `meridian bench audience`: a 1 M-member audience normalized, hashed (email + phone, as
//! Meta wants them), batched and sent to the Meta fake over HTTP on loopback.
//!
//! Baseline in the same run: plain SHA-256 of the raw values on one core, so the
//! normalize+hash rate reads as a ratio of what the hardware does anyway.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::connector::{Direction, MemberRow};
use crate::hash::{Sha256Hex, hash_field};
use crate::meta::{MetaConfig, MetaCustomAudience};
use crate::normalize::{Field, Platform};
use crate::transport::{RetryPolicy, Transport};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub members: usize,
    pub batch_size: usize,
    pub concurrency: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            members: 1_000_000,
            batch_size: 10_000,
            concurrency: 4,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub members: usize,
    pub fields_per_member: usize,
    pub cores: usize,
    pub hashes: u64,
    pub normalize_hash_seconds: f64,
    pub hashes_per_second: f64,
    pub hashes_per_second_per_core: f64,
    /// SHA-256 of the raw values, one core, no normalization: the baseline.
    pub baseline_raw_sha256_per_second_per_core: f64,
    /// hashes_per_second_per_core / baseline (1.0 = normalization is free).
    pub normalize_hash_vs_baseline_ratio: f64,
    pub send_seconds: f64,
    pub requests: u64,
    pub members_accepted: u64,
    pub members_accepted_by_fake: u64,
    pub total_seconds: f64,
    pub goal_seconds: f64,
    pub within_goal: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("could not start the Meta fake: {0}")]
    Fake(#[from] std::io::Error),
    #[error(transparent)]
    Connector(#[from] crate::connector::ConnectorError),
}

fn raw_member(i: usize) -> (String, String) {
    // Ugly on purpose: capitals, spaces, dots, national-looking formatting.
    (
        format!("  Shopper.{i}+Promo@Example.COM "),
        format!("+49 (151) {:04}-{:04}", (i / 10_000) % 10_000, i % 10_000),
    )
}

pub async fn run(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = options.members;
    let raw: Arc<Vec<(String, String)>> = Arc::new((0..n).map(raw_member).collect());

    // Baseline: raw SHA-256 on one core over a 200k sample.
    let sample = n.min(200_000);
    let baseline = {
        let raw = raw.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut sink = 0u8;
            for (email, phone) in raw.iter().take(sample) {
                sink ^= Sha256Hex::of(email.as_bytes()).as_bytes()[0];
                sink ^= Sha256Hex::of(phone.as_bytes()).as_bytes()[0];
            }
            std::hint::black_box(sink);
            (2 * sample) as f64 / started.elapsed().as_secs_f64()
        })
        .await
        .unwrap_or(0.0)
    };

    let total_started = Instant::now();
    // Normalize + hash on every core.
    let hash_started = Instant::now();
    let rows: Arc<[MemberRow]> = {
        let raw = raw.clone();
        tokio::task::spawn_blocking(move || {
            let chunk = n.div_ceil(cores).max(1);
            std::thread::scope(|scope| {
                let handles: Vec<_> = raw
                    .chunks(chunk)
                    .enumerate()
                    .map(|(c, part)| {
                        scope.spawn(move || {
                            part.iter()
                                .enumerate()
                                .map(|(j, (email, phone))| MemberRow {
                                    member: (c * chunk + j).to_string(),
                                    values: vec![
                                        hash_field(Platform::Meta, Field::Email, email, None),
                                        hash_field(Platform::Meta, Field::Phone, phone, None),
                                    ],
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect::<Vec<_>>()
            })
        })
        .await
        .unwrap_or_default()
        .into()
    };
    let hash_seconds = hash_started.elapsed().as_secs_f64();
    let hashes = rows
        .iter()
        .map(|r| r.values.iter().flatten().count() as u64)
        .sum::<u64>();

    let fake = meridian_test_support::platforms::meta::MetaFake::new("bench-token", false);
    let server = fake.start().await?;
    let meta = MetaCustomAudience::new(
        MetaConfig {
            base_url: server.base_url(),
            api_version: "v21.0".into(),
            audience_id: "1000000".into(),
            access_token: "bench-token".into(),
            schema: vec![Field::Email, Field::Phone],
            batch_size: options.batch_size,
            concurrency: options.concurrency,
        },
        Arc::new(Transport::new(RetryPolicy::default(), 0)),
    )?;
    let send_started = Instant::now();
    let outcome = meta.sync(Direction::Add, rows, 1).await?;
    let send_seconds = send_started.elapsed().as_secs_f64();
    let total_seconds = total_started.elapsed().as_secs_f64();

    let hashes_per_second = hashes as f64 / hash_seconds;
    let per_core = hashes_per_second / cores as f64;
    Ok(BenchReport {
        members: n,
        fields_per_member: 2,
        cores,
        hashes,
        normalize_hash_seconds: hash_seconds,
        hashes_per_second,
        hashes_per_second_per_core: per_core,
        baseline_raw_sha256_per_second_per_core: baseline,
        normalize_hash_vs_baseline_ratio: if baseline > 0.0 {
            per_core / baseline
        } else {
            0.0
        },
        send_seconds,
        requests: outcome.requests,
        members_accepted: outcome.accepted,
        members_accepted_by_fake: fake.received("1000000") as usize as u64,
        total_seconds,
        goal_seconds: 10.0,
        within_goal: total_seconds <= 10.0,
    })
}
