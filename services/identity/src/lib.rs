//! The identity room: joins identifiers into profiles by deterministic,
//! explainable rules, and serves profiles and their events.
//!
//! - [`identifier`]: identifier types with priority, the configurable [`Rules`] (limits per
//!   profile, blocked values, shared values), normalization and blind indexing at intake.
//! - [`graph`]: the identity graph of a workspace — incremental union-find over recorded
//!   edges, merge protection, conflicts, unmerge. Pure domain, no I/O.
//! - [`explain`]: the merge tree of a profile.
//! - [`store`]: the [`IdentityStore`] trait over PostgreSQL and SQLite (blind indexes and
//!   sealed copies only), one conformance suite (`tests/conformance.rs`).
//! - [`IdentityRoom`]: the stateful service — ingests identifier observations, removes
//!   identifiers, serves profiles, lookups and explanations; [`grpc`] serves it as
//!   `meridian.v1.IdentityService` (`IdentityRoom::into_server`).
//! - [`quality`]: the synthetic storefront as input, pairwise precision/recall.
//! - [`bench::run`]: `meridian bench identity`.
//!
//! Wiring: `IdentityRoom::from_store(&store, vault, Rules::default().validate()?)` then
//! `.into_server()`; feed it `IdentifierObservation`s (event id, time, rule, raw identifiers)
//! with [`IdentityRoom::ingest`], one writer per workspace; erasure and corrections call
//! [`IdentityRoom::remove_identifier`].
//!
//! Not built yet: profile traits (identify events, latest-wins with source priority),
//! computed traits (RFM, AIPL stage), profile-changed events on the bus, and
//! `ListProfileEvents` (UNIMPLEMENTED) — they need the events ingestion stores.

pub mod bench;
pub mod error;
pub mod explain;
pub mod graph;
pub mod grpc;
pub mod identifier;
pub mod quality;
pub mod room;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;

pub use error::IdentityError;
pub use explain::{MergeTree, merge_tree};
pub use graph::{
    Changes, Conflict, ConflictReason, Edge, Graph, LinkRule, NodeState, Observation,
    ObserveOutcome, ProfileId,
};
pub use identifier::{
    CompiledRules, IdentifierObservation, IdentifierType, Intake, NodeKey, Normalized, Prepared,
    RawIdentifier, Rules, prepare,
};
pub use room::{Explanation, IdentifierView, IdentityRoom, IngestReport, ProfileView};
pub use store::{
    ChangeBatch, IdentifierRow, IdentityStore, ProfileRow, SealedValue, StoreIdentity,
    identity_store,
};
