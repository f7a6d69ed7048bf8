//! Where wrapped keys live: the [`KeyStore`] trait and its backends (PostgreSQL, SQLite,
//! memory). Stores only ever see keys wrapped by the KEK, never a usable key.
//!
//! Tables (migrations `0002_vault.sql`, `0006_vault_identifiers.sql`):
//! - `vault_subject_keys`: one row per subject; either an active wrapped data key, or a
//!   tombstone (`forgotten_at` set, key columns NULL) once the subject was forgotten. A
//!   tombstoned subject never gets a new key. Forget and first-key creation are serialized by
//!   the primary key, so a key created concurrently with a forget is destroyed too.
//! - `vault_identifier_subjects` (`0006_vault_identifiers.sql`): the subject of each identifier
//!   (by blind index), deleted once that subject is forgotten.
//! - `vault_workspace_keys`: per workspace and purpose (`blind_index`, `ledger_signing`),
//!   wrapped; the signing key's public half in clear.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::error::StoreError;
use crate::kek::{BoxFuture, KekVersion, WrappedKey};

#[macro_use]
mod sql;
mod memory;
mod postgres;
mod sqlite;

pub use memory::MemoryKeyStore;
pub use postgres::PgKeyStore;
pub use sqlite::SqliteKeyStore;

/// The key store of an open [`meridian_store::Store`], whichever backend it is.
pub fn key_store_for(store: &meridian_store::Store) -> std::sync::Arc<dyn KeyStore> {
    match store {
        meridian_store::Store::Postgres(pool) => std::sync::Arc::new(PgKeyStore::new(pool.clone())),
        meridian_store::Store::Sqlite(pool) => {
            std::sync::Arc::new(SqliteKeyStore::new(pool.clone()))
        }
    }
}

/// An identifier's blind index and the vault subject recorded for it.
pub type IdentifierSubject = ([u8; 32], String);

/// A subject's wrapped data key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubjectKey {
    /// The key id written into every value sealed under this key.
    pub key_id: Uuid,
    /// The data key, wrapped by the KEK.
    pub wrapped: WrappedKey,
}

/// What the store holds for a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectKeyState {
    /// No key yet.
    Absent,
    /// The subject was forgotten: its key is destroyed.
    Forgotten,
    /// An active wrapped key.
    Active(StoredSubjectKey),
}

/// The purpose of a per-workspace key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkspaceKeyPurpose {
    /// HMAC-SHA256 key for blind indexes.
    BlindIndex,
    /// Ed25519 key (PKCS#8) for the consent ledger.
    LedgerSigning,
}

impl WorkspaceKeyPurpose {
    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkspaceKeyPurpose::BlindIndex => "blind_index",
            WorkspaceKeyPurpose::LedgerSigning => "ledger_signing",
        }
    }
    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "blind_index" => Some(WorkspaceKeyPurpose::BlindIndex),
            "ledger_signing" => Some(WorkspaceKeyPurpose::LedgerSigning),
            _ => None,
        }
    }
}

/// A per-workspace key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWorkspaceKey {
    /// Version of this key (1 until workspace keys are rotated).
    pub key_version: u32,
    /// The key, wrapped by the KEK.
    pub wrapped: WrappedKey,
    /// Public half, for signing keys.
    pub public_key: Option<Vec<u8>>,
}

/// What `forget_subject` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForgetOutcome {
    /// Wrapped data keys destroyed by this call.
    pub keys_destroyed: u64,
    /// The subject had been forgotten before.
    pub already_forgotten: bool,
}

/// A subject key row, for re-wrapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectKeyRow {
    /// Workspace.
    pub workspace_id: String,
    /// Subject.
    pub subject_id: String,
    /// The stored key.
    pub key: StoredSubjectKey,
}

/// A workspace key row, for re-wrapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceKeyRow {
    /// Workspace.
    pub workspace_id: String,
    /// Purpose.
    pub purpose: WorkspaceKeyPurpose,
    /// The stored key.
    pub key: StoredWorkspaceKey,
}

/// Storage of wrapped keys. Object-safe (`Arc<dyn KeyStore>`); every backend passes the same
/// conformance suite (`tests/conformance.rs`).
pub trait KeyStore: Send + Sync {
    /// The subject's key state.
    fn subject_key<'a>(
        &'a self,
        workspace: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<SubjectKeyState, StoreError>>;

    /// Stores `key` unless the subject already has a key or was forgotten; returns the state
    /// after the call (the winner's key when several replicas race).
    fn insert_subject_key<'a>(
        &'a self,
        workspace: &'a str,
        subject: &'a str,
        key: &'a StoredSubjectKey,
    ) -> BoxFuture<'a, Result<SubjectKeyState, StoreError>>;

    /// The state of each of `subjects` that has a row; subjects without one are left out.
    fn subject_keys<'a>(
        &'a self,
        workspace: &'a str,
        subjects: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<(String, SubjectKeyState)>, StoreError>>;

    /// Stores each key whose subject has no row yet, in one round trip; returns how many were
    /// stored. When fewer than all, the caller re-reads the subjects to learn the winners.
    fn insert_subject_keys<'a>(
        &'a self,
        workspace: &'a str,
        keys: &'a [(&'a str, StoredSubjectKey)],
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// The subject recorded for each of `indexes` that has one; the others are left out.
    fn identifier_subjects<'a>(
        &'a self,
        workspace: &'a str,
        indexes: &'a [[u8; 32]],
    ) -> BoxFuture<'a, Result<Vec<IdentifierSubject>, StoreError>>;

    /// Records a subject for each blind index that has none yet (existing rows win); returns
    /// how many were recorded.
    fn insert_identifier_subjects<'a>(
        &'a self,
        workspace: &'a str,
        rows: &'a [IdentifierSubject],
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Deletes the record of `index` if it still names `subject`; `true` if a row went.
    fn delete_identifier_subject<'a>(
        &'a self,
        workspace: &'a str,
        index: &'a [u8; 32],
        subject: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Destroys the subject's wrapped keys and leaves a tombstone.
    fn forget_subject<'a>(
        &'a self,
        workspace: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<ForgetOutcome, StoreError>>;

    /// The latest key of `purpose` for the workspace.
    fn workspace_key<'a>(
        &'a self,
        workspace: &'a str,
        purpose: WorkspaceKeyPurpose,
    ) -> BoxFuture<'a, Result<Option<StoredWorkspaceKey>, StoreError>>;

    /// Stores `key` unless that (workspace, purpose, version) exists; returns the latest key.
    fn insert_workspace_key<'a>(
        &'a self,
        workspace: &'a str,
        purpose: WorkspaceKeyPurpose,
        key: &'a StoredWorkspaceKey,
    ) -> BoxFuture<'a, Result<StoredWorkspaceKey, StoreError>>;

    /// Up to `limit` active subject keys not wrapped under `current`, ordered by
    /// (workspace, subject), strictly after the cursor (`("", "")` to start).
    fn subject_keys_to_rewrap<'a>(
        &'a self,
        current: KekVersion,
        after: (&'a str, &'a str),
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<SubjectKeyRow>, StoreError>>;

    /// Replaces a subject key's wrapping if the row still holds exactly `row` (compare and
    /// swap); `false` if it changed meanwhile (forgotten, or re-wrapped by someone else).
    fn replace_subject_wrapping<'a>(
        &'a self,
        row: &'a SubjectKeyRow,
        new: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Up to `limit` workspace keys not wrapped under `current`, ordered by
    /// (workspace, purpose, key version), strictly after the cursor (`("", "", 0)` to start).
    fn workspace_keys_to_rewrap<'a>(
        &'a self,
        current: KekVersion,
        after: (&'a str, &'a str, u32),
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<WorkspaceKeyRow>, StoreError>>;

    /// Compare-and-swap of a workspace key's wrapping.
    fn replace_workspace_wrapping<'a>(
        &'a self,
        row: &'a WorkspaceKeyRow,
        new: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// How many wrapped keys (subject and workspace) each KEK version still protects.
    fn kek_versions_in_use(&self) -> BoxFuture<'_, Result<BTreeMap<KekVersion, u64>, StoreError>>;
}

pub(crate) fn version_to_db(v: u32) -> i64 {
    i64::from(v)
}

pub(crate) fn version_from_db(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt("version out of range"))
}
