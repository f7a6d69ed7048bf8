//! Telemetry for every Meridian process: `tracing` events as JSON lines on
//! stderr, and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, traces and metrics
//! exported over OTLP/gRPC with W3C trace-context propagation.
//!
//! Never record personal data in a span or event: identifiers, emails, names
//! and free-form properties stay out; ids of records and counts are fine.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use opentelemetry;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("MERIDIAN_LOG is not a valid filter: {0}")]
    BadFilter(String),
    #[error("cannot set up the OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("a global subscriber is already installed")]
    AlreadyInstalled,
}

/// What to set up; read from the environment by the binary.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// A `tracing` filter (`info`, `meridian=debug,sqlx=warn`).
    pub log_filter: String,
    /// OTLP/gRPC collector endpoint (`http://collector:4317`); none disables export.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

/// Flushes and stops the exporters when dropped at the end of `main`.
#[must_use = "dropping the guard stops telemetry export"]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("telemetry: flushing traces failed: {err}");
        }
        if let Some(provider) = self.meter_provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("telemetry: flushing metrics failed: {err}");
        }
    }
}

/// Installs the global subscriber (and the OTLP exporters when configured).
/// Must run inside a Tokio runtime when OTLP is configured.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&config.log_filter)
        .map_err(|err| TelemetryError::BadFilter(err.to_string()))?;
    let json_logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stderr);

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let Some(endpoint) = &config.otlp_endpoint else {
        tracing_subscriber::registry()
            .with(filter)
            .with(json_logs)
            .try_init()
            .map_err(|_| TelemetryError::AlreadyInstalled)?;
        return Ok(TelemetryGuard {
            tracer_provider: None,
            meter_provider: None,
        });
    };

    let exporter_error = |reason: String| TelemetryError::Exporter {
        endpoint: endpoint.clone(),
        reason,
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let span_exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|err| exporter_error(err.to_string()))?;
    let tracer_provider = SdkTracerProvider::builder()
        .with_batch_exporter(span_exporter)
        .with_resource(resource.clone())
        .build();
    let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|err| exporter_error(err.to_string()))?;
    let meter_provider = SdkMeterProvider::builder()
        .with_periodic_exporter(metric_exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_meter_provider(meter_provider.clone());
    let tracer = tracer_provider.tracer("meridian");

    tracing_subscriber::registry()
        .with(filter)
        .with(json_logs)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard {
        tracer_provider: Some(tracer_provider),
        meter_provider: Some(meter_provider),
    })
}

/// The remote parent of a request, from its W3C `traceparent` header.
pub fn remote_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
