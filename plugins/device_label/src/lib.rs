//! Periodic updater: once per `period`, every device without a label gets `label = vendor`
//! (read from its master record), and an eid-only hook counts visited devices.

use std::sync::Arc;
use std::time::Duration;

use dp3_plugin_api::period::parse_period;
use dp3_plugin_api::{
    Bson, DataPoint, DataPointTask, Document, Eid, Module, ModuleError, ModuleMetrics, Registrar,
    export_module,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `<n>[smhd]`.
    pub period: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            period: "1h".into(),
        }
    }
}

pub struct DeviceLabel {
    period: Duration,
    metrics: ModuleMetrics,
}

/// The label task for a device master record, if it has a vendor and no label.
pub fn label_task(eid: &Eid, master: &Document) -> Option<DataPointTask> {
    if master.contains_key("label") {
        return None;
    }
    let vendor = master.get_document("vendor").ok()?.get_str("v").ok()?;
    Some(DataPointTask {
        etype: "device".into(),
        eid: eid.clone(),
        data_points: vec![DataPoint {
            etype: "device".into(),
            eid: eid.clone(),
            attr: "label".into(),
            src: Some("device_label".into()),
            v: Bson::String(vendor.to_owned()),
            c: 1.0,
            t1: None,
            t2: None,
        }],
        ..DataPointTask::default()
    })
}

impl Module for DeviceLabel {
    type Config = Config;

    fn new(config: Config, r: &Registrar) -> Result<Self, ModuleError> {
        let period = parse_period(&config.period).map_err(|e| ModuleError::new(e.to_string()))?;
        Ok(DeviceLabel {
            period,
            metrics: r.metrics(),
        })
    }

    fn register(self: &Arc<Self>, r: &mut Registrar) -> Result<(), ModuleError> {
        r.periodic_update(
            "label_from_vendor",
            "device",
            self.period,
            |_, eid, master| Ok(label_task(eid, master).into_iter().collect()),
        );
        let me = Arc::clone(self);
        r.periodic_eid_update("count_devices", "device", self.period, move |_, _| {
            me.metrics.counter("devices_visited", 1);
            Ok(vec![])
        });
        Ok(())
    }
}

export_module!(DeviceLabel);

#[cfg(test)]
mod tests {
    use super::*;
    use dp3_plugin_api::doc;
    use dp3_plugin_api::testing::{DpMatch, ModuleTest, assert_datapoint, assert_no_tasks};

    #[test]
    fn labels_devices_from_their_vendor() {
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let t = ModuleTest::with_config_dir::<DeviceLabel>("device_label", Some(&config), None)
            .unwrap();
        assert!(
            t.validation_errors().is_empty(),
            "{:?}",
            t.validation_errors()
        );
        let eid = t.eid("device", "aa:bb:cc:dd:ee:ff").unwrap();
        let tasks = t
            .run_periodic_update(
                "device",
                &eid,
                &doc! {"vendor": {"v": "ACME"}},
                Some("label_from_vendor"),
            )
            .unwrap();
        assert_datapoint(&tasks, &DpMatch::attr("label").v("ACME"));
        assert_no_tasks(
            &t.run_periodic_update(
                "device",
                &eid,
                &doc! {"label": {"v": "x"}, "vendor": {"v": "ACME"}},
                None,
            )
            .unwrap(),
        );
        assert_no_tasks(&t.run_periodic_eid_update("device", &eid, None).unwrap());
        assert_eq!(t.services.counters.lock().unwrap().len(), 1);
    }
}
