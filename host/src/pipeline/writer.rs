//! The store writer: turns staged task outputs into store batches, keeps the lanes'
//! watermarks (committed with every batch), makes hook outputs durable before their parents'
//! batch commits, and replays the accept log at start. See the module docs of `pipeline`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bson::{Bson, Document, doc};
use dp3_model::validate::EmptyTasks;
use dp3_model::{DataPointTask, ModelSpec};
use dp3_store::{Store, WriteBatch};
use tracing::{error, warn};

use super::staging::{Completion, MessageTag, Position};
use super::stats::Counter;
use super::{PipelineConfig, PipelineError, Shared, Work, lane_index};
use crate::queue::accept_log::{AcceptLog, NewRow, RowKind};

/// Store metadata key of the pipeline state.
pub const STATE_KEY: &str = "pipeline/state";

/// Watermarks of every (lane, queue) and the last committed generated row.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct State {
    shards: u32,
    threads: u32,
    normal: Vec<Position>,
    priority: Vec<Position>,
    generated_upto: u64,
}

impl State {
    fn fresh(shards: u32, threads: u32, generated_upto: u64) -> State {
        let lanes = (shards.max(1) * threads.max(1)) as usize;
        State {
            shards: shards.max(1),
            threads: threads.max(1),
            normal: vec![(0, 0); lanes],
            priority: vec![(0, 0); lanes],
            generated_upto,
        }
    }

    fn watermark(&self, task: &DataPointTask, priority: bool) -> Position {
        let lane = lane_index(task.hash(), self.shards, self.threads);
        let marks = if priority {
            &self.priority
        } else {
            &self.normal
        };
        marks.get(lane).copied().unwrap_or((0, 0))
    }

    fn complete(&mut self, c: &Completion) {
        let marks = if c.priority {
            &mut self.priority
        } else {
            &mut self.normal
        };
        if let Some(m) = marks.get_mut(c.lane)
            && c.position > *m
        {
            *m = c.position;
        }
    }

    fn to_document(&self) -> Document {
        let marks = |v: &[Position]| {
            v.iter()
                .map(|(s, i)| Bson::Array(vec![Bson::Int64(*s as i64), Bson::Int64(i64::from(*i))]))
                .collect::<Vec<_>>()
        };
        doc! {
            "shards": i64::from(self.shards),
            "threads": i64::from(self.threads),
            "normal": marks(&self.normal),
            "priority": marks(&self.priority),
            "generated_upto": self.generated_upto as i64,
        }
    }

    fn from_document(d: &Document) -> Option<State> {
        let int = |k: &str| d.get_i64(k).ok();
        let marks = |k: &str| -> Option<Vec<Position>> {
            d.get_array(k)
                .ok()?
                .iter()
                .map(|m| {
                    let pair = m.as_array()?;
                    let s = pair.first()?.as_i64()?;
                    let i = pair.get(1)?.as_i64()?;
                    Some((u64::try_from(s).ok()?, u32::try_from(i).ok()?))
                })
                .collect()
        };
        Some(State {
            shards: u32::try_from(int("shards")?).ok()?,
            threads: u32::try_from(int("threads")?).ok()?,
            normal: marks("normal")?,
            priority: marks("priority")?,
            generated_upto: u64::try_from(int("generated_upto")?).ok()?,
        })
    }
}

/// The committed state (or a fresh one for a new store).
pub(super) fn load_state(store: &dyn Store, cfg: &PipelineConfig) -> Result<State, PipelineError> {
    Ok(match store.get_meta(STATE_KEY)? {
        Some(d) => State::from_document(&d).unwrap_or_else(|| {
            warn!("unreadable pipeline state in the store; starting from empty watermarks");
            State::fresh(cfg.shards, cfg.threads, 0)
        }),
        None => State::fresh(cfg.shards, cfg.threads, 0),
    })
}

/// Replay the accept log: drop generated rows of uncommitted batches, rewrite the remaining
/// rows so that each holds only unapplied tasks (in one transaction, preserving order), and
/// dispatch them. Afterwards the in-memory watermarks restart from zero in the current lane
/// layout (every remaining row is fully unapplied, and all new rows get higher sequence
/// numbers, so even a crash before the first commit replays correctly). Returns the number of
/// tasks dispatched.
pub(super) fn replay(
    shared: &Shared,
    log: &AcceptLog,
    committed: &State,
) -> Result<usize, PipelineError> {
    log.delete_generated_after(committed.generated_upto)?;
    let rows = log.rows()?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut kept: Vec<(bool, Vec<DataPointTask>)> = Vec::new();
    for row in &rows {
        let unapplied: Vec<DataPointTask> = row
            .tasks
            .iter()
            .enumerate()
            .filter(|(i, t)| (row.seq, *i as u32) > committed.watermark(t, row.priority))
            .map(|(_, t)| t.clone())
            .collect();
        if !unapplied.is_empty() {
            kept.push((row.priority, unapplied));
        }
    }
    let old: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    let new_rows: Vec<NewRow<'_>> = kept
        .iter()
        .map(|(priority, tasks)| NewRow {
            // Replayed hook outputs are no longer tied to an uncommitted batch.
            kind: RowKind::External,
            priority: *priority,
            tasks,
        })
        .collect();
    let seqs = log.rewrite(&old, &new_rows)?;
    let mut dispatched = 0;
    for (seq, (priority, tasks)) in seqs.into_iter().zip(kept) {
        shared.rows.lock().insert(seq, tasks.len());
        shared
            .in_flight
            .fetch_add(tasks.len(), std::sync::atomic::Ordering::SeqCst);
        for (i, task) in tasks.into_iter().enumerate() {
            dispatched += 1;
            shared.dispatch(Work {
                priority,
                position: (seq, i as u32),
                origin: None,
                task,
            });
        }
    }
    shared.stats.tasks_replayed.add(dispatched as u64);
    Ok(dispatched)
}

/// Validate and normalise a hook-generated task before it is queued: unknown entity
/// types/attributes, mismatched datapoints, bad values and empty tasks are refused with a
/// logged reason (the module's fault must not poison the queue).
pub(super) fn check_generated(
    model: &ModelSpec,
    task: DataPointTask,
) -> Result<DataPointTask, String> {
    dp3_model::validate::validate_task(model, task, EmptyTasks::Reject).map_err(|e| e.to_string())
}

/// How a batch's tasks are made durable and released: the accept log with watermarks
/// (`dp3 run`, [`LogSettlement`]) or RabbitMQ acks (`dp3 worker`, `super::broker`).
pub(super) trait Settlement: Send {
    /// Once, when the writer starts (broker mode: publish what a previous run left).
    fn start(&mut self, _shared: &Shared) {}
    /// Make the batch's validated hook outputs durable before the batch commits (`tags`
    /// is parallel to `children` in broker mode, empty otherwise). `None`: gave up at
    /// shutdown (the batch is not applied).
    fn persist_children(
        &mut self,
        shared: &Shared,
        children: Vec<DataPointTask>,
        tags: Vec<MessageTag>,
        stopping: bool,
    ) -> Option<()>;
    /// Metadata committed atomically with the batch.
    fn batch_meta(&mut self, completions: &[Completion]) -> Vec<(String, Document)>;
    /// The batch is in the store: release its tasks (and queue the persisted children).
    fn committed(&mut self, shared: &Shared, completions: &[Completion]);
}

/// `dp3 run`: hook outputs go to the accept log (a generated row), the lanes' watermarks are
/// committed with every batch, finished rows are deleted.
pub(super) struct LogSettlement {
    log: Arc<AcceptLog>,
    state: State,
    /// The generated row persisted for the batch being written.
    children: Option<(u64, Vec<DataPointTask>)>,
    /// Finished rows are deleted on their own thread: the delete waits for the accept log's
    /// connection, which the acceptor holds while it syncs appends, and the writer thread is
    /// what caps ingestion. A row left behind by a crash is skipped by watermark at replay.
    retire: Option<crossbeam_channel::Sender<Vec<u64>>>,
}

impl LogSettlement {
    pub(super) fn new(log: Arc<AcceptLog>, cfg: &PipelineConfig, committed: &State) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<u64>>();
        let retiring = log.clone();
        let spawned = std::thread::Builder::new()
            .name("dp3-log-retire".into())
            .spawn(move || {
                for finished in rx {
                    delete_finished(&retiring, &finished);
                }
            });
        LogSettlement {
            log,
            state: State::fresh(cfg.shards, cfg.threads, committed.generated_upto),
            children: None,
            retire: spawned.is_ok().then_some(tx),
        }
    }
}

fn delete_finished(log: &AcceptLog, finished: &[u64]) {
    if let Err(e) = log.delete(finished) {
        // Harmless: the rows are skipped by watermark at the next replay.
        warn!(error = %e, "cannot delete finished accept-log rows");
    }
}

impl Settlement for LogSettlement {
    fn persist_children(
        &mut self,
        shared: &Shared,
        children: Vec<DataPointTask>,
        _tags: Vec<MessageTag>,
        stopping: bool,
    ) -> Option<()> {
        if children.is_empty() {
            return Some(());
        }
        let row = [NewRow {
            kind: RowKind::Generated,
            priority: true,
            tasks: &children,
        }];
        let seqs = retry(
            shared,
            stopping,
            "accept log",
            Some(&shared.stats.apply_errors),
            || self.log.append(&row).map_err(|e| e.to_string()),
        )?;
        let seq = seqs.first().copied()?;
        self.state.generated_upto = seq;
        self.children = Some((seq, children));
        Some(())
    }

    fn batch_meta(&mut self, completions: &[Completion]) -> Vec<(String, Document)> {
        for c in completions {
            self.state.complete(c);
        }
        vec![(STATE_KEY.to_owned(), self.state.to_document())]
    }

    fn committed(&mut self, shared: &Shared, completions: &[Completion]) {
        // Dispatch the now-durable hook outputs, then retire finished rows.
        if let Some((seq, children)) = self.children.take() {
            shared.rows.lock().insert(seq, children.len());
            shared.in_flight.fetch_add(children.len(), Ordering::SeqCst);
            for (i, task) in children.into_iter().enumerate() {
                shared.dispatch(Work {
                    priority: true,
                    position: (seq, i as u32),
                    origin: None,
                    task,
                });
            }
        }
        let mut finished = Vec::new();
        {
            let mut rows = shared.rows.lock();
            for c in completions {
                let seq = c.position.0;
                if let Some(n) = rows.get_mut(&seq) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        rows.remove(&seq);
                        finished.push(seq);
                    }
                }
            }
        }
        if finished.is_empty() {
            return;
        }
        match &self.retire {
            Some(tx) => {
                if let Err(e) = tx.send(finished) {
                    delete_finished(&self.log, &e.into_inner());
                }
            }
            None => delete_finished(&self.log, &finished),
        }
    }
}

/// The writer loop: every `flush_interval` (or `flush_datapoints`), make the staged batch's
/// hook outputs durable, apply the batch with its settlement metadata in one store
/// transaction, then release its tasks.
pub(super) fn run(shared: &Shared, mut settlement: Box<dyn Settlement>, stop: &AtomicBool) {
    let cfg = &shared.cfg;
    let release = Releaser::start(shared.staging.clone());
    settlement.start(shared);
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if !stopping {
            shared
                .staging
                .wait_for(cfg.flush_datapoints, cfg.flush_interval);
        }
        let buf = shared.staging.take();
        if buf.tasks == 0 {
            shared.staging.committed(buf.generation);
            if stopping {
                break;
            }
            continue;
        }

        // 1. Hook outputs become durable before the batch that produced them commits.
        let mut children = Vec::with_capacity(buf.children.len());
        let mut tags = Vec::with_capacity(buf.child_tags.len());
        let mut child_tags = buf.child_tags.into_iter();
        for t in buf.children {
            let tag = child_tags.next();
            let (etype, eid) = (t.etype.clone(), t.eid.clone());
            match check_generated(&shared.model, t) {
                Ok(t) => {
                    children.push(t);
                    tags.extend(tag);
                }
                Err(reason) => {
                    warn!(%etype, %eid, %reason, "task returned by a hook refused");
                    shared.stats.invalid_generated_tasks.inc();
                }
            }
        }
        shared.stats.generated_tasks.add(children.len() as u64);
        if settlement
            .persist_children(shared, children, tags, stopping)
            .is_none()
        {
            error!("giving up on a batch at shutdown; its tasks stay queued");
            break;
        }

        // 2. Apply the batch together with the settlement metadata.
        let batch = WriteBatch {
            ops: buf.ops,
            raw: buf.raw,
            meta: settlement.batch_meta(&buf.completions),
        };
        if retry(
            shared,
            stopping,
            "store",
            Some(&shared.stats.apply_errors),
            || shared.store.apply(&batch).map_err(|e| e.to_string()),
        )
        .is_none()
        {
            error!("giving up on a batch at shutdown; its tasks stay queued");
            break;
        }
        shared.stats.batches_applied.inc();
        shared.stats.datapoints_applied.add(buf.datapoints as u64);
        shared.staging.committed(buf.generation);

        // 3. Release the batch's tasks.
        settlement.committed(shared, &buf.completions);
        shared
            .in_flight
            .fetch_sub(buf.completions.len(), Ordering::SeqCst);
        release.free(batch);
    }
}

/// Frees applied batches on its own thread (dropping a batch's many small allocations was
/// about 6% of the store writer's time, and the writer thread is what caps ingestion) and
/// hands their emptied vectors back to the staging buffer.
struct Releaser {
    tx: Option<crossbeam_channel::Sender<WriteBatch>>,
}

impl Releaser {
    fn start(staging: Arc<super::staging::Staging>) -> Releaser {
        let (tx, rx) = crossbeam_channel::bounded::<WriteBatch>(2);
        let spawned = std::thread::Builder::new()
            .name("dp3-writer-free".into())
            .spawn(move || {
                for batch in rx {
                    staging.recycle(batch.ops, batch.raw);
                }
            });
        Releaser {
            // Without the thread, batches are simply dropped in place.
            tx: spawned.is_ok().then_some(tx),
        }
    }

    fn free(&self, batch: WriteBatch) {
        if let Some(tx) = &self.tx {
            // Full (the thread is behind) or gone: drop here.
            let _ = tx.try_send(batch);
        }
    }
}

/// Retry a write until it succeeds; while it fails, new submissions are refused as
/// unavailable (HTTP 503). At shutdown, give up after a few attempts.
pub(super) fn retry<T>(
    shared: &Shared,
    stopping: bool,
    what: &str,
    errors: Option<&Counter>,
    mut f: impl FnMut() -> Result<T, String>,
) -> Option<T> {
    let mut attempts = 0u32;
    loop {
        match f() {
            Ok(v) => {
                if attempts > 0 {
                    *shared.unavailable.lock() = None;
                    tracing::info!("{what} writable again");
                }
                return Some(v);
            }
            Err(e) => {
                attempts += 1;
                if let Some(c) = errors {
                    c.inc();
                }
                error!(error = %e, attempts, "{what} write failed; retrying");
                *shared.unavailable.lock() = Some(format!("{what} write failed: {e}"));
                if stopping && attempts >= 3 {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(500 * u64::from(attempts.min(4))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_and_monotonic_watermarks() {
        let mut s = State::fresh(2, 3, 7);
        s.complete(&Completion {
            lane: 4,
            priority: false,
            position: (10, 2),
        });
        s.complete(&Completion {
            lane: 4,
            priority: false,
            position: (10, 1),
        });
        s.complete(&Completion {
            lane: 1,
            priority: true,
            position: (3, 0),
        });
        assert_eq!(s.normal[4], (10, 2));
        assert_eq!(s.priority[1], (3, 0));
        let back = State::from_document(&s.to_document()).unwrap();
        assert_eq!(back, s);
        assert!(State::from_document(&doc! {"shards": 1}).is_none());
    }
}
