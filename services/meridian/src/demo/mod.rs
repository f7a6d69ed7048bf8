//! `meridian demo`: a cross-border storefront in one command. Starts the platform embedded
//! (or talks to a running one with `--grpc-addr`) and, through the public gRPC API only,
//! records consent from real TCF/GPP strings and GPC, ingests 30 days of shopping, lets the
//! identity room stitch and score shoppers, builds and syncs a retargeting audience to a file
//! destination, answers an access and an erasure request, and prints a summary.

mod consent_strings;
mod progress;
mod scenario;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use meridian_proto::v1;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::cli::DemoArgs;
use progress::Progress;
use scenario::{ConsentSource, Shopper, Storefront, TARGETED_ADS};

/// The audience the demo builds: carted in the last 7 days without buying.
const SEGMENT_DEFINITION: &str = r#"{
  "all": [
    {"event": "Product Added", "within_days": 7, "count_at_least": 1},
    {"not": {"event": "Order Completed", "within_days": 7, "count_at_least": 1}}
  ]
}"#;

/// How long to wait for asynchronous work (stitching, syncs, requests) before giving up.
const PATIENCE: Duration = Duration::from_secs(45);

/// Previews in a row (100 ms apart) that match the one before: a settled audience.
const PREVIEWS_HELD: u32 = 5;

/// What the demo prints at the end (and as JSON with `--json`).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Summary {
    pub(crate) shoppers: usize,
    pub(crate) consents_recorded: usize,
    pub(crate) events_sent: usize,
    pub(crate) events_accepted: u64,
    pub(crate) events_duplicate: u64,
    pub(crate) events_rejected: u64,
    pub(crate) events_dropped: u64,
    pub(crate) fields_stripped: u64,
    pub(crate) drops_by_rule: BTreeMap<String, u64>,
    /// Fields stripped, by the rule that gave them no basis.
    pub(crate) strips_by_rule: BTreeMap<String, u64>,
    /// Rejected events, by the field at fault.
    pub(crate) rejections_by_field: BTreeMap<String, u64>,
    pub(crate) profiles: usize,
    pub(crate) merges: usize,
    pub(crate) aipl_stages: BTreeMap<String, usize>,
    pub(crate) audience_size: u64,
    pub(crate) audience_by_region: BTreeMap<String, u64>,
    pub(crate) audience_synced: bool,
    pub(crate) audience_sent: u64,
    pub(crate) exclusions_by_rule: BTreeMap<String, u64>,
    pub(crate) access_bundle_bytes: usize,
    pub(crate) erasure_seconds: f64,
    pub(crate) erasure_receipt_steps: usize,
    pub(crate) total_seconds: f64,
}

/// Adds the API key to every call.
#[derive(Clone)]
struct ApiKey(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Authed = tonic::service::interceptor::InterceptedService<Channel, ApiKey>;

struct Clients {
    ingest: v1::ingest_service_client::IngestServiceClient<Authed>,
    consent: v1::consent_service_client::ConsentServiceClient<Authed>,
    dsr: v1::dsr_service_client::DsrServiceClient<Authed>,
    identity: v1::identity_service_client::IdentityServiceClient<Authed>,
    audience: v1::audience_service_client::AudienceServiceClient<Authed>,
}

impl Clients {
    async fn connect(addr: &str, api_key: &str) -> anyhow::Result<Clients> {
        let url = if addr.starts_with("http") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let channel = Channel::from_shared(url)
            .context("--grpc-addr")?
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let key = ApiKey(
            format!("Bearer {api_key}")
                .parse()
                .context("the API key is not valid header text")?,
        );
        let with =
            |c: Channel| tonic::service::interceptor::InterceptedService::new(c, key.clone());
        Ok(Clients {
            ingest: v1::ingest_service_client::IngestServiceClient::new(with(channel.clone())),
            consent: v1::consent_service_client::ConsentServiceClient::new(with(channel.clone())),
            dsr: v1::dsr_service_client::DsrServiceClient::new(with(channel.clone())),
            identity: v1::identity_service_client::IdentityServiceClient::new(with(
                channel.clone(),
            )),
            audience: v1::audience_service_client::AudienceServiceClient::new(with(channel)),
        })
    }
}

/// The platform the demo talks to: a child `meridian serve` on a local data directory, or a
/// running one.
struct Platform {
    grpc_addr: String,
    api_key: String,
    data_dir: PathBuf,
    server: Option<Child>,
    /// Removed at exit when the user gave no `--data-dir`.
    _scratch: Option<tempfile::TempDir>,
}

impl Platform {
    async fn start(args: &DemoArgs, data_dir: Option<PathBuf>) -> anyhow::Result<Platform> {
        if let Some(addr) = &args.grpc_addr {
            let api_key = args.api_key.clone().context(
                "--grpc-addr needs --api-key (or MERIDIAN_API_KEY): an admin key of the workspace",
            )?;
            return Ok(Platform {
                grpc_addr: addr.clone(),
                api_key,
                data_dir: data_dir.unwrap_or_else(|| PathBuf::from(".")),
                server: None,
                _scratch: None,
            });
        }
        let (data_dir, scratch) = match data_dir {
            Some(dir) => (dir, None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("meridian-demo-")
                    .tempdir()
                    .context("creating a scratch data directory")?;
                (dir.path().to_owned(), Some(dir))
            }
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let exe = std::env::current_exe().context("finding the meridian executable")?;
        let embedded = |cmd: &mut Command| {
            // Embedded on purpose: a DATABASE_URL or NATS_URL in the environment is ignored.
            cmd.env_remove("DATABASE_URL")
                .env_remove("NATS_URL")
                .env_remove("MERIDIAN_CONFIG")
                .arg("--data-dir")
                .arg(&data_dir);
        };
        let mut keys = Command::new(&exe);
        embedded(&mut keys);
        let out = keys
            .args([
                "keys",
                "create-api-key",
                "--workspace",
                "demo",
                "--scopes",
                "admin",
            ])
            .args(["--region", "eu", "--time-zone", "Europe/Berlin"])
            .stderr(Stdio::piped())
            .output()
            .await
            .context("creating the demo API key")?;
        if !out.status.success() {
            bail!(
                "creating the demo API key failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let api_key = String::from_utf8(out.stdout)
            .context("API key output")?
            .trim()
            .to_owned();
        let log_path = data_dir.join("demo-server.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut serve = Command::new(&exe);
        embedded(&mut serve);
        let mut server = serve
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting meridian serve")?;
        let stdout = server.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let announced = tokio::time::timeout(Duration::from_secs(30), async {
            let mut grpc = None;
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("grpc listening on ") {
                    grpc = Some(addr.to_owned());
                }
                if line.starts_with("http listening on ") {
                    break;
                }
            }
            Ok::<_, std::io::Error>(grpc)
        })
        .await
        .context("the server did not start within 30 s")??;
        // Keep reading: a closed pipe would fail the server's next write to stdout.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let grpc_addr =
            announced.with_context(|| format!("the server exited; see {}", log_path.display()))?;
        Ok(Platform {
            grpc_addr,
            api_key,
            data_dir,
            server: Some(server),
            _scratch: scratch,
        })
    }

    async fn stop(mut self) {
        if let Some(mut server) = self.server.take() {
            if let Some(pid) = server.id() {
                // SIGTERM: let it drain like an operator would.
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(10), server.wait())
                .await
                .is_err()
            {
                let _ = server.kill().await;
            }
        }
    }
}

pub(crate) async fn run(args: DemoArgs, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut summary = Summary {
        shoppers: args.shoppers,
        ..Summary::default()
    };
    println!(
        "Meridian demo: a storefront selling to DE, FR, GB, US-CA, BR and CN ({} shoppers)",
        args.shoppers
    );
    let platform = Platform::start(&args, data_dir).await?;
    match &platform.server {
        Some(_) => println!(
            "  platform: embedded (SQLite + in-process bus) in {}, gRPC on {}",
            platform.data_dir.display(),
            platform.grpc_addr
        ),
        None => println!("  platform: {}", platform.grpc_addr),
    }
    let outcome = drive(&args, &platform, &mut summary).await;
    platform.stop().await;
    outcome?;
    summary.total_seconds = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

async fn drive(args: &DemoArgs, platform: &Platform, summary: &mut Summary) -> anyhow::Result<()> {
    let mut clients = Clients::connect(&platform.grpc_addr, &platform.api_key).await?;
    let store = Storefront::generate(args.seed, args.shoppers, Utc::now());
    summary.events_sent = store.events.len();

    record_consent(&mut clients, &store, summary).await?;
    let accepted = ingest(&mut clients, &store, summary).await?;
    let profiles = stitched_profiles(&mut clients, &store, &accepted, summary).await?;
    audience(&mut clients, platform, summary).await?;
    requests(&mut clients, &store, &profiles, summary).await?;
    Ok(())
}

fn identifier(kind: v1::IdentifierType, value: &str) -> v1::Identifier {
    v1::Identifier {
        r#type: kind as i32,
        value: value.to_owned(),
        ..Default::default()
    }
}

/// Every identifier a shopper is known by, for consent and requests.
fn subject(s: &Shopper) -> v1::SubjectRef {
    let mut identifiers = vec![
        identifier(v1::IdentifierType::Email, &s.email),
        identifier(v1::IdentifierType::UserId, &s.user_id),
    ];
    identifiers.extend(
        s.devices
            .iter()
            .map(|d| identifier(v1::IdentifierType::AnonymousId, d)),
    );
    v1::SubjectRef {
        identifiers,
        profile_id: String::new(),
    }
}

async fn record_consent(
    clients: &mut Clients,
    store: &Storefront,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let mut bar = Progress::new("recording consent", store.shoppers.len());
    for (i, s) in store.shoppers.iter().enumerate() {
        let signals = match &s.consent {
            ConsentSource::Tcf(tc) => v1::ConsentSignals {
                tc_string: (*tc).to_owned(),
                ..Default::default()
            },
            ConsentSource::Gpp(gpp) => v1::ConsentSignals {
                gpp_string: (*gpp).to_owned(),
                ..Default::default()
            },
            ConsentSource::Gpc => v1::ConsentSignals {
                gpc: true,
                ..Default::default()
            },
            ConsentSource::Explicit { targeted_ads } => v1::ConsentSignals {
                choices: vec![v1::PurposeChoice {
                    purpose: TARGETED_ADS.into(),
                    decision: if *targeted_ads {
                        v1::ConsentDecision::Given
                    } else {
                        v1::ConsentDecision::Refused
                    } as i32,
                    lawful_basis: v1::LawfulBasis::Consent as i32,
                }],
                ..Default::default()
            },
        };
        clients
            .consent
            .record_consent(v1::RecordConsentRequest {
                subject: Some(subject(s)),
                jurisdiction: s.market.jurisdiction.into(),
                signals: Some(signals),
                notice: Some(v1::Notice {
                    url: "https://shop.example/privacy".into(),
                    version: "2026-11".into(),
                    hash: String::new(),
                    language: s.market.locale.into(),
                }),
                collection_point: "cookie-banner".into(),
                actor: v1::Actor::Subject as i32,
                time_zone: s.market.time_zone.into(),
                idempotency_key: format!("demo-consent-{i}"),
                ..Default::default()
            })
            .await
            .with_context(|| format!("RecordConsent for shopper {i}"))?;
        summary.consents_recorded += 1;
        bar.advance(1);
    }
    bar.finish();
    Ok(())
}

/// Sends the events in batches; returns the message ids the platform accepted.
async fn ingest(
    clients: &mut Clients,
    store: &Storefront,
    summary: &mut Summary,
) -> anyhow::Result<BTreeSet<String>> {
    let mut accepted = BTreeSet::new();
    let mut bar = Progress::new("ingesting events", store.events.len());
    for batch in store.events.chunks(500) {
        let response = clients
            .ingest
            .ingest(v1::IngestRequest {
                events: batch.to_vec(),
                sent_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
                ..Default::default()
            })
            .await
            .context("Ingest")?
            .into_inner();
        let s = response.summary.unwrap_or_default();
        summary.events_accepted += u64::from(s.accepted);
        summary.events_duplicate += u64::from(s.duplicate);
        summary.events_rejected += u64::from(s.rejected);
        summary.events_dropped += u64::from(s.dropped);
        summary.fields_stripped += u64::from(s.stripped_fields);
        for r in &response.results {
            if r.outcome == v1::EventOutcome::Accepted as i32
                || r.outcome == v1::EventOutcome::Duplicate as i32
            {
                accepted.insert(r.message_id.clone());
            }
            match v1::EventOutcome::try_from(r.outcome) {
                Ok(v1::EventOutcome::Dropped) => {
                    *summary.drops_by_rule.entry(r.rule.clone()).or_default() += 1;
                }
                Ok(v1::EventOutcome::Rejected) => {
                    // `events[12].identifiers[1].value` → `identifiers[].value`
                    let path = r.field.split_once('.').map_or(r.field.as_str(), |(_, f)| f);
                    let mut field = String::with_capacity(path.len());
                    let mut in_index = false;
                    for c in path.chars() {
                        match c {
                            '[' => in_index = true,
                            ']' => in_index = false,
                            _ if in_index => continue,
                            _ => {}
                        }
                        field.push(c);
                    }
                    *summary.rejections_by_field.entry(field).or_default() += 1;
                }
                _ if !r.stripped_fields.is_empty() => {
                    *summary.strips_by_rule.entry(r.rule.clone()).or_default() +=
                        r.stripped_fields.len() as u64;
                }
                _ => {}
            }
        }
        bar.advance(batch.len());
    }
    bar.finish();
    Ok(accepted)
}

/// Waits until the identity room has stitched every shopper whose events were accepted
/// (events without a lawful basis never reach it), then reads their profiles: how many,
/// how many links, and the AIPL stages.
async fn stitched_profiles(
    clients: &mut Clients,
    store: &Storefront,
    accepted: &BTreeSet<String>,
    summary: &mut Summary,
) -> anyhow::Result<BTreeMap<usize, String>> {
    // Each shopper's probe: the email once a checkout (identify) was accepted, else the
    // device of their first accepted event.
    let mut pending: BTreeMap<usize, v1::Identifier> = BTreeMap::new();
    for e in store
        .events
        .iter()
        .filter(|e| accepted.contains(&e.message_id))
    {
        let Some(i) = e.message_id.split('-').nth(1).and_then(|n| n.parse().ok()) else {
            continue;
        };
        let shopper: &Shopper = &store.shoppers[i];
        if e.r#type == v1::EventType::Identify as i32 {
            pending.insert(i, identifier(v1::IdentifierType::Email, &shopper.email));
        } else {
            pending
                .entry(i)
                .or_insert_with(|| identifier(v1::IdentifierType::AnonymousId, &e.anonymous_id));
        }
    }
    let mut bar = Progress::new("stitching identities", pending.len());
    let deadline = Instant::now() + PATIENCE;
    let mut profiles = BTreeMap::new();
    while !pending.is_empty() {
        let mut found = Vec::new();
        for (i, probe) in &pending {
            match clients
                .identity
                .lookup_profile(v1::LookupProfileRequest {
                    identifier: Some(probe.clone()),
                    ..Default::default()
                })
                .await
            {
                Ok(reply) => {
                    if let Some(p) = reply.into_inner().profile {
                        profiles.insert(*i, p.profile_id);
                        found.push(*i);
                    }
                }
                // Not stitched yet: the identity room consumes accepted events from the bus.
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(status).context("LookupProfile"),
            }
        }
        bar.advance(found.len());
        for i in found {
            pending.remove(&i);
        }
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} shoppers were not stitched within {PATIENCE:?}",
                pending.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish();
    let distinct: BTreeSet<&String> = profiles.values().collect();
    summary.profiles = distinct.len();
    for profile_id in distinct {
        let explained = clients
            .identity
            .explain_profile(v1::ExplainProfileRequest {
                profile_id: profile_id.clone(),
                ..Default::default()
            })
            .await
            .context("ExplainProfile")?
            .into_inner();
        summary.merges += explained.edges.len();
        let profile = clients
            .identity
            .get_profile(v1::GetProfileRequest {
                profile_id: profile_id.clone(),
                ..Default::default()
            })
            .await
            .context("GetProfile")?
            .into_inner()
            .profile
            .unwrap_or_default();
        let stage = profile
            .computed_traits
            .and_then(|c| v1::AiplStage::try_from(c.aipl_stage).ok())
            .unwrap_or(v1::AiplStage::Unspecified);
        let name = match stage {
            v1::AiplStage::Unspecified => "unknown",
            v1::AiplStage::Awareness => "awareness",
            v1::AiplStage::Interest => "interest",
            v1::AiplStage::Purchase => "purchase",
            v1::AiplStage::Loyalty => "loyalty",
        };
        *summary.aipl_stages.entry(name.into()).or_default() += 1;
    }
    Ok(profiles)
}

async fn audience(
    clients: &mut Clients,
    platform: &Platform,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let segment = clients
        .audience
        .create_segment(v1::CreateSegmentRequest {
            name: "carted, not bought, last 7 days".into(),
            definition: SEGMENT_DEFINITION.into(),
            purpose: TARGETED_ADS.into(),
            ..Default::default()
        })
        .await
        .context("CreateSegment")?
        .into_inner()
        .segment
        .context("CreateSegment returned no segment")?;
    // The audience room's profiles follow identity's profile events through the bus, a
    // little after the stitching the demo waited for. Preview until the count has held for
    // a while, so the sync below sees the members the summary counts.
    let deadline = Instant::now() + PATIENCE;
    let mut held = 0;
    let mut last: Option<v1::PreviewSegmentResponse> = None;
    let preview = loop {
        let preview = clients
            .audience
            .preview_segment(v1::PreviewSegmentRequest {
                target: Some(v1::preview_segment_request::Target::SegmentId(
                    segment.segment_id.clone(),
                )),
                sample_size: 5,
                ..Default::default()
            })
            .await
            .context("PreviewSegment")?
            .into_inner();
        let same = last.as_ref().is_some_and(|l| {
            l.count == preview.count && l.count_by_region == preview.count_by_region
        });
        held = if same { held + 1 } else { 0 };
        if held >= PREVIEWS_HELD || Instant::now() > deadline {
            break preview;
        }
        last = Some(preview);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    summary.audience_size = preview.count;
    summary.audience_by_region = preview.count_by_region.into_iter().collect();
    let export_dir = platform.data_dir.join("exports");
    let destination = match clients
        .audience
        .create_destination(v1::CreateDestinationRequest {
            name: "retargeting-file".into(),
            platform: v1::DestinationPlatform::File as i32,
            region: "DE".into(),
            settings: [
                ("directory".to_owned(), export_dir.display().to_string()),
                ("format".to_owned(), "csv".to_owned()),
            ]
            .into(),
            min_audience_size: 1,
            ..Default::default()
        })
        .await
    {
        Ok(reply) => reply
            .into_inner()
            .destination
            .context("CreateDestination returned no destination")?,
        // Destinations and sync are not served by every build yet: show the preview only.
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            println!("  audience sync: destinations are not served by this build; preview only");
            return Ok(());
        }
        Err(status) => return Err(status).context("CreateDestination"),
    };
    let bar = Progress::new("syncing the audience", 1);
    let mut status = clients
        .audience
        .sync_now(v1::SyncNowRequest {
            segment_id: segment.segment_id.clone(),
            destination_id: destination.destination_id.clone(),
            ..Default::default()
        })
        .await
        .context("SyncNow")?
        .into_inner()
        .status
        .context("SyncNow returned no status")?;
    let deadline = Instant::now() + PATIENCE;
    while matches!(
        v1::SyncState::try_from(status.state),
        Ok(v1::SyncState::Pending | v1::SyncState::Running)
    ) {
        if Instant::now() > deadline {
            bail!("the audience sync did not finish within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = clients
            .audience
            .get_sync_status(v1::GetSyncStatusRequest {
                sync_id: status.sync_id.clone(),
                ..Default::default()
            })
            .await
            .context("GetSyncStatus")?
            .into_inner()
            .status
            .context("GetSyncStatus returned no status")?;
    }
    bar.finish();
    // Too few members allowed: the destination is sent nothing, by design, not an error.
    let below_minimum = status.last_error == "audience_below_minimum";
    if below_minimum {
        println!(
            "  audience sync: fewer allowed members than the destination's minimum; nothing sent"
        );
    }
    if status.state != v1::SyncState::Succeeded as i32 && !below_minimum {
        bail!(
            "the audience sync ended {:?}: {}",
            status.state(),
            status.last_error
        );
    }
    summary.audience_synced = true;
    summary.audience_sent = status.members_sent;
    summary.exclusions_by_rule = status.excluded_by_reason.into_iter().collect();
    println!("  audience file: {}", export_dir.display());
    Ok(())
}

/// Waits for a request to complete and returns it.
async fn completed(
    clients: &mut Clients,
    request_id: &str,
) -> anyhow::Result<v1::DataSubjectRequest> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let request = clients
            .dsr
            .get_request(v1::GetRequestRequest {
                request_id: request_id.to_owned(),
                ..Default::default()
            })
            .await
            .context("GetRequest")?
            .into_inner()
            .request
            .context("GetRequest returned no request")?;
        match v1::RequestStatus::try_from(request.status) {
            Ok(v1::RequestStatus::Completed) => return Ok(request),
            Ok(v1::RequestStatus::Rejected) => bail!("request {request_id} was rejected"),
            _ if Instant::now() > deadline => {
                let steps: Vec<String> = request
                    .steps
                    .iter()
                    .map(|s| format!("{} ({})", s.name, s.last_error))
                    .collect();
                bail!("request {request_id} did not complete within {PATIENCE:?}: {steps:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn requests(
    clients: &mut Clients,
    store: &Storefront,
    profiles: &BTreeMap<usize, String>,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    // Two shoppers the platform knows: one asks for their data, the other to be forgotten.
    let mut known = profiles.keys().copied();
    let (Some(asker), Some(leaver)) = (known.next(), known.next()) else {
        bail!("fewer than two shoppers were stitched; nothing to ask for");
    };
    let submit = |i: usize, kind: v1::RequestKind| {
        let s = &store.shoppers[i];
        v1::SubmitRequestRequest {
            kind: kind as i32,
            subject: Some(subject(s)),
            jurisdiction: s.market.jurisdiction.into(),
            time_zone: s.market.time_zone.into(),
            idempotency_key: format!("demo-{kind:?}-{i}"),
            ..Default::default()
        }
    };
    let access = clients
        .dsr
        .submit_request(submit(asker, v1::RequestKind::Access))
        .await
        .context("SubmitRequest (access)")?
        .into_inner()
        .request
        .context("SubmitRequest returned no request")?;
    let access = completed(clients, &access.request_id).await?;
    summary.access_bundle_bytes = access.access_bundle_json.len();
    println!(
        "  access request {}: bundle of {} bytes for a shopper in {}",
        access.request_id,
        access.access_bundle_json.len(),
        store.shoppers[asker].market.jurisdiction
    );

    let erasure_started = Instant::now();
    let erasure = clients
        .dsr
        .submit_request(submit(leaver, v1::RequestKind::Erasure))
        .await
        .context("SubmitRequest (erasure)")?
        .into_inner()
        .request
        .context("SubmitRequest returned no request")?;
    let erasure = completed(clients, &erasure.request_id).await?;
    summary.erasure_seconds = erasure_started.elapsed().as_secs_f64();
    summary.erasure_receipt_steps = erasure.steps.len();
    println!(
        "  erasure request {} completed in {:.2}s; signed receipt:",
        erasure.request_id, summary.erasure_seconds
    );
    let receipt: serde_json::Value =
        serde_json::from_str(&erasure.receipt_json).context("the erasure receipt is not JSON")?;
    for line in serde_json::to_string_pretty(&receipt)?.lines() {
        println!("    {line}");
    }
    println!("    signature: {}", erasure.receipt_signature);
    Ok(())
}

fn print_summary(s: &Summary) {
    let row = |k: &str, v: String| println!("  │ {k:<52} │ {v:>18} │");
    let rule = |c: char| println!("  {}", std::iter::repeat_n(c, 77).collect::<String>());
    println!();
    rule('─');
    row("shoppers", s.shoppers.to_string());
    row("consent records", s.consents_recorded.to_string());
    row("events sent", s.events_sent.to_string());
    row("  accepted", s.events_accepted.to_string());
    row("  dropped (no lawful basis)", s.events_dropped.to_string());
    for (rule_id, n) in &s.drops_by_rule {
        row(&format!("    by {rule_id}"), n.to_string());
    }
    row("  rejected (invalid)", s.events_rejected.to_string());
    for (field, n) in &s.rejections_by_field {
        row(&format!("    at {field}"), n.to_string());
    }
    row("  fields stripped", s.fields_stripped.to_string());
    for (rule_id, n) in &s.strips_by_rule {
        row(&format!("    by {rule_id}"), n.to_string());
    }
    row("profiles", s.profiles.to_string());
    row("identity links (merges)", s.merges.to_string());
    for (stage, n) in &s.aipl_stages {
        row(&format!("  AIPL {stage}"), n.to_string());
    }
    row(
        "audience: carted, not bought in 7 days",
        s.audience_size.to_string(),
    );
    for (region, n) in &s.audience_by_region {
        let region = if region.is_empty() {
            "an unknown region"
        } else {
            region
        };
        row(&format!("  in {region}"), n.to_string());
    }
    row(
        "  sent to the file destination",
        if s.audience_synced {
            s.audience_sent.to_string()
        } else {
            "not synced".to_owned()
        },
    );
    for (rule_id, n) in &s.exclusions_by_rule {
        row(&format!("  excluded by {rule_id}"), n.to_string());
    }
    row("access bundle", format!("{} bytes", s.access_bundle_bytes));
    row(
        "erasure, request to receipt",
        format!(
            "{:.2} s, {} steps",
            s.erasure_seconds, s.erasure_receipt_steps
        ),
    );
    row("demo total", format!("{:.1} s", s.total_seconds));
    rule('─');
}
