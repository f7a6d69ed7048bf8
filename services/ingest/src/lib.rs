//! Ingestion service.
