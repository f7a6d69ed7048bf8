//! Mapping errors to `tonic::Status` at the edge.
//!
//! The error-code set is small: INVALID_ARGUMENT (with a `google.rpc.BadRequest`
//! naming each field at fault), NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION,
//! UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE, UNIMPLEMENTED and INTERNAL.
//! INTERNAL carries only a reference: the error chain, which may hold SQL or
//! personal data, goes to the server log under that reference.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One field at fault, by its path in the request (`events[3].timestamp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// INVALID_ARGUMENT naming the field at fault, in the message and as `BadRequest` details.
pub fn invalid_argument(field: impl Into<String>, description: impl Into<String>) -> Status {
    invalid_arguments(vec![FieldViolation::new(field, description)])
}

/// INVALID_ARGUMENT for several fields at once.
pub fn invalid_arguments(violations: Vec<FieldViolation>) -> Status {
    let message = violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for violation in violations {
        details.add_bad_request_violation(violation.field, violation.description);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// INTERNAL with a reference id; the full error chain is logged under it.
pub fn internal(error: &(dyn std::error::Error + 'static)) -> Status {
    let reference = uuid::Uuid::new_v4();
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(%reference, error = %chain, "internal error");
    Status::internal(format!("internal error (reference {reference})"))
}

/// UNIMPLEMENTED for an RPC of the contract that this build does not serve yet.
pub fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is part of the contract but not implemented yet"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose text carries what must never reach a caller.
    #[derive(Debug)]
    struct Leaky;

    impl std::fmt::Display for Leaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("duplicate key value violates unique constraint; email=ana@example.com")
        }
    }

    impl std::error::Error for Leaky {}

    #[test]
    fn internal_errors_reach_the_caller_as_a_reference_only() {
        let status = internal(&Leaky);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("ana@example.com"));
        assert!(!status.message().contains("constraint"));
        assert!(status.message().contains("reference"));
    }

    #[test]
    fn invalid_argument_names_the_field_in_message_and_details() {
        let status = invalid_argument("events[2].message_id", "must not be empty");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("events[2].message_id"));
        let details = status.get_error_details();
        let bad_request = details.bad_request().expect("BadRequest details");
        assert_eq!(
            bad_request.field_violations[0].field,
            "events[2].message_id"
        );
    }
}
