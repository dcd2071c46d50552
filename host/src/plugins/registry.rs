//! The hook registry: validated registrations in dispatch order, and the dispatch methods the
//! task executor, the snapshooter, the updater and the scheduler call.
//!
//! Every dispatch catches errors and panics (a failing hook never fails the task, core.md
//! §3.0), logs them with module and hook id, counts them per hook, and feeds the module's
//! circuit breaker. Tasks returned by hooks are checked against the model before they are
//! handed back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bson::{Bson, Document};
use dp3_model::{AttrType, DataPoint, DataPointTask, Eid, ModelSpec};
use dp3_plugin_api::hooks::{
    AllowHookFn, AttrHookFn, CorrelationFn, CreationHookFn, JobFn, PeriodicEidHookFn,
    PeriodicHookFn, RunHookFn, TaskHookFn, TimeseriesHookFn,
};
use dp3_plugin_api::{CronSchedule, Hook, HookError, HookResult, Refresh, Registration};
use indexmap::IndexMap;

use super::correlation::{DependencyGraph, resolve_path};
use super::stats::{BreakerSettings, HookId, HookStats, ModuleHealth, StatsTable};

/// Settings the registry validates and dispatches with.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// `updater.update_batch_period`: periodic hooks with a shorter period are rejected.
    pub update_batch_period: Option<Duration>,
    pub breaker: BreakerSettings,
}

/// A registration the registry refused. Other registrations are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("module {module}: {kind} hook '{name}' rejected: {reason}")]
pub struct RegistrationError {
    pub module: String,
    pub name: String,
    pub kind: &'static str,
    pub reason: String,
}

struct Entry<F> {
    id: HookId,
    stats: Arc<HookStats>,
    health: Arc<ModuleHealth>,
    f: F,
}

/// A resolved path: its destination `E.attr` and the links it traverses.
type Resolved = (String, Vec<(String, String)>);

type CorrFn =
    Arc<dyn Fn(&str, &mut Document, &Document) -> HookResult<Vec<DataPointTask>> + Send + Sync>;

struct CorrelationHook {
    graph_id: String,
    entity: String,
    entry: Entry<CorrFn>,
}

/// Hooks of one update thread `(period, entity, eid_only)` (core.md §6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdaterThread {
    pub period: Duration,
    pub entity: String,
    pub eid_only: bool,
    pub hook_ids: Vec<String>,
}

enum PeriodicFn {
    Record(PeriodicHookFn),
    Eid(PeriodicEidHookFn),
}

/// A scheduler job for the host's cron scheduler. `run` never panics and never fails: errors
/// are logged and counted; it returns the tasks to publish to the normal queue.
#[derive(Clone)]
pub struct SchedulerJob {
    pub module: String,
    pub name: String,
    pub job_id: u32,
    /// `None`: run once when the scheduler starts.
    pub schedule: Option<CronSchedule>,
    pub misfire_grace_time: Duration,
    pub run: Arc<dyn Fn() -> Vec<DataPointTask> + Send + Sync>,
}

/// One entity of a snapshot unit: its current values (with `eid`, without `record` keys)
/// and its master record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotEntity {
    pub values: Document,
    pub master: Document,
}

/// A snapshot unit: one linkless entity or one linked component, in insertion order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotUnit {
    pub entities: IndexMap<(String, Eid), SnapshotEntity>,
}

/// Per-module state shared by all hooks of a module generation.
struct ModuleState {
    health: Arc<ModuleHealth>,
    refresh: Arc<AtomicBool>,
}

/// Validated hooks in dispatch order. Immutable once built; reloads build a new one.
#[derive(Default)]
pub struct HookRegistry {
    model: Arc<ModelSpec>,
    stats: Arc<StatsTable>,
    modules: BTreeMap<String, ModuleState>,
    task_start: Vec<Entry<TaskHookFn>>,
    allow: HashMap<String, Vec<Entry<AllowHookFn>>>,
    creation: HashMap<String, Vec<Entry<CreationHookFn>>>,
    attr: HashMap<(String, String), Vec<Entry<AttrHookFn>>>,
    timeseries: HashMap<(String, String), Vec<Entry<TimeseriesHookFn>>>,
    graph: DependencyGraph,
    correlation: Vec<CorrelationHook>,
    /// Entity types with correlation hooks that take the master record.
    master_hooked: BTreeSet<String>,
    used_links: BTreeSet<(String, String)>,
    max_link_depth: usize,
    snapshot_init: Vec<Entry<RunHookFn>>,
    snapshot_finalize: Vec<Entry<RunHookFn>>,
    periodic: Vec<(UpdaterThread, Vec<Entry<PeriodicFn>>)>,
    jobs: Vec<(Entry<JobFn>, u32, Option<CronSchedule>, Duration)>,
}

/// Builds a [`HookRegistry`] from registrars, validating every registration.
pub struct HookRegistryBuilder {
    settings: RegistrySettings,
    reg: HookRegistry,
    names: BTreeSet<(String, &'static str, String, Vec<String>)>,
    errors: Vec<RegistrationError>,
}

fn family_of_attr(t: AttrType) -> &'static str {
    match t {
        AttrType::Plain => "on_new_plain",
        AttrType::Observations => "on_new_observation",
        AttrType::Timeseries => "on_new_ts_chunk",
    }
}

impl HookRegistryBuilder {
    pub fn new(model: Arc<ModelSpec>, settings: RegistrySettings) -> Self {
        Self::with_stats(model, settings, Arc::new(StatsTable::default()))
    }

    /// Share counters with earlier registry generations.
    pub fn with_stats(
        model: Arc<ModelSpec>,
        settings: RegistrySettings,
        stats: Arc<StatsTable>,
    ) -> Self {
        HookRegistryBuilder {
            settings,
            reg: HookRegistry {
                model,
                stats,
                ..HookRegistry::default()
            },
            names: BTreeSet::new(),
            errors: Vec::new(),
        }
    }

    /// Add a module's registrations (core hooks first, then modules in `enabled_modules`
    /// order). Returns the registrations that were rejected; the rest are added.
    pub fn add_module(
        &mut self,
        module: &str,
        registrations: Vec<Registration>,
    ) -> Vec<RegistrationError> {
        let state = self
            .reg
            .modules
            .entry(module.to_owned())
            .or_insert_with(|| ModuleState {
                health: Arc::new(ModuleHealth::new(module, self.settings.breaker)),
                refresh: Arc::new(AtomicBool::new(false)),
            });
        let health = Arc::clone(&state.health);
        let refresh = Arc::clone(&state.refresh);
        let mut errors = Vec::new();
        for r in registrations {
            let kind = r.hook.kind();
            if let Err(reason) = self.add(&health, &refresh, r.clone()) {
                let e = RegistrationError {
                    module: module.to_owned(),
                    name: r.name.clone(),
                    kind,
                    reason,
                };
                tracing::error!(module, hook = %r.name, "{e}");
                errors.push(e);
            }
        }
        self.errors.extend(errors.iter().cloned());
        errors
    }

    /// Finish; also returns every rejected registration.
    pub fn build(self) -> (HookRegistry, Vec<RegistrationError>) {
        for attr in self.reg.graph.multiply_changed() {
            tracing::warn!(
                "correlation hooks: several hooks may change {attr} (possible over-write)"
            );
        }
        (self.reg, self.errors)
    }

    fn entity_exists(&self, e: &str) -> Result<(), String> {
        if self.reg.model.entity(e).is_some() {
            Ok(())
        } else {
            Err(format!("Entity '{e}' does not exist"))
        }
    }

    fn claim(
        &mut self,
        r: &Registration,
        family: &'static str,
        context: Vec<String>,
    ) -> Result<HookId, String> {
        let key = (r.module.clone(), family, r.name.clone(), context.clone());
        if !self.names.insert(key) {
            return Err(format!(
                "a {family} hook named '{}' is already registered for ({})",
                r.name,
                context.join(",")
            ));
        }
        Ok(HookId {
            family,
            module: r.module.clone(),
            name: r.name.clone(),
            context,
        })
    }

    fn entry<F>(&self, id: HookId, health: &Arc<ModuleHealth>, f: F) -> Entry<F> {
        Entry {
            stats: self.reg.stats.get(&id),
            id,
            health: Arc::clone(health),
            f,
        }
    }

    fn add(
        &mut self,
        health: &Arc<ModuleHealth>,
        refresh_flag: &Arc<AtomicBool>,
        r: Registration,
    ) -> Result<(), String> {
        match r.hook.clone() {
            Hook::TaskStart(f) => {
                let id = self.claim(&r, "on_task_start", vec![])?;
                let e = self.entry(id, health, f);
                self.reg.task_start.push(e);
            }
            Hook::AllowEntityCreation { entity, hook } => {
                self.entity_exists(&entity)?;
                let id = self.claim(&r, "allow_entity_creation", vec![entity.clone()])?;
                let e = self.entry(id, health, hook);
                self.reg.allow.entry(entity).or_default().push(e);
            }
            Hook::OnEntityCreation {
                entity,
                refresh,
                hook,
            } => {
                self.entity_exists(&entity)?;
                let refresh_paths = self.refresh_paths(&entity, &refresh)?;
                let id = self.claim(&r, "on_entity_creation", vec![entity.clone()])?;
                if let Some(may_change) = refresh_paths {
                    let h = Arc::clone(&hook);
                    let wrapper: CorrFn =
                        Arc::new(move |etype: &str, values: &mut Document, _m: &Document| {
                            let eid = record_eid(values)?;
                            let synthetic = DataPointTask {
                                etype: etype.to_owned(),
                                eid: eid.clone(),
                                ..DataPointTask::default()
                            };
                            let tasks = h(&eid, &synthetic)?;
                            Ok(tasks)
                        });
                    self.add_refresh(
                        &r,
                        health,
                        refresh_flag,
                        &entity,
                        None,
                        vec![],
                        may_change,
                        wrapper,
                    )?;
                }
                let e = self.entry(id, health, hook);
                self.reg.creation.entry(entity).or_default().push(e);
            }
            Hook::OnNewAttr {
                entity,
                attr,
                refresh,
                hook,
            } => {
                self.entity_exists(&entity)?;
                let spec =
                    self.reg.model.attr(&entity, &attr).ok_or_else(|| {
                        format!("Attribute '{attr}' not found in entity '{entity}'")
                    })?;
                let family = family_of_attr(spec.attr_type());
                let refresh_paths = self.refresh_paths(&entity, &refresh)?;
                let id = self.claim(&r, family, vec![entity.clone(), attr.clone()])?;
                if let Some(may_change) = refresh_paths {
                    let h = Arc::clone(&hook);
                    let a = attr.clone();
                    let wrapper: CorrFn =
                        Arc::new(move |etype: &str, values: &mut Document, _m: &Document| {
                            let eid = record_eid(values)?;
                            // The refresh path has no incoming datapoint (core.md §3.5): the hook
                            // gets a synthetic one with a null value.
                            let synthetic = DataPoint {
                                etype: etype.to_owned(),
                                eid: eid.clone(),
                                attr: a.clone(),
                                src: None,
                                v: Bson::Null,
                                c: 1.0,
                                t1: None,
                                t2: None,
                            };
                            h(&eid, &synthetic)
                        });
                    let depends = vec![format!("{entity}.{attr}")];
                    self.add_refresh(
                        &r,
                        health,
                        refresh_flag,
                        &entity,
                        Some(&attr),
                        depends,
                        may_change,
                        wrapper,
                    )?;
                }
                let e = self.entry(id, health, hook);
                self.reg.attr.entry((entity, attr)).or_default().push(e);
            }
            Hook::Timeseries { entity, attr, hook } => {
                self.entity_exists(&entity)?;
                match self.reg.model.attr(&entity, &attr).map(|a| a.attr_type()) {
                    Some(AttrType::Timeseries) => {}
                    Some(t) => {
                        return Err(format!(
                            "Attribute '{attr}' of '{entity}' is {}, not timeseries",
                            t.name()
                        ));
                    }
                    None => {
                        return Err(format!("Attribute '{attr}' not found in entity '{entity}'"));
                    }
                }
                let id = self.claim(
                    &r,
                    "snapshot_timeseries",
                    vec![entity.clone(), attr.clone()],
                )?;
                let e = self.entry(id, health, hook);
                self.reg
                    .timeseries
                    .entry((entity, attr))
                    .or_default()
                    .push(e);
            }
            Hook::Correlation {
                entity,
                depends_on,
                may_change,
                hook,
            } => {
                self.entity_exists(&entity)?;
                let deps = self.resolve_all(&entity, &depends_on)?;
                let changes = self.resolve_all(&entity, &may_change)?;
                let (f, with_master): (CorrFn, bool) = match hook {
                    CorrelationFn::Values(h) => (
                        Arc::new(move |e: &str, v: &mut Document, _m: &Document| h(e, v)),
                        false,
                    ),
                    CorrelationFn::WithMaster(h) => (h, true),
                };
                self.add_correlation(&r, health, &entity, deps, changes, f, "")?;
                if with_master {
                    self.reg.master_hooked.insert(entity);
                }
            }
            Hook::SnapshotInit(f) => {
                let id = self.claim(&r, "snapshot_run_init", vec![])?;
                let e = self.entry(id, health, f);
                self.reg.snapshot_init.push(e);
            }
            Hook::SnapshotFinalize(f) => {
                let id = self.claim(&r, "snapshot_run_finalize", vec![])?;
                let e = self.entry(id, health, f);
                self.reg.snapshot_finalize.push(e);
            }
            Hook::PeriodicUpdate {
                entity,
                period,
                hook,
            } => {
                self.add_periodic(&r, health, entity, period, false, PeriodicFn::Record(hook))?;
            }
            Hook::PeriodicEidUpdate {
                entity,
                period,
                hook,
            } => {
                self.add_periodic(&r, health, entity, period, true, PeriodicFn::Eid(hook))?;
            }
            Hook::Scheduler {
                job_id,
                schedule,
                misfire_grace_time,
                job,
            } => {
                if let Some(s) = &schedule {
                    s.validate().map_err(|e| e.to_string())?;
                }
                let id = self.claim(&r, "scheduler", vec![job_id.to_string()])?;
                let e = self.entry(id, health, job);
                self.reg
                    .jobs
                    .push((e, job_id, schedule, misfire_grace_time));
            }
        }
        Ok(())
    }

    fn resolve_all(
        &mut self,
        entity: &str,
        paths: &[Vec<String>],
    ) -> Result<Vec<Resolved>, String> {
        paths
            .iter()
            .map(|p| resolve_path(&self.reg.model, entity, p).map(|r| (r.dest, r.used_links)))
            .collect()
    }

    fn refresh_paths(
        &mut self,
        entity: &str,
        refresh: &Refresh,
    ) -> Result<Option<Vec<Resolved>>, String> {
        match refresh {
            Refresh::Never => Ok(None),
            Refresh::OnConfigChange { may_change } => {
                if may_change.is_empty() {
                    return Err("refresh requires may_change paths".into());
                }
                self.resolve_all(entity, may_change).map(Some)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_correlation(
        &mut self,
        r: &Registration,
        health: &Arc<ModuleHealth>,
        entity: &str,
        deps: Vec<Resolved>,
        changes: Vec<Resolved>,
        f: CorrFn,
        suffix: &str,
    ) -> Result<(), String> {
        let dep_dests: Vec<String> = deps.iter().map(|d| d.0.clone()).collect();
        let change_dests: Vec<String> = changes.iter().map(|d| d.0.clone()).collect();
        // DP3's identity is `<callable>(<entity>, [deps], [changes])`; the callable is the
        // explicit `<module>.<name>` here (refresh wrappers get a `#refresh` suffix), so
        // distinct hooks never collide (core.md §3.5/§3.7.3 **[bug]**).
        let graph_id = format!(
            "{}.{}{suffix}({entity}, [{}], [{}])",
            r.module,
            r.name,
            dep_dests.join(", "),
            change_dests.join(", ")
        );
        self.reg
            .graph
            .add_hook(&graph_id, &dep_dests, &change_dests)?;
        let id = HookId {
            family: "snapshot_correlation",
            module: r.module.clone(),
            name: format!("{}{suffix}", r.name),
            context: vec![entity.to_owned()],
        };
        for (_, links) in deps.iter().chain(&changes) {
            self.reg.max_link_depth = self.reg.max_link_depth.max(links.len());
            self.reg.used_links.extend(links.iter().cloned());
        }
        let entry = self.entry(id, health, f);
        self.reg.correlation.push(CorrelationHook {
            graph_id,
            entity: entity.to_owned(),
            entry,
        });
        let graph = &self.reg.graph;
        self.reg
            .correlation
            .sort_by_key(|h| graph.position(&h.graph_id).unwrap_or(usize::MAX));
        Ok(())
    }

    /// Refresh wrapper (core.md §3.5): a correlation hook that re-runs the hook while the
    /// module's refresh flag is set and folds same-entity plain outputs into the snapshot,
    /// plus a finalize hook clearing the flag.
    #[allow(clippy::too_many_arguments)]
    fn add_refresh(
        &mut self,
        r: &Registration,
        health: &Arc<ModuleHealth>,
        flag: &Arc<AtomicBool>,
        entity: &str,
        attr: Option<&str>,
        depends: Vec<String>,
        may_change: Vec<Resolved>,
        hook: CorrFn,
    ) -> Result<(), String> {
        let model = Arc::clone(&self.reg.model);
        let f = Arc::clone(flag);
        let wrapper: CorrFn = Arc::new(
            move |etype: &str, values: &mut Document, master: &Document| {
                if !f.load(Ordering::Relaxed) {
                    return Ok(vec![]);
                }
                let eid = record_eid(values)?;
                let tasks = hook(etype, values, master)?;
                for dp in tasks.iter().flat_map(|t| &t.data_points) {
                    let plain = model
                        .attr(&dp.etype, &dp.attr)
                        .is_some_and(|a| a.attr_type() == AttrType::Plain);
                    if dp.eid == eid && plain {
                        values.insert(dp.attr.clone(), dp.v.clone());
                    }
                }
                Ok(tasks)
            },
        );
        let deps = depends.into_iter().map(|d| (d, vec![])).collect();
        self.add_correlation(r, health, entity, deps, may_change, wrapper, "#refresh")?;
        let mut context = vec![r.name.clone(), entity.to_owned()];
        context.extend(attr.map(str::to_owned));
        let id = HookId {
            family: "snapshot_run_finalize",
            module: r.module.clone(),
            name: format!("{}#refresh_reset", r.name),
            context,
        };
        let f = Arc::clone(flag);
        let reset: RunHookFn = Arc::new(move || {
            f.store(false, Ordering::Relaxed);
            Ok(vec![])
        });
        let e = self.entry(id, health, reset);
        self.reg.snapshot_finalize.push(e);
        Ok(())
    }

    fn add_periodic(
        &mut self,
        r: &Registration,
        health: &Arc<ModuleHealth>,
        entity: String,
        period: Duration,
        eid_only: bool,
        f: PeriodicFn,
    ) -> Result<(), String> {
        self.entity_exists(&entity)?;
        if let Some(batch) = self.settings.update_batch_period
            && period < batch
        {
            return Err(format!(
                "period {}s is shorter than updater.update_batch_period ({}s)",
                period.as_secs_f64(),
                batch.as_secs_f64()
            ));
        }
        if period.is_zero() {
            return Err("period must be positive".into());
        }
        let family = if eid_only {
            "periodic_eid_update"
        } else {
            "periodic_update"
        };
        let pos =
            self.reg.periodic.iter().position(|(t, _)| {
                t.period == period && t.entity == entity && t.eid_only == eid_only
            });
        if let Some(p) = pos
            && self.reg.periodic[p].0.hook_ids.contains(&r.name)
        {
            return Err(format!(
                "Hook ID {} already registered for {entity}",
                r.name
            ));
        }
        let ctx = vec![
            entity.clone(),
            r.name.clone(),
            format!("period={}s", period.as_secs_f64()),
        ];
        let id = self.claim(r, family, ctx)?;
        let e = self.entry(id, health, f);
        let idx = match pos {
            Some(p) => p,
            None => {
                self.reg.periodic.push((
                    UpdaterThread {
                        period,
                        entity,
                        eid_only,
                        hook_ids: vec![],
                    },
                    vec![],
                ));
                self.reg.periodic.len() - 1
            }
        };
        self.reg.periodic[idx].0.hook_ids.push(r.name.clone());
        self.reg.periodic[idx].1.push(e);
        Ok(())
    }
}

fn record_eid(values: &Document) -> HookResult<Eid> {
    values
        .get("eid")
        .and_then(Eid::from_bson)
        .ok_or_else(|| HookError::new("current values have no valid 'eid'"))
}

/// What a call produced, for the counters.
enum Outcome {
    Ok,
    Failed,
}

impl HookRegistry {
    /// An empty registry (no hooks) over `model`.
    pub fn empty(model: Arc<ModelSpec>) -> Self {
        HookRegistry {
            model,
            ..HookRegistry::default()
        }
    }

    pub fn model(&self) -> &Arc<ModelSpec> {
        &self.model
    }

    pub fn stats(&self) -> &Arc<StatsTable> {
        &self.stats
    }

    /// Modules disabled by the circuit breaker.
    pub fn disabled_modules(&self) -> Vec<String> {
        self.modules
            .iter()
            .filter(|(_, s)| s.health.is_disabled())
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// Set a module's refresh flag (`refresh_module_config`, core.md §4.5). Returns false
    /// for an unknown module.
    pub fn set_refresh(&self, module: &str) -> bool {
        match self.modules.get(module) {
            Some(s) => {
                s.refresh.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    pub fn refresh_pending(&self, module: &str) -> bool {
        self.modules
            .get(module)
            .is_some_and(|s| s.refresh.load(Ordering::Relaxed))
    }

    /// Links traversed by correlation-hook paths `(entity, relation attr)` (core.md §5.4).
    pub fn used_links(&self) -> &BTreeSet<(String, String)> {
        &self.used_links
    }

    /// Whether snapshot hooks of `etype` read master records: timeseries hooks, or
    /// correlation hooks registered with the master record. Without them the snapshooter
    /// skips building master records.
    pub fn needs_master(&self, etype: &str) -> bool {
        self.master_hooked.contains(etype) || self.timeseries.keys().any(|(e, _)| e == etype)
    }

    /// Ids of the correlation hooks in dispatch (topological) order.
    pub fn correlation_order(&self) -> Vec<String> {
        self.correlation
            .iter()
            .map(|h| h.graph_id.clone())
            .collect()
    }

    /// Run one hook: skip disabled modules, time it, catch panics, count and log failures.
    fn call<F, T>(&self, e: &Entry<F>, f: impl FnOnce(&F) -> HookResult<T>) -> Option<T> {
        if e.health.is_disabled() {
            return None;
        }
        e.stats.executions.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| f(&e.f)))
            .unwrap_or_else(|p| Err(HookError::from_panic(&*p)));
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        e.stats.duration_ns.fetch_add(ns, Ordering::Relaxed);
        match result {
            Ok(v) => Some(v),
            Err(err) => {
                self.failed(e, &err);
                None
            }
        }
    }

    fn failed<F>(&self, e: &Entry<F>, err: &HookError) {
        e.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.stats.module_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(module = %e.id.module, hook = %e.id, "hook failed: {err}");
        if err.panicked {
            e.stats.panics.fetch_add(1, Ordering::Relaxed);
            if e.health.record_panic() {
                tracing::error!(
                    module = %e.id.module,
                    "module disabled by the circuit breaker: it panicked too often; its hooks are skipped until it is reloaded"
                );
            }
        }
    }

    /// Count and check returned tasks; invalid ones are dropped and logged.
    fn accept<F>(
        &self,
        e: &Entry<F>,
        tasks: Vec<DataPointTask>,
        out: &mut Vec<DataPointTask>,
    ) -> Outcome {
        let mut outcome = Outcome::Ok;
        for t in tasks {
            let key = t.routing_key();
            match self.check_task(t) {
                Ok(t) => {
                    e.stats.created_tasks.fetch_add(1, Ordering::Relaxed);
                    out.push(t);
                }
                Err(reason) => {
                    e.stats.invalid_tasks.fetch_add(1, Ordering::Relaxed);
                    self.stats.module_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(module = %e.id.module, hook = %e.id, "hook returned an invalid task for {key}: {reason}");
                    outcome = Outcome::Failed;
                }
            }
        }
        outcome
    }

    /// Validate (and normalise) an output task against the model, as tasks from the API are.
    pub fn check_task(&self, t: DataPointTask) -> Result<DataPointTask, String> {
        dp3_model::validate::validate_task(&self.model, t, dp3_model::validate::EmptyTasks::Reject)
            .map_err(|e| e.to_string())
    }

    // ------------------------------------------------------------------ ingestion

    /// `on_task_start` hooks (core.md §3.1).
    pub fn on_task_start(&self, task: &DataPointTask) {
        for e in &self.task_start {
            self.call(e, |f| f(task));
        }
    }

    /// `allow_entity_creation` (core.md §3.2): false at the first hook returning false; a
    /// failing hook counts as "no objection".
    pub fn allow_entity_creation(&self, etype: &str, eid: &Eid, task: &DataPointTask) -> bool {
        for e in self.allow.get(etype).into_iter().flatten() {
            match self.call(e, |f| f(eid, task)) {
                Some(false) => {
                    e.stats.decisions_denied.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                Some(true) => {
                    e.stats.decisions_allowed.fetch_add(1, Ordering::Relaxed);
                }
                None => {}
            }
        }
        true
    }

    /// `on_entity_creation` hooks; returns their tasks (inline / priority queue).
    pub fn on_entity_creation(
        &self,
        etype: &str,
        eid: &Eid,
        task: &DataPointTask,
    ) -> Vec<DataPointTask> {
        let mut out = Vec::new();
        for e in self.creation.get(etype).into_iter().flatten() {
            if let Some(tasks) = self.call(e, |f| f(eid, task)) {
                self.accept(e, tasks, &mut out);
            }
        }
        out
    }

    /// Whether any `on_new_attr` hook is registered for `etype.attr` (lets the executor skip
    /// work for attributes nobody listens to).
    pub fn has_attr_hooks(&self, etype: &str, attr: &str) -> bool {
        // Called per datapoint: a borrowed scan of the few hooked attributes instead of
        // allocating an owned key for a map lookup.
        self.attr.keys().any(|(e, a)| e == etype && a == attr)
    }

    /// `on_new_attr` hooks of `etype.attr` for one datapoint.
    pub fn on_new_attr(
        &self,
        etype: &str,
        attr: &str,
        eid: &Eid,
        dp: &DataPoint,
    ) -> Vec<DataPointTask> {
        let mut out = Vec::new();
        // Borrowed lookup without allocating the key for the common "no hooks" case.
        let Some(hooks) = self
            .attr
            .iter()
            .find(|((e, a), _)| e == etype && a == attr)
            .map(|(_, h)| h)
        else {
            return out;
        };
        for e in hooks {
            if let Some(tasks) = self.call(e, |f| f(eid, dp)) {
                self.accept(e, tasks, &mut out);
            }
        }
        out
    }

    // ------------------------------------------------------------------ snapshots

    /// Timeseries hooks for every hooked timeseries attribute present in `master`
    /// (core.md §3.6). Returns their tasks (normal queue).
    pub fn run_timeseries_hooks(&self, etype: &str, master: &Document) -> Vec<DataPointTask> {
        let mut out = Vec::new();
        for ((e_type, attr), hooks) in &self.timeseries {
            if e_type != etype {
                continue;
            }
            let Some(Bson::Array(items)) = master.get(attr) else {
                continue;
            };
            let history: Vec<Document> = items
                .iter()
                .filter_map(|i| i.as_document().cloned())
                .collect();
            for e in hooks {
                if let Some(tasks) = self.call(e, |f| f(etype, attr, &history)) {
                    self.accept(e, tasks, &mut out);
                }
            }
        }
        out
    }

    /// Correlation hooks over a snapshot unit (core.md §3.7.5): hook-major in topological
    /// order, entity-minor in unit order. Each hook sees its entity's current values with
    /// linked `record`s (current values of unit members, or `{eid}` stubs) attached to used
    /// links; mutations of the entity and of linked records are written back into the unit,
    /// so later hooks see them (core.md E-22). Returns the tasks (normal queue).
    pub fn run_correlation_hooks(&self, unit: &mut SnapshotUnit) -> Vec<DataPointTask> {
        let mut out = Vec::new();
        let present: BTreeSet<String> = unit.entities.keys().map(|(e, _)| e.clone()).collect();
        let keys: Vec<(String, Eid)> = unit.entities.keys().cloned().collect();
        for hook in &self.correlation {
            if !present.contains(&hook.entity) {
                continue;
            }
            for key in keys.iter().filter(|(e, _)| *e == hook.entity) {
                let Some(entity) = unit.entities.get(key) else {
                    continue;
                };
                let master = entity.master.clone();
                let mut embedded = Vec::new();
                let mut values = self.with_records(unit, key, self.max_link_depth, &mut embedded);
                let before = values.clone();
                let result = self.call(&hook.entry, |f| f(&key.0, &mut values, &master));
                if values != before {
                    self.write_back(unit, key, values, &embedded);
                }
                if let Some(tasks) = result {
                    self.accept(&hook.entry, tasks, &mut out);
                }
            }
        }
        out
    }

    /// Current values of `key` with linked records attached along used links, `depth` levels
    /// deep. Records the `(path, target key)` of every attached record in `embedded`.
    fn with_records(
        &self,
        unit: &SnapshotUnit,
        key: &(String, Eid),
        depth: usize,
        embedded: &mut Vec<(Vec<String>, (String, Eid))>,
    ) -> Document {
        fn attach(
            reg: &HookRegistry,
            unit: &SnapshotUnit,
            etype: &str,
            doc: &mut Document,
            depth: usize,
            prefix: &[String],
            embedded: &mut Vec<(Vec<String>, (String, Eid))>,
        ) {
            if depth == 0 {
                return;
            }
            for (e, attr) in &reg.used_links {
                if e != etype {
                    continue;
                }
                let Some(target) = reg
                    .model
                    .attr(etype, attr)
                    .and_then(|a| a.data_type())
                    .and_then(|d| d.link_target())
                else {
                    continue;
                };
                let link_one = |link: &mut Document, path: Vec<String>, embedded: &mut Vec<_>| {
                    let Some(eid) = link.get("eid").and_then(Eid::from_bson) else {
                        return;
                    };
                    let tkey = (target.to_owned(), eid.clone());
                    let record = match unit.entities.get(&tkey) {
                        Some(t) => {
                            let mut r = t.values.clone();
                            let mut p = path.clone();
                            p.push("record".into());
                            attach(reg, unit, target, &mut r, depth - 1, &p, embedded);
                            embedded.push((p, tkey));
                            r
                        }
                        None => bson::doc! {"eid": eid.to_bson()},
                    };
                    link.insert("record", record);
                };
                let mut path = prefix.to_vec();
                path.push(attr.clone());
                match doc.get_mut(attr) {
                    Some(Bson::Document(link)) => link_one(link, path, embedded),
                    Some(Bson::Array(links)) => {
                        for (i, l) in links.iter_mut().enumerate() {
                            if let Bson::Document(link) = l {
                                let mut p = path.clone();
                                p.push(i.to_string());
                                link_one(link, p, embedded);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut doc = unit
            .entities
            .get(key)
            .map(|e| e.values.clone())
            .unwrap_or_default();
        attach(self, unit, &key.0, &mut doc, depth, &[], embedded);
        doc
    }

    /// Write a hook's mutations back: changed linked records (deepest first) into their
    /// entities, then the entity itself; `record` keys are stripped.
    fn write_back(
        &self,
        unit: &mut SnapshotUnit,
        key: &(String, Eid),
        mut values: Document,
        embedded: &[(Vec<String>, (String, Eid))],
    ) {
        let mut by_depth: Vec<&(Vec<String>, (String, Eid))> = embedded.iter().collect();
        by_depth.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        for (path, target) in by_depth {
            if target == key {
                continue;
            }
            if let Some(rec) = get_path(&values, path) {
                let rec = strip_records(rec.clone(), &self.used_links, &target.0, &self.model);
                if let Some(t) = unit.entities.get_mut(target)
                    && t.values != rec
                {
                    t.values = rec;
                }
            }
        }
        values = strip_records(values, &self.used_links, &key.0, &self.model);
        if let Some(e) = unit.entities.get_mut(key) {
            e.values = values;
        }
    }

    /// Snapshot init hooks (core.md §3.8); returns their tasks (normal queue).
    pub fn snapshot_init(&self) -> Vec<DataPointTask> {
        self.run_list(&self.snapshot_init)
    }

    /// Snapshot finalize hooks, including refresh-flag resets.
    pub fn snapshot_finalize(&self) -> Vec<DataPointTask> {
        self.run_list(&self.snapshot_finalize)
    }

    fn run_list(&self, list: &[Entry<RunHookFn>]) -> Vec<DataPointTask> {
        let mut out = Vec::new();
        for e in list {
            if let Some(tasks) = self.call(e, |f| f()) {
                self.accept(e, tasks, &mut out);
            }
        }
        out
    }

    // ------------------------------------------------------------------ updater & scheduler

    /// The update threads `(period, entity, eid_only)` with their hook ids (core.md §6.1).
    pub fn updater_threads(&self) -> Vec<UpdaterThread> {
        self.periodic.iter().map(|(t, _)| t.clone()).collect()
    }

    /// Run the record hooks of one update thread for one entity.
    pub fn run_periodic_update(
        &self,
        period: Duration,
        etype: &str,
        eid: &Eid,
        master: &Document,
    ) -> Vec<DataPointTask> {
        self.run_periodic(period, etype, false, |f| match f {
            PeriodicFn::Record(h) => h(etype, eid, master),
            PeriodicFn::Eid(_) => Ok(vec![]),
        })
    }

    /// Run the eid-only hooks of one update thread for one entity.
    pub fn run_periodic_eid_update(
        &self,
        period: Duration,
        etype: &str,
        eid: &Eid,
    ) -> Vec<DataPointTask> {
        self.run_periodic(period, etype, true, |f| match f {
            PeriodicFn::Eid(h) => h(etype, eid),
            PeriodicFn::Record(_) => Ok(vec![]),
        })
    }

    fn run_periodic(
        &self,
        period: Duration,
        etype: &str,
        eid_only: bool,
        call: impl Fn(&PeriodicFn) -> HookResult<Vec<DataPointTask>>,
    ) -> Vec<DataPointTask> {
        let mut out = Vec::new();
        for (t, hooks) in &self.periodic {
            if t.period != period || t.entity != etype || t.eid_only != eid_only {
                continue;
            }
            for e in hooks {
                if let Some(tasks) = self.call(e, &call) {
                    self.accept(e, tasks, &mut out);
                }
            }
        }
        out
    }

    /// Scheduler jobs of all modules, for the host's cron scheduler.
    pub fn scheduler_jobs(self: &Arc<Self>) -> Vec<SchedulerJob> {
        self.jobs
            .iter()
            .enumerate()
            .map(|(i, (e, job_id, schedule, grace))| {
                let reg = Arc::clone(self);
                SchedulerJob {
                    module: e.id.module.clone(),
                    name: e.id.name.clone(),
                    job_id: *job_id,
                    schedule: schedule.clone(),
                    misfire_grace_time: *grace,
                    run: Arc::new(move || {
                        let mut out = Vec::new();
                        if let Some((e, ..)) = reg.jobs.get(i)
                            && let Some(tasks) = reg.call(e, |f| f())
                        {
                            reg.accept(e, tasks, &mut out);
                        }
                        out
                    }),
                }
            })
            .collect()
    }
}

fn get_path<'a>(doc: &'a Document, path: &[String]) -> Option<&'a Document> {
    let (first, rest) = path.split_first()?;
    let mut cur: &Bson = doc.get(first)?;
    for step in rest {
        cur = match cur {
            Bson::Document(d) => d.get(step)?,
            Bson::Array(a) => a.get(step.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    cur.as_document()
}

/// Remove `record` keys from the used-link values of a document.
fn strip_records(
    mut doc: Document,
    used: &BTreeSet<(String, String)>,
    etype: &str,
    _model: &ModelSpec,
) -> Document {
    for (e, attr) in used {
        if e != etype {
            continue;
        }
        match doc.get_mut(attr) {
            Some(Bson::Document(link)) => {
                link.remove("record");
            }
            Some(Bson::Array(links)) => {
                for l in links.iter_mut() {
                    if let Bson::Document(link) = l {
                        link.remove("record");
                    }
                }
            }
            _ => {}
        }
    }
    doc
}
