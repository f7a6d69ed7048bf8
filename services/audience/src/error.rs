//! The audience room's errors, mapped to gRPC statuses in one place (`grpc`).

use crate::segment::RuleError;

#[derive(Debug, thiserror::Error)]
pub enum AudienceError {
    /// A request field is not valid: the field (path) and why.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Someone else changed it first; read again and retry.
    #[error("{0} was changed concurrently")]
    Conflict(&'static str),
    /// Another room the audience reads from failed.
    /// Another operation holds what this needs; retry later.
    #[error("{0}")]
    Busy(&'static str),
    #[error("upstream: {0}")]
    Upstream(String),
    /// The room was started without what this needs (destinations: policies, vault,
    /// identity and consent seams).
    #[error("{0} not configured in this process")]
    NotConfigured(&'static str),
    /// A destination credential cannot be read (never says which value).
    #[error("destination credential: {0}")]
    Credential(&'static str),
    #[error("vault: {0}")]
    Vault(String),
    /// A destination connector failed as a whole.
    #[error("destination: {0}")]
    Connector(String),
    #[error("stored {0} does not read back")]
    Corrupt(&'static str),
    #[error(transparent)]
    Database(#[from] meridian_store::sqlx::Error),
}

impl AudienceError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        AudienceError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<RuleError> for AudienceError {
    fn from(error: RuleError) -> Self {
        AudienceError::Invalid {
            field: error.path,
            reason: error.reason,
        }
    }
}
