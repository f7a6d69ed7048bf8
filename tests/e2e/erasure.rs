//! Erasure and access through the real binary: Shopify's privacy webhooks on the HTTP
//! listener (HMAC-checked), the erasure saga to its signed receipt over gRPC, and nothing
//! left that names the shopper in any room, on the embedded store and on PostgreSQL with
//! NATS JetStream. The saga with failing targets, retries and lease take-over is covered by
//! `services/consent/tests/erasure.rs`.

use std::time::Duration;

use base64::Engine as _;
use meridian_proto::v1::*;

use crate::harness::{Backend, Environment, Server, authorized};

const SECRET: &str = "shpss_e2e_client_secret";
const SHOP: &str = "acme-store.myshopify.com";
const EMAIL: &str = "ines.moreau@example.com";
const PHONE: &str = "+33 6 98 76 54 32";

fn subject() -> SubjectRef {
    let id = |t: IdentifierType, v: &str, source: &str| Identifier {
        r#type: t as i32,
        value: v.into(),
        source: source.into(),
        ..Default::default()
    };
    SubjectRef {
        identifiers: vec![
            id(IdentifierType::Email, EMAIL, ""),
            id(IdentifierType::Phone, PHONE, ""),
            id(IdentifierType::StorefrontCustomerId, "7001", "shopify"),
        ],
        profile_id: String::new(),
    }
}

fn hmac(body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, body.as_bytes()))
}

/// A raw HTTP/1.1 POST: (status, body).
async fn post(
    server: &Server,
    topic: &str,
    webhook_id: &str,
    body: &str,
    hmac: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = &server.http_addr;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "POST /webhooks/shopify/privacy HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Shopify-Topic: {topic}\r\nX-Shopify-Shop-Domain: {SHOP}\r\nX-Shopify-Webhook-Id: {webhook_id}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(h) = hmac {
        head.push_str(&format!("X-Shopify-Hmac-Sha256: {h}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn shopify_redaction_erases_the_shopper_with_a_signed_receipt() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let env = Environment::new(backend).await;
        let key = env.api_key("acme", "consent,dsr").await;
        let server = env
            .serve_with_env(&[
                ("MERIDIAN_SHOPIFY_APP_SECRET", SECRET),
                ("MERIDIAN_SHOPIFY_SHOPS", &format!("{SHOP}=acme:EU-FR")),
            ])
            .await;
        let mut consent = consent_service_client::ConsentServiceClient::new(server.channel.clone());
        let mut dsr = dsr_service_client::DsrServiceClient::new(server.channel.clone());
        consent
            .record_consent(authorized(
                RecordConsentRequest {
                    subject: Some(subject()),
                    jurisdiction: "EU-FR".into(),
                    signals: Some(ConsentSignals {
                        choices: vec![PurposeChoice {
                            purpose: "marketing.advertising.third_party.targeted".into(),
                            decision: ConsentDecision::Given as i32,
                            lawful_basis: LawfulBasis::Consent as i32,
                        }],
                        ..Default::default()
                    }),
                    collection_point: "checkout".into(),
                    time_zone: "Europe/Paris".into(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap();

        let customer = format!(r#"{{"id":7001,"email":"{EMAIL}","phone":"{PHONE}"}}"#);
        let redact = format!(
            r#"{{"shop_id":954889,"shop_domain":"{SHOP}","customer":{customer},"orders_to_redact":[299938,280263]}}"#
        );
        let data_request = format!(
            r#"{{"shop_id":954889,"shop_domain":"{SHOP}","orders_requested":[299938],"customer":{customer},"data_request":{{"id":9999}}}}"#
        );

        // unauthenticated deliveries are refused before anything happens
        let (status, _) = post(&server, "customers/redact", "w1", &redact, None).await;
        assert_eq!(status, 401);
        let forged = hmac(&redact.replace("7001", "7002"));
        let (status, _) = post(&server, "customers/redact", "w1", &redact, Some(&forged)).await;
        assert_eq!(status, 401);
        let (status, _) = post(&server, "customers/redact", "w1", &redact, Some("bm90IGl0")).await;
        assert_eq!(status, 401);

        // customers/data_request: an access request whose bundle holds the consent
        let (status, body) = post(
            &server,
            "customers/data_request",
            "w0",
            &data_request,
            Some(&hmac(&data_request)),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let access_id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["request_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let access = dsr
            .get_request(authorized(
                GetRequestRequest {
                    request_id: access_id,
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner()
            .request
            .unwrap();
        assert_eq!(access.kind(), RequestKind::Access);
        let bundle: serde_json::Value = serde_json::from_slice(&access.access_bundle_json).unwrap();
        assert_eq!(
            bundle["consents"]["current"][0]["purpose"],
            "marketing.advertising.third_party.targeted"
        );

        // customers/redact: an erasure; a redelivery is the same request
        let (status, body) = post(
            &server,
            "customers/redact",
            "w1",
            &redact,
            Some(&hmac(&redact)),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let request_id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["request_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (_, again) = post(
            &server,
            "customers/redact",
            "w1",
            &redact,
            Some(&hmac(&redact)),
        )
        .await;
        assert!(again.contains(&request_id), "{again}");

        let get = |id: String| {
            let mut dsr = dsr.clone();
            let key = key.clone();
            async move {
                dsr.get_request(authorized(
                    GetRequestRequest {
                        request_id: id,
                        ..Default::default()
                    },
                    Some(&key),
                ))
                .await
                .unwrap()
                .into_inner()
                .request
                .unwrap()
            }
        };
        let done = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let r = get(request_id.clone()).await;
                if r.status() == RequestStatus::Completed {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the erasure did not complete: {}", server.log()));
        let names: Vec<&str> = done.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "record_in_ledger",
                "locate_subject",
                "remove_from_destinations",
                "delete_identity_graph",
                "delete_events",
                "unlink_consent_subject",
                "crypto_shred"
            ]
        );
        assert!(
            done.steps
                .iter()
                .all(|s| s.state() == StepState::Succeeded && s.finished_at.is_some())
        );

        // the receipt verifies with the workspace key the ledger publishes
        let verified = consent
            .verify_ledger(authorized(VerifyLedgerRequest::default(), Some(&key)))
            .await
            .unwrap()
            .into_inner();
        assert!(verified.valid, "{verified:?}");
        assert!(meridian_consent::verify_receipt(
            &done.receipt_json,
            &done.receipt_signature,
            &verified.public_key
        ));
        assert!(!meridian_consent::verify_receipt(
            &done.receipt_json.replace("crypto_shred", "crypto_shrex"),
            &done.receipt_signature,
            &verified.public_key
        ));

        // nobody is known by those identifiers any more; the ledger keeps the proof
        let state = consent
            .get_consent(authorized(
                GetConsentRequest {
                    subject: Some(subject()),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(state.states.is_empty(), "{state:?}");

        if let Some(db) = &env.database {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM consent_subjects")
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(left, 0);
            let dump = meridian_vault::testing::dump_postgres(&pool).await.unwrap();
            let found = meridian_vault::testing::find_plaintext(
                &dump.text,
                [EMAIL, "ines.moreau", "698765432"],
            );
            assert!(found.is_empty(), "plaintext at rest: {found:?}");
        }
        assert!(server.terminate().await.success());
        let log = std::fs::read_to_string(env.data_dir.path().join("server.log")).unwrap();
        assert!(!log.contains("ines.moreau") && !log.contains("98 76"));
    }
}

/// Lower-case hex, as the table dump renders bytes.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An identify carrying a shopper's identifiers, then an order, both in California (an
/// opt-out regime: collection needs no prior consent).
fn shopper_events(tag: &str, phone: &str) -> Vec<Event> {
    let identifiers = vec![
        Identifier {
            r#type: IdentifierType::Email as i32,
            value: format!("{tag}.erasure@example.com"),
            ..Default::default()
        },
        Identifier {
            r#type: IdentifierType::Phone as i32,
            value: phone.into(),
            ..Default::default()
        },
    ];
    vec![
        Event {
            message_id: format!("{tag}-identify"),
            r#type: EventType::Identify as i32,
            user_id: format!("user-{tag}"),
            anonymous_id: format!("anon-{tag}"),
            identifiers: identifiers.clone(),
            jurisdiction: "US-CA".into(),
            ..Default::default()
        },
        Event {
            message_id: format!("{tag}-order"),
            r#type: EventType::Track as i32,
            event: "Order Completed".into(),
            anonymous_id: format!("anon-{tag}"),
            jurisdiction: "US-CA".into(),
            ..Default::default()
        },
    ]
}

/// Issue #11's promise on the production parts (PostgreSQL + NATS JetStream): a shopper
/// ingested under several identifiers and stitched is erased from every room. No table
/// keeps a row naming the shopper's blind indexes, what was sealed under the shopper's keys
/// no longer opens, another shopper is untouched, and the receipt verifies.
#[tokio::test]
async fn erasure_leaves_nothing_of_the_shopper_on_postgres_and_jetstream() {
    let nats = std::env::var("NATS_URL")
        .expect("NATS_URL must point at a NATS JetStream server for the end-to-end tests");
    // A stream and subject root of its own: tests running at once share the NATS server.
    let run = uuid::Uuid::now_v7().simple().to_string();
    let env = Environment::new(Backend::Postgres).await;
    let key = env.api_key("acme", "admin").await;
    let server = env
        .serve_with_env(&[
            ("NATS_URL", &nats),
            ("MERIDIAN_NATS_STREAM", &format!("E2E_{run}")),
            ("MERIDIAN_NATS_SUBJECT_ROOT", &format!("e2e-{run}")),
        ])
        .await;
    let mut ingest = ingest_service_client::IngestServiceClient::new(server.channel.clone());
    let mut identity = identity_service_client::IdentityServiceClient::new(server.channel.clone());
    let mut dsr = dsr_service_client::DsrServiceClient::new(server.channel.clone());
    let mut consent = consent_service_client::ConsentServiceClient::new(server.channel.clone());

    for (tag, phone) in [("gone", "+1 415 482 1234"), ("kept", "+1 415 482 5678")] {
        // consent too, so the consent room and its events know the shopper
        consent
            .record_consent(authorized(
                RecordConsentRequest {
                    subject: Some(SubjectRef {
                        identifiers: vec![Identifier {
                            r#type: IdentifierType::Email as i32,
                            value: format!("{tag}.erasure@example.com"),
                            ..Default::default()
                        }],
                        profile_id: String::new(),
                    }),
                    jurisdiction: "US-CA".into(),
                    signals: Some(ConsentSignals {
                        choices: vec![PurposeChoice {
                            purpose: "marketing.advertising.third_party.targeted".into(),
                            decision: ConsentDecision::Given as i32,
                            lawful_basis: LawfulBasis::Consent as i32,
                        }],
                        ..Default::default()
                    }),
                    collection_point: "checkout".into(),
                    time_zone: "America/Los_Angeles".into(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap();
        let response = ingest
            .ingest(authorized(
                IngestRequest {
                    events: shopper_events(tag, phone),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.summary.unwrap().accepted, 2, "{response:?}");
    }
    // identity stitches both events of each shopper into one profile (through JetStream)
    let mut profiles = Vec::new();
    for tag in ["gone", "kept"] {
        let lookup = || LookupProfileRequest {
            identifier: Some(Identifier {
                r#type: IdentifierType::Email as i32,
                value: format!("{tag}.erasure@example.com"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let profile = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(found) = identity
                    .lookup_profile(authorized(lookup(), Some(&key)))
                    .await
                    && let Some(profile) = found.into_inner().profile
                    && profile.identifiers.len() >= 4
                {
                    return profile;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{tag} was not stitched: {}", server.log()));
        profiles.push(profile.profile_id);
    }

    let db = env.database.as_ref().unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let blind_indexes = |profile: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT blind_index FROM identity_identifiers WHERE profile_id = $1::uuid",
            )
            .bind(profile)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let gone_indexes = blind_indexes(profiles[0].clone()).await;
    let kept_indexes = blind_indexes(profiles[1].clone()).await;
    assert!(
        gone_indexes.len() >= 4,
        "email, phone, user id, anonymous id"
    );
    // one sealed event body of each shopper, to try opening after the erasure
    let sealed_event = |index: Vec<u8>| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, String, Vec<u8>)>(
                "SELECT event_id::text, sealed_subject, body FROM ingest_events \
                 WHERE workspace_id = 'acme' AND position($1 in identifiers) > 0 LIMIT 1",
            )
            .bind(index)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let gone_event = sealed_event(gone_indexes[0].clone()).await;
    let kept_event = sealed_event(kept_indexes[0].clone()).await;

    let request = dsr
        .submit_request(authorized(
            SubmitRequestRequest {
                kind: RequestKind::Erasure as i32,
                subject: Some(SubjectRef {
                    identifiers: vec![Identifier {
                        r#type: IdentifierType::Email as i32,
                        value: "GONE.erasure@example.com".into(),
                        ..Default::default()
                    }],
                    profile_id: String::new(),
                }),
                jurisdiction: "US-CA".into(),
                ..Default::default()
            },
            Some(&key),
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let r = dsr
                .get_request(authorized(
                    GetRequestRequest {
                        request_id: request.request_id.clone(),
                        ..Default::default()
                    },
                    Some(&key),
                ))
                .await
                .unwrap()
                .into_inner()
                .request
                .unwrap();
            if r.status() == RequestStatus::Completed {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the erasure did not complete: {}", server.log()));
    assert!(
        done.steps
            .iter()
            .all(|s| s.state() == StepState::Succeeded && s.finished_at.is_some()),
        "{:?}",
        done.steps
    );
    assert!(server.log().contains("\"bus\":\"jetstream\""));
    let verified = consent
        .verify_ledger(authorized(VerifyLedgerRequest::default(), Some(&key)))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.valid, "{verified:?}");
    assert!(meridian_consent::verify_receipt(
        &done.receipt_json,
        &done.receipt_signature,
        &verified.public_key
    ));

    // no table keeps a row naming the erased shopper; the other shopper is all there
    let dump = meridian_vault::testing::dump_postgres(&pool).await.unwrap();
    // (a row's bytes may hold line breaks: a line belongs to the last table named)
    let mut rows_by_table: Vec<(&str, String)> = Vec::new();
    for line in dump.text.lines() {
        match dump
            .tables
            .iter()
            .find(|t| line.starts_with(&format!("{t}:")))
        {
            Some(table) => rows_by_table.push((table.as_str(), line.to_owned())),
            None => {
                if let Some((_, row)) = rows_by_table.last_mut() {
                    row.push_str(line);
                }
            }
        }
    }
    for index in &gone_indexes {
        let hex = hex(index);
        let holders: Vec<String> = rows_by_table
            .iter()
            .filter(|(_, row)| row.contains(&hex))
            .map(|(table, row)| format!("{table}: {}", &row[..row.len().min(200)]))
            .collect();
        assert!(holders.is_empty(), "blind index {hex} still in {holders:?}");
    }
    for index in &kept_indexes {
        assert!(
            dump.text.contains(&hex(index)),
            "the other shopper was touched"
        );
    }
    let found = meridian_vault::testing::find_plaintext(&dump.text, ["gone.erasure", "user-gone"]);
    assert!(found.is_empty(), "plaintext at rest: {found:?}");

    // what was sealed under the erased shopper's keys stays sealed; the other still opens
    // (the same key file and key store as the server)
    let store = meridian_store::Store::connect(&meridian_store::StoreLocation::Postgres {
        url: db.url.clone(),
        max_connections: 2,
    })
    .await
    .unwrap();
    let vault = std::sync::Arc::new(meridian_vault::Vault::new(
        std::sync::Arc::new(
            meridian_vault::LocalKeyFileProvider::open_or_create(env.data_dir.path()).unwrap(),
        ),
        meridian_vault::key_store_for(&store),
    ));
    let open = |(event_id, subject, body): (String, String, Vec<u8>)| {
        let vault = vault.clone();
        async move {
            vault
                .open("acme", &subject, &event_id, "body", &body)
                .await
                .map(|plain| plain.len())
        }
    };
    assert!(open(kept_event).await.unwrap() > 0);
    let err = open(gone_event).await.unwrap_err();
    assert!(
        err.to_string().contains("forgotten"),
        "sealed data of an erased shopper opened or failed otherwise: {err}"
    );
    assert!(server.terminate().await.success());
}
