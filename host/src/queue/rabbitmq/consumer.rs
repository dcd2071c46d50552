//! Consuming a worker's queues (DP3's `TaskQueueReader`, core.md §1.7), with acks issued by
//! the pipeline only after a task's writes are committed.
//!
//! Structure (as DP3's): the AMQP side runs on the consumer's own runtime thread and only
//! appends deliveries to local deques, one per queue; a *dispatch* thread takes from the
//! highest-priority non-empty deque, parses the body and calls the handler. The handler may
//! block (e.g. on a full pipeline lane): the deques then stop draining, the prefetch window
//! (`RabbitConfig::prefetch` unacked deliveries per queue) fills up and the broker stops
//! delivering — that is the consumer-side backpressure.
//!
//! Acknowledgement rules:
//! * A body that does not parse is logged, acked and dropped (as DP3 does).
//! * Everything else is acked only when the owner calls [`RabbitConsumer::ack`], which the
//!   pipeline does after the task's writes are committed. DP3 acks before processing and so
//!   loses the task when the worker dies; we redeliver it (at-least-once).
//! * Every (re)connect starts a new *generation*. A tag from an older generation belongs to a
//!   dead channel: `ack` refuses it (returns `false`) and the broker redelivers the message
//!   (DP3's E-2 rule). Deliveries of a dead generation still waiting in the deques are
//!   discarded for the same reason.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use dp3_model::validate::task_from_wire_json;
use dp3_model::{DataPointTask, ModelSpec};
use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, Channel, Connection};
use parking_lot::{Condvar, Mutex};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::messages::{SnapshotMessage, control_from_json};
use super::publisher::MAYBE_DUPLICATE_HEADER;
use super::runtime::{OwnedRuntime, close_quietly, open_channel, reconnect_pause};
use super::topology::QueueKind;
use super::{RabbitConfig, RabbitError};
use crate::queue::ControlAction;

/// Identifies one delivery for [`RabbitConsumer::ack`]. Opaque; cheap to clone.
#[derive(Clone)]
pub struct DeliveryTag {
    generation: u64,
    delivery_tag: u64,
    acker: Acker,
}

impl DeliveryTag {
    /// The connection generation the delivery arrived on.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The broker's delivery tag (unique within one generation).
    pub fn delivery_tag(&self) -> u64 {
        self.delivery_tag
    }
}

impl fmt::Debug for DeliveryTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeliveryTag({}:{})", self.generation, self.delivery_tag)
    }
}

/// One parsed delivery handed to the handler.
#[derive(Debug, Clone)]
pub struct Consumed<T> {
    pub tag: DeliveryTag,
    pub message: T,
    /// Came from the priority queue (`-pri`).
    pub priority: bool,
    /// The broker delivered it before (to a consumer that did not ack it): its effects may
    /// already be in the store.
    pub redelivered: bool,
    /// The AMQP `message_id`, or for publishers that set none (DP3's Python API) `body:`
    /// and a digest of the body.
    pub message_id: String,
    /// The publisher marked it as a possible copy ([`MAYBE_DUPLICATE_HEADER`]).
    pub maybe_duplicate: bool,
}

/// A worker's task consumer (`<app>-worker-<i>` and `-pri`, priority first).
pub type TaskConsumer = RabbitConsumer<DataPointTask>;
/// A worker's snapshot-message consumer (`<app>-worker-<i>-snapshots`).
pub type SnapshotConsumer = RabbitConsumer<SnapshotMessage>;
/// A worker's control consumer (`<app>-worker-<i>-control`).
pub type ControlConsumer = RabbitConsumer<ControlAction>;

type Parser<T> = Box<dyn Fn(&[u8]) -> Result<T, String> + Send + Sync>;
type Handler<T> = Box<dyn FnMut(Consumed<T>) + Send>;

/// A delivery waiting in a local deque.
struct Raw {
    tag: DeliveryTag,
    redelivered: bool,
    message_id: Option<String>,
    maybe_duplicate: bool,
    body: Vec<u8>,
}

/// `body:` + hex SHA-256 prefix of a body: the identity of a message without `message_id`.
fn body_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("body:{hex}")
}

struct Shared {
    cfg: RabbitConfig,
    /// `tasks`, `snapshots` or `control` (thread and consumer names).
    role: String,
    /// `(queue name, priority)`, highest priority first.
    queues: Vec<(String, bool)>,
    /// Current connection generation; 0 = never connected.
    generation: AtomicU64,
    connected: AtomicBool,
    /// One deque per queue, same order as `queues`.
    deques: Mutex<Vec<VecDeque<Raw>>>,
    wake: Condvar,
    stop: AtomicBool,
    stop_tx: watch::Sender<bool>,
    /// Stop taking new deliveries (cancel consumers) but keep the channel for acks.
    pause_tx: watch::Sender<bool>,
    /// Deliveries handed to the handler, invalid ones dropped (for tests and metrics).
    handed_out: AtomicU64,
    dropped_invalid: AtomicU64,
    /// Acks spawned but not yet written to the socket; `close` waits for them.
    pending_acks: AtomicUsize,
}

impl Shared {
    fn is_current(&self, generation: u64) -> bool {
        self.connected.load(Ordering::SeqCst)
            && self.generation.load(Ordering::SeqCst) == generation
    }
}

/// Consumes one or more queues of a worker and hands parsed messages to a handler on a
/// dedicated dispatch thread.
pub struct RabbitConsumer<T> {
    shared: Arc<Shared>,
    runtime: OwnedRuntime,
    dispatch: Mutex<Option<JoinHandle<()>>>,
    _message: std::marker::PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for RabbitConsumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConsumer")
            .field("queues", &self.shared.queues)
            .field("generation", &self.generation())
            .field("connected", &self.is_connected())
            .finish()
    }
}

fn check_worker(cfg: &RabbitConfig, worker: u32) -> Result<(), RabbitError> {
    if worker >= cfg.workers {
        return Err(RabbitError::WorkerIndex {
            index: worker,
            workers: cfg.workers,
        });
    }
    Ok(())
}

impl RabbitConsumer<DataPointTask> {
    /// Consume worker `worker`'s task queues; bodies are DP3 task messages validated against
    /// `model` ([`task_from_wire_json`]).
    pub fn tasks(
        cfg: RabbitConfig,
        worker: u32,
        model: Arc<ModelSpec>,
        handler: impl FnMut(Consumed<DataPointTask>) + Send + 'static,
    ) -> Result<TaskConsumer, RabbitError> {
        check_worker(&cfg, worker)?;
        let topo = cfg.topology();
        let queues = vec![
            (topo.queue(QueueKind::Priority, worker), true),
            (topo.queue(QueueKind::Normal, worker), false),
        ];
        let parser: Parser<DataPointTask> =
            Box::new(move |body| task_from_wire_json(&model, body).map_err(|e| e.to_string()));
        RabbitConsumer::start(cfg, "tasks", queues, parser, Box::new(handler))
    }
}

impl RabbitConsumer<SnapshotMessage> {
    /// Consume worker `worker`'s snapshot queue.
    pub fn snapshots(
        cfg: RabbitConfig,
        worker: u32,
        model: Arc<ModelSpec>,
        handler: impl FnMut(Consumed<SnapshotMessage>) + Send + 'static,
    ) -> Result<SnapshotConsumer, RabbitError> {
        check_worker(&cfg, worker)?;
        let queues = vec![(cfg.topology().queue(QueueKind::Snapshots, worker), false)];
        let parser: Parser<SnapshotMessage> = Box::new(move |body| {
            SnapshotMessage::from_json(&model, body).map_err(|e| e.to_string())
        });
        RabbitConsumer::start(cfg, "snapshots", queues, parser, Box::new(handler))
    }
}

impl RabbitConsumer<ControlAction> {
    /// Consume worker `worker`'s control queue.
    pub fn control(
        cfg: RabbitConfig,
        worker: u32,
        handler: impl FnMut(Consumed<ControlAction>) + Send + 'static,
    ) -> Result<ControlConsumer, RabbitError> {
        check_worker(&cfg, worker)?;
        let queues = vec![(cfg.topology().queue(QueueKind::Control, worker), false)];
        let parser: Parser<ControlAction> =
            Box::new(|body| control_from_json(body).map_err(|e| e.to_string()));
        RabbitConsumer::start(cfg, "control", queues, parser, Box::new(handler))
    }
}

impl<T: Send + 'static> RabbitConsumer<T> {
    fn start(
        cfg: RabbitConfig,
        role: &str,
        queues: Vec<(String, bool)>,
        parser: Parser<T>,
        handler: Handler<T>,
    ) -> Result<RabbitConsumer<T>, RabbitError> {
        cfg.validate()?;
        let runtime = OwnedRuntime::new(&format!("dp3-amqp-{role}"))?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (pause_tx, pause_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            cfg,
            role: role.to_owned(),
            deques: Mutex::new(queues.iter().map(|_| VecDeque::new()).collect()),
            queues,
            generation: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            stop_tx,
            pause_tx,
            handed_out: AtomicU64::new(0),
            dropped_invalid: AtomicU64::new(0),
            pending_acks: AtomicUsize::new(0),
        });
        let dispatch = {
            let shared = shared.clone();
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name(format!("dp3-amqp-{role}-dispatch"))
                .spawn(move || dispatch_loop(&shared, &handle, &parser, handler))
                .map_err(|e| RabbitError::Runtime(e.to_string()))?
        };
        runtime.spawn(consume_forever(
            shared.clone(),
            role.to_owned(),
            stop_rx,
            pause_rx,
        ));
        Ok(RabbitConsumer {
            shared,
            runtime,
            dispatch: Mutex::new(Some(dispatch)),
            _message: std::marker::PhantomData,
        })
    }
}

impl<T> RabbitConsumer<T> {
    /// Acknowledge a delivery: call it only once the message's effects are durable (for tasks:
    /// the store committed its writes). Never blocks. Returns `false` when the tag belongs to
    /// a dead channel (the broker redelivers that message) — the caller must not treat the
    /// message as acknowledged then.
    pub fn ack(&self, tag: &DeliveryTag) -> bool {
        if !self.shared.is_current(tag.generation) || !tag.acker.usable() {
            return false;
        }
        let acker = tag.acker.clone();
        let shared = self.shared.clone();
        shared.pending_acks.fetch_add(1, Ordering::SeqCst);
        self.runtime.spawn(async move {
            ack_one(&shared, &acker).await;
            shared.pending_acks.fetch_sub(1, Ordering::SeqCst);
        });
        true
    }

    /// [`Self::ack`] for many tags at once (one runtime task); returns how many were sent.
    pub fn ack_all(&self, tags: impl IntoIterator<Item = DeliveryTag>) -> usize {
        let ackers: Vec<Acker> = tags
            .into_iter()
            .filter(|t| self.shared.is_current(t.generation) && t.acker.usable())
            .map(|t| t.acker)
            .collect();
        let sent = ackers.len();
        if sent > 0 {
            let shared = self.shared.clone();
            shared.pending_acks.fetch_add(1, Ordering::SeqCst);
            self.runtime.spawn(async move {
                // Issued together: the frames are pipelined instead of one round trip each
                // (a worker acks a whole store batch, thousands of deliveries, at once).
                futures_util::future::join_all(ackers.iter().map(|a| ack_one(&shared, a))).await;
                shared.pending_acks.fetch_sub(1, Ordering::SeqCst);
            });
        }
        sent
    }

    /// True while the channel is open and consuming (or paused).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// The current connection generation (increments on every reconnect).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }

    /// Messages handed to the handler so far.
    pub fn handed_out(&self) -> u64 {
        self.shared.handed_out.load(Ordering::SeqCst)
    }

    /// Messages that failed to parse (acked and dropped) so far.
    pub fn dropped_invalid(&self) -> u64 {
        self.shared.dropped_invalid.load(Ordering::SeqCst)
    }

    /// Graceful shutdown, step 1: cancel the consumers so nothing new arrives, and drop
    /// deliveries not yet handed out (never acked → redelivered later). The channel stays
    /// open so in-flight tasks can still be acked after their commit.
    pub fn pause(&self) {
        let _ = self.shared.pause_tx.send(true);
        for deque in self.shared.deques.lock().iter_mut() {
            deque.clear();
        }
    }

    /// Graceful shutdown, step 2 (or a crash-like stop without `pause`): close the
    /// connection (everything unacked is redelivered by the broker) and join the dispatch
    /// thread (waits for a running handler call to return). Acks already issued are sent
    /// first (waiting at most 5 s).
    pub fn close(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.shared.pending_acks.load(Ordering::SeqCst) > 0
            && self.is_connected()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.shared.stop_tx.send(true);
        self.shared.wake.notify_all();
        let handle = self.dispatch.lock().take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
        // Give the connection task a moment to close the socket cleanly.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.is_connected() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl<T> Drop for RabbitConsumer<T> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.shared.stop_tx.send(true);
        self.shared.wake.notify_all();
    }
}

async fn ack_one(shared: &Shared, acker: &Acker) {
    match acker.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        // Used or poisoned: the channel died; the broker redelivers.
        Ok(false) => debug!("ack not sent: the delivery's channel is gone"),
        Err(e) => {
            warn!(error = %e, queues = ?shared.queues, "ack failed; the message will be redelivered")
        }
    }
}

/// Take the next delivery, highest-priority deque first; `None` when stopping.
fn next_delivery(shared: &Shared) -> Option<(Raw, bool)> {
    let mut deques = shared.deques.lock();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return None;
        }
        for (i, deque) in deques.iter_mut().enumerate() {
            if let Some(raw) = deque.pop_front() {
                let priority = shared.queues.get(i).is_some_and(|(_, p)| *p);
                return Some((raw, priority));
            }
        }
        shared
            .wake
            .wait_for(&mut deques, Duration::from_millis(200));
    }
}

fn dispatch_loop<T>(
    shared: &Shared,
    runtime: &tokio::runtime::Handle,
    parser: &Parser<T>,
    mut handler: Handler<T>,
) {
    while let Some((raw, priority)) = next_delivery(shared) {
        if !shared.is_current(raw.tag.generation) {
            continue; // its channel is gone; the broker redelivers it
        }
        match parser(&raw.body) {
            Ok(message) => {
                shared.handed_out.fetch_add(1, Ordering::SeqCst);
                let message_id = raw.message_id.unwrap_or_else(|| body_id(&raw.body));
                handler(Consumed {
                    tag: raw.tag,
                    message,
                    priority,
                    redelivered: raw.redelivered,
                    message_id,
                    maybe_duplicate: raw.maybe_duplicate,
                });
            }
            Err(reason) => {
                shared.dropped_invalid.fetch_add(1, Ordering::SeqCst);
                warn!(
                    queues = ?shared.queues,
                    error = %reason,
                    body = %String::from_utf8_lossy(&raw.body),
                    "invalid message dropped"
                );
                let acker = raw.tag.acker;
                runtime.spawn(async move {
                    let _ = acker.ack(BasicAckOptions::default()).await;
                });
            }
        }
    }
}

/// Connect, consume until the connection fails, reconnect with backoff; until stopped.
async fn consume_forever(
    shared: Arc<Shared>,
    role: String,
    mut stop: watch::Receiver<bool>,
    mut pause: watch::Receiver<bool>,
) {
    let cfg = shared.cfg.clone();
    let mut attempt = 0usize;
    while !*stop.borrow() {
        let paused = *pause.borrow();
        match open_consuming(&shared, &role, paused).await {
            Ok((conn, channel, streams)) => {
                let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
                shared.connected.store(true, Ordering::SeqCst);
                if attempt > 0 || generation > 1 {
                    info!(role, generation, "RabbitMQ consumer reconnected");
                }
                attempt = 0;
                run_generation(
                    &shared, &channel, streams, generation, &mut stop, &mut pause,
                )
                .await;
                // The channel is dead (or we stop): its deliveries will be redelivered.
                shared.connected.store(false, Ordering::SeqCst);
                for deque in shared.deques.lock().iter_mut() {
                    deque.clear();
                }
                close_quietly(&conn).await;
            }
            Err(e) => warn!(role, error = %e, attempt, "RabbitMQ consumer cannot connect"),
        }
        if *stop.borrow() {
            break;
        }
        reconnect_pause(&cfg, attempt, &mut stop).await;
        attempt += 1;
    }
}

type Streams = SelectAll<
    futures_util::stream::BoxStream<'static, (usize, lapin::Result<lapin::message::Delivery>)>,
>;

async fn open_consuming(
    shared: &Shared,
    role: &str,
    paused: bool,
) -> Result<(Arc<Connection>, Channel, Streams), RabbitError> {
    let (conn, channel) = open_channel(&shared.cfg, role).await?;
    let result = async {
        // Non-global QoS: the limit applies to each consumer (queue) separately.
        channel
            .basic_qos(shared.cfg.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| RabbitError::amqp("basic.qos", e))?;
        let mut streams: Streams = SelectAll::new();
        if !paused {
            for (index, (queue, _)) in shared.queues.iter().enumerate() {
                let consumer = channel
                    .basic_consume(
                        queue.as_str().into(),
                        consumer_tag(shared, index).as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| RabbitError::amqp(format!("consuming '{queue}'"), e))?;
                streams.push(consumer.map(move |d| (index, d)).boxed());
            }
        }
        Ok(streams)
    }
    .await;
    match result {
        Ok(streams) => Ok((conn, channel, streams)),
        Err(e) => {
            close_quietly(&conn).await;
            Err(e)
        }
    }
}

/// Move deliveries of one connection generation into the deques until the connection fails
/// or we stop. Pausing cancels the consumers but keeps the channel (for acks).
async fn run_generation(
    shared: &Shared,
    channel: &Channel,
    mut streams: Streams,
    generation: u64,
    stop: &mut watch::Receiver<bool>,
    pause: &mut watch::Receiver<bool>,
) {
    let mut paused = *pause.borrow();
    loop {
        tokio::select! {
            item = streams.next(), if !paused && !streams.is_empty() => match item {
                Some((index, Ok(delivery))) => {
                    let raw = Raw {
                        tag: DeliveryTag {
                            generation,
                            delivery_tag: delivery.delivery_tag,
                            acker: delivery.acker,
                        },
                        redelivered: delivery.redelivered,
                        message_id: delivery
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|id| id.as_str().to_owned()),
                        maybe_duplicate: delivery.properties.headers().as_ref().is_some_and(|h| {
                            matches!(
                                h.inner().get(MAYBE_DUPLICATE_HEADER),
                                Some(AMQPValue::Boolean(true))
                            )
                        }),
                        body: delivery.data,
                    };
                    if let Some(deque) = shared.deques.lock().get_mut(index) {
                        deque.push_back(raw);
                    }
                    shared.wake.notify_one();
                }
                Some((index, Err(e))) => {
                    warn!(queue = ?shared.queues.get(index), error = %e, "RabbitMQ consumer failed");
                    return;
                }
                None => {
                    warn!(queues = ?shared.queues, "RabbitMQ consumers were cancelled");
                    return;
                }
            },
            _ = pause.changed() => {
                if *pause.borrow() && !paused {
                    paused = true;
                    cancel_all(channel, shared).await;
                }
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                if !channel.status().connected() {
                    warn!(queues = ?shared.queues, "RabbitMQ channel closed");
                    return;
                }
            }
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

async fn cancel_all(channel: &Channel, shared: &Shared) {
    for index in 0..shared.queues.len() {
        let tag = consumer_tag(shared, index);
        if let Err(e) = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            warn!(error = %e, tag, "cannot cancel RabbitMQ consumer");
        }
    }
}

/// `<app>-<role>-<queue index>`: unique per channel, recognisable in the management UI.
fn consumer_tag(shared: &Shared, index: usize) -> String {
    format!("{}-{}-{index}", shared.cfg.app_name, shared.role)
}
