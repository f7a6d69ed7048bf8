//! The command line: `meridian serve|migrate|keys|version|…`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "meridian",
    version,
    about = "Meridian: a privacy-first, cross-border customer data platform",
    long_about = "Runs any Meridian service, or all of them in one process, and carries the operator commands.\n\
                  With no configuration it runs embedded (SQLite in ./meridian-data); with DATABASE_URL \
                  (and NATS_URL) it runs against PostgreSQL (and NATS JetStream)."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How every command finds its configuration and store.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// A TOML file of settings (keys as in `meridian serve --help`, with underscores).
    #[arg(long, global = true, env = "MERIDIAN_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Directory of the embedded store and local key files [default: ./meridian-data].
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Runs services: the ones named, or all of them in one process.
    Serve(ServeArgs),
    /// Applies database migrations and exits.
    Migrate,
    /// Workspaces and API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Policies: validate them, or explain one decision.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The transactional outbox: dead letters and their replay.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// The consent ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Consent signals.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// Benchmarks: each starts what it needs (PostgreSQL/NATS when DATABASE_URL/NATS_URL are set).
    Bench(BenchArgs),
    /// Prints each stdin line's normalized SHA-256 for an ad platform.
    Hash(crate::hash::HashArgs),
    /// A cross-border storefront in one command: consent, events, stitching, an audience
    /// synced to a file, an access and an erasure request, through the public API.
    Demo(DemoArgs),
    /// Prints the version.
    Version,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many shoppers to generate.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub(crate) shoppers: usize,
    /// Seed of the generated storefront (the same seed gives the same shoppers).
    #[arg(long, default_value_t = 2026)]
    pub(crate) seed: u64,
    /// Use a running platform instead of starting one embedded.
    #[arg(long, value_name = "ADDR")]
    pub(crate) grpc_addr: Option<String>,
    /// An admin API key of the running platform's workspace (with --grpc-addr).
    #[arg(
        long,
        env = "MERIDIAN_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub(crate) api_key: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCommand {
    /// Lists events that consumers gave up on, newest first (payloads are never shown).
    DeadLetters {
        #[arg(long, value_name = "ID")]
        workspace: Option<String>,
        #[arg(long, value_name = "NAME")]
        consumer: Option<String>,
        /// Include dead letters a replay has resolved.
        #[arg(long)]
        all: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Asks the running consumer to apply a dead letter again.
    Replay {
        /// The dead letter's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LedgerCommand {
    /// Checks every hash link and signature; exits non-zero naming the first bad entry.
    Verify {
        /// One workspace [default: every workspace].
        #[arg(long, value_name = "ID")]
        workspace: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConsentCommand {
    /// Decodes an IAB TCF v2.2 TC string or an IAB GPP string (detected) with the IAB reference names.
    Decode {
        /// Print one JSON object (the default prints it indented).
        #[arg(long)]
        json: bool,
        /// The TC or GPP string.
        signal: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Loads and validates a policy set; exits non-zero with file:line on any error.
    Check {
        /// A policies directory [default: the policies built into this binary].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Decides one question and says which rule decided it.
    Explain(Box<ExplainArgs>),
}

#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// Print the decision as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    /// A policies directory [default: the policies built into this binary].
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
    /// collect, process or export.
    #[arg(long)]
    pub(crate) action: String,
    /// EU-DE, DE, GB, US-CA, CN, BR, …
    #[arg(long)]
    pub(crate) jurisdiction: String,
    /// A fideslang purpose key (marketing.advertising.third_party.targeted, …).
    #[arg(long)]
    pub(crate) purpose: String,
    /// A fideslang data category (user.contact.email, …).
    #[arg(long)]
    pub(crate) category: Option<String>,
    /// given, guardian, refused or none.
    #[arg(long, default_value = "none")]
    pub(crate) consent: String,
    /// The subject sent Global Privacy Control.
    #[arg(long)]
    pub(crate) gpc: bool,
    /// The subject's age in years.
    #[arg(long)]
    pub(crate) age: Option<String>,
    /// PIPL: the subject gave separate consent for this processing.
    #[arg(long)]
    pub(crate) separate_consent: bool,
    /// Destination platform (meta, google, tiktok, shopify).
    #[arg(long)]
    pub(crate) destination: Option<String>,
    /// Region where the destination processes the data (US, …).
    #[arg(long)]
    pub(crate) destination_region: Option<String>,
    /// Transfer mechanism in place (dpf, scc, idta, …); repeatable.
    #[arg(long = "transfer-mechanism")]
    pub(crate) transfer_mechanisms: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchTarget {
    /// Signed, chained, durable ledger appends/s and verified entries/s (PostgreSQL).
    Ledger,
    /// Erasure request → signed receipt latency (p50/p99) over 1,000 erasures with four
    /// destinations on loopback fakes (PostgreSQL).
    Erasure,
    /// Identifier links per second through the identity room, and stitching precision/recall
    /// on the synthetic storefront (in a scratch database).
    Identity,
    /// Events/s from commit to consumer, next to plain INSERTs of the same rows.
    Outbox,
    /// Seals, opens and blind indexes per second per core for 32-byte fields.
    Vault,
    /// Memoized policy decisions per second per core, and uncached Cedar latency.
    Policy,
    /// Events/s and ack latency through `serve ingest` over gRPC, next to plain COPY.
    Ingest,
    /// A 1 M-member audience normalized, hashed, batched and sent to the Meta fake over HTTP.
    Audience,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[arg(value_enum)]
    pub(crate) what: BenchTarget,
    /// Print one JSON object whose keys name their units.
    #[arg(long)]
    pub(crate) json: bool,
    /// bench ingest: events to send at the maximum rate.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) events: usize,
    /// bench ingest: events per Ingest call.
    #[arg(long, default_value_t = 500)]
    pub(crate) batch: usize,
    /// bench ingest: concurrent clients.
    #[arg(long, default_value_t = 4)]
    pub(crate) concurrency: usize,
    /// bench ingest: target a running server instead of starting one (needs --api-key).
    #[arg(long, value_name = "ADDR")]
    pub(crate) grpc_addr: Option<String>,
    /// bench ingest: an API key with the ingest scope, for --grpc-addr.
    #[arg(long, value_name = "KEY")]
    pub(crate) api_key: Option<String>,
    /// bench identity: shoppers the synthetic storefront generates.
    #[arg(long, default_value_t = 30_000)]
    pub(crate) shoppers: usize,
    /// bench identity: timed runs, each on a fresh workspace (min and median reported).
    /// bench ingest: runs, each on a fresh server and database unless --grpc-addr (medians,
    /// and the p99 of every half-rate call, reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub(crate) enum ServiceName {
    Ingest,
    Identity,
    Consent,
    Audience,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Services to run; none means all.
    #[arg(value_enum)]
    pub(crate) services: Vec<ServiceName>,
    /// gRPC listen address (port 0 picks a free port) [default: 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR")]
    pub(crate) grpc_addr: Option<String>,
    /// HTTP listen address for the Segment-compatible API, webhooks and probes [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub(crate) http_addr: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Creates a workspace with its home region and default time zone.
    CreateWorkspace(WorkspaceArgs),
    /// Creates an API key and prints it alone on stdout (creating the workspace on first use).
    CreateApiKey {
        #[command(flatten)]
        workspace: WorkspaceArgs,
        /// Comma-separated scopes: ingest, consent, dsr, audience, admin.
        #[arg(long, value_name = "SCOPES")]
        scopes: String,
    },
    /// Generates a new key-encryption key (KEK) version and re-wraps every stored key under it.
    ///
    /// Embedded: a new `keys/kek-v<N>.key` in the data directory. With MERIDIAN_KEK set: the new
    /// KEK is MERIDIAN_KEK and the old one MERIDIAN_KEK_PREVIOUS (see docs/operations.md).
    RotateKek {
        /// After a complete re-wrap, destroy the previous local KEK versions. Backups taken
        /// before then become unreadable: the point of crypto-shredding, so keep it deliberate.
        #[arg(long)]
        retire_previous: bool,
    },
    /// Destroys one local KEK version that no stored key is wrapped under any more.
    RetireKek {
        #[arg(long, value_name = "N")]
        version: u32,
    },
    /// Revokes an API key by its key id (the part after `mk_`, before the second `_`).
    RevokeApiKey {
        #[arg(long, value_name = "KEY_ID")]
        key_id: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct WorkspaceArgs {
    #[arg(long, value_name = "ID")]
    pub(crate) workspace: String,
    /// Home region of the workspace's data [default: MERIDIAN_REGION, else `local`].
    #[arg(long, value_name = "REGION")]
    pub(crate) region: Option<String>,
    /// Default IANA time zone [default: MERIDIAN_TIME_ZONE, else UTC].
    #[arg(long, value_name = "ZONE")]
    pub(crate) time_zone: Option<String>,
}

impl Cli {
    /// The settings given on the command line, to layer over file and environment.
    pub(crate) fn flag_settings(&self) -> Settings {
        let mut settings = Settings {
            data_dir: self.store.data_dir.clone(),
            ..Settings::default()
        };
        match &self.command {
            Command::Serve(serve) => {
                settings.grpc_addr = serve.grpc_addr.clone();
                settings.http_addr = serve.http_addr.clone();
            }
            Command::Keys(
                KeysCommand::CreateWorkspace(workspace)
                | KeysCommand::CreateApiKey { workspace, .. },
            ) => {
                settings.region = workspace.region.clone();
                settings.time_zone = workspace.time_zone.clone();
            }
            _ => {}
        }
        settings
    }
}
