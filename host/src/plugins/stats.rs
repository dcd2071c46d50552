//! Per-hook counters (core.md §8.2) and the per-module circuit breaker.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Identity of a registered hook: family, module, registration name and context.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookId {
    /// DP3's telemetry family (`on_task_start`, `on_new_plain`, `snapshot_correlation`, ...).
    pub family: &'static str,
    pub module: String,
    pub name: String,
    /// Context components, e.g. `["ip", "hostname"]`.
    pub context: Vec<String>,
}

impl HookId {
    /// `<family>/<module>.<name>/(<ctx>,...)`, components percent-encoded with DP3's safe set
    /// `._-(),[]` so exactly three `/`-separated components result.
    pub fn metric_prefix(&self) -> String {
        format!(
            "{}/{}/{}",
            encode(self.family),
            encode(&format!("{}.{}", self.module, self.name)),
            encode(&format!("({})", self.context.join(",")))
        )
    }
}

impl std::fmt::Display for HookId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{} [{}({})]",
            self.module,
            self.name,
            self.family,
            self.context.join(",")
        )
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._-(),[]".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Counters of one hook.
#[derive(Debug, Default)]
pub struct HookStats {
    pub executions: AtomicU64,
    pub failures: AtomicU64,
    pub panics: AtomicU64,
    pub duration_ns: AtomicU64,
    pub created_tasks: AtomicU64,
    pub decisions_allowed: AtomicU64,
    pub decisions_denied: AtomicU64,
    /// Outputs rejected by task validation.
    pub invalid_tasks: AtomicU64,
}

/// A point-in-time copy of [`HookStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HookStatsSnapshot {
    pub executions: u64,
    pub failures: u64,
    pub panics: u64,
    pub duration_ns: u64,
    pub created_tasks: u64,
    pub decisions_allowed: u64,
    pub decisions_denied: u64,
    pub invalid_tasks: u64,
}

impl HookStats {
    pub fn snapshot(&self) -> HookStatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HookStatsSnapshot {
            executions: g(&self.executions),
            failures: g(&self.failures),
            panics: g(&self.panics),
            duration_ns: g(&self.duration_ns),
            created_tasks: g(&self.created_tasks),
            decisions_allowed: g(&self.decisions_allowed),
            decisions_denied: g(&self.decisions_denied),
            invalid_tasks: g(&self.invalid_tasks),
        }
    }
}

/// Counters of all hooks, kept across registry generations so a reload does not reset them
/// (identical hook ids share counters, as in DP3).
#[derive(Debug, Default)]
pub struct StatsTable {
    hooks: Mutex<BTreeMap<HookId, Arc<HookStats>>>,
    /// DP3's `te/module_error`.
    pub module_errors: AtomicU64,
}

impl StatsTable {
    pub fn get(&self, id: &HookId) -> Arc<HookStats> {
        match self.hooks.lock() {
            Ok(mut m) => Arc::clone(m.entry(id.clone()).or_default()),
            Err(_) => Arc::new(HookStats::default()),
        }
    }

    /// Every hook's counters, sorted by id.
    pub fn snapshot(&self) -> Vec<(HookId, HookStatsSnapshot)> {
        self.hooks
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.snapshot())).collect())
            .unwrap_or_default()
    }
}

/// When a module is disabled for panicking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Disable the module at this many panics within `window`.
    pub max_panics: u32,
    pub window: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            max_panics: 10,
            window: Duration::from_secs(60),
        }
    }
}

/// Health of one module generation: counts recent panics and trips a circuit breaker.
/// Errors returned by hooks are normal operation (DP3 logs and continues); panics mean the
/// module's state is suspect (poisoned locks, broken invariants), so a module that keeps
/// panicking is disabled: its hooks are skipped (admission hooks then count as "allow").
#[derive(Debug)]
pub struct ModuleHealth {
    pub module: String,
    settings: BreakerSettings,
    disabled: AtomicBool,
    recent_panics: Mutex<VecDeque<Instant>>,
}

impl ModuleHealth {
    pub fn new(module: &str, settings: BreakerSettings) -> Self {
        ModuleHealth {
            module: module.to_owned(),
            settings,
            disabled: AtomicBool::new(false),
            recent_panics: Mutex::new(VecDeque::new()),
        }
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// Record a panic; returns true when this panic tripped the breaker.
    pub fn record_panic(&self) -> bool {
        let now = Instant::now();
        let Ok(mut q) = self.recent_panics.lock() else {
            return false;
        };
        q.push_back(now);
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.settings.window)
        {
            q.pop_front();
        }
        if q.len() >= self.settings.max_panics as usize
            && !self.disabled.swap(true, Ordering::Relaxed)
        {
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_prefix_is_escaped() {
        let id = HookId {
            family: "periodic_update",
            module: "m".into(),
            name: "create".into(),
            context: vec!["device/site".into(), "period=60s".into()],
        };
        assert_eq!(
            id.metric_prefix(),
            "periodic_update/m.create/(device%2Fsite,period%3D60s)"
        );
    }

    #[test]
    fn breaker_trips_after_max_panics() {
        let h = ModuleHealth::new(
            "m",
            BreakerSettings {
                max_panics: 3,
                window: Duration::from_secs(60),
            },
        );
        assert!(!h.record_panic());
        assert!(!h.record_panic());
        assert!(h.record_panic());
        assert!(h.is_disabled());
        assert!(!h.record_panic(), "trips once");
    }
}
