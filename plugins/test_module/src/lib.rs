//! Port of DP3's integration-test module (`shared/spec/test-module.md`): snapshot-time
//! correlation hooks that copy values across links and force constants, plus one hook that
//! reads the master record.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dp3_plugin_api::{
    Bson, Document, HookResult, Module, ModuleError, Registrar, export_module, paths,
};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Initial value of a counter the module never uses otherwise (as in DP3).
    pub init_value: i64,
}

pub struct TestModule {
    counter: AtomicI64,
}

/// `values[to] = values[link]["record"][from]`, or null when the link, its record or the
/// attribute is missing.
fn copy_across_link(values: &mut Document, link: &str, from: &str, to: &str) {
    let copied = values
        .get_document(link)
        .ok()
        .and_then(|l| l.get_document("record").ok())
        .and_then(|r| r.get(from))
        .cloned()
        .unwrap_or(Bson::Null);
    values.insert(to, copied);
}

impl Module for TestModule {
    type Config = Config;

    fn new(config: Config, _: &Registrar) -> Result<Self, ModuleError> {
        Ok(TestModule {
            counter: AtomicI64::new(config.init_value),
        })
    }

    fn load_config(&self, config: Config) -> Result<(), ModuleError> {
        self.counter.store(config.init_value, Ordering::Relaxed);
        Ok(())
    }

    fn register(self: &Arc<Self>, r: &mut Registrar) -> Result<(), ModuleError> {
        let copies = [
            ("copy_bs_data1", "A", "bs", "data1", "data1"),
            ("copy_as_data2", "B", "as", "data2", "data2"),
            ("copy_ds_data1", "C", "ds", "data1", "data1"),
            ("copy_cs_data2", "D", "cs", "data2", "data2"),
        ];
        for (name, entity, link, from, to) in copies {
            r.correlation(
                name,
                entity,
                paths(&[&[link, from]]),
                paths(&[&[to]]),
                move |_, values| {
                    copy_across_link(values, link, from, to);
                    Ok(vec![])
                },
            );
        }
        r.correlation(
            "modify_c",
            "C",
            vec![],
            paths(&[&["data2"]]),
            |_, values| {
                values.insert("data2", "modifc");
                Ok(vec![])
            },
        );
        r.correlation(
            "modify_d",
            "D",
            vec![],
            paths(&[&["data1"]]),
            |_, values| {
                values.insert("data1", "modifd");
                Ok(vec![])
            },
        );
        r.correlation_with_master_record(
            "data4_from_master",
            "A",
            vec![],
            paths(&[&["data4"]]),
            |_, values, master| -> HookResult<_> {
                let data3 = master
                    .get_document("data3")
                    .ok()
                    .and_then(|d| d.get_str("v").ok())
                    .filter(|v| v.starts_with("master_"));
                if let Some(v) = data3 {
                    values.insert("data4", format!("{v}_from_master"));
                }
                Ok(vec![])
            },
        );
        Ok(())
    }
}

export_module!(TestModule);

#[cfg(test)]
mod tests {
    use super::*;
    use dp3_plugin_api::doc;

    #[test]
    fn copies_read_the_linked_record() {
        let mut v = doc! {"eid": 1, "bs": {"eid": 2, "record": {"eid": 2, "data1": "x"}}};
        copy_across_link(&mut v, "bs", "data1", "data1");
        assert_eq!(v.get_str("data1").unwrap(), "x");
        let mut v = doc! {"eid": 1};
        copy_across_link(&mut v, "bs", "data1", "data1");
        assert_eq!(v.get("data1"), Some(&Bson::Null));
    }
}
