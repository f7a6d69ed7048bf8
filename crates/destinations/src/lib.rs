//! Destinations: how customer data leaves Meridian for an ad platform, storefront, webhook
//! or file, and how it is taken back.
//!
//! - [`normalize`] and [`hash`]: each platform's normal form and its SHA-256 (Meta's equal to
//!   the `facebook-business` SDK, checked against it in `tests/oracle.rs`).
//! - [`cli`]: `meridian hash`; [`bench`]: `meridian bench audience`.
//! - [`transport`]: pooled HTTP/1.1 with pacing and retries honouring `Retry-After`.
//! - [`connector`]: what connectors take ([`connector::MemberRow`]: hashed identifiers in
//!   schema order) and report ([`connector::SyncOutcome`]: accepted, failures per member).
//! - Connectors: [`meta`] (Custom Audiences users edge, sessions of ≤ 10,000 rows),
//!   [`google`] (Customer Match `OfflineUserDataJob` with consent), [`tiktok`] (segment
//!   mapping), [`shopify`] (`tagsAdd`/`tagsRemove` with cost-based throttling), [`webhook`]
//!   (HMAC-signed JSON and CSV/NDJSON file drops). Each is tested against a strict fake in
//!   `meridian-test-support::platforms`.

pub mod cli;
pub mod hash;
pub mod normalize;

pub use hash::{Sha256Hex, hash_field};
pub use normalize::{Field, Platform, UnknownWord, normalize, wire_plain};
pub mod bench;
pub mod connector;
pub mod google;
pub mod meta;
pub mod shopify;
pub mod tiktok;
pub mod transport;
pub mod webhook;
