//! Broker mode (`dp3 worker`): tasks arrive from RabbitMQ instead of the HTTP API, and the
//! broker, not the accept log, keeps them until they are applied.
//!
//! * A delivery is acknowledged only after the batch holding its writes is committed (DP3
//!   acks before processing and loses the task when the worker dies).
//! * Hook outputs go through a transactional outbox: the batch that produced them commits
//!   them into a store metadata slot together with its writes; after the commit they are
//!   published to the priority queues of the workers their keys route to, and the slot is
//!   marked done once the broker confirmed them. A worker that dies in between re-publishes
//!   unfinished slots at start. So an output is never applied before its parent's writes are
//!   committed, and a parent processed twice (its batch never committed) publishes its
//!   outputs only once. Outputs are never dispatched locally (a worker's own outputs come
//!   back through its own priority queue).
//! * At-least-once delivery becomes exactly-once application by message id: every batch
//!   commits the ids it applied into a ring of store metadata slots (atomically with its
//!   writes), and a delivery that may be a copy of an applied message — the broker
//!   redelivered it, its parent was such a delivery, or it was re-published after a failed
//!   or unconfirmed publish — is checked against that window
//!   (acked and skipped when found) and against the ids still in flight (acked together
//!   with the original when that commits). Hook outputs get ids derived from their parent's id
//!   and their index, so every re-publication carries the same ids.
//!
//! Only possible duplicates are looked up, so the window costs a sorted `Vec<u64>` per batch
//! and a binary search per slot for the (rare) flagged deliveries.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use dp3_model::validate::{task_from_wire_json, task_to_wire_json};
use dp3_model::{DataPointTask, ModelSpec};
use dp3_store::{Store, WriteBatch};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::staging::{Completion, MessageTag};
use super::writer::{Settlement, retry};
use super::{PipelineError, Shared, Work};

/// Applied-id slots kept in the store per worker: the dedupe window is the last `SLOTS`
/// committed batches (about a minute at full load, longer when the worker is less busy).
pub const SLOTS: u64 = 256;

/// What the pipeline needs from the broker connection.
pub trait BrokerLink: Send + Sync {
    /// Publish hook outputs (`tags[i]` belongs to `tasks[i]`) to the priority queues of the
    /// workers their keys route to; return once the broker confirmed every message.
    fn publish_generated(&self, tasks: &[DataPointTask], tags: &[MessageTag])
    -> Result<(), String>;
    /// Acknowledge deliveries whose writes are committed (or that were skipped as copies).
    fn ack(&self, tokens: Vec<u64>);
}

/// One task delivered by the broker.
#[derive(Debug)]
pub struct Delivery {
    /// Opaque, unique per delivery; handed back to [`BrokerLink::ack`].
    pub token: u64,
    pub task: DataPointTask,
    pub tag: MessageTag,
    /// Came from the priority queue.
    pub priority: bool,
}

/// Store metadata key of one applied-id slot of `worker`.
fn slot_key(worker: u32, batch: u64) -> String {
    format!("worker/{worker}/applied/{}", batch % SLOTS)
}

/// Store metadata key of one outbox slot of `worker`.
fn outbox_key(worker: u32, batch: u64) -> String {
    format!("worker/{worker}/outbox/{}", batch % SLOTS)
}

/// Hook outputs of one committed batch, waiting to be published.
#[derive(Debug, Clone, PartialEq)]
struct Outbox {
    batch: u64,
    tasks: Vec<DataPointTask>,
    tags: Vec<MessageTag>,
}

impl Outbox {
    /// Tasks in DP3's wire JSON (the message body), with their ids and flags.
    fn to_document(&self) -> Document {
        let messages: Vec<Bson> = self
            .tasks
            .iter()
            .zip(&self.tags)
            .map(|(t, tag)| {
                Bson::Document(doc! {
                    "id": &tag.message_id,
                    "dup": tag.maybe_duplicate,
                    "body": task_to_wire_json(t),
                })
            })
            .collect();
        doc! { "batch": self.batch as i64, "done": false, "messages": messages }
    }

    /// `None` for a done or unreadable slot (the reason is logged by the caller).
    fn from_document(model: &ModelSpec, d: &Document) -> Result<Option<Outbox>, String> {
        if d.get_bool("done").unwrap_or(true) {
            return Ok(None);
        }
        let batch = d
            .get_i64("batch")
            .ok()
            .and_then(|b| u64::try_from(b).ok())
            .ok_or("no batch number")?;
        let mut out = Outbox {
            batch,
            tasks: Vec::new(),
            tags: Vec::new(),
        };
        for m in d.get_array("messages").map_err(|e| e.to_string())? {
            let m = m.as_document().ok_or("message is not a document")?;
            let body = m.get_str("body").map_err(|e| e.to_string())?;
            let task = task_from_wire_json(model, body.as_bytes()).map_err(|e| e.to_string())?;
            out.tasks.push(task);
            out.tags.push(MessageTag {
                message_id: m.get_str("id").map_err(|e| e.to_string())?.to_owned(),
                maybe_duplicate: m.get_bool("dup").unwrap_or(true),
            });
        }
        Ok(Some(out))
    }
}

/// The dedupe key of a message id (ids are random or derived by hashing, so 64 bits of a
/// digest keep collisions out of reach for windows of millions).
pub fn dedupe_key(message_id: &str) -> u64 {
    let digest = Sha256::digest(message_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(b)
}

/// The message id of the `index`-th task a hook returned while processing `parent`.
pub fn child_message_id(parent: &str, index: usize) -> String {
    let digest = Sha256::digest(format!("{parent}/{index}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Applied ids of recent batches (oldest first) and ids in flight.
#[derive(Default)]
struct Dedupe {
    applied: VecDeque<(u64, Vec<u64>)>,
    in_flight: HashSet<u64>,
    /// Copies of in-flight messages: acked together with the original once it commits (an
    /// earlier ack would lose the message if the process died before that commit).
    copies: HashMap<u64, Vec<u64>>,
    next_batch: u64,
}

impl Dedupe {
    fn applied(&self, key: u64) -> bool {
        self.applied
            .iter()
            .any(|(_, keys)| keys.binary_search(&key).is_ok())
    }
}

/// What to do with a delivery.
pub(super) enum Admission {
    /// New: process it.
    Process(Box<Work>),
    /// A copy of an applied message: ack it now.
    Applied,
    /// A copy of a message in flight: acked when the original commits.
    Held,
}

/// Broker-mode state shared by the delivery path and the writer.
pub(super) struct BrokerIntake {
    pub(super) link: Arc<dyn BrokerLink>,
    worker: u32,
    /// Delivered but not committed: token → dedupe key.
    pending: Mutex<HashMap<u64, u64>>,
    dedupe: Mutex<Dedupe>,
    /// Outboxes a previous run committed but did not finish publishing (oldest first).
    unfinished: Mutex<Vec<Outbox>>,
}

impl BrokerIntake {
    /// Load the applied-id window of `worker` from the store.
    pub(super) fn open(
        store: &dyn Store,
        model: &ModelSpec,
        link: Arc<dyn BrokerLink>,
        worker: u32,
    ) -> Result<BrokerIntake, PipelineError> {
        let mut unfinished = Vec::new();
        let mut slots = Vec::new();
        for slot in 0..SLOTS {
            if let Some(d) = store.get_meta(&outbox_key(worker, slot))? {
                match Outbox::from_document(model, &d) {
                    Ok(Some(o)) => unfinished.push(o),
                    Ok(None) => {}
                    Err(e) => warn!(worker, slot, error = %e, "unreadable outbox slot ignored"),
                }
            }
            let Some(d) = store.get_meta(&slot_key(worker, slot))? else {
                continue;
            };
            match decode_slot(&d) {
                Some(s) => slots.push(s),
                None => warn!(worker, slot, "unreadable applied-id slot ignored"),
            }
        }
        slots.sort_by_key(|(batch, _)| *batch);
        unfinished.sort_by_key(|o| o.batch);
        let next_batch = slots.last().map_or(0, |(b, _)| b + 1);
        let ids: usize = slots.iter().map(|(_, k)| k.len()).sum();
        if ids > 0 {
            info!(worker, ids, batches = slots.len(), "dedupe window loaded");
        }
        Ok(BrokerIntake {
            link,
            worker,
            pending: Mutex::new(HashMap::new()),
            dedupe: Mutex::new(Dedupe {
                applied: slots.into(),
                in_flight: HashSet::new(),
                copies: HashMap::new(),
                next_batch,
            }),
            unfinished: Mutex::new(unfinished),
        })
    }

    /// Admit a delivery, checking possible copies against the applied and in-flight ids.
    pub(super) fn admit(&self, d: Delivery) -> Admission {
        let key = dedupe_key(&d.tag.message_id);
        {
            let mut dedupe = self.dedupe.lock();
            if d.tag.maybe_duplicate {
                if dedupe.applied(key) {
                    return Admission::Applied;
                }
                if dedupe.in_flight.contains(&key) {
                    dedupe.copies.entry(key).or_default().push(d.token);
                    return Admission::Held;
                }
            }
            dedupe.in_flight.insert(key);
        }
        self.pending.lock().insert(d.token, key);
        Admission::Process(Box::new(Work {
            priority: d.priority,
            position: (d.token, 0),
            origin: Some(d.tag),
            task: d.task,
        }))
    }
}

fn encode_slot(batch: u64, keys: &[u64]) -> Document {
    let bytes: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
    doc! {
        "batch": batch as i64,
        "keys": Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes }),
    }
}

fn decode_slot(d: &Document) -> Option<(u64, Vec<u64>)> {
    let batch = u64::try_from(d.get_i64("batch").ok()?).ok()?;
    let bytes = &d.get_binary_generic("keys").ok()?;
    if bytes.len() % 8 != 0 {
        return None;
    }
    let keys = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    Some((batch, keys))
}

/// A batch between its metadata and its commit.
struct Pending {
    batch: u64,
    /// Its deliveries.
    tokens: Vec<u64>,
    /// Their dedupe keys, sorted.
    keys: Vec<u64>,
    outbox: Option<Outbox>,
}

/// The writer's broker-mode settlement: commit the batch's applied ids and hook outputs
/// (outbox) with it, then ack its deliveries and publish the outbox.
pub(super) struct BrokerSettlement {
    intake: Arc<BrokerIntake>,
    /// Hook outputs of the batch being written.
    children: Option<(Vec<DataPointTask>, Vec<MessageTag>)>,
    /// The batch being written.
    current: Option<Pending>,
}

impl BrokerSettlement {
    pub(super) fn new(intake: Arc<BrokerIntake>) -> Self {
        BrokerSettlement {
            intake,
            children: None,
            current: None,
        }
    }

    /// Publish an outbox until the broker confirms it, then mark its slot done. After a
    /// failed attempt every message is flagged as a possible copy: the broker may have
    /// stored it although the confirm never arrived. `false`: gave up at shutdown (the slot
    /// stays unfinished and is published at the next start).
    fn publish(&self, shared: &Shared, mut outbox: Outbox, stopping: bool) -> bool {
        let link = &self.intake.link;
        let published = retry(shared, stopping, "RabbitMQ publish", None, || {
            let result = link.publish_generated(&outbox.tasks, &outbox.tags);
            if result.is_err() {
                for tag in &mut outbox.tags {
                    tag.maybe_duplicate = true;
                }
            }
            result
        });
        if published.is_none() {
            return false;
        }
        let done = WriteBatch {
            meta: vec![(
                outbox_key(self.intake.worker, outbox.batch),
                doc! { "batch": outbox.batch as i64, "done": true },
            )],
            ..WriteBatch::default()
        };
        // If this fails the outbox is published once more at the next start (flagged).
        if let Err(e) = shared.store.apply(&done) {
            warn!(error = %e, "cannot mark an outbox slot done");
        }
        true
    }
}

impl Settlement for BrokerSettlement {
    fn start(&mut self, shared: &Shared) {
        let unfinished = std::mem::take(&mut *self.intake.unfinished.lock());
        for mut outbox in unfinished {
            info!(
                batch = outbox.batch,
                tasks = outbox.tasks.len(),
                "publishing hook outputs of a previous run"
            );
            for tag in &mut outbox.tags {
                tag.maybe_duplicate = true;
            }
            if !self.publish(shared, outbox, false) {
                return;
            }
        }
    }

    fn persist_children(
        &mut self,
        _shared: &Shared,
        children: Vec<DataPointTask>,
        tags: Vec<MessageTag>,
        _stopping: bool,
    ) -> Option<()> {
        // Made durable by the batch itself (see `batch_meta`).
        self.children = Some((children, tags));
        Some(())
    }

    fn batch_meta(&mut self, completions: &[Completion]) -> Vec<(String, Document)> {
        let tokens: Vec<u64> = completions.iter().map(|c| c.position.0).collect();
        let mut keys: Vec<u64> = {
            let pending = self.intake.pending.lock();
            tokens
                .iter()
                .filter_map(|t| pending.get(t).copied())
                .collect()
        };
        keys.sort_unstable();
        keys.dedup();
        let batch = {
            let mut dedupe = self.intake.dedupe.lock();
            let b = dedupe.next_batch;
            dedupe.next_batch += 1;
            b
        };
        let worker = self.intake.worker;
        let mut meta = vec![(slot_key(worker, batch), encode_slot(batch, &keys))];
        let outbox = match self.children.take() {
            Some((tasks, tags)) if !tasks.is_empty() => {
                let outbox = Outbox { batch, tasks, tags };
                meta.push((outbox_key(worker, batch), outbox.to_document()));
                Some(outbox)
            }
            _ => None,
        };
        self.current = Some(Pending {
            batch,
            tokens,
            keys,
            outbox,
        });
        meta
    }

    fn committed(&mut self, shared: &Shared, _completions: &[Completion]) {
        let Some(Pending {
            batch,
            mut tokens,
            keys,
            outbox,
        }) = self.current.take()
        else {
            return;
        };
        {
            let mut pending = self.intake.pending.lock();
            for t in &tokens {
                pending.remove(t);
            }
        }
        {
            let mut dedupe = self.intake.dedupe.lock();
            for k in &keys {
                dedupe.in_flight.remove(k);
                if let Some(copies) = dedupe.copies.remove(k) {
                    tokens.extend(copies);
                }
            }
            dedupe.applied.push_back((batch, keys));
            while dedupe.applied.len() as u64 > SLOTS {
                dedupe.applied.pop_front();
            }
        }
        // The batch (with its outbox) is durable: the deliveries can go.
        self.intake.link.ack(tokens);
        if let Some(outbox) = outbox
            && !self.publish(
                shared,
                outbox,
                shared.lanes_stop.load(std::sync::atomic::Ordering::SeqCst),
            )
        {
            warn!(batch, "hook outputs left in the outbox for the next start");
        }
    }
}

/// Count and acknowledge a delivery skipped as a copy of an applied message.
pub(super) fn skip_duplicate(shared: &Shared, intake: &BrokerIntake, token: u64) {
    shared.stats.duplicates_skipped.inc();
    intake.link.ack(vec![token]);
}

/// Tag the hook outputs of a broker-mode task (see [`child_message_id`]).
pub(super) fn tag_children(parent: &MessageTag, count: usize) -> Vec<MessageTag> {
    (0..count)
        .map(|i| MessageTag {
            message_id: child_message_id(&parent.message_id, i),
            maybe_duplicate: parent.maybe_duplicate,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_round_trips_through_wire_json() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/dp3-test-config");
        let model = dp3_model::config::load_config_dir(&dir).unwrap().model;
        let task = dp3_model::validate::task_from_wire_json(
            &model,
            br#"{"etype":"test_entity_type","eid":"e1","data_points":[{"etype":"test_entity_type","eid":"e1","attr":"test_attr_int","v":5,"c":1.0}]}"#,
        )
        .unwrap();
        let outbox = Outbox {
            batch: 3,
            tasks: vec![task],
            tags: vec![MessageTag {
                message_id: "abc".into(),
                maybe_duplicate: false,
            }],
        };
        let back = Outbox::from_document(&model, &outbox.to_document()).unwrap();
        assert_eq!(back, Some(outbox));
        let done = doc! {"batch": 3i64, "done": true};
        assert_eq!(Outbox::from_document(&model, &done).unwrap(), None);
    }

    #[test]
    fn slots_round_trip_and_child_ids_are_stable() {
        let d = encode_slot(7, &[1, 5, u64::MAX]);
        assert_eq!(decode_slot(&d), Some((7, vec![1, 5, u64::MAX])));
        assert!(decode_slot(&doc! {"batch": 1i64}).is_none());
        assert_eq!(child_message_id("abc", 0), child_message_id("abc", 0));
        assert_ne!(child_message_id("abc", 0), child_message_id("abc", 1));
        assert_ne!(dedupe_key("a"), dedupe_key("b"));
        assert_eq!(slot_key(2, SLOTS + 3), "worker/2/applied/3");
    }

    #[test]
    fn dedupe_sees_applied_ids() {
        let mut d = Dedupe::default();
        d.applied.push_back((0, vec![1, 4, 8]));
        assert!(d.applied(4));
        assert!(!d.applied(5));
    }
}
