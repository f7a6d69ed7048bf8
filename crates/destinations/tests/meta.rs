//! The Meta connector against the strict Meta fake: batching, sessions, exact removal,
//! 429 + Retry-After, partial failures, bad credentials.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_destinations::connector::{ConnectorError, Direction, MemberRow};
use meridian_destinations::meta::{MetaConfig, MetaCustomAudience};
use meridian_destinations::transport::{RetryPolicy, Transport};
use meridian_destinations::{Field, Platform, hash_field};
use meridian_test_support::platforms::Failure;
use meridian_test_support::platforms::meta::MetaFake;

const TOKEN: &str = "EAAB-test-token";

fn rows(n: usize) -> Arc<[MemberRow]> {
    (0..n)
        .map(|i| MemberRow {
            member: format!("m{i}"),
            values: vec![
                hash_field(
                    Platform::Meta,
                    Field::Email,
                    &format!(" Shopper.{i}@Example.com "),
                    None,
                ),
                if i % 3 == 0 {
                    None
                } else {
                    hash_field(
                        Platform::Meta,
                        Field::Phone,
                        &format!("+49 151 {:08}", i),
                        None,
                    )
                },
            ],
        })
        .collect()
}

fn connector(base_url: String, token: &str, policy: RetryPolicy) -> MetaCustomAudience {
    MetaCustomAudience::new(
        MetaConfig {
            base_url,
            api_version: "v21.0".into(),
            audience_id: "23850000000000001".into(),
            access_token: token.into(),
            schema: vec![Field::Email, Field::Phone],
            batch_size: 10_000,
            concurrency: 3,
        },
        Arc::new(Transport::new(policy, 0)),
    )
    .unwrap()
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_in_sessions_of_at_most_ten_thousand_and_removes_exactly() {
    let fake = MetaFake::new(TOKEN, true);
    let server = fake.start().await.unwrap();
    let meta = connector(server.base_url(), TOKEN, quick());
    let all = rows(25_000);
    let outcome = meta.sync(Direction::Add, all.clone(), 7).await.unwrap();
    assert_eq!(outcome.accepted, 25_000);
    assert!(outcome.failed.is_empty());

    let batches = fake.batches();
    assert_eq!(batches.len(), 3);
    assert!(
        batches
            .iter()
            .all(|b| b.rows <= 10_000 && b.session_id == Some(7) && !b.removal)
    );
    assert_eq!(batches.iter().filter(|b| b.last_batch).count(), 1);
    let last = batches.last().unwrap();
    assert!(last.last_batch, "the last batch goes last");
    assert_eq!(last.batch_seq, Some(3));
    assert_eq!(last.schema, vec!["EMAIL".to_owned(), "PHONE".to_owned()]);
    let members = fake.members("23850000000000001");
    assert_eq!(members.len(), 25_000);
    // Exactly the SDK's hash of the normalized email, and "" where the phone is missing.
    let expected = vec![
        hash_field(Platform::Meta, Field::Email, "shopper.0@example.com", None)
            .unwrap()
            .as_str()
            .to_owned(),
        String::new(),
    ];
    assert!(members.contains(&expected));

    // The same sync again (same session): acknowledged, not counted twice.
    meta.sync(Direction::Add, all.clone(), 7).await.unwrap();
    assert_eq!(fake.received("23850000000000001"), 25_000);

    let leaving: Arc<[MemberRow]> = all[100..150].to_vec().into();
    let removed = meta
        .sync(Direction::Remove, leaving.clone(), 8)
        .await
        .unwrap();
    assert_eq!(removed.accepted, 50);
    let members = fake.members("23850000000000001");
    assert_eq!(members.len(), 24_950);
    for row in leaving.iter() {
        let key: Vec<String> = row
            .values
            .iter()
            .map(|v| v.map(|h| h.as_str().to_owned()).unwrap_or_default())
            .collect();
        assert!(!members.contains(&key));
    }
}

#[tokio::test]
async fn honours_retry_after_on_429() {
    let fake = MetaFake::new(TOKEN, true);
    let server = fake.start().await.unwrap();
    fake.fail_next(
        Failure::Throttle {
            retry_after_seconds: 1,
        },
        1,
    );
    let meta = connector(server.base_url(), TOKEN, quick());
    let started = Instant::now();
    let outcome = meta.sync(Direction::Add, rows(10), 1).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );
    assert_eq!(outcome.accepted, 10);
    assert_eq!(outcome.requests, 2);
    assert_eq!(fake.members("23850000000000001").len(), 10);
}

#[tokio::test]
async fn records_per_member_failures_when_retries_run_out() {
    let fake = MetaFake::new(TOKEN, true);
    let server = fake.start().await.unwrap();
    fake.fail_next(Failure::Unavailable, 3);
    let meta = MetaCustomAudience::new(
        MetaConfig {
            base_url: server.base_url(),
            api_version: "v21.0".into(),
            audience_id: "1".into(),
            access_token: TOKEN.into(),
            schema: vec![Field::Email, Field::Phone],
            batch_size: 4,
            concurrency: 1,
        },
        Arc::new(Transport::new(quick(), 0)),
    )
    .unwrap();
    let outcome = meta.sync(Direction::Add, rows(8), 2).await.unwrap();
    // The first batch (m0..m3) exhausted its 3 attempts; the last one went through.
    assert_eq!(outcome.accepted, 4);
    assert_eq!(outcome.failed.len(), 4);
    assert!(outcome.failed.contains_key("m0") && outcome.failed.contains_key("m3"));
    assert!(outcome.failed["m0"].contains("503"));
    assert_eq!(fake.members("1").len(), 4);
}

#[tokio::test]
async fn a_bad_token_fails_the_sync() {
    let fake = MetaFake::new(TOKEN, true);
    let server = fake.start().await.unwrap();
    let meta = connector(server.base_url(), "wrong", quick());
    let error = meta.sync(Direction::Add, rows(3), 3).await.unwrap_err();
    assert!(matches!(error, ConnectorError::Unauthorized(ref m) if m.starts_with("meta:190")));
    assert!(fake.members("23850000000000001").is_empty());
}
