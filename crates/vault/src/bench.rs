//! `meridian bench vault`: single-core throughput of sealing, opening and blind indexing.
//!
//! Runs entirely in memory ([`crate::MemoryKeyStore`], an ephemeral [`crate::KeyRing`]) with
//! warm caches, through the public [`Vault`] methods, in one task that never yields, so the
//! figures are per core. Build with `--release` for meaningful numbers.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use zeroize::Zeroizing;

use crate::blind::{BlindIndex, IdentifierKind};
use crate::error::Result;
use crate::kek::KeyRing;
use crate::store::MemoryKeyStore;
use crate::vault::Vault;

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Plaintext size of each sealed field and length of each indexed email.
    pub field_bytes: usize,
    /// Distinct subjects cycled through (all data keys cached).
    pub subjects: usize,
    /// Wall time spent on each measurement.
    pub duration: Duration,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            field_bytes: 32,
            subjects: 1024,
            duration: Duration::from_secs(2),
        }
    }
}

/// Results; every rate is operations per second on one core.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Plaintext bytes per field.
    pub field_bytes: usize,
    /// Distinct subjects.
    pub subjects: usize,
    /// Threads used for each measurement (always 1).
    pub threads: usize,
    /// `release` or `debug` (debug figures are not meaningful).
    pub build_profile: &'static str,
    /// `thread_cpu_time` (operations per CPU-second of the measuring thread) or `wall_clock`
    /// (where thread CPU time is unavailable; then a loaded machine lowers the figures).
    pub timing: &'static str,
    /// `Vault::seal` calls per second per core.
    pub seals_per_sec_per_core: f64,
    /// `Vault::open` calls per second per core.
    pub opens_per_sec_per_core: f64,
    /// `Vault::blind_index` calls per second per core (email of `field_bytes` bytes,
    /// including normalization).
    pub blind_indexes_per_sec_per_core: f64,
    /// `Vault::blind_index` for phone numbers (libphonenumber parsing dominates).
    pub phone_blind_indexes_per_sec_per_core: f64,
    /// Identifiers per second per core through `Vault::identifier_subject_keys`, asked
    /// [`ANCHOR_BATCH`] at a time with both caches warm: the subject and data key of every
    /// event's anchor, as ingest asks for them on each call.
    pub anchor_keys_per_sec_per_core: f64,
    /// A Segment-like event body ([`json_body`], about 700 bytes of JSON) sealed per second
    /// per core with `SubjectKey::seal_json`, which writes the JSON into the sealed buffer.
    pub json_body_seals_per_sec_per_core: f64,
    /// The same body serialized with `serde_json::to_vec`, then sealed with
    /// `SubjectKey::seal`: the baseline of the figure above, in the same run.
    pub json_body_seals_via_to_vec_per_sec_per_core: f64,
    /// Size of one sealed field in bytes.
    pub sealed_field_bytes: usize,
}

/// Anchors per `identifier_subject_keys` call: `bench ingest`'s default batch.
pub const ANCHOR_BATCH: usize = 500;

/// CPU time consumed by the calling thread, in nanoseconds (Linux `schedstat`), so rates stay
/// per core when other processes compete for the machine.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

async fn measure<F, Fut>(duration: Duration, mut op: F) -> Result<f64>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let start = Instant::now();
    let cpu_start = thread_cpu_ns();
    let mut done: usize = 0;
    loop {
        for _ in 0..256 {
            op(done).await?;
            done += 1;
        }
        let elapsed = start.elapsed();
        if elapsed >= duration {
            // The loop never yields, so it ran on this thread throughout.
            let cpu = match (cpu_start, thread_cpu_ns()) {
                (Some(a), Some(b)) if b > a => Some(Duration::from_nanos(b - a)),
                _ => None,
            };
            let secs = cpu.unwrap_or(elapsed).as_secs_f64();
            return Ok(done as f64 / secs);
        }
    }
}

/// A storefront event's body as ingest seals it: properties, context and identifiers.
fn json_body(i: usize) -> serde_json::Value {
    serde_json::json!({
        "name": "",
        "group_id": "",
        "properties": {
            "order_id": format!("o-{i}"), "revenue": 129.9, "currency": "EUR",
            "products": [
                {"sku": "SKU-1", "name": "Linen shirt", "price": 59.9, "quantity": 1},
                {"sku": "SKU-2", "name": "Canvas tote", "price": 35.0, "quantity": 2}
            ],
            "coupon": "WINTER10"
        },
        "traits": {},
        "context": {
            "ip": "203.0.113.7", "locale": "fr-FR", "timezone": "Europe/Paris",
            "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15",
            "page": {"path": "/checkout/thanks", "url": "https://shop.example/checkout/thanks"},
            "storefront": {"id": "shopify:acme-fr", "platform": "shopify", "country": "FR"}
        },
        "identifiers": [
            {"type": "anonymous_id", "source": "", "value": format!("anon-{i:08}")},
            {"type": "email", "source": "", "value": format!("user{i:07}@example.com")}
        ],
        "original_timestamp": "2026-12-07T10:00:00+00:00",
        "stripped": []
    })
}

fn email_of_len(i: usize, len: usize) -> String {
    let mut local = format!("user{i:07}.");
    let domain = "@example.com";
    while local.len() + domain.len() < len {
        local.push('x');
    }
    format!("{local}{domain}")
}

/// Runs the benchmark.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport> {
    let provider = Arc::new(KeyRing::generate(1)?);
    let vault = Vault::new(provider, Arc::new(MemoryKeyStore::new()));
    let ws = "bench";
    let n = opts.subjects.max(1);
    let subjects: Vec<String> = (0..n).map(|i| format!("subject-{i}")).collect();
    let records: Vec<String> = (0..n).map(|i| format!("record-{i}")).collect();
    let emails: Vec<String> = (0..n).map(|i| email_of_len(i, opts.field_bytes)).collect();
    let phones: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "06 12 {:02} {:02} {:02}",
                (i / 10_000) % 100,
                (i / 100) % 100,
                i % 100
            )
        })
        .collect();
    let plaintext = vec![b'p'; opts.field_bytes];

    // Warm up: create every data key and the workspace key.
    let mut sealed = Vec::with_capacity(n);
    for i in 0..n {
        sealed.push(
            vault
                .seal(ws, &subjects[i], &records[i], "email", &plaintext)
                .await?,
        );
    }
    vault
        .blind_index(ws, IdentifierKind::Email, &emails[0], None)
        .await?;

    let seals = measure(opts.duration, |i| {
        let (s, r, p) = (&subjects[i % n], &records[i % n], &plaintext);
        let vault = &vault;
        async move {
            black_box(vault.seal(ws, s, r, "email", p).await?);
            Ok(())
        }
    })
    .await?;
    let opens = measure(opts.duration, |i| {
        let (s, r, c) = (&subjects[i % n], &records[i % n], &sealed[i % n]);
        let vault = &vault;
        async move {
            black_box(vault.open(ws, s, r, "email", c).await?);
            Ok(())
        }
    })
    .await?;
    let blind = measure(opts.duration, |i| {
        let e = &emails[i % n];
        let vault = &vault;
        async move {
            black_box(
                vault
                    .blind_index(ws, IdentifierKind::Email, e, None)
                    .await?,
            );
            Ok(())
        }
    })
    .await?;
    let phone = measure(opts.duration / 2, |i| {
        let p = &phones[i % n];
        let vault = &vault;
        async move {
            black_box(
                vault
                    .blind_index(ws, IdentifierKind::Phone, p, Some("FR"))
                    .await?,
            );
            Ok(())
        }
    })
    .await?;

    // Warmed just before measuring: cached entries live between half the cache TTL and all
    // of it, and the measurements above take longer than half.
    let mut anchors = Vec::with_capacity(n);
    for e in &emails {
        anchors.push(
            vault
                .blind_index(ws, IdentifierKind::Email, e, None)
                .await?,
        );
    }
    let batches: Vec<&[BlindIndex]> = anchors.chunks(ANCHOR_BATCH.min(n)).collect();
    for batch in &batches {
        vault.identifier_subject_keys(ws, batch).await?;
    }
    let anchor_calls = measure(opts.duration, |i| {
        let batch = batches[i % batches.len()];
        let vault = &vault;
        async move {
            black_box(vault.identifier_subject_keys(ws, batch).await?);
            Ok(())
        }
    })
    .await?;
    let anchors_per_call = anchors.len() as f64 / batches.len() as f64;

    let key = vault.subject_key(ws, &subjects[0]).await?;
    let bodies: Vec<serde_json::Value> = (0..n.min(64)).map(json_body).collect();
    // Ingest's hint: half as much again as the event's size as delivered, which the bodies'
    // JSON stays within.
    let body_size = serde_json::to_vec(&bodies[0])
        .map_err(|_| crate::VaultError::Unserializable)?
        .len()
        * 3
        / 2;
    let json_seals = measure(opts.duration, |i| {
        let (key, body, r) = (&key, &bodies[i % bodies.len()], &records[i % n]);
        async move {
            black_box(key.seal_json(r, "body", body, body_size)?);
            Ok(())
        }
    })
    .await?;
    let json_seals_via_to_vec = measure(opts.duration, |i| {
        let (key, body, r) = (&key, &bodies[i % bodies.len()], &records[i % n]);
        async move {
            let bytes = Zeroizing::new(
                serde_json::to_vec(body).map_err(|_| crate::VaultError::Unserializable)?,
            );
            black_box(key.seal(r, "body", &bytes)?);
            Ok(())
        }
    })
    .await?;

    Ok(BenchReport {
        field_bytes: opts.field_bytes,
        subjects: n,
        threads: 1,
        build_profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        timing: if thread_cpu_ns().is_some() {
            "thread_cpu_time"
        } else {
            "wall_clock"
        },
        seals_per_sec_per_core: seals,
        opens_per_sec_per_core: opens,
        blind_indexes_per_sec_per_core: blind,
        phone_blind_indexes_per_sec_per_core: phone,
        anchor_keys_per_sec_per_core: anchor_calls * anchors_per_call,
        json_body_seals_per_sec_per_core: json_seals,
        json_body_seals_via_to_vec_per_sec_per_core: json_seals_via_to_vec,
        sealed_field_bytes: sealed.first().map_or(0, Vec::len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bench_runs_and_reports_units() {
        let report = run(&BenchOptions {
            field_bytes: 32,
            subjects: 8,
            duration: Duration::from_millis(20),
        })
        .await
        .unwrap();
        assert!(report.seals_per_sec_per_core > 0.0);
        assert!(report.opens_per_sec_per_core > 0.0);
        assert!(report.blind_indexes_per_sec_per_core > 0.0);
        assert_eq!(report.sealed_field_bytes, 32 + crate::seal::SEAL_OVERHEAD);
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "seals_per_sec_per_core",
            "opens_per_sec_per_core",
            "blind_indexes_per_sec_per_core",
            "anchor_keys_per_sec_per_core",
            "json_body_seals_per_sec_per_core",
            "json_body_seals_via_to_vec_per_sec_per_core",
        ] {
            assert!(json[key].as_f64().unwrap() > 0.0, "{key}");
        }
        assert_eq!(email_of_len(3, 32).len(), 32);
        assert!(["thread_cpu_time", "wall_clock"].contains(&report.timing));
        assert!(
            thread_cpu_ns().is_some(),
            "Linux exposes per-thread CPU time"
        );
    }
}
