//! `/entity/{etype}/...` (v1) and `/v2/entity/{etype}/...` (v2) endpoints (api.md §4.4–4.7,
//! §6). Every handler exists once; `V2` selects where the eid and attr come from (path in
//! v1, query in v2) and therefore the `loc` of their errors.
//!
//! Validation precedence (api.md §7 item 9): etype → eid → other parameters/body.

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::Uri;
use axum::http::request::Parts;
use axum::routing::get;
use bson::{Bson, Document};
use chrono::{DateTime, SecondsFormat, Utc};
use dp3_model::validate::parse_api_datapoints;
use dp3_model::value::{as_time, format_api_datetime, to_api_json};
use dp3_model::{AttrKind, AttrType, DataPointTask, DataType, Eid, EntityType, Primitive};
use dp3_store::{HistoryQuery, RawQuery, SnapshotQuery};
use indexmap::IndexMap;
use serde_json::{Map, Value as Json, json};
use std::net::SocketAddr;

use super::error::{ApiError, ErrorItem, Source, loc};
use super::filters::{build_query, check_filters, parse_sort};
use super::ingest::{is_json_content_type, ok, submit_and_wait};
use super::params::{Checker, QueryParams, json_error_offset, json_error_reason};
use super::render::{Window, master_record_json, observations_history, timeseries_history};
use super::routing::RawBody;
use super::system::PathParams;
use super::{AppState, client_ip};

type JsonResult = Result<axum::Json<Json>, ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        // v1: fixed segments are matched before `{eid}` (an eid `get`/`count` is unreachable,
        // as in DP3).
        .route("/entity/{etype}/get", get(list_latest))
        .route("/entity/{etype}/count", get(count_latest))
        .route("/entity/{etype}/raw/get", get(raw_get))
        .route("/entity/{etype}/_/distinct/{attr}", get(distinct))
        .route(
            "/entity/{etype}/{eid}",
            get(entity_data::<false>).delete(delete_entity::<false>),
        )
        .route("/entity/{etype}/{eid}/master", get(master::<false>))
        .route("/entity/{etype}/{eid}/snapshots", get(snapshots::<false>))
        .route("/entity/{etype}/{eid}/get/{attr}", get(get_attr::<false>))
        .route(
            "/entity/{etype}/{eid}/set/{attr}",
            axum::routing::post(set_attr::<false>),
        )
        .route(
            "/entity/{etype}/{eid}/ttl",
            axum::routing::post(extend_ttl::<false>),
        )
        // v2
        .route("/v2/entity/{etype}/get", get(list_latest))
        .route("/v2/entity/{etype}/count", get(count_latest))
        .route("/v2/entity/{etype}/raw/get", get(raw_get))
        .route("/v2/entity/{etype}/_/distinct/{attr}", get(distinct))
        .route(
            "/v2/entity/{etype}/",
            get(entity_data::<true>).delete(delete_entity::<true>),
        )
        // Hidden alias without the slash (no redirect in DP3 either).
        .route(
            "/v2/entity/{etype}",
            get(entity_data::<true>).delete(delete_entity::<true>),
        )
        .route("/v2/entity/{etype}/master", get(master::<true>))
        .route("/v2/entity/{etype}/snapshots", get(snapshots::<true>))
        .route(
            "/v2/entity/{etype}/attr",
            get(get_attr::<true>).post(set_attr::<true>),
        )
        .route(
            "/v2/entity/{etype}/ttl",
            axum::routing::post(extend_ttl::<true>),
        )
}

/// Where the eid/attr parameters are.
fn source(v2: bool) -> Source {
    if v2 { Source::Query } else { Source::Path }
}

/// Parse an eid text for an entity type, DP3's E2 error at `[source, "eid"]` on failure.
fn parse_eid(et: &EntityType, raw: &str, src: Source) -> Result<Eid, ApiError> {
    Eid::parse(et.spec.id_data_type, raw).map_err(|e| {
        // Pydantic prefixes messages of custom validators (the MAC one) with `Value error, `.
        let msg = if e.kind == "value_error" && !e.msg.starts_with("Value error, ") {
            format!("Value error, {}", e.msg)
        } else {
            e.msg
        };
        ApiError::dp3(src, "eid", msg)
    })
}

/// Resolve `{etype}` and the eid (path in v1, required query parameter in v2).
fn locate<'s, const V2: bool>(
    state: &'s AppState,
    path: &PathParams,
    q: &QueryParams,
) -> Result<(&'s EntityType, Eid), ApiError> {
    let et = state.entity_type(path.get("etype"))?;
    let raw = if V2 {
        q.get("eid")
            .ok_or_else(|| ApiError::Validation(vec![ErrorItem::missing(Source::Query, "eid")]))?
    } else {
        path.get("eid")
    };
    let eid = parse_eid(et, raw, source(V2))?;
    Ok((et, eid))
}

/// The attribute name (path in v1, required query parameter in v2).
fn attr_param<const V2: bool>(path: &PathParams, q: &QueryParams, c: &mut Checker) -> String {
    if V2 {
        c.required(q, "attr").unwrap_or_default().to_owned()
    } else {
        path.get("attr").to_owned()
    }
}

/// A snapshot as the API shows it (no internal `_id`).
fn snapshot_json(mut d: Document) -> Json {
    d.remove("_id");
    Json::Object(dp3_model::value::doc_to_api_json(&d))
}

// ------------------------------------------------------------------ list / count

/// `GET .../get`: latest snapshots with filters, sort and paging.
pub async fn list_latest(State(state): State<AppState>, path: PathParams, uri: Uri) -> JsonResult {
    let et = state.entity_type(path.get("etype"))?;
    let q = QueryParams::parse(uri.query());
    let mut c = Checker::default();
    let skip = c.uint(&q, "skip", 0);
    let limit = c.page_limit(&q, 20, state.settings.max_page_size);
    let fulltext = c.json(&q, "fulltext_filters");
    let generic = c.json(&q, "generic_filter");
    c.finish()?;
    let filters = check_filters(fulltext, generic)?;
    let sort = parse_sort(et, &q.get_all("sort"))?;
    let filter = build_query(et, filters)?;
    let etype = et.spec.id.clone();
    let query = SnapshotQuery {
        filter,
        sort,
        skip,
        limit,
    };
    let page = state
        .store_call(move |s| s.latest_snapshots(&etype, &query))
        .await?;
    // `time_created` of the page's last item, `count` = page size (api.md §7 item 4).
    let time_created = page
        .last()
        .and_then(|d| d.get("_time_created"))
        .and_then(as_time)
        .map(|t| format_api_datetime(&t));
    let count = page.len();
    let data: Vec<Json> = page
        .into_iter()
        .map(|mut d| {
            d.remove("_time_created");
            snapshot_json(d)
        })
        .collect();
    Ok(axum::Json(
        json!({ "time_created": time_created, "count": count, "data": data }),
    ))
}

/// `GET .../count`: number of latest snapshots matching the filters.
pub async fn count_latest(State(state): State<AppState>, path: PathParams, uri: Uri) -> JsonResult {
    let et = state.entity_type(path.get("etype"))?;
    let q = QueryParams::parse(uri.query());
    let mut c = Checker::default();
    let fulltext = c.json(&q, "fulltext_filters");
    let generic = c.json(&q, "generic_filter");
    c.finish()?;
    let filter = build_query(et, check_filters(fulltext, generic)?)?;
    let etype = et.spec.id.clone();
    let total = state
        .store_call(move |s| s.count_latest_snapshots(&etype, &filter))
        .await?;
    Ok(axum::Json(json!({ "total_count": total })))
}

// ------------------------------------------------------------------ raw log

/// A raw datapoint document as the API shows it: no `_id`, `etype`/`eid` renamed to
/// `type`/`id` and moved to the end.
fn raw_json(d: &Document) -> Json {
    let mut m = Map::new();
    for (k, v) in d {
        if !matches!(k.as_str(), "_id" | "etype" | "eid") {
            m.insert(k.clone(), to_api_json(v));
        }
    }
    m.insert(
        "type".into(),
        d.get("etype").map_or(Json::Null, to_api_json),
    );
    m.insert("id".into(), d.get("eid").map_or(Json::Null, to_api_json));
    Json::Object(m)
}

/// `GET .../raw/get`: the raw datapoint log.
pub async fn raw_get(State(state): State<AppState>, path: PathParams, uri: Uri) -> JsonResult {
    let et = state.entity_type(path.get("etype"))?;
    let q = QueryParams::parse(uri.query());
    let mut c = Checker::default();
    let skip = c.uint(&q, "skip", 0);
    let limit = c.page_limit(&q, 20, state.settings.max_page_size);
    c.finish()?;
    let eid = q
        .get("eid")
        .map(|raw| parse_eid(et, raw, Source::Query))
        .transpose()?;
    let attr = q.get("attr").map(str::to_owned);
    let order_by_t1 = match &attr {
        Some(a) => match et.attribs.get(a) {
            Some(spec) => spec.attr_type() != AttrType::Plain,
            None => return Err(ApiError::unknown_attr(Source::Query, a)),
        },
        None => false,
    };
    let query = RawQuery {
        eid,
        attr,
        src: q.get("src").map(str::to_owned),
        order_by_t1,
        skip,
        limit,
    };
    let etype = et.spec.id.clone();
    let docs = state.store_call(move |s| s.raw_get(&etype, &query)).await?;
    let data: Vec<Json> = docs.iter().map(raw_json).collect();
    Ok(axum::Json(json!({ "count": data.len(), "data": data })))
}

// ------------------------------------------------------------------ records

/// `GET /entity/{etype}/{eid}` / `GET /v2/entity/{etype}/?eid=`: master record and
/// snapshots. Unknown eids read as empty (never 404).
pub async fn entity_data<const V2: bool>(
    State(state): State<AppState>,
    path: PathParams,
    uri: Uri,
) -> JsonResult {
    let q = QueryParams::parse(uri.query());
    let (et, eid) = locate::<V2>(&state, &path, &q)?;
    let mut c = Checker::default();
    let from = c.datetime(&q, "date_from");
    let to = c.datetime(&q, "date_to");
    c.finish()?;
    let etype = et.spec.id.clone();
    let (master, snaps) = state
        .store_call(move |s| {
            let master = s.get_master(&etype, &eid)?;
            let snaps = s.snapshot_history(
                &etype,
                &eid,
                &HistoryQuery {
                    from,
                    to,
                    skip: 0,
                    limit: 0,
                },
            )?;
            Ok((master, snaps))
        })
        .await?;
    let master_json = master_record_json(et, master.as_ref(), &Window::new(from, to));
    let snapshots: Vec<Json> = snaps.into_iter().map(snapshot_json).collect();
    let empty = master_json.as_object().is_none_or(Map::is_empty) && snapshots.is_empty();
    Ok(axum::Json(json!({
        "empty": empty,
        "master_record": master_json,
        "snapshots": snapshots,
    })))
}

/// `GET .../master`.
pub async fn master<const V2: bool>(
    State(state): State<AppState>,
    path: PathParams,
    uri: Uri,
) -> JsonResult {
    let q = QueryParams::parse(uri.query());
    let (et, eid) = locate::<V2>(&state, &path, &q)?;
    let mut c = Checker::default();
    let from = c.datetime(&q, "date_from");
    let to = c.datetime(&q, "date_to");
    c.finish()?;
    let etype = et.spec.id.clone();
    let master = state
        .store_call(move |s| s.get_master(&etype, &eid))
        .await?;
    Ok(axum::Json(master_record_json(
        et,
        master.as_ref(),
        &Window::new(from, to),
    )))
}

/// `GET .../snapshots`: snapshot history ascending by time.
pub async fn snapshots<const V2: bool>(
    State(state): State<AppState>,
    path: PathParams,
    uri: Uri,
) -> JsonResult {
    let q = QueryParams::parse(uri.query());
    let (et, eid) = locate::<V2>(&state, &path, &q)?;
    let mut c = Checker::default();
    let from = c.datetime(&q, "date_from");
    let to = c.datetime(&q, "date_to");
    let skip = c.uint(&q, "skip", 0);
    let limit = c.page_limit(&q, 0, state.settings.max_page_size);
    c.finish()?;
    let etype = et.spec.id.clone();
    let query = HistoryQuery {
        from,
        to,
        skip,
        limit,
    };
    let snaps = state
        .store_call(move |s| s.snapshot_history(&etype, &eid, &query))
        .await?;
    Ok(axum::Json(Json::Array(
        snaps.into_iter().map(snapshot_json).collect(),
    )))
}

/// `GET .../get/{attr}` / `GET /v2/.../attr?attr=`: current value and history.
pub async fn get_attr<const V2: bool>(
    State(state): State<AppState>,
    path: PathParams,
    uri: Uri,
) -> JsonResult {
    let q = QueryParams::parse(uri.query());
    let (et, eid) = locate::<V2>(&state, &path, &q)?;
    let mut c = Checker::default();
    let attr = attr_param::<V2>(&path, &q, &mut c);
    let from = c.datetime(&q, "date_from");
    let to = c.datetime(&q, "date_to");
    c.finish()?;
    let spec = et
        .attribs
        .get(&attr)
        .ok_or_else(|| ApiError::unknown_attr(source(V2), &attr))?
        .clone();
    let etype = et.spec.id.clone();
    let attr_type = spec.attr_type();
    let (master, latest) = state
        .store_call(move |s| {
            let master = s.get_master(&etype, &eid)?;
            // Observations read their current value from the latest snapshot (§7 item 6).
            let latest = if attr_type == AttrType::Observations {
                s.latest_snapshot(&etype, &eid)?
            } else {
                None
            };
            Ok((master, latest))
        })
        .await?;
    let stored = master.as_ref().and_then(|m| m.get(&attr));
    let w = Window::new(from, to);
    let (current, history) = match attr_type {
        AttrType::Plain => (
            stored
                .and_then(Bson::as_document)
                .and_then(|d| d.get("v"))
                .map_or(Json::Null, to_api_json),
            Vec::new(),
        ),
        AttrType::Observations => (
            latest
                .as_ref()
                .and_then(|d| d.get(&attr))
                .map_or(Json::Null, to_api_json),
            observations_history(stored, &w),
        ),
        AttrType::Timeseries => (Json::Null, timeseries_history(&spec, stored, &w)),
    };
    Ok(axum::Json(json!({
        "attr_type": attr_type as u8,
        "current_value": current,
        "history": history,
    })))
}

/// Python's `json.JSONDecodeError` text for the common case (`Expecting value: line 1
/// column 1 (char 0)`), serde_json's reason otherwise.
fn json_decode_message(body: &str, e: &serde_json::Error) -> String {
    let reason = json_error_reason(e);
    let head = reason.split(" at line ").next().unwrap_or(&reason);
    let head = match head {
        "EOF while parsing a value" | "expected value" => "Expecting value".to_owned(),
        other => other.to_owned(),
    };
    format!(
        "{head}: line {} column {} (char {})",
        e.line(),
        e.column().max(1),
        json_error_offset(body, e)
    )
}

fn python_type_name(v: &Json) -> &'static str {
    match v {
        Json::Null => "NoneType",
        Json::Bool(_) => "bool",
        Json::Number(n) if n.is_f64() => "float",
        Json::Number(_) => "int",
        Json::String(_) => "str",
        Json::Array(_) => "list",
        Json::Object(_) => "dict",
    }
}

/// `POST .../set/{attr}` / `POST /v2/.../attr?attr=`: body `{"value": ...}` parsed as JSON
/// whatever the Content-Type; becomes one datapoint `t1 = now`, `src = "<ip> via API"`.
pub async fn set_attr<const V2: bool>(
    State(state): State<AppState>,
    path: PathParams,
    parts: Parts,
    RawBody(body): RawBody,
) -> JsonResult {
    let q = QueryParams::parse(parts.uri.query());
    let (et, eid) = locate::<V2>(&state, &path, &q)?;
    let mut c = Checker::default();
    let attr = attr_param::<V2>(&path, &q, &mut c);
    c.finish()?;
    if !et.attribs.contains_key(&attr) {
        return Err(ApiError::unknown_attr(source(V2), &attr));
    }
    let text = String::from_utf8_lossy(&body);
    let parsed: Json = serde_json::from_str(&text).map_err(|e| {
        ApiError::Validation(vec![ErrorItem::dp3(
            vec![json!("body")],
            json_decode_message(&text, &e),
        )])
    })?;
    let Json::Object(obj) = &parsed else {
        return Err(ApiError::Validation(vec![ErrorItem::dp3(
            vec![json!("body")],
            format!(
                "1 validation error for EntityEidAttrValue\n  Input should be a valid dictionary or instance of EntityEidAttrValue [type=model_type, input_value={parsed}, input_type={}]",
                python_type_name(&parsed)
            ),
        )]));
    };
    let value = obj.get("value").cloned().unwrap_or(Json::Null);
    let client = client_ip(
        parts.extensions.get::<ConnectInfo<SocketAddr>>(),
        &parts.headers,
    );
    let item = json!([{
        "type": et.spec.id,
        "id": eid.to_json(),
        "attr": attr,
        "v": value,
        "t1": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        "src": format!("{client} via API"),
        "c": 1.0,
    }]);
    let item_bytes = serde_json::to_vec(&item)
        .map_err(|e| ApiError::Internal(format!("cannot encode the datapoint: {e}")))?;
    let datapoints = parse_api_datapoints(&state.model, &item_bytes).map_err(|errs| {
        // DP3 reports the first value error at `["body", "value"]` (E2).
        let msg = errs
            .into_iter()
            .next()
            .map_or_else(|| "Invalid value".to_owned(), |e| e.msg);
        ApiError::Validation(vec![ErrorItem::dp3(
            vec![json!("body"), json!("value")],
            msg,
        )])
    })?;
    let task = DataPointTask {
        etype: et.spec.id.clone(),
        eid,
        data_points: datapoints,
        ..Default::default()
    };
    submit_and_wait(&state, vec![task]).await?;
    Ok(ok())
}

/// `POST .../ttl`: body `{token: datetime}` (FastAPI JSON body).
pub async fn extend_ttl<const V2: bool>(
    State(state): State<AppState>,
    path: PathParams,
    parts: Parts,
    RawBody(body): RawBody,
) -> JsonResult {
    let q = QueryParams::parse(parts.uri.query());
    let (et, eid) = locate::<V2>(&state, &path, &q)?;
    let text = String::from_utf8_lossy(&body);
    let parsed: Json = if is_json_content_type(&parts.headers) == Some(false) {
        // A non-JSON content type reaches validation as text.
        Json::String(text.clone().into_owned())
    } else {
        serde_json::from_str(&text).map_err(|e| {
            ApiError::Validation(vec![
                ErrorItem::fastapi(
                    "json_invalid",
                    vec![json!("body"), json!(json_error_offset(&text, &e))],
                    "JSON decode error",
                    json!(text),
                )
                .with_ctx(json!({ "error": json_error_reason(&e) })),
            ])
        })?
    };
    let Json::Object(obj) = &parsed else {
        return Err(ApiError::Validation(vec![ErrorItem::fastapi(
            "dict_type",
            vec![json!("body")],
            "Input should be a valid dictionary",
            parsed,
        )]));
    };
    let mut tokens: IndexMap<String, DateTime<Utc>> = IndexMap::new();
    let mut c = Checker::default();
    for (name, v) in obj {
        match dp3_model::time::parse_datetime_json(v) {
            Ok(t) => {
                tokens.insert(name.clone(), t);
            }
            Err(e) => {
                let mut item =
                    ErrorItem::fastapi(e.kind, loc(Source::Body, name), e.msg, v.clone());
                if let Some(d) = e.detail {
                    item = item.with_ctx(json!({ "error": d }));
                }
                c.push(item);
            }
        }
    }
    c.finish()?;
    // DP3 answers an empty object with a 500 (an empty task fails its validation); nothing
    // to extend is a no-op here.
    if !tokens.is_empty() {
        let task = DataPointTask {
            etype: et.spec.id.clone(),
            eid,
            ttl_tokens: Some(tokens),
            ..Default::default()
        };
        submit_and_wait(&state, vec![task]).await?;
    }
    Ok(ok())
}

/// `DELETE .../{eid}` / `DELETE /v2/entity/{etype}/?eid=`: queue a delete task (`200` even
/// for unknown entities).
pub async fn delete_entity<const V2: bool>(
    State(state): State<AppState>,
    path: PathParams,
    uri: Uri,
) -> JsonResult {
    let q = QueryParams::parse(uri.query());
    let (et, eid) = locate::<V2>(&state, &path, &q)?;
    let task = DataPointTask {
        etype: et.spec.id.clone(),
        eid,
        delete: true,
        ..Default::default()
    };
    submit_and_wait(&state, vec![task]).await?;
    Ok(ok())
}

// ------------------------------------------------------------------ distinct

/// A distinct value as a JSON object key (FastAPI stringifies keys).
fn distinct_key(v: &Bson) -> String {
    match to_api_json(v) {
        Json::String(s) => s,
        other => other.to_string(),
    }
}

fn is_processable(dt: &DataType) -> bool {
    match dt {
        DataType::Dict(_) | DataType::Primitive(Primitive::Json) => false,
        DataType::Array(e) | DataType::Set(e) => is_processable(e),
        DataType::Link { data: Some(d), .. } => is_processable(d),
        _ => true,
    }
}

/// `GET .../_/distinct/{attr}`: `{value: count}` over latest snapshots.
pub async fn distinct(State(state): State<AppState>, path: PathParams) -> JsonResult {
    let et = state.entity_type(path.get("etype"))?;
    let attr = path.get("attr").to_owned();
    let Some(spec) = et.attribs.get(&attr) else {
        return Err(ApiError::BadRequest(format!(
            "Attribute '{attr}' does not exist"
        )));
    };
    let data_type = match &spec.kind {
        AttrKind::Plain { data_type, .. } | AttrKind::Observations { data_type, .. } => data_type,
        AttrKind::Timeseries { .. } => {
            return Err(ApiError::BadRequest(format!(
                "Attribute '{attr}' isn't plain or observations"
            )));
        }
    };
    if !is_processable(data_type) {
        let dt = spec.data_type_str.clone().unwrap_or_default();
        return Err(ApiError::BadRequest(format!(
            "Data type '{dt}' of attribute '{attr}' is not processable"
        )));
    }
    let etype = et.spec.id.clone();
    let values = state
        .store_call(move |s| s.distinct_latest(&etype, &attr))
        .await?;
    let out: Map<String, Json> = values
        .iter()
        .map(|(v, n)| (distinct_key(v), json!(n)))
        .collect();
    Ok(axum::Json(Json::Object(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_like_decode_messages() {
        let e = serde_json::from_str::<Json>("").unwrap_err();
        assert_eq!(
            json_decode_message("", &e),
            "Expecting value: line 1 column 1 (char 0)"
        );
        let e = serde_json::from_str::<Json>("xyz").unwrap_err();
        assert!(json_decode_message("xyz", &e).starts_with("Expecting value: line 1"));
    }

    #[test]
    fn raw_documents_rename_type_and_id_last() {
        let d = bson::doc! {"etype": "A", "eid": 1, "attr": "data1", "src": Bson::Null,
        "v": "x", "c": 1.0, "t1": Bson::Null, "t2": Bson::Null};
        let j = raw_json(&d);
        let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["attr", "src", "v", "c", "t1", "t2", "type", "id"]);
        assert_eq!(j["id"], json!(1));
    }
}
