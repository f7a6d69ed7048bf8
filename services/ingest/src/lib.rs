//! The ingestion room: accepts batches of events from storefront backends (gRPC
//! `meridian.v1.IngestService` and the Segment-compatible HTTP API), validates them, applies
//! the consent gate and the collection policy, seals personal fields, and stores each
//! accepted event with its `EventAccepted` outbox event in one transaction (on PostgreSQL a
//! call's events share one outbox row, a pack: `meridian_bus::enqueue_packed`).
//!
//! - [`event`]: decoded events ([`RawEvent`]), validation, limits, clock-skew correction.
//! - [`gate`]: jurisdiction, [`ConsentLookup`] + [`ConsentCache`], per purpose and field
//!   category policy decisions (drop / strip).
//! - [`store`]: [`EventStore`] on PostgreSQL (monthly partitions) and SQLite; idempotency on
//!   (workspace, message_id).
//! - [`IngestRoom`]: the pipeline; `events_of` (opened, paginated) and `purge` for the
//!   identity room and the erasure saga; `apply_retention`.
//! - [`grpc`] (`IngestRoom::into_server`), [`segment::router`] (HTTP), [`consent_adapter`]
//!   (the consent room as a [`ConsentLookup`], the `ConsentChanged` cache invalidation).
//! - [`bench`]: `meridian bench ingest`.
//!
//! Identifier normalization, blind indexing, priority and blocked values are identity's
//! (`meridian_identity::identifier`), so both rooms reach the same blind indexes.

pub mod bench;
pub mod consent_adapter;
pub mod error;
pub mod event;
pub mod gate;
pub mod grpc;
mod metrics;
pub mod room;
pub mod segment;
pub mod store;

pub use consent_adapter::{ConsentInvalidation, ConsentRoomLookup};
pub use error::IngestError;
pub use event::{EventKind, RawEvent, Violation};
pub use gate::{
    ConsentCache, ConsentLookup, ConsentSnapshot, NoRecordedConsent, SubjectIdentifier,
};
pub use grpc::IngestGrpc;
pub use room::{
    EVENT_FAMILY, EventPage, EventResult, IngestConfig, IngestReport, IngestRoom, OpenedEvent,
    Outcome, RetentionReport, Summary,
};
pub use store::EventStore;
