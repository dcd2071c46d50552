//! Broker mode (`dp3 worker`): tasks arrive from RabbitMQ instead of the HTTP API, and the
//! broker, not the accept log, keeps them until they are applied.
//!
//! * A delivery is acknowledged only after the batch holding its writes is committed (DP3
//!   acks before processing and loses the task when the worker dies).
//! * Hook outputs are published to the priority queues of the workers their keys route to,
//!   and confirmed by the broker, *before* their parent's batch commits; they are never
//!   dispatched locally (a worker's own outputs come back through its own priority queue).
//! * At-least-once delivery becomes exactly-once application by message id: every batch
//!   commits the ids it applied into a ring of store metadata slots (atomically with its
//!   writes), and a delivery that may be a copy of an applied message — the broker
//!   redelivered it, or its parent was such a delivery — is checked against that window
//!   (acked and skipped when found) and against the ids still in flight (acked together
//!   with the original when that commits). Hook outputs get ids derived from their parent's id
//!   and their index, so re-processing a redelivered parent re-publishes the same ids.
//!
//! Only possible duplicates are looked up, so the window costs a sorted `Vec<u64>` per batch
//! and a binary search per slot for the (rare) flagged deliveries.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use dp3_model::DataPointTask;
use dp3_store::Store;
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
    Process(Work),
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
}

impl BrokerIntake {
    /// Load the applied-id window of `worker` from the store.
    pub(super) fn open(
        store: &dyn Store,
        link: Arc<dyn BrokerLink>,
        worker: u32,
    ) -> Result<BrokerIntake, PipelineError> {
        let mut slots = Vec::new();
        for slot in 0..SLOTS {
            let Some(d) = store.get_meta(&slot_key(worker, slot))? else {
                continue;
            };
            match decode_slot(&d) {
                Some(s) => slots.push(s),
                None => warn!(worker, slot, "unreadable applied-id slot ignored"),
            }
        }
        slots.sort_by_key(|(batch, _)| *batch);
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
        Admission::Process(Work {
            priority: d.priority,
            position: (d.token, 0),
            origin: Some(d.tag),
            task: d.task,
        })
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

/// The writer's broker-mode settlement: publish children before the commit, commit the
/// batch's applied ids with it, ack after it.
pub(super) struct BrokerSettlement {
    intake: Arc<BrokerIntake>,
    /// The batch being written: (batch number, its tokens, their sorted keys).
    current: Option<(u64, Vec<u64>, Vec<u64>)>,
}

impl BrokerSettlement {
    pub(super) fn new(intake: Arc<BrokerIntake>) -> Self {
        BrokerSettlement {
            intake,
            current: None,
        }
    }
}

impl Settlement for BrokerSettlement {
    fn persist_children(
        &mut self,
        shared: &Shared,
        children: Vec<DataPointTask>,
        tags: Vec<MessageTag>,
        stopping: bool,
    ) -> Option<()> {
        if children.is_empty() {
            return Some(());
        }
        let link = &self.intake.link;
        retry(shared, stopping, "RabbitMQ publish", || {
            link.publish_generated(&children, &tags)
        })
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
        let meta = vec![(
            slot_key(self.intake.worker, batch),
            encode_slot(batch, &keys),
        )];
        self.current = Some((batch, tokens, keys));
        meta
    }

    fn committed(&mut self, _shared: &Shared, _completions: &[Completion]) {
        let Some((batch, mut tokens, keys)) = self.current.take() else {
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
        self.intake.link.ack(tokens);
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
