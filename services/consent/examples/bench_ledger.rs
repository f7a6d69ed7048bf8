//! `cargo run --release -p meridian-consent --example bench_ledger [ENTRIES [BATCH]]`:
//! what `meridian bench ledger --json` prints, against `DATABASE_URL`.
#![allow(clippy::unwrap_used)]

#[tokio::main]
async fn main() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut args = std::env::args().skip(1);
    let mut opts = meridian_consent::bench::BenchOptions::new(url);
    if let Some(n) = args.next() {
        opts.entries = n.parse().unwrap();
    }
    if let Some(b) = args.next() {
        opts.batch = b.parse().unwrap();
    }
    let report = meridian_consent::bench::run(&opts).await.unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
