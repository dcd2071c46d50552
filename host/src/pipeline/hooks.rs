//! What the executor needs from the hook registry: the ingestion hook families
//! (core.md §3.1–3.4). The plugin room implements this for its live `HookRegistry`; tests
//! implement it with plain closures.

use dp3_model::{DataPoint, DataPointTask, Eid};

/// Ingestion-time hooks, dispatched by the executor on worker threads. Implementations catch
/// and count hook failures themselves: a failing hook never fails the task (core.md §3.0).
pub trait IngestionHooks: Send + Sync {
    /// `on_task_start`: every task, first.
    fn on_task_start(&self, _task: &DataPointTask) {}

    /// `allow_entity_creation`: all hooks must agree; a hook error counts as "allow".
    fn allow_entity_creation(&self, _etype: &str, _eid: &Eid, _task: &DataPointTask) -> bool {
        true
    }

    /// `on_entity_creation`: returned tasks re-enter the pipeline (priority lane or inline).
    fn on_entity_creation(
        &self,
        _etype: &str,
        _eid: &Eid,
        _task: &DataPointTask,
    ) -> Vec<DataPointTask> {
        Vec::new()
    }

    /// `on_new_attr` for one datapoint (called once per datapoint, after staging).
    fn on_new_attr(&self, _dp: &DataPoint) -> Vec<DataPointTask> {
        Vec::new()
    }

    /// Whether any `on_new_attr` hook is registered for `(etype, attr)` (lets the executor
    /// skip work for attributes nobody listens to).
    fn wants_attr(&self, _etype: &str, _attr: &str) -> bool {
        true
    }
}

/// No hooks at all.
pub struct NoHooks;

impl IngestionHooks for NoHooks {
    fn wants_attr(&self, _etype: &str, _attr: &str) -> bool {
        false
    }
}
