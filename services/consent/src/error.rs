//! The consent room's one error type; `grpc.rs` maps it to a `tonic::Status` in one place.

use meridian_vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// Input at fault, by field path; never carries the offending personal value.
    #[error("invalid argument: {}", describe(.0))]
    Invalid(Vec<(String, String)>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// The subject's keys were destroyed: its ledger entries can no longer be linked to it.
    #[error("the subject was erased; its consent ledger entries are no longer linked to it")]
    SubjectErased,
    #[error("ledger is corrupt: {0}")]
    Corrupt(String),
    #[error("vault")]
    Vault(#[source] VaultError),
    #[error("policy: {0}")]
    Policy(String),
    #[error("storage")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn describe(v: &[(String, String)]) -> String {
    v.iter()
        .map(|(f, d)| format!("{f}: {d}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ConsentError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        ConsentError::Invalid(vec![(field.into(), description.into())])
    }
}

impl From<VaultError> for ConsentError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::SubjectForgotten => ConsentError::SubjectErased,
            VaultError::InvalidIdentifier { kind, reason } => {
                ConsentError::invalid("subject.identifiers", format!("invalid {kind}: {reason}"))
            }
            other => ConsentError::Vault(other),
        }
    }
}
