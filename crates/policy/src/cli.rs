//! Library side of `meridian policy check` and `meridian policy explain`.
//! The binary parses flags; these functions do the work.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::engine::{Action, ConsentState, ParseWordError, PolicyEngine, Question};
use crate::error::PolicyLoadError;

/// What `meridian policy check` prints on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// the directory checked, or "builtin"
    pub source: String,
    /// hash of the policy set
    pub policy_version: String,
    /// policy files read
    pub files: usize,
    /// Cedar rules
    pub rules: usize,
    /// regimes, by id
    pub regimes: Vec<String>,
    /// jurisdictions known
    pub jurisdictions: usize,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "policies OK ({}): {} files, {} rules, regimes {}, {} jurisdictions, policy_version {}",
            self.source,
            self.files,
            self.rules,
            self.regimes.join(", "),
            self.jurisdictions,
            self.policy_version
        )
    }
}

/// `meridian policy check [--dir DIR]`: loads and validates; `None` checks the
/// built-in set. On error the binary prints the error (`file:line: reason`)
/// and exits non-zero.
pub fn check(dir: Option<&Path>) -> Result<CheckReport, PolicyLoadError> {
    let (engine, source) = match dir {
        Some(d) => (PolicyEngine::load_dir(d)?, d.display().to_string()),
        None => (PolicyEngine::builtin()?, "builtin".to_owned()),
    };
    Ok(CheckReport {
        source,
        policy_version: engine.policy_version().to_owned(),
        files: engine.file_count(),
        rules: engine.rule_count(),
        regimes: engine.regimes().keys().cloned().collect(),
        jurisdictions: engine.jurisdictions().len(),
    })
}

/// A flag value that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// --action / --consent
    #[error(transparent)]
    Word(#[from] ParseWordError),
    /// --age
    #[error("invalid --age {0:?}: expected a whole number of years, 0-150")]
    Age(String),
    /// a required flag is empty
    #[error("--{0} must not be empty")]
    Empty(&'static str),
}

/// The flags of `meridian policy explain`. Plain fields: the binary fills them
/// from its own flag parser, using the `parse_*` helpers for strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExplainArgs {
    /// --action collect|process|export
    pub action: Option<Action>,
    /// --jurisdiction EU-DE|GB|US-CA|CN|BR|...
    pub jurisdiction: String,
    /// --purpose KEY (fideslang)
    pub purpose: String,
    /// --category KEY (fideslang)
    pub category: Option<String>,
    /// --consent given|guardian|refused|none
    pub consent: ConsentState,
    /// --gpc
    pub gpc: bool,
    /// --age N
    pub age: Option<u8>,
    /// --separate-consent (PIPL)
    pub separate_consent: bool,
    /// --destination meta|google|tiktok|shopify
    pub destination: Option<String>,
    /// --destination-region US|...
    pub destination_region: Option<String>,
    /// --transfer-mechanism dpf|scc|... (repeatable)
    pub transfer_mechanisms: Vec<String>,
}

impl ExplainArgs {
    /// Arguments with the three required flags parsed.
    pub fn new(action: &str, jurisdiction: &str, purpose: &str) -> Result<Self, ArgError> {
        if jurisdiction.trim().is_empty() {
            return Err(ArgError::Empty("jurisdiction"));
        }
        if purpose.trim().is_empty() {
            return Err(ArgError::Empty("purpose"));
        }
        Ok(Self {
            action: Some(parse_action(action)?),
            jurisdiction: jurisdiction.trim().to_owned(),
            purpose: purpose.trim().to_owned(),
            ..Self::default()
        })
    }
}

/// Parses `--action`.
pub fn parse_action(s: &str) -> Result<Action, ArgError> {
    Ok(s.trim().parse()?)
}

/// Parses `--consent`.
pub fn parse_consent(s: &str) -> Result<ConsentState, ArgError> {
    Ok(s.trim().parse()?)
}

/// Parses `--age`.
pub fn parse_age(s: &str) -> Result<u8, ArgError> {
    s.trim()
        .parse::<u8>()
        .ok()
        .filter(|a| *a <= 150)
        .ok_or_else(|| ArgError::Age(s.to_owned()))
}

/// `meridian policy explain --json`: the decision as JSON, with keys
/// `allowed`, `rule`, `reason`, `policy_version`, plus `rules`,
/// `obligations`, `regime`, `retention` (when a category is given) and the
/// question as understood.
pub fn explain(engine: &PolicyEngine, args: &ExplainArgs) -> serde_json::Value {
    let mechanisms: Vec<&str> = args
        .transfer_mechanisms
        .iter()
        .map(String::as_str)
        .collect();
    let Some(action) = args.action else {
        return serde_json::json!({
            "allowed": false,
            "rule": crate::INVALID_QUESTION,
            "reason": "--action is required (collect, process, export)",
            "policy_version": engine.policy_version(),
        });
    };
    let q = Question {
        action,
        jurisdiction: &args.jurisdiction,
        purpose: &args.purpose,
        category: args.category.as_deref(),
        consent: args.consent,
        gpc: args.gpc,
        age: args.age,
        separate_consent: args.separate_consent,
        destination: args.destination.as_deref(),
        destination_region: args.destination_region.as_deref(),
        transfer_mechanisms: &mechanisms,
    };
    let d = engine.decide(&q);
    let regime = engine.regime_for(&args.jurisdiction).map(|r| r.id.clone());
    let retention = args
        .category
        .as_deref()
        .and_then(|c| engine.retention(&args.jurisdiction, c).ok())
        .map(|r| serde_json::json!({ "period": r.value, "article": r.article }));
    serde_json::json!({
        "allowed": d.allowed,
        "rule": d.rule_id,
        "reason": d.reason,
        "policy_version": d.policy_version,
        "rules": d.rules,
        "obligations": d.obligations,
        "regime": regime,
        "retention": retention,
        "question": {
            "action": action,
            "jurisdiction": args.jurisdiction,
            "purpose": args.purpose,
            "category": args.category,
            "consent": args.consent,
            "gpc": args.gpc,
            "age": args.age,
            "separate_consent": args.separate_consent,
            "destination": args.destination,
            "destination_region": args.destination_region,
            "transfer_mechanisms": args.transfer_mechanisms,
        },
    })
}
