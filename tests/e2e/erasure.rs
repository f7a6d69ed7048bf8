//! Erasure and access through the real binary: Shopify's privacy webhooks on the HTTP
//! listener (HMAC-checked), the erasure saga to its signed receipt over gRPC, and nothing
//! left that names the shopper.
//!
//! The binary does not wire the identity, ingest and audience rooms into the saga yet: the
//! saga here runs its own steps (ledger entry, unlink, crypto-shred). The saga with failing
//! destinations, retries and lease take-over is covered by `services/consent/tests/erasure.rs`.

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
