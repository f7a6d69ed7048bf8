//! Load errors: every one names the file and line it comes from.

/// Why `policies/` could not be loaded. Display is `file:line: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyLoadError {
    /// A file could not be read.
    #[error("{file}:{line}: cannot read: {reason}")]
    Io {
        /// path of the file, relative to the policy directory
        file: String,
        /// always 1: the file as a whole
        line: usize,
        /// the operating-system error
        reason: String,
    },
    /// A required file is missing from the policy directory.
    #[error("{file}:{line}: missing required policy file")]
    Missing {
        /// the expected path, relative to the policy directory
        file: String,
        /// always 1
        line: usize,
    },
    /// A TOML parameter file is not valid TOML or does not have the expected shape.
    #[error("{file}:{line}: invalid parameter file: {reason}")]
    Toml {
        /// file name
        file: String,
        /// 1-based line
        line: usize,
        /// what is wrong
        reason: String,
    },
    /// A parameter file is well-formed but a value is wrong (unknown key, bad period, ...).
    #[error("{file}:{line}: {reason}")]
    Invalid {
        /// file name
        file: String,
        /// 1-based line
        line: usize,
        /// what is wrong
        reason: String,
    },
    /// The Cedar schema does not parse.
    #[error("{file}:{line}: invalid Cedar schema: {reason}")]
    Schema {
        /// file name
        file: String,
        /// 1-based line
        line: usize,
        /// the Cedar error
        reason: String,
    },
    /// A Cedar policy file does not parse, or a rule lacks `@id`/`@reason`.
    #[error("{file}:{line}: invalid Cedar policy: {reason}")]
    Cedar {
        /// file name
        file: String,
        /// 1-based line
        line: usize,
        /// the Cedar error
        reason: String,
    },
    /// A Cedar policy parses but does not type-check against the schema.
    #[error("{file}:{line}: policy violates the schema: {reason}")]
    Validation {
        /// file name
        file: String,
        /// 1-based line
        line: usize,
        /// the validator's message
        reason: String,
    },
}

impl PolicyLoadError {
    /// The file (relative to the policy directory) the error is in.
    pub fn file(&self) -> &str {
        match self {
            Self::Io { file, .. }
            | Self::Missing { file, .. }
            | Self::Toml { file, .. }
            | Self::Invalid { file, .. }
            | Self::Schema { file, .. }
            | Self::Cedar { file, .. }
            | Self::Validation { file, .. } => file,
        }
    }

    /// The 1-based line the error is on.
    pub fn line(&self) -> usize {
        match self {
            Self::Io { line, .. }
            | Self::Missing { line, .. }
            | Self::Toml { line, .. }
            | Self::Invalid { line, .. }
            | Self::Schema { line, .. }
            | Self::Cedar { line, .. }
            | Self::Validation { line, .. } => *line,
        }
    }
}
