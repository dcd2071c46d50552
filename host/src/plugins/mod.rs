//! Plugins: the hook registry the pipeline and the snapshooter dispatch through, module
//! loading with generations (hot reload), and per-hook telemetry with a circuit breaker.
//!
//! Module authors use `dp3-plugin-api`; this is the host side. Hooks are always dispatched on
//! worker threads (the executor, snapshot and updater threads), never on the async reactor:
//! every dispatch method here is synchronous and may block for as long as a hook runs.

/// Correlation paths and the dependency graph (shared with the module-test harness).
pub use dp3_plugin_api::correlation;
pub mod live;
pub mod registry;
pub mod stats;

pub use live::{LiveHooks, ModuleLoader, ModuleSource, ReloadError};
pub use registry::{
    HookRegistry, HookRegistryBuilder, RegistrationError, RegistrySettings, SchedulerJob,
    SnapshotEntity, SnapshotUnit, UpdaterThread,
};
pub use stats::{BreakerSettings, HookId, HookStats, HookStatsSnapshot, ModuleHealth, StatsTable};

#[cfg(test)]
mod tests;
