//! `meridian policy …` and the policy set a server runs with.

use std::path::Path;

use anyhow::Context as _;
use meridian_policy::PolicyEngine;
use meridian_policy::cli::{self as policy_cli, ExplainArgs as Question};

use crate::cli::{ExplainArgs, PolicyCommand};

/// The policy set: a directory when one is configured, the built-in set otherwise.
pub(crate) fn load(dir: Option<&Path>) -> anyhow::Result<PolicyEngine> {
    match dir {
        Some(dir) => PolicyEngine::load_dir(dir)
            .with_context(|| format!("loading policies from {}", dir.display())),
        None => PolicyEngine::builtin().context("loading the built-in policies"),
    }
}

pub(crate) fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { dir } => {
            let report = policy_cli::check(dir.as_deref())?;
            println!("{report}");
            Ok(())
        }
        PolicyCommand::Explain(args) => explain(args),
    }
}

fn explain(args: Box<ExplainArgs>) -> anyhow::Result<()> {
    let args = *args;
    let mut question = Question::new(&args.action, &args.jurisdiction, &args.purpose)?;
    question.category = args.category;
    question.consent = policy_cli::parse_consent(&args.consent)?;
    question.gpc = args.gpc;
    question.age = args.age.as_deref().map(policy_cli::parse_age).transpose()?;
    question.separate_consent = args.separate_consent;
    question.destination = args.destination;
    question.destination_region = args.destination_region;
    question.transfer_mechanisms = args.transfer_mechanisms;
    let engine = load(args.dir.as_deref())?;
    let decision = policy_cli::explain(&engine, &question);
    if args.json {
        println!("{decision}");
    } else {
        let verdict = if decision["allowed"].as_bool() == Some(true) {
            "allowed"
        } else {
            "denied"
        };
        println!(
            "{verdict} by {}: {}\npolicy_version {}",
            decision["rule"].as_str().unwrap_or("?"),
            decision["reason"].as_str().unwrap_or(""),
            decision["policy_version"].as_str().unwrap_or("?"),
        );
    }
    Ok(())
}
