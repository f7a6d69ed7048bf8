//! What every connector takes and reports: members already normalized and hashed for the
//! platform, sent in one direction, with per-member failures.

use std::collections::BTreeMap;

use crate::hash::Sha256Hex;
use crate::transport::TransportError;

/// Add members to the platform's audience, or remove them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Add,
    Remove,
}

/// One member's identifiers for a platform, in the connector's schema order (`None` where
/// the member has no usable value for that key). `member` is Meridian's opaque reference
/// (never an identifier), used to report per-member failures.
#[derive(Clone, PartialEq, Eq)]
pub struct MemberRow {
    pub member: String,
    pub values: Vec<Option<Sha256Hex>>,
}

impl std::fmt::Debug for MemberRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberRow")
            .field("member", &self.member)
            .field("values", &self.values.len())
            .finish()
    }
}

/// The result of one sync of many members.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Members the platform accepted.
    pub accepted: u64,
    /// Members not accepted, with the reason (platform error code or local check).
    pub failed: BTreeMap<String, String>,
    /// HTTP requests made, retries included.
    pub requests: u64,
}

impl SyncOutcome {
    pub fn merge(&mut self, other: SyncOutcome) {
        self.accepted += other.accepted;
        self.failed.extend(other.failed);
        self.requests += other.requests;
    }
}

/// A connector's failure that affects the whole sync (configuration, credentials).
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("destination setting `{0}` is missing or invalid")]
    Setting(&'static str),
    #[error("the platform rejected the credentials ({0})")]
    Unauthorized(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A batch task panicked or was cancelled.
    #[error("batch task failed: {0}")]
    Task(String),
}
