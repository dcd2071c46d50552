//! Datapoint validation: `POST /datapoints` bodies (data-model.md §4, api.md §4.2) and the
//! datapoints of wire task messages (core.md §2.1), which share the attribute-specific rules.
//!
//! Parsing borrows: each datapoint object is split into its fields as raw JSON text
//! (`&RawValue`) in one pass, and common scalar fields are validated straight from that text.
//! A full `serde_json::Value` is only built for complex values and for error reports.

use std::borrow::Cow;
use std::fmt;

use bson::{Bson, Document};
use chrono::{DateTime, TimeDelta, Utc};
use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;
use serde_json::value::RawValue;

use crate::datatype::Primitive;
use crate::eid::{Eid, EidType};
use crate::spec::{AttrKind, AttrSpec, ModelSpec, TimeseriesType};
use crate::task::{DataPoint, DataPointTask};
use crate::time::{from_unix, from_unix_int, parse_datetime_str};
use crate::value;

use super::error::{LocItem, ValidationError, prefix_all};
use super::value::{
    datetime_error, eid_error, parse_float_text, parse_raw, plain_str, validate_primitive,
    validate_raw_value,
};

type Errors = Vec<ValidationError>;

/// Keys of a datapoint object we look at; everything else is ignored (DP3 ignores extra keys).
#[derive(Clone, Copy)]
enum FieldKey {
    Type,
    Id,
    Etype,
    Eid,
    Attr,
    V,
    T1,
    T2,
    C,
    Src,
    Other,
}

impl<'de> Deserialize<'de> for FieldKey {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = FieldKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<FieldKey, E> {
                Ok(match s {
                    "type" => FieldKey::Type,
                    "id" => FieldKey::Id,
                    "etype" => FieldKey::Etype,
                    "eid" => FieldKey::Eid,
                    "attr" => FieldKey::Attr,
                    "v" => FieldKey::V,
                    "t1" => FieldKey::T1,
                    "t2" => FieldKey::T2,
                    "c" => FieldKey::C,
                    "src" => FieldKey::Src,
                    _ => FieldKey::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// The fields of one datapoint object as raw JSON text (a later duplicate key wins, as in
/// Python's `json`).
#[derive(Default, Clone, Copy)]
pub(crate) struct RawFields<'a> {
    type_: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    etype: Option<&'a RawValue>,
    eid: Option<&'a RawValue>,
    attr: Option<&'a RawValue>,
    v: Option<&'a RawValue>,
    t1: Option<&'a RawValue>,
    t2: Option<&'a RawValue>,
    c: Option<&'a RawValue>,
    src: Option<&'a RawValue>,
}

/// Split a datapoint object into its fields (a later duplicate key wins).
fn read_fields<'de: 'a, 'a, M: MapAccess<'de>>(mut map: M) -> Result<RawFields<'a>, M::Error> {
    let mut f = RawFields::default();
    while let Some(key) = map.next_key::<FieldKey>()? {
        let slot = match key {
            FieldKey::Type => &mut f.type_,
            FieldKey::Id => &mut f.id,
            FieldKey::Etype => &mut f.etype,
            FieldKey::Eid => &mut f.eid,
            FieldKey::Attr => &mut f.attr,
            FieldKey::V => &mut f.v,
            FieldKey::T1 => &mut f.t1,
            FieldKey::T2 => &mut f.t2,
            FieldKey::C => &mut f.c,
            FieldKey::Src => &mut f.src,
            FieldKey::Other => {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
        };
        *slot = Some(map.next_value::<&'a RawValue>()?);
    }
    Ok(f)
}

/// One element of a datapoint list: an object, or anything else (an error later).
pub(crate) enum RawItem<'a> {
    Object(RawFields<'a>),
    NotObject,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawItem<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ItemVisitor<'a> {
            type Value = RawItem<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<RawItem<'a>, M::Error> {
                read_fields(map).map(RawItem::Object)
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<RawItem<'a>, S::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawItem::NotObject)
            }
            fn visit_bool<E>(self, _: bool) -> Result<RawItem<'a>, E> {
                Ok(RawItem::NotObject)
            }
            fn visit_i64<E>(self, _: i64) -> Result<RawItem<'a>, E> {
                Ok(RawItem::NotObject)
            }
            fn visit_u64<E>(self, _: u64) -> Result<RawItem<'a>, E> {
                Ok(RawItem::NotObject)
            }
            fn visit_f64<E>(self, _: f64) -> Result<RawItem<'a>, E> {
                Ok(RawItem::NotObject)
            }
            fn visit_str<E>(self, _: &str) -> Result<RawItem<'a>, E> {
                Ok(RawItem::NotObject)
            }
            fn visit_unit<E>(self) -> Result<RawItem<'a>, E> {
                Ok(RawItem::NotObject)
            }
        }
        d.deserialize_any(ItemVisitor(std::marker::PhantomData))
    }
}

/// Which field names identify the entity: the API's `type`/`id` or the internal
/// `etype`/`eid` of task messages.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Naming {
    Api,
    Internal,
}

/// A JSON string's contents (borrowed when it has no escapes).
pub(crate) fn raw_string(r: &RawValue) -> Option<Cow<'_, str>> {
    let s = r.get();
    if let Some(p) = plain_str(s) {
        return Some(Cow::Borrowed(p));
    }
    if s.starts_with('"') {
        return serde_json::from_str::<String>(s).ok().map(Cow::Owned);
    }
    None
}

fn is_null(r: Option<&RawValue>) -> bool {
    r.is_none_or(|r| r.get() == "null")
}

/// Python truthiness of a JSON value given as text (`t2` falls back to `t1` when falsy).
fn is_falsy(r: Option<&RawValue>) -> bool {
    match r.map(RawValue::get) {
        None => true,
        Some(s) => match s {
            "null" | "false" | "\"\"" | "[]" | "{}" => true,
            _ => {
                let b = s.as_bytes();
                (b.first().is_some_and(|c| c.is_ascii_digit() || *c == b'-'))
                    && s.parse::<f64>().is_ok_and(|f| f == 0.0)
            }
        },
    }
}

/// Parse a datetime field from raw JSON.
pub(crate) fn raw_datetime(r: &RawValue) -> Result<DateTime<Utc>, ValidationError> {
    let s = r.get();
    let parsed = match s.as_bytes().first() {
        Some(b'"') => match raw_string(r) {
            Some(text) => parse_datetime_str(&text),
            None => Err(crate::time::DateTimeError::wrong_type()),
        },
        Some(c) if c.is_ascii_digit() || *c == b'-' => match s.parse::<i64>() {
            Ok(i) => from_unix_int(i),
            Err(_) => from_unix(s.parse::<f64>().unwrap_or(f64::NAN)),
        },
        _ => Err(crate::time::DateTimeError::wrong_type()),
    };
    parsed.map_err(|e| datetime_error(e, parse_raw(r)))
}

/// Parse `c` (lax float), checking `0 <= c <= 1`.
fn raw_confidence(r: &RawValue) -> Result<f64, ValidationError> {
    let s = r.get();
    let c = match s.as_bytes().first() {
        Some(c) if c.is_ascii_digit() || *c == b'-' => s.parse::<f64>().ok(),
        _ => None,
    };
    let c = match c {
        Some(c) => c,
        None => match parse_raw(r) {
            Json::Bool(b) => f64::from(u8::from(b)),
            Json::String(text) => parse_float_text(&text).ok_or_else(|| {
                ValidationError::new(
                    "float_parsing",
                    "Input should be a valid number, unable to parse string as a number",
                    Json::String(text.clone()),
                )
            })?,
            other => {
                return Err(ValidationError::new(
                    "float_type",
                    "Input should be a valid number",
                    other,
                ));
            }
        },
    };
    if c < 0.0 {
        return Err(ValidationError::new(
            "greater_than_equal",
            "Input should be greater than or equal to 0",
            parse_raw(r),
        )
        .with_ctx(serde_json::json!({"ge": 0.0})));
    }
    if c.is_nan() || c > 1.0 {
        return Err(ValidationError::new(
            "less_than_equal",
            "Input should be less than or equal to 1",
            parse_raw(r),
        )
        .with_ctx(serde_json::json!({"le": 1.0})));
    }
    Ok(c)
}

/// Validate an eid given as raw JSON against an id type.
pub(crate) fn raw_eid(ty: EidType, r: &RawValue) -> Result<Eid, ValidationError> {
    if let Some(s) = plain_str(r.get()) {
        return Eid::parse(ty, s).map_err(|e| eid_error(e, Json::String(s.to_owned())));
    }
    let j = parse_raw(r);
    Eid::from_json(ty, &j).map_err(|e| eid_error(e, j))
}

/// The envelope after its generic checks.
struct Envelope<'a> {
    etype: Cow<'a, str>,
    attr: Cow<'a, str>,
    id: &'a RawValue,
    v: Option<&'a RawValue>,
    t1: Option<DateTime<Utc>>,
    t2: Option<DateTime<Utc>>,
    t2_raw: Option<&'a RawValue>,
    c: f64,
    src: Option<String>,
}

fn string_type(r: &RawValue) -> ValidationError {
    ValidationError::new(
        "string_type",
        "Input should be a valid string",
        parse_raw(r),
    )
}

/// Step 1 (api.md §4.2): shape of one datapoint object; errors relative to the item.
fn check_envelope<'a>(
    f: &RawFields<'a>,
    naming: Naming,
    item: &dyn Fn() -> Json,
) -> Result<Envelope<'a>, Errors> {
    let mut errors = Vec::new();
    let (type_key, id_key, type_raw, id_raw) = match naming {
        Naming::Api => ("type", "id", f.type_, f.id),
        Naming::Internal => ("etype", "eid", f.etype, f.eid),
    };
    let mut text_field = |key: &str, r: Option<&'a RawValue>| match r {
        None => {
            errors.push(ValidationError::missing(key, item()));
            None
        }
        Some(r) => match raw_string(r) {
            Some(s) => Some(s),
            None => {
                errors.push(string_type(r).at([key]));
                None
            }
        },
    };
    let etype = text_field(type_key, type_raw);
    let attr = text_field("attr", f.attr);
    if id_raw.is_none() {
        errors.push(ValidationError::missing(id_key, item()));
    }
    // Internal messages omit `v: null` (core.md §2.1); only the API requires the key.
    if f.v.is_none() && naming == Naming::Api {
        errors.push(ValidationError::missing("v", item()));
    }
    let t1 = match f.t1 {
        r if is_null(r) => None,
        Some(r) => raw_datetime(r).map_err(|e| errors.push(e.at(["t1"]))).ok(),
        None => None,
    };
    // A falsy `t2` (`""`, `0`, null) means "not given" (data-model.md §4.2).
    let t2 = match f.t2 {
        r if is_falsy(r) => None,
        Some(r) => raw_datetime(r).map_err(|e| errors.push(e.at(["t2"]))).ok(),
        None => None,
    };
    let c = match f.c {
        // Internal messages may carry `c: null` for plain datapoints (unvalidated there).
        r if naming == Naming::Internal && is_null(r) => 1.0,
        None => 1.0,
        Some(r) => raw_confidence(r)
            .map_err(|e| errors.push(e.at(["c"])))
            .unwrap_or(1.0),
    };
    let src = match f.src {
        r if is_null(r) => None,
        Some(r) => match raw_string(r) {
            Some(s) => Some(s.into_owned()),
            None => {
                errors.push(string_type(r).at(["src"]));
                None
            }
        },
        None => None,
    };
    if let (Some(a), Some(b)) = (t1, t2)
        && b < a
    {
        errors.push(
            ValidationError::assertion("'t2' is before 't1'", f.t2.map_or(Json::Null, parse_raw))
                .at(["t2"]),
        );
    }
    match (etype, attr, id_raw) {
        (Some(etype), Some(attr), Some(id)) if errors.is_empty() => Ok(Envelope {
            etype,
            attr,
            id,
            v: f.v,
            t1,
            t2,
            t2_raw: f.t2,
            c,
            src,
        }),
        _ => Err(errors),
    }
}

/// Python's `str()` of an aware UTC datetime (used in DP3's timeseries messages).
fn py_datetime(v: &Bson) -> String {
    match value::as_time(v) {
        Some(t) if t.timestamp_subsec_micros() == 0 => {
            t.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
        }
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string(),
        None => String::new(),
    }
}

fn time_ms(v: &Bson) -> Option<i64> {
    match v {
        Bson::DateTime(d) => Some(d.timestamp_millis()),
        _ => None,
    }
}

/// The times of a time series as milliseconds; errors if it is missing or empty.
fn series_times(doc: &Document, name: &str) -> Result<Vec<i64>, ValidationError> {
    let Some(Bson::Array(items)) = doc.get(name) else {
        return Err(ValidationError::value_error(
            format!("timeseries attribute has no '{name}' series configured"),
            Json::Null,
        ));
    };
    if items.is_empty() {
        // DP3 crashes with an index error here (data-model.md §9 item 17).
        return Err(ValidationError::assertion(
            format!("'{name}' series must not be empty"),
            Json::Null,
        ));
    }
    Ok(items.iter().filter_map(time_ms).collect())
}

fn ms_to_time(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// Validate the `v` of a timeseries datapoint and apply the per-type rules; returns the
/// value document and the final `t2`.
fn validate_timeseries(
    ts_type: TimeseriesType,
    series: &IndexMap<String, Primitive>,
    time_step: Option<TimeDelta>,
    v: &Json,
    t1: DateTime<Utc>,
    t2: Option<DateTime<Utc>>,
) -> Result<(Bson, DateTime<Utc>), Errors> {
    let Json::Object(obj) = v else {
        return Err(vec![
            ValidationError::new("dict_type", "Input should be a valid dictionary", v.clone())
                .at(["v"]),
        ]);
    };
    let mut doc = Document::new();
    let mut errors = Vec::new();
    let mut lengths = Vec::with_capacity(series.len());
    for (name, prim) in series {
        match obj.get(name) {
            None => errors.push(ValidationError::missing(name, v.clone()).at(["v"])),
            Some(Json::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match validate_primitive(*prim, item) {
                        Ok(b) => out.push(b),
                        Err(e) => {
                            errors.push(e.at([LocItem::from("v"), name.as_str().into(), i.into()]))
                        }
                    }
                }
                lengths.push(out.len());
                doc.insert(name.clone(), out);
            }
            Some(other) => errors.push(
                ValidationError::new("list_type", "Input should be a valid list", other.clone())
                    .at(["v", name.as_str()]),
            ),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    check_lengths(&lengths).map_err(|e| vec![e.at(["v"]).with_input(v.clone())])?;
    check_timeseries(ts_type, time_step, doc, &lengths, t1, t2).map_err(|e| vec![e])
}

/// All series must be equally long (and there must be at least one).
pub(crate) fn check_lengths(lengths: &[usize]) -> Result<(), ValidationError> {
    let mut distinct = lengths.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() == 1 {
        return Ok(());
    }
    // Python's repr of the set of lengths.
    let set = if distinct.is_empty() {
        "set()".to_owned()
    } else {
        let parts: Vec<String> = distinct.iter().map(ToString::to_string).collect();
        format!("{{{}}}", parts.join(", "))
    };
    Err(ValidationError::assertion(
        format!("Series values have different lengths: {set}"),
        Json::Null,
    ))
}

/// The typed series of a timeseries value (element-validated, equal lengths): the per-type
/// rules of data-model.md §4.5. Returns the value and the final `t2`.
pub(crate) fn check_timeseries(
    ts_type: TimeseriesType,
    time_step: Option<TimeDelta>,
    doc: Document,
    lengths: &[usize],
    t1: DateTime<Utc>,
    t2: Option<DateTime<Utc>>,
) -> Result<(Bson, DateTime<Utc>), ValidationError> {
    let len = lengths.first().copied().unwrap_or(0);
    let t1_ms = t1.timestamp_millis();
    let t2 = match ts_type {
        TimeseriesType::Regular => {
            let Some(step) = time_step else {
                return Err(ValidationError::value_error(
                    "regular timeseries attribute has no time_step configured",
                    Json::Null,
                ));
            };
            // DP3 defaults t2 to t1 before this check, so its "compute t2" branch never runs
            // (data-model.md §4.5); we compute t2 when absent, the evident intent.
            let expected = i32::try_from(len)
                .ok()
                .and_then(|n| step.checked_mul(n))
                .and_then(|d| t1.checked_add_signed(d));
            match (expected, t2) {
                (Some(e), None) => e,
                (Some(e), Some(t2)) if t2 == e => t2,
                _ => {
                    return Err(ValidationError::assertion(
                        "Difference of t1 and t2 is invalid. Must be values_len*time_step.",
                        Json::Null,
                    ));
                }
            }
        }
        TimeseriesType::Irregular => {
            let times = series_times(&doc, "time")?;
            let (first, last) = (times[0], times[times.len() - 1]);
            if t1_ms > first {
                return Err(ValidationError::assertion(
                    format!(
                        "'t1' is above first item in 'time' series ({})",
                        py_datetime(&Bson::DateTime(bson::DateTime::from_millis(first)))
                    ),
                    Json::Null,
                ));
            }
            let t2 = check_or_default_t2(t2, last, "time")?;
            if times.windows(2).any(|w| w[0] > w[1]) {
                return Err(ValidationError::assertion(
                    "'time' series is not ordered",
                    Json::Null,
                ));
            }
            t2
        }
        TimeseriesType::IrregularIntervals => {
            let firsts = series_times(&doc, "time_first")?;
            let lasts = series_times(&doc, "time_last")?;
            if t1_ms > firsts[0] {
                return Err(ValidationError::assertion(
                    format!(
                        "'t1' is above first item in 'time_first' series ({})",
                        py_datetime(&Bson::DateTime(bson::DateTime::from_millis(firsts[0])))
                    ),
                    Json::Null,
                ));
            }
            let t2 = check_or_default_t2(t2, lasts[lasts.len() - 1], "time_last")?;
            if firsts.iter().zip(&lasts).any(|(f, l)| f > l) {
                return Err(ValidationError::assertion(
                    "'time_first[i] <= time_last[i]' isn't true for all 'i'",
                    Json::Null,
                ));
            }
            t2
        }
    };
    if t2 < t1 {
        return Err(ValidationError::assertion("'t2' is before 't1'", Json::Null).at(["t2"]));
    }
    Ok((Bson::Document(doc), t2))
}

/// `t2` of an irregular series: defaults to the last time (DP3's evident intent), else must
/// not be below it.
fn check_or_default_t2(
    t2: Option<DateTime<Utc>>,
    last_ms: i64,
    series: &str,
) -> Result<DateTime<Utc>, ValidationError> {
    match t2 {
        None => ms_to_time(last_ms)
            .ok_or_else(|| ValidationError::assertion("time out of range", Json::Null)),
        Some(t2) if t2.timestamp_millis() >= last_ms => Ok(t2),
        Some(_) => Err(ValidationError::assertion(
            format!(
                "'t2' is below last item in '{series}' series ({})",
                py_datetime(&Bson::DateTime(bson::DateTime::from_millis(last_ms)))
            ),
            Json::Null,
        )),
    }
}

/// Step 3: the attribute-specific rules (data-model.md §4.3–4.5). Errors are relative to the
/// item, with the id at `eid` as in DP3.
fn validate_for_attr(
    model: &ModelSpec,
    eid_type: EidType,
    spec: &AttrSpec,
    env: Envelope<'_>,
) -> Result<DataPoint, Errors> {
    let mut errors = Vec::new();
    if spec.is_read_only() {
        errors.push(
            ValidationError::value_error(
                "Cannot instantiate a read-only attribute datapoint.",
                env.v.map_or(Json::Null, parse_raw),
            )
            .at(["v"]),
        );
        return Err(errors);
    }
    let eid = raw_eid(eid_type, env.id)
        .map_err(|e| errors.push(e.at(["eid"])))
        .ok();
    let null_v;
    let v_raw = match env.v {
        Some(v) => v,
        None => {
            null_v = serde_json::value::to_raw_value(&Json::Null).ok();
            match null_v.as_deref() {
                Some(r) => r,
                None => return Err(errors),
            }
        }
    };
    let missing_times = |errors: &mut Errors, t2: Option<DateTime<Utc>>| {
        let e = ValidationError::new(
            "datetime_type",
            "Input should be a valid datetime",
            Json::Null,
        );
        errors.push(e.clone().at(["t1"]));
        if t2.is_none() {
            errors.push(e.at(["t2"]));
        }
    };
    let (v, t1, t2) = match &spec.kind {
        AttrKind::Plain { data_type, .. } => {
            if env.t2.is_some() {
                errors.push(
                    ValidationError::new(
                        "none_required",
                        "Input should be None",
                        env.t2_raw.map_or(Json::Null, parse_raw),
                    )
                    .at(["t2"]),
                );
            }
            // t1 of a plain datapoint is dropped (data-model.md §4.3).
            let v = validate_raw_value(model, data_type, v_raw)
                .map_err(|es| errors.extend(prefix_all(es, &["v"])))
                .ok();
            (v, None, None)
        }
        AttrKind::Observations { data_type, .. } => {
            if env.t1.is_none() {
                missing_times(&mut errors, env.t2);
            }
            let v = validate_raw_value(model, data_type, v_raw)
                .map_err(|es| errors.extend(prefix_all(es, &["v"])))
                .ok();
            (v, env.t1, env.t2.or(env.t1))
        }
        AttrKind::Timeseries {
            timeseries_type,
            series,
            timeseries_params,
        } => match env.t1 {
            None => {
                missing_times(&mut errors, env.t2);
                (None, None, None)
            }
            Some(t1) => match validate_timeseries(
                *timeseries_type,
                series,
                timeseries_params.time_step,
                &parse_raw(v_raw),
                t1,
                env.t2,
            ) {
                Ok((v, t2)) => (Some(v), Some(t1), Some(t2)),
                Err(es) => {
                    errors.extend(es);
                    (None, None, None)
                }
            },
        },
    };
    match (eid, v) {
        (Some(eid), Some(v)) if errors.is_empty() => Ok(DataPoint {
            etype: env.etype.into_owned(),
            eid,
            attr: env.attr.into_owned(),
            src: env.src,
            v,
            c: env.c,
            t1,
            t2,
        }),
        _ => Err(errors),
    }
}

/// Validate one datapoint object of a wire task message (internal field names); errors are
/// relative to the datapoint. Unknown etype/attr use the task-level messages.
pub(crate) fn validate_internal_datapoint(
    model: &ModelSpec,
    raw: &RawItem<'_>,
    item: &dyn Fn() -> Json,
) -> Result<DataPoint, Errors> {
    let RawItem::Object(f) = raw else {
        return Err(vec![ValidationError::new(
            "model_attributes_type",
            "Input should be a valid dictionary or object to extract fields from",
            item(),
        )]);
    };
    let env = check_envelope(f, Naming::Internal, item)?;
    let Some(entity) = model.entity(&env.etype) else {
        return Err(vec![
            ValidationError::value_error(format!("Invalid etype '{}'", env.etype), item())
                .at(["etype"]),
        ]);
    };
    let Some(spec) = entity.attribs.get(env.attr.as_ref()) else {
        return Err(vec![
            ValidationError::value_error(
                format!(
                    "Attribute '{}' not found in entity '{}'",
                    env.attr, env.etype
                ),
                item(),
            )
            .at(["attr"]),
        ]);
    };
    validate_for_attr(model, entity.spec.id_data_type, spec, env)
}

/// Attribute lookup with a small cache of recently used `(etype, attr)` pairs: requests
/// usually repeat a few attributes, and comparing two short strings is cheaper than hashing
/// them into two maps.
#[derive(Default)]
struct AttrLookup<'m> {
    recent: Vec<(&'m str, &'m str, EidType, &'m AttrSpec)>,
}

impl<'m> AttrLookup<'m> {
    const CAPACITY: usize = 16;

    fn find(
        &mut self,
        model: &'m ModelSpec,
        etype: &str,
        attr: &str,
    ) -> Option<(EidType, &'m AttrSpec)> {
        if let Some(&(_, _, t, spec)) = self
            .recent
            .iter()
            .find(|(e, a, _, _)| *e == etype && *a == attr)
        {
            return Some((t, spec));
        }
        let (etype_key, entity) = model.entities.get_key_value(etype)?;
        let (attr_key, spec) = entity.attribs.get_key_value(attr)?;
        let id_type = entity.spec.id_data_type;
        if self.recent.len() < Self::CAPACITY {
            self.recent.push((etype_key, attr_key, id_type, spec));
        }
        Some((id_type, spec))
    }
}

/// Parse and validate the body of `POST /datapoints` (a JSON array of
/// `{type, id, attr, v, t1, t2, c, src}` objects).
///
/// All errors of all items are returned (DP3 rejects the whole request if any item is
/// invalid); their `loc`s start with `"body"` and the item index, exactly as DP3's 422
/// `detail` items.
pub fn parse_api_datapoints(
    model: &ModelSpec,
    body: &[u8],
) -> Result<Vec<DataPoint>, Vec<ValidationError>> {
    // Validating UTF-8 once up front lets serde_json borrow every raw field without
    // re-validating it (`from_str` instead of `from_slice`).
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => return Err(vec![utf8_error(body, &e)]),
    };
    let mut batch = Batch {
        model,
        body,
        values: std::cell::OnceCell::new(),
        lookup: AttrLookup::default(),
        // ~one datapoint per 128 bytes avoids regrowing for typical bodies
        out: Vec::with_capacity(body.len() / 128 + 1),
        errors: Vec::new(),
    };
    // Items are validated while the array is being parsed (no intermediate list).
    let mut de = serde_json::Deserializer::from_str(text);
    if let Err(e) =
        de::DeserializeSeed::deserialize(BatchSeed(&mut batch), &mut de).and_then(|()| de.end())
    {
        return Err(vec![body_error(body, &e)]);
    }
    if batch.errors.is_empty() {
        Ok(batch.out)
    } else {
        Err(batch.errors)
    }
}

/// State of one `POST /datapoints` validation.
struct Batch<'m, 'b> {
    model: &'m ModelSpec,
    body: &'b [u8],
    /// Whole-item inputs are only needed for error reports; parsed lazily, once.
    values: std::cell::OnceCell<Vec<Json>>,
    lookup: AttrLookup<'m>,
    out: Vec<DataPoint>,
    errors: Vec<ValidationError>,
}

fn item_json(values: &std::cell::OnceCell<Vec<Json>>, body: &[u8], i: usize) -> Json {
    values
        .get_or_init(|| serde_json::from_slice(body).unwrap_or_default())
        .get(i)
        .cloned()
        .unwrap_or(Json::Null)
}

impl Batch<'_, '_> {
    /// Validate item `i`; `None` when the item is not an object.
    fn process(&mut self, i: usize, fields: Option<&RawFields<'_>>) {
        let prefix = [LocItem::from("body"), LocItem::from(i)];
        let (values, body) = (&self.values, self.body);
        let Some(f) = fields else {
            self.errors.push(
                ValidationError::new(
                    "model_attributes_type",
                    "Input should be a valid dictionary or object to extract fields from",
                    item_json(values, body, i),
                )
                .at(prefix),
            );
            return;
        };
        let this_item = || item_json(values, body, i);
        let env = match check_envelope(f, Naming::Api, &this_item) {
            Ok(env) => env,
            Err(es) => {
                self.errors.extend(prefix_all(es, &prefix));
                return;
            }
        };
        let Some((eid_type, spec)) = self.lookup.find(self.model, &env.etype, &env.attr) else {
            self.errors.push(
                ValidationError::value_error(
                    format!(
                        "Combination of type '{}' and attr '{}' doesn't exist",
                        env.etype, env.attr
                    ),
                    this_item(),
                )
                .at(prefix),
            );
            return;
        };
        match validate_for_attr(self.model, eid_type, spec, env) {
            // Once anything failed the request is rejected; stop collecting datapoints.
            Ok(dp) if self.errors.is_empty() => self.out.push(dp),
            Ok(_) => {}
            Err(es) => self.errors.extend(prefix_all(es, &prefix)),
        }
    }
}

/// Drives [`Batch::process`] over the elements of the top-level array.
struct BatchSeed<'x, 'm, 'b>(&'x mut Batch<'m, 'b>);

impl<'de> de::DeserializeSeed<'de> for BatchSeed<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of datapoints")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(ItemSeed {
                batch: &mut *self.0,
                i,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
}

/// Validates one element of the array in place (the fields never leave the parser's stack
/// frame, which saves copying them around).
struct ItemSeed<'x, 'm, 'b> {
    batch: &'x mut Batch<'m, 'b>,
    i: usize,
}

impl<'de> de::DeserializeSeed<'de> for ItemSeed<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemSeed<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a datapoint object")
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<(), M::Error> {
        let fields = read_fields(map)?;
        self.batch.process(self.i, Some(&fields));
        Ok(())
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.batch.process(self.i, None);
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.batch.process(self.i, None);
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.batch.process(self.i, None);
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.batch.process(self.i, None);
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.batch.process(self.i, None);
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.batch.process(self.i, None);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.batch.process(self.i, None);
        Ok(())
    }
}

/// The error for a body that is not a JSON array: `list_type` for valid JSON of another
/// type, `json_invalid` (with the byte position) for malformed JSON.
fn body_error(body: &[u8], e: &serde_json::Error) -> ValidationError {
    if e.classify() == serde_json::error::Category::Data
        && let Ok(v) = serde_json::from_slice::<Json>(body)
    {
        return ValidationError::new("list_type", "Input should be a valid list", v).at(["body"]);
    }
    let pos = byte_position(body, e.line(), e.column());
    ValidationError::new(
        "json_invalid",
        "JSON decode error",
        Json::String(String::from_utf8_lossy(body).into_owned()),
    )
    .with_ctx(serde_json::json!({ "error": e.to_string() }))
    .at([LocItem::from("body"), LocItem::from(pos)])
}

/// The body is not UTF-8 (so not JSON either).
fn utf8_error(body: &[u8], e: &std::str::Utf8Error) -> ValidationError {
    ValidationError::new(
        "json_invalid",
        "JSON decode error",
        Json::String(String::from_utf8_lossy(body).into_owned()),
    )
    .with_ctx(serde_json::json!({ "error": e.to_string() }))
    .at([LocItem::from("body"), LocItem::from(e.valid_up_to())])
}

/// Byte offset of a 1-based (line, column) position.
fn byte_position(body: &[u8], line: usize, column: usize) -> usize {
    let line_start: usize = body
        .split(|b| *b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    (line_start + column.saturating_sub(1)).min(body.len())
}

/// Group datapoints into one task per `(etype, eid)`, in first-seen order, datapoints in
/// input order (api.md §4.2 "Task creation").
pub fn group_into_tasks(dps: Vec<DataPoint>) -> Vec<DataPointTask> {
    // First the group of every datapoint, keyed by borrowed `(etype, eid)`, so keys are not
    // cloned per datapoint and each task's vector is allocated once at its final size (the
    // grouping was a tenth of the HTTP thread's time under load).
    let mut groups: std::collections::HashMap<(&str, &Eid), usize, foldhash::fast::RandomState> =
        std::collections::HashMap::with_capacity_and_hasher(dps.len(), Default::default());
    let mut group_of = Vec::with_capacity(dps.len());
    let mut sizes: Vec<usize> = Vec::new();
    for dp in &dps {
        let next = sizes.len();
        let g = *groups.entry((dp.etype.as_str(), &dp.eid)).or_insert(next);
        if g == next {
            sizes.push(0);
        }
        sizes[g] += 1;
        group_of.push(g);
    }
    drop(groups);
    // Groups are numbered in order of first appearance: group `g` starts when `g` tasks exist.
    let mut tasks: Vec<DataPointTask> = Vec::with_capacity(sizes.len());
    for (dp, g) in dps.into_iter().zip(group_of) {
        if g == tasks.len() {
            tasks.push(DataPointTask {
                etype: dp.etype.clone(),
                eid: dp.eid.clone(),
                data_points: Vec::with_capacity(sizes[g]),
                ..Default::default()
            });
        }
        tasks[g].data_points.push(dp);
    }
    tasks
}
