//! The [`Registrar`]: how modules (and the host's built-in hooks) register hooks.

use std::sync::Arc;
use std::time::Duration;

use bson::Document;
use dp3_model::{DataPoint, DataPointTask, Eid, ModelSpec};

use crate::cron::CronSchedule;
use crate::error::HookResult;
use crate::hooks::{CorrelationFn, Hook, Path, Refresh, Registration, Tasks};
use crate::module::PlatformConfig;
use crate::services::{HostServices, ModuleLogger, ModuleMetrics, StderrServices};

/// Records registrations of one module (core.md §3.12). Every registration carries an
/// explicit name, unique within the module and family, used as the hook's identity and in
/// telemetry (`<module>.<name>`).
///
/// Recording never fails: the host validates the registrations against the entity model when
/// it builds its hook registry, and reports every rejected registration with the reason.
pub struct Registrar {
    module: String,
    platform: PlatformConfig,
    model: Option<Arc<ModelSpec>>,
    services: Arc<dyn HostServices>,
    registrations: Vec<Registration>,
    jobs: u32,
}

impl Registrar {
    /// A registrar for `module` without host services (warnings go to stderr).
    pub fn new(module: impl Into<String>) -> Self {
        Registrar::with_services(
            module,
            PlatformConfig::default(),
            None,
            Arc::new(StderrServices),
        )
    }

    pub fn with_services(
        module: impl Into<String>,
        platform: PlatformConfig,
        model: Option<Arc<ModelSpec>>,
        services: Arc<dyn HostServices>,
    ) -> Self {
        Registrar {
            module: module.into(),
            platform,
            model,
            services,
            registrations: Vec::new(),
            jobs: 0,
        }
    }

    pub fn module_name(&self) -> &str {
        &self.module
    }

    /// The platform configuration (app name, config dir, worker index and count).
    pub fn platform(&self) -> &PlatformConfig {
        &self.platform
    }

    /// The entity model. In a module library it is loaded from `platform().config_dir` at
    /// creation (`None` when that directory has no valid configuration).
    pub fn model_spec(&self) -> Option<&Arc<ModelSpec>> {
        self.model.as_ref()
    }

    pub fn logger(&self) -> ModuleLogger {
        ModuleLogger::new(&self.module, Arc::clone(&self.services))
    }

    pub fn metrics(&self) -> ModuleMetrics {
        ModuleMetrics::new(&self.module, Arc::clone(&self.services))
    }

    /// The recorded registrations, in registration order.
    pub fn registrations(&self) -> &[Registration] {
        &self.registrations
    }

    pub fn into_registrations(self) -> Vec<Registration> {
        self.registrations
    }

    /// Record an already built hook (used by the module loader and the host's built-ins).
    pub fn push(&mut self, name: impl Into<String>, hook: Hook) {
        if let Hook::Scheduler { job_id, .. } = &hook {
            self.jobs = self.jobs.max(*job_id);
        }
        self.registrations.push(Registration {
            module: self.module.clone(),
            name: name.into(),
            hook,
        });
    }

    /// `on_task_start`: runs first for every processed task; the result is ignored.
    pub fn on_task_start(
        &mut self,
        name: &str,
        hook: impl Fn(&DataPointTask) -> HookResult<()> + Send + Sync + 'static,
    ) {
        self.push(name, Hook::TaskStart(Arc::new(hook)));
    }

    /// `allow_entity_creation`: decide whether a new entity of `entity` may be created.
    pub fn allow_entity_creation(
        &mut self,
        name: &str,
        entity: &str,
        hook: impl Fn(&Eid, &DataPointTask) -> HookResult<bool> + Send + Sync + 'static,
    ) {
        self.push(
            name,
            Hook::AllowEntityCreation {
                entity: entity.to_owned(),
                hook: Arc::new(hook),
            },
        );
    }

    /// `on_entity_creation`: runs once when an entity of `entity` is created.
    pub fn on_entity_creation(
        &mut self,
        name: &str,
        entity: &str,
        refresh: Refresh,
        hook: impl Fn(&Eid, &DataPointTask) -> Tasks + Send + Sync + 'static,
    ) {
        self.push(
            name,
            Hook::OnEntityCreation {
                entity: entity.to_owned(),
                refresh,
                hook: Arc::new(hook),
            },
        );
    }

    /// `on_new_attr`: runs for every incoming datapoint of `entity.attr`.
    pub fn on_new_attr(
        &mut self,
        name: &str,
        entity: &str,
        attr: &str,
        refresh: Refresh,
        hook: impl Fn(&Eid, &DataPoint) -> Tasks + Send + Sync + 'static,
    ) {
        self.push(
            name,
            Hook::OnNewAttr {
                entity: entity.to_owned(),
                attr: attr.to_owned(),
                refresh,
                hook: Arc::new(hook),
            },
        );
    }

    /// Timeseries hook for the timeseries attribute `entity.attr` (snapshot time).
    pub fn timeseries(
        &mut self,
        name: &str,
        entity: &str,
        attr: &str,
        hook: impl Fn(&str, &str, &[Document]) -> Tasks + Send + Sync + 'static,
    ) {
        self.push(
            name,
            Hook::Timeseries {
                entity: entity.to_owned(),
                attr: attr.to_owned(),
                hook: Arc::new(hook),
            },
        );
    }

    /// Correlation hook (snapshot time) on the current values of `entity`.
    pub fn correlation(
        &mut self,
        name: &str,
        entity: &str,
        depends_on: Vec<Path>,
        may_change: Vec<Path>,
        hook: impl Fn(&str, &mut Document) -> Tasks + Send + Sync + 'static,
    ) {
        self.push(
            name,
            Hook::Correlation {
                entity: entity.to_owned(),
                depends_on,
                may_change,
                hook: CorrelationFn::Values(Arc::new(hook)),
            },
        );
    }

    /// Correlation hook that also receives the raw master record.
    pub fn correlation_with_master_record(
        &mut self,
        name: &str,
        entity: &str,
        depends_on: Vec<Path>,
        may_change: Vec<Path>,
        hook: impl Fn(&str, &mut Document, &Document) -> Tasks + Send + Sync + 'static,
    ) {
        self.push(
            name,
            Hook::Correlation {
                entity: entity.to_owned(),
                depends_on,
                may_change,
                hook: CorrelationFn::WithMaster(Arc::new(hook)),
            },
        );
    }

    /// Runs when a snapshot run starts (once per worker).
    pub fn snapshot_init(&mut self, name: &str, hook: impl Fn() -> Tasks + Send + Sync + 'static) {
        self.push(name, Hook::SnapshotInit(Arc::new(hook)));
    }

    /// Runs when a snapshot run ends (once per worker).
    pub fn snapshot_finalize(
        &mut self,
        name: &str,
        hook: impl Fn() -> Tasks + Send + Sync + 'static,
    ) {
        self.push(name, Hook::SnapshotFinalize(Arc::new(hook)));
    }

    /// Periodic update hook: every entity of `entity` is visited once per `period` with its
    /// master record. `hook_id` must be unique per `(period, entity)`.
    pub fn periodic_update(
        &mut self,
        hook_id: &str,
        entity: &str,
        period: Duration,
        hook: impl Fn(&str, &Eid, &Document) -> Tasks + Send + Sync + 'static,
    ) {
        self.push(
            hook_id,
            Hook::PeriodicUpdate {
                entity: entity.to_owned(),
                period,
                hook: Arc::new(hook),
            },
        );
    }

    /// Periodic update hook that only needs the eid.
    pub fn periodic_eid_update(
        &mut self,
        hook_id: &str,
        entity: &str,
        period: Duration,
        hook: impl Fn(&str, &Eid) -> Tasks + Send + Sync + 'static,
    ) {
        self.push(
            hook_id,
            Hook::PeriodicEidUpdate {
                entity: entity.to_owned(),
                period,
                hook: Arc::new(hook),
            },
        );
    }

    /// Cron job. Returns the job id (1-based count of scheduler registrations of this
    /// registrar). Runs on every worker; returned tasks go to the normal queue.
    pub fn scheduler_register(
        &mut self,
        name: &str,
        schedule: CronSchedule,
        job: impl Fn() -> Tasks + Send + Sync + 'static,
    ) -> u32 {
        let job_id = self.jobs + 1;
        let grace = schedule.misfire_grace_time;
        self.push(
            name,
            Hook::Scheduler {
                job_id,
                schedule: Some(schedule),
                misfire_grace_time: grace,
                job: Arc::new(job),
            },
        );
        job_id
    }

    /// Job run once when the scheduler starts (misfire grace 60 s).
    pub fn scheduler_register_once(
        &mut self,
        name: &str,
        job: impl Fn() -> Tasks + Send + Sync + 'static,
    ) -> u32 {
        let job_id = self.jobs + 1;
        self.push(
            name,
            Hook::Scheduler {
                job_id,
                schedule: None,
                misfire_grace_time: Duration::from_secs(60),
                job: Arc::new(job),
            },
        );
        job_id
    }
}
