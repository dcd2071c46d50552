//! The worker's [`BrokerLink`]: connects a broker-mode pipeline to RabbitMQ — deliveries of
//! the task consumer go in with a token, the pipeline acks tokens after its commits, and hook
//! outputs are published (and confirmed) through the publisher.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dp3_model::DataPointTask;
use parking_lot::Mutex;
use tracing::debug;

use super::consumer::{Consumed, DeliveryTag, TaskConsumer};
use super::publisher::RabbitPublisher;
use crate::pipeline::broker::{BrokerLink, Delivery};
use crate::pipeline::staging::MessageTag;

/// How long a hook-output publish may wait for the broker's confirms before the writer
/// retries it (the batch waits; nothing is acked meanwhile).
const CONFIRM_WAIT: Duration = Duration::from_secs(30);

/// Tokens ↔ delivery tags, the publisher and (once started) the task consumer.
pub struct RabbitLink {
    publisher: Arc<RabbitPublisher>,
    consumer: OnceLock<Arc<TaskConsumer>>,
    tags: Mutex<HashMap<u64, DeliveryTag>>,
    next_token: AtomicU64,
}

impl RabbitLink {
    pub fn new(publisher: Arc<RabbitPublisher>) -> RabbitLink {
        RabbitLink {
            publisher,
            consumer: OnceLock::new(),
            tags: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
        }
    }

    /// Attach the task consumer (created after the pipeline, whose `deliver` it calls).
    pub fn set_consumer(&self, consumer: Arc<TaskConsumer>) {
        let _ = self.consumer.set(consumer);
    }

    /// Turn a consumed task message into a pipeline delivery, remembering its tag.
    pub fn delivery(&self, consumed: Consumed<DataPointTask>) -> Delivery {
        let token = self.next_token.fetch_add(1, Ordering::SeqCst);
        self.tags.lock().insert(token, consumed.tag);
        Delivery {
            token,
            task: consumed.message,
            tag: MessageTag {
                message_id: consumed.message_id,
                maybe_duplicate: consumed.redelivered || consumed.maybe_duplicate,
            },
            priority: consumed.priority,
        }
    }

    /// Forget a delivery the pipeline did not take (stopping): it stays unacked and the
    /// broker redelivers it.
    pub fn forget(&self, token: u64) {
        self.tags.lock().remove(&token);
    }
}

impl BrokerLink for RabbitLink {
    fn publish_generated(
        &self,
        tasks: &[DataPointTask],
        tags: &[MessageTag],
    ) -> Result<(), String> {
        let accepted = self
            .publisher
            .publish_generated(tasks, tags)
            .map_err(|e| e.to_string())?;
        self.publisher
            .wait(accepted, CONFIRM_WAIT)
            .map_err(|e| e.to_string())
    }

    fn ack(&self, tokens: Vec<u64>) {
        let tags: Vec<DeliveryTag> = {
            let mut map = self.tags.lock();
            tokens.iter().filter_map(|t| map.remove(t)).collect()
        };
        let Some(consumer) = self.consumer.get() else {
            return;
        };
        let n = tags.len();
        let sent = consumer.ack_all(tags);
        if sent < n {
            // Their channel died: the broker redelivers them flagged, and they are skipped
            // as already applied.
            debug!(lost = n - sent, "acks for a dead channel dropped");
        }
    }
}
