//! Records when an entity was seen for the first time: an `on_entity_creation` hook emits the
//! plain attribute `<attribute>` = now for every configured entity type.

use std::sync::Arc;

use dp3_plugin_api::model::value;
use dp3_plugin_api::{
    DataPoint, DataPointTask, Module, ModuleError, Refresh, Registrar, export_module,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Config {
    pub entity_types: Vec<String>,
    /// A plain `time` attribute present in every listed entity type.
    pub attribute: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            entity_types: vec!["ip".into()],
            attribute: "first_seen".into(),
        }
    }
}

pub struct FirstSeen {
    config: Config,
}

impl Module for FirstSeen {
    type Config = Config;

    fn new(config: Config, _: &Registrar) -> Result<Self, ModuleError> {
        if config.attribute.is_empty() {
            return Err(ModuleError::new("`attribute` must not be empty"));
        }
        Ok(FirstSeen { config })
    }

    fn register(self: &Arc<Self>, r: &mut Registrar) -> Result<(), ModuleError> {
        for etype in &self.config.entity_types {
            let attr = self.config.attribute.clone();
            r.on_entity_creation(
                "record_first_seen",
                etype,
                Refresh::Never,
                move |eid, task| {
                    let now = chrono_now();
                    Ok(vec![DataPointTask {
                        etype: task.etype.clone(),
                        eid: eid.clone(),
                        data_points: vec![DataPoint {
                            etype: task.etype.clone(),
                            eid: eid.clone(),
                            attr: attr.clone(),
                            src: Some("first_seen".into()),
                            v: value::time(now),
                            c: 1.0,
                            t1: None,
                            t2: None,
                        }],
                        ..DataPointTask::default()
                    }])
                },
            );
        }
        Ok(())
    }
}

fn chrono_now() -> dp3_plugin_api::DateTime<dp3_plugin_api::Utc> {
    dp3_plugin_api::Utc::now()
}

export_module!(FirstSeen);

#[cfg(test)]
mod tests {
    use super::*;
    use dp3_plugin_api::testing::{DpMatch, ModuleTest, assert_datapoint};

    #[test]
    fn new_ips_get_first_seen() {
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let t =
            ModuleTest::with_config_dir::<FirstSeen>("first_seen", Some(&config), None).unwrap();
        assert!(t.validation_errors().is_empty());
        let eid = t.eid("ip", "192.0.2.7").unwrap();
        let tasks = t.run_on_entity_creation("ip", &eid, None).unwrap();
        assert_datapoint(&tasks, &DpMatch::attr("first_seen").eid(eid));
        t.make_task("ip", "192.0.2.7", tasks[0].data_points.clone())
            .unwrap();
    }
}
