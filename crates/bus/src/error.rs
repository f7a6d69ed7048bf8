//! The bus's errors.

use uuid::Uuid;

/// What went wrong in the outbox, the relay or the bus. Messages carry ids and kinds,
/// never payloads.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("JetStream {operation} failed: {message}")]
    JetStream {
        operation: &'static str,
        message: String,
    },
    #[error("stored outbox row {seq} is malformed: {reason}")]
    MalformedRow { seq: i64, reason: String },
    #[error("no dead letter {0}")]
    UnknownDeadLetter(Uuid),
    #[error("the store and the bus disagree: {0}")]
    Mismatch(&'static str),
}

impl BusError {
    pub(crate) fn jetstream(operation: &'static str, err: impl std::fmt::Display) -> Self {
        BusError::JetStream {
            operation,
            message: err.to_string(),
        }
    }
}

/// Why a consumer's handler did not apply an event. The event is retried with backoff,
/// then dead-lettered; the message is stored with the dead letter, so it must not carry
/// personal data.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Failed(String),
}

impl From<BusError> for HandlerError {
    fn from(err: BusError) -> Self {
        match err {
            BusError::Database(err) => HandlerError::Database(err),
            other => HandlerError::Failed(other.to_string()),
        }
    }
}
