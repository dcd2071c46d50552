//! Glue between the plugin room's live hook registry and the rooms that dispatch hooks: the
//! executor ([`IngestionHooks`]), the snapshooter ([`SnapshotHooks`]) and the updater
//! ([`UpdaterHooks`]). Each call site loads the registry generation current at that moment
//! (one task / one snapshot run / one updater batch sees one generation), so a hot reload
//! swaps hooks between tasks without stopping anything.

use std::sync::Arc;
use std::time::Duration;

use bson::Document;
use dp3_model::{DataPoint, DataPointTask, Eid};
use indexmap::IndexMap;

use crate::background::telemetry::SourceTelemetry;
use crate::background::updater::{UpdateThread, UpdateThreadKey, UpdaterHooks};
use crate::pipeline::executor::HookSource;
use crate::pipeline::hooks::IngestionHooks;
use crate::plugins::{HookRegistry, LiveHooks, SnapshotEntity, SnapshotUnit};
use crate::snapshot::hooks::{SnapshotHookSource, SnapshotHooks};
use crate::snapshot::unit::{Unit, UnitEntity};

/// One registry generation, seen as ingestion and snapshot hooks.
pub struct RegistryHooks {
    registry: Arc<HookRegistry>,
    telemetry: Option<Arc<SourceTelemetry>>,
}

impl IngestionHooks for RegistryHooks {
    fn on_task_start(&self, task: &DataPointTask) {
        // Core telemetry first, as DP3's core modules register before secondary modules.
        if let Some(t) = &self.telemetry {
            t.observe(task);
        }
        self.registry.on_task_start(task);
    }

    fn allow_entity_creation(&self, etype: &str, eid: &Eid, task: &DataPointTask) -> bool {
        self.registry.allow_entity_creation(etype, eid, task)
    }

    fn on_entity_creation(
        &self,
        etype: &str,
        eid: &Eid,
        task: &DataPointTask,
    ) -> Vec<DataPointTask> {
        self.registry.on_entity_creation(etype, eid, task)
    }

    fn on_new_attr(&self, dp: &DataPoint) -> Vec<DataPointTask> {
        self.registry.on_new_attr(&dp.etype, &dp.attr, &dp.eid, dp)
    }

    fn wants_attr(&self, etype: &str, attr: &str) -> bool {
        self.registry.has_attr_hooks(etype, attr)
    }
}

impl SnapshotHooks for RegistryHooks {
    fn used_links(&self) -> Vec<(String, String)> {
        self.registry.used_links().iter().cloned().collect()
    }

    fn snapshot_init(&self) -> Vec<DataPointTask> {
        self.registry.snapshot_init()
    }

    fn snapshot_finalize(&self) -> Vec<DataPointTask> {
        self.registry.snapshot_finalize()
    }

    fn timeseries(&self, etype: &str, master: &Document) -> Vec<DataPointTask> {
        self.registry.run_timeseries_hooks(etype, master)
    }

    fn needs_master(&self, etype: &str) -> bool {
        self.registry.needs_master(etype)
    }

    fn correlate(&self, unit: &mut Unit) -> Vec<DataPointTask> {
        // Move the documents into the registry's unit shape and back: no copies.
        let mut su = SnapshotUnit {
            entities: IndexMap::with_capacity(unit.entities.len()),
        };
        for e in &mut unit.entities {
            su.entities.insert(
                (e.etype.clone(), e.eid.clone()),
                SnapshotEntity {
                    values: std::mem::take(&mut e.values),
                    master: std::mem::take(&mut e.master),
                },
            );
        }
        let tasks = self.registry.run_correlation_hooks(&mut su);
        for (e, ((_, _), se)) in unit.entities.iter_mut().zip(su.entities) {
            let UnitEntity { values, master, .. } = e;
            *values = se.values;
            *master = se.master;
        }
        tasks
    }
}

/// The live registry as the source of every room's hooks.
#[derive(Clone)]
pub struct LiveHookSource {
    pub live: Arc<LiveHooks>,
    pub telemetry: Option<Arc<SourceTelemetry>>,
}

impl LiveHookSource {
    fn current(&self) -> RegistryHooks {
        RegistryHooks {
            registry: self.live.load(),
            telemetry: self.telemetry.clone(),
        }
    }
}

impl HookSource for LiveHookSource {
    fn load(&self) -> Arc<dyn IngestionHooks> {
        Arc::new(self.current())
    }
}

impl SnapshotHookSource for LiveHookSource {
    fn load(&self) -> Arc<dyn SnapshotHooks> {
        Arc::new(self.current())
    }
}

impl UpdaterHooks for LiveHookSource {
    fn threads(&self) -> Vec<UpdateThread> {
        self.live
            .load()
            .updater_threads()
            .into_iter()
            .map(|t| UpdateThread {
                key: UpdateThreadKey {
                    period_secs: t.period.as_secs(),
                    etype: t.entity,
                    eid_only: t.eid_only,
                },
                hook_ids: t.hook_ids,
            })
            .collect()
    }

    fn run_periodic(
        &self,
        thread: &UpdateThreadKey,
        eid: &Eid,
        master: Option<&Document>,
    ) -> Vec<DataPointTask> {
        let registry = self.live.load();
        let period = Duration::from_secs(thread.period_secs);
        match master {
            Some(m) if !thread.eid_only => {
                registry.run_periodic_update(period, &thread.etype, eid, m)
            }
            _ => registry.run_periodic_eid_update(period, &thread.etype, eid),
        }
    }
}
