//! A module that panics in every hook: used by the host's tests of panic isolation, failure
//! counting and the circuit breaker. Registered hooks use the `ip` entity of the example
//! configuration.

use std::sync::Arc;

use dp3_plugin_api::{Module, ModuleError, Refresh, Registrar, export_module, paths};

pub struct Panicky;

/// No options. A struct rather than `()`: `dp3 run` hands every module a mapping (empty when
/// there is no `modules/panicky.yml`), which `()` cannot be read from.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PanickyConfig {}

impl Module for Panicky {
    type Config = PanickyConfig;

    fn new(_: PanickyConfig, _: &Registrar) -> Result<Self, ModuleError> {
        Ok(Panicky)
    }

    fn register(self: &Arc<Self>, r: &mut Registrar) -> Result<(), ModuleError> {
        r.on_task_start("boom_task", |_| panic!("on_task_start panics"));
        r.allow_entity_creation("boom_allow", "ip", |_, _| panic!("allow panics"));
        r.on_entity_creation("boom_create", "ip", Refresh::Never, |_, _| {
            panic!("creation panics")
        });
        r.on_new_attr("boom_attr", "ip", "hostname", Refresh::Never, |_, _| {
            panic!("attr panics")
        });
        r.correlation(
            "boom_corr",
            "ip",
            vec![],
            paths(&[&["hostname"]]),
            |_, _| panic!("correlation panics"),
        );
        Ok(())
    }
}

export_module!(Panicky);
