//! The RabbitMQ transport against a real broker on 127.0.0.1:5672 (guest/guest). Each test
//! uses its own app name, so its exchanges and queues collide with nothing, and deletes them
//! at the end. Without a reachable broker every test prints `SKIPPED: RabbitMQ not reachable`
//! and passes (CI's `.ci/run` starts the broker, so there they run).
//!
//! Connection loss is simulated with a TCP proxy owned by the test (cutting its sockets), so
//! the shared broker is never restarted.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dp3::queue::rabbitmq::topology::QueueKind;
use dp3::queue::rabbitmq::{
    Consumed, ControlConsumer, RabbitConfig, RabbitConsumer, RabbitError, RabbitPublisher,
    SnapshotMessage, SnapshotMessageType, TaskConsumer, Topology, check_topology, declare_topology,
    delete_topology, rabbitmq_setup,
};
use dp3::queue::{ControlAction, ControlSink, SubmitError, TaskSubmitter};
use dp3_model::config::{MsgBrokerConfig, load_config_dir};
use dp3_model::validate::{task_from_wire_json, task_to_wire_json};
use dp3_model::{DataPointTask, Eid, ModelSpec};
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use parking_lot::Mutex;
use tokio::net::TcpListener;

const BROKER: &str = "127.0.0.1:5672";

fn broker_reachable() -> bool {
    let addr: SocketAddr = BROKER.parse().expect("valid address");
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

macro_rules! require_broker {
    () => {
        if !broker_reachable() {
            println!("SKIPPED: RabbitMQ not reachable");
            return;
        }
    };
}

fn model() -> Arc<ModelSpec> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/dp3-test-config");
    Arc::new(load_config_dir(&dir).expect("fixture config loads").model)
}

fn unique_app(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("dp3test-{test}-{}-{nanos}", std::process::id())
}

fn config(app: &str, workers: u32, port: u16) -> RabbitConfig {
    let broker = MsgBrokerConfig {
        host: "127.0.0.1".into(),
        port,
        ..MsgBrokerConfig::default()
    };
    let mut cfg = RabbitConfig::new(&broker, app, workers);
    // Fast reconnects keep the resilience test short.
    cfg.reconnect_delays = vec![Duration::from_millis(100), Duration::from_millis(300)];
    cfg.connect_timeout = Duration::from_secs(3);
    cfg
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Declares the topology and deletes it (queues, messages, exchanges) when dropped.
struct Deployment {
    cfg: RabbitConfig,
}

impl Deployment {
    fn new(test: &str, workers: u32) -> Deployment {
        Deployment::with(config(&unique_app(test), workers, 5672))
    }

    fn with(cfg: RabbitConfig) -> Deployment {
        block_on(declare_topology(&cfg)).expect("topology declared");
        Deployment { cfg }
    }

    fn cfg(&self) -> RabbitConfig {
        self.cfg.clone()
    }

    fn topo(&self) -> Topology {
        self.cfg.topology()
    }

    /// Ready (not unacked) messages per queue.
    fn depths(&self) -> BTreeMap<String, u32> {
        block_on(rabbitmq_setup(&self.cfg, false))
            .expect("setup")
            .queues
            .into_iter()
            .collect()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = block_on(delete_topology(&self.cfg));
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Messages a consumer handed out, in order.
type Received<T> = Arc<Mutex<Vec<Consumed<T>>>>;

fn collector<T: Send + 'static>() -> (Received<T>, impl FnMut(Consumed<T>) + Send + 'static) {
    let received: Received<T> = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    (received, move |c| sink.lock().push(c))
}

fn wait_count<T>(received: &Received<T>, n: usize) -> bool {
    wait_until(Duration::from_secs(10), || received.lock().len() >= n)
}

fn publish_ok(publisher: &RabbitPublisher, tasks: Vec<DataPointTask>) {
    let accepted = publisher.submit(tasks).expect("submit accepted");
    publisher
        .wait(accepted, Duration::from_secs(10))
        .expect("confirmed by the broker");
}

/// Tasks in DP3's wire format, one per eid type, parsed as a worker would.
const DP3_MESSAGES: [&str; 5] = [
    r#"{"etype":"test_entity_type","eid":"e1","data_points":[{"etype":"test_entity_type","eid":"e1","attr":"test_attr_history","src":"s","v":3,"c":1.0,"t1":"2025-01-01T00:00:00Z","t2":"2025-01-01T00:00:00Z"}],"tags":["x"],"ttl_tokens":{"data":"2025-02-01T00:00:00Z"}}"#,
    r#"{"etype":"del_ttl_ip","eid":"10.1.2.3","data_points":[{"etype":"del_ttl_ip","eid":"10.1.2.3","attr":"data1","v":"hello","c":1.0}]}"#,
    r#"{"etype":"del_weak_mac","eid":"aa:bb:cc:dd:ee:ff","data_points":[{"etype":"del_weak_mac","eid":"aa:bb:cc:dd:ee:ff","attr":"data1","v":"m","c":1.0}]}"#,
    r#"{"etype":"A","eid":12,"delete":true}"#,
    r#"{"etype":"test_entity_type","eid":"e2","data_points":[{"etype":"test_entity_type","eid":"e2","attr":"test_attr_ipv6","v":"2001:db8::1","c":1.0},{"etype":"test_entity_type","eid":"e2","attr":"test_attr_mac","v":"aa:bb:cc:dd:ee:01","c":1.0}]}"#,
];

fn dp3_tasks(model: &ModelSpec) -> Vec<DataPointTask> {
    DP3_MESSAGES
        .iter()
        .map(|m| task_from_wire_json(model, m.as_bytes()).expect("valid DP3 message"))
        .collect()
}

fn string_task(model: &ModelSpec, eid: &str) -> DataPointTask {
    let json = format!(
        r#"{{"etype":"test_entity_type","eid":"{eid}","data_points":[{{"etype":"test_entity_type","eid":"{eid}","attr":"test_attr_string","v":"v-{eid}","c":1.0}}]}}"#
    );
    task_from_wire_json(model, json.as_bytes()).expect("valid task")
}

fn amqp_connect() -> (tokio::runtime::Runtime, Connection) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let conn = rt
        .block_on(Connection::connect(
            "amqp://127.0.0.1:5672/%2f",
            ConnectionProperties::default(),
        ))
        .expect("raw AMQP connection");
    (rt, conn)
}

#[test]
fn topology_is_declared_idempotently_and_checked_passively() {
    require_broker!();
    let cfg = config(&unique_app("topology"), 3, 5672);
    match block_on(check_topology(&cfg)) {
        Err(RabbitError::Missing { kind, name }) => {
            assert_eq!(kind, "exchange");
            assert_eq!(name, cfg.topology().task_exchange());
        }
        other => panic!("check of an undeclared app must fail: {other:?}"),
    }
    let deployment = Deployment::with(cfg.clone());
    block_on(declare_topology(&cfg)).expect("declaring again is a no-op");
    block_on(check_topology(&cfg)).expect("everything exists");

    // Shrinking to 2 workers: worker 2's queues are reported as stale, removed only on request.
    let smaller = RabbitConfig {
        workers: 2,
        ..cfg.clone()
    };
    let report = block_on(rabbitmq_setup(&smaller, false)).expect("setup");
    assert_eq!(report.queues.len(), 8);
    let stale: Vec<_> = report.stale.iter().map(|s| s.name.as_str()).collect();
    let topo = cfg.topology();
    let expected: Vec<String> = QueueKind::ALL.iter().map(|k| topo.queue(*k, 2)).collect();
    assert_eq!(
        stale,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(report.stale.iter().all(|s| !s.removed && s.messages == 0));
    let report = block_on(rabbitmq_setup(&smaller, true)).expect("setup");
    assert!(report.stale.iter().all(|s| s.removed));
    match block_on(check_topology(&cfg)) {
        Err(RabbitError::Missing { kind, name }) => {
            assert_eq!(kind, "queue");
            assert_eq!(name, topo.worker_queue(2));
        }
        other => panic!("worker 2's queues were removed: {other:?}"),
    }

    // A queue declared with other arguments is reported, naming the queue.
    let mut other_limit = smaller.clone();
    other_limit.queue_max_length = 5;
    let err = block_on(declare_topology(&other_limit)).expect_err("inequivalent arguments");
    assert!(
        err.to_string().contains(&topo.worker_queue(0)),
        "{err} names the queue"
    );
    drop(deployment);
}

#[test]
fn tasks_round_trip_in_dp3_format_with_persistent_messages() {
    require_broker!();
    let deployment = Deployment::new("roundtrip", 1);
    let model = model();
    let publisher = RabbitPublisher::start(deployment.cfg()).expect("publisher");
    assert!(publisher.wait_connected(Duration::from_secs(5)));
    let tasks = dp3_tasks(&model);

    // The body on the queue is DP3's message, byte for byte, and the message is persistent.
    publish_ok(&publisher, vec![tasks[0].clone()]);
    let (rt, conn) = amqp_connect();
    let got = rt.block_on(async {
        let ch = conn.create_channel().await.expect("channel");
        ch.basic_get(
            deployment.topo().worker_queue(0).as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
        .expect("one message")
    });
    assert_eq!(String::from_utf8_lossy(&got.delivery.data), DP3_MESSAGES[0]);
    assert_eq!(got.delivery.properties.delivery_mode(), &Some(2));
    assert_eq!(task_to_wire_json(&tasks[0]), DP3_MESSAGES[0]);

    // Everything (string, IPv4, MAC, int eids; IPv6/MAC values; TTL tokens, tags, delete)
    // comes back equal after publish → consume.
    let (received, handler) = collector();
    let consumer =
        TaskConsumer::tasks(deployment.cfg(), 0, model.clone(), handler).expect("consumer");
    publish_ok(&publisher, tasks.clone());
    assert!(wait_count(&received, tasks.len()), "all tasks consumed");
    let got: Vec<DataPointTask> = received.lock().iter().map(|c| c.message.clone()).collect();
    assert_eq!(got, tasks);
    assert!(
        received
            .lock()
            .iter()
            .all(|c| !c.priority && !c.redelivered)
    );
    for c in received.lock().iter() {
        assert!(consumer.ack(&c.tag));
    }

    // Hook outputs go to the priority queue.
    let pri = publisher.publish_priority(&tasks[1..2]).expect("accepted");
    publisher
        .wait(pri, Duration::from_secs(5))
        .expect("confirmed");
    assert!(wait_count(&received, tasks.len() + 1));
    let last = received.lock().last().cloned().expect("one more");
    assert!(last.priority);
    assert_eq!(last.message, tasks[1]);
    assert!(consumer.ack(&last.tag));
    consumer.close();
    assert_eq!(
        deployment.depths().values().sum::<u32>(),
        0,
        "acked messages are gone"
    );
}

#[test]
fn tasks_are_routed_to_worker_hash_mod_n() {
    require_broker!();
    let workers = 4;
    let deployment = Deployment::new("routing", workers);
    let model = model();
    let publisher = RabbitPublisher::start(deployment.cfg()).expect("publisher");
    assert!(publisher.wait_connected(Duration::from_secs(5)));
    let tasks: Vec<DataPointTask> = (0..200)
        .map(|i| string_task(&model, &format!("r{i}")))
        .collect();
    publish_ok(&publisher, tasks.clone());

    let mut consumers = Vec::new();
    let mut receivers = Vec::new();
    for w in 0..workers {
        let (received, handler) = collector();
        consumers.push(
            TaskConsumer::tasks(deployment.cfg(), w, model.clone(), handler).expect("consumer"),
        );
        receivers.push(received);
    }
    assert!(wait_until(Duration::from_secs(10), || receivers
        .iter()
        .map(|r| r.lock().len())
        .sum::<usize>()
        >= tasks.len()));
    let mut seen = HashSet::new();
    for (w, received) in receivers.iter().enumerate() {
        let received = received.lock();
        assert!(
            !received.is_empty(),
            "200 keys reach every one of 4 workers"
        );
        for c in received.iter() {
            assert_eq!(
                u32::from(c.message.hash()) % workers,
                w as u32,
                "{}",
                c.message.routing_key()
            );
            assert!(consumers[w].ack(&c.tag));
            seen.insert(c.message.routing_key());
        }
    }
    assert_eq!(seen.len(), tasks.len(), "each task exactly once");
    // The example key from core.md §1.5: HASH("A:12") = 32236 → worker 0 of 4.
    let a12 = &dp3_tasks(&model)[3];
    assert_eq!(a12.hash(), 32236);
}

#[test]
fn unacked_deliveries_are_redelivered_after_a_worker_dies() {
    require_broker!();
    let deployment = Deployment::new("redeliver", 1);
    let model = model();
    let publisher = RabbitPublisher::start(deployment.cfg()).expect("publisher");
    assert!(publisher.wait_connected(Duration::from_secs(5)));
    let tasks: Vec<DataPointTask> = (0..20)
        .map(|i| string_task(&model, &format!("c{i}")))
        .collect();
    publish_ok(&publisher, tasks.clone());

    // The first worker processes everything but "crashes" before its commit: no acks.
    let (first, handler) = collector();
    let crashed =
        TaskConsumer::tasks(deployment.cfg(), 0, model.clone(), handler).expect("consumer");
    assert!(wait_count(&first, tasks.len()));
    let stale_tag = first.lock()[0].tag.clone();
    crashed.close();
    assert!(
        !crashed.ack(&stale_tag),
        "acks on a dead channel are refused"
    );
    drop(crashed);

    let (second, handler) = collector();
    let restarted =
        TaskConsumer::tasks(deployment.cfg(), 0, model.clone(), handler).expect("consumer");
    assert!(
        wait_count(&second, tasks.len()),
        "every unacked task comes back"
    );
    let again: Vec<DataPointTask> = second.lock().iter().map(|c| c.message.clone()).collect();
    assert_eq!(again, tasks, "in the original order");
    assert!(second.lock().iter().all(|c| c.redelivered));
    assert_eq!(
        restarted.ack_all(second.lock().iter().map(|c| c.tag.clone())),
        tasks.len()
    );
    restarted.close();
    assert_eq!(deployment.depths().values().sum::<u32>(), 0);
}

#[test]
fn priority_queue_is_drained_first() {
    require_broker!();
    let deployment = Deployment::new("priority", 1);
    let model = model();
    let publisher = RabbitPublisher::start(deployment.cfg()).expect("publisher");
    assert!(publisher.wait_connected(Duration::from_secs(5)));
    let normal: Vec<DataPointTask> = (0..10)
        .map(|i| string_task(&model, &format!("n{i}")))
        .collect();
    let priority: Vec<DataPointTask> = (0..10)
        .map(|i| string_task(&model, &format!("p{i}")))
        .collect();
    publish_ok(&publisher, normal.clone());
    let pri = publisher.publish_priority(&priority).expect("accepted");
    publisher
        .wait(pri, Duration::from_secs(5))
        .expect("confirmed");

    // The handler is slow on the first message, so both prefetch windows fill meanwhile.
    let order = Arc::new(Mutex::new(Vec::new()));
    let sink = order.clone();
    let first = Arc::new(AtomicBool::new(true));
    let consumer = TaskConsumer::tasks(
        deployment.cfg(),
        0,
        model,
        move |c: Consumed<DataPointTask>| {
            if first.swap(false, Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(500));
            }
            sink.lock().push((c.priority, c.tag));
        },
    )
    .expect("consumer");
    assert!(wait_until(Duration::from_secs(10), || order.lock().len() == 20));
    let flags: Vec<bool> = order.lock().iter().skip(1).map(|(p, _)| *p).collect();
    let first_normal = flags.iter().position(|p| !p).unwrap_or(flags.len());
    assert!(
        flags[first_normal..].iter().all(|p| !p),
        "after the first message, all priority tasks precede normal ones: {flags:?}"
    );
    consumer.ack_all(order.lock().iter().map(|(_, t)| t.clone()));
    consumer.close();
}

#[test]
fn a_full_queue_answers_overloaded_instead_of_blocking() {
    require_broker!();
    let mut cfg = config(&unique_app("overload"), 1, 5672);
    cfg.queue_max_length = 3;
    cfg.overload_retry = Duration::from_millis(300);
    let deployment = Deployment::with(cfg);
    let model = model();
    let publisher = RabbitPublisher::start(deployment.cfg()).expect("publisher");
    assert!(publisher.wait_connected(Duration::from_secs(5)));
    let tasks: Vec<DataPointTask> = (0..5)
        .map(|i| string_task(&model, &format!("o{i}")))
        .collect();
    publish_ok(&publisher, tasks[..3].to_vec());

    let started = Instant::now();
    let accepted = publisher
        .submit(tasks[3..4].to_vec())
        .expect("submit returns at once");
    let result = publisher.wait(accepted, Duration::from_secs(10));
    assert_eq!(
        result,
        Err(SubmitError::Overloaded {
            retry_after_secs: 1
        })
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "bounded retry, took {waited:?}"
    );
    // Hook outputs are never refused: the priority queue is unbounded.
    let pri = publisher.publish_priority(&tasks[3..5]).expect("accepted");
    publisher
        .wait(pri, Duration::from_secs(5))
        .expect("priority queue takes it");

    // Once a worker consumed (and acked) the queue, publishing works again.
    let (received, handler) = collector();
    let consumer = TaskConsumer::tasks(deployment.cfg(), 0, model, handler).expect("consumer");
    assert!(wait_count(&received, 5));
    consumer.ack_all(received.lock().iter().map(|c| c.tag.clone()));
    assert!(wait_until(Duration::from_secs(5), || deployment
        .depths()
        .values()
        .sum::<u32>()
        == 0));
    publish_ok(&publisher, tasks[3..4].to_vec());
    consumer.close();
}

#[test]
fn invalid_messages_are_acked_and_dropped() {
    require_broker!();
    let deployment = Deployment::new("invalid", 1);
    let model = model();
    let (rt, conn) = amqp_connect();
    let topo = deployment.topo();
    let valid = task_to_wire_json(&string_task(&model, "ok"));
    rt.block_on(async {
        let ch = conn.create_channel().await.expect("channel");
        for body in [
            b"not json".to_vec(),
            br#"{"etype":"nope","eid":"x"}"#.to_vec(),
            valid.clone().into_bytes(),
        ] {
            ch.basic_publish(
                topo.task_exchange().as_str().into(),
                "0".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        }
    });
    let (received, handler) = collector();
    let consumer = TaskConsumer::tasks(deployment.cfg(), 0, model, handler).expect("consumer");
    assert!(wait_count(&received, 1));
    assert!(wait_until(Duration::from_secs(5), || consumer
        .dropped_invalid()
        == 2));
    assert_eq!(received.lock().len(), 1);
    assert_eq!(task_to_wire_json(&received.lock()[0].message), valid);
    // Not acking the valid one: after the consumer is gone only it is back in the queue.
    consumer.close();
    drop(consumer);
    assert!(wait_until(Duration::from_secs(5), || deployment.depths()
        [&topo.worker_queue(0)]
        == 1));
}

#[test]
fn control_actions_reach_every_worker_or_worker_zero() {
    require_broker!();
    let workers = 3;
    let deployment = Deployment::new("control", workers);
    let publisher = RabbitPublisher::start(deployment.cfg()).expect("publisher");
    assert!(publisher.wait_connected(Duration::from_secs(5)));
    let mut consumers: Vec<ControlConsumer> = Vec::new();
    let mut receivers = Vec::new();
    for w in 0..workers {
        let (received, handler) = collector();
        consumers.push(ControlConsumer::control(deployment.cfg(), w, handler).expect("consumer"));
        receivers.push(received);
    }
    assert!(wait_until(Duration::from_secs(5), || consumers
        .iter()
        .all(|c| c.is_connected())));
    let refresh = ControlAction::RefreshModuleConfig {
        module: "m1".into(),
    };
    let accepted = publisher.broadcast_control(&refresh).expect("accepted");
    publisher
        .wait(accepted, Duration::from_secs(5))
        .expect("confirmed");
    // The API's sink: make_snapshots goes to worker 0 only.
    ControlSink::send(&publisher, ControlAction::MakeSnapshots).expect("sent");
    assert!(wait_count(&receivers[0], 2));
    assert!(wait_count(&receivers[1], 1));
    assert!(wait_count(&receivers[2], 1));
    std::thread::sleep(Duration::from_millis(200));
    let actions = |w: usize| -> Vec<ControlAction> {
        receivers[w]
            .lock()
            .iter()
            .map(|c| c.message.clone())
            .collect()
    };
    assert_eq!(
        actions(0),
        vec![refresh.clone(), ControlAction::MakeSnapshots]
    );
    assert_eq!(actions(1), vec![refresh.clone()]);
    assert_eq!(actions(2), vec![refresh]);
    for (w, c) in consumers.iter().enumerate() {
        c.ack_all(receivers[w].lock().iter().map(|c| c.tag.clone()));
        c.close();
    }
}

#[test]
fn snapshot_messages_are_broadcast_or_routed_by_component_key() {
    require_broker!();
    let workers = 2;
    let deployment = Deployment::new("snapshots", workers);
    let model = model();
    let publisher = RabbitPublisher::start(deployment.cfg()).expect("publisher");
    assert!(publisher.wait_connected(Duration::from_secs(5)));
    let mut consumers = Vec::new();
    let mut receivers = Vec::new();
    for w in 0..workers {
        let (received, handler) = collector();
        consumers.push(
            RabbitConsumer::<SnapshotMessage>::snapshots(
                deployment.cfg(),
                w,
                model.clone(),
                handler,
            )
            .expect("consumer"),
        );
        receivers.push(received);
    }
    let time = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
        .expect("valid")
        .with_timezone(&chrono::Utc);
    let start = SnapshotMessage::new(SnapshotMessageType::RunStart, time);
    let accepted = publisher.broadcast_snapshot(&start).expect("accepted");
    publisher
        .wait(accepted, Duration::from_secs(5))
        .expect("confirmed");
    let component = SnapshotMessage {
        kind: SnapshotMessageType::Task,
        time,
        entities: vec![
            ("A".into(), Eid::Int(1)),
            ("B".into(), Eid::String("b1".into())),
        ],
        is_final: true,
    };
    // HASH("A:1-B:b1") = 56004 → worker 0 of 2.
    let accepted = publisher.publish_snapshot(&component).expect("accepted");
    publisher
        .wait(accepted, Duration::from_secs(5))
        .expect("confirmed");
    assert!(wait_count(&receivers[0], 2));
    assert!(wait_count(&receivers[1], 1));
    std::thread::sleep(Duration::from_millis(200));
    let got0: Vec<SnapshotMessage> = receivers[0]
        .lock()
        .iter()
        .map(|c| c.message.clone())
        .collect();
    let got1: Vec<SnapshotMessage> = receivers[1]
        .lock()
        .iter()
        .map(|c| c.message.clone())
        .collect();
    assert_eq!(got0, vec![start.clone(), component]);
    assert_eq!(got1, vec![start]);
    for (w, c) in consumers.iter().enumerate() {
        c.ack_all(receivers[w].lock().iter().map(|c| c.tag.clone()));
        c.close();
    }
}

/// A TCP proxy to the broker whose connections the test can cut (a network failure or a
/// broker restart as the clients see it) and whose port can refuse service for a while.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    runtime: tokio::runtime::Runtime,
}

impl Proxy {
    fn start() -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let port = listener.local_addr().expect("address").port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let (up2, gen2) = (up.clone(), generation.clone());
        runtime.spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped at once: the broker is "down"
                }
                let my_gen = gen2.load(Ordering::SeqCst);
                let gen3 = gen2.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(BROKER).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    tokio::pin!(copy);
                    loop {
                        tokio::select! {
                            _ = &mut copy => return,
                            () = tokio::time::sleep(Duration::from_millis(20)) => {
                                if gen3.load(Ordering::SeqCst) != my_gen {
                                    return; // cut: both sockets are dropped
                                }
                            }
                        }
                    }
                });
            }
        });
        Proxy {
            port,
            up,
            generation,
            runtime,
        }
    }

    /// Drop every proxied connection and refuse new ones.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        let _ = &self.runtime;
    }
}

#[test]
fn connection_loss_is_survived_and_nothing_accepted_is_lost() {
    require_broker!();
    let deployment = Deployment::new("reconnect", 1);
    let model = model();
    let proxy = Proxy::start();
    let via_proxy = config(&deployment.cfg.app_name, 1, proxy.port);
    let publisher = RabbitPublisher::start(via_proxy.clone()).expect("publisher");
    assert!(publisher.wait_connected(Duration::from_secs(5)));
    let (received, handler) = collector();
    let consumer = TaskConsumer::tasks(via_proxy, 0, model.clone(), handler).expect("consumer");
    assert!(wait_until(Duration::from_secs(5), || consumer.is_connected()));
    let generation = consumer.generation();

    // Batch A is processed and acked; batch B is delivered but not yet committed.
    let a: Vec<DataPointTask> = (0..10)
        .map(|i| string_task(&model, &format!("a{i}")))
        .collect();
    let b: Vec<DataPointTask> = (0..10)
        .map(|i| string_task(&model, &format!("b{i}")))
        .collect();
    publish_ok(&publisher, a.clone());
    assert!(wait_count(&received, 10));
    assert_eq!(
        consumer.ack_all(received.lock().iter().map(|c| c.tag.clone())),
        10
    );
    publish_ok(&publisher, b.clone());
    assert!(wait_count(&received, 20));
    let b_tags: Vec<_> = received.lock()[10..]
        .iter()
        .map(|c| c.tag.clone())
        .collect();

    proxy.cut();
    assert!(
        wait_until(Duration::from_secs(5), || !publisher.is_connected()
            && !consumer.is_connected()),
        "both notice the loss"
    );
    assert!(
        matches!(
            publisher.submit(a.clone()),
            Err(SubmitError::Unavailable(_))
        ),
        "no silent acceptance while disconnected"
    );
    assert!(
        matches!(publisher.refusal(), Some(SubmitError::Unavailable(_))),
        "the API refuses before parsing while disconnected"
    );
    assert!(
        !consumer.ack(&b_tags[0]),
        "acks of the dead channel are refused"
    );

    proxy.restore();
    assert!(
        publisher.wait_connected(Duration::from_secs(10)),
        "publisher reconnects"
    );
    assert_eq!(publisher.refusal(), None);
    assert!(
        wait_until(Duration::from_secs(10), || consumer.is_connected()),
        "consumer reconnects"
    );
    assert!(consumer.generation() > generation);
    let c: Vec<DataPointTask> = (0..10)
        .map(|i| string_task(&model, &format!("c{i}")))
        .collect();
    publish_ok(&publisher, c.clone());

    // B comes back (redelivered), C arrives; everything accepted was delivered.
    assert!(wait_count(&received, 40));
    let after: Vec<Consumed<DataPointTask>> = received.lock()[20..].to_vec();
    let keys: HashSet<String> = after.iter().map(|c| c.message.routing_key()).collect();
    for t in b.iter().chain(&c) {
        assert!(
            keys.contains(&t.routing_key()),
            "{} delivered after reconnect",
            t.routing_key()
        );
    }
    assert!(
        after
            .iter()
            .filter(|c| c.message.routing_key().starts_with("test_entity_type:b"))
            .all(|c| c.redelivered)
    );
    assert_eq!(consumer.ack_all(after.iter().map(|c| c.tag.clone())), 20);
    consumer.close();
    assert!(wait_until(Duration::from_secs(5), || deployment
        .depths()
        .values()
        .sum::<u32>()
        == 0));
}

/// A RabbitMQ node of this test alone (own node name, ports and data directory), so it can
/// be stopped and started without touching the shared broker on 5672.
struct PrivateBroker {
    dir: tempfile::TempDir,
    node: String,
    port: u16,
    dist_port: u16,
    child: Option<std::process::Child>,
}

fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()
}

impl PrivateBroker {
    /// `None` when no node can be started here (no `rabbitmq-server`, no permissions, …).
    fn start() -> Option<PrivateBroker> {
        let dir = tempfile::tempdir().ok()?;
        let (port, dist_port) = (free_port()?, free_port()?);
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .ok()?;
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").ok()?;
        std::fs::write(dir.path().join("env.conf"), "").ok()?;
        // Started as root, the server script switches to the `rabbitmq` user.
        let _ = std::process::Command::new("chown")
            .args(["-R", "rabbitmq"])
            .arg(dir.path())
            .output();
        let mut broker = PrivateBroker {
            node: format!("dp3test{}@localhost", std::process::id()),
            dir,
            port,
            dist_port,
            child: None,
        };
        broker.boot().then_some(broker)
    }

    fn boot(&mut self) -> bool {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("server.out"));
        let child = std::process::Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", d.join("env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .stdin(std::process::Stdio::null())
            .stdout(
                log.map(std::process::Stdio::from)
                    .unwrap_or(std::process::Stdio::null()),
            )
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let up = wait_until(Duration::from_secs(60), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if !up {
            self.shutdown();
        }
        up
    }

    fn shutdown(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .output();
        if let Some(mut child) = self.child.take() {
            let exited = wait_until(Duration::from_secs(20), || {
                child.try_wait().ok().flatten().is_some()
            });
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[test]
fn accepted_tasks_survive_a_broker_restart() {
    let Some(mut broker) = PrivateBroker::start() else {
        println!("SKIPPED: cannot start a private RabbitMQ node");
        return;
    };
    let model = model();
    let cfg = config(&unique_app("restart"), 1, broker.port);
    block_on(declare_topology(&cfg)).expect("topology");
    let publisher = RabbitPublisher::start(cfg.clone()).expect("publisher");
    assert!(publisher.wait_connected(Duration::from_secs(10)));
    let tasks: Vec<DataPointTask> = (0..50)
        .map(|i| string_task(&model, &format!("s{i}")))
        .collect();
    publish_ok(&publisher, tasks.clone());
    // What DP3 does: a transient message into the same durable queue.
    let (rt, conn) = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let uri = format!("amqp://127.0.0.1:{}/%2f", broker.port);
        let conn = rt
            .block_on(Connection::connect(&uri, ConnectionProperties::default()))
            .expect("raw connection");
        (rt, conn)
    };
    rt.block_on(async {
        let ch = conn.create_channel().await.expect("channel");
        ch.basic_publish(
            cfg.topology().task_exchange().as_str().into(),
            "0".into(),
            BasicPublishOptions::default(),
            task_to_wire_json(&string_task(&model, "transient")).as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("routed");
    });

    broker.shutdown();
    assert!(
        wait_until(Duration::from_secs(10), || !publisher.is_connected()),
        "the publisher notices"
    );
    assert!(matches!(
        publisher.submit(tasks[..1].to_vec()),
        Err(SubmitError::Unavailable(_))
    ));
    assert!(broker.boot(), "the node starts again");
    assert!(
        publisher.wait_connected(Duration::from_secs(30)),
        "the publisher reconnects by itself"
    );

    let (received, handler) = collector();
    let consumer = TaskConsumer::tasks(cfg.clone(), 0, model.clone(), handler).expect("consumer");
    assert!(
        wait_count(&received, tasks.len()),
        "every accepted task survived"
    );
    std::thread::sleep(Duration::from_millis(300));
    let got: Vec<DataPointTask> = received.lock().iter().map(|c| c.message.clone()).collect();
    assert_eq!(
        got, tasks,
        "the transient (DP3-style) message did not survive; ours did"
    );
    consumer.ack_all(received.lock().iter().map(|c| c.tag.clone()));
    publish_ok(&publisher, tasks[..1].to_vec());
    consumer.close();
}
