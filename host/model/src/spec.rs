//! The entity model: entity types, attributes, relations (data-model.md §2).
//!
//! Built from `db_entities/*.yml` by [`crate::config`]; everything else reads it.

use chrono::TimeDelta;
use indexmap::IndexMap;

use crate::datatype::{DataType, Primitive};
use crate::eid::EidType;

/// Entity lifetime (data-model.md §2.4, §7).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Lifetime {
    #[default]
    Immortal,
    Ttl {
        on_create: TimeDelta,
        mirror_data: bool,
    },
    Weak,
}

/// The `entity` block of an entity file.
#[derive(Debug, Clone, PartialEq)]
pub struct EntitySpec {
    pub id: String,
    pub name: String,
    pub description: String,
    pub snapshot: bool,
    pub id_data_type: EidType,
    pub lifetime: Lifetime,
}

/// `history_params` of an observations attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryParams {
    pub max_age: Option<TimeDelta>,
    pub max_items: Option<u64>,
    /// `None` = infinity (`"inf"` or unset).
    pub expire_time: Option<TimeDelta>,
    pub pre_validity: TimeDelta,
    pub post_validity: TimeDelta,
    pub aggregate: bool,
}

impl Default for HistoryParams {
    fn default() -> Self {
        HistoryParams {
            max_age: None,
            max_items: None,
            expire_time: None,
            pre_validity: TimeDelta::zero(),
            post_validity: TimeDelta::zero(),
            aggregate: true,
        }
    }
}

/// Sampling model of a timeseries attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeseriesType {
    Regular,
    Irregular,
    IrregularIntervals,
}

impl TimeseriesType {
    pub fn name(self) -> &'static str {
        match self {
            TimeseriesType::Regular => "regular",
            TimeseriesType::Irregular => "irregular",
            TimeseriesType::IrregularIntervals => "irregular_intervals",
        }
    }
}

/// `timeseries_params` of a timeseries attribute.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TimeseriesParams {
    pub max_age: Option<TimeDelta>,
    /// Required for `regular` timeseries.
    pub time_step: Option<TimeDelta>,
}

/// Attribute kind with its kind-specific options.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrKind {
    Plain {
        data_type: DataType,
        editable: bool,
    },
    Observations {
        data_type: DataType,
        editable: bool,
        confidence: bool,
        multi_value: bool,
        history_params: HistoryParams,
        history_force_graph: bool,
    },
    Timeseries {
        timeseries_type: TimeseriesType,
        /// User series plus the implicit time series, in declaration order.
        series: IndexMap<String, Primitive>,
        timeseries_params: TimeseriesParams,
    },
}

/// DP3's internal attribute type flag (plain = 1, observations = 2, timeseries = 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    Plain = 1,
    Observations = 2,
    Timeseries = 4,
}

impl AttrType {
    pub fn name(self) -> &'static str {
        match self {
            AttrType::Plain => "plain",
            AttrType::Observations => "observations",
            AttrType::Timeseries => "timeseries",
        }
    }
}

/// One attribute of an entity type.
#[derive(Debug, Clone, PartialEq)]
pub struct AttrSpec {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Lifetime extension granted by each new datapoint (TTL lifetimes only).
    pub ttl: Option<TimeDelta>,
    pub kind: AttrKind,
    /// The `data_type` string as written in the configuration (API `/entities` shows it).
    pub data_type_str: Option<String>,
    /// Generated mirror attribute (`link<...;mirror=x>` on another type): read-only.
    pub mirror_of: Option<(String, String)>,
}

impl AttrSpec {
    pub fn attr_type(&self) -> AttrType {
        match self.kind {
            AttrKind::Plain { .. } => AttrType::Plain,
            AttrKind::Observations { .. } => AttrType::Observations,
            AttrKind::Timeseries { .. } => AttrType::Timeseries,
        }
    }

    /// Data type of plain/observations attributes.
    pub fn data_type(&self) -> Option<&DataType> {
        match &self.kind {
            AttrKind::Plain { data_type, .. } | AttrKind::Observations { data_type, .. } => {
                Some(data_type)
            }
            AttrKind::Timeseries { .. } => None,
        }
    }

    pub fn is_relation(&self) -> bool {
        self.data_type().is_some_and(DataType::is_relation)
    }

    pub fn is_read_only(&self) -> bool {
        self.mirror_of.is_some()
    }

    pub fn history_params(&self) -> Option<&HistoryParams> {
        match &self.kind {
            AttrKind::Observations { history_params, .. } => Some(history_params),
            _ => None,
        }
    }

    pub fn multi_value(&self) -> bool {
        matches!(
            self.kind,
            AttrKind::Observations {
                multi_value: true,
                ..
            }
        )
    }

    /// `max_age` of an observations or timeseries attribute.
    pub fn max_age(&self) -> Option<TimeDelta> {
        match &self.kind {
            AttrKind::Observations { history_params, .. } => history_params.max_age,
            AttrKind::Timeseries {
                timeseries_params, ..
            } => timeseries_params.max_age,
            AttrKind::Plain { .. } => None,
        }
    }
}

/// An entity type: its spec and attributes in configuration order (mirrors last).
#[derive(Debug, Clone, PartialEq)]
pub struct EntityType {
    pub spec: EntitySpec,
    pub attribs: IndexMap<String, AttrSpec>,
}

/// The whole model: entity types in the order their files were listed (DP3's `/entities`
/// preserves `readdir` order).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelSpec {
    pub entities: IndexMap<String, EntityType>,
}

impl ModelSpec {
    pub fn entity(&self, etype: &str) -> Option<&EntityType> {
        self.entities.get(etype)
    }

    pub fn attr(&self, etype: &str, attr: &str) -> Option<&AttrSpec> {
        self.entities.get(etype)?.attribs.get(attr)
    }

    /// All relation attributes `(source etype, attr, target etype)`, mirrors excluded.
    pub fn relations(&self) -> impl Iterator<Item = (&str, &AttrSpec, &str)> {
        self.entities.iter().flat_map(|(etype, et)| {
            et.attribs.values().filter_map(move |a| {
                if a.is_read_only() {
                    return None;
                }
                a.data_type()
                    .and_then(DataType::link_target)
                    .map(|t| (etype.as_str(), a, t))
            })
        })
    }
}
