//! The transactional outbox and the event bus.
