//! What the snapshooter needs from the hook registry: the snapshot-time hook families
//! (core.md §3.6–3.8). The plugin room implements this for its live registry.

use bson::Bson;
use dp3_model::DataPointTask;

use super::unit::Unit;

/// Snapshot-time hooks. Implementations catch and count hook failures themselves.
pub trait SnapshotHooks: Send + Sync {
    /// `(etype, attr)` relation attributes traversed by correlation-hook paths: only these
    /// are followed when building linked components (core.md §3.7.2).
    fn used_links(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// How many links deep `record`s must be attached (longest path minus one).
    fn link_depth(&self) -> usize {
        1
    }

    /// `snapshot_init` hooks (once per run).
    fn snapshot_init(&self) -> Vec<DataPointTask> {
        Vec::new()
    }

    /// `snapshot_finalize` hooks (once per run).
    fn snapshot_finalize(&self) -> Vec<DataPointTask> {
        Vec::new()
    }

    /// Whether a timeseries hook is registered for `(etype, attr)`.
    fn has_timeseries_hook(&self, _etype: &str, _attr: &str) -> bool {
        false
    }

    /// Timeseries hooks of `(etype, attr)` over the raw history array of one entity.
    fn timeseries(&self, _etype: &str, _attr: &str, _history: &[Bson]) -> Vec<DataPointTask> {
        Vec::new()
    }

    /// Correlation hooks applicable to the unit's entity types, in topological order,
    /// hook-major and entity-minor (core.md §3.7.5). Hooks mutate the unit's values (see
    /// [`Unit::view`] / [`Unit::store_view`]); returned tasks are collected.
    fn correlate(&self, _unit: &mut Unit) -> Vec<DataPointTask> {
        Vec::new()
    }
}

/// No hooks.
pub struct NoSnapshotHooks;

impl SnapshotHooks for NoSnapshotHooks {}

/// Where the snapshooter gets the current hooks from (swapped on plugin reload; one run
/// uses one snapshot of them).
pub trait SnapshotHookSource: Send + Sync {
    fn load(&self) -> std::sync::Arc<dyn SnapshotHooks>;
}

impl SnapshotHookSource for std::sync::Arc<dyn SnapshotHooks> {
    fn load(&self) -> std::sync::Arc<dyn SnapshotHooks> {
        self.clone()
    }
}
