//! The task executor (core.md §2.4): runs one task through the ingestion hooks and turns it
//! into staged writes.
//!
//! Order per task: `on_task_start` → delete? → exists? → `allow_entity_creation` →
//! `on_entity_creation` → stage TTL tokens and datapoints (master record, raw log, link
//! cache, data-driven TTL tokens) → `on_new_attr` per datapoint. Hook outputs for the same
//! entity may run inline (`max_inline_generated_tasks`), the rest re-enter through the
//! priority lanes once durable.
//!
//! DP3 implements link-cache maintenance and TTL tokens as core modules registering hooks
//! that emit follow-up tasks; here the executor stages them directly into the same batch,
//! which has the same effect without the extra round trip (and fixes DP3's bug where an
//! entity created by a TTL-only task never gets its `#hash`).

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use dp3_model::{
    AttrKind, AttrSpec, DataPoint, DataPointTask, Eid, EntityType, Lifetime, ModelSpec,
};
use dp3_store::{Creation, EntityWrite, HistoryItem, LinkKey, LinkOp, Store, WriteOp};
use tracing::{debug, warn};

use super::hooks::IngestionHooks;
use super::known::KnownEntities;
use super::staging::{Staging, TaskOutput};
use super::stats::PipelineStats;
use crate::clock::Clock;

/// Where the executor gets the current hooks from (the plugin room swaps them on reload;
/// each task runs against one snapshot).
pub trait HookSource: Send + Sync {
    fn load(&self) -> Arc<dyn IngestionHooks>;
}

impl HookSource for Arc<dyn IngestionHooks> {
    fn load(&self) -> Arc<dyn IngestionHooks> {
        self.clone()
    }
}

/// Everything the executor needs; shared by all lanes.
pub struct Executor {
    pub model: Arc<ModelSpec>,
    pub store: Arc<dyn Store>,
    pub staging: Arc<Staging>,
    pub hooks: Arc<dyn HookSource>,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<PipelineStats>,
    /// `processing_core.max_inline_generated_tasks`.
    pub max_inline: usize,
}

impl Executor {
    /// Process a task and the same-entity tasks its hooks return (up to `max_inline`),
    /// accumulating everything into `out`. Returns whether the source task created its
    /// entity.
    pub fn process_chain(
        &self,
        task: DataPointTask,
        out: &mut TaskOutput,
        known: &mut KnownEntities,
    ) -> bool {
        let hooks = self.hooks.load();
        let source_key = (task.etype.clone(), task.eid.clone());
        let mut children = Vec::new();
        let created = self.process_one(&*hooks, task, out, &mut children, known);
        let mut admitted = 0usize;
        let mut pending: VecDeque<DataPointTask> = VecDeque::new();
        self.partition(&source_key, children, &mut admitted, &mut pending, out);
        while let Some(inline) = pending.pop_front() {
            let mut grandchildren = Vec::new();
            self.process_one(&*hooks, inline, out, &mut grandchildren, known);
            self.partition(&source_key, grandchildren, &mut admitted, &mut pending, out);
        }
        created
    }

    /// Split hook outputs into inline work (same entity, within the allowance) and tasks for
    /// the priority lanes (core.md §1.8.1).
    fn partition(
        &self,
        source_key: &(String, Eid),
        tasks: Vec<DataPointTask>,
        admitted: &mut usize,
        pending: &mut VecDeque<DataPointTask>,
        out: &mut TaskOutput,
    ) {
        for t in tasks {
            let same = t.etype == source_key.0 && t.eid == source_key.1;
            if same && *admitted < self.max_inline {
                *admitted += 1;
                pending.push_back(t);
            } else {
                out.children.push(t);
            }
        }
    }

    /// One task of the pipeline; hook outputs are appended to `children`. Takes the task by
    /// value so its datapoints move into the raw log instead of being cloned.
    fn process_one(
        &self,
        hooks: &dyn IngestionHooks,
        task: DataPointTask,
        out: &mut TaskOutput,
        children: &mut Vec<DataPointTask>,
        known: &mut KnownEntities,
    ) -> bool {
        hooks.on_task_start(&task);
        let Some((etype_index, _, entity)) = self.model.entities.get_full(&task.etype) else {
            warn!(etype = %task.etype, "task for unknown entity type dropped");
            self.stats.task_errors.inc();
            return false;
        };
        let exists = match self.exists(etype_index, &task.etype, &task.eid, out, known) {
            Ok(e) => e,
            Err(e) => {
                warn!(etype = %task.etype, eid = %task.eid, error = %e, "existence check failed; task dropped");
                self.stats.task_errors.inc();
                return false;
            }
        };
        if task.delete {
            if exists {
                out.ops.push(WriteOp::Delete {
                    etype: task.etype.clone(),
                    eid: task.eid.clone(),
                });
                out.existence
                    .push((task.etype.clone(), task.eid.clone(), false));
                self.stats.entities_deleted.inc();
            }
            self.stats.tasks_processed.inc();
            return false;
        }
        let now = self.clock.now();
        let new_entity = !exists;
        if new_entity {
            if !hooks.allow_entity_creation(&task.etype, &task.eid, &task) {
                debug!(etype = %task.etype, eid = %task.eid, "entity creation denied by a hook");
                return false;
            }
            children.extend(hooks.on_entity_creation(&task.etype, &task.eid, &task));
        }

        let mut write = EntityWrite::new(task.etype.clone(), task.eid.clone());
        if new_entity {
            write.create = Some(Creation {
                hash: task.hash(),
                time_created: now,
            });
            if let Lifetime::Ttl { on_create, .. } = entity.spec.lifetime {
                write.ttl.push(("base".to_owned(), now + on_create));
            }
            out.existence
                .push((task.etype.clone(), task.eid.clone(), true));
        }
        if let Some(tokens) = &task.ttl_tokens {
            write
                .ttl
                .extend(tokens.iter().map(|(k, v)| (k.clone(), *v)));
        }
        for dp in &task.data_points {
            let Some(attr) = entity.attribs.get(&dp.attr) else {
                warn!(etype = %task.etype, attr = %dp.attr, "datapoint for unknown attribute dropped");
                self.stats.task_errors.inc();
                continue;
            };
            self.stage_datapoint(entity, attr, dp, now, &mut write, out);
        }
        let datapoints = task.data_points.len();
        out.datapoints += datapoints;
        if !write.is_empty() {
            out.ops.push(WriteOp::Entity(write));
        }
        for dp in &task.data_points {
            if hooks.wants_attr(&dp.etype, &dp.attr) {
                children.extend(hooks.on_new_attr(dp));
            }
        }
        out.raw.extend(task.data_points);
        self.stats.tasks_processed.inc();
        self.stats.datapoints_processed.add(datapoints as u64);
        if new_entity {
            self.stats.entities_created.inc();
        }
        new_entity
    }

    fn exists(
        &self,
        etype_index: usize,
        etype: &str,
        eid: &Eid,
        out: &TaskOutput,
        known: &mut KnownEntities,
    ) -> dp3_store::Result<bool> {
        // Earlier tasks of this chain (inline children) are not staged yet.
        if let Some((_, _, e)) = out
            .existence
            .iter()
            .rev()
            .find(|(t, i, _)| t == etype && i == eid)
        {
            return Ok(*e);
        }
        if known.contains(etype_index, eid) {
            return Ok(true);
        }
        if let Some(e) = self.staging.pending_exists(etype, eid) {
            return Ok(e);
        }
        let exists = self.store.exists(etype, eid)?;
        if exists {
            // Stays true until this lane deletes it (see `known`).
            known.insert(etype_index, eid);
        }
        Ok(exists)
    }

    /// Record the existence changes of a processed chain in the lane's memory (only once
    /// the chain finished: a panicking chain stages nothing).
    pub fn remember(&self, out: &TaskOutput, known: &mut KnownEntities) {
        for (etype, eid, exists) in &out.existence {
            let Some(index) = self.model.entities.get_index_of(etype.as_str()) else {
                continue;
            };
            if *exists {
                known.insert(index, eid);
            } else {
                known.remove(index, eid);
            }
        }
    }

    /// Stage one datapoint: master-record change, link cache, data-driven TTL token.
    fn stage_datapoint(
        &self,
        entity: &EntityType,
        attr: &AttrSpec,
        dp: &DataPoint,
        now: DateTime<Utc>,
        write: &mut EntityWrite,
        out: &mut TaskOutput,
    ) {
        let from = || LinkKey::new(entity.spec.id.clone(), dp.eid.clone());
        let using_attr = || format!("{}#{}", entity.spec.id, attr.id);
        let ttl_lifetime = match entity.spec.lifetime {
            Lifetime::Ttl { mirror_data, .. } => Some(mirror_data),
            _ => None,
        };
        match &attr.kind {
            AttrKind::Plain { data_type, .. } => {
                write.plain.push((attr.id.clone(), dp.v.clone(), now));
                if let Some(target) = data_type.link_target() {
                    out.ops.push(WriteOp::Link(LinkOp::Replace {
                        from: from(),
                        using_attr: using_attr(),
                        targets: link_targets(target, &self.model, &dp.v),
                    }));
                }
                if ttl_lifetime.is_some()
                    && let Some(ttl) = attr.ttl.filter(|t| *t > TimeDelta::zero())
                {
                    write.ttl.push(("data".to_owned(), now + ttl));
                }
            }
            AttrKind::Observations { .. } | AttrKind::Timeseries { .. } => {
                let (Some(t1), Some(t2)) = (dp.t1, dp.t2) else {
                    warn!(attr = %attr.id, "timed datapoint without t1/t2 dropped");
                    return;
                };
                let observation = matches!(attr.kind, AttrKind::Observations { .. });
                write.history.push((
                    attr.id.clone(),
                    HistoryItem {
                        t1,
                        t2,
                        v: dp.v.clone(),
                        c: observation.then_some(dp.c),
                    },
                ));
                if let AttrKind::Observations {
                    data_type,
                    history_params,
                    ..
                } = &attr.kind
                    && let Some(target) = data_type.link_target()
                {
                    let ttl = t2 + history_params.post_validity;
                    for to in link_targets(target, &self.model, &dp.v) {
                        out.ops.push(WriteOp::Link(LinkOp::Upsert {
                            from: from(),
                            to,
                            using_attr: using_attr(),
                            ttl,
                        }));
                    }
                }
                if let Some(mirror_data) = ttl_lifetime
                    && let Some(e) = data_ttl(attr, mirror_data)
                {
                    write.ttl.push(("data".to_owned(), t2 + e));
                }
            }
        }
    }
}

/// The lifetime extension `E` a timed datapoint grants (data-model.md §7.1):
/// `max(attr.ttl, max_age)` when mirroring data and `max_age` is set, else `attr.ttl`.
fn data_ttl(attr: &AttrSpec, mirror_data: bool) -> Option<TimeDelta> {
    let own = attr.ttl.unwrap_or_default();
    let e = match attr.max_age() {
        Some(max_age) if mirror_data && max_age > TimeDelta::zero() => own.max(max_age),
        _ => own,
    };
    (e > TimeDelta::zero()).then_some(e)
}

/// Targets of a link value: `{eid}` or an array of `{eid}` documents.
fn link_targets(target: &str, model: &ModelSpec, v: &bson::Bson) -> Vec<LinkKey> {
    let Some(target_type) = model.entity(target).map(|e| e.spec.id_data_type) else {
        return Vec::new();
    };
    let one = |item: &bson::Bson| -> Option<LinkKey> {
        let doc = item.as_document()?;
        let eid = Eid::from_bson(doc.get("eid")?)?;
        (eid.eid_type() == target_type).then(|| LinkKey::new(target, eid))
    };
    match v {
        bson::Bson::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dp3_model::{DataType, EidType, EntitySpec, HistoryParams, Primitive};
    use indexmap::IndexMap;

    fn attr(id: &str, kind: AttrKind, ttl: Option<TimeDelta>) -> AttrSpec {
        AttrSpec {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            ttl,
            kind,
            data_type_str: None,
            mirror_of: None,
        }
    }

    #[test]
    fn data_ttl_follows_dp3_rules() {
        let obs = |max_age: Option<TimeDelta>| AttrKind::Observations {
            data_type: DataType::Primitive(Primitive::Int),
            editable: false,
            confidence: false,
            multi_value: false,
            history_params: HistoryParams {
                max_age,
                ..Default::default()
            },
            history_force_graph: false,
        };
        let d2 = TimeDelta::days(2);
        let h1 = TimeDelta::hours(1);
        assert_eq!(data_ttl(&attr("a", obs(Some(d2)), None), true), Some(d2));
        assert_eq!(
            data_ttl(&attr("a", obs(Some(d2)), Some(h1)), true),
            Some(d2)
        );
        assert_eq!(
            data_ttl(&attr("a", obs(Some(d2)), Some(h1)), false),
            Some(h1)
        );
        assert_eq!(data_ttl(&attr("a", obs(None), None), true), None);
    }

    #[test]
    fn link_targets_of_single_and_array_values() {
        let mut entities = IndexMap::new();
        entities.insert(
            "B".to_string(),
            EntityType {
                spec: EntitySpec {
                    id: "B".into(),
                    name: "B".into(),
                    description: String::new(),
                    snapshot: true,
                    id_data_type: EidType::Int,
                    lifetime: Lifetime::Immortal,
                },
                attribs: IndexMap::new(),
            },
        );
        let model = ModelSpec { entities };
        let one = bson::bson!({"eid": 5});
        assert_eq!(
            link_targets("B", &model, &one),
            vec![LinkKey::new("B", Eid::Int(5))]
        );
        let many = bson::bson!([{"eid": 1}, {"eid": 2, "data": "x"}, {"eid": "wrong type"}]);
        assert_eq!(link_targets("B", &model, &many).len(), 2);
        assert!(link_targets("nope", &model, &one).is_empty());
    }
}
