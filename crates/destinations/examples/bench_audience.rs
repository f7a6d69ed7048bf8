//! The same measurement as `meridian bench audience --json`, without building the whole
//! binary: `cargo run --release -p meridian-destinations --example bench_audience`.

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let report =
        meridian_destinations::bench::run(&meridian_destinations::bench::BenchOptions::default())
            .await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
