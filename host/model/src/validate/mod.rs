//! Validation of everything that enters the system against the entity model:
//! attribute values ([`value`]), `POST /datapoints` bodies ([`datapoint`]), typed tasks
//! returned by modules ([`task`]) and DP3's task wire JSON ([`wire`]).
//!
//! Errors follow DP3's (pydantic's) 422 item shape, see [`ValidationError`].

pub mod bson_value;
pub mod datapoint;
pub mod error;
pub mod task;
pub mod value;
pub mod wire;

pub use bson_value::normalize_bson;
pub use datapoint::{group_into_tasks, parse_api_datapoints};
pub use error::{LocItem, ValidationError};
pub use task::{EmptyTasks, TaskError, validate_task};
pub use value::{validate_primitive, validate_raw_value, validate_value};
pub use wire::{task_from_wire_json, task_to_wire_json};

/// The hand-built test model, shared with the integration tests (it refers to this crate as
/// `super::dp3`).
#[cfg(test)]
#[path = "../../tests/support/model.rs"]
pub(crate) mod test_model;
#[cfg(test)]
use crate as dp3;

#[cfg(test)]
mod tests;
