//! RabbitMQ transport for the scale-out mode (`dp3 api` + N × `dp3 worker`), wire-compatible
//! with DP3: same exchanges/queues (core.md §1.4), routing (§1.5) and message bodies (§2.1,
//! §5.3, §7), so DP3's Python API and our workers (or the other way round) interoperate.
//!
//! * [`topology`]: declare / check / inspect DP3's exchanges and per-worker queues.
//! * [`publisher::RabbitPublisher`]: the API's [`crate::queue::TaskSubmitter`], plus priority
//!   (hook output), snapshot and control publishing for workers.
//! * [`consumer::RabbitConsumer`]: a worker's task / snapshot / control consumer. Unlike DP3
//!   (which acks a delivery *before* processing it and so loses it on a crash), the pipeline
//!   acks only after the task's writes are committed: at-least-once delivery.
//! * [`messages`]: control and snapshot message formats.
//!
//! Every component owns a small dedicated Tokio runtime, so publishing and consuming never run
//! on (or block) the caller's reactor, and reconnects by itself with DP3's backoff
//! (1, 2, 5, 10, 30, 30, … s) after the broker or the network went away.

pub mod consumer;
pub mod link;
pub mod messages;
pub mod publisher;
mod runtime;
pub mod topology;

use std::time::Duration;

use dp3_model::config::MsgBrokerConfig;

pub use consumer::{
    Consumed, ControlConsumer, DeliveryTag, RabbitConsumer, SnapshotConsumer, TaskConsumer,
};
pub use link::RabbitLink;
pub use messages::{
    MessageError, SnapshotMessage, SnapshotMessageType, control_from_json, control_to_json,
};
pub use publisher::RabbitPublisher;
pub use topology::{
    QueueKind, SetupReport, StaleQueue, Topology, check_topology, declare_topology,
    delete_topology, rabbitmq_setup,
};

/// DP3's normal task queue limit (`x-max-length` of `<app>-worker-<i>`, set by
/// `rmq_reconfigure.sh`).
pub const DEFAULT_QUEUE_MAX_LENGTH: u32 = 10_000;

/// Everything a RabbitMQ component needs: where the broker is and the shape of the
/// deployment (app name, number of workers). `Debug` hides the password.
#[derive(Clone, PartialEq)]
pub struct RabbitConfig {
    pub host: String,
    pub port: u16,
    pub virtual_host: String,
    pub username: String,
    pub password: String,
    /// DP3's `APP_NAME`: the prefix of every exchange and queue name.
    pub app_name: String,
    /// `processing_core.worker_processes` (N ≥ 1): the routing modulus.
    pub workers: u32,
    /// Unacked deliveries per consumer (RabbitMQ per-consumer QoS). With acks only after the
    /// store commit, a worker's throughput is at most `prefetch / commit latency` per queue.
    pub prefetch: u16,
    /// `x-max-length` of the normal queues (only used when declaring them).
    pub queue_max_length: u32,
    /// How long a publish whose messages the broker rejects (normal queue full) is retried
    /// before the caller gets [`crate::queue::SubmitError::Overloaded`].
    pub overload_retry: Duration,
    /// Messages a publisher may have in flight (published, not yet confirmed); beyond that
    /// `submit` answers `Overloaded` at once instead of queueing in memory.
    pub max_unconfirmed: usize,
    /// A publish not confirmed within this time is answered `Unavailable` (the broker may
    /// block publishers indefinitely under a memory or disk alarm).
    pub confirm_timeout: Duration,
    /// Delays between reconnect attempts; the last one repeats.
    pub reconnect_delays: Vec<Duration>,
    /// Limit for one TCP connect + AMQP handshake.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("endpoint", &self.endpoint())
            .field("username", &self.username)
            .field("app_name", &self.app_name)
            .field("workers", &self.workers)
            .field("prefetch", &self.prefetch)
            .field("queue_max_length", &self.queue_max_length)
            .field("overload_retry", &self.overload_retry)
            .field("max_unconfirmed", &self.max_unconfirmed)
            .finish_non_exhaustive()
    }
}

impl RabbitConfig {
    /// From `processing_core.msg_broker`, DP3's app name and `worker_processes`.
    pub fn new(broker: &MsgBrokerConfig, app_name: &str, workers: u32) -> RabbitConfig {
        RabbitConfig {
            host: broker.host.clone(),
            port: broker.port,
            virtual_host: broker.virtual_host.clone(),
            username: broker.username.clone(),
            password: broker.password.clone(),
            app_name: app_name.to_owned(),
            workers,
            prefetch: 500,
            queue_max_length: DEFAULT_QUEUE_MAX_LENGTH,
            overload_retry: Duration::from_secs(1),
            max_unconfirmed: 50_000,
            confirm_timeout: Duration::from_secs(30),
            reconnect_delays: [1, 2, 5, 10, 30]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Delay before reconnect attempt number `attempt` (0-based).
    pub fn reconnect_delay(&self, attempt: usize) -> Duration {
        self.reconnect_delays
            .get(attempt)
            .or(self.reconnect_delays.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }

    /// The names of this deployment's exchanges and queues.
    pub fn topology(&self) -> Topology {
        Topology::new(&self.app_name, self.workers)
    }

    /// `host:port/vhost`, for messages (never includes credentials).
    pub fn endpoint(&self) -> String {
        format!("{}:{}{}", self.host, self.port, self.virtual_host)
    }

    fn validate(&self) -> Result<(), RabbitError> {
        if self.workers == 0 {
            return Err(RabbitError::Config(
                "worker_processes must be at least 1".into(),
            ));
        }
        // AMQP names are short strings (≤ 255 bytes); the longest is `<app>-main-snapshot-exchange`
        // or `<app>-worker-<i>-snapshots`.
        let longest = self
            .topology()
            .snapshot_queue(self.workers - 1)
            .len()
            .max(self.topology().snapshot_exchange().len());
        if longest > 255 {
            return Err(RabbitError::Config(format!(
                "app name '{}' is too long for RabbitMQ names (at most 255 bytes per name)",
                self.app_name
            )));
        }
        if self.prefetch == 0 {
            return Err(RabbitError::Config(
                "prefetch must be at least 1 (0 means unlimited in AMQP)".into(),
            ));
        }
        Ok(())
    }
}

/// Errors of the RabbitMQ components.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RabbitError {
    #[error("invalid RabbitMQ configuration: {0}")]
    Config(String),
    #[error("cannot connect to RabbitMQ at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("RabbitMQ {operation} failed: {reason}")]
    Amqp { operation: String, reason: String },
    /// A passive check found an exchange or queue missing (run `dp3 rabbitmq-setup`).
    #[error("{kind} '{name}' is not declared in RabbitMQ (run the RabbitMQ setup first)")]
    Missing { kind: &'static str, name: String },
    #[error("worker index {index} is out of range for {workers} worker(s)")]
    WorkerIndex { index: u32, workers: u32 },
    #[error("cannot start the RabbitMQ runtime: {0}")]
    Runtime(String),
}

impl RabbitError {
    fn amqp(operation: impl Into<String>, e: impl std::fmt::Display) -> RabbitError {
        RabbitError::Amqp {
            operation: operation.into(),
            reason: e.to_string(),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;

    use dp3_model::ModelSpec;
    use dp3_model::config::load_config_dir;

    /// DP3's test model (the fixture configuration shipped with the repository).
    pub(crate) fn model() -> ModelSpec {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/dp3-test-config");
        match load_config_dir(&dir) {
            Ok(config) => config.model,
            Err(e) => panic!("fixture config does not load: {e:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RabbitConfig {
        RabbitConfig::new(&MsgBrokerConfig::default(), "dp3", 2)
    }

    #[test]
    fn reconnect_backoff_follows_dp3_and_repeats_the_last_delay() {
        let c = cfg();
        let secs: Vec<u64> = (0..7).map(|i| c.reconnect_delay(i).as_secs()).collect();
        assert_eq!(secs, [1, 2, 5, 10, 30, 30, 30]);
    }

    #[test]
    fn config_is_validated() {
        assert_eq!(cfg().validate(), Ok(()));
        let mut zero = cfg();
        zero.workers = 0;
        assert!(matches!(zero.validate(), Err(RabbitError::Config(m)) if m.contains("at least 1")));
        let mut long = cfg();
        long.app_name = "x".repeat(250);
        assert!(matches!(long.validate(), Err(RabbitError::Config(m)) if m.contains("too long")));
        let mut prefetch = cfg();
        prefetch.prefetch = 0;
        assert!(prefetch.validate().is_err());
    }

    #[test]
    fn endpoint_never_shows_credentials() {
        let mut c = cfg();
        c.password = "s3cret".into();
        assert_eq!(c.endpoint(), "localhost:5672/");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
