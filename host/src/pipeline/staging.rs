//! The staging buffer between the executor lanes and the store writer (DP3's "master
//! buffer"): lanes append the writes of processed tasks, the writer swaps the buffer out and
//! applies it as one store batch.
//!
//! Entities with staged or in-flight writes are tracked so the executor's existence check
//! sees them before they reach the store (DP3's `ekey_exists` consults its buffer too).

use std::collections::HashMap;

use dp3_model::{DataPoint, DataPointTask, Eid};
use dp3_store::WriteOp;
use parking_lot::{Condvar, Mutex};

/// Identifies one task of one accept-log row: `(row seq, index of the task in the row)`.
/// Lanes process their tasks in increasing position order, per priority class.
pub type Position = (u64, u32);

/// Where a processed task came from: which lane, which priority class, which position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub lane: usize,
    pub priority: bool,
    pub position: Position,
}

/// What one processed task contributes to the next batch.
#[derive(Debug, Default)]
pub struct TaskOutput {
    pub ops: Vec<WriteOp>,
    pub raw: Vec<DataPoint>,
    /// Tasks returned by hooks (not processed inline): they go to the priority lanes after
    /// they are durable.
    pub children: Vec<DataPointTask>,
    /// Entities whose existence changed: `(etype, eid, exists afterwards)`.
    pub existence: Vec<(String, Eid, bool)>,
    pub datapoints: usize,
}

/// The contents of one batch being staged.
#[derive(Debug, Default)]
pub struct Buffer {
    pub ops: Vec<WriteOp>,
    pub raw: Vec<DataPoint>,
    pub children: Vec<DataPointTask>,
    pub completions: Vec<Completion>,
    pub datapoints: usize,
    pub tasks: usize,
    pub generation: u64,
}

#[derive(Default)]
struct Inner {
    buffer: Buffer,
    /// Existence of entities with uncommitted writes: key → (generation of the last staging,
    /// exists afterwards).
    pending: HashMap<(String, Eid), (u64, bool)>,
    generation: u64,
}

/// Shared between lanes (producers) and the writer (consumer).
#[derive(Default)]
pub struct Staging {
    inner: Mutex<Inner>,
    /// Signalled when the buffer grows, so the writer can flush early when it is large.
    grew: Condvar,
}

impl Staging {
    pub fn new() -> Self {
        Self::default()
    }

    /// Existence of an entity according to uncommitted writes (`None` = not known here, ask
    /// the store).
    pub fn pending_exists(&self, etype: &str, eid: &Eid) -> Option<bool> {
        let inner = self.inner.lock();
        // A tuple key needs owned parts; the lookup allocates once per task, which is cheap
        // next to the store round trip it saves.
        inner
            .pending
            .get(&(etype.to_owned(), eid.clone()))
            .map(|(_, e)| *e)
    }

    /// Stage the output of one processed task.
    pub fn stage(&self, completion: Completion, out: TaskOutput) {
        let mut inner = self.inner.lock();
        let generation = inner.generation;
        for (etype, eid, exists) in out.existence {
            inner.pending.insert((etype, eid), (generation, exists));
        }
        let b = &mut inner.buffer;
        b.ops.extend(out.ops);
        b.raw.extend(out.raw);
        b.children.extend(out.children);
        b.completions.push(completion);
        b.datapoints += out.datapoints;
        b.tasks += 1;
        drop(inner);
        self.grew.notify_one();
    }

    /// Wait until the buffer holds at least `min_datapoints` datapoints or `timeout` passes.
    pub fn wait_for(&self, min_datapoints: usize, timeout: std::time::Duration) {
        let mut inner = self.inner.lock();
        let deadline = std::time::Instant::now() + timeout;
        while inner.buffer.datapoints < min_datapoints {
            if self.grew.wait_until(&mut inner, deadline).timed_out() {
                break;
            }
        }
    }

    /// Swap the buffer out for writing. Its entities stay "pending" until
    /// [`Staging::committed`] is called with the returned buffer's generation.
    pub fn take(&self) -> Buffer {
        let mut inner = self.inner.lock();
        let generation = inner.generation;
        inner.generation += 1;
        let mut b = std::mem::take(&mut inner.buffer);
        b.generation = generation;
        b
    }

    /// The batch of `generation` is in the store: forget pending state staged by it (state
    /// re-staged by a later generation stays).
    pub fn committed(&self, generation: u64) {
        let mut inner = self.inner.lock();
        inner.pending.retain(|_, (g, _)| *g > generation);
    }

    /// Number of tasks currently staged (not yet taken).
    pub fn staged_tasks(&self) -> usize {
        self.inner.lock().buffer.tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_existence_survives_until_commit() {
        let s = Staging::new();
        let e = Eid::Int(1);
        assert_eq!(s.pending_exists("A", &e), None);
        s.stage(
            Completion {
                lane: 0,
                priority: false,
                position: (1, 0),
            },
            TaskOutput {
                existence: vec![("A".into(), e.clone(), true)],
                datapoints: 3,
                ..Default::default()
            },
        );
        assert_eq!(s.pending_exists("A", &e), Some(true));
        let b = s.take();
        assert_eq!(b.datapoints, 3);
        assert_eq!(b.completions.len(), 1);
        // taken but not committed: still pending
        assert_eq!(s.pending_exists("A", &e), Some(true));
        // re-staged by the next generation (deleted)
        s.stage(
            Completion {
                lane: 0,
                priority: false,
                position: (2, 0),
            },
            TaskOutput {
                existence: vec![("A".into(), e.clone(), false)],
                ..Default::default()
            },
        );
        s.committed(b.generation);
        assert_eq!(s.pending_exists("A", &e), Some(false));
        let b2 = s.take();
        s.committed(b2.generation);
        assert_eq!(s.pending_exists("A", &e), None);
    }
}
