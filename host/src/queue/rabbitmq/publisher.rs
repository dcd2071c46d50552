//! Publishing tasks, snapshot messages and control actions (DP3's `TaskQueueWriter`, core.md
//! §1.6), without ever blocking the caller.
//!
//! Differences from DP3, on purpose:
//! * Messages are **persistent** (delivery mode 2). DP3 publishes transient messages into
//!   durable queues, so a broker restart loses every queued task. A publisher confirm for a
//!   persistent message on a durable queue means "written to disk", so a task whose
//!   [`Accepted`] resolved `Ok` survives a broker restart.
//! * A full normal queue (the broker nacks: `x-overflow: reject-publish`) is retried every
//!   100 ms for at most [`RabbitConfig::overload_retry`], then answered with
//!   [`SubmitError::Overloaded`] (HTTP 503 + `Retry-After`). DP3 retries forever and so blocks
//!   the HTTP request (and an API worker) for as long as the queue stays full.
//! * While the connection is down, `submit` fails at once with [`SubmitError::Unavailable`]
//!   instead of blocking; the connection is re-established in the background.
//!
//! A batch is answered `Ok` only when the broker confirmed every message of it. A batch that
//! fails may have been published in part (the client's retry then repeats those tasks:
//! at-least-once). Within one API batch every entity has one task, so the partial-retry of a
//! nacked batch cannot reorder the tasks of one entity.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dp3_model::DataPointTask;
use dp3_model::validate::task_to_wire_json;
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Event};
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tracing::{error, info, warn};

use super::messages::{SnapshotMessage, control_to_json};
use super::runtime::{OwnedRuntime, close_quietly, open_channel, reconnect_pause};
use super::topology::Topology;
use super::{RabbitConfig, RabbitError};
use crate::pipeline::staging::MessageTag;
use crate::queue::{Accepted, ControlAction, ControlSink, SubmitError, TaskSubmitter};

/// Pause between re-publishing messages the broker rejected (DP3: 100 ms).
const NACK_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often the connection's health is polled besides lapin's error events.
const HEALTH_POLL: Duration = Duration::from_millis(500);

/// One message to publish.
#[derive(Debug, Clone)]
struct Outgoing {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    /// Task messages: the AMQP `message_id` (workers deduplicate redeliveries by it).
    message_id: Option<String>,
    /// Header [`MAYBE_DUPLICATE_HEADER`]: a copy of this message may already be applied.
    maybe_duplicate: bool,
}

/// Header set on hook outputs of a redelivered task: the receiving worker checks their ids
/// against the ids it applied recently (see `pipeline::broker`).
pub const MAYBE_DUPLICATE_HEADER: &str = "x-dp3-maybe-duplicate";

/// A fresh random message id (128 bits, hex).
pub fn new_message_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

struct Shared {
    cfg: RabbitConfig,
    topo: Topology,
    /// The open, confirm-enabled channel; `None` while disconnected.
    channel: Mutex<Option<Channel>>,
    connected: AtomicBool,
    /// Why the last connection attempt failed (for `Unavailable` messages).
    last_error: Mutex<String>,
    /// A publish hit a broken channel: check the connection now.
    broken: Notify,
    /// Bounds published-but-unconfirmed messages (non-blocking backpressure).
    unconfirmed: Arc<Semaphore>,
    stop: watch::Sender<bool>,
}

impl Shared {
    fn unavailable(&self) -> SubmitError {
        SubmitError::Unavailable(format!(
            "not connected to RabbitMQ at {}: {}",
            self.cfg.endpoint(),
            self.last_error.lock()
        ))
    }
}

/// Publishes to DP3's exchanges. Cheap to share (`Arc` it); every method returns at once and
/// the work happens on the publisher's own runtime thread.
pub struct RabbitPublisher {
    shared: Arc<Shared>,
    runtime: OwnedRuntime,
}

impl std::fmt::Debug for RabbitPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitPublisher")
            .field("endpoint", &self.shared.cfg.endpoint())
            .field("app", &self.shared.cfg.app_name)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl RabbitPublisher {
    /// Start the publisher; it connects in the background (see [`Self::wait_connected`]).
    pub fn start(cfg: RabbitConfig) -> Result<RabbitPublisher, RabbitError> {
        cfg.validate()?;
        let runtime = OwnedRuntime::new("dp3-amqp-pub")?;
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            topo: cfg.topology(),
            unconfirmed: Arc::new(Semaphore::new(cfg.max_unconfirmed.max(1))),
            cfg,
            channel: Mutex::new(None),
            connected: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".into()),
            broken: Notify::new(),
            stop,
        });
        runtime.spawn(maintain_connection(shared.clone(), stop_rx));
        Ok(RabbitPublisher { shared, runtime })
    }

    /// True while a confirm-enabled channel is open.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Wait (blocking the calling thread, polling) until connected or `timeout` passed.
    /// Do not call from async code.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_connected() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// The deployment's names (exchanges, queues).
    pub fn topology(&self) -> &Topology {
        &self.shared.topo
    }

    fn task_messages(&self, tasks: &[DataPointTask], priority: bool) -> Vec<Outgoing> {
        let topo = &self.shared.topo;
        let exchange = if priority {
            topo.priority_exchange()
        } else {
            topo.task_exchange()
        };
        tasks
            .iter()
            .map(|task| Outgoing {
                exchange: exchange.clone(),
                routing_key: Topology::routing_key(topo.worker_of(task.hash())),
                body: task_to_wire_json(task).into_bytes(),
                message_id: Some(new_message_id()),
                maybe_duplicate: false,
            })
            .collect()
    }

    /// Publish hook outputs of a worker to the priority exchange with the given message ids
    /// (`tags[i]` belongs to `tasks[i]`).
    pub fn publish_generated(
        &self,
        tasks: &[DataPointTask],
        tags: &[MessageTag],
    ) -> Result<Accepted, SubmitError> {
        let mut messages = self.task_messages(tasks, true);
        for (m, tag) in messages.iter_mut().zip(tags) {
            m.message_id = Some(tag.message_id.clone());
            m.maybe_duplicate = tag.maybe_duplicate;
        }
        self.publish(messages)
    }

    /// Publish tasks to the normal (`priority = false`) or priority exchange, each routed to
    /// worker `HASH("<etype>:<eid>") mod N`.
    pub fn publish_tasks(
        &self,
        tasks: &[DataPointTask],
        priority: bool,
    ) -> Result<Accepted, SubmitError> {
        self.publish(self.task_messages(tasks, priority))
    }

    /// Publish tasks generated by ingestion hooks (and `refresh_on_entity_creation`) to the
    /// unbounded priority queues, as DP3 does so that workers never block on their own output.
    pub fn publish_priority(&self, tasks: &[DataPointTask]) -> Result<Accepted, SubmitError> {
        self.publish_tasks(tasks, true)
    }

    /// Publish a snapshot message to the worker its component key routes to (type `task`).
    pub fn publish_snapshot(&self, msg: &SnapshotMessage) -> Result<Accepted, SubmitError> {
        let topo = &self.shared.topo;
        self.publish(vec![Outgoing {
            exchange: topo.snapshot_exchange(),
            routing_key: Topology::routing_key(topo.worker_of(msg.hash())),
            body: msg.to_json().into_bytes(),
            message_id: None,
            maybe_duplicate: false,
        }])
    }

    /// Publish a snapshot message to every worker (`run_start`, `linked_entities`, `run_end`).
    pub fn broadcast_snapshot(&self, msg: &SnapshotMessage) -> Result<Accepted, SubmitError> {
        let topo = &self.shared.topo;
        let body = msg.to_json().into_bytes();
        self.publish(self.to_every_worker(&topo.snapshot_exchange(), &body))
    }

    /// Publish a control action to every worker.
    pub fn broadcast_control(&self, action: &ControlAction) -> Result<Accepted, SubmitError> {
        let topo = &self.shared.topo;
        let body = control_to_json(action).into_bytes();
        self.publish(self.to_every_worker(&topo.control_exchange(), &body))
    }

    /// Publish a control action to one worker (DP3 sends non-broadcast actions to worker 0).
    pub fn send_control_to(
        &self,
        worker: u32,
        action: &ControlAction,
    ) -> Result<Accepted, SubmitError> {
        let topo = &self.shared.topo;
        if worker >= topo.workers() {
            return Err(SubmitError::Unavailable(format!(
                "worker index {worker} is out of range for {} worker(s)",
                topo.workers()
            )));
        }
        self.publish(vec![Outgoing {
            exchange: topo.control_exchange(),
            routing_key: Topology::routing_key(worker),
            body: control_to_json(action).into_bytes(),
            message_id: None,
            maybe_duplicate: false,
        }])
    }

    fn to_every_worker(&self, exchange: &str, body: &[u8]) -> Vec<Outgoing> {
        (0..self.shared.topo.workers())
            .map(|worker| Outgoing {
                exchange: exchange.to_owned(),
                routing_key: Topology::routing_key(worker),
                body: body.to_vec(),
                message_id: None,
                maybe_duplicate: false,
            })
            .collect()
    }

    fn publish(&self, messages: Vec<Outgoing>) -> Result<Accepted, SubmitError> {
        let (reply, rx) = oneshot::channel();
        if *self.shared.stop.borrow() {
            return Err(SubmitError::ShuttingDown);
        }
        if messages.is_empty() {
            let _ = reply.send(Ok(()));
            return Ok(rx);
        }
        if let Some(refused) = self.not_publishing() {
            return Err(refused);
        }
        let n = u32::try_from(messages.len()).unwrap_or(u32::MAX);
        let Ok(permit) = self.shared.unconfirmed.clone().try_acquire_many_owned(n) else {
            return Err(SubmitError::Overloaded {
                retry_after_secs: 1,
            });
        };
        let shared = self.shared.clone();
        self.runtime.spawn(async move {
            let result = publish_confirmed(&shared, messages, permit).await;
            let _ = reply.send(result);
        });
        Ok(rx)
    }

    /// Why nothing can be published right now: stopping, or no connection to the broker.
    fn not_publishing(&self) -> Option<SubmitError> {
        if *self.shared.stop.borrow() {
            Some(SubmitError::ShuttingDown)
        } else if !self.is_connected() {
            Some(self.shared.unavailable())
        } else {
            None
        }
    }

    /// Wait for an [`Accepted`] from a plain thread (pipeline lanes, the writer, the
    /// snapshooter); `Unavailable` after `timeout`. Do not call from async code.
    pub fn wait(&self, accepted: Accepted, timeout: Duration) -> Result<(), SubmitError> {
        self.runtime.handle().block_on(async move {
            match tokio::time::timeout(timeout, accepted).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(SubmitError::ShuttingDown),
                Err(_) => Err(SubmitError::Unavailable(format!(
                    "RabbitMQ did not confirm within {timeout:?}"
                ))),
            }
        })
    }

    /// Stop: refuse new publishes, close the connection. Publishes still waiting for confirms
    /// are answered with an error (their tasks may or may not have reached the broker).
    pub fn close(&self) {
        let _ = self.shared.stop.send(true);
    }
}

impl Drop for RabbitPublisher {
    fn drop(&mut self) {
        let _ = self.shared.stop.send(true);
    }
}

impl TaskSubmitter for RabbitPublisher {
    fn submit(&self, tasks: Vec<DataPointTask>) -> Result<Accepted, SubmitError> {
        self.publish_tasks(&tasks, false)
    }

    fn refusal(&self) -> Option<SubmitError> {
        self.not_publishing().or_else(|| {
            (self.shared.unconfirmed.available_permits() == 0).then_some(SubmitError::Overloaded {
                retry_after_secs: 1,
            })
        })
    }
}

/// DP3's API routing of control actions: `make_snapshots` to worker 0, the two refresh
/// actions to every worker. Fire and forget (a failed publish is logged), as the sink is
/// synchronous.
impl ControlSink for RabbitPublisher {
    fn send(&self, action: ControlAction) -> Result<(), SubmitError> {
        let accepted = match action {
            ControlAction::MakeSnapshots => self.send_control_to(0, &action)?,
            _ => self.broadcast_control(&action)?,
        };
        let name = action.name();
        self.runtime.spawn(async move {
            match accepted.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!(action = name, error = %e, "control action not delivered"),
                Err(_) => error!(action = name, "control action dropped at shutdown"),
            }
        });
        Ok(())
    }
}

fn properties(m: &Outgoing) -> BasicProperties {
    let mut p = BasicProperties::default().with_delivery_mode(2);
    if let Some(id) = &m.message_id {
        p = p.with_message_id(id.as_str().into());
    }
    if m.maybe_duplicate {
        let mut headers = FieldTable::default();
        headers.insert(MAYBE_DUPLICATE_HEADER.into(), AMQPValue::Boolean(true));
        p = p.with_headers(headers);
    }
    p
}

/// Publish all messages and wait for their confirms, re-publishing nacked ones (full queue)
/// until `overload_retry` has passed.
async fn publish_confirmed(
    shared: &Shared,
    messages: Vec<Outgoing>,
    permit: OwnedSemaphorePermit,
) -> Result<(), SubmitError> {
    let limit = shared.cfg.confirm_timeout;
    // A broker under a resource alarm blocks publishers without closing the connection;
    // the caller must get an answer anyway.
    match tokio::time::timeout(limit, publish_until_confirmed(shared, messages, permit)).await {
        Ok(result) => result,
        Err(_) => Err(SubmitError::Unavailable(format!(
            "RabbitMQ did not confirm the publish within {limit:?} (is the broker blocked by a \
             memory or disk alarm?)"
        ))),
    }
}

async fn publish_until_confirmed(
    shared: &Shared,
    messages: Vec<Outgoing>,
    _permit: OwnedSemaphorePermit,
) -> Result<(), SubmitError> {
    let deadline = Instant::now() + shared.cfg.overload_retry;
    let mut pending: Vec<usize> = (0..messages.len()).collect();
    loop {
        let Some(channel) = shared.channel.lock().clone() else {
            return Err(shared.unavailable());
        };
        let lost = |e: lapin::Error| {
            shared.broken.notify_one();
            SubmitError::Unavailable(format!("RabbitMQ connection lost while publishing: {e}"))
        };
        // All publishes are issued together: lapin queues a message's frames when its future
        // is first polled, and `join_all` polls in order, so the broker receives them in
        // order while we wait for the socket once instead of once per message.
        let channel = &channel;
        let publishes = pending.iter().filter_map(|&i| {
            let m = messages.get(i)?;
            Some(async move {
                let confirm = channel
                    .basic_publish(
                        m.exchange.as_str().into(),
                        m.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &m.body,
                        properties(m),
                    )
                    .await;
                (i, confirm)
            })
        });
        let mut confirms = Vec::with_capacity(pending.len());
        for (i, confirm) in futures_util::future::join_all(publishes).await {
            confirms.push((i, confirm.map_err(lost)?));
        }
        let mut nacked = Vec::new();
        let confirms = futures_util::future::join_all(
            confirms
                .into_iter()
                .map(|(i, confirm)| async move { (i, confirm.await) }),
        )
        .await;
        for (i, confirm) in confirms {
            match confirm.map_err(lost)? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(returned)) => {
                    return Err(SubmitError::Unavailable(format!(
                        "no queue is bound to exchange '{}' with routing key '{}' ({}); \
                         run the RabbitMQ setup for {} worker(s)",
                        returned.delivery.exchange,
                        returned.delivery.routing_key,
                        returned.reply_text,
                        shared.topo.workers()
                    )));
                }
                Confirmation::Nack(_) => nacked.push(i),
                Confirmation::NotRequested => {
                    return Err(SubmitError::Unavailable(
                        "publisher confirms are not enabled on the channel".into(),
                    ));
                }
            }
        }
        if nacked.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SubmitError::Overloaded {
                retry_after_secs: 1,
            });
        }
        tokio::time::sleep(NACK_RETRY_PAUSE).await;
        pending = nacked;
    }
}

/// Keep a confirm-enabled channel open: connect, watch for failures, reconnect with backoff.
async fn maintain_connection(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let cfg = &shared.cfg;
    let mut attempt = 0usize;
    while !*stop.borrow() {
        match connect_confirming(cfg).await {
            Ok((conn, channel)) => {
                if attempt > 0 {
                    info!(endpoint = %cfg.endpoint(), "RabbitMQ publisher reconnected");
                }
                attempt = 0;
                let mut events = conn.events_listener();
                *shared.channel.lock() = Some(channel.clone());
                shared.connected.store(true, Ordering::SeqCst);
                loop {
                    tokio::select! {
                        event = events.next() => match event {
                            Some(Event::Error(e)) => {
                                warn!(error = %e, "RabbitMQ publisher connection failed");
                                *shared.last_error.lock() = e.to_string();
                                break;
                            }
                            Some(_) => {}
                            None => break,
                        },
                        () = shared.broken.notified() => {}
                        () = tokio::time::sleep(HEALTH_POLL) => {}
                        _ = stop.changed() => {}
                    }
                    if *stop.borrow() || !conn.status().connected() || !channel.status().connected()
                    {
                        if !*stop.borrow() {
                            *shared.last_error.lock() = "the connection was closed".into();
                        }
                        break;
                    }
                }
                shared.connected.store(false, Ordering::SeqCst);
                *shared.channel.lock() = None;
                close_quietly(&conn).await;
            }
            Err(e) => {
                warn!(error = %e, attempt, "RabbitMQ publisher cannot connect");
                *shared.last_error.lock() = e.to_string();
            }
        }
        if *stop.borrow() {
            break;
        }
        reconnect_pause(cfg, attempt, &mut stop).await;
        attempt += 1;
    }
}

async fn connect_confirming(
    cfg: &RabbitConfig,
) -> Result<(Arc<lapin::Connection>, Channel), RabbitError> {
    let (conn, channel) = open_channel(cfg, "publisher").await?;
    if let Err(e) = channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
    {
        close_quietly(&conn).await;
        return Err(RabbitError::amqp("confirm.select", e));
    }
    Ok((conn, channel))
}
