//! Validation errors in the shape of DP3's (pydantic's) 422 error items (api.md §2):
//! `{"type", "loc", "msg", "input", "ctx"?}`.

use std::fmt;

use serde::Serialize;
use serde_json::Value as Json;

/// One element of an error location: a field name or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum LocItem {
    Key(String),
    Index(usize),
}

impl From<&str> for LocItem {
    fn from(s: &str) -> Self {
        LocItem::Key(s.to_owned())
    }
}

impl From<String> for LocItem {
    fn from(s: String) -> Self {
        LocItem::Key(s)
    }
}

impl From<usize> for LocItem {
    fn from(i: usize) -> Self {
        LocItem::Index(i)
    }
}

impl fmt::Display for LocItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocItem::Key(k) => f.write_str(k),
            LocItem::Index(i) => write!(f, "{i}"),
        }
    }
}

/// One validation error. `loc` is relative to what was validated (a value, a datapoint) until
/// a caller prefixes it (e.g. with `["body", i, "v"]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationError {
    /// Pydantic error type (`int_parsing`, `missing`, `value_error`, ...).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub loc: Vec<LocItem>,
    pub msg: String,
    /// The offending input (for `missing`, the enclosing object). Boxed, like `ctx`, to keep
    /// the error small: it travels in `Result`s on the hot path.
    pub input: Box<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Box<Json>>,
}

impl ValidationError {
    /// An error at the root of the validated thing.
    pub fn new(kind: &'static str, msg: impl Into<String>, input: Json) -> Self {
        ValidationError {
            kind,
            loc: Vec::new(),
            msg: msg.into(),
            input: Box::new(input),
            ctx: None,
        }
    }

    pub fn with_input(mut self, input: Json) -> Self {
        self.input = Box::new(input);
        self
    }

    pub fn with_ctx(mut self, ctx: Json) -> Self {
        self.ctx = Some(Box::new(ctx));
        self
    }

    /// Prepend path elements (outermost first) to the location.
    pub fn at<I, L>(mut self, prefix: I) -> Self
    where
        I: IntoIterator<Item = L>,
        L: Into<LocItem>,
    {
        let mut loc: Vec<LocItem> = prefix.into_iter().map(Into::into).collect();
        loc.append(&mut self.loc);
        self.loc = loc;
        self
    }

    /// `Field required` for `field` of `object`.
    pub fn missing(field: &str, object: Json) -> Self {
        ValidationError::new("missing", "Field required", object).at([field])
    }

    /// `assertion_error` with DP3's `Assertion failed, ` prefix.
    pub fn assertion(msg: impl fmt::Display, input: Json) -> Self {
        ValidationError::new("assertion_error", format!("Assertion failed, {msg}"), input)
            .with_ctx(serde_json::json!({"error": {}}))
    }

    /// `value_error` with pydantic's `Value error, ` prefix.
    pub fn value_error(msg: impl fmt::Display, input: Json) -> Self {
        ValidationError::new("value_error", format!("Value error, {msg}"), input)
            .with_ctx(serde_json::json!({"error": {}}))
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.loc.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{l}")?;
        }
        if !self.loc.is_empty() {
            f.write_str(": ")?;
        }
        write!(f, "{} [type={}]", self.msg, self.kind)
    }
}

impl std::error::Error for ValidationError {}

/// Prefix every error of a list.
pub(crate) fn prefix_all<L: Into<LocItem> + Clone>(
    errors: Vec<ValidationError>,
    prefix: &[L],
) -> Vec<ValidationError> {
    errors
        .into_iter()
        .map(|e| e.at(prefix.iter().cloned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serializes_like_fastapi() {
        let e = ValidationError::new(
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
            json!("xyz"),
        )
        .at(["v"])
        .at([LocItem::from("body"), LocItem::from(0usize)]);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"type": "int_parsing", "loc": ["body", 0, "v"],
                   "msg": "Input should be a valid integer, unable to parse string as an integer",
                   "input": "xyz"})
        );
        assert_eq!(
            e.to_string(),
            "body.0.v: Input should be a valid integer, unable to parse string as an integer [type=int_parsing]"
        );
        let c = ValidationError::new("less_than_equal", "x", json!(2)).with_ctx(json!({"le": 1.0}));
        assert_eq!(serde_json::to_value(&c).unwrap()["ctx"], json!({"le": 1.0}));
        assert!(std::mem::size_of::<ValidationError>() <= 96);
    }
}
