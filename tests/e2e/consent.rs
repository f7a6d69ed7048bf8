//! The consent room through the real binary: record, read back, verify the
//! ledger over gRPC and with `meridian ledger verify` (tampering is covered by
//! the consent room's conformance suite, which edits rows directly).

use meridian_proto::v1::*;

use crate::harness::{Backend, Environment, authorized};

fn record_request(email: &str) -> RecordConsentRequest {
    RecordConsentRequest {
        subject: Some(SubjectRef {
            identifiers: vec![Identifier {
                r#type: IdentifierType::Email as i32,
                value: email.into(),
                ..Default::default()
            }],
            profile_id: String::new(),
        }),
        jurisdiction: "EU-FR".into(),
        signals: Some(ConsentSignals {
            choices: vec![PurposeChoice {
                purpose: "analytics".into(),
                decision: ConsentDecision::Given as i32,
                lawful_basis: LawfulBasis::Consent as i32,
            }],
            ..Default::default()
        }),
        notice: Some(Notice {
            url: "https://acme.example/privacy".into(),
            version: "3".into(),
            hash: "0f".repeat(32),
            language: "fr".into(),
        }),
        collection_point: "cookie-banner".into(),
        actor: Actor::Subject as i32,
        time_zone: "Europe/Paris".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn consent_is_recorded_read_back_and_the_ledger_verifies() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let env = Environment::new(backend).await;
        let key = env.api_key("acme", "consent").await;
        let server = env.serve(&[]).await;
        let mut consent = consent_service_client::ConsentServiceClient::new(server.channel.clone());

        let recorded = consent
            .record_consent(authorized(
                record_request("ana.silva@example.com"),
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(!recorded.entries.is_empty());

        let state = consent
            .get_consent(authorized(
                GetConsentRequest {
                    subject: record_request("ana.silva@example.com").subject,
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(
            state
                .states
                .iter()
                .any(|s| s.purpose == "analytics" && s.decision() == ConsentDecision::Given),
            "{state:?}"
        );

        let verified = consent
            .verify_ledger(authorized(VerifyLedgerRequest::default(), Some(&key)))
            .await
            .unwrap()
            .into_inner();
        assert!(verified.valid, "{verified:?}");
        assert!(verified.entries_checked >= 1);

        // Bad input is INVALID_ARGUMENT naming the field.
        let mut bad = record_request("ana.silva@example.com");
        bad.collection_point.clear();
        let status = consent
            .record_consent(authorized(bad, Some(&key)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        assert!(status.message().contains("collection_point"), "{status}");

        assert!(server.terminate().await.success());

        let (ok, stdout, stderr) = env.run(&["ledger", "verify", "--workspace", "acme"]).await;
        assert!(ok, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(report["valid"], true, "{report}");

        // No plaintext identity in the server log.
        assert!(!server_log_mentions(&env, "ana.silva"));
    }
}

fn server_log_mentions(env: &Environment, needle: &str) -> bool {
    std::fs::read_to_string(env.data_dir.path().join("server.log"))
        .unwrap_or_default()
        .contains(needle)
}
