//! DP3's configuration and data model: the configuration directory, the entity model, the
//! data-type system, values, datapoints and tasks.
//!
//! This crate knows nothing about storage, HTTP or plugins; everything else builds on it.

pub mod aggregate;
pub mod bson_bytes;
pub mod config;
pub mod cron;
pub mod current;
pub mod datatype;
pub mod duration;
pub mod eid;
pub mod hash;
pub mod history;
pub mod recent;
pub mod schedule;
pub mod spec;
pub mod task;
pub mod time;
pub mod validate;
pub mod value;

pub use datatype::{DataType, DictField, Primitive};
pub use eid::{Eid, EidType};
pub use hash::{dp3_hash, entity_hash};
pub use history::HistoryItem;
pub use spec::{
    AttrKind, AttrSpec, AttrType, EntitySpec, EntityType, HistoryParams, Lifetime, ModelSpec,
    TimeseriesParams, TimeseriesType,
};
pub use task::{DataPoint, DataPointTask, DecodeError};
pub use value::{MacAddr, Value};
