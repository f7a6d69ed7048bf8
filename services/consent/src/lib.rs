//! The consent room: the tamper-evident consent ledger (`ConsentService`) and
//! data-subject requests (`DsrService`).
//!
//! - [`ledger`]: the canonical encoding, hash chain per workspace and signature checks (pure).
//! - [`store`]: [`ConsentStore`], one trait with PostgreSQL and SQLite implementations
//!   ([`SqlConsentStore`]); PostgreSQL refuses UPDATE/DELETE/TRUNCATE on the ledger itself.
//! - [`ConsentRoom`]: the domain (subjects, RecordConsent, state now and as of T, history,
//!   receipts, verification, DSRs); [`verify_ledger`] for `meridian ledger verify`.
//! - [`signals`]: TCF / GPP / GPC → purposes through the policy taxonomy.
//! - [`erasure`]: the erasure saga (durable steps, leases, retries, signed receipt) over the
//!   traits the other rooms' adapters implement ([`ErasureTarget`], [`SubjectLocator`],
//!   [`AccessSource`]); [`expiry`]: EXPIRED entries; [`deadlines`]: the deadline gauges;
//!   [`shopify`]: Shopify's privacy webhooks (axum router).
//! - Every ledger append writes `ConsentChanged` (family `consent`) to the outbox in its
//!   transaction.
//! - [`bench::run`] for `meridian bench ledger --json`, [`bench_erasure::run`] for
//!   `meridian bench erasure --json`.
//! - gRPC: `ConsentRoom::consent_api()` / `dsr_api()` give [`ConsentGrpc`] / [`DsrGrpc`], each
//!   with `into_server()`.
//!
//! Subjects: until the identity room exists, an identifier maps to a consent subject through
//! its blind index in `consent_subjects` (the seam the identity room replaces). The ledger
//! names a subject only by a random pseudonymous ref kept sealed under the subject's data
//! key, so `Vault::forget` unlinks the entries (they stay, as proof of consent).

pub mod bench;
pub mod bench_erasure;
pub mod deadlines;
pub mod dsr;
pub mod erasure;
pub mod error;
pub mod expiry;
mod grpc;
pub mod ledger;
mod room;
pub mod shopify;
pub mod signals;
pub mod store;

pub use dsr::{DataSubjectRequest, ListFilter, RequestKind, RequestStatus, SubmitRequest};
pub use erasure::{
    AccessSource, ErasurePlan, ErasureSubject, ErasureTarget, Found, SagaSettings, SagaStep,
    StepError, StepReport, SubjectLocator,
};
pub use error::ConsentError;
pub use grpc::{ConsentGrpc, DsrGrpc, record_request};
pub use ledger::{BadEntry, VerifyReport};
pub use room::{
    ConsentRoom, Entry, HistoryPage, IdKind, PurposeState, Receipt, RecordRequest, Subject,
    SubjectId, SubjectQuery, VaultSigner, public_key_b64, verify_in_segments, verify_ledger,
    verify_receipt, verify_with,
};
pub use store::{ConsentStore, SqlConsentStore};
