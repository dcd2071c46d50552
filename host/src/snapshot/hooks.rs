//! What the snapshooter needs from the hook registry: the snapshot-time hook families
//! (core.md §3.6–3.8). The plugin room implements this for its live registry.

use bson::Document;
use dp3_model::DataPointTask;

use super::unit::Unit;

/// Snapshot-time hooks. Implementations catch and count hook failures themselves.
pub trait SnapshotHooks: Send + Sync {
    /// `(etype, attr)` relation attributes traversed by correlation-hook paths: only these
    /// are followed when building linked components (core.md §3.7.2).
    fn used_links(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// `snapshot_init` hooks (once per run).
    fn snapshot_init(&self) -> Vec<DataPointTask> {
        Vec::new()
    }

    /// `snapshot_finalize` hooks (once per run).
    fn snapshot_finalize(&self) -> Vec<DataPointTask> {
        Vec::new()
    }

    /// Whether the hooks of `etype` read master records ([`Self::timeseries`] and
    /// correlation hooks that take the master record). When they do not, the snapshooter
    /// computes current values from stored rows and passes an empty master record.
    /// Defaults to true (always correct).
    fn needs_master(&self, _etype: &str) -> bool {
        true
    }

    /// Timeseries hooks of every hooked timeseries attribute present in the master record
    /// of one entity of type `etype` (core.md §3.6).
    fn timeseries(&self, _etype: &str, _master: &Document) -> Vec<DataPointTask> {
        Vec::new()
    }

    /// Correlation hooks applicable to the unit's entity types, in topological order,
    /// hook-major and entity-minor (core.md §3.7.5), with linked `record`s attached along
    /// used links on linked units. Hooks mutate the unit's values; returned tasks are
    /// collected.
    fn correlate(&self, _unit: &mut Unit) -> Vec<DataPointTask> {
        Vec::new()
    }
}

/// No hooks.
pub struct NoSnapshotHooks;

impl SnapshotHooks for NoSnapshotHooks {
    fn needs_master(&self, _etype: &str) -> bool {
        false
    }
}

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
