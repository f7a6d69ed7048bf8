//! The room's typed errors, mapped to `tonic::Status` in one place (`grpc.rs`) and to HTTP
//! answers in `segment.rs`. Messages never carry personal data.

/// What can go wrong for a whole request (per-event problems are results, not errors).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The request as a whole is at fault (`events` empty or too many, batch too large).
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("consent lookup failed: {0}")]
    Consent(String),
    #[error("vault: {0}")]
    Vault(#[from] meridian_vault::VaultError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("outbox: {0}")]
    Outbox(#[from] meridian_bus::BusError),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// A part of a large batch stopped before it finished (its task panicked or the
    /// runtime shut down); whether it committed is unknown, so nothing is acknowledged.
    #[error("a part of the batch did not finish: {0}")]
    PartLost(String),
}

impl IngestError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        IngestError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
