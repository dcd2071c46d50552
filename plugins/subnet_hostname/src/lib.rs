//! Snapshot-time correlation across a link: an IP without a hostname gets a placeholder
//! derived from its subnet's description (`ip.subnet -> subnet.description`). The linked
//! subnet's current values arrive as `subnet.record`.

use std::sync::Arc;

use dp3_plugin_api::{Document, Module, ModuleError, Registrar, export_module, paths};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct Config {
    /// Text put in front of the subnet description.
    pub prefix: String,
}

pub struct SubnetHostname {
    prefix: String,
}

/// The placeholder hostname for `values`, if it has no hostname and a linked subnet with a
/// description.
pub fn placeholder(prefix: &str, values: &Document) -> Option<String> {
    if values.get_str("hostname").is_ok() {
        return None;
    }
    let description = values
        .get_document("subnet")
        .ok()?
        .get_document("record")
        .ok()?
        .get_str("description")
        .ok()?;
    Some(format!("{prefix}{description}"))
}

impl Module for SubnetHostname {
    type Config = Config;

    fn new(config: Config, _: &Registrar) -> Result<Self, ModuleError> {
        Ok(SubnetHostname {
            prefix: config.prefix,
        })
    }

    fn register(self: &Arc<Self>, r: &mut Registrar) -> Result<(), ModuleError> {
        let me = Arc::clone(self);
        r.correlation(
            "hostname_from_subnet",
            "ip",
            paths(&[&["subnet", "description"]]),
            paths(&[&["hostname"]]),
            move |_, values| {
                if let Some(h) = placeholder(&me.prefix, values) {
                    values.insert("hostname", h);
                }
                Ok(vec![])
            },
        );
        Ok(())
    }
}

export_module!(SubnetHostname);

#[cfg(test)]
mod tests {
    use super::*;
    use dp3_plugin_api::doc;
    use dp3_plugin_api::testing::{ModuleTest, assert_record_contains};

    #[test]
    fn copies_the_subnet_description_across_the_link() {
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let t = ModuleTest::with_config_dir::<SubnetHostname>(
            "subnet_hostname",
            Some(&config),
            Some(serde_json::json!({"prefix": "net-"})),
        )
        .unwrap();
        assert!(
            t.validation_errors().is_empty(),
            "{:?}",
            t.validation_errors()
        );
        let mut rec = doc! {"eid": "192.0.2.1", "subnet": {"eid": "s1", "record": {"eid": "s1", "description": "lab"}}};
        t.run_correlation_hooks("ip", &mut rec, None).unwrap();
        assert_record_contains(&rec, &doc! {"hostname": "net-lab"});
        let mut named = doc! {"eid": "192.0.2.1", "hostname": "keep"};
        t.run_correlation_hooks("ip", &mut named, None).unwrap();
        assert_record_contains(&named, &doc! {"hostname": "keep"});
    }
}
