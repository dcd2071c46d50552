//! The DP3 module author's crate.
//!
//! A module is a Rust library built as a `cdylib`. It implements [`Module`], registers its hooks
//! through a [`Registrar`] in [`Module::register`], and exports itself with
//! [`export_module!`]. The host loads the library, passes the module its
//! `modules/<name>.yml` configuration (deserialised into [`Module::Config`]) and calls the hooks
//! on worker threads. See `docs/modules.md` for the guide.
//!
//! Everything a module needs is re-exported here (the model types from `dp3-model`, `bson`), so
//! module crates depend on this crate only. The binary interface (abi_stable) is private.

mod abi;
pub mod correlation;
pub mod cron;
mod error;
pub mod hooks;
mod module;
pub mod period;
mod registrar;
mod services;

#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "testing")]
pub mod testing;

pub use bson;
pub use bson::{Bson, Document, doc};
pub use chrono;
pub use chrono::{DateTime, Utc};
pub use dp3_model as model;
pub use dp3_model::value;
pub use dp3_model::{
    AttrType, DataPoint, DataPointTask, DataType, Eid, EidType, MacAddr, ModelSpec, Value,
};

pub use cron::CronSchedule;
pub use error::{HookError, HookResult, ModuleError};
pub use hooks::{Hook, Refresh, Registration, paths};
pub use module::{Module, ModuleControl, ModuleInstance, PlatformConfig, instantiate};
pub use registrar::Registrar;
pub use services::{HostServices, LogLevel, ModuleLogger, ModuleMetrics, StderrServices};

/// Major version of the module binary interface. A library built against another major
/// version is refused at load time.
pub const API_MAJOR: u32 = 1;
/// Minor version of the module binary interface. The host accepts libraries with a minor
/// version not newer than its own.
pub const API_MINOR: u32 = 0;
/// Version of this SDK crate (recorded in every module library).
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

#[doc(hidden)]
pub mod __private {
    pub use crate::abi::codec::through_codec_attr;
    /// The value codec, for the fuzz targets (`fuzz/`) and corpus replay tests.
    pub use crate::abi::codec::{decode_value, encode_value};
    pub use crate::abi::export::{__root_module, AbiInfo, RootRef};
    pub use abi_stable::library::{CheckTypeLayout, LibHeader, RootModuleResult};
}

/// Export a [`Module`] implementation as the entry point of a module library.
///
/// ```ignore
/// dp3_plugin_api::export_module!(MyModule);
/// ```
///
/// Every call from the host into the module goes through a wrapper that catches panics and
/// reports them to the host as hook failures (a panic never unwinds across the boundary).
/// The library records whether it was built with `panic = "unwind"`; the host refuses
/// `panic = "abort"` builds because a single panic there would kill the host.
#[macro_export]
macro_rules! export_module {
    ($module:ty) => {
        /// The abi_stable library header (the symbol name is abi_stable's
        /// `ROOT_MODULE_LOADER_NAME`, checked by a unit test of dp3-plugin-api).
        #[unsafe(no_mangle)]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::LibHeader = {
            extern "C" fn __dp3_root_module() -> $crate::__private::RootModuleResult {
                $crate::__private::__root_module::<$module, { cfg!(panic = "unwind") }>()
            }
            unsafe {
                $crate::__private::LibHeader::from_constructor::<$crate::__private::RootRef>(
                    __dp3_root_module,
                    $crate::__private::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
