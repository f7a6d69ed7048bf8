//! Runs `meridian_identity::bench::run` against a fresh PostgreSQL database created next to
//! `DATABASE_URL` (dropped afterwards), and prints the JSON report:
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run --release -p meridian-identity --example bench [shoppers]`

use meridian_identity::bench::{BenchOptions, run};
use meridian_store::sqlx::{self, Connection, PgConnection};
use meridian_store::{Store, StoreLocation};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")?;
    let shoppers = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(BenchOptions::default().shoppers);
    let db = format!("meridian_bench_identity_{}", std::process::id());
    let mut admin = PgConnection::connect(&url).await?;
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await?;
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    let store = Store::connect(&StoreLocation::Postgres {
        url: format!("{base}/{db}"),
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
    sqlx::query(&format!("DROP DATABASE {db}"))
        .execute(&mut admin)
        .await?;
    println!("{}", serde_json::to_string_pretty(&result?)?);
    Ok(())
}
