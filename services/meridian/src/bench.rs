//! `meridian bench <what>`: self-contained benchmarks. With `--json` each
//! prints one JSON object whose keys name their units.

use serde::Serialize;

use crate::cli::{BenchArgs, BenchTarget};
use crate::config::Config;

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
