//! `meridian bench <what>`: self-contained benchmarks. With `--json` each
//! prints one JSON object whose keys name their units.

use anyhow::Context as _;
use meridian_store::sqlx::{self, Connection, PgConnection};
use meridian_store::{Store, StoreLocation};
use serde::Serialize;

use crate::cli::{BenchArgs, BenchTarget};
use crate::config::Config;

/// A store that lives for one benchmark: a new PostgreSQL database next to
/// `DATABASE_URL`, or a SQLite file in a temporary directory.
struct ScratchStore {
    store: Store,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl ScratchStore {
    async fn create(config: &Config) -> anyhow::Result<ScratchStore> {
        match &config.store {
            StoreLocation::Postgres { url, .. } => {
                let name = format!(
                    "meridian_bench_{}_{}",
                    std::process::id(),
                    chrono_free_nanos()
                );
                let mut admin = PgConnection::connect(url)
                    .await
                    .context("connecting to DATABASE_URL")?;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .context("creating the scratch database")?;
                let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
                let store = Store::connect(&StoreLocation::Postgres {
                    url: format!("{base}/{name}"),
                    max_connections: 32,
                })
                .await?;
                store.migrate().await?;
                Ok(ScratchStore {
                    store,
                    postgres: Some((url.clone(), name)),
                    _dir: None,
                })
            }
            StoreLocation::Embedded { .. } => {
                let dir = tempfile::tempdir()?;
                let store = Store::connect(&StoreLocation::Embedded {
                    data_dir: dir.path().to_owned(),
                })
                .await?;
                store.migrate().await?;
                Ok(ScratchStore {
                    store,
                    postgres: None,
                    _dir: Some(dir),
                })
            }
        }
    }

    async fn drop_now(self) -> anyhow::Result<()> {
        self.store.close().await;
        if let Some((url, name)) = self.postgres {
            let mut admin = PgConnection::connect(&url).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await
                .context("dropping the scratch database")?;
        }
        Ok(())
    }
}

/// Nanoseconds of the wall clock, to keep scratch names unique.
fn chrono_free_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
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
        BenchTarget::Identity => {
            let scratch = ScratchStore::create(config).await?;
            let result = meridian_identity::bench::run(
                &scratch.store,
                &meridian_identity::bench::BenchOptions::default(),
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
    }
}
