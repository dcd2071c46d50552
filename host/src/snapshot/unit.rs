//! A snapshot unit: the entities snapshotted together (one linked component, or a single
//! entity on the linkless path), with their current values and master records.
//!
//! Correlation hooks of DP3 see linked entities through a `record` key inside link values
//! that is a *live reference* to the linked entity's current values (core.md §3.7.6). Values
//! cross the plugin boundary as BSON, so instead of sharing objects the unit rebuilds each
//! entity's view right before each hook call ([`Unit::view`]): records are copies of the
//! linked entities' values *as they are at that moment*, which is exactly what a later hook
//! observes through DP3's shared references. `record` keys never reach storage.

use std::collections::HashMap;

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
    index: HashMap<(String, Eid), usize>,
    /// Whether link values get `record`s (false on the linkless path, as in DP3).
    pub linked: bool,
}

/// Key under which a linked entity's current values appear inside a link value.
pub const RECORD_KEY: &str = "record";

impl Unit {
    pub fn new(entities: Vec<UnitEntity>, linked: bool) -> Unit {
        let index = entities
            .iter()
            .enumerate()
            .map(|(i, e)| ((e.etype.clone(), e.eid.clone()), i))
            .collect();
        Unit {
            entities,
            index,
            linked,
        }
    }

    pub fn position(&self, etype: &str, eid: &Eid) -> Option<usize> {
        self.index.get(&(etype.to_owned(), eid.clone())).copied()
    }

    /// The current values of entity `i` as a correlation hook should see them: link values
    /// of `used_links` carry a `record` with the linked entity's current values (or a stub
    /// `{eid}` when the target is not part of the unit), nested up to `depth` links deep.
    pub fn view(&self, i: usize, model: &ModelSpec, used_links: &[(String, String)], depth: usize) -> Document {
        let e = &self.entities[i];
        if !self.linked || depth == 0 {
            return e.values.clone();
        }
        self.attach(&e.etype, &e.values, model, used_links, depth)
    }

    fn attach(
        &self,
        etype: &str,
        values: &Document,
        model: &ModelSpec,
        used_links: &[(String, String)],
        depth: usize,
    ) -> Document {
        let mut out = values.clone();
        if depth == 0 {
            return out;
        }
        for (link_etype, attr) in used_links {
            if link_etype != etype {
                continue;
            }
            let Some(target) = model
                .attr(etype, attr)
                .and_then(|a| a.data_type())
                .and_then(|d| d.link_target())
            else {
                continue;
            };
            let Some(v) = out.get_mut(attr) else { continue };
            let attach_one = |link: &mut Bson| {
                if let Bson::Document(ld) = link
                    && let Some(eid) = ld.get("eid").and_then(Eid::from_bson)
                {
                    let record = match self.position(target, &eid) {
                        Some(j) => self.attach(
                            target,
                            &self.entities[j].values,
                            model,
                            used_links,
                            depth - 1,
                        ),
                        None => bson::doc! { "eid": eid.to_bson() },
                    };
                    ld.insert(RECORD_KEY, record);
                }
            };
            match v {
                Bson::Array(items) => items.iter_mut().for_each(attach_one),
                other => attach_one(other),
            }
        }
        out
    }

    /// Take back a view returned by a hook: everything except `record` keys inside link
    /// values becomes the entity's new current values.
    pub fn store_view(&mut self, i: usize, mut view: Document, model: &ModelSpec) {
        strip_records(&self.entities[i].etype, &mut view, model);
        self.entities[i].values = view;
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
