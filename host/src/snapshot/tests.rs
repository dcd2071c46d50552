//! The snapshooter's fast read path (current values from stored rows, no master records)
//! against the general path (master records for every entity) on a generated store: the
//! same snapshots, the same hook calls in the same order, the same hook outputs.

use std::path::Path;
use std::sync::Arc;

use bson::{Bson, Document, doc};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use dp3_model::{DataPointTask, Eid, ModelSpec};
use dp3_plugin_api::Registrar;
use dp3_store::sqlite::SqliteStore;
use dp3_store::{
    Creation, EntityWrite, HistoryItem, LinkKey, LinkOp, SnapshotQuery, Store, WriteBatch, WriteOp,
};
use parking_lot::Mutex;

use super::hooks::{SnapshotHookSource, SnapshotHooks};
use super::unit::Unit;
use super::{RunReport, SnapShooter};
use crate::clock::ManualClock;
use crate::plugins::{HookRegistryBuilder, LiveHooks, RegistrySettings};
use crate::queue::{Accepted, SubmitError, TaskSubmitter};
use crate::wiring::LiveHookSource;

fn write_config(dir: &Path) {
    super::test_platform::write_platform_files(dir);
    std::fs::write(
        dir.join("db_entities/host.yml"),
        "entity: {id: host, name: Host, id_data_type: int, snapshot: true}\n\
         attribs:\n\
         \x20 cpu: {name: cpu, type: observations, data_type: float, history_params: {pre_validity: 10m, post_validity: 10m}}\n\
         \x20 tags: {name: tags, type: observations, data_type: string, multi_value: true, history_params: {post_validity: 30m}}\n\
         \x20 load: {name: load, type: observations, data_type: int, history_params: {post_validity: 30m, expire_time: 20m}}\n\
         \x20 name: {name: name, type: plain, data_type: string}\n\
         \x20 site: {name: site, type: observations, data_type: \"link<site;mirror=hosts>\", history_params: {post_validity: 1d}}\n\
         \x20 peers: {name: peers, type: observations, data_type: link<host>, multi_value: true, history_params: {post_validity: 1d}}\n\
         \x20 site_name: {name: site name, type: plain, data_type: string}\n\
         \x20 peer_cpu: {name: peer cpu, type: plain, data_type: float}\n\
         \x20 traffic: {name: traffic, type: timeseries, timeseries_type: regular, timeseries_params: {time_step: 5m, max_age: 30d}, series: {bytes: {data_type: int}}}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("db_entities/site.yml"),
        "entity: {id: site, name: Site, snapshot: true}\n\
         attribs:\n\
         \x20 name: {name: name, type: plain, data_type: string}\n\
         \x20 label: {name: label, type: plain, data_type: string}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("db_entities/lonely.yml"),
        "entity: {id: lonely, name: Lonely, id_data_type: int, snapshot: true}\n\
         attribs:\n\
         \x20 score: {name: score, type: observations, data_type: int, history_params: {post_validity: 1h}}\n\
         \x20 grade: {name: grade, type: plain, data_type: string}\n",
    )
    .unwrap();
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
}

/// A deterministic pseudo-random sequence.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn item(t1: DateTime<Utc>, minutes: i64, v: Bson, c: Option<f64>) -> HistoryItem {
    HistoryItem {
        t1,
        t2: t1 + TimeDelta::minutes(minutes),
        v,
        c,
    }
}

/// Hosts with current, stale, future and expiring observations, duplicated multi values,
/// links to existing and missing sites and hosts, timeseries rows; sites (odd ones
/// missing); linkless entities.
fn populate(store: &dyn Store) {
    let t = now();
    let mut rng = Lcg(7);
    let mut batch = WriteBatch::default();
    let create = |etype: &str, eid: Eid| {
        let mut w = EntityWrite::new(etype, eid.clone());
        w.create = Some(Creation {
            hash: eid.hash(etype),
            time_created: t,
        });
        w
    };
    for s in (0..20).step_by(2) {
        let mut w = create("site", Eid::String(format!("s{s}")));
        if s % 4 == 2 {
            w.plain
                .push(("name".into(), Bson::String(format!("Site {s}")), t));
        }
        batch.ops.push(WriteOp::Entity(w));
    }
    let link_up = |batch: &mut WriteBatch, from: i64, attr: &str, to: LinkKey| {
        batch.ops.push(WriteOp::Link(LinkOp::Upsert {
            from: LinkKey::new("host", Eid::Int(from)),
            to,
            using_attr: format!("host#{attr}"),
            ttl: t + TimeDelta::days(1),
        }));
    };
    for h in 0..300i64 {
        let mut w = create("host", Eid::Int(h));
        for _ in 0..rng.next(6) {
            let t1 = t - TimeDelta::minutes(rng.next(40) as i64) + TimeDelta::minutes(5);
            let v = if rng.next(2) == 0 {
                Bson::Double(rng.next(100) as f64 / 4.0)
            } else {
                Bson::Int32(rng.next(100) as i32)
            };
            let c = rng.next(4) as f64 / 3.0;
            w.history
                .push(("cpu".into(), item(t1, rng.next(10) as i64, v, Some(c))));
        }
        for _ in 0..rng.next(5) {
            let t1 = t - TimeDelta::minutes(rng.next(60) as i64);
            let v = Bson::String(format!("tag{}", rng.next(3)));
            w.history.push((
                "tags".into(),
                item(t1, 5, v, Some(0.5 + rng.next(2) as f64 / 4.0)),
            ));
        }
        for _ in 0..rng.next(3) {
            let t1 = t - TimeDelta::minutes(rng.next(50) as i64);
            let v = Bson::Int64(rng.next(9) as i64);
            w.history.push(("load".into(), item(t1, 1, v, Some(0.9))));
        }
        if h % 3 != 0 {
            w.plain
                .push(("name".into(), Bson::String(format!("host {h}")), t));
        }
        if h % 4 != 0 {
            let site = Eid::String(format!("s{}", h % 20));
            w.history.push((
                "site".into(),
                item(
                    t - TimeDelta::hours(1),
                    30,
                    Bson::Document(doc! {"eid": site.to_bson()}),
                    Some(1.0),
                ),
            ));
            link_up(&mut batch, h, "site", LinkKey::new("site", site));
        }
        if h % 10 == 0 {
            for peer in [(h + 1) % 300, 1000 + h] {
                w.history.push((
                    "peers".into(),
                    item(
                        t - TimeDelta::minutes(30),
                        10,
                        Bson::Document(doc! {"eid": peer}),
                        Some(0.8),
                    ),
                ));
                link_up(&mut batch, h, "peers", LinkKey::new("host", Eid::Int(peer)));
            }
        }
        if h % 7 == 0 {
            w.history.push((
                "traffic".into(),
                item(
                    t - TimeDelta::minutes(10),
                    5,
                    Bson::Document(doc! {"bytes": [1, 2]}),
                    None,
                ),
            ));
        }
        batch.ops.push(WriteOp::Entity(w));
    }
    for l in 0..50i64 {
        let mut w = create("lonely", Eid::Int(l));
        if l % 5 != 0 {
            w.history.push((
                "score".into(),
                item(
                    t - TimeDelta::minutes(20),
                    5,
                    Bson::Int32(l as i32),
                    Some(0.7),
                ),
            ));
        }
        batch.ops.push(WriteOp::Entity(w));
    }
    store.apply(&batch).unwrap();
}

/// Hooks that log every call (entity and what they saw) and return tasks.
fn registry(model: &Arc<ModelSpec>, log: Arc<Mutex<Vec<String>>>) -> LiveHookSource {
    let mut r = Registrar::new("test");
    let l = Arc::clone(&log);
    r.correlation(
        "copy_site_name",
        "host",
        vec![vec!["site".into(), "name".into()]],
        vec![vec!["site_name".into()]],
        move |_etype, values| {
            let name = values
                .get_document("site")
                .ok()
                .and_then(|s| s.get_document("record").ok())
                .and_then(|r| r.get_str("name").ok())
                .map(str::to_owned);
            l.lock().push(format!("copy {values}"));
            if let Some(n) = name {
                values.insert("site_name", n);
            }
            Ok(Vec::new())
        },
    );
    let l = Arc::clone(&log);
    r.correlation(
        "peer_cpu",
        "host",
        vec![vec!["peers".into(), "cpu".into()]],
        vec![vec!["peer_cpu".into()]],
        move |_etype, values| {
            let best = values
                .get_array("peers")
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_document()?.get_document("record").ok())
                        .filter_map(|r| r.get("cpu").cloned())
                        .map(|c| match c {
                            Bson::Double(f) => f,
                            Bson::Int32(i) => f64::from(i),
                            _ => -1.0,
                        })
                        .fold(-1.0, f64::max)
                })
                .unwrap_or(-2.0);
            l.lock().push(format!("peer {values}"));
            values.insert("peer_cpu", best);
            Ok(Vec::new())
        },
    );
    let l = Arc::clone(&log);
    r.correlation(
        "label_site",
        "site",
        vec![vec!["name".into()]],
        vec![vec!["label".into()]],
        move |etype, values| {
            l.lock().push(format!("label {values}"));
            let hosts = values.get_array("hosts").map(Vec::len).unwrap_or(0);
            values.insert("label", format!("{hosts} hosts"));
            let eid = values
                .get("eid")
                .and_then(Eid::from_bson)
                .unwrap_or_default();
            Ok(if values.contains_key("name") {
                vec![DataPointTask {
                    etype: etype.to_owned(),
                    eid: eid.clone(),
                    data_points: vec![dp3_model::DataPoint {
                        etype: etype.to_owned(),
                        eid,
                        attr: "label".into(),
                        src: None,
                        v: Bson::String(format!("{hosts} hosts")),
                        c: 1.0,
                        t1: None,
                        t2: None,
                    }],
                    ..DataPointTask::default()
                }]
            } else {
                Vec::new()
            })
        },
    );
    let l = Arc::clone(&log);
    r.correlation(
        "grade",
        "lonely",
        vec![vec!["score".into()]],
        vec![vec!["grade".into()]],
        move |_etype, values| {
            l.lock().push(format!("grade {values}"));
            let g = if values.contains_key("score") {
                "A"
            } else {
                "F"
            };
            values.insert("grade", g);
            Ok(Vec::new())
        },
    );
    let mut builder = HookRegistryBuilder::new(model.clone(), RegistrySettings::default());
    let errors = builder.add_module("test", r.into_registrations());
    assert!(errors.is_empty(), "{errors:?}");
    let (registry, errors) = builder.build();
    assert!(errors.is_empty(), "{errors:?}");
    LiveHookSource {
        live: Arc::new(LiveHooks::new(registry)),
        telemetry: None,
    }
}

/// The same hooks, but claiming to need master records: the general path everywhere.
struct General(Arc<dyn SnapshotHooks>);

impl SnapshotHooks for General {
    fn used_links(&self) -> Vec<(String, String)> {
        self.0.used_links()
    }
    fn snapshot_init(&self) -> Vec<DataPointTask> {
        self.0.snapshot_init()
    }
    fn snapshot_finalize(&self) -> Vec<DataPointTask> {
        self.0.snapshot_finalize()
    }
    fn needs_master(&self, _etype: &str) -> bool {
        true
    }
    fn timeseries(&self, etype: &str, master: &Document) -> Vec<DataPointTask> {
        self.0.timeseries(etype, master)
    }
    fn correlate(&self, unit: &mut Unit) -> Vec<DataPointTask> {
        self.0.correlate(unit)
    }
}

#[derive(Default)]
struct Sink(Mutex<Vec<DataPointTask>>);

impl TaskSubmitter for Sink {
    fn submit(&self, tasks: Vec<DataPointTask>) -> Result<Accepted, SubmitError> {
        self.0.lock().extend(tasks);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(Ok(()));
        Ok(rx)
    }
}

struct Outcome {
    report: RunReport,
    log: Vec<String>,
    tasks: Vec<DataPointTask>,
    snapshots: Vec<(String, Vec<Document>)>,
}

fn run(general: bool, keep_empty: bool) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    write_config(&dir.path().join("config"));
    let config = dp3_model::config::load_config_dir(&dir.path().join("config"))
        .unwrap_or_else(|e| panic!("{e}"));
    let model = Arc::new(config.model);
    let store = Arc::new(SqliteStore::open(&dir.path().join("dp3.sqlite")).unwrap());
    populate(&*store);
    let log = Arc::new(Mutex::new(Vec::new()));
    let live = registry(&model, Arc::clone(&log));
    let hooks = live.load();
    assert!(!hooks.needs_master("host") && !hooks.needs_master("site"));
    let hooks: Arc<dyn SnapshotHooks> = if general {
        Arc::new(General(hooks))
    } else {
        hooks
    };
    let sink = Arc::new(Sink::default());
    let shooter = SnapShooter::new(
        model,
        store.clone(),
        Arc::new(hooks) as Arc<dyn SnapshotHookSource>,
        sink.clone(),
        Arc::new(ManualClock::new(now())),
        keep_empty,
        1,
    );
    let report = shooter.run().unwrap();
    let snapshots = ["host", "site", "lonely"]
        .iter()
        .map(|etype| {
            let q = SnapshotQuery::default();
            (
                (*etype).to_owned(),
                store.latest_snapshots(etype, &q).unwrap(),
            )
        })
        .collect();
    let log = std::mem::take(&mut *log.lock());
    let tasks = std::mem::take(&mut *sink.0.lock());
    Outcome {
        report,
        log,
        tasks,
        snapshots,
    }
}

#[test]
fn snapshot_fast_path_matches_the_master_record_path() {
    for keep_empty in [true, false] {
        let fast = run(false, keep_empty);
        let general = run(true, keep_empty);
        assert_eq!(fast.report.failures, 0);
        assert_eq!(
            (
                fast.report.entities,
                fast.report.components,
                fast.report.tasks
            ),
            (
                general.report.entities,
                general.report.components,
                general.report.tasks
            )
        );
        assert!(fast.report.components > 1, "{:?}", fast.report);
        assert!(fast.report.tasks > 0, "{:?}", fast.report);
        assert_eq!(fast.log.len(), general.log.len());
        for (i, (a, b)) in fast.log.iter().zip(&general.log).enumerate() {
            assert_eq!(a, b, "hook call {i} (keep_empty {keep_empty})");
        }
        assert_eq!(fast.tasks, general.tasks);
        for ((etype, a), (_, b)) in fast.snapshots.iter().zip(&general.snapshots) {
            assert!(!a.is_empty(), "{etype}");
            assert_eq!(a.len(), b.len(), "{etype} (keep_empty {keep_empty})");
            for (x, y) in a.iter().zip(b) {
                assert_eq!(x, y, "{etype} (keep_empty {keep_empty})");
            }
        }
        // the data exercises what it should
        let hosts = &fast.snapshots[0].1;
        for key in ["cpu", "tags", "load", "site_name", "peer_cpu", "name"] {
            assert!(hosts.iter().any(|d| d.contains_key(key)), "{key}");
        }
        assert!(!hosts.iter().any(|d| d.contains_key("traffic")));
        let sites = &fast.snapshots[1].1;
        assert!(sites.iter().any(|d| d.contains_key("hosts")));
    }
}
