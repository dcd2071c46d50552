//! The module-library side of the boundary: the root module and the vtable that dispatches
//! host calls to the module's registered closures. Every entry point catches panics.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use abi_stable::library::{RootModule, RootModuleResult};
use abi_stable::prefix_type::{PrefixTypeTrait, WithMetadata};
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RErr, ROk, RResult, RSlice, RStr, RString};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings};
use bson::{Bson, Document};
use serde_json::json;

use super::codec::{self, decode_dp, decode_eid, decode_task, with_task_view};
use super::{
    DataPointView, EidView, Emitter, FfiError, HostVTable, ModuleHandle, ModuleVTable, TaskView,
};
use crate::error::{HookError, ModuleError, panic_message};
use crate::hooks::{CorrelationFn, Hook, Refresh};
use crate::module::{Module, ModuleControl, PlatformConfig, instantiate};
use crate::services::{HostServices, LogLevel};

/// What a library declares about itself; checked by the host before anything else.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct AbiInfo {
    pub api_major: u32,
    pub api_minor: u32,
    pub sdk_version: RStr<'static>,
    /// Built with `panic = "unwind"` (evaluated in the module crate).
    pub panic_unwind: bool,
}

/// The root module of every module library.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = RootRef)))]
#[sabi(missing_field(panic))]
pub struct Root {
    pub abi_info: extern "C" fn() -> AbiInfo,
    /// Create the module: `(module name, host services, platform config JSON, module config
    /// JSON)`.
    #[sabi(last_prefix_field)]
    pub create: extern "C" fn(
        name: RStr<'_>,
        host: HostVTable,
        platform_json: RStr<'_>,
        config_json: RStr<'_>,
    ) -> RResult<ModuleHandle, FfiError>,
}

impl RootModule for RootRef {
    declare_root_module_statics! {RootRef}
    const BASE_NAME: &'static str = "dp3_module";
    const NAME: &'static str = "dp3_module";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

#[doc(hidden)]
pub fn __root_module<M: Module, const UNWIND: bool>() -> RootModuleResult {
    abi_stable::library::__call_root_module_loader(build_root::<M, UNWIND>)
}

fn build_root<M: Module, const UNWIND: bool>() -> RootRef {
    Root {
        abi_info: abi_info::<UNWIND>,
        create: create::<M>,
    }
    .leak_into_prefix()
}

// `WithMetadata` is used by `leak_into_prefix`; keep the import referenced for clarity.
#[allow(dead_code)]
type _Meta = WithMetadata<Root>;

extern "C" fn abi_info<const UNWIND: bool>() -> AbiInfo {
    AbiInfo {
        api_major: crate::API_MAJOR,
        api_minor: crate::API_MINOR,
        sdk_version: RStr::from_str(crate::SDK_VERSION),
        panic_unwind: UNWIND,
    }
}

/// Host services reached through the host's vtable.
struct FfiServices(HostVTable);

// SAFETY: the host guarantees that its services context is thread-safe (it is an
// `Arc<dyn HostServices>` that lives as long as the process).
unsafe impl Send for FfiServices {}
unsafe impl Sync for FfiServices {}

impl HostServices for FfiServices {
    fn log(&self, module: &str, level: LogLevel, message: &str) {
        (self.0.log)(
            self.0.ctx,
            level as u8,
            RStr::from_str(module),
            RStr::from_str(message),
        );
    }
    fn counter(&self, module: &str, name: &str, value: u64) {
        (self.0.counter)(
            self.0.ctx,
            RStr::from_str(module),
            RStr::from_str(name),
            value,
        );
    }
    fn gauge(&self, module: &str, name: &str, value: f64) {
        (self.0.gauge)(
            self.0.ctx,
            RStr::from_str(module),
            RStr::from_str(name),
            value,
        );
    }
}

/// A created module inside the library.
struct Instance {
    control: Arc<dyn ModuleControl>,
    hooks: Vec<Hook>,
    registrations_json: String,
}

extern "C" fn create<M: Module>(
    name: RStr<'_>,
    host: HostVTable,
    platform_json: RStr<'_>,
    config_json: RStr<'_>,
) -> RResult<ModuleHandle, FfiError> {
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<ModuleHandle, ModuleError> {
        let platform: PlatformConfig = serde_json::from_str(platform_json.as_str())
            .map_err(|e| ModuleError::new(format!("invalid platform config: {e}")))?;
        let services: Arc<dyn HostServices> = Arc::new(FfiServices(host));
        // The model crosses no boundary: the module reads it from the configuration directory
        // itself (same files as the host, so the same model).
        let model = (!platform.config_dir.as_os_str().is_empty())
            .then(|| dp3_model::config::load_config_dir(&platform.config_dir).ok())
            .flatten()
            .map(|c| Arc::new(c.model));
        let instance = instantiate::<M>(
            name.as_str(),
            config_json.as_str(),
            platform,
            model,
            services,
        )?;
        let registrations = instance.registrar.into_registrations();
        let meta: Vec<serde_json::Value> = registrations
            .iter()
            .map(|r| describe(&r.name, &r.hook))
            .collect();
        let inst = Box::new(Instance {
            control: instance.control,
            hooks: registrations.into_iter().map(|r| r.hook).collect(),
            registrations_json: serde_json::Value::Array(meta).to_string(),
        });
        // Never freed: the library is never unloaded either, and the host may hold the
        // handle until the process exits.
        Ok(ModuleHandle {
            inst: Box::into_raw(inst) as *const c_void,
            vtable: &VTABLE,
        })
    }));
    match result {
        Ok(Ok(h)) => ROk(h),
        Ok(Err(e)) => RErr(FfiError {
            kind: FfiError::ERROR,
            message: e.message.into(),
        }),
        Err(p) => RErr(FfiError {
            kind: FfiError::PANIC,
            message: panic_message(&*p).into(),
        }),
    }
}

fn describe(name: &str, hook: &Hook) -> serde_json::Value {
    let refresh = |r: &Refresh| match r {
        Refresh::Never => serde_json::Value::Null,
        Refresh::OnConfigChange { may_change } => json!(may_change),
    };
    let mut v =
        json!({"name": name, "kind": hook.kind(), "entity": hook.entity(), "attr": hook.attr()});
    let extra = match hook {
        Hook::OnEntityCreation { refresh: r, .. } | Hook::OnNewAttr { refresh: r, .. } => {
            json!({"refresh": refresh(r)})
        }
        Hook::Correlation {
            depends_on,
            may_change,
            ..
        } => json!({"depends_on": depends_on, "may_change": may_change}),
        Hook::PeriodicUpdate { period, .. } | Hook::PeriodicEidUpdate { period, .. } => {
            json!({"period_ms": period.as_millis() as u64})
        }
        Hook::Scheduler {
            job_id,
            schedule,
            misfire_grace_time,
            ..
        } => json!({
            "job_id": job_id,
            "misfire_grace_ms": misfire_grace_time.as_millis() as u64,
            "schedule": schedule.as_ref().map(|s| json!({
                "year": s.year, "month": s.month, "day": s.day, "week": s.week,
                "day_of_week": s.day_of_week, "hour": s.hour, "minute": s.minute,
                "second": s.second, "timezone": s.timezone,
            })),
        }),
        _ => json!({}),
    };
    if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
        obj.extend(extra);
    }
    v
}

static VTABLE: ModuleVTable = ModuleVTable {
    registrations,
    load_config,
    start,
    stop,
    call_task,
    call_allow,
    call_creation,
    call_attr,
    call_timeseries,
    call_correlation,
    call_run,
    call_periodic,
};

fn instance<'a>(inst: *const c_void) -> &'a Instance {
    // SAFETY: `inst` was produced by `create` from `Box<Instance>` and is never freed.
    unsafe { &*(inst as *const Instance) }
}

/// Run `f`, turning errors and panics into an `FfiError`.
fn guard<T>(f: impl FnOnce() -> Result<T, HookError>) -> RResult<T, FfiError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => ROk(v),
        Ok(Err(e)) => RErr(FfiError {
            kind: if e.panicked {
                FfiError::PANIC
            } else {
                FfiError::ERROR
            },
            message: e.message.into(),
        }),
        Err(p) => RErr(FfiError {
            kind: FfiError::PANIC,
            message: panic_message(&*p).into(),
        }),
    }
}

fn hook_at(inst: *const c_void, idx: u32) -> Result<&'static Hook, HookError> {
    instance(inst)
        .hooks
        .get(idx as usize)
        .ok_or_else(|| HookError::new(format!("no registration with index {idx}")))
}

fn wrong(idx: u32, hook: &Hook) -> HookError {
    HookError::new(format!("registration {idx} is a {} hook", hook.kind()))
}

fn emit(out: &Emitter, tasks: &[dp3_model::DataPointTask]) -> Result<(), HookError> {
    for t in tasks {
        with_task_view(t, |v| (out.emit_task)(out.ctx, v))?;
    }
    Ok(())
}

fn module_err(e: ModuleError) -> HookError {
    HookError::new(e.message)
}

extern "C" fn registrations(inst: *const c_void) -> RString {
    instance(inst).registrations_json.as_str().into()
}

extern "C" fn load_config(inst: *const c_void, config_json: RStr<'_>) -> RResult<(), FfiError> {
    guard(|| {
        instance(inst)
            .control
            .load_config(config_json.as_str())
            .map_err(module_err)
    })
}

extern "C" fn start(inst: *const c_void) -> RResult<(), FfiError> {
    guard(|| instance(inst).control.start().map_err(module_err))
}

extern "C" fn stop(inst: *const c_void) -> RResult<(), FfiError> {
    guard(|| instance(inst).control.stop().map_err(module_err))
}

extern "C" fn call_task(
    inst: *const c_void,
    idx: u32,
    task: &TaskView<'_>,
) -> RResult<(), FfiError> {
    guard(|| match hook_at(inst, idx)? {
        Hook::TaskStart(h) => h(&decode_task(task)?),
        other => Err(wrong(idx, other)),
    })
}

extern "C" fn call_allow(
    inst: *const c_void,
    idx: u32,
    eid: EidView<'_>,
    task: &TaskView<'_>,
) -> RResult<bool, FfiError> {
    guard(|| match hook_at(inst, idx)? {
        Hook::AllowEntityCreation { hook, .. } => hook(&decode_eid(&eid)?, &decode_task(task)?),
        other => Err(wrong(idx, other)),
    })
}

extern "C" fn call_creation(
    inst: *const c_void,
    idx: u32,
    eid: EidView<'_>,
    task: &TaskView<'_>,
    out: Emitter,
) -> RResult<(), FfiError> {
    guard(|| match hook_at(inst, idx)? {
        Hook::OnEntityCreation { hook, .. } => {
            emit(&out, &hook(&decode_eid(&eid)?, &decode_task(task)?)?)
        }
        other => Err(wrong(idx, other)),
    })
}

extern "C" fn call_attr(
    inst: *const c_void,
    idx: u32,
    eid: EidView<'_>,
    dp: &DataPointView<'_>,
    out: Emitter,
) -> RResult<(), FfiError> {
    guard(|| match hook_at(inst, idx)? {
        Hook::OnNewAttr { hook, .. } => emit(&out, &hook(&decode_eid(&eid)?, &decode_dp(dp)?)?),
        other => Err(wrong(idx, other)),
    })
}

extern "C" fn call_timeseries(
    inst: *const c_void,
    idx: u32,
    etype: RStr<'_>,
    attr: RStr<'_>,
    history: RSlice<'_, u8>,
    out: Emitter,
) -> RResult<(), FfiError> {
    guard(|| match hook_at(inst, idx)? {
        Hook::Timeseries { hook, .. } => {
            let mut d = codec::decode_document(history.as_slice())?;
            let items = match d.remove("h") {
                Some(Bson::Array(a)) => a
                    .into_iter()
                    .map(|i| match i {
                        Bson::Document(d) => Ok(d),
                        _ => Err(HookError::new("timeseries history item is not a document")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(HookError::new("timeseries history is not an array")),
            };
            emit(&out, &hook(etype.as_str(), attr.as_str(), &items)?)
        }
        other => Err(wrong(idx, other)),
    })
}

extern "C" fn call_correlation(
    inst: *const c_void,
    idx: u32,
    etype: RStr<'_>,
    values: RSlice<'_, u8>,
    master: RSlice<'_, u8>,
    out: Emitter,
) -> RResult<(), FfiError> {
    guard(|| match hook_at(inst, idx)? {
        Hook::Correlation { hook, .. } => {
            let mut record = codec::decode_document(values.as_slice())?;
            let tasks = match hook {
                CorrelationFn::Values(h) => h(etype.as_str(), &mut record)?,
                CorrelationFn::WithMaster(h) => {
                    let master = if master.is_empty() {
                        Document::new()
                    } else {
                        codec::decode_document(master.as_slice())?
                    };
                    h(etype.as_str(), &mut record, &master)?
                }
            };
            let mut buf = Vec::new();
            codec::encode_document(&record, &mut buf)?;
            (out.set_record)(out.ctx, RSlice::from_slice(&buf));
            emit(&out, &tasks)
        }
        other => Err(wrong(idx, other)),
    })
}

extern "C" fn call_run(inst: *const c_void, idx: u32, out: Emitter) -> RResult<(), FfiError> {
    guard(|| match hook_at(inst, idx)? {
        Hook::SnapshotInit(h) | Hook::SnapshotFinalize(h) => emit(&out, &h()?),
        Hook::Scheduler { job, .. } => emit(&out, &job()?),
        other => Err(wrong(idx, other)),
    })
}

extern "C" fn call_periodic(
    inst: *const c_void,
    idx: u32,
    etype: RStr<'_>,
    eid: EidView<'_>,
    master: RSlice<'_, u8>,
    out: Emitter,
) -> RResult<(), FfiError> {
    guard(|| match hook_at(inst, idx)? {
        Hook::PeriodicUpdate { hook, .. } => {
            let master = codec::decode_document(master.as_slice())?;
            emit(&out, &hook(etype.as_str(), &decode_eid(&eid)?, &master)?)
        }
        Hook::PeriodicEidUpdate { hook, .. } => {
            emit(&out, &hook(etype.as_str(), &decode_eid(&eid)?)?)
        }
        other => Err(wrong(idx, other)),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_symbol_matches_abi_stable() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
