//! A snapshot unit: the entities snapshotted together (one linked component, or a single
//! entity on the linkless path), with their current values and master records.
//!
//! Correlation hooks see linked entities through `record` keys inside link values (attached
//! by the hook registry right before each call); `record` keys never reach storage.

use bson::{Bson, Document};
use dp3_model::{Eid, ModelSpec};

/// One entity of a unit.
#[derive(Debug, Clone)]
pub struct UnitEntity {
    pub etype: String,
    pub eid: Eid,
    /// Current values (`{eid, attr, attr#c, ...}`), mutated by correlation hooks.
    pub values: Document,
    /// The master record (with timeseries-hook outputs folded in), `{}` if none.
    pub master: Document,
}

/// Entities snapshotted together.
#[derive(Debug, Clone, Default)]
pub struct Unit {
    pub entities: Vec<UnitEntity>,
    /// A linked component (true) or a single entity of the linkless path (false).
    pub linked: bool,
}

/// Key under which a linked entity's current values appear inside a link value.
pub const RECORD_KEY: &str = "record";

impl Unit {
    pub fn new(entities: Vec<UnitEntity>, linked: bool) -> Unit {
        Unit { entities, linked }
    }
}

/// Remove `record` keys from the link values of every relation attribute.
pub fn strip_records(etype: &str, values: &mut Document, model: &ModelSpec) {
    let Some(entity) = model.entity(etype) else {
        return;
    };
    for (attr, spec) in &entity.attribs {
        if !spec.is_relation() && !spec.is_read_only() {
            continue;
        }
        if let Some(v) = values.get_mut(attr) {
            match v {
                Bson::Document(d) => {
                    d.remove(RECORD_KEY);
                }
                Bson::Array(items) => {
                    for item in items {
                        if let Bson::Document(d) = item {
                            d.remove(RECORD_KEY);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
