//! `meridian`: one binary that runs any service (`meridian serve ingest`) or
//! all of them (`meridian serve`), and carries the operator commands.

mod adapters;
mod bench;
mod bench_ingest;
mod cli;
mod config;
mod demo;
mod hash;
mod http;
mod identity;
mod ingest;
mod keys;
mod ledger;
mod outbox;
mod policy;
mod privacy;
mod serve;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, ConsentCommand, KeysCommand, LedgerCommand, OutboxCommand};
use crate::config::{Config, Settings};

/// mimalloc rather than glibc's malloc: the services allocate and free many small buffers
/// per request across threads, and under `bench ingest` glibc's malloc and free were about a
/// third of the server's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    keep_allocator_off_huge_pages();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process and the processes it starts, unless
/// the operator chose with `MIMALLOC_ALLOW_THP`, which mimalloc then follows itself.
///
/// mimalloc asks the kernel for huge pages on the memory it takes from it. Where the system
/// grants them on request (THP `madvise`, as on this project's machines; or `always`), the
/// first touch of each 2 MiB region, and the touch after mimalloc returned it, zeroes all
/// 2 MiB at once, and may compact memory first, on the worker thread of the request that
/// touched it. `bench ingest --events 300000` counted about 2,200 such faults a run (4 GiB
/// zeroed), and 6 with huge pages off. Over 8 alternated pairs of runs its sustained ratio
/// to `COPY` went from a median of 0.434 to 0.472 (pair ratio median 1.14, 7 of 8 above 1),
/// at the same server CPU per event. The default 100,000-event run is mostly the heap's
/// first growth, where huge pages mean fewer faults: its ratio did not move (6 pairs,
/// median 1.02) and its half-rate p99 rose from a median of 19.7 ms to 21.1 ms. A server
/// lives in the longer run's state, past its first growth. `bench identity` did not move
/// (4 pairs, median 1.005).
#[cfg(target_os = "linux")]
fn keep_allocator_off_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // Set once, before any thread starts; it holds for the whole process. A kernel or
    // sandbox that refuses it leaves the service as fast as before, not broken.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

#[cfg(not(target_os = "linux"))]
fn keep_allocator_off_huge_pages() {}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version => {
            println!("meridian {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        // Policy commands read files only: no store, no runtime.
        Command::Policy(command) => return policy::run(command),
        Command::Hash(args) => return hash::run(args),
        Command::Consent(ConsentCommand::Decode { json, signal }) => {
            let decoded = meridian_consent_signals::decode(&signal)?;
            let value = decoded.to_json();
            if json {
                println!("{value}");
            } else {
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
            return Ok(());
        }
        _ => {}
    }
    let file = match &cli.store.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let config = Config::resolve(file.merge(Settings::from_env()).merge(cli.flag_settings()))?;

    // The demo starts its own embedded platform: only an explicit --data-dir is its own.
    let demo_data_dir = cli.store.data_dir.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Operator commands log warnings only, unless MERIDIAN_LOG says otherwise.
        let serving = matches!(cli.command, Command::Serve(_));
        let log_filter = if serving || std::env::var_os("MERIDIAN_LOG").is_some() {
            config.log_filter.clone()
        } else {
            "warn".to_owned()
        };
        let _telemetry = meridian_telemetry::init(&meridian_telemetry::TelemetryConfig {
            log_filter,
            otlp_endpoint: config.otlp_endpoint.clone(),
            service_name: "meridian".to_owned(),
        })?;
        match cli.command {
            Command::Serve(args) => serve::run(config, args.services).await,
            Command::Migrate => migrate(&config).await,
            Command::Keys(KeysCommand::CreateWorkspace(args)) => {
                keys::create_workspace(&config, &args.workspace).await
            }
            Command::Keys(KeysCommand::CreateApiKey { workspace, scopes }) => {
                keys::create_key(&config, &workspace.workspace, &scopes).await
            }
            Command::Keys(KeysCommand::RotateKek { retire_previous }) => {
                keys::rotate_kek(&config, retire_previous).await
            }
            Command::Keys(KeysCommand::RetireKek { version }) => {
                keys::retire_kek(&config, version).await
            }
            Command::Keys(KeysCommand::RevokeApiKey { key_id }) => {
                keys::revoke_key(&config, &key_id).await
            }
            Command::Bench(args) => bench::run(&config, args).await,
            Command::Demo(args) => demo::run(args, demo_data_dir).await,
            Command::Outbox(OutboxCommand::DeadLetters {
                workspace,
                consumer,
                all,
                limit,
            }) => outbox::dead_letters(&config, workspace, consumer, all, limit).await,
            Command::Outbox(OutboxCommand::Replay { id }) => outbox::replay(&config, &id).await,
            Command::Ledger(LedgerCommand::Verify { workspace }) => {
                ledger::verify(&config, workspace.as_deref()).await
            }
            Command::Version | Command::Policy(_) | Command::Consent(_) | Command::Hash(_) => {
                Ok(())
            }
        }
    })
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let store = config.open_store().await?;
    println!(
        "{} schema is at migration {}",
        store.backend().as_str(),
        store.latest_known_migration().unwrap_or(0)
    );
    store.close().await;
    Ok(())
}
