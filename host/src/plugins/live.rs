//! Module loading with generations and hot reload.
//!
//! The live registry sits behind an `ArcSwap`: dispatchers take a snapshot (`LiveHooks::load`)
//! per task or per snapshot unit, so in-flight work finishes on the generation it started
//! with while a reload swaps in a new one atomically. A new build of a module library is
//! copied to `<state dir>/plugin-cache/<module>-<sha256 prefix><suffix>` first (never loaded
//! from the build output path), loaded as a new generation, registered into a fresh registry
//! together with the other modules' registrations, validated, and only then swapped in. A
//! broken build leaves the old generation running and reports why. Libraries are never
//! unloaded; generations per module are counted and a warning is logged above a limit.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use dp3_model::ModelSpec;
use dp3_plugin_api::host::{LoadOptions, discover, load_library, module_name_from_path};
use dp3_plugin_api::{HostServices, ModuleControl, PlatformConfig, Registration};
use indexmap::IndexMap;
use sha2::{Digest, Sha256};

use super::registry::{HookRegistry, HookRegistryBuilder, RegistrySettings};
use super::stats::StatsTable;

/// The current hook registry, swappable atomically.
pub struct LiveHooks {
    current: ArcSwap<HookRegistry>,
}

impl LiveHooks {
    pub fn new(registry: HookRegistry) -> Self {
        LiveHooks {
            current: ArcSwap::from_pointee(registry),
        }
    }

    /// The registry to dispatch with. Hold the `Arc` for the whole task / snapshot unit.
    pub fn load(&self) -> Arc<HookRegistry> {
        self.current.load_full()
    }

    pub fn swap(&self, registry: HookRegistry) -> Arc<HookRegistry> {
        self.current.swap(Arc::new(registry))
    }
}

/// A module reload or load failed; the previous generation (if any) keeps running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("module {module}: {reason}")]
pub struct ReloadError {
    pub module: String,
    pub reason: String,
}

fn rerr(module: &str, reason: impl Into<String>) -> ReloadError {
    ReloadError {
        module: module.to_owned(),
        reason: reason.into(),
    }
}

/// Where modules come from.
#[derive(Clone)]
pub struct ModuleSource {
    /// `processing_core.modules_dir` (resolved).
    pub modules_dir: PathBuf,
    /// `processing_core.enabled_modules`, in order.
    pub enabled_modules: Vec<String>,
    /// The configuration directory (module configs are `modules/<name>.yml` in it).
    pub config_dir: PathBuf,
    /// Where `plugin-cache/` is created.
    pub state_dir: PathBuf,
    pub platform: PlatformConfig,
    pub services: Arc<dyn HostServices>,
    /// Check library permissions (see `dp3_plugin_api::host::check_permissions`).
    pub check_permissions: bool,
    /// Warn when a module has loaded more generations than this.
    pub max_generations: u32,
}

struct Generation {
    hash: String,
    registrations: Vec<Registration>,
    control: Arc<dyn ModuleControl>,
}

/// Loads modules, keeps their generations and rebuilds the live registry.
pub struct ModuleLoader {
    model: Arc<ModelSpec>,
    settings: RegistrySettings,
    stats: Arc<StatsTable>,
    source: ModuleSource,
    /// Registrations of built-in (core) hooks; they run before module hooks.
    core: Vec<(String, Vec<Registration>)>,
    modules: Mutex<IndexMap<String, Generation>>,
    generations: Mutex<HashMap<String, u32>>,
    live: Arc<LiveHooks>,
}

/// Read `modules/<name>.yml` as JSON text (`{}` when missing or empty), with the
/// configuration loader's error reporting (file and YAML position).
pub fn read_module_config(config_dir: &Path, module: &str) -> Result<String, String> {
    dp3_model::config::load_module_config(config_dir, module)
        .map(|v| v.to_string())
        .map_err(|e| e.to_string())
}

fn sha256_hex(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let digest = Sha256::digest(&bytes);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// Copy `src` to the content-addressed cache path (temp file, fsync, rename).
fn cache_copy(src: &Path, cache_dir: &Path, module: &str, hash: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(cache_dir)
        .map_err(|e| format!("cannot create {}: {e}", cache_dir.display()))?;
    let suffix = std::env::consts::DLL_SUFFIX;
    let prefix = hash.get(..16).unwrap_or(hash);
    let dest = cache_dir.join(format!("{module}-{prefix}{suffix}"));
    if dest.exists() {
        return Ok(dest);
    }
    let bytes = std::fs::read(src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
    let tmp = cache_dir.join(format!(".{module}-{prefix}.tmp"));
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644));
    }
    std::fs::rename(&tmp, &dest)
        .map_err(|e| format!("cannot rename into {}: {e}", dest.display()))?;
    Ok(dest)
}

impl ModuleLoader {
    pub fn new(model: Arc<ModelSpec>, settings: RegistrySettings, source: ModuleSource) -> Self {
        let stats = Arc::new(StatsTable::default());
        ModuleLoader {
            live: Arc::new(LiveHooks::new(HookRegistry::empty(Arc::clone(&model)))),
            model,
            settings,
            stats,
            source,
            core: Vec::new(),
            modules: Mutex::new(IndexMap::new()),
            generations: Mutex::new(HashMap::new()),
        }
    }

    /// Built-in hooks registered under `name` before all modules.
    pub fn add_core(&mut self, name: &str, registrations: Vec<Registration>) {
        self.core.push((name.to_owned(), registrations));
    }

    pub fn live(&self) -> &Arc<LiveHooks> {
        &self.live
    }

    pub fn stats(&self) -> &Arc<StatsTable> {
        &self.stats
    }

    /// Generations loaded per module.
    pub fn generations(&self) -> HashMap<String, u32> {
        self.generations
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    /// Startup: load every enabled module. Fails (listing every problem) if an enabled module
    /// is missing, cannot be loaded or has rejected registrations; nothing is swapped then.
    pub fn load_all(&self) -> Result<(), Vec<ReloadError>> {
        let available =
            discover(&self.source.modules_dir).map_err(|e| vec![rerr("*", e.to_string())])?;
        let mut errors = Vec::new();
        let mut loaded = IndexMap::new();
        for name in &self.source.enabled_modules {
            let Some(path) = available.get(name) else {
                errors.push(rerr(
                    name,
                    format!("no library for it in {}", self.source.modules_dir.display()),
                ));
                continue;
            };
            match self.load_generation(name, path) {
                Ok(g) => {
                    loaded.insert(name.clone(), g);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let registry = self.build(&loaded).map_err(|e| vec![e])?;
        for g in loaded.values() {
            if let Err(e) = g.control.start() {
                errors.push(rerr("*", format!("start failed: {e}")));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        self.live.swap(registry);
        if let Ok(mut m) = self.modules.lock() {
            *m = loaded;
        }
        Ok(())
    }

    fn load_generation(&self, name: &str, path: &Path) -> Result<Generation, ReloadError> {
        let hash = sha256_hex(path).map_err(|e| rerr(name, e))?;
        let cache = cache_copy(
            path,
            &self.source.state_dir.join("plugin-cache"),
            name,
            &hash,
        )
        .map_err(|e| rerr(name, e))?;
        let config_json =
            read_module_config(&self.source.config_dir, name).map_err(|e| rerr(name, e))?;
        let mut opts = LoadOptions::new(Arc::clone(&self.source.services));
        opts.module_name = Some(name.to_owned());
        opts.platform = self.source.platform.clone();
        opts.config_json = config_json;
        opts.check_permissions = self.source.check_permissions;
        if opts.check_permissions {
            // The original location is what other users could tamper with.
            dp3_plugin_api::host::check_permissions(path).map_err(|e| rerr(name, e.to_string()))?;
        }
        let lib = load_library(&cache, &opts).map_err(|e| rerr(name, e.to_string()))?;
        let count = {
            let mut g = self
                .generations
                .lock()
                .map_err(|_| rerr(name, "generation table poisoned"))?;
            let c = g.entry(name.to_owned()).or_default();
            *c += 1;
            *c
        };
        if count > self.source.max_generations {
            tracing::warn!(
                module = name,
                generations = count,
                "module library loaded {count} times in this process; old generations stay mapped (restart to reclaim memory)"
            );
        }
        tracing::info!(module = name, path = %path.display(), sdk = %lib.info.sdk_version, generation = count, "module loaded");
        Ok(Generation {
            hash,
            registrations: lib.instance.registrar.into_registrations(),
            control: lib.instance.control,
        })
    }

    fn build(&self, modules: &IndexMap<String, Generation>) -> Result<HookRegistry, ReloadError> {
        let mut b = HookRegistryBuilder::with_stats(
            Arc::clone(&self.model),
            self.settings.clone(),
            Arc::clone(&self.stats),
        );
        for (name, regs) in &self.core {
            let errs = b.add_module(name, regs.clone());
            if let Some(e) = errs.first() {
                return Err(rerr(name, e.to_string()));
            }
        }
        for (name, g) in modules {
            let errs = b.add_module(name, g.registrations.clone());
            if !errs.is_empty() {
                let all: Vec<String> = errs.iter().map(ToString::to_string).collect();
                return Err(rerr(name, all.join("; ")));
            }
        }
        Ok(b.build().0)
    }

    /// Load a new build of `name` if its library content changed. Returns whether a new
    /// generation was swapped in.
    pub fn reload_module(&self, name: &str) -> Result<bool, ReloadError> {
        if !self.source.enabled_modules.iter().any(|m| m == name) {
            return Ok(false);
        }
        let path = discover(&self.source.modules_dir)
            .map_err(|e| rerr(name, e.to_string()))?
            .remove(name)
            .ok_or_else(|| rerr(name, "the library disappeared from the modules directory"))?;
        let hash = sha256_hex(&path).map_err(|e| rerr(name, e))?;
        let mut modules = self
            .modules
            .lock()
            .map_err(|_| rerr(name, "module table poisoned"))?;
        if modules.get(name).is_some_and(|g| g.hash == hash) {
            return Ok(false);
        }
        let generation = self.load_generation(name, &path)?;
        let mut next: IndexMap<String, Generation> = IndexMap::new();
        for m in &self.source.enabled_modules {
            if m == name {
                next.insert(
                    m.clone(),
                    Generation {
                        hash: generation.hash.clone(),
                        registrations: generation.registrations.clone(),
                        control: Arc::clone(&generation.control),
                    },
                );
            } else if let Some(g) = modules.get(m) {
                next.insert(
                    m.clone(),
                    Generation {
                        hash: g.hash.clone(),
                        registrations: g.registrations.clone(),
                        control: Arc::clone(&g.control),
                    },
                );
            }
        }
        let registry = self.build(&next)?;
        generation
            .control
            .start()
            .map_err(|e| rerr(name, format!("start failed: {e}")))?;
        self.live.swap(registry);
        if let Some(old) = modules.insert(name.to_owned(), generation)
            && let Err(e) = old.control.stop()
        {
            tracing::warn!(
                module = name,
                "stopping the previous generation failed: {e}"
            );
        }
        tracing::info!(module = name, "new module generation is live");
        Ok(true)
    }

    /// `refresh_module_config` (core.md §4.5): re-read `modules/<name>.yml`, call the module's
    /// `load_config`, set its refresh flag.
    pub fn refresh_config(&self, name: &str) -> Result<(), ReloadError> {
        let config_json =
            read_module_config(&self.source.config_dir, name).map_err(|e| rerr(name, e))?;
        let modules = self
            .modules
            .lock()
            .map_err(|_| rerr(name, "module table poisoned"))?;
        let g = modules
            .get(name)
            .ok_or_else(|| rerr(name, "no such module is loaded"))?;
        g.control
            .load_config(&config_json)
            .map_err(|e| rerr(name, e.to_string()))?;
        self.live.load().set_refresh(name);
        Ok(())
    }

    /// Stop all modules in reverse order.
    pub fn stop_all(&self) {
        if let Ok(m) = self.modules.lock() {
            for (name, g) in m.iter().rev() {
                if let Err(e) = g.control.stop() {
                    tracing::warn!(module = %name, "stop failed: {e}");
                }
            }
        }
    }

    /// Watch `modules_dir` and `<config_dir>/modules` and reload on changes (debounced;
    /// libraries are reloaded only when their content hash changes). The returned watcher
    /// must be kept alive.
    pub fn watch(
        self: &Arc<Self>,
        debounce: Duration,
    ) -> Result<notify::RecommendedWatcher, String> {
        use notify::{RecursiveMode, Watcher};
        let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            use notify::EventKind;
            use notify::event::ModifyKind;
            // Only content changes and new files: reading a file (including our own reads of
            // the YAML) must not trigger a reload.
            let relevant = |k: &EventKind| {
                matches!(
                    k,
                    EventKind::Create(_)
                        | EventKind::Modify(
                            ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any
                        )
                )
            };
            if let Ok(ev) = ev
                && relevant(&ev.kind)
            {
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        })
        .map_err(|e| format!("cannot create a file watcher: {e}"))?;
        watcher
            .watch(&self.source.modules_dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", self.source.modules_dir.display()))?;
        let config_modules = self.source.config_dir.join("modules");
        if config_modules.is_dir() {
            watcher
                .watch(&config_modules, RecursiveMode::NonRecursive)
                .map_err(|e| format!("cannot watch {}: {e}", config_modules.display()))?;
        }
        let loader = Arc::clone(self);
        std::thread::Builder::new()
            .name("dp3-plugin-watch".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut paths = vec![first];
                    // debounce: gather everything that arrives within the window
                    while let Ok(p) = rx.recv_timeout(debounce) {
                        paths.push(p);
                    }
                    paths.sort();
                    paths.dedup();
                    for p in paths {
                        loader.handle_change(&p);
                    }
                }
            })
            .map_err(|e| format!("cannot start the watcher thread: {e}"))?;
        Ok(watcher)
    }

    fn handle_change(&self, path: &Path) {
        if path.extension().is_some_and(|e| e == "yml") {
            if let Some(name) = path.file_stem().and_then(|s| s.to_str())
                && self.source.enabled_modules.iter().any(|m| m == name)
            {
                match self.refresh_config(name) {
                    Ok(()) => tracing::info!(module = name, "module configuration reloaded"),
                    Err(e) => tracing::error!("configuration reload failed: {e}"),
                }
            }
        } else if let Some(name) = module_name_from_path(path)
            && path.parent() == Some(self.source.modules_dir.as_path())
            && path.exists()
        {
            match self.reload_module(&name) {
                Ok(_) => {}
                Err(e) => tracing::error!(
                    "module reload failed, the previous generation keeps running: {e}"
                ),
            }
        }
    }
}
