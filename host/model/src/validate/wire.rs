//! DP3's task message JSON (core.md §2.1 `as_message`), the body of the RabbitMQ messages
//! DP3's Python API and workers exchange.
//!
//! Writing: compact JSON, task keys `etype, eid, data_points, tags, ttl_tokens, delete`
//! (empty `data_points`/`tags`, null `ttl_tokens` and `delete: false` omitted), datapoint keys
//! `etype, eid, attr, src, v, c, t1, t2` (`src`/`t1`/`t2` omitted when null, `c` always
//! written as DP3's API does). IP/MAC values and eids as strings (IPv6 as Python renders it),
//! datetimes as UTC with `Z`.
//!
//! Deviations from DP3, on purpose:
//! * `v: null` (possible for `special` attributes) is written; DP3 omits it and the receiving
//!   worker then drops the whole task.
//! * NaN/±inf floats are written as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`, which
//!   DP3's lax float validator (and ours) parse back; pydantic writes `null`, which a float
//!   attribute then rejects.
//! * Datetimes are written in UTC: the offset a client used is not kept (the instant is).

use bson::Bson;
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};

use crate::spec::ModelSpec;
use crate::task::{DataPoint, DataPointTask};
use crate::value::{self, format_api_datetime, ipv6_to_string, json_to_bson};

use super::datapoint::{RawItem, raw_datetime, raw_eid, raw_string, validate_internal_datapoint};
use super::error::ValidationError;
use super::task::TaskError;
use super::value::parse_raw;

/// A stored value as wire JSON.
pub fn bson_to_wire(v: &Bson) -> Json {
    match v {
        Bson::Double(f) if !f.is_finite() => Json::String(
            if f.is_nan() {
                "NaN"
            } else if *f > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            }
            .to_owned(),
        ),
        Bson::Array(a) => Json::Array(a.iter().map(bson_to_wire).collect()),
        Bson::Document(d) => Json::Object(
            d.iter()
                .map(|(k, v)| (k.clone(), bson_to_wire(v)))
                .collect(),
        ),
        Bson::Binary(_) => match value::as_ipv6(v) {
            Some(a) => Json::String(ipv6_to_string(&a)),
            None => value::to_api_json(v),
        },
        other => value::to_api_json(other),
    }
}

fn datapoint_to_wire(dp: &DataPoint) -> Json {
    let mut m = Map::new();
    m.insert("etype".into(), Json::String(dp.etype.clone()));
    m.insert("eid".into(), dp.eid.to_json());
    m.insert("attr".into(), Json::String(dp.attr.clone()));
    if let Some(src) = &dp.src {
        m.insert("src".into(), Json::String(src.clone()));
    }
    m.insert("v".into(), bson_to_wire(&dp.v));
    m.insert("c".into(), bson_to_wire(&Bson::Double(dp.c)));
    if let Some(t1) = &dp.t1 {
        m.insert("t1".into(), Json::String(format_api_datetime(t1)));
    }
    if let Some(t2) = &dp.t2 {
        m.insert("t2".into(), Json::String(format_api_datetime(t2)));
    }
    Json::Object(m)
}

/// The task as DP3's wire JSON.
pub fn task_to_wire_json(task: &DataPointTask) -> String {
    let mut m = Map::new();
    m.insert("etype".into(), Json::String(task.etype.clone()));
    m.insert("eid".into(), task.eid.to_json());
    if !task.data_points.is_empty() {
        m.insert(
            "data_points".into(),
            Json::Array(task.data_points.iter().map(datapoint_to_wire).collect()),
        );
    }
    if !task.tags.is_empty() {
        m.insert(
            "tags".into(),
            Json::Array(task.tags.iter().map(bson_to_wire).collect()),
        );
    }
    if let Some(tokens) = &task.ttl_tokens {
        m.insert(
            "ttl_tokens".into(),
            Json::Object(
                tokens
                    .iter()
                    .map(|(k, t)| (k.clone(), Json::String(format_api_datetime(t))))
                    .collect(),
            ),
        );
    }
    if task.delete {
        m.insert("delete".into(), Json::Bool(true));
    }
    Json::Object(m).to_string()
}

#[derive(Deserialize)]
struct WireTask<'a> {
    #[serde(borrow)]
    etype: Option<&'a RawValue>,
    #[serde(borrow)]
    eid: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data_points: Option<Vec<RawItem<'a>>>,
    #[serde(default)]
    tags: Option<Vec<Json>>,
    #[serde(borrow, default)]
    ttl_tokens: Option<IndexMap<String, &'a RawValue>>,
    #[serde(default)]
    delete: Option<bool>,
}

fn missing(field: &str) -> TaskError {
    TaskError::Field(ValidationError::missing(field, Json::Null))
}

/// Parse and validate a task message (as DP3's workers do when consuming it): every
/// datapoint is re-validated against the model, defaults (`c = 1.0`, `t2 = t1`) re-applied,
/// and the task-level rules checked.
pub fn task_from_wire_json(model: &ModelSpec, body: &[u8]) -> Result<DataPointTask, TaskError> {
    let wire: WireTask<'_> =
        serde_json::from_slice(body).map_err(|e| TaskError::Malformed(e.to_string()))?;
    let etype_raw = wire.etype.ok_or_else(|| missing("etype"))?;
    let etype = raw_string(etype_raw)
        .ok_or_else(|| {
            TaskError::Field(
                ValidationError::new(
                    "string_type",
                    "Input should be a valid string",
                    parse_raw(etype_raw),
                )
                .at(["etype"]),
            )
        })?
        .into_owned();
    let Some(entity) = model.entity(&etype) else {
        return Err(TaskError::UnknownEtype(etype));
    };
    let eid_raw = wire.eid.ok_or_else(|| missing("eid"))?;
    let eid =
        raw_eid(entity.spec.id_data_type, eid_raw).map_err(|e| TaskError::Field(e.at(["eid"])))?;

    let raw_dps = wire.data_points.unwrap_or_default();
    let mut data_points = Vec::with_capacity(raw_dps.len());
    // Inputs for error reports come from re-parsing the message, only when needed.
    let values = std::cell::OnceCell::<Vec<Json>>::new();
    for (index, raw) in raw_dps.iter().enumerate() {
        let item = || {
            values
                .get_or_init(|| {
                    serde_json::from_slice::<Json>(body)
                        .ok()
                        .and_then(|j| match j.get("data_points") {
                            Some(Json::Array(a)) => Some(a.clone()),
                            _ => None,
                        })
                        .unwrap_or_default()
                })
                .get(index)
                .cloned()
                .unwrap_or(Json::Null)
        };
        let dp = validate_internal_datapoint(model, raw, &item)
            .map_err(|errors| TaskError::DataPoint { index, errors })?;
        if dp.etype != etype {
            return Err(TaskError::DataPoint {
                index,
                errors: vec![
                    ValidationError::value_error(
                        format!(
                            "Task's etype '{etype}' doesn't match datapoint's etype '{}'",
                            dp.etype
                        ),
                        Json::String(dp.etype.clone()),
                    )
                    .at(["etype"]),
                ],
            });
        }
        if dp.eid != eid {
            return Err(TaskError::DataPoint {
                index,
                errors: vec![
                    ValidationError::value_error(
                        format!(
                            "Task's eid '{eid}' doesn't match datapoint's eid '{}'",
                            dp.eid
                        ),
                        dp.eid.to_json(),
                    )
                    .at(["eid"]),
                ],
            });
        }
        data_points.push(dp);
    }
    let ttl_tokens = match wire.ttl_tokens {
        None => None,
        Some(map) => {
            let mut tokens = IndexMap::with_capacity(map.len());
            for (name, raw) in map {
                let t = raw_datetime(raw)
                    .map_err(|e| TaskError::Field(e.at(["ttl_tokens", name.as_str()])))?;
                tokens.insert(name, t);
            }
            Some(tokens)
        }
    };
    let task = DataPointTask {
        etype,
        eid,
        data_points,
        tags: wire
            .tags
            .unwrap_or_default()
            .iter()
            .map(json_to_bson)
            .collect(),
        ttl_tokens,
        delete: wire.delete.unwrap_or(false),
    };
    if task.is_empty() {
        return Err(TaskError::Empty);
    }
    Ok(task)
}
