//! Issue #7 acceptance: scale-out through RabbitMQ. `dp3 api` and two `dp3 worker` processes
//! share one configuration and one SQLite store; a deterministic load is posted over HTTP by
//! several client threads while a worker is `kill -9`ed (and restarted) or while RabbitMQ is
//! restarted. Afterwards the store must equal that of a single-process `dp3 run` fed the same
//! input (all master records, normalised only where wall-clock time or legitimate reordering
//! makes runs differ), resp. contain every datapoint of every POST answered 200.
//!
//! Configuration: the example `config/` with the modules `first_seen` (an `on_entity_creation`
//! hook), `derive_category` (an `on_new_attr` hook) and `subnet_hostname` (snapshot-time
//! correlation); `max_inline_generated_tasks: 0`, so every hook output goes through the
//! priority queues. No example module emits tasks for *other* entities, so the hook outputs
//! stay on the worker that owns the entity. Periodic jobs that change master records on a
//! wall-clock schedule (history aggregation, datapoint cleaning, garbage collection) are moved
//! to the year 2099 so they cannot fire in one run and not in the other.
//!
//! The broker tests print SKIPPED when no RabbitMQ is reachable on 127.0.0.1:5672. The tests
//! of this file are serialized (one static mutex): they restart the broker and load the CPU.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bson::{Bson, Document};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use common::{Dp3, copy_dir, dp3_bin, example_library, free_port, repo_root};
use dp3::queue::rabbitmq::{RabbitConfig, delete_topology, rabbitmq_setup};
use dp3_model::Eid;
use dp3_model::config::load_config_dir;
use dp3_store::sqlite::SqliteStore;
use dp3_store::{MasterScan, RawQuery, Store};
use serde_json::{Value, json};

/// The tests of this file run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Client threads posting concurrently. POST `i` is sent by thread `i % THREADS`.
const THREADS: usize = 4;
const IPS: usize = 240;
const DEVICES: usize = 80;
const SUBNETS: usize = 20;
/// Modules loaded by every process.
const MODULES: [&str; 3] = ["first_seen", "derive_category", "subnet_hostname"];

fn broker_reachable() -> bool {
    let addr: SocketAddr = "127.0.0.1:5672".parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

fn rabbitmqctl_available() -> bool {
    Command::new("rabbitmqctl")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

// ------------------------------------------------------------------------------------------
// Deterministic input

fn ip_id(j: usize) -> String {
    format!("10.7.{}.{}", j / 100, j % 100 + 1)
}

fn mac_id(j: usize) -> String {
    format!("02:00:00:00:{:02x}:{:02x}", j / 256, j % 256)
}

fn subnet_id(j: usize) -> String {
    format!("net-{j}")
}

/// Entity index `< n` owned by `thread`: plain attributes of an entity are only ever written
/// by its owner thread, which posts sequentially, so "last write wins" has one answer no
/// matter how the threads interleave.
fn owned(rng: &mut fastrand::Rng, n: usize, thread: usize) -> usize {
    rng.usize(..n / THREADS) * THREADS + thread
}

/// `posts` POST bodies of `per_post` datapoints each (fixed seed). Every timed datapoint has
/// a unique `t1` (`base` + its global index in seconds).
fn generate(posts: usize, per_post: usize, base: DateTime<Utc>) -> Vec<Vec<Value>> {
    let mut rng = fastrand::Rng::with_seed(0x0d93_5ca1e);
    const PORTS: [i64; 10] = [22, 25, 53, 80, 443, 161, 631, 3389, 4444, 8080];
    const STATUS: [&str; 3] = ["online", "offline", "maintenance"];
    const CONF: [f64; 3] = [0.5, 0.8, 1.0];
    let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    (0..posts)
        .map(|i| {
            let thread = i % THREADS;
            (0..per_post)
                .map(|m| {
                    let t1 = base + TimeDelta::seconds((i * per_post + m) as i64);
                    let t2 = t1 + TimeDelta::seconds(rng.i64(0..300));
                    let roll = rng.u32(0..100);
                    match roll {
                        0..30 => json!({"type": "ip", "id": ip_id(rng.usize(..IPS)),
                            "attr": "open_ports", "v": PORTS[rng.usize(..PORTS.len())],
                            "t1": ts(t1), "t2": ts(t2), "c": CONF[rng.usize(..3)],
                            "src": "scan"}),
                        30..40 => json!({"type": "ip", "id": ip_id(rng.usize(..IPS)),
                            "attr": "device",
                            "v": {"eid": mac_id(rng.usize(..DEVICES)),
                                  "data": format!("eth{}", rng.u8(0..4))},
                            "t1": ts(t1), "t2": ts(t2)}),
                        40..45 => {
                            let n = rng.usize(1..4);
                            json!({"type": "ip", "id": ip_id(rng.usize(..IPS)),
                                "attr": "traffic",
                                "v": {"bytes": (0..n).map(|_| rng.i64(0..1_000_000))
                                          .collect::<Vec<_>>(),
                                      "packets": (0..n).map(|_| rng.i64(0..1000))
                                          .collect::<Vec<_>>()},
                                "t1": ts(t1),
                                "t2": ts(t1 + TimeDelta::minutes(5 * n as i64))})
                        }
                        45..60 => json!({"type": "ip", "id": ip_id(owned(&mut rng, IPS, thread)),
                            "attr": "hostname", "v": format!("h{i}-{m}.example")}),
                        60..65 => json!({"type": "ip", "id": ip_id(owned(&mut rng, IPS, thread)),
                            "attr": "subnet",
                            "v": {"eid": subnet_id(rng.usize(..SUBNETS))}}),
                        65..80 => json!({"type": "device",
                            "id": mac_id(rng.usize(..DEVICES)), "attr": "status",
                            "v": STATUS[rng.usize(..3)], "t1": ts(t1), "t2": ts(t2),
                            "src": "poller"}),
                        80..90 => json!({"type": "device",
                            "id": mac_id(owned(&mut rng, DEVICES, thread)),
                            "attr": "vendor", "v": format!("vendor-{i}-{m}")}),
                        90..95 => json!({"type": "subnet",
                            "id": subnet_id(owned(&mut rng, SUBNETS, thread)),
                            "attr": "description", "v": format!("desc {i}-{m}")}),
                        _ => json!({"type": "subnet",
                            "id": subnet_id(owned(&mut rng, SUBNETS, thread)),
                            "attr": "vlan", "v": rng.i64(1..4095)}),
                    }
                })
                .collect()
        })
        .collect()
}

/// A fixed base time for one test (recent, so nothing looks ancient to the platform).
fn base_time() -> DateTime<Utc> {
    (Utc::now() - TimeDelta::hours(3))
        .duration_trunc(TimeDelta::hours(1))
        .unwrap()
}

// ------------------------------------------------------------------------------------------
// Configuration

fn lib_file(name: &str) -> String {
    format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// The example configuration for two workers on the local broker, with deterministic
/// modules and the master-record-changing periodic jobs moved out of reach.
fn prepare_config(root: &Path) -> PathBuf {
    let cfg = root.join("config");
    copy_dir(&repo_root().join("config"), &cfg);
    let modules = root.join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    for m in MODULES {
        std::fs::copy(example_library(m), modules.join(lib_file(m))).unwrap();
    }
    let pc = cfg.join("processing_core.yml");
    let text = std::fs::read_to_string(&pc).unwrap();
    let mut out = String::new();
    let mut in_list = false;
    for line in text.lines() {
        if in_list && line.starts_with("  - ") {
            continue;
        }
        in_list = false;
        if line.trim_start().starts_with("host:") {
            out.push_str("  host: 127.0.0.1\n");
        } else if line.starts_with("worker_processes:") {
            out.push_str("worker_processes: 2\n");
        } else if line.starts_with("max_inline_generated_tasks:") {
            out.push_str("max_inline_generated_tasks: 0\n");
        } else if line.starts_with("modules_dir:") {
            out.push_str(&format!("modules_dir: {}\n", modules.display()));
        } else if line.starts_with("enabled_modules:") {
            out.push_str(&format!("enabled_modules: [{}]\n", MODULES.join(", ")));
            in_list = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&pc, out).unwrap();
    let never = r#"{year: "2099", month: 1, day: 1, hour: 0, minute: 0, second: 0}"#;
    std::fs::write(
        cfg.join("history_manager.yml"),
        format!(
            "aggregation_schedule: {never}\n\
             datapoint_cleaning_schedule: {never}\n\
             snapshot_cleaning:\n  schedule: {never}\n  older_than: 7d\n\
             datapoint_archivation:\n  schedule: {never}\n  older_than: 7d\n"
        ),
    )
    .unwrap();
    std::fs::write(
        cfg.join("garbage_collector.yml"),
        format!("collection_rate: {never}\n"),
    )
    .unwrap();
    let check = Command::new(dp3_bin())
        .arg("check")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "prepared configuration is invalid:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    cfg
}

// ------------------------------------------------------------------------------------------
// Processes

/// A child process with its stderr in a log file; killed when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn spawn(name: &str, log: PathBuf, cmd: &mut Command) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child,
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it does not exit within `grace`.
    fn terminate(&mut self, grace: Duration) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop after SIGTERM within {grace:?}", self.name);
        self.kill9();
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Prometheus text: the sum of every sample of `name`.
fn metric(port: u16, name: &str) -> Option<f64> {
    let body = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .ok()?
        .text()
        .ok()?;
    let mut found = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix(name)
            && (rest.starts_with(' ') || rest.starts_with('{'))
            && let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// `dp3 api` + two `dp3 worker`s on one topology (unique `APP_NAME`) and one data dir.
struct Cluster {
    root: PathBuf,
    cfg: PathBuf,
    data: PathBuf,
    app: String,
    rabbit: RabbitConfig,
    api: Option<Proc>,
    api_port: u16,
    workers: Vec<Option<Proc>>,
    metrics_ports: Vec<u16>,
    /// Starts per worker (names the log files).
    starts: [usize; 2],
}

impl Cluster {
    fn start(root: &Path, cfg: &Path, tag: &str) -> Cluster {
        let app = format!("dp3so{}{tag}", std::process::id());
        let config = load_config_dir(cfg).unwrap();
        let rabbit = RabbitConfig::new(&config.processing_core.msg_broker, &app, 2);
        let setup = Command::new(dp3_bin())
            .args(["rabbitmq-setup", "--config"])
            .arg(cfg)
            .env("APP_NAME", &app)
            .output()
            .unwrap();
        assert!(
            setup.status.success(),
            "dp3 rabbitmq-setup failed:\n{}",
            String::from_utf8_lossy(&setup.stderr)
        );
        let data = root.join("cluster-data");
        std::fs::create_dir_all(&data).unwrap();
        let mut c = Cluster {
            root: root.to_owned(),
            cfg: cfg.to_owned(),
            data,
            app,
            rabbit,
            api: None,
            api_port: free_port(),
            workers: vec![None, None],
            metrics_ports: vec![free_port(), free_port()],
            starts: [0, 0],
        };
        // Workers first: they create the store schema before the API opens it.
        c.start_worker(0);
        c.start_worker(1);
        let api = Proc::spawn(
            "dp3 api",
            root.join("api.log"),
            Command::new(dp3_bin())
                .args(["api", "--config"])
                .arg(&c.cfg)
                .arg("--data")
                .arg(&c.data)
                .args(["--listen", &format!("127.0.0.1:{}", c.api_port)])
                .env("APP_NAME", &c.app),
        );
        c.api = Some(api);
        let http = common::client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(c.url("/")).send()
                && r.status().is_success()
            {
                break;
            }
            if let Some(s) = c.api.as_mut().unwrap().exited() {
                c.fail(&format!("dp3 api exited with {s} before becoming ready"));
            }
            if Instant::now() > deadline {
                c.fail("dp3 api not ready in time");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    fn start_worker(&mut self, index: usize) {
        self.starts[index] += 1;
        let log = self
            .root
            .join(format!("worker{index}.start{}.log", self.starts[index]));
        let port = self.metrics_ports[index];
        let p = Proc::spawn(
            &format!("dp3 worker {index}"),
            log,
            Command::new(dp3_bin())
                .args(["worker", "--config"])
                .arg(&self.cfg)
                .arg("--data")
                .arg(&self.data)
                .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
                .arg(index.to_string())
                .env("APP_NAME", &self.app),
        );
        self.workers[index] = Some(p);
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(port, "dp3_queue_tasks_in_flight").is_none() {
            if let Some(s) = self.workers[index].as_mut().unwrap().exited() {
                self.fail(&format!("dp3 worker {index} exited with {s} at start"));
            }
            if Instant::now() > deadline {
                self.fail(&format!("dp3 worker {index} serves no /metrics in time"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn worker_metric(&self, index: usize, name: &str) -> f64 {
        metric(self.metrics_ports[index], name).unwrap_or(f64::NAN)
    }

    /// Ready messages in every queue of the topology.
    fn queue_depths(&self) -> Result<Vec<(String, u32)>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), rabbitmq_setup(&self.rabbit, false)).await
        })
        .map_err(|_| "timeout".to_owned())?
        .map(|r| r.queues)
        .map_err(|e| e.to_string())
    }

    /// Wait until every queue is empty, no worker has a task in flight and the processed
    /// counters stand still (three consecutive polls), then print the broker's queues and
    /// the workers' metrics for the record.
    fn wait_drained(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut quiet = 0;
        let mut last = (f64::NAN, f64::NAN);
        loop {
            for i in 0..2 {
                if let Some(s) = self.workers[i].as_mut().and_then(Proc::exited) {
                    self.fail(&format!("dp3 worker {i} exited with {s} while draining"));
                }
            }
            let depths = self.queue_depths();
            let in_flight: f64 = (0..2)
                .map(|i| self.worker_metric(i, "dp3_queue_tasks_in_flight"))
                .sum();
            let processed = (
                self.worker_metric(0, "dp3_tasks_processed_total"),
                self.worker_metric(1, "dp3_tasks_processed_total"),
            );
            let empty = depths
                .as_ref()
                .is_ok_and(|d| d.iter().all(|(_, n)| *n == 0));
            if empty && in_flight == 0.0 && processed == last {
                quiet += 1;
                if quiet >= 3 {
                    println!("rabbitmqctl:\n{}", self.rabbitmqctl_queues());
                    print!("{}", self.metrics_summary());
                    return;
                }
            } else {
                quiet = 0;
            }
            last = processed;
            if Instant::now() > deadline {
                self.fail(&format!(
                    "queues not drained in {timeout:?}: depths {depths:?}, in flight \
                     {in_flight}, processed {processed:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(700));
        }
    }

    /// `rabbitmqctl list_queues` for this app (messages, unacked): for the record.
    fn rabbitmqctl_queues(&self) -> String {
        Command::new("rabbitmqctl")
            .args([
                "-q",
                "list_queues",
                "name",
                "messages",
                "messages_unacknowledged",
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.starts_with(&self.app))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    fn metrics_summary(&self) -> String {
        let names = [
            "dp3_tasks_processed_total",
            "dp3_datapoints_applied_total",
            "dp3_duplicate_deliveries_skipped_total",
            "dp3_tasks_replayed_total",
            "dp3_task_errors_total",
            "dp3_store_write_errors_total",
            "dp3_generated_tasks_total",
        ];
        let mut s = String::new();
        for i in 0..2 {
            s.push_str(&format!("worker {i}:"));
            for n in names {
                s.push_str(&format!(" {n}={}", self.worker_metric(i, n)));
            }
            s.push('\n');
        }
        s
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(80);
            out.push_str(&format!(
                "\n===== {} (last {} of {} lines)\n{}\n",
                f.display(),
                lines.len() - from,
                lines.len(),
                lines[from..].join("\n")
            ));
        }
        out
    }

    fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}{}", self.metrics_summary(), self.logs());
    }

    fn stop(&mut self) {
        if let Some(mut api) = self.api.take() {
            api.terminate(Duration::from_secs(30));
        }
        for w in &mut self.workers {
            if let Some(mut w) = w.take() {
                w.terminate(Duration::from_secs(60));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.api = None;
        for w in &mut self.workers {
            *w = None;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), delete_topology(&self.rabbit)).await
        });
    }
}

/// Keeps the temporary directory (logs, stores) when the test fails or when the environment
/// has `DP3_SCALEOUT_KEEP`.
struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    fn new() -> Scratch {
        Scratch(Some(tempfile::tempdir().unwrap()))
    }

    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if (std::thread::panicking() || std::env::var_os("DP3_SCALEOUT_KEEP").is_some())
            && let Some(d) = self.0.take()
        {
            eprintln!("test files kept in {}", d.keep().display());
        }
    }
}

// ------------------------------------------------------------------------------------------
// Load

/// What the client threads saw.
#[derive(Debug, Default)]
struct SendReport {
    /// POST index → answered 200.
    ok: Vec<bool>,
    /// POST index → at least one attempt was not answered 200 (its tasks may be enqueued
    /// more than once).
    retried: Vec<bool>,
    /// Answers 503, connection errors and other failures that were retried.
    unavailable: usize,
    connection_errors: usize,
    other: Vec<String>,
}

/// A fault test's load: its POSTs sent in the background to the cluster's API by
/// [`send_all`] (40 ms apart per client thread; retried for `retry_for` when set).
struct Load {
    /// POSTs answered so far.
    progress: Arc<AtomicUsize>,
    sender: std::thread::JoinHandle<SendReport>,
}

impl Load {
    fn start(cluster: &Cluster, posts: &Arc<Vec<Vec<Value>>>, retry_for: Option<Duration>) -> Load {
        let progress = Arc::new(AtomicUsize::new(0));
        let (base, posts, counter) = (cluster.url(""), posts.clone(), progress.clone());
        let sender = std::thread::spawn(move || {
            send_all(
                &base,
                &posts,
                retry_for.is_some(),
                retry_for.unwrap_or_default(),
                Duration::from_millis(40),
                &counter,
            )
        });
        Load { progress, sender }
    }
}

/// POST every body from `THREADS` threads (POST `i` by thread `i % THREADS`, in order).
/// `retry`: repeat a POST answered 503 / connection error until it gets 200 (or `retry_for`
/// passes); without it any non-200 answer is recorded and the thread moves on.
/// `progress` counts finished POSTs; `pause` is slept between two POSTs of a thread.
fn send_all(
    base: &str,
    posts: &Arc<Vec<Vec<Value>>>,
    retry: bool,
    retry_for: Duration,
    pause: Duration,
    progress: &Arc<AtomicUsize>,
) -> SendReport {
    let report = Arc::new(Mutex::new(SendReport {
        ok: vec![false; posts.len()],
        retried: vec![false; posts.len()],
        ..SendReport::default()
    }));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let posts = posts.clone();
            let report = report.clone();
            let progress = progress.clone();
            let url = format!("{base}/datapoints");
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                for i in (t..posts.len()).step_by(THREADS) {
                    let started = Instant::now();
                    loop {
                        let outcome = http.post(&url).json(&posts[i]).send();
                        let mut r = report.lock().unwrap();
                        let again = match outcome {
                            Ok(resp) if resp.status().as_u16() == 200 => {
                                r.ok[i] = true;
                                false
                            }
                            Ok(resp) if resp.status().as_u16() == 503 => {
                                r.unavailable += 1;
                                retry
                            }
                            Ok(resp) => {
                                let status = resp.status();
                                let body = resp.text().unwrap_or_default();
                                r.other.push(format!("POST {i}: {status} {body}"));
                                false
                            }
                            Err(e) => {
                                r.connection_errors += 1;
                                if !retry {
                                    r.other.push(format!("POST {i}: {e}"));
                                }
                                retry
                            }
                        };
                        if !r.ok[i] {
                            r.retried[i] = true;
                        }
                        drop(r);
                        if !again {
                            break;
                        }
                        if started.elapsed() > retry_for {
                            report
                                .lock()
                                .unwrap()
                                .other
                                .push(format!("POST {i}: gave up after {retry_for:?}"));
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    progress.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(pause);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    Arc::try_unwrap(report).unwrap().into_inner().unwrap()
}

/// Feed `posts` to a fresh single-process `dp3 run` on `data` and wait until it is idle.
fn single_process_run(cfg: &Path, data: &Path, posts: &Arc<Vec<Vec<Value>>>) -> Duration {
    let started = Instant::now();
    let mut dp3 = Dp3::start(cfg, data);
    let progress = Arc::new(AtomicUsize::new(0));
    let report = send_all(
        &dp3.base,
        posts,
        false,
        Duration::ZERO,
        Duration::ZERO,
        &progress,
    );
    assert!(
        report.ok.iter().all(|ok| *ok),
        "dp3 run refused POSTs: {:?}\n{}",
        report.other,
        dp3.log_text()
    );
    let port: u16 = dp3.base.rsplit(':').next().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet = 0;
    let mut last = f64::NAN;
    loop {
        let in_flight = metric(port, "dp3_queue_tasks_in_flight");
        let applied = metric(port, "dp3_datapoints_applied_total").unwrap_or(f64::NAN);
        if in_flight == Some(0.0) && applied == last {
            quiet += 1;
            if quiet >= 3 {
                break;
            }
        } else {
            quiet = 0;
        }
        last = applied;
        assert!(
            Instant::now() < deadline,
            "dp3 run did not become idle (in flight {in_flight:?}):\n{}",
            dp3.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = dp3.terminate();
    assert!(status.success(), "dp3 run: {status}\n{}", dp3.log_text());
    started.elapsed()
}

// ------------------------------------------------------------------------------------------
// Store comparison

fn open_store(data: &Path) -> SqliteStore {
    SqliteStore::open(&data.join("dp3.sqlite")).unwrap()
}

/// JSON of a stored value, with IP and MAC addresses (stored as binaries) as their text.
fn to_json(b: &Bson) -> Value {
    match b {
        Bson::Binary(_) => Eid::from_bson(b).map_or_else(
            || serde_json::to_value(b).expect("BSON converts to JSON"),
            |eid| eid.to_json(),
        ),
        Bson::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Bson::Document(d) => {
            Value::Object(d.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
        other => serde_json::to_value(other).expect("BSON converts to JSON"),
    }
}

fn canonical_sort(items: &mut [Value]) {
    items.sort_by_cached_key(|v| v.to_string());
}

/// A master record with what legitimately differs between runs removed:
/// * `#time_created`, `#revision` (wall clock; number of batches that touched the record),
/// * `ts_last_update` of plain values (wall clock),
/// * the expiry times in `#ttl` (creation and plain-attribute tokens are `now + ttl`; the
///   token *names* are kept),
/// * the value of `ip.first_seen` (now; its presence and type are kept),
/// * the order of history items (tasks of different POSTs may be applied in either order).
fn normalize_master(etype: &str, doc: &Document) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in doc {
        match k.as_str() {
            "#time_created" | "#revision" => {}
            "#ttl" => {
                let names: Vec<Value> = v
                    .as_document()
                    .map(|d| d.keys().map(|k| Value::String(k.clone())).collect())
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Array(names));
            }
            _ => {
                let value = match v {
                    Bson::Document(plain) if plain.contains_key("ts_last_update") => {
                        let mut p = plain.clone();
                        p.remove("ts_last_update");
                        if etype == "ip" && k == "first_seen" {
                            let is_time = matches!(p.get("v"), Some(Bson::DateTime(_)));
                            p.insert("v", if is_time { "<a time>" } else { "<NOT A TIME>" });
                        }
                        to_json(&Bson::Document(p))
                    }
                    Bson::Array(items) => {
                        let mut items: Vec<Value> = items.iter().map(to_json).collect();
                        canonical_sort(&mut items);
                        Value::Array(items)
                    }
                    other => to_json(other),
                };
                out.insert(k.clone(), value);
            }
        }
    }
    Value::Object(out)
}

/// Every master record of every entity type, normalised, by `(etype, eid)`.
fn masters(store: &SqliteStore, etypes: &[String]) -> BTreeMap<(String, String), Value> {
    let mut all = BTreeMap::new();
    for etype in etypes {
        let mut after: Option<Eid> = None;
        loop {
            let page = store
                .scan_master(
                    etype,
                    &MasterScan {
                        after: after.clone(),
                        limit: 500,
                        partition: None,
                        projection: None,
                    },
                )
                .unwrap();
            for doc in &page {
                let eid = doc.get("_id").expect("_id");
                all.insert(
                    (etype.clone(), to_json(eid).to_string()),
                    normalize_master(etype, doc),
                );
            }
            match page.last() {
                Some(doc) if page.len() == 500 => {
                    after = Some(Eid::from_bson(doc.get("_id").unwrap()).unwrap());
                }
                _ => break,
            }
        }
    }
    all
}

/// The raw datapoint log of every entity type as a sorted multiset (`first_seen` values
/// replaced as in [`normalize_master`]).
fn raw_log(store: &SqliteStore, etypes: &[String]) -> Vec<String> {
    let mut all = Vec::new();
    for etype in etypes {
        for mut d in store.raw_get(etype, &RawQuery::default()).unwrap() {
            if d.get_str("attr").is_ok_and(|a| a == "first_seen") {
                d.insert("v", "<a time>");
            }
            all.push(to_json(&Bson::Document(d)).to_string());
        }
    }
    all.sort();
    all
}

fn etypes(cfg: &Path) -> Vec<String> {
    load_config_dir(cfg)
        .unwrap()
        .model
        .entities
        .keys()
        .cloned()
        .collect()
}

/// Assert that two stores hold the same master records (and the same raw log); on a
/// difference, name the first few differing records.
fn assert_same_stores(cfg: &Path, left: (&str, &Path), right: (&str, &Path), context: &str) {
    let etypes = etypes(cfg);
    let (ls, rs) = (open_store(left.1), open_store(right.1));
    let (l, r) = (masters(&ls, &etypes), masters(&rs, &etypes));
    let count = |m: &BTreeMap<(String, String), Value>| {
        etypes
            .iter()
            .map(|e| format!("{e}: {}", m.keys().filter(|(t, _)| t == e).count()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("master records {}: {}", left.0, count(&l));
    println!("master records {}: {}", right.0, count(&r));
    let keys: BTreeSet<_> = l.keys().chain(r.keys()).collect();
    let mut diffs = Vec::new();
    for k in keys {
        let (a, b) = (l.get(k), r.get(k));
        if a != b {
            diffs.push(format!(
                "{k:?}\n  {}: {}\n  {}: {}",
                left.0,
                a.map_or("<missing>".into(), Value::to_string),
                right.0,
                b.map_or("<missing>".into(), Value::to_string)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} master records differ ({}); first ones:\n{}\n{context}",
        diffs.len(),
        l.len().max(r.len()),
        if l.len() == r.len() {
            "same number of records"
        } else {
            "different numbers of records"
        },
        diffs.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
    let (lr, rr) = (raw_log(&ls, &etypes), raw_log(&rs, &etypes));
    if lr != rr {
        let lset: BTreeMap<&String, usize> = lr.iter().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s).or_default() += 1;
            m
        });
        let rset: BTreeMap<&String, usize> = rr.iter().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s).or_default() += 1;
            m
        });
        let only: Vec<String> = lset
            .iter()
            .filter(|(k, n)| rset.get(*k) != Some(n))
            .take(5)
            .map(|(k, n)| format!("{n}x in {} vs {:?}: {k}", left.0, rset.get(*k)))
            .collect();
        panic!(
            "raw datapoint logs differ: {} has {}, {} has {}; e.g.\n{}\n{context}",
            left.0,
            lr.len(),
            right.0,
            rr.len(),
            only.join("\n")
        );
    }
    assert!(!l.is_empty(), "nothing was stored");
}

// ------------------------------------------------------------------------------------------
// Tests

/// Validates the comparison itself: two single-process runs fed the same input from
/// concurrent clients must compare equal after normalisation.
#[test]
fn single_process_runs_agree() {
    let _serial = serial();
    let scratch = Scratch::new();
    let cfg = prepare_config(scratch.path());
    let posts = Arc::new(generate(24, 200, base_time()));
    let (a, b) = (scratch.path().join("a"), scratch.path().join("b"));
    let ta = single_process_run(&cfg, &a, &posts);
    let tb = single_process_run(&cfg, &b, &posts);
    println!("single-process runs: {ta:?}, {tb:?}");
    assert_same_stores(&cfg, ("run a", &a), ("run b", &b), "");
}

#[test]
fn kill_a_worker_mid_load_store_equals_single_process() {
    if !broker_reachable() {
        println!("SKIPPED: RabbitMQ not reachable");
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let scratch = Scratch::new();
    let root = scratch.path();
    let cfg = prepare_config(root);
    let posts = Arc::new(generate(60, 250, base_time()));
    let mut cluster = Cluster::start(root, &cfg, "k");

    let Load { progress, sender } = Load::start(&cluster, &posts, None);
    // Kill worker 1 once it has applied something and a third of the load is accepted.
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::SeqCst) < posts.len() / 3
        || metric(cluster.metrics_ports[1], "dp3_datapoints_applied_total").is_none_or(|v| v == 0.0)
    {
        if Instant::now() > deadline || sender.is_finished() {
            cluster.fail("worker 1 applied nothing before the load ended");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let applied_before = cluster.worker_metric(1, "dp3_datapoints_applied_total");
    cluster.workers[1].as_mut().unwrap().kill9();
    let killed_at = progress.load(Ordering::SeqCst);
    let depths_at_kill = cluster.queue_depths();
    std::thread::sleep(Duration::from_millis(1500));
    cluster.start_worker(1);
    let restarted_at = progress.load(Ordering::SeqCst);
    let report = sender.join().unwrap();
    println!(
        "worker 1 killed after {killed_at}/{} POSTs ({applied_before} datapoints applied by \
         it), restarted after {restarted_at}; queues at kill: {depths_at_kill:?}",
        posts.len()
    );
    assert!(
        report.ok.iter().all(|ok| *ok) && report.other.is_empty(),
        "POSTs not answered 200 (no retries in this test, so the input would be ambiguous): \
         {} × 503, {:?}",
        report.unavailable,
        report.other
    );
    cluster.wait_drained(Duration::from_secs(120));
    let cluster_secs = started.elapsed();
    cluster.stop();

    let single = root.join("single-data");
    let single_time = single_process_run(&cfg, &single, &posts);
    println!("cluster run {cluster_secs:?}, single-process run {single_time:?}");
    let context = cluster.logs();
    assert_same_stores(
        &cfg,
        ("api + 2 workers", &cluster.data),
        ("dp3 run", &single),
        &context,
    );
    println!("total {:?}", started.elapsed());
}

/// Runs `rabbitmqctl start_app` if the test ends while the broker is stopped.
struct BrokerGuard(Arc<AtomicBool>);

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        if self.0.load(Ordering::SeqCst) {
            let _ = Command::new("rabbitmqctl").arg("start_app").status();
        }
    }
}

#[test]
fn rabbitmq_restart_mid_load_loses_nothing() {
    if !broker_reachable() || !rabbitmqctl_available() {
        println!("SKIPPED: RabbitMQ (or rabbitmqctl) not available");
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let scratch = Scratch::new();
    let root = scratch.path();
    let cfg = prepare_config(root);
    let posts = Arc::new(generate(48, 250, base_time()));
    let mut cluster = Cluster::start(root, &cfg, "r");

    let Load { progress, sender } = Load::start(&cluster, &posts, Some(Duration::from_secs(120)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::SeqCst) < posts.len() / 4 {
        if Instant::now() > deadline {
            cluster.fail("load did not progress");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = Arc::new(AtomicBool::new(true));
    let _guard = BrokerGuard(stopped.clone());
    let at_stop = progress.load(Ordering::SeqCst);
    let t0 = Instant::now();
    let stop = Command::new("rabbitmqctl")
        .arg("stop_app")
        .output()
        .unwrap();
    assert!(
        stop.status.success(),
        "rabbitmqctl stop_app: {}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let stop_took = t0.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let during = progress.load(Ordering::SeqCst);
    let start = Command::new("rabbitmqctl")
        .arg("start_app")
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "rabbitmqctl start_app: {}",
        String::from_utf8_lossy(&start.stderr)
    );
    stopped.store(false, Ordering::SeqCst);
    println!(
        "broker stopped after {at_stop}/{} POSTs answered (stop_app took {stop_took:?}), \
         {during} answered when start_app was run, broker back after {:?}",
        posts.len(),
        t0.elapsed()
    );
    let report = sender.join().unwrap();
    println!(
        "client: {} POSTs answered 200 ({} after retries), {} × 503 and {} connection errors \
         retried, other: {:?}",
        report.ok.iter().filter(|ok| **ok).count(),
        report.retried.iter().filter(|r| **r).count(),
        report.unavailable,
        report.connection_errors,
        report.other
    );
    cluster.wait_drained(Duration::from_secs(120));
    cluster.stop();

    // Every datapoint of every POST answered 200 is in the store:
    // * timed datapoints (unique t1 each) as a history item of their attribute in the master
    //   record, with the same t2 and value (duplicates allowed: a retried 503 may have been
    //   enqueued too);
    // * plain datapoints in the raw datapoint log, and the final plain value of every
    //   (entity, attribute) is the one of the last POST that wrote it (each is written by one
    //   client thread only, which posts in order).
    let store = open_store(&cluster.data);
    let model = load_config_dir(&cfg).unwrap().model;
    let mut history_cache: BTreeMap<(String, String), Document> = BTreeMap::new();
    let mut raw_plain: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut last_plain: BTreeMap<(String, String, String), Value> = BTreeMap::new();
    let mut missing = Vec::new();
    let mut duplicated = Vec::new();
    let mut checked = 0usize;
    for (i, body) in posts.iter().enumerate() {
        if !report.ok[i] {
            continue;
        }
        for dp in body {
            checked += 1;
            let etype = dp["type"].as_str().unwrap().to_owned();
            let id = dp["id"].as_str().unwrap().to_owned();
            let attr = dp["attr"].as_str().unwrap().to_owned();
            let eid = parse_eid(&model, &etype, &id);
            if dp.get("t1").is_some() {
                let master = history_cache
                    .entry((etype.clone(), id.clone()))
                    .or_insert_with(|| store.get_master(&etype, &eid).unwrap().unwrap_or_default());
                let t1 = DateTime::parse_from_rfc3339(dp["t1"].as_str().unwrap()).unwrap();
                let t2 = DateTime::parse_from_rfc3339(dp["t2"].as_str().unwrap()).unwrap();
                let same_time = |item: &Document| {
                    item.get_datetime("t1")
                        .is_ok_and(|t| t.timestamp_millis() == t1.timestamp_millis())
                        && item
                            .get_datetime("t2")
                            .is_ok_and(|t| t.timestamp_millis() == t2.timestamp_millis())
                };
                let count = |attr: &str, v: Option<&Value>| {
                    master.get_array(attr).map_or(0, |items| {
                        items
                            .iter()
                            .filter_map(Bson::as_document)
                            .filter(|item| {
                                same_time(item)
                                    && v.is_none_or(|v| {
                                        item.get("v").map(to_json).as_ref() == Some(v)
                                    })
                            })
                            .count()
                    })
                };
                let mut expect = |what: &str, n: usize| {
                    if n == 0 {
                        missing.push(format!("POST {i}: {what} of {dp}"));
                    } else if n > 1 && !report.retried[i] {
                        duplicated.push(format!("POST {i}: {n} × {what} of {dp}"));
                    }
                };
                expect("history item", count(&attr, Some(&dp["v"])));
                if attr == "open_ports" {
                    // derive_category's output (same t1/t2) arrives through a priority queue.
                    expect("derived category", count("category", None));
                }
            } else {
                let logged = raw_plain
                    .entry(format!("{etype}/{attr}"))
                    .or_insert_with(|| {
                        store
                            .raw_get(
                                &etype,
                                &RawQuery {
                                    attr: Some(attr.clone()),
                                    ..RawQuery::default()
                                },
                            )
                            .unwrap()
                            .iter()
                            .map(|d| {
                                format!(
                                    "{}|{}",
                                    to_json(d.get("eid").unwrap()),
                                    to_json(d.get("v").unwrap())
                                )
                            })
                            .collect()
                    });
                if !logged.contains(&format!("{}|{}", json!(id), dp["v"])) {
                    missing.push(format!("POST {i} (raw log): {dp}"));
                }
                last_plain.insert((etype, id, attr), dp["v"].clone());
            }
        }
    }
    for ((etype, id, attr), v) in &last_plain {
        let eid = parse_eid(&model, etype, id);
        let master = store.get_master(etype, &eid).unwrap().unwrap_or_default();
        let got = master
            .get_document(attr)
            .ok()
            .and_then(|p| p.get("v"))
            .map(to_json);
        if got.as_ref() != Some(v) {
            missing.push(format!(
                "final {etype}/{id}.{attr}: expected {v}, stored {got:?}"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {checked} accepted datapoints are missing or wrong; first ones:\n{}\n{}",
        missing.len(),
        missing
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        cluster.logs()
    );
    assert!(
        duplicated.is_empty(),
        "{} timed datapoints of POSTs answered 200 at the first attempt were applied more \
         than once; first ones:\n{}\n{}",
        duplicated.len(),
        duplicated
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        cluster.logs()
    );
    assert!(
        report.ok.iter().all(|ok| *ok),
        "some POSTs never got 200 within the retry window: {:?}",
        report.other
    );
    println!(
        "{checked} accepted datapoints all stored; total {:?}",
        started.elapsed()
    );
}

fn parse_eid(model: &dp3_model::ModelSpec, etype: &str, id: &str) -> Eid {
    let ty = model.entity(etype).unwrap().spec.id_data_type;
    Eid::parse(ty, id).unwrap()
}
