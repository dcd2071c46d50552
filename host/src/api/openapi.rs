//! The OpenAPI document (`/openapi.json`) and Swagger UI (`/docs`, assets vendored through
//! `utoipa-swagger-ui`'s `vendored` feature: nothing is downloaded at build or run time).
//!
//! The operations are described by one table (the same 35 operations as
//! [`super::routing::ROUTE_PATTERNS`], hidden aliases excluded as in DP3) and assembled into
//! utoipa's typed [`utoipa::openapi::OpenApi`].

use axum::Router;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use serde_json::{Map, Value as Json, json};
use utoipa::openapi::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

/// Where a parameter is and its schema type.
#[derive(Clone, Copy)]
enum P {
    Path(&'static str),
    Query(&'static str, &'static str, bool),
    /// Repeated query parameter (`sort`).
    QueryList(&'static str),
}

#[derive(Clone, Copy)]
enum Body {
    None,
    DataPoints,
    SetValue,
    TtlTokens,
}

struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    tag: &'static str,
    params: &'static [P],
    body: Body,
    ok: &'static str,
    /// Whether the operation answers DP3's `400 {"detail": text}`.
    bad_request: bool,
    /// Whether the operation queues tasks (503 when the queue is full).
    queues: bool,
}

const ETYPE: P = P::Path("etype");
const EID: P = P::Path("eid");
const ATTR: P = P::Path("attr");
const Q_EID: P = P::Query("eid", "string", true);
const Q_ATTR: P = P::Query("attr", "string", true);
const SKIP: P = P::Query("skip", "integer", false);
const LIMIT: P = P::Query("limit", "integer", false);
const DATE_FROM: P = P::Query("date_from", "date-time", false);
const DATE_TO: P = P::Query("date_to", "date-time", false);
const FULLTEXT: P = P::Query("fulltext_filters", "json", false);
const GENERIC: P = P::Query("generic_filter", "json", false);

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    tag: &'static str,
    params: &'static [P],
    ok: &'static str,
) -> Op {
    Op {
        method,
        path,
        summary,
        tag,
        params,
        body: Body::None,
        ok,
        bad_request: false,
        queues: false,
    }
}

const fn with_body(mut o: Op, body: Body) -> Op {
    o.body = body;
    o.queues = true;
    o
}

const fn bad_request(mut o: Op) -> Op {
    o.bad_request = true;
    o
}

const fn queues(mut o: Op) -> Op {
    o.queues = true;
    o
}

const OPS: &[Op] = &[
    op("get", "/", "Health check", "root", &[], "Detail"),
    with_body(
        op(
            "post",
            "/datapoints",
            "Insert datapoints",
            "root",
            &[],
            "Detail",
        ),
        Body::DataPoints,
    ),
    op(
        "get",
        "/entities",
        "List entity types",
        "root",
        &[],
        "Entities",
    ),
    bad_request(op(
        "get",
        "/entity/{etype}/get",
        "List latest snapshots",
        "entity",
        &[ETYPE, SKIP, LIMIT, FULLTEXT, GENERIC, P::QueryList("sort")],
        "EntityList",
    )),
    bad_request(op(
        "get",
        "/entity/{etype}/count",
        "Count latest snapshots",
        "entity",
        &[ETYPE, FULLTEXT, GENERIC],
        "Count",
    )),
    op(
        "get",
        "/entity/{etype}/raw/get",
        "Raw datapoints",
        "entity",
        &[
            ETYPE,
            P::Query("eid", "string", false),
            P::Query("attr", "string", false),
            P::Query("src", "string", false),
            SKIP,
            LIMIT,
        ],
        "RawList",
    ),
    op(
        "get",
        "/entity/{etype}/{eid}",
        "Entity master record and snapshots",
        "entity",
        &[ETYPE, EID, DATE_FROM, DATE_TO],
        "EntityData",
    ),
    op(
        "get",
        "/entity/{etype}/{eid}/master",
        "Entity master record",
        "entity",
        &[ETYPE, EID, DATE_FROM, DATE_TO],
        "Object",
    ),
    op(
        "get",
        "/entity/{etype}/{eid}/snapshots",
        "Entity snapshots",
        "entity",
        &[ETYPE, EID, DATE_FROM, DATE_TO, SKIP, LIMIT],
        "Snapshots",
    ),
    op(
        "get",
        "/entity/{etype}/{eid}/get/{attr}",
        "Attribute value and history",
        "entity",
        &[ETYPE, EID, ATTR, DATE_FROM, DATE_TO],
        "AttrValue",
    ),
    with_body(
        op(
            "post",
            "/entity/{etype}/{eid}/set/{attr}",
            "Set attribute value",
            "entity",
            &[ETYPE, EID, ATTR],
            "Detail",
        ),
        Body::SetValue,
    ),
    bad_request(op(
        "get",
        "/entity/{etype}/_/distinct/{attr}",
        "Distinct attribute values",
        "entity",
        &[ETYPE, ATTR],
        "Distinct",
    )),
    with_body(
        op(
            "post",
            "/entity/{etype}/{eid}/ttl",
            "Extend TTLs",
            "entity",
            &[ETYPE, EID],
            "Detail",
        ),
        Body::TtlTokens,
    ),
    queues(op(
        "delete",
        "/entity/{etype}/{eid}",
        "Delete entity",
        "entity",
        &[ETYPE, EID],
        "Detail",
    )),
    bad_request(op(
        "get",
        "/v2/entity/{etype}/get",
        "List latest snapshots",
        "entity v2",
        &[ETYPE, SKIP, LIMIT, FULLTEXT, GENERIC, P::QueryList("sort")],
        "EntityList",
    )),
    bad_request(op(
        "get",
        "/v2/entity/{etype}/count",
        "Count latest snapshots",
        "entity v2",
        &[ETYPE, FULLTEXT, GENERIC],
        "Count",
    )),
    op(
        "get",
        "/v2/entity/{etype}/raw/get",
        "Raw datapoints",
        "entity v2",
        &[
            ETYPE,
            P::Query("eid", "string", false),
            P::Query("attr", "string", false),
            P::Query("src", "string", false),
            SKIP,
            LIMIT,
        ],
        "RawList",
    ),
    bad_request(op(
        "get",
        "/v2/entity/{etype}/_/distinct/{attr}",
        "Distinct attribute values",
        "entity v2",
        &[ETYPE, ATTR],
        "Distinct",
    )),
    op(
        "get",
        "/v2/entity/{etype}/",
        "Entity master record and snapshots",
        "entity v2",
        &[ETYPE, Q_EID, DATE_FROM, DATE_TO],
        "EntityData",
    ),
    op(
        "get",
        "/v2/entity/{etype}/master",
        "Entity master record",
        "entity v2",
        &[ETYPE, Q_EID, DATE_FROM, DATE_TO],
        "Object",
    ),
    op(
        "get",
        "/v2/entity/{etype}/snapshots",
        "Entity snapshots",
        "entity v2",
        &[ETYPE, Q_EID, DATE_FROM, DATE_TO, SKIP, LIMIT],
        "Snapshots",
    ),
    op(
        "get",
        "/v2/entity/{etype}/attr",
        "Attribute value and history",
        "entity v2",
        &[ETYPE, Q_EID, Q_ATTR, DATE_FROM, DATE_TO],
        "AttrValue",
    ),
    with_body(
        op(
            "post",
            "/v2/entity/{etype}/attr",
            "Set attribute value",
            "entity v2",
            &[ETYPE, Q_EID, Q_ATTR],
            "Detail",
        ),
        Body::SetValue,
    ),
    with_body(
        op(
            "post",
            "/v2/entity/{etype}/ttl",
            "Extend TTLs",
            "entity v2",
            &[ETYPE, Q_EID],
            "Detail",
        ),
        Body::TtlTokens,
    ),
    queues(op(
        "delete",
        "/v2/entity/{etype}/",
        "Delete entity",
        "entity v2",
        &[ETYPE, Q_EID],
        "Detail",
    )),
    op(
        "get",
        "/control/refresh_on_entity_creation",
        "Re-run entity creation hooks",
        "control",
        &[P::Query("etype", "string", true)],
        "Detail",
    ),
    op(
        "get",
        "/control/refresh_module_config",
        "Reload a module's configuration",
        "control",
        &[P::Query("module", "string", true)],
        "Detail",
    ),
    op(
        "get",
        "/control/{action}",
        "Send a control action",
        "control",
        &[P::Path("action")],
        "Detail",
    ),
    op(
        "get",
        "/telemetry/sources_validity",
        "Newest datapoint time per source",
        "telemetry",
        &[],
        "Object",
    ),
    op(
        "get",
        "/telemetry/sources_age",
        "Age of the newest datapoint per source",
        "telemetry",
        &[P::Query("unit", "string", false)],
        "Object",
    ),
    op(
        "get",
        "/telemetry/entities_per_attr",
        "Records having each attribute",
        "telemetry",
        &[],
        "Object",
    ),
    op(
        "get",
        "/telemetry/attribute_bson_sizes",
        "Attribute size statistics",
        "telemetry",
        &[],
        "Object",
    ),
    op(
        "get",
        "/telemetry/snapshot_summary",
        "Snapshot run summary",
        "telemetry",
        &[],
        "SnapshotSummary",
    ),
    op(
        "get",
        "/telemetry/metadata",
        "Run metadata of core modules",
        "telemetry",
        &[
            P::Query("module", "string", false),
            DATE_FROM,
            DATE_TO,
            SKIP,
            LIMIT,
            P::Query("sort", "string", false),
        ],
        "Array",
    ),
    op(
        "get",
        "/telemetry/rabbitmq/queues",
        "Worker queue statistics",
        "telemetry",
        &[],
        "Queues",
    ),
];

/// A schema accepting any JSON value (utoipa's model has no empty schema `{}`).
fn any_value() -> Json {
    json!({ "type": ["string", "number", "integer", "boolean", "array", "object", "null"] })
}

fn schema_ref(name: &str) -> Json {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn param_json(p: &P) -> Json {
    let (name, location, required, ty) = match *p {
        P::Path(n) => (n, "path", true, "string"),
        P::Query(n, t, r) => (n, "query", r, t),
        P::QueryList(n) => (n, "query", false, "list"),
    };
    let schema = match ty {
        "integer" => json!({ "type": "integer", "minimum": 0 }),
        "date-time" => json!({ "type": "string", "format": "date-time" }),
        "json" => json!({ "type": "string", "contentMediaType": "application/json" }),
        "list" => json!({ "type": "array", "items": { "type": "string" } }),
        _ => json!({ "type": "string" }),
    };
    json!({ "name": name, "in": location, "required": required, "schema": schema })
}

fn body_json(b: Body) -> Option<Json> {
    let schema = match b {
        Body::None => return None,
        Body::DataPoints => json!({ "type": "array", "items": schema_ref("DataPoint") }),
        Body::SetValue => json!({ "type": "object", "properties": { "value": any_value() } }),
        Body::TtlTokens => json!({
            "type": "object",
            "additionalProperties": { "type": "string", "format": "date-time" }
        }),
    };
    Some(json!({ "required": true, "content": { "application/json": { "schema": schema } } }))
}

fn operation_json(o: &Op) -> Json {
    let detail = |d: &str| json!({ "description": d, "content": { "application/json": { "schema": schema_ref("Detail") } } });
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({ "description": "Successful Response",
                "content": { "application/json": { "schema": schema_ref(o.ok) } } }),
    );
    if o.bad_request {
        responses.insert("400".into(), detail("Invalid filter or query"));
    }
    responses.insert(
        "422".into(),
        json!({ "description": "Validation Error",
                "content": { "application/json": { "schema": schema_ref("HTTPValidationError") } } }),
    );
    if o.queues {
        responses.insert(
            "503".into(),
            detail("The task queue is full (see Retry-After) or unavailable"),
        );
    }
    let mut m = Map::new();
    m.insert("tags".into(), json!([o.tag]));
    m.insert("summary".into(), json!(o.summary));
    let id = format!(
        "{}_{}",
        o.method,
        o.path
            .trim_matches('/')
            .replace(['/', '{', '}'], "_")
            .replace("__", "_")
    );
    m.insert("operationId".into(), json!(id));
    if !o.params.is_empty() {
        m.insert(
            "parameters".into(),
            Json::Array(o.params.iter().map(param_json).collect()),
        );
    }
    if let Some(b) = body_json(o.body) {
        m.insert("requestBody".into(), b);
    }
    m.insert("responses".into(), Json::Object(responses));
    Json::Object(m)
}

fn components() -> Json {
    json!({ "schemas": {
        "Detail": { "type": "object", "required": ["detail"],
                    "properties": { "detail": { "type": "string" } } },
        "ValidationError": { "type": "object", "required": ["loc", "msg", "type"],
            "properties": {
                "loc": { "type": "array", "items": { "anyOf": [ { "type": "string" }, { "type": "integer" } ] } },
                "msg": { "type": "string" }, "type": { "type": "string" },
                "input": any_value(), "ctx": { "type": "object" } } },
        "HTTPValidationError": { "type": "object",
            "properties": { "detail": { "type": "array", "items": schema_ref("ValidationError") } } },
        "DataPoint": { "type": "object", "required": ["type", "id", "attr", "v"],
            "properties": {
                "type": { "type": "string" }, "id": any_value(), "attr": { "type": "string" }, "v": any_value(),
                "t1": { "type": ["string", "null"], "format": "date-time" },
                "t2": { "type": ["string", "null"], "format": "date-time" },
                "c": { "type": "number", "minimum": 0, "maximum": 1, "default": 1.0 },
                "src": { "type": ["string", "null"] } } },
        "Entities": { "type": "object", "additionalProperties": { "type": "object",
            "properties": { "id": { "type": "string" }, "id_data_type": { "type": "string" },
                            "name": { "type": "string" }, "attribs": { "type": "object" },
                            "eid_estimate_count": { "type": "integer" } } } },
        "EntityList": { "type": "object", "properties": {
            "time_created": { "type": ["string", "null"], "format": "date-time" },
            "count": { "type": "integer" },
            "data": { "type": "array", "items": { "type": "object" } } } },
        "Count": { "type": "object", "properties": { "total_count": { "type": "integer" } } },
        "RawList": { "type": "object", "properties": { "count": { "type": "integer" },
            "data": { "type": "array", "items": { "type": "object" } } } },
        "EntityData": { "type": "object", "properties": { "empty": { "type": "boolean" },
            "master_record": { "type": "object" },
            "snapshots": { "type": "array", "items": { "type": "object" } } } },
        "Snapshots": { "type": "array", "items": { "type": "object" } },
        "AttrValue": { "type": "object", "properties": {
            "attr_type": { "type": "integer", "enum": [1, 2, 4] }, "current_value": any_value(),
            "history": { "type": "array", "items": { "type": "object" } } } },
        "Distinct": { "type": "object", "additionalProperties": { "type": "integer" } },
        "SnapshotSummary": { "type": "object", "properties": {
            "latest_age": { "type": ["number", "null"] },
            "finished_age": { "type": ["number", "null"] },
            "entities": { "type": ["integer", "null"] },
            "total_s": { "type": ["number", "null"] } } },
        "Queues": { "type": "object", "properties": { "queues": { "type": "array", "items": { "type": "object" } } } },
        "Object": { "type": "object" },
        "Array": { "type": "array", "items": { "type": "object" } },
    } })
}

/// The document as JSON.
pub fn openapi_json() -> Json {
    let mut paths: Map<String, Json> = Map::new();
    for o in OPS {
        let item = paths.entry(o.path.to_owned()).or_insert_with(|| json!({}));
        if let Some(m) = item.as_object_mut() {
            m.insert(o.method.to_owned(), operation_json(o));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "DP3 API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "DP3-compatible HTTP API of the dp3 host." },
        "paths": paths,
        "components": components(),
    })
}

/// The document as utoipa's typed model (checks the table produces a valid document).
pub fn openapi() -> Result<OpenApi, serde_json::Error> {
    serde_json::from_value(openapi_json())
}

/// `/openapi.json`, `/docs` (Swagger UI) and `/redoc`.
pub fn routes() -> Router {
    let doc = match openapi() {
        Ok(doc) => doc,
        Err(e) => {
            // The table is static; a failure is a programming error caught by the tests.
            tracing::error!(error = %e, "the OpenAPI document is invalid");
            OpenApi::default()
        }
    };
    Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        .route("/redoc", get(redoc))
}

/// ReDoc needs a script from a CDN; nothing is vendored for it, so `/redoc` points to the
/// vendored Swagger UI instead.
async fn redoc() -> impl IntoResponse {
    Html(
        "<!doctype html><html><head><title>DP3 API</title></head><body>\
         <p>The interactive documentation is at <a href=\"docs/\">/docs</a>; \
         the OpenAPI document at <a href=\"openapi.json\">/openapi.json</a>.</p></body></html>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_valid_and_complete() {
        let doc = openapi().expect("valid OpenAPI");
        let n: usize = OPS.len();
        assert_eq!(n, 35, "DP3 has 35 operations");
        let json = serde_json::to_value(&doc).unwrap();
        let ops: usize = json["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(ops, 35);
        // Every documented path is routed.
        for o in OPS {
            assert!(
                super::super::routing::ROUTE_PATTERNS.contains(&o.path),
                "{} not routed",
                o.path
            );
        }
    }
}
