//! Erasure and access through the real binary: Shopify's privacy webhooks on the HTTP
//! listener (HMAC-checked), the erasure saga to its signed receipt over gRPC, and nothing
//! left that names the shopper in any room, on the embedded store and on PostgreSQL with
//! NATS JetStream; and at the ad platforms (the Meta and Google fakes): exactly the hashes
//! they held taken back, a 503 outage holding the saga until it ends, and a server killed
//! mid-saga whose saga resumes after a restart. The saga's retries and lease take-over with
//! in-process targets are covered by `services/consent/tests/erasure.rs`.

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
    let env = Environment::new(Backend::Postgres).await;
    let key = env.api_key("acme", "admin").await;
    let jetstream = crate::harness::own_jetstream();
    let vars: Vec<(&str, &str)> = jetstream.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = env.serve_with_env(&vars).await;
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

// ---- erasure at the ad platforms: exact removals, an outage, kill -9 mid-saga ---------------

mod at_destinations {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use meridian_destinations::{Field, Platform, hash_field};
    use meridian_proto::v1::*;
    use meridian_test_support::platforms::Failure;
    use meridian_test_support::platforms::google::GoogleAdsFake;
    use meridian_test_support::platforms::meta::MetaFake;

    use crate::harness::{Backend, Environment, Server, authorized};

    const PURPOSE: &str = "marketing.advertising.third_party.targeted";
    const META_TOKEN: &str = "EAAB-erasure-meta-token";
    const GOOGLE_TOKEN: &str = "ya29.erasure-google-token";
    const GOOGLE_DEVELOPER: &str = "erasure-developer-token";
    const META_AUDIENCE: &str = "23850077";
    const GOOGLE_LIST: &str = "customers/1234567890/userLists/777";

    /// (tag, phone): the shopper erased, then the one kept.
    const SHOPPERS: [(&str, &str); 2] = [("gone", "+14154821234"), ("kept", "+14154825678")];

    fn email(tag: &str) -> String {
        format!("{tag}.platforms@example.com")
    }

    fn identifiers(tag: &str, phone: &str) -> Vec<Identifier> {
        vec![
            Identifier {
                r#type: IdentifierType::Email as i32,
                value: email(tag),
                ..Default::default()
            },
            Identifier {
                r#type: IdentifierType::Phone as i32,
                value: phone.into(),
                ..Default::default()
            },
        ]
    }

    fn hash(platform: Platform, field: Field, value: &str) -> String {
        hash_field(platform, field, value, None)
            .unwrap()
            .as_str()
            .to_owned()
    }

    /// The row Meta holds for a shopper (schema EMAIL, PHONE).
    fn meta_row(tag: &str, phone: &str) -> Vec<String> {
        vec![
            hash(Platform::Meta, Field::Email, &email(tag)),
            hash(Platform::Meta, Field::Phone, phone),
        ]
    }

    /// The identifiers Google holds for a shopper, as the fake keeps them.
    fn google_ids(tag: &str, phone: &str) -> Vec<String> {
        vec![
            format!(
                "{{\"hashedEmail\":\"{}\"}}",
                hash(Platform::Google, Field::Email, &email(tag))
            ),
            format!(
                "{{\"hashedPhoneNumber\":\"{}\"}}",
                hash(Platform::Google, Field::Phone, phone)
            ),
        ]
    }

    /// Polls `check` every 100 ms until it gives a value or `patience` runs out.
    async fn eventually<T>(
        patience: Duration,
        what: &str,
        mut check: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Two shoppers ingested, stitched, in a segment synced to a Meta audience and a Google
    /// Customer Match list on the fakes; the server on PostgreSQL and its own JetStream stream.
    struct World {
        env: Environment,
        key: String,
        vars: Vec<(String, String)>,
        meta: MetaFake,
        google: GoogleAdsFake,
        fakes: Vec<meridian_test_support::platforms::Running>,
        _secrets: tempfile::TempDir,
    }

    impl World {
        async fn serve(&self) -> Server {
            let vars: Vec<(&str, &str)> = self
                .vars
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            self.env.serve_with_env(&vars).await
        }

        async fn synced() -> (World, Server) {
            let env = Environment::new(Backend::Postgres).await;
            let key = env.api_key("acme", "admin").await;
            let meta = MetaFake::new(META_TOKEN, true);
            let google = GoogleAdsFake::new(GOOGLE_TOKEN, GOOGLE_DEVELOPER);
            let fakes = vec![meta.start().await.unwrap(), google.start().await.unwrap()];
            let secrets = tempfile::tempdir().unwrap();
            for (name, value) in [
                ("meta-access-token", META_TOKEN),
                ("google-access-token", GOOGLE_TOKEN),
                ("google-developer-token", GOOGLE_DEVELOPER),
            ] {
                std::fs::write(secrets.path().join(name), format!("{value}\n")).unwrap();
            }
            let mut vars: Vec<(String, String)> = crate::harness::own_jetstream()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            vars.extend([
                (
                    "MERIDIAN_DESTINATION_CREDENTIALS_DIR".to_owned(),
                    secrets.path().to_str().unwrap().to_owned(),
                ),
                // A killed server's held saga is taken over this long after its last renewal.
                ("MERIDIAN_ERASURE_LEASE_SECONDS".to_owned(), "10".to_owned()),
            ]);
            let world = World {
                env,
                key,
                vars,
                meta,
                google,
                fakes,
                _secrets: secrets,
            };
            let server = world.serve().await;
            world.sync(&server).await;
            (world, server)
        }

        async fn sync(&self, server: &Server) {
            let key = Some(self.key.as_str());
            let channel = server.channel.clone();
            let mut consent = consent_service_client::ConsentServiceClient::new(channel.clone());
            let mut ingest = ingest_service_client::IngestServiceClient::new(channel.clone());
            let mut identity = identity_service_client::IdentityServiceClient::new(channel.clone());
            let mut audience = audience_service_client::AudienceServiceClient::new(channel);
            for (tag, phone) in SHOPPERS {
                consent
                    .record_consent(authorized(
                        RecordConsentRequest {
                            subject: Some(SubjectRef {
                                identifiers: identifiers(tag, phone),
                                profile_id: String::new(),
                            }),
                            jurisdiction: "US-CA".into(),
                            signals: Some(ConsentSignals {
                                choices: vec![PurposeChoice {
                                    purpose: PURPOSE.into(),
                                    decision: ConsentDecision::Given as i32,
                                    lawful_basis: LawfulBasis::Consent as i32,
                                }],
                                ..Default::default()
                            }),
                            collection_point: "checkout".into(),
                            actor: Actor::Subject as i32,
                            time_zone: "America/Los_Angeles".into(),
                            ..Default::default()
                        },
                        key,
                    ))
                    .await
                    .unwrap();
                let response = ingest
                    .ingest(authorized(
                        IngestRequest {
                            events: vec![Event {
                                message_id: format!("{tag}-platforms-identify"),
                                r#type: EventType::Identify as i32,
                                user_id: format!("user-{tag}"),
                                identifiers: identifiers(tag, phone),
                                jurisdiction: "US-CA".into(),
                                age_band: AgeBand::Adult as i32,
                                ..Default::default()
                            }],
                            ..Default::default()
                        },
                        key,
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(response.summary.unwrap().accepted, 1, "{tag}");
                eventually(Duration::from_secs(60), "a stitched profile", async || {
                    identity
                        .lookup_profile(authorized(
                            LookupProfileRequest {
                                identifier: Some(identifiers(tag, phone).remove(0)),
                                ..Default::default()
                            },
                            key,
                        ))
                        .await
                        .ok()
                })
                .await;
            }
            let definition = r#"{"has_identifier": "email"}"#;
            eventually(Duration::from_secs(60), "the read model", async || {
                audience
                    .preview_segment(authorized(
                        PreviewSegmentRequest {
                            target: Some(preview_segment_request::Target::Definition(
                                definition.into(),
                            )),
                            ..Default::default()
                        },
                        key,
                    ))
                    .await
                    .ok()
                    .filter(|r| r.get_ref().count == 2)
            })
            .await;
            let segment = audience
                .create_segment(authorized(
                    CreateSegmentRequest {
                        name: "identified shoppers".into(),
                        definition: definition.into(),
                        purpose: PURPOSE.into(),
                        ..Default::default()
                    },
                    key,
                ))
                .await
                .unwrap()
                .into_inner()
                .segment
                .unwrap();
            let strings = |pairs: &[(&str, String)]| -> HashMap<String, String> {
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect()
            };
            let destinations = [
                (
                    DestinationPlatform::Meta,
                    strings(&[
                        ("base_url", self.fakes[0].base_url()),
                        ("audience_id", META_AUDIENCE.into()),
                    ]),
                    strings(&[("access_token", "meta-access-token".into())]),
                ),
                (
                    DestinationPlatform::GoogleAds,
                    strings(&[
                        ("base_url", self.fakes[1].base_url()),
                        ("customer_id", "1234567890".into()),
                        ("user_list_id", "777".into()),
                    ]),
                    strings(&[
                        ("access_token", "google-access-token".into()),
                        ("developer_token", "google-developer-token".into()),
                    ]),
                ),
            ];
            for (platform, settings, credentials) in destinations {
                let destination = audience
                    .create_destination(authorized(
                        CreateDestinationRequest {
                            name: format!("{platform:?}"),
                            platform: platform as i32,
                            settings,
                            credentials,
                            min_audience_size: 2,
                            ..Default::default()
                        },
                        key,
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .destination
                    .unwrap();
                let status = audience
                    .sync_now(authorized(
                        SyncNowRequest {
                            segment_id: segment.segment_id.clone(),
                            destination_id: destination.destination_id,
                            ..Default::default()
                        },
                        key,
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .status
                    .unwrap();
                assert_eq!(status.state, SyncState::Succeeded as i32, "{status:?}");
                assert_eq!(status.members_sent, 2, "{status:?}");
            }
            let held_meta = self.meta.members(META_AUDIENCE);
            let held_google = self.google.members(GOOGLE_LIST);
            for (tag, phone) in SHOPPERS {
                assert!(held_meta.contains(&meta_row(tag, phone)), "{held_meta:?}");
                for id in google_ids(tag, phone) {
                    assert!(held_google.contains(&id), "{held_google:?}");
                }
            }
            assert_eq!((held_meta.len(), held_google.len()), (2, 4));
        }

        async fn request_erasure(&self, server: &Server) -> String {
            let mut dsr = dsr_service_client::DsrServiceClient::new(server.channel.clone());
            dsr.submit_request(authorized(
                SubmitRequestRequest {
                    kind: RequestKind::Erasure as i32,
                    subject: Some(SubjectRef {
                        identifiers: vec![identifiers("gone", SHOPPERS[0].1).remove(0)],
                        profile_id: String::new(),
                    }),
                    jurisdiction: "US-CA".into(),
                    idempotency_key: "erase-gone".into(),
                    ..Default::default()
                },
                Some(&self.key),
            ))
            .await
            .unwrap()
            .into_inner()
            .request
            .unwrap()
            .request_id
        }

        async fn request(&self, server: &Server, request_id: &str) -> DataSubjectRequest {
            let mut dsr = dsr_service_client::DsrServiceClient::new(server.channel.clone());
            dsr.get_request(authorized(
                GetRequestRequest {
                    request_id: request_id.to_owned(),
                    ..Default::default()
                },
                Some(&self.key),
            ))
            .await
            .unwrap()
            .into_inner()
            .request
            .unwrap()
        }

        /// The completed request, with every step succeeded and the receipt verified.
        async fn completed(&self, server: &Server, request_id: &str) -> DataSubjectRequest {
            let done = eventually(Duration::from_secs(90), "the erasure", async || {
                let r = self.request(server, request_id).await;
                (r.status() == RequestStatus::Completed).then_some(r)
            })
            .await;
            assert!(
                done.steps
                    .iter()
                    .all(|s| s.state() == StepState::Succeeded && s.finished_at.is_some()),
                "{:?}",
                done.steps
            );
            let mut consent =
                consent_service_client::ConsentServiceClient::new(server.channel.clone());
            let verified = consent
                .verify_ledger(authorized(VerifyLedgerRequest::default(), Some(&self.key)))
                .await
                .unwrap()
                .into_inner();
            assert!(verified.valid, "{verified:?}");
            assert!(meridian_consent::verify_receipt(
                &done.receipt_json,
                &done.receipt_signature,
                &verified.public_key
            ));
            done
        }

        /// The platforms took back exactly the erased shopper's hashes, each at least once,
        /// and nothing of the other shopper; they hold the other shopper alone. Returns how
        /// many times each platform was sent the erased shopper's removal (Meta rows, Google
        /// identifiers per identifier).
        fn assert_exact_removals(&self) -> (usize, usize) {
            let (gone, gone_phone) = SHOPPERS[0];
            let (kept, kept_phone) = SHOPPERS[1];
            let removed_meta = self.meta.removed_rows(META_AUDIENCE);
            assert!(!removed_meta.is_empty(), "Meta received no removal");
            assert!(
                removed_meta
                    .iter()
                    .all(|r| *r == meta_row(gone, gone_phone)),
                "Meta was sent a removal of other identifiers: {removed_meta:?}"
            );
            let removed_google = self.google.removed(GOOGLE_LIST);
            let gone_google = google_ids(gone, gone_phone);
            for id in &gone_google {
                assert!(removed_google.contains(id), "Google never removed {id}");
            }
            assert!(
                removed_google.iter().all(|id| gone_google.contains(id)),
                "Google was sent a removal of other identifiers: {removed_google:?}"
            );
            let per_id = removed_google.len() / gone_google.len();
            assert_eq!(
                removed_google.len(),
                per_id * gone_google.len(),
                "every identifier as often: {removed_google:?}"
            );
            assert_eq!(
                self.meta.members(META_AUDIENCE),
                [meta_row(kept, kept_phone)].into_iter().collect()
            );
            assert_eq!(
                self.google.members(GOOGLE_LIST),
                google_ids(kept, kept_phone).into_iter().collect()
            );
            (removed_meta.len(), per_id)
        }

        async fn pool(&self) -> sqlx::PgPool {
            sqlx::PgPool::connect(&self.env.database.as_ref().unwrap().url)
                .await
                .unwrap()
        }
    }

    fn step<'a>(request: &'a DataSubjectRequest, name: &str) -> &'a RequestStep {
        request
            .steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no step {name}: {:?}", request.steps))
    }

    /// The `summary` of a step in a receipt.
    fn receipt_summary(receipt_json: &str, name: &str) -> serde_json::Value {
        fn find(v: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
            match v {
                serde_json::Value::Object(o) => {
                    if o.get("name").and_then(|n| n.as_str()) == Some(name)
                        && let Some(summary) = o.get("summary")
                    {
                        return Some(summary.clone());
                    }
                    o.values().find_map(|v| find(v, name))
                }
                serde_json::Value::Array(a) => a.iter().find_map(|v| find(v, name)),
                _ => None,
            }
        }
        let receipt: serde_json::Value = serde_json::from_str(receipt_json).unwrap();
        find(&receipt, name).unwrap_or_else(|| panic!("no {name} in the receipt: {receipt}"))
    }

    /// How many times a removal reached the platform while the saga and the consent room's
    /// withdrawal (the saga's ledger entry withdraws the shopper's consent, and audience
    /// removes on `ConsentChanged`) race: each path sends it at most once after the platform
    /// answers, because a removal the platform accepted is recorded before either path looks
    /// again. A second copy changes nothing at Meta or Google (removing what an audience no
    /// longer holds is a no-op there, and in the fakes).
    const AT_MOST_TWO_PATHS: usize = 2;

    #[tokio::test]
    async fn erasure_takes_back_exactly_the_hashes_meta_and_google_held() {
        let (world, server) = World::synced().await;
        let request_id = world.request_erasure(&server).await;
        let done = world.completed(&server, &request_id).await;
        let removal = step(&done, "remove_from_destinations");
        assert_eq!(removal.attempts, 1, "{removal:?}");
        let (meta_times, google_times) = world.assert_exact_removals();
        assert!(meta_times <= AT_MOST_TWO_PATHS && google_times <= AT_MOST_TWO_PATHS);
        assert!(server.terminate().await.success());
    }

    #[tokio::test]
    async fn a_platform_answering_503_holds_the_saga_until_it_recovers() {
        let (world, server) = World::synced().await;
        world.meta.fail_until_recovered(Failure::Unavailable);
        let request_id = world.request_erasure(&server).await;

        // While Meta answers 503 the step is retried, and GetRequest says so; nothing after
        // it has run.
        let failing = eventually(
            Duration::from_secs(90),
            "retries of the removal",
            async || {
                let r = world.request(&server, &request_id).await;
                let s = step(&r, "remove_from_destinations");
                (s.attempts >= 2 && !s.last_error.is_empty()).then_some(r)
            },
        )
        .await;
        assert_ne!(failing.status(), RequestStatus::Completed);
        let removal = step(&failing, "remove_from_destinations");
        assert_ne!(removal.state(), StepState::Succeeded, "{removal:?}");
        assert!(
            !removal.last_error.contains("gone.platforms"),
            "{removal:?}"
        );
        let graph = step(&failing, "delete_identity_graph");
        assert_eq!(
            (graph.state(), graph.attempts),
            (StepState::Pending, 0),
            "{graph:?}"
        );
        assert!(world.meta.removed_rows(META_AUDIENCE).is_empty());
        assert!(
            world
                .meta
                .members(META_AUDIENCE)
                .contains(&meta_row(SHOPPERS[0].0, SHOPPERS[0].1)),
            "Meta was down: it still holds the shopper"
        );

        world.meta.recover();
        let done = world.completed(&server, &request_id).await;
        let removal = step(&done, "remove_from_destinations");
        assert!(removal.attempts >= 3, "{removal:?}");
        let (meta_times, google_times) = world.assert_exact_removals();
        assert!(meta_times <= AT_MOST_TWO_PATHS && google_times <= AT_MOST_TWO_PATHS);
        assert!(server.terminate().await.success());
    }

    #[tokio::test]
    async fn a_saga_killed_mid_way_resumes_after_restart_without_repeating_a_step() {
        let (world, mut server) = World::synced().await;
        world.meta.fail_until_recovered(Failure::Unavailable);
        let request_id = world.request_erasure(&server).await;
        // A failed attempt, then the retry in flight (each attempt spends seconds in the
        // connector's own retries of the 503s): the kill lands inside it, its lease held.
        let parked = eventually(Duration::from_secs(90), "a retry in flight", async || {
            let r = world.request(&server, &request_id).await;
            let s = step(&r, "remove_from_destinations");
            (s.attempts >= 1 && !s.last_error.is_empty() && s.state() == StepState::Running)
                .then_some(r)
        })
        .await;
        let parked_attempts = step(&parked, "remove_from_destinations").attempts;
        // Google is up: it took its share back before the step failed on Meta.
        let (kept, kept_phone) = SHOPPERS[1];
        let kept_google: std::collections::HashSet<String> =
            google_ids(kept, kept_phone).into_iter().collect();
        assert_eq!(world.google.members(GOOGLE_LIST), kept_google);

        // kill -9, mid-saga
        server.child.start_kill().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), server.child.wait())
            .await
            .expect("the killed server did not exit")
            .unwrap();
        assert!(!status.success());
        drop(server);

        // The same database and data dir: once the dead worker's lease runs out the saga is
        // taken over and retried while Meta is still down, then completes once it is back.
        let server = world.serve().await;
        eventually(
            Duration::from_secs(90),
            "retries after the restart",
            async || {
                let r = world.request(&server, &request_id).await;
                (step(&r, "remove_from_destinations").attempts > parked_attempts).then_some(())
            },
        )
        .await;
        world.meta.recover();
        let done = world.completed(&server, &request_id).await;
        for name in ["record_in_ledger", "locate_subject"] {
            assert_eq!(step(&done, name).attempts, 1, "{name} ran again: {done:?}");
        }
        for s in &done.steps {
            if s.name != "remove_from_destinations" {
                assert_eq!(s.attempts, 1, "{s:?}");
            }
        }
        let (meta_times, google_times) = world.assert_exact_removals();
        assert!(meta_times <= AT_MOST_TWO_PATHS && google_times <= AT_MOST_TWO_PATHS);

        // The erasure's withdrawal is in the ledger once, however often the saga was driven.
        let entries = receipt_summary(&done.receipt_json, "record_in_ledger")["entries"]
            .as_i64()
            .unwrap();
        let pool = world.pool().await;
        let in_ledger: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM consent_ledger WHERE body LIKE '%' || $1 || '%'",
        )
        .bind(format!("dsr:{request_id}"))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(entries >= 1);
        assert_eq!(in_ledger, entries);
        assert!(server.terminate().await.success());
    }
}
