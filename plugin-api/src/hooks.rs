//! Hook signatures and registration records (core.md §3).
//!
//! Every hook returns a [`HookResult`]; task-producing hooks return the tasks they want fed
//! back into DP3. The host validates those tasks against the model before queueing them.

use std::sync::Arc;
use std::time::Duration;

use bson::Document;
use dp3_model::{DataPoint, DataPointTask, Eid};

use crate::cron::CronSchedule;
use crate::error::HookResult;

pub type Tasks = HookResult<Vec<DataPointTask>>;

/// `on_task_start`: every task, before anything else. Return value ignored.
pub type TaskHookFn = Arc<dyn Fn(&DataPointTask) -> HookResult<()> + Send + Sync>;
/// `allow_entity_creation`: `false` denies creation of the entity (and drops the task).
pub type AllowHookFn = Arc<dyn Fn(&Eid, &DataPointTask) -> HookResult<bool> + Send + Sync>;
/// `on_entity_creation`: a new entity, with the task that creates it.
pub type CreationHookFn = Arc<dyn Fn(&Eid, &DataPointTask) -> Tasks + Send + Sync>;
/// `on_new_attr`: one incoming datapoint of the registered attribute.
pub type AttrHookFn = Arc<dyn Fn(&Eid, &DataPoint) -> Tasks + Send + Sync>;
/// Timeseries hook: `(entity_type, attr, history)` with the raw master-record items
/// `{t1, t2, v}`.
pub type TimeseriesHookFn = Arc<dyn Fn(&str, &str, &[Document]) -> Tasks + Send + Sync>;
/// Correlation hook: `(entity_type, current_values)`; may mutate the values (including linked
/// `record`s of used links, which later hooks then see).
pub type CorrelationHookFn = Arc<dyn Fn(&str, &mut Document) -> Tasks + Send + Sync>;
/// Correlation hook with the raw master record as third argument.
pub type CorrelationMasterHookFn =
    Arc<dyn Fn(&str, &mut Document, &Document) -> Tasks + Send + Sync>;
/// Snapshot run init/finalize hook.
pub type RunHookFn = Arc<dyn Fn() -> Tasks + Send + Sync>;
/// Periodic update hook: `(entity_type, eid, master_record)`.
pub type PeriodicHookFn = Arc<dyn Fn(&str, &Eid, &Document) -> Tasks + Send + Sync>;
/// Periodic eid update hook: `(entity_type, eid)`.
pub type PeriodicEidHookFn = Arc<dyn Fn(&str, &Eid) -> Tasks + Send + Sync>;
/// Scheduler job. Returned tasks are published to the normal queue (an extension over DP3,
/// whose cron callbacks have no task path).
pub type JobFn = Arc<dyn Fn() -> Tasks + Send + Sync>;

/// A path of attribute names from an entity type, e.g. `["site", "name"]`.
pub type Path = Vec<String>;

/// Build paths from string literals: `paths(&[&["bs", "data1"]])`.
pub fn paths(p: &[&[&str]]) -> Vec<Path> {
    p.iter()
        .map(|path| path.iter().map(|s| (*s).to_owned()).collect())
        .collect()
}

/// Whether a creation/attribute hook is re-run after a module configuration refresh
/// (core.md §3.5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Refresh {
    /// Only run during ingestion.
    #[default]
    Never,
    /// Also re-run for every entity of the type during the next snapshot run after the
    /// module's configuration was refreshed; `may_change` lists the attributes the hook
    /// writes (validated like correlation paths). During such a re-run a creation hook gets a
    /// synthetic task without datapoints, and an attribute hook a synthetic datapoint whose
    /// `v` is null and `src`/`t1`/`t2` are unset: refresh-capable hooks must recompute from
    /// persisted state.
    OnConfigChange { may_change: Vec<Path> },
}

impl Refresh {
    pub fn on_config_change(may_change: &[&[&str]]) -> Self {
        Refresh::OnConfigChange {
            may_change: paths(may_change),
        }
    }
}

/// The callable of a correlation registration.
#[derive(Clone)]
pub enum CorrelationFn {
    Values(CorrelationHookFn),
    WithMaster(CorrelationMasterHookFn),
}

/// One registered hook with its family-specific parameters.
#[derive(Clone)]
pub enum Hook {
    TaskStart(TaskHookFn),
    AllowEntityCreation {
        entity: String,
        hook: AllowHookFn,
    },
    OnEntityCreation {
        entity: String,
        refresh: Refresh,
        hook: CreationHookFn,
    },
    OnNewAttr {
        entity: String,
        attr: String,
        refresh: Refresh,
        hook: AttrHookFn,
    },
    Timeseries {
        entity: String,
        attr: String,
        hook: TimeseriesHookFn,
    },
    Correlation {
        entity: String,
        depends_on: Vec<Path>,
        may_change: Vec<Path>,
        hook: CorrelationFn,
    },
    SnapshotInit(RunHookFn),
    SnapshotFinalize(RunHookFn),
    /// The registration name is the DP3 `hook_id`.
    PeriodicUpdate {
        entity: String,
        period: Duration,
        hook: PeriodicHookFn,
    },
    PeriodicEidUpdate {
        entity: String,
        period: Duration,
        hook: PeriodicEidHookFn,
    },
    /// `schedule: None` = run once when the scheduler starts (`scheduler_register_once`).
    Scheduler {
        job_id: u32,
        schedule: Option<CronSchedule>,
        /// Misfire grace of once-jobs (cron jobs carry it in their schedule).
        misfire_grace_time: Duration,
        job: JobFn,
    },
}

impl Hook {
    /// The registration kind as named by DP3's test harness (core.md §9.2).
    pub fn kind(&self) -> &'static str {
        match self {
            Hook::TaskStart(_) => "task",
            Hook::AllowEntityCreation { .. } => "allow_entity_creation",
            Hook::OnEntityCreation { .. } => "on_entity_creation",
            Hook::OnNewAttr { .. } => "on_new_attr",
            Hook::Timeseries { .. } => "timeseries",
            Hook::Correlation {
                hook: CorrelationFn::Values(_),
                ..
            } => "correlation",
            Hook::Correlation {
                hook: CorrelationFn::WithMaster(_),
                ..
            } => "correlation_with_master_record",
            Hook::SnapshotInit(_) => "snapshot_init",
            Hook::SnapshotFinalize(_) => "snapshot_finalize",
            Hook::PeriodicUpdate { .. } => "periodic_update",
            Hook::PeriodicEidUpdate { .. } => "periodic_eid_update",
            Hook::Scheduler { .. } => "scheduler",
        }
    }

    /// The entity type the hook is registered for, if any.
    pub fn entity(&self) -> Option<&str> {
        match self {
            Hook::AllowEntityCreation { entity, .. }
            | Hook::OnEntityCreation { entity, .. }
            | Hook::OnNewAttr { entity, .. }
            | Hook::Timeseries { entity, .. }
            | Hook::Correlation { entity, .. }
            | Hook::PeriodicUpdate { entity, .. }
            | Hook::PeriodicEidUpdate { entity, .. } => Some(entity),
            _ => None,
        }
    }

    /// The attribute the hook is registered for, if any.
    pub fn attr(&self) -> Option<&str> {
        match self {
            Hook::OnNewAttr { attr, .. } | Hook::Timeseries { attr, .. } => Some(attr),
            _ => None,
        }
    }
}

/// One registration: the caller-supplied name (hook identity and telemetry) and the hook.
#[derive(Clone)]
pub struct Registration {
    pub module: String,
    pub name: String,
    pub hook: Hook,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("module", &self.module)
            .field("name", &self.name)
            .field("kind", &self.hook.kind())
            .field("entity", &self.hook.entity())
            .field("attr", &self.hook.attr())
            .finish()
    }
}
