//! A module for fault tests on DP3's test configuration: when `test_entity_type.test_attr_int`
//! gets a value, its hook emits four tasks: one for an entity type that does not exist, one
//! for an attribute that does not exist, one with a value of the wrong type, and one valid
//! task (`test_attr_string = "from bad_tasks"`). The host must reject the first three with a
//! logged reason and apply the fourth.

use std::sync::Arc;

use dp3_plugin_api::{
    Bson, DataPoint, DataPointTask, Eid, Module, ModuleError, Refresh, Registrar, export_module,
};

pub struct BadTasks;

#[derive(Debug, Default, serde::Deserialize)]
pub struct BadTasksConfig {}

fn task(etype: &str, eid: &Eid, attr: &str, v: Bson) -> DataPointTask {
    DataPointTask {
        etype: etype.into(),
        eid: eid.clone(),
        data_points: vec![DataPoint {
            etype: etype.into(),
            eid: eid.clone(),
            attr: attr.into(),
            src: Some("bad_tasks".into()),
            v,
            c: 1.0,
            t1: None,
            t2: None,
        }],
        ..DataPointTask::default()
    }
}

impl Module for BadTasks {
    type Config = BadTasksConfig;

    fn new(_: BadTasksConfig, _: &Registrar) -> Result<Self, ModuleError> {
        Ok(BadTasks)
    }

    fn register(self: &Arc<Self>, r: &mut Registrar) -> Result<(), ModuleError> {
        r.on_new_attr(
            "emit_bad_tasks",
            "test_entity_type",
            "test_attr_int",
            Refresh::Never,
            |eid, _dp| {
                Ok(vec![
                    task("no_such_type", eid, "x", Bson::Int32(1)),
                    task("test_entity_type", eid, "no_such_attr", Bson::Int32(1)),
                    task(
                        "test_entity_type",
                        eid,
                        "test_attr_int",
                        Bson::String("not an int".into()),
                    ),
                    task(
                        "test_entity_type",
                        eid,
                        "test_attr_string",
                        Bson::String("from bad_tasks".into()),
                    ),
                ])
            },
        );
        Ok(())
    }
}

export_module!(BadTasks);
