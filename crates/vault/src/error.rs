//! Errors of the vault. Messages never carry key material, plaintext or identifiers.

use crate::kek::KekVersion;

/// Everything that can go wrong in the vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The workspace is not registered (no row in `workspaces`).
    #[error("unknown workspace")]
    UnknownWorkspace,
    /// The subject was forgotten: its data key is destroyed and no new one is issued.
    #[error("subject was forgotten; its data key is destroyed")]
    SubjectForgotten,
    /// Nothing was ever sealed for this subject, so it has no data key.
    #[error("subject has no data key")]
    NoSubjectKey,
    /// The sealed value was made under another subject's data key.
    #[error("sealed value belongs to another subject key")]
    KeyMismatch,
    /// The sealed value is too short or otherwise not in the vault's format.
    #[error("sealed value is malformed")]
    MalformedCiphertext,
    /// The sealed value names a format version this build cannot read.
    #[error("unsupported sealed value format version {0}")]
    UnsupportedFormat(u8),
    /// Authentication failed: tampered bytes, or a different workspace, record or field.
    #[error("sealed value failed authentication (tampered, or moved to another record or field)")]
    OpenFailed,
    /// An identifier could not be normalized; the value itself is never included.
    #[error("invalid {kind} identifier: {reason}")]
    InvalidIdentifier {
        /// Identifier kind (`email`, `phone`, ...).
        kind: &'static str,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A ledger signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A KEK version cannot be retired while keys are still wrapped under it, or it is current.
    #[error("KEK version {version} is still in use ({keys} wrapped keys, current: {current})")]
    KekInUse {
        /// The version asked to retire.
        version: KekVersion,
        /// Keys still wrapped under it.
        keys: u64,
        /// Whether it is the provider's current version.
        current: bool,
    },
    /// The key provider failed.
    #[error(transparent)]
    KeyProvider(#[from] KeyProviderError),
    /// The key store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The system random generator or a crypto primitive failed unexpectedly.
    #[error("cryptographic primitive failed")]
    Crypto,
    /// [`crate::SubjectKey::seal_json`]: the value refused to serialize (a map with
    /// non-string keys, say). Nothing of it was kept.
    #[error("value to seal could not be serialized")]
    Unserializable,
}

/// Errors of a [`crate::KeyProvider`].
#[derive(Debug, thiserror::Error)]
pub enum KeyProviderError {
    /// The provider does not hold this KEK version (retired, or never known).
    #[error("KEK version {0} is not available")]
    VersionUnavailable(KekVersion),
    /// Unwrapping failed: the wrapped key was tampered or bound to another owner.
    #[error("wrapped key failed authentication")]
    UnwrapFailed,
    /// Configuration is missing or invalid (the message names the setting, never its value).
    #[error("key provider configuration: {0}")]
    Config(String),
    /// Reading or writing the local key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The operation is not supported by this provider.
    #[error("operation not supported by this key provider: {0}")]
    Unsupported(&'static str),
    /// A remote KMS failed (for KMS-backed implementations).
    #[error("key management service: {0}")]
    Remote(String),
    /// A crypto primitive failed unexpectedly.
    #[error("cryptographic primitive failed")]
    Crypto,
}

/// Errors of a [`crate::KeyStore`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The workspace does not exist (foreign key violation).
    #[error("unknown workspace")]
    UnknownWorkspace,
    /// A stored row violates the vault's invariants.
    #[error("corrupt key row: {0}")]
    Corrupt(&'static str),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err
            && db.is_foreign_key_violation()
        {
            return StoreError::UnknownWorkspace;
        }
        StoreError::Database(err)
    }
}

impl From<StoreError> for VaultError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::UnknownWorkspace => VaultError::UnknownWorkspace,
            other => VaultError::Store(other),
        }
    }
}

/// Result alias of the vault.
pub type Result<T, E = VaultError> = std::result::Result<T, E>;
