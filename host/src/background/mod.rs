//! Background processes that work on stored data: the cron scheduler, history management,
//! lifetimes and garbage collection, the updater.

pub mod archive;
pub mod error;
pub mod gc;
pub mod history;
pub mod jobs;
pub mod runmeta;
pub mod scheduler;
pub mod submit;
pub mod telemetry;
pub mod updater;

pub use error::BackgroundError;
pub use jobs::{Background, BackgroundDeps, register_jobs};
