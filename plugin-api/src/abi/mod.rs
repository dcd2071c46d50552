//! The binary interface between the host and module libraries. This is the only place where
//! abi_stable appears; nothing here is public API.
//!
//! Shape (see rust-notes.md §1.5): a prefix-type root module ([`export::Root`]) carrying the
//! API/SDK versions and the panic strategy, and a `create` function returning a module handle
//! with a vtable of `extern "C"` functions. Ids, names and times cross as borrowed strings and
//! `i64` microseconds in `#[repr(C)]` views; values cross as BSON element bytes ([`codec`]);
//! hook outputs go back through a host-provided [`Emitter`] so no allocation crosses the
//! boundary in the hot path.

pub(crate) mod codec;
pub(crate) mod export;
#[cfg(feature = "host")]
pub(crate) mod import;

use std::ffi::c_void;

use abi_stable::StableAbi;
use abi_stable::std_types::{RResult, RSlice, RStr, RString};

/// Error returned by a module call.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiError {
    /// [`FfiError::ERROR`] or [`FfiError::PANIC`].
    pub kind: u8,
    pub message: RString,
}

impl FfiError {
    pub const ERROR: u8 = 0;
    pub const PANIC: u8 = 1;
}

/// A typed eid: `kind` is the `EidType` discriminant ([`codec::EID_STRING`] ...); ints use
/// `int`, everything else `bytes` (UTF-8 text, 4/16 address bytes, 6 MAC bytes).
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct EidView<'a> {
    pub kind: u8,
    pub int: i64,
    pub bytes: RSlice<'a, u8>,
}

/// A datapoint. Times are microseconds since the Unix epoch (`has_t1`/`has_t2` tell whether
/// they are set); `v` holds one BSON element (type byte + value bytes).
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct DataPointView<'a> {
    pub etype: RStr<'a>,
    pub eid: EidView<'a>,
    pub attr: RStr<'a>,
    pub has_src: bool,
    pub src: RStr<'a>,
    pub v: RSlice<'a, u8>,
    pub c: f64,
    pub has_t1: bool,
    pub t1: i64,
    pub has_t2: bool,
    pub t2: i64,
}

/// A task. `tags` is a BSON array element (empty slice: no tags); `ttl_tokens` is a BSON
/// document element of datetimes (empty slice: none).
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct TaskView<'a> {
    pub etype: RStr<'a>,
    pub eid: EidView<'a>,
    pub data_points: RSlice<'a, DataPointView<'a>>,
    pub tags: RSlice<'a, u8>,
    pub ttl_tokens: RSlice<'a, u8>,
    pub delete: bool,
}

/// Where a module call delivers its outputs. `ctx` is owned by the host for the duration of
/// the call; the module copies nothing out of it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct Emitter {
    pub ctx: *mut c_void,
    /// One output task.
    pub emit_task: extern "C" fn(ctx: *mut c_void, task: &TaskView<'_>),
    /// The mutated record of a correlation hook (a BSON document).
    pub set_record: extern "C" fn(ctx: *mut c_void, record: RSlice<'_, u8>),
}

/// Host services given to a module at creation: logging and metrics go through the host
/// because a module's own `log`/`tracing`/`metrics` statics are invisible to the host.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HostVTable {
    pub ctx: *const c_void,
    pub log: extern "C" fn(ctx: *const c_void, level: u8, module: RStr<'_>, message: RStr<'_>),
    pub counter: extern "C" fn(ctx: *const c_void, module: RStr<'_>, name: RStr<'_>, value: u64),
    pub gauge: extern "C" fn(ctx: *const c_void, module: RStr<'_>, name: RStr<'_>, value: f64),
}

/// A created module: an opaque instance pointer and its vtable. The instance is never freed
/// (libraries are never unloaded either).
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct ModuleHandle {
    pub inst: *const c_void,
    pub vtable: &'static ModuleVTable,
}

type Inst = *const c_void;
type CallResult = RResult<(), FfiError>;

/// The calls a host can make into a created module. `idx` is the index of the registration
/// in the list returned by `registrations`.
#[repr(C)]
#[derive(StableAbi)]
pub struct ModuleVTable {
    /// The module's registrations as JSON (see [`export`]).
    pub registrations: extern "C" fn(inst: Inst) -> RString,
    pub load_config: extern "C" fn(inst: Inst, config_json: RStr<'_>) -> CallResult,
    pub start: extern "C" fn(inst: Inst) -> CallResult,
    pub stop: extern "C" fn(inst: Inst) -> CallResult,
    pub call_task: extern "C" fn(inst: Inst, idx: u32, task: &TaskView<'_>) -> CallResult,
    pub call_allow: extern "C" fn(
        inst: Inst,
        idx: u32,
        eid: EidView<'_>,
        task: &TaskView<'_>,
    ) -> RResult<bool, FfiError>,
    pub call_creation: extern "C" fn(
        inst: Inst,
        idx: u32,
        eid: EidView<'_>,
        task: &TaskView<'_>,
        out: Emitter,
    ) -> CallResult,
    pub call_attr: extern "C" fn(
        inst: Inst,
        idx: u32,
        eid: EidView<'_>,
        dp: &DataPointView<'_>,
        out: Emitter,
    ) -> CallResult,
    /// `history` is a BSON document `{"h": [items]}`.
    pub call_timeseries: extern "C" fn(
        inst: Inst,
        idx: u32,
        etype: RStr<'_>,
        attr: RStr<'_>,
        history: RSlice<'_, u8>,
        out: Emitter,
    ) -> CallResult,
    /// `values` and `master` are BSON documents; the mutated values come back through
    /// `out.set_record`.
    pub call_correlation: extern "C" fn(
        inst: Inst,
        idx: u32,
        etype: RStr<'_>,
        values: RSlice<'_, u8>,
        master: RSlice<'_, u8>,
        out: Emitter,
    ) -> CallResult,
    /// Snapshot init/finalize hooks and scheduler jobs.
    pub call_run: extern "C" fn(inst: Inst, idx: u32, out: Emitter) -> CallResult,
    /// Periodic hooks; `master` is empty for eid-only hooks.
    pub call_periodic: extern "C" fn(
        inst: Inst,
        idx: u32,
        etype: RStr<'_>,
        eid: EidView<'_>,
        master: RSlice<'_, u8>,
        out: Emitter,
    ) -> CallResult,
}
