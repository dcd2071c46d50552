//! What `dp3 run` and `dp3 worker` set up alike: the module loader with hot reload, module
//! cron jobs, and the control-action handler.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use dp3_model::config::Config;
use dp3_model::schedule::{CronFields, CronSchedule};
use dp3_model::{DataPointTask, Eid, ModelSpec};
use dp3_plugin_api::PlatformConfig;
use dp3_plugin_api::host::{ModuleMetricValues, TracingServices};
use dp3_store::Store;
use tracing::{error, info, warn};

use super::run::app_name;
use crate::background::scheduler::{JobFn, Scheduler};
use crate::background::submit::submit_all;
use crate::background::telemetry::SourceTelemetry;
use crate::control::ControlHandler;
use crate::metrics::{EntityCounts, HookMetrics, MetricsState, PipelineMetrics};
use crate::pipeline::Pipeline;
use crate::pipeline::executor::HookSource;
use crate::plugins::{ModuleLoader, ModuleSource, RegistrySettings};
use crate::queue::{ControlAction, TaskSubmitter};
use crate::snapshot::components::scan_partition;
use crate::snapshot::{SnapShooter, SnapshotError};
use crate::wiring::LiveHookSource;

/// The loaded modules of one process.
pub struct Modules {
    pub loader: Arc<ModuleLoader>,
    /// The hooks the pipeline, snapshots and updater call (always the live generation).
    pub hooks: LiveHookSource,
    pub telemetry: Arc<SourceTelemetry>,
    /// Values modules report through the host services (for `/metrics`).
    pub module_values: Arc<ModuleMetricValues>,
    /// Hot reload: watches the modules directory and module configs (`None` = disabled).
    pub watcher: Option<notify::RecommendedWatcher>,
}

/// Load every enabled module (failing with every problem listed), then watch the modules
/// directory and the module configs for hot reload / config refresh.
pub fn start_modules(
    config: &Config,
    model: &Arc<ModelSpec>,
    data: &Path,
    process_index: u32,
) -> anyhow::Result<Modules> {
    let pc = &config.processing_core;
    let services = TracingServices::default();
    let module_values = services.metrics.clone();
    let loader = Arc::new(ModuleLoader::new(
        model.clone(),
        RegistrySettings {
            update_batch_period: config.updater.update_batch_period.to_std().ok(),
            ..RegistrySettings::default()
        },
        ModuleSource {
            modules_dir: pc.modules_dir.clone(),
            enabled_modules: pc.enabled_modules.clone(),
            config_dir: config.config_dir.clone(),
            state_dir: data.to_owned(),
            platform: PlatformConfig {
                app_name: app_name(),
                config_dir: config.config_dir.clone(),
                num_processes: pc.worker_processes,
                process_index,
            },
            services: Arc::new(services),
            check_permissions: true,
            max_generations: 16,
        },
    ));
    loader.load_all().map_err(|errors| {
        anyhow::anyhow!(
            "modules could not be loaded:\n{}",
            errors
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let watcher = if pc.enabled_modules.is_empty() {
        None
    } else {
        match loader.watch(Duration::from_millis(500)) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!("hot reload disabled: {e}");
                None
            }
        }
    };
    let telemetry = Arc::new(SourceTelemetry::new());
    let hooks = LiveHookSource {
        live: loader.live().clone(),
        telemetry: Some(telemetry.clone()),
    };
    Ok(Modules {
        loader,
        hooks,
        telemetry,
        module_values,
        watcher,
    })
}

/// Install the Prometheus recorder with the pipeline, entity and hook sources.
pub fn install_metrics(
    pipeline: &Arc<Pipeline>,
    model: &Arc<ModelSpec>,
    store: &Arc<dyn Store>,
    modules: &Modules,
) -> anyhow::Result<MetricsState> {
    let p = pipeline.clone();
    MetricsState::install(vec![
        Arc::new(PipelineMetrics {
            stats: pipeline.stats().clone(),
            in_flight: Arc::new(move || p.in_flight()),
        }),
        Arc::new(EntityCounts::new(
            model.clone(),
            store.clone(),
            pipeline.stats().clone(),
        )),
        Arc::new(HookMetrics {
            stats: modules.loader.stats().clone(),
            live: modules.loader.live().clone(),
            module_values: modules.module_values.clone(),
        }),
    ])
}

/// `control.allowed_actions` as action names.
pub fn allowed_actions(config: &Config) -> Vec<String> {
    config
        .control
        .allowed_actions
        .iter()
        .map(|a| a.name().to_owned())
        .collect()
}

/// The handler of control actions: snapshot runs (where this process runs them), module
/// config refresh, and re-running creation hooks.
pub fn control_handler(
    shooter: Option<Arc<SnapShooter>>,
    loader: Arc<ModuleLoader>,
    refresher: EntityRefresher,
) -> ControlHandler {
    Arc::new(move |action: &ControlAction| match action {
        ControlAction::MakeSnapshots => match &shooter {
            Some(shooter) => run_snapshots(shooter),
            None => warn!("make_snapshots ignored: snapshot runs are worker 0's duty"),
        },
        ControlAction::RefreshModuleConfig { module } => match loader.refresh_config(module) {
            Ok(()) => info!(%module, "module configuration refreshed"),
            Err(e) => warn!("refresh_module_config failed: {e}"),
        },
        ControlAction::RefreshOnEntityCreation { etype } => refresher.run(etype),
    })
}

/// Modules' `scheduler_register` jobs of the generation loaded at start. Their outputs are
/// submitted as normal tasks (DP3 offers no task path for cron jobs; we do).
pub fn register_module_jobs(
    scheduler: &Scheduler,
    loader: &ModuleLoader,
    submitter: Arc<dyn TaskSubmitter>,
    stop: &Arc<AtomicBool>,
) {
    for job in loader.live().load().scheduler_jobs() {
        let name = format!("{}.{}", job.module, job.name);
        let run = job.run.clone();
        let (submitter, stop) = (submitter.clone(), stop.clone());
        let body: JobFn = Arc::new(move || {
            let tasks = run();
            if let Err(e) = submit_all(&*submitter, tasks, &stop) {
                warn!(error = %e, "outputs of a module job were not queued");
            }
        });
        match job.schedule {
            Some(c) => {
                let fields = CronFields {
                    year: c.year,
                    month: c.month,
                    day: c.day,
                    week: c.week,
                    day_of_week: c.day_of_week,
                    hour: c.hour,
                    minute: c.minute,
                    second: c.second,
                    timezone: c.timezone,
                };
                match CronSchedule::parse(&fields) {
                    Ok(schedule) => {
                        scheduler.add_with_grace(
                            name,
                            schedule,
                            body,
                            chrono::TimeDelta::from_std(job.misfire_grace_time)
                                .unwrap_or(chrono::TimeDelta::seconds(1)),
                        );
                    }
                    Err(e) => warn!(job = %name, error = %e, "module job not scheduled"),
                }
            }
            None => {
                // run once at start
                std::thread::spawn(move || body());
            }
        }
    }
}

/// `refresh_on_entity_creation` (core.md §7): re-run the creation hooks of every entity of a
/// type (of the own hash partition) with a synthetic empty task; outputs become tasks.
pub struct EntityRefresher {
    pub store: Arc<dyn Store>,
    pub hooks: LiveHookSource,
    /// Where the outputs go (DP3: the priority queue).
    pub submitter: Arc<dyn TaskSubmitter>,
    /// `(index, count)` of the hash partition to cover.
    pub partition: (u32, u32),
    pub stop: Arc<AtomicBool>,
}

impl EntityRefresher {
    fn run(&self, etype: &str) {
        let hooks = HookSource::load(&self.hooks);
        let mut out = Vec::new();
        let mut count = 0u64;
        let res = scan_partition(&*self.store, etype, self.partition, |page| {
            for master in page {
                let Some(eid) = master.get("_id").and_then(Eid::from_bson) else {
                    continue;
                };
                let task = DataPointTask {
                    etype: etype.to_owned(),
                    eid: eid.clone(),
                    ..Default::default()
                };
                out.extend(hooks.on_entity_creation(etype, &eid, &task));
                count += 1;
            }
            Ok(())
        });
        if let Err(e) = res {
            warn!(%etype, error = %e, "refresh_on_entity_creation failed");
        }
        info!(%etype, entities = count, tasks = out.len(), "creation hooks re-run");
        if let Err(e) = submit_all(&*self.submitter, out, &self.stop) {
            warn!(error = %e, "outputs of refresh_on_entity_creation were not queued");
        }
    }
}

/// A snapshot run from the scheduler or the control channel.
pub fn run_snapshots(shooter: &SnapShooter) {
    match shooter.run() {
        Ok(_) => {}
        Err(SnapshotError::AlreadyRunning) => {
            info!("snapshot run requested while one is running; skipped")
        }
        Err(e) => error!(error = %e, "snapshot run failed"),
    }
}
