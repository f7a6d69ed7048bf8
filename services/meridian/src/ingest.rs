//! Wiring of the ingestion room: the room over the store, the vault, the policies and the
//! consent room (as its consent lookup); the `ConsentChanged` consumer that retires its
//! consent cache; partitions made ahead and retention applied daily.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use meridian_bus::{Bus, LoopSettings, Subscription};
use meridian_ingest::{ConsentInvalidation, ConsentRoomLookup, IngestConfig, IngestRoom};
use meridian_policy::PolicyEngine;
use meridian_store::Store;
use meridian_vault::Vault;
use tokio::sync::watch;

/// The durable consumer retiring cached consent. One per deployment: with several
/// replicas, the others see a change within the cache TTL (30 s).
const CONSENT_CONSUMER: &str = "ingest-consent-cache";

pub(crate) fn room(
    store: &Store,
    vault: Arc<Vault>,
    policies: Arc<PolicyEngine>,
) -> anyhow::Result<IngestRoom> {
    let consent =
        meridian_consent::ConsentRoom::new(store.clone(), vault.clone(), policies.clone());
    IngestRoom::new(
        store,
        vault,
        policies,
        Arc::new(ConsentRoomLookup::new(consent)),
        IngestConfig::default(),
    )
    .context("setting up the ingestion room")
}

/// Starts the room's background work: partitions for this month and the next, the consent
/// cache invalidation consumer, and daily retention.
pub(crate) async fn start(
    room: &IngestRoom,
    bus: Arc<dyn Bus>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    room.prepare_partitions(chrono::Utc::now())
        .await
        .context("creating event partitions")?;
    let subscription = Subscription::new(
        CONSENT_CONSUMER.parse().context("consumer name")?,
        "consent".parse().context("event family")?,
    );
    let consumer = tokio::spawn(meridian_bus::run_consumer(
        bus,
        subscription,
        Arc::new(ConsentInvalidation::new(room.consent_cache())),
        LoopSettings::default(),
        shutdown.clone(),
    ));
    let retention_room = room.clone();
    let mut stop = shutdown;
    let retention = tokio::spawn(async move {
        loop {
            let now = chrono::Utc::now();
            if let Err(err) = retention_room.prepare_partitions(now).await {
                tracing::warn!(error = %err, "creating event partitions failed");
            }
            match retention_room.apply_retention(now).await {
                Ok(report) => tracing::info!(
                    partitions_dropped = report.partitions_dropped.len(),
                    rows_deleted = report.rows_deleted,
                    "event retention applied"
                ),
                Err(err) => tracing::warn!(error = %err, "event retention failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
    Ok(vec![consumer, retention])
}
