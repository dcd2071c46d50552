//! Errors a module reports to the host.

use std::fmt;

/// A hook failed. The host logs it with the module and hook id, counts it and goes on with
/// the next hook (core.md §3.0): a failing hook never fails the task.
///
/// Any `std::error::Error` converts into it, so `?` works inside hooks.
#[derive(Debug, Clone, PartialEq)]
pub struct HookError {
    pub message: String,
    /// The hook panicked (the panic was caught at the module boundary). Panics feed the
    /// host's per-module circuit breaker.
    pub panicked: bool,
}

impl HookError {
    pub fn new(message: impl Into<String>) -> Self {
        HookError {
            message: message.into(),
            panicked: false,
        }
    }

    pub fn panic(message: impl Into<String>) -> Self {
        HookError {
            message: message.into(),
            panicked: true,
        }
    }

    /// Turn a caught panic payload into an error.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        HookError::panic(panic_message(payload))
    }
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.panicked {
            write!(f, "panicked: {}", self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HookError {
    fn from(e: E) -> Self {
        HookError::new(e.to_string())
    }
}

/// The result type of every hook.
pub type HookResult<T> = Result<T, HookError>;

/// Module construction, configuration or lifecycle failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ModuleError {
    pub message: String,
}

impl ModuleError {
    pub fn new(message: impl Into<String>) -> Self {
        ModuleError {
            message: message.into(),
        }
    }
}

/// The text of a panic payload (`&str` or `String`; anything else is described).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}
