//! Derives `ip.category` from each incoming `ip.open_ports` observation (`on_new_attr`): the
//! first rule listing the port wins, otherwise `default`. The derived observation keeps the
//! incoming datapoint's timing and confidence.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use dp3_plugin_api::model::value::as_int;
use dp3_plugin_api::{
    Bson, DataPoint, DataPointTask, HookError, Module, ModuleError, Refresh, Registrar,
    export_module,
};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub source_attribute: String,
    pub target_attribute: String,
    /// category → ports; checked in name order.
    pub rules: BTreeMap<String, Vec<i64>>,
    pub default: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source_attribute: "open_ports".into(),
            target_attribute: "category".into(),
            rules: BTreeMap::new(),
            default: "unknown".into(),
        }
    }
}

impl Config {
    pub fn categorize(&self, port: i64) -> &str {
        self.rules
            .iter()
            .find(|(_, ports)| ports.contains(&port))
            .map_or(self.default.as_str(), |(c, _)| c.as_str())
    }
}

pub struct DeriveCategory {
    config: RwLock<Config>,
    source: String,
}

impl DeriveCategory {
    /// The derived datapoint for one incoming port observation.
    pub fn derive(&self, dp: &DataPoint) -> Result<Vec<DataPointTask>, HookError> {
        let port = as_int(&dp.v).ok_or_else(|| {
            HookError::new(format!("{} value {} is not an integer", dp.attr, dp.v))
        })?;
        let config = self
            .config
            .read()
            .map_err(|_| HookError::new("configuration lock poisoned"))?;
        let category = config.categorize(port);
        Ok(vec![DataPointTask {
            etype: dp.etype.clone(),
            eid: dp.eid.clone(),
            data_points: vec![DataPoint {
                etype: dp.etype.clone(),
                eid: dp.eid.clone(),
                attr: config.target_attribute.clone(),
                src: Some("derive_category".into()),
                v: Bson::String(category.to_owned()),
                c: dp.c,
                t1: dp.t1,
                t2: dp.t2,
            }],
            ..DataPointTask::default()
        }])
    }
}

impl Module for DeriveCategory {
    type Config = Config;

    fn new(config: Config, _: &Registrar) -> Result<Self, ModuleError> {
        Ok(DeriveCategory {
            source: config.source_attribute.clone(),
            config: RwLock::new(config),
        })
    }

    fn load_config(&self, config: Config) -> Result<(), ModuleError> {
        if config.source_attribute != self.source {
            return Err(ModuleError::new(
                "source_attribute cannot change without reloading the module",
            ));
        }
        *self
            .config
            .write()
            .map_err(|_| ModuleError::new("configuration lock poisoned"))? = config;
        Ok(())
    }

    fn register(self: &Arc<Self>, r: &mut Registrar) -> Result<(), ModuleError> {
        let me = Arc::clone(self);
        r.on_new_attr(
            "derive",
            "ip",
            &self.source,
            Refresh::Never,
            move |_, dp| me.derive(dp),
        );
        Ok(())
    }
}

export_module!(DeriveCategory);

#[cfg(test)]
mod tests {
    use super::*;
    use dp3_plugin_api::testing::{DpMatch, ModuleTest, assert_datapoint};

    fn harness() -> ModuleTest {
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        ModuleTest::with_config_dir::<DeriveCategory>("derive_category", Some(&config), None)
            .expect("module loads")
    }

    #[test]
    fn registers_one_attribute_hook() {
        let t = harness();
        t.assert_registered_once("on_new_attr", Some("ip"), Some("open_ports"));
        assert!(
            t.validation_errors().is_empty(),
            "{:?}",
            t.validation_errors()
        );
    }

    #[test]
    fn categorizes_ports_with_the_configured_rules() {
        let t = harness();
        for (port, category) in [(22, "server"), (631, "printer"), (4444, "unknown")] {
            let dp = t
                .make_observation_datapoint(
                    "ip",
                    "192.0.2.1",
                    "open_ports",
                    Bson::Int32(port),
                    None,
                )
                .unwrap();
            let tasks = t.run_on_new_attr("ip", "open_ports", &dp.eid, &dp).unwrap();
            let out = assert_datapoint(&tasks, &DpMatch::attr("category").v(category));
            assert_eq!(out.t1, dp.t1);
            // the output is a valid task for the model
            t.make_task("ip", "192.0.2.1", vec![out.clone()]).unwrap();
        }
    }

    #[test]
    fn refreshed_config_is_used() {
        let t = harness();
        let cfg = r#"{"rules": {"gateway": [22]}, "default": "other"}"#;
        t.module.control.load_config(cfg).unwrap();
        let dp = t
            .make_observation_datapoint("ip", "192.0.2.1", "open_ports", Bson::Int32(22), None)
            .unwrap();
        let tasks = t.run_on_new_attr("ip", "open_ports", &dp.eid, &dp).unwrap();
        assert_datapoint(&tasks, &DpMatch::attr("category").v("gateway"));
    }
}
