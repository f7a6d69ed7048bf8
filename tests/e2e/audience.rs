//! The audience room through the real binary: segments created, previewed, listed and
//! updated over gRPC on both backends, rule errors naming the part at fault; and
//! `meridian hash` printing the platforms' normalized SHA-256 line by line.

use meridian_proto::v1::*;
use tokio::io::AsyncWriteExt;

use crate::harness::{Backend, Environment, authorized};

const CARTED_NOT_BOUGHT: &str = r#"{"all": [
    {"event": {"name": "Product Viewed", "within_days": 7}},
    {"not": {"event": {"name": "Order Completed", "within_days": 7}}}]}"#;

#[tokio::test]
async fn segments_are_created_previewed_listed_and_updated() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let env = Environment::new(backend).await;
        let key = env.api_key("acme", "audience").await;
        let server = env.serve(&[]).await;
        let mut audience =
            audience_service_client::AudienceServiceClient::new(server.channel.clone());

        let bad = audience
            .create_segment(authorized(
                CreateSegmentRequest {
                    name: "carted".into(),
                    definition:
                        r#"{"all": [{"event": {"name": "Product Viewed", "within_days": 0}}]}"#
                            .into(),
                    purpose: "marketing.advertising.third_party.targeted".into(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(
            bad.message()
                .contains("definition.all[0].event.within_days"),
            "{}",
            bad.message()
        );

        let created = audience
            .create_segment(authorized(
                CreateSegmentRequest {
                    name: "carted, not bought".into(),
                    definition: CARTED_NOT_BOUGHT.into(),
                    purpose: "marketing.advertising.third_party.targeted".into(),
                    recompute_schedule: "0 2 * * *".into(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner()
            .segment
            .unwrap();
        assert_eq!(created.version, 1);

        let preview = audience
            .preview_segment(authorized(
                PreviewSegmentRequest {
                    target: Some(preview_segment_request::Target::SegmentId(
                        created.segment_id.clone(),
                    )),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(preview.count, 0, "no profiles yet");

        let members = audience
            .list_members(authorized(
                ListMembersRequest {
                    segment_id: created.segment_id.clone(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(members.members.is_empty());

        let updated = audience
            .update_segment(authorized(
                UpdateSegmentRequest {
                    segment_id: created.segment_id.clone(),
                    name: "carted 7d".into(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner()
            .segment
            .unwrap();
        assert_eq!((updated.version, updated.name.as_str()), (2, "carted 7d"));
        assert_eq!(updated.definition, CARTED_NOT_BOUGHT);

        // The same rule in YAML; a schedule that is not five-field cron is refused,
        // naming the field.
        let yaml = audience
            .create_segment(authorized(
                CreateSegmentRequest {
                    name: "carted (YAML)".into(),
                    definition: "all:\n  - event: {name: Product Added, within_days: 7}\n  - not:\n      event: {name: Order Completed, within_days: 7}\n".into(),
                    purpose: "marketing.advertising.third_party.targeted".into(),
                    recompute_schedule: "30 3 * * 1-5".into(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner()
            .segment
            .unwrap();
        assert_eq!(yaml.recompute_schedule, "30 3 * * 1-5");
        let bad_schedule = audience
            .update_segment(authorized(
                UpdateSegmentRequest {
                    segment_id: yaml.segment_id.clone(),
                    recompute_schedule: "0 25 * * *".into(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap_err();
        assert_eq!(bad_schedule.code(), tonic::Code::InvalidArgument);
        assert!(
            bad_schedule.message().contains("recompute_schedule"),
            "{}",
            bad_schedule.message()
        );
        let bad_yaml = audience
            .create_segment(authorized(
                CreateSegmentRequest {
                    name: "bad".into(),
                    definition: "all:\n  - event: {name: x, within_days: 0}\n".into(),
                    purpose: "marketing.advertising.third_party.targeted".into(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap_err();
        assert_eq!(bad_yaml.code(), tonic::Code::InvalidArgument);
        assert!(
            bad_yaml
                .message()
                .contains("definition.all[0].event.within_days"),
            "{}",
            bad_yaml.message()
        );

        let missing = audience
            .list_members(authorized(
                ListMembersRequest {
                    segment_id: "nope".into(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        server.terminate().await;
    }
}

#[tokio::test]
async fn hash_prints_the_platform_hash_per_line() {
    let env = Environment::new(Backend::Sqlite).await;
    let mut child = env
        .command()
        .args(["hash", "--platform", "google", "--field", "email"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b" Jane.Doe@GMail.com \nnot an email\njanedoe@gmail.com\n")
        .await
        .unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    // SHA-256("janedoe@gmail.com"): Google drops the dots of gmail.com addresses.
    assert_eq!(lines[0], lines[2]);
    assert_eq!(lines[0].len(), 64);
    assert_eq!(lines[1], "");
}

// ---- destinations: sync to the platform fakes, removal on withdrawal ------------------------

mod destinations {
    use std::collections::{BTreeMap, HashSet};
    use std::time::{Duration, Instant};

    use meridian_destinations::{Field, Platform, hash_field};
    use meridian_proto::v1::*;
    use meridian_test_support::platforms::google::GoogleAdsFake;
    use meridian_test_support::platforms::meta::MetaFake;
    use meridian_test_support::platforms::shopify::ShopifyFake;
    use meridian_test_support::platforms::tiktok::TikTokFake;
    use meridian_vault::testing::{dump_postgres, find_plaintext};

    use crate::harness::{Backend, Environment, authorized};

    const PURPOSE: &str = "marketing.advertising.third_party.targeted";
    const META_TOKEN: &str = "EAAB-e2e-meta-token";
    const GOOGLE_TOKEN: &str = "ya29.e2e-google-token";
    const GOOGLE_DEVELOPER: &str = "e2e-developer-token";
    const TIKTOK_TOKEN: &str = "e2e-tiktok-token";
    const SHOPIFY_TOKEN: &str = "shpat_e2e_token";
    const ADVERTISER: &str = "7000001";

    /// Settings or credential names of a destination.
    type Strings = BTreeMap<String, String>;

    struct Shopper {
        email: &'static str,
        phone: &'static str,
        shopify_id: &'static str,
    }

    const SHOPPERS: [Shopper; 3] = [
        Shopper {
            email: "maya.chen@example.com",
            phone: "+14155550101",
            shopify_id: "7001",
        },
        Shopper {
            email: "luis.ortega@example.com",
            phone: "+14155550102",
            shopify_id: "7002",
        },
        Shopper {
            email: "priya.nair@example.com",
            phone: "+14155550103",
            shopify_id: "7003",
        },
    ];

    fn id(kind: IdentifierType, value: &str, source: &str) -> Identifier {
        Identifier {
            r#type: kind as i32,
            value: value.into(),
            source: source.into(),
            ..Default::default()
        }
    }

    fn subject(s: &Shopper) -> SubjectRef {
        SubjectRef {
            identifiers: vec![
                id(IdentifierType::Email, s.email, ""),
                id(IdentifierType::Phone, s.phone, ""),
                id(
                    IdentifierType::StorefrontCustomerId,
                    s.shopify_id,
                    "shopify",
                ),
            ],
            profile_id: String::new(),
        }
    }

    fn consent_request(s: &Shopper, decision: ConsentDecision, key: &str) -> RecordConsentRequest {
        RecordConsentRequest {
            subject: Some(subject(s)),
            jurisdiction: "US-CA".into(),
            signals: Some(ConsentSignals {
                choices: vec![PurposeChoice {
                    purpose: PURPOSE.into(),
                    decision: decision as i32,
                    lawful_basis: LawfulBasis::Consent as i32,
                }],
                ..Default::default()
            }),
            notice: Some(Notice {
                url: "https://shop.example/privacy".into(),
                version: "2026-11".into(),
                hash: String::new(),
                language: "en-US".into(),
            }),
            collection_point: "checkout".into(),
            actor: Actor::Subject as i32,
            time_zone: "America/Los_Angeles".into(),
            idempotency_key: key.into(),
            ..Default::default()
        }
    }

    fn identify(s: &Shopper, n: usize) -> Event {
        Event {
            message_id: format!("dest-identify-{n}"),
            r#type: EventType::Identify as i32,
            user_id: format!("user-{}", s.shopify_id),
            identifiers: subject(s).identifiers,
            jurisdiction: "US-CA".into(),
            age_band: AgeBand::Adult as i32,
            ..Default::default()
        }
    }

    fn hex(platform: Platform, field: Field, value: &str) -> String {
        hash_field(platform, field, value, None)
            .unwrap()
            .as_str()
            .to_owned()
    }

    fn meta_row(s: &Shopper) -> Vec<String> {
        vec![
            hex(Platform::Meta, Field::Email, s.email),
            hex(Platform::Meta, Field::Phone, s.phone),
        ]
    }

    fn google_ids(s: &Shopper) -> Vec<String> {
        vec![
            format!(
                "{{\"hashedEmail\":\"{}\"}}",
                hex(Platform::Google, Field::Email, s.email)
            ),
            format!(
                "{{\"hashedPhoneNumber\":\"{}\"}}",
                hex(Platform::Google, Field::Phone, s.phone)
            ),
        ]
    }

    fn tiktok_ids(s: &Shopper) -> Vec<(String, String)> {
        vec![
            (
                "EMAIL_SHA256".into(),
                hex(Platform::TikTok, Field::Email, s.email),
            ),
            (
                "PHONE_SHA256".into(),
                hex(Platform::TikTok, Field::Phone, s.phone),
            ),
        ]
    }

    fn gid(s: &Shopper) -> String {
        format!("gid://shopify/Customer/{}", s.shopify_id)
    }

    /// Polls `check` every 100 ms until it holds or `patience` runs out.
    async fn eventually(patience: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + patience;
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn segment_syncs_to_four_platforms_and_a_withdrawal_takes_exactly_that_member_back() {
        let env = Environment::new(Backend::Postgres).await;
        let key = env.api_key("acme", "admin").await;

        let meta = MetaFake::new(META_TOKEN, true);
        let google = GoogleAdsFake::new(GOOGLE_TOKEN, GOOGLE_DEVELOPER);
        let tiktok = TikTokFake::new(TIKTOK_TOKEN, ADVERTISER);
        let shopify = ShopifyFake::new(SHOPIFY_TOKEN, 1000.0, 50.0);
        let (meta_at, google_at, tiktok_at, shopify_at) = (
            meta.start().await.unwrap(),
            google.start().await.unwrap(),
            tiktok.start().await.unwrap(),
            shopify.start().await.unwrap(),
        );
        let secrets = tempfile::tempdir().unwrap();
        for (name, value) in [
            ("meta-access-token", META_TOKEN),
            ("google-access-token", GOOGLE_TOKEN),
            ("google-developer-token", GOOGLE_DEVELOPER),
            ("tiktok-access-token", TIKTOK_TOKEN),
            ("shopify-access-token", SHOPIFY_TOKEN),
        ] {
            // As a mounted Secret holds them: one file per key, with a trailing newline.
            std::fs::write(secrets.path().join(name), format!("{value}\n")).unwrap();
        }
        let secrets_dir = secrets.path().to_str().unwrap().to_owned();
        let [(url_var, nats), (stream_var, stream), (root_var, root)] =
            crate::harness::own_jetstream();
        let server = env
            .serve_with_env(&[
                (url_var, &nats),
                (stream_var, &stream),
                (root_var, &root),
                ("MERIDIAN_DESTINATION_CREDENTIALS_DIR", &secrets_dir),
            ])
            .await;
        let channel = server.channel.clone();
        let mut consent = consent_service_client::ConsentServiceClient::new(channel.clone());
        let mut ingest = ingest_service_client::IngestServiceClient::new(channel.clone());
        let mut identity = identity_service_client::IdentityServiceClient::new(channel.clone());
        let mut dsr = dsr_service_client::DsrServiceClient::new(channel.clone());
        let mut audience = audience_service_client::AudienceServiceClient::new(channel);

        for (i, s) in SHOPPERS.iter().enumerate() {
            consent
                .record_consent(authorized(
                    consent_request(s, ConsentDecision::Given, &format!("given-{i}")),
                    Some(&key),
                ))
                .await
                .unwrap();
        }
        let response = ingest
            .ingest(authorized(
                IngestRequest {
                    events: SHOPPERS
                        .iter()
                        .enumerate()
                        .map(|(i, s)| identify(s, i))
                        .collect(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(
            response
                .results
                .iter()
                .all(|r| r.outcome == EventOutcome::Accepted as i32),
            "{:?}",
            response.results
        );
        // Stitched by identity, then seen by the audience read model.
        for s in &SHOPPERS {
            eventually(Duration::from_secs(30), "a stitched profile", async || {
                identity
                    .lookup_profile(authorized(
                        LookupProfileRequest {
                            identifier: Some(id(IdentifierType::Email, s.email, "")),
                            ..Default::default()
                        },
                        Some(&key),
                    ))
                    .await
                    .is_ok()
            })
            .await;
        }
        let definition = r#"{"has_identifier": "email"}"#;
        eventually(Duration::from_secs(30), "the read model", async || {
            audience
                .preview_segment(authorized(
                    PreviewSegmentRequest {
                        target: Some(preview_segment_request::Target::Definition(
                            definition.into(),
                        )),
                        ..Default::default()
                    },
                    Some(&key),
                ))
                .await
                .is_ok_and(|r| r.into_inner().count == 3)
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
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner()
            .segment
            .unwrap();

        // A destination naming a secret instead of a credential file is refused by field.
        let bad = audience
            .create_destination(authorized(
                CreateDestinationRequest {
                    name: "meta".into(),
                    platform: DestinationPlatform::Meta as i32,
                    settings: [("audience_id".to_owned(), "23850001".to_owned())].into(),
                    credentials: [("access_token".to_owned(), META_TOKEN.to_owned())].into(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(
            bad.message().contains("credentials.access_token"),
            "{}",
            bad.message()
        );

        let destinations: Vec<(DestinationPlatform, Strings, Strings)> = vec![
            (
                DestinationPlatform::Meta,
                [
                    ("base_url", meta_at.base_url()),
                    ("audience_id", "23850001".into()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
                [("access_token", "meta-access-token")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            (
                DestinationPlatform::GoogleAds,
                [
                    ("base_url", google_at.base_url()),
                    ("customer_id", "1234567890".into()),
                    ("user_list_id", "555".into()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
                [
                    ("access_token", "google-access-token"),
                    ("developer_token", "google-developer-token"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ),
            (
                DestinationPlatform::Tiktok,
                [
                    ("base_url", tiktok_at.base_url()),
                    ("advertiser_id", ADVERTISER.into()),
                    ("audience_id", "tt-aud-1".into()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
                [("access_token", "tiktok-access-token")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            (
                DestinationPlatform::Shopify,
                [
                    ("base_url", shopify_at.base_url()),
                    ("tag", "meridian:identified".into()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
                [("access_token", "shopify-access-token")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
        ];
        let mut ids = Vec::new();
        for (platform, settings, credentials) in destinations {
            let created = audience
                .create_destination(authorized(
                    CreateDestinationRequest {
                        name: format!("{platform:?}"),
                        platform: platform as i32,
                        settings: settings.into_iter().collect(),
                        credentials: credentials.into_iter().collect(),
                        min_audience_size: 2,
                        ..Default::default()
                    },
                    Some(&key),
                ))
                .await
                .unwrap()
                .into_inner()
                .destination
                .unwrap();
            assert!(
                !created.region.is_empty(),
                "the platform's region by default"
            );
            ids.push(created.destination_id);
        }
        let listed = audience
            .list_destinations(authorized(ListDestinationsRequest::default(), Some(&key)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.destinations.len(), 4);

        let mut first_syncs = Vec::new();
        for destination_id in &ids {
            let status = audience
                .sync_now(authorized(
                    SyncNowRequest {
                        segment_id: segment.segment_id.clone(),
                        destination_id: destination_id.clone(),
                        ..Default::default()
                    },
                    Some(&key),
                ))
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            assert_eq!(status.state, SyncState::Succeeded as i32, "{status:?}");
            assert_eq!(status.members_sent, 3, "{status:?}");
            first_syncs.push(status.sync_id);
        }
        let expected_meta: HashSet<Vec<String>> = SHOPPERS.iter().map(meta_row).collect();
        assert_eq!(meta.members("23850001"), expected_meta);
        let list = "customers/1234567890/userLists/555";
        let expected_google: HashSet<String> = SHOPPERS.iter().flat_map(google_ids).collect();
        assert_eq!(google.members(list), expected_google);
        let expected_tiktok: HashSet<(String, String)> =
            SHOPPERS.iter().flat_map(tiktok_ids).collect();
        assert_eq!(tiktok.members("tt-aud-1"), expected_tiktok);
        for s in &SHOPPERS {
            assert!(shopify.tags(&gid(s)).contains("meridian:identified"));
        }
        let status = audience
            .get_sync_status(authorized(
                GetSyncStatusRequest {
                    sync_id: first_syncs[0].clone(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(status.members_sent, 3);
        assert!(!status.policy_version.is_empty());

        // Repeated: nothing new is sent anywhere.
        let meta_batches = meta.batches().len();
        for destination_id in &ids {
            let again = audience
                .sync_now(authorized(
                    SyncNowRequest {
                        segment_id: segment.segment_id.clone(),
                        destination_id: destination_id.clone(),
                        ..Default::default()
                    },
                    Some(&key),
                ))
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            assert_eq!((again.members_sent, again.members_removed), (0, 0));
        }
        assert_eq!(meta.batches().len(), meta_batches);

        // Luis withdraws: every platform takes back exactly his identifiers, within seconds.
        let luis = &SHOPPERS[1];
        consent
            .record_consent(authorized(
                consent_request(luis, ConsentDecision::Withdrawn, "withdrawn-1"),
                Some(&key),
            ))
            .await
            .unwrap();
        let mut meta_left = expected_meta.clone();
        meta_left.remove(&meta_row(luis));
        let mut google_left = expected_google.clone();
        for g in google_ids(luis) {
            google_left.remove(&g);
        }
        let mut tiktok_left = expected_tiktok.clone();
        for t in tiktok_ids(luis) {
            tiktok_left.remove(&t);
        }
        eventually(
            Duration::from_secs(90),
            "removals at every platform",
            async || {
                meta.members("23850001") == meta_left
                    && google.members(list) == google_left
                    && tiktok.members("tt-aud-1") == tiktok_left
                    && !shopify.tags(&gid(luis)).contains("meridian:identified")
            },
        )
        .await;
        let removal = meta.batches().pop().unwrap();
        assert!(removal.removal);
        assert_eq!(removal.rows, 1, "one member removed, nobody else");
        for s in [&SHOPPERS[0], &SHOPPERS[2]] {
            assert!(shopify.tags(&gid(s)).contains("meridian:identified"));
        }

        // The next sync does not send him back, and says why.
        let after = audience
            .sync_now(authorized(
                SyncNowRequest {
                    segment_id: segment.segment_id.clone(),
                    destination_id: ids[0].clone(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!((after.members_sent, after.members_removed), (0, 0));
        assert_eq!(after.excluded_by_reason.values().sum::<u64>(), 1);
        assert_eq!(meta.members("23850001"), meta_left);

        // Maya asks what Meridian holds: the bundle names the four destinations that got her,
        // with the consent entry and policy version that allowed it.
        let maya = &SHOPPERS[0];
        let submit = async |dsr: &mut dsr_service_client::DsrServiceClient<_>,
                            kind: RequestKind,
                            key_name: &str| {
            dsr.submit_request(authorized(
                SubmitRequestRequest {
                    kind: kind as i32,
                    subject: Some(subject(maya)),
                    jurisdiction: "US-CA".into(),
                    time_zone: "America/Los_Angeles".into(),
                    idempotency_key: key_name.into(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner()
            .request
            .unwrap()
            .request_id
        };
        let completed = async |dsr: &mut dsr_service_client::DsrServiceClient<_>, id: String| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let r = dsr
                    .get_request(authorized(
                        GetRequestRequest {
                            request_id: id.clone(),
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
                assert!(Instant::now() < deadline, "request not completed: {r:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let access_id = submit(&mut dsr, RequestKind::Access, "maya-access").await;
        let access = completed(&mut dsr, access_id).await;
        let bundle: serde_json::Value = serde_json::from_slice(&access.access_bundle_json).unwrap();
        let held = bundle["destinations"].as_array().unwrap();
        assert_eq!(held.len(), 4, "{held:?}");
        assert!(held.iter().all(|d| d["status"] == "sent"
            && !d["consent_entry_id"].as_str().unwrap().is_empty()
            && d["policy_version"] == status.policy_version.as_str()));

        // Maya asks to be erased: the saga removes her from every platform before it
        // deletes anything else.
        let erasure_id = submit(&mut dsr, RequestKind::Erasure, "maya-erasure").await;
        let erased = completed(&mut dsr, erasure_id).await;
        let steps: Vec<&str> = erased.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(steps[2], "remove_from_destinations", "{steps:?}");
        meta_left.remove(&meta_row(maya));
        for g in google_ids(maya) {
            google_left.remove(&g);
        }
        for t in tiktok_ids(maya) {
            tiktok_left.remove(&t);
        }
        assert_eq!(meta.members("23850001"), meta_left);
        assert_eq!(google.members(list), google_left);
        assert_eq!(tiktok.members("tt-aud-1"), tiktok_left);
        assert!(!shopify.tags(&gid(maya)).contains("meridian:identified"));
        assert!(
            shopify
                .tags(&gid(&SHOPPERS[2]))
                .contains("meridian:identified")
        );
        assert_eq!(meta_left.len(), 1, "Priya alone is left");

        // At rest: no address, phone number or platform hash of any shopper.
        let pool = sqlx::PgPool::connect(&env.database.as_ref().unwrap().url)
            .await
            .unwrap();
        let dump = dump_postgres(&pool).await.unwrap();
        pool.close().await;
        let mut needles: Vec<String> = Vec::new();
        for s in &SHOPPERS {
            needles.push(s.email.to_owned());
            needles.push(s.phone.to_owned());
            needles.extend(meta_row(s));
            needles.extend(tiktok_ids(s).into_iter().map(|(_, h)| h));
            needles.push(hex(Platform::Google, Field::Email, s.email));
        }
        let found = find_plaintext(&dump.text, needles.iter().map(String::as_str));
        assert!(found.is_empty(), "plaintext at rest: {found:?}");
        assert!(
            !server.log().contains(SHOPPERS[1].email),
            "no address in the log"
        );
        server.terminate().await;
    }
}
