//! The updater (core.md §3.9, §6.1): periodic update hooks visit every entity of their type
//! once per period, spread over batches by hash partition.
//!
//! **Update thread** = the hooks sharing `(period, entity type, eid_only)`. For period `P` and
//! batch period `B` (`updater.update_batch_period`) a sweep has `floor(P / B)` iterations;
//! iteration `i` visits the master records with `#hash mod floor(P/B) == i` (records without
//! `#hash` are never visited). Every `update_batch_cron` run processes one iteration of every
//! thread. Outputs go to the normal queue; a batch's progress is saved only after its outputs
//! are durable, so a crash repeats at most the interrupted batch.
//!
//! **Persistent state**: store metadata `updater/<etype>/<period>s/<record|eid>/<t_created>`,
//! one document per (thread, sweep) with DP3's fields (`type`, `t_created`, `t_last_update`,
//! `t_end`, `processed`, `total`, `iteration`, `total_iterations`, `finished`, `period`,
//! `etype`, `eid_only`, `hook_ids`, `runtime_secs`). At start the unfinished states are loaded
//! and a sweep resumes at its saved iteration; if `floor(P/B)` changed the sweep restarts at
//! iteration 0 (keeping `t_created`), as in DP3.
//!
//! Differences to DP3: the set of threads is re-read from the hook registry before every
//! batch (modules can be reloaded), with DP3's start-up reconciliation applied each time
//! (threads without hooks are finished, changed hook sets replace `hook_ids`, new threads
//! start a sweep); when several unfinished states exist for one thread, the newest is resumed
//! and the older ones are marked finished (DP3 left them unfinished forever).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bson::{Bson, Document, doc};
use chrono::{DateTime, TimeDelta, Utc};
use dp3_model::value::{as_f64, as_int, as_time, time as bson_time};
use dp3_model::{DataPointTask, Eid, ModelSpec};
use dp3_store::{MasterScan, Store};
use parking_lot::Mutex;
use tracing::{error, info, warn};

use super::error::{BackgroundError, Result};
use super::runmeta::count;
use super::submit::submit_all;
use crate::clock::Clock;
use crate::queue::TaskSubmitter;

/// Metadata key prefix of updater state documents.
pub const STATE_PREFIX: &str = "updater/";

/// Master records read (and their hook outputs submitted) per page of a batch.
const PAGE: usize = 256;

/// Identity of an update thread.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpdateThreadKey {
    /// The hooks' period in whole seconds.
    pub period_secs: u64,
    pub etype: String,
    /// `periodic_eid_update` hooks (no master record) form their own threads.
    pub eid_only: bool,
}

impl UpdateThreadKey {
    fn state_key_prefix(&self) -> String {
        format!(
            "{STATE_PREFIX}{}/{}s/{}/",
            self.etype,
            self.period_secs,
            if self.eid_only { "eid" } else { "record" }
        )
    }
}

impl std::fmt::Display for UpdateThreadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "({}, period={}s{})",
            self.etype,
            self.period_secs,
            if self.eid_only { ", eid only" } else { "" }
        )
    }
}

/// An update thread as registered: its key and its hook ids in registration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateThread {
    pub key: UpdateThreadKey,
    pub hook_ids: Vec<String>,
}

/// What the updater needs from the hook registry (implemented by the plugin room for its
/// live registry; tests implement it with closures).
///
/// Implementations validate registrations (period ≥ `update_batch_period`, hook ids unique
/// per thread), catch and count hook failures themselves (a failing hook contributes no
/// tasks), and may change their answer after a module reload.
pub trait UpdaterHooks: Send + Sync {
    /// The registered update threads (any order; hook ids in registration order).
    fn threads(&self) -> Vec<UpdateThread>;

    /// Run every hook of `thread`, in registration order, on one entity and return all
    /// their output tasks. `master` is the master record for record hooks and `None` for
    /// eid-only threads.
    fn run_periodic(
        &self,
        thread: &UpdateThreadKey,
        eid: &Eid,
        master: Option<&Document>,
    ) -> Vec<DataPointTask>;
}

/// No periodic hooks.
pub struct NoUpdaterHooks;

impl UpdaterHooks for NoUpdaterHooks {
    fn threads(&self) -> Vec<UpdateThread> {
        Vec::new()
    }

    fn run_periodic(
        &self,
        _: &UpdateThreadKey,
        _: &Eid,
        _: Option<&Document>,
    ) -> Vec<DataPointTask> {
        Vec::new()
    }
}

/// Progress of one sweep of one thread.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateState {
    pub key: UpdateThreadKey,
    pub t_created: DateTime<Utc>,
    pub t_last_update: Option<DateTime<Utc>>,
    pub processed: u64,
    pub total: u64,
    pub iteration: u64,
    pub total_iterations: u64,
    pub finished: bool,
    pub hook_ids: Vec<String>,
    pub runtime_secs: f64,
}

impl UpdateState {
    fn fresh(
        key: UpdateThreadKey,
        hook_ids: Vec<String>,
        now: DateTime<Utc>,
        total_iterations: u64,
    ) -> Self {
        UpdateState {
            key,
            // Stored datetimes have millisecond precision; the state key must survive a
            // round trip through the store.
            t_created: truncate_ms(now),
            t_last_update: None,
            processed: 0,
            total: 0,
            iteration: 0,
            total_iterations,
            finished: false,
            hook_ids,
            runtime_secs: 0.0,
        }
    }

    /// The metadata key of this sweep.
    pub fn store_key(&self) -> String {
        format!(
            "{}{}",
            self.key.state_key_prefix(),
            self.t_created.format("%Y%m%dT%H%M%S%.3fZ")
        )
    }

    pub fn to_document(&self) -> Document {
        let period = TimeDelta::seconds(i64::try_from(self.key.period_secs).unwrap_or(i64::MAX));
        doc! {
            "type": "state",
            "t_created": bson_time(self.t_created),
            "t_last_update": self.t_last_update.map_or(Bson::Null, bson_time),
            "t_end": bson_time(self.t_created + period),
            "processed": count(self.processed),
            "total": count(self.total),
            "iteration": count(self.iteration),
            "total_iterations": count(self.total_iterations),
            "finished": self.finished,
            "period": count(self.key.period_secs),
            "etype": &self.key.etype,
            "eid_only": self.key.eid_only,
            "hook_ids": self.hook_ids.clone(),
            "runtime_secs": self.runtime_secs,
        }
    }

    pub fn from_document(key: &str, d: &Document) -> Result<UpdateState> {
        let bad = |field: &str| BackgroundError::Malformed {
            what: format!("updater state '{key}'"),
            reason: format!("'{field}' is missing or has the wrong type"),
        };
        let uint = |field: &str| {
            d.get(field)
                .and_then(as_int)
                .and_then(|i| u64::try_from(i).ok())
                .ok_or_else(|| bad(field))
        };
        let hook_ids = match d.get("hook_ids") {
            Some(Bson::Array(a)) => a
                .iter()
                .map(|h| h.as_str().map(str::to_owned).ok_or_else(|| bad("hook_ids")))
                .collect::<Result<Vec<_>>>()?,
            _ => return Err(bad("hook_ids")),
        };
        Ok(UpdateState {
            key: UpdateThreadKey {
                period_secs: uint("period")?,
                etype: d.get_str("etype").map_err(|_| bad("etype"))?.to_owned(),
                eid_only: d.get_bool("eid_only").map_err(|_| bad("eid_only"))?,
            },
            t_created: d
                .get("t_created")
                .and_then(as_time)
                .ok_or_else(|| bad("t_created"))?,
            t_last_update: d.get("t_last_update").and_then(as_time),
            processed: uint("processed")?,
            total: uint("total")?,
            iteration: uint("iteration")?,
            total_iterations: uint("total_iterations")?,
            finished: d.get_bool("finished").map_err(|_| bad("finished"))?,
            hook_ids,
            runtime_secs: d.get("runtime_secs").and_then(as_f64).unwrap_or(0.0),
        })
    }
}

fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// Number of batches of one sweep: `floor(P / B)`, at least 1.
pub fn total_iterations(period_secs: u64, batch_period: TimeDelta) -> u64 {
    let b = u64::try_from(batch_period.num_seconds())
        .unwrap_or(0)
        .max(1);
    (period_secs / b).max(1)
}

/// What one batch run did for one thread.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchReport {
    pub key: UpdateThreadKey,
    pub iteration: u64,
    pub processed: u64,
    pub tasks: u64,
    pub finished_sweep: bool,
}

/// The updater.
pub struct Updater {
    model: Arc<ModelSpec>,
    store: Arc<dyn Store>,
    hooks: Arc<dyn UpdaterHooks>,
    submitter: Arc<dyn TaskSubmitter>,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
    batch_period: TimeDelta,
    cache_max_entries: usize,
    /// Current sweep per thread (in memory; saved after each batch).
    states: Mutex<BTreeMap<UpdateThreadKey, UpdateState>>,
}

/// Everything an [`Updater`] is built from.
pub struct UpdaterDeps {
    pub model: Arc<ModelSpec>,
    pub store: Arc<dyn Store>,
    pub hooks: Arc<dyn UpdaterHooks>,
    pub submitter: Arc<dyn TaskSubmitter>,
    pub clock: Arc<dyn Clock>,
    pub stop: Arc<AtomicBool>,
    /// `updater.update_batch_period`.
    pub batch_period: TimeDelta,
    /// `updater.cache_max_entries`.
    pub cache_max_entries: usize,
}

impl Updater {
    /// Load the saved unfinished sweeps and reconcile them with the registered threads.
    pub fn start(deps: UpdaterDeps) -> Result<Updater> {
        let u = Updater {
            model: deps.model,
            store: deps.store,
            hooks: deps.hooks,
            submitter: deps.submitter,
            clock: deps.clock,
            stop: deps.stop,
            batch_period: deps.batch_period,
            cache_max_entries: deps.cache_max_entries,
            states: Mutex::new(BTreeMap::new()),
        };
        let mut loaded: BTreeMap<UpdateThreadKey, UpdateState> = BTreeMap::new();
        for (key, d) in u.store.list_meta(STATE_PREFIX)? {
            let state = match UpdateState::from_document(&key, &d) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "ignoring unreadable updater state");
                    continue;
                }
            };
            if state.finished {
                continue;
            }
            // Keys sort by t_created within a thread: the newest unfinished sweep wins.
            if let Some(mut older) = loaded.insert(state.key.clone(), state) {
                older.finished = true;
                u.save(&older)?;
            }
        }
        *u.states.lock() = loaded;
        u.reconcile()?;
        Ok(u)
    }

    /// The current in-memory sweeps (for tests and telemetry).
    pub fn states(&self) -> Vec<UpdateState> {
        self.states.lock().values().cloned().collect()
    }

    fn save(&self, state: &UpdateState) -> Result<()> {
        self.store
            .put_meta(&state.store_key(), &state.to_document())?;
        Ok(())
    }

    /// Bring the sweeps in line with the registered threads (DP3's `Updater.start` steps).
    fn reconcile(&self) -> Result<()> {
        let now = self.clock.now();
        let threads: HashMap<UpdateThreadKey, Vec<String>> = self
            .hooks
            .threads()
            .into_iter()
            .map(|t| (t.key, t.hook_ids))
            .collect();
        let mut states = self.states.lock();
        // Threads whose hooks are gone: finish their sweep.
        let gone: Vec<UpdateThreadKey> = states
            .keys()
            .filter(|k| !threads.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(mut s) = states.remove(&key) {
                warn!(thread = %key, "update thread has no hooks any more; its sweep is finished");
                s.finished = true;
                self.save(&s)?;
            }
        }
        for (key, hook_ids) in threads {
            let iterations = total_iterations(key.period_secs, self.batch_period);
            match states.get_mut(&key) {
                Some(s) => {
                    if s.hook_ids != hook_ids {
                        if s.hook_ids.iter().any(|h| !hook_ids.contains(h)) {
                            warn!(thread = %key, old = ?s.hook_ids, new = ?hook_ids, "hooks were removed from an update thread");
                        }
                        s.hook_ids = hook_ids;
                        self.save(s)?;
                    }
                    if s.total_iterations != iterations {
                        if s.iteration != 0 {
                            info!(thread = %key, "period or batch period changed; the sweep restarts");
                            s.iteration = 0;
                        }
                        s.total_iterations = iterations;
                    }
                }
                None => {
                    let mut s = UpdateState::fresh(key.clone(), hook_ids, now, iterations);
                    s.total = self.store.count_master(&key.etype)?;
                    states.insert(key, s);
                }
            }
        }
        Ok(())
    }

    /// One batch: one iteration of every thread (the `update_batch_cron` job).
    pub fn run_batch(&self) -> Result<Vec<BatchReport>> {
        self.reconcile()?;
        let keys: Vec<UpdateThreadKey> = self.states.lock().keys().cloned().collect();
        let mut reports = Vec::new();
        let mut first_error = None;
        for key in keys {
            if self.stop.load(Ordering::SeqCst) {
                return Err(BackgroundError::Stopped);
            }
            match self.run_thread_batch(&key) {
                Ok(Some(r)) => reports.push(r),
                Ok(None) => {}
                Err(BackgroundError::Stopped) => return Err(BackgroundError::Stopped),
                Err(e) => {
                    error!(thread = %key, error = %e, "updater batch failed; it is repeated next time");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if reports.is_empty() => Err(e),
            _ => Ok(reports),
        }
    }

    fn run_thread_batch(&self, key: &UpdateThreadKey) -> Result<Option<BatchReport>> {
        let Some(state) = self.states.lock().get(key).cloned() else {
            return Ok(None);
        };
        if self.model.entity(&key.etype).is_none() {
            return Err(BackgroundError::Malformed {
                what: format!("update thread {key}"),
                reason: format!("unknown entity type '{}'", key.etype),
            });
        }
        let started = Instant::now();
        let (processed, tasks) =
            self.visit_partition(key, state.iteration, state.total_iterations)?;

        let now = self.clock.now();
        let mut states = self.states.lock();
        let Some(s) = states.get_mut(key) else {
            return Ok(None);
        };
        let iteration = s.iteration;
        s.processed += processed;
        s.t_last_update = Some(now);
        s.runtime_secs += started.elapsed().as_secs_f64();
        if s.runtime_secs > s.key.period_secs as f64 {
            let per_entity = if s.processed > 0 {
                s.runtime_secs / s.processed as f64
            } else {
                0.0
            };
            let budget = if s.total > 0 {
                s.key.period_secs as f64 / s.total as f64
            } else {
                f64::INFINITY
            };
            warn!(thread = %key, runtime_secs = s.runtime_secs, per_entity, budget, "update sweep takes longer than its period");
        }
        s.iteration += 1;
        if s.iteration >= s.total_iterations {
            s.finished = true;
        }
        self.save(s)?;
        let finished_sweep = s.finished;
        if finished_sweep {
            let hook_ids = s.hook_ids.clone();
            let mut next = UpdateState::fresh(key.clone(), hook_ids, now, s.total_iterations);
            // A new sweep needs a new identity even under a frozen (test) clock.
            if next.t_created <= s.t_created {
                next.t_created = s.t_created + TimeDelta::milliseconds(1);
            }
            next.total = self.store.count_master(&key.etype)?;
            *s = next;
        }
        Ok(Some(BatchReport {
            key: key.clone(),
            iteration,
            processed,
            tasks,
            finished_sweep,
        }))
    }

    /// Run the thread's hooks on every record of one hash partition; returns (entities
    /// visited, tasks submitted). Outputs are durable when this returns.
    fn visit_partition(&self, key: &UpdateThreadKey, index: u64, count: u64) -> Result<(u64, u64)> {
        let partition = (
            u32::try_from(index).unwrap_or(u32::MAX),
            u32::try_from(count).unwrap_or(u32::MAX),
        );
        let (mut processed, mut submitted) = (0u64, 0u64);
        let mut after = None;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Err(BackgroundError::Stopped);
            }
            let page = self.store.scan_master(
                &key.etype,
                &MasterScan {
                    after: after.clone(),
                    limit: PAGE,
                    partition: Some(partition),
                    projection: key.eid_only.then(Vec::new),
                },
            )?;
            let mut outputs = Vec::new();
            for record in &page {
                let Some(eid) = record.get("_id").and_then(Eid::from_bson) else {
                    return Err(BackgroundError::Malformed {
                        what: format!("master record of {}", key.etype),
                        reason: "'_id' is not an eid".into(),
                    });
                };
                let master = (!key.eid_only).then_some(record);
                outputs.extend(self.hooks.run_periodic(key, &eid, master));
                processed += 1;
                after = Some(eid);
            }
            submitted += outputs.len() as u64;
            submit_all(&*self.submitter, outputs, &self.stop)?;
            if page.len() < PAGE {
                return Ok((processed, submitted));
            }
        }
    }

    /// Delete finished state documents beyond `cache_max_entries` per thread, newest kept
    /// (the `cache_management_cron` job). Returns how many were deleted.
    pub fn manage_cache(&self) -> Result<u64> {
        let mut finished: BTreeMap<UpdateThreadKey, Vec<(DateTime<Utc>, String)>> = BTreeMap::new();
        for (key, d) in self.store.list_meta(STATE_PREFIX)? {
            match UpdateState::from_document(&key, &d) {
                Ok(s) if s.finished => finished.entry(s.key).or_default().push((s.t_created, key)),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "ignoring unreadable updater state"),
            }
        }
        let mut deleted = 0;
        for (_, mut list) in finished {
            list.sort_by_key(|e| std::cmp::Reverse(e.0));
            for (_, key) in list.into_iter().skip(self.cache_max_entries) {
                self.store.delete_meta(&key)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn iterations_are_period_over_batch_period() {
        assert_eq!(total_iterations(3600, TimeDelta::minutes(5)), 12);
        assert_eq!(total_iterations(3599, TimeDelta::minutes(5)), 11);
        assert_eq!(total_iterations(60, TimeDelta::minutes(5)), 1);
        assert_eq!(total_iterations(60, TimeDelta::zero()), 60);
    }

    #[test]
    fn state_documents_round_trip() {
        let t = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let mut s = UpdateState::fresh(
            UpdateThreadKey {
                period_secs: 3600,
                etype: "ip".into(),
                eid_only: true,
            },
            vec!["a".into(), "b".into()],
            t,
            12,
        );
        s.iteration = 3;
        s.processed = 7;
        s.t_last_update = Some(t + TimeDelta::minutes(15));
        s.runtime_secs = 1.5;
        let d = s.to_document();
        assert_eq!(
            d.get("t_end").and_then(as_time),
            Some(t + TimeDelta::hours(1))
        );
        assert_eq!(UpdateState::from_document(&s.store_key(), &d).unwrap(), s);
        assert_eq!(s.store_key(), "updater/ip/3600s/eid/20250101T000000.000Z");
        assert!(UpdateState::from_document("k", &doc! {"type": "state"}).is_err());
    }
}
