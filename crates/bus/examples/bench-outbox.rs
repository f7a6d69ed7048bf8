//! Runs the outbox benchmark (what `meridian bench outbox --json` prints):
//! `cargo run --release -p meridian-bus --example bench-outbox`, against PostgreSQL and
//! JetStream when `DATABASE_URL` / `NATS_URL` are set, embedded otherwise.
//! Optional `BENCH_EVENTS` overrides the event count.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut options = meridian_bus::bench::BenchOptions::from_env();
    if let Ok(events) = std::env::var("BENCH_EVENTS") {
        options.events = events.parse()?;
    }
    let report = meridian_bus::bench::run(options).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
