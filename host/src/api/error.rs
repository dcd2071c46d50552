//! The one error type of the HTTP API and its DP3-compatible bodies (api.md §2).
//!
//! Every error answer is JSON `{"detail": ...}`: a list of validation items for `422`
//! (FastAPI's shape E1 or DP3's own shape E2), a text for everything else. DP3 answers
//! unhandled exceptions with a bare-text `500`; we keep the `{"detail": ...}` shape there too
//! so clients have one error format to parse.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dp3_store::StoreError;
use serde::Serialize;
use serde_json::{Value as Json, json};

use crate::queue::SubmitError;

/// Where a request parameter came from (first element of a `loc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Path,
    Query,
    Body,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Path => "path",
            Source::Query => "query",
            Source::Body => "body",
        }
    }
}

/// One item of a `422` list. `input` is `None` for DP3's own items (shape E2, which has no
/// `input`), `Some(Json::Null)` for FastAPI items whose input is null.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorItem {
    #[serde(rename = "type")]
    pub kind: String,
    pub loc: Vec<Json>,
    pub msg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Json>,
}

impl ErrorItem {
    /// A FastAPI request-validation item (shape E1).
    pub fn fastapi(kind: &str, loc: Vec<Json>, msg: impl Into<String>, input: Json) -> Self {
        ErrorItem {
            kind: kind.to_owned(),
            loc,
            msg: msg.into(),
            input: Some(input),
            ctx: None,
        }
    }

    pub fn with_ctx(mut self, ctx: Json) -> Self {
        self.ctx = Some(ctx);
        self
    }

    /// `Field required` for a missing parameter.
    pub fn missing(source: Source, name: &str) -> Self {
        ErrorItem::fastapi("missing", loc(source, name), "Field required", Json::Null)
    }

    /// DP3's own validation item (shape E2): `loc`, `msg`, `type: "value_error"` only.
    pub fn dp3(loc: Vec<Json>, msg: impl Into<String>) -> Self {
        ErrorItem {
            kind: "value_error".to_owned(),
            loc,
            msg: msg.into(),
            input: None,
            ctx: None,
        }
    }
}

/// `[source, name]` as a JSON `loc`.
pub fn loc(source: Source, name: &str) -> Vec<Json> {
    vec![json!(source.name()), json!(name)]
}

/// Any error answer of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// `422 {"detail": [items]}`.
    #[error("request validation failed: {0:?}")]
    Validation(Vec<ErrorItem>),
    /// `400 {"detail": "text"}` (filter validation, invalid queries, distinct errors).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// `404 {"detail": "Not Found"}`.
    #[error("not found")]
    NotFound,
    /// `405 {"detail": "Method Not Allowed"}`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// `413 {"detail": "text"}`: the body or the number of datapoints exceeds a limit.
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// `503 {"detail": "text"}`, with `Retry-After` when the client should retry.
    #[error("service unavailable: {detail}")]
    Unavailable {
        detail: String,
        retry_after_secs: Option<u32>,
    },
    /// `500 {"detail": "Internal Server Error"}`; the reason is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A single DP3-style (E2) validation error.
    pub fn dp3(source: Source, name: &str, msg: impl Into<String>) -> Self {
        ApiError::Validation(vec![ErrorItem::dp3(loc(source, name), msg)])
    }

    /// `Entity type 'x' doesn't exist` (api.md §1.2).
    pub fn unknown_etype(etype: &str) -> Self {
        ApiError::dp3(
            Source::Path,
            "etype",
            format!("Entity type '{etype}' doesn't exist"),
        )
    }

    /// `Attribute 'x' doesn't exist` at the path or query parameter `attr`.
    pub fn unknown_attr(source: Source, attr: &str) -> Self {
        ApiError::dp3(source, "attr", format!("Attribute '{attr}' doesn't exist"))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Json {
        match self {
            ApiError::Validation(items) => json!({ "detail": items }),
            ApiError::BadRequest(text) | ApiError::PayloadTooLarge(text) => {
                json!({ "detail": text })
            }
            ApiError::NotFound => json!({ "detail": "Not Found" }),
            ApiError::MethodNotAllowed => json!({ "detail": "Method Not Allowed" }),
            ApiError::Unavailable { detail, .. } => json!({ "detail": detail }),
            ApiError::Internal(_) => json!({ "detail": "Internal Server Error" }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(reason) = &self {
            tracing::error!(%reason, "internal error while answering a request");
        }
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if let ApiError::Unavailable {
            retry_after_secs: Some(secs),
            ..
        } = &self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
        }
        resp
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let retry_after_secs = match &e {
            SubmitError::Overloaded { retry_after_secs } => Some(*retry_after_secs),
            SubmitError::Unavailable(_) | SubmitError::ShuttingDown => None,
        };
        ApiError::Unavailable {
            detail: e.to_string(),
            retry_after_secs,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // DP3: `DatabaseError` -> `400 {"detail": "Query is invalid: ..."}` (api.md §4.4).
            StoreError::InvalidQuery(msg) => {
                ApiError::BadRequest(format!("Query is invalid: {msg}"))
            }
            StoreError::Full(msg) => ApiError::Unavailable {
                detail: format!("storage is full: {msg}"),
                retry_after_secs: None,
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<dp3_model::validate::ValidationError> for ErrorItem {
    fn from(e: dp3_model::validate::ValidationError) -> Self {
        ErrorItem {
            kind: e.kind.to_owned(),
            loc: e
                .loc
                .iter()
                .map(|l| serde_json::to_value(l).unwrap_or(Json::Null))
                .collect(),
            msg: e.msg,
            input: Some(*e.input),
            ctx: e.ctx.map(|c| *c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_dp3_shapes() {
        let e = ApiError::unknown_etype("xyz");
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            e.body(),
            json!({"detail":[{"type":"value_error","loc":["path","etype"],
                               "msg":"Entity type 'xyz' doesn't exist"}]})
        );
        let m = ApiError::Validation(vec![ErrorItem::missing(Source::Query, "eid")]);
        assert_eq!(
            m.body(),
            json!({"detail":[{"type":"missing","loc":["query","eid"],"msg":"Field required","input":null}]})
        );
        assert_eq!(ApiError::NotFound.body(), json!({"detail":"Not Found"}));
    }

    #[test]
    fn overload_sets_retry_after() {
        let r = ApiError::from(SubmitError::Overloaded {
            retry_after_secs: 3,
        })
        .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
    }
}
