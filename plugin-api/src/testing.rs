//! The module-testing harness (feature `testing`; core.md §9): run a module's hooks without a
//! host, against the application's real configuration directory and entity model.
//!
//! ```ignore
//! use dp3_plugin_api::testing::*;
//!
//! #[test]
//! fn derives_category() {
//!     let t = ModuleTest::new::<MyModule>("my_module").unwrap(); // uses DP3_CONFIG_DIR
//!     t.assert_registered("on_new_attr", Some("ip"), Some("open_ports"));
//!     let dp = t.make_observation_datapoint("ip", "192.0.2.1", "open_ports", 22.into(), None).unwrap();
//!     let tasks = t.run_on_new_attr("ip", "open_ports", &dp.eid, &dp).unwrap();
//!     assert_datapoint(&tasks, &DpMatch::attr("category").v("server"));
//! }
//! ```
//!
//! Unlike the host, runners propagate hook errors (a panic in a hook fails the test), no
//! telemetry is kept, and returned tasks are not processed further.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::{Bson, Document};
use chrono::{DateTime, Utc};
use dp3_model::spec::AttrKind;
use dp3_model::validate::{EmptyTasks, validate_task};
use dp3_model::{DataPoint, DataPointTask, Eid, ModelSpec};

use crate::correlation::{DependencyGraph, resolve_path};
use crate::error::HookResult;
use crate::hooks::{CorrelationFn, Hook, Registration};
use crate::module::{Module, ModuleInstance, PlatformConfig, instantiate};
use crate::services::{HostServices, LogLevel};

/// The environment variable naming the configuration directory.
pub const CONFIG_ENV_VAR: &str = "DP3_CONFIG_DIR";

/// Setting up a module test failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TestError(pub String);

/// Log lines and metrics a module reported during a test.
#[derive(Debug, Default)]
pub struct CapturedServices {
    pub logs: Mutex<Vec<(LogLevel, String)>>,
    pub counters: Mutex<Vec<(String, u64)>>,
}

impl HostServices for CapturedServices {
    fn log(&self, _module: &str, level: LogLevel, message: &str) {
        if let Ok(mut l) = self.logs.lock() {
            l.push((level, message.to_owned()));
        }
    }
    fn counter(&self, _module: &str, name: &str, value: u64) {
        if let Ok(mut c) = self.counters.lock() {
            c.push((name.to_owned(), value));
        }
    }
    fn gauge(&self, _: &str, _: &str, _: f64) {}
}

/// A module instantiated against a real configuration directory.
pub struct ModuleTest {
    pub config_dir: PathBuf,
    pub model: Arc<ModelSpec>,
    pub platform: PlatformConfig,
    pub module: ModuleInstance,
    pub services: Arc<CapturedServices>,
    /// `updater.update_batch_period`, when the configuration has one.
    pub update_batch_period: Option<Duration>,
}

/// Resolve the configuration directory: the explicit one, else `$DP3_CONFIG_DIR`.
pub fn resolve_config_dir(explicit: Option<&Path>) -> Result<PathBuf, TestError> {
    let dir = match explicit {
        Some(d) => d.to_owned(),
        None => std::env::var_os(CONFIG_ENV_VAR)
            .map(PathBuf::from)
            .ok_or_else(|| {
                TestError(format!(
                    "no configuration directory: pass one explicitly or set {CONFIG_ENV_VAR}"
                ))
            })?,
    };
    std::path::absolute(&dir).map_err(|e| TestError(format!("{}: {e}", dir.display())))
}

impl ModuleTest {
    /// Instantiate `M` as module `name` with the configuration directory from
    /// `$DP3_CONFIG_DIR` and its `modules/<name>.yml` configuration.
    pub fn new<M: Module>(name: &str) -> Result<Self, TestError> {
        Self::with_config_dir::<M>(name, None, None)
    }

    /// Explicit configuration directory and/or module configuration (JSON; overrides
    /// `modules/<name>.yml`).
    pub fn with_config_dir<M: Module>(
        name: &str,
        config_dir: Option<&Path>,
        module_config: Option<serde_json::Value>,
    ) -> Result<Self, TestError> {
        let config_dir = resolve_config_dir(config_dir)?;
        let config = dp3_model::config::load_config_dir(&config_dir)
            .map_err(|e| TestError(format!("configuration in {}: {e}", config_dir.display())))?;
        let module_config = match module_config {
            Some(c) => c,
            None => config.module_config(name),
        };
        let platform = PlatformConfig {
            app_name: "test".into(),
            config_dir: config_dir.clone(),
            num_processes: config.processing_core.worker_processes,
            process_index: 0,
        };
        let model = Arc::new(config.model.clone());
        let services = Arc::new(CapturedServices::default());
        let module = instantiate::<M>(
            name,
            &module_config.to_string(),
            platform.clone(),
            Some(Arc::clone(&model)),
            services.clone(),
        )
        .map_err(|e| TestError(e.message))?;
        let update_batch_period = config.updater.update_batch_period.to_std().ok();
        Ok(ModuleTest {
            config_dir,
            model,
            platform,
            module,
            services,
            update_batch_period,
        })
    }

    pub fn registrations(&self) -> &[Registration] {
        self.module.registrar.registrations()
    }

    /// Registrations of `kind` (`"on_new_attr"`, `"correlation"`, ...; `None` = any) matching
    /// the given entity and attribute (`None` = any).
    pub fn registered(
        &self,
        kind: Option<&str>,
        entity: Option<&str>,
        attr: Option<&str>,
    ) -> Vec<&Registration> {
        self.registrations()
            .iter()
            .filter(|r| kind.is_none_or(|k| r.hook.kind() == k))
            .filter(|r| entity.is_none_or(|e| r.hook.entity() == Some(e)))
            .filter(|r| attr.is_none_or(|a| r.hook.attr() == Some(a)))
            .collect()
    }

    #[track_caller]
    pub fn assert_registered(&self, kind: &str, entity: Option<&str>, attr: Option<&str>) {
        assert!(
            !self.registered(Some(kind), entity, attr).is_empty(),
            "no {kind} hook registered for entity {entity:?}, attr {attr:?}; registrations: {:?}",
            self.registrations()
        );
    }

    #[track_caller]
    pub fn assert_registered_once(&self, kind: &str, entity: Option<&str>, attr: Option<&str>) {
        let n = self.registered(Some(kind), entity, attr).len();
        assert_eq!(
            n, 1,
            "expected one {kind} hook for entity {entity:?}, attr {attr:?}, found {n}"
        );
    }

    /// Check every registration the way the host does (entity/attribute existence, paths,
    /// cron fields, periods) and return the problems.
    pub fn validation_errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut graph = DependencyGraph::default();
        for r in self.registrations() {
            let mut check = |res: Result<(), String>| {
                if let Err(e) = res {
                    errors.push(format!("{} '{}': {e}", r.hook.kind(), r.name));
                }
            };
            if let Some(e) = r.hook.entity() {
                check(
                    self.model
                        .entity(e)
                        .map(|_| ())
                        .ok_or_else(|| format!("Entity '{e}' does not exist")),
                );
                if let Some(a) = r.hook.attr() {
                    check(
                        self.model
                            .attr(e, a)
                            .map(|_| ())
                            .ok_or_else(|| format!("Attribute '{a}' not found in entity '{e}'")),
                    );
                }
            }
            match &r.hook {
                Hook::Correlation {
                    entity,
                    depends_on,
                    may_change,
                    ..
                } => {
                    let resolve = |ps: &Vec<Vec<String>>| -> Result<Vec<String>, String> {
                        ps.iter()
                            .map(|p| resolve_path(&self.model, entity, p).map(|r| r.dest))
                            .collect()
                    };
                    check(resolve(depends_on).and_then(|d| {
                        let m = resolve(may_change)?;
                        graph.add_hook(&format!("{}({entity})", r.name), &d, &m)
                    }));
                }
                Hook::Scheduler {
                    schedule: Some(s), ..
                } => check(s.validate().map_err(|e| e.to_string())),
                Hook::PeriodicUpdate { period, .. } | Hook::PeriodicEidUpdate { period, .. } => {
                    if let Some(b) = self.update_batch_period
                        && *period < b
                    {
                        check(Err(format!(
                            "period {period:?} is shorter than update_batch_period {b:?}"
                        )));
                    }
                }
                _ => {}
            }
        }
        errors
    }

    // ------------------------------------------------------------------ factories

    /// Parse an eid with the entity type's id type.
    pub fn eid(&self, etype: &str, eid: &str) -> Result<Eid, TestError> {
        let ty = self
            .model
            .entity(etype)
            .ok_or_else(|| TestError(format!("entity type '{etype}' does not exist")))?
            .spec
            .id_data_type;
        Eid::parse(ty, eid).map_err(|e| TestError(format!("eid '{eid}' of '{etype}': {e}")))
    }

    /// A task validated against the model (an empty task is an error, as in DP3).
    pub fn make_task(
        &self,
        etype: &str,
        eid: &str,
        data_points: Vec<DataPoint>,
    ) -> Result<DataPointTask, TestError> {
        let task = DataPointTask {
            etype: etype.into(),
            eid: self.eid(etype, eid)?,
            data_points,
            ..DataPointTask::default()
        };
        validate_task(&self.model, task, EmptyTasks::Reject).map_err(|e| TestError(e.to_string()))
    }

    fn make_dp(
        &self,
        etype: &str,
        eid: &str,
        attr: &str,
        v: Bson,
        t1: Option<DateTime<Utc>>,
        t2: Option<DateTime<Utc>>,
    ) -> Result<DataPoint, TestError> {
        let dp = DataPoint {
            etype: etype.into(),
            eid: self.eid(etype, eid)?,
            attr: attr.into(),
            src: Some("test".into()),
            v,
            c: 1.0,
            t1,
            t2,
        };
        let task = self.make_task(etype, eid, vec![dp])?;
        task.data_points
            .into_iter()
            .next()
            .ok_or_else(|| TestError("datapoint vanished".into()))
    }

    pub fn make_plain_datapoint(
        &self,
        etype: &str,
        eid: &str,
        attr: &str,
        v: Bson,
    ) -> Result<DataPoint, TestError> {
        self.make_dp(etype, eid, attr, v, None, None)
    }

    /// An observation; `t1` defaults to now, `t2` to `t1`.
    pub fn make_observation_datapoint(
        &self,
        etype: &str,
        eid: &str,
        attr: &str,
        v: Bson,
        t1: Option<DateTime<Utc>>,
    ) -> Result<DataPoint, TestError> {
        let t1 = t1.unwrap_or_else(Utc::now);
        self.make_dp(etype, eid, attr, v, Some(t1), Some(t1))
    }

    /// A timeseries chunk `{series: [...]}`; for regular series `t2 = t1 + n * time_step`.
    pub fn make_timeseries_datapoint(
        &self,
        etype: &str,
        eid: &str,
        attr: &str,
        v: Document,
        t1: Option<DateTime<Utc>>,
    ) -> Result<DataPoint, TestError> {
        let spec = self.model.attr(etype, attr).ok_or_else(|| {
            TestError(format!("Attribute '{attr}' not found in entity '{etype}'"))
        })?;
        let AttrKind::Timeseries {
            timeseries_params, ..
        } = &spec.kind
        else {
            return Err(TestError(format!(
                "'{etype}.{attr}' is not a timeseries attribute"
            )));
        };
        let n = v
            .values()
            .next()
            .and_then(|s| s.as_array())
            .map(Vec::len)
            .ok_or_else(|| TestError("empty timeseries value".into()))?;
        let t1 = t1.unwrap_or_else(Utc::now);
        let t2 = match timeseries_params.time_step {
            Some(step) => {
                t1 + step * i32::try_from(n).map_err(|_| TestError("series too long".into()))?
            }
            None => t1,
        };
        self.make_dp(etype, eid, attr, Bson::Document(v), Some(t1), Some(t2))
    }

    // ------------------------------------------------------------------ runners

    fn hooks(&self) -> impl Iterator<Item = &Hook> {
        self.registrations().iter().map(|r| &r.hook)
    }

    pub fn run_task_hooks(&self, task: &DataPointTask) -> HookResult<()> {
        for h in self.hooks() {
            if let Hook::TaskStart(f) = h {
                f(task)?;
            }
        }
        Ok(())
    }

    fn synthetic(&self, etype: &str, eid: &Eid) -> DataPointTask {
        DataPointTask {
            etype: etype.into(),
            eid: eid.clone(),
            ..DataPointTask::default()
        }
    }

    /// AND of the admission hooks, stopping at the first `false`.
    pub fn run_allow_entity_creation(
        &self,
        etype: &str,
        eid: &Eid,
        task: Option<&DataPointTask>,
    ) -> HookResult<bool> {
        let synthetic = self.synthetic(etype, eid);
        let task = task.unwrap_or(&synthetic);
        for h in self.hooks() {
            if let Hook::AllowEntityCreation { entity, hook } = h
                && entity == etype
                && !hook(eid, task)?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub fn run_on_entity_creation(
        &self,
        etype: &str,
        eid: &Eid,
        task: Option<&DataPointTask>,
    ) -> HookResult<Vec<DataPointTask>> {
        let synthetic = self.synthetic(etype, eid);
        let task = task.unwrap_or(&synthetic);
        let mut out = Vec::new();
        for h in self.hooks() {
            if let Hook::OnEntityCreation { entity, hook, .. } = h
                && entity == etype
            {
                out.extend(hook(eid, task)?);
            }
        }
        Ok(out)
    }

    pub fn run_on_new_attr(
        &self,
        etype: &str,
        attr: &str,
        eid: &Eid,
        dp: &DataPoint,
    ) -> HookResult<Vec<DataPointTask>> {
        let mut out = Vec::new();
        for h in self.hooks() {
            if let Hook::OnNewAttr {
                entity,
                attr: a,
                hook,
                ..
            } = h
                && entity == etype
                && a == attr
            {
                out.extend(hook(eid, dp)?);
            }
        }
        Ok(out)
    }

    pub fn run_timeseries_hook(
        &self,
        etype: &str,
        attr: &str,
        history: &[Document],
    ) -> HookResult<Vec<DataPointTask>> {
        let mut out = Vec::new();
        for h in self.hooks() {
            if let Hook::Timeseries {
                entity,
                attr: a,
                hook,
            } = h
                && entity == etype
                && a == attr
            {
                out.extend(hook(etype, attr, history)?);
            }
        }
        Ok(out)
    }

    /// The correlation hooks of `etype` on `record` (which must contain `eid`), in
    /// topological order; `record` is mutated in place. Linked `record`s are not filled in:
    /// tests put them into the links themselves.
    pub fn run_correlation_hooks(
        &self,
        etype: &str,
        record: &mut Document,
        master: Option<&Document>,
    ) -> HookResult<Vec<DataPointTask>> {
        if !record.contains_key("eid") {
            return Err(crate::HookError::new("the record must contain 'eid'"));
        }
        let empty = Document::new();
        let master = master.unwrap_or(&empty);
        let mut graph = DependencyGraph::default();
        let mut hooks = Vec::new();
        for r in self.registrations() {
            if let Hook::Correlation {
                entity,
                depends_on,
                may_change,
                hook,
            } = &r.hook
            {
                let resolve = |ps: &Vec<Vec<String>>| -> Result<Vec<String>, String> {
                    ps.iter()
                        .map(|p| resolve_path(&self.model, entity, p).map(|r| r.dest))
                        .collect()
                };
                let id = format!("{}({entity})", r.name);
                let d = resolve(depends_on).map_err(crate::HookError::new)?;
                let m = resolve(may_change).map_err(crate::HookError::new)?;
                graph.add_hook(&id, &d, &m).map_err(crate::HookError::new)?;
                if entity == etype {
                    hooks.push((id, hook));
                }
            }
        }
        hooks.sort_by_key(|(id, _)| graph.position(id));
        let mut out = Vec::new();
        for (_, hook) in hooks {
            out.extend(match hook {
                CorrelationFn::Values(f) => f(etype, record)?,
                CorrelationFn::WithMaster(f) => f(etype, record, master)?,
            });
        }
        Ok(out)
    }

    pub fn run_snapshot_init_hooks(&self) -> HookResult<Vec<DataPointTask>> {
        let mut out = Vec::new();
        for h in self.hooks() {
            if let Hook::SnapshotInit(f) = h {
                out.extend(f()?);
            }
        }
        Ok(out)
    }

    pub fn run_snapshot_finalize_hooks(&self) -> HookResult<Vec<DataPointTask>> {
        let mut out = Vec::new();
        for h in self.hooks() {
            if let Hook::SnapshotFinalize(f) = h {
                out.extend(f()?);
            }
        }
        Ok(out)
    }

    /// All record-periodic hooks of `etype` (any period), or only `hook_id`.
    pub fn run_periodic_update(
        &self,
        etype: &str,
        eid: &Eid,
        master: &Document,
        hook_id: Option<&str>,
    ) -> HookResult<Vec<DataPointTask>> {
        let mut out = Vec::new();
        for r in self.registrations() {
            if let Hook::PeriodicUpdate { entity, hook, .. } = &r.hook
                && entity == etype
                && hook_id.is_none_or(|id| id == r.name)
            {
                out.extend(hook(etype, eid, master)?);
            }
        }
        Ok(out)
    }

    pub fn run_periodic_eid_update(
        &self,
        etype: &str,
        eid: &Eid,
        hook_id: Option<&str>,
    ) -> HookResult<Vec<DataPointTask>> {
        let mut out = Vec::new();
        for r in self.registrations() {
            if let Hook::PeriodicEidUpdate { entity, hook, .. } = &r.hook
                && entity == etype
                && hook_id.is_none_or(|id| id == r.name)
            {
                out.extend(hook(etype, eid)?);
            }
        }
        Ok(out)
    }

    /// Run a scheduler job by registration name.
    pub fn run_scheduler_job(&self, name: &str) -> HookResult<Vec<DataPointTask>> {
        for r in self.registrations() {
            if let Hook::Scheduler { job, .. } = &r.hook
                && r.name == name
            {
                return job();
            }
        }
        Err(crate::HookError::new(format!(
            "no scheduler job named '{name}'"
        )))
    }
}

// ------------------------------------------------------------------ output assertions

/// Partial match: for documents only the expected keys are compared (recursively); other
/// values by equality, with ints of different widths and floats compared numerically.
pub fn matches_partial(actual: &Bson, expected: &Bson) -> bool {
    match (actual, expected) {
        (Bson::Document(a), Bson::Document(e)) => e
            .iter()
            .all(|(k, ev)| a.get(k).is_some_and(|av| matches_partial(av, ev))),
        (a, e) => match (dp3_model::value::as_f64(a), dp3_model::value::as_f64(e)) {
            (Some(x), Some(y)) => x == y,
            _ => a == e,
        },
    }
}

/// Expected fields of a datapoint (unset = any).
#[derive(Debug, Clone, Default)]
pub struct DpMatch {
    pub etype: Option<String>,
    pub eid: Option<Eid>,
    pub attr: Option<String>,
    pub src: Option<String>,
    pub v: Option<Bson>,
    pub c: Option<f64>,
}

impl DpMatch {
    pub fn attr(attr: &str) -> Self {
        DpMatch {
            attr: Some(attr.into()),
            ..Default::default()
        }
    }
    pub fn v(mut self, v: impl Into<Bson>) -> Self {
        self.v = Some(v.into());
        self
    }
    pub fn eid(mut self, eid: Eid) -> Self {
        self.eid = Some(eid);
        self
    }
    pub fn etype(mut self, etype: &str) -> Self {
        self.etype = Some(etype.into());
        self
    }

    pub fn matches(&self, dp: &DataPoint) -> bool {
        self.etype.as_ref().is_none_or(|e| *e == dp.etype)
            && self.eid.as_ref().is_none_or(|e| *e == dp.eid)
            && self.attr.as_ref().is_none_or(|a| *a == dp.attr)
            && self.src.as_ref().is_none_or(|s| dp.src.as_ref() == Some(s))
            && self.v.as_ref().is_none_or(|v| matches_partial(&dp.v, v))
            && self.c.is_none_or(|c| c == dp.c)
    }
}

#[track_caller]
pub fn assert_no_tasks(tasks: &[DataPointTask]) {
    assert!(tasks.is_empty(), "expected no tasks, got {tasks:#?}");
}

/// No task carries datapoints (TTL-only and delete tasks are allowed).
#[track_caller]
pub fn assert_no_datapoints(tasks: &[DataPointTask]) {
    assert!(
        tasks.iter().all(|t| t.data_points.is_empty()),
        "expected no datapoints, got {tasks:#?}"
    );
}

/// The first datapoint matching `m`.
#[track_caller]
pub fn assert_datapoint<'a>(tasks: &'a [DataPointTask], m: &DpMatch) -> &'a DataPoint {
    tasks
        .iter()
        .flat_map(|t| &t.data_points)
        .find(|dp| m.matches(dp))
        .unwrap_or_else(|| panic!("no datapoint matches {m:?} in {tasks:#?}"))
}

/// The first task for `etype`/`eid` (and containing a datapoint matching `dp`, if given).
#[track_caller]
pub fn assert_task_emitted<'a>(
    tasks: &'a [DataPointTask],
    etype: &str,
    eid: &Eid,
    dp: Option<&DpMatch>,
) -> &'a DataPointTask {
    tasks
        .iter()
        .find(|t| {
            t.etype == etype
                && t.eid == *eid
                && dp.is_none_or(|m| t.data_points.iter().any(|d| m.matches(d)))
        })
        .unwrap_or_else(|| panic!("no task for {etype}:{eid} matching {dp:?} in {tasks:#?}"))
}

/// Every key of `expected` is in `record` with a (partially) matching value.
#[track_caller]
pub fn assert_record_contains(record: &Document, expected: &Document) {
    assert!(
        matches_partial(
            &Bson::Document(record.clone()),
            &Bson::Document(expected.clone())
        ),
        "record {record} does not contain {expected}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn partial_matching() {
        assert!(matches_partial(
            &Bson::Document(doc! {"a": 1, "b": {"c": 2, "d": 3}}),
            &Bson::Document(doc! {"b": {"c": 2i64}})
        ));
        assert!(!matches_partial(
            &Bson::Document(doc! {"a": 1}),
            &Bson::Document(doc! {"a": 2})
        ));
        assert!(!matches_partial(
            &Bson::Document(doc! {"a": 1}),
            &Bson::Document(doc! {"z": 1})
        ));
        assert!(matches_partial(
            &Bson::Array(vec![1.into()]),
            &Bson::Array(vec![1.into()])
        ));
    }

    #[test]
    fn missing_config_dir_is_explained() {
        // SAFETY: no other test of this crate reads the variable.
        unsafe { std::env::remove_var(CONFIG_ENV_VAR) };
        let e = resolve_config_dir(None).unwrap_err();
        assert!(e.0.contains(CONFIG_ENV_VAR));
    }
}
