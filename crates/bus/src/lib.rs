//! The transactional outbox and the event bus.
//!
//! A room writes its state change and an [`OutboxEvent`] in one transaction
//! ([`enqueue`] through its own sqlx transaction, PostgreSQL or SQLite). A relay
//! ([`run_relay`]) publishes unsent rows, then marks them sent (the in-process bus: they are
//! its log) or deletes them (the JetStream relay, once JetStream holds them); consumers
//! ([`run_consumer`]) apply each event through an [`EventHandler`] in the transaction that
//! records it as processed, so effects happen once per event even though delivery is at
//! least once.
//! Failures retry with exponential backoff ([`RetryPolicy`]) and then become dead letters
//! ([`list_dead_letters`], [`replay_dead_letter`]).
//!
//! Two buses behind one [`Bus`] trait: [`JetStreamBus`] (with `NATS_URL`: one stream per
//! family by default, subjects `meridian.<workspace>.<family>`, `Nats-Msg-Id` dedup,
//! durable pull consumers, explicit acks) and [`LocalBus`] (embedded: the store is the log).
//! [`bench`] measures commit-to-consumer throughput against plain inserts.

pub mod bench;
mod bus;
mod consume;
mod dead_letters;
mod error;
mod event;
mod jetstream;
mod outbox;
mod pack;

use std::sync::Arc;

use meridian_store::Store;

pub use bus::{Bus, BusKind, LocalBus, LoopSettings, run_consumer, run_relay};
pub use consume::{ConsumeStats, EventHandler, RetryPolicy, Subscription, UpcomingEvent};
pub use dead_letters::{
    DeadLetter, DeadLetterFilter, find_dead_letter, list_dead_letters, replay_dead_letter,
};
pub use error::{BusError, HandlerError};
pub use event::{ConsumerName, EventFamily, OutboxEvent, subject};
pub use jetstream::{JetStreamBus, JetStreamSettings, StreamLayout};
pub use outbox::{
    OutboxConnection, OutboxStats, PruneReport, PruneSettings, Tx, enqueue, enqueue_all,
    enqueue_packed, forget_keyed_events, outbox_events_of, outbox_stats, prune,
};

/// The bus for this configuration: JetStream when `nats_url` is set, else in-process.
pub async fn open_bus(
    store: Store,
    nats_url: Option<&str>,
    settings: JetStreamSettings,
) -> Result<Arc<dyn Bus>, BusError> {
    match nats_url {
        Some(url) => Ok(Arc::new(JetStreamBus::connect(url, store, settings).await?)),
        None => Ok(Arc::new(LocalBus::new(store))),
    }
}
