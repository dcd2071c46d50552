//! Cron-driven shared state: a scheduler job reloads labelling rules (a YAML-free
//! `prefix=label` text file) every few minutes; an `on_entity_creation` hook on `device`
//! labels new devices whose MAC starts with a known prefix using the current rules.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use dp3_plugin_api::{
    Bson, CronSchedule, DataPoint, DataPointTask, Eid, HookError, Module, ModuleError,
    ModuleLogger, Refresh, Registrar, export_module,
};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Rules file: one `aa:bb:cc=label` per line.
    pub rules_file: Option<PathBuf>,
    /// Cron `minute` field of the reload job.
    pub reload_minute: Option<String>,
}

pub struct LabelRules {
    file: Option<PathBuf>,
    minute: String,
    rules: RwLock<Vec<(String, String)>>,
    log: ModuleLogger,
}

/// Parse `prefix=label` lines; blank lines and `#` comments are skipped.
pub fn parse_rules(text: &str) -> Result<Vec<(String, String)>, String> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            l.split_once('=')
                .map(|(p, v)| (p.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .ok_or_else(|| format!("line {}: expected prefix=label", i + 1))
        })
        .collect()
}

impl LabelRules {
    pub fn reload(&self) -> Result<usize, HookError> {
        let Some(file) = &self.file else { return Ok(0) };
        let text = std::fs::read_to_string(file)?;
        let rules = parse_rules(&text).map_err(HookError::new)?;
        let n = rules.len();
        *self
            .rules
            .write()
            .map_err(|_| HookError::new("rules lock poisoned"))? = rules;
        self.log.info(format!("loaded {n} labelling rules"));
        Ok(n)
    }

    pub fn label_for(&self, eid: &Eid) -> Option<String> {
        let key = eid.to_string();
        let rules = self.rules.read().ok()?;
        rules
            .iter()
            .find(|(p, _)| key.starts_with(p.as_str()))
            .map(|(_, l)| l.clone())
    }
}

impl Module for LabelRules {
    type Config = Config;

    fn new(config: Config, r: &Registrar) -> Result<Self, ModuleError> {
        Ok(LabelRules {
            file: config.rules_file,
            minute: config.reload_minute.unwrap_or_else(|| "*/10".into()),
            rules: RwLock::new(Vec::new()),
            log: r.logger(),
        })
    }

    fn register(self: &Arc<Self>, r: &mut Registrar) -> Result<(), ModuleError> {
        let me = Arc::clone(self);
        r.scheduler_register(
            "reload_rules",
            CronSchedule::new().minute(&self.minute),
            move || {
                me.reload()?;
                Ok(vec![])
            },
        );
        let me = Arc::clone(self);
        r.scheduler_register_once("initial_load", move || {
            me.reload()?;
            Ok(vec![])
        });
        let me = Arc::clone(self);
        r.on_entity_creation(
            "label_new_device",
            "device",
            Refresh::Never,
            move |eid, _| {
                Ok(me
                    .label_for(eid)
                    .map(|label| DataPointTask {
                        etype: "device".into(),
                        eid: eid.clone(),
                        data_points: vec![DataPoint {
                            etype: "device".into(),
                            eid: eid.clone(),
                            attr: "label".into(),
                            src: Some("label_rules".into()),
                            v: Bson::String(label),
                            c: 1.0,
                            t1: None,
                            t2: None,
                        }],
                        ..DataPointTask::default()
                    })
                    .into_iter()
                    .collect())
            },
        );
        Ok(())
    }
}

export_module!(LabelRules);

#[cfg(test)]
mod tests {
    use super::*;
    use dp3_plugin_api::testing::{DpMatch, ModuleTest, assert_datapoint, assert_no_tasks};

    #[test]
    fn cron_job_reloads_rules_used_by_the_creation_hook() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.txt");
        std::fs::write(&rules, "aa:bb=lab printer\n").unwrap();
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let cfg = serde_json::json!({"rules_file": rules, "reload_minute": "*/5"});
        let t = ModuleTest::with_config_dir::<LabelRules>("label_rules", Some(&config), Some(cfg))
            .unwrap();
        assert!(
            t.validation_errors().is_empty(),
            "{:?}",
            t.validation_errors()
        );
        let eid = t.eid("device", "aa:bb:cc:dd:ee:ff").unwrap();
        assert_no_tasks(&t.run_on_entity_creation("device", &eid, None).unwrap());
        t.run_scheduler_job("reload_rules").unwrap();
        let tasks = t.run_on_entity_creation("device", &eid, None).unwrap();
        assert_datapoint(&tasks, &DpMatch::attr("label").v("lab printer"));
        assert!(parse_rules("bad line").is_err());
    }
}
