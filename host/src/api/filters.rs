//! Filters and sorting of the list/count endpoints (api.md §4.4), with DP3's validation
//! order and messages: filter JSON/shape → `sort` → query building (unknown fulltext
//! attribute, magic strings).

use bson::{Bson, Document, doc};
use dp3_model::value::json_to_bson;
use dp3_model::{AttrKind, DataType, EntityType, Primitive};
use serde_json::Value as Json;

use super::error::{ApiError, Source};

/// The validated filter parameters of a list/count request.
#[derive(Debug, Default)]
pub struct Filters {
    pub fulltext: Vec<(String, String)>,
    pub generic: Document,
}

/// Python truthiness of a JSON value: falsy filters mean "no filter".
fn is_falsy(v: &Json) -> bool {
    match v {
        Json::Null => true,
        Json::Bool(b) => !b,
        Json::Number(n) => n.as_f64() == Some(0.0),
        Json::String(s) => s.is_empty(),
        Json::Array(a) => a.is_empty(),
        Json::Object(o) => o.is_empty(),
    }
}

/// Python's `str()` of a JSON value, for `Filter '<value>' is not string`.
fn python_str(v: &Json) -> String {
    match v {
        Json::Null => "None".into(),
        Json::Bool(true) => "True".into(),
        Json::Bool(false) => "False".into(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Check the shapes of the (already JSON-decoded) filter parameters.
pub fn check_filters(fulltext: Option<Json>, generic: Option<Json>) -> Result<Filters, ApiError> {
    let mut out = Filters::default();
    if let Some(ft) = fulltext.filter(|v| !is_falsy(v)) {
        let Json::Object(map) = ft else {
            return Err(ApiError::BadRequest("Fulltext filter is invalid".into()));
        };
        for (attr, value) in map {
            let Json::String(s) = value else {
                return Err(ApiError::BadRequest(format!(
                    "Filter '{}' is not string",
                    python_str(&value)
                )));
            };
            out.fulltext.push((attr, s));
        }
    }
    if let Some(g) = generic.filter(|v| !is_falsy(v)) {
        let Json::Object(_) = g else {
            return Err(ApiError::BadRequest("Generic filter is invalid".into()));
        };
        match json_to_bson(&g) {
            Bson::Document(d) => out.generic = d,
            _ => return Err(ApiError::BadRequest("Generic filter is invalid".into())),
        }
    }
    Ok(out)
}

/// Data types that can be sorted by (api.md §4.4).
const SORTABLE: [Primitive; 10] = [
    Primitive::Tag,
    Primitive::Binary,
    Primitive::String,
    Primitive::Int,
    Primitive::Int64,
    Primitive::Float,
    Primitive::Ipv4,
    Primitive::Ipv6,
    Primitive::Mac,
    Primitive::Time,
];

fn sort_error(msg: String) -> ApiError {
    ApiError::dp3(Source::Query, "sort", msg)
}

fn valid_sort_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Validate `sort` specs (`attr`, `attr:1`, `attr:-1`) into `(last.<attr>, dir)` pairs.
pub fn parse_sort(et: &EntityType, specs: &[&str]) -> Result<Vec<(String, i32)>, ApiError> {
    let mut out = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let (name, dir) = match spec.split_once(':') {
            None => (*spec, Some(1)),
            Some((n, "1")) => (n, Some(1)),
            Some((n, "-1")) => (n, Some(-1)),
            Some((n, _)) => (n, None),
        };
        let Some(dir) = dir.filter(|_| valid_sort_name(name)) else {
            return Err(sort_error(format!(
                "Sort specification at position {i} has invalid format '{spec}'. Expected format 'attribute' or 'attribute:direction' where direction is 1 or -1"
            )));
        };
        if name != "eid" {
            let Some(a) = et.attribs.get(name) else {
                return Err(sort_error(format!(
                    "Attribute '{name}' at position {i} doesn't exist"
                )));
            };
            match &a.kind {
                AttrKind::Timeseries { .. } => {
                    return Err(sort_error(format!(
                        "Cannot sort by attribute '{name}' at position {i}: only plain and observations attributes are supported"
                    )));
                }
                AttrKind::Observations {
                    multi_value: true, ..
                } => {
                    return Err(sort_error(format!(
                        "Cannot sort by attribute '{name}' at position {i}: multi_value observations attributes are not supported for sorting"
                    )));
                }
                AttrKind::Plain { data_type, .. } | AttrKind::Observations { data_type, .. } => {
                    let ok = matches!(data_type, DataType::Primitive(p) if SORTABLE.contains(p));
                    if !ok {
                        let dt = a.data_type_str.clone().unwrap_or_default();
                        return Err(sort_error(format!(
                            "Cannot sort by attribute '{name}' at position {i}: data type '{dt}' is not supported for sorting"
                        )));
                    }
                }
            }
        }
        out.push((format!("last.{name}"), dir));
    }
    Ok(out)
}

/// Build the query over snapshot-bucket documents: the generic filter (magic strings
/// replaced), `latest: true`, then the fulltext regexes (overriding same keys).
pub fn build_query(et: &EntityType, filters: Filters) -> Result<Document, ApiError> {
    let mut query = filters.generic;
    dp3_store::filter::replace_magic_strings(&mut query)
        .map_err(|e| ApiError::BadRequest(format!("Invalid generic filter: {e}")))?;
    query.insert("latest", true);
    for (attr, regex) in filters.fulltext {
        let key = if attr == "eid" {
            // DP3 matches the bucket id, which only works for string eids.
            "_id".to_owned()
        } else {
            match et.attribs.get(&attr) {
                Some(a) if a.is_relation() => format!("last.{attr}.eid"),
                Some(_) => format!("last.{attr}"),
                None => {
                    return Err(ApiError::BadRequest(format!(
                        "Attribute '{attr}' in fulltext filter doesn't exist"
                    )));
                }
            }
        };
        query.insert(key, doc! { "$regex": regex, "$options": "i" });
    }
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn falsy_filters_mean_no_filter() {
        let f = check_filters(Some(json!({})), Some(json!(0))).unwrap();
        assert!(f.fulltext.is_empty() && f.generic.is_empty());
        let f = check_filters(Some(json!(null)), Some(json!([]))).unwrap();
        assert!(f.fulltext.is_empty() && f.generic.is_empty());
    }

    #[test]
    fn filter_shape_errors_are_400() {
        let e = check_filters(Some(json!([1])), None).unwrap_err();
        assert_eq!(e.body(), json!({"detail": "Fulltext filter is invalid"}));
        let e = check_filters(None, Some(json!("x"))).unwrap_err();
        assert_eq!(e.body(), json!({"detail": "Generic filter is invalid"}));
        let e = check_filters(Some(json!({"a": 5})), None).unwrap_err();
        assert_eq!(e.body(), json!({"detail": "Filter '5' is not string"}));
    }

    #[test]
    fn sort_names_follow_the_regex() {
        assert!(valid_sort_name("data_1"));
        assert!(valid_sort_name("_x"));
        assert!(!valid_sort_name("1x"));
        assert!(!valid_sort_name("a.b"));
        assert!(!valid_sort_name(""));
    }
}
