//! Field-level encryption: key hierarchy, sealing, blind indexes, crypto-shredding.
//!
//! The room every other room uses to keep personal data from resting in plaintext. It exposes
//! one handle, [`Vault`], built from a [`KeyProvider`] (the KEK: [`LocalKeyFileProvider`],
//! [`EnvKeyProvider`], or a KMS implementation) and a [`KeyStore`] ([`PgKeyStore`],
//! [`SqliteKeyStore`]; [`MemoryKeyStore`] for tests and benchmarks):
//!
//! - **Key hierarchy.** KEK → per-subject data keys (256-bit, `SystemRandom`) and per-workspace
//!   keys (blind index, Ed25519 ledger signing), stored only wrapped, with the KEK version.
//!   The wrapping binds the owner (workspace, subject, key id / purpose) as associated data.
//! - **Sealing** ([`Vault::seal`], [`Vault::open`]): AES-256-GCM, versioned format (see
//!   [`seal`]), associated data = workspace, subject key id, record id, field name.
//! - **Blind indexes** ([`Vault::blind_index`]): normalization per [`IdentifierKind`], then
//!   HMAC-SHA256 under the workspace key.
//! - **Batches** ([`Vault::subject_keys`]): the data keys of many subjects in one lookup and
//!   at most one insert round trip, for rooms that seal a batch of events or identifiers.
//! - **Identifier subjects** ([`Vault::identifier_subjects`]): every identifier (by blind
//!   index) has its own vault subject, allocated on first sight. Rooms seal what they hold
//!   about an identifier under it, so erasing a person is [`Vault::forget_identifier`] on each
//!   of their identifiers; an identifier seen again after erasure gets a new subject.
//! - **Crypto-shredding** ([`Vault::forget`]): destroys the subject's wrapped data key and
//!   tombstones the subject. Deleting rows and blind-index entries is the erasure saga's job.
//! - **Rotation** ([`Vault::rotate_kek`], [`Vault::retire_kek`]): re-wraps keys only; sealed
//!   data is never rewritten.
//! - **Ledger signing** ([`Vault::sign`], [`Vault::signing_public_key`], [`verify`]).
//! - [`bench::run`] for `meridian bench vault`; `testing` (feature `test-support`) for
//!   plaintext scans.
//!
//! # Backups and the KEK
//! A forget destroys the live wrapped data key. A database backup taken earlier still holds
//! that wrapped key, and it can be unwrapped for as long as the KEK version that wrapped it
//! exists. Every copy therefore becomes unreadable once that KEK version is retired: rotate
//! the KEK on a schedule shorter than the erasure deadline (`rotate_kek`, then `retire_kek`),
//! and keep old KEK versions only as long as backups must stay restorable. PostgreSQL keeps
//! dead tuples until VACUUM; the SQLite store forgets with `secure_delete` on.
//!
//! # Caching across replicas
//! Unwrapped data keys, and the subject of each identifier, are cached (bounded,
//! `VaultConfig::dek_cache_ttl`, default 10 s). `forget` evicts on the calling replica at once
//! (a concurrent load cannot re-insert what it read); other replicas re-read the store after
//! at most the TTL, or at once when they call [`Vault::evict_subject`] on the erasure event.
//! An identifier whose cached subject was forgotten elsewhere gets a new subject from
//! [`Vault::identifier_subject_keys`], which notices the forgotten key and asks again.
//!
//! # Zeroization
//! Raw key bytes (KEKs read from files or the environment, generated and unwrapped keys) and
//! opened plaintext live in `zeroize::Zeroizing` buffers. ring does not zeroize the expanded
//! key schedules it builds from them (`LessSafeKey`, `hmac::Key`, `Ed25519KeyPair`); those are
//! freed normally when dropped.

pub mod bench;
mod blind;
mod cache;
mod error;
mod kek;
mod nonce;
pub mod seal;
mod signing;
mod store;
#[cfg(feature = "test-support")]
pub mod testing;
mod vault;

pub use blind::{BlindIndex, BlindIndexer, IdentifierKind, normalize};
pub use error::{KeyProviderError, Result, StoreError, VaultError};
pub use kek::{
    BoxFuture, ENV_KEK, ENV_KEK_PREVIOUS, ENV_KEK_PREVIOUS_VERSION, ENV_KEK_VERSION,
    EnvKeyProvider, KekVersion, KeyProvider, KeyRing, LocalKeyFileProvider, WrappedKey,
    provider_from_env_or_data_dir,
};
pub use seal::{SEAL_OVERHEAD, SubjectKey};
pub use signing::{LedgerSignature, SigningPublicKey, verify};
pub use store::{
    ForgetOutcome, IdentifierSubject, KeyStore, MemoryKeyStore, PgKeyStore, SqliteKeyStore,
    StoredSubjectKey, StoredWorkspaceKey, SubjectKeyRow, SubjectKeyState, WorkspaceKeyPurpose,
    WorkspaceKeyRow, key_store_for,
};
pub use vault::{ForgetReceipt, RotationReport, Vault, VaultConfig};
