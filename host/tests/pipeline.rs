//! The task pipeline in-process: real SQLite store and accept log in a temp dir, hooks as
//! Rust closures.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bson::Bson;
use chrono::{TimeZone, Utc};
use dp3::clock::{Clock, ManualClock};
use dp3::pipeline::broker::{BrokerLink, Delivery, child_message_id};
use dp3::pipeline::executor::HookSource;
use dp3::pipeline::hooks::{IngestionHooks, NoHooks};
use dp3::pipeline::staging::MessageTag;
use dp3::pipeline::{Pipeline, PipelineConfig};
use dp3::queue::accept_log::{AcceptLog, NewRow, RowKind};
use dp3::queue::{SubmitError, TaskSubmitter};
use dp3_model::config::load_config_dir;
use dp3_model::{DataPoint, DataPointTask, Eid, ModelSpec};
use dp3_store::Store;
use dp3_store::sqlite::SqliteStore;

fn model() -> Arc<ModelSpec> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/dp3-test-config");
    Arc::new(load_config_dir(&dir).expect("fixture config loads").model)
}

fn t(h: u32, m: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, h, m, 0).unwrap()
}

fn obs(eid: &str, v: i32, minute: u32) -> DataPoint {
    DataPoint {
        etype: "test_entity_type".into(),
        eid: Eid::String(eid.into()),
        attr: "test_attr_history".into(),
        src: Some("test".into()),
        v: Bson::Int32(v),
        c: 1.0,
        t1: Some(t(0, minute)),
        t2: Some(t(0, minute)),
    }
}

fn plain(eid: &str, attr: &str, v: Bson) -> DataPoint {
    DataPoint {
        etype: "test_entity_type".into(),
        eid: Eid::String(eid.into()),
        attr: attr.into(),
        src: None,
        v,
        c: 1.0,
        t1: None,
        t2: None,
    }
}

fn task(eid: &str, dps: Vec<DataPoint>) -> DataPointTask {
    DataPointTask {
        etype: "test_entity_type".into(),
        eid: Eid::String(eid.into()),
        data_points: dps,
        ..Default::default()
    }
}

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    log: Arc<AcceptLog>,
    model: Arc<ModelSpec>,
    clock: Arc<dyn Clock>,
    data: std::path::PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&data.join("dp3.sqlite")).unwrap());
    let log = Arc::new(AcceptLog::open(&data.join("accept.sqlite")).unwrap());
    Env {
        _dir: dir,
        store,
        log,
        model: model(),
        clock: Arc::new(ManualClock::new(t(12, 0))),
        data,
    }
}

fn cfg() -> PipelineConfig {
    PipelineConfig {
        threads: 4,
        flush_interval: Duration::from_millis(20),
        ..PipelineConfig::default()
    }
}

fn start(env: &Env, hooks: Arc<dyn IngestionHooks>, cfg: PipelineConfig) -> Pipeline {
    let source: Arc<dyn HookSource> = Arc::new(hooks);
    Pipeline::start(
        cfg,
        env.model.clone(),
        env.store.clone(),
        env.log.clone(),
        source,
        env.clock.clone(),
    )
    .unwrap()
}

fn submit(p: &Pipeline, tasks: Vec<DataPointTask>) {
    let accepted = p.submit(tasks).expect("accepted");
    accepted.blocking_recv().unwrap().unwrap();
}

fn history_len(store: &dyn Store, eid: &str) -> usize {
    store
        .get_master("test_entity_type", &Eid::String(eid.into()))
        .unwrap()
        .and_then(|m| m.get_array("test_attr_history").ok().map(|a| a.len()))
        .unwrap_or(0)
}

#[test]
fn tasks_are_applied_to_master_records_and_raw_log() {
    let env = env();
    let p = start(&env, Arc::new(NoHooks), cfg());
    submit(
        &p,
        vec![
            task("a", vec![obs("a", 1, 0), obs("a", 2, 1)]),
            task("b", vec![plain("b", "test_attr_int", Bson::Int32(7))]),
        ],
    );
    assert!(p.wait_idle(Duration::from_secs(10)));
    assert_eq!(history_len(&*env.store, "a"), 2);
    let b = env
        .store
        .get_master("test_entity_type", &Eid::String("b".into()))
        .unwrap()
        .unwrap();
    assert_eq!(
        b.get_document("test_attr_int").unwrap().get("v"),
        Some(&Bson::Int32(7))
    );
    assert!(
        b.get("#hash").is_some() && b.get("#time_created").is_some(),
        "{b}"
    );
    assert_eq!(p.stats().datapoints_applied.get(), 3);
    assert!(p.shutdown(Duration::from_secs(10)));
    assert!(env.log.is_empty().unwrap(), "finished rows are retired");
}

/// Hooks see the documented arguments; returned tasks re-enter; creation hooks run once.
#[test]
fn hooks_run_in_order_and_outputs_re_enter() {
    struct H {
        created: AtomicUsize,
        new_attr: AtomicUsize,
    }
    impl IngestionHooks for H {
        fn allow_entity_creation(&self, _e: &str, eid: &Eid, _t: &DataPointTask) -> bool {
            eid != &Eid::String("denied".into())
        }
        fn on_entity_creation(
            &self,
            _e: &str,
            _eid: &Eid,
            _t: &DataPointTask,
        ) -> Vec<DataPointTask> {
            self.created.fetch_add(1, Ordering::SeqCst);
            Vec::new()
        }
        fn on_new_attr(&self, dp: &DataPoint) -> Vec<DataPointTask> {
            self.new_attr.fetch_add(1, Ordering::SeqCst);
            if dp.attr == "test_attr_history" {
                // derive a plain value on another entity
                let target = format!("{}-derived", dp.eid);
                vec![task(
                    &target,
                    vec![plain(
                        &target,
                        "test_attr_string",
                        Bson::String(format!("from {}", dp.eid)),
                    )],
                )]
            } else {
                Vec::new()
            }
        }
    }
    let env = env();
    let hooks = Arc::new(H {
        created: AtomicUsize::new(0),
        new_attr: AtomicUsize::new(0),
    });
    let p = start(&env, hooks.clone(), cfg());
    submit(
        &p,
        vec![
            task("x", vec![obs("x", 1, 0)]),
            task("denied", vec![obs("denied", 1, 0)]),
        ],
    );
    submit(&p, vec![task("x", vec![obs("x", 2, 1)])]);
    assert!(p.wait_idle(Duration::from_secs(10)));
    assert!(p.shutdown(Duration::from_secs(10)));
    // x created once, x-derived created once (by the re-entered task)
    assert_eq!(hooks.created.load(Ordering::SeqCst), 2);
    // 2 on x + 2 derived tasks' plain datapoints
    assert_eq!(hooks.new_attr.load(Ordering::SeqCst), 4);
    assert_eq!(history_len(&*env.store, "x"), 2);
    assert_eq!(history_len(&*env.store, "denied"), 0);
    assert!(
        !env.store
            .exists("test_entity_type", &Eid::String("denied".into()))
            .unwrap()
    );
    let d = env
        .store
        .get_master("test_entity_type", &Eid::String("x-derived".into()))
        .unwrap()
        .expect("derived entity created by a hook output");
    assert_eq!(
        d.get_document("test_attr_string")
            .unwrap()
            .get_str("v")
            .unwrap(),
        "from x"
    );
}

/// A module returning garbage does not poison the queue: the task is refused and counted.
#[test]
fn invalid_hook_outputs_are_refused() {
    struct Bad;
    impl IngestionHooks for Bad {
        fn on_new_attr(&self, dp: &DataPoint) -> Vec<DataPointTask> {
            vec![
                DataPointTask {
                    etype: "no_such_type".into(),
                    eid: dp.eid.clone(),
                    delete: true,
                    ..Default::default()
                },
                task("y", vec![plain("y", "no_such_attr", Bson::Int32(1))]),
                task(
                    "y",
                    vec![plain(
                        "y",
                        "test_attr_int",
                        Bson::String("not an int".into()),
                    )],
                ),
            ]
        }
    }
    let env = env();
    let p = start(&env, Arc::new(Bad), cfg());
    submit(&p, vec![task("a", vec![obs("a", 1, 0)])]);
    assert!(p.wait_idle(Duration::from_secs(10)));
    assert_eq!(p.stats().invalid_generated_tasks.get(), 3);
    assert_eq!(history_len(&*env.store, "a"), 1);
    assert!(
        !env.store
            .exists("test_entity_type", &Eid::String("y".into()))
            .unwrap()
    );
    p.shutdown(Duration::from_secs(5));
}

/// Same-entity outputs run inline up to `max_inline_generated_tasks`, the rest are queued;
/// all of them are applied.
#[test]
fn inline_generated_tasks() {
    struct Chain;
    impl IngestionHooks for Chain {
        fn on_new_attr(&self, dp: &DataPoint) -> Vec<DataPointTask> {
            let Bson::Int32(v) = dp.v else {
                return Vec::new();
            };
            if dp.attr == "test_attr_history" && v < 5 {
                let eid = dp.eid.to_string();
                vec![task(&eid, vec![obs(&eid, v + 1, v as u32 + 1)])]
            } else {
                Vec::new()
            }
        }
    }
    let env = env();
    let p = start(
        &env,
        Arc::new(Chain),
        PipelineConfig {
            max_inline: 2,
            ..cfg()
        },
    );
    submit(&p, vec![task("c", vec![obs("c", 0, 0)])]);
    assert!(p.wait_idle(Duration::from_secs(10)));
    assert_eq!(history_len(&*env.store, "c"), 6, "0..=5 all applied");
    p.shutdown(Duration::from_secs(5));
}

/// Replay: rows in the accept log that are not covered by the committed watermarks are
/// applied exactly once, also when the pipeline restarts again right away.
#[test]
fn replay_applies_unfinished_tasks_exactly_once() {
    let env = env();
    let tasks: Vec<DataPointTask> = (0..20)
        .map(|i| {
            task(
                &format!("r{}", i % 5),
                vec![obs(&format!("r{}", i % 5), i, i as u32)],
            )
        })
        .collect();
    env.log
        .append(&[NewRow {
            kind: RowKind::External,
            priority: false,
            tasks: &tasks,
        }])
        .unwrap();
    // A generated row of a batch that never committed: must be dropped.
    let orphan = [task("orphan", vec![obs("orphan", 1, 0)])];
    env.log
        .append(&[NewRow {
            kind: RowKind::Generated,
            priority: true,
            tasks: &orphan,
        }])
        .unwrap();
    let p = start(&env, Arc::new(NoHooks), cfg());
    assert!(p.wait_idle(Duration::from_secs(10)));
    assert_eq!(p.stats().tasks_replayed.get(), 20);
    p.shutdown(Duration::from_secs(5));
    let total: usize = (0..5)
        .map(|i| history_len(&*env.store, &format!("r{i}")))
        .sum();
    assert_eq!(total, 20);
    assert_eq!(history_len(&*env.store, "orphan"), 0);
    // restart: nothing left to do
    let p = start(&env, Arc::new(NoHooks), cfg());
    assert!(p.wait_idle(Duration::from_secs(10)));
    assert_eq!(p.stats().tasks_replayed.get(), 0);
    p.shutdown(Duration::from_secs(5));
    let total: usize = (0..5)
        .map(|i| history_len(&*env.store, &format!("r{i}")))
        .sum();
    assert_eq!(total, 20);
    let _ = &env.data;
}

/// Beyond the in-flight limit, submissions are refused as overloaded (HTTP 503), never
/// buffered without bound; after a refusal, `refusal` (checked by the API before parsing a
/// request) answers overloaded until the pipeline has drained to 7/8 of the limit.
#[test]
fn backpressure_refuses_when_full() {
    /// Holds every task at its start until opened, so nothing drains while the test looks.
    #[derive(Default)]
    struct Gate(parking_lot::Mutex<bool>, parking_lot::Condvar);
    impl IngestionHooks for Gate {
        fn on_task_start(&self, _t: &DataPointTask) {
            let mut open = self.0.lock();
            while !*open {
                self.1.wait(&mut open);
            }
        }
    }
    let gate = Arc::new(Gate::default());
    let env = env();
    let p = start(
        &env,
        Arc::clone(&gate) as Arc<dyn IngestionHooks>,
        PipelineConfig {
            threads: 1,
            max_in_flight: 16,
            ..cfg()
        },
    );
    let tasks = |prefix: &str, n: usize| -> Vec<DataPointTask> {
        (0..n)
            .map(|i| {
                let eid = format!("{prefix}{i}");
                task(&eid, vec![obs(&eid, 1, 0)])
            })
            .collect()
    };
    // 15 of 16 in flight, above the low watermark (14).
    let first = p.submit(tasks("s", 15)).unwrap();
    assert_eq!(p.refusal(), None, "room for more");
    let refused = p.submit(tasks("late", 2));
    assert!(
        matches!(refused, Err(SubmitError::Overloaded { .. })),
        "{refused:?}"
    );
    assert!(p.in_flight() < 16);
    assert!(
        matches!(p.refusal(), Some(SubmitError::Overloaded { .. })),
        "after a refusal, requests are refused unparsed until the pipeline drains"
    );
    first.blocking_recv().unwrap().unwrap();
    *gate.0.lock() = true;
    gate.1.notify_all();
    assert!(p.wait_idle(Duration::from_secs(20)));
    assert_eq!(p.refusal(), None);
    p.submit(tasks("late", 2)).unwrap();
    assert!(p.wait_idle(Duration::from_secs(20)));
    p.shutdown(Duration::from_secs(5));
}

/// Deletes go through the lanes: a delete followed by new data recreates the entity.
#[test]
fn delete_then_recreate() {
    let env = env();
    let p = start(&env, Arc::new(NoHooks), cfg());
    submit(&p, vec![task("d", vec![obs("d", 1, 0)])]);
    assert!(p.wait_idle(Duration::from_secs(10)));
    let mut del = task("d", vec![]);
    del.delete = true;
    submit(&p, vec![del, task("d", vec![obs("d", 2, 1)])]);
    assert!(p.wait_idle(Duration::from_secs(10)));
    p.shutdown(Duration::from_secs(5));
    assert_eq!(
        history_len(&*env.store, "d"),
        1,
        "only the datapoint after the delete"
    );
    assert_eq!(p.stats().entities_created.get(), 2);
}

/// A broker stand-in: records acks and published hook outputs (with their tags).
#[derive(Default)]
struct FakeBroker {
    acked: parking_lot::Mutex<Vec<u64>>,
    published: parking_lot::Mutex<Vec<(DataPointTask, MessageTag)>>,
}

impl BrokerLink for FakeBroker {
    fn publish_generated(
        &self,
        tasks: &[DataPointTask],
        tags: &[MessageTag],
    ) -> Result<(), String> {
        assert_eq!(tasks.len(), tags.len());
        let mut p = self.published.lock();
        p.extend(tasks.iter().cloned().zip(tags.iter().cloned()));
        Ok(())
    }
    fn ack(&self, tokens: Vec<u64>) {
        self.acked.lock().extend(tokens);
    }
}

fn start_worker(env: &Env, hooks: Arc<dyn IngestionHooks>, link: Arc<FakeBroker>) -> Pipeline {
    let source: Arc<dyn HookSource> = Arc::new(hooks);
    Pipeline::start_worker(
        cfg(),
        env.model.clone(),
        env.store.clone(),
        link,
        0,
        source,
        env.clock.clone(),
    )
    .unwrap()
}

fn delivery(token: u64, id: &str, maybe_duplicate: bool, t: DataPointTask) -> Delivery {
    Delivery {
        token,
        task: t,
        tag: MessageTag {
            message_id: id.into(),
            maybe_duplicate,
        },
        priority: false,
    }
}

/// Broker mode: deliveries are acked only after their commit, hook outputs are published
/// with ids derived from the parent, and redelivered copies — of applied messages, also
/// after a restart, and of messages in flight — are not applied twice.
#[test]
fn worker_mode_acks_after_commit_and_applies_redeliveries_once() {
    struct Derive;
    impl IngestionHooks for Derive {
        fn on_new_attr(&self, dp: &DataPoint) -> Vec<DataPointTask> {
            let target = format!("{}-derived", dp.eid);
            vec![task(
                &target,
                vec![plain(&target, "test_attr_string", Bson::String("x".into()))],
            )]
        }
    }
    let env = env();
    let link = Arc::new(FakeBroker::default());
    let p = start_worker(&env, Arc::new(Derive), link.clone());
    // The API-side submit path is closed in broker mode.
    assert!(matches!(
        p.submit(vec![task("z", vec![obs("z", 1, 0)])]),
        Err(SubmitError::Unavailable(_))
    ));
    assert!(p.deliver(delivery(1, "m1", false, task("a", vec![obs("a", 1, 0)]))));
    // A redelivered copy while the original may still be in flight: held, not applied.
    assert!(p.deliver(delivery(2, "m1", true, task("a", vec![obs("a", 1, 0)]))));
    assert!(p.deliver(delivery(3, "m2", false, task("b", vec![obs("b", 2, 0)]))));
    assert!(p.wait_idle(Duration::from_secs(10)));
    let mut acked = link.acked.lock().clone();
    acked.sort_unstable();
    assert_eq!(
        acked,
        vec![1, 2, 3],
        "every delivery acked once, copies included"
    );
    assert_eq!(history_len(&*env.store, "a"), 1);
    assert_eq!(history_len(&*env.store, "b"), 1);
    let published = link.published.lock().clone();
    assert_eq!(published.len(), 2, "one hook output per datapoint");
    let ids: Vec<&str> = published
        .iter()
        .map(|(_, t)| t.message_id.as_str())
        .collect();
    assert!(ids.contains(&child_message_id("m1", 0).as_str()));
    assert!(ids.contains(&child_message_id("m2", 0).as_str()));
    assert!(published.iter().all(|(_, t)| !t.maybe_duplicate));
    assert_eq!(p.stats().duplicates_skipped.get(), 1);
    assert!(p.shutdown(Duration::from_secs(10)));
    drop(p);

    // Restart: the applied window comes back from the store; a redelivery of m2 (its ack was
    // "lost") is acked without being applied, its hook outputs are not re-published, and a
    // new message is applied; a possible copy never seen before is applied too.
    let link = Arc::new(FakeBroker::default());
    let p = start_worker(&env, Arc::new(Derive), link.clone());
    assert!(p.deliver(delivery(10, "m2", true, task("b", vec![obs("b", 2, 0)]))));
    assert!(p.deliver(delivery(11, "m3", false, task("c", vec![obs("c", 3, 0)]))));
    assert!(p.deliver(delivery(12, "m4", true, task("d", vec![obs("d", 4, 0)]))));
    assert!(p.wait_idle(Duration::from_secs(10)));
    let mut acked = link.acked.lock().clone();
    acked.sort_unstable();
    assert_eq!(acked, vec![10, 11, 12]);
    assert_eq!(
        history_len(&*env.store, "b"),
        1,
        "redelivered copy not applied again"
    );
    assert_eq!(history_len(&*env.store, "c"), 1);
    assert_eq!(history_len(&*env.store, "d"), 1);
    let published = link.published.lock().clone();
    assert_eq!(published.len(), 2, "outputs of m3 and m4 only");
    let m4_child = published
        .iter()
        .find(|(_, t)| t.message_id == child_message_id("m4", 0))
        .expect("m4's output published");
    assert!(
        m4_child.1.maybe_duplicate,
        "outputs of a possible copy are flagged"
    );
    assert!(p.shutdown(Duration::from_secs(10)));
}
