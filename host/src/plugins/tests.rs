//! Registry and loader tests. Module libraries are the workspace's example plugins (dev
//! dependencies of this crate, so `cargo test` builds their `.so` files first); they are
//! loaded for real through the abi_stable boundary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bson::{Bson, Document, doc};
use dp3_model::{DataPoint, DataPointTask, Eid, ModelSpec};
use dp3_plugin_api::host::{LoadOptions, TracingServices, load_library};
use dp3_plugin_api::{PlatformConfig, Refresh, Registrar, paths};

use super::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model(dir: &str) -> Arc<ModelSpec> {
    let cfg = dp3_model::config::load_config_dir(&repo().join(dir)).expect("config loads");
    Arc::new(cfg.model)
}

fn test_model() -> Arc<ModelSpec> {
    model("tests/fixtures/dp3-test-config")
}

fn example_model() -> Arc<ModelSpec> {
    model("config")
}

/// The built library of an example plugin: the newer of target/<profile>/ (built as a
/// workspace member) and target/<profile>/deps/ (built as a dev dependency of this crate).
fn library(name: &str) -> PathBuf {
    let file = format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    let candidates = [
        deps.join(&file),
        deps.parent().expect("profile dir").join(&file),
    ];
    candidates
        .into_iter()
        .filter_map(|p| {
            std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .ok()
                .map(|t| (t, p))
        })
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("{file} was not built next to {}", exe.display()))
}

/// A private modules dir holding copies of the given libraries.
fn modules_dir(libs: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (plugin, as_name) in libs {
        let dest = dir
            .path()
            .join(format!("lib{as_name}{}", std::env::consts::DLL_SUFFIX));
        std::fs::copy(library(plugin), &dest).expect("copy library");
    }
    dir
}

fn load(plugin: &str) -> dp3_plugin_api::ModuleInstance {
    let dir = modules_dir(&[(plugin, plugin)]);
    let path = dir
        .path()
        .join(format!("lib{plugin}{}", std::env::consts::DLL_SUFFIX));
    let mut opts = LoadOptions::new(Arc::new(TracingServices::default()));
    opts.check_permissions = false;
    load_library(&path, &opts).expect("library loads").instance
}

fn registry(
    model: Arc<ModelSpec>,
    modules: Vec<(String, Vec<dp3_plugin_api::Registration>)>,
) -> HookRegistry {
    let mut b = HookRegistryBuilder::new(model, RegistrySettings::default());
    for (name, regs) in modules {
        let errors = b.add_module(&name, regs);
        assert!(errors.is_empty(), "{errors:?}");
    }
    b.build().0
}

fn link(eid: i64) -> Bson {
    Bson::Document(doc! {"eid": eid})
}

fn entity(values: Document) -> SnapshotEntity {
    SnapshotEntity {
        values,
        master: Document::new(),
    }
}

#[test]
fn test_module_from_its_library_behaves_like_dp3s() {
    let m = load("test_module");
    let reg = registry(
        test_model(),
        vec![(m.name.clone(), m.registrar.into_registrations())],
    );
    // the force hooks (5, 6) come before the copy hooks reading what they change
    let order = reg.correlation_order();
    let pos = |n: &str| order.iter().position(|h| h.starts_with(n)).expect(n);
    assert!(pos("test_module.modify_c") < pos("test_module.copy_cs_data2"));
    assert!(pos("test_module.modify_d") < pos("test_module.copy_ds_data1"));
    let used: Vec<_> = reg
        .used_links()
        .iter()
        .map(|(e, a)| format!("{e}.{a}"))
        .collect();
    assert_eq!(used, ["A.bs", "B.as", "C.ds", "D.cs"]);

    // C <-> D linked both ways (test_hook_dependency_value_forwarding)
    let mut unit = SnapshotUnit::default();
    unit.entities.insert(
        ("C".into(), Eid::Int(1)),
        entity(doc! {"eid": 1, "ds": link(2), "data1": "c1", "data2": "c2"}),
    );
    unit.entities.insert(
        ("D".into(), Eid::Int(2)),
        entity(doc! {"eid": 2, "cs": link(1), "data1": "d1", "data2": "d2"}),
    );
    let tasks = reg.run_correlation_hooks(&mut unit);
    assert!(tasks.is_empty());
    for key in [
        ("C".to_string(), Eid::Int(1)),
        ("D".to_string(), Eid::Int(2)),
    ] {
        let v = &unit.entities[&key].values;
        assert_eq!(v.get_str("data1").unwrap(), "modifd", "{key:?}: {v}");
        assert_eq!(v.get_str("data2").unwrap(), "modifc", "{key:?}: {v}");
        // record keys are stripped from what is saved
        let l = v
            .get_document(if key.0 == "C" { "ds" } else { "cs" })
            .unwrap();
        assert!(!l.contains_key("record"), "{v}");
    }

    // B -> A without a back link, plus the master-record hook on A
    let mut unit = SnapshotUnit::default();
    unit.entities.insert(("A".into(), Eid::Int(1)), SnapshotEntity {
        values: doc! {"eid": 1, "data2": "a2"},
        master: doc! {"_id": 1, "data3": {"v": "master_x", "ts_last_update": bson::DateTime::now()}},
    });
    unit.entities.insert(
        ("B".into(), Eid::Int(7)),
        entity(doc! {"eid": 7, "as": link(1)}),
    );
    reg.run_correlation_hooks(&mut unit);
    let a = &unit.entities[&("A".to_string(), Eid::Int(1))].values;
    assert_eq!(a.get_str("data4").unwrap(), "master_x_from_master");
    assert_eq!(
        a.get("data1"),
        Some(&Bson::Null),
        "A has no bs link: copy writes null"
    );
    let b = &unit.entities[&("B".to_string(), Eid::Int(7))].values;
    assert_eq!(b.get_str("data2").unwrap(), "a2");
    let stats = reg.stats().snapshot();
    let corr: u64 = stats
        .iter()
        .filter(|(id, _)| id.family == "snapshot_correlation")
        .map(|(_, s)| s.executions)
        .sum();
    assert!(corr >= 6, "{stats:?}");
}

fn open_ports_dp(port: i32) -> DataPoint {
    // times cross the module boundary with microsecond precision
    let t1 = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
    DataPoint {
        etype: "ip".into(),
        eid: Eid::Ipv4("192.0.2.1".parse().unwrap()),
        attr: "open_ports".into(),
        src: Some("scan".into()),
        v: Bson::Int32(port),
        c: 0.5,
        t1: Some(t1),
        t2: Some(t1),
    }
}

#[test]
fn example_modules_load_and_dispatch_across_the_boundary() {
    let model = example_model();
    let mut modules = Vec::new();
    for plugin in [
        "derive_category",
        "first_seen",
        "subnet_hostname",
        "device_label",
        "label_rules",
    ] {
        let m = load(plugin);
        modules.push((m.name.clone(), m.registrar.into_registrations()));
    }
    let reg = Arc::new(registry(Arc::clone(&model), modules));
    let dp = open_ports_dp(22);
    let eid = dp.eid.clone();
    // derive_category with its default config maps everything to "unknown"
    let out = reg.on_new_attr("ip", "open_ports", &eid, &dp);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].data_points[0].attr, "category");
    assert_eq!(out[0].data_points[0].v, Bson::String("unknown".into()));
    assert_eq!(out[0].data_points[0].t1, dp.t1);
    // first_seen on creation
    let task = DataPointTask {
        etype: "ip".into(),
        eid: eid.clone(),
        data_points: vec![dp.clone()],
        ..Default::default()
    };
    assert!(reg.allow_entity_creation("ip", &eid, &task));
    let created = reg.on_entity_creation("ip", &eid, &task);
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].data_points[0].attr, "first_seen");
    // correlation across ip.subnet with a linked subnet record
    let mut unit = SnapshotUnit::default();
    unit.entities.insert(
        ("ip".into(), eid.clone()),
        entity(doc! {"eid": eid.to_bson(), "subnet": {"eid": "net1"}}),
    );
    unit.entities.insert(
        ("subnet".into(), Eid::String("net1".into())),
        entity(doc! {"eid": "net1", "description": "lab"}),
    );
    reg.run_correlation_hooks(&mut unit);
    assert_eq!(
        unit.entities[&("ip".to_string(), eid.clone())]
            .values
            .get_str("hostname")
            .unwrap(),
        "lab"
    );
    // periodic hooks
    let threads = reg.updater_threads();
    assert_eq!(threads.len(), 2, "{threads:?}");
    let mac = Eid::Mac("aa:bb:cc:dd:ee:ff".parse().unwrap());
    let out = reg.run_periodic_update(
        Duration::from_secs(3600),
        "device",
        &mac,
        &doc! {"vendor": {"v": "ACME"}},
    );
    assert_eq!(out[0].data_points[0].v, Bson::String("ACME".into()));
    // scheduler jobs: cron + once, validated
    let jobs = reg.scheduler_jobs();
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        jobs[0]
            .schedule
            .as_ref()
            .and_then(|s| s.minute.clone())
            .as_deref(),
        Some("*/10")
    );
    assert!(jobs[1].schedule.is_none());
    assert!((jobs[0].run)().is_empty());
    let s = reg.stats().snapshot();
    let derive = s
        .iter()
        .find(|(id, _)| id.module == "derive_category")
        .unwrap()
        .1;
    assert_eq!(
        (derive.executions, derive.created_tasks, derive.failures),
        (1, 1, 0)
    );
}

#[test]
fn a_module_that_always_panics_is_counted_and_disabled() {
    let m = load("panicky");
    let mut b = HookRegistryBuilder::new(
        example_model(),
        RegistrySettings {
            update_batch_period: None,
            breaker: BreakerSettings {
                max_panics: 5,
                window: Duration::from_secs(60),
            },
        },
    );
    assert!(
        b.add_module("panicky", m.registrar.into_registrations())
            .is_empty()
    );
    let reg = b.build().0;
    let eid = Eid::Ipv4("192.0.2.9".parse().unwrap());
    let mut dp = open_ports_dp(1);
    dp.attr = "hostname".into();
    dp.v = Bson::String("h".into());
    dp.t1 = None;
    dp.t2 = None;
    let task = DataPointTask {
        etype: "ip".into(),
        eid: eid.clone(),
        data_points: vec![dp.clone()],
        ..Default::default()
    };
    reg.on_task_start(&task); // 1
    assert!(
        reg.allow_entity_creation("ip", &eid, &task),
        "a panicking admission hook allows"
    ); // 2
    assert!(reg.on_entity_creation("ip", &eid, &task).is_empty()); // 3
    assert!(reg.on_new_attr("ip", "hostname", &eid, &dp).is_empty()); // 4
    assert!(reg.disabled_modules().is_empty());
    let mut unit = SnapshotUnit::default();
    unit.entities.insert(
        ("ip".into(), eid.clone()),
        entity(doc! {"eid": eid.to_bson()}),
    );
    reg.run_correlation_hooks(&mut unit); // 5: trips the breaker
    assert_eq!(reg.disabled_modules(), ["panicky"]);
    let stats = reg.stats().snapshot();
    assert_eq!(stats.iter().map(|(_, s)| s.panics).sum::<u64>(), 5);
    assert_eq!(stats.iter().map(|(_, s)| s.failures).sum::<u64>(), 5);
    assert_eq!(reg.stats().module_errors.load(Ordering::Relaxed), 5);
    // disabled: hooks are skipped, nothing more is counted, processing goes on
    reg.on_new_attr("ip", "hostname", &eid, &dp);
    assert_eq!(
        reg.stats()
            .snapshot()
            .iter()
            .map(|(_, s)| s.executions)
            .sum::<u64>(),
        5
    );
}

fn counting(
    n: &Arc<AtomicUsize>,
) -> impl Fn(&str, &mut Document) -> dp3_plugin_api::hooks::Tasks + Send + Sync + 'static {
    let n = Arc::clone(n);
    move |_, _| {
        n.fetch_add(1, Ordering::Relaxed);
        Ok(vec![])
    }
}

#[test]
fn registrations_are_validated_one_by_one() {
    let n = Arc::new(AtomicUsize::new(0));
    let mut r = Registrar::new("m");
    r.on_new_attr("bad_attr", "A", "nope", Refresh::Never, |_, _| Ok(vec![]));
    r.correlation(
        "h1",
        "A",
        paths(&[&["data1"]]),
        paths(&[&["data2"]]),
        counting(&n),
    );
    r.correlation(
        "cyclic",
        "A",
        paths(&[&["data2"]]),
        paths(&[&["data1"]]),
        counting(&n),
    );
    r.correlation(
        "bad_path",
        "A",
        paths(&[&["data1", "x"]]),
        vec![],
        counting(&n),
    );
    r.correlation(
        "h3",
        "A",
        paths(&[&["data2"]]),
        paths(&[&["data3"]]),
        counting(&n),
    );
    r.correlation(
        "h1",
        "A",
        paths(&[&["data1"]]),
        paths(&[&["data2"]]),
        counting(&n),
    );
    r.timeseries("not_ts", "A", "data1", |_, _, _| Ok(vec![]));
    r.periodic_eid_update("p", "A", Duration::from_secs(60), |_, _| Ok(vec![]));
    r.periodic_eid_update("p", "A", Duration::from_secs(600), |_, _| Ok(vec![]));
    r.periodic_eid_update("p", "A", Duration::from_secs(600), |_, _| Ok(vec![]));
    r.on_entity_creation(
        "refresh_no_paths",
        "A",
        Refresh::OnConfigChange { may_change: vec![] },
        |_, _| Ok(vec![]),
    );
    r.allow_entity_creation("unknown_entity", "Z", |_, _| Ok(true));
    r.scheduler_register(
        "bad_cron",
        dp3_plugin_api::CronSchedule::new().minute("not-a-minute"),
        || Ok(vec![]),
    );
    let mut b = HookRegistryBuilder::new(
        test_model(),
        RegistrySettings {
            update_batch_period: Some(Duration::from_secs(300)),
            ..Default::default()
        },
    );
    let errors = b.add_module("m", r.into_registrations());
    let rejected: Vec<(&str, &str)> = errors
        .iter()
        .map(|e| (e.name.as_str(), e.reason.as_str()))
        .collect();
    let names: Vec<&str> = rejected.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "bad_attr",
            "cyclic",
            "bad_path",
            "h1",
            "not_ts",
            "p",
            "p",
            "refresh_no_paths",
            "unknown_entity",
            "bad_cron"
        ],
        "{rejected:#?}"
    );
    assert!(
        rejected[1].1.contains("circular dependency") && rejected[1].1.contains("A.data1"),
        "{}",
        rejected[1].1
    );
    assert!(
        rejected[2]
            .1
            .contains("Invalid path 'A->data1->x', failed on 'x'"),
        "{}",
        rejected[2].1
    );
    assert!(rejected[3].1.contains("already present"));
    assert!(rejected[5].1.contains("update_batch_period"));
    assert!(rejected[6].1.contains("already registered"));
    let reg = b.build().0;
    // the cycle did not poison later registrations: h1 and h3 are both live, in order
    let order = reg.correlation_order();
    assert_eq!(order.len(), 2, "{order:?}");
    assert!(order[0].starts_with("m.h1(") && order[1].starts_with("m.h3("));
    assert_eq!(reg.updater_threads().len(), 1);
}

#[test]
fn refresh_wrappers_run_while_the_flag_is_set() {
    let mut r = Registrar::new("m");
    r.on_new_attr(
        "derive",
        "A",
        "data1",
        Refresh::OnConfigChange {
            may_change: paths(&[&["data2"]]),
        },
        |eid, dp| {
            assert_eq!(dp.v, Bson::Null, "refresh passes a synthetic datapoint");
            Ok(vec![DataPointTask {
                etype: "A".into(),
                eid: eid.clone(),
                data_points: vec![DataPoint {
                    etype: "A".into(),
                    eid: eid.clone(),
                    attr: "data2".into(),
                    src: None,
                    v: Bson::String("refreshed".into()),
                    c: 1.0,
                    t1: None,
                    t2: None,
                }],
                ..Default::default()
            }])
        },
    );
    r.on_entity_creation(
        "init",
        "A",
        Refresh::OnConfigChange {
            may_change: paths(&[&["data2"]]),
        },
        |_, t| {
            assert!(t.data_points.is_empty());
            Ok(vec![])
        },
    );
    let reg = registry(test_model(), vec![("m".into(), r.into_registrations())]);
    assert_eq!(
        reg.correlation_order().len(),
        2,
        "distinct identities for two refresh wrappers"
    );
    let mut unit = SnapshotUnit::default();
    unit.entities
        .insert(("A".into(), Eid::Int(3)), entity(doc! {"eid": 3}));
    assert!(
        reg.run_correlation_hooks(&mut unit).is_empty(),
        "flag not set: no-op"
    );
    assert!(reg.set_refresh("m"));
    let out = reg.run_correlation_hooks(&mut unit);
    assert_eq!(out.len(), 1);
    assert_eq!(
        unit.entities[&("A".to_string(), Eid::Int(3))]
            .values
            .get_str("data2")
            .unwrap(),
        "refreshed"
    );
    reg.snapshot_finalize();
    assert!(!reg.refresh_pending("m"));
}

#[test]
fn invalid_output_tasks_are_dropped_and_counted() {
    let mut r = Registrar::new("m");
    r.on_new_attr("bad_out", "A", "data1", Refresh::Never, |eid, _| {
        Ok(vec![DataPointTask {
            etype: "A".into(),
            eid: eid.clone(),
            ..Default::default()
        }])
    });
    let reg = registry(test_model(), vec![("m".into(), r.into_registrations())]);
    let dp = DataPoint {
        etype: "A".into(),
        eid: Eid::Int(1),
        attr: "data1".into(),
        src: None,
        v: Bson::String("x".into()),
        c: 1.0,
        t1: None,
        t2: None,
    };
    assert!(reg.on_new_attr("A", "data1", &Eid::Int(1), &dp).is_empty());
    let s = reg.stats().snapshot();
    assert_eq!(s[0].1.invalid_tasks, 1);
}

#[test]
fn hot_reload_swaps_generations_and_survives_broken_builds() {
    let modules = modules_dir(&[("derive_category", "derive_category")]);
    let state = tempfile::tempdir().unwrap();
    let config = repo().join("config");
    let source = ModuleSource {
        modules_dir: modules.path().to_owned(),
        enabled_modules: vec!["derive_category".into()],
        config_dir: config.clone(),
        state_dir: state.path().to_owned(),
        platform: PlatformConfig {
            config_dir: config,
            ..Default::default()
        },
        services: Arc::new(TracingServices::default()),
        check_permissions: false,
        max_generations: 8,
    };
    let loader = Arc::new(ModuleLoader::new(
        example_model(),
        RegistrySettings::default(),
        source,
    ));
    loader.load_all().expect("loads");
    let old = loader.live().load();
    let dp = open_ports_dp(22);
    // config/modules/derive_category.yml maps port 22 to "server"
    let out = old.on_new_attr("ip", "open_ports", &dp.eid, &dp);
    assert_eq!(out[0].data_points[0].v, Bson::String("server".into()));
    let cached: Vec<_> = std::fs::read_dir(state.path().join("plugin-cache"))
        .unwrap()
        .collect();
    assert_eq!(cached.len(), 1);

    // unchanged content: nothing happens
    assert!(!loader.reload_module("derive_category").unwrap());
    // a broken build: refused, the old generation keeps running
    let lib = modules.path().join(format!(
        "libderive_category{}",
        std::env::consts::DLL_SUFFIX
    ));
    std::fs::write(&lib, b"definitely not an ELF file").unwrap();
    let e = loader.reload_module("derive_category").unwrap_err();
    assert!(e.reason.contains("cannot load module library"), "{e}");
    assert!(Arc::ptr_eq(&old, &loader.live().load()));
    // a new (different) build: swapped in as a new generation
    std::fs::copy(library("first_seen"), &lib).unwrap();
    assert!(loader.reload_module("derive_category").unwrap());
    let new = loader.live().load();
    assert!(!Arc::ptr_eq(&old, &new));
    assert!(!new.has_attr_hooks("ip", "open_ports"));
    // in-flight work holding the old generation still dispatches to it
    assert_eq!(old.on_new_attr("ip", "open_ports", &dp.eid, &dp).len(), 1);
    // the broken build never loaded: two generations
    assert_eq!(loader.generations()["derive_category"], 2);
    // config refresh sets the module's refresh flag
    loader.refresh_config("derive_category").unwrap();
    assert!(loader.live().load().refresh_pending("derive_category"));
}

#[test]
fn the_watcher_reloads_module_configuration() {
    let modules = modules_dir(&[("derive_category", "derive_category")]);
    let state = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    std::fs::create_dir(config.path().join("modules")).unwrap();
    let yml = config.path().join("modules/derive_category.yml");
    std::fs::write(&yml, "rules: {server: [22]}\n").unwrap();
    let source = ModuleSource {
        modules_dir: modules.path().to_owned(),
        enabled_modules: vec!["derive_category".into()],
        config_dir: config.path().to_owned(),
        state_dir: state.path().to_owned(),
        platform: PlatformConfig::default(),
        services: Arc::new(TracingServices::default()),
        check_permissions: false,
        max_generations: 8,
    };
    let loader = Arc::new(ModuleLoader::new(
        example_model(),
        RegistrySettings::default(),
        source,
    ));
    loader.load_all().expect("loads");
    let _watcher = loader.watch(Duration::from_millis(200)).expect("watcher");
    let dp = open_ports_dp(22);
    let first = loader
        .live()
        .load()
        .on_new_attr("ip", "open_ports", &dp.eid, &dp);
    assert_eq!(first.len(), 1, "{:?}", loader.stats().snapshot());
    let category = |l: &ModuleLoader| {
        let out = l
            .live()
            .load()
            .on_new_attr("ip", "open_ports", &dp.eid, &dp);
        assert_eq!(out.len(), 1, "{:?}", l.stats().snapshot());
        out[0].data_points[0].v.clone()
    };
    assert_eq!(category(&loader), Bson::String("server".into()));
    std::fs::write(&yml, "rules: {router: [22]}\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while category(&loader) != Bson::String("router".into()) {
        assert!(
            std::time::Instant::now() < deadline,
            "configuration change not picked up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(loader.live().load().refresh_pending("derive_category"));
}
