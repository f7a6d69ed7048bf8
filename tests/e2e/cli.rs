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
