//! Operator commands that need no server: policies and consent signals.

use crate::harness::{Backend, Environment};

const TC_STRING: &str = "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA";

#[tokio::test]
async fn policy_check_validates_the_builtin_set_and_names_a_missing_file() {
    let env = Environment::new(Backend::Sqlite).await;
    let (ok, stdout, stderr) = env.run(&["policy", "check"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("policies OK"), "{stdout}");
    assert!(stdout.contains("policy_version sha256:"), "{stdout}");

    let empty = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = env
        .run(&["policy", "check", "--dir", empty.path().to_str().unwrap()])
        .await;
    assert!(!ok);
    assert!(stderr.contains(".toml:"), "file:line expected in {stderr}");
}

#[tokio::test]
async fn policy_explain_prints_the_deciding_rule_as_json() {
    let env = Environment::new(Backend::Sqlite).await;
    let explain = |consent: &'static str| {
        [
            "policy",
            "explain",
            "--json",
            "--action",
            "process",
            "--jurisdiction",
            "EU-DE",
            "--purpose",
            "marketing.advertising.third_party.targeted",
            "--consent",
            consent,
            "--age",
            "30",
        ]
    };
    let (ok, denied, stderr) = env.run(&explain("none")).await;
    assert!(ok, "{stderr}");
    let denied: serde_json::Value = serde_json::from_str(&denied).unwrap();
    assert_eq!(denied["allowed"], false, "{denied}");
    assert!(
        denied["rule"].as_str().unwrap().starts_with("gdpr"),
        "{denied}"
    );
    assert!(
        denied["policy_version"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    let (ok, allowed, _) = env.run(&explain("given")).await;
    assert!(ok);
    let allowed: serde_json::Value = serde_json::from_str(&allowed).unwrap();
    assert_eq!(allowed["allowed"], true, "{allowed}");

    let (ok, _, stderr) = env
        .run(&[
            "policy",
            "explain",
            "--action",
            "delete",
            "--jurisdiction",
            "DE",
            "--purpose",
            "x",
        ])
        .await;
    assert!(!ok);
    assert!(stderr.contains("delete"), "{stderr}");
}

#[tokio::test]
async fn consent_decode_prints_reference_field_names_and_refuses_garbage() {
    let env = Environment::new(Backend::Sqlite).await;
    let (ok, stdout, stderr) = env.run(&["consent", "decode", "--json", TC_STRING]).await;
    assert!(ok, "{stderr}");
    let decoded: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(decoded["cmpId"], 31, "{decoded}");
    assert_eq!(decoded["consentLanguage"], "EN", "{decoded}");
    assert_eq!(decoded["publisherCountryCode"], "DE", "{decoded}");

    let (ok, _, stderr) = env.run(&["consent", "decode", "--json", "CPXx!!"]).await;
    assert!(!ok);
    assert!(stderr.contains("base64url"), "{stderr}");
}

#[tokio::test]
async fn rotate_kek_rewraps_and_retires_only_when_asked() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let env = Environment::new(backend).await;
        let keys_dir = env.data_dir.path().join("keys");

        let (ok, stdout, stderr) = env.run(&["keys", "rotate-kek"]).await;
        assert!(ok, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["to_version"], 2, "{report}");
        assert_eq!(report["failed"], 0, "{report}");
        assert!(
            keys_dir.join("kek-v1.key").exists(),
            "v1 kept without --retire-previous"
        );
        assert!(keys_dir.join("kek-v2.key").exists());

        let (ok, stdout, stderr) = env.run(&["keys", "rotate-kek", "--retire-previous"]).await;
        assert!(ok, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["to_version"], 3, "{report}");
        assert!(!keys_dir.join("kek-v1.key").exists(), "v1 retired");
        assert!(!keys_dir.join("kek-v2.key").exists(), "v2 retired");
        assert!(keys_dir.join("kek-v3.key").exists());

        // The current version is never retired.
        let (ok, _, stderr) = env.run(&["keys", "retire-kek", "--version", "3"]).await;
        assert!(!ok, "retiring the current KEK must fail");
        assert!(!stderr.is_empty());
    }
}

#[tokio::test]
async fn outbox_dead_letters_list_and_replay_refuses_unknown_ids() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let env = Environment::new(backend).await;
        let (ok, stdout, stderr) = env.run(&["outbox", "dead-letters", "--all"]).await;
        assert!(ok, "{stderr}");
        assert_eq!(stdout, "", "a fresh store has no dead letters");
        assert!(stderr.contains("0 dead letters"), "{stderr}");

        let unknown = uuid::Uuid::new_v4().to_string();
        let (ok, _, stderr) = env.run(&["outbox", "replay", &unknown]).await;
        assert!(!ok, "replaying an unknown dead letter must fail");
        assert!(!stderr.is_empty());

        let (ok, _, stderr) = env.run(&["outbox", "replay", "not-a-uuid"]).await;
        assert!(!ok);
        assert!(stderr.contains("not-a-uuid"), "{stderr}");
    }
}

#[tokio::test]
async fn serve_runs_on_postgres_with_jetstream_and_on_the_in_process_bus() {
    let env = Environment::new(Backend::Postgres).await;
    let jetstream = crate::harness::own_jetstream();
    let vars: Vec<(&str, &str)> = jetstream.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = env.serve_with_env(&vars).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert!(
        server.log().contains("\"bus\":\"jetstream\""),
        "{}",
        server.log()
    );
    assert!(server.terminate().await.success());

    let embedded = Environment::new(Backend::Sqlite).await;
    let server = embedded.serve(&[]).await;
    assert!(
        server.log().contains("\"bus\":\"in-process\""),
        "{}",
        server.log()
    );
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn serve_refuses_an_unreachable_nats() {
    let env = Environment::new(Backend::Sqlite).await;
    // A port nothing listens on: bind one, then drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = env
        .command()
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .env("NATS_URL", format!("nats://127.0.0.1:{port}"))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("event bus"), "{stderr}");
}
