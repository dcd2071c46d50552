//! The history manager (data-model.md §6, core.md §6.3): aggregation of observation
//! histories, `max_items`/`expire_time` trimming, `max_age` cleanup and snapshot retention.
//! (Raw-datapoint archiving is [`super::archive`].)
//!
//! **Aggregation pass** (`aggregation_schedule`): per entity type, master records are read in
//! pages (bounded memory) with only the attributes concerned. For every observations
//! attribute, equal consecutive datapoints are merged (`aggregate: true`, the model's
//! [`dp3_model::aggregate`] rules, canonical multi-value order) and the history is trimmed
//! to the `max_items` newest items ([`dp3_model::aggregate::trim_history`]; DP3 parses the
//! option but never applies it). `expire_time` deletes nothing: following the model's
//! semantics it only stops old items from counting as current values
//! (`dp3_model::current::is_expired`), while `max_age` keeps deciding how long they are
//! stored. A record is written back only when something changed, with an optimistic
//! `#revision` check: on a conflict it is re-read and re-processed, up to 3 times. Entities
//! whose TTL tokens are all expired are skipped (their deletion is pending). Each run writes
//! a `HistoryManager` run record with DP3's counters.
//!
//! **Cleanup** (`datapoint_cleaning_schedule`): for every observations/timeseries attribute
//! with a `max_age`, items with `t2 < now − max_age` are deleted, driven by `#min_t2s` (the
//! store recomputes the marker exactly, so unlike DP3 it never lags behind).
//!
//! **Snapshot retention** (`snapshot_cleaning`): snapshots older than `older_than` are
//! deleted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bson::{Bson, Document, doc};
use chrono::{DateTime, TimeDelta, Utc};
use dp3_model::aggregate::{AggregatedItem, Aggregation, aggregate, trim_history};
use dp3_model::value::{as_int, as_time, time as bson_time};
use dp3_model::{AttrKind, Eid, EntityType, ModelSpec};
use dp3_store::{MasterScan, Store};
use tracing::{debug, info, warn};

use super::error::{BackgroundError, Result};
use super::runmeta::{RunRecord, count, unique_run_time};
use crate::clock::Clock;

/// Master records read per page by the aggregation pass.
const PAGE: usize = 500;
/// Re-reads after a revision conflict before giving up on a record for this run.
const MAX_RETRIES: u32 = 3;

/// Counters of one aggregation pass (DP3's run-record fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AggregationStats {
    pub entities: u64,
    pub updated: u64,
    pub revision_conflicts: u64,
    pub retries: u64,
    pub retry_exhausted: u64,
}

/// The history manager's jobs.
pub struct HistoryManager {
    pub model: Arc<ModelSpec>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub stop: Arc<AtomicBool>,
}

/// Read the history array of `attr` from a master record (merge counts included).
pub fn parse_history(record: &Document, attr: &str) -> Result<Vec<AggregatedItem>> {
    let items = match record.get(attr) {
        None | Some(Bson::Null) => return Ok(Vec::new()),
        Some(Bson::Array(a)) => a,
        Some(_) => {
            return Err(BackgroundError::Malformed {
                what: format!("history of '{attr}'"),
                reason: "not an array".into(),
            });
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            AggregatedItem::from_bson(item).map_err(|e| BackgroundError::Malformed {
                what: format!("history of '{attr}' item {i}"),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Whether every TTL token of the record has expired (`#ttl` present, all `< now`).
pub fn ttl_expired(record: &Document, now: DateTime<Utc>) -> bool {
    match record.get("#ttl") {
        Some(Bson::Document(ttl)) => ttl.values().all(|v| as_time(v).is_some_and(|t| t < now)),
        _ => false,
    }
}

/// The observations attributes the aggregation pass works on: merged (`aggregate: true`)
/// or trimmed (`max_items` set).
fn pass_attrs(et: &EntityType) -> Vec<String> {
    et.attribs
        .values()
        .filter(|a| match &a.kind {
            AttrKind::Observations {
                history_params: h, ..
            } => h.aggregate || h.max_items.is_some(),
            _ => false,
        })
        .map(|a| a.id.clone())
        .collect()
}

impl HistoryManager {
    /// Aggregate and trim the histories of every entity type (the `aggregation_schedule` job).
    pub fn aggregate_all(&self) -> Result<AggregationStats> {
        let now = self.clock.now();
        let run = RunRecord::start(
            &*self.store,
            "HistoryManager",
            unique_run_time(now),
            doc! {
                "aggregation_start": bson_time(now),
                "entities": 0_i64, "updated": 0_i64, "revision_conflicts": 0_i64,
                "retries": 0_i64, "retry_exhausted": 0_i64,
            },
        );
        let mut total = AggregationStats::default();
        let mut result = Ok(());
        for (etype, et) in &self.model.entities {
            match self.aggregate_type(etype, et, now) {
                Ok(s) => {
                    total.entities += s.entities;
                    total.updated += s.updated;
                    total.revision_conflicts += s.revision_conflicts;
                    total.retries += s.retries;
                    total.retry_exhausted += s.retry_exhausted;
                }
                Err(e) => {
                    warn!(etype, error = %e, "history aggregation failed");
                    result = Err(e);
                    break;
                }
            }
        }
        run.update(
            self.clock.now(),
            doc! {
                "aggregation_end": bson_time(self.clock.now()),
                "entities": count(total.entities), "updated": count(total.updated),
                "revision_conflicts": count(total.revision_conflicts),
                "retries": count(total.retries), "retry_exhausted": count(total.retry_exhausted),
            },
            doc! {},
        );
        if total.updated > 0 {
            info!(
                entities = total.entities,
                updated = total.updated,
                "histories aggregated"
            );
        }
        result.map(|()| total)
    }

    /// The aggregation pass over one entity type.
    pub fn aggregate_type(
        &self,
        etype: &str,
        et: &EntityType,
        now: DateTime<Utc>,
    ) -> Result<AggregationStats> {
        let attrs = pass_attrs(et);
        let mut stats = AggregationStats::default();
        if attrs.is_empty() {
            return Ok(stats);
        }
        let mut after: Option<Eid> = None;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Err(BackgroundError::Stopped);
            }
            let page = self.store.scan_master(
                etype,
                &MasterScan {
                    after: after.clone(),
                    limit: PAGE,
                    partition: None,
                    projection: Some(attrs.clone()),
                },
            )?;
            for record in &page {
                let eid = record.get("_id").and_then(Eid::from_bson).ok_or_else(|| {
                    BackgroundError::Malformed {
                        what: format!("master record of {etype}"),
                        reason: "'_id' is not an eid".into(),
                    }
                })?;
                stats.entities += 1;
                self.process_record(etype, et, &attrs, &eid, record.clone(), now, &mut stats)?;
                after = Some(eid);
            }
            if page.len() < PAGE {
                return Ok(stats);
            }
        }
    }

    /// Aggregate one record, writing it back when changed; retries on revision conflicts.
    #[allow(clippy::too_many_arguments)]
    fn process_record(
        &self,
        etype: &str,
        et: &EntityType,
        attrs: &[String],
        eid: &Eid,
        mut record: Document,
        now: DateTime<Utc>,
        stats: &mut AggregationStats,
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            if ttl_expired(&record, now) {
                return Ok(());
            }
            let changes = match new_histories(et, attrs, &record, now) {
                Ok(c) => c,
                Err(e) => {
                    // One malformed record must not stop the pass over the others.
                    warn!(etype, eid = %eid, error = %e, "history not aggregated");
                    return Ok(());
                }
            };
            if changes.is_empty() {
                return Ok(());
            }
            let revision = record.get("#revision").and_then(as_int).unwrap_or(0);
            if self
                .store
                .replace_histories(etype, eid, revision, &changes)?
            {
                stats.updated += 1;
                return Ok(());
            }
            stats.revision_conflicts += 1;
            if attempt >= MAX_RETRIES {
                stats.retry_exhausted += 1;
                debug!(etype, eid = %eid, "history aggregation gave up after revision conflicts");
                return Ok(());
            }
            attempt += 1;
            stats.retries += 1;
            match self.store.get_master(etype, eid)? {
                Some(fresh) => record = fresh,
                None => return Ok(()), // deleted meanwhile
            }
        }
    }

    /// Delete history items older than `max_age` (the `datapoint_cleaning_schedule` job).
    /// Returns the number of records changed.
    pub fn clean_old_datapoints(&self) -> Result<u64> {
        let now = self.clock.now();
        let mut changed = 0;
        for (etype, et) in &self.model.entities {
            for attr in et.attribs.values() {
                let Some(max_age) = attr.max_age().filter(|a| *a > TimeDelta::zero()) else {
                    continue;
                };
                let n = self
                    .store
                    .delete_old_history(etype, &attr.id, now - max_age)?;
                if n > 0 {
                    debug!(etype, attr = %attr.id, records = n, "old datapoints deleted");
                }
                changed += n;
            }
        }
        if changed > 0 {
            info!(records = changed, "datapoints older than max_age deleted");
        }
        Ok(changed)
    }

    /// Delete snapshots older than `older_than` (the `snapshot_cleaning` job). Returns how
    /// many were deleted.
    pub fn clean_old_snapshots(&self, older_than: TimeDelta) -> Result<u64> {
        let t_old = self.clock.now() - older_than;
        let mut deleted = 0;
        for etype in self.model.entities.keys() {
            deleted += self.store.delete_old_snapshots(etype, t_old)?;
        }
        if deleted > 0 {
            info!(deleted, "old snapshots deleted");
        }
        Ok(deleted)
    }
}

/// The new history of every attribute that changes (empty when nothing does).
fn new_histories(
    et: &EntityType,
    attrs: &[String],
    record: &Document,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Vec<AggregatedItem>)>> {
    let mut changes = Vec::new();
    for attr in attrs {
        let Some(spec) = et.attribs.get(attr) else {
            continue;
        };
        let AttrKind::Observations {
            multi_value,
            history_params: h,
            ..
        } = &spec.kind
        else {
            continue;
        };
        let old = parse_history(record, attr)?;
        if old.is_empty() {
            continue;
        }
        let merged = if h.aggregate {
            aggregate(&old, *multi_value, h.pre_validity, h.post_validity)
        } else {
            Aggregation {
                items: old,
                changed: false,
            }
        };
        // `max_age` is the cleaning job's (it covers timeseries too); `expire_time` only
        // hides items from current values (dp3_model::current::is_expired), it never deletes.
        let trimmed = trim_history(&merged.items, None, h.max_items, None, now);
        if merged.changed || trimmed.removed > 0 {
            // merge counts travel with the items, so the next run's mean stays exact
            changes.push((attr.clone(), trimmed.kept));
        }
    }
    Ok(changes)
}
