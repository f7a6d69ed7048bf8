//! The audience room: segments of profiles and their consent-checked sync to
//! destinations.
//!
//! - [`segment`]: the segment rule language (JSON), validated with errors naming the part at
//!   fault and compiled to SQL for PostgreSQL and SQLite.
//! - [`store`]: the read model of profiles (regions, computed traits, identifier presence,
//!   event aggregates per local day), segments and members, on either backend.
//! - [`AudienceApi`]: the gRPC service; RPCs not built yet answer UNIMPLEMENTED after the
//!   caller's workspace is checked.
//!
//! Destination connectors (normalization, hashing, wire clients) live in
//! `meridian-destinations`.

pub mod error;
mod grpc;
pub mod profiles;
pub mod room;
pub mod segment;
pub mod store;

pub use room::AudienceRoom;

pub use grpc::AudienceApi;
