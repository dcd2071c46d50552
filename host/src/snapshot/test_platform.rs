//! The platform files of a minimal configuration directory (SQLite, no modules, default
//! schedules) for the snapshot tests and the snapshot benchmark, which add their own entity
//! types under `db_entities/`. The benchmark includes this file by path.

use std::path::Path;

/// Write the platform files and the empty `db_entities/` and `modules/` directories.
pub fn write_platform_files(dir: &Path) {
    std::fs::create_dir_all(dir.join("db_entities")).unwrap();
    std::fs::create_dir_all(dir.join("modules")).unwrap();
    for (f, body) in [
        ("database.yml", "backend: sqlite\n"),
        (
            "processing_core.yml",
            "msg_broker: {}\nworker_processes: 1\nmodules_dir: modules\nenabled_modules: []\n",
        ),
        (
            "history_manager.yml",
            "aggregation_schedule: {minute: \"*/10\"}\ndatapoint_cleaning_schedule: {minute: \"*/30\"}\nsnapshot_cleaning: {schedule: {minute: \"15,45\"}, older_than: 7d}\ndatapoint_archivation: {schedule: {hour: 2, minute: 0}, older_than: 7d}\n",
        ),
        ("snapshots.yml", "creation_rate: {minute: \"*/30\"}\n"),
        ("control.yml", "allowed_actions: [make_snapshots]\n"),
        (
            "updater.yml",
            "update_batch_cron: {minute: \"*/5\", second: \"0\"}\nupdate_batch_period: 5m\n",
        ),
        ("event_logging.yml", "groups: {}\n"),
        (
            "api.yml",
            "datapoint_logger: {good_log: false, bad_log: false}\n",
        ),
    ] {
        std::fs::write(dir.join(f), body).unwrap();
    }
}
