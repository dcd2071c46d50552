//! Validation of typed tasks against the model (core.md §2.1): what the host runs on tasks
//! returned by modules, and the last step of decoding wire messages.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::datatype::Primitive;
use crate::spec::{AttrKind, ModelSpec};
use crate::task::{DataPoint, DataPointTask};
use crate::value::to_api_json;

use super::bson_value::{normalize_bson, normalize_primitive};
use super::datapoint::{check_lengths, check_timeseries};
use super::error::{LocItem, ValidationError};

/// Whether a task without datapoints, TTL tokens or delete flag is acceptable. DP3 allows it
/// only for synthetic tasks (refresh paths, test-harness tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmptyTasks {
    #[default]
    Reject,
    Allow,
}

/// Why a task was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// The message is not valid JSON of the task shape.
    #[error("malformed task message: {0}")]
    Malformed(String),
    #[error("Invalid etype '{0}'")]
    UnknownEtype(String),
    /// The task's own eid (or another task-level field) is invalid.
    #[error("task field {0}")]
    Field(ValidationError),
    #[error(
        "DataPointTask must contain at least one datapoint, non-empty ttl_tokens, or be a delete task."
    )]
    Empty,
    /// Datapoint `index` is invalid; `errors` locate the fields inside the datapoint.
    #[error("data_points[{index}]: {}", first(errors))]
    DataPoint {
        index: usize,
        errors: Vec<ValidationError>,
    },
}

fn first(errors: &[ValidationError]) -> String {
    match errors {
        [] => String::new(),
        [one] => one.to_string(),
        [one, rest @ ..] => format!("{one} (and {} more)", rest.len()),
    }
}

/// Validate and normalise a task against the model: the etype exists, the eid has the
/// entity's id type, every datapoint belongs to the task's entity, names an existing writable
/// attribute and satisfies its kind's rules (value type, `t1`/`t2`, `c`, series). Values are
/// normalised (int widths, dict keys, `t2` defaulted to `t1`, ...).
pub fn validate_task(
    model: &ModelSpec,
    mut task: DataPointTask,
    empty: EmptyTasks,
) -> Result<DataPointTask, TaskError> {
    let Some(entity) = model.entity(&task.etype) else {
        return Err(TaskError::UnknownEtype(task.etype));
    };
    let id_type = entity.spec.id_data_type;
    if task.eid.eid_type() != id_type {
        return Err(TaskError::Field(
            ValidationError::new(
                "eid_type",
                format!(
                    "Input should be a valid {} entity id of '{}'",
                    id_type.name(),
                    task.etype
                ),
                task.eid.to_json(),
            )
            .at(["eid"]),
        ));
    }
    if empty == EmptyTasks::Reject && task.is_empty() {
        return Err(TaskError::Empty);
    }
    let dps = std::mem::take(&mut task.data_points);
    let mut out = Vec::with_capacity(dps.len());
    for (index, dp) in dps.into_iter().enumerate() {
        match validate_datapoint(model, &task, dp) {
            Ok(dp) => out.push(dp),
            Err(errors) => return Err(TaskError::DataPoint { index, errors }),
        }
    }
    task.data_points = out;
    Ok(task)
}

fn err_at(field: &str, e: ValidationError) -> Vec<ValidationError> {
    vec![e.at([field])]
}

fn time_json(t: Option<DateTime<Utc>>) -> Json {
    t.map_or(Json::Null, |t| {
        Json::String(crate::value::format_api_datetime(&t))
    })
}

/// Validate one datapoint of `task` (errors relative to the datapoint).
fn validate_datapoint(
    model: &ModelSpec,
    task: &DataPointTask,
    mut dp: DataPoint,
) -> Result<DataPoint, Vec<ValidationError>> {
    if dp.etype != task.etype {
        return Err(err_at(
            "etype",
            ValidationError::value_error(
                format!(
                    "Task's etype '{}' doesn't match datapoint's etype '{}'",
                    task.etype, dp.etype
                ),
                Json::String(dp.etype.clone()),
            ),
        ));
    }
    if dp.eid != task.eid {
        return Err(err_at(
            "eid",
            ValidationError::value_error(
                format!(
                    "Task's eid '{}' doesn't match datapoint's eid '{}'",
                    task.eid, dp.eid
                ),
                dp.eid.to_json(),
            ),
        ));
    }
    let Some(spec) = model.attr(&dp.etype, &dp.attr) else {
        return Err(err_at(
            "attr",
            ValidationError::value_error(
                format!("Attribute '{}' not found in entity '{}'", dp.attr, dp.etype),
                Json::String(dp.attr.clone()),
            ),
        ));
    };
    if spec.is_read_only() {
        return Err(err_at(
            "v",
            ValidationError::value_error(
                "Cannot instantiate a read-only attribute datapoint.",
                to_api_json(&dp.v),
            ),
        ));
    }
    if !(0.0..=1.0).contains(&dp.c) {
        return Err(err_at(
            "c",
            ValidationError::new(
                "less_than_equal",
                "Input should be a number between 0 and 1",
                serde_json::Number::from_f64(dp.c).map_or(Json::Null, Json::Number),
            ),
        ));
    }
    let v = std::mem::take(&mut dp.v);
    match &spec.kind {
        AttrKind::Plain { data_type, .. } => {
            if dp.t2.is_some() {
                return Err(err_at(
                    "t2",
                    ValidationError::new("none_required", "Input should be None", time_json(dp.t2)),
                ));
            }
            dp.t1 = None;
            dp.v = normalize_bson(model, data_type, v).map_err(|es| prefixed(es, "v"))?;
        }
        AttrKind::Observations { data_type, .. } => {
            let Some(t1) = dp.t1 else {
                return Err(err_at(
                    "t1",
                    ValidationError::new(
                        "datetime_type",
                        "Input should be a valid datetime",
                        Json::Null,
                    ),
                ));
            };
            let t2 = dp.t2.unwrap_or(t1);
            if t2 < t1 {
                return Err(err_at(
                    "t2",
                    ValidationError::assertion("'t2' is before 't1'", time_json(Some(t2))),
                ));
            }
            dp.t2 = Some(t2);
            dp.v = normalize_bson(model, data_type, v).map_err(|es| prefixed(es, "v"))?;
        }
        AttrKind::Timeseries {
            timeseries_type,
            series,
            timeseries_params,
        } => {
            let Some(t1) = dp.t1 else {
                return Err(err_at(
                    "t1",
                    ValidationError::new(
                        "datetime_type",
                        "Input should be a valid datetime",
                        Json::Null,
                    ),
                ));
            };
            let bson::Bson::Document(mut doc) = v else {
                return Err(err_at(
                    "v",
                    ValidationError::new(
                        "dict_type",
                        "Input should be a valid dictionary",
                        to_api_json(&v),
                    ),
                ));
            };
            let mut typed = bson::Document::new();
            let mut lengths = Vec::with_capacity(series.len());
            let mut errors = Vec::new();
            for (name, prim) in series {
                match doc.remove(name) {
                    None => errors.push(ValidationError::missing(name, Json::Null).at(["v"])),
                    Some(bson::Bson::Array(items)) => {
                        let mut col = Vec::with_capacity(items.len());
                        for (i, item) in items.into_iter().enumerate() {
                            match normalize_series_item(*prim, item) {
                                Ok(b) => col.push(b),
                                Err(e) => errors.push(e.at([
                                    LocItem::from("v"),
                                    name.as_str().into(),
                                    i.into(),
                                ])),
                            }
                        }
                        lengths.push(col.len());
                        typed.insert(name.clone(), col);
                    }
                    Some(other) => errors.push(
                        ValidationError::new(
                            "list_type",
                            "Input should be a valid list",
                            to_api_json(&other),
                        )
                        .at(["v", name.as_str()]),
                    ),
                }
            }
            if !errors.is_empty() {
                return Err(errors);
            }
            check_lengths(&lengths).map_err(|e| vec![e.at(["v"])])?;
            let (value, t2) = check_timeseries(
                *timeseries_type,
                timeseries_params.time_step,
                typed,
                &lengths,
                t1,
                dp.t2,
            )
            .map_err(|e| vec![e])?;
            dp.v = value;
            dp.t2 = Some(t2);
        }
    }
    Ok(dp)
}

fn normalize_series_item(p: Primitive, v: bson::Bson) -> Result<bson::Bson, ValidationError> {
    normalize_primitive(p, v)
}

fn prefixed(es: Vec<ValidationError>, field: &str) -> Vec<ValidationError> {
    es.into_iter().map(|e| e.at([field])).collect()
}
