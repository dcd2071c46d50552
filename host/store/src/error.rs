//! Storage errors.

use std::path::PathBuf;

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (missing directory, permissions, not a database,
    /// a foreign or corrupted file, incompatible schema version).
    #[error("cannot open store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    /// The disk is full: nothing of the failed operation was written.
    #[error("storage is full: {0}")]
    Full(String),
    /// A filter or query document is not valid.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// Stored data could not be decoded.
    #[error("corrupt data in {what}: {reason}")]
    Corrupt { what: String, reason: String },
    /// Any other backend failure.
    #[error("{backend} error: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
}

impl StoreError {
    pub fn backend(backend: &'static str, message: impl std::fmt::Display) -> Self {
        StoreError::Backend {
            backend,
            message: message.to_string(),
        }
    }
}
