//! The policy engine: loads `policies/` and decides collect, process, export, retention.
//!
//! Every room asks one question before it touches personal data: may I? The
//! answer comes from the Cedar rules and legal parameters in `policies/`
//! (deny by default, `forbid` overrides `permit`), never from `if`s in Rust.
//!
//! - [`PolicyEngine::load_dir`] / [`PolicyEngine::builtin`] load and validate a
//!   policy set; errors name `file:line: reason`.
//! - [`PolicyEngine::decide`] answers a [`Question`] with a [`Decision`]
//!   (allowed, rule, reason, obligations, policy version), memoized per tuple.
//! - [`PolicyEngine::retention`], [`PolicyEngine::dsr_deadline`] and
//!   [`PolicyEngine::regime`] expose the legal parameters (deadlines counted in
//!   the jurisdiction's time zone); [`Taxonomy`] maps TCF v2.2 and GPP to fideslang purposes;
//!   [`FieldClassification`] maps fields to data categories.
//! - [`cli`] and [`bench`] back `meridian policy check|explain` and
//!   `meridian bench policy`.

pub mod bench;
pub mod cli;
mod deadline;
mod engine;
mod error;
mod fasthash;
mod jurisdiction;
mod load;
mod params;
mod source;
mod taxonomy;

pub use deadline::DsrDeadline;
pub use engine::{
    Action, ConsentState, DEFAULT_DENY, Decision, DecisionKey, EVALUATION_ERROR, INVALID_QUESTION,
    Obligation, ParseWordError, PolicyEngine, Question, QuestionError,
};
pub use error::PolicyLoadError;
pub use jurisdiction::{Jurisdiction, JurisdictionError};
pub use load::ObligationKind;
pub use params::{
    ChildParams, Cited, ConsentParams, DestinationInfo, DsrParams, Framework, JurisdictionInfo,
    Period, PeriodError, Regime, TransferParams,
};
pub use taxonomy::{FieldClassification, FieldKind, GppMapping, GppSection, Taxonomy, TcfMapping};
