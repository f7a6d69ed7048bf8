//! `meridian bench <what>`: self-contained benchmarks. With `--json` each
//! prints one JSON object whose keys name their units.

use anyhow::Context as _;
use meridian_store::{ScratchDatabase, Store, StoreLocation};
use serde::Serialize;

use crate::cli::{BenchArgs, BenchTarget};
use crate::config::Config;

/// A store that lives for one benchmark: a scratch PostgreSQL database next to
/// `DATABASE_URL`, or a SQLite file in a temporary directory.
struct ScratchStore {
    store: Store,
    database: Option<ScratchDatabase>,
    _dir: Option<tempfile::TempDir>,
}

impl ScratchStore {
    async fn create(config: &Config) -> anyhow::Result<ScratchStore> {
        let (location, database, dir) = match &config.store {
            StoreLocation::Postgres { url, .. } => {
                let database = ScratchDatabase::create(url, "meridian_bench")
                    .await
                    .context("creating the scratch database")?;
                let location = StoreLocation::Postgres {
                    url: database.url(),
                    max_connections: 32,
                };
                (location, Some(database), None)
            }
            StoreLocation::Embedded { .. } => {
                let dir = tempfile::tempdir()?;
                let location = StoreLocation::Embedded {
                    data_dir: dir.path().to_owned(),
                };
                (location, None, Some(dir))
            }
        };
        let store = Store::connect(&location).await?;
        store.migrate().await?;
        Ok(ScratchStore {
            store,
            database,
            _dir: dir,
        })
    }

    async fn drop_now(self) -> anyhow::Result<()> {
        self.store.close().await;
        if let Some(database) = self.database {
            database
                .drop_now()
                .await
                .context("dropping the scratch database")?;
        }
        Ok(())
    }
}

fn print<T: Serialize + std::fmt::Debug>(json: bool, report: &T) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    Ok(())
}

pub(crate) async fn run(config: &Config, args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchTarget::Ledger => {
            let StoreLocation::Postgres { url, .. } = &config.store else {
                anyhow::bail!("bench ledger measures PostgreSQL: set DATABASE_URL");
            };
            let report = meridian_consent::bench::run(&meridian_consent::bench::BenchOptions::new(
                url.clone(),
            ))
            .await?;
            print(args.json, &report)
        }
        BenchTarget::Erasure => {
            let StoreLocation::Postgres { url, .. } = &config.store else {
                anyhow::bail!("bench erasure measures PostgreSQL: set DATABASE_URL");
            };
            let report = meridian_consent::bench_erasure::run(
                &meridian_consent::bench_erasure::ErasureBenchOptions::new(url.clone()),
            )
            .await?;
            print(args.json, &report)
        }
        BenchTarget::Identity => {
            let scratch = ScratchStore::create(config).await?;
            let result = meridian_identity::bench::run(
                &scratch.store,
                &meridian_identity::bench::BenchOptions {
                    shoppers: args.shoppers,
                    runs: args.runs,
                    ..meridian_identity::bench::BenchOptions::default()
                },
            )
            .await;
            scratch.drop_now().await?;
            print(args.json, &result?)
        }
        BenchTarget::Outbox => {
            let report =
                meridian_bus::bench::run(meridian_bus::bench::BenchOptions::from_env()).await?;
            print(args.json, &report)
        }
        BenchTarget::Vault => {
            let report =
                meridian_vault::bench::run(&meridian_vault::bench::BenchOptions::default()).await?;
            print(args.json, &report)
        }
        BenchTarget::Audience => print(args.json, &crate::hash::bench().await?),
        BenchTarget::Policy => {
            let engine = crate::policy::load(config.policy_dir.as_deref())?;
            // The measurement loop is CPU-bound: keep it off the async workers.
            let report = tokio::task::spawn_blocking(move || {
                meridian_policy::bench::run(
                    &engine,
                    &meridian_policy::bench::BenchOptions::default(),
                )
            })
            .await?;
            print(args.json, &report)
        }
        BenchTarget::Ingest => {
            let report = crate::bench_ingest::run(
                config,
                crate::bench_ingest::IngestBenchOptions {
                    events: args.events,
                    batch: args.batch,
                    concurrency: args.concurrency,
                    grpc_addr: args.grpc_addr.clone(),
                    api_key: args.api_key.clone(),
                    runs: args.runs,
                },
            )
            .await?;
            print(args.json, &report)
        }
    }
}
