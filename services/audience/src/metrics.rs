//! The room's metrics (OpenTelemetry, exported when OTLP is configured):
//! `meridian_audience_sync_members_total{destination, outcome}`, the contract the dashboard's
//! "Members synced by destination and outcome" panel reads. `destination` is the platform
//! (`meta`, `google_ads`, …): bounded, never an id or a person.

use std::sync::OnceLock;

use meridian_telemetry::opentelemetry::KeyValue;
use meridian_telemetry::opentelemetry::metrics::Counter;

fn members() -> &'static Counter<u64> {
    static COUNTER: OnceLock<Counter<u64>> = OnceLock::new();
    COUNTER.get_or_init(|| {
        meridian_telemetry::opentelemetry::global::meter("meridian")
            .u64_counter("meridian_audience_sync_members_total")
            .with_description(
                "Members per destination platform by outcome (sent, removed, excluded, failed)",
            )
            .build()
    })
}

/// Counts `n` members of `destination` (a platform name) with `outcome`.
pub(crate) fn count(destination: &'static str, outcome: &'static str, n: u64) {
    if n > 0 {
        members().add(
            n,
            &[
                KeyValue::new("destination", destination),
                KeyValue::new("outcome", outcome),
            ],
        );
    }
}
