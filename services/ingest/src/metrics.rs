//! The room's metrics (OpenTelemetry, exported when OTLP is configured):
//! `meridian_ingest_events_total{outcome}`, `meridian_ingest_dropped_events_total{rule}`,
//! `meridian_ingest_stripped_fields_total{rule}`, `meridian_ingest_consent_cache_total{result}`.

use std::sync::OnceLock;

use meridian_telemetry::opentelemetry::KeyValue;
use meridian_telemetry::opentelemetry::metrics::Counter;

use crate::room::Summary;

pub(crate) struct IngestMetrics {
    events: Counter<u64>,
    dropped: Counter<u64>,
    stripped: Counter<u64>,
    cache: Counter<u64>,
}

pub(crate) fn metrics() -> &'static IngestMetrics {
    static METRICS: OnceLock<IngestMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = meridian_telemetry::opentelemetry::global::meter("meridian");
        IngestMetrics {
            events: meter
                .u64_counter("meridian_ingest_events_total")
                .with_description(
                    "Ingested events by outcome (accepted, duplicate, rejected, dropped)",
                )
                .build(),
            dropped: meter
                .u64_counter("meridian_ingest_dropped_events_total")
                .with_description(
                    "Events dropped by the consent gate, by the policy rule that denied",
                )
                .build(),
            stripped: meter
                .u64_counter("meridian_ingest_stripped_fields_total")
                .with_description(
                    "Fields stripped by the consent gate, by the policy rule that denied",
                )
                .build(),
            cache: meter
                .u64_counter("meridian_ingest_consent_cache_total")
                .with_description("Consent lookups by cache result (hit, miss)")
                .build(),
        }
    })
}

impl IngestMetrics {
    pub(crate) fn outcomes(&self, s: &Summary) {
        for (outcome, n) in [
            ("accepted", s.accepted),
            ("duplicate", s.duplicate),
            ("rejected", s.rejected),
            ("dropped", s.dropped),
        ] {
            if n > 0 {
                self.events
                    .add(u64::from(n), &[KeyValue::new("outcome", outcome)]);
            }
        }
    }

    pub(crate) fn dropped(&self, rule: &str) {
        self.dropped
            .add(1, &[KeyValue::new("rule", rule.to_owned())]);
    }

    pub(crate) fn stripped(&self, rule: &str) {
        self.stripped
            .add(1, &[KeyValue::new("rule", rule.to_owned())]);
    }

    pub(crate) fn consent_cache(&self, hits: usize, misses: usize) {
        if hits > 0 {
            self.cache
                .add(hits as u64, &[KeyValue::new("result", "hit")]);
        }
        if misses > 0 {
            self.cache
                .add(misses as u64, &[KeyValue::new("result", "miss")]);
        }
    }
}
