//! A broken policy file stops loading with the right file and line.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use meridian_policy::{PolicyEngine, PolicyLoadError};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

/// Copies policies/ into a temp dir so one file can be broken.
fn copy_policies() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&policies_dir(), tmp.path());
    tmp
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Replaces the first occurrence of `from` in `file` and returns the 1-based
/// line where the replacement starts.
fn break_file(dir: &Path, file: &str, from: &str, to: &str) -> usize {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text
        .find(from)
        .unwrap_or_else(|| panic!("{from:?} not in {file}"));
    let line = text[..at].matches('\n').count() + 1;
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    line
}

fn load_err(dir: &Path) -> PolicyLoadError {
    match PolicyEngine::load_dir(dir) {
        Ok(_) => panic!("broken policies loaded"),
        Err(e) => e,
    }
}

#[test]
fn policies_dir_loads_and_matches_the_builtin_set() {
    let from_dir = PolicyEngine::load_dir(policies_dir()).unwrap();
    let builtin = PolicyEngine::builtin().unwrap();
    // same files, same bytes: a file added to policies/ but not embedded fails here
    assert_eq!(from_dir.policy_version(), builtin.policy_version());
    assert_eq!(from_dir.file_count(), builtin.file_count());
    assert!(builtin.policy_version().starts_with("sha256:"));
    assert_eq!(builtin.policy_version().len(), "sha256:".len() + 64);
}

#[test]
fn any_change_changes_the_policy_version() {
    let tmp = copy_policies();
    let before = PolicyEngine::load_dir(tmp.path())
        .unwrap()
        .policy_version()
        .to_owned();
    break_file(
        tmp.path(),
        "regimes/lgpd.toml",
        "value = \"15 days\"",
        "value = \"16 days\"",
    );
    let after = PolicyEngine::load_dir(tmp.path()).unwrap();
    assert_ne!(before, after.policy_version());
    assert_eq!(
        after.regime("LGPD").unwrap().dsr.deadline.value,
        meridian_policy::Period::Days(16)
    );
}

#[test]
fn bad_cedar_syntax_names_file_and_line() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "rules/ccpa.cedar",
        "when { context.gpc && resource",
        "when { context.gpc && && resource",
    );
    let e = load_err(tmp.path());
    assert!(matches!(e, PolicyLoadError::Cedar { .. }), "{e}");
    assert_eq!(e.file(), "rules/ccpa.cedar");
    assert_eq!(e.line(), line, "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("rules/ccpa.cedar:{line}: ")),
        "{e}"
    );
}

#[test]
fn schema_violation_names_file_and_line() {
    let tmp = copy_policies();
    // an attribute the schema does not declare
    let line = break_file(
        tmp.path(),
        "rules/pipl.cedar",
        "!context.separate_consent\n};",
        "!context.seperate_consent\n};",
    );
    let e = load_err(tmp.path());
    assert!(matches!(e, PolicyLoadError::Validation { .. }), "{e}");
    assert_eq!(e.file(), "rules/pipl.cedar");
    assert_eq!(e.line(), line, "{e}");
}

#[test]
fn type_error_against_the_schema_is_rejected() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "rules/lgpd.cedar",
        "context.age < principal.guardian_age",
        "context.age < \"twelve\"",
    );
    let e = load_err(tmp.path());
    assert!(matches!(e, PolicyLoadError::Validation { .. }), "{e}");
    assert_eq!((e.file(), e.line()), ("rules/lgpd.cedar", line), "{e}");
}

#[test]
fn rule_without_id_is_rejected_at_its_line() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "rules/gdpr.cedar",
        "@id(\"gdpr.art21.objection\")\n",
        "",
    );
    let e = load_err(tmp.path());
    assert_eq!((e.file(), e.line()), ("rules/gdpr.cedar", line), "{e}");
    assert!(e.to_string().contains("@id"), "{e}");
}

#[test]
fn rule_naming_an_unknown_purpose_is_rejected() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "rules/uk_gdpr.cedar",
        "resource in Meridian::Purpose::\"essential\");",
        "resource in Meridian::Purpose::\"esential\");",
    );
    let e = load_err(tmp.path());
    assert_eq!((e.file(), e.line()), ("rules/uk_gdpr.cedar", line), "{e}");
    assert!(e.to_string().contains("esential"), "{e}");
}

#[test]
fn duplicate_rule_ids_are_rejected() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "rules/lgpd.cedar",
        "@id(\"lgpd.art18.opposition\")",
        "@id(\"lgpd.art8.consent_required\")",
    );
    let e = load_err(tmp.path());
    assert_eq!((e.file(), e.line()), ("rules/lgpd.cedar", line), "{e}");
    assert!(e.to_string().contains("duplicate rule id"), "{e}");
}

#[test]
fn bad_schema_names_file_and_line() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "schema.cedarschema",
        "\"gpc\": Bool,",
        "\"gpc\": Bool,,",
    );
    let e = load_err(tmp.path());
    assert!(matches!(e, PolicyLoadError::Schema { .. }), "{e}");
    assert_eq!((e.file(), e.line()), ("schema.cedarschema", line), "{e}");
}

#[test]
fn bad_toml_syntax_names_file_and_line() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "regimes/gdpr.toml",
        "deadline = { value = \"1 month\"",
        "deadline = { value = \"1 month",
    );
    let e = load_err(tmp.path());
    assert!(matches!(e, PolicyLoadError::Toml { .. }), "{e}");
    assert_eq!((e.file(), e.line()), ("regimes/gdpr.toml", line), "{e}");
}

#[test]
fn wrong_parameter_shape_names_file_and_line() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "regimes/ccpa.toml",
        "opt_in_age = { value = 16,",
        "opt_in_age = { value = \"sixteen\",",
    );
    let e = load_err(tmp.path());
    assert!(matches!(e, PolicyLoadError::Toml { .. }), "{e}");
    assert_eq!((e.file(), e.line()), ("regimes/ccpa.toml", line), "{e}");
}

#[test]
fn bad_period_names_file_and_line() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "regimes/pipl.toml",
        "value = \"15 days\"",
        "value = \"15 fortnights\"",
    );
    let e = load_err(tmp.path());
    assert!(matches!(e, PolicyLoadError::Invalid { .. }), "{e}");
    assert_eq!((e.file(), e.line()), ("regimes/pipl.toml", line), "{e}");
    assert!(e.to_string().contains("fortnights"), "{e}");
}

#[test]
fn unknown_purpose_in_parameters_names_file_and_line() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "regimes/uk_gdpr.toml",
        "\"train_ai_system\"",
        "\"train_ai_systems\"",
    );
    let e = load_err(tmp.path());
    assert_eq!((e.file(), e.line()), ("regimes/uk_gdpr.toml", line), "{e}");
    assert!(
        e.to_string()
            .contains("unknown purpose \"train_ai_systems\""),
        "{e}"
    );
}

#[test]
fn missing_article_is_rejected() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "regimes/lgpd.toml",
        "article = \"Art. 19, II: complete declaration within 15 days of the request\"",
        "article = \"\"",
    );
    let e = load_err(tmp.path());
    assert_eq!((e.file(), e.line()), ("regimes/lgpd.toml", line), "{e}");
}

#[test]
fn unknown_category_in_field_classification_is_rejected() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "fields.toml",
        "email = \"user.contact.email\"",
        "email = \"user.contact.e_mail\"",
    );
    let e = load_err(tmp.path());
    assert_eq!((e.file(), e.line()), ("fields.toml", line), "{e}");
}

#[test]
fn destination_with_unknown_mechanism_is_rejected() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "destinations.toml",
        "mechanisms = [\"scc\"]",
        "mechanisms = [\"pinky_promise\"]",
    );
    let e = load_err(tmp.path());
    assert_eq!((e.file(), e.line()), ("destinations.toml", line), "{e}");
}

#[test]
fn jurisdiction_with_unknown_regime_is_rejected() {
    let tmp = copy_policies();
    let line = break_file(
        tmp.path(),
        "jurisdictions.toml",
        "\"BR\" = { regime = \"LGPD\"",
        "\"BR\" = { regime = \"LGDP\"",
    );
    let e = load_err(tmp.path());
    assert_eq!((e.file(), e.line()), ("jurisdictions.toml", line), "{e}");
}

#[test]
fn missing_file_is_reported() {
    let tmp = copy_policies();
    std::fs::remove_file(tmp.path().join("taxonomy/tcf.toml")).unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, PolicyLoadError::Missing { .. }), "{e}");
    assert_eq!(e.file(), "taxonomy/tcf.toml");
}

#[test]
fn an_operator_can_change_a_rule_by_editing_data() {
    // README: lowering Germany's digital consent age to 14 changes the decision.
    use meridian_policy::{Action, ConsentState, Question};
    let tmp = copy_policies();
    break_file(
        tmp.path(),
        "jurisdictions.toml",
        "guardian_age = { value = 16, article = \"GDPR Art. 8(1); GDPR Art. 8(1) default (BDSG",
        "guardian_age = { value = 14, article = \"GDPR Art. 8(1); GDPR Art. 8(1) default (BDSG",
    );
    let q = Question::new(
        Action::Process,
        "EU-DE",
        "marketing.advertising.third_party.targeted",
    )
    .with_consent(ConsentState::Given)
    .with_age(15);
    assert!(!PolicyEngine::builtin().unwrap().decide(&q).allowed);
    assert!(
        PolicyEngine::load_dir(tmp.path())
            .unwrap()
            .decide(&q)
            .allowed
    );
}
