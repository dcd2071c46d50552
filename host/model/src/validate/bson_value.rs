//! Validation of values that are already BSON (datapoints built by modules), producing the
//! normalised stored form. Stricter about types than the JSON path (a module has typed
//! values; a string where an int is expected is a bug), lax only where the meaning is
//! unambiguous: integral doubles for ints, ints for floats, address strings for addresses,
//! JSON text for `json`.

use bson::{Bson, Document};
use serde_json::Value as Json;

use crate::datatype::{DataType, DictField, Primitive};
use crate::eid::{Eid, EidType};
use crate::spec::ModelSpec;
use crate::value::{self, json_to_bson, to_api_json};

use super::error::ValidationError;
use super::value::{eid_error, expected_list, link_eid_type};

type Errors = Vec<ValidationError>;

fn type_error(kind: &'static str, msg: &str, v: &Bson) -> ValidationError {
    ValidationError::new(kind, msg, to_api_json(v))
}

/// Validate and normalise a BSON value against `dt`.
pub fn normalize_bson(model: &ModelSpec, dt: &DataType, v: Bson) -> Result<Bson, Errors> {
    match dt {
        DataType::Primitive(p) => normalize_primitive(*p, v).map_err(|e| vec![e]),
        DataType::Category { base, members } => {
            let hit = members
                .iter()
                .find(|m| match (value::as_f64(m), value::as_f64(&v)) {
                    (Some(a), Some(b)) => {
                        matches!(base, Primitive::Int | Primitive::Int64 | Primitive::Float)
                            && a == b
                    }
                    _ => **m == v,
                });
            match hit {
                Some(m) => Ok(m.clone()),
                None => Err(vec![type_error(
                    "enum",
                    &format!("Input should be {}", expected_list(members)),
                    &v,
                )]),
            }
        }
        DataType::Link { etype, data, .. } => {
            let Bson::Document(d) = v else {
                return Err(vec![type_error(
                    "dict_type",
                    "Input should be a valid dictionary",
                    &v,
                )]);
            };
            normalize_link(model, etype, data.as_deref(), d)
        }
        DataType::Array(elem) | DataType::Set(elem) => {
            let Bson::Array(items) = v else {
                return Err(vec![type_error(
                    "list_type",
                    "Input should be a valid list",
                    &v,
                )]);
            };
            let mut out = Vec::with_capacity(items.len());
            let mut errors = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match normalize_bson(model, elem, item) {
                    Ok(b) => out.push(b),
                    Err(es) => errors.extend(es.into_iter().map(|e| e.at([i]))),
                }
            }
            if errors.is_empty() {
                Ok(Bson::Array(out))
            } else {
                Err(errors)
            }
        }
        DataType::Dict(fields) => {
            let Bson::Document(d) = v else {
                return Err(vec![type_error(
                    "dict_type",
                    "Input should be a valid dictionary",
                    &v,
                )]);
            };
            normalize_dict(fields, d)
        }
    }
}

fn address(ty: EidType, v: Bson) -> Result<Bson, ValidationError> {
    let ok = match ty {
        EidType::Ipv4 => value::as_ipv4(&v).is_some(),
        EidType::Ipv6 => value::as_ipv6(&v).is_some(),
        EidType::Mac => value::as_mac(&v).is_some(),
        _ => false,
    };
    if ok {
        return Ok(v);
    }
    match &v {
        Bson::String(s) => Eid::parse(ty, s)
            .map(|e| e.to_bson())
            .map_err(|e| eid_error(e, Json::String(s.clone()))),
        _ => {
            let (kind, msg) = match ty {
                EidType::Ipv4 => ("ip_v4_address", "Input is not a valid IPv4 address"),
                EidType::Ipv6 => ("ip_v6_address", "Input is not a valid IPv6 address"),
                _ => (
                    "value_error",
                    "Value error, Input is not a valid MAC address",
                ),
            };
            Err(type_error(kind, msg, &v))
        }
    }
}

/// Validate and normalise a primitive-typed BSON value.
pub fn normalize_primitive(p: Primitive, v: Bson) -> Result<Bson, ValidationError> {
    match (p, v) {
        (Primitive::Tag | Primitive::Binary, b @ Bson::Boolean(_)) => Ok(b),
        (Primitive::String, s @ Bson::String(_)) => Ok(s),
        (Primitive::Int | Primitive::Int64, Bson::Int32(i)) => Ok(Bson::Int32(i)),
        (Primitive::Int | Primitive::Int64, Bson::Int64(i)) => Ok(value::int(i)),
        (Primitive::Int | Primitive::Int64, Bson::Double(f))
            if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18 =>
        {
            Ok(value::int(f as i64))
        }
        (Primitive::Float, Bson::Double(f)) => Ok(Bson::Double(f)),
        (Primitive::Float, Bson::Int32(i)) => Ok(Bson::Double(f64::from(i))),
        (Primitive::Float, Bson::Int64(i)) => Ok(Bson::Double(i as f64)),
        (Primitive::Time, t @ Bson::DateTime(_)) => Ok(t),
        (Primitive::Ipv4, v) => address(EidType::Ipv4, v),
        (Primitive::Ipv6, v) => address(EidType::Ipv6, v),
        (Primitive::Mac, v) => address(EidType::Mac, v),
        (Primitive::Special, v) => Ok(v),
        (Primitive::Json, v @ (Bson::Document(_) | Bson::Array(_))) => Ok(v),
        (Primitive::Json, Bson::String(s)) => serde_json::from_str::<Json>(&s)
            .map(|j| json_to_bson(&j))
            .map_err(|e| {
                ValidationError::new(
                    "json_invalid",
                    format!("Invalid JSON: {e}"),
                    Json::String(s),
                )
            }),
        (p, v) => {
            let (kind, msg) = match p {
                Primitive::Tag | Primitive::Binary => {
                    ("bool_type", "Input should be a valid boolean")
                }
                Primitive::String => ("string_type", "Input should be a valid string"),
                Primitive::Int | Primitive::Int64 => {
                    ("int_type", "Input should be a valid integer")
                }
                Primitive::Float => ("float_type", "Input should be a valid number"),
                Primitive::Time => ("datetime_type", "Input should be a valid datetime"),
                _ => ("dict_type", "Input should be a valid dictionary"),
            };
            Err(type_error(kind, msg, &v))
        }
    }
}

fn normalize_dict(fields: &[DictField], mut d: Document) -> Result<Bson, Errors> {
    let mut out = Document::new();
    let mut errors = Vec::new();
    for f in fields {
        match d.remove(&f.name) {
            None | Some(Bson::Null) if f.optional => {
                out.insert(f.name.clone(), Bson::Null);
            }
            None => errors.push(ValidationError::missing(
                &f.name,
                Json::Object(value::doc_to_api_json(&d)),
            )),
            Some(item) => match normalize_primitive(f.ty, item) {
                Ok(b) => {
                    out.insert(f.name.clone(), b);
                }
                Err(e) => errors.push(e.at([f.name.as_str()])),
            },
        }
    }
    if errors.is_empty() {
        Ok(Bson::Document(out))
    } else {
        Err(errors)
    }
}

fn normalize_link(
    model: &ModelSpec,
    etype: &str,
    data: Option<&DataType>,
    mut d: Document,
) -> Result<Bson, Errors> {
    let eid_type = link_eid_type(model, etype).map_err(|e| vec![e])?;
    let mut out = Document::new();
    let mut errors = Vec::new();
    match d.remove("eid") {
        None => errors.push(ValidationError::missing(
            "eid",
            Json::Object(value::doc_to_api_json(&d)),
        )),
        Some(e) => match Eid::from_bson(&e) {
            Some(eid) if eid.eid_type() == eid_type => {
                out.insert("eid", eid.to_bson());
            }
            // A string eid for a typed target (e.g. "1.2.3.4" for an ipv4 entity) is fine.
            _ => match &e {
                Bson::String(s) => match Eid::parse(eid_type, s) {
                    Ok(eid) => {
                        out.insert("eid", eid.to_bson());
                    }
                    Err(err) => errors.push(eid_error(err, to_api_json(&e)).at(["eid"])),
                },
                _ => errors.push(
                    ValidationError::new(
                        "eid_type",
                        format!("Input should be a valid {} entity id", eid_type.name()),
                        to_api_json(&e),
                    )
                    .at(["eid"]),
                ),
            },
        },
    }
    if let Some(dt) = data {
        match d.remove("data") {
            None => errors.push(ValidationError::missing(
                "data",
                Json::Object(value::doc_to_api_json(&d)),
            )),
            Some(item) => match normalize_bson(model, dt, item) {
                Ok(b) => {
                    out.insert("data", b);
                }
                Err(es) => errors.extend(es.into_iter().map(|e| e.at(["data"]))),
            },
        }
    }
    for (k, v) in &d {
        errors.push(
            ValidationError::new(
                "extra_forbidden",
                "Extra inputs are not permitted",
                to_api_json(v),
            )
            .at([k.as_str()]),
        );
    }
    if errors.is_empty() {
        Ok(Bson::Document(out))
    } else {
        Err(errors)
    }
}
