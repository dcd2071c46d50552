//! The SnapShooter (core.md §5, data-model.md §5): turns master records into snapshots of
//! current values, fused across linked entities by correlation hooks.
//!
//! A run at time `T`: `snapshot_init` hooks → linked components (processed as units, across
//! `threads` threads) → every other entity of the types with `snapshot: true`, streamed page
//! by page per hash partition (memory stays bounded) → `snapshot_finalize` hooks. Per
//! entity: timeseries hooks (their same-entity outputs are folded into the in-memory master
//! record: the intended behaviour DP3's code crashes on) → current values → mirror
//! attributes from the link cache → correlation hooks → snapshot stored. Hook outputs go to
//! the normal queue through the [`TaskSubmitter`].
//!
//! Reads: entity types whose hooks do not read master records (most) get their current
//! values straight from stored rows ([`Store::get_records`], one call per type and batch);
//! the others get master records as before. Snapshots are saved in large batches.

pub mod components;
pub mod hooks;
pub mod unit;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};
use chrono::{DateTime, Utc};
use dp3_model::{AttrKind, DataPointTask, Eid, ModelSpec};
use dp3_store::{HistoryWindow, LinkKey, RecordRead, Store, StoredRecord};
use parking_lot::Mutex;
use tracing::{error, info, warn};

use crate::background::submit::submit_all;
use crate::clock::Clock;
use crate::queue::TaskSubmitter;
use components::{Member, linked_components, scan_eid_pages};
use hooks::{SnapshotHookSource, SnapshotHooks};
use unit::{Unit, UnitEntity};

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunReport {
    pub time: DateTime<Utc>,
    pub entities: u64,
    pub components: u64,
    pub tasks: u64,
    pub failures: u64,
    pub duration: Duration,
    /// Time spent finding linked components (following links), snapshotting them, and
    /// snapshotting the remaining entities.
    pub phases: Phases,
}

/// Durations of the phases of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Phases {
    pub find_components: Duration,
    pub linked: Duration,
    pub linkless: Duration,
}

/// Why a run did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("a snapshot run is already in progress")]
    AlreadyRunning,
    #[error("store: {0}")]
    Store(#[from] dp3_store::StoreError),
}

/// Makes snapshot runs.
pub struct SnapShooter {
    pub model: Arc<ModelSpec>,
    pub store: Arc<dyn Store>,
    pub hooks: Arc<dyn SnapshotHookSource>,
    pub submitter: Arc<dyn TaskSubmitter>,
    pub clock: Arc<dyn Clock>,
    /// `snapshots.keep_empty`.
    pub keep_empty: bool,
    /// Parallelism of a run.
    pub threads: usize,
    running: Mutex<()>,
}

/// Snapshots are saved in groups of about this many per store call.
const SAVE_BATCH: usize = 4096;

impl SnapShooter {
    pub fn new(
        model: Arc<ModelSpec>,
        store: Arc<dyn Store>,
        hooks: Arc<dyn SnapshotHookSource>,
        submitter: Arc<dyn TaskSubmitter>,
        clock: Arc<dyn Clock>,
        keep_empty: bool,
        threads: usize,
    ) -> SnapShooter {
        SnapShooter {
            model,
            store,
            hooks,
            submitter,
            clock,
            keep_empty,
            threads: threads.max(1),
            running: Mutex::new(()),
        }
    }

    /// One snapshot run (cron or `make_snapshots`). Runs never overlap: a run requested
    /// while one is in progress is refused (DP3 let them run concurrently).
    pub fn run(&self) -> Result<RunReport, SnapshotError> {
        let Some(_guard) = self.running.try_lock() else {
            return Err(SnapshotError::AlreadyRunning);
        };
        let started = Instant::now();
        let time = self.clock.now();
        let hooks = self.hooks.load();
        let run_id = format!("SnapShooter{}w0", time.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
        self.store.insert_run_metadata(&doc! {
            "_id": &run_id,
            "#module": "SnapShooter",
            "#time_created": dp3_model::value::time(time),
            "#last_update": dp3_model::value::time(time),
            "task_creation_start": dp3_model::value::time(time),
            "entities": 0_i64,
            "components": 0_i64,
            "workers_finished": 0_i64,
            "linked_finished": false,
        })?;

        let reads = self
            .model
            .entities
            .iter()
            .map(|(etype, e)| (etype.clone(), ReadPlan::new(hooks.as_ref(), etype, e, time)))
            .collect();
        let ctx = RunCtx {
            shooter: self,
            hooks: hooks.as_ref(),
            used_links: hooks.used_links(),
            reads,
            time,
            entities: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
        };
        ctx.add_tasks(hooks.snapshot_init());

        // Linked components.
        let comps = linked_components(
            &*self.store,
            &self.model,
            &ctx.used_links,
            self.keep_empty,
            time,
            self.threads,
        )?;
        let component_count = comps.len() as u64;
        let mut phases = Phases {
            find_components: started.elapsed(),
            ..Phases::default()
        };
        let in_components: HashSet<Member> = comps.iter().flatten().cloned().collect();
        let queue = Mutex::new(comps);
        std::thread::scope(|s| {
            for _ in 0..self.threads {
                s.spawn(|| {
                    // Snapshots of many components are saved together: every write
                    // transaction costs the readers their page caches.
                    let mut pending = Vec::new();
                    loop {
                        let Some(c) = queue.lock().pop() else { break };
                        if let Err(e) = ctx.snapshot_component(c, &mut pending) {
                            error!(error = %e, "snapshot of a linked component failed");
                            ctx.failures.fetch_add(1, Ordering::Relaxed);
                        }
                        if pending.len() >= SAVE_BATCH {
                            ctx.save_counted(std::mem::take(&mut pending));
                        }
                    }
                    ctx.save_counted(pending);
                });
            }
        });
        self.store.update_run_metadata(
            &run_id,
            &doc! {"components_loaded": dp3_model::value::time(self.clock.now()), "linked_finished": true},
            &doc! {},
        )?;

        phases.linked = started.elapsed() - phases.find_components;

        // Linkless snapshots, one hash partition per thread.
        let parts = self.threads as u32;
        std::thread::scope(|s| {
            for p in 0..parts {
                let ctx = &ctx;
                let in_components = &in_components;
                s.spawn(move || {
                    for (etype, entity) in &self.model.entities {
                        if !entity.spec.snapshot {
                            continue;
                        }
                        let mut pending = Vec::new();
                        let res = scan_eid_pages(&*self.store, etype, (p, parts), |page| {
                            ctx.snapshot_linkless(etype, page, in_components, &mut pending)
                        });
                        // What was made before a failure is still saved.
                        let saved = ctx.save(pending);
                        let res = res.and(saved);
                        if let Err(e) = res {
                            // As in DP3 the rest of this type on this partition is skipped
                            // this run; the next run recomputes everything.
                            error!(%etype, error = %e, "linkless snapshots failed");
                            ctx.failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });

        phases.linkless = started.elapsed() - phases.find_components - phases.linked;
        ctx.add_tasks(hooks.snapshot_finalize());
        let tasks = std::mem::take(&mut *ctx.tasks.lock());
        let task_count = tasks.len() as u64;
        self.submit(tasks);

        let entities = ctx.entities.load(Ordering::Relaxed);
        let failures = ctx.failures.load(Ordering::Relaxed);
        let end = self.clock.now();
        self.store.update_run_metadata(
            &run_id,
            &doc! {
                "task_creation_end": dp3_model::value::time(end),
                "#last_update": dp3_model::value::time(end),
                "workers_finished": if failures == 0 { 1_i64 } else { 0_i64 },
            },
            &doc! {"entities": entities as i64, "components": component_count as i64},
        )?;
        let report = RunReport {
            time,
            entities,
            components: component_count,
            tasks: task_count,
            failures,
            duration: started.elapsed(),
            phases,
        };
        metrics::counter!("dp3_snapshot_runs_total").increment(1);
        metrics::counter!("dp3_snapshot_run_failures_total").increment(failures);
        metrics::histogram!("dp3_snapshot_run_seconds").record(report.duration.as_secs_f64());
        metrics::gauge!("dp3_snapshot_last_run_entities").set(entities as f64);
        info!(
            entities,
            components = component_count,
            tasks = task_count,
            failures,
            ms = report.duration.as_millis() as u64,
            find_components_ms = report.phases.find_components.as_millis() as u64,
            linked_ms = report.phases.linked.as_millis() as u64,
            linkless_ms = report.phases.linkless.as_millis() as u64,
            "snapshot run finished"
        );
        Ok(report)
    }

    /// Queue hook outputs (normal queue), retrying while the queue is full.
    fn submit(&self, tasks: Vec<DataPointTask>) {
        let never = AtomicBool::new(false);
        if let Err(e) = submit_all(&*self.submitter, tasks, &never) {
            warn!(error = %e, "snapshot hook outputs were not queued");
        }
    }
}

/// How the stored attributes of one entity type are read during a run.
struct ReadPlan {
    /// Hooks read master records: build them (the general path).
    master: bool,
    /// The fast path's read: the attributes current values use (not timeseries or
    /// mirrors, which would be read for nothing) and, for observations, only the history
    /// items that can count at the run's time.
    read: RecordRead,
}

impl ReadPlan {
    fn new(
        hooks: &dyn SnapshotHooks,
        etype: &str,
        entity: &dp3_model::EntityType,
        time: DateTime<Utc>,
    ) -> ReadPlan {
        let used = |a: &dp3_model::AttrSpec| {
            a.mirror_of.is_none() && !matches!(a.kind, AttrKind::Timeseries { .. })
        };
        let attrs: Vec<String> = entity
            .attribs
            .iter()
            .filter(|(_, a)| used(a))
            .map(|(n, _)| n.clone())
            .collect();
        ReadPlan {
            master: hooks.needs_master(etype),
            read: RecordRead {
                windows: current_windows(entity, &attrs, time),
                attrs: Some(attrs),
            },
        }
    }
}

/// The [`HistoryWindow`]s of the observations attributes among `attrs` at `time`.
pub fn current_windows(
    entity: &dp3_model::EntityType,
    attrs: &[String],
    time: DateTime<Utc>,
) -> Vec<(String, HistoryWindow)> {
    attrs
        .iter()
        .filter_map(|name| match &entity.attribs.get(name)?.kind {
            AttrKind::Observations { history_params, .. } => {
                Some((name.clone(), HistoryWindow::at(history_params, time)))
            }
            _ => None,
        })
        .collect()
}

/// The stored attributes of one entity as read for its snapshot.
enum Stored {
    /// A master record (when hooks need it).
    Master(Option<Document>),
    /// Rows only (the fast path).
    Record(Option<StoredRecord>),
}

impl Stored {
    fn exists(&self) -> bool {
        match self {
            Stored::Master(m) => m.is_some(),
            Stored::Record(r) => r.is_some(),
        }
    }
}

/// State of one run, shared by its threads.
struct RunCtx<'a> {
    shooter: &'a SnapShooter,
    hooks: &'a dyn SnapshotHooks,
    used_links: Vec<(String, String)>,
    reads: HashMap<String, ReadPlan>,
    time: DateTime<Utc>,
    entities: AtomicU64,
    failures: AtomicU64,
    tasks: Mutex<Vec<DataPointTask>>,
}

impl RunCtx<'_> {
    fn add_tasks(&self, tasks: Vec<DataPointTask>) {
        if !tasks.is_empty() {
            self.tasks.lock().extend(tasks);
        }
    }

    /// Read the stored attributes of entities of one type, in `eids` order.
    fn load(&self, etype: &str, eids: Vec<Eid>) -> dp3_store::Result<Vec<(Eid, Stored)>> {
        let store = &*self.shooter.store;
        match self.reads.get(etype) {
            Some(plan) if !plan.master => {
                let records = store.get_records(etype, &eids, &plan.read)?;
                Ok(eids
                    .into_iter()
                    .zip(records.into_iter().map(Stored::Record))
                    .collect())
            }
            _ => eids
                .into_iter()
                .map(|eid| {
                    let m = store.get_master(etype, &eid)?;
                    Ok((eid, Stored::Master(m)))
                })
                .collect(),
        }
    }

    /// Timeseries hooks, current values and mirrors of one entity.
    fn prepare(&self, etype: &str, eid: Eid, stored: Stored) -> Option<UnitEntity> {
        let s = self.shooter;
        let entity = s.model.entity(etype)?;
        let (master, mut values) = match stored {
            Stored::Master(master) => {
                let mut master = match master {
                    Some(m) => m,
                    None if s.keep_empty => doc! {"_id": eid.to_bson()},
                    None => return None,
                };
                // Timeseries hooks, with same-entity outputs folded into the record.
                let out = self.hooks.timeseries(etype, &master);
                for t in &out {
                    if t.etype == etype && t.eid == eid {
                        fold_task(&mut master, &s.model, t, self.time);
                    }
                }
                self.add_tasks(out);
                let values = dp3_model::current::current_values(entity, &master, self.time);
                (master, values)
            }
            Stored::Record(record) => {
                let record = match record {
                    Some(r) => r,
                    None if s.keep_empty => StoredRecord::default(),
                    None => return None,
                };
                // No hook of this type reads master records (ReadPlan): none is built.
                let values = dp3_model::current::current_values_of(
                    entity,
                    eid.to_bson(),
                    &record,
                    self.time,
                );
                (Document::new(), values)
            }
        };
        for (attr, spec) in &entity.attribs {
            let Some((src_etype, src_attr)) = &spec.mirror_of else {
                continue;
            };
            let using = format!("{src_etype}#{src_attr}");
            let links = s
                .store
                .links_to(&LinkKey::new(etype, eid.clone()), Some(&using), self.time)
                .unwrap_or_else(|e| {
                    warn!(error = %e, "mirror attribute lookup failed");
                    Vec::new()
                });
            let list: Vec<Bson> = links
                .into_iter()
                .map(|l| Bson::Document(doc! {"eid": l.from.eid.to_bson()}))
                .collect();
            values.insert(attr.clone(), list);
        }
        Some(UnitEntity {
            etype: etype.to_owned(),
            eid,
            values,
            master,
        })
    }

    fn snapshot_component(
        &self,
        members: Vec<Member>,
        pending: &mut Vec<UnitEntity>,
    ) -> dp3_store::Result<()> {
        let s = self.shooter;
        // Read per entity type (one store call each), then prepare in unit order.
        let mut stored: Vec<Option<(Eid, Stored)>> = (0..members.len()).map(|_| None).collect();
        let mut types: Vec<&str> = Vec::new();
        for (etype, _) in &members {
            if !types.contains(&etype.as_str()) {
                types.push(etype);
            }
        }
        for etype in types {
            let idx: Vec<usize> = (0..members.len())
                .filter(|&i| members[i].0 == etype)
                .collect();
            let eids = idx.iter().map(|&i| members[i].1.clone()).collect();
            for (i, got) in idx.into_iter().zip(self.load(etype, eids)?) {
                stored[i] = Some(got);
            }
        }
        let mut entities = Vec::with_capacity(members.len());
        for ((etype, _), got) in members.iter().zip(stored) {
            let Some((eid, got)) = got else { continue };
            if let Some(e) = self.prepare(etype, eid, got) {
                entities.push(e);
            }
        }
        let mut unit = Unit::new(entities, true);
        if !s.keep_empty {
            prune_missing_links(&mut unit, &s.model, &self.used_links);
        }
        self.add_tasks(self.hooks.correlate(&mut unit));
        pending.extend(unit.entities);
        Ok(())
    }

    fn snapshot_linkless(
        &self,
        etype: &str,
        page: Vec<Eid>,
        in_components: &HashSet<Member>,
        batch: &mut Vec<UnitEntity>,
    ) -> dp3_store::Result<()> {
        let member = |eid: &Eid| (etype.to_owned(), eid.clone());
        let page: Vec<Eid> = page
            .into_iter()
            .filter(|eid| !in_components.contains(&member(eid)))
            .collect();
        if page.is_empty() {
            return Ok(());
        }
        for (eid, stored) in self.load(etype, page)? {
            // Scanned but gone since: skipped, never a stub.
            if !stored.exists() {
                continue;
            }
            let Some(e) = self.prepare(etype, eid, stored) else {
                continue;
            };
            let mut unit = Unit::new(vec![e], false);
            self.add_tasks(self.hooks.correlate(&mut unit));
            batch.extend(unit.entities);
            if batch.len() >= SAVE_BATCH {
                self.save(std::mem::take(batch))?;
            }
        }
        Ok(())
    }

    /// [`Self::save`], counting a failure instead of returning it.
    fn save_counted(&self, entities: Vec<UnitEntity>) {
        if let Err(e) = self.save(entities) {
            error!(error = %e, "saving snapshots of linked components failed");
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Store snapshots grouped by entity type.
    fn save(&self, entities: Vec<UnitEntity>) -> dp3_store::Result<()> {
        let s = self.shooter;
        let mut by_type: Vec<(String, Vec<(Eid, Document)>)> = Vec::new();
        for mut e in entities {
            unit::strip_records(&e.etype, &mut e.values, &s.model);
            if !s.keep_empty && e.values.len() <= 1 {
                continue;
            }
            match by_type.iter_mut().find(|(t, _)| *t == e.etype) {
                Some((_, v)) => v.push((e.eid, e.values)),
                None => by_type.push((e.etype, vec![(e.eid, e.values)])),
            }
        }
        for (etype, snaps) in by_type {
            self.entities
                .fetch_add(snaps.len() as u64, Ordering::Relaxed);
            s.store.save_snapshots(&etype, &snaps, self.time)?;
        }
        Ok(())
    }
}

/// Without `keep_empty`, link values pointing at entities that are not part of the unit are
/// removed (core.md §5.8: multi-value lists pruned with their confidences; iterable values
/// kept if any target exists; single links removed with their `#c`).
fn prune_missing_links(unit: &mut Unit, model: &ModelSpec, used_links: &[(String, String)]) {
    let present: HashSet<(String, Eid)> = unit
        .entities
        .iter()
        .map(|e| (e.etype.clone(), e.eid.clone()))
        .collect();
    for e in &mut unit.entities {
        for (etype, attr) in used_links {
            if *etype != e.etype {
                continue;
            }
            let Some(spec) = model.attr(etype, attr) else {
                continue;
            };
            let Some(target) = spec.data_type().and_then(|d| d.link_target()) else {
                continue;
            };
            let exists = |b: &Bson| {
                b.as_document()
                    .and_then(|d| d.get("eid"))
                    .and_then(Eid::from_bson)
                    .is_some_and(|eid| present.contains(&(target.to_owned(), eid)))
            };
            let conf_key = format!("{attr}#c");
            match e.values.get(attr).cloned() {
                Some(Bson::Array(items)) if spec.multi_value() => {
                    let confs = e.values.get_array(&conf_key).cloned().unwrap_or_default();
                    let (mut kept, mut kept_c) = (Vec::new(), Vec::new());
                    for (i, item) in items.into_iter().enumerate() {
                        if exists(&item) {
                            kept.push(item);
                            if let Some(c) = confs.get(i) {
                                kept_c.push(c.clone());
                            }
                        }
                    }
                    if kept.is_empty() {
                        e.values.remove(attr);
                        e.values.remove(&conf_key);
                    } else {
                        e.values.insert(attr.clone(), kept);
                        e.values.insert(conf_key, kept_c);
                    }
                }
                Some(Bson::Array(items)) if !items.iter().any(exists) => {
                    e.values.remove(attr);
                    e.values.remove(&conf_key);
                }
                Some(v) if v.as_array().is_none() && !exists(&v) => {
                    e.values.remove(attr);
                    e.values.remove(&conf_key);
                }
                _ => {}
            }
        }
    }
}

/// Fold the datapoints of a same-entity timeseries-hook output into the in-memory master
/// record (plain: set; observations/timeseries: append).
fn fold_task(master: &mut Document, model: &ModelSpec, task: &DataPointTask, now: DateTime<Utc>) {
    for dp in &task.data_points {
        let Some(spec) = model.attr(&dp.etype, &dp.attr) else {
            continue;
        };
        match spec.kind {
            AttrKind::Plain { .. } => {
                master.insert(
                    dp.attr.clone(),
                    doc! {"v": dp.v.clone(), "ts_last_update": dp3_model::value::time(now)},
                );
            }
            AttrKind::Observations { .. } | AttrKind::Timeseries { .. } => {
                let (Some(t1), Some(t2)) = (dp.t1, dp.t2) else {
                    continue;
                };
                let mut item = doc! {
                    "t1": dp3_model::value::time(t1),
                    "t2": dp3_model::value::time(t2),
                    "v": dp.v.clone(),
                };
                if matches!(spec.kind, AttrKind::Observations { .. }) {
                    item.insert("c", dp.c);
                }
                match master.get_mut(&dp.attr) {
                    Some(Bson::Array(a)) => a.push(Bson::Document(item)),
                    _ => {
                        master.insert(dp.attr.clone(), vec![Bson::Document(item)]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod test_platform;
#[cfg(test)]
mod tests;
