//! The room's typed errors, mapped to `tonic::Status` in one place (`grpc.rs`).

/// What can go wrong in the identity room. Messages never carry identifier values.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid {kind}: {reason}")]
    InvalidIdentifier {
        kind: &'static str,
        reason: &'static str,
    },
    #[error("invalid identity rules: {0}")]
    InvalidRules(String),
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        field: &'static str,
        reason: &'static str,
    },
    #[error("profile not found")]
    ProfileNotFound,
    #[error("the stored identity graph is inconsistent: {0}")]
    Corrupt(String),
    #[error("cannot set up: {0}")]
    Setup(String),
    #[error("vault: {0}")]
    Vault(#[from] meridian_vault::VaultError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("bus: {0}")]
    Bus(#[from] meridian_bus::BusError),
    /// Another writer moved the workspace's graph since it was cached (retried internally).
    #[error("the cached identity graph is stale")]
    StaleGraph,
    /// A feature that needs a collaborator the room was built without.
    #[error("{0} is not configured")]
    NotConfigured(&'static str),
    /// A collaborator (the profile event source) failed; the text names no personal data.
    #[error("{0}")]
    Collaborator(String),
}
