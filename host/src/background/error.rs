//! Errors of the background jobs.

use std::path::PathBuf;

use crate::queue::SubmitError;

/// Why a background job (or one step of it) failed. Jobs log these and try again at their
/// next scheduled run; nothing here is fatal for the process.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    #[error("store: {0}")]
    Store(#[from] dp3_store::StoreError),
    #[error("cannot submit tasks: {0}")]
    Submit(#[from] SubmitError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid cron schedule of {job}: {reason}")]
    Schedule { job: String, reason: String },
    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },
    #[error("stopped: the process is shutting down")]
    Stopped,
}

impl BackgroundError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BackgroundError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Result of a background step.
pub type Result<T, E = BackgroundError> = std::result::Result<T, E>;
