//! The TikTok connector against the strict TikTok fake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use meridian_destinations::connector::{ConnectorError, Direction, MemberRow};
use meridian_destinations::tiktok::{TikTokAudience, TikTokConfig};
use meridian_destinations::transport::{RetryPolicy, Transport};
use meridian_destinations::{Field, Platform, hash_field};
use meridian_test_support::platforms::Failure;
use meridian_test_support::platforms::tiktok::TikTokFake;

fn connector(base_url: String, token: &str) -> TikTokAudience {
    TikTokAudience::new(
        TikTokConfig {
            base_url,
            advertiser_id: "7000000000001".into(),
            audience_id: "aud-1".into(),
            access_token: token.into(),
            schema: vec![Field::Email, Field::Phone],
        },
        Arc::new(Transport::new(
            RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(20),
                max_retry_after: Duration::from_secs(2),
            },
            0,
        )),
    )
    .unwrap()
}

fn rows(n: usize) -> Vec<MemberRow> {
    (0..n)
        .map(|i| MemberRow {
            member: format!("m{i}"),
            values: vec![
                hash_field(
                    Platform::TikTok,
                    Field::Email,
                    &format!("Fan{i}+promo@Example.com"),
                    None,
                ),
                if i % 2 == 0 {
                    hash_field(
                        Platform::TikTok,
                        Field::Phone,
                        &format!("07911 {:06}", i),
                        Some("GB"),
                    )
                } else {
                    None
                },
            ],
        })
        .collect()
}

#[tokio::test]
async fn maps_and_unmaps_hashed_ids_in_batches() {
    let fake = TikTokFake::new("tt-token", "7000000000001");
    let server = fake.start().await.unwrap();
    let tiktok = connector(server.base_url(), "tt-token");
    fake.fail_next(Failure::Unavailable, 1);
    let all = rows(10_500);
    let outcome = tiktok.sync(Direction::Add, &all).await.unwrap();
    assert_eq!(outcome.accepted, 10_500);
    assert_eq!(outcome.requests, 3, "two batches, one retried");
    let members = fake.members("aud-1");
    let email = hash_field(Platform::TikTok, Field::Email, "fan0@example.com", None).unwrap();
    assert!(members.contains(&("EMAIL_SHA256".to_owned(), email.as_str().to_owned())));
    assert_eq!(
        members.iter().filter(|(k, _)| k == "PHONE_SHA256").count(),
        5_250
    );

    tiktok.sync(Direction::Remove, &all[..1]).await.unwrap();
    assert!(
        !fake
            .members("aud-1")
            .contains(&("EMAIL_SHA256".to_owned(), email.as_str().to_owned()))
    );
}

#[tokio::test]
async fn a_revoked_token_fails_the_sync() {
    let fake = TikTokFake::new("tt-token", "7000000000001");
    let server = fake.start().await.unwrap();
    let error = connector(server.base_url(), "revoked")
        .sync(Direction::Add, &rows(1))
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectorError::Unauthorized(ref m) if m.starts_with("tiktok:40105")));
}
