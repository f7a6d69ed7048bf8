//! The identity room's wiring: its `ingest-event` consumer on the process's bus.

use std::sync::Arc;

use meridian_bus::{Bus, LoopSettings};
use meridian_identity::{IdentityRoom, IngestConsumer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Runs the identity consumer of accepted events (durable name `identity`, family
/// `ingest-event`) until `shutdown`: stitching, traits and computed traits, each event
/// applied once in the transaction that records it.
pub(crate) fn spawn_consumer(
    bus: Arc<dyn Bus>,
    room: IdentityRoom,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(meridian_bus::run_consumer(
        bus,
        IngestConsumer::subscription(),
        IngestConsumer::new(room),
        LoopSettings::default(),
        shutdown,
    ))
}
