//! `meridian hash` and `meridian bench audience`: the destinations crate's operator tools.

use clap::Args;
use meridian_destinations::{Field, Platform};

#[derive(Debug, Args)]
pub(crate) struct HashArgs {
    /// meta, google or tiktok.
    #[arg(long)]
    pub(crate) platform: String,
    /// email, phone, first_name, last_name, city, state, zip or country.
    #[arg(long)]
    pub(crate) field: String,
    /// Region (ISO 3166-1 alpha-2) national phone numbers are read in.
    #[arg(long, value_name = "CC")]
    pub(crate) default_region: Option<String>,
}

/// Values one per line on stdin; the platform's normalized SHA-256 hex per line on stdout
/// (an empty line for a value the platform would reject).
pub(crate) fn run(args: HashArgs) -> anyhow::Result<()> {
    let platform: Platform = args.platform.parse()?;
    let field: Field = args.field.parse()?;
    let stdin = std::io::stdin().lock();
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    meridian_destinations::cli::hash_lines(
        platform,
        field,
        args.default_region.as_deref(),
        stdin,
        stdout,
    )?;
    Ok(())
}

pub(crate) async fn bench() -> anyhow::Result<meridian_destinations::bench::BenchReport> {
    Ok(
        meridian_destinations::bench::run(&meridian_destinations::bench::BenchOptions::default())
            .await?,
    )
}
