//! The configuration directory (data-model.md §1): reading it with DP3's rules, validating
//! every file into typed sections, and building the entity model from `db_entities/`.
//!
//! Entry points: [`load_config_dir`] (everything, all errors at once) and
//! [`load_module_config`] (one module's YAML, for refresh-on-config-change).
//!
//! Unlike DP3, unknown keys are rejected everywhere (also inside `history_params`,
//! `timeseries_params`, `series` and the nested sections of `history_manager.yml`), with the
//! nearest valid key suggested. See docs/configuration.md for every key and every deviation.

mod entities;
mod error;
mod reader;
mod sections;
mod tree;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::spec::ModelSpec;

pub use error::{ConfigError, ConfigErrors};
pub use sections::{
    ApiConfig, ApiLimits, ApiScope, ApiToken, AuthConfig, ControlAction, ControlConfig, CorsConfig,
    DatabaseBackend, DatabaseConfig, DatapointArchivationConfig, DatapointLoggerConfig,
    EventGroupConfig, EventLoggingConfig, GarbageCollectorConfig, HistoryManagerConfig,
    MongoConnection, MongoHost, MsgBrokerConfig, ProcessingCoreConfig, RedisConfig,
    SnapshotCleaningConfig, SnapshotsConfig, SqliteConfig, StorageConfig, TelemetryConfig,
    TokenSecret, UpdaterConfig,
};
pub use tree::ignored_yaml_files;

/// The whole, validated configuration directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Absolute path of the configuration directory (relative paths inside it are resolved
    /// against it).
    pub config_dir: PathBuf,
    /// The entity model from `db_entities/` (entity types in directory listing order).
    pub model: ModelSpec,
    pub api: ApiConfig,
    pub control: ControlConfig,
    pub database: DatabaseConfig,
    pub event_logging: EventLoggingConfig,
    pub garbage_collector: GarbageCollectorConfig,
    pub history_manager: HistoryManagerConfig,
    pub processing_core: ProcessingCoreConfig,
    pub snapshots: SnapshotsConfig,
    pub telemetry: TelemetryConfig,
    pub updater: UpdaterConfig,
    /// `modules/<name>.yml` → `<name>` (free-form; a sub-directory becomes a nested object).
    pub modules: IndexMap<String, serde_json::Value>,
    /// Non-fatal findings (ignored `.yaml` files, unknown top-level files, deprecated keys).
    pub warnings: Vec<String>,
}

impl Config {
    /// The configuration of module `name` (`{}` when it has no `modules/<name>.yml`).
    pub fn module_config(&self, name: &str) -> serde_json::Value {
        self.modules
            .get(name)
            .cloned()
            .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()))
    }
}

/// Load and validate a whole configuration directory. Returns every problem found, not just
/// the first one.
pub fn load_config_dir(dir: &Path) -> Result<Config, ConfigErrors> {
    let config_dir = absolute_dir(dir)?;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let tree = tree::read_tree(&config_dir, &mut errors, &mut warnings);
    let loaded = sections::build(&config_dir, &tree, &mut errors, &mut warnings);
    match loaded {
        Some(config) if errors.is_empty() => Ok(config),
        _ => {
            if errors.is_empty() {
                // Defensive: a section failed without saying why.
                errors.push(ConfigError::new(
                    ".",
                    "",
                    "configuration could not be loaded",
                ));
            }
            Err(ConfigErrors(errors))
        }
    }
}

/// Re-read just `modules/<module>.yml` (or the directory `modules/<module>/`) of a
/// configuration directory; `{}` when it does not exist or is empty.
pub fn load_module_config(dir: &Path, module: &str) -> Result<serde_json::Value, ConfigErrors> {
    let config_dir = absolute_dir(dir)?;
    tree::read_module_config(&config_dir, module)
}

fn absolute_dir(dir: &Path) -> Result<PathBuf, ConfigErrors> {
    let shown = dir.display().to_string();
    let abs = std::fs::canonicalize(dir).map_err(|e| {
        ConfigErrors::single(ConfigError::new(
            shown.clone(),
            "",
            format!("cannot open the configuration directory: {e}"),
        ))
    })?;
    if !abs.is_dir() {
        return Err(ConfigErrors::single(ConfigError::new(
            shown,
            "",
            "the configuration path is not a directory",
        )));
    }
    Ok(abs)
}

#[cfg(test)]
mod tests;
