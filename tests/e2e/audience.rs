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
