//! The DP3 host: everything behind the `dp3` binary.
//!
//! Data flows one way: `api` → `queue` → `pipeline` → store → `snapshot`; see
//! `docs/ARCHITECTURE.md`.

pub mod api;
pub mod background;
pub mod cli;
pub mod clock;
pub mod control;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod queue;
pub mod snapshot;
pub mod wiring;
