//! The one error type of this crate. Every variant says what is wrong and
//! where (segment, field, bit offset); the gRPC layer maps all of them to
//! `INVALID_ARGUMENT`.

/// Why a consent signal could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The input was empty (or only whitespace).
    #[error("consent string is empty")]
    Empty,

    /// The input is longer than any real consent string.
    #[error("consent string is {len} characters long; at most {max} are accepted")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The accepted maximum.
        max: usize,
    },

    /// A segment contains a character outside the base64url alphabet.
    #[error(
        "{segment}: character {character:?} at position {position} is not base64url (A-Z a-z 0-9 - _)"
    )]
    InvalidCharacter {
        /// Which segment (for example `TC string core segment`).
        segment: String,
        /// Character position inside the segment.
        position: usize,
        /// The offending character.
        character: char,
    },

    /// A field runs past the end of its segment.
    #[error(
        "{segment}: field {field} at bit {offset} needs {needed} bits but only {available} remain"
    )]
    Truncated {
        /// Which segment.
        segment: String,
        /// Field name (reference-implementation spelling).
        field: &'static str,
        /// Bit offset of the field inside the segment.
        offset: usize,
        /// Bits the field needs.
        needed: usize,
        /// Bits left in the segment.
        available: usize,
    },

    /// A field was read but its value is not allowed.
    #[error("{segment}: field {field} at bit {offset}: {reason}")]
    InvalidField {
        /// Which segment.
        segment: String,
        /// Field name (reference-implementation spelling).
        field: &'static str,
        /// Bit offset of the field inside the segment.
        offset: usize,
        /// What is wrong with the value.
        reason: String,
    },

    /// The string's structure (segments, sections) is wrong.
    #[error("{segment}: {reason}")]
    InvalidStructure {
        /// Which segment or section.
        segment: String,
        /// What is wrong.
        reason: String,
    },

    /// A `Sec-GPC` header value other than `1`.
    #[error("Sec-GPC header value {value:?} is invalid: the only defined value is \"1\"")]
    InvalidGpcHeader {
        /// The value received (truncated to 16 characters).
        value: String,
    },
}

impl SignalError {
    pub(crate) fn structure(segment: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidStructure {
            segment: segment.into(),
            reason: reason.into(),
        }
    }
}
