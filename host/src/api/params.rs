//! Query-string and body parameter parsing with FastAPI's validation semantics.
//!
//! Query strings use form decoding (`+` is a space, api.md §1.2); a repeated scalar parameter
//! takes its last value (Starlette's multi-dict). Errors are collected so one `422` reports
//! every bad parameter, as FastAPI does.

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::error::{ApiError, ErrorItem, Source, loc};

/// The decoded query string of a request.
#[derive(Debug, Clone, Default)]
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    pub fn parse(query: Option<&str>) -> Self {
        QueryParams {
            pairs: query
                .map(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The last value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// All values of a repeated parameter, in order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Collects parameter errors; [`Checker::finish`] turns them into one `422`.
#[derive(Debug, Default)]
pub struct Checker {
    pub errors: Vec<ErrorItem>,
}

impl Checker {
    /// A non-negative integer query parameter with a default (`skip`, `limit`).
    pub fn uint(&mut self, q: &QueryParams, name: &str, default: u64) -> u64 {
        let Some(raw) = q.get(name) else {
            return default;
        };
        match dp3_model::eid::parse_int_text(raw) {
            Ok(v) if v >= 0 => v.unsigned_abs(),
            Ok(_) => {
                self.errors.push(
                    ErrorItem::fastapi(
                        "greater_than_equal",
                        loc(Source::Query, name),
                        "Input should be greater than or equal to 0",
                        json!(raw),
                    )
                    .with_ctx(json!({"ge": 0})),
                );
                default
            }
            Err(e) => {
                self.errors.push(ErrorItem::fastapi(
                    e.kind,
                    loc(Source::Query, name),
                    e.msg,
                    json!(raw),
                ));
                default
            }
        }
    }

    /// The `limit` page-size parameter: like [`Checker::uint`], and at most `max`
    /// (`api.yml: limits.max_page_size`). `0` keeps DP3's meaning ("no limit").
    pub fn page_limit(&mut self, q: &QueryParams, default: u64, max: u64) -> u64 {
        let limit = self.uint(q, "limit", default);
        if limit > max {
            self.errors.push(
                ErrorItem::fastapi(
                    "less_than_equal",
                    loc(Source::Query, "limit"),
                    format!("Input should be less than or equal to {max} (limits.max_page_size)"),
                    json!(q.get("limit")),
                )
                .with_ctx(json!({"le": max})),
            );
            return default;
        }
        limit
    }

    /// An optional datetime query parameter (naive = UTC).
    pub fn datetime(&mut self, q: &QueryParams, name: &str) -> Option<DateTime<Utc>> {
        let raw = q.get(name)?;
        match dp3_model::time::parse_datetime_str(raw) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut item =
                    ErrorItem::fastapi(e.kind, loc(Source::Query, name), e.msg, json!(raw));
                if let Some(detail) = e.detail {
                    item = item.with_ctx(json!({ "error": detail }));
                }
                self.errors.push(item);
                None
            }
        }
    }

    /// A required string query parameter.
    pub fn required<'q>(&mut self, q: &'q QueryParams, name: &str) -> Option<&'q str> {
        let v = q.get(name);
        if v.is_none() {
            self.errors.push(ErrorItem::missing(Source::Query, name));
        }
        v
    }

    /// An optional JSON query parameter (FastAPI `Json[...]`): invalid JSON is `json_invalid`.
    pub fn json(&mut self, q: &QueryParams, name: &str) -> Option<Json> {
        let raw = q.get(name)?;
        match serde_json::from_str::<Json>(raw) {
            Ok(v) => Some(v),
            Err(e) => {
                let reason = json_error_reason(&e);
                self.errors.push(
                    ErrorItem::fastapi(
                        "json_invalid",
                        loc(Source::Query, name),
                        format!("Invalid JSON: {reason}"),
                        json!(raw),
                    )
                    .with_ctx(json!({ "error": reason })),
                );
                None
            }
        }
    }

    /// A parameter restricted to fixed values (`Literal`/`Enum` in FastAPI).
    pub fn one_of<'a>(
        &mut self,
        source: Source,
        name: &str,
        value: &str,
        allowed: &[&'a str],
        kind: &str,
    ) -> Option<&'a str> {
        if let Some(v) = allowed.iter().find(|a| **a == value) {
            return Some(v);
        }
        let expected = expected_list(allowed);
        self.errors.push(
            ErrorItem::fastapi(
                kind,
                loc(source, name),
                format!("Input should be {expected}"),
                json!(value),
            )
            .with_ctx(json!({ "expected": expected })),
        );
        None
    }

    pub fn push(&mut self, item: ErrorItem) {
        self.errors.push(item);
    }

    /// `Err(422)` when any parameter was bad.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

/// Pydantic's rendering of allowed values: `'a'`, `'a' or 'b'`, `'a', 'b' or 'c'`.
pub fn expected_list(allowed: &[&str]) -> String {
    let quoted: Vec<String> = allowed.iter().map(|a| format!("'{a}'")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// serde_json's error text without the position suffix it appends.
pub fn json_error_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => format!("{} at line {} column {}", &text[..i], e.line(), e.column()),
        None => text,
    }
}

/// Byte offset of a serde_json error position (FastAPI reports the decode position in `loc`).
pub fn json_error_offset(body: &str, e: &serde_json::Error) -> usize {
    let line_start: usize = body
        .split_inclusive('\n')
        .take(e.line().saturating_sub(1))
        .map(str::len)
        .sum();
    (line_start + e.column()).saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_and_last_value_wins() {
        let q = QueryParams::parse(Some("eid=a+b%2Fc&limit=1&limit=2&sort=x&sort=y:-1"));
        assert_eq!(q.get("eid"), Some("a b/c"));
        assert_eq!(q.get("limit"), Some("2"));
        assert_eq!(q.get_all("sort"), vec!["x", "y:-1"]);
        assert_eq!(q.get("nope"), None);
    }

    #[test]
    fn uint_errors_are_fastapi_items() {
        let q = QueryParams::parse(Some("skip=-1&limit=abc"));
        let mut c = Checker::default();
        assert_eq!(c.uint(&q, "skip", 0), 0);
        assert_eq!(c.uint(&q, "limit", 20), 20);
        assert_eq!(c.errors.len(), 2);
        assert_eq!(c.errors[0].kind, "greater_than_equal");
        assert_eq!(c.errors[1].kind, "int_parsing");
    }

    #[test]
    fn expected_lists_read_like_pydantic() {
        assert_eq!(expected_list(&["a"]), "'a'");
        assert_eq!(expected_list(&["a", "b"]), "'a' or 'b'");
        assert_eq!(expected_list(&["a", "b", "c"]), "'a', 'b' or 'c'");
    }
}
