//! End-to-end tests: the real `meridian` binary over real sockets, against
//! the embedded store and a fresh PostgreSQL database per test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod audience;
mod cli;
mod consent;
mod demo;
mod erasure;
mod foundation;
mod harness;
mod identity;
mod ingest;
mod telemetry;
