//! Signed webhooks (a receiver that checks the signature) and atomic file drops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use meridian_destinations::connector::{ConnectorError, Direction, MemberRow};
use meridian_destinations::transport::{RetryPolicy, Transport};
use meridian_destinations::webhook::{FileDrop, FileFormat, Webhook, WebhookConfig};
use meridian_destinations::{Field, Platform, hash_field};
use meridian_test_support::platforms::webhook::WebhookReceiver;

fn rows(n: usize) -> Vec<MemberRow> {
    (0..n)
        .map(|i| MemberRow {
            member: format!("m{i}"),
            values: vec![
                hash_field(
                    Platform::Meta,
                    Field::Email,
                    &format!("u{i}@example.com"),
                    None,
                ),
                None,
            ],
        })
        .collect()
}

#[tokio::test]
async fn signed_batches_are_accepted_and_forged_ones_refused() {
    let secret = b"0123456789abcdef-secret";
    let receiver = WebhookReceiver::new(secret);
    let server = receiver.start().await.unwrap();
    let transport = Arc::new(Transport::new(RetryPolicy::default(), 0));
    let hook = |secret: &[u8]| {
        Webhook::new(
            WebhookConfig {
                url: format!("{}/hook", server.base_url()),
                secret: secret.to_vec(),
                schema: vec![Field::Email, Field::Phone],
            },
            transport.clone(),
        )
        .unwrap()
    };
    let all = rows(2_500);
    let outcome = hook(secret)
        .sync(Direction::Add, &all, 9, 1_764_000_000)
        .await
        .unwrap();
    assert_eq!((outcome.accepted, outcome.requests), (2_500, 3));
    assert_eq!(receiver.members().len(), 2_500);
    // Replayed batches (same idempotency keys) change nothing.
    hook(secret)
        .sync(Direction::Remove, &all[..10], 9, 1_764_000_000)
        .await
        .unwrap();
    assert_eq!(receiver.members().len(), 2_500);
    hook(secret)
        .sync(Direction::Remove, &all[..10], 10, 1_764_000_001)
        .await
        .unwrap();
    assert_eq!(receiver.members().len(), 2_490);
    let forged = hook(b"another-secret-of-16")
        .sync(Direction::Add, &all[..1], 11, 1)
        .await;
    assert!(matches!(forged, Err(ConnectorError::Unauthorized(_))));
}

#[test]
fn files_are_written_whole_as_csv_and_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let all = rows(1_500);
    for format in [FileFormat::Csv, FileFormat::Ndjson] {
        let drop = FileDrop {
            directory: dir.path().to_owned(),
            prefix: "loyal".into(),
            format,
            schema: vec![Field::Email, Field::Phone],
        };
        let paths = drop.write(Direction::Add, &all, 3).unwrap();
        assert_eq!(paths.len(), 2);
        let first = std::fs::read_to_string(&paths[0]).unwrap();
        let email = hash_field(Platform::Meta, Field::Email, "u0@example.com", None).unwrap();
        match format {
            FileFormat::Csv => {
                let mut lines = first.lines();
                assert_eq!(lines.next(), Some("member,email_sha256,phone_sha256"));
                assert_eq!(lines.next().unwrap(), format!("m0,{},", email.as_str()));
                assert_eq!(first.lines().count(), 1_001);
            }
            FileFormat::Ndjson => {
                let line: serde_json::Value =
                    serde_json::from_str(first.lines().next().unwrap()).unwrap();
                assert_eq!(line["email_sha256"], email.as_str());
                assert!(line["phone_sha256"].is_null());
            }
        }
    }
    let leftovers = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(leftovers, 0);
}
