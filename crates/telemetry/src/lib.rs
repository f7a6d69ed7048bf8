//! Tracing, JSON logs and OpenTelemetry export.
