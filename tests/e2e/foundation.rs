//! The foundation as a user meets it: health, reflection, API keys and their
//! scopes and workspaces, every RPC of the contract answering without a crash,
//! graceful shutdown, and configuration errors that name the setting.

use std::collections::BTreeSet;

use meridian_proto::v1::*;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::harness::{Backend, Environment, authorized};

/// Runs each test body once per backend.
macro_rules! per_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $test() {
                super::$test(crate::harness::Backend::Sqlite).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $test() {
                super::$test(crate::harness::Backend::Postgres).await;
            })*
        }
    };
}

per_backend!(
    health_reports_every_service_serving,
    reflection_lists_the_five_services_and_health,
    api_keys_are_required_scoped_and_bound_to_their_workspace,
    every_rpc_of_the_contract_answers_without_crashing,
    sigterm_drains_and_exits_cleanly,
    migrate_is_idempotent_and_reports_the_schema,
);

async fn health_reports_every_service_serving(backend: Backend) {
    let env = Environment::new(backend).await;
    let server = env.serve(&[]).await;
    let mut health = HealthClient::new(server.channel.clone());
    for service in std::iter::once("").chain(meridian_proto::SERVICE_NAMES) {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("health of {service:?}: {status}"));
        assert_eq!(
            response.into_inner().status(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "meridian.v1.NoSuchService".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let body = http_get(&server.http_addr, "/readyz").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
}

/// A plain HTTP/1.1 GET over a socket, so the test needs no HTTP client crate.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

async fn list_services(channel: tonic::transport::Channel) -> BTreeSet<String> {
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    list.service
        .into_iter()
        .map(|service| service.name)
        .collect()
}

async fn reflection_lists_the_five_services_and_health(backend: Backend) {
    let env = Environment::new(backend).await;
    let server = env.serve(&[]).await;
    let listed = list_services(server.channel.clone()).await;
    for service in meridian_proto::SERVICE_NAMES {
        assert!(
            listed.contains(service),
            "{service} missing from {listed:?}"
        );
    }
    assert!(listed.contains("grpc.health.v1.Health"), "{listed:?}");

    // A process running one service advertises that one only.
    let ingest_only = env.serve(&["ingest"]).await;
    let listed = list_services(ingest_only.channel.clone()).await;
    assert!(listed.contains("meridian.v1.IngestService"), "{listed:?}");
    assert!(!listed.contains("meridian.v1.ConsentService"), "{listed:?}");
    let mut consent =
        consent_service_client::ConsentServiceClient::new(ingest_only.channel.clone());
    let key = env.api_key("acme", "admin").await;
    let status = consent
        .verify_ledger(authorized(VerifyLedgerRequest::default(), Some(&key)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status}");
}

async fn api_keys_are_required_scoped_and_bound_to_their_workspace(backend: Backend) {
    let env = Environment::new(backend).await;
    let ingest_key = env.api_key("acme", "ingest").await;
    let consent_key = env.api_key("acme", "consent,dsr").await;
    let other_workspace_key = env.api_key("globex", "admin").await;
    let server = env.serve(&[]).await;
    let mut consent = consent_service_client::ConsentServiceClient::new(server.channel.clone());
    let verify = |workspace: &str, key: Option<&str>| {
        authorized(
            VerifyLedgerRequest {
                workspace_id: workspace.to_owned(),
            },
            key,
        )
    };

    // No key, a malformed key, a well-formed unknown key.
    let status = consent.verify_ledger(verify("", None)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");
    let status = consent
        .verify_ledger(verify("", Some("not-a-key")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");
    let forged = format!("{}{}", &ingest_key[..20], "A".repeat(ingest_key.len() - 20));
    let status = consent
        .verify_ledger(verify("", Some(&forged)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");

    // A real key without the consent scope.
    let status = consent
        .verify_ledger(verify("", Some(&ingest_key)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(status.message().contains("consent"), "{status}");

    // The right scope, but naming another workspace.
    let status = consent
        .verify_ledger(verify("acme", Some(&other_workspace_key)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    let status = consent
        .verify_ledger(verify("globex", Some(&consent_key)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");

    // The right scope in its own workspace, named or implied, passes the edge
    // and gets a real answer.
    for workspace in ["", "acme"] {
        let response = consent
            .verify_ledger(verify(workspace, Some(&consent_key)))
            .await
            .unwrap()
            .into_inner();
        assert!(response.valid, "{response:?}");
    }

    // A revoked key stops working (after the cache expires in other processes;
    // this process never saw it, so at once).
    let fresh = env.api_key("acme", "consent").await;
    let key_id = fresh.split('_').nth(1).unwrap();
    let (ok, _, stderr) = env
        .run(&["keys", "revoke-api-key", "--key-id", key_id])
        .await;
    assert!(ok, "{stderr}");
    let status = consent
        .verify_ledger(verify("", Some(&fresh)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");

    // Health stays open for probes.
    let mut health = HealthClient::new(server.channel.clone());
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("health needs no key");

    // No key ever reaches the log.
    let log = server.log();
    for key in [&ingest_key, &consent_key, &other_workspace_key, &fresh] {
        // `mk_<id>_<secret>`: the secret is base64url and may itself contain '_'.
        let secret = key.splitn(3, '_').nth(2).unwrap();
        assert!(secret.len() >= 40, "{secret}");
        assert!(!log.contains(secret), "an API key secret was logged");
    }
}

/// Calls an RPC with an admin key and checks it answers UNIMPLEMENTED or a
/// real answer (never INTERNAL, UNKNOWN or a dropped connection).
macro_rules! call_all {
    ($key:expr, $( $client:expr => $method:ident($request:expr) ),* $(,)?) => {{
        let mut answered = 0usize;
        $(
            let result = $client.$method(authorized($request, Some($key))).await;
            match result {
                Ok(_) => {}
                Err(status) => assert!(
                    matches!(status.code(), Code::Unimplemented | Code::InvalidArgument | Code::NotFound),
                    "{} answered {status}",
                    stringify!($method)
                ),
            }
            answered += 1;
        )*
        answered
    }};
}

async fn every_rpc_of_the_contract_answers_without_crashing(backend: Backend) {
    let env = Environment::new(backend).await;
    let key = env.api_key("acme", "admin").await;
    let server = env.serve(&[]).await;
    let channel = server.channel.clone();
    let mut ingest = ingest_service_client::IngestServiceClient::new(channel.clone());
    let mut identity = identity_service_client::IdentityServiceClient::new(channel.clone());
    let mut consent = consent_service_client::ConsentServiceClient::new(channel.clone());
    let mut dsr = dsr_service_client::DsrServiceClient::new(channel.clone());
    let mut audience = audience_service_client::AudienceServiceClient::new(channel.clone());
    let answered = call_all!(&key,
        ingest => ingest(IngestRequest::default()),
        identity => get_profile(GetProfileRequest::default()),
        identity => lookup_profile(LookupProfileRequest::default()),
        identity => explain_profile(ExplainProfileRequest::default()),
        identity => list_profile_events(ListProfileEventsRequest::default()),
        consent => record_consent(RecordConsentRequest::default()),
        consent => get_consent(GetConsentRequest::default()),
        consent => get_consent_as_of(GetConsentAsOfRequest::default()),
        consent => list_consent_history(ListConsentHistoryRequest::default()),
        consent => verify_ledger(VerifyLedgerRequest::default()),
        consent => get_receipt(GetReceiptRequest::default()),
        dsr => submit_request(SubmitRequestRequest::default()),
        dsr => get_request(GetRequestRequest::default()),
        dsr => list_requests(ListRequestsRequest::default()),
        audience => create_segment(CreateSegmentRequest::default()),
        audience => update_segment(UpdateSegmentRequest::default()),
        audience => preview_segment(PreviewSegmentRequest::default()),
        audience => list_members(ListMembersRequest::default()),
        audience => create_destination(CreateDestinationRequest::default()),
        audience => list_destinations(ListDestinationsRequest::default()),
        audience => sync_now(SyncNowRequest::default()),
        audience => get_sync_status(GetSyncStatusRequest::default()),
    );
    assert_eq!(answered, 22);
    // Still alive after every call.
    let mut health = HealthClient::new(channel);
    health.check(HealthCheckRequest::default()).await.unwrap();
}

async fn sigterm_drains_and_exits_cleanly(backend: Backend) {
    let env = Environment::new(backend).await;
    let server = env.serve(&[]).await;
    let status = server.terminate().await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

async fn migrate_is_idempotent_and_reports_the_schema(backend: Backend) {
    let env = Environment::new(backend).await;
    let expected = match backend {
        Backend::Sqlite => "sqlite schema is at migration",
        Backend::Postgres => "postgres schema is at migration",
    };
    for _ in 0..2 {
        let (ok, stdout, stderr) = env.run(&["migrate"]).await;
        assert!(ok, "{stderr}");
        assert!(stdout.contains(expected), "{stdout}");
    }
}

/// The server keeps its allocator off transparent huge pages (see `main.rs`), unless the
/// operator set `MIMALLOC_ALLOW_THP`: then it keeps what it inherited.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_server_runs_off_transparent_huge_pages_unless_the_operator_chose() {
    let env = Environment::new(Backend::Sqlite).await;
    let server = env.serve(&[]).await;
    assert_eq!(thp_enabled(server.child.id().unwrap()), Some(false));
    assert!(server.terminate().await.success());
    let inherited = thp_enabled(std::process::id());
    assert!(inherited.is_some(), "this kernel reports no THP_enabled");
    let server = env.serve_with_env(&[("MIMALLOC_ALLOW_THP", "1")]).await;
    assert_eq!(thp_enabled(server.child.id().unwrap()), inherited);
    assert!(server.terminate().await.success());
}

/// Whether transparent huge pages may back process `pid`'s memory (its `THP_enabled`, which
/// `prctl(PR_SET_THP_DISABLE)` clears).
#[cfg(target_os = "linux")]
fn thp_enabled(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(|value| value.trim() == "1")
}

#[tokio::test]
async fn configuration_errors_name_the_setting_and_stop_start_up() {
    let env = Environment::new(Backend::Sqlite).await;
    /// Arguments, environment, and the name the error must mention.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (&["serve", "--grpc-addr", "localhost:x"], &[], "grpc_addr"),
        (
            &["serve"],
            &[("MERIDIAN_TIME_ZONE", "Mars/Base")],
            "time_zone",
        ),
        (
            &["serve"],
            &[("DATABASE_URL", "mysql://db")],
            "DATABASE_URL",
        ),
        (
            &[
                "keys",
                "create-api-key",
                "--workspace",
                "acme",
                "--scopes",
                "ingest,root",
            ],
            &[],
            "root",
        ),
    ];
    for (args, vars, named) in cases {
        let output = env
            .command()
            .args(args)
            .envs(vars.iter().copied())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} {vars:?} should fail");
        assert!(
            stderr.contains(named),
            "{args:?}: {stderr} should name {named}"
        );
    }
    let config = env.data_dir.path().join("meridian.toml");
    std::fs::write(&config, "grpc_adress = \"127.0.0.1:0\"\n").unwrap();
    let output = env
        .command()
        .args(["--config", config.to_str().unwrap(), "serve"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("grpc_adress"), "{stderr}");
}
