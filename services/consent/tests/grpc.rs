//! The handlers over real gRPC: an in-process tonic server on port 0 behind the edge layer
//! (API-key authentication, scopes, workspace checks), on both backends.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use meridian_access::{ApiKeyPepper, Authenticator, StoreAccess, create_api_key, ensure_workspace};
use meridian_consent::{ConsentRoom, verify_receipt};
use meridian_edge::EdgeLayer;
use meridian_policy::PolicyEngine;
use meridian_proto::v1 as pb;
use meridian_proto::v1::consent_service_client::ConsentServiceClient;
use meridian_proto::v1::dsr_service_client::DsrServiceClient;
use meridian_store::Store;
use meridian_store::sqlx::{PgPool, SqlitePool};
use meridian_vault::{KeyRing, KeyStore, PgKeyStore, SqliteKeyStore, Vault};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

struct Client {
    consent: ConsentServiceClient<Channel>,
    dsr: DsrServiceClient<Channel>,
    key: String,
}

impl Client {
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.key).parse().unwrap(),
        );
        r
    }
}

async fn serve(store: Store) -> Client {
    let access: Arc<StoreAccess> = Arc::new(match &store {
        Store::Postgres(p) => StoreAccess::Postgres(p.clone()),
        Store::Sqlite(p) => StoreAccess::Sqlite(p.clone()),
    });
    let keys: Arc<dyn KeyStore> = match &store {
        Store::Postgres(p) => Arc::new(PgKeyStore::new(p.clone())),
        Store::Sqlite(p) => Arc::new(SqliteKeyStore::new(p.clone())),
    };
    let pepper = || ApiKeyPepper::from_bytes(&[7u8; 32]);
    let ws = "acme".parse().unwrap();
    ensure_workspace(
        &*access,
        &ws,
        &"eu".parse().unwrap(),
        "Europe/Paris".parse().unwrap(),
    )
    .await
    .unwrap();
    let key = create_api_key(&*access, &pepper(), &ws, "consent,dsr".parse().unwrap())
        .await
        .unwrap()
        .to_string();
    let vault = Arc::new(Vault::new(Arc::new(KeyRing::generate(1).unwrap()), keys));
    let room = ConsentRoom::new(store, vault, Arc::new(PolicyEngine::builtin().unwrap()));
    let auth = Arc::new(Authenticator::new(access, pepper()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(EdgeLayer::new(auth))
            .add_service(room.consent_api().into_server())
            .add_service(room.dsr_api().into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Client {
        consent: ConsentServiceClient::new(channel.clone()),
        dsr: DsrServiceClient::new(channel),
        key,
    }
}

fn subject(email: &str) -> Option<pb::SubjectRef> {
    Some(pb::SubjectRef {
        identifiers: vec![pb::Identifier {
            r#type: pb::IdentifierType::Email as i32,
            value: email.into(),
            ..Default::default()
        }],
        profile_id: String::new(),
    })
}

fn record(email: &str) -> pb::RecordConsentRequest {
    pb::RecordConsentRequest {
        subject: subject(email),
        jurisdiction: "EU-FR".into(),
        signals: Some(pb::ConsentSignals {
            choices: vec![
                pb::PurposeChoice {
                    purpose: "analytics".into(),
                    decision: pb::ConsentDecision::Given as i32,
                    lawful_basis: pb::LawfulBasis::Consent as i32,
                },
                pb::PurposeChoice {
                    purpose: "marketing.advertising".into(),
                    decision: pb::ConsentDecision::Refused as i32,
                    lawful_basis: pb::LawfulBasis::Consent as i32,
                },
            ],
            ..Default::default()
        }),
        notice: Some(pb::Notice {
            url: "https://acme.example/privacy".into(),
            version: "3".into(),
            hash: "0f".repeat(32),
            language: "fr".into(),
        }),
        collection_point: "cookie-banner".into(),
        actor: pb::Actor::Subject as i32,
        time_zone: "Europe/Paris".into(),
        collected_at: None,
        idempotency_key: "r-1".into(),
        ..Default::default()
    }
}

async fn every_rpc_over_the_wire(mut c: Client) {
    // validation names the fields
    let mut bad = record("ana@example.com");
    bad.collection_point.clear();
    bad.signals.as_mut().unwrap().tc_string = "%%%".into();
    bad.signals.as_mut().unwrap().choices[0].decision = 0;
    let err = c.consent.record_consent(c.req(bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("collection_point"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("signals.choices[0].decision"),
        "{}",
        err.message()
    );
    let mut bad = record("ana@example.com");
    bad.signals.as_mut().unwrap().tc_string = "C!!not base64".into();
    let err = c
        .consent
        .record_consent(c.req(bad))
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("signals.tc_string"),
        "{}",
        err.message()
    );
    // nothing was appended by refused requests
    let v = c
        .consent
        .verify_ledger(c.req(pb::VerifyLedgerRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v.valid, v.entries_checked), (true, 0));

    // record, twice with the same idempotency key
    let first = c
        .consent
        .record_consent(c.req(record("ana@example.com")))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .consent
        .record_consent(c.req(record("ana@example.com")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.entries, again.entries);
    assert_eq!(first.entries.len(), 2);
    let last = &first.entries[1];
    assert!(!last.signature.is_empty() && last.prev_hash == first.entries[0].hash);
    assert_eq!(last.recorded_at.as_ref().unwrap().time_zone, "Europe/Paris");
    assert_eq!(last.source, pb::SignalSource::Explicit as i32);

    let states = c
        .consent
        .get_consent(c.req(pb::GetConsentRequest {
            subject: subject("ana@example.com"),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .states;
    assert_eq!(states.len(), 2);
    let analytics = states.iter().find(|s| s.purpose == "analytics").unwrap();
    assert_eq!(analytics.decision, pb::ConsentDecision::Given as i32);
    assert_eq!(
        analytics.expires_at.as_ref().unwrap().time_zone,
        "Europe/Paris"
    );

    let past = c
        .consent
        .get_consent_as_of(c.req(pb::GetConsentAsOfRequest {
            subject: subject("ana@example.com"),
            as_of: Some(prost_types::Timestamp {
                seconds: 1_000_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(past.states.is_empty());
    let err = c
        .consent
        .get_consent_as_of(c.req(pb::GetConsentAsOfRequest {
            subject: subject("ana@example.com"),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert!(err.message().contains("as_of"));

    let history = c
        .consent
        .list_consent_history(c.req(pb::ListConsentHistoryRequest {
            subject: subject("ana@example.com"),
            page_size: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.entries.len(), 1);
    assert!(!history.next_page_token.is_empty());

    let v = c
        .consent
        .verify_ledger(c.req(pb::VerifyLedgerRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v.valid, v.entries_checked, v.head_sequence), (true, 2, 2));
    assert_eq!(v.head_hash, first.entries[1].hash);
    let receipt = c
        .consent
        .get_receipt(c.req(pb::GetReceiptRequest {
            subject: subject("ana@example.com"),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.public_key, v.public_key);
    assert!(verify_receipt(
        &receipt.receipt_json,
        &receipt.signature,
        &v.public_key
    ));

    // another workspace is refused
    let err = c
        .consent
        .verify_ledger(c.req(pb::VerifyLedgerRequest {
            workspace_id: "other".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // data-subject requests
    let err = c
        .dsr
        .submit_request(c.req(pb::SubmitRequestRequest {
            subject: subject("ana@example.com"),
            jurisdiction: "EU-DE".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert!(err.message().contains("kind"), "{}", err.message());
    let submitted = c
        .dsr
        .submit_request(c.req(pb::SubmitRequestRequest {
            kind: pb::RequestKind::Erasure as i32,
            subject: subject("ana@example.com"),
            jurisdiction: "EU-DE".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(submitted.regime, "gdpr");
    assert_eq!(submitted.status, pb::RequestStatus::InProgress as i32);
    assert_eq!(
        submitted.deadline.as_ref().unwrap().time_zone,
        "Europe/Berlin"
    );
    // no worker runs here: the saga's steps wait, in order, crypto-shredding last
    assert!(
        submitted
            .steps
            .iter()
            .all(|s| s.state == pb::StepState::Pending as i32)
    );
    assert_eq!(
        submitted.steps.last().map(|s| s.name.as_str()),
        Some("crypto_shred")
    );
    assert!(submitted.receipt_json.is_empty());
    let got = c
        .dsr
        .get_request(c.req(pb::GetRequestRequest {
            request_id: submitted.request_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(got, submitted);
    let listed = c
        .dsr
        .list_requests(c.req(pb::ListRequestsRequest {
            statuses: vec![pb::RequestStatus::Completed as i32],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.requests.is_empty());
    let err = c
        .dsr
        .get_request(c.req(pb::GetRequestRequest {
            request_id: "nope".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[sqlx::test(migrations = "../../migrations/postgres")]
async fn postgres(pool: PgPool) {
    every_rpc_over_the_wire(serve(Store::Postgres(pool)).await).await;
}

#[sqlx::test(migrations = "../../migrations/sqlite")]
async fn sqlite(pool: SqlitePool) {
    every_rpc_over_the_wire(serve(Store::Sqlite(pool)).await).await;
}
