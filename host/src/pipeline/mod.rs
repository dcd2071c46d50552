//! The task pipeline: accept → lanes (executor) → staging → writer (store).
//!
//! * **Accepting** ([`Pipeline::submit`], the [`TaskSubmitter`] the API uses): tasks are
//!   appended to the durable accept log by one acceptor thread that group-commits all
//!   waiting submissions, then dispatched to lanes; only then is the caller told "accepted".
//! * **Lanes**: `worker_processes × worker_threads` threads. A task goes to lane
//!   `shard × threads + thread` with `shard = HASH(key) mod worker_processes` (DP3's routing)
//!   and `thread = (HASH(key) / worker_processes) mod worker_threads`, so one entity's tasks
//!   are processed in order by one thread. Each lane has a normal queue (external tasks) and
//!   a priority queue (hook outputs), drained priority first.
//! * **Writer**: swaps the staging buffer out every `flush_interval` (or when it holds
//!   `flush_datapoints`), makes the hook outputs of that batch durable in the accept log,
//!   applies the batch to the store in one transaction together with the lanes' watermarks,
//!   then dispatches the hook outputs and deletes finished accept-log rows.
//!
//! Exactly-once after a crash: every lane processes its tasks in accept-log order per queue,
//! and the watermark of each (lane, queue) — the position of the last task whose writes are
//! in the store — is committed atomically with those writes. At start, accept-log rows are
//! replayed, skipping tasks at or below their lane's watermark; generated rows newer than
//! the last committed batch are dropped because replaying their parents generates them
//! again.
//!
//! Backpressure: at most `max_in_flight` tasks may be accepted but not yet applied; beyond
//! that `submit` fails with [`SubmitError::Overloaded`] (HTTP 503 + Retry-After). After such
//! a refusal, `refusal` answers overloaded (so the API refuses requests unparsed) until the
//! in-flight count falls to 7/8 of the limit.
//!
//! Broker mode ([`Pipeline::start_worker`], `dp3 worker`) replaces the accept log by
//! RabbitMQ: see [`broker`].

pub mod broker;
pub mod executor;
pub mod hooks;
pub mod known;
pub mod priority;
pub mod staging;
pub mod stats;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use dp3_model::{DataPointTask, ModelSpec};
use dp3_store::Store;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::queue::accept_log::{AcceptLog, AcceptLogError, NewRow, RowKind};
use crate::queue::{Accepted, SubmitError, TaskSubmitter};
use broker::{Admission, BrokerIntake, BrokerLink, BrokerSettlement, Delivery};
use executor::{Executor, HookSource};
use staging::{Completion, MessageTag, Staging, TaskOutput};
pub use stats::PipelineStats;
use writer::{LogSettlement, Settlement};

/// Tuning of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// `processing_core.worker_processes`: shards (DP3's routing modulus).
    pub shards: u32,
    /// `processing_core.worker_threads`: lanes per shard.
    pub threads: u32,
    /// `processing_core.max_inline_generated_tasks`.
    pub max_inline: usize,
    /// Tasks accepted but not yet applied before `submit` answers "overloaded".
    pub max_in_flight: usize,
    /// Flush the staging buffer when it holds this many datapoints (lanes wait while it
    /// holds twice as many)…
    pub flush_datapoints: usize,
    /// …or at least this often.
    pub flush_interval: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            shards: 1,
            threads: 8,
            max_inline: 0,
            max_in_flight: 200_000,
            flush_datapoints: 20_000,
            flush_interval: Duration::from_millis(200),
        }
    }
}

/// One task handed to a lane.
struct Work {
    priority: bool,
    position: staging::Position,
    /// Broker mode: the message's identity (hook outputs derive theirs from it).
    origin: Option<MessageTag>,
    task: DataPointTask,
}

/// Where tasks come from and what keeps them until they are applied.
pub enum Intake {
    /// `dp3 run`: the HTTP API through the durable accept log.
    AcceptLog(Arc<AcceptLog>),
    /// `dp3 worker`: RabbitMQ deliveries of worker `worker`'s queues.
    Broker {
        link: Arc<dyn BrokerLink>,
        worker: u32,
    },
}

/// A batch of tasks waiting for the acceptor.
struct Submission {
    tasks: Vec<DataPointTask>,
    reply: oneshot::Sender<Result<(), SubmitError>>,
}

/// What keeps tasks until they are applied (the opened form of [`Intake`]).
enum Source {
    AcceptLog(Arc<AcceptLog>),
    Broker(Arc<BrokerIntake>),
}

/// State shared by the acceptor, lanes and writer.
struct Shared {
    cfg: PipelineConfig,
    store: Arc<dyn Store>,
    source: Source,
    staging: Arc<Staging>,
    stats: Arc<PipelineStats>,
    model: Arc<ModelSpec>,
    lanes: Vec<(Sender<Work>, Sender<Work>)>,
    /// Accept-log rows not fully applied: seq → tasks still outstanding.
    rows: Mutex<HashMap<u64, usize>>,
    /// Tasks dispatched (or reserved for dispatch) but not yet applied.
    in_flight: AtomicUsize,
    /// Set when a submission is refused as overloaded, cleared once `in_flight` falls to the
    /// low watermark: while set, [`TaskSubmitter::refusal`] refuses requests before they are
    /// parsed. Without it the API parsed nearly every request it then refused: in steady
    /// overload `in_flight` sits just below the limit, with less room than one request.
    full: AtomicBool,
    accepting: AtomicBool,
    /// Tells idle lanes to exit (shutdown).
    lanes_stop: AtomicBool,
    /// Set while the store or accept log cannot write (e.g. disk full).
    unavailable: Mutex<Option<String>>,
}

impl Shared {
    fn lane_of(&self, task: &DataPointTask) -> usize {
        lane_index(task.hash(), self.cfg.shards, self.cfg.threads)
    }

    fn dispatch(&self, work: Work) {
        let lane = self.lane_of(&work.task);
        let (normal, priority) = &self.lanes[lane];
        let tx = if work.priority { priority } else { normal };
        // Lanes only stop after every sender is gone, so a send cannot fail while we hold
        // `Shared`; if it ever did, the task stays in the accept log and is replayed.
        if tx.send(work).is_err() {
            error!("lane {lane} is gone; task left in the accept log for replay");
        }
    }
}

/// `shard × threads + thread` (see the module docs).
pub fn lane_index(hash: u16, shards: u32, threads: u32) -> usize {
    let shards = shards.max(1);
    let threads = threads.max(1);
    let h = u32::from(hash);
    ((h % shards) * threads + (h / shards) % threads) as usize
}

/// The running pipeline.
pub struct Pipeline {
    shared: Arc<Shared>,
    submit_tx: Mutex<Option<Sender<Submission>>>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    lanes: Mutex<Vec<JoinHandle<()>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    writer_stop: Arc<AtomicBool>,
}

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    AcceptLog(#[from] AcceptLogError),
    #[error("store: {0}")]
    Store(#[from] dp3_store::StoreError),
    #[error("cannot start thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl Pipeline {
    /// Start lanes, writer and acceptor, after replaying unfinished tasks from the accept
    /// log (they are dispatched before any new submission).
    pub fn start(
        cfg: PipelineConfig,
        model: Arc<ModelSpec>,
        store: Arc<dyn Store>,
        accept_log: Arc<AcceptLog>,
        hooks: Arc<dyn HookSource>,
        clock: Arc<dyn Clock>,
    ) -> Result<Pipeline, PipelineError> {
        Self::start_with(
            cfg,
            model,
            store,
            Intake::AcceptLog(accept_log),
            hooks,
            clock,
        )
    }

    /// Start in broker mode: lanes and writer only; tasks come in through
    /// [`Pipeline::deliver`] and are acknowledged through `link` once applied.
    pub fn start_worker(
        cfg: PipelineConfig,
        model: Arc<ModelSpec>,
        store: Arc<dyn Store>,
        link: Arc<dyn BrokerLink>,
        worker: u32,
        hooks: Arc<dyn HookSource>,
        clock: Arc<dyn Clock>,
    ) -> Result<Pipeline, PipelineError> {
        Self::start_with(
            cfg,
            model,
            store,
            Intake::Broker { link, worker },
            hooks,
            clock,
        )
    }

    fn start_with(
        cfg: PipelineConfig,
        model: Arc<ModelSpec>,
        store: Arc<dyn Store>,
        intake: Intake,
        hooks: Arc<dyn HookSource>,
        clock: Arc<dyn Clock>,
    ) -> Result<Pipeline, PipelineError> {
        let lane_count = (cfg.shards.max(1) * cfg.threads.max(1)) as usize;
        let mut senders = Vec::with_capacity(lane_count);
        let mut receivers = Vec::with_capacity(lane_count);
        for _ in 0..lane_count {
            let (ntx, nrx) = crossbeam_channel::unbounded();
            let (ptx, prx) = crossbeam_channel::unbounded();
            senders.push((ntx, ptx));
            receivers.push((nrx, prx));
        }
        let staging = Arc::new(Staging::with_limit(cfg.flush_datapoints.saturating_mul(2)));
        let stats = Arc::new(PipelineStats::default());
        let source = match intake {
            Intake::AcceptLog(log) => Source::AcceptLog(log),
            Intake::Broker { link, worker } => {
                Source::Broker(Arc::new(BrokerIntake::open(&*store, &model, link, worker)?))
            }
        };
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            store: store.clone(),
            source,
            staging: staging.clone(),
            stats: stats.clone(),
            model: model.clone(),
            lanes: senders,
            rows: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            full: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
            lanes_stop: AtomicBool::new(false),
            unavailable: Mutex::new(None),
        });

        let settlement: Box<dyn Settlement> = match &shared.source {
            Source::AcceptLog(log) => {
                let state = writer::load_state(&*store, &cfg)?;
                let replayed = writer::replay(&shared, log, &state)?;
                if replayed > 0 {
                    info!(
                        tasks = replayed,
                        "replaying unfinished tasks from the accept log"
                    );
                }
                Box::new(LogSettlement::new(log.clone(), &cfg, &state))
            }
            // The broker redelivers whatever was not acknowledged.
            Source::Broker(intake) => Box::new(BrokerSettlement::new(intake.clone())),
        };

        let executor = Arc::new(Executor {
            model,
            store,
            staging,
            hooks,
            clock,
            stats,
            max_inline: cfg.max_inline,
        });
        let mut lanes = Vec::with_capacity(lane_count);
        for (i, (nrx, prx)) in receivers.into_iter().enumerate() {
            let executor = executor.clone();
            let shared = shared.clone();
            lanes.push(
                std::thread::Builder::new()
                    .name(format!("dp3-lane-{i}"))
                    .spawn(move || run_lane(i, nrx, prx, &executor, &shared))?,
            );
        }

        let writer_stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let shared = shared.clone();
            let stop = writer_stop.clone();
            std::thread::Builder::new()
                .name("dp3-writer".into())
                .spawn(move || writer::run(&shared, settlement, &stop))?
        };

        // Only the accept log takes submissions; a worker's tasks come from the broker.
        let (submit_tx, acceptor) = match &shared.source {
            Source::AcceptLog(log) => {
                let log = log.clone();
                let (submit_tx, submit_rx) = crossbeam_channel::unbounded();
                let shared = shared.clone();
                let acceptor = std::thread::Builder::new()
                    .name("dp3-acceptor".into())
                    .spawn(move || run_acceptor(&shared, &log, submit_rx))?;
                (Some(submit_tx), Some(acceptor))
            }
            Source::Broker(_) => (None, None),
        };

        Ok(Pipeline {
            shared,
            submit_tx: Mutex::new(submit_tx),
            acceptor: Mutex::new(acceptor),
            lanes: Mutex::new(lanes),
            writer: Mutex::new(Some(writer)),
            writer_stop,
        })
    }

    /// Broker mode: queue one delivered task, blocking while `max_in_flight` tasks are
    /// waiting (the broker's prefetch window then fills and it stops delivering). Copies of
    /// applied or in-flight messages are acknowledged and skipped. Returns false when the
    /// pipeline is stopping (the delivery stays unacknowledged and is redelivered).
    pub fn deliver(&self, delivery: Delivery) -> bool {
        let shared = &self.shared;
        let Source::Broker(intake) = &shared.source else {
            error!("deliver() called on a pipeline without a broker intake");
            return false;
        };
        while shared.in_flight.load(Ordering::SeqCst) >= shared.cfg.max_in_flight {
            if !shared.accepting.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if !shared.accepting.load(Ordering::SeqCst) {
            return false;
        }
        let token = delivery.token;
        let datapoints = delivery.task.data_points.len() as u64;
        match intake.admit(delivery) {
            Admission::Process(work) => {
                shared.in_flight.fetch_add(1, Ordering::SeqCst);
                shared.stats.tasks_accepted.inc();
                shared.stats.datapoints_accepted.add(datapoints);
                shared.dispatch(*work);
            }
            Admission::Applied => broker::skip_duplicate(shared, intake, token),
            Admission::Held => shared.stats.duplicates_skipped.inc(),
        }
        true
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<PipelineStats> {
        &self.shared.stats
    }

    /// Tasks accepted (or generated) but not yet applied to the store.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Wait until every accepted task is applied (or `timeout` passes); true if idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.in_flight() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Graceful shutdown: stop accepting, drain the queues within `timeout`, flush, stop
    /// threads. Tasks not applied by then stay in the accept log and are replayed at the
    /// next start. Returns true when everything was drained.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        self.shared.accepting.store(false, Ordering::SeqCst);
        drop(self.submit_tx.lock().take());
        if let Some(h) = self.acceptor.lock().take() {
            let _ = h.join();
        }
        let drained = self.wait_idle(timeout);
        if !drained {
            warn!(
                in_flight = self.in_flight(),
                "shutdown deadline reached; unfinished tasks stay in the accept log"
            );
        }
        // Lanes first (their queues are empty when drained; otherwise the rest stays in the
        // accept log), then the writer, which applies whatever is still staged.
        self.shared.lanes_stop.store(true, Ordering::SeqCst);
        let lanes: Vec<_> = std::mem::take(&mut *self.lanes.lock());
        for h in lanes {
            let _ = h.join();
        }
        self.writer_stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
        if let Err(e) = self.shared.store.flush() {
            error!(error = %e, "final store flush failed");
        }
        drained
    }
}

impl Pipeline {
    /// Why no task can be accepted at all right now (whatever the load).
    fn not_accepting(&self) -> Option<SubmitError> {
        if matches!(self.shared.source, Source::Broker(_)) {
            return Some(SubmitError::Unavailable(
                "this worker takes tasks from RabbitMQ only".into(),
            ));
        }
        if !self.shared.accepting.load(Ordering::SeqCst) {
            return Some(SubmitError::ShuttingDown);
        }
        self.shared
            .unavailable
            .lock()
            .clone()
            .map(SubmitError::Unavailable)
    }

    /// Whether the pipeline counts as full: at the limit, or refused a submission and not
    /// yet drained to the low watermark (7/8 of the limit; reaching it clears the mark).
    fn is_full(&self) -> bool {
        let in_flight = self.shared.in_flight.load(Ordering::SeqCst);
        let max = self.shared.cfg.max_in_flight;
        if in_flight >= max {
            return true;
        }
        if !self.shared.full.load(Ordering::SeqCst) {
            return false;
        }
        if in_flight > max - max / 8 {
            return true;
        }
        self.shared.full.store(false, Ordering::SeqCst);
        false
    }
}

impl TaskSubmitter for Pipeline {
    fn refusal(&self) -> Option<SubmitError> {
        self.not_accepting().or_else(|| {
            self.is_full().then_some(SubmitError::Overloaded {
                retry_after_secs: 1,
            })
        })
    }

    fn submit(&self, tasks: Vec<DataPointTask>) -> Result<Accepted, SubmitError> {
        let (reply, rx) = oneshot::channel();
        if let Some(refused) = self.not_accepting() {
            return Err(refused);
        }
        if tasks.is_empty() {
            let _ = reply.send(Ok(()));
            return Ok(rx);
        }
        let n = tasks.len();
        let before = self.shared.in_flight.fetch_add(n, Ordering::SeqCst);
        if before + n > self.shared.cfg.max_in_flight && before > 0 {
            self.shared.in_flight.fetch_sub(n, Ordering::SeqCst);
            self.shared.full.store(true, Ordering::SeqCst);
            return Err(SubmitError::Overloaded {
                retry_after_secs: 1,
            });
        }
        let guard = self.submit_tx.lock();
        let Some(tx) = guard.as_ref() else {
            self.shared.in_flight.fetch_sub(n, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        };
        if tx.send(Submission { tasks, reply }).is_err() {
            self.shared.in_flight.fetch_sub(n, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(rx)
    }
}

/// The acceptor: group-commit waiting submissions into the accept log, dispatch, reply.
fn run_acceptor(shared: &Shared, accept_log: &AcceptLog, rx: Receiver<Submission>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < 256 {
            match rx.try_recv() {
                Ok(s) => group.push(s),
                Err(_) => break,
            }
        }
        let rows: Vec<NewRow<'_>> = group
            .iter()
            .map(|s| NewRow {
                kind: RowKind::External,
                priority: false,
                tasks: &s.tasks,
            })
            .collect();
        match accept_log.append(&rows) {
            Ok(seqs) => {
                for (seq, sub) in seqs.into_iter().zip(group) {
                    shared.stats.tasks_accepted.add(sub.tasks.len() as u64);
                    shared
                        .stats
                        .datapoints_accepted
                        .add(sub.tasks.iter().map(|t| t.data_points.len() as u64).sum());
                    shared.rows.lock().insert(seq, sub.tasks.len());
                    for (i, task) in sub.tasks.into_iter().enumerate() {
                        shared.dispatch(Work {
                            priority: false,
                            position: (seq, i as u32),
                            origin: None,
                            task,
                        });
                    }
                    let _ = sub.reply.send(Ok(()));
                }
            }
            Err(e) => {
                error!(error = %e, "cannot persist accepted tasks");
                let err = SubmitError::Unavailable(e.to_string());
                for sub in group {
                    shared
                        .in_flight
                        .fetch_sub(sub.tasks.len(), Ordering::SeqCst);
                    let _ = sub.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// A lane: process tasks (priority first) and stage their writes, until told to stop.
fn run_lane(
    lane: usize,
    normal: Receiver<Work>,
    priority: Receiver<Work>,
    executor: &Executor,
    shared: &Shared,
) {
    priority::defer_to_writer(priority::LANE_NICENESS);
    let mut known = known::KnownEntities::new(executor.model.entities.len());
    loop {
        if shared.lanes_stop.load(Ordering::SeqCst) {
            break;
        }
        let work = priority.try_recv().ok().or_else(|| normal.try_recv().ok());
        let Some(work) = work else {
            let mut sel = crossbeam_channel::Select::new();
            sel.recv(&priority);
            sel.recv(&normal);
            let _ = sel.ready_timeout(Duration::from_millis(100));
            continue;
        };
        let mut out = TaskOutput::default();
        let task = work.task;
        let origin = work.origin;
        // A panic here would be a host bug (hooks catch their own); keep the lane alive
        // rather than taking the process down.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            executor.process_chain(task, &mut out, &mut known);
        }));
        if result.is_err() {
            error!(lane, "task processing panicked; the task is skipped");
            shared.stats.task_errors.inc();
            out = TaskOutput::default();
        } else {
            executor.remember(&out, &mut known);
        }
        if let Some(parent) = &origin {
            out.child_tags = broker::tag_children(parent, out.children.len());
        }
        shared.staging.stage(
            Completion {
                lane,
                priority: work.priority,
                position: work.position,
            },
            out,
        );
    }
}
