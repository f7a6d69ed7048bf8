//! The audience room: segments of profiles and their consent-checked sync to
//! destinations.
//!
//! - [`segment`]: the segment rule language (JSON or YAML), validated with errors
//!   naming the part at fault and compiled to SQL for PostgreSQL and SQLite.
//! - [`schedule`]: recompute schedules (five-field cron in the workspace's time zone);
//!   [`AudienceRoom::recompute_due`] runs the due ones,
//!   [`AudienceRoom::run_scheduled_recomputes`] is the background task.
//! - [`store`]: the read model of profiles (regions, computed traits, identifier presence,
//!   event aggregates per local day), segments and members, on either backend.
//! - [`destination`]: destinations and their credentials (by name, read from files);
//!   [`connectors`]: a destination's wire and a member's [`connectors::Payload`] on it.
//! - [`sync`]: syncs with the policy asked per member × destination at send time, removals
//!   on consent withdrawal ([`sync::ConsentWithdrawals`]) and erasure; [`ledger`]: the
//!   destination membership ledger and sync rows.
//! - [`AudienceApi`]: the gRPC service.
//!
//! Destination connectors (normalization, hashing, wire clients) live in
//! `meridian-destinations`.

pub mod connectors;
pub mod destination;
pub mod error;
mod grpc;
pub mod ledger;
mod metrics;
pub mod profiles;
pub mod room;
pub mod schedule;
pub mod segment;
pub mod store;
pub mod sync;

pub use room::AudienceRoom;

pub use grpc::AudienceApi;
