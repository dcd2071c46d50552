//! The typed sections of the configuration directory (data-model.md §1.3) and the top-level
//! assembly of [`Config`].
//!
//! Each section is parsed by one function listing its allowed keys; adding a key means adding
//! it to that list and to the struct (api.yml will grow auth tokens and limits).

use std::path::{Path, PathBuf};

use chrono::TimeDelta;
use indexmap::IndexMap;

use super::Config;
use super::entities::build_model;
use super::error::ConfigError;
use super::reader::{Ctx, Fields, suggest};
use super::tree::{DirTree, Entry, Yaml, tree_to_json};
use crate::cron::{CronExpression, CronField, CronPattern};

// ---------------------------------------------------------------------------------------
// database.yml

/// Which store backend to use (our extension: `backend:` in database.yml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DatabaseBackend {
    #[default]
    Sqlite,
    Mongodb,
}

impl DatabaseBackend {
    pub fn name(self) -> &'static str {
        match self {
            DatabaseBackend::Sqlite => "sqlite",
            DatabaseBackend::Mongodb => "mongodb",
        }
    }
}

/// A MongoDB host (`{address, port}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoHost {
    pub address: String,
    pub port: u16,
}

impl Default for MongoHost {
    fn default() -> Self {
        MongoHost {
            address: "localhost".into(),
            port: 27017,
        }
    }
}

/// DP3's `connection` block, discriminated by `mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MongoConnection {
    Standalone {
        host: MongoHost,
    },
    Replica {
        replica_set: String,
        hosts: Vec<MongoHost>,
    },
}

/// `storage` in database.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Snapshots per bucket document (≥ 2, see data-model.md §1.3.2).
    pub snapshot_bucket_size: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            snapshot_bucket_size: 32,
        }
    }
}

/// `sqlite` in database.yml (our extension).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SqliteConfig {
    /// Database file (resolved against the config dir). `None`: the run command decides.
    pub path: Option<PathBuf>,
}

/// database.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    pub backend: DatabaseBackend,
    pub db_name: String,
    pub username: String,
    pub password: String,
    /// Required when `backend: mongodb`; validated whenever present.
    pub connection: Option<MongoConnection>,
    pub storage: StorageConfig,
    pub sqlite: SqliteConfig,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            backend: DatabaseBackend::Sqlite,
            db_name: "dp3".into(),
            username: "dp3".into(),
            password: "dp3".into(),
            connection: None,
            storage: StorageConfig::default(),
            sqlite: SqliteConfig::default(),
        }
    }
}

fn parse_database(ctx: &mut Ctx, v: &Yaml, base: &Path) -> Option<DatabaseConfig> {
    let f = ctx.fields(
        v,
        "",
        &[
            "backend",
            "db_name",
            "username",
            "password",
            "connection",
            "storage",
            "sqlite",
        ],
    )?;
    let d = DatabaseConfig::default();
    let backend = f.opt(ctx, "backend", d.backend, |ctx, v, p| match v.as_str() {
        Some("sqlite") => Some(DatabaseBackend::Sqlite),
        Some("mongodb") => Some(DatabaseBackend::Mongodb),
        _ => {
            ctx.invalid(p, v, "unknown backend", "\"sqlite\" or \"mongodb\"");
            None
        }
    });
    let db_name = f.opt(ctx, "db_name", d.db_name, Ctx::string);
    let username = f.opt(ctx, "username", d.username, Ctx::string);
    let password = f.opt(ctx, "password", d.password, Ctx::string);
    let connection = f.nullable(ctx, "connection", parse_connection);
    if backend == Some(DatabaseBackend::Mongodb) && f.get("connection").is_none() {
        ctx.push(
            ConfigError::new(ctx.file.clone(), "connection", "missing required key").with_expected(
                "a connection block (mode: standalone | replica) for backend mongodb",
            ),
        );
    }
    let storage = f.opt(ctx, "storage", StorageConfig::default(), |ctx, v, p| {
        let f = ctx.fields(v, p, &["snapshot_bucket_size"])?;
        let size = f.opt(ctx, "snapshot_bucket_size", 32, |ctx, v, p| {
            // Sizes below 2 break the bucket `latest` bookkeeping (data-model.md §1.3.2).
            ctx.int(v, p, 2, i64::from(u32::MAX)).map(|i| i as u32)
        })?;
        Some(StorageConfig {
            snapshot_bucket_size: size,
        })
    });
    let sqlite = f.opt(ctx, "sqlite", SqliteConfig::default(), |ctx, v, p| {
        let f = ctx.fields(v, p, &["path"])?;
        let path = f.nullable(ctx, "path", |ctx, v, p| ctx.path_value(v, p, base))?;
        Some(SqliteConfig { path })
    });
    Some(DatabaseConfig {
        backend: backend?,
        db_name: db_name?,
        username: username?,
        password: password?,
        connection: connection?,
        storage: storage?,
        sqlite: sqlite?,
    })
}

fn parse_host(ctx: &mut Ctx, v: &Yaml, path: &str) -> Option<MongoHost> {
    let f = ctx.fields(v, path, &["address", "port"])?;
    let d = MongoHost::default();
    let address = f.opt(ctx, "address", d.address, Ctx::string);
    let port = f.opt(ctx, "port", d.port, |ctx, v, p| {
        ctx.int(v, p, 1, 65535).map(|i| i as u16)
    });
    Some(MongoHost {
        address: address?,
        port: port?,
    })
}

fn parse_connection(ctx: &mut Ctx, v: &Yaml, path: &str) -> Option<MongoConnection> {
    let mode = match v.get("mode") {
        Some(m) => match m.as_str() {
            Some("standalone") => Some("standalone"),
            Some("replica") => Some("replica"),
            _ => {
                let s = m
                    .as_str()
                    .and_then(|s| suggest(s, ["standalone", "replica"]));
                ctx.push(
                    ConfigError::new(ctx.file.clone(), format!("{path}.mode"), "unknown mode")
                        .with_value(super::reader::render(m))
                        .with_expected("\"standalone\" or \"replica\"")
                        .with_suggestion(s),
                );
                None
            }
        },
        None if v.is_mapping() => {
            ctx.missing(&format!("{path}.mode"));
            None
        }
        None => None,
    };
    match mode {
        Some("standalone") => {
            let f = ctx.fields(v, path, &["mode", "host"])?;
            let host = f.opt(ctx, "host", MongoHost::default(), parse_host)?;
            Some(MongoConnection::Standalone { host })
        }
        Some(_) => {
            let f = ctx.fields(v, path, &["mode", "replica_set", "hosts"])?;
            let replica_set = f.opt(ctx, "replica_set", "dp3".to_owned(), Ctx::string);
            let hosts = f.req(ctx, "hosts", |ctx, v, p| {
                let Yaml::Sequence(items) = v else {
                    ctx.invalid(p, v, "expected a list, got", "a list of {address, port}");
                    return None;
                };
                if items.is_empty() {
                    ctx.invalid(p, v, "empty host list", "at least one {address, port}");
                    return None;
                }
                let hosts: Vec<Option<MongoHost>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, h)| parse_host(ctx, h, &format!("{p}[{i}]")))
                    .collect();
                hosts.into_iter().collect()
            });
            Some(MongoConnection::Replica {
                replica_set: replica_set?,
                hosts: hosts?,
            })
        }
        None => {
            // Still report unknown keys / non-mapping values.
            ctx.fields(v, path, &["mode", "host", "replica_set", "hosts"]);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// processing_core.yml

/// `msg_broker` (RabbitMQ; used only when the RabbitMQ queue is configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgBrokerConfig {
    pub host: String,
    pub port: u16,
    pub virtual_host: String,
    pub username: String,
    pub password: String,
    pub management_port: u16,
}

impl Default for MsgBrokerConfig {
    fn default() -> Self {
        MsgBrokerConfig {
            host: "localhost".into(),
            port: 5672,
            virtual_host: "/".into(),
            username: "guest".into(),
            password: "guest".into(),
            management_port: 15672,
        }
    }
}

/// processing_core.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessingCoreConfig {
    pub msg_broker: MsgBrokerConfig,
    /// Number of worker processes N (≥ 1); the modulus of entity partitioning.
    pub worker_processes: u32,
    /// Threads per worker process (≥ 1, default 8).
    pub worker_threads: u32,
    pub max_inline_generated_tasks: u32,
    /// Absolute (relative values are resolved against the config dir).
    pub modules_dir: PathBuf,
    /// Module names in load order.
    pub enabled_modules: Vec<String>,
}

fn parse_processing_core(
    ctx: &mut Ctx,
    v: &Yaml,
    base: &Path,
    warnings: &mut Vec<String>,
) -> Option<ProcessingCoreConfig> {
    let f = ctx.fields(
        v,
        "",
        &[
            "msg_broker",
            "worker_processes",
            "worker_threads",
            "max_inline_generated_tasks",
            "modules_dir",
            "enabled_modules",
        ],
    )?;
    let msg_broker = f.opt(
        ctx,
        "msg_broker",
        MsgBrokerConfig::default(),
        |ctx, v, p| {
            let f = ctx.fields(
                v,
                p,
                &[
                    "host",
                    "port",
                    "virtual_host",
                    "username",
                    "password",
                    "management_port",
                ],
            )?;
            let d = MsgBrokerConfig::default();
            let port = |ctx: &mut Ctx, v: &Yaml, p: &str| ctx.int(v, p, 1, 65535).map(|i| i as u16);
            Some(MsgBrokerConfig {
                host: f.opt(ctx, "host", d.host, Ctx::string)?,
                port: f.opt(ctx, "port", d.port, port)?,
                virtual_host: f.opt(ctx, "virtual_host", d.virtual_host, Ctx::string)?,
                username: f.opt(ctx, "username", d.username, Ctx::string)?,
                password: f.opt(ctx, "password", d.password, Ctx::string)?,
                management_port: f.opt(ctx, "management_port", d.management_port, port)?,
            })
        },
    );
    let u32_at_least = |min: i64| {
        move |ctx: &mut Ctx, v: &Yaml, p: &str| {
            ctx.int(v, p, min, i64::from(u32::MAX)).map(|i| i as u32)
        }
    };
    let worker_processes = f.req(ctx, "worker_processes", u32_at_least(1));
    let worker_threads = f.opt(ctx, "worker_threads", 8, u32_at_least(1));
    let max_inline = f.opt(ctx, "max_inline_generated_tasks", 0, u32_at_least(0));
    let modules_dir = f.req(ctx, "modules_dir", |ctx, v, p| {
        let dir = ctx.path_value(v, p, base)?;
        // A warning, not an error: `dp3 check` may run on another machine than the
        // platform, and DP3's own test configuration points into its container. The module
        // loader fails at start-up when modules are enabled and the directory is missing.
        if !dir.is_dir() {
            warnings.push(format!(
                "{}: modules_dir {} does not exist (modules cannot be loaded from it)",
                ctx.file,
                dir.display()
            ));
        }
        Some(dir)
    });
    let enabled_modules = f.req(ctx, "enabled_modules", |ctx, v, p| {
        let list = ctx.string_list(v, p)?;
        let mut ok = true;
        for (i, name) in list.iter().enumerate() {
            if list[..i].contains(name) {
                ctx.invalid(
                    &format!("{p}[{i}]"),
                    &Yaml::String(name.clone()),
                    "module listed twice:",
                    "each module once",
                );
                ok = false;
            }
        }
        ok.then_some(list)
    });
    Some(ProcessingCoreConfig {
        msg_broker: msg_broker?,
        worker_processes: worker_processes?,
        worker_threads: worker_threads?,
        max_inline_generated_tasks: max_inline?,
        modules_dir: modules_dir?,
        enabled_modules: enabled_modules?,
    })
}

// ---------------------------------------------------------------------------------------
// history_manager.yml

/// `snapshot_cleaning` in history_manager.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotCleaningConfig {
    pub schedule: CronExpression,
    pub older_than: TimeDelta,
}

/// `datapoint_archivation` in history_manager.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapointArchivationConfig {
    pub schedule: CronExpression,
    pub older_than: TimeDelta,
    /// `None`: old raw datapoints are deleted without export. Absolute path.
    pub archive_dir: Option<PathBuf>,
}

/// history_manager.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryManagerConfig {
    pub aggregation_schedule: CronExpression,
    pub datapoint_cleaning_schedule: CronExpression,
    /// Deprecated in DP3: accepted and ignored (a warning is emitted).
    pub mark_datapoints_schedule: Option<CronExpression>,
    pub snapshot_cleaning: SnapshotCleaningConfig,
    pub datapoint_archivation: DatapointArchivationConfig,
}

fn parse_history_manager(
    ctx: &mut Ctx,
    v: &Yaml,
    base: &Path,
    warnings: &mut Vec<String>,
) -> Option<HistoryManagerConfig> {
    let f = ctx.fields(
        v,
        "",
        &[
            "aggregation_schedule",
            "datapoint_cleaning_schedule",
            "mark_datapoints_schedule",
            "snapshot_cleaning",
            "datapoint_archivation",
        ],
    )?;
    let aggregation_schedule = f.req(ctx, "aggregation_schedule", Ctx::cron);
    let datapoint_cleaning_schedule = f.req(ctx, "datapoint_cleaning_schedule", Ctx::cron);
    let mark = f.nullable(ctx, "mark_datapoints_schedule", Ctx::cron);
    if f.get("mark_datapoints_schedule").is_some() {
        warnings.push(format!(
            "{}: mark_datapoints_schedule is deprecated and ignored",
            ctx.file
        ));
    }
    let snapshot_cleaning = f.req(ctx, "snapshot_cleaning", |ctx, v, p| {
        let f = ctx.fields(v, p, &["schedule", "older_than"])?;
        let schedule = f.req(ctx, "schedule", Ctx::cron);
        let older_than = f.req(ctx, "older_than", Ctx::duration);
        Some(SnapshotCleaningConfig {
            schedule: schedule?,
            older_than: older_than?,
        })
    });
    let archivation = f.req(ctx, "datapoint_archivation", |ctx, v, p| {
        let f = ctx.fields(v, p, &["schedule", "older_than", "archive_dir"])?;
        let schedule = f.req(ctx, "schedule", Ctx::cron);
        let older_than = f.req(ctx, "older_than", Ctx::duration);
        let archive_dir = f.nullable(ctx, "archive_dir", |ctx, v, p| ctx.path_value(v, p, base));
        Some(DatapointArchivationConfig {
            schedule: schedule?,
            older_than: older_than?,
            archive_dir: archive_dir?,
        })
    });
    Some(HistoryManagerConfig {
        aggregation_schedule: aggregation_schedule?,
        datapoint_cleaning_schedule: datapoint_cleaning_schedule?,
        mark_datapoints_schedule: mark?,
        snapshot_cleaning: snapshot_cleaning?,
        datapoint_archivation: archivation?,
    })
}

// ---------------------------------------------------------------------------------------
// snapshots.yml

/// snapshots.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotsConfig {
    pub creation_rate: CronExpression,
    pub keep_empty: bool,
}

impl Default for SnapshotsConfig {
    fn default() -> Self {
        SnapshotsConfig {
            creation_rate: CronExpression::with_fields(&[("minute", "*/30")]),
            keep_empty: true,
        }
    }
}

impl Config {
    /// Time span covered by one snapshot bucket: the creation interval ×
    /// `database.storage.snapshot_bucket_size` (data-model.md §1.3.5, §8.5).
    pub fn snapshot_bucket_span(&self) -> TimeDelta {
        let size = i64::from(self.database.storage.snapshot_bucket_size);
        self.snapshots
            .creation_interval()
            .num_seconds()
            .checked_mul(size)
            .and_then(TimeDelta::try_seconds)
            .unwrap_or(TimeDelta::MAX)
    }
}

impl SnapshotsConfig {
    /// The nominal interval between snapshot runs used for bucket sizing (data-model.md
    /// §1.3.5): `*/N` → N units; other strings → next larger unit / number of list items.
    /// Bucket span = this × `database.storage.snapshot_bucket_size`.
    pub fn creation_interval(&self) -> TimeDelta {
        let c = &self.creation_rate;
        let (field, unit, larger) = if let Some(f) = &c.second {
            (f, 1, 60)
        } else if let Some(f) = &c.minute {
            (f, 60, 3600)
        } else if let Some(f) = &c.hour {
            (f, 3600, 86400)
        } else if let Some(f) = &c.day {
            (f, 86400, 30 * 86400)
        } else {
            return TimeDelta::minutes(30);
        };
        let secs = match field {
            CronField::Expr(s) => match field.pattern() {
                CronPattern::Step(n) => i64::from(n) * unit,
                _ => larger / (s.split(',').count() as i64).max(1),
            },
            // Validation rejects int values; a single number means once per larger unit.
            CronField::Value(_) => larger,
        };
        TimeDelta::seconds(secs)
    }
}

fn parse_snapshots(ctx: &mut Ctx, v: &Yaml) -> Option<SnapshotsConfig> {
    let f = ctx.fields(v, "", &["creation_rate", "keep_empty"])?;
    let d = SnapshotsConfig::default();
    let creation_rate = f.opt(ctx, "creation_rate", d.creation_rate, |ctx, v, p| {
        let cron = ctx.cron(v, p)?;
        check_creation_rate(ctx, v, p).then_some(cron)
    });
    let keep_empty = f.opt(ctx, "keep_empty", true, Ctx::boolean);
    Some(SnapshotsConfig {
        creation_rate: creation_rate?,
        keep_empty: keep_empty?,
    })
}

/// DP3's database layer needs exactly one of second/minute/hour/day, as a string, to size
/// snapshot buckets (data-model.md §1.3.5). DP3 checks this when the DB starts; we at load.
fn check_creation_rate(ctx: &mut Ctx, v: &Yaml, path: &str) -> bool {
    let Yaml::Mapping(m) = v else { return false };
    let expected =
        "exactly one of second, minute, hour or day with a string value, e.g. {minute: \"*/5\"}";
    let keys: Vec<&Yaml> = m
        .keys()
        .filter(|k| k.as_str() != Some("timezone"))
        .collect();
    let [only] = keys.as_slice() else {
        ctx.invalid(
            path,
            v,
            "only one snapshot creation rate field is supported:",
            expected,
        );
        return false;
    };
    let key = only.as_str().unwrap_or_default();
    if !matches!(key, "second" | "minute" | "hour" | "day") {
        ctx.invalid(path, v, "unsupported snapshot creation rate:", expected);
        return false;
    }
    match m.get(key) {
        // DP3 reads the raw YAML: any string works (`hour: "3"` = once a day).
        Some(Yaml::String(_)) => true,
        Some(val) => {
            ctx.invalid(
                &format!("{path}.{key}"),
                val,
                "the snapshot creation rate must be a cron string:",
                "a quoted cron string such as \"*/5\" or \"0,30\" (not a single number)",
            );
            false
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------
// garbage_collector.yml, telemetry.yml, updater.yml, control.yml

/// garbage_collector.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GarbageCollectorConfig {
    pub collection_rate: CronExpression,
}

impl Default for GarbageCollectorConfig {
    fn default() -> Self {
        GarbageCollectorConfig {
            collection_rate: CronExpression::with_fields(&[
                ("hour", "3"),
                ("minute", "0"),
                ("second", "0"),
            ]),
        }
    }
}

/// telemetry.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub attribute_bson_size_schedule: CronExpression,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            attribute_bson_size_schedule: CronExpression::with_fields(&[
                ("hour", "3"),
                ("minute", "15"),
            ]),
        }
    }
}

/// updater.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdaterConfig {
    pub update_batch_cron: CronExpression,
    /// Must describe the same period as `update_batch_cron` (not checked, like DP3).
    pub update_batch_period: TimeDelta,
    pub cache_management_cron: CronExpression,
    pub cache_max_entries: u32,
}

/// One action of control.yml's `allowed_actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlAction {
    MakeSnapshots,
    RefreshOnEntityCreation,
    RefreshModuleConfig,
}

impl ControlAction {
    pub const ALL: [ControlAction; 3] = [
        ControlAction::MakeSnapshots,
        ControlAction::RefreshOnEntityCreation,
        ControlAction::RefreshModuleConfig,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ControlAction::MakeSnapshots => "make_snapshots",
            ControlAction::RefreshOnEntityCreation => "refresh_on_entity_creation",
            ControlAction::RefreshModuleConfig => "refresh_module_config",
        }
    }

    pub fn from_name(s: &str) -> Option<ControlAction> {
        ControlAction::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// control.yml.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlConfig {
    pub allowed_actions: Vec<ControlAction>,
}

impl ControlConfig {
    pub fn allows(&self, action: ControlAction) -> bool {
        self.allowed_actions.contains(&action)
    }
}

fn parse_control(ctx: &mut Ctx, v: &Yaml) -> Option<ControlConfig> {
    let f = ctx.fields(v, "", &["allowed_actions"])?;
    let allowed_actions = f.req(ctx, "allowed_actions", |ctx, v, p| {
        let names = ctx.string_list(v, p)?;
        let all: Vec<&str> = ControlAction::ALL.iter().map(|a| a.name()).collect();
        let mut out = Vec::new();
        let mut ok = true;
        for (i, n) in names.iter().enumerate() {
            match ControlAction::from_name(n) {
                Some(a) => {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
                None => {
                    ok = false;
                    ctx.push(
                        ConfigError::new(ctx.file.clone(), format!("{p}[{i}]"), "unknown action")
                            .with_value(format!("\"{n}\""))
                            .with_expected(format!("one of: {}", all.join(", ")))
                            .with_suggestion(suggest(n, all.iter().copied())),
                    );
                }
            }
        }
        ok.then_some(out)
    });
    Some(ControlConfig {
        allowed_actions: allowed_actions?,
    })
}

// ---------------------------------------------------------------------------------------
// event_logging.yml (DP3's Redis event counters; we export Prometheus metrics instead)

/// `redis` in event_logging.yml (accepted for compatibility, unused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub host: String,
    pub port: u16,
    pub db: u32,
}

/// One group in event_logging.yml.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventGroupConfig {
    pub events: Vec<String>,
    pub auto_declare_events: bool,
    /// Counting windows (validated as durations).
    pub intervals: Vec<TimeDelta>,
    pub sync_interval: Option<f64>,
    pub sync_limit: Option<f64>,
}

/// event_logging.yml: accepted in DP3's shape; counters are exported as Prometheus metrics
/// instead of being pushed to Redis.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventLoggingConfig {
    pub redis: Option<RedisConfig>,
    pub groups: IndexMap<String, EventGroupConfig>,
}

fn parse_event_logging(ctx: &mut Ctx, v: &Yaml) -> Option<EventLoggingConfig> {
    let f = ctx.fields(v, "", &["redis", "groups"])?;
    let redis = f.nullable(ctx, "redis", |ctx, v, p| {
        let f = ctx.fields(v, p, &["host", "port", "db"])?;
        Some(RedisConfig {
            host: f.opt(ctx, "host", "localhost".into(), Ctx::string)?,
            port: f.opt(ctx, "port", 6379, |ctx, v, p| {
                ctx.int(v, p, 1, 65535).map(|i| i as u16)
            })?,
            db: f.opt(ctx, "db", 0, |ctx, v, p| {
                ctx.int(v, p, 0, i64::from(u32::MAX)).map(|i| i as u32)
            })?,
        })
    });
    let groups = f.opt(ctx, "groups", IndexMap::new(), |ctx, v, p| {
        if v.is_null() {
            return Some(IndexMap::new());
        }
        let items = ctx.id_map(v, p, "event groups")?;
        let mut out = IndexMap::new();
        let mut ok = true;
        for (name, g) in items {
            let gp = super::reader::join(p, &name);
            match parse_event_group(ctx, g, &gp) {
                Some(g) => {
                    out.insert(name, g);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    });
    Some(EventLoggingConfig {
        redis: redis?,
        groups: groups?,
    })
}

fn parse_event_group(ctx: &mut Ctx, v: &Yaml, p: &str) -> Option<EventGroupConfig> {
    let f = ctx.fields(
        v,
        p,
        &[
            "events",
            "auto_declare_events",
            "intervals",
            "sync_interval",
            "sync_limit",
        ],
    )?;
    let events = f.opt(ctx, "events", Vec::new(), Ctx::string_list);
    let auto = f.opt(ctx, "auto_declare_events", false, Ctx::boolean);
    let intervals = f.opt(ctx, "intervals", Vec::new(), |ctx, v, p| {
        let Yaml::Sequence(items) = v else {
            ctx.invalid(
                p,
                v,
                "expected a list, got",
                "a list of durations such as [\"5m\", \"2h\"]",
            );
            return None;
        };
        let parsed: Vec<Option<TimeDelta>> = items
            .iter()
            .enumerate()
            .map(|(i, d)| ctx.positive_duration(d, &format!("{p}[{i}]")))
            .collect();
        parsed.into_iter().collect()
    });
    let sync_interval = f.nullable(ctx, "sync_interval", Ctx::number);
    let sync_limit = f.nullable(ctx, "sync_limit", Ctx::number);
    Some(EventGroupConfig {
        events: events?,
        auto_declare_events: auto?,
        intervals: intervals?,
        sync_interval: sync_interval?,
        sync_limit: sync_limit?,
    })
}

// ---------------------------------------------------------------------------------------
// api.yml

/// `cors` in api.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    pub allow_origins: Vec<String>,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allow_origins: vec!["*".into()],
        }
    }
}

/// `datapoint_logger` in api.yml. `None` = disabled (`false` or missing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatapointLoggerConfig {
    pub good_log: Option<PathBuf>,
    pub bad_log: Option<PathBuf>,
}

/// `limits` in api.yml (our extension): bounds on what one request may ask for. Exceeding
/// one is a `4xx` that names the limit and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Request body size in bytes (`413`).
    pub max_body_bytes: usize,
    /// Datapoints in one `POST /datapoints` (`413`).
    pub max_datapoints_per_request: usize,
    /// Length in bytes of any JSON string in a request body (`413`).
    pub max_string_length: usize,
    /// Items of any JSON array below the top level of a request body (`413`).
    pub max_array_length: usize,
    /// Nesting depth of JSON arrays/objects in a request body (`413`).
    pub max_nesting_depth: usize,
    /// `limit` query parameter of paged endpoints (`422`).
    pub max_page_size: u64,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_body_bytes: 64 * 1024 * 1024,
            max_datapoints_per_request: 100_000,
            max_string_length: 1024 * 1024,
            max_array_length: 100_000,
            max_nesting_depth: 64,
            max_page_size: 100_000,
        }
    }
}

/// What an API token may do (`auth.tokens[].scopes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiScope {
    /// `GET` endpoints (entities, snapshots, telemetry).
    Read,
    /// Endpoints that submit datapoints or change records.
    Write,
    /// `/control/*` actions.
    Control,
}

impl ApiScope {
    pub const ALL: [ApiScope; 3] = [ApiScope::Read, ApiScope::Write, ApiScope::Control];

    pub fn name(self) -> &'static str {
        match self {
            ApiScope::Read => "read",
            ApiScope::Write => "write",
            ApiScope::Control => "control",
        }
    }
}

/// The secret of a token: the plain token, or the lowercase hex SHA-256 of it (so api.yml
/// need not hold the secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSecret {
    Plain(String),
    Sha256Hex(String),
}

/// One entry of `auth.tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub secret: TokenSecret,
    pub scopes: Vec<ApiScope>,
}

/// `auth` in api.yml (our extension). No `auth` section = open API, as in DP3.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthConfig {
    pub tokens: Vec<ApiToken>,
}

/// api.yml.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApiConfig {
    /// Our extension: the address the API listens on (`host:port`); `None` = the command's
    /// default / command-line flag.
    pub listen: Option<String>,
    pub cors: CorsConfig,
    pub datapoint_logger: DatapointLoggerConfig,
    /// Our extension: request limits.
    pub limits: ApiLimits,
    /// Our extension: API tokens; `None` = no authentication (DP3-compatible).
    pub auth: Option<AuthConfig>,
}

fn parse_limits(ctx: &mut Ctx, v: &Yaml, p: &str) -> Option<ApiLimits> {
    let d = ApiLimits::default();
    let f = ctx.fields(
        v,
        p,
        &[
            "max_body_bytes",
            "max_datapoints_per_request",
            "max_string_length",
            "max_array_length",
            "max_nesting_depth",
            "max_page_size",
        ],
    )?;
    // usize fits every positive i64 on the 64-bit targets we build for; clamp otherwise.
    let size = |ctx: &mut Ctx, v: &Yaml, p: &str| -> Option<usize> {
        ctx.int(v, p, 1, i64::MAX)
            .map(|i| usize::try_from(i).unwrap_or(usize::MAX))
    };
    let max_body_bytes = f.opt(ctx, "max_body_bytes", d.max_body_bytes, size);
    let max_dps = f.opt(
        ctx,
        "max_datapoints_per_request",
        d.max_datapoints_per_request,
        size,
    );
    let max_string = f.opt(ctx, "max_string_length", d.max_string_length, size);
    let max_array = f.opt(ctx, "max_array_length", d.max_array_length, size);
    // Depth 1 is a flat list of datapoints that are objects: 2 is the least that works.
    let max_depth = f.opt(
        ctx,
        "max_nesting_depth",
        d.max_nesting_depth,
        |ctx, v, p| ctx.int(v, p, 2, 10_000).map(|i| i as usize),
    );
    let max_page = f.opt(ctx, "max_page_size", d.max_page_size, |ctx, v, p| {
        ctx.int(v, p, 1, i64::MAX).map(|i| i.unsigned_abs())
    });
    Some(ApiLimits {
        max_body_bytes: max_body_bytes?,
        max_datapoints_per_request: max_dps?,
        max_string_length: max_string?,
        max_array_length: max_array?,
        max_nesting_depth: max_depth?,
        max_page_size: max_page?,
    })
}

fn parse_auth(ctx: &mut Ctx, v: &Yaml, p: &str) -> Option<AuthConfig> {
    let f = ctx.fields(v, p, &["tokens"])?;
    let tokens = f.req(ctx, "tokens", |ctx, v, p| {
        let Yaml::Sequence(items) = v else {
            ctx.invalid(
                p,
                v,
                "expected a list, got",
                "a list of {name, token | token_sha256, scopes}",
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match parse_token(ctx, item, &format!("{p}[{i}]")) {
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in out.iter().enumerate() {
            if !seen.insert(t.name.as_str()) {
                ctx.push(
                    ConfigError::new(
                        ctx.file.clone(),
                        format!("{p}[{i}].name"),
                        "duplicate token name",
                    )
                    .with_value(format!("{:?}", t.name))
                    .with_expected("a name used by one token only"),
                );
                ok = false;
            }
        }
        ok.then_some(out)
    });
    Some(AuthConfig { tokens: tokens? })
}

fn parse_token(ctx: &mut Ctx, v: &Yaml, p: &str) -> Option<ApiToken> {
    let f = ctx.fields(v, p, &["name", "token", "token_sha256", "scopes"])?;
    let name = f.req(ctx, "name", Ctx::string);
    let plain = f.nullable(ctx, "token", |ctx, v, p| {
        let s = ctx.string(v, p)?;
        if s.len() < 16 {
            ctx.invalid(
                p,
                v,
                "token too short",
                "a secret of at least 16 characters",
            );
            return None;
        }
        Some(s)
    });
    let hashed = f.nullable(ctx, "token_sha256", |ctx, v, p| {
        let s = ctx.string(v, p)?;
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            ctx.invalid(p, v, "invalid SHA-256", "64 hexadecimal digits");
            return None;
        }
        Some(s.to_ascii_lowercase())
    });
    let scopes = f.req(ctx, "scopes", |ctx, v, p| {
        let names = ctx.string_list(v, p)?;
        let mut scopes = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            match ApiScope::ALL.iter().find(|s| s.name() == n) {
                Some(s) if !scopes.contains(s) => scopes.push(*s),
                Some(_) => {}
                None => {
                    ctx.push(
                        ConfigError::new(ctx.file.clone(), format!("{p}[{i}]"), "unknown scope")
                            .with_value(format!("{n:?}"))
                            .with_expected("read, write or control")
                            .with_suggestion(suggest(n, ApiScope::ALL.iter().map(|s| s.name()))),
                    );
                    return None;
                }
            }
        }
        Some(scopes)
    });
    let (name, plain, hashed, scopes) = (name?, plain?, hashed?, scopes?);
    let secret = match (plain, hashed) {
        (Some(t), None) => TokenSecret::Plain(t),
        (None, Some(h)) => TokenSecret::Sha256Hex(h),
        (Some(_), Some(_)) => {
            ctx.push(
                ConfigError::new(ctx.file.clone(), p, "both token and token_sha256 given")
                    .with_expected("exactly one of token, token_sha256"),
            );
            return None;
        }
        (None, None) => {
            ctx.push(
                ConfigError::new(ctx.file.clone(), p, "no secret given")
                    .with_expected("exactly one of token, token_sha256"),
            );
            return None;
        }
    };
    Some(ApiToken {
        name,
        secret,
        scopes,
    })
}

fn parse_api(ctx: &mut Ctx, v: &Yaml, base: &Path) -> Option<ApiConfig> {
    let f = ctx.fields(
        v,
        "",
        &["listen", "cors", "datapoint_logger", "limits", "auth"],
    )?;
    let listen = f.nullable(ctx, "listen", |ctx, v, p| {
        let s = ctx.string(v, p)?;
        let valid = s.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            ctx.invalid(
                p,
                v,
                "invalid listen address",
                "host:port, e.g. \"127.0.0.1:5000\" or \"[::1]:5000\"",
            );
            return None;
        }
        Some(s)
    });
    let cors = f.opt(ctx, "cors", CorsConfig::default(), |ctx, v, p| {
        let f = ctx.fields(v, p, &["allow_origins"])?;
        Some(CorsConfig {
            allow_origins: f.opt(ctx, "allow_origins", vec!["*".into()], Ctx::string_list)?,
        })
    });
    let logger = f.opt(
        ctx,
        "datapoint_logger",
        DatapointLoggerConfig::default(),
        |ctx, v, p| {
            let f = ctx.fields(v, p, &["good_log", "bad_log"])?;
            let log = |ctx: &mut Ctx, v: &Yaml, p: &str| -> Option<Option<PathBuf>> {
                match v {
                    Yaml::Bool(false) | Yaml::Null => Some(None),
                    Yaml::String(_) => ctx.path_value(v, p, base).map(Some),
                    other => {
                        ctx.invalid(p, other, "invalid log file", "a file path or false");
                        None
                    }
                }
            };
            Some(DatapointLoggerConfig {
                good_log: f.opt(ctx, "good_log", None, log)?,
                bad_log: f.opt(ctx, "bad_log", None, log)?,
            })
        },
    );
    let limits = f.opt(ctx, "limits", ApiLimits::default(), parse_limits);
    let auth = f.nullable(ctx, "auth", parse_auth);
    Some(ApiConfig {
        listen: listen?,
        cors: cors?,
        datapoint_logger: logger?,
        limits: limits?,
        auth: auth?,
    })
}

// ---------------------------------------------------------------------------------------
// Top-level assembly

/// Top-level files and directories we know. Anything else is reported as a warning (apps
/// may keep their own files next to DP3's).
const KNOWN_FILES: [&str; 10] = [
    "api",
    "control",
    "database",
    "event_logging",
    "garbage_collector",
    "history_manager",
    "processing_core",
    "snapshots",
    "telemetry",
    "updater",
];

pub(crate) fn build(
    base: &Path,
    tree: &DirTree,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Option<Config> {
    for (name, entry) in &tree.entries {
        let known_file = KNOWN_FILES.contains(&name.as_str());
        let known_dir = name == "db_entities" || name == "modules";
        match entry {
            Entry::File { rel, .. } if known_dir => errors.push(ConfigError::new(
                rel.clone(),
                "",
                format!("\"{name}\" must be a directory, not a file"),
            )),
            Entry::Dir(_) if known_file => errors.push(ConfigError::new(
                format!("{name}/"),
                "",
                format!("\"{name}\" must be a file ({name}.yml), not a directory"),
            )),
            Entry::File { rel, .. } if !known_file => {
                let hint = suggest(name, KNOWN_FILES)
                    .map(|s| format!(" (did you mean \"{s}.yml\"?)"))
                    .unwrap_or_default();
                warnings.push(format!(
                    "{rel}: not a DP3 configuration file, ignored{hint}"
                ));
            }
            Entry::Dir(d) if !known_dir => {
                warnings.push(format!(
                    "{}: not a DP3 configuration directory, ignored",
                    d.rel
                ));
            }
            _ => {}
        }
    }

    let file = |name: &str| match tree.entries.get(name) {
        Some(Entry::File { rel, value }) => Some((rel.clone(), value)),
        _ => None,
    };
    let required_missing = |name: &str, errors: &mut Vec<ConfigError>| {
        if !tree.entries.contains_key(name) {
            errors.push(ConfigError::new(
                format!("{name}.yml"),
                "",
                "missing required file (or it is empty)",
            ));
        }
    };

    // Optional files default when absent; required ones are reported.
    macro_rules! section {
        ($name:literal, $default:expr, |$ctx:ident, $v:ident| $parse:expr) => {
            match file($name) {
                Some((rel, $v)) => {
                    let mut $ctx = Ctx::new(rel);
                    let parsed = $parse;
                    $ctx.drain_into(errors);
                    parsed
                }
                None => $default,
            }
        };
    }

    for name in ["processing_core", "history_manager", "control", "updater"] {
        required_missing(name, errors);
    }

    let database = section!("database", Some(DatabaseConfig::default()), |ctx, v| {
        parse_database(&mut ctx, v, base)
    });
    let processing_core = section!("processing_core", None, |ctx, v| parse_processing_core(
        &mut ctx, v, base, warnings
    ));
    let history_manager = section!("history_manager", None, |ctx, v| parse_history_manager(
        &mut ctx, v, base, warnings
    ));
    let snapshots = section!("snapshots", Some(SnapshotsConfig::default()), |ctx, v| {
        parse_snapshots(&mut ctx, v)
    });
    let control = section!("control", None, |ctx, v| parse_control(&mut ctx, v));
    let event_logging = section!(
        "event_logging",
        Some(EventLoggingConfig::default()),
        |ctx, v| parse_event_logging(&mut ctx, v)
    );
    let api = section!("api", Some(ApiConfig::default()), |ctx, v| parse_api(
        &mut ctx, v, base
    ));
    let garbage_collector = section!(
        "garbage_collector",
        Some(GarbageCollectorConfig::default()),
        |ctx, v| {
            let f = ctx.fields(v, "", &["collection_rate"]);
            f.and_then(|f| {
                Some(GarbageCollectorConfig {
                    collection_rate: f.opt(
                        &mut ctx,
                        "collection_rate",
                        GarbageCollectorConfig::default().collection_rate,
                        Ctx::cron,
                    )?,
                })
            })
        }
    );
    let telemetry = section!("telemetry", Some(TelemetryConfig::default()), |ctx, v| {
        let f = ctx.fields(v, "", &["attribute_bson_size_schedule"]);
        f.and_then(|f| {
            Some(TelemetryConfig {
                attribute_bson_size_schedule: f.opt(
                    &mut ctx,
                    "attribute_bson_size_schedule",
                    TelemetryConfig::default().attribute_bson_size_schedule,
                    Ctx::cron,
                )?,
            })
        })
    });
    let updater = section!("updater", None, |ctx, v| parse_updater(&mut ctx, v));

    let model = match tree.entries.get("db_entities") {
        Some(Entry::Dir(d)) => build_model(d, errors),
        Some(Entry::File { .. }) => None,
        None => {
            errors.push(ConfigError::new(
                "db_entities/",
                "",
                "missing required directory (it may be empty)",
            ));
            None
        }
    };

    let modules = match tree.entries.get("modules") {
        Some(Entry::Dir(d)) => {
            let mut out = IndexMap::new();
            for (name, entry) in &d.entries {
                let v = match entry {
                    Entry::File { rel, value } => {
                        super::reader::yaml_to_json(value, rel, "", errors)
                    }
                    Entry::Dir(sub) => Some(tree_to_json(sub, errors)),
                };
                if let Some(v) = v {
                    out.insert(name.clone(), v);
                }
            }
            Some(out)
        }
        _ => Some(IndexMap::new()),
    };

    let snapshots = snapshots?;
    let database = database?;
    if database.connection.is_some() && database.backend == DatabaseBackend::Sqlite {
        // Normal for a DP3 configuration directory; say that MongoDB is not being used.
        warnings.push(
            "database.yml: connection is ignored with backend sqlite (set `backend: mongodb` to use MongoDB)"
                .into(),
        );
    }
    Some(Config {
        config_dir: base.to_path_buf(),
        model: model?,
        api: api?,
        control: control?,
        database,
        event_logging: event_logging?,
        garbage_collector: garbage_collector?,
        history_manager: history_manager?,
        processing_core: processing_core?,
        snapshots,
        telemetry: telemetry?,
        updater: updater?,
        modules: modules?,
        warnings: std::mem::take(warnings),
    })
}

fn parse_updater(ctx: &mut Ctx, v: &Yaml) -> Option<UpdaterConfig> {
    let f: Fields<'_> = ctx.fields(
        v,
        "",
        &[
            "update_batch_cron",
            "update_batch_period",
            "cache_management_cron",
            "cache_max_entries",
        ],
    )?;
    let update_batch_cron = f.req(ctx, "update_batch_cron", Ctx::cron);
    let update_batch_period = f.req(ctx, "update_batch_period", Ctx::positive_duration);
    let cache_management_cron = f.opt(
        ctx,
        "cache_management_cron",
        CronExpression::with_fields(&[("hour", "2"), ("minute", "0"), ("second", "0")]),
        Ctx::cron,
    );
    let cache_max_entries = f.opt(ctx, "cache_max_entries", 32, |ctx, v, p| {
        ctx.int(v, p, 1, i64::from(u32::MAX)).map(|i| i as u32)
    });
    Some(UpdaterConfig {
        update_batch_cron: update_batch_cron?,
        update_batch_period: update_batch_period?,
        cache_management_cron: cache_management_cron?,
        cache_max_entries: cache_max_entries?,
    })
}
