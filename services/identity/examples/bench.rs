//! Runs `meridian_identity::bench::run` against a fresh PostgreSQL database created next to
//! `DATABASE_URL` (dropped afterwards), and prints the JSON report:
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run --release -p meridian-identity --example bench [shoppers]`

use meridian_identity::bench::{BenchOptions, run};
use meridian_store::{ScratchDatabase, Store, StoreLocation};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")?;
    let shoppers = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(BenchOptions::default().shoppers);
    let scratch = ScratchDatabase::create(&url, "meridian_bench_identity").await?;
    let store = Store::connect(&StoreLocation::Postgres {
        url: scratch.url(),
        max_connections: 32,
    })
    .await?;
    store.migrate().await?;
    let result = run(
        &store,
        &BenchOptions {
            shoppers,
            ..BenchOptions::default()
        },
    )
    .await;
    store.close().await;
    scratch.drop_now().await?;
    println!("{}", serde_json::to_string_pretty(&result?)?);
    Ok(())
}
