//! Prometheus metrics (`GET /metrics`): the `metrics` facade with the Prometheus exporter.
//! Counters kept by the rooms themselves (pipeline stats, hook telemetry, snapshot runs) are
//! copied into the registry at scrape time, together with gauges read on demand (queue
//! depth, entities per type, resident memory).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use dp3_model::ModelSpec;
use dp3_store::Store;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::pipeline::PipelineStats;

/// Something that contributes figures at scrape time.
pub trait MetricsSource: Send + Sync {
    /// Record current values through the `metrics` macros.
    fn record(&self);
}

/// Everything `/metrics` reads.
#[derive(Clone)]
pub struct MetricsState {
    handle: PrometheusHandle,
    sources: Arc<Vec<Arc<dyn MetricsSource>>>,
}

impl MetricsState {
    /// Install the process-wide recorder (once per process) with the given sources.
    pub fn install(sources: Vec<Arc<dyn MetricsSource>>) -> anyhow::Result<MetricsState> {
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
        Ok(MetricsState {
            handle,
            sources: Arc::new(sources),
        })
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        for s in self.sources.iter() {
            s.record();
        }
        if let Some(rss) = resident_memory_bytes() {
            metrics::gauge!("dp3_process_resident_memory_bytes").set(rss as f64);
        }
        self.handle.render()
    }

    /// The `/metrics` route.
    pub fn router(self) -> Router {
        Router::new()
            .route("/metrics", get(scrape))
            .with_state(self)
    }
}

async fn scrape(State(m): State<MetricsState>) -> String {
    // Sources may read the store: keep that off the reactor threads.
    tokio::task::spawn_blocking(move || m.render())
        .await
        .unwrap_or_default()
}

/// Resident set size of this process (Linux `/proc/self/statm`).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Pipeline counters and queue depth.
pub struct PipelineMetrics {
    pub stats: Arc<PipelineStats>,
    pub in_flight: Arc<dyn Fn() -> usize + Send + Sync>,
}

impl MetricsSource for PipelineMetrics {
    fn record(&self) {
        let s = &self.stats;
        let c = |name: &'static str, v: u64| metrics::counter!(name).absolute(v);
        c("dp3_tasks_accepted_total", s.tasks_accepted.get());
        c("dp3_datapoints_accepted_total", s.datapoints_accepted.get());
        c("dp3_tasks_processed_total", s.tasks_processed.get());
        c(
            "dp3_datapoints_processed_total",
            s.datapoints_processed.get(),
        );
        c("dp3_task_errors_total", s.task_errors.get());
        c("dp3_entities_created_total", s.entities_created.get());
        c("dp3_entities_deleted_total", s.entities_deleted.get());
        c("dp3_generated_tasks_total", s.generated_tasks.get());
        c(
            "dp3_generated_tasks_refused_total",
            s.invalid_generated_tasks.get(),
        );
        c("dp3_batches_applied_total", s.batches_applied.get());
        c("dp3_datapoints_applied_total", s.datapoints_applied.get());
        c("dp3_store_write_errors_total", s.apply_errors.get());
        c("dp3_tasks_replayed_total", s.tasks_replayed.get());
        c(
            "dp3_duplicate_deliveries_skipped_total",
            s.duplicates_skipped.get(),
        );
        metrics::gauge!("dp3_queue_tasks_in_flight").set((self.in_flight)() as f64);
    }
}

/// Entities per type (master records). Counting reads the whole entity table, so it is
/// redone only when this process committed a batch since the last count, or after
/// [`EntityCounts::MAX_AGE`] (other processes may share the store): a client polling
/// `/metrics` many times a second (such as `dp3 load` waiting for its datapoints to be
/// applied) took CPU from the store writer.
pub struct EntityCounts {
    model: Arc<ModelSpec>,
    store: Arc<dyn Store>,
    stats: Arc<PipelineStats>,
    /// When the last count was taken and the number of applied batches it saw.
    last_count: parking_lot::Mutex<Option<(std::time::Instant, u64)>>,
}

impl EntityCounts {
    pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30);

    pub fn new(model: Arc<ModelSpec>, store: Arc<dyn Store>, stats: Arc<PipelineStats>) -> Self {
        EntityCounts {
            model,
            store,
            stats,
            last_count: parking_lot::Mutex::new(None),
        }
    }
}

impl MetricsSource for EntityCounts {
    fn record(&self) {
        // Read before counting: a batch committed during the count triggers the next one.
        let changes = self.stats.batches_applied.get();
        let mut last = self.last_count.lock();
        if last.is_some_and(|(at, seen)| seen == changes && at.elapsed() < Self::MAX_AGE) {
            // The gauges keep the values of the last count.
            return;
        }
        *last = Some((std::time::Instant::now(), changes));
        for etype in self.model.entities.keys() {
            if let Ok(n) = self.store.count_master(etype) {
                metrics::gauge!("dp3_entities", "etype" => etype.clone()).set(n as f64);
            }
        }
    }
}

/// Per-hook telemetry (DP3's hook metrics: executions, failures, duration, created tasks,
/// decisions) and modules' own metrics, labelled by family/module/hook/context.
pub struct HookMetrics {
    pub stats: Arc<crate::plugins::StatsTable>,
    pub live: Arc<crate::plugins::LiveHooks>,
    pub module_values: Arc<dp3_plugin_api::host::ModuleMetricValues>,
}

impl MetricsSource for HookMetrics {
    fn record(&self) {
        for (id, s) in self.stats.snapshot() {
            let labels = [
                ("family", id.family.to_owned()),
                ("module", id.module.clone()),
                ("hook", id.name.clone()),
                ("context", id.context.join(",")),
            ];
            let c = |name: &'static str, v: u64| metrics::counter!(name, &labels).absolute(v);
            c("dp3_hook_executions_total", s.executions);
            c("dp3_hook_failures_total", s.failures);
            c("dp3_hook_panics_total", s.panics);
            c("dp3_hook_duration_ns_total", s.duration_ns);
            c("dp3_hook_created_tasks_total", s.created_tasks);
            c("dp3_hook_refused_tasks_total", s.invalid_tasks);
            c("dp3_hook_decisions_allowed_total", s.decisions_allowed);
            c("dp3_hook_decisions_denied_total", s.decisions_denied);
        }
        for m in self.live.load().disabled_modules() {
            metrics::gauge!("dp3_module_disabled", "module" => m).set(1.0);
        }
        for ((module, name), v) in self.module_values.snapshot() {
            metrics::gauge!("dp3_module_metric", "module" => module, "name" => name).set(v);
        }
    }
}
