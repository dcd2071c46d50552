//! The host side of the boundary: open a library, check it, create the module and turn its
//! registrations into ordinary closures.

use std::ffi::c_void;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use abi_stable::library::lib_header_from_path;
use abi_stable::std_types::{RResult, RSlice, RStr};
use bson::{Bson, Document};
use dp3_model::{DataPoint, DataPointTask, Eid};
use serde::Deserialize;

use super::codec::{
    self, CodecError, decode_task, dp_view, eid_view, with_task_view, with_value_bytes,
};
use super::export::RootRef;
use super::{Emitter, FfiError, HostVTable, ModuleHandle, TaskView};
use crate::cron::CronSchedule;
use crate::error::{HookError, HookResult, ModuleError};
use crate::hooks::{CorrelationFn, Hook, Refresh, Tasks};
use crate::module::{ModuleControl, ModuleInstance, PlatformConfig};
use crate::registrar::Registrar;
use crate::services::{HostServices, LogLevel};

/// What a library declared about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryInfo {
    pub api_major: u32,
    pub api_minor: u32,
    pub sdk_version: String,
    pub panic_unwind: bool,
}

/// Open the library at `path` (leaked on purpose: never unloaded) and return its root
/// module. Uses `lib_header_from_path` + `init_root_module` so several libraries with the
/// same interface type load independently (no per-type cache).
pub(crate) fn open(path: &Path) -> Result<(RootRef, LibraryInfo), String> {
    let header = lib_header_from_path(path).map_err(|e| e.to_string())?;
    let root = header
        .init_root_module::<RootRef>()
        .map_err(|e| e.to_string())?;
    let info = (root.abi_info())();
    let info = LibraryInfo {
        api_major: info.api_major,
        api_minor: info.api_minor,
        sdk_version: info.sdk_version.as_str().to_owned(),
        panic_unwind: info.panic_unwind,
    };
    Ok((root, info))
}

/// Check a library's declarations against this host.
pub(crate) fn check_info(info: &LibraryInfo) -> Result<(), String> {
    if info.api_major != crate::API_MAJOR || info.api_minor > crate::API_MINOR {
        return Err(format!(
            "module API {}.{} is not compatible with the host's {}.{} (built with SDK {})",
            info.api_major,
            info.api_minor,
            crate::API_MAJOR,
            crate::API_MINOR,
            info.sdk_version
        ));
    }
    if !info.panic_unwind {
        return Err(
            "built with panic = \"abort\"; a panic would kill the host, rebuild with \
                    panic = \"unwind\""
                .to_owned(),
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------ host services

extern "C" fn svc_log(ctx: *const c_void, level: u8, module: RStr<'_>, message: RStr<'_>) {
    let s = services(ctx);
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.log(module.as_str(), LogLevel::from_u8(level), message.as_str())
    }));
}

extern "C" fn svc_counter(ctx: *const c_void, module: RStr<'_>, name: RStr<'_>, value: u64) {
    let s = services(ctx);
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.counter(module.as_str(), name.as_str(), value)
    }));
}

extern "C" fn svc_gauge(ctx: *const c_void, module: RStr<'_>, name: RStr<'_>, value: f64) {
    let s = services(ctx);
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.gauge(module.as_str(), name.as_str(), value)
    }));
}

fn services<'a>(ctx: *const c_void) -> &'a Arc<dyn HostServices> {
    // SAFETY: `ctx` is the leaked `Box<Arc<dyn HostServices>>` made in `create`.
    unsafe { &*(ctx as *const Arc<dyn HostServices>) }
}

// ------------------------------------------------------------------------------ creation

/// A created module in a library.
#[derive(Clone, Copy)]
struct Remote(ModuleHandle);

// SAFETY: module instances are `Send + Sync` (the `Module` trait requires it) and the vtable
// is a static.
unsafe impl Send for Remote {}
unsafe impl Sync for Remote {}

impl Remote {
    /// Closures must capture the whole `Remote` (which is `Send + Sync`), not the raw field.
    fn inst(&self) -> *const c_void {
        self.0.inst
    }
}

fn ffi_result<T>(r: RResult<T, FfiError>) -> HookResult<T> {
    r.into_result().map_err(|e| HookError {
        message: e.message.into_string(),
        panicked: e.kind == FfiError::PANIC,
    })
}

impl ModuleControl for Remote {
    fn load_config(&self, config_json: &str) -> Result<(), ModuleError> {
        ffi_result((self.0.vtable.load_config)(
            self.0.inst,
            RStr::from_str(config_json),
        ))
        .map_err(|e| ModuleError::new(e.to_string()))
    }
    fn start(&self) -> Result<(), ModuleError> {
        ffi_result((self.0.vtable.start)(self.0.inst)).map_err(|e| ModuleError::new(e.to_string()))
    }
    fn stop(&self) -> Result<(), ModuleError> {
        ffi_result((self.0.vtable.stop)(self.0.inst)).map_err(|e| ModuleError::new(e.to_string()))
    }
}

/// Create module `name` from an opened library.
pub(crate) fn create(
    root: RootRef,
    name: &str,
    platform: &PlatformConfig,
    config_json: &str,
    services: Arc<dyn HostServices>,
) -> Result<ModuleInstance, String> {
    let platform_json = serde_json::to_string(platform).map_err(|e| e.to_string())?;
    // Leaked: the module may log from any thread for the rest of the process.
    let ctx = Box::into_raw(Box::new(Arc::clone(&services))) as *const c_void;
    let host = HostVTable {
        ctx,
        log: svc_log,
        counter: svc_counter,
        gauge: svc_gauge,
    };
    let handle = ffi_result((root.create())(
        RStr::from_str(name),
        host,
        RStr::from_str(&platform_json),
        RStr::from_str(config_json),
    ))
    .map_err(|e| format!("module construction failed: {e}"))?;
    let remote = Remote(handle);
    let meta_json = (handle.vtable.registrations)(handle.inst);
    let metas: Vec<RegMeta> = serde_json::from_str(meta_json.as_str())
        .map_err(|e| format!("unreadable registration list: {e}"))?;
    let mut registrar = Registrar::with_services(name, platform.clone(), None, services);
    for (idx, meta) in metas.into_iter().enumerate() {
        let idx = u32::try_from(idx).map_err(|_| "too many registrations".to_owned())?;
        let hook = remote_hook(remote, idx, &meta)?;
        registrar.push(meta.name, hook);
    }
    Ok(ModuleInstance {
        name: name.to_owned(),
        control: Arc::new(remote),
        registrar,
    })
}

#[derive(Deserialize)]
struct RegMeta {
    name: String,
    kind: String,
    entity: Option<String>,
    attr: Option<String>,
    refresh: Option<Vec<Vec<String>>>,
    #[serde(default)]
    depends_on: Vec<Vec<String>>,
    #[serde(default)]
    may_change: Vec<Vec<String>>,
    period_ms: Option<u64>,
    job_id: Option<u32>,
    misfire_grace_ms: Option<u64>,
    schedule: Option<ScheduleMeta>,
}

#[derive(Deserialize)]
struct ScheduleMeta {
    year: Option<String>,
    month: Option<String>,
    day: Option<String>,
    week: Option<String>,
    day_of_week: Option<String>,
    hour: Option<String>,
    minute: Option<String>,
    second: Option<String>,
    timezone: String,
}

/// Collects what a module call emits.
#[derive(Default)]
struct Sink {
    tasks: Vec<DataPointTask>,
    record: Option<Document>,
    error: Option<CodecError>,
}

extern "C" fn sink_task(ctx: *mut c_void, task: &TaskView<'_>) {
    // SAFETY: `ctx` is the `&mut Sink` of the ongoing call (see `Sink::emitter`).
    let sink = unsafe { &mut *(ctx as *mut Sink) };
    match decode_task(task) {
        Ok(t) => sink.tasks.push(t),
        Err(e) => sink.error = Some(e),
    }
}

extern "C" fn sink_record(ctx: *mut c_void, record: RSlice<'_, u8>) {
    // SAFETY: as in `sink_task`.
    let sink = unsafe { &mut *(ctx as *mut Sink) };
    match codec::decode_document(record.as_slice()) {
        Ok(d) => sink.record = Some(d),
        Err(e) => sink.error = Some(e),
    }
}

impl Sink {
    fn emitter(&mut self) -> Emitter {
        Emitter {
            ctx: self as *mut Sink as *mut c_void,
            emit_task: sink_task,
            set_record: sink_record,
        }
    }

    fn finish(self, r: RResult<(), FfiError>) -> Tasks {
        ffi_result(r)?;
        match self.error {
            Some(e) => Err(HookError::new(format!(
                "module returned unreadable output: {e}"
            ))),
            None => Ok(self.tasks),
        }
    }
}

fn encode_doc(d: &Document) -> HookResult<Vec<u8>> {
    let mut buf = Vec::with_capacity(256);
    codec::encode_document(d, &mut buf)?;
    Ok(buf)
}

fn task_call(
    task: &DataPointTask,
    f: impl FnOnce(&TaskView<'_>) -> HookResult<()>,
) -> HookResult<()> {
    with_task_view(task, f)?
}

fn remote_hook(r: Remote, idx: u32, m: &RegMeta) -> Result<Hook, String> {
    let vt = r.0.vtable;
    let entity = || {
        m.entity
            .clone()
            .ok_or_else(|| format!("registration '{}' ({}) has no entity", m.name, m.kind))
    };
    let attr = || {
        m.attr
            .clone()
            .ok_or_else(|| format!("registration '{}' ({}) has no attribute", m.name, m.kind))
    };
    let refresh = || match &m.refresh {
        None => Refresh::Never,
        Some(p) => Refresh::OnConfigChange {
            may_change: p.clone(),
        },
    };
    let period = || {
        m.period_ms
            .map(Duration::from_millis)
            .ok_or_else(|| format!("registration '{}' has no period", m.name))
    };
    let run = move || -> Tasks {
        let mut sink = Sink::default();
        let res = (vt.call_run)(r.inst(), idx, sink.emitter());
        sink.finish(res)
    };
    Ok(match m.kind.as_str() {
        "task" => Hook::TaskStart(Arc::new(move |task: &DataPointTask| {
            task_call(task, |v| ffi_result((vt.call_task)(r.inst(), idx, v)))
        })),
        "allow_entity_creation" => Hook::AllowEntityCreation {
            entity: entity()?,
            hook: Arc::new(move |eid: &Eid, task: &DataPointTask| {
                let mut s = [0; 16];
                let ev = eid_view(eid, &mut s);
                with_task_view(task, |v| ffi_result((vt.call_allow)(r.inst(), idx, ev, v)))?
            }),
        },
        "on_entity_creation" => Hook::OnEntityCreation {
            entity: entity()?,
            refresh: refresh(),
            hook: Arc::new(move |eid: &Eid, task: &DataPointTask| {
                let mut s = [0; 16];
                let ev = eid_view(eid, &mut s);
                let mut sink = Sink::default();
                let res = with_task_view(task, |v| {
                    (vt.call_creation)(r.inst(), idx, ev, v, sink.emitter())
                })?;
                sink.finish(res)
            }),
        },
        "on_new_attr" => Hook::OnNewAttr {
            entity: entity()?,
            attr: attr()?,
            refresh: refresh(),
            hook: Arc::new(move |eid: &Eid, dp: &DataPoint| {
                let mut s1 = [0; 16];
                let mut s2 = [0; 16];
                let mut sink = Sink::default();
                let res = with_value_bytes(&dp.v, |value| {
                    let view = dp_view(dp, &mut s2, value);
                    (vt.call_attr)(r.inst(), idx, eid_view(eid, &mut s1), &view, sink.emitter())
                })?;
                sink.finish(res)
            }),
        },
        "timeseries" => Hook::Timeseries {
            entity: entity()?,
            attr: attr()?,
            hook: Arc::new(move |etype: &str, attr: &str, history: &[Document]| {
                let items: Vec<Bson> = history.iter().cloned().map(Bson::Document).collect();
                let bytes = encode_doc(&bson::doc! {"h": items})?;
                let mut sink = Sink::default();
                let res = (vt.call_timeseries)(
                    r.inst(),
                    idx,
                    RStr::from_str(etype),
                    RStr::from_str(attr),
                    RSlice::from_slice(&bytes),
                    sink.emitter(),
                );
                sink.finish(res)
            }),
        },
        kind @ ("correlation" | "correlation_with_master_record") => {
            let call = move |etype: &str, values: &mut Document, master: Option<&Document>| {
                let vbytes = encode_doc(values)?;
                let mbytes = master.map(encode_doc).transpose()?.unwrap_or_default();
                let mut sink = Sink::default();
                let res = (vt.call_correlation)(
                    r.inst(),
                    idx,
                    RStr::from_str(etype),
                    RSlice::from_slice(&vbytes),
                    RSlice::from_slice(&mbytes),
                    sink.emitter(),
                );
                let record = sink.record.take();
                let tasks = sink.finish(res)?;
                if let Some(rec) = record {
                    *values = rec;
                }
                Ok(tasks)
            };
            let hook = if kind == "correlation" {
                CorrelationFn::Values(Arc::new(move |e: &str, v: &mut Document| call(e, v, None)))
            } else {
                CorrelationFn::WithMaster(Arc::new(
                    move |e: &str, v: &mut Document, m: &Document| call(e, v, Some(m)),
                ))
            };
            Hook::Correlation {
                entity: entity()?,
                depends_on: m.depends_on.clone(),
                may_change: m.may_change.clone(),
                hook,
            }
        }
        "snapshot_init" => Hook::SnapshotInit(Arc::new(run)),
        "snapshot_finalize" => Hook::SnapshotFinalize(Arc::new(run)),
        kind @ ("periodic_update" | "periodic_eid_update") => {
            let call = move |etype: &str, eid: &Eid, master: Option<&Document>| -> Tasks {
                let mbytes = master.map(encode_doc).transpose()?.unwrap_or_default();
                let mut s = [0; 16];
                let mut sink = Sink::default();
                let res = (vt.call_periodic)(
                    r.inst(),
                    idx,
                    RStr::from_str(etype),
                    eid_view(eid, &mut s),
                    RSlice::from_slice(&mbytes),
                    sink.emitter(),
                );
                sink.finish(res)
            };
            if kind == "periodic_update" {
                Hook::PeriodicUpdate {
                    entity: entity()?,
                    period: period()?,
                    hook: Arc::new(move |e: &str, eid: &Eid, m: &Document| call(e, eid, Some(m))),
                }
            } else {
                Hook::PeriodicEidUpdate {
                    entity: entity()?,
                    period: period()?,
                    hook: Arc::new(move |e: &str, eid: &Eid| call(e, eid, None)),
                }
            }
        }
        "scheduler" => {
            let grace = Duration::from_millis(m.misfire_grace_ms.unwrap_or(1000));
            Hook::Scheduler {
                job_id: m.job_id.unwrap_or(idx + 1),
                schedule: m.schedule.as_ref().map(|s| CronSchedule {
                    year: s.year.clone(),
                    month: s.month.clone(),
                    day: s.day.clone(),
                    week: s.week.clone(),
                    day_of_week: s.day_of_week.clone(),
                    hour: s.hour.clone(),
                    minute: s.minute.clone(),
                    second: s.second.clone(),
                    timezone: s.timezone.clone(),
                    misfire_grace_time: grace,
                }),
                misfire_grace_time: grace,
                job: Arc::new(run),
            }
        }
        other => {
            return Err(format!(
                "registration '{}' has unknown kind '{other}'",
                m.name
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(api_major: u32, api_minor: u32, panic_unwind: bool) -> LibraryInfo {
        LibraryInfo {
            api_major,
            api_minor,
            sdk_version: "9.9.9".into(),
            panic_unwind,
        }
    }

    #[test]
    fn incompatible_or_abort_libraries_are_refused() {
        check_info(&info(crate::API_MAJOR, crate::API_MINOR, true)).unwrap();
        let e = check_info(&info(crate::API_MAJOR, crate::API_MINOR, false)).unwrap_err();
        assert!(e.contains("panic = \"abort\""), "{e}");
        let e = check_info(&info(crate::API_MAJOR + 1, 0, true)).unwrap_err();
        assert!(e.contains("not compatible") && e.contains("9.9.9"), "{e}");
        assert!(check_info(&info(crate::API_MAJOR, crate::API_MINOR + 1, true)).is_err());
    }
}
