//! `dp3 rabbitmq-setup` + `dp3 api` as real processes: datapoints posted over HTTP reach the
//! worker queue chosen by DP3's routing, in DP3's message format, so DP3's Python workers (or
//! ours) can consume them. Prints SKIPPED when no RabbitMQ is reachable on 127.0.0.1:5672.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, dp3_bin, dp3_test_config, free_port};
use dp3::queue::rabbitmq::{RabbitConfig, TaskConsumer, delete_topology};
use dp3_model::config::load_config_dir;
use dp3_model::{DataPointTask, Eid};
use serde_json::json;

fn broker_reachable() -> bool {
    let addr: SocketAddr = "127.0.0.1:5672".parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

#[test]
fn api_publishes_dp3_tasks_to_the_worker_queues() {
    if !broker_reachable() {
        println!("SKIPPED: RabbitMQ not reachable");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dp3_test_config(dir.path());
    let pc = cfg.join("processing_core.yml");
    let text = std::fs::read_to_string(&pc)
        .unwrap()
        .replace("host: rabbitmq", "host: 127.0.0.1")
        .replace("worker_processes: 1", "worker_processes: 2");
    std::fs::write(&pc, text).unwrap();
    let app = format!("dp3bb{}", std::process::id());

    let setup = Command::new(dp3_bin())
        .args(["rabbitmq-setup", "--config"])
        .arg(&cfg)
        .env("APP_NAME", &app)
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );

    let port = free_port();
    let mut api = Command::new(dp3_bin())
        .args(["api", "--config"])
        .arg(&cfg)
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("APP_NAME", &app)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(&base).send().is_err() {
        assert!(Instant::now() < deadline, "dp3 api did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = http
        .post(format!("{base}/datapoints"))
        .json(&json!([
            {"type": "A", "id": 12, "attr": "data1", "v": "x"},
            {"type": "test_entity_type", "id": "e1", "attr": "test_attr_history", "v": 3,
             "t1": "2025-01-01T00:00:00Z", "src": "s"}
        ]))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let config = load_config_dir(&cfg).unwrap();
    let rabbit = RabbitConfig::new(&config.processing_core.msg_broker, &app, 2);
    let model = Arc::new(config.model);
    let got: Arc<Mutex<Vec<(u32, DataPointTask)>>> = Arc::default();
    let mut consumers = Vec::new();
    for worker in 0..2u32 {
        let sink = got.clone();
        let consumer: Arc<Mutex<Option<Arc<TaskConsumer>>>> = Arc::default();
        let c2 = consumer.clone();
        let c = Arc::new(
            TaskConsumer::tasks(rabbit.clone(), worker, model.clone(), move |m| {
                sink.lock().unwrap().push((worker, m.message));
                if let Some(c) = c2.lock().unwrap().as_ref() {
                    c.ack(&m.tag);
                }
            })
            .unwrap(),
        );
        *consumer.lock().unwrap() = Some(c.clone());
        consumers.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "tasks did not arrive");
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = got.lock().unwrap().clone();
    for (worker, task) in &got {
        // DP3's routing: HASH("<etype>:<eid>") mod N.
        assert_eq!(u32::from(task.hash()) % 2, *worker, "{task:?}");
    }
    let a = got.iter().find(|(_, t)| t.etype == "A").unwrap();
    assert_eq!(a.1.eid, Eid::Int(12));
    assert_eq!(a.1.data_points[0].v, bson::Bson::String("x".into()));

    for c in consumers {
        c.close();
    }
    let _ = api.kill();
    let _ = api.wait();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rt.block_on(delete_topology(&rabbit));
}
