//! The Google Customer Match connector against the strict Google Ads fake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use meridian_destinations::connector::{ConnectorError, Direction, MemberRow};
use meridian_destinations::google::{GoogleAdsConfig, GoogleConsent, GoogleCustomerMatch};
use meridian_destinations::transport::{RetryPolicy, Transport};
use meridian_destinations::{Field, Platform, hash_field};
use meridian_test_support::platforms::Failure;
use meridian_test_support::platforms::google::GoogleAdsFake;

fn rows(n: usize) -> Vec<MemberRow> {
    (0..n)
        .map(|i| MemberRow {
            member: format!("m{i}"),
            values: vec![
                hash_field(
                    Platform::Google,
                    Field::Email,
                    &format!("Jane.Doe.{i}@GMail.com"),
                    None,
                ),
                hash_field(
                    Platform::Google,
                    Field::Phone,
                    &format!("+33 6 {:08}", 12_000_000 + i),
                    None,
                ),
            ],
        })
        .collect()
}

fn connector(base_url: String, token: &str) -> GoogleCustomerMatch {
    GoogleCustomerMatch::new(
        GoogleAdsConfig {
            base_url,
            api_version: "v21".into(),
            customer_id: "1234567890".into(),
            user_list_id: "555".into(),
            access_token: token.into(),
            developer_token: "dev-token".into(),
            login_customer_id: None,
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

const LIST: &str = "customers/1234567890/userLists/555";
const CONSENT: GoogleConsent = GoogleConsent {
    ad_user_data: true,
    ad_personalization: true,
};

#[tokio::test]
async fn adds_and_removes_hashed_identifiers_through_jobs() {
    let fake = GoogleAdsFake::new("ya29.token", "dev-token");
    let server = fake.start().await.unwrap();
    let google = connector(server.base_url(), "ya29.token");
    fake.fail_next(
        Failure::Throttle {
            retry_after_seconds: 0,
        },
        1,
    );
    let all = rows(12_000);
    let outcome = google.sync(Direction::Add, &all, CONSENT).await.unwrap();
    assert_eq!(outcome.accepted, 12_000);
    assert!(outcome.failed.is_empty());
    // create + 2 × addOperations (10,000 users each at most) + run, plus the throttled try.
    assert_eq!(outcome.requests, 4);
    let members = fake.members(LIST);
    assert_eq!(members.len(), 24_000);
    let gmail = hash_field(Platform::Google, Field::Email, "janedoe0@gmail.com", None).unwrap();
    assert!(members.contains(&format!("{{\"hashedEmail\":\"{}\"}}", gmail.as_str())));
    assert_eq!(
        fake.job_consents(),
        vec![("GRANTED".to_owned(), "GRANTED".to_owned())]
    );

    google
        .sync(Direction::Remove, &all[..10], CONSENT)
        .await
        .unwrap();
    let members = fake.members(LIST);
    assert_eq!(members.len(), 23_980);
    assert!(!members.contains(&format!("{{\"hashedEmail\":\"{}\"}}", gmail.as_str())));
}

#[tokio::test]
async fn bad_credentials_fail_the_sync() {
    let fake = GoogleAdsFake::new("ya29.token", "dev-token");
    let server = fake.start().await.unwrap();
    let google = connector(server.base_url(), "expired");
    let error = google
        .sync(Direction::Add, &rows(2), CONSENT)
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectorError::Unauthorized(ref m) if m.contains("UNAUTHENTICATED")));
}
