//! Registration of every background job on the scheduler, from the configuration.
//!
//! `dp3 run` calls [`register_jobs`] once after the pipeline is up; the returned
//! [`Background`] gives access to the components (tests, control actions) and
//! [`Background::stop`] tells long-running jobs to finish early at shutdown (call it before
//! `Scheduler::stop`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dp3_model::config::Config;
use dp3_model::cron::CronExpression;
use dp3_model::schedule::{CronFields, CronSchedule};
use dp3_store::Store;
use tracing::{error, warn};

use super::archive::Archiver;
use super::error::{BackgroundError, Result};
use super::gc::GarbageCollector;
use super::history::HistoryManager;
use super::scheduler::{JobFn, Scheduler, schedule_of};
use super::telemetry::SourceTelemetry;
use super::updater::{Updater, UpdaterDeps, UpdaterHooks};
use crate::clock::Clock;
use crate::queue::TaskSubmitter;

/// What the background jobs run against.
pub struct BackgroundDeps {
    pub store: Arc<dyn Store>,
    /// Where delete tasks and updater outputs go (the pipeline).
    pub submitter: Arc<dyn TaskSubmitter>,
    pub clock: Arc<dyn Clock>,
    /// The plugin registry's periodic hooks.
    pub updater_hooks: Arc<dyn UpdaterHooks>,
    /// The recorder the executor feeds (`SourceTelemetry::observe`); synced every 30 s.
    pub telemetry: Arc<SourceTelemetry>,
}

/// The registered background components.
pub struct Background {
    pub history: Arc<HistoryManager>,
    pub archiver: Arc<Archiver>,
    pub gc: Arc<GarbageCollector>,
    pub updater: Arc<Updater>,
    pub telemetry: Arc<SourceTelemetry>,
    /// `(job id, job name)` of every registered job.
    pub jobs: Vec<(u64, String)>,
    stop: Arc<AtomicBool>,
}

impl Background {
    /// Ask running jobs to stop at their next checkpoint (page or batch boundary).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn schedule(job: &str, expr: &CronExpression) -> Result<CronSchedule> {
    schedule_of(expr).map_err(|e| BackgroundError::Schedule {
        job: job.to_owned(),
        reason: e.to_string(),
    })
}

/// A job body that logs failures (jobs are retried at their next run).
fn job<T>(name: &str, f: impl Fn() -> Result<T> + Send + Sync + 'static) -> JobFn {
    let name = name.to_owned();
    Arc::new(move || match f() {
        Ok(_) => {}
        Err(BackgroundError::Stopped) => warn!(job = %name, "stopped by shutdown"),
        Err(e) => error!(job = %name, error = %e, "background job failed"),
    })
}

/// Build the history manager, archiver, garbage collector, updater and telemetry sync, and
/// register their jobs on `scheduler`:
///
/// | job | schedule |
/// | --- | --- |
/// | `history_manager.aggregation` | `history_manager.aggregation_schedule` |
/// | `history_manager.datapoint_cleaning` | `history_manager.datapoint_cleaning_schedule` |
/// | `history_manager.snapshot_cleaning` | `history_manager.snapshot_cleaning.schedule` |
/// | `history_manager.datapoint_archivation` | `history_manager.datapoint_archivation.schedule` |
/// | `garbage_collector.ttl.<etype>` / `.weak.<etype>` | `garbage_collector.collection_rate` |
/// | `updater.batch` | `updater.update_batch_cron` |
/// | `updater.cache_management` | `updater.cache_management_cron` |
/// | `telemetry.sources_sync` | every 30 s |
/// | `telemetry.attribute_bson_sizes` | `telemetry.attribute_bson_size_schedule` |
///
/// Fails when a schedule is invalid, the archive directory cannot be created, or the
/// updater state cannot be loaded.
pub fn register_jobs(
    scheduler: &Scheduler,
    cfg: &Config,
    deps: BackgroundDeps,
) -> Result<Background> {
    let model = Arc::new(cfg.model.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let hm = &cfg.history_manager;
    let mut jobs = Vec::new();
    let mut add = |name: String, sched: CronSchedule, f: JobFn| {
        let id = scheduler.add(name.clone(), sched, f);
        jobs.push((id, name));
    };

    // Schedules first, so a bad one registers nothing.
    let s_aggregation = schedule("history_manager.aggregation", &hm.aggregation_schedule)?;
    let s_cleaning = schedule(
        "history_manager.datapoint_cleaning",
        &hm.datapoint_cleaning_schedule,
    )?;
    let s_snapshots = schedule(
        "history_manager.snapshot_cleaning",
        &hm.snapshot_cleaning.schedule,
    )?;
    let s_archive = schedule(
        "history_manager.datapoint_archivation",
        &hm.datapoint_archivation.schedule,
    )?;
    let s_gc = schedule("garbage_collector", &cfg.garbage_collector.collection_rate)?;
    let s_batch = schedule("updater.batch", &cfg.updater.update_batch_cron)?;
    let s_cache = schedule(
        "updater.cache_management",
        &cfg.updater.cache_management_cron,
    )?;
    let s_sizes = schedule(
        "telemetry.attribute_bson_sizes",
        &cfg.telemetry.attribute_bson_size_schedule,
    )?;
    let s_sync = CronSchedule::parse(&CronFields {
        second: Some("*/30".into()),
        ..Default::default()
    })
    .map_err(|e| BackgroundError::Schedule {
        job: "telemetry.sources_sync".into(),
        reason: e.to_string(),
    })?;

    if let Some(dir) = &hm.datapoint_archivation.archive_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| BackgroundError::io("cannot create archive directory", dir, e))?;
    }

    let history = Arc::new(HistoryManager {
        model: model.clone(),
        store: deps.store.clone(),
        clock: deps.clock.clone(),
        stop: stop.clone(),
    });
    let archiver = Arc::new(Archiver {
        model: model.clone(),
        store: deps.store.clone(),
        clock: deps.clock.clone(),
        older_than: hm.datapoint_archivation.older_than,
        archive_dir: hm.datapoint_archivation.archive_dir.clone(),
    });
    let gc = Arc::new(GarbageCollector {
        model: model.clone(),
        store: deps.store.clone(),
        submitter: deps.submitter.clone(),
        clock: deps.clock.clone(),
        stop: stop.clone(),
    });
    let updater = Arc::new(Updater::start(UpdaterDeps {
        model: model.clone(),
        store: deps.store.clone(),
        hooks: deps.updater_hooks,
        submitter: deps.submitter,
        clock: deps.clock,
        stop: stop.clone(),
        batch_period: cfg.updater.update_batch_period,
        cache_max_entries: usize::try_from(cfg.updater.cache_max_entries).unwrap_or(usize::MAX),
    })?);

    {
        let h = history.clone();
        add(
            "history_manager.aggregation".into(),
            s_aggregation,
            job("history_manager.aggregation", move || h.aggregate_all()),
        );
    }
    {
        let h = history.clone();
        add(
            "history_manager.datapoint_cleaning".into(),
            s_cleaning,
            job("history_manager.datapoint_cleaning", move || {
                h.clean_old_datapoints()
            }),
        );
    }
    {
        let h = history.clone();
        let older_than = hm.snapshot_cleaning.older_than;
        add(
            "history_manager.snapshot_cleaning".into(),
            s_snapshots,
            job("history_manager.snapshot_cleaning", move || {
                h.clean_old_snapshots(older_than)
            }),
        );
    }
    {
        let a = archiver.clone();
        add(
            "history_manager.datapoint_archivation".into(),
            s_archive,
            job("history_manager.datapoint_archivation", move || a.run()),
        );
    }
    for etype in gc.ttl_types() {
        let g = gc.clone();
        let name = format!("garbage_collector.ttl.{etype}");
        add(
            name.clone(),
            s_gc.clone(),
            job(&name, move || g.collect_ttl(&etype)),
        );
    }
    for etype in gc.weak_types() {
        let g = gc.clone();
        let name = format!("garbage_collector.weak.{etype}");
        add(
            name.clone(),
            s_gc.clone(),
            job(&name, move || g.collect_weak(&etype)),
        );
    }
    {
        let u = updater.clone();
        add(
            "updater.batch".into(),
            s_batch,
            job("updater.batch", move || u.run_batch()),
        );
    }
    {
        let u = updater.clone();
        add(
            "updater.cache_management".into(),
            s_cache,
            job("updater.cache_management", move || u.manage_cache()),
        );
    }
    {
        let t = deps.telemetry.clone();
        let store = deps.store.clone();
        add(
            "telemetry.sources_sync".into(),
            s_sync,
            job("telemetry.sources_sync", move || t.sync(&*store)),
        );
    }

    {
        let store = deps.store.clone();
        let m = model.clone();
        let clock = history.clock.clone();
        add(
            "telemetry.attribute_bson_sizes".into(),
            s_sizes,
            job("telemetry.attribute_bson_sizes", move || {
                super::telemetry::sweep_attribute_sizes(&m, &*store, &*clock)
            }),
        );
    }

    Ok(Background {
        history,
        archiver,
        gc,
        updater,
        telemetry: deps.telemetry,
        jobs,
        stop,
    })
}
