//! Prints the `meridian bench vault --json` report: `cargo run --release -p meridian-vault --example bench_vault`.
#![allow(clippy::unwrap_used)]

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let report = meridian_vault::bench::run(&meridian_vault::bench::BenchOptions::default())
        .await
        .unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
