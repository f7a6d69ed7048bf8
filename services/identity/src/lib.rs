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
//! - [`traits`]: profile traits from identify events (source priority, then latest wins);
//!   [`computed`]: AIPL stage and RFM quintiles per workspace and currency.
//! - [`accepted`]: the bus consumer of `ingest-event` ([`IngestConsumer`]).
//! - [`events`]: the [`ProfileEventSource`] seam behind `ListProfileEvents`.
//!
//! Wiring: `IdentityRoom::from_store(&store, vault, Rules::default().validate()?)` (or
//! [`IdentityRoom::with_profile_rules`]) then `.into_server()`; run
//! `meridian_bus::run_consumer(bus, IngestConsumer::subscription(), IngestConsumer::new(room), ..)`
//! so accepted events are stitched, in the consumer's transaction, idempotently per event,
//! a whole delivery at a time ([`IdentityRoom::apply_accepted_batch`]: one vault round trip,
//! one graph pass, one write with multi-row statements on PostgreSQL).
//! Direct writers: [`IdentityRoom::ingest`] (raw identifier observations, the benchmark) and
//! [`IdentityRoom::remove_identifier`]. The erasure saga calls
//! [`IdentityRoom::subject_profile`] and [`IdentityRoom::erase_profile`], then forgets the
//! identifiers and vault subjects it returns. `ListProfileEvents` needs
//! [`IdentityRoom::with_event_source`] (FAILED_PRECONDITION without one).
//!
//! Every write bumps the workspace's graph version in its transaction; a replica whose
//! cached graph is behind (another writer, or a rolled-back consumer transaction) reloads.
//! Every change writes `ProfileChanged` (family `profile`) to the outbox in the same
//! transaction. Computed traits live in clear in `identity_computed_traits` and
//! `identity_rfm`: the read model audience segments filter on (migration 0008).

pub mod accepted;
pub mod bench;
pub mod computed;
pub mod error;
pub mod events;
pub mod explain;
pub mod graph;
pub mod grpc;
pub mod identifier;
pub(crate) mod look_ahead;
pub mod quality;
pub mod room;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
pub mod traits;

pub use accepted::IngestConsumer;
pub use computed::{AiplRules, AiplStage};
pub use error::IdentityError;
pub use events::{ProfileEvent, ProfileEventPage, ProfileEventSource};
pub use explain::{MergeTree, merge_tree};
pub use graph::{
    Changes, Conflict, ConflictReason, Edge, Graph, LinkRule, NodeState, Observation,
    ObserveOutcome, ProfileId,
};
pub use identifier::{
    CompiledRules, IdentifierObservation, IdentifierType, Intake, NodeKey, Normalized, Prepared,
    RawIdentifier, Rules, prepare,
};
pub use room::{
    AppliedEvent, ConsumerTimings, ErasedProfile, Explanation, IdentifierView, IdentityRoom,
    IngestReport, ProfileRules, ProfileView, SubjectRef, TraitsView,
};
pub use store::{
    ActivityRow, ChangeBatch, ComputedRow, IdentifierRow, IdentityStore, ProfileRow, RfmRow,
    SealedValue, StoreIdentity, TraitPayloadRow, identity_store,
};
pub use traits::TraitRules;
