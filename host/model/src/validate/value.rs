//! Validation and normalisation of attribute values given as JSON (data-model.md §3.3).
//!
//! Lax like DP3's pydantic validators; produces the stored BSON form. Every rejection is a
//! [`ValidationError`] whose `loc` is relative to the value (`[]`, `["key1"]`, `[3, "eid"]`).
//!
//! Integers: both `int` and `int64` accept exactly the signed 64-bit range. DP3 documents
//! `int` as 32-bit but never enforced it, so existing data and clients send larger values to
//! `int` attributes; what DP3 cannot do is *store* values beyond 64 bits (the bulk write
//! fails and loses the whole flush, data-model.md §9 item 19), so those are rejected here.

use bson::{Bson, Document};
use serde_json::Value as Json;
use serde_json::value::RawValue;

use crate::datatype::{DataType, DictField, Primitive};
use crate::eid::{Eid, EidParseError, EidType, parse_int_text};
use crate::spec::ModelSpec;
use crate::time::{DateTimeError, parse_datetime_json, parse_datetime_str};
use crate::value::{self, json_to_bson};

use super::error::ValidationError;

type Errors = Vec<ValidationError>;

/// Validate `v` against `dt`, producing the stored value. `model` resolves link targets.
pub fn validate_value(model: &ModelSpec, dt: &DataType, v: &Json) -> Result<Bson, Errors> {
    match dt {
        DataType::Primitive(Primitive::Json) => validate_json(v),
        DataType::Primitive(p) => validate_primitive(*p, v).map_err(|e| vec![e]),
        DataType::Category { base, members } => {
            validate_category(*base, members, v).map_err(|e| vec![e])
        }
        DataType::Link { etype, data, .. } => validate_link(model, etype, data.as_deref(), v),
        DataType::Array(elem) | DataType::Set(elem) => {
            // `set` keeps order and duplicates, as DP3 does (data-model.md §9 item 20).
            let Json::Array(items) = v else {
                return Err(vec![list_type(v)]);
            };
            let mut out = Vec::with_capacity(items.len());
            let mut errors = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match validate_value(model, elem, item) {
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
        DataType::Dict(fields) => validate_dict(fields, v),
    }
}

/// Validate a value given as raw JSON text. Common scalar forms are handled without building
/// a `serde_json::Value`; everything else falls back to [`validate_value`] with identical
/// results.
pub fn validate_raw_value(
    model: &ModelSpec,
    dt: &DataType,
    raw: &RawValue,
) -> Result<Bson, Errors> {
    if let DataType::Primitive(p) = dt
        && let Some(r) = fast_primitive(*p, raw.get())
    {
        return r.map_err(|e| vec![e]);
    }
    let v = parse_raw(raw);
    validate_value(model, dt, &v)
}

/// Parse raw JSON text (always valid: it came out of the JSON parser).
pub(crate) fn parse_raw(raw: &RawValue) -> Json {
    serde_json::from_str(raw.get()).unwrap_or(Json::Null)
}

/// The contents of a JSON string literal without escapes, borrowed from the raw text.
pub(crate) fn plain_str(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

/// `true` when `raw` is a plain JSON integer literal (`-?[0-9]+`).
fn is_int_literal(raw: &str) -> bool {
    let d = raw.strip_prefix('-').unwrap_or(raw);
    !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit())
}

/// Fast paths; `None` means "use the general path".
fn fast_primitive(p: Primitive, raw: &str) -> Option<Result<Bson, ValidationError>> {
    let first = *raw.as_bytes().first()?;
    if first == b'"' {
        let s = plain_str(raw)?;
        return match p {
            Primitive::String => Some(Ok(Bson::String(s.to_owned()))),
            Primitive::Time => Some(
                parse_datetime_str(s)
                    .map(value::time)
                    .map_err(|e| datetime_error(e, Json::String(s.to_owned()))),
            ),
            Primitive::Ipv4 => Some(eid_value(EidType::Ipv4, s)),
            Primitive::Ipv6 => Some(eid_value(EidType::Ipv6, s)),
            Primitive::Mac => Some(eid_value(EidType::Mac, s)),
            Primitive::Int | Primitive::Int64 => parse_int_text(s).ok().map(|i| Ok(value::int(i))),
            _ => None,
        };
    }
    if is_int_literal(raw) {
        let i: i64 = raw.parse().ok()?;
        return match p {
            Primitive::Int | Primitive::Int64 => Some(Ok(value::int(i))),
            Primitive::Float => Some(Ok(Bson::Double(i as f64))),
            _ => None,
        };
    }
    None
}

fn eid_value(ty: EidType, s: &str) -> Result<Bson, ValidationError> {
    Eid::parse(ty, s)
        .map(|e| e.to_bson())
        .map_err(|e| eid_error(e, Json::String(s.to_owned())))
}

/// Convert an eid parse error into a validation error (pydantic prefixes value errors).
pub fn eid_error(e: EidParseError, input: Json) -> ValidationError {
    if e.kind == "value_error" && !e.msg.starts_with("Value error, ") {
        ValidationError::value_error(e.msg, input)
    } else {
        ValidationError::new(e.kind, e.msg, input)
    }
}

/// A datetime error as a validation error (with pydantic's `ctx.error`).
pub fn datetime_error(e: DateTimeError, input: Json) -> ValidationError {
    let err = ValidationError::new(e.kind, e.msg, input);
    match e.detail {
        Some(d) => err.with_ctx(serde_json::json!({ "error": d })),
        None => err,
    }
}

fn list_type(v: &Json) -> ValidationError {
    ValidationError::new("list_type", "Input should be a valid list", v.clone())
}

fn dict_type(v: &Json) -> ValidationError {
    ValidationError::new("dict_type", "Input should be a valid dictionary", v.clone())
}

/// Validate a primitive-typed value (also used for dict fields and timeseries elements).
pub fn validate_primitive(p: Primitive, v: &Json) -> Result<Bson, ValidationError> {
    match p {
        Primitive::Tag | Primitive::Binary => validate_bool(v).map(Bson::Boolean),
        Primitive::String => match v {
            Json::String(s) => Ok(Bson::String(s.clone())),
            _ => Err(ValidationError::new(
                "string_type",
                "Input should be a valid string",
                v.clone(),
            )),
        },
        Primitive::Int | Primitive::Int64 => validate_int(v).map(value::int),
        Primitive::Float => validate_float(v).map(Bson::Double),
        Primitive::Time => parse_datetime_json(v)
            .map(value::time)
            .map_err(|e| datetime_error(e, v.clone())),
        Primitive::Ipv4 => eid_json(EidType::Ipv4, v),
        Primitive::Ipv6 => eid_json(EidType::Ipv6, v),
        Primitive::Mac => eid_json(EidType::Mac, v),
        Primitive::Special if has_nul_key(v) => Err(nul_key_error(v)),
        Primitive::Special => Ok(json_to_bson(v)),
        Primitive::Json => validate_json(v).map_err(|mut es| es.remove(0)),
    }
}

fn eid_json(ty: EidType, v: &Json) -> Result<Bson, ValidationError> {
    Eid::from_json(ty, v)
        .map(|e| e.to_bson())
        .map_err(|e| eid_error(e, v.clone()))
}

fn validate_bool(v: &Json) -> Result<bool, ValidationError> {
    let parsing = || {
        ValidationError::new(
            "bool_parsing",
            "Input should be a valid boolean, unable to interpret input",
            v.clone(),
        )
    };
    match v {
        Json::Bool(b) => Ok(*b),
        Json::Number(n) => {
            let f = n.as_f64();
            if f == Some(0.0) {
                Ok(false)
            } else if f == Some(1.0) {
                Ok(true)
            } else {
                Err(parsing())
            }
        }
        Json::String(s) => {
            const TRUE: [&str; 6] = ["true", "yes", "on", "1", "t", "y"];
            const FALSE: [&str; 6] = ["false", "no", "off", "0", "f", "n"];
            if TRUE.iter().any(|t| s.eq_ignore_ascii_case(t)) {
                Ok(true)
            } else if FALSE.iter().any(|t| s.eq_ignore_ascii_case(t)) {
                Ok(false)
            } else {
                Err(parsing())
            }
        }
        _ => Err(ValidationError::new(
            "bool_type",
            "Input should be a valid boolean",
            v.clone(),
        )),
    }
}

/// Integral floats in this half-open range convert to i64 exactly.
const I64_F_MIN: f64 = -9_223_372_036_854_775_808.0;
const I64_F_END: f64 = 9_223_372_036_854_775_808.0;

fn int_range_error(v: &Json) -> ValidationError {
    ValidationError::new(
        "int_parsing",
        "Input should be an integer within the signed 64-bit range",
        v.clone(),
    )
}

fn validate_int(v: &Json) -> Result<i64, ValidationError> {
    match v {
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(i);
            }
            if n.as_u64().is_some() {
                return Err(int_range_error(v));
            }
            let f = n.as_f64().unwrap_or(f64::NAN);
            if !f.is_finite() {
                Err(ValidationError::new(
                    "finite_number",
                    "Input should be a finite number",
                    v.clone(),
                ))
            } else if f.fract() != 0.0 {
                Err(ValidationError::new(
                    "int_from_float",
                    "Input should be a valid integer, got a number with a fractional part",
                    v.clone(),
                ))
            } else if (I64_F_MIN..I64_F_END).contains(&f) {
                Ok(f as i64)
            } else {
                Err(int_range_error(v))
            }
        }
        Json::Bool(b) => Ok(i64::from(*b)),
        Json::String(s) => parse_int_text(s).map_err(|e| eid_error(e, v.clone())),
        _ => Err(ValidationError::new(
            "int_type",
            "Input should be a valid integer",
            v.clone(),
        )),
    }
}

/// Python's `float()` text grammar: Rust's float syntax (which also takes `inf`, `infinity`
/// and `nan` in any case) after trimming whitespace, with `_` allowed between digits.
pub(crate) fn parse_float_text(s: &str) -> Option<f64> {
    let t = s.trim();
    if let Ok(f) = t.parse::<f64>() {
        return Some(f);
    }
    if t.contains('_') {
        let ok = t.as_bytes().windows(2).all(|w| match w {
            [b'_', c] | [c, b'_'] => c.is_ascii_digit(),
            _ => true,
        }) && !t.starts_with('_')
            && !t.ends_with('_');
        if ok {
            return t.replace('_', "").parse().ok();
        }
    }
    None
}

fn validate_float(v: &Json) -> Result<f64, ValidationError> {
    match v {
        Json::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN)),
        Json::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Json::String(s) => parse_float_text(s).ok_or_else(|| {
            ValidationError::new(
                "float_parsing",
                "Input should be a valid number, unable to parse string as a number",
                v.clone(),
            )
        }),
        _ => Err(ValidationError::new(
            "float_type",
            "Input should be a valid number",
            v.clone(),
        )),
    }
}

/// Whether an object key anywhere in `v` contains a NUL character: BSON keys are
/// NUL-terminated, so such a value could be accepted but never stored.
fn has_nul_key(v: &Json) -> bool {
    match v {
        Json::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul_key(v)),
        Json::Array(a) => a.iter().any(has_nul_key),
        _ => false,
    }
}

fn nul_key_error(v: &Json) -> ValidationError {
    ValidationError::new(
        "value_error",
        "Value error, object keys must not contain NUL characters",
        v.clone(),
    )
}

/// `json`: an object, an array, or a string holding JSON text (parsed).
fn validate_json(v: &Json) -> Result<Bson, Errors> {
    match v {
        Json::Object(_) | Json::Array(_) if has_nul_key(v) => Err(vec![nul_key_error(v)]),
        Json::Object(_) | Json::Array(_) => Ok(json_to_bson(v)),
        Json::String(s) => match serde_json::from_str::<Json>(s) {
            Ok(parsed) if has_nul_key(&parsed) => Err(vec![nul_key_error(v)]),
            Ok(parsed) => Ok(json_to_bson(&parsed)),
            Err(e) => Err(vec![
                ValidationError::new("json_invalid", format!("Invalid JSON: {e}"), v.clone())
                    .with_ctx(serde_json::json!({ "error": e.to_string() })),
                dict_type(v),
                list_type(v),
            ]),
        },
        _ => Err(vec![
            ValidationError::new(
                "json_type",
                "JSON input should be string, bytes or bytearray",
                v.clone(),
            ),
            dict_type(v),
            list_type(v),
        ]),
    }
}

/// Python repr of a category member for the `enum` error message.
fn member_repr(m: &Bson) -> String {
    match m {
        Bson::String(s) => format!("'{s}'"),
        Bson::Boolean(true) => "True".to_owned(),
        Bson::Boolean(false) => "False".to_owned(),
        other => match value::to_api_json(other) {
            Json::String(s) => format!("'{s}'"),
            j => j.to_string(),
        },
    }
}

pub(crate) fn expected_list(members: &[Bson]) -> String {
    let reprs: Vec<String> = members.iter().map(member_repr).collect();
    match reprs.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Category: the raw member value equal to the input. String categories need a string,
/// numeric ones a number (`1.0` matches `1`, `"1"` does not); other bases go through the base
/// validator first.
fn validate_category(base: Primitive, members: &[Bson], v: &Json) -> Result<Bson, ValidationError> {
    let found = match (base, v) {
        (Primitive::String, Json::String(s)) => members
            .iter()
            .find(|m| matches!(m, Bson::String(ms) if ms == s)),
        (Primitive::String, _) => None,
        (Primitive::Int | Primitive::Int64 | Primitive::Float, Json::Number(n)) => {
            let x = n.as_f64();
            members
                .iter()
                .find(|m| match (value::as_int(m), n.as_i64()) {
                    (Some(mi), Some(ni)) => mi == ni,
                    _ => value::as_f64(m).is_some() && value::as_f64(m) == x,
                })
        }
        (Primitive::Int | Primitive::Int64 | Primitive::Float, _) => None,
        _ => validate_primitive(base, v)
            .ok()
            .and_then(|b| members.iter().find(|m| **m == b)),
    };
    found.cloned().ok_or_else(|| {
        let expected = expected_list(members);
        ValidationError::new("enum", format!("Input should be {expected}"), v.clone())
            .with_ctx(serde_json::json!({ "expected": expected }))
    })
}

fn validate_dict(fields: &[DictField], v: &Json) -> Result<Bson, Errors> {
    let Json::Object(obj) = v else {
        return Err(vec![dict_type(v)]);
    };
    let mut out = Document::new();
    let mut errors = Vec::new();
    for f in fields {
        match obj.get(&f.name) {
            None | Some(Json::Null) if f.optional => {
                out.insert(f.name.clone(), Bson::Null);
            }
            None => errors.push(ValidationError::missing(&f.name, v.clone())),
            Some(item) => match validate_primitive(f.ty, item) {
                Ok(b) => {
                    out.insert(f.name.clone(), b);
                }
                Err(e) => errors.push(e.at([f.name.as_str()])),
            },
        }
    }
    // Undeclared keys are dropped, as DP3 does (data-model.md §9 item 21).
    if errors.is_empty() {
        Ok(Bson::Document(out))
    } else {
        Err(errors)
    }
}

/// The eid type of a link target.
pub(crate) fn link_eid_type(model: &ModelSpec, etype: &str) -> Result<EidType, ValidationError> {
    model
        .entity(etype)
        .map(|e| e.spec.id_data_type)
        .ok_or_else(|| {
            ValidationError::value_error(
                format!("Entity type '{etype}' is not defined"),
                Json::String(etype.to_owned()),
            )
        })
}

fn validate_link(
    model: &ModelSpec,
    etype: &str,
    data: Option<&DataType>,
    v: &Json,
) -> Result<Bson, Errors> {
    let Json::Object(obj) = v else {
        return Err(vec![dict_type(v)]);
    };
    let eid_type = link_eid_type(model, etype).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut out = Document::new();
    match obj.get("eid") {
        None => errors.push(ValidationError::missing("eid", v.clone())),
        Some(e) => match Eid::from_json(eid_type, e) {
            Ok(eid) => {
                out.insert("eid", eid.to_bson());
            }
            Err(err) => errors.push(eid_error(err, e.clone()).at(["eid"])),
        },
    }
    if let Some(dt) = data {
        match obj.get("data") {
            None => errors.push(ValidationError::missing("data", v.clone())),
            Some(d) => match validate_value(model, dt, d) {
                Ok(b) => {
                    out.insert("data", b);
                }
                Err(es) => errors.extend(es.into_iter().map(|e| e.at(["data"]))),
            },
        }
    }
    for (k, val) in obj {
        if k != "eid" && !(k == "data" && data.is_some()) {
            errors.push(
                ValidationError::new(
                    "extra_forbidden",
                    "Extra inputs are not permitted",
                    val.clone(),
                )
                .at([k.as_str()]),
            );
        }
    }
    if errors.is_empty() {
        Ok(Bson::Document(out))
    } else {
        Err(errors)
    }
}
