//! Prints `meridian bench policy --json` figures without the binary:
//! `cargo run --release -p meridian-policy --example bench_policy`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = meridian_policy::PolicyEngine::builtin()?;
    let report =
        meridian_policy::bench::run(&engine, &meridian_policy::bench::BenchOptions::default());
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
