//! Counters of the pipeline, read by `/metrics` and by tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the pipeline has done since start.
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub tasks_accepted: Counter,
    pub datapoints_accepted: Counter,
    pub tasks_processed: Counter,
    pub datapoints_processed: Counter,
    pub task_errors: Counter,
    pub entities_created: Counter,
    pub entities_deleted: Counter,
    pub generated_tasks: Counter,
    pub invalid_generated_tasks: Counter,
    pub batches_applied: Counter,
    pub datapoints_applied: Counter,
    pub apply_errors: Counter,
    pub tasks_replayed: Counter,
    /// Broker mode: deliveries skipped as copies of applied or in-flight messages.
    pub duplicates_skipped: Counter,
}
