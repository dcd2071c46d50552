//! Loader tests: reading rules, one error case (at least) per configuration key, the entity
//! model rules, DP3's own test configuration and our example configuration.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::TimeDelta;

use super::*;
use crate::cron::CronField;
use crate::datatype::{DataType, Primitive};
use crate::eid::EidType;
use crate::spec::{AttrKind, Lifetime, TimeseriesType};

const MINIMAL: &[(&str, &str)] = &[
    (
        "processing_core.yml",
        "worker_processes: 1\nmodules_dir: modules\nenabled_modules: []\n",
    ),
    (
        "history_manager.yml",
        "aggregation_schedule: {minute: \"*/10\"}\ndatapoint_cleaning_schedule: {minute: \"*/30\"}\n\
         snapshot_cleaning: {schedule: {minute: \"15,45\"}, older_than: 7d}\n\
         datapoint_archivation: {schedule: {hour: 2, minute: 0}, older_than: 7d}\n",
    ),
    ("control.yml", "allowed_actions: []\n"),
    (
        "updater.yml",
        "update_batch_cron: {minute: \"*/5\", second: \"0\"}\nupdate_batch_period: 5m\n",
    ),
    (
        "db_entities/device.yml",
        "entity: {id: device, name: Device, snapshot: true}\nattribs:\n  hostname: {name: Hostname, type: plain, data_type: string}\n",
    ),
];

/// Write the minimal configuration plus `files` (replacing same-named ones; content `None`
/// deletes the file) into a fresh directory.
fn write_dir(files: &[(&str, Option<&str>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(dir.path().join("modules")).expect("modules dir");
    fs::create_dir_all(dir.path().join("db_entities")).expect("db_entities dir");
    for (rel, content) in MINIMAL {
        if files.iter().any(|(r, _)| r == rel) {
            continue;
        }
        write(dir.path(), rel, content);
    }
    for (rel, content) in files {
        if let Some(c) = content {
            write(dir.path(), rel, c);
        }
    }
    dir
}

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("parent dir");
    }
    fs::write(path, content).expect("write file");
}

fn load(files: &[(&str, Option<&str>)]) -> Result<Config, ConfigErrors> {
    let dir = write_dir(files);
    load_config_dir(dir.path())
}

fn load_ok(files: &[(&str, Option<&str>)]) -> Config {
    match load(files) {
        Ok(c) => c,
        Err(e) => panic!("expected the configuration to load, got:\n{e}"),
    }
}

/// Assert loading fails with an error at `file`/`path` whose text contains `needle`.
fn assert_error(files: &[(&str, Option<&str>)], file: &str, path: &str, needle: &str) {
    let errors = match load(files) {
        Ok(_) => panic!("expected an error at {file}: {path} ({needle}), but it loaded"),
        Err(e) => e,
    };
    assert!(
        errors
            .iter()
            .any(|e| e.file == file && e.path == path && e.to_string().contains(needle)),
        "expected an error at {file}: {path} containing {needle:?}; got:\n{errors}"
    );
}

fn entity(attribs: &str) -> String {
    format!("entity: {{id: device, name: Device, snapshot: true}}\nattribs:\n{attribs}")
}

#[test]
fn minimal_configuration_loads_with_defaults() {
    let c = load_ok(&[]);
    assert_eq!(c.database, DatabaseConfig::default());
    assert_eq!(c.database.backend, DatabaseBackend::Sqlite);
    assert_eq!(c.processing_core.worker_threads, 8);
    assert_eq!(c.processing_core.max_inline_generated_tasks, 0);
    assert_eq!(c.processing_core.msg_broker, MsgBrokerConfig::default());
    assert!(c.processing_core.modules_dir.is_absolute());
    assert!(c.processing_core.modules_dir.ends_with("modules"));
    assert_eq!(
        c.snapshots.creation_rate.minute,
        Some(CronField::Expr("*/30".into()))
    );
    assert!(c.snapshots.keep_empty);
    assert_eq!(c.snapshots.creation_interval(), TimeDelta::minutes(30));
    assert_eq!(
        c.garbage_collector.collection_rate.hour,
        Some(CronField::Value(3))
    );
    assert_eq!(
        c.telemetry.attribute_bson_size_schedule.minute,
        Some(CronField::Value(15))
    );
    assert_eq!(c.updater.cache_max_entries, 32);
    assert_eq!(c.updater.update_batch_period, TimeDelta::minutes(5));
    assert_eq!(c.api.cors.allow_origins, vec!["*".to_owned()]);
    assert_eq!(c.api.datapoint_logger, DatapointLoggerConfig::default());
    assert!(c.modules.is_empty());
    assert_eq!(c.module_config("nope"), serde_json::json!({}));
    assert!(
        c.history_manager
            .datapoint_archivation
            .archive_dir
            .is_none()
    );
    let device = c.model.entity("device").expect("device");
    assert_eq!(device.spec.id_data_type, EidType::String);
    assert_eq!(device.spec.lifetime, Lifetime::Immortal);
}

// ---------------------------------------------------------------------------------------
// Reading rules

#[test]
fn yaml_extension_is_ignored_with_a_warning() {
    let dir = write_dir(&[("snapshots.yaml", Some("creation_rate: {minute: \"*/5\"}\n"))]);
    let c = load_config_dir(dir.path()).expect("loads");
    assert_eq!(
        c.snapshots,
        SnapshotsConfig::default(),
        ".yaml must not be read"
    );
    assert!(
        c.warnings.iter().any(|w| w.contains("snapshots.yaml")),
        "{:?}",
        c.warnings
    );
    assert_eq!(
        ignored_yaml_files(dir.path()),
        vec!["snapshots.yaml".to_owned()]
    );
    // A required file present only as .yaml is missing.
    assert_error(
        &[
            ("control.yml", None),
            ("control.yaml", Some("allowed_actions: []\n")),
        ],
        "control.yml",
        "",
        "missing required file",
    );
}

#[test]
fn empty_file_counts_as_absent() {
    let c = load_ok(&[("snapshots.yml", Some("# only a comment\n"))]);
    assert_eq!(c.snapshots, SnapshotsConfig::default());
    assert_error(
        &[("control.yml", Some(""))],
        "control.yml",
        "",
        "missing required file",
    );
    // An empty entity file is not an entity type.
    let c = load_ok(&[("db_entities/empty.yml", Some(""))]);
    assert!(c.model.entity("empty").is_none());
}

#[test]
fn top_level_must_be_a_mapping() {
    assert_error(
        &[("control.yml", Some("- make_snapshots\n"))],
        "control.yml",
        "",
        "must be a mapping",
    );
    assert_error(
        &[("database.yml", Some("just a string\n"))],
        "database.yml",
        "",
        "must be a mapping",
    );
}

#[test]
fn invalid_yaml_names_the_file() {
    assert_error(
        &[("control.yml", Some("allowed_actions: [\n"))],
        "control.yml",
        "",
        "invalid YAML",
    );
}

#[test]
fn sub_directories_become_nested_maps() {
    let c = load_ok(&[
        ("modules/first_seen.yml", Some("keep: 5\nnames: [a, b]\n")),
        ("modules/nested/inner.yml", Some("x: 1\n")),
        ("modules/empty.yml", Some("")),
    ]);
    assert_eq!(
        c.module_config("first_seen"),
        serde_json::json!({"keep": 5, "names": ["a", "b"]})
    );
    assert_eq!(
        c.module_config("nested"),
        serde_json::json!({"inner": {"x": 1}})
    );
    assert_eq!(c.module_config("empty"), serde_json::json!({}));
}

#[test]
fn file_and_directory_of_the_same_name_conflict() {
    assert_error(
        &[
            ("modules/a.yml", Some("x: 1\n")),
            ("modules/a/b.yml", Some("y: 2\n")),
        ],
        "modules/a",
        "",
        "keep only one",
    );
}

#[test]
fn sub_directory_in_db_entities_is_an_error() {
    assert_error(
        &[(
            "db_entities/more/x.yml",
            Some("entity: {id: x, name: X, snapshot: true}\nattribs: {}\n"),
        )],
        "db_entities/more/",
        "",
        "sub-directories are not allowed",
    );
}

#[test]
fn known_names_with_the_wrong_kind() {
    assert_error(
        &[("db_entities.yml", Some("a: 1\n"))],
        "db_entities.yml",
        "",
        "must be a directory",
    );
    assert_error(
        &[("snapshots/x.yml", Some("a: 1\n"))],
        "snapshots/",
        "",
        "must be a file",
    );
}

#[test]
fn unknown_top_level_file_is_a_warning_with_suggestion() {
    let c = load_ok(&[("snapshot.yml", Some("keep_empty: false\n"))]);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("snapshot.yml") && w.contains("snapshots.yml")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn required_files_and_directories() {
    for name in ["processing_core", "history_manager", "control", "updater"] {
        let rel = format!("{name}.yml");
        assert_error(&[(rel.as_str(), None)], &rel, "", "missing required file");
    }
    let dir = write_dir(&[("db_entities/device.yml", None)]);
    fs::remove_dir(dir.path().join("db_entities")).expect("rmdir");
    let e = load_config_dir(dir.path()).expect_err("no db_entities");
    assert!(e.iter().any(|e| e.file == "db_entities/"), "{e}");
    // Optional files may be absent.
    load_ok(&[("db_entities/device.yml", None)]);
}

#[test]
fn missing_configuration_directory() {
    let e = load_config_dir(Path::new("/nonexistent/dp3/config")).expect_err("missing dir");
    assert!(
        e.to_string()
            .contains("cannot open the configuration directory"),
        "{e}"
    );
}

#[test]
fn entity_order_is_directory_listing_order() {
    let mut files: Vec<(String, String)> = Vec::new();
    for name in ["zeta", "alpha", "mid", "beta", "omega", "gamma"] {
        files.push((
            format!("db_entities/{name}.yml"),
            format!("entity: {{id: {name}, name: {name}, snapshot: false}}\nattribs: {{}}\n"),
        ));
    }
    let refs: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(r, c)| (r.as_str(), Some(c.as_str())))
        .collect();
    let dir = write_dir(&refs);
    let c = load_config_dir(dir.path()).expect("loads");
    let listing: Vec<String> = fs::read_dir(dir.path().join("db_entities"))
        .expect("list")
        .map(|e| {
            e.expect("entry")
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".yml")
                .to_owned()
        })
        .collect();
    let loaded: Vec<String> = c.model.entities.keys().cloned().collect();
    assert_eq!(loaded, listing);
}

#[test]
fn attribute_order_is_yaml_order() {
    let c = load_ok(&[(
        "db_entities/device.yml",
        Some(&entity(
            "  zz: {name: Z, type: plain, data_type: int}\n  aa: {name: A, type: plain, data_type: int}\n  mm: {name: M, type: plain, data_type: int}\n",
        )),
    )]);
    let ids: Vec<&String> = c
        .model
        .entity("device")
        .expect("device")
        .attribs
        .keys()
        .collect();
    assert_eq!(ids, ["zz", "aa", "mm"]);
}

#[test]
fn all_errors_are_reported_not_only_the_first() {
    let e = load(&[
        ("control.yml", Some("allowed_actions: [nope]\n")),
        ("snapshots.yml", Some("keep_emtpy: true\n")),
        ("db_entities/device.yml", Some(&entity(
            "  a: {name: A, type: plain, data_type: strng}\n  b: {name: B, type: observations, data_type: int, history_params: {max_agee: 7d}}\n",
        ))),
    ])
    .expect_err("errors");
    assert!(e.len() >= 4, "{e}");
    let text = e.to_string();
    for needle in [
        "control.yml",
        "snapshots.yml: keep_emtpy",
        "attribs.a.data_type",
        "attribs.b.history_params.max_agee",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    assert_eq!(text.lines().count(), e.len(), "one error per line");
}

#[test]
fn error_display_has_file_path_value_expectation_and_suggestion() {
    let e = load(&[(
        "db_entities/device.yml",
        Some(&entity(
            "  p: {name: P, type: observations, data_type: int, history_params: {max_age: 7x}}\n",
        )),
    )])
    .expect_err("bad duration");
    let text = e.to_string();
    assert!(
        text.starts_with("db_entities/device.yml: attribs.p.history_params.max_age: invalid duration \"7x\" — expected "),
        "{text}"
    );
    let e =
        load(&[("snapshots.yml", Some("creation_rat: {minute: \"*/5\"}\n"))]).expect_err("typo");
    assert!(
        e.to_string().contains("(did you mean \"creation_rate\"?)"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// One error case per key of every file

/// (file, content, error path, needle)
const SECTION_CASES: &[(&str, &str, &str, &str)] = &[
    // database.yml
    (
        "database.yml",
        "backend: postgres\n",
        "backend",
        "unknown backend",
    ),
    (
        "database.yml",
        "db_name: 5\n",
        "db_name",
        "expected a string",
    ),
    (
        "database.yml",
        "username: [a]\n",
        "username",
        "expected a string",
    ),
    (
        "database.yml",
        "password: 1234\n",
        "password",
        "expected a string",
    ),
    (
        "database.yml",
        "dbname: x\n",
        "dbname",
        "did you mean \"db_name\"",
    ),
    (
        "database.yml",
        "backend: mongodb\n",
        "connection",
        "missing required key",
    ),
    (
        "database.yml",
        "connection: {mode: cluster}\n",
        "connection.mode",
        "unknown mode",
    ),
    (
        "database.yml",
        "connection: {}\n",
        "connection.mode",
        "missing required key",
    ),
    (
        "database.yml",
        "connection: {mode: standalone, hosts: []}\n",
        "connection.hosts",
        "unknown key",
    ),
    (
        "database.yml",
        "connection: {mode: standalone, host: {address: 1}}\n",
        "connection.host.address",
        "expected a string",
    ),
    (
        "database.yml",
        "connection: {mode: standalone, host: {port: x}}\n",
        "connection.host.port",
        "expected an integer",
    ),
    (
        "database.yml",
        "connection: {mode: standalone, host: {adress: x}}\n",
        "connection.host.adress",
        "did you mean \"address\"",
    ),
    (
        "database.yml",
        "connection: {mode: replica}\n",
        "connection.hosts",
        "missing required key",
    ),
    (
        "database.yml",
        "connection: {mode: replica, hosts: []}\n",
        "connection.hosts",
        "empty host list",
    ),
    (
        "database.yml",
        "connection: {mode: replica, replica_set: 1, hosts: [{}]}\n",
        "connection.replica_set",
        "expected a string",
    ),
    (
        "database.yml",
        "connection: {mode: replica, hosts: [{port: 70000}]}\n",
        "connection.hosts[0].port",
        "out of range",
    ),
    (
        "database.yml",
        "storage: {snapshot_bucket_size: 1}\n",
        "storage.snapshot_bucket_size",
        "out of range",
    ),
    (
        "database.yml",
        "storage: {bucket_size: 8}\n",
        "storage.bucket_size",
        "did you mean \"snapshot_bucket_size\"",
    ),
    (
        "database.yml",
        "sqlite: {path: 5}\n",
        "sqlite.path",
        "expected a string",
    ),
    (
        "database.yml",
        "sqlite: {file: x}\n",
        "sqlite.file",
        "unknown key",
    ),
    // processing_core.yml
    (
        "processing_core.yml",
        "worker_processes: 1\nmodules_dir: modules\nenabled_modules: []\nmsg_broker: {host: 1}\n",
        "msg_broker.host",
        "expected a string",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nmodules_dir: modules\nenabled_modules: []\nmsg_broker: {port: x}\n",
        "msg_broker.port",
        "expected an integer",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nmodules_dir: modules\nenabled_modules: []\nmsg_broker: {virtual_host: 1}\n",
        "msg_broker.virtual_host",
        "expected a string",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nmodules_dir: modules\nenabled_modules: []\nmsg_broker: {username: 1}\n",
        "msg_broker.username",
        "expected a string",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nmodules_dir: modules\nenabled_modules: []\nmsg_broker: {password: 1}\n",
        "msg_broker.password",
        "expected a string",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nmodules_dir: modules\nenabled_modules: []\nmsg_broker: {management_port: 0}\n",
        "msg_broker.management_port",
        "out of range",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nmodules_dir: modules\nenabled_modules: []\nmsg_broker: {hots: x}\n",
        "msg_broker.hots",
        "did you mean \"host\"",
    ),
    (
        "processing_core.yml",
        "modules_dir: modules\nenabled_modules: []\n",
        "worker_processes",
        "missing required key",
    ),
    (
        "processing_core.yml",
        "worker_processes: 0\nmodules_dir: modules\nenabled_modules: []\n",
        "worker_processes",
        "out of range",
    ),
    (
        "processing_core.yml",
        "worker_processes: true\nmodules_dir: modules\nenabled_modules: []\n",
        "worker_processes",
        "expected an integer",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nworker_threads: 0\nmodules_dir: modules\nenabled_modules: []\n",
        "worker_threads",
        "out of range",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nmax_inline_generated_tasks: -1\nmodules_dir: modules\nenabled_modules: []\n",
        "max_inline_generated_tasks",
        "out of range",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nmax_inline_generated_tasks: true\nmodules_dir: modules\nenabled_modules: []\n",
        "max_inline_generated_tasks",
        "expected an integer",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nenabled_modules: []\n",
        "modules_dir",
        "missing required key",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nmodules_dir: 5\nenabled_modules: []\n",
        "modules_dir",
        "expected a string",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nmodules_dir: modules\n",
        "enabled_modules",
        "missing required key",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nmodules_dir: modules\nenabled_modules: first_seen\n",
        "enabled_modules",
        "expected a list",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nmodules_dir: modules\nenabled_modules: [1]\n",
        "enabled_modules[0]",
        "expected a string",
    ),
    (
        "processing_core.yml",
        "worker_processes: 1\nmodules_dir: modules\nenabled_modules: [a, a]\n",
        "enabled_modules[1]",
        "listed twice",
    ),
    (
        "processing_core.yml",
        "worker_process: 1\nmodules_dir: modules\nenabled_modules: []\n",
        "worker_process",
        "did you mean \"worker_processes\"",
    ),
    // history_manager.yml
    (
        "history_manager.yml",
        "datapoint_cleaning_schedule: {minute: 1}\nsnapshot_cleaning: {schedule: {minute: 1}, older_than: 1d}\ndatapoint_archivation: {schedule: {minute: 1}, older_than: 1d}\n",
        "aggregation_schedule",
        "missing required key",
    ),
    (
        "history_manager.yml",
        "aggregation_schedule: {minute: 75}\ndatapoint_cleaning_schedule: {minute: 1}\nsnapshot_cleaning: {schedule: {minute: 1}, older_than: 1d}\ndatapoint_archivation: {schedule: {minute: 1}, older_than: 1d}\n",
        "aggregation_schedule.minute",
        "out of range",
    ),
    (
        "history_manager.yml",
        "aggregation_schedule: {minute: 1}\ndatapoint_cleaning_schedule: {minutes: 1}\nsnapshot_cleaning: {schedule: {minute: 1}, older_than: 1d}\ndatapoint_archivation: {schedule: {minute: 1}, older_than: 1d}\n",
        "datapoint_cleaning_schedule.minutes",
        "did you mean \"minute\"",
    ),
    (
        "history_manager.yml",
        "aggregation_schedule: {minute: 1}\ndatapoint_cleaning_schedule: {minute: 1}\nmark_datapoints_schedule: {x: 1}\nsnapshot_cleaning: {schedule: {minute: 1}, older_than: 1d}\ndatapoint_archivation: {schedule: {minute: 1}, older_than: 1d}\n",
        "mark_datapoints_schedule.x",
        "unknown key",
    ),
    (
        "history_manager.yml",
        "aggregation_schedule: {minute: 1}\ndatapoint_cleaning_schedule: {minute: 1}\nsnapshot_cleaning: {older_than: 1d}\ndatapoint_archivation: {schedule: {minute: 1}, older_than: 1d}\n",
        "snapshot_cleaning.schedule",
        "missing required key",
    ),
    (
        "history_manager.yml",
        "aggregation_schedule: {minute: 1}\ndatapoint_cleaning_schedule: {minute: 1}\nsnapshot_cleaning: {schedule: {minute: 1}, older_than: 7x}\ndatapoint_archivation: {schedule: {minute: 1}, older_than: 1d}\n",
        "snapshot_cleaning.older_than",
        "invalid duration",
    ),
    (
        "history_manager.yml",
        "aggregation_schedule: {minute: 1}\ndatapoint_cleaning_schedule: {minute: 1}\nsnapshot_cleaning: {schedule: {minute: 1}, older_than: 1d, olderthan: 2d}\ndatapoint_archivation: {schedule: {minute: 1}, older_than: 1d}\n",
        "snapshot_cleaning.olderthan",
        "did you mean \"older_than\"",
    ),
    (
        "history_manager.yml",
        "aggregation_schedule: {minute: 1}\ndatapoint_cleaning_schedule: {minute: 1}\nsnapshot_cleaning: {schedule: {minute: 1}, older_than: 1d}\n",
        "datapoint_archivation",
        "missing required key",
    ),
    (
        "history_manager.yml",
        "aggregation_schedule: {minute: 1}\ndatapoint_cleaning_schedule: {minute: 1}\nsnapshot_cleaning: {schedule: {minute: 1}, older_than: 1d}\ndatapoint_archivation: {schedule: {hour: 25}, older_than: 1d}\n",
        "datapoint_archivation.schedule.hour",
        "out of range",
    ),
    (
        "history_manager.yml",
        "aggregation_schedule: {minute: 1}\ndatapoint_cleaning_schedule: {minute: 1}\nsnapshot_cleaning: {schedule: {minute: 1}, older_than: 1d}\ndatapoint_archivation: {schedule: {minute: 1}}\n",
        "datapoint_archivation.older_than",
        "missing required key",
    ),
    (
        "history_manager.yml",
        "aggregation_schedule: {minute: 1}\ndatapoint_cleaning_schedule: {minute: 1}\nsnapshot_cleaning: {schedule: {minute: 1}, older_than: 1d}\ndatapoint_archivation: {schedule: {minute: 1}, older_than: 1d, archive_dir: 5}\n",
        "datapoint_archivation.archive_dir",
        "expected a string",
    ),
    // snapshots.yml
    (
        "snapshots.yml",
        "creation_rate: {minute: \"*/5\", hour: \"1\"}\n",
        "creation_rate",
        "only one snapshot creation rate",
    ),
    (
        "snapshots.yml",
        "creation_rate: {month: 1}\n",
        "creation_rate",
        "unsupported snapshot creation rate",
    ),
    (
        "snapshots.yml",
        "creation_rate: {minute: 30}\n",
        "creation_rate.minute",
        "must be a cron string",
    ),
    (
        "snapshots.yml",
        "creation_rate: {minute: \"*/x\"}\n",
        "creation_rate.minute",
        "invalid cron string",
    ),
    (
        "snapshots.yml",
        "keep_empty: maybe\n",
        "keep_empty",
        "expected a boolean",
    ),
    // garbage_collector.yml / telemetry.yml
    (
        "garbage_collector.yml",
        "collection_rate: {hour: 24}\n",
        "collection_rate.hour",
        "out of range",
    ),
    (
        "garbage_collector.yml",
        "collection_rat: {hour: 2}\n",
        "collection_rat",
        "did you mean \"collection_rate\"",
    ),
    (
        "telemetry.yml",
        "attribute_bson_size_schedule: {day: 0}\n",
        "attribute_bson_size_schedule.day",
        "out of range",
    ),
    (
        "telemetry.yml",
        "schedule: {day: 1}\n",
        "schedule",
        "unknown key",
    ),
    // updater.yml
    (
        "updater.yml",
        "update_batch_period: 5m\n",
        "update_batch_cron",
        "missing required key",
    ),
    (
        "updater.yml",
        "update_batch_cron: {minute: \"*/5\"}\n",
        "update_batch_period",
        "missing required key",
    ),
    (
        "updater.yml",
        "update_batch_cron: {minute: \"*/5\"}\nupdate_batch_period: \"30\"\n",
        "update_batch_period",
        "needs a unit",
    ),
    (
        "updater.yml",
        "update_batch_cron: {minute: \"*/5\"}\nupdate_batch_period: 0s\n",
        "update_batch_period",
        "greater than zero",
    ),
    (
        "updater.yml",
        "update_batch_cron: {minute: \"*/5\"}\nupdate_batch_period: 5m\ncache_management_cron: {month: \"1\"}\n",
        "cache_management_cron.month",
        "not a string",
    ),
    (
        "updater.yml",
        "update_batch_cron: {minute: \"*/5\"}\nupdate_batch_period: 5m\ncache_max_entries: 0\n",
        "cache_max_entries",
        "out of range",
    ),
    (
        "updater.yml",
        "update_batch_cron: {minute: \"*/5\"}\nupdate_batch_period: 5m\ncache_max_entry: 3\n",
        "cache_max_entry",
        "did you mean \"cache_max_entries\"",
    ),
    // control.yml
    (
        "control.yml",
        "{}\n",
        "allowed_actions",
        "missing required key",
    ),
    (
        "control.yml",
        "allowed_actions: [make_snapshot]\n",
        "allowed_actions[0]",
        "did you mean \"make_snapshots\"",
    ),
    (
        "control.yml",
        "allowed_actions: make_snapshots\n",
        "allowed_actions",
        "expected a list",
    ),
    (
        "control.yml",
        "allowed_action: []\n",
        "allowed_action",
        "did you mean \"allowed_actions\"",
    ),
    // event_logging.yml
    (
        "event_logging.yml",
        "redis: {host: 1}\n",
        "redis.host",
        "expected a string",
    ),
    (
        "event_logging.yml",
        "redis: {port: x}\n",
        "redis.port",
        "expected an integer",
    ),
    (
        "event_logging.yml",
        "redis: {db: -1}\n",
        "redis.db",
        "out of range",
    ),
    (
        "event_logging.yml",
        "redis: {hots: x}\n",
        "redis.hots",
        "did you mean \"host\"",
    ),
    (
        "event_logging.yml",
        "groups: [te]\n",
        "groups",
        "expected a mapping",
    ),
    (
        "event_logging.yml",
        "groups: {te: {events: 5}}\n",
        "groups.te.events",
        "expected a list",
    ),
    (
        "event_logging.yml",
        "groups: {te: {auto_declare_events: maybe}}\n",
        "groups.te.auto_declare_events",
        "expected a boolean",
    ),
    (
        "event_logging.yml",
        "groups: {te: {intervals: [\"5x\"]}}\n",
        "groups.te.intervals[0]",
        "invalid duration",
    ),
    (
        "event_logging.yml",
        "groups: {te: {sync_interval: x}}\n",
        "groups.te.sync_interval",
        "expected a number",
    ),
    (
        "event_logging.yml",
        "groups: {te: {sync_limit: x}}\n",
        "groups.te.sync_limit",
        "expected a number",
    ),
    (
        "event_logging.yml",
        "groups: {te: {evnts: []}}\n",
        "groups.te.evnts",
        "did you mean \"events\"",
    ),
    // api.yml
    (
        "api.yml",
        "listen: nope\n",
        "listen",
        "invalid listen address",
    ),
    (
        "api.yml",
        "listen: \"127.0.0.1:99999\"\n",
        "listen",
        "invalid listen address",
    ),
    (
        "api.yml",
        "cors: {allow_origins: \"*\"}\n",
        "cors.allow_origins",
        "expected a list",
    ),
    (
        "api.yml",
        "cors: {origins: []}\n",
        "cors.origins",
        "did you mean \"allow_origins\"",
    ),
    (
        "api.yml",
        "datapoint_logger: {good_log: 5}\n",
        "datapoint_logger.good_log",
        "invalid log file",
    ),
    (
        "api.yml",
        "datapoint_logger: {bad_log: true}\n",
        "datapoint_logger.bad_log",
        "invalid log file",
    ),
    (
        "api.yml",
        "datapoint_logger: {bad: x}\n",
        "datapoint_logger.bad",
        "did you mean \"bad_log\"",
    ),
    (
        "api.yml",
        "datapoint_loger: {}\n",
        "datapoint_loger",
        "did you mean \"datapoint_logger\"",
    ),
    (
        "api.yml",
        "limits: {max_body: 5}\n",
        "limits.max_body",
        "did you mean \"max_body_bytes\"",
    ),
    (
        "api.yml",
        "limits: {max_page_size: 0}\n",
        "limits.max_page_size",
        "out of range",
    ),
    (
        "api.yml",
        "limits: {max_nesting_depth: 1}\n",
        "limits.max_nesting_depth",
        "out of range",
    ),
    (
        "api.yml",
        "auth: {tokens: [{name: a, token: short, scopes: [read]}]}\n",
        "auth.tokens[0].token",
        "token too short",
    ),
    (
        "api.yml",
        "auth: {tokens: [{name: a, token_sha256: abc, scopes: [read]}]}\n",
        "auth.tokens[0].token_sha256",
        "invalid SHA-256",
    ),
    (
        "api.yml",
        "auth: {tokens: [{name: a, token: 0123456789abcdef, scopes: [raed]}]}\n",
        "auth.tokens[0].scopes[0]",
        "did you mean \"read\"",
    ),
    (
        "api.yml",
        "auth: {tokens: [{name: a, scopes: [read]}]}\n",
        "auth.tokens[0]",
        "no secret given",
    ),
    (
        "api.yml",
        "auth: {tokens: [{name: a, token: 0123456789abcdef, scopes: [read]}, {name: a, token: 0123456789abcdeg, scopes: [read]}]}\n",
        "auth.tokens[1].name",
        "duplicate token name",
    ),
    (
        "api.yml",
        "auth: {tokenz: []}\n",
        "auth.tokenz",
        "did you mean \"tokens\"",
    ),
    // cron fields (through garbage_collector.yml)
    (
        "garbage_collector.yml",
        "collection_rate: {second: 60}\n",
        "collection_rate.second",
        "out of range",
    ),
    (
        "garbage_collector.yml",
        "collection_rate: {minute: \"1-5,10\"}\n",
        "collection_rate.minute",
        "invalid cron string",
    ),
    (
        "garbage_collector.yml",
        "collection_rate: {day_of_week: mon}\n",
        "collection_rate.day_of_week",
        "invalid cron string",
    ),
    (
        "garbage_collector.yml",
        "collection_rate: {week: \"5\"}\n",
        "collection_rate.week",
        "not a string",
    ),
    (
        "garbage_collector.yml",
        "collection_rate: {month: 13}\n",
        "collection_rate.month",
        "out of range",
    ),
    (
        "garbage_collector.yml",
        "collection_rate: {year: 2027}\n",
        "collection_rate.year",
        "4 digits",
    ),
    (
        "garbage_collector.yml",
        "collection_rate: {timezone: Mars/Olympus}\n",
        "collection_rate.timezone",
        "time zone",
    ),
    (
        "garbage_collector.yml",
        "collection_rate: \"0 3 * * *\"\n",
        "collection_rate",
        "expected a mapping",
    ),
];

#[test]
fn every_section_key_rejects_bad_values() {
    for (file, content, path, needle) in SECTION_CASES {
        assert_error(&[(file, Some(content))], file, path, needle);
    }
}

#[test]
fn valid_sections_parse_into_typed_values() {
    let c = load_ok(&[
        (
            "database.yml",
            Some(
                "backend: mongodb\ndb_name: fleet\nusername: u\npassword: \"s3cret/pass\"\nconnection:\n  mode: replica\n  replica_set: rs0\n  hosts:\n    - {address: 10.0.0.11, port: 27017}\n    - {address: 10.0.0.12}\nstorage: {snapshot_bucket_size: 48}\nsqlite: {path: data/dp3.sqlite}\n",
            ),
        ),
        (
            "processing_core.yml",
            Some(
                "msg_broker: {host: rabbitmq, port: 5673}\nworker_processes: 2\nworker_threads: 16\nmax_inline_generated_tasks: 20\nmodules_dir: modules\nenabled_modules: [first_seen]\n",
            ),
        ),
        (
            "snapshots.yml",
            Some("creation_rate: {minute: \"*/15\"}\nkeep_empty: no\n"),
        ),
        (
            "control.yml",
            Some("allowed_actions: [make_snapshots, refresh_module_config]\n"),
        ),
        (
            "api.yml",
            Some(
                "listen: \"127.0.0.1:5000\"\ncors: {allow_origins: [\"https://x.example\"]}\ndatapoint_logger: {good_log: false, bad_log: logs/bad.log}\n",
            ),
        ),
        (
            "event_logging.yml",
            Some(
                "redis: {host: redis, port: 6379, db: 1}\ngroups:\n  te: {events: [task_processed], intervals: [\"5m\", \"2h\"], sync_interval: 1}\n",
            ),
        ),
        (
            "garbage_collector.yml",
            Some("collection_rate: {minute: \"5,25,45\", timezone: UTC}\n"),
        ),
        (
            "history_manager.yml",
            Some(
                "aggregation_schedule: {minute: \"*/10\"}\ndatapoint_cleaning_schedule: {minute: \"*/30\"}\nmark_datapoints_schedule: {minute: 1}\nsnapshot_cleaning: {schedule: {minute: \"15,45\"}, older_than: 7d}\ndatapoint_archivation: {schedule: {hour: 2, minute: 0}, older_than: 3d, archive_dir: archive}\n",
            ),
        ),
    ]);
    let d = &c.database;
    assert_eq!(d.backend, DatabaseBackend::Mongodb);
    assert_eq!(d.password, "s3cret/pass");
    assert_eq!(
        d.connection,
        Some(MongoConnection::Replica {
            replica_set: "rs0".into(),
            hosts: vec![
                MongoHost {
                    address: "10.0.0.11".into(),
                    port: 27017
                },
                MongoHost {
                    address: "10.0.0.12".into(),
                    port: 27017
                },
            ]
        })
    );
    assert_eq!(d.storage.snapshot_bucket_size, 48);
    assert_eq!(d.sqlite.path, Some(c.config_dir.join("data/dp3.sqlite")));
    let p = &c.processing_core;
    assert_eq!(
        (
            p.worker_processes,
            p.worker_threads,
            p.max_inline_generated_tasks
        ),
        (2, 16, 20)
    );
    assert_eq!(p.msg_broker.host, "rabbitmq");
    assert_eq!(p.msg_broker.port, 5673);
    assert_eq!(p.msg_broker.username, "guest");
    assert_eq!(p.enabled_modules, vec!["first_seen".to_owned()]);
    assert!(!c.snapshots.keep_empty);
    assert_eq!(c.snapshots.creation_interval(), TimeDelta::minutes(15));
    // 15 min × 48 = 12 h (data-model.md §1.5).
    assert_eq!(c.snapshot_bucket_span(), TimeDelta::hours(12));
    assert!(c.control.allows(ControlAction::MakeSnapshots));
    assert!(!c.control.allows(ControlAction::RefreshOnEntityCreation));
    assert_eq!(c.api.listen.as_deref(), Some("127.0.0.1:5000"));
    assert_eq!(c.api.datapoint_logger.good_log, None);
    assert_eq!(
        c.api.datapoint_logger.bad_log,
        Some(c.config_dir.join("logs/bad.log"))
    );
    let te = &c.event_logging.groups["te"];
    assert_eq!(
        te.intervals,
        vec![TimeDelta::minutes(5), TimeDelta::hours(2)]
    );
    assert_eq!(c.event_logging.redis.as_ref().map(|r| r.db), Some(1));
    assert_eq!(
        c.history_manager.datapoint_archivation.archive_dir,
        Some(c.config_dir.join("archive"))
    );
    assert_eq!(
        c.history_manager.datapoint_archivation.older_than,
        TimeDelta::days(3)
    );
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("mark_datapoints_schedule"))
    );
}

#[test]
fn snapshot_creation_interval_follows_dp3_bucket_rules() {
    for (rate, secs) in [
        ("{minute: \"*/30\"}", 1800),
        ("{minute: \"*/5\"}", 300),
        ("{minute: \"15,45\"}", 1800),
        ("{minute: \"*\"}", 3600),
        ("{hour: \"3\"}", 86400),
        ("{second: \"*/10\"}", 10),
        ("{day: \"1,15\"}", 15 * 86400),
    ] {
        let content = format!("creation_rate: {rate}\n");
        let c = match load(&[("snapshots.yml", Some(&content))]) {
            Ok(c) => c,
            // `hour: "3"` is a single number; DP3 accepts the string form.
            Err(e) => panic!("{rate}: {e}"),
        };
        assert_eq!(
            c.snapshots.creation_interval(),
            TimeDelta::seconds(secs),
            "{rate}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Entity model

const DEVICE: &str = "db_entities/device.yml";

/// (entity file content, error path, needle) — all in db_entities/device.yml.
fn entity_cases() -> Vec<(String, &'static str, &'static str)> {
    let attr = |a: &str| entity(&format!("  a: {a}\n"));
    vec![
        ("attribs: {}\n".into(), "entity", "missing required key"),
        ("entity: {id: device, name: D, snapshot: true}\n".into(), "attribs", "missing required key"),
        ("entity: {id: device, name: D, snapshot: true}\nattribs:\n".into(), "attribs", "expected a mapping of attributes"),
        ("entity: {id: device, name: D, snapshot: true}\nattribs: {}\nextra: 1\n".into(), "extra", "unknown key"),
        ("entity: {id: devices, name: D, snapshot: true}\nattribs: {}\n".into(), "entity.id", "does not match the file name"),
        ("entity: {name: D, snapshot: true}\nattribs: {}\n".into(), "entity.id", "missing required key"),
        ("entity: {id: device, snapshot: true}\nattribs: {}\n".into(), "entity.name", "missing required key"),
        ("entity: {id: device, name: 5, snapshot: true}\nattribs: {}\n".into(), "entity.name", "expected a string"),
        ("entity: {id: device, name: D}\nattribs: {}\n".into(), "entity.snapshot", "missing required key"),
        ("entity: {id: device, name: D, snapshot: maybe}\nattribs: {}\n".into(), "entity.snapshot", "expected a boolean"),
        ("entity: {id: device, name: D, snapshot: true, description: 5}\nattribs: {}\n".into(), "entity.description", "expected a string"),
        ("entity: {id: device, name: D, snapshot: true, id_data_type: uuid}\nattribs: {}\n".into(), "entity.id_data_type", "unsupported entity id data type"),
        ("entity: {id: device, name: D, snapshot: true, id_data_type: ipv5}\nattribs: {}\n".into(), "entity.id_data_type", "did you mean \"ipv4\""),
        ("entity: {id: device, name: D, snapshots: true}\nattribs: {}\n".into(), "entity.snapshots", "did you mean \"snapshot\""),
        ("entity: {id: device, name: D, snapshot: true, lifetime: {type: forever}}\nattribs: {}\n".into(), "entity.lifetime.type", "unknown lifetime type"),
        ("entity: {id: device, name: D, snapshot: true, lifetime: {}}\nattribs: {}\n".into(), "entity.lifetime.type", "missing required key"),
        ("entity: {id: device, name: D, snapshot: true, lifetime: {type: ttl}}\nattribs: {}\n".into(), "entity.lifetime.on_create", "missing required key"),
        ("entity: {id: device, name: D, snapshot: true, lifetime: {type: ttl, on_create: 5x}}\nattribs: {}\n".into(), "entity.lifetime.on_create", "invalid duration"),
        ("entity: {id: device, name: D, snapshot: true, lifetime: {type: ttl, on_create: 5m, mirror_data: perhaps}}\nattribs: {}\n".into(), "entity.lifetime.mirror_data", "expected a boolean"),
        ("entity: {id: device, name: D, snapshot: true, lifetime: {type: immortal, on_create: 5m}}\nattribs: {}\n".into(), "entity.lifetime.on_create", "unknown key"),
        ("entity: {id: device, name: D, snapshot: true, lifetime: {type: weak}}\nattribs: {}\n".into(), "entity.lifetime.type", "not referenced by any relation"),
        // attributes
        (entity("  a: plain\n"), "attribs.a", "must be a mapping"),
        (entity("  1a: {name: A, type: plain, data_type: int}\n"), "attribs.1a", "invalid attribute id"),
        (entity("  eid: {name: A, type: plain, data_type: int}\n"), "attribs.eid", "reserved attribute id"),
        (entity("  _id: {name: A, type: plain, data_type: int}\n"), "attribs._id", "reserved attribute id"),
        (attr("{name: A, type: plain, data_type: int, t: 2}"), "attribs.a.t", "internal attribute type flag"),
        (attr("{name: A, data_type: int}"), "attribs.a.type", "missing required key"),
        (attr("{name: A, type: PLAIN, data_type: int}"), "attribs.a.type", "did you mean \"plain\""),
        (attr("{type: plain, data_type: int}"), "attribs.a.name", "missing required key"),
        (attr("{name: A, type: plain, data_type: int, description: [x]}"), "attribs.a.description", "expected a string"),
        (attr("{name: A, type: plain, data_type: int, ttl: 5x}"), "attribs.a.ttl", "invalid duration"),
        (attr("{id: b, name: A, type: plain, data_type: int}"), "attribs.a.id", "differs from its key"),
        (attr("{name: A, type: plain}"), "attribs.a.data_type", "missing required key"),
        (attr("{name: A, type: plain, data_type: strng}"), "attribs.a.data_type", "did you mean \"string\""),
        (attr("{name: A, type: plain, data_type: 5}"), "attribs.a.data_type", "expected a string"),
        (attr("{name: A, type: plain, data_type: link<driver>}"), "attribs.a.data_type", "entity type 'driver' is not defined"),
        (attr("{name: A, type: plain, data_type: link<devic>}"), "attribs.a.data_type", "did you mean \"device\""),
        (attr("{name: A, type: plain, data_type: \"link<device,link<nope>>\"}"), "attribs.a.data_type", "'nope' is not defined"),
        (attr("{name: A, type: plain, data_type: \"category<tag;false,true>\"}"), "attribs.a.data_type", "category base type"),
        (attr("{name: A, type: plain, data_type: \"dict<a: int>\"}"), "attribs.a.data_type", "not supported"),
        (attr("{name: A, type: plain, data_type: int, editable: sure}"), "attribs.a.editable", "expected a boolean"),
        (attr("{name: A, type: plain, data_type: int, confidence: true}"), "attribs.a.confidence", "unknown key"),
        (attr("{name: A, type: plain, data_type: int, multi_value: true}"), "attribs.a.multi_value", "unknown key"),
        (attr("{name: A, type: observations, data_type: int, confidence: x}"), "attribs.a.confidence", "expected a boolean"),
        (attr("{name: A, type: observations, data_type: int, multi_value: x}"), "attribs.a.multi_value", "expected a boolean"),
        (attr("{name: A, type: observations, data_type: int, history_force_graph: x}"), "attribs.a.history_force_graph", "expected a boolean"),
        (attr("{name: A, type: observations, data_type: int, editable: x}"), "attribs.a.editable", "expected a boolean"),
        (attr("{name: A, type: observations, data_type: int, multivalue: true}"), "attribs.a.multivalue", "did you mean \"multi_value\""),
        (attr("{name: A, type: observations, data_type: int, history_params: 5}"), "attribs.a.history_params", "expected a mapping"),
        (attr("{name: A, type: observations, data_type: int, history_params: {max_agee: 7d}}"), "attribs.a.history_params.max_agee", "did you mean \"max_age\""),
        (attr("{name: A, type: observations, data_type: int, history_params: {max_age: 7x}}"), "attribs.a.history_params.max_age", "invalid duration"),
        (attr("{name: A, type: observations, data_type: int, history_params: {max_items: 0}}"), "attribs.a.history_params.max_items", "out of range"),
        (attr("{name: A, type: observations, data_type: int, history_params: {expire_time: forever}}"), "attribs.a.history_params.expire_time", "invalid duration"),
        (attr("{name: A, type: observations, data_type: int, history_params: {pre_validity: null}}"), "attribs.a.history_params.pre_validity", "must not be null"),
        (attr("{name: A, type: observations, data_type: int, history_params: {post_validity: null}}"), "attribs.a.history_params.post_validity", "must not be null"),
        (attr("{name: A, type: observations, data_type: int, history_params: {post_validity: \"-5m\"}}"), "attribs.a.history_params.post_validity", "invalid duration"),
        (attr("{name: A, type: observations, data_type: int, history_params: {aggregate: x}}"), "attribs.a.history_params.aggregate", "expected a boolean"),
        (attr("{name: A, type: timeseries, timeseries_params: {}, series: {v: {data_type: int}}}"), "attribs.a.timeseries_type", "missing required key"),
        (attr("{name: A, type: timeseries, timeseries_type: regularr, timeseries_params: {time_step: 1m}, series: {v: {data_type: int}}}"), "attribs.a.timeseries_type", "did you mean \"regular\""),
        (attr("{name: A, type: timeseries, timeseries_type: irregular, series: {v: {data_type: int}}}"), "attribs.a.timeseries_params", "missing required key"),
        (attr("{name: A, type: timeseries, timeseries_type: regular, timeseries_params: {}, series: {v: {data_type: int}}}"), "attribs.a.timeseries_params.time_step", "missing required key for a regular timeseries"),
        (attr("{name: A, type: timeseries, timeseries_type: regular, timeseries_params: {time_step: 0}, series: {v: {data_type: int}}}"), "attribs.a.timeseries_params.time_step", "greater than zero"),
        (attr("{name: A, type: timeseries, timeseries_type: irregular, timeseries_params: {max_age: 5x}, series: {v: {data_type: int}}}"), "attribs.a.timeseries_params.max_age", "invalid duration"),
        (attr("{name: A, type: timeseries, timeseries_type: irregular, timeseries_params: {time_stepp: 1m}, series: {v: {data_type: int}}}"), "attribs.a.timeseries_params.time_stepp", "did you mean \"time_step\""),
        (attr("{name: A, type: timeseries, timeseries_type: regular, time_step: 1m, timeseries_params: {time_step: 1m}, series: {v: {data_type: int}}}"), "attribs.a.time_step", "unknown key"),
        (attr("{name: A, type: timeseries, timeseries_type: irregular, timeseries_params: {}, series: {v: {type: int}}}"), "attribs.a.series.v.type", "unknown key"),
        (attr("{name: A, type: timeseries, timeseries_type: irregular, timeseries_params: {}, series: {v: {type: int}}}"), "attribs.a.series.v.data_type", "missing required key"),
        (attr("{name: A, type: timeseries, timeseries_type: irregular, timeseries_params: {}, series: {v: {data_type: string}}}"), "attribs.a.series.v.data_type", "unsupported series data type"),
        (attr("{name: A, type: timeseries, timeseries_type: irregular, timeseries_params: {}, series: {1v: {data_type: int}}}"), "attribs.a.series.1v", "invalid series id"),
        (attr("{name: A, type: timeseries, timeseries_type: irregular, timeseries_params: {}, series: {time: {data_type: int}}}"), "attribs.a.series.time", "implicit"),
        (attr("{name: A, type: timeseries, timeseries_type: regular, timeseries_params: {time_step: 1m}, series: {}}"), "attribs.a.series", "at least one series"),
        (attr("{name: A, type: timeseries, timeseries_type: irregular, timeseries_params: {}, series: [v]}"), "attribs.a.series", "expected a mapping"),
        (attr("{name: A, type: timeseries, timeseries_type: irregular, timeseries_params: {}, data_type: int}"), "attribs.a.data_type", "unknown key"),
        (attr("{name: A, type: timeseries, timeseries_type: irregular, timeseries_params: {}, history_params: {}}"), "attribs.a.history_params", "unknown key"),
        (entity("  a: {name: A, type: plain, data_type: \"link<device;mirror=b>\"}\n  b: {name: B, type: plain, data_type: int}\n"), "attribs.a.data_type", "is a mirrored attribute"),
        (entity("  a: {name: A, type: plain, data_type: \"link<device;mirror=m>\"}\n  b: {name: B, type: plain, data_type: \"link<device;mirror=m>\"}\n"), "attribs.b.data_type", "already the mirror of device.a"),
        (entity("  a: {name: A, type: plain, data_type: \"link<device;mirror=eid>\"}\n"), "attribs.a.data_type", "reserved mirror attribute name"),
    ]
}

#[test]
fn every_entity_key_rejects_bad_values() {
    for (content, path, needle) in entity_cases() {
        assert_error(&[(DEVICE, Some(&content))], DEVICE, path, needle);
    }
}

#[test]
fn invalid_entity_id_is_rejected_even_when_it_matches_the_file_name() {
    assert_error(
        &[(
            "db_entities/e#1.yml",
            Some("entity: {id: \"e#1\", name: E, snapshot: true}\nattribs: {}\n"),
        )],
        "db_entities/e#1.yml",
        "entity.id",
        "invalid entity type id",
    );
}

#[test]
fn model_is_built_fully() {
    let c = load_ok(&[
        (
            "db_entities/ip.yml",
            Some(
                "entity: {id: ip, name: IP, snapshot: true, id_data_type: ipv4, lifetime: {type: ttl, on_create: 30m}}\n\
                 attribs:\n\
                 \x20 hostname: {name: Hostname, type: plain, data_type: string, ttl: 1h, editable: yes}\n\
                 \x20 device:\n\
                 \x20   name: Device\n\
                 \x20   type: observations\n\
                 \x20   data_type: \"link<device,string;mirror=ips>\"\n\
                 \x20   confidence: true\n\
                 \x20   multi_value: true\n\
                 \x20   history_params: {max_age: 7d, max_items: 10, expire_time: inf, pre_validity: 1m, post_validity: 5m, aggregate: false}\n\
                 \x20 subnet: {name: Subnet, type: plain, data_type: \"set<link<subnet>>\"}\n\
                 \x20 traffic:\n\
                 \x20   name: Traffic\n\
                 \x20   type: timeseries\n\
                 \x20   timeseries_type: regular\n\
                 \x20   timeseries_params: {time_step: 5m, max_age: 30d}\n\
                 \x20   series: {bytes: {data_type: int64}, packets: {data_type: int}}\n\
                 \x20 sessions:\n\
                 \x20   name: Sessions\n\
                 \x20   type: timeseries\n\
                 \x20   timeseries_type: irregular_intervals\n\
                 \x20   timeseries_params: {}\n\
                 \x20   series: {bytes: {data_type: float}}\n",
            ),
        ),
        (
            "db_entities/subnet.yml",
            Some(
                "entity: {id: subnet, name: Subnet, snapshot: false, lifetime: {type: weak}}\nattribs: {}\n",
            ),
        ),
    ]);
    let ip = c.model.entity("ip").expect("ip");
    assert_eq!(ip.spec.id_data_type, EidType::Ipv4);
    assert_eq!(
        ip.spec.lifetime,
        Lifetime::Ttl {
            on_create: TimeDelta::minutes(30),
            mirror_data: true
        }
    );
    let hostname = &ip.attribs["hostname"];
    assert_eq!(hostname.ttl, Some(TimeDelta::hours(1)));
    assert!(matches!(
        hostname.kind,
        AttrKind::Plain { editable: true, .. }
    ));
    let device = &ip.attribs["device"];
    assert_eq!(
        device.data_type_str.as_deref(),
        Some("link<device,string;mirror=ips>")
    );
    assert!(device.is_relation() && device.multi_value());
    let hp = device.history_params().expect("history params");
    assert_eq!(hp.max_age, Some(TimeDelta::days(7)));
    assert_eq!(hp.max_items, Some(10));
    assert_eq!(hp.expire_time, None);
    assert_eq!(
        (hp.pre_validity, hp.post_validity),
        (TimeDelta::minutes(1), TimeDelta::minutes(5))
    );
    assert!(!hp.aggregate);
    let AttrKind::Timeseries {
        timeseries_type,
        series,
        timeseries_params,
    } = &ip.attribs["traffic"].kind
    else {
        panic!("traffic is a timeseries");
    };
    assert_eq!(*timeseries_type, TimeseriesType::Regular);
    assert_eq!(timeseries_params.time_step, Some(TimeDelta::minutes(5)));
    assert_eq!(series.keys().collect::<Vec<_>>(), ["bytes", "packets"]);
    assert_eq!(series["bytes"], Primitive::Int64);
    let AttrKind::Timeseries { series, .. } = &ip.attribs["sessions"].kind else {
        panic!("sessions is a timeseries");
    };
    assert_eq!(
        series.keys().collect::<Vec<_>>(),
        ["bytes", "time_first", "time_last"]
    );
    assert_eq!(series["time_last"], Primitive::Time);

    // The generated mirror on the target type.
    let mirror = c.model.attr("device", "ips").expect("mirror attribute");
    assert!(mirror.is_read_only());
    assert_eq!(mirror.mirror_of, Some(("ip".into(), "device".into())));
    assert_eq!(mirror.data_type_str.as_deref(), Some("set<link<ip>>"));
    assert_eq!(
        mirror.description,
        "Read-only mirror attribute of ip.device"
    );
    assert_eq!(
        mirror.data_type(),
        Some(&DataType::Set(Box::new(DataType::Link {
            etype: "ip".into(),
            data: None,
            mirror: None
        })))
    );
    assert_eq!(
        c.model
            .entity("device")
            .expect("device")
            .attribs
            .keys()
            .last()
            .map(String::as_str),
        Some("ips")
    );
    // Mirrors are not relations.
    let relations: Vec<(&str, &str, &str)> = c
        .model
        .relations()
        .map(|(s, a, t)| (s, a.id.as_str(), t))
        .collect();
    assert_eq!(
        relations,
        [("ip", "device", "device"), ("ip", "subnet", "subnet")]
    );
}

#[test]
fn weak_entity_referenced_only_by_a_mirror_is_rejected() {
    assert_error(
        &[(
            "db_entities/w.yml",
            Some(
                "entity: {id: w, name: W, snapshot: true, lifetime: {type: weak}}\nattribs:\n  d: {name: D, type: plain, data_type: \"link<device;mirror=ws>\"}\n",
            ),
        )],
        "db_entities/w.yml",
        "entity.lifetime.type",
        "weak lifetime",
    );
    // Referenced through an array element: fine.
    load_ok(&[
        (
            "db_entities/w.yml",
            Some("entity: {id: w, name: W, snapshot: true, lifetime: {type: weak}}\nattribs: {}\n"),
        ),
        (
            DEVICE,
            Some(&entity(
                "  ws: {name: W, type: plain, data_type: \"array<link<w>>\"}\n",
            )),
        ),
    ]);
}

#[test]
fn links_may_refer_to_entities_defined_in_any_file() {
    load_ok(&[
        (
            "db_entities/a.yml",
            Some(
                "entity: {id: a, name: A, snapshot: true}\nattribs:\n  z: {name: Z, type: plain, data_type: link<z>}\n",
            ),
        ),
        (
            "db_entities/z.yml",
            Some(
                "entity: {id: z, name: Z, snapshot: true}\nattribs:\n  a: {name: A, type: plain, data_type: link<a>}\n",
            ),
        ),
    ]);
}

#[test]
fn nulls_that_mean_unset() {
    let c = load_ok(&[(
        DEVICE,
        Some(&entity(
            "  a: {name: A, type: observations, data_type: int, ttl: null, history_params: {max_age: null, expire_time: null, max_items: null}}\n",
        )),
    )]);
    let a = c.model.attr("device", "a").expect("a");
    assert_eq!(a.ttl, None);
    assert_eq!(a.history_params().and_then(|h| h.max_age), None);
}

// ---------------------------------------------------------------------------------------
// Module configuration

#[test]
fn load_module_config_rereads_one_module() {
    let dir = write_dir(&[("modules/first_seen.yml", Some("window: 5m\n"))]);
    assert_eq!(
        load_module_config(dir.path(), "first_seen").expect("loads"),
        serde_json::json!({"window": "5m"})
    );
    write(
        dir.path(),
        "modules/first_seen.yml",
        "window: 10m\nextra: [1, 2]\n",
    );
    assert_eq!(
        load_module_config(dir.path(), "first_seen").expect("loads"),
        serde_json::json!({"window": "10m", "extra": [1, 2]})
    );
    assert_eq!(
        load_module_config(dir.path(), "absent").expect("absent"),
        serde_json::json!({})
    );
    write(dir.path(), "modules/broken.yml", "a: [\n");
    let e = load_module_config(dir.path(), "broken").expect_err("broken");
    assert!(
        e.to_string()
            .starts_with("modules/broken.yml: invalid YAML"),
        "{e}"
    );
    write(dir.path(), "modules/list.yml", "- 1\n");
    assert!(load_module_config(dir.path(), "list").is_err());
    assert!(load_module_config(dir.path(), "../control").is_err());
}

// ---------------------------------------------------------------------------------------
// Real configuration directories

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

#[test]
fn dp3_test_configuration_loads() {
    let c = match load_config_dir(&repo_path("tests/fixtures/dp3-test-config")) {
        Ok(c) => c,
        Err(e) => panic!("DP3's test configuration must load:\n{e}"),
    };
    assert_eq!(c.model.entities.len(), 11);
    assert_eq!(c.processing_core.worker_threads, 16);
    assert_eq!(
        c.processing_core.enabled_modules,
        vec!["test_module".to_owned()]
    );
    assert_eq!(
        c.database.connection,
        Some(MongoConnection::Standalone {
            host: MongoHost {
                address: "mongo".into(),
                port: 27017
            }
        })
    );
    assert_eq!(
        c.control.allowed_actions,
        vec![ControlAction::MakeSnapshots]
    );
    let t = c
        .model
        .entity("test_entity_type")
        .expect("test_entity_type");
    assert_eq!(t.attribs.len(), 28);
    assert_eq!(
        t.attribs["test_attr_data_link"].data_type(),
        Some(&DataType::Link {
            etype: "test_entity_type".into(),
            data: Some(Box::new(DataType::Primitive(Primitive::Int))),
            mirror: None
        })
    );
    assert_eq!(
        c.model.entity("del_weak_mac").map(|e| e.spec.id_data_type),
        Some(EidType::Mac)
    );
    assert_eq!(
        c.garbage_collector.collection_rate.second,
        Some(CronField::Expr("*/2".into()))
    );
    assert_eq!(c.event_logging.groups.len(), 3);
}

#[test]
fn example_configuration_loads() {
    let c = match load_config_dir(&repo_path("config")) {
        Ok(c) => c,
        Err(e) => panic!("config/ must load:\n{e}"),
    };
    for etype in ["ip", "device", "subnet"] {
        assert!(c.model.entity(etype).is_some(), "{etype}");
    }
    assert_eq!(c.processing_core.worker_processes, 1);
    // The example's modules_dir is a build directory, which may not exist yet.
    assert!(
        c.warnings.iter().all(|w| w.contains("modules_dir")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn missing_modules_dir_is_a_warning() {
    let c = load_ok(&[(
        "processing_core.yml",
        Some(
            "worker_processes: 1\nmodules_dir: /dp3/tests/modules\nenabled_modules: [test_module]\n",
        ),
    )]);
    assert_eq!(
        c.processing_core.modules_dir,
        PathBuf::from("/dp3/tests/modules")
    );
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("/dp3/tests/modules does not exist")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn duplicate_keys_are_errors() {
    // PyYAML silently keeps the last one; a duplicated attribute is almost always a mistake.
    assert_error(
        &[(
            DEVICE,
            Some(&entity(
                "  a: {name: A, type: plain, data_type: int}\n  a: {name: B, type: plain, data_type: int}\n",
            )),
        )],
        DEVICE,
        "",
        "duplicate entry with key \"a\"",
    );
}

#[test]
fn api_limits_and_auth_are_read() {
    let api = "limits: {max_body_bytes: 1000, max_page_size: 50}\n\
         auth:\n  tokens:\n    - {name: reader, token: 0123456789abcdef, scopes: [read]}\n\
         \x20   - {name: ops, token_sha256: \"ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789\", scopes: [read, write, control, read]}\n";
    let c = load_ok(&[("api.yml", Some(api))]);
    assert_eq!(c.api.limits.max_body_bytes, 1000);
    assert_eq!(c.api.limits.max_page_size, 50);
    assert_eq!(
        c.api.limits.max_nesting_depth,
        ApiLimits::default().max_nesting_depth
    );
    let auth = c.api.auth.unwrap();
    assert_eq!(auth.tokens.len(), 2);
    assert_eq!(
        auth.tokens[0].secret,
        TokenSecret::Plain("0123456789abcdef".into())
    );
    assert_eq!(
        auth.tokens[1].secret,
        TokenSecret::Sha256Hex(
            "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789".into()
        )
    );
    assert_eq!(
        auth.tokens[1].scopes,
        vec![ApiScope::Read, ApiScope::Write, ApiScope::Control]
    );
    // No auth section: open API.
    assert_eq!(load_ok(&[]).api.auth, None);
}
