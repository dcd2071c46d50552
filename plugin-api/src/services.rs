//! Host services: logging and metrics. A module library has its own copies of `log`,
//! `tracing` and `metrics` whose global statics the host never sees, so modules log and count
//! through these handles instead.

use std::sync::Arc;

/// Log levels understood by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum LogLevel {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
    Trace = 4,
}

impl LogLevel {
    pub fn from_u8(v: u8) -> LogLevel {
        match v {
            0 => LogLevel::Error,
            1 => LogLevel::Warn,
            2 => LogLevel::Info,
            3 => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }
}

/// What the host provides to modules. The host implements it on top of `tracing` and its
/// metrics registry; tests use a capturing implementation.
pub trait HostServices: Send + Sync {
    fn log(&self, module: &str, level: LogLevel, message: &str);
    /// Add `value` to the module counter `name`.
    fn counter(&self, module: &str, name: &str, value: u64);
    /// Set the module gauge `name`.
    fn gauge(&self, module: &str, name: &str, value: f64);
}

/// Services that print warnings and errors to stderr and drop metrics (used when no host is
/// present, e.g. a module instantiated directly).
#[derive(Debug, Default, Clone, Copy)]
pub struct StderrServices;

impl HostServices for StderrServices {
    fn log(&self, module: &str, level: LogLevel, message: &str) {
        if level <= LogLevel::Warn {
            eprintln!("[{level:?}] {module}: {message}");
        }
    }
    fn counter(&self, _: &str, _: &str, _: u64) {}
    fn gauge(&self, _: &str, _: &str, _: f64) {}
}

/// A module's logger (cheap to clone, usable from any thread).
#[derive(Clone)]
pub struct ModuleLogger {
    module: Arc<str>,
    services: Arc<dyn HostServices>,
}

impl ModuleLogger {
    pub fn new(module: &str, services: Arc<dyn HostServices>) -> Self {
        ModuleLogger {
            module: module.into(),
            services,
        }
    }
    pub fn log(&self, level: LogLevel, message: impl AsRef<str>) {
        self.services.log(&self.module, level, message.as_ref());
    }
    pub fn error(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Error, message);
    }
    pub fn warn(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Warn, message);
    }
    pub fn info(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Info, message);
    }
    pub fn debug(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Debug, message);
    }
}

/// A module's metrics handle (cheap to clone, usable from any thread).
#[derive(Clone)]
pub struct ModuleMetrics {
    module: Arc<str>,
    services: Arc<dyn HostServices>,
}

impl ModuleMetrics {
    pub fn new(module: &str, services: Arc<dyn HostServices>) -> Self {
        ModuleMetrics {
            module: module.into(),
            services,
        }
    }
    pub fn counter(&self, name: &str, value: u64) {
        self.services.counter(&self.module, name, value);
    }
    pub fn gauge(&self, name: &str, value: f64) {
        self.services.gauge(&self.module, name, value);
    }
}
