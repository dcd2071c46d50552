//! Background jobs against the real SQLite store, with a manual clock: TTL and weak-entity
//! collection through the real pipeline, history aggregation/trimming/cleanup, raw archiving,
//! the updater's persisted progress, source telemetry and job registration.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bson::{Bson, Document, doc};
use chrono::{DateTime, TimeDelta, Utc};
use dp3::background::archive::{Archiver, read_archive};
use dp3::background::gc::GarbageCollector;
use dp3::background::history::HistoryManager;
use dp3::background::scheduler::Scheduler;
use dp3::background::telemetry::SourceTelemetry;
use dp3::background::updater::{UpdateThread, UpdateThreadKey, Updater, UpdaterDeps, UpdaterHooks};
use dp3::background::{BackgroundDeps, register_jobs};
use dp3::clock::ManualClock;
use dp3::pipeline::executor::HookSource;
use dp3::pipeline::hooks::{IngestionHooks, NoHooks};
use dp3::pipeline::{Pipeline, PipelineConfig};
use dp3::queue::accept_log::AcceptLog;
use dp3::queue::{Accepted, SubmitError, TaskSubmitter};
use dp3_model::config::{Config, load_config_dir};
use dp3_model::value::{MacAddr, as_time, ipv4, time};
use dp3_model::{DataPoint, DataPointTask, Eid, HistoryItem, ModelSpec};
use dp3_store::sqlite::SqliteStore;
use dp3_store::{Creation, EntityWrite, Store, WriteBatch, WriteOp};
use parking_lot::Mutex;
use tokio::sync::oneshot;

// ------------------------------------------------------------------------- fixtures

const ENTITIES: &[(&str, &str)] = &[
    (
        "host.yml",
        "entity: {id: host, name: Host, snapshot: true, lifetime: {type: ttl, on_create: 1h, mirror_data: true}}\n\
         attribs:\n\
         \x20 name: {name: Name, type: plain, data_type: string, ttl: 2h}\n\
         \x20 port: {name: Port, type: observations, data_type: int, multi_value: true, history_params: {max_age: 2h}}\n",
    ),
    (
        "owner.yml",
        "entity: {id: owner, name: Owner, snapshot: true}\n\
         attribs:\n\
         \x20 main_host: {name: Main host, type: plain, data_type: \"link<host>\"}\n\
         \x20 hosts: {name: Hosts, type: observations, data_type: \"link<host>\", multi_value: true, history_params: {post_validity: 10m}}\n\
         \x20 tag: {name: Tag, type: plain, data_type: \"link<tag>\"}\n\
         \x20 seen_tag: {name: Seen tag, type: observations, data_type: \"link<tag>\", history_params: {post_validity: 10m}}\n",
    ),
    (
        "tag.yml",
        "entity: {id: tag, name: Tag, snapshot: true, lifetime: {type: weak}}\n\
         attribs:\n\
         \x20 label: {name: Label, type: plain, data_type: string}\n",
    ),
    (
        "sensor.yml",
        "entity: {id: sensor, name: Sensor, snapshot: true, id_data_type: int}\n\
         attribs:\n\
         \x20 reading: {name: Reading, type: observations, data_type: int, history_params: {pre_validity: 5m, post_validity: 5m}}\n\
         \x20 level: {name: Level, type: observations, data_type: int, history_params: {max_items: 3, aggregate: false}}\n\
         \x20 state: {name: State, type: observations, data_type: string, history_params: {expire_time: 1h, max_age: 1d}}\n\
         \x20 samples: {name: Samples, type: timeseries, timeseries_type: irregular, timeseries_params: {max_age: 1h}, series: {x: {data_type: int}}}\n\
         \x20 label: {name: Label, type: plain, data_type: string}\n",
    ),
    (
        "nic.yml",
        "entity: {id: nic, name: NIC, snapshot: true, id_data_type: mac}\n\
         attribs:\n\
         \x20 addr: {name: Address, type: observations, data_type: ipv4}\n",
    ),
];

/// The repository's example configuration with this test's entity types.
fn config(dir: &Path, archive_dir: Option<&Path>) -> Config {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yml") {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    if let Some(a) = archive_dir {
        let hm = std::fs::read_to_string(dir.join("history_manager.yml")).unwrap();
        let hm = hm.replace(
            "  # archive_dir: archive",
            &format!("  archive_dir: {}", a.display()),
        );
        std::fs::write(dir.join("history_manager.yml"), hm).unwrap();
    }
    std::fs::create_dir_all(dir.join("modules")).unwrap();
    let ents = dir.join("db_entities");
    std::fs::create_dir_all(&ents).unwrap();
    for (name, text) in ENTITIES {
        std::fs::write(ents.join(name), text).unwrap();
    }
    load_config_dir(dir).expect("test configuration loads")
}

/// Whole seconds near the wall clock: the store compares link-cache expiry with the wall
/// clock on deletion, so test time must not be far from it.
fn start_time() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
}

struct Env {
    dir: tempfile::TempDir,
    cfg: Config,
    model: Arc<ModelSpec>,
    store: Arc<dyn Store>,
    clock: ManualClock,
    t0: DateTime<Utc>,
}

fn env_with(archive: bool) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("config");
    std::fs::create_dir_all(&conf).unwrap();
    let archive_dir = dir.path().join("archive");
    let cfg = config(&conf, archive.then_some(archive_dir.as_path()));
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("dp3.sqlite")).unwrap());
    let t0 = start_time();
    Env {
        model: Arc::new(cfg.model.clone()),
        cfg,
        store,
        clock: ManualClock::new(t0),
        t0,
        dir,
    }
}

fn env() -> Env {
    env_with(false)
}

impl Env {
    fn pipeline(&self) -> Arc<Pipeline> {
        let log = Arc::new(AcceptLog::open(&self.dir.path().join("accept.sqlite")).unwrap());
        let hooks: Arc<dyn IngestionHooks> = Arc::new(NoHooks);
        let source: Arc<dyn HookSource> = Arc::new(hooks);
        Arc::new(
            Pipeline::start(
                PipelineConfig {
                    threads: 2,
                    flush_interval: Duration::from_millis(10),
                    ..PipelineConfig::default()
                },
                self.model.clone(),
                self.store.clone(),
                log,
                source,
                Arc::new(self.clock.clone()),
            )
            .unwrap(),
        )
    }

    fn gc(&self, submitter: Arc<dyn TaskSubmitter>) -> GarbageCollector {
        GarbageCollector {
            model: self.model.clone(),
            store: self.store.clone(),
            submitter,
            clock: Arc::new(self.clock.clone()),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn history(&self) -> HistoryManager {
        HistoryManager {
            model: self.model.clone(),
            store: self.store.clone(),
            clock: Arc::new(self.clock.clone()),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn at(&self, minutes: i64) -> DateTime<Utc> {
        self.t0 + TimeDelta::minutes(minutes)
    }

    fn master(&self, etype: &str, eid: Eid) -> Option<Document> {
        self.store.get_master(etype, &eid).unwrap()
    }
}

fn s(x: &str) -> Eid {
    Eid::String(x.into())
}

fn dp(
    etype: &str,
    eid: Eid,
    attr: &str,
    v: Bson,
    t: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> DataPoint {
    DataPoint {
        etype: etype.into(),
        eid,
        attr: attr.into(),
        src: Some("test".into()),
        v,
        c: 1.0,
        t1: t.map(|t| t.0),
        t2: t.map(|t| t.1),
    }
}

fn task(etype: &str, eid: Eid, dps: Vec<DataPoint>) -> DataPointTask {
    DataPointTask {
        etype: etype.into(),
        eid,
        data_points: dps,
        ..Default::default()
    }
}

fn submit(p: &Pipeline, tasks: Vec<DataPointTask>) {
    p.submit(tasks).unwrap().blocking_recv().unwrap().unwrap();
    assert!(p.wait_idle(Duration::from_secs(20)));
}

fn link(eid: &str) -> Bson {
    Bson::Document(doc! {"eid": eid})
}

/// Records submitted tasks and accepts them at once.
#[derive(Default)]
struct Recorder(Mutex<Vec<DataPointTask>>);

impl TaskSubmitter for Recorder {
    fn submit(&self, tasks: Vec<DataPointTask>) -> Result<Accepted, SubmitError> {
        self.0.lock().extend(tasks);
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(()));
        Ok(rx)
    }
}

/// Write an entity directly (for jobs that do not go through the pipeline).
fn put_entity(
    store: &dyn Store,
    etype: &str,
    eid: Eid,
    now: DateTime<Utc>,
    f: impl FnOnce(&mut EntityWrite),
) {
    let mut w = EntityWrite::new(etype, eid.clone());
    w.create = Some(Creation {
        hash: eid.hash(etype),
        time_created: now,
    });
    f(&mut w);
    store
        .apply(&WriteBatch {
            ops: vec![WriteOp::Entity(w)],
            ..Default::default()
        })
        .unwrap();
}

fn item(t1: DateTime<Utc>, t2: DateTime<Utc>, v: Bson, c: f64) -> HistoryItem {
    HistoryItem {
        t1,
        t2,
        v,
        c: Some(c),
    }
}

/// `(t1, t2, v, c)` of a stored history item.
type Item = (DateTime<Utc>, DateTime<Utc>, Bson, Option<f64>);

fn history(doc: &Document, attr: &str) -> Vec<Item> {
    doc.get_array(attr)
        .map(|a| {
            a.iter()
                .filter_map(|i| i.as_document())
                .map(|d| {
                    (
                        d.get("t1").and_then(as_time).unwrap(),
                        d.get("t2").and_then(as_time).unwrap(),
                        d.get("v").cloned().unwrap(),
                        d.get("c").and_then(Bson::as_f64),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------------- lifetimes

#[test]
fn ttl_expiry_deletes_entities_and_removes_dangling_links() {
    let env = env();
    let p = env.pipeline();
    let t0 = env.t0;
    // h1: base token t0+1h, data token t0+2h (port max_age, mirrored)
    // h2: base t0+1h, data t0+2h (name ttl) and a custom token t0+5h
    let mut h2 = task(
        "host",
        s("h2"),
        vec![dp(
            "host",
            s("h2"),
            "name",
            Bson::String("two".into()),
            None,
        )],
    );
    h2.ttl_tokens = Some([("custom".to_string(), env.at(300))].into_iter().collect());
    submit(
        &p,
        vec![
            task(
                "host",
                s("h1"),
                vec![dp("host", s("h1"), "port", Bson::Int32(22), Some((t0, t0)))],
            ),
            h2,
            task(
                "owner",
                s("o1"),
                vec![
                    dp("owner", s("o1"), "main_host", link("h1"), None),
                    dp("owner", s("o1"), "hosts", link("h1"), Some((t0, t0))),
                    dp("owner", s("o1"), "hosts", link("h2"), Some((t0, t0))),
                ],
            ),
        ],
    );
    let gc = env.gc(p.clone());

    env.clock.set(env.at(30));
    let stats = gc.collect_ttl("host").unwrap();
    assert_eq!(stats.deleted, 0);
    assert!(env.master("host", s("h1")).is_some());

    // past base and data tokens of both; h2 lives on through its custom token
    env.clock.set(env.at(121));
    let stats = gc.collect_ttl("host").unwrap();
    assert!(p.wait_idle(Duration::from_secs(20)));
    assert_eq!(stats.deleted, 1);
    assert!(env.master("host", s("h1")).is_none());
    let h2 = env.master("host", s("h2")).expect("h2 kept");
    let tokens: Vec<&String> = h2.get_document("#ttl").unwrap().keys().collect();
    assert_eq!(tokens, vec!["custom"], "expired tokens are removed");

    // the owner's links to h1 are gone, the one to h2 stays
    let o1 = env.master("owner", s("o1")).unwrap();
    assert!(
        o1.get("main_host").is_none(),
        "plain link to a deleted entity is unset"
    );
    let hosts = history(&o1, "hosts");
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].2, link("h2"));

    env.clock.set(env.at(301));
    assert_eq!(gc.collect_ttl("host").unwrap().deleted, 1);
    assert!(p.wait_idle(Duration::from_secs(20)));
    assert!(env.master("host", s("h2")).is_none());
    assert!(env.master("owner", s("o1")).unwrap().get("hosts").is_none());

    // one run record per collection run
    let runs = env
        .store
        .query_run_metadata(&dp3_store::RunMetadataQuery {
            module: Some("GarbageCollector".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(runs.len(), 3);
    assert!(
        runs.iter()
            .all(|r| r.get_str("entity").ok() == Some("host") && r.contains_key("ttl_collect_end"))
    );
    p.shutdown(Duration::from_secs(10));
}

#[test]
fn weak_entities_disappear_when_unreferenced() {
    let env = env();
    let p = env.pipeline();
    let t0 = env.t0;
    let label = |e: &str| {
        task(
            "tag",
            s(e),
            vec![dp("tag", s(e), "label", Bson::String(e.into()), None)],
        )
    };
    submit(
        &p,
        vec![
            label("t1"),
            label("t2"),
            label("t3"),
            task(
                "owner",
                s("o"),
                vec![
                    dp("owner", s("o"), "tag", link("t1"), None),
                    dp("owner", s("o"), "seen_tag", link("t2"), Some((t0, t0))),
                ],
            ),
        ],
    );
    let gc = env.gc(p.clone());
    let tags = |env: &Env| -> BTreeSet<String> {
        ["t1", "t2", "t3"]
            .into_iter()
            .filter(|t| env.master("tag", s(t)).is_some())
            .map(str::to_owned)
            .collect()
    };

    env.clock.set(env.at(5));
    let st = gc.collect_weak("tag").unwrap();
    assert!(p.wait_idle(Duration::from_secs(20)));
    assert_eq!((st.entities, st.deleted), (3, 1));
    assert_eq!(tags(&env), BTreeSet::from(["t1".into(), "t2".into()]));

    // the observation link expires at t2 + post_validity (10 min)
    env.clock.set(env.at(11));
    gc.collect_weak("tag").unwrap();
    assert!(p.wait_idle(Duration::from_secs(20)));
    assert_eq!(tags(&env), BTreeSet::from(["t1".into()]));

    // the plain link moves elsewhere: t1 goes at the next run
    submit(
        &p,
        vec![task(
            "owner",
            s("o"),
            vec![dp("owner", s("o"), "tag", link("t9"), None)],
        )],
    );
    gc.collect_all().unwrap();
    assert!(p.wait_idle(Duration::from_secs(20)));
    assert!(tags(&env).is_empty());
    p.shutdown(Duration::from_secs(10));
}

// ------------------------------------------------------------------------- history

#[test]
fn aggregation_merges_trims_and_is_idempotent() {
    let env = env();
    let t0 = env.t0;
    let m = |x: i64| env.at(x);
    put_entity(&*env.store, "sensor", Eid::Int(1), t0, |w| {
        // arrival order; pre = post = 5 min (data-model.md §6.2 worked example)
        for (t1, t2, v, c) in [
            (10, 12, 1, 0.5),
            (0, 1, 1, 1.0),
            (30, 31, 1, 0.9),
            (32, 33, 2, 1.0),
        ] {
            w.history
                .push(("reading".into(), item(m(t1), m(t2), Bson::Int32(v), c)));
        }
        // max_items 3, no aggregation: the 3 newest by t2 stay
        for i in 0..5 {
            w.history
                .push(("level".into(), item(m(i), m(i), Bson::Int32(7), 1.0)));
        }
        // expire_time deletes nothing
        w.history.push((
            "state".into(),
            item(m(0), m(0), Bson::String("up".into()), 1.0),
        ));
    });
    // all TTL tokens expired: skipped by aggregation
    put_entity(&*env.store, "sensor", Eid::Int(2), t0, |w| {
        w.ttl.push(("base".into(), m(1)));
        w.history
            .push(("reading".into(), item(m(0), m(1), Bson::Int32(1), 1.0)));
        w.history
            .push(("reading".into(), item(m(1), m(2), Bson::Int32(1), 1.0)));
    });
    env.clock.set(m(180));
    let hm = env.history();
    let st = hm.aggregate_all().unwrap();
    assert_eq!((st.entities, st.updated, st.revision_conflicts), (2, 1, 0));

    let s1 = env.master("sensor", Eid::Int(1)).unwrap();
    assert_eq!(
        history(&s1, "reading"),
        vec![
            (m(0), m(12), Bson::Int32(1), Some(0.75)),
            (m(30), m(31), Bson::Int32(1), Some(0.9)),
            (m(32), m(33), Bson::Int32(2), Some(1.0)),
        ]
    );
    let levels: Vec<DateTime<Utc>> = history(&s1, "level").into_iter().map(|h| h.1).collect();
    assert_eq!(levels, vec![m(2), m(3), m(4)]);
    assert_eq!(history(&s1, "state").len(), 1);
    assert_eq!(
        history(&env.master("sensor", Eid::Int(2)).unwrap(), "reading").len(),
        2
    );

    // a second run changes nothing (no rewrite, revision unchanged)
    let rev = s1.get("#revision").cloned();
    assert_eq!(hm.aggregate_all().unwrap().updated, 0);
    assert_eq!(
        env.master("sensor", Eid::Int(1))
            .unwrap()
            .get("#revision")
            .cloned(),
        rev
    );

    let runs = env
        .store
        .query_run_metadata(&dp3_store::RunMetadataQuery {
            module: Some("HistoryManager".into()),
            newest_first: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs[1].contains_key("aggregation_end"));
    assert_eq!(
        runs[1]
            .get("updated")
            .and_then(Bson::as_i64)
            .or(runs[1].get_i32("updated").ok().map(i64::from)),
        Some(1)
    );
}

/// DP3 averages merged confidences per run only (1.0 and 0.0 → 0.5, then with another 0.0 →
/// 0.25). The merge count is stored with the item, so the second run gives the true mean 1/3.
#[test]
fn aggregation_confidence_is_the_true_mean_across_runs() {
    let env = env();
    let t0 = env.t0;
    let m = |x: i64| env.at(x);
    put_entity(&*env.store, "sensor", Eid::Int(9), t0, |w| {
        w.history
            .push(("reading".into(), item(m(0), m(1), Bson::Int32(1), 1.0)));
        w.history
            .push(("reading".into(), item(m(2), m(3), Bson::Int32(1), 0.0)));
    });
    env.clock.set(m(180));
    let hm = env.history();
    hm.aggregate_all().unwrap();
    let h = history(&env.master("sensor", Eid::Int(9)).unwrap(), "reading");
    assert_eq!(h, vec![(m(0), m(3), Bson::Int32(1), Some(0.5))]);

    put_entity(&*env.store, "sensor", Eid::Int(9), t0, |w| {
        w.history
            .push(("reading".into(), item(m(4), m(5), Bson::Int32(1), 0.0)));
    });
    hm.aggregate_all().unwrap();
    let h = history(&env.master("sensor", Eid::Int(9)).unwrap(), "reading");
    assert_eq!(h.len(), 1, "{h:?}");
    let c = h[0].3.unwrap();
    assert!(
        (c - 1.0 / 3.0).abs() < 1e-9,
        "confidence {c} (DP3 would give 0.25)"
    );
}

#[test]
fn max_age_cleanup_trims_observations_and_timeseries() {
    let env = env();
    let m = |x: i64| env.at(x);
    put_entity(&*env.store, "sensor", Eid::Int(1), env.t0, |w| {
        w.history.push((
            "state".into(),
            item(m(0), m(10), Bson::String("a".into()), 1.0),
        ));
        w.history.push((
            "state".into(),
            item(m(0), m(2000), Bson::String("b".into()), 1.0),
        ));
        for i in [0, 50, 100] {
            w.history.push((
                "samples".into(),
                HistoryItem {
                    t1: m(i),
                    t2: m(i),
                    v: Bson::Document(doc! {"time": [time(m(i))], "x": [i]}),
                    c: None,
                },
            ));
        }
    });
    put_entity(&*env.store, "host", s("h"), env.t0, |w| {
        w.history
            .push(("port".into(), item(m(0), m(0), Bson::Int32(80), 1.0)));
    });
    // state max_age 1d, samples 1h, host.port 2h
    env.clock.set(m(24 * 60 + 11));
    let changed = env.history().clean_old_datapoints().unwrap();
    assert_eq!(changed, 3);
    let s1 = env.master("sensor", Eid::Int(1)).unwrap();
    let states: Vec<Bson> = history(&s1, "state").into_iter().map(|h| h.2).collect();
    assert_eq!(states, vec![Bson::String("b".into())]);
    assert_eq!(
        s1.get_document("#min_t2s")
            .unwrap()
            .get("state")
            .and_then(as_time),
        Some(m(2000))
    );
    assert!(s1.get("samples").is_none(), "all samples are older than 1h");
    assert!(!s1.get_document("#min_t2s").unwrap().contains_key("samples"));
    assert!(env.master("host", s("h")).unwrap().get("port").is_none());
}

#[test]
fn snapshot_retention_deletes_old_snapshots() {
    let env = env();
    let sn = |t| (Eid::Int(1), doc! {"eid": 1, "_time_created": time(t)});
    env.store
        .save_snapshots("sensor", &[sn(env.at(0))], env.at(0))
        .unwrap();
    env.store
        .save_snapshots("sensor", &[sn(env.at(60))], env.at(60))
        .unwrap();
    env.clock.set(env.at(90));
    let deleted = env
        .history()
        .clean_old_snapshots(TimeDelta::minutes(45))
        .unwrap();
    assert_eq!(deleted, 1);
    let left = env
        .store
        .snapshot_history("sensor", &Eid::Int(1), &Default::default())
        .unwrap();
    assert_eq!(left.len(), 1);
}

// ------------------------------------------------------------------------- archive

fn raw(etype: &str, eid: Eid, attr: &str, v: Bson, t: Option<DateTime<Utc>>) -> DataPoint {
    DataPoint {
        etype: etype.into(),
        eid,
        attr: attr.into(),
        src: Some("arch".into()),
        v,
        c: 1.0,
        t1: t,
        t2: t,
    }
}

#[test]
fn archive_files_contain_exactly_the_archived_datapoints() {
    let env = env_with(true);
    let archive_dir = env
        .cfg
        .history_manager
        .datapoint_archivation
        .archive_dir
        .clone()
        .unwrap();
    let nic = Eid::Mac(MacAddr([0xaa, 0xbb, 0xcc, 0, 0, 1]));
    let old1 = env.at(-3 * 24 * 60);
    let old2 = env.at(-2 * 24 * 60 - 30);
    let fresh = env.at(-60);
    let dps = vec![
        raw(
            "nic",
            nic.clone(),
            "addr",
            ipv4("10.0.0.1".parse().unwrap()),
            Some(old1),
        ),
        raw("sensor", Eid::Int(7), "reading", Bson::Int32(5), Some(old2)),
        raw(
            "sensor",
            Eid::Int(7),
            "label",
            Bson::String("plain".into()),
            None,
        ),
        raw(
            "sensor",
            Eid::Int(7),
            "reading",
            Bson::Int32(6),
            Some(fresh),
        ),
    ];
    env.store
        .apply(&WriteBatch {
            raw: dps.clone(),
            ..Default::default()
        })
        .unwrap();
    let archiver = Archiver {
        model: env.model.clone(),
        store: env.store.clone(),
        clock: Arc::new(env.clock.clone()),
        older_than: TimeDelta::days(1),
        archive_dir: Some(archive_dir.clone()),
    };
    let stats = archiver.run().unwrap();
    assert_eq!(stats.archived, 3);
    let file = stats.file.expect("an archive file");
    assert_eq!(
        file.file_name().unwrap().to_str().unwrap(),
        format!(
            "dp-log-{}--{}.jsonl.gz",
            old1.format("%Y%m%dT%H%M%S"),
            old2.format("%Y%m%dT%H%M%S")
        )
    );
    let lines = read_archive(&file).unwrap();
    let expected: Vec<serde_json::Value> = dps[..3]
        .iter()
        .map(|d| dp3::background::archive::archive_line(&d.to_document()))
        .collect();
    let as_set = |v: &[serde_json::Value]| v.iter().map(|j| j.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(as_set(&lines), as_set(&expected));
    // spot-check the format: zone suffix, address strings, DP3 key names
    let nic_line = lines.iter().find(|l| l["type"] == "nic").unwrap();
    assert_eq!(nic_line["id"], "aa:bb:cc:00:00:01");
    assert_eq!(nic_line["v"], "10.0.0.1");
    assert!(nic_line["t1"].as_str().unwrap().ends_with('Z'));
    let keys: Vec<&String> = nic_line.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["attr", "src", "v", "c", "t1", "t2", "id", "type"]);

    // only the fresh datapoint is left in the raw log
    let left = env.store.raw_get("sensor", &Default::default()).unwrap();
    assert_eq!(left.len(), 1);
    assert!(
        env.store
            .raw_get("nic", &Default::default())
            .unwrap()
            .is_empty()
    );

    // a run with nothing to archive writes no file; without archive_dir data is just deleted
    assert_eq!(archiver.run().unwrap().file, None);
    env.clock.set(env.at(24 * 60));
    let deleting = Archiver {
        archive_dir: None,
        ..archiver
    };
    assert_eq!(deleting.run().unwrap().archived, 1);
    assert!(
        env.store
            .raw_get("sensor", &Default::default())
            .unwrap()
            .is_empty()
    );
    let files: Vec<_> = std::fs::read_dir(&archive_dir).unwrap().collect();
    assert_eq!(files.len(), 1);
}

// ------------------------------------------------------------------------- updater

/// Two threads on `sensor`: a record thread (3600 s) and an eid-only one (1800 s).
struct Hooks {
    visits: Mutex<Vec<(UpdateThreadKey, Eid, bool)>>,
    eid_thread: bool,
}

fn record_key() -> UpdateThreadKey {
    UpdateThreadKey {
        period_secs: 3600,
        etype: "sensor".into(),
        eid_only: false,
    }
}

fn eid_key() -> UpdateThreadKey {
    UpdateThreadKey {
        period_secs: 1800,
        etype: "sensor".into(),
        eid_only: true,
    }
}

impl UpdaterHooks for Hooks {
    fn threads(&self) -> Vec<UpdateThread> {
        let mut t = vec![UpdateThread {
            key: record_key(),
            hook_ids: vec!["refresh".into(), "derive".into()],
        }];
        if self.eid_thread {
            t.push(UpdateThread {
                key: eid_key(),
                hook_ids: vec!["ping".into()],
            });
        }
        t
    }

    fn run_periodic(
        &self,
        thread: &UpdateThreadKey,
        eid: &Eid,
        master: Option<&Document>,
    ) -> Vec<DataPointTask> {
        self.visits
            .lock()
            .push((thread.clone(), eid.clone(), master.is_some()));
        vec![task(
            "sensor",
            eid.clone(),
            vec![dp(
                "sensor",
                eid.clone(),
                "label",
                Bson::String("seen".into()),
                None,
            )],
        )]
    }
}

fn updater(
    env: &Env,
    hooks: Arc<Hooks>,
    out: Arc<Recorder>,
    batch_minutes: i64,
    cache: usize,
) -> Updater {
    Updater::start(UpdaterDeps {
        model: env.model.clone(),
        store: env.store.clone(),
        hooks,
        submitter: out,
        clock: Arc::new(env.clock.clone()),
        stop: Arc::new(AtomicBool::new(false)),
        batch_period: TimeDelta::minutes(batch_minutes),
        cache_max_entries: cache,
    })
    .unwrap()
}

#[test]
fn updater_visits_each_entity_once_per_sweep_and_resumes_after_restart() {
    let env = env();
    let n = 40;
    for i in 0..n {
        put_entity(&*env.store, "sensor", Eid::Int(i), env.t0, |w| {
            w.plain
                .push(("label".into(), Bson::String("x".into()), env.t0));
        });
    }
    let hooks = Arc::new(Hooks {
        visits: Mutex::new(Vec::new()),
        eid_thread: true,
    });
    let out = Arc::new(Recorder::default());
    // batch period 15 min: the record thread has 4 iterations, the eid thread 2
    let u = updater(&env, hooks.clone(), out.clone(), 15, 32);
    for _ in 0..2 {
        env.clock.advance(TimeDelta::minutes(15));
        u.run_batch().unwrap();
    }
    drop(u);
    // restart: the record thread resumes at iteration 2; the eid thread starts a new sweep
    let u = updater(&env, hooks.clone(), out.clone(), 15, 32);
    let state = u
        .states()
        .into_iter()
        .find(|s| s.key == record_key())
        .unwrap();
    assert_eq!((state.iteration, state.total_iterations), (2, 4));
    for _ in 0..2 {
        env.clock.advance(TimeDelta::minutes(15));
        u.run_batch().unwrap();
    }

    let visits = hooks.visits.lock().clone();
    let mut per_eid: BTreeMap<Eid, usize> = BTreeMap::new();
    for (k, eid, with_master) in &visits {
        if *k == record_key() {
            assert!(with_master);
            *per_eid.entry(eid.clone()).or_default() += 1;
        } else {
            assert!(!with_master, "eid-only hooks get no master record");
        }
    }
    assert_eq!(per_eid.len(), n as usize, "every entity visited");
    assert!(per_eid.values().all(|c| *c == 1), "exactly once per sweep");
    // batch i visited exactly the records with #hash mod 4 == i, in order
    let record_visits: Vec<u16> = visits
        .iter()
        .filter(|v| v.0 == record_key())
        .map(|v| v.1.hash("sensor") % 4)
        .collect();
    let mut sorted = record_visits.clone();
    sorted.sort();
    assert_eq!(record_visits, sorted);
    // eid thread: 2 sweeps of 2 iterations each, every entity twice
    let eid_visits = visits.iter().filter(|v| v.0 == eid_key()).count();
    assert_eq!(eid_visits, 2 * n as usize);
    assert_eq!(
        out.0.lock().len(),
        visits.len(),
        "one output task per visit submitted"
    );

    // the finished sweep is saved; a new one started
    let saved = env.store.list_meta("updater/sensor/3600s/record/").unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].1.get_bool("finished").ok(), Some(true));
    assert_eq!(saved[0].1.get_array("hook_ids").unwrap().len(), 2);
    let state = u
        .states()
        .into_iter()
        .find(|s| s.key == record_key())
        .unwrap();
    assert_eq!(
        (state.iteration, state.finished, state.processed),
        (0, false, 0)
    );
}

#[test]
fn updater_restarts_sweep_when_iterations_change_and_prunes_cache() {
    let env = env();
    for i in 0..10 {
        put_entity(&*env.store, "sensor", Eid::Int(i), env.t0, |_| {});
    }
    let hooks = Arc::new(Hooks {
        visits: Mutex::new(Vec::new()),
        eid_thread: false,
    });
    let out = Arc::new(Recorder::default());
    let u = updater(&env, hooks.clone(), out.clone(), 15, 2);
    u.run_batch().unwrap();
    drop(u);
    // batch period 30 min: 2 iterations instead of 4 -> restart at 0, same sweep
    let u = updater(&env, hooks.clone(), out.clone(), 30, 2);
    let st = u.states().pop().unwrap();
    assert_eq!((st.iteration, st.total_iterations), (0, 2));
    // five sweeps of 2 batches (one was the restarted sweep)
    for _ in 0..10 {
        env.clock.advance(TimeDelta::minutes(30));
        u.run_batch().unwrap();
    }
    assert_eq!(env.store.list_meta("updater/").unwrap().len(), 5);
    assert_eq!(u.manage_cache().unwrap(), 3);
    let left = env.store.list_meta("updater/").unwrap();
    assert_eq!(left.len(), 2);
    assert!(
        left.iter()
            .all(|(_, d)| d.get_bool("finished").ok() == Some(true))
    );

    // hooks unregistered: the running sweep is finished
    let gone = Arc::new(Hooks {
        visits: Mutex::new(Vec::new()),
        eid_thread: false,
    });
    struct NoThreads(Arc<Hooks>);
    impl UpdaterHooks for NoThreads {
        fn threads(&self) -> Vec<UpdateThread> {
            Vec::new()
        }
        fn run_periodic(
            &self,
            k: &UpdateThreadKey,
            e: &Eid,
            m: Option<&Document>,
        ) -> Vec<DataPointTask> {
            self.0.run_periodic(k, e, m)
        }
    }
    env.clock.advance(TimeDelta::minutes(30));
    u.run_batch().unwrap(); // starts (and saves) a new sweep
    drop(u);
    let u = Updater::start(UpdaterDeps {
        model: env.model.clone(),
        store: env.store.clone(),
        hooks: Arc::new(NoThreads(gone)),
        submitter: out,
        clock: Arc::new(env.clock.clone()),
        stop: Arc::new(AtomicBool::new(false)),
        batch_period: TimeDelta::minutes(30),
        cache_max_entries: 2,
    })
    .unwrap();
    assert!(u.states().is_empty());
    assert!(
        env.store
            .list_meta("updater/")
            .unwrap()
            .iter()
            .all(|(_, d)| d.get_bool("finished").ok() == Some(true))
    );
}

// ------------------------------------------------------------------------- telemetry, jobs

#[test]
fn source_times_are_max_merged_into_the_store() {
    let env = env();
    let tel = SourceTelemetry::new();
    let t = env.t0;
    tel.observe(&task(
        "sensor",
        Eid::Int(1),
        vec![raw(
            "sensor",
            Eid::Int(1),
            "reading",
            Bson::Int32(1),
            Some(t),
        )],
    ));
    assert_eq!(tel.sync(&*env.store).unwrap(), 1);
    let stored = |env: &Env| {
        env.store
            .get_meta("telemetry/src/arch")
            .unwrap()
            .and_then(|d| d.get("src_t").and_then(as_time))
    };
    assert_eq!(stored(&env), Some(t));
    // an older time never lowers the stored one
    tel.observe(&task(
        "sensor",
        Eid::Int(1),
        vec![raw(
            "sensor",
            Eid::Int(1),
            "reading",
            Bson::Int32(1),
            Some(t - TimeDelta::hours(1)),
        )],
    ));
    tel.sync(&*env.store).unwrap();
    assert_eq!(stored(&env), Some(t));
    tel.observe(&task(
        "sensor",
        Eid::Int(1),
        vec![raw(
            "sensor",
            Eid::Int(1),
            "reading",
            Bson::Int32(1),
            Some(t + TimeDelta::hours(1)),
        )],
    ));
    tel.sync(&*env.store).unwrap();
    assert_eq!(stored(&env), Some(t + TimeDelta::hours(1)));
    assert_eq!(tel.sync(&*env.store).unwrap(), 0);
}

#[test]
fn register_jobs_schedules_every_job_from_the_configuration() {
    let env = env_with(true);
    let scheduler = Scheduler::new(Arc::new(env.clock.clone()));
    let bg = register_jobs(
        &scheduler,
        &env.cfg,
        BackgroundDeps {
            store: env.store.clone(),
            submitter: Arc::new(Recorder::default()),
            clock: Arc::new(env.clock.clone()),
            updater_hooks: Arc::new(dp3::background::updater::NoUpdaterHooks),
            telemetry: Arc::new(SourceTelemetry::new()),
        },
    )
    .unwrap();
    let names: HashSet<String> = bg.jobs.iter().map(|j| j.1.clone()).collect();
    for expected in [
        "history_manager.aggregation",
        "history_manager.datapoint_cleaning",
        "history_manager.snapshot_cleaning",
        "history_manager.datapoint_archivation",
        "garbage_collector.ttl.host",
        "garbage_collector.weak.tag",
        "updater.batch",
        "updater.cache_management",
        "telemetry.sources_sync",
        "telemetry.attribute_bson_sizes",
    ] {
        assert!(names.contains(expected), "{expected} registered");
    }
    assert_eq!(names.len(), 10);
    assert!(
        env.cfg
            .history_manager
            .datapoint_archivation
            .archive_dir
            .as_ref()
            .unwrap()
            .is_dir()
    );
    // the telemetry sync fires on its schedule (every 30 s)
    bg.telemetry.observe(&task(
        "sensor",
        Eid::Int(1),
        vec![raw(
            "sensor",
            Eid::Int(1),
            "reading",
            Bson::Int32(1),
            Some(env.t0),
        )],
    ));
    let next = scheduler
        .jobs()
        .into_iter()
        .find(|j| j.1 == "telemetry.sources_sync")
        .and_then(|j| j.2)
        .unwrap();
    assert!(next - env.t0 <= TimeDelta::seconds(30));
    env.clock.set(next);
    assert!(!scheduler.run_due(next).is_empty());
    bg.stop();
    scheduler.stop(Duration::from_secs(10));
    assert!(env.store.get_meta("telemetry/src/arch").unwrap().is_some());
}

#[test]
fn attribute_size_sweep_fills_the_telemetry_cache() {
    let env = env();
    for i in 0..3 {
        put_entity(&*env.store, "sensor", Eid::Int(i), env.t0, |w| {
            w.plain
                .push(("label".into(), Bson::String("x".repeat(i as usize)), env.t0));
        });
    }
    let n = dp3::background::telemetry::sweep_attribute_sizes(&env.model, &*env.store, &env.clock)
        .unwrap();
    assert_eq!(n, env.model.entities.len());
    let d = env
        .store
        .get_meta("telemetry/attribute_bson_sizes/sensor")
        .unwrap()
        .unwrap();
    let label = d
        .get_document("attributes")
        .unwrap()
        .get_document("label")
        .unwrap();
    let int = |k: &str| label.get(k).and_then(dp3_model::value::as_int).unwrap();
    assert_eq!(int("count"), 3);
    assert_eq!(
        int("max") - int("min"),
        2,
        "sizes differ by the string lengths"
    );
    assert!(d.get("calculated_at").and_then(as_time).is_some());
    assert!(
        !d.get_document("attributes")
            .unwrap()
            .contains_key("reading"),
        "absent attributes are left out"
    );
}
