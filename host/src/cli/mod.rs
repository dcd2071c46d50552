//! Command-line entry points.

use std::path::{Path, PathBuf};

use dp3_model::config::{Config, load_config_dir};
use tracing::warn;

pub mod api;
pub mod check;
pub mod load;
pub mod platform;
pub mod run;
pub mod worker;

/// The configuration directory is invalid. `dp3` exits with status 2 for it (DP3's
/// convention: supervisors do not restart a process that cannot start).
#[derive(Debug, thiserror::Error)]
#[error("configuration {} is invalid:\n{errors}", path.display())]
pub struct ConfigInvalid {
    pub path: PathBuf,
    pub errors: String,
}

/// Load a configuration directory, logging its warnings.
pub fn load_config(path: &Path) -> Result<Config, ConfigInvalid> {
    let config = load_config_dir(path).map_err(|errors| ConfigInvalid {
        path: path.to_owned(),
        errors: errors.to_string(),
    })?;
    for w in &config.warnings {
        warn!("{w}");
    }
    Ok(config)
}
