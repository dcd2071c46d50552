//! The [`Module`] trait and module instantiation.

use std::path::PathBuf;
use std::sync::Arc;

use dp3_model::ModelSpec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ModuleError;
use crate::registrar::Registrar;
use crate::services::HostServices;

/// What a module knows about the platform (core.md §3.12 `platform_config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformConfig {
    pub app_name: String,
    /// The configuration directory (modules may load the entity model from it).
    pub config_dir: PathBuf,
    /// Number of worker processes.
    pub num_processes: u32,
    /// Index of this worker (0-based). Cron jobs run on every worker; jobs that must run once
    /// per cluster check `process_index == 0`.
    pub process_index: u32,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            app_name: "dp3".to_owned(),
            config_dir: PathBuf::new(),
            num_processes: 1,
            process_index: 0,
        }
    }
}

/// A DP3 module.
///
/// The host creates the module with its configuration (`modules/<name>.yml`, deserialised
/// into [`Module::Config`]; a missing or empty file gives `Config::default()`), calls
/// [`Module::register`] once, then [`Module::start`]. [`Module::load_config`] is called again
/// whenever the configuration is refreshed. Hooks run concurrently on worker threads, so the
/// module must be `Send + Sync` (use interior mutability for state `load_config` changes).
pub trait Module: Send + Sync + Sized + 'static {
    type Config: DeserializeOwned + Default + Send;

    /// Construct the module. `registrar` gives access to the platform config, the logger and
    /// metrics; hooks are registered in [`Module::register`].
    fn new(config: Self::Config, registrar: &Registrar) -> Result<Self, ModuleError>;

    /// Register hooks. Closures typically capture a clone of `self`.
    fn register(self: &Arc<Self>, registrar: &mut Registrar) -> Result<(), ModuleError>;

    /// Apply a refreshed configuration (`refresh_module_config`).
    fn load_config(&self, config: Self::Config) -> Result<(), ModuleError> {
        let _ = config;
        Ok(())
    }

    /// Called after all modules are registered, before processing starts.
    fn start(&self) -> Result<(), ModuleError> {
        Ok(())
    }

    /// Called at shutdown (and when a new generation of the module replaces this one).
    fn stop(&self) {}
}

/// Lifecycle calls on an instantiated module (in-process or loaded from a library).
pub trait ModuleControl: Send + Sync {
    /// Re-apply configuration given as JSON (`null` = default configuration).
    fn load_config(&self, config_json: &str) -> Result<(), ModuleError>;
    fn start(&self) -> Result<(), ModuleError>;
    fn stop(&self) -> Result<(), ModuleError>;
}

/// An instantiated module: its lifecycle handle and its recorded registrations.
pub struct ModuleInstance {
    pub name: String,
    pub control: Arc<dyn ModuleControl>,
    pub registrar: Registrar,
}

/// Parse a module configuration from JSON; `null` means "no configuration".
pub(crate) fn parse_config<C: DeserializeOwned + Default>(
    module: &str,
    config_json: &str,
) -> Result<C, ModuleError> {
    let v: serde_json::Value = serde_json::from_str(config_json).map_err(|e| {
        ModuleError::new(format!("module {module}: configuration is not JSON: {e}"))
    })?;
    if v.is_null() {
        return Ok(C::default());
    }
    serde_json::from_value(v)
        .map_err(|e| ModuleError::new(format!("module {module}: invalid configuration: {e}")))
}

struct InProcess<M: Module> {
    name: String,
    module: Arc<M>,
}

impl<M: Module> ModuleControl for InProcess<M> {
    fn load_config(&self, config_json: &str) -> Result<(), ModuleError> {
        let config = parse_config(&self.name, config_json)?;
        self.module.load_config(config)
    }
    fn start(&self) -> Result<(), ModuleError> {
        self.module.start()
    }
    fn stop(&self) -> Result<(), ModuleError> {
        self.module.stop();
        Ok(())
    }
}

/// Instantiate `M` in-process: parse its configuration, construct it and record its
/// registrations. Used for built-in modules, by the test harness and, inside a module
/// library, by the export glue.
pub fn instantiate<M: Module>(
    name: &str,
    config_json: &str,
    platform: PlatformConfig,
    model: Option<Arc<ModelSpec>>,
    services: Arc<dyn HostServices>,
) -> Result<ModuleInstance, ModuleError> {
    let mut registrar = Registrar::with_services(name, platform, model, services);
    let config = parse_config::<M::Config>(name, config_json)?;
    let module = Arc::new(M::new(config, &registrar)?);
    module.register(&mut registrar)?;
    Ok(ModuleInstance {
        name: name.to_owned(),
        control: Arc::new(InProcess {
            name: name.to_owned(),
            module,
        }),
        registrar,
    })
}
