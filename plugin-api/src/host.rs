//! Host-side module loading (feature `host`). Returns ordinary Rust values: a
//! [`ModuleInstance`] whose [`Registrar`](crate::Registrar) holds closures that call into the
//! library. No abi_stable type appears here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::abi::import;
pub use crate::abi::import::LibraryInfo;
use crate::module::{ModuleInstance, PlatformConfig};
use crate::services::{HostServices, LogLevel};

/// A library was refused or failed to load. Names the file and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot load module library '{}': {reason}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    pub reason: String,
}

fn load_err(path: &Path, reason: impl Into<String>) -> LoadError {
    LoadError {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// A loaded module library.
pub struct LoadedLibrary {
    pub path: PathBuf,
    pub info: LibraryInfo,
    pub instance: ModuleInstance,
}

/// The platform file name suffix of shared libraries.
pub const LIBRARY_SUFFIX: &str = std::env::consts::DLL_SUFFIX;

/// Module name of a library file: its stem with a `lib` prefix dropped
/// (`libfirst_seen.so` → `first_seen`). `None` for files that are not shared libraries.
pub fn module_name_from_path(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file.strip_suffix(LIBRARY_SUFFIX)?;
    let name = stem
        .strip_prefix(std::env::consts::DLL_PREFIX)
        .unwrap_or(stem);
    (!name.is_empty()).then(|| name.to_owned())
}

/// The module libraries in `dir` (non-recursive): module name → path.
pub fn discover(dir: &Path) -> Result<BTreeMap<String, PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| load_err(dir, format!("cannot read the modules directory: {e}")))?;
    let mut found = BTreeMap::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| load_err(dir, format!("cannot read the modules directory: {e}")))?;
        let path = entry.path();
        if path.is_file()
            && let Some(name) = module_name_from_path(&path)
        {
            found.insert(name, path);
        }
    }
    Ok(found)
}

/// Refuse libraries (or their directory) that other users can write: anyone who can replace
/// the file can run code in the host.
pub fn check_permissions(path: &Path) -> Result<(), LoadError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(path).map_err(|e| load_err(path, format!("cannot stat: {e}")))?;
        if !meta.is_file() {
            return Err(load_err(path, "not a regular file"));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(load_err(
                path,
                format!(
                    "the file is writable by group or others (mode {:o}); run chmod go-w on it",
                    meta.permissions().mode() & 0o777
                ),
            ));
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dmeta = std::fs::metadata(dir)
            .map_err(|e| load_err(path, format!("cannot stat its directory: {e}")))?;
        let mode = dmeta.permissions().mode();
        // A sticky, world-writable directory (like /tmp) still lets others add files, so it
        // is refused too.
        if mode & 0o022 != 0 {
            return Err(load_err(
                path,
                format!(
                    "its directory '{}' is writable by group or others (mode {:o})",
                    dir.display(),
                    mode & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

/// What to create a module with.
#[derive(Clone)]
pub struct LoadOptions {
    /// Module name; defaults to [`module_name_from_path`].
    pub module_name: Option<String>,
    pub platform: PlatformConfig,
    /// The module configuration as JSON (`null` when there is none).
    pub config_json: String,
    pub services: Arc<dyn HostServices>,
    /// Check file and directory permissions (on by default).
    pub check_permissions: bool,
}

impl LoadOptions {
    pub fn new(services: Arc<dyn HostServices>) -> Self {
        LoadOptions {
            module_name: None,
            platform: PlatformConfig::default(),
            config_json: "null".to_owned(),
            services,
            check_permissions: true,
        }
    }
}

/// Load the module library at `path`: check permissions, open it, check its API version and
/// panic strategy, create the module with its configuration and collect its registrations.
///
/// Every failure names the file and the reason; the host keeps running. A library that was
/// opened stays mapped (libraries are never unloaded).
pub fn load_library(path: &Path, opts: &LoadOptions) -> Result<LoadedLibrary, LoadError> {
    if opts.check_permissions {
        check_permissions(path)?;
    }
    let name = match &opts.module_name {
        Some(n) => n.clone(),
        None => module_name_from_path(path)
            .ok_or_else(|| load_err(path, "not a shared library file name"))?,
    };
    let (root, info) = import::open(path).map_err(|e| load_err(path, e))?;
    import::check_info(&info).map_err(|e| load_err(path, e))?;
    let instance = import::create(
        root,
        &name,
        &opts.platform,
        &opts.config_json,
        Arc::clone(&opts.services),
    )
    .map_err(|e| load_err(path, e))?;
    Ok(LoadedLibrary {
        path: path.to_owned(),
        info,
        instance,
    })
}

/// Counters and gauges modules reported through their [`crate::ModuleMetrics`].
#[derive(Debug, Default)]
pub struct ModuleMetricValues {
    values: Mutex<BTreeMap<(String, String), f64>>,
}

impl ModuleMetricValues {
    /// `(module, name) → value`, sorted.
    pub fn snapshot(&self) -> Vec<((String, String), f64)> {
        self.values
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }
}

/// Host services on top of `tracing` (target `dp3::module`, field `module`) and an in-memory
/// metric table the host's `/metrics` exporter reads.
#[derive(Debug, Default, Clone)]
pub struct TracingServices {
    pub metrics: Arc<ModuleMetricValues>,
}

impl HostServices for TracingServices {
    fn log(&self, module: &str, level: LogLevel, message: &str) {
        match level {
            LogLevel::Error => tracing::error!(target: "dp3::module", module, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "dp3::module", module, "{message}"),
            LogLevel::Info => tracing::info!(target: "dp3::module", module, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "dp3::module", module, "{message}"),
            LogLevel::Trace => tracing::trace!(target: "dp3::module", module, "{message}"),
        }
    }

    fn counter(&self, module: &str, name: &str, value: u64) {
        if let Ok(mut m) = self.metrics.values.lock() {
            *m.entry((module.to_owned(), name.to_owned())).or_default() += value as f64;
        }
    }

    fn gauge(&self, module: &str, name: &str, value: f64) {
        if let Ok(mut m) = self.metrics.values.lock() {
            m.insert((module.to_owned(), name.to_owned()), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        let so = |s: &str| PathBuf::from(format!("/x/{s}{LIBRARY_SUFFIX}"));
        assert_eq!(
            module_name_from_path(&so("libfirst_seen")).as_deref(),
            Some("first_seen")
        );
        assert_eq!(
            module_name_from_path(&so("plain")).as_deref(),
            Some("plain")
        );
        assert_eq!(module_name_from_path(Path::new("/x/readme.txt")), None);
    }

    #[cfg(unix)]
    #[test]
    fn writable_libraries_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let lib = dir.path().join(format!("libm{LIBRARY_SUFFIX}"));
        std::fs::write(&lib, b"not a library").unwrap();
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_permissions(&lib).unwrap_err();
        assert!(e.reason.contains("writable by group or others"), "{e}");
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
        check_permissions(&lib).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            check_permissions(&lib)
                .unwrap_err()
                .reason
                .contains("directory")
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // a corrupt library is refused with the file name and a reason
        let Err(e) = load_library(
            &lib,
            &LoadOptions::new(Arc::new(TracingServices::default())),
        ) else {
            panic!("a text file loaded as a library");
        };
        assert!(e.to_string().contains("libm"), "{e}");
    }
}
