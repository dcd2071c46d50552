//! Entity lifetimes: TTL collection and weak-entity collection (data-model.md §7.2–7.3,
//! core.md §6.2).
//!
//! Every deletion is a delete task submitted to the pipeline, never a direct store write:
//! the executor keeps a per-lane view of which entities exist, and deleting behind its back
//! would break creation detection. The store's `Delete` operation then removes the master
//! record, snapshots and link-cache entries and cleans link values (plain and observation
//! links) that point at the deleted entity in other records (§7.5).
//!
//! One process covers all of DP3's worker partitions, so collection scans whole entity types.
//! Like DP3, an entity whose tokens expired can receive new data between the scan and its
//! delete task; the delete wins (there is no conditional delete in DP3's task model either).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bson::doc;
use dp3_model::{DataPointTask, Eid, Lifetime, ModelSpec};
use dp3_store::{MasterScan, Store};
use tracing::info;

use super::error::Result;
use super::runmeta::{RunRecord, count, unique_run_time};
use super::submit::submit_all;
use crate::clock::Clock;
use crate::queue::TaskSubmitter;
use dp3_model::value::time as bson_time;

/// Master records read per page when looking for unreferenced weak entities.
const SCAN_PAGE: usize = 1000;

/// What one collection run of one entity type did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Records examined (TTL: records of the type; weak: records scanned).
    pub entities: u64,
    /// Delete tasks submitted.
    pub deleted: u64,
}

/// The garbage collector of all `ttl` and `weak` entity types.
pub struct GarbageCollector {
    pub model: Arc<ModelSpec>,
    pub store: Arc<dyn Store>,
    pub submitter: Arc<dyn TaskSubmitter>,
    pub clock: Arc<dyn Clock>,
    pub stop: Arc<AtomicBool>,
}

/// A delete task for one entity.
pub fn delete_task(etype: &str, eid: Eid) -> DataPointTask {
    DataPointTask {
        etype: etype.to_owned(),
        eid,
        delete: true,
        ..Default::default()
    }
}

impl GarbageCollector {
    /// Entity types with a TTL lifetime.
    pub fn ttl_types(&self) -> Vec<String> {
        self.types_where(|l| matches!(l, Lifetime::Ttl { .. }))
    }

    /// Entity types with a weak lifetime.
    pub fn weak_types(&self) -> Vec<String> {
        self.types_where(|l| matches!(l, Lifetime::Weak))
    }

    fn types_where(&self, f: impl Fn(&Lifetime) -> bool) -> Vec<String> {
        self.model
            .entities
            .iter()
            .filter(|(_, e)| f(&e.spec.lifetime))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Collect every TTL and weak type (the `collection_rate` job).
    pub fn collect_all(&self) -> Result<()> {
        let mut first_error = None;
        for etype in self.ttl_types() {
            if let Err(e) = self.collect_ttl(&etype) {
                tracing::error!(etype, error = %e, "TTL collection failed");
                first_error.get_or_insert(e);
            }
        }
        for etype in self.weak_types() {
            if let Err(e) = self.collect_weak(&etype) {
                tracing::error!(etype, error = %e, "weak-entity collection failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Delete the entities of `etype` whose TTL tokens have all expired (strictly before
    /// now; an empty token map counts as expired) and drop expired tokens of the others.
    /// Records without `#ttl` are never collected.
    pub fn collect_ttl(&self, etype: &str) -> Result<GcStats> {
        let now = self.clock.now();
        let run = RunRecord::start(
            &*self.store,
            "GarbageCollector",
            unique_run_time(now),
            doc! {"entity": etype, "ttl_collect_start": bson_time(now), "entities": 0_i64, "deleted": 0_i64},
        );
        let entities = self.store.count_master(etype)?;
        let expired = self.store.expire_ttl_tokens(etype, now, None)?;
        let stats = GcStats {
            entities,
            deleted: expired.len() as u64,
        };
        let tasks = expired
            .into_iter()
            .map(|eid| delete_task(etype, eid))
            .collect();
        submit_all(&*self.submitter, tasks, &self.stop)?;
        run.update(
            self.clock.now(),
            doc! {"ttl_collect_end": bson_time(self.clock.now()), "entities": count(stats.entities), "deleted": count(stats.deleted)},
            doc! {},
        );
        if stats.deleted > 0 {
            info!(
                etype,
                deleted = stats.deleted,
                "TTL collection: expired entities deleted"
            );
        }
        Ok(stats)
    }

    /// Delete the entities of weak type `etype` that no live link-cache entry points to.
    pub fn collect_weak(&self, etype: &str) -> Result<GcStats> {
        let now = self.clock.now();
        let run = RunRecord::start(
            &*self.store,
            "GarbageCollector",
            unique_run_time(now),
            doc! {"entity": etype, "weak_collect_start": bson_time(now), "entities": 0_i64, "deleted": 0_i64},
        );
        let referenced: HashSet<Eid> = self
            .store
            .referenced_eids(etype, now)?
            .into_iter()
            .collect();
        let mut stats = GcStats::default();
        let mut after = None;
        loop {
            let page = self.store.scan_master(
                etype,
                &MasterScan {
                    after: after.clone(),
                    limit: SCAN_PAGE,
                    partition: None,
                    projection: Some(Vec::new()),
                },
            )?;
            let Some(last) = page.last() else { break };
            after = last.get("_id").and_then(Eid::from_bson);
            if after.is_none() {
                return Err(super::error::BackgroundError::Malformed {
                    what: format!("master record of {etype}"),
                    reason: "'_id' is not an eid".into(),
                });
            }
            stats.entities += page.len() as u64;
            let tasks: Vec<DataPointTask> = page
                .iter()
                .filter_map(|d| d.get("_id").and_then(Eid::from_bson))
                .filter(|eid| !referenced.contains(eid))
                .map(|eid| delete_task(etype, eid))
                .collect();
            stats.deleted += tasks.len() as u64;
            submit_all(&*self.submitter, tasks, &self.stop)?;
            if page.len() < SCAN_PAGE {
                break;
            }
        }
        run.update(
            self.clock.now(),
            doc! {"weak_collect_end": bson_time(self.clock.now()), "entities": count(stats.entities), "deleted": count(stats.deleted)},
            doc! {},
        );
        if stats.deleted > 0 {
            info!(
                etype,
                deleted = stats.deleted,
                "weak entities without references deleted"
            );
        }
        Ok(stats)
    }
}
